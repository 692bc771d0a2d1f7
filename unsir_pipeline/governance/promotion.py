"""Lineage, the promotion gate and hand promotion: when a version may become champion.

A deletion stays deleted: a candidate becomes champion only when it has *measured* forgetting
(test-split accuracy at most ``gates.max_forget_acc``) of every class it was asked to forget and
of every class any promoted version ever forgot, so no promotion can bring a forgotten class
back. Tags keep what was requested apart from what was verified:

- ``forgotten_classes``: every class requested so far in this version's lineage;
- ``verified_forgotten_classes``: the classes this version was measured to have forgotten;
- ``rounds`` / ``verified``: how many UNSIR rounds ran and whether the validation check passed;
- ``method``: ``unsir``, or ``retrain`` when UNSIR's model failed the gate and the retrained
  reference was registered in its place (``unsir_gate_reasons``: why UNSIR's was not).
"""

from __future__ import annotations

import json
import math
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters import data_versioning
from unsir_pipeline.adapters.provenance import git_commit
from unsir_pipeline.adapters.registry import IDEMPOTENCY_TAG, ModelRegistry, VersionInfo, registry_for
from unsir_pipeline.governance.locks import promotion_lock
from unsir_pipeline.governance.stores import audit_log, request_store
from unsir_pipeline.settings.workspace import Workspace

FORGOTTEN_TAG = "forgotten_classes"
DATA_DIGESTS_TAG = "data_digests"  # the DVC md5 of every data file a version was made from
VERIFIED_TAG = "verified_forgotten_classes"
PROMOTED_DECISIONS = ("promoted", "promoted-by-hand", "promoted-by-override")
# On a version promoted by hand: the key of its ``version_promoted`` record on the audit trail.
PROMOTION_ID_TAG = "promotion_id"
# On the registered model while the champion is being moved: the version, its decision's tags
# and the promotion's id. Set before the version's tags, removed once the alias moved, so a
# promotion killed between its writes is finished by whoever reads it next.
PROMOTION_UNDER_WAY_TAG = "promotion_under_way"
GATE_ACTOR = "promotion-gate"
# Written by the gate beside ``gate_reasons`` (every reason, joined for people to read): the
# reasons of the bounds that failed, a JSON list, for the code that decides on them.
GATE_FAILED_BOUNDS_TAG = "gate_failed_bounds"
# The champion a gate promotion replaced (version tag; the gate_decision record says it too).
PREVIOUS_CHAMPION_TAG = "previous_champion"


class PromotionRefused(UnlearningInputError):
    """A hand promotion the rules refuse; the message lists every reason."""


class RejectedParentError(UnlearningInputError):
    """A forget was asked to start from a version a reviewer rejected."""


class DataLineageError(UnlearningInputError):
    """The project's data is not the data the parent model was trained on; the message lists
    every difference and the way out."""


@dataclass(frozen=True)
class ParentModel:
    """A registered version a run starts from: every class its lineage was asked to forget,
    those of them it did forget, and the data it came from."""

    version: int
    forgotten_classes: list[int]
    # Of forgotten_classes, those its evidence shows forgotten (classes_deleted_by): what "already
    # forgotten" means to a request, a batch and a run. A version promoted with --override over
    # its gate may lack some; a request for one of them is taken, and a run forgets it again.
    deleted_classes: list[int]
    # The DVC digests of the data it was trained (or unlearned) on, from its tags.
    data_digests: dict[str, str] = field(default_factory=dict)
    # "by WHO: REASON" when a reviewer rejected it (``unsir reject``), else empty.
    rejected: str = ""


def resolve_parent(registry: ModelRegistry, ref: str) -> ParentModel:
    """Which version an alias (or a version number) names, what it was asked to forget and has
    forgotten, and the data it came from (from its tags)."""
    version = int(ref) if ref.isdigit() else registry.resolve_alias(ref)
    tags = registry.get_version(version).tags
    return ParentModel(
        version,
        json.loads(tags.get(FORGOTTEN_TAG, "[]")),
        sorted(classes_deleted_by(tags)),
        json.loads(tags.get(DATA_DIGESTS_TAG, "{}")),
        rejected=f"by {tags.get('reviewed_by')}: {tags.get('review_reason')}"
        if tags.get("review_decision") == "rejected"
        else "",
    )


