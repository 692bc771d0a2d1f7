"""Writing the audit trail and anchoring it in the registry: every record a batch, a forget run
or a reviewer leaves (with the code, configuration and registry it links to), the trail's head
anchored in the registry after each version's records, and the checks that refuse to start a
change the trail could not record (a trail cut or rewritten since the registry anchored it, a
registry lost since the trail recorded its versions). Nothing here imports Prefect.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unsir_pipeline.adapters.provenance import git_commit
from unsir_pipeline.adapters.registry import (
    WEIGHTS_SHA256_TAG,
    ModelRegistry,
    RegistryError,
    RegistryFileDamaged,
    VersionInfo,
    existing_registry,
    registry_for,
)
from unsir_pipeline.governance.audit import AuditError, AuditLog, AuditRecord, head_mac
from unsir_pipeline.governance.deletion_requests import TEXT_LIMITS, check_request_text
from unsir_pipeline.governance.promotion import (
    DATA_DIGESTS_TAG,
    FORGOTTEN_TAG,
    PROMOTED_DECISIONS,
    VERIFIED_TAG,
    never_judged,
)
from unsir_pipeline.governance.report import recorded_metrics
from unsir_pipeline.governance.stores import audit_key, audit_log, existing_audit_log, request_store, state_target
from unsir_pipeline.settings.workspace import Workspace

if TYPE_CHECKING:  # a batch's records take its claim, whose module imports this one
    from unsir_pipeline.governance.claims import ClaimedBatch


SYSTEM_ACTOR = "deletion-batch"


# The audit chain's head as the registry last saw it (registered-model tag), and the record
# that registered each version (version tags): evidence kept outside the project's state.
AUDIT_HEAD_TAG = "audit_head"


AUDIT_SEQ_TAG = "audit_seq"


AUDIT_HASH_TAG = "audit_hash"


# Records after which the batch anchors the head in the registry: the version exists by then.
ANCHORED_EVENTS = {"model_registered", "gate_decision", "batch_finished"}


def provenance(ws: Workspace) -> dict[str, str]:
    """What every audit record links to on the code and configuration side, and which
    registry its version numbers belong to (with shared services, another one than the
    embedded default; any credentials in the URI are left out)."""
    return {"git_commit": git_commit(ws.root), "params_digest": ws.params.digest(), "registry": registry_name(ws)}


def registry_name(ws: Workspace) -> str:
    """The registry and model a record's version numbers belong to, without credentials."""
    return f"{_without_credentials(ws.params.registry.tracking_uri)}#{ws.params.registry.model_name}"


def _without_credentials(uri: str) -> str:
    scheme, separator, rest = uri.partition("://")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return uri
    return f"{scheme}://{rest.split('@', 1)[1]}"


FORGET_PREFIX = "forget-"


def forget_id(run_key: str) -> str:
    """The id of a forget run outside a batch: its request's ``batch_id`` and its records'."""
    return f"{FORGET_PREFIX}{run_key}"


# What each audit record of a batch says of it (ClaimedBatch.record_context).
BATCH_CONTEXT_KEYS = ("batch_id", "run_key", "attempt")


