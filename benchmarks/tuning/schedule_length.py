"""Tuning-half experiment: how short can the head-reset recipe's schedule be?

The held-out grid measured the shipped recipe (impair 1 epoch, repair 3, polish 2 on D_r_sub)
at 0.112 of retraining's CPU time on average and 0.162 at worst, above the 1/10 target. This
runs shorter schedules of the same recipe on the tuning half only (quality.py's --part tuning
class sets, seeds 0-2) and prints, per variant, how many runs pass the benchmark's bounds and
the gate's validation check, and the CPU-time ratio to retraining (one torch thread, process
CPU time, so other work on the machine does not inflate it). Writes every run to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid, data and pass criteria)

from unsir.data import load_dataset  # noqa: E402
from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    assert shipped.polish is not None
    epochs = lambda config, n: replace(config, epochs=n)  # noqa: E731
    batch = lambda config, n: replace(config, batch_size=n)  # noqa: E731
    return {
        "r3p2": shipped,  # the shipped schedule
        "r3p1": replace(shipped, polish=epochs(shipped.polish, 1)),
        "r2p1": replace(shipped, repair=epochs(shipped.repair, 2), polish=epochs(shipped.polish, 1)),
        "r2p2": replace(shipped, repair=epochs(shipped.repair, 2)),
        "r3p0": replace(shipped, polish=None),
        "r1p1": replace(shipped, repair=epochs(shipped.repair, 1), polish=epochs(shipped.polish, 1)),
        "r1p2": replace(shipped, repair=epochs(shipped.repair, 1)),
        "b64": replace(shipped, repair=batch(shipped.repair, 64), polish=batch(shipped.polish, 64)),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--out", default="reports/bench/tuning-schedule-length.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    data = load_dataset(args.dataset, None)
    grid = argparse.Namespace(sets=None, singles=None, pairs=10, triples=5, part="tuning")
    train_cfg = training_for(args.arch)
    chosen = variants(args.arch, 50)
    if args.only:
        chosen = {k: v for k, v in chosen.items() if k in args.only}
    eval_cfg = EvaluationConfig(probe=False, relearn=False)
    runs = []
    for setting in quality.grid_settings(data, args.arch, args.seeds, grid, train_cfg, device):
        seed, forget, original = setting.seed, setting.forget, setting.original
        task, zero_glance, evaluation_data = setting.task, setting.zero_glance, setting.evaluation_data
        run: dict = {"seed": seed, "forget_classes": list(forget)}
        methods = [("retrain", "retrain", RetrainConfig(train=train_cfg), task)]
        methods += [(name, "noise_free", config, zero_glance) for name, config in chosen.items()]
        for name, method_name, config, task_for in methods:
            method = make_method(method_name, config)
            cpu_started = time.process_time()
            outcome = method.unlearn(
                original, task_for, device=device, generator=torch.Generator().manual_seed(seed)
            )
            cpu_s = time.process_time() - cpu_started
            measured = evaluate_model(outcome.model, evaluation_data, device=device, config=eval_cfg).metrics
            run[name] = {
                "forget_acc": measured["forget_acc"],
                "retain_acc": measured["retain_acc"],
                "mia": measured["mia"],
                "cpu_s": cpu_s,
                "rounds": len(outcome.rounds) or None,
                "verified": outcome.verified,
            }
        for name in chosen:
            run[name]["pass"] = quality.passes(run[name], run["retrain"])
            run[name]["cpu_ratio"] = run[name]["cpu_s"] / run["retrain"]["cpu_s"]
        runs.append(run)
        print(
            f"seed {seed} {list(forget)} retrain mia {run['retrain']['mia']:.3f} | "
            + " | ".join(
                f"{n}: f {run[n]['forget_acc']:.3f} r {run[n]['retain_acc'] - run['retrain']['retain_acc']:+.3f} "
                f"m {run[n]['mia']:.3f} R{run[n]['rounds']} t {run[n]['cpu_ratio']:.3f} "
                f"{'ok' if all(run[n]['pass'].values()) and run[n]['verified'] is not False else 'FAIL'}"
                for n in chosen
            ),
            flush=True,
        )
    print()
    for name in chosen:
        rows = [r[name] for r in runs]
        gate = sum(all(r["pass"].values()) and r["verified"] is not False for r in rows)
        ratios = [r["cpu_ratio"] for r in rows]
        fails = {k: sum(not r["pass"][k] for r in rows) for k in rows[0]["pass"]}
        print(
            f"{name:6s} gate passes {gate}/{len(rows)} fails {fails} CPU time / retrain mean "
            f"{statistics.fmean(ratios):.3f} worst {max(ratios):.3f} rounds worst {max(r['rounds'] or 0 for r in rows)}"
        )
    Path(args.out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
