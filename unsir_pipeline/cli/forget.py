"""``unsir forget``: a forget request checked before anything starts, the unlearn flow run on
it, and the before/after table it prints (which ``unsir batch run`` prints too)."""

from __future__ import annotations

import json
from pathlib import Path

# Imports only the standard library when it loads: light enough for every command.
from unsir_pipeline.adapters import orchestration
from unsir_pipeline.cli.common import (
    acting_user,
    load_workspace,
    progress_lines,
    require_model_ref,
    warn_if_the_promotion_lock_is_local,
)
from unsir_pipeline.cli.errors import UsageError


def check_forget_request(ws, classes: list[str], parent: str | None) -> int:
    """Everything about a forget request that can be wrong, checked before Prefect starts or an
    MLflow run opens: the parent (alias or version) exists and is READY, the prepared data is
    what dvc.lock records, the classes exist in the data set and were not forgotten already, and
    a class remains beside them and the pending deletion requests. Returns the parent's version
    number."""
    from unsir_pipeline.adapters.prepared_data import prepared_class_names, require_prepared_as_recorded
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.governance.deletion_requests import resolve_request
    from unsir_pipeline.governance.intake import queued_classes
    from unsir_pipeline.governance.promotion import (
        finish_interrupted_promotion,
        require_parents_data,
        require_unrejected_parent,
        resolve_parent,
    )

    finish_interrupted_promotion(ws)  # the champion a killed promotion was moving
    version = require_model_ref(ws, ws.params.registry.champion_alias if parent is None else parent)
    registry_for(ws).require_ready(version)  # as loading it will, before a run opens
    require_prepared_as_recorded(ws)
    class_names = prepared_class_names(ws)
    parent_model = resolve_parent(registry_for(ws), str(version))
    require_unrejected_parent(parent_model)
    resolve_request(
        list(classes),
        class_names,
        forgotten=parent_model.deleted_classes,
        forgotten_by=f"the parent model (version {version})",
        pending=queued_classes(ws),
    )
    require_parents_data(ws, parent_model)
    # The run will be recorded on the trail: a trail the registry no longer recognises stops it
    # here, as it stops a batch, not after a version was registered and promoted.
    from unsir_pipeline.governance.trail import require_trail_the_registry_anchored

    require_trail_the_registry_anchored(ws, what="a forget")
    return version


def _check_classes_of_the_data(ws, classes: list[str]) -> None:
    """A forget on a project with nothing registered: its classes against the data the bootstrap
    has just prepared, before it trains the original (minutes for a CIFAR model) for a forget a
    class unknown, or every class, would refuse anyway."""
    from unsir_pipeline.adapters.prepared_data import prepared_class_names
    from unsir_pipeline.governance.deletion_requests import resolve_request
    from unsir_pipeline.governance.intake import queued_classes

    resolve_request(
        list(classes), prepared_class_names(ws), forgotten=[], forgotten_by="the original", pending=queued_classes(ws)
    )


def _require_what_bootstrap_registers(ws, ref: str) -> None:
    """``--from`` on a project with nothing registered: the bootstrap that ``forget`` starts
    with registers version 1 as the champion and ``original``; anything else is refused
    before it trains."""
    from unsir_pipeline.settings.config import ORIGINAL_ALIAS

    known = {"1", ws.params.registry.champion_alias, ORIGINAL_ALIAS}
    if ref not in known:
        raise UsageError(
            f"--from {ref!r}: model {ws.params.registry.model_name!r} is not registered yet, and the bootstrap "
            f"this forget starts with registers version 1 only, as {sorted(known - {'1'})}"
        )


def cmd_forget(project: Path, args) -> int:
    ws = load_workspace(project, args)
    warn_if_the_promotion_lock_is_local(ws)
    from unsir_pipeline.adapters.registry import existing_registry
    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.cli.progress import Progress, flow_steps

    progress = progress_lines(args)
    requested_by = acting_user(args)
    ws.device()  # one this machine has
    registry = existing_registry(ws)  # no database made before the bootstrap checks its settings
    registered = registry is not None and registry.has_model()
    if registered:
        check_forget_request(ws, args.classes, args.parent)  # before any server or run starts
    elif args.parent is not None:
        _require_what_bootstrap_registers(ws, args.parent)  # before it trains
    # The main job starts from a registered champion; a no-op when there is one.
    bootstrap(
        ws,
        progress=Progress("bootstrap", progress.enabled),
        before_training=lambda: _check_classes_of_the_data(ws, args.classes),
    )
    if not registered:  # the classes and the data can be checked once the data is prepared
        check_forget_request(ws, args.classes, args.parent)
    progress.step("starting the unlearn flow (Prefect)")
    server_ready = orchestration.start_prefect_server_early()
    from unsir_pipeline.flows.unlearn import unlearn  # and its tasks' imports, while it starts

    server_ready()
    orchestration.remember_stops_prefect_catches()

    if not args.debug:
        orchestration.console_without_tracebacks()

    with flow_steps(progress):
        result = unlearn(
            forget_classes=list(args.classes),
            project_dir=str(project),
            overrides=list(args.overrides),
            parent=args.parent,
            requested_by=requested_by,  # the flow puts the run on the audit trail
        )
    if args.json:
        print(json.dumps(result, default=float))
    else:
        print(format_result(result))
    return 0


