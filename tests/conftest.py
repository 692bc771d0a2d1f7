"""Shared fixtures. The digits model is trained once per session: a few seconds on a CPU."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

# Before Prefect or MLflow is imported anywhere: keep their state out of $HOME and offline.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="unsir-prefect-"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
os.environ.setdefault("UNSIR_PROGRESS", "0")

import pytest
import torch

from unsir.data import load_digits
from unsir.models import ModelSpec, build_model
from unsir.problem import prepare_splits
from unsir.splits import make_split_manifest
from unsir.training import OptimConfig, fit, seed_everything

CPU = torch.device("cpu")


@pytest.fixture(scope="session")
def digits():
    return load_digits()


@pytest.fixture(scope="session")
def digits_manifest(digits):
    return make_split_manifest(digits, seed=0)


@pytest.fixture(scope="session")
def digits_splits(digits, digits_manifest):
    return prepare_splits(digits, digits_manifest)


@pytest.fixture(scope="session")
def trained_digits_model(digits_splits):
    """A small CNN trained on digits to ~97% test accuracy (15 epochs, ~2 s)."""
    generator = seed_everything(0)
    model = build_model(ModelSpec("small_cnn", 10, 1))
    fit(model, digits_splits.train_images, digits_splits.train_labels, OptimConfig(lr=1e-3, epochs=15, batch_size=32),
        device=CPU, generator=generator)
    return model.eval()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


ROOT = Path(__file__).resolve().parents[1]


def make_project(root: Path) -> Path:
    """A copy of the project's pipeline files in a fresh git repository (training shortened
    to 15 epochs: the same accuracy on digits, half the time)."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, root / name)
    for package in ("unsir", "unsir_pipeline"):  # dvc.yaml's stages depend on their code
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["train"]["epochs"] = 15
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"]):
        subprocess.run(command, cwd=root, check=True)
    return root
