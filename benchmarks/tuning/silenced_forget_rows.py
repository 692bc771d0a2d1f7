"""Tuning-half experiment: is the MIA gap held by the forget classes' own outputs?

The unlearned model is less member-like on forget-train samples than retraining (higher
entropy). If the forget rows of the head, re-drawn and only partly trained down, still took some
probability, silencing them (weights 0, bias -10 or -30, after unlearning) would lower that
entropy. Prints, per setting, the MIA (and retain and forget accuracy) of the retrained model,
the shipped recipe, and the shipped recipe with silenced rows. No forget-class sample is read.

    python benchmarks/tuning/silenced_forget_rows.py --seeds 0 1 2 --sets 1 4 5 9
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid)

from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.models import classifier_head  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402


def silenced(model: torch.nn.Module, forget: tuple[int, ...], bias: float) -> torch.nn.Module:
    out = copy.deepcopy(model)
    head = classifier_head(out)
    with torch.no_grad():
        for c in forget:
            head.weight[c] = 0.0
            head.bias[c] = bias
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=["1", "4", "5", "9"])
    args = parser.parse_args()
    quality.limit_threads(1)
    cpu, data = torch.device("cpu"), quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=0, triples=0, part="tuning")
    shipped = make_method("unsir", unsir_config_for("small_cnn", retain_per_class=50))
    retrain = make_method("retrain", RetrainConfig(train=training_for("small_cnn")))
    evaluation = EvaluationConfig(relearn=False)
    for s in quality.grid_settings(data, "small_cnn", args.seeds, grid, training_for("small_cnn"), cpu):
        models = {
            "retrain": retrain.unlearn(s.original, s.task, device=cpu, generator=torch.Generator().manual_seed(s.seed)),
            "shipped": shipped.unlearn(
                s.original, s.zero_glance, device=cpu, generator=torch.Generator().manual_seed(s.seed)
            ),
        }
        row = {name: outcome.model for name, outcome in models.items()}
        row["silenced -10"] = silenced(row["shipped"], s.forget, -10.0)
        row["silenced -30"] = silenced(row["shipped"], s.forget, -30.0)
        measured = {
            name: evaluate_model(model, s.evaluation_data, device=cpu, config=evaluation).metrics
            for name, model in row.items()
        }
        print(
            f"seed {s.seed} {list(s.forget)} "
            + " | ".join(
                f"{name}: mia {m['mia']:.3f} retain {m['retain_acc']:.4f} forget {m['forget_acc']:.3f}"
                for name, m in measured.items()
            ),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
