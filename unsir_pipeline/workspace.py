"""Where a project's files live, and the steps that read and write them.

A workspace is a project directory (the one holding ``params.yaml``) plus its validated
parameters. Every path the pipeline uses is a property here, so that DVC stages, Prefect tasks
and the CLI agree on them. The functions below are the pipeline's data-side steps: each calls
the core library and writes plain files (safetensors, CSV, JSON) that DVC versions.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file, save_file

from unsir.checkpoint import ModelCard, load_checkpoint, save_checkpoint
from unsir.data import ClassificationData, load_dataset, resolve_classes
from unsir.measures import EvaluationConfig, compare_models
from unsir.methods import make_method
from unsir.models import ModelSpec, build_model
from unsir.problem import build_task, prepare_splits
from unsir.splits import draw_retain_subset, make_split_manifest
from unsir.training import fit, predict_logits, seed_everything
from unsir_pipeline.config import Params, load_params

PARAMS_FILE = "params.yaml"


@dataclass(frozen=True)
class Workspace:
    root: Path
    params: Params
    overrides: tuple[str, ...] = ()

    @classmethod
    def load(cls, root: str | Path = ".", overrides: tuple[str, ...] | list[str] = ()) -> Workspace:
        root = Path(root).resolve()
        return cls(root, load_params(root / PARAMS_FILE, tuple(overrides)), tuple(overrides))

    def path(self, relative: str) -> Path:
        candidate = Path(relative)
        return candidate if candidate.is_absolute() else self.root / candidate

    @property
    def state_dir(self) -> Path:
        return self.path(self.params.paths.state_dir)

    @property
    def data_dir(self) -> Path:
        return self.path(self.params.paths.data_dir)

    @property
    def prepared_dir(self) -> Path:
        return self.data_dir / "prepared"

    @property
    def manifest_path(self) -> Path:
        return self.prepared_dir / "manifest.csv"

    @property
    def retain_dir(self) -> Path:
        return self.data_dir / "retain"

    @property
    def original_model_dir(self) -> Path:
        return self.root / "models" / "original"

    @property
    def runs_dir(self) -> Path:
        return self.state_dir / "runs"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"

    @property
    def tracking_uri(self) -> str:
        """The params' tracking URI, with a relative SQLite path anchored at the project."""
        uri = self.params.registry.tracking_uri
        prefix = "sqlite:///"
        if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
            db = self.root / uri[len(prefix):]
            db.parent.mkdir(parents=True, exist_ok=True)
            return prefix + str(db)
        return uri

    @property
    def artifact_location(self) -> str | None:
        """Local artifact store for a local (SQLite) registry; a server decides its own."""
        if self.tracking_uri.startswith("sqlite:"):
            return (self.state_dir / "mlflow" / "artifacts").as_uri()
        return None

    def device(self) -> torch.device:
        if self.params.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.params.device)


@lru_cache(maxsize=8)
def open_workspace(root: str, overrides: tuple[str, ...] = ()) -> Workspace:
    """The workspace of a project directory, its parameters validated once per process."""
    return Workspace.load(root, overrides)


# --- data -----------------------------------------------------------------------------------

def prepare_data(ws: Workspace) -> Path:
    """Load the configured dataset, split it, and write tensors, metadata and the manifest."""
    p = ws.params.data
    data = load_dataset(p.name, ws.path(p.root) if p.root else None, image_size=p.image_size)
    manifest = make_split_manifest(data, seed=p.split_seed, fractions=p.fractions.to_core())
    ws.prepared_dir.mkdir(parents=True, exist_ok=True)
    save_file({"images": data.images.contiguous(), "labels": data.labels}, str(ws.prepared_dir / "dataset.safetensors"))
    meta = {"name": data.name, "class_names": list(data.class_names), "sample_ids": list(data.sample_ids)}
    (ws.prepared_dir / "dataset.json").write_text(json.dumps(meta) + "\n")
    manifest.to_csv(ws.manifest_path, index=False)
    return ws.prepared_dir


