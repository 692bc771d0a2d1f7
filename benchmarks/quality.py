"""Forgetting quality on a grid nobody tuned to: every class alone, drawn pairs and triples,
several seeds, every architecture; the shipped recipe and the paper's UNSIR beside retraining
from scratch, and a second retraining judged by the same bounds (what they leave achievable).

    python benchmarks/quality.py                                   # make bench: held-out grid
    python benchmarks/quality.py --part tuning                     # the half recipes were chosen on
    python benchmarks/quality.py --dataset mnist5k --archs small_cnn --seeds 3
    python benchmarks/quality.py --archs allcnn --pairs 2 --triples 1 --seeds 3

The grid has two halves that share nothing but the single classes: *tuning* (seeds 0-2, pairs
and triples drawn with draw seed 0) is where recipes were chosen; *held-out* (seeds 3-5, pairs
and triples drawn with draw seed 1, skipping any set of the tuning draw) is what is reported.
A seed fixes the split, the original model, the retain subset and the unlearning's randomness.

A run passes when, on the test split: forget accuracy <= 1%, retain accuracy >= the retrained
model's minus 1.5 points, and |MIA - retrained MIA| <= 0.05; the gate also needs the
validation check to pass within the round budget. Time is the process's CPU time (one torch
thread and one BLAS thread, ``limit_threads``) as a ratio to retraining's (the median of
--time-repeats timings of the unlearning over the mean of the two retrainings), with wall time
beside it. Prints one line per run and a summary per data set and architecture; writes every
run, the pass share and the worst case of each measure to reports/bench/quality.json.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from threadpoolctl import threadpool_limits

from unsir.configs import OptimConfig, SplitFractions
from unsir.data import ClassificationData, load_dataset
from unsir.measures import EvaluationConfig, EvaluationData, evaluate_model
from unsir.methods import make_method
from unsir.methods.base import UnlearningTask
from unsir.methods.baselines import RetrainConfig
from unsir.models import ARCHITECTURES, ModelSpec, build_model
from unsir.problem import build_task, prepare_splits
from unsir.recipes import training_for, unsir_config_for
from unsir.splits import draw_retain_subset, make_split_manifest
from unsir.training import fit, seed_everything


def limit_threads(threads: int) -> None:
    """``threads`` for torch *and* for the BLAS under NumPy and SciPy.

    The MIA's logistic regression runs on OpenBLAS, whose worker threads keep spinning for a
    while after a call: with only torch limited, the unlearning timed right after an evaluation
    was charged ~0.1 s of their CPU time (benchmarks/cpu_overheads.py), which made single
    timings of a digits unlearning read ~40% slow.
    """
    torch.set_num_threads(threads)
    threadpool_limits(threads)


PARTS = {"tuning": {"seeds": [0, 1, 2], "draw_seed": 0}, "heldout": {"seeds": [3, 4, 5], "draw_seed": 1}}
MAX_FORGET_ACC = 0.01
MAX_RETAIN_GAP = 0.015
MAX_MIA_GAP = 0.05


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="digits", help="digits, mnist5k, or a torchvision name with --root")
    parser.add_argument("--root", default=None)
    parser.add_argument("--image-size", type=int, default=None, help="resize images to this square size")
    parser.add_argument("--archs", nargs="+", default=["small_cnn"], choices=sorted(ARCHITECTURES))
    parser.add_argument("--part", choices=sorted(PARTS), default="heldout")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the part's seeds")
    parser.add_argument("--singles", type=int, nargs="*", default=None, help="single classes (default: all)")
    parser.add_argument(
        "--sets", nargs="+", default=None, help="explicit class sets, e.g. 0,7 0,2,3 (replaces the grid)"
    )
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--triples", type=int, default=5)
    parser.add_argument("--retain-per-class", type=int, default=50)
    parser.add_argument("--train-epochs", type=int, default=None, help="default: the architecture family's")
    parser.add_argument("--impair-lr", type=float, default=None)
    parser.add_argument("--repair-lr", type=float, default=None)
    parser.add_argument("--repair-epochs", type=int, default=None)
    parser.add_argument("--max-rounds", type=int, default=None)
    parser.add_argument("--noise-copies", type=int, default=None, help="copies of every noise sample in round 1")
    parser.add_argument("--no-polish", action="store_true")
    parser.add_argument("--polish-epochs", type=int, default=None)
    parser.add_argument("--polish-lr", type=float, default=None)
    parser.add_argument("--max-forget-confidence", type=float, default=None)
    parser.add_argument("--recovery-epochs", type=int, default=None, help="verification.max_recovery_epochs")
    parser.add_argument(
        "--also-without-recovery", action="store_true", help="also run the shipped recipe with no recovery epochs"
    )
    parser.add_argument("--max-retain-drop", type=float, default=None, help="verification.max_retain_drop")
    parser.add_argument(
        "--frozen-lower-layers", type=float, default=None, help="share of the weight layers left as the original's"
    )
    parser.add_argument("--no-noise", action="store_true", help="skip the paper's method with its noise")
    parser.add_argument("--relearn", action="store_true", help="also measure relearn time (slower)")
    parser.add_argument(
        "--probe", action="store_true", help="also measure shallow forgetting: a linear probe on the features"
    )
    parser.add_argument(
        "--time-repeats", type=int, default=3, help="time each unlearning this many times; the median counts"
    )
    parser.add_argument(
        "--references-from",
        default=None,
        help="an earlier report of the same grid: take its two retrainings instead of training them again "
        "(the originals must measure the same; distances to the retrained model are then not measured)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps a busy machine usable)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="reports/bench/quality.json")
    return parser.parse_args(argv)


@dataclass(frozen=True)
class GridRun:
    """One setting of the grid: an original trained for ``seed``, one forget set."""

    seed: int
    forget: tuple[int, ...]
    original: torch.nn.Module
    original_train_s: float
    task: UnlearningTask  # with the forget-class training samples (for retraining)
    zero_glance: UnlearningTask  # without them: UNSIR never gets a forget-class training sample
    evaluation_data: EvaluationData


def grid_settings(
    data: ClassificationData,
    arch: str,
    seeds: list[int],
    grid: argparse.Namespace,
    train_cfg: OptimConfig,
    device: torch.device,
    retain_per_class: int = 50,
) -> Iterator[GridRun]:
    """Train one original per seed, then yield every forget set of ``grid`` on it (the
    benchmark and the tuning experiments walk the grid the same way)."""
    for seed in seeds:
        manifest = make_split_manifest(data, seed=seed, fractions=SplitFractions())
        splits = prepare_splits(data, manifest)
        generator = seed_everything(seed)
        original = build_model(ModelSpec(arch, data.num_classes, data.input_shape[0], {}))
        started = time.perf_counter()
        fit(original, splits.train_images, splits.train_labels, train_cfg, device=device, generator=generator)
        train_s = time.perf_counter() - started
        for forget in class_sets(data.num_classes, grid):
            rows = draw_retain_subset(
                manifest, forget_classes=forget, per_class=retain_per_class, seed=seed, num_classes=data.num_classes
            )
            task = build_task(splits, data, rows, forget, with_baseline_data=True)
            zero_glance = replace(task, forget_train_images=None, forget_train_labels=None)
            yield GridRun(seed, forget, original, train_s, task, zero_glance, splits.evaluation_data(forget))


@dataclass(frozen=True)
class TuningSetup:
    """What a tuning experiment needs before it walks the grid (``tuning_setup``)."""

    device: torch.device
    data: ClassificationData
    variants: dict
    evaluation: EvaluationConfig


def tuning_setup(args: argparse.Namespace, variants: dict) -> TuningSetup:
    """One torch thread on the CPU (CPU-time ratios), ``args.dataset`` loaded, and the variants
    narrowed to ``args.only``: the prologue every tuning experiment shares."""
    limit_threads(1)
    if args.only:
        variants = {name: variant for name, variant in variants.items() if name in args.only}
    evaluation = EvaluationConfig(probe=False, relearn=False)
    return TuningSetup(torch.device("cpu"), load_dataset(args.dataset, None), variants, evaluation)


def tuning_row(outcome, evaluation_data: EvaluationData, evaluation: EvaluationConfig, device, cpu_s: float) -> dict:
    """What a tuning experiment keeps of one run: the bounds' measures, its CPU time and rounds."""
    measured = evaluate_model(outcome.model, evaluation_data, device=device, config=evaluation).metrics
    return {
        "forget_acc": measured["forget_acc"],
        "retain_acc": measured["retain_acc"],
        "mia": measured["mia"],
        "cpu_s": cpu_s,
        "rounds": len(outcome.rounds) or None,
        "verified": outcome.verified,
    }


