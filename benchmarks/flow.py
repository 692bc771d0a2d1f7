"""Where the unlearning flow's wall time goes, against the core's own compute, on digits.

    python benchmarks/flow.py                 # make bench-flow: embedded defaults
    python benchmarks/flow.py --services      # make bench-flow-services: the local stack

Runs in a temporary copy of the project (nothing here is touched): bootstrap, then the
``unlearn`` flow several times (each forgets class 3 from the ``original`` version), then one
deletion batch (a request for class 8). Prefect runs in ephemeral mode, MLflow on SQLite.
With ``--services``, a stack of infra/local/stack.py is started for the run in a temporary
directory (PostgreSQL, MLflow server with basic auth, Prefect server, process worker) and
stopped after: the same flows talk to the servers, and the deletion batch is triggered as a
deployment run that the worker picks up. Prints per-task wall time, the UNSIR compute inside
it, and writes reports/bench/flow.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STACK = ROOT / "infra" / "local" / "stack.py"


def make_project(root: Path) -> None:
    root.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, root / name)
    shutil.copy(ROOT / "prefect.yaml", root / "prefect.yaml")  # the worker's deployment
    for package in ("unsir", "unsir_pipeline", "flows", "tasks"):  # dvc.yaml's stages depend on their code
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for command in (
        ["git", "init", "-q"],
        ["git", "add", "-A"],
        ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"],
    ):
        subprocess.run(command, cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "flow.json"))
    parser.add_argument(
        "--services", action="store_true", help="run against a local services stack started for the benchmark"
    )
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="unsir-flow-bench-"))
    workdir.chmod(0o755)  # PostgreSQL's own user must reach the stack's directory
    project = workdir / "project"
    make_project(project)
    stack_env, stack_up_s = None, None
    if args.services:
        stack_env, stack_up_s = start_stack(workdir, project)
    try:
        report = measure(project, args.runs)
    finally:
        if stack_env is not None:
            subprocess.run([sys.executable, str(STACK), "down"], env=stack_env, check=False)
    report["stack_up_s"] = stack_up_s
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def start_stack(workdir: Path, project: Path) -> tuple[dict[str, str], float]:
    """Start infra/local's stack for ``project`` and point this process at it."""
    import socket

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return probe.getsockname()[1]

    env = {
        **os.environ,
        "UNSIR_SERVICES_DIR": str(workdir / "services"),
        "UNSIR_PROJECT_DIR": str(project),
        "UNSIR_PG_PORT": str(free_port()),
        "UNSIR_MLFLOW_PORT": str(free_port()),
        "UNSIR_PREFECT_PORT": str(free_port()),
        "UNSIR_PREFECT_UI": "false",
    }
    started = time.perf_counter()
    subprocess.run([sys.executable, str(STACK), "up"], env=env, check=True)
    up_s = time.perf_counter() - started
    client = dict(line.split("=", 1) for line in (workdir / "services" / "client.env").read_text().splitlines())
    os.environ.update(client)  # before Prefect and MLflow are imported
    print(
        f"services up in {up_s:.1f}s: MLflow {client['MLFLOW_TRACKING_URI']}, Prefect {client['PREFECT_API_URL']}",
        file=sys.stderr,
    )
    return env, up_s