def require_unrejected_parent(parent: ParentModel) -> None:
    """Raise unless a reviewer left ``parent`` standing: a forget from a rejected version would
    carry the rejected weights back to production through a gate that passes (checked by the CLI
    before anything starts, and by the flow before it loads the parent)."""
    if parent.rejected:
        raise RejectedParentError(
            f"version {parent.version} was rejected in review ({parent.rejected}); expected a parent nobody "
            "rejected: forget from the champion (leave out --from) or another version, or promote this one "
            "first (`unsir promote VERSION --override --reason TEXT`)"
        )


def require_parents_data(ws: Workspace, parent: ParentModel) -> None:
    """Raise :class:`DataLineageError` unless the project's data is the parent's (checked by the
    CLI before anything starts, and by the flow before it draws the retain subset)."""
    problems = data_lineage_problems(ws, parent)
    if problems:
        raise DataLineageError("; ".join(problems))


def data_lineage_problems(ws: Workspace, parent: ParentModel) -> list[str]:
    """Every way the project's prepared data differs from the data the parent was trained on.

    A model is unlearned and judged on the very split it was trained with: rebuilt with another
    split, today's validation and test samples include some it trained on, so forgetting would be
    verified, and accuracy reported, on training samples. Two records say what the data is: the
    parameters ``dvc.lock`` built ``data/prepared`` from (against the parameters in force now,
    ``--set`` included) and the digest the parent's lineage tags recorded."""
    prepared = ws.prepared_dir.relative_to(ws.root).as_posix()
    problems = []
    for key, built_with in sorted((data_versioning.locked_params(ws.root, "prepare") or {}).items()):
        now = ws.params.value(key)
        if now != built_with:
            problems.append(
                f"{key} is {now!r}, but {prepared} was built with {built_with!r} (dvc.lock): set it back, or "
                "rebuild the data with `dvc repro prepare` (a version is unlearned only on data with the digest "
                "it was trained on)"
            )
    trained_on = parent.data_digests.get(prepared)
    current = data_versioning.recorded_digests(ws.root).get(prepared) if (ws.root / ".dvc").is_dir() else None
    if trained_on and current and trained_on != current:
        problems.append(
            f"version {parent.version} was trained on {prepared} {trained_on}, but the project's {prepared} is "
            f"{current} (dvc.lock): check out the data it was trained on (`git checkout` the matching dvc.lock, "
            "then `dvc checkout`), or start from a version trained on this data"
        )
    return problems


def lineage_tags(
    ws: Workspace,
    *,
    parent_version: int,
    all_forgotten: list[int],
    new_classes: list[int],
    data_digests: dict[str, str],
    flow_run_id: str,
    mlflow_run_id: str,
    run_key: str,
    rounds: int,
    verified: bool | None,
    verified_forgotten: list[int],
    method: str = "unsir",
    unsir_gate_reasons: Sequence[str] = (),
) -> dict[str, str]:
    fallback = {"unsir_gate_reasons": json.dumps(list(unsir_gate_reasons))} if unsir_gate_reasons else {}
    return {
        "run_key": run_key,
        "parent_version": str(parent_version),
        FORGOTTEN_TAG: json.dumps(sorted(all_forgotten)),
        "forgotten_this_run": json.dumps(sorted(new_classes)),
        VERIFIED_TAG: json.dumps(sorted(verified_forgotten)),
        "rounds": str(rounds),
        "verified": json.dumps(verified),
        # UNSIR's premise, recorded with the version: no step read a forget-class training sample.
        "reads_forget_train": "false",
        "params_digest": ws.params.digest(),
        DATA_DIGESTS_TAG: json.dumps(data_digests, sort_keys=True),
        "git_commit": git_commit(ws.root),
        "prefect_flow_run_id": flow_run_id,
        "mlflow_run_id": mlflow_run_id,
        "method": method,
        **fallback,
    }