def require_trail_the_registry_anchored(
    ws: Workspace,
    audit: AuditLog | None = None,
    *,
    what: str = "a batch",
    read_only: bool = False,
    unreachable_raises: bool = False,
) -> RegistryError | None:
    """Refuse (``AuditError``) to start ``what`` when the trail no longer holds the record the
    registry anchored (deleted, cut or rewritten), or would refuse a new record (head anchor
    unreadable, behind the chain, or signed with a key this process lacks). Checked before a
    batch claims anything or computes, a forget starts, a request is stored or a version is
    promoted or rejected; otherwise the change would be made and the command fail at its record.
    A registry file that is damaged raises ``RegistryFileDamaged``; one whose server is down is
    left to the command's first registry call, unless ``unreachable_raises`` (a caller that
    would only ask the same server again, before anything is claimed or stored: `unsir batch
    run`, a deletion request), when its ``RegistryError`` is raised here, after one wait through
    the retries rather than two. Otherwise that error is returned (None when the server
    answered): a caller that goes on first (a batch's claim, to leave the error on its
    requests) raises it at its next registry call instead of making that call wait again.

    ``read_only`` (an empty queue answered on a read-only copy): the trail and the registry are
    read as they are, one never created is not created (none holds no record), and whether the
    trail would take a record is not asked: nothing is recorded there."""
    if read_only:
        audit, registry = existing_audit_log(ws), existing_registry(ws)
    else:
        audit, registry = audit or audit_log(ws), registry_for(ws)
    unreachable: RegistryError | None = None
    try:
        tag = registry.model_tags().get(AUDIT_HEAD_TAG) if registry is not None else None
    except RegistryFileDamaged:
        raise  # a file to restore from a backup, not a server that is down: nothing can go on
    except RegistryError as err:
        if unreachable_raises:
            raise
        # Unreachable: the caller raises it where it would call the registry next, inside the
        # flow's error handling, which records the failure on its requests; nothing to compare
        # with here (and no anchor read is not an anchor missing: the registry was not lost).
        tag, unreachable = None, err
    if audit is None:
        problem = f"the registry anchored the trail at {tag}, but there is no trail (deleted?)" if tag else None
    else:
        problem = registry_anchor_problem(audit, tag, audit_key(ws))
    if problem is None and tag is None and unreachable is None:
        problem = lost_registry_problem(ws, audit.records(event="model_registered") if audit else [])
    refused: type[AuditError] = AuditError
    if problem is None and audit is not None and not audit.db.read_only:
        try:
            audit.check_appendable()
        except AuditError as err:
            problem = f"the audit trail would refuse its record: {err}"
            refused = type(err)  # an AuditKeyError stays a setting to fix (exit 2)
    if problem:
        raise refused(f"refusing to start {what}: {problem}; run `unsir audit verify`")
    return unreachable


def require_registry_not_lost(ws: Workspace) -> None:
    """Before ``unsir bootstrap`` registers an original into an empty registry: refuse
    (``AuditError``) when the trail records versions of this registry, i.e. its database was
    lost or replaced. A new original knows every class deleted since, and forgetting from it
    would put them back in production."""
    target = state_target(ws, ws.params.requests.audit_log)
    if not AuditLog.exists(target):  # a first bootstrap: nothing recorded, nothing created here
        return
    problem = lost_registry_problem(ws, AuditLog(target, key=audit_key(ws)).records(event="model_registered"))
    if problem:
        raise AuditError(
            f"refusing to bootstrap: {problem}. Restore the registry (e.g. state/mlflow/ from a backup); "
            "to start over on purpose, give registry.model_name a new name"
        )


def lost_registry_problem(ws: Workspace, records: list[AuditRecord]) -> str | None:
    """For a registry that holds no anchor: ``records`` register versions in it. Every recorded
    registration anchors the trail there, so the registry was lost or replaced."""
    name = registry_name(ws)
    recorded = sorted(
        {
            r.payload["model_version"]
            for r in records
            if r.event == "model_registered"
            and r.payload.get("registry") == name
            and isinstance(r.payload.get("model_version"), int)
        }
    )
    if not recorded:
        return None
    return (
        f"the audit trail records versions {recorded} of {name}, but that registry holds no "
        f"{AUDIT_HEAD_TAG} anchor (no model, or not the one recorded): its database was lost or replaced"
    )


# Events that happen once per claim (a resumed batch starts, and may fail, again); the others
# describe the run's result, which a resumed batch reproduces and must not record twice.
PER_ATTEMPT_EVENTS = {"batch_started", "batch_resumed", "batch_failed", "validation_failed"}


def record(ws: Workspace, batch: ClaimedBatch, event: str, payload: dict, *, actor: str = SYSTEM_ACTOR) -> None:
    """One audit record of a batch's step, keyed so that a resumed batch does not repeat it."""
    # Keyed by the claim, not by the attempt count alone: a batch that failed on its setup took
    # its attempt back, and the next one's records would otherwise be taken for its own.
    per_claim = f":attempt-{batch.attempt}@{batch.claimed_at}" if event in PER_ATTEMPT_EVENTS else ""
    key = f"{batch.run_key}:{event}{per_claim}"
    _append_anchored(
        ws, event, {**batch.record_context, **payload}, actor=actor, request_ids=batch.request_ids, key=key
    )


RECOVERED_FROM_TAGS = "registry tags (the batch stopped before recording them)"


