"""Tasks of deletion requests and their trail: a batch claims the pending requests, then
completes or releases them; a forget run outside a batch claims its classes as a request of its
own, ends it the same way, and puts itself on the audit trail."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from unsir_pipeline.governance import claims, intake, stores, trail
from unsir_pipeline.governance.promotion import ParentModel
from unsir_pipeline.settings.workspace import Workspace
from unsir_pipeline.tasks.retries import IO_RETRIES


@task(name="claim-pending-requests", cache_policy=NO_CACHE)
def claim_pending_requests(ws: Workspace) -> claims.ClaimedBatch | None:
    batch = claims.claim_batch(ws)
    if batch is None:
        get_run_logger().info("no pending deletion request")
    else:
        get_run_logger().info(
            "batch %s%s claimed %d request(s) for classes %s",
            batch.batch_id,
            " (resumed)" if batch.resumed else "",
            len(batch.requests),
            batch.classes,
        )
    return batch


@task(name="claim-forget-request", cache_policy=NO_CACHE)
def claim_forget_request(ws: Workspace, requested: list[str], parent: ParentModel, requester: str, run_key: str) -> str:
    """See :func:`~unsir_pipeline.governance.intake.claim_forget`; returns the run's id."""
    request = intake.claim_forget(ws, requested, parent, requester, run_key)
    get_run_logger().info(
        "request %s (by %s) holds classes %s while this run lasts", request.id, requester, request.classes
    )
    return request.batch_id or ""


@task(name="complete-requests", cache_policy=NO_CACHE)
def complete_requests(ws: Workspace, batch_id: str, version: int) -> list[str]:
    done = stores.request_store(ws).mark_done(batch_id, version)
    get_run_logger().info("%d request(s) done with version %s", len(done), version)
    return [r.id for r in done]


@task(name="release-requests", cache_policy=NO_CACHE)
def release_requests(
    ws: Workspace, batch_id: str, error: str, *, retry: bool = True, count_attempt: bool = True
) -> dict[str, str]:
    """Back to pending for the next batch, or failed after ``requests.max_attempts`` (at once
    without ``retry``); without ``count_attempt`` (a setup fault) back to pending, the attempt
    not counted."""
    max_attempts = ws.params.requests.max_attempts if retry else 1
    released = stores.request_store(ws).release(batch_id, error, max_attempts, count_attempt=count_attempt)
    get_run_logger().warning("the run failed; requests back to %s", {r.id: r.status for r in released})
    return {r.id: r.status for r in released}


@task(name="record-on-audit-trail", cache_policy=NO_CACHE, **IO_RETRIES)
def record_on_audit_trail(ws: Workspace, result: dict, actor: str, through: str = "gate_decision") -> str:
    """Put a forget run outside a batch on the trail: its evidence, the version it registered
    and the gate's decision, as ``actor``; ``through="model_registered"`` stops before the
    decision (the flow records the registration before its gate). Idempotent (keyed by the
    run), so a retry adds nothing. Returns the id its records carry (what ``unsir audit
    report`` takes). Unlike the steps before it, it does not end early on a stop (SIGTERM,
    Ctrl-C): the version exists and may be champion by now, so its record is written first."""
    audit_id = trail.record_forget(ws, result, actor=actor, through=through)
    get_run_logger().info("on the audit trail as %s (by %s)", audit_id, actor)
    return audit_id