def class_sets(num_classes: int, args: argparse.Namespace) -> list[tuple[int, ...]]:
    """All single classes, then pairs and triples drawn with the part's draw seed. The
    held-out draw skips every set the tuning draw produced."""
    if args.sets:
        return [tuple(int(c) for c in s.split(",")) for s in args.sets]
    singles = [(c,) for c in (args.singles if args.singles is not None else range(num_classes))]

    def draw(size: int, count: int, seed: int) -> list[tuple[int, ...]]:
        pool = list(itertools.combinations(range(num_classes), size))
        return random.Random(seed).sample(pool, min(count, len(pool)))

    tuning = set(draw(2, args.pairs, 0) + draw(3, args.triples, 0))
    seed = PARTS[args.part]["draw_seed"]
    chosen = []
    for size, count in ((2, args.pairs), (3, args.triples)):
        pool = [s for s in draw(size, 10 * count + 20, seed) if args.part == "tuning" or s not in tuning]
        chosen += sorted(pool[:count])
    return singles + chosen


def passes(unsir: dict[str, float], retrain: dict[str, float]) -> dict[str, bool]:
    return {
        "forget": unsir["forget_acc"] <= MAX_FORGET_ACC,
        "retain": unsir["retain_acc"] >= retrain["retain_acc"] - MAX_RETAIN_GAP,
        "mia": abs(unsir["mia"] - retrain["mia"]) <= MAX_MIA_GAP,
    }