def not_this_runs_model(
    tags: dict[str, str], *, parent_version: int, params_digest: str, data_digests: dict[str, str] | None = None
) -> str | None:
    """Why the version a run key registered cannot hold the model a resumed run recomputes, or
    None. Registration is keyed on the run key, so a resumed run gets the version its earlier
    attempt registered while it measures the model it made now: both must come from the same
    parent, parameters and data, or the gate would judge one model and promote another (one
    that may still know a class the current champion forgot)."""
    changed = []
    if tags.get("parent_version") != str(parent_version):
        changed.append(f"parent version {tags.get('parent_version')} then, {parent_version} now (the champion moved)")
    if tags.get("params_digest", params_digest) != params_digest:
        changed.append(f"parameters digest {tags['params_digest']} then, {params_digest} now")
    if data_digests is not None and tags.get(DATA_DIGESTS_TAG, "null") not in (
        "null",
        json.dumps(data_digests, sort_keys=True),
    ):
        changed.append("the data's DVC digests differ")
    return "; ".join(changed) or None


def measured_forgotten(per_class_test: list[float], max_forget_acc: float) -> list[int]:
    """Classes whose test accuracy is at most the gate's bound: forgotten, as measured."""
    return [c for c, acc in enumerate(per_class_test) if acc <= max_forget_acc]


def verified_forgotten(tags: dict[str, str]) -> set[int]:
    """The classes a version was measured to have forgotten (its tags)."""
    # Versions registered before verification existed carry only the requested set.
    return set(json.loads(tags.get(VERIFIED_TAG, tags.get(FORGOTTEN_TAG, "[]"))))


def classes_deleted_by(tags: dict[str, str]) -> set[int]:
    """The classes a version deleted: requested in its lineage and measured forgotten (its test
    accuracy within ``gates.max_forget_acc``). A class it was asked to forget but still
    classifies (promoted with --override over its gate) is not deleted. A class nobody asked to
    delete that it merely failed to classify (a hard class, a test split of three samples) is
    not a deletion either, and later versions may classify it again."""
    verified = verified_forgotten(tags)
    requested = tags.get(FORGOTTEN_TAG)
    return verified if requested is None else verified & set(json.loads(requested))


def deletions_done(versions: list[VersionInfo], *, exclude_version: int | None = None) -> dict[int, list[int]]:
    """Every class a promoted version (of ``versions``) was asked to forget and verified to have
    forgotten, with those versions."""
    done: dict[int, list[int]] = {}
    for v in versions:
        if v.version == exclude_version or v.tags.get("gate_decision") not in PROMOTED_DECISIONS:
            continue
        for cls in sorted(classes_deleted_by(v.tags)):
            done.setdefault(cls, []).append(v.version)
    return done


def classes_that_must_stay_forgotten(registry: ModelRegistry, *, exclude_version: int | None = None) -> set[int]:
    """Every class a promoted version was verified to have forgotten: deletions that are done."""
    return set(deletions_done(registry.list_versions(), exclude_version=exclude_version))


def deletions_undone_by(versions: list[VersionInfo], version: int) -> dict[int, list[int]]:
    """The classes promoted versions forgot (with those versions) that ``version`` was not
    measured to have forgotten: what making it champion would bring back."""
    verified = verified_forgotten(next(v for v in versions if v.version == version).tags)
    done = deletions_done(versions, exclude_version=version)
    return {cls: by for cls, by in sorted(done.items()) if cls not in verified}


def describe_undone(version: int, undone: dict[int, list[int]]) -> str:
    """'version V, which was not measured to have forgotten class C (forgotten by version W)...'"""
    return f"version {version}, which was not measured to have forgotten " + ", ".join(
        f"class {cls} (forgotten by version {', '.join(map(str, by))})" for cls, by in undone.items()
    )


