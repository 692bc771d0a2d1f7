"""Forgetting quality, side by side: original, retrain, UNSIR, the noise-free control and every
baseline, for single- and two-class forgetting, over several seeds, in one process.

    python benchmarks/quality.py                      # digits, defaults (make bench)
    python benchmarks/quality.py --dataset cifar10 --root ~/data --forget 0 0,2

Prints a table per setting and writes reports/bench/quality.json: a list of settings, each
with its forget_classes and, under methods, every measure as {mean, std} over seeds.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from unsir.data import load_dataset, resolve_classes
from unsir.measures import EvaluationConfig, evaluate_model
from unsir.methods import METHODS, make_method
from unsir.methods.baselines import RetrainConfig
from unsir.methods.unsir import UNSIRConfig
from unsir.models import ModelSpec, build_model
from unsir.problem import build_task, prepare_splits
from unsir.recipes import recipe_for
from unsir.splits import draw_retain_subset, make_split_manifest
from unsir.training import fit, seed_everything

# Measures reported in the printed table (the JSON has all of them).
TABLE_COLUMNS = ("forget_acc", "retain_acc", "mia", "js_to_retrain", "probe_forget_acc", "relearn_steps", "anamnesis", "wall_s")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--root", default=None, help="local root of a torchvision dataset or image folder")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--forget", nargs="+", default=["3", "3,8"], help="settings: comma-separated classes each")
    parser.add_argument("--methods", nargs="+", default=sorted(METHODS), choices=sorted(METHODS))
    parser.add_argument("--retain-per-class", type=int, default=None)
    parser.add_argument("--train-epochs", type=int, default=None)
    parser.add_argument("--impair-lr", type=float, default=None)
    parser.add_argument("--repair-lr", type=float, default=None)
    parser.add_argument("--repair-epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None, help="impair and repair batch size")
    parser.add_argument("--noise-batch", type=int, default=None)
    parser.add_argument("--noise-copies", type=int, default=None)
    parser.add_argument("--noise-steps", type=int, default=None)
    parser.add_argument("--noise-lr", type=float, default=None)
    parser.add_argument("--l2-weight", type=float, default=None)
    parser.add_argument("--no-probe", action="store_true", help="skip the linear-probe measure")
    parser.add_argument("--no-relearn", action="store_true", help="skip relearn time")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="reports/bench/quality.json")
    return parser.parse_args(argv)


def unsir_config_from(args: argparse.Namespace, base: UNSIRConfig) -> UNSIRConfig:
    """The recipe's UNSIR config with the command line's overrides applied."""
    noise = base.noise
    noise = replace(
        noise,
        **{k: v for k, v in {"batch_size": args.noise_batch, "steps": args.noise_steps, "lr": args.noise_lr, "l2_weight": args.l2_weight}.items() if v is not None},
    )
    impair, repair = base.impair, base.repair
    if args.batch_size:
        impair, repair = replace(impair, batch_size=args.batch_size), replace(repair, batch_size=args.batch_size)
    if args.impair_lr:
        impair = replace(impair, lr=args.impair_lr)
    if args.repair_lr:
        repair = replace(repair, lr=args.repair_lr)
    if args.repair_epochs is not None:
        repair = replace(repair, epochs=args.repair_epochs)
    copies = base.noise_copies if args.noise_copies is None else args.noise_copies
    return UNSIRConfig(noise=noise, noise_copies=copies, impair=impair, repair=repair)


def summarize(values: list[float]) -> dict[str, float]:
    clean = [v for v in values if not math.isnan(v)]
    if not clean:
        return {"mean": float("nan"), "std": float("nan")}
    return {"mean": statistics.fmean(clean), "std": statistics.pstdev(clean) if len(clean) > 1 else 0.0}


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    torch.set_num_threads(torch.get_num_threads())
    data = load_dataset(args.dataset, args.root)
    recipe = recipe_for(args.dataset)
    train_cfg = recipe.train if args.train_epochs is None else replace(recipe.train, epochs=args.train_epochs)
    per_class = args.retain_per_class or recipe.retain_per_class
    unsir_cfg = unsir_config_from(args, recipe.unsir)
    method_configs = {"unsir": unsir_cfg, "noise_free": unsir_cfg, "retrain": RetrainConfig(train=train_cfg)}
    eval_cfg = EvaluationConfig(probe=not args.no_probe, relearn=not args.no_relearn)
    settings = [resolve_classes(s.split(","), data.class_names) for s in args.forget]

    # raw[setting][method][measure] -> list over seeds
    raw: dict[tuple[int, ...], dict[str, dict[str, list[float]]]] = {s: {} for s in settings}
    for seed in args.seeds:
        manifest = make_split_manifest(data, seed=seed)
        splits = prepare_splits(data, manifest)
        spec = ModelSpec(recipe.arch, data.num_classes, data.input_shape[0], recipe.arch_kwargs)
        generator = seed_everything(seed)
        original = build_model(spec)
        started = time.perf_counter()
        fit(original, splits.train_images, splits.train_labels, train_cfg, device=device, generator=generator,
            progress=True, description=f"seed {seed}: train original")
        original_train_s = time.perf_counter() - started
        random_model = build_model(spec).to(device).eval()

        for forget in settings:
            rows = draw_retain_subset(manifest, forget_classes=forget, per_class=per_class, seed=seed, num_classes=data.num_classes)
            task = build_task(splits, data, rows, forget, with_baseline_data=True)
            evaluation_data = splits.evaluation_data(forget)
            base_eval = evaluate_model(original, evaluation_data, device=device, config=replace(eval_cfg, relearn=False))
            original_forget = base_eval.metrics["forget_acc"]
            results = {"original": (original, {"train_s": original_train_s})}
            # Retrain first: it is the reference every other method is measured against.
            for name in ["retrain"] + [m for m in args.methods if m != "retrain"]:
                method = make_method(name, method_configs.get(name))
                outcome = method.unlearn(original, task, device=device, generator=torch.Generator().manual_seed(seed))
                results[name] = (outcome.model, outcome.timings_s)
                print(f"seed {seed} forget {list(forget)}: {name} done in {outcome.wall_s:.2f}s", file=sys.stderr)
            reference = results["retrain"][0]
            for name, (model, timings) in results.items():
                evaluation = evaluate_model(
                    model, evaluation_data, device=device, config=eval_cfg, original=original, reference=reference,
                    random_model=random_model, original_forget_acc=original_forget,
                    generator=torch.Generator().manual_seed(seed),
                )
                measures = dict(evaluation.metrics)
                measures.update(timings)
                measures["wall_s"] = sum(timings.values())
                for measure, value in measures.items():
                    raw[forget].setdefault(name, {}).setdefault(measure, []).append(float(value))
            if not args.no_relearn:
                ref_steps = raw[forget]["retrain"]["relearn_steps"][-1]
                for name in results:
                    steps = raw[forget][name]["relearn_steps"][-1]
                    raw[forget][name].setdefault("anamnesis", []).append(steps / ref_steps if ref_steps else float("nan"))

    return {
        "dataset": args.dataset,
        "arch": recipe.arch,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "seeds": args.seeds,
        "retain_per_class": per_class,
        "train": vars(train_cfg),
        "unsir": {"noise": vars(unsir_cfg.noise), "noise_copies": unsir_cfg.noise_copies,
                  "impair": vars(unsir_cfg.impair), "repair": vars(unsir_cfg.repair)},
        "settings": [
            {
                "forget_classes": list(forget),
                "methods": {name: {m: summarize(v) for m, v in measures.items()} for name, measures in raw[forget].items()},
            }
            for forget in settings
        ],
    }


def print_report(report: dict) -> None:
    for setting in report["settings"]:
        print(f"\n{report['dataset']} / {report['arch']}: forget classes {setting['forget_classes']} "
              f"(mean ± std over seeds {report['seeds']}, test split)")
        header = f"{'method':<14}" + "".join(f"{c:>18}" for c in TABLE_COLUMNS)
        print(header)
        print("-" * len(header))
        for name, measures in setting["methods"].items():
            cells = []
            for column in TABLE_COLUMNS:
                value = measures.get(column)
                cells.append(f"{value['mean']:>10.3f} ±{value['std']:>6.3f}" if value else f"{'-':>18}")
            print(f"{name:<14}" + "".join(cells))
        methods = setting["methods"]
        if "unsir" in methods and "retrain" in methods:
            u, r = methods["unsir"], methods["retrain"]
            print(f"UNSIR vs retrain: retain-acc gap {100 * (r['retain_acc']['mean'] - u['retain_acc']['mean']):+.2f} pts, "
                  f"MIA gap {u['mia']['mean'] - r['mia']['mean']:+.3f}, time ratio {u['wall_s']['mean'] / r['wall_s']['mean']:.3f}")
        if "unsir" in methods and "noise_free" in methods:
            u, n = methods["unsir"], methods["noise_free"]
            print(f"noise's contribution: forget acc {n['forget_acc']['mean']:.3f} without noise -> {u['forget_acc']['mean']:.3f} with")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    report = run(args)
    print_report(report)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
