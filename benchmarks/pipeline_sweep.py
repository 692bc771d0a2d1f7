"""Every digits class (and {1,7}, {0,4,9}) forgotten through the real pipeline at the shipped
defaults: `unsir forget C --from original`, one flow run each, in a temporary project copy.

    python benchmarks/pipeline_sweep.py [--out reports/bench/pipeline-sweep.json]
    python benchmarks/pipeline_sweep.py --set evaluation.retrain_reference=false --set gates.retrain_when_held=false \
        --out reports/bench/pipeline-sweep-no-reference.json   # the gate without a reference
    python benchmarks/pipeline_sweep.py --seed 3 --out reports/bench/pipeline-sweep-seed3.json
    python benchmarks/pipeline_sweep.py --seed 3 --fresh-registry \
        --out reports/bench/pipeline-sweep-fresh-seed3.json  # each setting its own registry
    python benchmarks/pipeline_sweep.py --seed 3 --fresh-registry --set evaluation.retrain_reference=false \
        --out reports/bench/pipeline-sweep-fresh-when-held-seed3.json  # the reference trained only on a miss

``--seed N`` sets every seed in the project's params.yaml (split, retain subset, original's
initialisation, unlearning) before bootstrap: another split, another original, another run. The
shipped defaults use seed 0, on the benchmark's tuning half; seeds 3-5 are its held-out half.

Each run starts from the original (version 1). In one shared registry (without
``--fresh-registry``), a run after the first promotion also forgets again every class that
promoted versions deleted (the flow's ``forgotten_again``, since a deletion stays deleted), so
its row measures more than its own classes; the sweeps committed from that mode before this
behaviour (``pipeline-sweep.json``, ``-no-reference``, ``-fallback-seedS``) were held by the
deletion-history check instead. ``make bench`` runs every sweep with ``--fresh-registry``.

``--fresh-registry`` gives each setting a registered model and an audit trail of its own
(``registry.model_name``, ``requests.audit_log``), its version 1 the same original: every run
meets the whole gate with no earlier deletion, as a user's first `unsir forget` does, and the
fallback fires for real; ``promoted`` and ``method`` then say how each deletion ended.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flow import make_project  # benchmarks/flow.py: the same temporary project copy

SETTINGS = [[str(c)] for c in range(10)] + [["1", "7"], ["0", "4", "9"]]


def _shown(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _edit_params(project: Path, seed: int | None, arch: str | None) -> None:
    """Every seed, and the architecture with its family's training, written into params.yaml
    (what `dvc repro` trains the original from) and committed."""
    import yaml

    from unsir.recipes import training_for

    params = yaml.safe_load((project / "params.yaml").read_text())
    if seed is not None:
        params["data"]["split_seed"] = params["data"]["retain_seed"] = seed
        params["model"]["seed"] = params["unlearn"]["seed"] = seed
    if arch is not None:
        train = training_for(arch)
        params["model"]["arch"] = arch
        params["model"]["train"] = {**params["model"]["train"], "lr": train.lr, "epochs": train.epochs}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    identity = ["-c", "user.email=b@b", "-c", "user.name=b"]
    subprocess.run(["git", *identity, "commit", "-qam", f"seed {seed}, arch {arch}"], cwd=project, check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/bench/pipeline-sweep.json")
    parser.add_argument("--seed", type=int, default=None, help="every seed in params.yaml (default: as shipped)")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="a params.yaml override"
    )
    parser.add_argument(
        "--arch", default=None, help="model.arch, trained as its family is (default: as shipped, small_cnn)"
    )
    parser.add_argument(
        "--fresh-registry", action="store_true", help="each setting its own registered model and audit trail"
    )
    args = parser.parse_args(argv)
    project = Path(tempfile.mkdtemp(prefix="unsir-sweep-")) / "project"
    make_project(project)
    if args.seed is not None or args.arch is not None:
        _edit_params(project, args.seed, args.arch)
    # Offline and quiet, state inside the temporary project: before Prefect or MLflow load.
    from unsir_pipeline.adapters import orchestration
    from unsir_pipeline.settings import runtime
    from unsir_pipeline.settings.environment import configure

    configure(project)
    # As the CLI does: one torch thread, and a Prefect start-up timeout a busy machine can meet.
    runtime.configure_threads()
    orchestration.configure_prefect(quiet_console=False)
    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.flows.unlearn import unlearn
    from unsir_pipeline.governance.promotion import GateInput, gate_decision, retrained_candidate
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(project, tuple(args.overrides))
    bootstrap(ws)
    rows = []
    for classes in SETTINGS:
        overrides = list(args.overrides)
        if args.fresh_registry:
            key = "-".join(classes)
            overrides += [
                f"registry.model_name=unsir-sweep-{key}",
                f"requests.audit_log=state/audit-sweep-{key}.sqlite",
                # Each run's own request (as every forget run's) beside the trail that records it.
                f"requests.store=state/requests-sweep-{key}.sqlite",
            ]
            bootstrap(Workspace.load(project, tuple(overrides)))  # registers the trained original; no retraining
        started = time.perf_counter()
        result = unlearn(forget_classes=classes, project_dir=str(project), parent="original", overrides=overrides)
        m = result["metrics"]
        # UNSIR's model's own failures: the gate's reasons, or, when the retrained reference took
        # its place, the checks UNSIR's model failed (the registered model's reasons are the reference's).
        reasons = result["unsir_gate_reasons"] if result["method"] == "retrain" else result["gate_reasons"]
        own_failures = [r for r in reasons if r.startswith("FAIL") and "earlier-deleted" not in r]
        reference_passes = None
        if "retrained" in result["per_class"][0]:
            unsir = GateInput(
                metrics=m,
                per_class_test=[row["after"] for row in result["per_class"]],
                forget_classes=result["all_forgotten"],
                verified=result["verified"],
                rounds=len(result["rounds"]),
            )
            retrained = retrained_candidate(unsir, [row["retrained"] for row in result["per_class"]])
            reference_passes = gate_decision(ws, retrained, set())[0]
        rows.append(
            {
                "forget": classes,
                "forget_acc": m["forget_acc"],
                "retain_acc": m["retain_acc"],
                "original_retain_acc": m["original_retain_acc"],
                "reference_forget_acc": m.get("reference_forget_acc"),
                "reference_retain_acc": m.get("reference_retain_acc"),
                "mia": m["mia"],
                "reference_mia": m.get("reference_mia"),
                "mia_forget_holdout": m.get("mia_forget_holdout"),
                "rounds": len(result["rounds"]),
                "verified": result["verified"],
                "own_checks_pass": not own_failures,
                "reference_own_checks_pass": reference_passes,
                "method": result["method"],
                "promoted": result["promoted"],
                # trained by the flow only because UNSIR's model was held (gates.retrain_when_held)
                "reference_trained_when_held": "retrain-reference" in result["task_s"],
                "gate_reasons": result["gate_reasons"],
                "unsir_s": sum(result["compute_s"].values()),
                "flow_s": time.perf_counter() - started,
            }
        )
        r = rows[-1]
        print(
            f"forget {classes}: forget {r['forget_acc']:.3f} retain {r['retain_acc']:.3f} "
            f"(original {r['original_retain_acc']:.3f}, retrained {_shown(r['reference_retain_acc'])}) "
            f"mia {r['mia']:.3f} (retrained {_shown(r['reference_mia'])}, forget-class hold-out "
            f"{_shown(r['mia_forget_holdout'])}) rounds {r['rounds']} "
            f"{'PASS' if r['own_checks_pass'] else 'FAIL'} {own_failures}"
            + ("" if reference_passes is None else f"; retrained reference {'PASS' if reference_passes else 'FAIL'}"),
            flush=True,
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    passed = sum(r["own_checks_pass"] for r in rows)
    fallback = ws.params.gates.fallback_to_retrained
    finished = sum(r["own_checks_pass"] or bool(fallback and r["reference_own_checks_pass"]) for r in rows)
    promoted = sum(r["promoted"] for r in rows)
    by_fallback = sum(r["promoted"] and r["method"] == "retrain" for r in rows)
    retrainings = sum(r["reference_retain_acc"] is not None for r in rows)
    summary = {
        "passed": passed,
        "finished": finished,
        "promoted": promoted,
        "promoted_by_fallback": by_fallback,
        "retrainings": retrainings,
        "retrainings_when_held": sum(r["reference_trained_when_held"] for r in rows),
    }
    out.write_text(
        json.dumps(
            {
                "overrides": args.overrides,
                "seed": args.seed,
                "arch": args.arch,
                "fresh_registry": args.fresh_registry,
                "runs": rows,
                **summary,
            },
            indent=2,
        )
        + "\n"
    )
    if args.fresh_registry:
        print(
            f"{promoted}/{len(rows)} promoted, {by_fallback} of them the retrained reference in UNSIR's place; "
            f"{retrainings} retrainings ({summary['retrainings_when_held']} only because UNSIR's model was held)"
        )
    print(
        f"{passed}/{len(rows)} pass their own checks with UNSIR's model; {finished}/{len(rows)} finished "
        f"{'with' if fallback else 'without'} the fallback to the retrained reference; wrote {out}"
    )
    shutil.rmtree(project.parent, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