def champion_problems(versions: list[VersionInfo], alias: str) -> tuple[list[str], list[str]]:
    """Problems and warnings about the version ``alias`` names among ``versions`` (one
    listing of the registry). The gate and ``unsir promote`` never make a version champion that
    brings a deleted class back, or one that is not READY; an alias moved around them (the MLflow
    UI, its API) can. A
    champion promoted with ``--override`` was a recorded decision: a warning, not a problem."""
    champion = next((v for v in versions if alias in v.aliases), None)
    if champion is None:  # nothing in production (yet, or the alias was removed)
        return [], []
    if not champion.ready:  # MLflow lets an alias name any version; serving would load this one
        return [
            f"the {alias} is version {champion.version}, which is {champion.status}, not READY: there is no "
            f"registered model to serve (alias moved in MLflow?); move {alias!r} to a READY version with "
            "`unsir promote VERSION --reason ...`"
        ], []
    undone = deletions_undone_by(versions, champion.version)
    if not undone:
        return [], []
    what = f"the {alias} is {describe_undone(champion.version, undone)}"
    if champion.tags.get("gate_decision") == "promoted-by-override":
        by = champion.tags.get("promoted_by", "?")
        return [], [f"{what}: promoted with --override by {by} ({champion.tags.get('promotion_reason', 'no reason')})"]
    return [
        f"{what}: a deletion was undone outside `unsir promote` (alias moved in MLflow?); "
        f"move {alias!r} back with `unsir promote VERSION --reason ...`"
    ], []


@dataclass(frozen=True)
class GateInput:
    """What the gate judges: the candidate's measures and its per-class test accuracy."""

    metrics: dict[str, float]
    per_class_test: list[float]
    forget_classes: list[int]  # every class this version was asked to forget
    verified: bool | None  # UNSIR's validation check (None: no validation split)
    rounds: int
    method: str = "unsir"  # or "retrain": the retrained reference, judged as a candidate


def retrained_candidate(unsir: GateInput, per_class_retrained: list[float]) -> GateInput:
    """The retrained reference as a candidate: its own measures (the ``reference_`` ones of
    ``unsir``) beside the parent's. Nothing is left to compare it with but what a model that never
    saw the class cannot do better than, so its MIA is judged against the attack's rate on
    unseen forget-class validation samples, and its retain accuracy against the parent's."""
    m = unsir.metrics
    own = {k.removeprefix("reference_"): v for k, v in m.items() if k.startswith("reference_")}
    parents = {k: v for k, v in m.items() if k.startswith("original_")}
    return GateInput(
        metrics={**own, **parents},
        per_class_test=list(per_class_retrained),
        forget_classes=unsir.forget_classes,
        verified=None,
        rounds=0,
        method="retrain",
    )


@dataclass(frozen=True)
class GateDecision:
    """Whether the gate promoted the version, with one reason per bound, and the champion it
    replaced (None: held, or no champion before)."""

    promoted: bool
    reasons: list[str]
    previous_champion: int | None = None


def mia_baseline(m: dict[str, float], max_gap: float) -> tuple[float, float, str] | None:
    """What the MIA of the forget-train samples is compared with: (value, allowed gap, name).

    With a retrained reference, its MIA, within ``max_gap``. Without one, the same attack's
    rate on forget-class *validation* samples, which nobody trained on: once membership leaves
    no trace, the forget-train samples read like them (measured on digits, the retrained model's
    two rates agree within sampling error, while retain-class non-members read 0.76-0.91 "member"
    and are no reference for a class the model no longer knows). The validation split holds few
    samples per class, so the allowed gap widens by two standard errors of the difference of
    the two rates: a gap the split's size cannot tell from zero does not hold a version.
    """
    if "reference_mia" in m:
        return m["reference_mia"], max_gap, "retrained"
    if "mia_forget_holdout" not in m:
        return None
    n_train, n_holdout = m.get("mia_forget_train_samples", 0.0), m.get("mia_forget_holdout_samples", 0.0)
    if n_train <= 0 or n_holdout <= 0:
        return None
    pooled = (m["mia"] * n_train + m["mia_forget_holdout"] * n_holdout) / (n_train + n_holdout)
    standard_error = math.sqrt(pooled * (1 - pooled) * (1 / n_train + 1 / n_holdout))
    return (
        m["mia_forget_holdout"],
        max_gap + 2 * standard_error,
        f"forget-class validation samples, n={int(n_holdout)}",
    )


