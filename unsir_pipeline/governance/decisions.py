"""A reviewer's decisions on registered versions: the versions waiting for one, a promotion to
champion by hand and a rejection, each recorded on the version and on the audit trail.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.registry import ModelRegistry, VersionInfo, existing_registry, registry_for
from unsir_pipeline.governance.audit import AuditLog
from unsir_pipeline.governance.deletion_requests import DeletionRequest
from unsir_pipeline.governance.promotion import (
    FORGOTTEN_TAG,
    NEVER_JUDGED,
    PROMOTION_ID_TAG,
    awaiting_review,
    finish_interrupted_promotion,
    promote_by_hand,
    promotion_record_key,
)
from unsir_pipeline.governance.stores import audit_log, request_store, require_writable_state
from unsir_pipeline.governance.trail import (
    anchor_in_registry,
    provenance,
    require_recordable,
    require_trail_the_registry_anchored,
)
from unsir_pipeline.settings.workspace import Workspace


def versions_awaiting_review(ws: Workspace) -> list[dict]:
    """Versions a reviewer must decide: held by the gate, or never judged by it (a run stopped
    between registering and the gate)."""
    out = []
    registry = existing_registry(ws)
    for v in registry.list_versions() if registry is not None else []:
        held = v.tags.get("gate_decision") == "held"
        if awaiting_review(v.tags):
            out.append(
                {
                    "version": v.version,
                    "aliases": list(v.aliases),
                    "gate_reasons": v.tags.get("gate_reasons", "") if held else NEVER_JUDGED,
                    "forgotten_classes": json.loads(v.tags.get(FORGOTTEN_TAG, "[]")),
                    "run_key": v.tags.get("run_key"),
                }
            )
    return out


def promote(ws: Workspace, version: int, by: str, reason: str, *, override: bool = False) -> list[str]:
    """Move ``champion`` to ``version`` by hand; recorded on the version and in the audit trail.

    Refused when the version failed its gate or would bring back a class that a promoted
    version forgot, unless ``override``: then the overridden problems go on the record.
    """
    require_recordable(by, reason)
    require_writable_state(
        ws,
        f"a promotion of version {version} to the {ws.params.registry.champion_alias!r} writes the registry and the "
        "audit trail",
    )
    log = audit_log(ws)
    require_trail_the_registry_anchored(ws, log, what=f"a promotion of version {version}")
    finish_interrupted_promotion(ws)
    registry = registry_for(ws)
    previous = registry.resolve_alias(ws.params.registry.champion_alias) if registry.has_model() else None
    if previous == version:
        tags = registry.get_version(version).tags
        if unrecorded_promotion({r.idempotency_key for r in log.records(event="version_promoted")}, tags):
            # A promotion stopped between moving the alias and its record: record it now, as
            # its tags say it was decided (who, why, what was overridden).
            overridden = [tags["overridden_problems"]] if tags.get("overridden_problems") else []
            _record_promotion(
                ws,
                log,
                version,
                tags.get("promoted_by", by),
                tags.get("promotion_reason", reason),
                overridden,
                promotion_id=tags[PROMOTION_ID_TAG],
                extra={"recovered_from": "registry tags (the promotion stopped before recording it)"},
            )
            anchor_in_registry(ws, log, registry)
            return overridden
        # Promoting it again would only overwrite the gate's decision on its tags
        # ("promoted" -> "promoted-by-hand") and record a promotion that moved nothing.
        raise UnlearningInputError(
            f"version {version} is already the {ws.params.registry.champion_alias!r}; nothing to promote"
        )
    promotion_id = uuid.uuid4().hex
    overridden = promote_by_hand(ws, version, reason, by, override=override, promotion_id=promotion_id)
    registry.set_version_tags(version, {"review_decision": "promoted", "reviewed_by": by, "review_reason": reason})
    _record_promotion(
        ws, log, version, by, reason, overridden, promotion_id=promotion_id, extra={"previous_champion": previous}
    )
    anchor_in_registry(ws, log, registry)
    return overridden


def _record_promotion(
    ws: Workspace,
    log: AuditLog,
    version: int,
    by: str,
    reason: str,
    overridden: list[str],
    *,
    promotion_id: str,
    extra: dict,
) -> None:
    requests = [r.id for r in request_store(ws).list(model_version=version)]
    log.append(
        "version_promoted",
        actor=by,
        request_ids=requests,
        idempotency_key=promotion_record_key(promotion_id),
        payload={
            "model_version": version,
            **extra,
            "reason": reason,
            "override": bool(overridden),
            "overridden_problems": overridden,
            **provenance(ws),
        },
    )


def unrecorded_promotion(recorded_keys: set[str | None], tags: dict[str, str]) -> bool:
    """A version promoted by hand whose ``version_promoted`` record is not on the trail (whose
    records' idempotency keys are ``recorded_keys``): the promotion stopped after moving the
    alias (older promotions carry no id and are not judged)."""
    promotion_id = tags.get(PROMOTION_ID_TAG)
    if not promotion_id or tags.get("gate_decision") not in ("promoted-by-hand", "promoted-by-override"):
        return False
    return promotion_record_key(promotion_id) not in recorded_keys


@dataclass(frozen=True)
class Rejection:
    """A version's rejection as recorded: who and why (a stopped rejection's own, from its
    version's tags, when a rerun finished it), and the requests sent back to pending."""

    by: str
    reason: str
    returned: list[DeletionRequest]
    recovered: bool = False


def reject(ws: Workspace, version: int, by: str, reason: str) -> Rejection:
    """Reject a version held for review: it can never become champion, and the requests it
    completed go back to pending for the next batch. Any other version is refused before
    anything changes, naming its state; a rejection stopped before its record is finished."""
    require_recordable(by, reason)
    require_writable_state(
        ws, f"a rejection of version {version} writes the registry, the request store and the audit trail"
    )
    log = audit_log(ws)
    require_trail_the_registry_anchored(ws, log, what=f"a rejection of version {version}")
    finish_interrupted_promotion(ws)  # a version about to become champion cannot be rejected
    registry = registry_for(ws)
    info = registry.get_version(version)
    tags = info.tags
    if tags.get("review_decision") == "rejected" and not _rejection_recorded(log, version):
        # A rejection stopped between tagging the version and its record: finish it as decided.
        by, reason = tags.get("reviewed_by", by), tags.get("review_reason", reason)
        recovered = {"recovered_from": "registry tags (the rejection stopped before recording it)"}
        return Rejection(by, reason, _finish_rejection(ws, log, registry, info, by, reason, extra=recovered), True)
    refusal = _why_not_rejectable(ws, info)
    if refusal:
        raise UnlearningInputError(refusal)
    registry.set_version_tags(version, {"review_decision": "rejected", "reviewed_by": by, "review_reason": reason})
    return Rejection(by, reason, _finish_rejection(ws, log, registry, info, by, reason, extra={}))


def _rejection_recorded(log: AuditLog, version: int) -> bool:
    return any(r.payload.get("model_version") == version for r in log.records(event="version_rejected"))


def _why_not_rejectable(ws: Workspace, info: VersionInfo) -> str | None:
    """Why ``info``'s version may not be rejected, and what to do instead; None when it is held
    for review. A rejection is a reviewer's answer to a gate that held a version: the original,
    a promoted version or the champion was never held, and rejecting it would send requests
    its successors completed back to the queue, and refuse every forget from it."""
    version, tags, champion = info.version, info.tags, ws.params.registry.champion_alias
    if tags.get("review_decision") == "rejected":
        return (
            f"version {version} was already rejected (by {tags.get('reviewed_by')}: {tags.get('review_reason')}); "
            "nothing to do"
        )
    if awaiting_review(tags):
        if champion in info.aliases:  # moved there around the gate (the MLflow UI or API)
            return f"version {version} is the {champion!r}; promote another version first, then reject it"
        return None
    # Neither held nor never judged: the original, or promoted by its gate or by hand.
    if tags.get("origin") == "bootstrap":
        state = "the original model, registered by `unsir bootstrap` (no gate judges it)"
    elif tags.get("gate_decision") == "promoted":
        state = "promoted by its promotion gate"
    else:
        state = f"promoted by hand (by {tags.get('promoted_by')}: {tags.get('promotion_reason')})"
    if champion in info.aliases:
        state += f", and the {champion!r}"
        instead = (
            f"to withdraw the {champion!r}, promote another version (`unsir promote VERSION --reason TEXT`), "
            "or forget from it (`unsir forget CLASSES`)"
        )
    else:
        instead = f"it is not the {champion!r}: nothing in production to withdraw"
    held = [v["version"] for v in versions_awaiting_review(ws)]
    return (
        f"version {version} was never held for review: it is {state}; expected a version held for "
        f"review (`unsir review list`: {held or 'none'}); {instead}"
    )


def _finish_rejection(
    ws: Workspace,
    log: AuditLog,
    registry: ModelRegistry,
    info: VersionInfo,
    by: str,
    reason: str,
    *,
    extra: dict,
) -> list[DeletionRequest]:
    """The writes after a rejection's tags: the challenger alias, the requests, the record."""
    version = info.version
    if ws.params.registry.challenger_alias in info.aliases:
        registry.delete_alias(ws.params.registry.challenger_alias)
    returned = request_store(ws).return_to_pending(version, f"version {version} rejected by {by}: {reason}")
    log.append(
        "version_rejected",
        actor=by,
        request_ids=[r.id for r in returned],
        payload={
            "model_version": version,
            **extra,
            "reason": reason,
            "requests_returned": [r.id for r in returned],
            **provenance(ws),
        },
    )
    anchor_in_registry(ws, log, registry)
    return returned
