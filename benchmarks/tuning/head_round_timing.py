"""The CPU time of a run that needs the head round, against a one-round run and retraining.

Per-run ratios in ``quality.py`` divide one unlearning (median of 3) by two retrainings timed
once each; on a busy machine those single timings move by 20% either way, which is enough to
decide the grid's worst case. Here the three are timed in turn, ``--repeats`` times, in one
process with one torch thread, on one original: the unlearning of ``--head-set`` (a setting
whose round 1 failed on confidence alone, so a head round follows), of ``--one-round-set``
(verified in round 1), and the retraining of ``--head-set``. Medians and their ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid and data)

from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--head-set", default="2,4,7")
    parser.add_argument("--one-round-set", default="0")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    quality.limit_threads(1)
    data, device = quality.load_dataset("digits", None), torch.device("cpu")
    grid = argparse.Namespace(
        sets=[args.head_set, args.one_round_set], singles=None, pairs=0, triples=0, part="heldout"
    )
    settings = list(quality.grid_settings(data, "small_cnn", [args.seed], grid, training_for("small_cnn"), device))
    head, one_round = settings
    shipped = make_method("unsir", unsir_config_for("small_cnn", retain_per_class=50))
    retrain = make_method("retrain", RetrainConfig(train=training_for("small_cnn")))
    jobs = {
        "head-round run": lambda: shipped.unlearn(head.original, head.zero_glance, device=device, generator=_gen(args)),
        "one-round run": lambda: shipped.unlearn(
            one_round.original, one_round.zero_glance, device=device, generator=_gen(args)
        ),
        "retraining": lambda: retrain.unlearn(head.original, head.task, device=device, generator=_gen(args)),
    }
    times: dict[str, list[float]] = {name: [] for name in jobs}
    rounds = {}
    for _ in range(args.repeats):
        for name, job in jobs.items():
            started = time.process_time()
            outcome = job()
            times[name].append(time.process_time() - started)
            rounds[name] = [("head" if "head_round" in r else "full") for r in outcome.rounds]
    retraining = statistics.median(times["retraining"])
    for name, measured in times.items():
        print(
            f"{name:15s} rounds {rounds[name]} CPU s median {statistics.median(measured):.3f} "
            f"(min {min(measured):.3f}, max {max(measured):.3f}); / retraining "
            f"{statistics.median(measured) / retraining:.3f}"
        )
    return 0


def _gen(args: argparse.Namespace) -> torch.Generator:
    return torch.Generator().manual_seed(args.seed)


if __name__ == "__main__":
    raise SystemExit(main())