def measure(project: Path, n_runs: int) -> dict:
    started = time.perf_counter()
    from unsir_pipeline.settings.environment import configure

    configure(project)
    import_started = time.perf_counter()
    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.flows.unlearn import unlearn
    from unsir_pipeline.settings.workspace import Workspace

    import_s = time.perf_counter() - import_started
    boot_started = time.perf_counter()
    bootstrap(Workspace.load(project))
    bootstrap_s = time.perf_counter() - boot_started

    runs = []
    for i in range(n_runs):
        t0 = time.perf_counter()
        result = unlearn(forget_classes=["3"], project_dir=str(project), parent="original")
        wall = time.perf_counter() - t0
        runs.append(
            {
                "wall_s": wall,
                "task_s": result["task_s"],
                "compute_s": result["compute_s"],
                "forget_acc": result["metrics"]["forget_acc"],
            }
        )
        print(
            f"run {i + 1}: flow {wall:.2f}s, tasks {sum(result['task_s'].values()):.2f}s, UNSIR compute "
            f"{sum(result['compute_s'].values()):.3f}s",
            file=sys.stderr,
        )

    def med(values):
        return statistics.median(values)

    tasks = list(runs[0]["task_s"])
    per_task = {t: med([r["task_s"][t] for r in runs]) for t in tasks}
    compute = {k: med([r["compute_s"][k] for r in runs]) for k in runs[0]["compute_s"]}
    wall = med([r["wall_s"] for r in runs])
    first_wall = runs[0]["wall_s"]
    batch = time_deletion_batch(project)
    report = {
        "prefect_api": os.environ.get("PREFECT_API_URL", "ephemeral"),
        "mlflow_tracking_uri": Workspace.load(project).params.registry.tracking_uri,
        "runs": runs,
        "imports_s": import_s,
        "bootstrap_s": bootstrap_s,
        "flow_wall_s_first": first_wall,
        "flow_wall_s_median": wall,
        "task_s_median": per_task,
        "compute_s_median": compute,
        "compute_total_s": sum(compute.values()),
        "outside_tasks_s": wall - sum(per_task.values()),
        "deletion_batch": batch,
        "total_s": time.perf_counter() - started,
    }
    print(f"\nflow wall time (median of {n_runs}; first run {first_wall:.2f}s): {wall:.2f}s")
    print(
        f"UNSIR compute inside it (noise + impair + repair): {report['compute_total_s']:.3f}s "
        f"({100 * report['compute_total_s'] / wall:.1f}% of the flow)"
    )
    print(f"\n{'task':<26}{'wall s':>9}{'compute s':>11}")
    compute_of = {"unlearn": sum(compute.values())}
    for task_name, seconds in sorted(per_task.items(), key=lambda kv: -kv[1]):
        c = compute_of.get(task_name)
        print(f"{task_name:<26}{seconds:>9.3f}{(f'{c:.3f}' if c is not None else '-'):>11}")
    print(f"{'(Prefect, outside tasks)':<26}{report['outside_tasks_s']:>9.3f}")
    print(f"\none-off per process: imports {import_s:.2f}s, bootstrap {bootstrap_s:.2f}s")
    print(
        f"deletion batch ({batch['how']}): {batch['wall_s']:.2f}s from trigger to completion"
        + (f", of which {batch['queue_s']:.2f}s waiting for the worker" if batch.get("queue_s") is not None else "")
    )
    return report


def time_deletion_batch(project: Path) -> dict:
    """One deletion batch (a request for class 8): in this process, or through the worker."""
    import mlflow
    from prefect.client.orchestration import get_client

    from unsir_pipeline.governance import intake
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(project)
    intake.file_request(ws, ["8"], "benchmark", "flow benchmark")
    t0 = time.perf_counter()
    if os.environ.get("PREFECT_API_URL"):
        from prefect.deployments import run_deployment

        flow_run = run_deployment("deletion-batch/deletion-batch", timeout=900)
        how = "deployment run, picked up by the process worker"
    else:
        from unsir_pipeline.flows.deletion_batch import deletion_batch

        state = deletion_batch(project_dir=str(project), return_state=True)
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(state.state_details.flow_run_id)
        how = "in this process"
    wall = time.perf_counter() - t0
    if not flow_run.state or not flow_run.state.is_completed():
        raise RuntimeError(f"the deletion batch ended {flow_run.state}")
    # Through a worker, the run waits in the pool's queue until the worker's next poll.
    queued = how.startswith("deployment") and flow_run.start_time
    queue_s = (flow_run.start_time - flow_run.created).total_seconds() if queued else None
    # Per-task seconds as the unlearn subflow logged them to its MLflow run.
    client = mlflow.MlflowClient(tracking_uri=ws.tracking_uri, registry_uri=ws.tracking_uri)
    version = max(client.search_model_versions(f"name='{ws.params.registry.model_name}'"), key=lambda v: int(v.version))
    run_id = version.run_id or version.tags.get("mlflow_run_id")
    metrics = client.get_run(run_id).data.metrics if run_id else {}
    task_s = {k.removeprefix("task_s_").replace("_", "-"): v for k, v in metrics.items() if k.startswith("task_s_")}
    return {
        "how": how,
        "wall_s": wall,
        "queue_s": queue_s,
        "flow_run_s": flow_run.total_run_time.total_seconds(),
        "task_s": task_s,
        "model_version": int(version.version),
    }


if __name__ == "__main__":
    sys.exit(main())
