"""Tuning-half experiment: repair towards the original's own outputs, not one-hot labels.

After impair and repair on D_r_sub the unlearned model is far sharper on the retained classes
than the original or the retrained model (members' median entropy a quarter of theirs on the
unseen MLP, ``tuning-mia-calibration-mlp.log``), so the attack's threshold sits lower and the
forget samples read less member-like than retraining's. Here the steps on D_r_sub train towards
the original's softmax over the retained classes (its forget classes' outputs removed and the
rest renormalised; computed once, the original in eval mode) instead of the one-hot labels: the
retained classes keep the calibration the original learned on the whole training set, which on
those classes is what retraining has too. No forget-class sample is read; the original's
outputs on D_r_sub are what it already knows of the retained classes.

    python benchmarks/tuning/distilled_repair.py --arch mlp --retrain-again
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from patching import with_replaced_step  # noqa: E402
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402
from unsir.training import predict_logits  # noqa: E402

# Which steps train towards the original's outputs, per variant name.
DISTILLED_STEPS = {
    "distilled_repair": {"repair", "polish", "recovery"},
    "distilled_all": {"impair", "repair", "polish", "recovery", "head round"},
}


def soft_targets(original, images, forget_classes, device) -> torch.Tensor:
    logits = predict_logits(original, images, device=device).float().clone()
    logits[:, list(forget_classes)] = float("-inf")
    return logits.softmax(dim=1)


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, **dict.fromkeys(DISTILLED_STEPS, shipped)}


def distilled_fit_for(steps: set[str]):
    """A replacement for ``fit`` that trains ``steps`` on D_r_sub towards the original's outputs."""

    def replacement(original_model, task, fit, device):
        targets = soft_targets(original_model, task.retain_images, task.forget_classes, device)

        def distilled_fit(model, images, labels, config, *, device, generator, description="train", **kw):
            same = labels.shape == task.retain_labels.shape and torch.equal(labels.cpu(), task.retain_labels.cpu())
            if description in steps and same:
                labels = targets
            return fit(model, images, labels, config, device=device, generator=generator, description=description, **kw)

        return distilled_fit

    return replacement


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant in DISTILLED_STEPS:
        method = with_replaced_step(method, "fit", distilled_fit_for(DISTILLED_STEPS[variant]))
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-distilled-repair.json", method_for=method_for)
    )
