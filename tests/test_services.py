"""The pipeline against real servers on loopback: PostgreSQL, the MLflow tracking server (basic
auth), the Prefect server and a process worker, started and stopped by `infra/local/stack.py`,
the command behind `make services-up` / `make services-down`.

CI installs Debian's PostgreSQL (`.ci/run`); everything else comes from the project's venv.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT, free_port, make_project, run_stack

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
# A client's own settings must not leak in from the test process (the Prefect test harness).
_CLIENT_VARIABLES = (
    "PREFECT_API_URL",
    "PREFECT_API_AUTH_STRING",
    "MLFLOW_TRACKING_URI",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "UNSIR_DVC_REMOTE",
    # Set in this process by any registry an earlier test opened; a child would read them as an
    # operator's choice and ignore its own --set registry.http_* values.
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR",
)


@dataclass
class Stack:
    project: Path
    directory: Path
    stack_env: dict[str, str]
    client: dict[str, str]

    def run_stack(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_stack(self.stack_env, *args, timeout=timeout)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES}
        return {**base, **self.client}

    def unsir(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "unsir"), "--project", str(self.project), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pids(self) -> dict[str, int]:
        return {
            line["service"]: line["pid"]
            for line in map(json.loads, self.run_stack("status").stdout.splitlines())
            if line["pid"]
        }

    def mlflow(self, path: str, auth: tuple[str, str] | None = None) -> tuple[int, dict]:
        user, password = auth or (self.client["MLFLOW_TRACKING_USERNAME"], self.client["MLFLOW_TRACKING_PASSWORD"])
        headers = (
            {}
            if auth == ("", "")
            else {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}
        )
        request = urllib.request.Request(self.client["MLFLOW_TRACKING_URI"] + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as err:
            return err.code, {}

    def requests(self) -> dict[str, dict]:
        listed = self.unsir("request", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return {r["id"]: r for r in json.loads(listed.stdout)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory, bootstrapped_project) -> Stack:
    # The session's project with its data prepared and its model trained (DVC outputs, cache and
    # lock), but without its state: `unsir bootstrap` registers it with the stack's MLflow.
    project = tmp_path_factory.mktemp("services") / "project"
    shutil.copytree(
        bootstrapped_project,
        project,
        symlinks=True,
        ignore=lambda directory, names: ["state"] if Path(directory) == bootstrapped_project else [],
    )
    for name in ("flows", "tasks"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    # Outside pytest's private (0700) temporary root: PostgreSQL runs as its own user under root.
    directory = Path(tempfile.mkdtemp(prefix="unsir-services-"))
    stack_env = {
        **{k: v for k, v in os.environ.items() if k not in _CLIENT_VARIABLES},
        "UNSIR_SERVICES_DIR": str(directory),
        "UNSIR_PROJECT_DIR": str(project),
        "UNSIR_PG_PORT": str(free_port()),
        "UNSIR_MLFLOW_PORT": str(free_port()),
        "UNSIR_PREFECT_PORT": str(free_port()),
        "UNSIR_PREFECT_UI": "false",
        "UNSIR_WORKER_POLL_S": "2",  # a triggered run starts within 2 s instead of up to 10
    }
    stack = Stack(project, directory, stack_env, {})
    started = stack.run_stack("up", timeout=600)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        stack.client = dict(line.split("=", 1) for line in (directory / "client.env").read_text().splitlines())
        # Version 1 in the stack's registry, once for every test here, whatever their order.
        bootstrap = stack.unsir("bootstrap")
        assert bootstrap.returncode == 0, bootstrap.stderr[-2000:]
        yield stack
    finally:
        stack.run_stack("down")
        shutil.rmtree(directory, ignore_errors=True)


def test_every_server_listens_on_loopback_only(stack):
    # /proc/net/tcp: "local_address" is hex "0100007F:PORT" for 127.0.0.1; state 0A is LISTEN.
    listening = [line.split() for line in Path("/proc/net/tcp").read_text().splitlines()[1:]]
    listening += [line.split() for line in Path("/proc/net/tcp6").read_text().splitlines()[1:]]
    for port in ("UNSIR_PG_PORT", "UNSIR_MLFLOW_PORT", "UNSIR_PREFECT_PORT"):
        suffix = f":{int(stack.stack_env[port]):04X}"
        bound = [fields[1] for fields in listening if fields[3] == "0A" and fields[1].endswith(suffix)]
        assert bound and all(address.startswith("0100007F:") for address in bound), (port, bound)


def test_a_request_without_credentials_is_refused(stack):
    path = "/api/2.0/mlflow/registered-models/search"
    assert stack.mlflow(path, auth=("", ""))[0] == 401
    assert stack.mlflow(path, auth=(stack.client["MLFLOW_TRACKING_USERNAME"], "wrong-password"))[0] == 401
    assert stack.mlflow(path)[0] == 200
    # The Prefect API too: its auth string is required.
    api = stack.client["PREFECT_API_URL"]
    request = urllib.request.Request(
        f"{api}/flows/filter", data=b"{}", method="POST", headers={"Content-Type": "application/json"}
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 401


def test_deletion_batch_runs_through_the_worker(stack):
    filed = [
        stack.unsir("request", "add", "--classes", c, "--requester", who, "--reason", "consent withdrawn", "--json")
        for c, who in (("3", "alice"), ("8", "bob"))
    ]
    ids = [json.loads(f.stdout)["id"] for f in filed]

    # Triggered on the server; only the worker (its own process) can run it.
    run = subprocess.run(
        [
            str(BIN / "prefect"),
            "deployment",
            "run",
            "deletion-batch/deletion-batch",
            "--watch",
            "--watch-interval",
            "1",
            "--watch-timeout",
            "400",
        ],
        cwd=stack.project,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=450,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-2000:]
    assert "Completed" in run.stdout
    flow_run_id = next(
        word for line in run.stdout.splitlines() if "UUID" in line for word in line.split() if word.count("-") == 4
    )
    worker_log = (stack.directory / "logs" / "worker.log").read_text()
    assert flow_run_id in worker_log  # this worker picked it up

    # The new version and its alias, read over HTTP with credentials.
    status, alias = stack.mlflow("/api/2.0/mlflow/registered-models/alias?name=unsir-classifier&alias=challenger")
    assert status == 200
    version = alias["model_version"]
    assert version["version"] == "2"
    tags = {t["key"]: t["value"] for t in version.get("tags", [])}
    assert json.loads(tags["forgotten_classes"]) == [3, 8]
    assert (
        stack.mlflow("/api/2.0/mlflow/registered-models/alias?name=unsir-classifier&alias=original")[1][
            "model_version"
        ]["version"]
        == "1"
    )
    requests = stack.requests()
    assert all(requests[i]["status"] == "done" and requests[i]["model_version"] == 2 for i in ids)
    # The audit trail says which registry those version numbers belong to, without credentials.
    from unsir_pipeline.governance.audit import AuditLog

    # With the stack, the trail lives in its PostgreSQL, not in the checkout's state directory.
    assert not (stack.project / "state" / "audit.sqlite").exists()
    finished = AuditLog(stack.client["UNSIR_STATE_DATABASE_URL"]).records(request_id=ids[0], event="batch_finished")
    assert finished and finished[-1].payload["registry"] == f"{stack.client['MLFLOW_TRACKING_URI']}#unsir-classifier"
    # The retain subset went to the stack's shared DVC remote, configured for this checkout only.
    assert any((stack.directory / "dvc-remote").rglob("*"))
    assert str(stack.directory) not in (stack.project / ".dvc" / "config").read_text()
    assert str(stack.directory / "dvc-remote") in (stack.project / ".dvc" / "config.local").read_text()


def test_mlflow_stopped_mid_batch_loses_no_request_and_another_checkout_finishes_it(stack, tmp_path):
    """A batch that loses MLflow leaves its request pending; once MLflow is back, a request filed
    in a second checkout (another machine) and the one left pending are forgotten by one batch."""
    from unsir_pipeline.governance.audit import AuditLog
    from unsir_pipeline.governance.deletion_requests import RequestStore

    filed = stack.unsir("request", "add", "--classes", "5", "--requester", "carol", "--reason", "server down", "--json")
    left_pending = json.loads(filed.stdout)["id"]
    fast_failure = [
        "--set",
        "registry.http_max_retries=2",
        "--set",
        "registry.http_backoff_factor=0",
        "--set",
        "registry.http_timeout_s=5",
    ]
    batch = subprocess.Popen(
        [str(BIN / "unsir"), "--project", str(stack.project), *fast_failure, "batch", "run"],
        env=stack.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # Read in process (a CLI call per poll is seconds), from the stack's shared state database.
    store = RequestStore(stack.client["UNSIR_STATE_DATABASE_URL"])
    deadline = time.monotonic() + 120
    while store.get(left_pending).status != "running":
        assert batch.poll() is None and time.monotonic() < deadline, "the batch never claimed the request"
        time.sleep(0.3)
    stopped = stack.run_stack("down", "mlflow")
    assert stopped.returncode == 0 and "mlflow: stopped" in stopped.stdout

    output, _ = batch.communicate(timeout=300)
    assert batch.returncode != 0, output[-3000:]
    assert "Retrying" in output  # the HTTP client retried before giving up
    after = stack.requests()[left_pending]  # what an operator sees
    # A server down is the setup's fault, not the run's: the claim's attempt is taken back.
    assert after["status"] == "pending" and after["attempts"] == 0 and after["error"], after

    restarted = stack.run_stack("up", "mlflow")
    assert restarted.returncode == 0, restarted.stderr

    # A second checkout (another machine): its own state directory, the stack's shared state.
    other = make_project(tmp_path / "machine-b")
    machine_b = Stack(other, stack.directory, stack.stack_env, stack.client)
    # B's data, as `dvc pull` from the shared remote would bring it.
    shutil.copytree(stack.project / "data" / "prepared", other / "data" / "prepared")
    versions = "/api/2.0/mlflow/model-versions/search?filter=name%3D%27unsir-classifier%27"
    versions_before = {v["version"] for v in stack.mlflow(versions)[1]["model_versions"]}
    filed_on_b = machine_b.unsir(
        "request", "add", "--classes", "1", "--requester", "dora", "--reason", "filed on B", "--json"
    )
    assert filed_on_b.returncode == 0, filed_on_b.stderr[-2000:]
    request_id = json.loads(filed_on_b.stdout)["id"]
    assert store.get(request_id).status == "pending"  # machine A sees it at once

    rerun = stack.unsir("batch", "run", "--json", timeout=600)  # the batch runs on machine A
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    result = json.loads(rerun.stdout.splitlines()[-1])
    assert result["status"] == "done" and sorted(result["request_ids"]) == sorted([left_pending, request_id])

    # B's own view, through its CLI: both done with the new version, and the shared trail intact.
    on_b = machine_b.requests()
    for done in (left_pending, request_id):
        assert on_b[done]["status"] == "done" and on_b[done]["model_version"] == result["new_version"]
    verified = machine_b.unsir("audit", "verify", "--json")
    assert verified.returncode == 0, verified.stdout + verified.stderr[-2000:]
    assert json.loads(verified.stdout)["ok"]
    # One claim, one chain, one new version.
    records = AuditLog(stack.client["UNSIR_STATE_DATABASE_URL"]).records(request_id=request_id)
    assert [r.event for r in records].count("batch_started") == 1
    assert [r.event for r in records].count("model_registered") == 1
    assert {r.payload.get("batch_id") for r in records if "batch_id" in r.payload} == {result["batch_id"]}
    versions_after = {v["version"] for v in stack.mlflow(versions)[1]["model_versions"]}
    assert versions_after - versions_before == {str(result["new_version"])}
    for machine in (stack.project, other):
        assert not (machine / "state" / "requests.sqlite").exists()


# --- shared state: two checkouts (two machines) against one stack ----------------------------


def _claim_in(url: str, batch_id: str, barrier, out) -> None:
    from unsir_pipeline.governance.deletion_requests import RequestStore

    store = RequestStore(url)
    barrier.wait()
    out.put((batch_id, [r.id for r in store.claim_pending(batch_id)]))


def test_requests_filed_on_one_machine_are_claimed_once_on_another(stack):
    import multiprocessing

    import psycopg2

    from unsir_pipeline.governance.audit import AuditLog
    from unsir_pipeline.governance.deletion_requests import RequestStore

    # A database of its own: the batch tests below must not see these requests.
    url = stack.client["UNSIR_STATE_DATABASE_URL"]
    admin = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://").rsplit("/", 1)[0] + "/postgres")
    admin.autocommit = True
    admin.cursor().execute("CREATE DATABASE store_test")
    admin.close()
    url = url.rsplit("/", 1)[0] + "/store_test"

    machine_a, machine_b = RequestStore(url), RequestStore(url)
    filed = machine_a.add([3], ["3"], "alice", "filed on A")
    assert machine_b.get(filed.id) == filed
    claimed = machine_b.claim_pending("batch-b")
    assert [r.id for r in claimed] == [filed.id] and machine_a.get(filed.id).batch_id == "batch-b"
    assert machine_a.claim_pending("batch-a") == []

    # Two worker processes claiming at once never take the same request (FOR UPDATE SKIP LOCKED).
    ids = {machine_a.add([i % 10], [str(i % 10)], "bob", "r").id for i in range(40)}
    ctx = multiprocessing.get_context("spawn")
    barrier, out = ctx.Barrier(2), ctx.Queue()
    workers = [ctx.Process(target=_claim_in, args=(url, f"batch-{w}", barrier, out)) for w in range(2)]
    for worker in workers:
        worker.start()
    results = dict(out.get(timeout=60) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    assert not set(results["batch-0"]) & set(results["batch-1"])
    assert set(results["batch-0"]) | set(results["batch-1"]) == ids
    assert all(r.attempts == 1 for r in machine_b.list("running"))

    # One chain, extended from both machines; each sees it intact.
    trail_a, trail_b = AuditLog(url), AuditLog(url)
    trail_a.append("request_received", actor="alice", payload={"on": "a"}, request_ids=[filed.id])
    trail_b.append("batch_started", actor="worker", payload={"on": "b"}, request_ids=[filed.id])
    assert [r.seq for r in trail_a.records(request_id=filed.id)] == [1, 2]
    assert trail_a.verify().ok and trail_b.verify().ok and trail_b.verify().records == 2


def test_a_second_batch_is_skipped_while_the_global_lock_is_held(stack):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from unsir_pipeline.adapters import orchestration

    server = {
        PREFECT_API_URL: stack.client["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: stack.client["PREFECT_API_AUTH_STRING"],
    }
    # Something to claim, so `batch run` starts its flow (an empty queue is answered without one).
    filed = stack.unsir("request", "add", "--classes", "6", "--requester", "erin", "--reason", "queued", "--json")
    assert filed.returncode == 0, filed.stderr[-2000:]
    with temporary_settings(updates=server), orchestration.global_lock("unsir-deletion-batch") as held:
        assert held
        # What `request list` reads for a request left running: held, without taking the slot.
        assert orchestration.global_lock_held("unsir-deletion-batch") is True
        assert orchestration.global_lock_held("a-limit-no-batch-created") is False
        skipped = stack.unsir("batch", "run", "--json")  # another process, another checkout's view
        assert skipped.returncode == 0, skipped.stderr[-2000:]
        assert json.loads(skipped.stdout.splitlines()[-1])["status"] == "skipped"
        with orchestration.global_lock("unsir-deletion-batch") as again:
            assert not again
    with temporary_settings(updates=server), orchestration.global_lock("unsir-deletion-batch") as released:
        assert released
    with temporary_settings(updates=server):
        assert orchestration.global_lock_held("unsir-deletion-batch") is False


def test_a_promotion_waits_for_the_servers_promotion_lock_then_names_it(stack, monkeypatch):
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from unsir_pipeline.adapters import orchestration
    from unsir_pipeline.governance import locks
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(stack.project)
    monkeypatch.setenv("PREFECT_API_URL", stack.client["PREFECT_API_URL"])
    server = {
        PREFECT_API_URL: stack.client["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: stack.client["PREFECT_API_AUTH_STRING"],
    }
    name = f"unsir-promotion-{ws.params.registry.model_name}"
    with temporary_settings(updates=server):
        with orchestration.global_lock(name) as held:  # another machine deciding
            assert held
            started = time.monotonic()
            refused = pytest.raises(locks.PromotionLockError, match=f"held the lock '{name}' on the Prefect server")
            with refused, locks.promotion_lock(ws, wait_s=2):
                pass
            assert time.monotonic() - started >= 2
        # Free again, as the server counts it: the next promotion, another process, can take it.
        # (Taken again in this process, after the refused wait above, it timed out in the suite
        # runs, 30 s included, and not alone: Prefect's per-limit acquisition service in this
        # process, not the server's slot; a refused `unsir promote` exits.)
        assert orchestration.global_lock_held(name) is False


def test_services_stop_by_process_id(stack):
    pids = stack.pids()
    assert set(pids) == {"postgres", "mlflow", "prefect", "worker"}
    stopped = stack.run_stack("down")
    assert stopped.returncode == 0, stopped.stderr
    for service, pid in pids.items():
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2], service
    assert stack.pids() == {}
