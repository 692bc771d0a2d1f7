"""Where the unlearning flow's wall time goes, against the core's own compute, on digits.

    python benchmarks/flow.py            # make bench-flow

Runs in a temporary copy of the project (nothing here is touched): bootstrap, then the
``unlearn`` flow several times (each forgets class 3 from the ``original`` version). Prefect
runs in ephemeral mode unless PREFECT_API_URL points at a server. Prints per-task wall time,
the UNSIR compute inside it, and writes reports/bench/flow.json.
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


def make_project(root: Path) -> None:
    root.mkdir(parents=True)
    for name in ("params.yaml", "dvc.yaml"):
        shutil.copy(ROOT / name, root / name)
    for package in ("unsir", "unsir_pipeline"):  # dvc.yaml's stages depend on their code
        shutil.copytree(ROOT / package, root / package, ignore=shutil.ignore_patterns("__pycache__"))
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.email=b@b", "-c", "user.name=b", "commit", "-qm", "bench"]):
        subprocess.run(command, cwd=root, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "reports" / "bench" / "flow.json"))
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="unsir-flow-bench-"))
    project = workdir / "project"
    make_project(project)
    started = time.perf_counter()
    from unsir_pipeline.environment import configure

    configure(project)
    import_started = time.perf_counter()
    from flows.unlearn import unlearn
    from unsir_pipeline.bootstrap import bootstrap
    from unsir_pipeline.workspace import Workspace

    import_s = time.perf_counter() - import_started
    boot_started = time.perf_counter()
    bootstrap(Workspace.load(project))
    bootstrap_s = time.perf_counter() - boot_started

    runs = []
    for i in range(args.runs):
        t0 = time.perf_counter()
        result = unlearn(forget_classes=["3"], project_dir=str(project), parent="original")
        wall = time.perf_counter() - t0
        runs.append({"wall_s": wall, "task_s": result["task_s"], "compute_s": result["compute_s"], "forget_acc": result["metrics"]["forget_acc"]})
        print(f"run {i + 1}: flow {wall:.2f}s, tasks {sum(result['task_s'].values()):.2f}s, UNSIR compute {sum(result['compute_s'].values()):.3f}s", file=sys.stderr)

    def med(values):
        return statistics.median(values)

    tasks = list(runs[0]["task_s"])
    per_task = {t: med([r["task_s"][t] for r in runs]) for t in tasks}
    compute = {k: med([r["compute_s"][k] for r in runs]) for k in runs[0]["compute_s"]}
    wall = med([r["wall_s"] for r in runs])
    first_wall = runs[0]["wall_s"]
    report = {
        "prefect_api": os.environ.get("PREFECT_API_URL", "ephemeral"),
        "runs": runs,
        "imports_s": import_s,
        "bootstrap_s": bootstrap_s,
        "flow_wall_s_first": first_wall,
        "flow_wall_s_median": wall,
        "task_s_median": per_task,
        "compute_s_median": compute,
        "compute_total_s": sum(compute.values()),
        "outside_tasks_s": wall - sum(per_task.values()),
        "total_s": time.perf_counter() - started,
    }
    print(f"\nflow wall time (median of {args.runs}; first run {first_wall:.2f}s): {wall:.2f}s")
    print(f"UNSIR compute inside it (noise + impair + repair): {report['compute_total_s']:.3f}s "
          f"({100 * report['compute_total_s'] / wall:.1f}% of the flow)")
    print(f"\n{'task':<26}{'wall s':>9}{'compute s':>11}")
    compute_of = {"learn-noise": compute["noise_s"], "impair": compute["impair_s"], "repair": compute["repair_s"]}
    for task_name, seconds in sorted(per_task.items(), key=lambda kv: -kv[1]):
        c = compute_of.get(task_name)
        print(f"{task_name:<26}{seconds:>9.3f}{(f'{c:.3f}' if c is not None else '-'):>11}")
    print(f"{'(Prefect, outside tasks)':<26}{report['outside_tasks_s']:>9.3f}")
    print(f"\none-off per process: imports {import_s:.2f}s, bootstrap {bootstrap_s:.2f}s")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
