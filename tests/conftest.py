"""Shared fixtures. The digits model is trained once per session: a few seconds on a CPU."""

from __future__ import annotations

import atexit
import contextlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

# Before Prefect or MLflow is imported anywhere: keep their state out of $HOME and offline.
# Made only where none is set (processes the tests start inherit it) and removed at exit:
# a directory per run, and per child that re-imported this file, used to pile up in /tmp.
# Each pytest-xdist worker (`make test` runs two) makes its own, so no two share a database.
if "PREFECT_HOME" not in os.environ or os.environ.get("PYTEST_XDIST_WORKER", "") not in (
    "",
    os.environ.get("UNSIR_TEST_PREFECT_HOME_OF"),
):
    os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="unsir-prefect-")
    os.environ["UNSIR_TEST_PREFECT_HOME_OF"] = os.environ.get("PYTEST_XDIST_WORKER", "")
    atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], ignore_errors=True)
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
# DVC's user and system config levels, empty ones of the suite's: a remote or cache that this
# machine's `dvc config --global` sets would otherwise change what every DVC test sees.
if "DVC_GLOBAL_CONFIG_DIR" not in os.environ:
    _dvc_config = tempfile.mkdtemp(prefix="unsir-dvc-config-")
    os.environ["DVC_GLOBAL_CONFIG_DIR"] = os.path.join(_dvc_config, "global")
    os.environ["DVC_SYSTEM_CONFIG_DIR"] = os.path.join(_dvc_config, "system")
    atexit.register(shutil.rmtree, _dvc_config, ignore_errors=True)
