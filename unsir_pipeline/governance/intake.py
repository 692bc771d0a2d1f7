"""Deletion requests entering and leaving the queue by hand: filed (or refused on the record),
taken by a forget run outside a batch as its own, withdrawn, retried after a failure. Each is
checked against the queue in the transaction that stores it and recorded on the audit trail.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from unsir.classes import resolve_classes
from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.prepared_data import prepared_class_names
from unsir_pipeline.adapters.registry import registry_for
from unsir_pipeline.governance.audit import AuditLog
from unsir_pipeline.governance.deletion_requests import (
    DeletionRequest,
    RequestStore,
    check_request_fields,
    resolve_request,
)
from unsir_pipeline.governance.promotion import ParentModel, finish_interrupted_promotion, resolve_parent
from unsir_pipeline.governance.stores import (
    intake_key,
    intake_payload,
    intake_trail,
    retry_key,
    retry_payload,
    state_target,
    withdrawal_key,
    withdrawal_payload,
)
from unsir_pipeline.governance.trail import (
    FORGET_PREFIX,
    forget_id,
    provenance,
    require_recordable,
    require_trail_the_registry_anchored,
)
from unsir_pipeline.settings.workspace import Workspace


class RequestRefused(UnlearningInputError):
    """A deletion request was refused at intake; it is recorded with status ``rejected``."""

    def __init__(self, request: DeletionRequest, reason: str):
        super().__init__(f"request {request.id} refused: {reason}")
        self.request = request


def file_request(ws: Workspace, requested: list[str], requester: str, reason: str) -> DeletionRequest:
    """Record a deletion request, or refuse it at once (unknown class, already forgotten, or
    forgetting every class together with what is pending); a refusal is recorded too."""
    # Free text first: a value that could spoof a line of `request list` is neither stored nor
    # recorded, not even as a refusal.
    check_request_fields(requester, reason, requested)
    store, audit = intake_trail(ws)
    # The champion is read next: a server that does not answer is named here, in one wait.
    require_trail_the_registry_anchored(ws, audit, what="a deletion request", unreachable_raises=True)
    names = prepared_class_names(ws)
    # A blank class is a slip, not a request to refuse on the record: "unknown class ''", as
    # `unsir forget ''` says, with nothing stored or recorded.
    resolve_classes([c for c in requested if not c.strip()], names)
    finish_interrupted_promotion(ws)  # the champion the request is checked against
    champion = resolve_parent(registry_for(ws), ws.params.registry.champion_alias)
    classes: tuple[int, ...] = ()
    admit = _admission(requested, names, champion, "the champion")
    try:
        classes = resolve_classes(requested, names)  # a refusal records the classes it named
        # Checked against the queue in the transaction that stores it: two requests filed at
        # once cannot both pass "a class must remain".
        request = store.add(classes, [names[c] for c in classes], requester, reason, requested=requested, admit=admit)
    except UnlearningInputError as err:
        request = store.add_rejected(
            classes, [names[c] for c in classes], requester, reason, str(err), requested=requested
        )
        audit.append(
            "request_refused",
            actor=requester,
            request_ids=[request.id],
            payload={"requested": list(requested), "reason": reason, "refusal": str(err), **provenance(ws)},
            idempotency_key=intake_key(request.id),
        )
        raise RequestRefused(request, str(err)) from None
    _record_received(ws, audit, request, {"champion_version": champion.version})
    return request


def _record_received(ws: Workspace, audit: AuditLog, request: DeletionRequest, extra: dict) -> None:
    audit.append(
        "request_received",
        actor=request.requester,
        request_ids=[request.id],
        payload={**intake_payload(request), **extra, **provenance(ws)},
        idempotency_key=intake_key(request.id),
    )


def withdraw_request(ws: Workspace, request_id: str, by: str, reason: str) -> DeletionRequest:
    """Withdraw a pending or failed request (:meth:`RequestStore.withdraw`): no batch claims it
    after, and the trail records who, when and why (``request_withdrawn``)."""
    require_recordable(by, reason)
    # Its intake record first, if a killed `request add` left it unwritten: intake recovery
    # writes only those of requests still pending.
    store, audit = intake_trail(ws)
    require_trail_the_registry_anchored(ws, audit, what=f"a withdrawal of request {request_id}")
    request = store.withdraw(request_id, by, reason)
    audit.append(
        "request_withdrawn",
        actor=by,
        request_ids=[request.id],
        payload={**withdrawal_payload(request), "reason": reason, **provenance(ws)},
        idempotency_key=withdrawal_key(request.id),
    )
    return request


def retry_requests(ws: Workspace, request_ids: Sequence[str], by: str, reason: str) -> list[DeletionRequest]:
    """Put failed requests back in the queue (:meth:`RequestStore.retry`) once the cause of their
    failures is fixed: the next batch takes them, with ``requests.max_attempts`` tries again, and
    the trail records who, when and why, with the attempts and error each had
    (``request_retried``, one per request)."""
    require_recordable(by, reason)
    store, audit = intake_trail(ws)
    require_trail_the_registry_anchored(ws, audit, what=f"a retry of {', '.join(request_ids)}")
    retried = store.retry(request_ids, by, reason)
    for before, request in retried:
        audit.append(
            "request_retried",
            actor=by,
            request_ids=[request.id],
            payload={
                **retry_payload(request),
                "reason": reason,
                "previous_attempts": before.attempts,
                "previous_error": before.error,
                **provenance(ws),
            },
            idempotency_key=retry_key(request),
        )
    return [request for _, request in retried]


# What a forget run's own request gives as its reason (`request list`, the trail).
FORGET_REASON = "unsir forget (a forget run outside a batch)"


def held_by_forget(request: DeletionRequest) -> bool:
    """Whether ``request`` is a forget run's own, not (or no longer) a batch's."""
    return (request.batch_id or "").startswith(FORGET_PREFIX)


def claim_forget(
    ws: Workspace, requested: list[str], parent: ParentModel, requester: str, run_key: str
) -> DeletionRequest:
    """A forget run outside a batch (``unsir forget``) takes its classes as a request of its own,
    ``running`` under :func:`forget_id`, checked against the queue in the transaction that stores
    it: a request filed while it runs counts its classes, and it counts the queued ones'. It ends
    as a batch's requests end (done with its version, or released with the error); call it
    holding the batch lock, so that a killed run's request is released by the next batch
    (``release_stale``) and never while the run is alive. Recorded on the trail as received."""
    store, audit = intake_trail(ws)
    require_trail_the_registry_anchored(ws, audit, what="a forget")
    names = prepared_class_names(ws)
    classes = resolve_classes(requested, names)
    request = store.add(
        classes,
        [names[c] for c in classes],
        requester,
        FORGET_REASON,
        requested=requested,
        admit=_admission(requested, names, parent, "the parent model"),
        claimed_by=forget_id(run_key),
    )
    # Its run named on its intake record, as a batch's claim record names it: a run killed
    # after registering its version, before recording it, is recorded by the next batch.
    run = {"batch_id": forget_id(run_key), "run_key": run_key}
    _record_received(ws, audit, request, {"parent_version": parent.version, "via": "unsir forget", **run})
    return request


def _admission(
    requested: list[str], names: Sequence[str], model: ParentModel, whose: str
) -> Callable[[list[DeletionRequest]], None]:
    """The check a request (or a forget run's own) passes against ``model`` (what it deleted)
    and the queued requests, which the store reads in the transaction that inserts it."""

    def admit(queued: list[DeletionRequest]) -> None:
        resolve_request(
            requested,
            names,
            forgotten=model.deleted_classes,
            forgotten_by=f"{whose} (version {model.version})",
            pending=sorted({c for r in queued for c in r.classes}),
            pending_by=queued_by(queued),
        )

    return admit


def queued_by(queued: list[DeletionRequest]) -> str:
    """The queued requests a refusal counted, by id and status, a forget run's named as one."""
    shown = [
        f"{r.id} ({'running in unsir forget' if r.status == 'running' and held_by_forget(r) else r.status}, "
        f"by {r.requester}: {list(r.class_names)})"
        for r in queued
    ]
    return f"queued requests {'; '.join(shown)}"


def queued_classes(ws: Workspace) -> list[int]:
    """Classes of the requests queued: pending, or running (in a batch or a forget run, perhaps
    stopped half-way): a forget or a request that would leave no class beside them is refused,
    else every later batch would fail on them. Creates no store."""
    target = state_target(ws, ws.params.requests.store)
    if not RequestStore.exists(target):
        return []
    store = RequestStore(target)
    return sorted({c for r in store.list("pending") + store.list("running") for c in r.classes})
