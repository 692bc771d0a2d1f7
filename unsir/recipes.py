"""Measured default recipes: which architecture, training and UNSIR settings to use per dataset.

The digits recipe comes from ``benchmarks/quality.py`` runs on a 2-core CPU (README,
"Benchmarks"). The 3x32x32 recipe keeps the official notebook's settings, which have not been
measured here (no data set of that size ships offline); treat them as a starting point.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unsir.methods.unsir import UNSIRConfig
from unsir.noise import NoiseConfig
from unsir.training import OptimConfig


@dataclass(frozen=True)
class Recipe:
    arch: str
    train: OptimConfig
    unsir: UNSIRConfig
    retain_per_class: int
    measured: bool
    arch_kwargs: dict = field(default_factory=dict)


DIGITS = Recipe(
    arch="small_cnn",
    train=OptimConfig(lr=1e-3, epochs=30, batch_size=32),
    unsir=UNSIRConfig(),
    retain_per_class=50,
    measured=True,
)

# The official notebook (CIFAR-10, ResNet18): noise batch 256, 40 Adam steps at 0.1, lambda 0.1
# over a pixel sum, 20 copies, impair Adam 0.02 and repair Adam 0.01, batch 256, one epoch each.
CIFAR_OFFICIAL = Recipe(
    arch="resnet18_cifar",
    train=OptimConfig(lr=1e-3, epochs=40, batch_size=256),
    unsir=UNSIRConfig(
        noise=NoiseConfig(batch_size=256, steps=40, lr=0.1, l2_weight=0.1, l2_reduction="pixel_sum"),
        noise_copies=20,
        impair=OptimConfig(lr=0.02, epochs=1, batch_size=256),
        repair=OptimConfig(lr=0.01, epochs=1, batch_size=256),
    ),
    retain_per_class=1000,
    measured=False,
)

RECIPES = {"digits": DIGITS, "cifar10": CIFAR_OFFICIAL, "cifar100": CIFAR_OFFICIAL, "svhn": CIFAR_OFFICIAL}


def recipe_for(dataset: str) -> Recipe:
    return RECIPES.get(dataset.lower(), DIGITS)