def format_result(result: dict) -> str:
    from unsir_pipeline.governance.report import describe_rounds, forget_classes_covered

    m = result["metrics"]
    # By name, as the classes were asked for: with image folders named "1", "10", "2", the
    # index 1 is the class named "10".
    names = [entry["class"] for entry in result["per_class"]]
    all_forgotten = [names[c] for c in result["all_forgotten"]]
    # "after" is UNSIR's model: when the gate registered the retrained one instead, its column says so.
    exact = result.get("method") == "retrain" and "retrained" in result["per_class"][0]
    retrained_label = "retrained*" if exact else "retrained"
    lines = [
        (
            f"forgot classes {result['forget_class_names']} (all forgotten so far: {all_forgotten}) "
            f"from version {result['parent_version']} -> new version {result['new_version']} on {result['device']}"
        ),
        "",
        f"{'class':<12}{'before':>10}{'after':>10}"
        + (f"{retrained_label:>11}" if "retrained" in result["per_class"][0] else "")
        + (f"  * registered as version {result['new_version']}" if exact else ""),
    ]
    for entry in result["per_class"]:
        mark = "  (forgotten)" if entry["forgotten"] else ""
        retrained = f"{entry['retrained']:>11.3f}" if "retrained" in entry else ""
        lines.append(f"{entry['class']:<12}{entry['before']:>10.3f}{entry['after']:>10.3f}{retrained}{mark}")
    has_ref = "reference_forget_acc" in m
    header = f"{'test split':<28}{'before':>10}{'after':>10}" + (f"{retrained_label:>11}" if has_ref else "")

    def row(label: str, key: str) -> str:
        ref = f"{m['reference_' + key]:>11.4f}" if has_ref else ""
        return f"{label:<28}{m['original_' + key]:>10.4f}{m[key]:>10.4f}{ref}"

    # The forget figures count every class forgotten so far, not only this run's: say which.
    covers = forget_classes_covered(result)
    lines += [
        "",
        *([f"forget accuracy and membership inference (D_f) measure{covers}"] if covers else []),
        header,
        row("forget accuracy", "forget_acc"),
        row("retain accuracy", "retain_acc"),
        row("membership inference (D_f)", "mia"),
        # The same attack on forget-class validation samples nobody trained on: once the class
        # is forgotten, the line above should read like this one (the gate's baseline without
        # a retrained reference).
        *([row("  same on unseen (val) D_f", "mia_forget_holdout")] if "original_mia_forget_holdout" in m else []),
        # Whether the attack tells members from non-members at all (0.5: not): the MIA lines
        # above mean little where it does not.
        *([row("  attack power (0.5 = none)", "mia_attack_power")] if "original_mia_attack_power" in m else []),
        *(
            [
                f"{'relearn steps (anamnesis)':<28}{'':>10}{m['relearn_steps']:>10.0f}"
                + (f"{m['reference_relearn_steps']:>11.0f}" if "reference_relearn_steps" in m else "")
            ]
            if "relearn_steps" in m
            else []
        ),
        "",
        describe_rounds(result.get("rounds") or [], result.get("verified")),
        *(
            [
                f"registered: the retrained model (exact unlearning) as version {result['new_version']}, in place of "
                "UNSIR's, which failed the gate:",
                *[f"  {reason}" for reason in result["unsir_gate_reasons"]],
            ]
            if result.get("method") == "retrain"
            else []
        ),
        *(
            [f"no fallback to the retrained model: {result['no_fallback_because']}"]
            if result.get("no_fallback_because")
            else []
        ),
        "promotion gate: " + ("PROMOTED to champion" if result["promoted"] else "held as challenger (not promoted)"),
        *[f"  {reason}" for reason in result["gate_reasons"]],
        f"UNSIR compute {sum(result['compute_s'].values()):.2f}s, flow {sum(result['task_s'].values()):.2f}s; MLflow "
        f"run {result['mlflow_run_id']}",
        *([f"audit trail: `unsir audit report {result['audit_id']}`"] if result.get("audit_id") else []),
    ]
    return "\n".join(lines)