def configured(config, args: argparse.Namespace):
    """A recipe with the command line's overrides (for experiments; the defaults are the recipe)."""
    if args.impair_lr:
        config = replace(config, impair=replace(config.impair, lr=args.impair_lr))
    if args.repair_lr:
        config = replace(config, repair=replace(config.repair, lr=args.repair_lr))
    if args.repair_epochs is not None:
        config = replace(config, repair=replace(config.repair, epochs=args.repair_epochs))
    if args.noise_copies is not None and config.noise_copies:
        config = replace(config, noise_copies=args.noise_copies)
    if args.no_polish:
        config = replace(config, polish=None)
    if config.polish is not None and (args.polish_epochs is not None or args.polish_lr is not None):
        config = replace(
            config,
            polish=replace(
                config.polish,
                epochs=args.polish_epochs if args.polish_epochs is not None else config.polish.epochs,
                lr=args.polish_lr or config.polish.lr,
            ),
        )
    if args.max_forget_confidence is not None:
        config = replace(
            config, verification=replace(config.verification, max_forget_confidence=args.max_forget_confidence)
        )
    if args.max_rounds is not None:
        config = replace(config, verification=replace(config.verification, max_rounds=args.max_rounds))
    if args.recovery_epochs is not None:
        config = replace(config, verification=replace(config.verification, max_recovery_epochs=args.recovery_epochs))
    if args.max_retain_drop is not None:
        config = replace(config, verification=replace(config.verification, max_retain_drop=args.max_retain_drop))
    if args.frozen_lower_layers is not None:
        config = replace(config, frozen_lower_layers=args.frozen_lower_layers)
    return config


