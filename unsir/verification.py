"""Is forgetting done? Measured on forget-class samples of a *validation* split.

UNSIR's premise is that unlearning never reads a forget-class training sample. Deciding whether
forgetting is done may read forget-class samples of a validation split: they were never trained
on, and they are not the test split the results are reported on (``shared/UNSIR.md``). This
module only measures; it never trains.

Accuracy alone is a coarse signal on a small validation split (27 samples of a digits class):
a model can classify none of them as the forget class and still give the class 40% of its
probability, and such a model classified 10% of the test samples as the class. So forgetting
counts as done when the forget-class accuracy is at most ``max_forget_acc`` *and* no validation
sample of a forget class gives the forget classes more than ``max_forget_confidence`` of its
probability. Both bounds were chosen on a tuning grid (``benchmarks/README.md``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from unsir.configs import VerificationConfig
from unsir.errors import UnlearningInputError
from unsir.training import predict_logits


@dataclass(frozen=True)
class ForgettingCheck:
    """What a model does on the validation split, split by forget and retain classes."""

    forget_acc: float  # share of forget-class samples classified as their own class
    forget_confidence: float  # highest probability any forget-class sample gives the forget classes
    retain_acc: float  # accuracy on the retain classes' validation samples
    forget_samples: int
    retain_samples: int

    def passes(self, config: VerificationConfig) -> bool:
        return self.forget_acc <= config.max_forget_acc and self.forget_confidence <= config.max_forget_confidence

    def as_dict(self) -> dict[str, float]:
        return {
            "val_forget_acc": self.forget_acc,
            "val_forget_confidence": self.forget_confidence,
            "val_retain_acc": self.retain_acc,
        }


def check_forgetting(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    forget_classes: tuple[int, ...],
    *,
    device: torch.device,
) -> ForgettingCheck:
    """Measure ``model`` on validation ``images``/``labels`` (normalised); trains nothing."""
    forget = torch.isin(labels, torch.as_tensor(forget_classes, dtype=labels.dtype))
    if not bool(forget.any()):
        raise UnlearningInputError(
            f"the validation split has no sample of forget classes {list(forget_classes)}; "
            "expected some, to verify forgetting: a class this small gets none in a stratified split, so add "
            "samples of it or raise the validation fraction (data.fractions.val)"
        )
    probabilities = predict_logits(model, images, device=device).softmax(dim=1)
    predicted = probabilities.argmax(dim=1)
    forget_mass = probabilities[forget][:, list(forget_classes)].sum(dim=1)
    retain = ~forget
    retain_acc = float((predicted[retain] == labels[retain]).float().mean()) if bool(retain.any()) else float("nan")
    return ForgettingCheck(
        forget_acc=float((predicted[forget] == labels[forget]).float().mean()),
        forget_confidence=float(forget_mass.max()),
        retain_acc=retain_acc,
        forget_samples=int(forget.sum()),
        retain_samples=int(retain.sum()),
    )