def record_registration_from_tags(
    ws: Workspace, version: VersionInfo, context: dict, request_ids: list[str], *, key_prefix: str | None = None
) -> None:
    """The ``model_registered`` and ``gate_decision`` records of ``version``, whose batch
    (``context``: its batch_id, run_key and attempt) was stopped after registering it, before
    its trail said so, written from the registry's tags and marked ``recovered_from``. Keyed as
    the batch's own records (by ``key_prefix``, default its run key; a forget run's are keyed by
    its id), so a no-op where they exist. A version the gate never judged gets no
    ``gate_decision`` (it waits in review)."""
    tags = version.tags
    links = {"mlflow_run_id": tags.get("mlflow_run_id"), "prefect_flow_run_id": tags.get("prefect_flow_run_id")}
    registered = {
        "model_version": version.version,
        "parent_version": int(tags["parent_version"]) if tags.get("parent_version", "").isdigit() else None,
        "forgotten_classes": json.loads(tags.get(FORGOTTEN_TAG, "[]")),
        "verified_forgotten_classes": json.loads(tags.get(VERIFIED_TAG, "[]")),
        "data_digests": json.loads(tags.get(DATA_DIGESTS_TAG, "{}")),
        "method": tags.get("method", "unsir"),
        **({"unsir_gate_reasons": json.loads(tags["unsir_gate_reasons"])} if tags.get("unsir_gate_reasons") else {}),
    }
    records = [("model_registered", {**registered, **links})]
    if not never_judged(tags):
        reasons = tags.get("gate_reasons", "")
        decision = {
            "model_version": version.version,
            "promoted": tags.get("gate_decision") in PROMOTED_DECISIONS,
            "reasons": reasons.split("; ") if reasons else [],
            **(
                {"previous_champion": int(tags["previous_champion"])}
                if tags.get("previous_champion", "").isdigit()
                else {}
            ),
        }
        records.append(("gate_decision", decision))
    for event, payload in records:
        _append_anchored(
            ws,
            event,
            {**context, **payload, "recovered_from": RECOVERED_FROM_TAGS},
            actor=SYSTEM_ACTOR,
            request_ids=request_ids,
            key=f"{key_prefix or context['run_key']}:{event}",
        )


@dataclass(frozen=True)
class InterruptedRegistration:
    """A version an earlier run registered and was stopped before recording, and what its
    records are written under: the run (``context``), its requests, and their key prefix."""

    version: VersionInfo
    context: dict
    request_ids: list[str]
    key_prefix: str | None = None


def interrupted_registrations(
    versions: list[VersionInfo], records: list[AuditRecord], resumed: str | None
) -> list[InterruptedRegistration]:
    """The READY versions no ``model_registered`` record names whose run the trail saw start (a
    batch's claim, a forget run's intake), but the run ``resumed`` (it records its own). One
    left PENDING_ or FAILED_REGISTRATION by a killed run is no model: a retry registers a fresh
    one under the same key, so it is not recorded as registered."""
    recorded = {r.payload.get("model_version") for r in records if r.event == "model_registered"}
    claims = {r.payload.get("run_key"): r for r in records if r.event in ("batch_started", "batch_resumed")}
    forgets = {
        r.payload.get("run_key"): r
        for r in records
        if r.event == "request_received" and r.payload.get("via") == "unsir forget" and r.payload.get("run_key")
    }
    found = []
    for version in versions:
        run_key = version.tags.get("run_key")
        if version.version in recorded or run_key is None or run_key == resumed or not version.ready:
            continue
        claim, forget = claims.get(run_key), forgets.get(run_key)
        if claim is not None:
            context = {key: claim.payload.get(key) for key in BATCH_CONTEXT_KEYS}  # as the claim recorded it
            found.append(InterruptedRegistration(version, context, list(claim.request_ids)))
        elif forget is not None:
            run_id = forget_id(run_key)
            context = {"batch_id": run_id, "run_key": run_key, "via": "unsir forget"}  # as record_forget
            found.append(InterruptedRegistration(version, context, list(forget.request_ids), key_prefix=run_id))
    return found


