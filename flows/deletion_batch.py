"""The ``deletion-batch`` flow: forget every pending deletion request in one unlearning run.

    lock -> claim-pending-requests -> unlearn (subflow) -> complete-requests
                                   \\-> on any failure: release-requests (pending, or failed
                                        after requests.max_attempts), error recorded; a
                                        failure of the setup, not of the run, counts no attempt

Two batches never run at once (a file lock in the state directory; with a shared state
database, a Prefect global concurrency limit; a second batch ends at once). A batch killed at
any point leaves its requests ``running``; the next batch releases them and, when it holds
exactly the same requests, resumes under the same run key, so no second model version and no
duplicate audit record is written. A version a killed run registered and no batch resumes (other
requests, or none left to claim: its requests failed on release) is recorded by the next batch
from the registry's tags, under the killed run and its requests. A promotion killed before
moving the champion is finished by the next batch, with requests to claim or none.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.adapters.validation import ValidationFailed
from unsir_pipeline.flows.unlearn import unlearn
from unsir_pipeline.governance import claims, locks, trail
from unsir_pipeline.governance.failures import attempt_counted, failure_message, setup_fault
from unsir_pipeline.governance.promotion import (
    finish_interrupted_promotion,
    resolve_parent,
)
from unsir_pipeline.settings.workspace import Workspace, open_workspace
from unsir_pipeline.tasks.requests import (
    claim_pending_requests,
    complete_requests,
    release_requests,
)


@flow(name="deletion-batch", log_prints=True)
def deletion_batch(project_dir: str = ".", overrides: list[str] | None = None) -> dict:
    overrides = list(overrides or [])
    ws = open_workspace(project_dir, tuple(overrides))
    logger = get_run_logger()
    with locks.deletion_batch_lock(ws) as acquired:
        if not acquired:
            logger.info("another deletion batch is running; this one ends now")
            return {"status": "skipped", "reason": "another deletion batch is running"}
        batch = claim_pending_requests(ws)
        if batch is None:
            # Nothing to run, but what a stopped command left is finished, as a batch with
            # requests does: a promotion killed before moving the champion (else the champion
            # stays the old one until some other command reads it) and a killed batch's version
            # (its requests just failed on release): resumed by no one, it goes on the trail here.
            finished = _finished(finish_interrupted_promotion(ws))
            recorded = trail.record_interrupted_registrations(ws, None)
            return {"status": "empty", **finished, **({"recorded_versions": recorded} if recorded else {})}
        try:  # from the first record on: whatever fails releases the claimed requests
            trail.record(
                ws,
                batch,
                "batch_resumed" if batch.resumed else "batch_started",
                {"classes": batch.classes, "attempts": {r.id: r.attempts for r in batch.requests}},
            )
            # After the claim, so that a registry that cannot be reached fails the claimed
            # requests with its error on them (they go back to pending), as any later failure;
            # one the claim found down fails them now, without waiting for it a second time.
            if batch.registry_unreachable is not None:
                raise batch.registry_unreachable
            finished = _finished(finish_interrupted_promotion(ws))  # the champion a killed promotion was moving
            # Versions of killed batches this one does not resume: on the trail before it forgets more.
            trail.record_interrupted_registrations(ws, batch)
            registry = registry_for(ws)
            champion = resolve_parent(registry, ws.params.registry.champion_alias)
            # As `unsir forget` checks its parent: an alias moved onto a version whose registration
            # failed names no model, and no request is done by it (bad input: no attempt counted).
            registry.require_ready(champion.version)
            todo = sorted(set(batch.classes) - set(champion.deleted_classes))
            if not todo:  # an interrupted batch already got its version promoted
                version = champion.version
                _record_recovered_registration(ws, batch, version)
                complete_requests(ws, batch.batch_id, version)
                trail.record(
                    ws,
                    batch,
                    "batch_finished",
                    {"model_version": version, "note": "classes already forgotten by the champion"},
                )
                return {
                    "status": "done",
                    "batch_id": batch.batch_id,
                    "new_version": version,
                    "request_ids": batch.request_ids,
                    "promoted": True,
                    **finished,
                }
            result = unlearn(
                forget_classes=batch.names_of(todo),
                project_dir=project_dir,
                overrides=overrides,
                run_key=batch.run_key,
                recorded_by_caller=True,  # under this batch and its requests, below
            )
        except ValidationFailed as err:
            trail.record(ws, batch, "validation_failed", {"failures": list(err.report.failures)})
            _fail(ws, batch, err)
            raise
        except BaseException as err:
            _fail(ws, batch, err)
            raise
        _record_success(ws, batch, result)
        complete_requests(ws, batch.batch_id, result["new_version"])
        trail.record(
            ws, batch, "batch_finished", {"model_version": result["new_version"], "promoted": result["promoted"]}
        )
    return {"status": "done", "batch_id": batch.batch_id, "request_ids": batch.request_ids, **result, **finished}


def _finished(version: int | None) -> dict:
    """A promotion a stopped run left half-done and this batch finished, in its result under the
    key `unsir batch run` prints (a scheduled run's result says so too); nothing when none was."""
    return {} if version is None else {"finished_promotion": version}


def _record_recovered_registration(ws: Workspace, batch: claims.ClaimedBatch, version: int) -> None:
    """A batch stopped after its version was registered and promoted, before the trail said so:
    the version's registration and gate decision go on the record from the registry's own tags,
    so every promoted version has them. A no-op when the records exist (they are keyed by the
    batch's run key) or when the champion came from another batch."""
    info = registry_for(ws).get_version(version)
    if info.tags.get("run_key") == batch.run_key:
        trail.record_registration_from_tags(ws, info, batch.record_context, batch.request_ids)


def _record_success(ws: Workspace, batch: claims.ClaimedBatch, result: dict) -> None:
    for event, payload in trail.run_records(result):
        trail.record(ws, batch, event, payload)


def _fail(ws: Workspace, batch: claims.ClaimedBatch, err: BaseException) -> None:
    message = failure_message(err, ws)
    fault = setup_fault(err)
    statuses = release_requests(ws, batch.batch_id, message, count_attempt=fault is None)
    trail.record(ws, batch, "batch_failed", {"error": message, "statuses": statuses, **attempt_counted(ws, fault)})