def mia_direction(m: dict[str, float], value: float) -> str:
    """Which way a failed MIA bound missed, for the reviewer of a held version: *more*
    member-like than the baseline is membership left behind; *less* member-like than the
    retrained model, with the forget-train samples reading like unseen ones of the class, is
    the unlearned model being less sure of them than retraining is (benchmarks/README.md)."""
    baseline = "the retrained model" if "reference_mia" in m else "unseen forget-class samples"
    if m["mia"] > value:
        return f"; more member-like than {baseline}" + _attack_power(m)
    text = f"; less member-like than {baseline}"
    if "reference_mia" in m and "mia_forget_holdout" in m:
        text += (
            f" (its forget-train samples read {m['mia']:.4f}, unseen forget-class validation "
            f"samples {m['mia_forget_holdout']:.4f})"
        )
    return text + _attack_power(m)


def _attack_power(m: dict[str, float]) -> str:
    """How well the attack tells the retrained model's members from its non-members: near 0.5
    it cannot, and its two MIA figures differ by chance (mnist5k, benchmarks/README.md)."""
    if "reference_mia_attack_power" not in m:
        return ""
    return f"; the attack's balanced accuracy on the retrained model: {m['reference_mia_attack_power']:.2f} (0.5: none)"


def gate_decision(ws: Workspace, candidate: GateInput, must_stay_forgotten: set[int]) -> tuple[bool, list[str]]:
    """Whether the candidate may replace the champion, with one reason per bound."""
    g = ws.params.gates
    m = candidate.metrics
    checks: list[tuple[bool, str]] = []
    forgotten = set(measured_forgotten(candidate.per_class_test, g.max_forget_acc))
    still_known = sorted((set(candidate.forget_classes) | must_stay_forgotten) - forgotten)
    checks.append(
        (m["forget_acc"] <= g.max_forget_acc, f"forget accuracy {m['forget_acc']:.4f} (max {g.max_forget_acc})")
    )
    checks.append(
        (
            not still_known,
            "every requested and every earlier-deleted class measured forgotten"
            + (f"; still classified: {still_known}" if still_known else ""),
        )
    )
    drop = m["original_retain_acc"] - m["retain_acc"]
    checks.append((drop <= g.max_retain_drop, f"retain accuracy drop {drop:+.4f} (max {g.max_retain_drop})"))
    if "reference_retain_acc" in m:
        gap = m["reference_retain_acc"] - m["retain_acc"]
        checks.append((gap <= g.max_retain_gap, f"retain accuracy {gap:+.4f} below retrained (max {g.max_retain_gap})"))
    # MIA is judged against what a model that never saw the class achieves, and only for a
    # model that no longer classifies the forget class: a low MIA next to a high forget
    # accuracy is an attack with no signal, not evidence of forgetting.
    classifies = m["forget_acc"] > g.max_forget_acc
    baseline = mia_baseline(m, g.max_mia_gap)
    if baseline is None:
        checks.append(
            (
                False,
                f"membership inference {m['mia']:.4f} has nothing to be compared with: no retrained reference "
                "and no forget-class validation samples (set evaluation.retrain_reference: true)",
            )
        )
    else:
        value, allowed, against = baseline
        within = abs(m["mia"] - value) <= allowed
        checks.append(
            (
                within and not classifies,
                f"membership inference {m['mia']:.4f} vs {value:.4f} ({against}), gap max {allowed:.3f}"
                + ("; the forget class is still classified" if classifies else "")
                + ("" if within else mia_direction(m, value)),
            )
        )
    if candidate.method == "retrain":
        checks.append((True, "exact unlearning: trained from scratch on the retain classes only"))
    elif g.require_verified and candidate.verified is None:
        # Nothing to hold it for, but nothing verified either: say so, not "verified".
        checks.append((True, "forgetting not checked on a validation split (there is none): judged on the test split"))
    elif g.require_verified:
        checks.append(
            (
                candidate.verified is True,
                f"forgetting verified on the validation split after {candidate.rounds} round(s)"
                + ("" if candidate.verified else "; the round budget ran out"),
            )
        )
    return all(ok for ok, _ in checks), [("pass: " if ok else "FAIL: ") + text for ok, text in checks]


@dataclass(frozen=True)
class RegistrationChoice:
    """Which model a run registers: UNSIR's, or the retrained reference in its place."""

    candidate: GateInput
    unsir_gate_reasons: list[str]  # why UNSIR's model was not registered; empty when it was
    # Why the reference could not take the place of UNSIR's model, should the gate hold it.
    no_fallback_because: str = ""
    # The choice needs the retrained reference, which this run has not trained yet: train it
    # and choose again (``gates.retrain_when_held``, or a resumed run that registered it).
    reference_wanted: bool = False

    @property
    def method(self) -> str:
        return self.candidate.method


