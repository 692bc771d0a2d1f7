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
from unseen_architectures import UNSEEN  # noqa: E402

import unsir.methods.unsir as unsir_method  # noqa: E402
from unsir.methods import make_method  # noqa: E402
from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402
from unsir.training import predict_logits  # noqa: E402

# Which steps train towards the original's outputs, per variant name.
DISTILLED_STEPS = {
    "distilled_repair": {"repair", "polish", "recovery"},
    "distilled_all": {"impair", "repair", "polish", "recovery", "head round"},
}
_fit = unsir_method.fit


def soft_targets(original, images, forget_classes, device) -> torch.Tensor:
    logits = predict_logits(original, images, device=device).float().clone()
    logits[:, list(forget_classes)] = float("-inf")
    return logits.softmax(dim=1)


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, **dict.fromkeys(DISTILLED_STEPS, shipped)}


def make_method_named(name_of_variant: str):
    """A ``make_method`` whose methods train the variant's steps towards soft targets."""

    def make(name, config=None):
        method = make_method(name, config)
        steps = DISTILLED_STEPS.get(name_of_variant)
        if steps is None or name == "retrain":
            return method
        plain_unlearn = method._unlearn

        def _unlearn(model, task, *, device, generator):
            targets = soft_targets(model, task.retain_images, task.forget_classes, device)

            def fit(model_, images, labels, config_, *, device, generator, description="train", **kw):
                same = labels.shape == task.retain_labels.shape and torch.equal(labels.cpu(), task.retain_labels.cpu())
                if description in steps and same:
                    labels = targets
                return _fit(
                    model_, images, labels, config_, device=device, generator=generator, description=description, **kw
                )

            unsir_method.fit = fit
            try:
                return plain_unlearn(model, task, device=device, generator=generator)
            finally:
                unsir_method.fit = _fit

        method._unlearn = _unlearn
        return method

    return make


class _Dispatch:
    """schedule_length calls ``make_method(method_name, config)`` per variant in dict order; the
    variant's name is not passed, so the dispatcher walks the names alongside."""

    def __init__(self, names: list[str]):
        self.names, self.index = names, 0

    def __call__(self, name, config=None):
        if name == "retrain":
            return make_method(name, config)
        variant = self.names[self.index % len(self.names)]
        self.index += 1
        return make_method_named(variant)(name, config)


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    only = sys.argv[sys.argv.index("--only") + 1 :] if "--only" in sys.argv else None
    names = [n for n in ["shipped", *DISTILLED_STEPS] if not only or n in only]
    schedule_length.make_method = _Dispatch(names)
    raise SystemExit(schedule_length.main(variants, out="reports/bench/tuning-distilled-repair.json"))