def record_interrupted_registrations(ws: Workspace, batch: ClaimedBatch | None) -> list[int]:
    """Put on the trail every version an earlier batch registered and was stopped before
    recording (killed after its registration, or after its gate promoted it), when ``batch``
    does not resume that batch (another request was filed meanwhile, or its resumption was
    refused; or ``None``: a batch with nothing to claim, its killed batch's requests failed on
    release): a resumed batch reruns its steps and records them itself, but nothing else would,
    and a champion would serve with no evidence on the trail. A forget run killed the same way
    (``unsir forget``: it is never resumed) is recorded too. Each is recorded under the earlier
    batch or forget run and its requests, as its claim record (a forget run's: its request's
    intake record) names them. Returns the versions recorded."""
    registry = registry_for(ws)
    if not registry.has_model():  # nothing registered yet: nothing to record
        return []
    resumed = batch.run_key if batch is not None else None
    found = interrupted_registrations(registry.list_versions(), audit_log(ws).records(), resumed)
    for interrupted in found:
        record_registration_from_tags(
            ws, interrupted.version, interrupted.context, interrupted.request_ids, key_prefix=interrupted.key_prefix
        )
    return [interrupted.version.version for interrupted in found]


def record_forget(ws: Workspace, result: dict, *, actor: str, through: str = "gate_decision") -> str:
    """Put a forget run outside a batch (``unsir forget``) on the trail: its evidence, the
    version it registered and the gate's decision, anchored in the registry as a batch's are,
    with ``actor`` as who asked; the records end with ``through`` (the flow records through
    ``model_registered`` before its gate runs). Returns the id its records carry as
    ``batch_id`` (what ``unsir audit report`` takes). Keyed by the run, so recording it again
    adds nothing."""
    run_id = forget_id(result["run_key"])
    request_ids = [r.id for r in request_store(ws).batch_requests(run_id)]  # its own (claim_forget)
    for event, payload in run_records(result):
        _append_anchored(
            ws,
            event,
            {"batch_id": run_id, "run_key": result["run_key"], "via": "unsir forget", **payload},
            actor=actor,
            request_ids=request_ids,
            key=f"{run_id}:{event}",
        )
        if event == through:
            break
    return run_id


def run_records(result: dict) -> list[tuple[str, dict]]:
    """The audit records of a finished ``unlearn`` flow run (its result dict): what was
    validated, the evidence of forgetting, the version registered, the gate's decision."""
    links = {"mlflow_run_id": result["mlflow_run_id"], "prefect_flow_run_id": result["flow_run_id"]}
    version = result["new_version"]
    return [
        (
            "validation_passed",
            {"expectations_passed": result["expectations_passed"], "data_digests": result["data_digests"], **links},
        ),
        (
            "unlearning_metrics",
            {
                "forget_classes": result["forget_classes"],
                # Deletions made before and forgotten again by this run, nobody asking this time.
                "forgotten_again": result.get("forgotten_again", []),
                "all_forgotten": result["all_forgotten"],
                # Unprefixed: the registered model's figures; on a fallback to the retrained
                # model, UNSIR's (not registered) under unsir_ (report.recorded_metrics).
                "method": result.get("method", "unsir"),
                "metrics": recorded_metrics(result["metrics"], result.get("method", "unsir")),
                "per_class": result["per_class"],
                "compute_s": result["compute_s"],
                "device": result["device"],
                # UNSIR's premise, on the record: rounds of noise, impair and repair on D_r_sub
                # only, verified on the validation split; no forget-class training sample read.
                "rounds": result["rounds"],
                "verified": result["verified"],
                "reads_forget_train": result["reads_forget_train"],
                "verification_split": "val",
                **links,
            },
        ),
        (
            "model_registered",
            {
                "model_version": version,
                "parent_version": result["parent_version"],
                "forgotten_classes": result["all_forgotten"],
                "verified_forgotten_classes": result["verified_forgotten_classes"],
                "data_digests": result["data_digests"],
                # "retrain": UNSIR's model failed the gate, the retrained reference took its place.
                "method": result.get("method", "unsir"),
                **({"unsir_gate_reasons": result["unsir_gate_reasons"]} if result.get("unsir_gate_reasons") else {}),
                **links,
            },
        ),
        (
            "gate_decision",
            {
                "model_version": version,
                "promoted": result["promoted"],
                "reasons": result["gate_reasons"],
                **({"previous_champion": result["previous_champion"]} if result.get("previous_champion") else {}),
                **({"no_fallback_because": result["no_fallback_because"]} if result.get("no_fallback_because") else {}),
            },
        ),
    ]


