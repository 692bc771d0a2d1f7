"""Where a project's files live: the workspace, and the files of one flow run.

A workspace is a project directory (the one holding ``params.yaml``) plus its validated
parameters. Every path the pipeline uses is a property here, so that DVC stages, Prefect tasks
and the CLI agree on them. A :class:`RunContext` is what a flow builds once and hands to each
of its tasks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from unsir.errors import UnlearningInputError
from unsir_pipeline.settings.config import ConfigError, Params, load_params

if TYPE_CHECKING:
    import torch

PARAMS_FILE = "params.yaml"
_SQLITE_PREFIX = "sqlite:///"


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
    def registry_database(self) -> Path | None:
        """The SQLite file of a local registry (a relative path anchored at the project); None
        for a server. Computing it creates nothing."""
        uri = self.params.registry.tracking_uri
        if not uri.startswith(_SQLITE_PREFIX):
            return None
        return self.path(uri[len(_SQLITE_PREFIX) :])

    @property
    def tracking_uri(self) -> str:
        """The params' tracking URI, with a relative SQLite path anchored at the project (whose
        directory is made, for MLflow to create the database in)."""
        uri = self.params.registry.tracking_uri
        db = self.registry_database
        if db is not None and not uri.startswith(_SQLITE_PREFIX + "/"):
            db.parent.mkdir(parents=True, exist_ok=True)
            return _SQLITE_PREFIX + str(db)
        return uri

    @property
    def artifact_location(self) -> str | None:
        """Local artifact store for a local (SQLite) registry; a server decides its own."""
        if self.tracking_uri.startswith("sqlite:"):
            return (self.state_dir / "mlflow" / "artifacts").as_uri()
        return None

    def device(self) -> torch.device:
        # Imported here: the light commands (request list, audit show) load a workspace too,
        # and start in a second instead of three without PyTorch.
        import torch

        from unsir.training import resolve_device

        if self.params.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        # A device this machine lacks would fail in the middle of a flow, after Prefect started
        # and an MLflow run opened: refused wherever the device is first asked for.
        try:
            return resolve_device(self.params.device)
        except UnlearningInputError as err:
            raise ConfigError(f"{err}, or auto") from err


@lru_cache(maxsize=8)
def batch_schedule(directory: str = ".") -> dict[str, str]:
    """prefect.yaml's build step, run by `prefect deploy` in the project directory: the deletion
    batch's cron from params.yaml (requests.schedule, as `unsir batch serve` takes it), so that
    the deployment's schedule has no second source."""
    return {"cron": Workspace.load(directory).params.requests.schedule}


def open_workspace(root: str, overrides: tuple[str, ...] = ()) -> Workspace:
    """The workspace of a project directory, its parameters validated once per process."""
    return Workspace.load(root, overrides)


@dataclass(frozen=True)
class RunPaths:
    """Files of one flow run, under ``state/runs/<run key>``."""

    root: Path

    @classmethod
    def for_run(cls, ws: Workspace, run_key: str) -> RunPaths:
        root = ws.runs_dir / run_key
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    parent = property(lambda self: self.root / "parent")
    download = property(lambda self: self.root / "download")
    unlearned = property(lambda self: self.root / "unlearned")
    retrained = property(lambda self: self.root / "retrained")  # the reference, kept as the fallback
    evaluation = property(lambda self: self.root / "evaluation.json")
    per_class_plot = property(lambda self: self.root / "per_class_accuracy.png")
    confusion_plot = property(lambda self: self.root / "confusion_matrices.png")


@dataclass(frozen=True)
class RunContext:
    """One flow run as its tasks see it: built once by the flow, passed to every task.

    ``run_key`` names the run's directory, its MLflow run and its registration (the flow run id,
    or a batch's stable key); ``flow_run_id`` is Prefect's id of the flow run.
    """

    ws: Workspace
    run_key: str
    flow_run_id: str
    paths: RunPaths

    @classmethod
    def open(cls, ws: Workspace, run_key: str, flow_run_id: str) -> RunContext:
        return cls(ws, run_key, flow_run_id, RunPaths.for_run(ws, run_key))
