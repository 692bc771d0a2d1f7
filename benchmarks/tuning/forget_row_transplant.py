"""Tuning-half experiment: send the forget class's inputs to its neighbours, in the head.

The MIA gap's diagnosis (benchmarks/README.md): retraining files a forget class's samples
confidently under a retained class, the unlearned model stays unsure about them, because its
features still keep the class apart and the retained rows were trained to stay low there. This
adds the ORIGINAL's forget row to the retained rows, weighted by how much the original confuses
each retained class with the forget class on D_r_sub (mean original probability of the forget
class on D_r_sub samples of that class; no forget-class sample is read), so that inputs the
original read as the forget class raise their neighbours' logits. ``post``: the edit on the
unlearned model's head; ``pre``: on the original's, before the shipped recipe runs.

    python benchmarks/tuning/forget_row_transplant.py --seeds 0 1 2 --sets 0 1 3 4 5 6 9 1,7
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
from unsir.training import predict_logits  # noqa: E402


def neighbour_weights(
    original: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    forget: tuple[int, ...],
    num_classes: int,
    top1: bool,
) -> dict[int, torch.Tensor]:
    """weights[c][k]: share of forget class c's transplant given to retained class k."""
    probs = torch.softmax(predict_logits(original, images, device=torch.device("cpu")), dim=1)
    weights: dict[int, torch.Tensor] = {}
    for c in forget:
        w = torch.zeros(num_classes)
        for k in range(num_classes):
            if k not in forget and (labels == k).any():
                w[k] = probs[labels == k, c].mean()
        if top1:
            w = torch.nn.functional.one_hot(w.argmax(), num_classes).float()
        weights[c] = w / w.sum()
    return weights


def transplanted(
    model: torch.nn.Module, original: torch.nn.Module, weights: dict[int, torch.Tensor], beta: float
) -> torch.nn.Module:
    out = copy.deepcopy(model)
    head, source = classifier_head(out), classifier_head(original)
    with torch.no_grad():
        for c, w in weights.items():
            head.weight += beta * w[:, None] * source.weight[c][None, :]
            head.bias += beta * w * source.bias[c]
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sets", nargs="+", default=["0", "1", "3", "4", "5", "6", "9", "1,7"])
    parser.add_argument("--betas", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    args = parser.parse_args()
    quality.limit_threads(1)
    cpu, data = torch.device("cpu"), quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=0, triples=0, part="tuning")
    shipped = make_method("unsir", unsir_config_for("small_cnn", retain_per_class=50))
    retrain = make_method("retrain", RetrainConfig(train=training_for("small_cnn")))
    evaluation = EvaluationConfig(relearn=False)
    for s in quality.grid_settings(data, "small_cnn", args.seeds, grid, training_for("small_cnn"), cpu):

        def gen(seed: int = s.seed) -> torch.Generator:
            return torch.Generator().manual_seed(seed)

        row = {
            "retrain": retrain.unlearn(s.original, s.task, device=cpu, generator=gen()).model,
            "shipped": shipped.unlearn(s.original, s.zero_glance, device=cpu, generator=gen()).model,
        }
        zg = s.zero_glance
        for top1 in (False, True):
            weights = neighbour_weights(s.original, zg.retain_images, zg.retain_labels, s.forget, zg.num_classes, top1)
            tag = "top1" if top1 else "soft"
            for beta in args.betas:
                row[f"post-{tag}-{beta:g}"] = transplanted(row["shipped"], s.original, weights, beta)
            pre = transplanted(s.original, s.original, weights, 1.0)
            row[f"pre-{tag}-1"] = shipped.unlearn(pre, s.zero_glance, device=cpu, generator=gen()).model
        measured = {
            name: evaluate_model(model, s.evaluation_data, device=cpu, config=evaluation).metrics
            for name, model in row.items()
        }
        ref = measured["retrain"]
        print(f"seed {s.seed} {list(s.forget)} retrain mia {ref['mia']:.3f} retain {ref['retain_acc']:.4f}", flush=True)
        for name, m in measured.items():
            if name == "retrain":
                continue
            ok = (
                m["forget_acc"] <= quality.MAX_FORGET_ACC
                and m["retain_acc"] >= ref["retain_acc"] - quality.MAX_RETAIN_GAP
                and abs(m["mia"] - ref["mia"]) <= quality.MAX_MIA_GAP
            )
            print(
                f"    {name:14s} mia {m['mia']:.3f} retain {m['retain_acc']:.4f} forget {m['forget_acc']:.3f} "
                f"{'PASS' if ok else 'fail'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