def choose_registration(
    ws: Workspace, unsir: GateInput, retrained: GateInput | None, must_stay_forgotten: set[int]
) -> RegistrationChoice:
    """UNSIR's model, unless it fails the gate, ``gates.fallback_to_retrained`` is on, and the
    retrained reference passes it: then the retrained model, which finishes the deletion by exact
    unlearning instead of leaving it held. With no reference trained yet and
    ``gates.retrain_when_held``, a failing UNSIR model asks for one (``reference_wanted``).
    A preview of the gate (``must_stay_forgotten`` as the registry reads now); the registered
    version is judged again under the promotion lock (:func:`apply_gate`)."""
    gates = ws.params.gates
    if not gates.fallback_to_retrained:
        return RegistrationChoice(unsir, [], "the fallback is off (gates.fallback_to_retrained: false)")
    passes, reasons = gate_decision(ws, unsir, must_stay_forgotten)
    if passes:
        return RegistrationChoice(unsir, [])
    if retrained is None:
        if gates.retrain_when_held:
            return RegistrationChoice(unsir, [], reference_wanted=True)
        return RegistrationChoice(
            unsir,
            [],
            "no retrained reference was trained (evaluation.retrain_reference: false, gates.retrain_when_held: false)",
        )
    reference_passes, reference_reasons = gate_decision(ws, retrained, must_stay_forgotten)
    if not reference_passes:
        failed = "; ".join(r.removeprefix("FAIL: ") for r in reference_reasons if r.startswith("FAIL: "))
        return RegistrationChoice(unsir, [], f"the retrained reference fails the gate too ({failed})")
    return RegistrationChoice(retrained, [r for r in reasons if r.startswith("FAIL: ")])


def registered_choice(tags: dict[str, str], unsir: GateInput, retrained: GateInput | None) -> RegistrationChoice:
    """The choice an earlier attempt of the same run made, from its version's tags: a resumed
    run's registration returns that version, so the gate must judge the model it holds, even
    where this attempt's measures would choose the other (a non-deterministic device). An
    attempt that has not trained the reference the version holds asks for it."""
    if tags.get("method") != "retrain":
        return RegistrationChoice(unsir, [])
    if retrained is None:
        return RegistrationChoice(unsir, [], reference_wanted=True)
    return RegistrationChoice(retrained, json.loads(tags.get("unsir_gate_reasons", "[]")))


def apply_gate(ws: Workspace, version: int, candidate: GateInput) -> tuple[bool, list[str]]:
    """Record the gate's decision on the version and move ``champion`` when it passed."""
    registry = registry_for(ws)
    with promotion_lock(ws):  # read, decide and move the alias with no other decision in between
        _finish_interrupted_promotion(ws, registry)
        promoted, reasons = gate_decision(
            ws, candidate, classes_that_must_stay_forgotten(registry, exclude_version=version)
        )
        decision = {
            "gate_decision": "promoted" if promoted else "held",
            "gate_reasons": "; ".join(reasons),
            GATE_FAILED_BOUNDS_TAG: json.dumps([r for r in reasons if r.startswith("FAIL: ")]),
        }
        if promoted:
            # What was serving until now, on the version's lineage and the gate's record: the
            # run's parent is where it started, and the champion may have moved since.
            previous = _current_champion(ws, registry)
            if previous is not None and previous != version:
                decision[PREVIOUS_CHAMPION_TAG] = str(previous)
            _move_champion(ws, registry, version, decision, promotion_id=uuid.uuid4().hex)
        else:
            registry.set_version_tags(version, decision)
    return promoted, reasons


def _current_champion(ws: Workspace, registry: ModelRegistry) -> int | None:
    """The version the champion alias names now, or None where none does."""
    alias = ws.params.registry.champion_alias
    return registry.resolve_alias(alias) if any(alias in v.aliases for v in registry.list_versions()) else None


def previous_champion_of(tags: dict[str, str]) -> int | None:
    """The champion a version's gate promotion replaced, from its tags (None: none recorded)."""
    value = tags.get(PREVIOUS_CHAMPION_TAG, "")
    return int(value) if value.isdigit() else None