def run_arch(data: ClassificationData, arch: str, args: argparse.Namespace, device: torch.device) -> dict:
    train_cfg = training_for(arch)
    if args.train_epochs is not None:
        train_cfg = replace(train_cfg, epochs=args.train_epochs)
    # Every run measures, on the same original and retain subset:
    # - "retrain": the reference every bound is measured against;
    # - "retrain_again": a second retraining from another initialisation, judged by the same
    #   bounds: how often retraining itself passes them (what the bounds leave achievable);
    # - "shipped": the recipe the pipeline runs (unsir/recipes.py: verified rounds without the
    #   noise, the forget classes' head rows re-drawn);
    # - "unsir_noise": the paper's method with its error-maximising noise, verified rounds.
    methods = {
        "retrain": ("retrain", RetrainConfig(train=train_cfg)),
        "retrain_again": ("retrain", RetrainConfig(train=train_cfg)),
        "shipped": ("unsir", configured(unsir_config_for(arch, retain_per_class=args.retain_per_class), args)),
    }
    if args.also_without_recovery:
        shipped = methods["shipped"][1]
        methods["shipped_without_recovery"] = (
            "unsir",
            replace(shipped, verification=replace(shipped.verification, max_recovery_epochs=0)),
        )
    if not args.no_noise:
        methods["unsir_noise"] = (
            "unsir",
            configured(unsir_config_for(arch, retain_per_class=args.retain_per_class, with_noise=True), args),
        )
    eval_cfg = EvaluationConfig(probe=args.probe, relearn=args.relearn)
    seeds = args.seeds if args.seeds is not None else PARTS[args.part]["seeds"]
    runs = []
    references = json.loads(Path(args.references_from).read_text()) if args.references_from else None
    for setting in grid_settings(data, arch, seeds, args, train_cfg, device, args.retain_per_class):
        seed, forget, original = setting.seed, setting.forget, setting.original
        task, zero_glance, evaluation_data = setting.task, setting.zero_glance, setting.evaluation_data
        original_eval = evaluate_model(
            original, evaluation_data, device=device, config=replace(eval_cfg, relearn=False)
        )
        run: dict = {
            "seed": seed,
            "forget_classes": list(forget),
            "original": original_eval.metrics,
            "original_train_s": setting.original_train_s,
        }
        reference = None
        stored = stored_references(references, args.references_from, arch, run)
        run.update(stored)
        for name, (method_name, config) in methods.items():
            if name in stored:
                continue
            method = make_method(method_name, config)
            method_seed = seed + 1000 if name == "retrain_again" else seed
            # CPU time of this process (one thread, limit_threads): unlike wall time, it does not
            # grow when other work shares the machine, so the ratio to retraining is stable.
            # Unlearning takes under a second here, so one timing of it is noisy: it runs
            # --time-repeats times (the same seed gives the same model) and the median counts.
            repeats = 1 if method_name == "retrain" else args.time_repeats
            cpu_times = []
            for _ in range(repeats):
                cpu_started = time.process_time()
                outcome = method.unlearn(
                    original,
                    task if method_name == "retrain" else zero_glance,
                    device=device,
                    generator=torch.Generator().manual_seed(method_seed),
                )
                cpu_times.append(time.process_time() - cpu_started)
            cpu_s = statistics.median(cpu_times)
            if name == "retrain":
                reference = outcome.model
            measured = evaluate_model(
                outcome.model,
                evaluation_data,
                device=device,
                config=eval_cfg,
                original=original,
                reference=reference if name != "retrain" else None,
                original_forget_acc=original_eval.metrics["forget_acc"],
                generator=torch.Generator().manual_seed(seed),
            ).metrics
            run[name] = {
                **measured,
                "wall_s": outcome.wall_s,
                "cpu_s": cpu_s,
                "rounds": len(outcome.rounds) or None,
                "verified": outcome.verified,
                "round_log": outcome.rounds,
            }
        # Retraining's time: the mean of the two retrainings, the same work timed twice.
        retrain_cpu_s = statistics.fmean(run[name]["cpu_s"] for name in ("retrain", "retrain_again"))
        for name in methods:
            if name != "retrain":
                run[name]["pass"] = passes(run[name], run["retrain"])
                run[name]["cpu_ratio"] = run[name]["cpu_s"] / retrain_cpu_s
                run[name]["cpu_ratio_to_first_retrain"] = run[name]["cpu_s"] / run["retrain"]["cpu_s"]
                run[name]["wall_ratio"] = run[name]["wall_s"] / run["retrain"]["wall_s"]
        runs.append(run)
        print(
            f"{data.name}/{arch} seed {seed} forget {list(forget)}: retrain mia {run['retrain']['mia']:.3f} "
            f"retain {run['retrain']['retain_acc']:.3f} | "
            + " | ".join(
                f"{name} forget {run[name]['forget_acc']:.3f} retain "
                f"{run[name]['retain_acc'] - run['retrain']['retain_acc']:+.3f} mia {run[name]['mia']:.3f} "
                f"rounds {run[name]['rounds']} cpu {run[name]['cpu_ratio']:.3f} "
                + ("PASS" if gate_passes(run[name]) else f"FAIL {failed(run[name])}")
                for name in methods
                if name != "retrain"
            ),
            flush=True,
        )
    return {
        "arch": arch,
        "train": asdict(train_cfg),
        "recipes": {name: asdict(config) for name, (_, config) in methods.items() if name != "retrain"},
        "seeds": seeds,
        "summary": summarize(runs, [name for name in methods if name != "retrain"]),
        "runs": runs,
    }


