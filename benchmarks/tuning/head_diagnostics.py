"""Tuning-half diagnosis: is the MIA gap in the classifier head or in the features?

On the unseen MLP (``benchmarks/unseen_architectures.py``) the shipped recipe's MIA reads below
retraining's in 35 of 36 MIA failures. Per setting this prints the MIA (with forget and retain
accuracy) of:

- ``retrain`` and ``shipped``;
- heads refitted on a frozen body (30 epochs, Adam 1e-3): the *original's* body (before any
  unlearning) with a fresh head on the whole retain-train set, the shipped body with a fresh head
  on the *whole* retain-train set (``shipped+fresh_head_full``, a diagnosis only: UNSIR has D_r_sub
  alone) or on D_r_sub, the shipped head trained on further on the whole retain set, and the
  retrained body with a fresh head fitted on D_r_sub alone (``retrain+fresh_head_sub``);
- ``feature_proxies``: a zero-glance try at the head. D_r_sub's features in the unlearned model
  are pushed (Adam on the features, kept >= 0) until the *original* head gives the forget class
  90% of their probability, labelled with the class they started from, and the unlearned head is
  refitted on them with D_r_sub (3 epochs, Adam 3e-3): inputs the original read as the forget
  class, sent confidently to a neighbour, as retraining sends the forget samples.

    python benchmarks/tuning/head_diagnostics.py --arch mlp --seeds 0 1 --sets 1 4 5 2,5
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid)
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.configs import OptimConfig  # noqa: E402
from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.models import ARCHITECTURES, classifier_head, penultimate_features  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402
from unsir.training import fit  # noqa: E402

CPU = torch.device("cpu")


def refit_head(model, images, labels, settings: OptimConfig, *, fresh: bool, seed: int = 0, extra=None):
    """A copy of ``model`` whose head alone is fitted on the features of ``images`` (plus
    ``extra`` feature/label pairs), from fresh weights when ``fresh``."""
    out = copy.deepcopy(model)
    head = classifier_head(out)
    if fresh:
        torch.manual_seed(seed)
        head.reset_parameters()
    features = penultimate_features(out, images, device=CPU).clone()
    if extra is not None:
        features, labels = torch.cat([features, extra[0]]), torch.cat([labels, extra[1]])
    fit(head, features, labels, settings, device=CPU, generator=torch.Generator().manual_seed(seed))
    return out


def feature_proxies(model, original, images, labels, forget, *, target=0.9, steps=50):
    """Features of ``images`` in ``model``, pushed until ``original``'s head reads each forget
    class at ``target`` probability; labelled with the class each started from."""
    head = classifier_head(original)
    weight, bias = head.weight.detach(), head.bias.detach()
    start = penultimate_features(model, images, device=CPU)
    pushed, kept_labels = [], []
    for c in forget:
        h = start.clone().requires_grad_(True)
        optimiser = torch.optim.Adam([h], lr=0.1)
        for _ in range(steps):
            log_p = torch.log_softmax(h @ weight.T + bias, 1)[:, c]
            done = log_p.exp() > target
            if bool(done.all()):
                break
            optimiser.zero_grad()
            (-(log_p * ~done).sum()).backward()
            optimiser.step()
            with torch.no_grad():
                h.clamp_(min=0)
        with torch.no_grad():
            reached = torch.softmax(h @ weight.T + bias, 1)[:, c] > 0.5
        pushed.append(h.detach()[reached])
        kept_labels.append(labels[reached])
    return torch.cat(pushed), torch.cat(kept_labels)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--arch", default="mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--sets", nargs="+", default=["1", "4", "5", "2,5"])
    args = parser.parse_args()
    ARCHITECTURES.update(UNSEEN)
    quality.limit_threads(1)
    data = quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=0, triples=0, part="tuning")
    train = training_for(args.arch)
    evaluation = EvaluationConfig(relearn=False, probe=False)
    long_head, head_round = OptimConfig(lr=1e-3, epochs=30, batch_size=64), OptimConfig(lr=3e-3, epochs=3)
    for s in quality.grid_settings(data, args.arch, args.seeds, grid, train, CPU):
        retrained = (
            make_method("retrain", RetrainConfig(train=train))
            .unlearn(s.original, s.task, device=CPU, generator=torch.Generator().manual_seed(s.seed))
            .model
        )
        shipped = (
            make_method("unsir", unsir_config_for(args.arch, retain_per_class=50))
            .unlearn(s.original, s.zero_glance, device=CPU, generator=torch.Generator().manual_seed(s.seed))
            .model
        )
        evaluation_data, task = s.evaluation_data, s.zero_glance
        retained = ~torch.isin(evaluation_data.train_labels, torch.tensor(s.forget))
        full_x, full_y = evaluation_data.train_images[retained], evaluation_data.train_labels[retained]
        proxies = feature_proxies(shipped, s.original, task.retain_images, task.retain_labels, s.forget)
        models = {
            "retrain": retrained,
            "shipped": shipped,
            "original+fresh_head_full": refit_head(s.original, full_x, full_y, long_head, fresh=True),
            "shipped+fresh_head_full": refit_head(shipped, full_x, full_y, long_head, fresh=True),
            "shipped+fresh_head_sub": refit_head(
                shipped, task.retain_images, task.retain_labels, long_head, fresh=True
            ),
            "shipped+head_on_full": refit_head(
                shipped, full_x, full_y, OptimConfig(epochs=10, batch_size=64), fresh=False
            ),
            "retrain+fresh_head_sub": refit_head(
                retrained, task.retain_images, task.retain_labels, long_head, fresh=True
            ),
            "feature_proxies": refit_head(
                shipped, task.retain_images, task.retain_labels, head_round, fresh=False, extra=proxies
            ),
        }
        cells = []
        for name, model in models.items():
            m = evaluate_model(model, evaluation_data, device=CPU, config=evaluation).metrics
            cells.append(f"{name} f {m['forget_acc']:.2f} r {m['retain_acc']:.3f} mia {m['mia']:.3f}")
        print(f"seed {s.seed} {list(s.forget)} ({len(proxies[0])} proxies): " + " | ".join(cells), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
