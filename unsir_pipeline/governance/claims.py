"""A scheduled batch claiming the queue: requests a killed batch left are released, every pending
one is claimed together, an interrupted batch is resumed under its key. What a failed attempt
leaves on its requests (the error, whether the attempt counted) is
:mod:`unsir_pipeline.governance.failures`'s. Nothing here imports Prefect: the
``deletion-batch`` flow calls these functions around the ``unlearn`` flow.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from unsir_pipeline.adapters.registry import (
    RegistryError,
    existing_registry,
    registry_for,
    version_with_key,
)
from unsir_pipeline.governance.deletion_requests import DeletionRequest
from unsir_pipeline.governance.intake import held_by_forget
from unsir_pipeline.governance.promotion import PROMOTED_DECISIONS, not_this_runs_model, promotion_under_way
from unsir_pipeline.governance.stores import existing_audit_log, existing_request_store, intake_trail
from unsir_pipeline.governance.trail import (
    SYSTEM_ACTOR,
    interrupted_registrations,
    provenance,
    require_trail_the_registry_anchored,
)
from unsir_pipeline.settings.workspace import Workspace


@dataclass(frozen=True)
class ClaimedBatch:
    batch_id: str
    run_key: str
    requests: list[DeletionRequest]
    resumed: bool
    # The registry's server did not answer the claim's trail check: the batch raises this at
    # once, in the flow's error handling, rather than wait through the retries a second time.
    registry_unreachable: RegistryError | None = field(default=None, compare=False)

    @property
    def request_ids(self) -> list[str]:
        return [r.id for r in self.requests]

    @property
    def attempt(self) -> int:
        return max(r.attempts for r in self.requests)

    @property
    def claimed_at(self) -> str:
        """When this claim was made: the claim stamps every request it takes at once. Tells one
        claim from the next when a setup fault took back the attempt (the same ``attempt``)."""
        return self.requests[0].updated_at

    @property
    def classes(self) -> list[int]:
        return sorted({c for r in self.requests for c in r.classes})

    @property
    def record_context(self) -> dict:
        """What each of its audit records says of the batch (:data:`BATCH_CONTEXT_KEYS`)."""
        return {"batch_id": self.batch_id, "run_key": self.run_key, "attempt": self.attempt}

    def names_of(self, classes: Sequence[int]) -> list[str]:
        """The class names the requests recorded for ``classes``: what the unlearn flow is
        given. An index written as text would be read as a class *name* first, and in an image
        folder whose classes are "1", "2", "3" the text "1" names index 0, not index 1."""
        recorded = {c: name for r in self.requests for c, name in zip(r.classes, r.class_names, strict=True)}
        return [recorded[c] for c in classes]


# What a batch has to do (:func:`work_for_a_batch`): nothing; only finish a killed promotion
# (the registry and the trail); or run the flow (requests to claim, a killed run's version to record).
NOTHING, PROMOTION_ONLY, FLOW = "nothing", "promotion-only", "flow"


def work_for_a_batch(ws: Workspace) -> str:
    """What a batch would do, and so what `unsir batch run` sets up for it: :data:`FLOW` when a
    request is pending or left ``running`` by a stopped batch (those a batch recovers), or a
    version a killed batch or forget run registered and never recorded (its requests failed
    since, so no batch resumes it: the flow records it under the batch lock); else
    :data:`PROMOTION_ONLY` when a promotion was killed before moving the champion (finishing it
    needs only the registry and the trail: no device, prepared data or Prefect); else
    :data:`NOTHING`. `audit verify` says the next run finishes or records what a stopped command
    left; answering "nothing pending" without doing so did neither.

    Read without the lock, so a request filed a moment later simply waits for the next batch, as
    it would had the batch started a moment earlier. Read-only, so an empty queue is answered on
    a read-only copy too, and a full one on such a copy reaches the check that it cannot be run
    there. Creates no store: none is an empty queue. A registry that does not answer raises
    ``RegistryError`` naming it: read as "nothing left", a batch answered "empty" over a server
    that was down, and waited through its retries a second time in the trail check."""
    store = existing_request_store(ws)
    if store is not None and (store.list("pending") or store.list("running")):
        return FLOW
    registry = existing_registry(ws)
    if registry is None or not registry.has_model():
        return NOTHING
    audit = existing_audit_log(ws)
    if audit is not None and interrupted_registrations(registry.list_versions(), audit.records(), None):
        return FLOW
    return PROMOTION_ONLY if promotion_under_way(registry) is not None else NOTHING


def nothing_for_a_batch(ws: Workspace) -> bool:
    """True when a batch would do nothing (:func:`work_for_a_batch`)."""
    return work_for_a_batch(ws) == NOTHING


def claim_batch(ws: Workspace) -> ClaimedBatch | None:
    """Recover requests of a killed batch, then claim every pending request (call holding the
    lock). A batch that repeats an interrupted one — the same requests, whose version was not
    rejected — reuses its key, so its run resumes instead of registering a second version.

    A registry whose server does not answer is asked once: with requests to claim, they are
    claimed all the same, so that the batch's failure leaves its error on them (the batch
    raises :attr:`ClaimedBatch.registry_unreachable`); with none, its ``RegistryError`` is
    raised here. Whether an interrupted batch's resumption is refused is the registry's to say:
    unasked, the claim keeps the interrupted batch's id, and the next batch decides."""
    store, audit = intake_trail(ws)
    unreachable = require_trail_the_registry_anchored(ws, audit)
    stale = store.release_stale(
        "the batch or forget run holding this request stopped before finishing", ws.params.requests.max_attempts
    )
    if stale:
        audit.append(
            "batch_recovered",
            actor=SYSTEM_ACTOR,
            request_ids=[r.id for r in stale],
            payload={
                "interrupted_batches": sorted({r.batch_id for r in stale if r.batch_id}),
                "statuses": {r.id: r.status for r in stale},
                **provenance(ws),
            },
        )
    pending = store.list("pending")
    if not pending:
        if unreachable is not None:  # no request to leave it on: what the batch would ask next
            raise unreachable
        return None
    prior = {r.batch_id for r in pending}
    batch_id = f"batch-{uuid.uuid4().hex[:12]}"
    # A killed forget run's request is not resumed: its registration, if any, is under its own run key.
    resumable = len(prior) == 1 and None not in prior and not held_by_forget(pending[0])
    if resumable:
        (candidate,) = prior
        assert candidate is not None  # `None not in prior`
        earlier = {r.id for r in store.batch_requests(candidate)}
        resumable = earlier == {r.id for r in pending} and (
            unreachable is not None or not _resume_refused(ws, candidate)
        )
        if resumable:
            batch_id = candidate
    claimed = store.claim_pending(batch_id)
    # A request filed between the listing and the claim changes the set: then start afresh.
    same_set = {r.id for r in claimed} == {r.id for r in pending}
    run_key = batch_id if same_set else f"{batch_id}-{uuid.uuid4().hex[:6]}"
    return ClaimedBatch(batch_id, run_key, claimed, resumed=resumable and same_set, registry_unreachable=unreachable)


def _resume_refused(ws: Workspace, run_key: str) -> bool:
    """Whether the interrupted batch ``run_key`` must start afresh rather than resume: a reviewer
    rejected its version, or its version was never promoted and was registered from a parent
    that is no longer the champion (another run moved it since) or with other parameters (see
    :func:`~unsir_pipeline.governance.promotion.not_this_runs_model`)."""
    registry = registry_for(ws)
    if not registry.has_model():
        return False
    versions = registry.list_versions()
    if any(v.tags.get("run_key") == run_key and v.tags.get("review_decision") == "rejected" for v in versions):
        return True
    registered = version_with_key(versions, run_key)
    if registered is None or registered.tags.get("gate_decision") in PROMOTED_DECISIONS:
        return False
    champion = next((v for v in versions if ws.params.registry.champion_alias in v.aliases), None)
    if champion is None:
        return True
    changed = not_this_runs_model(registered.tags, parent_version=champion.version, params_digest=ws.params.digest())
    return changed is not None
