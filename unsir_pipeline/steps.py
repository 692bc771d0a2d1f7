"""The unlearning flow's steps as plain functions over handles (paths, versions, run ids).

Each step reads its inputs from files or the registry, calls the core library, and writes its
output to the run directory, so a Prefect task is a thin wrapper and a retried task redoes
exactly its own step. Nothing here imports Prefect: the steps run from a notebook too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from unsir.checkpoint import load_checkpoint, save_checkpoint
from unsir.data import resolve_classes
from unsir.errors import UnlearningInputError
from unsir.measures import EvaluationConfig, compare_models
from unsir.methods import make_method
from unsir.methods.base import UnlearningTask
from unsir.methods.baselines import RetrainConfig
from unsir.problem import build_task, prepare_splits
from unsir.splits import check_forget_classes, select
from unsir_pipeline import data_versioning
from unsir_pipeline.promotion import FORGOTTEN_TAG, registry_for
from unsir_pipeline.provenance import git_commit
from unsir_pipeline.workspace import Workspace, load_prepared, read_manifest, write_retain_subset

if TYPE_CHECKING:
    from unsir_pipeline.validation import ValidationReport

__all__ = ["FORGOTTEN_TAG", "registry_for"]  # re-exported for callers of this module


@dataclass(frozen=True)
class RunPaths:
    """Files of one flow run, under ``state/runs/<flow run id>``."""

    root: Path

    @classmethod
    def for_run(cls, ws: Workspace, run_key: str) -> RunPaths:
        root = ws.runs_dir / run_key
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    parent = property(lambda self: self.root / "parent")
    download = property(lambda self: self.root / "download")
    unlearned = property(lambda self: self.root / "unlearned")
    evaluation = property(lambda self: self.root / "evaluation.json")
    per_class_plot = property(lambda self: self.root / "per_class_accuracy.png")
    confusion_plot = property(lambda self: self.root / "confusion_matrices.png")


# --- 0. tracking run and parent model --------------------------------------------------------

def open_tracking_run(ws: Workspace, run_key: str, flow_run_id: str, requested: list[str]) -> str:
    """The MLflow run for this run key, created once: a retried or resumed run reuses it."""
    registry = registry_for(ws)
    existing = registry.find_run("run_key", run_key)
    if existing:
        return existing
    tags = {"run_key": run_key, "prefect_flow_run_id": flow_run_id, "requested_classes": json.dumps(requested), "git_commit": git_commit(ws.root)}
    with registry.start_run(run_name=f"unlearn-{run_key[:12]}", tags=tags) as run_id:
        registry.log_params({**flatten(ws.params.model_dump(mode="json")), "params_digest": ws.params.digest(),
                             "overrides": json.dumps(list(ws.overrides))})
    return run_id


def flatten(tree: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resolve_parent(ws: Workspace, ref: str) -> dict:
    """Which version an alias (or a version number) names, and what it has already forgotten
    (from its tags)."""
    registry = registry_for(ws)
    version = int(ref) if ref.isdigit() else registry.resolve_alias(ref)
    info = registry.get_version(version)
    return {"version": version, "forgotten_classes": json.loads(info.tags.get(FORGOTTEN_TAG, "[]"))}


def resolve_request(requested: list[str], class_names: tuple[str, ...], already_forgotten: list[int]) -> tuple[int, ...]:
    """Class names or indices to new forget classes; refuses repeats and forgetting everything."""
    classes = resolve_classes(requested, class_names)
    repeated = sorted(set(classes) & set(already_forgotten))
    if repeated:
        raise UnlearningInputError(
            f"classes {[class_names[c] for c in repeated]} were already forgotten by the parent model "
            f"(forgotten so far: {[class_names[c] for c in already_forgotten]})"
        )
    check_forget_classes(tuple(sorted(set(classes) | set(already_forgotten))), len(class_names))
    return classes


# --- 1. validation ---------------------------------------------------------------------------

def validate_inputs(ws: Workspace, requested: list[str], already_forgotten: list[int]) -> tuple[ValidationReport, dict]:
    """Resolve the request, draw the retain subset and validate everything before compute.

    Returns the report and, when it passed, the handles later steps need.
    """
    # Great Expectations takes ~1.5 s to import: only the steps that validate pay for it.
    from unsir_pipeline.validation import validate_splits

    data, manifest = load_prepared(ws)
    new_classes = resolve_request(requested, data.class_names, already_forgotten)
    all_forgotten = tuple(sorted(set(new_classes) | set(already_forgotten)))
    retain_path = write_retain_subset(ws, manifest, all_forgotten, data.num_classes)
    mismatches = data_versioning.verify(ws.root, [str(ws.prepared_dir.relative_to(ws.root))])
    report = validate_splits(
        manifest, read_manifest(retain_path), num_classes=data.num_classes, forget_classes=all_forgotten,
        min_per_class=ws.params.data.min_per_class, extra_failures=mismatches, data=data,
    )
    handles = {
        "forget_classes": list(new_classes),
        "all_forgotten": list(all_forgotten),
        "class_names": list(data.class_names),
        "retain_subset": str(retain_path),
    }
    return report, handles


def version_data(ws: Workspace, retain_subset: str) -> dict[str, str]:
    """DVC-track the retain subset, push to the remote, and return the data digests used."""
    retain_md5 = data_versioning.track(ws.root, Path(retain_subset))
    # The remote can change between runs (UNSIR_DVC_REMOTE): a shared store for a team.
    data_versioning.use_remote(ws.root, ws.params.paths.dvc_remote, ws.params.paths.dvc_remote_endpoint)
    data_versioning.push(ws.root)
    recorded = data_versioning.recorded_digests(ws.root)
    relative = str(Path(retain_subset).relative_to(ws.root))
    digests = {k: v for k, v in recorded.items() if k.startswith(str(ws.prepared_dir.relative_to(ws.root)))}
    digests[relative] = retain_md5
    return digests


# --- 2. model loading ------------------------------------------------------------------------

def load_parent(ws: Workspace, run: RunPaths, version: int) -> str:
    """Download the parent version and keep its checkpoint in the run directory."""
    model, card, _ = registry_for(ws).load_model(
        version, dest=run.download, allow_pickled_module=ws.params.registry.allow_pickled_module
    )
    save_checkpoint(run.parent, model, card)
    return str(run.parent)


# --- 3. UNSIR, verified ---------------------------------------------------------------------

def unlearn_step(ws: Workspace, run: RunPaths, forget_classes: list[int], all_forgotten: list[int],
                 retain_subset: str) -> dict:
    """UNSIR on the parent: rounds of noise, impair and repair until the new forget classes are
    forgotten on the validation split, or the round budget runs out.

    The same call as the DVC stage's (``workspace.unlearn_original``): one method, one seeded
    generator, so the same parameters and parent give the same weights. The task holds D_r_sub
    and the validation split only; no forget-class training sample is ever loaded.
    """
    model, card = load_checkpoint(run.parent)
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    task = build_task(splits, data, read_manifest(Path(retain_subset)), tuple(forget_classes))
    earlier = sorted(set(all_forgotten) - set(forget_classes))
    if earlier and task.validation_labels is not None:
        # Classes the parent already forgot are neither verified again here nor retain samples.
        keep = ~torch.isin(task.validation_labels, torch.as_tensor(earlier))
        task = replace(task, validation_images=task.validation_images[keep], validation_labels=task.validation_labels[keep])
    device = ws.device()
    result = make_method("unsir", ws.params.unsir_config()).unlearn(
        model, task, device=device, generator=torch.Generator().manual_seed(ws.params.unlearn.seed)
    )
    save_checkpoint(run.unlearned, result.model.cpu(), card.with_forgotten(tuple(all_forgotten)))
    return {"checkpoint": str(run.unlearned), "device": str(device), "timings_s": result.timings_s,
            "rounds": result.rounds, "verified": result.verified}


# --- 6. evaluation ---------------------------------------------------------------------------

def evaluate_step(ws: Workspace, run: RunPaths, all_forgotten: list[int]) -> dict:
    """Parent and unlearned model on the test split, every class forgotten so far counted as
    forget classes; writes the figures and ``evaluation.json``."""
    # matplotlib is imported only by the step that draws.
    from unsir_pipeline.plots import confusion_figure, per_class_accuracy_figure

    parent, card = load_checkpoint(run.parent)
    unlearned, _ = load_checkpoint(run.unlearned)
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    evaluation_data = splits.evaluation_data(tuple(all_forgotten))
    device = ws.device()
    config = EvaluationConfig(mia_feature=ws.params.evaluation.mia_feature, relearn=ws.params.evaluation.relearn)
    reference = None
    if ws.params.evaluation.retrain_reference:
        reference = retrain_reference(ws, splits, tuple(all_forgotten), parent, device)
    comparison = compare_models(parent, unlearned, evaluation_data, device=device, config=config, reference=reference)
    before, after = comparison.before, comparison.after
    metrics = comparison.metrics
    names = list(card.class_names)
    per_class_accuracy_figure(names, before.per_class_test, after.per_class_test, list(all_forgotten)).savefig(run.per_class_plot, dpi=110)
    confusion_figure(names, before.confusion_test, after.confusion_test).savefig(run.confusion_plot, dpi=110)
    result = {
        "forget_classes": list(all_forgotten),
        "metrics": metrics,
        "per_class": [
            {"class": names[c], "before": before.per_class_test[c], "after": after.per_class_test[c], "forgotten": c in all_forgotten}
            for c in range(len(names))
        ],
    }
    run.evaluation.write_text(json.dumps(result, indent=2) + "\n")
    return result


def retrain_reference(ws: Workspace, splits, forget_classes: tuple[int, ...], parent, device: torch.device):
    """The gold standard: the same architecture trained from scratch, as long as the original,
    on the retain classes only. Costs a full training run (seconds on digits)."""
    keep = ~torch.isin(splits.train_labels, torch.as_tensor(forget_classes))
    x, y = splits.train_images[keep], splits.train_labels[keep]
    task = UnlearningTask(forget_classes, splits.num_classes, x, y, retain_train_images=x, retain_train_labels=y)
    method = make_method("retrain", RetrainConfig(train=ws.params.model.train.to_core()))
    return method.unlearn(parent, task, device=device, generator=torch.Generator().manual_seed(ws.params.model.seed)).model


# --- 7. registration ------------------------------------------------------------------------

def summarize_versions(ws: Workspace) -> list[dict]:
    """Registered versions with aliases and lineage, oldest first (for `unsir models`)."""
    out = []
    for v in registry_for(ws).list_versions():
        out.append({
            "version": v.version,
            "aliases": list(v.aliases),
            "created_at": v.created_at,
            "parent_version": v.tags.get("parent_version"),
            "forgotten_classes": json.loads(v.tags.get(FORGOTTEN_TAG, "[]")),
            "verified_forgotten_classes": json.loads(v.tags.get("verified_forgotten_classes", "null") or "null"),
            "gate": v.tags.get("gate_decision"),
            "tags": v.tags,
        })
    return out



def input_example(ws: Workspace, run: RunPaths, count: int) -> np.ndarray:
    """A few test images as the data set gives them (the served model normalises them itself):
    the example logged with the model."""
    data, manifest = load_prepared(ws)
    images, _ = select(data, manifest[manifest["split"] == "test"].head(count))
    return images.numpy()


def summary_markdown(result: dict) -> str:
    m = result["metrics"]
    rows = [
        ("forget accuracy (test)", m["original_forget_acc"], m["forget_acc"]),
        ("retain accuracy (test)", m["original_retain_acc"], m["retain_acc"]),
        ("forget accuracy (train)", m["original_forget_acc_train"], m["forget_acc_train"]),
        ("retain accuracy (train)", m["original_retain_acc_train"], m["retain_acc_train"]),
        ("membership inference on forget-train", m["original_mia"], m["mia"]),
    ]
    lines = [f"# Unlearning of classes {result['forget_classes']}", "", "| measure | before | after |", "|---|---|---|"]
    lines += [f"| {name} | {before:.4f} | {after:.4f} |" for name, before, after in rows]
    return "\n".join(lines) + "\n"