def load_prepared(ws: Workspace) -> tuple[ClassificationData, pd.DataFrame]:
    """The prepared data set and its manifest. The flow's steps each ask for them; they are
    read from disk once per process and read again only when a file changed."""
    if not ws.manifest_path.is_file():
        raise FileNotFoundError(f"no prepared data at {ws.prepared_dir}; run `unsir bootstrap` or `dvc repro prepare`")
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(ws.prepared_dir.iterdir()))
    data, manifest = _read_prepared(str(ws.prepared_dir), stamp)
    return data, manifest.copy()  # callers may filter or edit the table; the tensors are only indexed


@lru_cache(maxsize=2)
def _read_prepared(prepared_dir: str, stamp: tuple) -> tuple[ClassificationData, pd.DataFrame]:
    directory = Path(prepared_dir)
    tensors = load_file(str(directory / "dataset.safetensors"))
    meta = json.loads((directory / "dataset.json").read_text())
    data = ClassificationData(meta["name"], tensors["images"], tensors["labels"], tuple(meta["class_names"]), tuple(meta["sample_ids"]))
    return data, read_manifest(directory / "manifest.csv")


def read_manifest(path: Path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"sample_id": str, "label": "int64", "split": str, "digest": str}, keep_default_na=False)


def retain_subset_path(ws: Workspace, forget_classes: tuple[int, ...]) -> Path:
    p = ws.params.data
    name = "-".join(str(c) for c in forget_classes)
    return ws.retain_dir / f"retain-forget{name}-n{p.retain_per_class}-seed{p.retain_seed}.csv"


def write_retain_subset(ws: Workspace, manifest: pd.DataFrame, forget_classes: tuple[int, ...], num_classes: int) -> Path:
    """Draw D_r_sub (never a forget-class sample) and write it; same inputs, same bytes."""
    p = ws.params.data
    rows = draw_retain_subset(manifest, forget_classes=forget_classes, per_class=p.retain_per_class, seed=p.retain_seed, num_classes=num_classes)
    path = retain_subset_path(ws, forget_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hand-edited subset is reported, not silently redrawn (imported here: GE costs 1.5 s).
    from unsir_pipeline.validation import require_retain_subset_unaltered
    require_retain_subset_unaltered(ws.root, path, rows.to_csv(index=False))
    rows.to_csv(path, index=False)
    return path


# --- the original model ---------------------------------------------------------------------

def train_original(ws: Workspace) -> dict[str, float]:
    """Train the starting model on the train split; write its checkpoint and metrics."""
    data, manifest = load_prepared(ws)
    splits = prepare_splits(data, manifest)
    m = ws.params.model
    spec = ModelSpec(m.arch, data.num_classes, data.input_shape[0], dict(m.kwargs))
    generator = seed_everything(m.seed)
    model = build_model(spec)
    device = ws.device()
    started = time.perf_counter()
    fit(model, splits.train_images, splits.train_labels, m.train.to_core(), device=device, generator=generator,
        progress=os.environ.get("UNSIR_PROGRESS", "1") == "1", description="train original model")
    train_s = time.perf_counter() - started
    card = ModelCard(spec, splits.normalization, data.class_names, data.input_shape)
    save_checkpoint(ws.original_model_dir, model.cpu(), card)
    predictions = predict_logits(model, splits.test_images, device=device).argmax(1)
    test_acc = float((predictions == splits.test_labels).float().mean())
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    # Wall time stays out of the DVC-tracked metrics: the same inputs must give the same bytes,
    # or every clone's `dvc repro` would rewrite dvc.lock.
    (ws.reports_dir / "train.json").write_text(json.dumps({"test_acc": test_acc, "epochs": m.train.epochs}, indent=2) + "\n")
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
    rows = draw_retain_subset(manifest, forget_classes=forget, per_class=ws.params.data.retain_per_class,
                              seed=ws.params.data.retain_seed, num_classes=data.num_classes)
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
    config = EvaluationConfig(mia_feature=ws.params.evaluation.mia_feature)
    comparison = compare_models(original, unlearned, evaluation_data, device=ws.device(), config=config)
    before, after, metrics = comparison.before, comparison.after, comparison.metrics
    ws.reports_dir.mkdir(parents=True, exist_ok=True)
    (ws.reports_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
    pd.DataFrame({"class": list(data.class_names), "before": before.per_class_test, "after": after.per_class_test}).to_csv(
        ws.reports_dir / "per_class.csv", index=False
    )
    return metrics
