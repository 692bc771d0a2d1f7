"""MLflow tracking and Model Registry behind one service object.

This is the only module that imports MLflow. Models are registered as pyfunc "models from
code" (``unsir_pipeline/adapters/serving_model.py``) carrying the safetensors checkpoint as an
artifact, so serving needs no pickle and :meth:`ModelRegistry.load_model` can rebuild the
``nn.Module`` from plain tensors. Versions are addressed by aliases (``champion``,
``challenger``), never by the deprecated stages. Registration is idempotent on a caller-given
key, so a retried task does not create a second version.
"""

from __future__ import annotations

import os

# Before MLflow is imported: no telemetry look-up (the machine may be offline), no progress
# bars in task logs. ``setdefault`` leaves an operator's explicit choice alone.
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

import json
import logging
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import sqlalchemy.engine
import sqlalchemy.exc
from mlflow.entities import Metric, Param
from mlflow.entities.model_registry import ModelVersion
from mlflow.entities.model_registry.model_version_status import ModelVersionStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model, ModelSignature
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository
from mlflow.types.schema import Array, ColSpec, DataType, Schema

import unsir
from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.state_store import (
    StateFileDamaged,
    is_damaged_sqlite,
    is_locked_sqlite,
    is_read_only_sqlite,
)

if TYPE_CHECKING:
    import torch
    from torch import nn

    from unsir.checkpoint import ModelCard
    from unsir_pipeline.settings.workspace import Workspace

SERVING_MODEL_FILE = Path(__file__).with_name("serving_model.py")
# The HTTP settings an operator exported before this process started; configuration never
# overrides them.
_OPERATOR_HTTP_SETTINGS = {
    k
    for k in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR")
    if k in os.environ
}
CHECKPOINT_ARTIFACT = "checkpoint"
IDEMPOTENCY_TAG = "idempotency_key"
# The sha256 of the weights file, set when the version is created and checked at every load.
WEIGHTS_SHA256_TAG = "weights_sha256"
# Listed explicitly: inferring them costs MLflow several seconds per model.
PIP_REQUIREMENTS = ["torch", "safetensors", "numpy"]
_READY_TIMEOUT_S = 300.0
_READY = ModelVersionStatus.to_string(ModelVersionStatus.READY)
_log = logging.getLogger(__name__)


class RegistryError(Exception):
    """The tracking server or registry could not do what was asked; the message says why."""


class RegistryFileDamaged(RegistryError, StateFileDamaged):
    """A SQLite registry file that is not a database or whose pages are damaged: one of the
    project's state files, to restore from a backup, as a damaged request store is."""


class VersionNotReady(RegistryError, UnlearningInputError):
    """A version MLflow left FAILED_REGISTRATION or PENDING_REGISTRATION: its files may be
    missing or partial, so it is no model to load or serve. Bad input (``unsir`` exits 2): the
    version named, or the one an alias names, is to change; a retry of the run cannot help."""


@dataclass(frozen=True)
class VersionInfo:
    """One registered version, as plain values a task can log or return."""

    version: int
    aliases: tuple[str, ...]
    tags: dict[str, str]
    run_id: str | None
    created_at: str
    # READY, or PENDING_REGISTRATION / FAILED_REGISTRATION for a version that cannot be loaded.
    status: str

    @property
    def ready(self) -> bool:
        return self.status == _READY


def version_with_key(versions: list[VersionInfo], key: str) -> VersionInfo | None:
    """The READY version registered under idempotency ``key`` among ``versions`` (the first,
    should a race have made two): what :meth:`ModelRegistry.register_checkpoint` returns for that
    key. One that is not READY is a failed try's, which the registration replaces."""
    matches = [v for v in versions if v.ready and v.tags.get(IDEMPOTENCY_TAG) == key]
    return min(matches, key=lambda v: v.version) if matches else None


