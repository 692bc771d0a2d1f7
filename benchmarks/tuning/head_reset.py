"""Tuning-half experiment: does re-drawing the forget classes' head rows make the verified
rounds forget in fewer rounds, and how far does an independent retraining itself pass the
benchmark's bounds (the noise floor of the |MIA - retrained MIA| criterion)?

Runs on the tuning half only (quality.py's --part tuning class sets); prints one line per run
and variant, writes every run to the JSON named by --out.
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

from unsir.measures import evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    noisy = unsir_config_for(arch, retain_per_class=retain_per_class, with_noise=True)
    short = replace(shipped, repair=replace(shipped.repair, epochs=2))
    return {
        "shipped": ("noise_free", shipped),
        "reset": ("noise_free", replace(shipped, reset_forget_rows=True)),
        "reset_noise": ("unsir", replace(noisy, reset_forget_rows=True)),
        "reset_short": ("noise_free", replace(short, reset_forget_rows=True)),
        "reset_nopolish": ("noise_free", replace(shipped, reset_forget_rows=True, polish=None)),
        "reset_impair3": ("noise_free", replace(shipped, reset_forget_rows=True,
                                                 impair=replace(shipped.impair, lr=3 * shipped.impair.lr))),
        "reset_impair2ep": ("noise_free", replace(shipped, reset_forget_rows=True,
                                                   impair=replace(shipped.impair, epochs=2))),
        "reset_repair3": ("noise_free", replace(shipped, reset_forget_rows=True,
                                                 repair=replace(shipped.repair, lr=3 * shipped.repair.lr))),
        "reset_lean": ("noise_free", replace(shipped, reset_forget_rows=True,
                                              repair=replace(shipped.repair, epochs=2),
                                              polish=replace(shipped.polish, epochs=1))),
    }


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--triples", type=int, default=5)
    parser.add_argument("--train-epochs", type=int)
    parser.add_argument("--only", nargs="*")
    parser.add_argument("--sets", nargs="*", help="explicit class sets, e.g. 1 1,9")
    parser.add_argument("--out", default="reports/bench/tuning-head-reset.json")
    args = parser.parse_args()
    setup = quality.tuning_setup(args, variants(args.arch, 50))
    device, data, chosen, eval_cfg = setup.device, setup.data, setup.variants, setup.evaluation
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=args.pairs, triples=args.triples, part="tuning")
    train_cfg = training_for(args.arch)
    if args.train_epochs:
        train_cfg = replace(train_cfg, epochs=args.train_epochs)
    runs = []
    for setting in quality.grid_settings(data, args.arch, args.seeds, grid, train_cfg, device):
        seed, forget, original = setting.seed, setting.forget, setting.original
        task, zero_glance, evaluation_data = setting.task, setting.zero_glance, setting.evaluation_data
        run: dict = {"seed": seed, "forget_classes": list(forget)}
        for name, (method_name, config), task_for in (
            [("retrain", ("retrain", RetrainConfig(train=train_cfg)), task),
             ("retrain_again", ("retrain", RetrainConfig(train=train_cfg)), task)]
            + [(k, v, zero_glance) for k, v in chosen.items()]
        ):
            method = make_method(method_name, config)
            method_seed = seed + 1000 if name == "retrain_again" else seed
            started = time.perf_counter()
            outcome = method.unlearn(original, task_for, device=device,
                                     generator=torch.Generator().manual_seed(method_seed))
            wall = time.perf_counter() - started
            measured = evaluate_model(outcome.model, evaluation_data, device=device, config=eval_cfg).metrics
            run[name] = {"forget_acc": measured["forget_acc"], "retain_acc": measured["retain_acc"],
                         "mia": measured["mia"], "wall_s": wall, "rounds": len(outcome.rounds) or None,
                         "verified": outcome.verified}
        for name in ["retrain_again", *chosen]:
            run[name]["pass"] = quality.passes(run[name], run["retrain"])
            run[name]["time_ratio"] = run[name]["wall_s"] / run["retrain"]["wall_s"]
        runs.append(run)
        print(f"seed {seed} {list(forget)} retrain mia {run['retrain']['mia']:.3f} | " + " | ".join(
            f"{n}: f {run[n]['forget_acc']:.3f} r {run[n]['retain_acc'] - run['retrain']['retain_acc']:+.3f} "
            f"m {run[n]['mia']:.3f} R{run[n]['rounds']} t {run[n]['time_ratio']:.2f} "
            f"{'ok' if all(run[n]['pass'].values()) and run[n]['verified'] is not False else 'FAIL'}"
            for n in ["retrain_again", *chosen]), flush=True)
    print()
    for name in ["retrain_again", *chosen]:
        rows = [r[name] for r in runs]
        three = sum(all(r["pass"].values()) for r in rows)
        gate = sum(all(r["pass"].values()) and r["verified"] is not False for r in rows)
        ratios = [r["time_ratio"] for r in rows]
        fails = quality.bound_failures(rows)
        print(f"{name:15s} pass {three}/{len(rows)} (+verified {gate}) fails {fails} time mean "
              f"{statistics.fmean(ratios):.3f} worst {max(ratios):.3f} rounds mean "
              f"{statistics.fmean(r['rounds'] or 0 for r in rows):.2f}")
    Path(args.out).write_text(json.dumps(runs, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