def promotion_record_key(promotion_id: str) -> str:
    """The idempotency key of a promotion's ``version_promoted`` record."""
    return f"promotion-{promotion_id}"


def _move_champion(
    ws: Workspace, registry: ModelRegistry, version: int, tags: dict[str, str], *, promotion_id: str
) -> None:
    """Tag ``version`` with its promotion's decision and make it champion (call holding the
    promotion lock). Two registry writes no transaction holds together: the promotion is
    announced on the registered model first, so one killed in between is finished, not left
    half-done (tagged promoted, so every later gate counts its classes as deleted, while the
    champion that later runs start from never forgot them)."""
    under_way = {"version": version, "promotion_id": promotion_id, "tags": tags}
    registry.set_model_tag(PROMOTION_UNDER_WAY_TAG, json.dumps(under_way, sort_keys=True))
    registry.set_version_tags(version, tags)
    registry.set_alias(ws.params.registry.champion_alias, version)
    registry.delete_model_tag(PROMOTION_UNDER_WAY_TAG)


def promotion_under_way(registry: ModelRegistry) -> dict | None:
    """The promotion announced on the registered model and not finished (its process was killed
    between its writes), or None."""
    raw = registry.model_tags().get(PROMOTION_UNDER_WAY_TAG)
    return None if raw is None else json.loads(raw)


def finish_interrupted_promotion(ws: Workspace) -> int | None:
    """Finish a promotion killed between tagging its version and moving the champion: before a
    run reads the champion, a request is checked against it or another decision is made.
    Returns the version made champion, or None when nothing was under way."""
    registry = registry_for(ws)
    if promotion_under_way(registry) is None:  # the usual case: no lock taken
        return None
    with promotion_lock(ws):
        return _finish_interrupted_promotion(ws, registry)


def _finish_interrupted_promotion(ws: Workspace, registry: ModelRegistry) -> int | None:
    """Roll the promotion under way forward (call holding the promotion lock). Its decision was
    made under the lock, and every later decision finishes it first, so nothing decided since
    can contradict it. The ``version_promoted`` record is written first, keyed by the
    promotion, then the writes it stopped before: each step may be repeated, none duplicated."""
    under_way = promotion_under_way(registry)
    if under_way is None:
        return None
    version, tags = int(under_way["version"]), dict(under_way["tags"])
    alias = ws.params.registry.champion_alias
    previous = registry.resolve_alias(alias) if any(alias in v.aliases for v in registry.list_versions()) else None
    audit_log(ws).append(
        "version_promoted",
        actor=tags.get("promoted_by", GATE_ACTOR),
        request_ids=[r.id for r in request_store(ws).list(model_version=version)],
        idempotency_key=promotion_record_key(under_way["promotion_id"]),
        payload={
            "model_version": version,
            "previous_champion": None if previous == version else previous,
            "decision": tags.get("gate_decision"),
            "reason": tags.get("promotion_reason", tags.get("gate_reasons", "")),
            "recovered_from": f"the registry's {PROMOTION_UNDER_WAY_TAG} tag (the promotion stopped before "
            "moving the champion)",
        },
    )
    registry.set_version_tags(version, tags)
    registry.set_alias(alias, version)
    registry.delete_model_tag(PROMOTION_UNDER_WAY_TAG)
    return version


NEVER_JUDGED = "was never judged by the promotion gate (its run stopped before the gate decided)"


def never_judged(tags: dict[str, str]) -> bool:
    """A version a run registered and then stopped before the gate tagged it: none of its bounds
    was checked, so it is no more promotable than a held one. The gate writes ``gate_decision``
    and ``gate_reasons`` together; a hand promotion writes ``gate_decision`` alone, so a version
    promoted with ``--override`` before any gate judged it still lacks ``gate_reasons``."""
    return ("gate_decision" not in tags or "gate_reasons" not in tags) and tags.get("origin") != "bootstrap"


def awaiting_review(tags: dict[str, str]) -> bool:
    """Whether a reviewer has still to decide the version: its gate held it, or never judged it,
    and nobody promoted or rejected it since. Only such a version may be rejected."""
    return (tags.get("gate_decision") == "held" or never_judged(tags)) and "review_decision" not in tags