def describe_registry_file_fault(err: BaseException, database: Path | None, *, from_mlflow: bool = False) -> str | None:
    """What to tell of ``err`` when SQLite refused the registry's file ``database``: another
    process held its lock longer than MLflow waits, or the file may not be written (MLflow's
    message names neither the file nor what to do, and on a write made by a query's autoflush
    starts with SQLAlchemy's advice instead); None for any other error, or a registry on a server."""
    cause: BaseException | None = err
    seen = 0
    while cause is not None and seen < 10:  # MLflow wraps SQLAlchemy's error, which wraps SQLite's
        # Only an error MLflow raised (or its client's, ``from_mlflow``) is the registry's: the
        # state files' own are named by the state store.
        from_mlflow = from_mlflow or isinstance(cause, MlflowException)
        orig = getattr(cause, "orig", cause)
        if isinstance(orig, sqlite3.Error) and (is_locked_sqlite(orig) or is_read_only_sqlite(orig)):
            break
        cause, seen = cause.__cause__ or cause.__context__, seen + 1
    else:
        return None
    if database is None or not from_mlflow:
        return None
    if is_read_only_sqlite(orig):
        return (
            f"the MLflow registry's file {database} may not be written: {str(orig).strip()}; expected a file this "
            "user may write, in a directory it may write (check its permissions, an immutable attribute "
            "(`lsattr`), a read-only mount or copy); nothing was registered: run the command again once it is"
        )
    return (
        f"the MLflow registry's file {database} is locked: another process held its write lock longer than MLflow "
        f"waits (a command still writing, or a program left in a transaction on it: `fuser {database}` names "
        "it); run the command again once that process has finished or been stopped"
    )


def _sqlite_file(tracking_uri: str) -> Path | None:
    if not tracking_uri.startswith("sqlite:"):
        return None
    database = sqlalchemy.engine.make_url(tracking_uri).database
    return Path(database) if database and database != ":memory:" else None


def _require_openable_sqlite(tracking_uri: str) -> None:
    """Raise :class:`RegistryError` at once when a SQLite registry's file cannot be opened (a
    directory, a read-only folder). MLflow retries opening a database ten times over 100 s,
    which helps a database server that is starting, never a local file."""
    if not tracking_uri.startswith("sqlite:"):
        return
    database = sqlalchemy.engine.make_url(tracking_uri).database
    if not database or database == ":memory:" or not Path(database).parent.is_dir():
        return  # MLflow makes the missing folders itself, and says so when it cannot
    try:
        sqlite3.connect(database).close()  # opens the file only: no lock is waited for
    except sqlite3.Error as err:
        problem = f"{database} is a directory" if Path(database).is_dir() else str(err)
        raise RegistryError(
            f"cannot open the MLflow registry at {tracking_uri}: {problem}; expected a SQLite database file "
            "that can be created or opened (e.g. sqlite:///state/mlflow/mlflow.db)"
        ) from err


