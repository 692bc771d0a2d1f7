"""An auditor's reading of the audit trail: a request's history up to the model in production,
one batch's evidence report, and the trail verified against the request store and the registry
(``unsir audit show``, ``unsir audit report``, ``unsir audit verify``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.registry import WEIGHTS_SHA256_TAG, RegistryError, VersionInfo, existing_registry
from unsir_pipeline.adapters.state_store import StateDatabase
from unsir_pipeline.governance.audit import AuditError, AuditLog, AuditRecord, VerifyResult
from unsir_pipeline.governance.decisions import unrecorded_promotion
from unsir_pipeline.governance.deletion_requests import RETRIED_BY, DeletionRequest
from unsir_pipeline.governance.promotion import (
    PROMOTION_UNDER_WAY_TAG,
    champion_problems,
    promotion_under_way,
    verified_forgotten,
)
from unsir_pipeline.governance.stores import (
    INTAKE_RECOVERABLE,
    audit_key,
    existing_audit_log,
    existing_request_store,
    intake_event,
    retry_key,
    state_target,
    stored_requests,
)
from unsir_pipeline.governance.trail import (
    AUDIT_HASH_TAG,
    AUDIT_HEAD_TAG,
    AUDIT_SEQ_TAG,
    FORGET_PREFIX,
    lost_registry_problem,
    registry_anchor_problem,
)
from unsir_pipeline.settings.workspace import Workspace


def batch_ids_of(records: list[AuditRecord]) -> list[str]:
    """The ids ``unsir audit report`` takes, oldest first: batches, and forget runs outside a
    batch (``forget-RUN_KEY``)."""
    return list(dict.fromkeys(r.payload["batch_id"] for r in records if r.payload.get("batch_id")))


def request_history(ws: Workspace, request_id: str) -> dict:
    """A request from its arrival to the model version in production, from the audit trail."""
    (request,) = stored_requests(ws, [request_id])
    log = existing_audit_log(ws)
    records = [r.to_dict() for r in log.records(request_id=request_id)] if log is not None else []
    if request.status == "withdrawn":
        production = f"never to be forgotten: {request.error}"
    else:
        production = "not forgotten yet" if request.model_version is None else _in_production(ws, request)
    return {"request": request.to_dict(), "production": production, "records": records}


def _in_production(ws: Workspace, request: DeletionRequest) -> str:
    """Where a done request's deletion stands in production: its version is the champion; or
    the champion is another version (a later deletion, a hand promotion) that was, or was not,
    measured to have forgotten the request's classes."""
    assert request.model_version is not None
    registry = existing_registry(ws)
    if registry is None:
        return f"unknown: no registry database {ws.registry_database} (a copy of the project without it?)"
    alias = ws.params.registry.champion_alias
    names = dict(zip(request.classes, request.class_names, strict=True))
    own = registry.get_version(request.model_version)  # names a version the registry lost
    if alias in own.aliases:
        text = f"version {request.model_version} is the {alias} (in production)"
        kept = [names[c] for c in request.classes if c not in verified_forgotten(own.tags)]
        if not kept:
            return text
        # Its gate held it for that, and a reviewer promoted it over the gate.
        decision = own.tags.get("gate_decision", "no gate decision")
        return (
            f"{text}, but was NOT measured to have forgotten {kept} ({decision} by {own.tags.get('promoted_by', '?')}):"
            " the deletion is not in effect in production; a new request for them is taken, and the next batch "
            "forgets them again"
        )
    text = f"version {request.model_version} is not in production (aliases: {list(own.aliases) or 'none'})"
    champion = next((v for v in registry.list_versions() if alias in v.aliases), None)
    if champion is None:
        return f"{text}; no version is the {alias}"
    kept = [names[c] for c in request.classes if c not in verified_forgotten(champion.tags)]
    if kept:
        return (
            f"{text}; the {alias}, version {champion.version}, was NOT measured to have forgotten {kept}: "
            "the deletion is not in effect in production"
        )
    return (
        f"{text}; the {alias}, version {champion.version}, was measured to have forgotten "
        f"{[names[c] for c in request.classes]} too"
    )