os.environ.setdefault("UNSIR_PROGRESS", "0")
# One torch thread in every thread of this process, set before torch starts its OpenMP pool:
# the CLI's runtime.configure_threads() run in-process would otherwise change the count for the
# main thread only, and a flow's task threads would compute with another count (other rounding).
os.environ.setdefault("UNSIR_TORCH_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch

from unsir.configs import OptimConfig
from unsir.data import load_digits
from unsir.models import ModelSpec, build_model
from unsir.problem import prepare_splits
from unsir.splits import make_split_manifest
from unsir.training import fit, seed_everything

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
    fit(
        model,
        digits_splits.train_images,
        digits_splits.train_labels,
        OptimConfig(lr=1e-3, epochs=15, batch_size=32),
        device=CPU,
        generator=generator,
    )
    return model.eval()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for every test that runs a flow."""
    # Prefect's console handler writes to the sys.stderr of the moment `prefect` first loads:
    # loaded by a test with capsys, it wrote to that test's closed buffer ever after, and the
    # next flow run, in another test, failed with "maximum recursion depth exceeded".
    import prefect.main  # noqa: F401
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


ROOT = Path(__file__).resolve().parents[1]
# The command behind `make services-up` / `make services-down`: the services tests start theirs with it.
STACK = ROOT / "infra" / "local" / "stack.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class AnsweringEveryVerb(http.server.BaseHTTPRequestHandler):
    """A request handler whose :meth:`answer` serves every verb, silent in the test's output."""

    protocol_version = "HTTP/1.1"

    def answer(self) -> None:
        raise NotImplementedError

    def do_GET(self) -> None:
        self.answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_GET

    def reply(self, status: int, content: bytes, kind: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, *args) -> None:
        pass


@contextlib.contextmanager
def http_server_on_loopback(handler: type[AnsweringEveryVerb]) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 (a free port) serving ``handler`` in a thread, as a
    Prefect server would be reached; yields its API URL (ending in /api)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def run_stack(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`infra/local/stack.py ARGS` with ``env`` (its directory, ports and credentials)."""
    return subprocess.run(
        [sys.executable, str(STACK), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def make_project(root: Path, *, retrain_reference: bool = False) -> Path:
    """A copy of the project's pipeline files in a fresh git repository (training shortened
    to 15 epochs: the same accuracy on digits, half the time). The retrained reference (a
    second full training in every evaluation, or in every held one) is off unless a test
    asserts on it."""
    import yaml

    root.mkdir(parents=True, exist_ok=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, root / name)
    for package in ("unsir", "unsir_pipeline"):  # dvc.yaml's stages depend on their code
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["train"]["epochs"] = 15
    params["evaluation"]["retrain_reference"] = retrain_reference
    params["gates"]["retrain_when_held"] = retrain_reference
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    identity = ["-c", "user.email=t@t", "-c", "user.name=t"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *identity, "commit", "-qm", "init"]):
        subprocess.run(command, cwd=root, check=True)
    return root


@pytest.fixture(scope="session")
def bootstrapped_project(tmp_path_factory) -> Path:
    """A project bootstrapped once per test run: data prepared, the original trained and
    registered as version 1 (champion, original). Never used directly: tests take their own
    copy with :func:`clone_project`, since every flow adds versions and records.

    Under pytest-xdist the workers share one: the first to get here bootstraps it, under a file
    lock, in the directory above their own temporary roots; the others wait and read it (a
    bootstrap is a DVC run, a training and a registration: 30-50 s a worker)."""
    import fcntl

    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.settings.workspace import Workspace

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if "PYTEST_XDIST_WORKER" in os.environ else base
    root, done = shared / "bootstrapped" / "project", shared / "bootstrapped" / "done"
    with open(shared / "bootstrapped.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the worker dies
        if not done.exists():
            shutil.rmtree(root.parent, ignore_errors=True)  # a worker that died half-way
            result = bootstrap(Workspace.load(make_project(root)))
            assert result.created and result.version == 1
            done.touch()
    return root


def leaves_a_class(new: int):
    """An intake check (``RequestStore.add(admit=...)``) over a data set of two classes: a
    request for ``new`` is refused when the queued requests hold the other class."""
    from unsir_pipeline.governance.deletion_requests import RequestError

    def admit(queued) -> None:
        classes = sorted({c for r in queued for c in r.classes})
        if {*classes, new} == {0, 1}:
            raise RequestError(f"class {new} with queued {classes} would leave no class")

    return admit


def clone_project(source: Path, dest: Path) -> Path:
    """A self-contained copy of a project: its files, git and DVC state, and its SQLite MLflow
    store with every absolute path (artifact locations, model sources) moved to the copy."""
    import sqlite3

    shutil.copytree(source, dest, symlinks=True)
    db = dest / "state" / "mlflow" / "mlflow.db"
    if db.is_file():
        with sqlite3.connect(db) as conn:
            tables = [name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                columns = [
                    row[1]
                    for row in conn.execute(f'PRAGMA table_info("{table}")')
                    if row[2].upper().startswith(("VARCHAR", "TEXT"))
                ]
                for column in columns:
                    conn.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?) > 0',
                        (str(source), str(dest), str(source)),
                    )
        conn.close()
    return dest


def a_registry_that_does_not_answer(monkeypatch) -> tuple[str, list[str], list[str]]:
    """The discard port as the registry (connection refused, no retries): its URI, the `--set`
    overrides naming it (a flow takes every second item), and the list every real MLflow HTTP
    request is counted into."""
    import mlflow.utils.rest_utils as rest_utils

    uri = "http://127.0.0.1:9"
    asked: list[str] = []
    real_request = rest_utils.http_request

    def counted(host_creds, endpoint, method, *args, **kwargs):  # the real request, counted
        asked.append(endpoint)
        return real_request(host_creds, endpoint, method, *args, **kwargs)

    monkeypatch.setattr(rest_utils, "http_request", counted)
    return uri, ["--set", f"registry.tracking_uri={uri}", "--set", "registry.http_max_retries=0"], asked


def set_version_status(ws, version: int, status: str) -> None:
    """What a registry backend sets when a version's registration fails or never finishes."""
    import sqlite3

    with sqlite3.connect(ws.registry_database) as conn:
        conn.execute(
            "UPDATE model_versions SET status = ? WHERE name = ? AND version = ?",
            (status, ws.params.registry.model_name, version),
        )
    conn.close()


def run_with_read_only(paths: list[Path], command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` run with ``paths`` not writable to it, as on an auditor's read-only copy.
    Permissions stop no write of root's (CI's containers), so as root each path is mounted
    read-only in a mount namespace of the command's own; the test is skipped where that cannot
    be done. Otherwise their write bits are cleared for the run."""
    if os.geteuid() == 0:
        # $0: how many of the arguments are paths to mount read-only; the command follows them.
        mount = (
            'n=$0; while [ "$n" -gt 0 ]; do mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" || exit 97; '
            'shift; n=$((n - 1)); done; exec "$@"'
        )
        wrapped = ["unshare", "--mount", "sh", "-c", mount, str(len(paths)), *map(str, paths)]
        probe = subprocess.run([*wrapped, "true"], capture_output=True, text=True)
        if probe.returncode != 0:
            pytest.skip(f"running as root, where permissions stop no write, and cannot mount read-only: {probe.stderr}")
        return subprocess.run([*wrapped, *command], capture_output=True, text=True)
    modes = {path: path.stat().st_mode for path in paths}
    for path, mode in modes.items():
        path.chmod(mode & ~0o222)
    try:
        return subprocess.run(command, capture_output=True, text=True)
    finally:
        for path, mode in modes.items():
            path.chmod(mode)  # or pytest cannot remove it


def run_on_full_disk(
    directory: Path, command: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``command`` run with ``directory`` on a disk with no space left: a small tmpfs holding a
    copy of it, filled, mounted over it in a mount namespace of the command's own (a user
    namespace too where the tests do not run as root), so the full disk and every write to it
    vanish with the command. The test is skipped where such a mount cannot be made."""
    # $0: the directory; the command follows it.
    mount = (
        'copy=$(mktemp -d) && cp -a "$0"/. "$copy"/ && mount -t tmpfs -o size=4m tmpfs "$0" && '
        'cp -a "$copy"/. "$0"/ && rm -rf "$copy" || exit 97; '
        'dd if=/dev/zero of="$0/.filler" bs=64k 2>/dev/null; exec "$@"'
    )
    namespace = ["unshare", "--mount"] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user", "--mount"]
    wrapped = [*namespace, "sh", "-c", mount, str(directory)]
    probe = subprocess.run([*wrapped, "sh", "-c", 'test "$(df --output=avail "$0" | tail -1)" -eq 0', str(directory)])
    if probe.returncode != 0:
        pytest.skip("cannot mount a full tmpfs in a mount namespace here (needs root or user namespaces)")
    return subprocess.run([*wrapped, *command], capture_output=True, text=True, env=env)


def downgrade_schema(target: Path | str, store: str, revision: str) -> None:
    """Take ``store``'s schema in the state database ``target`` (a SQLite file or a URL) back to
    ``revision``: the database as the code of that revision left it, for an older copy."""
    from alembic import command

    from unsir_pipeline.adapters.state_store import StateDatabase, _alembic_config

    config = _alembic_config(store)
    with StateDatabase(target).write() as conn:
        config.attributes["connection"] = conn
        command.downgrade(config, revision)


def flow_result(**changes) -> dict:
    """What the unlearn flow returns for a run that forgot class 3 as version 2 (promoted),
    with ``changes`` made: what :func:`~unsir_pipeline.governance.trail.run_records` reads and
    the CLI's summary (:func:`~unsir_pipeline.cli.forget.format_result`) prints."""
    result = {
        "forget_classes": [3],
        "forget_class_names": ["3"],
        "all_forgotten": [3],
        "metrics": {},
        "per_class": [],
        "compute_s": {},
        "task_s": {},
        "device": "cpu",
        "rounds": [],
        "verified": False,
        "reads_forget_train": False,
        "mlflow_run_id": "r",
        "flow_run_id": "f",
        "new_version": 2,
        "parent_version": 1,
        "verified_forgotten_classes": [3],
        "data_digests": {},
        "expectations_passed": 1,
        "promoted": True,
        "gate_reasons": [],
        "method": "unsir",
    }
    return {**result, **changes}
