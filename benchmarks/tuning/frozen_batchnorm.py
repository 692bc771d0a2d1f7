"""Tuning-half experiment: do deep BatchNorm networks keep their retain accuracy when impair,
repair and polish leave BatchNorm's running statistics as the original learned them?

MobileNetV2 loses 5-9 retain points with every schedule tried, more than its second retraining.
Its ~50 BatchNorm layers re-estimate their running statistics from D_r_sub (450 samples) while
the high-rate impair shakes the weights. This variant keeps every BatchNorm layer in eval mode
during the three phases (the affine weights still train), so the statistics stay the
original's, estimated on the whole training set.

Compares, on the same originals and retain subsets, the shipped recipe with that variant by
forget and retain accuracy on the test split against the original (no retraining: the
comparison is between the two variants). Tuning half only (seeds 0-1 by default).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid, data and pass criteria)

import unsir.training as training  # noqa: E402
from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


@contextmanager
def batchnorm_frozen():
    """Every ``fit`` inside keeps BatchNorm layers in eval mode (running statistics untouched)."""
    original = training.train_one_epoch

    def train_one_epoch(model, *args, **kwargs):
        def freeze(module: nn.Module) -> None:
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()

        model.train()
        model.apply(freeze)
        model.train = lambda mode=True: model  # the loop's own model.train() must not undo it
        try:
            return original(model, *args, **kwargs)
        finally:
            del model.train  # the class's method again

    training.train_one_epoch = train_one_epoch
    try:
        yield
    finally:
        training.train_one_epoch = original


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--archs", nargs="+", default=["mobilenet_v2"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sets", nargs="*", default=["1", "3", "6", "8", "1,9", "3,7,8"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    device = torch.device("cpu")
    data = quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=0, triples=0, part="tuning")
    evaluation = EvaluationConfig(probe=False, relearn=False)
    for arch in args.archs:
        rows: dict[str, list[tuple[float, float]]] = {"shipped": [], "frozen_bn": []}
        config = unsir_config_for(arch, retain_per_class=50)
        for setting in quality.grid_settings(data, arch, args.seeds, grid, training_for(arch), device):
            original = evaluate_model(setting.original, setting.evaluation_data, device=device, config=evaluation)
            before = original.metrics["retain_acc"]
            line = f"{arch} seed {setting.seed} {list(setting.forget)} original retain {before:.3f}"
            for name in rows:
                method = make_method("unsir", config)
                generator = torch.Generator().manual_seed(setting.seed)
                with batchnorm_frozen() if name == "frozen_bn" else nullcontext():
                    outcome = method.unlearn(setting.original, setting.zero_glance, device=device, generator=generator)
                m = evaluate_model(outcome.model, setting.evaluation_data, device=device, config=evaluation).metrics
                drop = m["retain_acc"] - original.metrics["retain_acc"]
                rows[name].append((m["forget_acc"], drop))
                line += f" | {name}: forget {m['forget_acc']:.3f} retain {drop:+.3f} rounds {len(outcome.rounds)}"
            print(line, flush=True)
        for name, values in rows.items():
            drops = [d for _, d in values]
            print(
                f"{arch} {name}: forget acc worst {max(f for f, _ in values):.3f}; retain change vs original "
                f"mean {statistics.fmean(drops):+.4f} worst {min(drops):+.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