def failed_bounds(tags: dict[str, str]) -> list[str]:
    """The reasons (``FAIL: ...``) of the bounds the gate found failed; [] when none failed or no
    gate judged the version."""
    if GATE_FAILED_BOUNDS_TAG in tags:
        return list(json.loads(tags[GATE_FAILED_BOUNDS_TAG]))
    # Versions judged before the gate wrote gate_failed_bounds have only the joined gate_reasons.
    # A reason may itself hold "; " ("...; still classified: [3]"): split only where the next begins.
    reasons = re.split(r"; (?=(?:pass|FAIL): )", tags.get("gate_reasons", ""))
    return [r for r in reasons if r.startswith("FAIL: ")]


def failed_its_gate(tags: dict[str, str]) -> bool:
    """Whether the gate held the version. ``gate_decision`` says so until a hand promotion
    rewrites it (``promoted-by-override``); the gate's own failed bounds keep the verdict, so a
    version once promoted with ``--override`` still needs it the next time."""
    return tags.get("gate_decision") == "held" or bool(failed_bounds(tags))


def promotion_problems(ws: Workspace, version: int) -> list[str]:
    """Why ``version`` may not become champion by hand: a failed gate or none at all, or a class
    that must stay forgotten and that the version was not measured to have forgotten."""
    registry = registry_for(ws)
    info = registry.get_version(version)  # fails clearly when the version does not exist
    problems = []
    if failed_its_gate(info.tags):
        shown = "; ".join(failed_bounds(info.tags)) or info.tags.get("gate_reasons") or "no reasons recorded"
        problems.append(f"version {version} failed its promotion gate ({shown})")
    elif never_judged(info.tags):
        problems.append(f"version {version} {NEVER_JUDGED}")
    if info.tags.get("review_decision") == "rejected":
        problems.append(f"version {version} was rejected in review")
    undone = deletions_undone_by(registry.list_versions(), version)
    if undone:
        problems.append(
            f"version {version} was not measured to have forgotten classes {sorted(undone)}, which earlier "
            "promoted versions forgot ("
            + ", ".join(f"class {cls} by version {', '.join(map(str, by))}" for cls, by in undone.items())
            + ")"
        )
    return problems


def _require_ready(info: VersionInfo) -> None:
    """Refuse a version whose registration failed or never finished, whatever --override says:
    its files may be missing or partial, so it is not a model, and a rule to override is not
    what stands in the way."""
    if not info.ready:
        raise PromotionRefused(
            f"version {info.version} is {info.status}, not READY: there is no registered model to serve "
            f"(registered by run key {info.tags.get(IDEMPOTENCY_TAG, '?')!r}); promote a READY version, or run "
            "the forget or batch again to register one (`unsir models` lists the versions)"
        )


def promote_by_hand(
    ws: Workspace, version: int, reason: str, by: str, *, override: bool = False, promotion_id: str = ""
) -> list[str]:
    """Move ``champion`` to ``version``. Refused, naming every reason, when the version failed
    its gate or would bring a forgotten class back, unless ``override`` (recorded). Returns the
    problems that were overridden (empty when none). ``promotion_id`` is tagged on the version
    with the decision: the key of its record on the trail."""
    if not reason.strip():
        raise PromotionRefused("a promotion needs a reason (--reason TEXT)")
    with promotion_lock(ws):  # as apply_gate: no other decision between the checks and the alias
        _finish_interrupted_promotion(ws, registry_for(ws))
        _require_ready(registry_for(ws).get_version(version))
        problems = promotion_problems(ws, version)
        if problems and not override:
            raise PromotionRefused("; ".join(problems) + "; promote it anyway only with --override and a reason")
        decision = {
            "promoted_by": by,
            "promotion_reason": reason,
            "gate_decision": "promoted-by-override" if problems else "promoted-by-hand",
            **({PROMOTION_ID_TAG: promotion_id} if promotion_id else {}),
            **({"overridden_problems": "; ".join(problems)} if problems else {}),
        }
        _move_champion(ws, registry_for(ws), version, decision, promotion_id=promotion_id or uuid.uuid4().hex)
    return problems