class ModelRegistry:
    """Runs, metrics and artifacts of one experiment, and the versions of one registered model.

    ``artifact_location`` is used only when the experiment does not exist yet; with a SQLite
    tracking URI it keeps artifacts out of the current working directory.
    """

    def __init__(
        self,
        tracking_uri: str,
        model_name: str,
        experiment_name: str,
        *,
        artifact_location: str | None = None,
        http_timeout_s: int | None = None,
        http_max_retries: int | None = None,
        http_backoff_factor: int | None = None,
    ) -> None:
        if not model_name:
            raise RegistryError("model_name must be a non-empty string")
        # MLflow reads its HTTP policy from the environment at every request; its defaults (7
        # retries, factor 2, 120 s timeout) keep a batch waiting for minutes on a dead server.
        # An operator's explicit environment wins over the configuration.
        for variable, value in (
            ("MLFLOW_HTTP_REQUEST_TIMEOUT", http_timeout_s),
            ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", http_max_retries),
            ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", http_backoff_factor),
        ):
            if value is not None and variable not in _OPERATOR_HTTP_SETTINGS:
                os.environ[variable] = str(int(value))
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.experiment_name = experiment_name
        self.artifact_location = artifact_location
        _require_openable_sqlite(tracking_uri)
        try:
            # A SQLite registry is opened (and its schema checked) here.
            self._client = mlflow.MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        except sqlalchemy.exc.DBAPIError as err:
            locked = describe_registry_file_fault(err, _sqlite_file(tracking_uri), from_mlflow=True)
            if locked is not None:
                raise RegistryError(f"cannot open the MLflow registry at {tracking_uri}: {locked}") from err
            if is_damaged_sqlite(err.orig):
                raise RegistryFileDamaged(
                    f"cannot open the MLflow registry at {tracking_uri}: {err.orig}; expected a readable MLflow "
                    "database (a damaged file: restore it from a backup)"
                ) from err
            raise RegistryError(
                f"cannot open the MLflow registry at {tracking_uri}: {err.orig}; expected a readable MLflow database"
            ) from err
        self._run_id: str | None = None

    # --- runs ---------------------------------------------------------------------------

    @contextmanager
    def start_run(
        self, run_name: str | None = None, tags: dict[str, str] | None = None, *, run_id: str | None = None
    ) -> Iterator[str]:
        """Open a run in the experiment (created if needed) and yield its id; with ``run_id``,
        resume that run instead (each pipeline task resumes the flow run's MLflow run).

        ``mlflow.pyfunc.log_model`` only logs to the fluent active run, so the global tracking
        URI is pointed at this registry for the run's duration; everything else goes through
        this object's explicit client.
        """
        if self._run_id is not None:
            raise RegistryError(f"run {self._run_id} is still active; runs of one registry do not nest")
        experiment_id = self._experiment_id()
        with self._global_uris():
            if run_id is not None:
                context = mlflow.start_run(run_id=run_id, tags=tags)
            else:
                context = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, tags=tags)
            with context as run:
                self._run_id = run.info.run_id
                try:
                    yield run.info.run_id
                finally:
                    self._run_id = None

    @contextmanager
    def _global_uris(self) -> Iterator[None]:
        """Point MLflow's global (fluent) URIs at this registry for a block, then restore them.

        ``mlflow.set_tracking_uri`` also writes MLFLOW_TRACKING_URI into the environment, which
        the pipeline reads as an operator's setting: restoring it keeps one project's registry
        from leaking into the next one opened in the same process.
        """
        saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
        saved_uris = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved_uris[0])
            mlflow.set_registry_uri(saved_uris[1])
            for key, value in saved_env.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value

    def find_run(self, tag: str, value: str) -> str | None:
        """The id of a run of the experiment carrying ``tag=value`` (a retried flow's run)."""
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            return None
        runs = self._client.search_runs(
            [experiment.experiment_id], filter_string=f"tags.{tag} = '{_quote(value)}'", max_results=1
        )
        return runs[0].info.run_id if runs else None

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self._client.set_terminated(run_id, status=status)

    def log_params(self, params: dict[str, Any]) -> None:
        run_id = self._active_run()
        self._client.log_batch(run_id, params=[Param(str(k), str(v)) for k, v in params.items()])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        run_id = self._active_run()
        now = int(time.time() * 1000)
        batch = [Metric(str(k), float(v), now, step or 0) for k, v in metrics.items()]
        self._client.log_batch(run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if not path.exists():
            raise RegistryError(f"cannot log artifact {str(path)!r}: no such file or directory")
        run_id = self._active_run()
        if path.is_dir():
            self._client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self._client.log_artifact(run_id, str(path), artifact_path)

    def log_dict(self, data: dict[str, Any], filename: str) -> None:
        self._client.log_dict(self._active_run(), data, filename)

    def log_figure(self, fig: Any, filename: str) -> None:
        """Log a matplotlib (or plotly) figure as an image artifact."""
        self._client.log_figure(self._active_run(), fig, filename)

    # --- registration -------------------------------------------------------------------

    def register_checkpoint(
        self,
        checkpoint_dir: Path,
        *,
        input_example: np.ndarray,
        tags: dict[str, str],
        idempotency_key: str,
        alias: str | None = None,
    ) -> int:
        """Log ``checkpoint_dir`` as a pyfunc model in the active run and register a new version.

        If a version already carries ``idempotency_key`` (a retry of the same task), that
        version is returned and nothing is logged or registered. The alias, if given, is
        (re)pointed at the returned version in both cases.
        """
        run_id = self._active_run()
        if not idempotency_key:
            raise RegistryError("idempotency_key must be a non-empty string (e.g. the task run id)")
        if IDEMPOTENCY_TAG in tags:
            raise RegistryError(f"tag {IDEMPOTENCY_TAG!r} is reserved; pass it as idempotency_key")
        existing = self._version_with_key(idempotency_key)
        if existing is not None:
            if alias:
                self.set_alias(alias, existing)
            return existing
        # A version with the key that is not READY (FAILED_REGISTRATION, or PENDING_REGISTRATION
        # left by a try that died waiting) is a failed try's: nobody can load it. The retry is how
        # a platform engineer recovers, so it deletes that version and registers afresh rather
        # than refusing and leaving them to delete it by hand. No other try of the key is running
        # (a task's retries follow one another; forget runs and batches hold their locks), so none
        # waits on it.
        self._discard_unready_versions(idempotency_key)

        # Imported where used: the light commands (filing a request) open the registry to read
        # aliases and tags, and start seconds sooner without PyTorch.
        from unsir.checkpoint import WEIGHTS_FILE, load_checkpoint, weights_sha256

        checkpoint_dir = Path(checkpoint_dir)
        try:
            # Hashed before it is read, and the same digest is then checked by the load: what
            # was evaluated is what gets registered.
            sha256 = weights_sha256(checkpoint_dir) if (checkpoint_dir / WEIGHTS_FILE).is_file() else None
            model, _card = load_checkpoint(checkpoint_dir, device="cpu", expected_sha256=sha256)
        except ValueError as err:
            raise RegistryError(f"cannot register {str(checkpoint_dir)!r}: {err}") from err
        # Registration computes the digest; a caller's tag (copied from another version, say)
        # may only confirm it, never replace it.
        if tags.get(WEIGHTS_SHA256_TAG, sha256) != sha256:
            raise RegistryError(
                f"cannot register {str(checkpoint_dir)!r}: tag {WEIGHTS_SHA256_TAG!r} is "
                f"{tags[WEIGHTS_SHA256_TAG]}, but the weights file hashes to {sha256}"
            )
        example = np.asarray(input_example, dtype=np.float32)
        # The served model takes images as the data set gives them and normalises them itself:
        # a normalised example would document (and test) the wrong contract.
        if example.size and (example.min() < 0 or example.max() > 1):
            raise RegistryError(
                f"input_example for {str(checkpoint_dir)!r} must hold raw images in [0, 1] (the serving "
                f"contract), got values in [{example.min():.3f}, {example.max():.3f}]: pass them unnormalised"
            )
        del model  # loaded above only to prove the checkpoint is intact before logging it

        try:
            with _requirements_checked_by_name():
                info = mlflow.pyfunc.log_model(
                    name="model",
                    python_model=str(SERVING_MODEL_FILE),
                    artifacts={CHECKPOINT_ARTIFACT: str(checkpoint_dir)},
                    # Ship the core library with the model so serving needs only the pip packages.
                    code_paths=[str(Path(unsir.__file__).parent)],
                    signature=serving_signature(),
                    input_example=example,
                    pip_requirements=PIP_REQUIREMENTS,
                    metadata=serving_metadata(_card),
                )
        except MlflowException as err:
            raise RegistryError(f"logging {str(checkpoint_dir)!r} as a model failed: {err.message}") from err
        try:
            self._ensure_registered_model()
            version = self._client.create_model_version(
                name=self.model_name,
                source=info.model_uri,
                run_id=run_id,
                # Set at creation, in the same call: no version ever exists without its digest.
                tags={**tags, IDEMPOTENCY_TAG: idempotency_key, WEIGHTS_SHA256_TAG: str(sha256)},
                model_id=info.model_id,
                await_creation_for=int(_READY_TIMEOUT_S),
            )
        except MlflowException as err:
            self._discard_unregistered(info.model_id, idempotency_key)
            raise RegistryError(
                f"registering {str(checkpoint_dir)!r} as model {self.model_name!r} failed: {err.message}"
            ) from err
        number = int(version.version)
        try:
            self._wait_ready(number)
        except RegistryError:
            self._discard_unready_versions(idempotency_key)  # no broken version stays behind
            raise
        if alias:
            self.set_alias(alias, number)
        return number

    def _discard_unregistered(self, model_id: str, idempotency_key: str) -> None:
        """Delete a logged model whose version could not be created, and its checkpoint.

        Deleted rather than kept and tagged as failed: a model that no version points at is
        nothing a user may load, yet the experiment's model list shows it as READY beside the
        real ones, and every retry of the registration would leave one more checkpoint. The run
        stays, ended FAILED by its caller, as the record of the attempt. The row is marked
        deleted first and the files removed only then, so no listed model ever lacks its files;
        where the database refuses that too (the same full disk), the model is named in the log.
        """
        try:
            if self._version_with_key(idempotency_key) is not None:
                return  # a server made the version, then its answer was lost: the model is its
        except (MlflowException, RegistryError) as err:
            self._warn_model_kept(model_id, err)
            return
        self._discard_unready_versions(idempotency_key)  # one the server made, then failed
        self._discard_logged_model(model_id)

    def _discard_unready_versions(self, idempotency_key: str) -> None:
        """Delete the versions carrying ``idempotency_key`` that are not READY, and the logged
        models they were made from. One that cannot be deleted stays for the next retry, which
        still never returns it."""
        if not self.has_model():
            return
        for found in self.list_versions():
            if found.ready or found.tags.get(IDEMPOTENCY_TAG) != idempotency_key:
                continue
            try:
                model_id = _logged_model_id(self._model_version(found.version))
                self._client.delete_model_version(self.model_name, str(found.version))
            except (MlflowException, RegistryError) as err:
                _log.warning(
                    "model %r version %s is %s and could not be deleted (%s); delete it once the registry "
                    "accepts writes",
                    self.model_name,
                    found.version,
                    found.status,
                    err,
                )
                continue
            _log.warning(
                "deleted model %r version %s: it was %s, never READY", self.model_name, found.version, found.status
            )
            if model_id:
                self._discard_logged_model(model_id)

    def _discard_logged_model(self, model_id: str) -> None:
        """Delete a logged model that no version uses, its row first and then its files."""
        try:
            artifact_location = self._client.get_logged_model(model_id).artifact_location
            self._client.delete_logged_model(model_id)
        except MlflowException as err:
            self._warn_model_kept(model_id, err)
            return
        try:
            get_artifact_repository(artifact_location).delete_artifacts()
        except (MlflowException, OSError) as err:
            _log.warning("the files of deleted model %s stay at %s (%s)", model_id, artifact_location, err)

    def _warn_model_kept(self, model_id: str, err: Exception) -> None:
        _log.warning(
            "logged model %s has no registered version and could not be deleted (%s); delete it from "
            "experiment %r once the registry accepts writes",
            model_id,
            err,
            self.experiment_name,
        )

    def _ensure_registered_model(self) -> None:
        try:
            self._client.create_registered_model(self.model_name)
        except MlflowException as err:
            if err.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def _wait_ready(self, version: int) -> None:
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while True:
            status = self._client.get_model_version(self.model_name, str(version)).status
            if status == ModelVersionStatus.to_string(ModelVersionStatus.READY):
                return
            if status == ModelVersionStatus.to_string(ModelVersionStatus.FAILED_REGISTRATION):
                raise RegistryError(f"model {self.model_name!r} version {version} failed registration")
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"model {self.model_name!r} version {version} still {status} after {_READY_TIMEOUT_S:.0f} s"
                )
            time.sleep(0.2)

    def _version_with_key(self, key: str) -> int | None:
        # Filtered here rather than in a search string, so no key needs quoting.
        if not self.has_model():
            return None
        found = version_with_key(self.list_versions(), key)
        return found.version if found else None

    # --- aliases, versions, tags --------------------------------------------------------

    def resolve_alias(self, alias: str) -> int:
        try:
            return int(self._client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as err:
            if not self.has_model():
                raise RegistryError(
                    f"model {self.model_name!r} is not registered, so alias {alias!r} cannot be resolved"
                ) from err
            known = sorted({a for v in self.list_versions() for a in v.aliases})
            raise RegistryError(f"model {self.model_name!r} has no alias {alias!r}; its aliases are {known}") from err

    def set_alias(self, alias: str, version: int) -> None:
        try:
            self._client.set_registered_model_alias(self.model_name, alias, str(version))
        except MlflowException as err:
            raise RegistryError(
                f"cannot point alias {alias!r} of model {self.model_name!r} at version {version}: {err.message}"
            ) from err

    def delete_alias(self, alias: str) -> None:
        try:
            self._client.delete_registered_model_alias(self.model_name, alias)
        except MlflowException as err:
            raise RegistryError(f"cannot delete alias {alias!r} of model {self.model_name!r}: {err.message}") from err

    def get_version(self, version: int) -> VersionInfo:
        return _version_info(self._model_version(version))

    def require_ready(self, version: int) -> VersionInfo:
        """The version, if its registration finished (READY); else :class:`VersionNotReady`
        naming its status and the way out. Checked before loading or serving it."""
        info = self.get_version(version)
        if not info.ready:
            raise VersionNotReady(
                f"model {self.model_name!r} version {version} is {info.status}, not READY: its registration "
                f"failed or never finished, so it has no model to load (registered by run key "
                f"{info.tags.get(IDEMPOTENCY_TAG, '?')!r}); choose a READY version (`unsir models` lists them; "
                "move an alias to one with `unsir promote VERSION --reason ...`), or run the forget or batch "
                "that registered it again"
            )
        return info

    def set_version_tags(self, version: int, tags: dict[str, str]) -> None:
        self._model_version(version)  # fail with a clear message if it does not exist
        for key, value in tags.items():
            self._client.set_model_version_tag(self.model_name, str(version), key, str(value))

    def model_tags(self) -> dict[str, str]:
        """Tags of the registered model itself ({} when it is not registered)."""
        if not self.has_model():
            return {}
        return dict(self._client.get_registered_model(self.model_name).tags or {})

    def set_model_tag(self, key: str, value: str) -> None:
        """Set a tag on the registered model (the audit trail anchors its head here)."""
        try:
            self._client.set_registered_model_tag(self.model_name, key, value)
        except MlflowException as err:
            raise RegistryError(f"cannot set tag {key!r} on model {self.model_name!r}: {err.message}") from err

    def delete_model_tag(self, key: str) -> None:
        """Remove a tag of the registered model; a tag that is not there is no error."""
        if key not in self.model_tags():
            return
        try:
            self._client.delete_registered_model_tag(self.model_name, key)
        except MlflowException as err:
            raise RegistryError(f"cannot delete tag {key!r} of model {self.model_name!r}: {err.message}") from err

    def list_versions(self) -> list[VersionInfo]:
        versions: list[ModelVersion] = []
        token: str | None = None
        while True:
            page = self._client.search_model_versions(
                filter_string=f"name = '{_quote(self.model_name)}'", page_token=token
            )
            versions.extend(page)
            token = page.token
            if not token:
                break
        # Search results leave aliases out; the registered model maps each alias to a version.
        aliases = self._aliases_by_version()
        return sorted((_version_info(v, aliases) for v in versions), key=lambda v: v.version)

    def _aliases_by_version(self) -> dict[int, tuple[str, ...]]:
        try:
            alias_map = self._client.get_registered_model(self.model_name).aliases or {}
        except MlflowException:
            return {}
        by_version: dict[int, list[str]] = {}
        for alias, version in alias_map.items():
            by_version.setdefault(int(version), []).append(alias)
        return {v: tuple(sorted(a)) for v, a in by_version.items()}

    def has_model(self) -> bool:
        """Whether the model is registered. An unreachable server is an error, not a "no": a
        batch must fail naming the server, not report the model missing."""
        try:
            self._client.get_registered_model(self.model_name)
        except MlflowException as err:
            if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                return False
            raise RegistryError(f"cannot reach the MLflow registry at {self.tracking_uri}: {err.message}") from err
        return True

    # --- loading ------------------------------------------------------------------------

    def model_code_is_current(self, version: int) -> bool:
        """Whether ``version`` runs this checkout's model code (``SERVING_MODEL_FILE``). A version
        keeps the code it was registered with (models from code): one registered earlier answers
        bad input as that code did. Only that file is downloaded."""
        uri = f"models:/{self.model_name}/{version}/{SERVING_MODEL_FILE.name}"
        with tempfile.TemporaryDirectory() as tmp, self._global_uris():
            try:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=uri, dst_path=tmp, tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri
                )
            except MlflowException:  # logged another way, without that file: not this code either
                return False
            return Path(local).read_bytes() == SERVING_MODEL_FILE.read_bytes()

    def load_model(
        self,
        ref: str | int,
        *,
        dest: Path,
        device: torch.device | str = "cpu",
        allow_pickled_module: bool = False,
    ) -> tuple[nn.Module, ModelCard, int]:
        """Load a version (alias name or number) as an ``nn.Module`` with its card.

        The safetensors checkpoint logged with the version is downloaded into ``dest`` and
        rebuilt without unpickling anything. A version logged with the ``mlflow.pytorch``
        flavour instead stores a pickled module, whose loading runs arbitrary code: it is
        loaded only if ``allow_pickled_module`` is set, and only if a ``card.json`` came with it.
        """
        import torch

        from unsir.checkpoint import CARD_FILE, ModelCard, load_checkpoint

        version = self._resolve_ref(ref)
        uri = f"models:/{self.model_name}/{version}"
        # MLflow downloads a version whatever its status: what a failed registration left.
        expected_sha256 = self.require_ready(version).tags.get(WEIGHTS_SHA256_TAG)
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        try:
            # download_artifacts resolves models:/ URIs through the global registry URI.
            with self._global_uris():
                local = Path(
                    mlflow.artifacts.download_artifacts(
                        artifact_uri=uri,
                        dst_path=str(dest),
                        tracking_uri=self.tracking_uri,
                        registry_uri=self.tracking_uri,
                    )
                )
        except MlflowException as err:
            raise RegistryError(f"cannot download {uri}: {err.message}") from err
        try:
            flavors = Model.load(str(local)).flavors
        except MlflowException as err:  # the registry's row outlived its files (a folder deleted by hand)
            raise RegistryError(
                f"{uri}: the artifact store holds no MLmodel for it ({err.message}); its files were deleted or "
                f"moved: restore the artifact store ({self.tracking_uri}'s artifacts) from a backup"
            ) from err
        pyfunc_artifacts = flavors.get("python_function", {}).get("artifacts", {})
        if CHECKPOINT_ARTIFACT in pyfunc_artifacts:
            checkpoint = local / pyfunc_artifacts[CHECKPOINT_ARTIFACT]["path"]
            if expected_sha256 is None:
                # Registered before digests were recorded: nothing to check against.
                _log.warning("%s has no %s tag; its weights are loaded unchecked", uri, WEIGHTS_SHA256_TAG)
            try:
                model, card = load_checkpoint(
                    checkpoint,
                    device=device,
                    expected_sha256=expected_sha256,
                    label=f"model {self.model_name!r} version {version}",
                )
            except ValueError as err:
                raise RegistryError(f"{uri} has a broken checkpoint artifact: {err}") from err
            return model, card, version
        if "pytorch" not in flavors:
            raise RegistryError(
                f"{uri} has neither a {CHECKPOINT_ARTIFACT!r} artifact nor the pytorch flavour; "
                f"its flavours are {sorted(flavors)}"
            )
        if not allow_pickled_module:
            raise RegistryError(
                f"{uri} stores a serialised torch module (mlflow.pytorch flavour, pickle or "
                "torch.export) and no safetensors checkpoint; loading it executes stored code. "
                "Pass allow_pickled_module=True only if you trust whoever logged it."
            )
        cards = sorted(local.rglob(CARD_FILE))
        if not cards:
            raise RegistryError(
                f"{uri} is a pickled torch module without a {CARD_FILE} artifact; cannot build its card"
            )
        card = ModelCard.from_dict(json.loads(cards[0].read_text()))
        # Imported here: only this opt-in path needs it, and it costs 2-3 s.
        from mlflow import pytorch as mlflow_pytorch

        model = mlflow_pytorch.load_model(str(local), map_location=torch.device(device))
        return model.eval(), card, version

    # --- helpers ------------------------------------------------------------------------

    def _resolve_ref(self, ref: str | int) -> int:
        if isinstance(ref, int) and not isinstance(ref, bool):
            self._model_version(ref)
            return ref
        if isinstance(ref, str) and ref.isdigit():
            self._model_version(int(ref))
            return int(ref)
        if isinstance(ref, str) and ref:
            return self.resolve_alias(ref)
        raise RegistryError(f"model reference must be an alias name or a version number, got {ref!r}")

    def _model_version(self, version: int) -> ModelVersion:
        try:
            return self._client.get_model_version(self.model_name, str(version))
        except MlflowException as err:
            # Only a "does not exist" answer means the version is missing: a dropped connection
            # must fail naming the server, or a retried task reports the wrong cause.
            if err.error_code == ErrorCode.Name(RESOURCE_DOES_NOT_EXIST):
                raise RegistryError(f"model {self.model_name!r} has no version {version!r}") from err
            raise RegistryError(f"cannot reach the MLflow registry at {self.tracking_uri}: {err.message}") from err

    def _active_run(self) -> str:
        if self._run_id is None:
            raise RegistryError("no active run; call this inside `with registry.start_run(...)`")
        return self._run_id

    def _experiment_id(self) -> str:
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment is not None:
            return experiment.experiment_id
        try:
            return self._client.create_experiment(self.experiment_name, artifact_location=self.artifact_location)
        except MlflowException as err:
            # Another process may have created it between the look-up and the create.
            experiment = self._client.get_experiment_by_name(self.experiment_name)
            if experiment is None:
                raise RegistryError(f"cannot create experiment {self.experiment_name!r}: {err.message}") from err
            return experiment.experiment_id