def stored_references(report: dict | None, path: str, arch: str, run: dict) -> dict:
    """``run``'s two retrainings from ``report`` (read from ``path``), after checking that the
    original measures exactly as it did there (training is deterministic on one CPU thread)."""
    if report is None:
        return {}
    for stored_arch in report["architectures"]:
        if stored_arch["arch"] != arch:
            continue
        for stored in stored_arch["runs"]:
            if (stored["seed"], stored["forget_classes"]) != (run["seed"], run["forget_classes"]):
                continue
            # Measures added since the stored run are not in it; every measure both have must agree.
            differing = {
                key: (value, run["original"][key])
                for key, value in stored["original"].items()
                if key in run["original"] and run["original"][key] != value
            }
            if differing:
                raise SystemExit(
                    f"{path}: the original of {arch} seed {run['seed']} measures differently here "
                    f"(stored, now: {differing}): retrain instead"
                )
            return {name: stored[name] for name in ("retrain", "retrain_again")}
    raise SystemExit(f"{path} has no run of {arch} seed {run['seed']} forget {run['forget_classes']}")


def bound_failures(rows: list[dict]) -> dict[str, int]:
    """How many of ``rows`` (one method's runs) miss each bound."""
    return {bound: sum(not row["pass"][bound] for row in rows) for bound in rows[0]["pass"]}


def failed(row: dict) -> list[str]:
    return [k for k, v in row["pass"].items() if not v] + (["rounds ran out"] if row["verified"] is False else [])


def gate_passes(row: dict) -> bool:
    """The three bounds, and (as the pipeline's gate requires) a validation check that passed."""
    return all(row["pass"].values()) and row["verified"] is not False


def summarize(runs: list[dict], names: list[str]) -> dict:
    """Per method: the share of runs within the three bounds, the share the gate would promote
    (bounds and the validation check), single classes apart, and the worst case of each measure
    (highest forget accuracy, lowest retain gap, largest MIA gap, slowest time ratio)."""

    def mean_worst(values: list[float], worst) -> dict:
        return {"mean": statistics.fmean(values), "worst": worst(values)}

    summary: dict = {"runs": len(runs)}
    for name in names:
        rows = [r[name] for r in runs]
        singles = [r[name] for r in runs if len(r["forget_classes"]) == 1]
        summary[name] = {
            "pass_share": sum(all(r["pass"].values()) for r in rows) / len(rows),
            "gate_pass_share": sum(gate_passes(r) for r in rows) / len(rows),
            "single_class_gate_pass_share": sum(gate_passes(r) for r in singles) / len(singles) if singles else None,
            "failures_by_criterion": bound_failures(rows),
            "forget_acc": mean_worst([r["forget_acc"] for r in rows], max),
            "retain_gap_to_retrain": mean_worst(
                [r[name]["retain_acc"] - r["retrain"]["retain_acc"] for r in runs], min
            ),
            "mia_gap_to_retrain": mean_worst([abs(r[name]["mia"] - r["retrain"]["mia"]) for r in runs], max),
            # The model against itself: forget-train samples against forget-class validation
            # samples nobody trained on (the pipeline gate's baseline without a reference).
            "mia_gap_to_forget_holdout": mean_worst([abs(r["mia"] - r["mia_forget_holdout"]) for r in rows], max),
            "cpu_time_ratio_to_retrain": mean_worst([r["cpu_ratio"] for r in rows], max),
            "wall_time_ratio_to_retrain": mean_worst([r["wall_ratio"] for r in rows], max),
            "rounds": mean_worst([r["rounds"] or 0 for r in rows], max),
            "rounds_ran_out": sum(r["verified"] is False for r in rows),
            "failures": [
                {"seed": r["seed"], "forget_classes": r["forget_classes"], "failed": failed(r[name])}
                for r in runs
                if not gate_passes(r[name])
            ],
        }
    summary["retrain_mia"] = mean_worst([r["retrain"]["mia"] for r in runs], max)
    summary["retrain_mia_gap_to_forget_holdout"] = mean_worst(
        [abs(r["retrain"]["mia"] - r["retrain"]["mia_forget_holdout"]) for r in runs], max
    )
    return summary


