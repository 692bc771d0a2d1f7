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

from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.methods.unsir import UNSIRConfig  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    """Schedules named by their repair and polish epochs (one impair epoch each), on the
    family's recipe for ``arch``: the names mean the same whichever schedule is shipped."""
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    assert shipped.polish is not None
    polish = shipped.polish

    def schedule(repair: int, polished: int, **repair_changes) -> UNSIRConfig:
        return replace(
            shipped,
            repair=replace(shipped.repair, epochs=repair, **repair_changes),
            polish=replace(polish, epochs=polished) if polished else None,
        )

    return {
        "r3p2": schedule(3, 2),
        "r3p1": schedule(3, 1),
        "r2p1": schedule(2, 1),
        "r2p2": schedule(2, 2),
        "r3p0": schedule(3, 0),
        "r1p1": schedule(1, 1),
        "r1p2": schedule(1, 2),
        "b64": replace(schedule(3, 2, batch_size=64), polish=replace(polish, epochs=2, batch_size=64)),
        # The deep family's repair rate is half the compact one's; these try the compact rate.
        "r2p1_lr1e-3": schedule(2, 1, lr=1e-3),
        "r3p2_lr1e-3": schedule(3, 2, lr=1e-3),
    }


def plain_method(variant: str, method_name: str, config):
    """The method a variant runs: by default just ``method_name`` with its config."""
    return make_method(method_name, config)


def main(variants_for=variants, out: str = "reports/bench/tuning-schedule-length.json", method_for=plain_method) -> int:
    """Walk the tuning grid with ``variants_for(arch, retain_per_class)``; other tuning
    experiments on the same grid call this with their own variants and ``out``, and with
    ``method_for(variant, method_name, config)`` when a variant changes more than the config."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--sets", nargs="*", help="explicit class sets, e.g. 1 1,9 (default: the tuning draw)")
    parser.add_argument("--train-epochs", type=int, help="the original's and retraining's epochs")
    parser.add_argument("--retrain-again", action="store_true", help="a second retraining, judged the same way")
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    setup = quality.tuning_setup(args, variants_for(args.arch, 50))
    device, data, chosen, eval_cfg = setup.device, setup.data, setup.variants, setup.evaluation
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=10, triples=5, part="tuning")
    train_cfg = training_for(args.arch)
    if args.train_epochs:
        train_cfg = replace(train_cfg, epochs=args.train_epochs)
    judged = ["retrain_again", *chosen] if args.retrain_again else list(chosen)
    runs = []
    for setting in quality.grid_settings(data, args.arch, args.seeds, grid, train_cfg, device):
        seed, forget, original = setting.seed, setting.forget, setting.original
        task, zero_glance, evaluation_data = setting.task, setting.zero_glance, setting.evaluation_data
        run: dict = {"seed": seed, "forget_classes": list(forget)}
        methods = [("retrain", "retrain", RetrainConfig(train=train_cfg), task)]
        if args.retrain_again:
            methods.append(("retrain_again", "retrain", RetrainConfig(train=train_cfg), task))
        methods += [(name, "noise_free", config, zero_glance) for name, config in chosen.items()]
        for name, method_name, config, task_for in methods:
            method = method_for(name, method_name, config)
            method_seed = seed + 1000 if name == "retrain_again" else seed  # another initialisation
            cpu_started = time.process_time()
            outcome = method.unlearn(
                original, task_for, device=device, generator=torch.Generator().manual_seed(method_seed)
            )
            run[name] = quality.tuning_row(
                outcome, evaluation_data, eval_cfg, device, time.process_time() - cpu_started
            )
        for name in judged:
            run[name]["pass"] = quality.passes(run[name], run["retrain"])
            run[name]["cpu_ratio"] = run[name]["cpu_s"] / run["retrain"]["cpu_s"]
        runs.append(run)
        print(
            f"seed {seed} {list(forget)} retrain mia {run['retrain']['mia']:.3f} | "
            + " | ".join(
                f"{n}: f {run[n]['forget_acc']:.3f} r {run[n]['retain_acc'] - run['retrain']['retain_acc']:+.3f} "
                f"m {run[n]['mia']:.3f} R{run[n]['rounds']} t {run[n]['cpu_ratio']:.3f} "
                f"{'ok' if all(run[n]['pass'].values()) and run[n]['verified'] is not False else 'FAIL'}"
                for n in judged
            ),
            flush=True,
        )
    print()
    for name in judged:
        rows = [r[name] for r in runs]
        gate = sum(all(r["pass"].values()) and r["verified"] is not False for r in rows)
        ratios = [r["cpu_ratio"] for r in rows]
        fails = quality.bound_failures(rows)
        print(
            f"{name:11s} gate passes {gate}/{len(rows)} fails {fails} CPU time / retrain mean "
            f"{statistics.fmean(ratios):.3f} worst {max(ratios):.3f} rounds worst {max(r['rounds'] or 0 for r in rows)}"
        )
    Path(args.out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
