"""The DVC pipeline's stages (``dvc.yaml``, run by ``unsir stage NAME``): prepare the data,
train the original model, and forget ``unlearn.forget_classes`` from it and evaluate the result.

Each stage calls the core library and writes plain files (safetensors, CSV, JSON) that DVC
versions; they are DVC's counterpart of the Prefect tasks in ``tasks/``.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import save_file

from unsir.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from unsir.classes import resolve_classes
from unsir.data import load_dataset
from unsir.measures import compare_models
from unsir.methods import make_method
from unsir.models import ModelSpec, build_model
from unsir.problem import build_task, prepare_splits
from unsir.splits import draw_retain_subset, make_split_manifest
from unsir.training import fit, predict_logits, seed_everything
from unsir_pipeline.adapters.prepared_data import load_prepared
from unsir_pipeline.settings.workspace import Workspace

# --- data -----------------------------------------------------------------------------------


def prepare_data(ws: Workspace) -> Path:
    """Load the configured dataset, split it, and write tensors, metadata and the manifest."""
    p = ws.params.data
    data = load_dataset(p.name, ws.path(p.root) if p.root else None, image_size=p.image_size)
    manifest = make_split_manifest(data, seed=p.split_seed, fractions=p.fractions)
    ws.prepared_dir.mkdir(parents=True, exist_ok=True)
    save_file({"images": data.images.contiguous(), "labels": data.labels}, str(ws.prepared_dir / "dataset.safetensors"))
    meta: dict[str, object] = {
        "name": data.name,
        "class_names": list(data.class_names),
        "sample_ids": list(data.sample_ids),
    }
    if data.dropped_duplicates:  # only then: a data set without repeats keeps its bytes
        meta["dropped_duplicates"] = [{"dropped": dropped, "kept": kept} for dropped, kept in data.dropped_duplicates]
        _warn_dropped_duplicates(data.dropped_duplicates, ws.prepared_dir / "dataset.json")
    (ws.prepared_dir / "dataset.json").write_text(json.dumps(meta) + "\n")
    manifest.to_csv(ws.manifest_path, index=False)
    return ws.prepared_dir


def _warn_dropped_duplicates(dropped: tuple[tuple[str, str], ...], recorded_in: Path) -> None:
    shown = ", ".join(f"{d!r} (repeats {k!r})" for d, k in dropped[:3])
    print(
        f"warning: left out {len(dropped)} image(s) identical to another image of their class, so that no "
        f"image is in both train and test: {shown}{', ...' if len(dropped) > 3 else ''}; all are listed "
        f"under dropped_duplicates in {recorded_in}",
        file=sys.stderr,
    )


# --- the original model ---------------------------------------------------------------------


def train_original(ws: Workspace, *, progress: bool = False) -> dict[str, float]:
    """Train the starting model on the train split; write its checkpoint and metrics (with
    ``progress``, each epoch's loss on stderr)."""
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest)
    m = ws.params.model
    spec = ModelSpec(m.arch, data.num_classes, data.input_shape[0], dict(m.kwargs))
    generator = seed_everything(m.seed)
    model = build_model(spec)
    device = ws.device()
    started = time.perf_counter()
    fit(
        model,
        splits.train_images,
        splits.train_labels,
        m.train,
        device=device,
        generator=generator,
        progress=progress,
        description="train original model",
    )
    train_s = time.perf_counter() - started
    card = ModelCard(spec, splits.normalization, data.class_names, data.input_shape)
    save_checkpoint(ws.original_model_dir, model.cpu(), card)
    predictions = predict_logits(model, splits.test_images, device=device).argmax(1)
    test_acc = float((predictions == splits.test_labels).float().mean())
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    # Wall time stays out of the DVC-tracked metrics: the same inputs must give the same bytes,
    # or every clone's `dvc repro` would rewrite dvc.lock.
    (ws.reports_dir / "train.json").write_text(
        json.dumps({"test_acc": test_acc, "epochs": m.train.epochs}, indent=2) + "\n"
    )
    (ws.reports_dir / "train_timing.json").write_text(json.dumps({"train_s": train_s}) + "\n")
    return {"test_acc": test_acc, "train_s": train_s, "epochs": m.train.epochs}


# --- the DVC stages' unlearning and evaluation, on the original model ------------------------


def unlearn_original(ws: Workspace) -> Path:
    """Forget ``unlearn.forget_classes`` from the original model with UNSIR (DVC stage)."""
    data, manifest = load_prepared(ws)
    model, card = load_checkpoint(ws.original_model_dir)
    forget = resolve_classes(ws.params.unlearn.forget_classes, data.class_names)
    out = ws.root / "models" / "unlearned"
    out.mkdir(parents=True, exist_ok=True)
    rows = draw_retain_subset(
        manifest,
        forget_classes=forget,
        per_class=ws.params.data.retain_per_class,
        seed=ws.params.data.retain_seed,
        num_classes=data.num_classes,
    )
    rows.to_csv(out / "retain_subset.csv", index=False)
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    task = build_task(splits, data, rows, forget)
    result = make_method("unsir", ws.params.unsir_config()).unlearn(
        model, task, device=ws.device(), generator=torch.Generator().manual_seed(ws.params.unlearn.seed)
    )
    save_checkpoint(out, result.model.cpu(), card.with_forgotten(forget))
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    (ws.reports_dir / "unlearn_timing.json").write_text(json.dumps(result.timings_s) + "\n")
    return out


def evaluate_unlearned(ws: Workspace) -> dict[str, float]:
    """Original and unlearned model side by side on the test split (DVC stage)."""
    data, manifest = load_prepared(ws)
    original, card = load_checkpoint(ws.original_model_dir)
    unlearned, unlearned_card = load_checkpoint(ws.root / "models" / "unlearned")
    splits = prepare_splits(data, manifest, normalization=card.normalization)
    evaluation_data = splits.evaluation_data(unlearned_card.forgotten_classes)
    # Read as the flow's evaluation reads them: the stage's params include `evaluation`, so a
    # setting left unread would re-run it for the same numbers.
    config = ws.params.evaluation.core_config()
    comparison = compare_models(original, unlearned, evaluation_data, device=ws.device(), config=config)
    before, after, metrics = comparison.before, comparison.after, comparison.metrics
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    (ws.reports_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pd.DataFrame(
        {"class": list(data.class_names), "before": before.per_class_test, "after": after.per_class_test}
    ).to_csv(ws.reports_dir / "per_class.csv", index=False)
    return metrics