def registry_for(ws: Workspace) -> ModelRegistry:
    """The registry a workspace's parameters name (its tracking URI anchored at the project)."""
    r = ws.params.registry
    return ModelRegistry(
        ws.tracking_uri,
        r.model_name,
        r.experiment,
        artifact_location=ws.artifact_location,
        http_timeout_s=r.http_timeout_s,
        http_max_retries=r.http_max_retries,
        http_backoff_factor=r.http_backoff_factor,
    )


def existing_registry(ws: Workspace) -> ModelRegistry | None:
    """The registry, for a command that only reads; None where it is a SQLite database that
    does not exist, which opening it would create (nothing was registered yet, or a copy of the
    project left it out)."""
    database = ws.registry_database
    if database is not None and not database.exists():
        return None
    return registry_for(ws)


@contextmanager
def _requirements_checked_by_name() -> Iterator[None]:
    """Log a model without MLflow mapping every installed file to its module first.

    ``log_model`` checks the model's pip requirements against this environment and, the first
    time in a process, builds a module-to-distribution map from every installed distribution's
    file list (``importlib_metadata.packages_distributions``): 0.8 s of each forget run's
    registration. ``PIP_REQUIREMENTS`` are distribution names, which the check looks up by name
    without the map; the map stays empty for the call, then is as MLflow left it (its requirement
    inference builds it when needed). An MLflow that holds the map elsewhere is left alone."""
    from mlflow.utils import requirements_utils

    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", ()) is not None:  # built already, or elsewhere
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {}  # type: ignore[assignment]  # annotated None: built lazily
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None