def _append_anchored(ws: Workspace, event: str, payload: dict, *, actor: str, request_ids: list[str], key: str) -> None:
    """Append one record (idempotent by ``key``); after a version's registration, its decision
    or a batch's end, tag the version with its record and anchor the trail's head in the registry."""
    log = audit_log(ws)
    version = payload.get("model_version")
    registry = registry_for(ws) if event in ANCHORED_EVENTS else None
    if (
        registry is not None
        and event == "model_registered"
        and isinstance(version, int)
        and WEIGHTS_SHA256_TAG not in payload
    ):
        # The digest the registry checks at every load, kept in the trail too: a registry tag
        # changed later no longer matches the record.
        digest = registry.get_version(version).tags.get(WEIGHTS_SHA256_TAG)
        if digest:
            payload = {**payload, WEIGHTS_SHA256_TAG: digest}
    stored = log.append(
        event, actor=actor, request_ids=request_ids, idempotency_key=key, payload={**payload, **provenance(ws)}
    )
    if registry is not None:
        if event == "model_registered" and isinstance(version, int):
            registry.set_version_tags(version, {AUDIT_SEQ_TAG: str(stored.seq), AUDIT_HASH_TAG: stored.hash})
        anchor_in_registry(ws, log, registry)


def anchor_in_registry(
    ws: Workspace, log: AuditLog | None = None, registry: ModelRegistry | None = None
) -> tuple[int, str]:
    """Write the trail's head into the registry (registered-model tag ``audit_head``).

    The new head must extend the one anchored before: a trail that was deleted, cut or
    rewritten since is refused here, so the anchor is never moved onto a forged history. With
    an audit key the tag carries the HMAC too.
    """
    log = log or audit_log(ws)
    registry = registry or registry_for(ws)
    head = log.head()
    if head is None:
        raise AuditError(f"the audit trail {log.path} has no head anchor; run `unsir audit verify`")
    tag = registry.model_tags().get(AUDIT_HEAD_TAG)
    problem = registry_anchor_problem(log, tag, audit_key(ws))
    if problem:
        raise AuditError(f"refusing to re-anchor the audit trail in the registry: {problem}")
    records, head_hash = head
    if tag is not None and int(json.loads(tag)["records"]) >= records:
        # Another process (a promotion beside a batch) already anchored this head or a later one:
        # the anchor only moves forward.
        return records, head_hash
    value: dict[str, object] = {"records": records, "hash": head_hash}
    key = audit_key(ws)
    if key is not None:
        value["mac"] = head_mac(key, records, head_hash)
    registry.set_model_tag(AUDIT_HEAD_TAG, json.dumps(value, sort_keys=True, separators=(",", ":")))
    return records, head_hash


def registry_anchor_problem(log: AuditLog, tag: str | None, key: bytes | None) -> str | None:
    """Whether the trail still holds the record the registry's anchor names, with its hash."""
    if tag is None:
        return None
    try:
        anchored = json.loads(tag)
        records, head_hash = int(anchored["records"]), str(anchored["hash"])
    except (ValueError, TypeError, KeyError) as err:
        return f"the registry's {AUDIT_HEAD_TAG} tag is unreadable: {tag[:200]!r} ({err})"
    if (
        key is not None
        and "mac" in anchored
        and not hmac.compare_digest(str(anchored["mac"]), head_mac(key, records, head_hash))
    ):
        return f"the registry's {AUDIT_HEAD_TAG} tag has a signature that does not match the audit key"
    if records == 0:
        return None
    found = log.record_hash(records)
    if found is None:
        held = len(log.records())
        what = "the trail is empty (deleted?)" if held == 0 else f"the trail holds only {held} records (cut or reset?)"
        return f"the registry anchored record {records} (hash {head_hash[:12]}...), but {what}"
    if found != head_hash:
        return (
            f"the registry anchored record {records} with hash {head_hash[:12]}..., but the trail's "
            f"record {records} has hash {found[:12]}... (trail rewritten?)"
        )
    return None


def require_recordable(by: str, reason: str | None = None, *, by_name: str = "by", reason_name: str = "reason") -> None:
    """Who (and why) as the trail will hold them, checked with a request's rules before
    anything changes: a change whose record the trail then refused would have none."""
    check_request_text(by_name, by, limit=TEXT_LIMITS["requester"])
    if reason is not None:
        check_request_text(reason_name, reason, limit=TEXT_LIMITS["reason"])


def audit_path(ws: Workspace) -> Path:
    return ws.path(ws.params.requests.audit_log)
