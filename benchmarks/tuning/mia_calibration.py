"""Tuning-half diagnosis: is the shipped recipe's MIA gap a matter of calibration?

Every MIA failure of the shipped recipe has the unlearned model *less* member-like than the
retrained one. After impair and repair on D_r_sub (450 samples) the unlearned model is sharper
on the retained classes than the original, so the attack's threshold, fitted on its own members
and non-members, sits lower. This prints, per run, the entropy quantiles the attack compares
(forget-train samples against members and non-members of the retained classes), the classes
the forget samples are sent to, and the MIA after temperature-scaling the unlearned model's
head (logits / T, which leaves every prediction unchanged) for several T. If calibration were
the cause, some T would bring the MIA to the retrained model's.

Runs on the tuning half only (quality.py's --part tuning, seed 0 by default), on the compact
CNN or, with ``--arch``, any registered architecture or ``benchmarks/unseen_architectures.py``'s;
``--temperatures`` below 1 sharpen.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import quality  # noqa: E402  (the benchmark's grid, data and pass criteria)
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.measures import EvaluationConfig, evaluate_model  # noqa: E402
from unsir.measures.membership import monotone_threshold, sample_feature  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.methods.baselines import RetrainConfig  # noqa: E402
from unsir.models import ARCHITECTURES, classifier_head  # noqa: E402
from unsir.recipes import training_for, unsir_config_for  # noqa: E402
from unsir.training import predict_logits  # noqa: E402

TEMPERATURES = (1.0, 1.2, 1.5, 2.0, 3.0)


def entropies(model, images, labels, device) -> np.ndarray:
    return sample_feature(predict_logits(model, images, device=device), labels, "entropy")[:, 0]


def attack_view(model, data, device) -> dict:
    """What the entropy attack sees: members and non-members of the retained classes, the
    forget-train samples, the fitted threshold, and where the forget samples are sent."""
    forget_train, retain_train = data.mask(data.train_labels, True), data.mask(data.train_labels, False)
    retain_test = data.mask(data.test_labels, False)
    members = entropies(model, data.train_images[retain_train], data.train_labels[retain_train], device)
    outsiders = entropies(model, data.test_images[retain_test], data.test_labels[retain_test], device)
    forget = entropies(model, data.train_images[forget_train], data.train_labels[forget_train], device)
    threshold = monotone_threshold(
        np.concatenate([members, outsiders]), np.r_[np.ones(len(members)), np.zeros(len(outsiders))]
    )
    sent_to = predict_logits(model, data.train_images[forget_train], device=device).argmax(1)
    return {
        "threshold": threshold,
        "member_median": float(np.median(members)),
        "forget_q10_q50": np.quantile(forget, [0.1, 0.5]).round(4).tolist(),
        "below_threshold": float((forget <= threshold).mean()),
        "sent_to": torch.bincount(sent_to, minlength=data.num_classes).tolist(),
    }


def temperature_scaled(model, temperature: float):
    scaled = copy.deepcopy(model)
    head = classifier_head(scaled)
    with torch.no_grad():
        head.weight /= temperature
        if head.bias is not None:
            head.bias /= temperature
    return scaled


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sets", nargs="*", default=["1", "4", "6"])
    parser.add_argument("--arch", default="small_cnn")
    parser.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES))
    args = parser.parse_args()
    ARCHITECTURES.update(UNSEEN)
    torch.set_num_threads(1)
    device = torch.device("cpu")
    data = quality.load_dataset("digits", None)
    grid = argparse.Namespace(sets=args.sets, singles=None, pairs=0, triples=0, part="tuning")
    train_cfg = training_for(args.arch)
    evaluation = EvaluationConfig(probe=False, relearn=False)
    for setting in quality.grid_settings(data, args.arch, args.seeds, grid, train_cfg, device):
        generator = torch.Generator().manual_seed(setting.seed)
        retrained = make_method("retrain", RetrainConfig(train=train_cfg)).unlearn(
            setting.original, setting.task, device=device, generator=generator
        )
        shipped = make_method("unsir", unsir_config_for(args.arch, retain_per_class=50)).unlearn(
            setting.original,
            setting.zero_glance,
            device=device,
            generator=torch.Generator().manual_seed(setting.seed),
        )
        print(f"seed {setting.seed} forget {list(setting.forget)}")
        for name, model in (("original", setting.original), ("retrained", retrained.model), ("shipped", shipped.model)):
            print(f"  {name:9s} {attack_view(model, setting.evaluation_data, device)}")
        mias = {
            t: evaluate_model(
                temperature_scaled(shipped.model, t), setting.evaluation_data, device=device, config=evaluation
            ).metrics["mia"]
            for t in args.temperatures
        }
        reference = evaluate_model(retrained.model, setting.evaluation_data, device=device, config=evaluation)
        print(
            f"  MIA retrained {reference.metrics['mia']:.3f}; shipped at T = "
            + ", ".join(f"{t:g}: {m:.3f}" for t, m in mias.items()),
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