def serving_signature() -> ModelSignature:
    """What the served model returns (``unsir_pipeline/adapters/serving_model.py``): per row a
    label, its class name and probabilities.

    The input, float32 images in [0, 1] shaped (N, C, H, W), is stated by the metadata and the
    input example, and checked by the model itself, not declared here: MLflow enforces a declared
    input schema before the model runs and answers a mismatch with the whole input in the message
    (200 KB for 500 digits sent as a list), where the model's own check names the shape, the range
    or the bad image, and what was expected, in one line."""
    return ModelSignature(
        outputs=Schema(
            [
                ColSpec(DataType.long, "label"),
                ColSpec(DataType.string, "class_name"),
                ColSpec(Array(DataType.double), "probabilities"),
            ]
        ),
    )


def serving_metadata(card: ModelCard) -> dict[str, Any]:
    """The contract in words, stored in the MLmodel file beside the signature."""
    return {
        "input": "float32 images in [0, 1] as the data set gives them, shape (N, C, H, W); "
        "the model normalises them with the mean and std below",
        "input_shape": [-1, *card.input_shape],
        "output": "per row: label (int), class_name (str), probabilities (one per class)",
        "normalization": {"mean": list(card.normalization.mean), "std": list(card.normalization.std)},
        "class_names": list(card.class_names),
        "forgotten_classes": list(card.forgotten_classes),
        "forgotten_classes_policy": "never predicted: probability 0, masked out of the argmax",
    }


def _version_info(version: ModelVersion, aliases: dict[int, tuple[str, ...]] | None = None) -> VersionInfo:
    created = datetime.fromtimestamp(version.creation_timestamp / 1000, tz=UTC)
    number = int(version.version)
    return VersionInfo(
        version=number,
        aliases=aliases.get(number, ()) if aliases is not None else tuple(sorted(version.aliases or ())),
        tags=dict(version.tags or {}),
        run_id=version.run_id or None,
        created_at=created.isoformat(),
        status=version.status,
    )


def _logged_model_id(version: ModelVersion) -> str | None:
    """The logged model ``version`` was made from. MLflow's SQL registry leaves the version's
    ``model_id`` empty; its source is the ``models:/<model_id>`` URI registration passed."""
    if version.model_id:
        return version.model_id
    source = version.source or ""
    model_id = source.removeprefix("models:/")
    return model_id if source.startswith("models:/") and "/" not in model_id else None


def _quote(value: str) -> str:
    """Escape a value for a single-quoted MLflow search string."""
    return value.replace("\\", "\\\\").replace("'", "\\'")