def print_summary(dataset: str, result: dict) -> None:
    s = result["summary"]
    print(
        f"\n== {dataset} / {result['arch']}: {s['runs']} runs (retrained MIA mean {s['retrain_mia']['mean']:.3f}, "
        f"worst {s['retrain_mia']['worst']:.3f}; its gap to its own forget-class hold-out mean "
        f"{s['retrain_mia_gap_to_forget_holdout']['mean']:.3f}, "
        f"worst {s['retrain_mia_gap_to_forget_holdout']['worst']:.3f})"
    )
    for name, m in s.items():
        if not isinstance(m, dict) or "pass_share" not in m:
            continue
        singles = m["single_class_gate_pass_share"]
        print(
            f"   {name}: within bounds {m['pass_share']:.1%}, gate passes {m['gate_pass_share']:.1%}"
            + (f" (single classes {singles:.1%})" if singles is not None else "")
            + f"; failures {m['failures_by_criterion']}, rounds ran out {m['rounds_ran_out']}"
        )
        print(
            f"      forget acc mean {m['forget_acc']['mean']:.4f} worst {m['forget_acc']['worst']:.4f}; retain gap "
            f"mean {100 * m['retain_gap_to_retrain']['mean']:+.2f} worst "
            f"{100 * m['retain_gap_to_retrain']['worst']:+.2f} "
            f"pts; MIA gap mean {m['mia_gap_to_retrain']['mean']:.3f} worst {m['mia_gap_to_retrain']['worst']:.3f} "
            f"(to its own forget-class hold-out: mean {m['mia_gap_to_forget_holdout']['mean']:.3f} "
            f"worst {m['mia_gap_to_forget_holdout']['worst']:.3f}); "
            f"CPU time / retrain mean {m['cpu_time_ratio_to_retrain']['mean']:.3f} worst "
            f"{m['cpu_time_ratio_to_retrain']['worst']:.3f} (wall worst "
            f"{m['wall_time_ratio_to_retrain']['worst']:.3f}); "
            f"rounds mean {m['rounds']['mean']:.2f} worst {m['rounds']['worst']}"
        )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    limit_threads(args.threads)
    device = torch.device(args.device)
    data = load_dataset(args.dataset, args.root, image_size=args.image_size)  # bilinear, clamped to [0, 1]
    report = {
        "dataset": data.name,
        "image_size": data.images.shape[-1],
        "part": args.part,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "criteria": {"max_forget_acc": MAX_FORGET_ACC, "max_retain_gap": MAX_RETAIN_GAP, "max_mia_gap": MAX_MIA_GAP},
        "reads_forget_train": {"shipped": False, "unsir_noise": False, "retrain": True, "retrain_again": True},
        "verification_split": "val",
        "architectures": [],
    }
    if args.references_from:
        report["references_from"] = args.references_from
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for arch in args.archs:
        result = run_arch(data, arch, args, device)
        report["architectures"].append(result)
        print_summary(data.name, result)
        out.write_text(json.dumps(report, indent=2) + "\n")  # partial results survive an interrupted run
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