def write_batch_report(ws: Workspace, batch_id: str, out: Path) -> Path:
    """The HTML evidence report of one batch (see ``unsir_pipeline.governance.report``)."""
    from unsir_pipeline.governance.report import batch_report_html

    log = existing_audit_log(ws)
    if log is None:  # no trail was ever started: nothing to report on
        raise UnlearningInputError(f"no audit record mentions batch {batch_id!r}; known ids: []")
    chain, trail = log.verify_and_read()
    if isinstance(trail, AuditError):
        raise trail
    records = [r for r in trail if r.payload.get("batch_id") == batch_id]
    if not records:
        raise UnlearningInputError(f"no audit record mentions batch {batch_id!r}; known ids: {batch_ids_of(trail)}")
    ids = sorted({i for r in records for i in r.request_ids})
    requests = stored_requests(ws, ids) if ids else []
    registry = existing_registry(ws)
    has_model = registry is not None and registry.has_model()
    aliases = {v.version: list(v.aliases) for v in registry.list_versions()} if registry and has_model else {}
    # What reviewers decided about the version the batch registered, since: their records
    # carry no batch id, and the gate's decision alone would read "held" after a rejection.
    registered = [r.payload.get("model_version") for r in records if r.event == "model_registered"]
    reviews = [
        r
        for r in trail
        if r.event in ("version_promoted", "version_rejected")
        and registered
        and r.payload.get("model_version") == registered[-1]
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    # Where each version's evidence is: a batch that found its classes already forgotten
    # registered nothing and points there.
    evidence_ids = {
        r.payload["model_version"]: r.payload["batch_id"]
        for r in trail
        if r.event == "model_registered"
        and isinstance(r.payload.get("model_version"), int)
        and r.payload.get("batch_id")
    }
    disagreements = [
        problem
        for request in requests
        for problem in _store_against_intake(
            request,
            [r for r in trail if r.event == intake_event(request) and request.id in r.request_ids],
            chain.bad_seqs,
        )
    ]
    out.write_text(
        batch_report_html(batch_id, records, requests, chain, aliases, reviews, evidence_ids, disagreements),
        encoding="utf-8",
    )
    return out


@dataclass(frozen=True)
class TrailReport:
    """What ``unsir audit verify`` found: the chain's own check, then every disagreement between
    the trail, the request store and the registry (``problems``), and what was not checked."""

    chain: VerifyResult
    problems: tuple[str, ...]
    warnings: tuple[str, ...]
    records: int
    registry_checked: bool  # False where no registry database exists to read
    # False where no trail was ever started and nothing needed one (a freshly bootstrapped project).
    trail_exists: bool
    # Whether the head anchor carries a signature, checked or not (chain.signed: verified with the key).
    head_signed: bool
    # Whether the registry holds the model (False before `unsir bootstrap`: nothing to verify yet).
    registered: bool

    @property
    def ok(self) -> bool:
        return self.chain.ok and not self.problems


def _head_is_signed(log: AuditLog | None) -> bool:
    try:
        return log is not None and log.head_is_signed()
    except AuditError:  # an unreadable anchor: the chain check names it already
        return False


def _unkeyed_warning(head_signed: bool) -> str:
    """What verifying without the audit key leaves unchecked: a signed anchor's signature, or,
    on an unsigned trail, protection against anyone who can write the state directory."""
    if head_signed:
        return (
            "the head anchor is signed, but this process has no audit key to check the signature (set "
            "UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE): the chain and the anchor's numbers are verified, the "
            "signature is not"
        )
    return (
        "the head anchor is not signed (no UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE): the trail "
        "is protected against accidents, not against someone who can write the state directory"
    )


def verify_trail(ws: Workspace) -> TrailReport:
    """Verify the chain and its anchors, and cross-check the trail with the request store and
    the registered versions. Reads only (an auditor's copy may be read-only) and never creates or
    resets a trail (a deleted one is a problem) or a SQLite registry (a missing one is not
    cross-checked). An intake or withdrawal record a killed `request add` or `request withdraw`
    left unwritten is a warning: the next request, forget, batch or withdrawal records it
    (:func:`~unsir_pipeline.governance.stores.intake_trail`)."""
    target = state_target(ws, ws.params.requests.audit_log)
    problems: list[str] = []
    warnings: list[str] = []
    key = audit_key(ws)
    existed = AuditLog.exists(target)
    # A missing trail is a problem unless the registry holds only the original (decided below).
    missing_trail = None
    if not existed:
        where = target if isinstance(target, Path) else f"in {StateDatabase(target).shown}"
        missing_trail = f"the audit trail {where} does not exist"
        problems.append(missing_trail)
        chain = VerifyResult(ok=True, records=0, first_bad_seq=None, problem=None)
        records: list[AuditRecord] = []
        log = None
    else:
        log = AuditLog(target, key=key, read_only=True)
        chain, read = log.verify_and_read()
        if isinstance(read, AuditError):  # an unreadable record: the chain check names it already
            records = []
            problems.append(str(read))
        else:
            records = read
    head_signed = _head_is_signed(log)
    if key is None:
        warnings.append(_unkeyed_warning(head_signed))

    store = existing_request_store(ws)
    requests = store.list() if store is not None else []
    request_problems, request_warnings = _requests_against_trail(requests, records, existed, chain.bad_seqs)
    problems += request_problems
    warnings += request_warnings

    registry = existing_registry(ws)
    registered = False
    try:
        registered = registry is not None and registry.has_model()
        if registry is not None and registered:
            versions = {v.version: v for v in registry.list_versions()}
            tag = registry.model_tags().get(AUDIT_HEAD_TAG)
            if missing_trail and tag is None and all(v.tags.get("origin") == "bootstrap" for v in versions.values()):
                # Nothing filed and only bootstrap's original registered: nothing was ever recorded.
                problems.remove(missing_trail)
            if log is not None:
                anchor_problem = registry_anchor_problem(log, tag, key)
                if anchor_problem:
                    problems.append(anchor_problem)
            elif tag is not None:
                problems.append(f"the registry anchored the trail at {tag}, but the trail file is gone (deleted?)")
            if tag is None:
                lost = lost_registry_problem(ws, records)
                if lost:
                    problems.append(lost)
                else:
                    warnings.append(f"the registry holds no {AUDIT_HEAD_TAG} anchor yet (no batch recorded a version)")
            problems += _versions_against_trail(versions, records, requests)
            unrecorded_problems, unrecorded_warnings = _unrecorded_versions(
                versions, records, ws.params.registry.champion_alias
            )
            problems += unrecorded_problems
            warnings += unrecorded_warnings
            recorded_keys = {r.idempotency_key for r in records}  # read once, not per version
            for number, info in sorted(versions.items()):
                if not unrecorded_promotion(recorded_keys, info.tags):
                    continue
                # As for a version without a record: a problem while it is in production.
                unrecorded = (
                    f"version {number} was promoted by hand ({info.tags['gate_decision']}, by "
                    f"{info.tags.get('promoted_by', '?')}: {info.tags.get('promotion_reason', '?')}), but no "
                    "version_promoted record says so (the promotion stopped before recording it)"
                )
                if ws.params.registry.champion_alias in info.aliases:
                    problems.append(f"{unrecorded}; `unsir promote {number} --reason ...` records it")
                else:
                    warnings.append(unrecorded)
            under_way = promotion_under_way(registry)
            if under_way is not None:
                problems.append(
                    f"a promotion of version {under_way['version']} stopped before moving the "
                    f"{ws.params.registry.champion_alias} (registry tag {PROMOTION_UNDER_WAY_TAG}); the next run, "
                    "request or promotion finishes it"
                )
            undone, overridden = champion_problems(list(versions.values()), ws.params.registry.champion_alias)
            problems += undone
            warnings += overridden
        else:
            lost = lost_registry_problem(ws, records)
            if missing_trail and not lost and not requests:
                # Nothing registered and nothing filed (before `unsir bootstrap`): nothing was recorded.
                problems.remove(missing_trail)
            if lost:
                problems.append(lost)
            elif registry is None:
                warnings.append(
                    f"no registry database {ws.registry_database} (nothing registered yet): the registry is not "
                    "cross-checked"
                )
            else:
                warnings.append("no model is registered: nothing to cross-check in the registry")
    except RegistryError as err:
        problems.append(f"cannot cross-check the registry: {err}")
    return TrailReport(
        chain=chain,
        problems=tuple(problems),
        warnings=tuple(warnings),
        records=len(records),
        registry_checked=registry is not None,
        trail_exists=existed,
        head_signed=head_signed,
        registered=registered,
    )


def _requests_against_trail(
    requests: list[DeletionRequest], records: list[AuditRecord], trail_exists: bool, broken: frozenset[int]
) -> tuple[list[str], list[str]]:
    """Problems and warnings of the request store read against the trail (``broken``: the
    numbers of the records that failed the chain's check)."""
    problems: list[str] = []
    warnings: list[str] = []
    if requests and not records:
        where = "does not exist" if not trail_exists else "is empty"
        problems.append(
            f"the request store holds {len(requests)} request(s) but the audit trail {where}: trail deleted?"
        )
        return problems, warnings
    known = {r.id for r in requests}
    named: dict[str, list[AuditRecord]] = {}
    for rec in records:
        for request_id in rec.request_ids:
            named.setdefault(request_id, []).append(rec)
            if request_id not in known:
                problems.append(
                    f"record {rec.seq} ({rec.event}) names request {request_id}, which the request store does not "
                    "hold (deleted?)"
                )
    for request in requests:
        mine = named.get(request.id, [])
        intake = intake_event(request)
        problems += _store_against_intake(request, [r for r in mine if r.event == intake], broken)
        if not any(r.event == intake for r in mine):
            if request.status in INTAKE_RECOVERABLE and not mine:
                warnings.append(
                    f"request {request.id} ({request.status}) has no {intake} record yet: its `request add` stopped "
                    "between storing and recording it; the next request, forget or batch records it"
                )
            else:
                problems.append(f"request {request.id} ({request.status}) has no {intake} record in the trail")
        # model_registered names the batch's requests too: a batch killed between marking them
        # done and recording batch_finished still leaves this evidence.
        if request.status == "done" and not any(
            r.event in ("model_registered", "batch_finished")
            and r.payload.get("model_version") == request.model_version
            for r in mine
        ):
            problems.append(
                f"request {request.id} is done with version {request.model_version}, but no "
                "model_registered or batch_finished record says so"
            )
        if request.status == "withdrawn" and not any(r.event == "request_withdrawn" for r in mine):
            # As an intake record: the next intake writes it from the store (record_missing_withdrawals).
            warnings.append(
                f"request {request.id} is withdrawn ({request.error}), but no request_withdrawn record says so yet: "
                "its `request withdraw` stopped between the store and the trail; the next request, forget, batch "
                "or withdrawal records it"
            )
        if (request.error or "").startswith(RETRIED_BY) and request.status == "pending":
            key = retry_key(request)
            if not any(r.event == "request_retried" and r.idempotency_key == key for r in mine):
                warnings.append(
                    f"request {request.id} is pending again ({request.error}), but no request_retried record says "
                    "so yet: its `request retry` stopped between the store and the trail; the next request, forget, "
                    "batch, withdrawal or retry records it"
                )
    return problems, warnings


def _store_against_intake(request: DeletionRequest, intakes: list[AuditRecord], broken: frozenset[int]) -> list[str]:
    """What the request store says of ``request`` that its intake record, on the hash chain, does
    not: who filed it, why, which classes. The store has no chain of its own; edited after the
    request was recorded, it would show the forged values (in `request show`, the evidence
    report) with nothing failing. A field an older record does not carry is not compared. Where
    the record itself fails the chain's check (``broken``), it is the one edited, and the store
    says what it held."""
    if not intakes:
        return []
    record = intakes[0]
    edited = (
        "that record fails its hash: edited on the trail; the store holds what was filed"
        if record.seq in broken
        else "the store edited since?"
    )
    stored: dict[str, object] = {
        "requester": request.requester,
        "reason": request.reason,
        "classes": list(request.classes),
        "class_names": list(request.class_names),
        "requested": list(request.requested),
    }
    recorded = {"requester": record.actor, **record.payload}
    return [
        f"request {request.id}: the request store says {field} {value!r}, but its {record.event} record "
        f"{record.seq} says {recorded[field]!r} ({edited})"
        for field, value in stored.items()
        if field in recorded and recorded[field] != value
    ]


def _unrecorded_versions(
    versions: dict[int, VersionInfo], records: list[AuditRecord], champion_alias: str
) -> tuple[list[str], list[str]]:
    """Versions no record registered: a run stopped between registering and recording, or a
    version made outside the pipeline (MLflow's UI or API). The original that ``unsir bootstrap``
    registered has no deletion to record. A champion without a record is a problem: the model in
    production has no evidence on the record; any other such version, a warning."""
    recorded = {r.payload.get("model_version") for r in records if r.event == "model_registered"}
    # The runs the trail saw start (a batch's claim, a forget's intake): a version one of them
    # registered was stopped before its record, which the next batch writes from its tags.
    started = {
        r.payload["run_key"]: r.payload.get("batch_id")
        for r in records
        if r.payload.get("run_key")
        and (r.event in ("batch_started", "batch_resumed") or r.payload.get("via") == "unsir forget")
    }
    problems: list[str] = []
    warnings: list[str] = []
    for number, info in sorted(versions.items()):
        if number in recorded or AUDIT_SEQ_TAG in info.tags or info.tags.get("origin") == "bootstrap":
            continue
        run_key = info.tags.get("run_key")
        if not info.ready:  # a killed registration: no model, and no batch records it
            why = f"its registration never completed (it is {info.status}): it holds no model"
        elif run_key is not None and run_key in started:
            run = str(started[run_key] or run_key)
            whose = f"forget run {run}" if run.startswith(FORGET_PREFIX) else f"batch {run}"
            why = (
                f"its {whose} stopped after registering it, before recording it; the next `unsir batch run` "
                "records it from the registry's tags"
            )
        else:
            why = "no run recorded its registration (stopped before it did, or registered outside the pipeline)"
        if champion_alias in info.aliases:
            problems.append(f"the {champion_alias}, version {number}, has no record on the trail: {why}")
        else:
            warnings.append(f"version {number} has no record on the trail: {why}")
    # A run records its gate's decision after the gate moved the alias: one stopped in between
    # leaves a version promoted by the gate (its tag) whose decision the trail never heard of.
    decided = {r.payload.get("model_version") for r in records if r.event == "gate_decision"}
    for number, info in sorted(versions.items()):
        if number in recorded and number not in decided and info.tags.get("gate_decision") == "promoted":
            warnings.append(
                f"version {number} was promoted by its gate (tag gate_decision), but no gate_decision record "
                "says so: its run stopped after the gate decided, before recording it"
            )
    return problems, warnings


def _versions_against_trail(
    versions: dict[int, VersionInfo], records: list[AuditRecord], requests: list[DeletionRequest]
) -> list[str]:
    problems: list[str] = []
    by_seq = {r.seq: r for r in records}
    for rec in records:
        if rec.event != "model_registered" or not isinstance(rec.payload.get("model_version"), int):
            continue
        number = rec.payload["model_version"]
        info = versions.get(number)
        if info is None:
            problems.append(
                f"record {rec.seq} registered version {number}, which the registry does not hold (deleted?)"
            )
            continue
        recorded = rec.payload.get(WEIGHTS_SHA256_TAG)
        if recorded and info.tags.get(WEIGHTS_SHA256_TAG) != recorded:
            problems.append(
                f"version {number}: {WEIGHTS_SHA256_TAG} tag {info.tags.get(WEIGHTS_SHA256_TAG)} differs from "
                f"record {rec.seq}'s {recorded}"
            )
    for number, info in versions.items():
        seq, digest = info.tags.get(AUDIT_SEQ_TAG), info.tags.get(AUDIT_HASH_TAG)
        if seq is None:
            continue
        registering = by_seq.get(int(seq)) if seq.isdigit() else None
        if registering is None or registering.hash != digest:
            found = "is missing" if registering is None else f"has hash {registering.hash[:12]}..."
            problems.append(
                f"version {number} was registered by record {seq} (hash {str(digest)[:12]}...), but that record {found}"
            )
    for request in requests:
        if request.status == "done" and request.model_version not in versions:
            problems.append(
                f"request {request.id} is done with version {request.model_version}, which the registry does not hold"
            )
    return problems
