"""The core's settings as plain data: what ``params.yaml`` validates, and what UNSIR runs with.

No tensor library here: the pipeline validates its configuration, and the command line's
light commands (listing requests, reading the audit trail) start, without importing PyTorch.
The modules that compute (``unsir.training``, ``unsir.noise``, ``unsir.verification``,
``unsir.methods.unsir``, ``unsir.splits``) take these as their arguments.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from unsir.errors import ConfigValueError, UnlearningInputError

# The names ``model.arch`` may take, each with the arguments ``model.kwargs`` may give its builder
# and their types (the number of classes and of input channels come from the data). Declared here
# so that params.yaml is checked at load without importing PyTorch; ``unsir.models.ARCHITECTURES``
# builds them and checks, on import, that its builders' signatures take exactly these.
ARCHITECTURE_KWARGS: dict[str, dict[str, type]] = {
    "small_cnn": {"width": int},
    "allcnn": {"width": int},
    "resnet18_cifar": {},
    "mobilenet_v2": {},
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURE_KWARGS)
ARGUMENTS_FROM_DATA = ("num_classes", "in_channels")


def check_architecture_kwargs(arch: str, kwargs: dict[str, Any], accepted: dict[str, Any] | None = None) -> None:
    """Refuse ``kwargs`` the builder of ``arch`` does not take, or of another type, naming the
    arguments it does take: ``accepted`` (the builder's own signature, with its annotations as
    types), by default what ``ARCHITECTURE_KWARGS`` declares."""
    accepted = ARCHITECTURE_KWARGS[arch] if accepted is None else accepted
    taken = ", ".join(f"{key} ({getattr(kind, '__name__', kind)})" for key, kind in accepted.items()) or "none"
    from_data = sorted(set(ARGUMENTS_FROM_DATA) & set(kwargs))
    if from_data:
        raise UnlearningInputError(
            f"architecture arguments {from_data} of {arch!r} come from the data; remove them from its kwargs "
            f"(it takes: {taken})"
        )
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise UnlearningInputError(f"{arch!r} takes no argument {', '.join(map(repr, unknown))}; it takes: {taken}")
    for key, value in kwargs.items():
        kind = accepted[key]
        # bool is an int to Python, never a layer width; an unannotated argument takes anything.
        if isinstance(kind, type) and (not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool)):
            raise UnlearningInputError(
                f"{arch!r} argument {key!r} must be {kind.__name__}, got {value!r} ({type(value).__name__})"
            )


# The names ``data.name`` may take; ``unsir.data.load_dataset`` reads them. Those read from a
# local root: torchvision's data sets (in their own file layout) and image folders.
TORCHVISION_DATASET_NAMES = ("cifar10", "cifar100", "mnist", "fashionmnist", "svhn")
DATASETS_FROM_ROOT = ("imagefolder", *TORCHVISION_DATASET_NAMES)
DATASET_NAMES = ("digits", "mnist5k", *DATASETS_FROM_ROOT)

# The seeds that split data and draw retain subsets go to scikit-learn and NumPy, which take
# integers in [0, 2**32 - 1] only; None would draw a different split on every call.
MAX_SEED = 2**32 - 1


def check_seed(name: str, seed: Any) -> int:
    """``seed`` as an int, or an error naming ``name`` when it is none in [0, MAX_SEED]."""
    expected = f"an integer in [0, {MAX_SEED}]"
    try:
        value = operator.index(seed)  # int and NumPy integers; not None, 3.0 or "3"
    except TypeError:
        raise ConfigValueError(name, expected, seed) from None
    if isinstance(seed, bool) or not 0 <= value <= MAX_SEED:
        raise ConfigValueError(name, expected, seed)
    return value


@dataclass(frozen=True)
class OptimConfig:
    """One optimisation phase: Adam (or SGD) at ``lr`` for ``epochs`` epochs of ``batch_size``."""

    # Pydantic (the pipeline's params.yaml) validates this dataclass directly: no unknown keys.
    __pydantic_config__ = {"extra": "forbid"}

    lr: float = 1e-3
    epochs: int = 1
    batch_size: int = 32
    optimizer: Literal["adam", "sgd"] = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9  # SGD only

    def __post_init__(self) -> None:
        # An infinite rate or weight passes "> 0" and turns every weight into NaN at the first step.
        for key, value, ok, expected in (
            ("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            ("epochs", self.epochs, self.epochs >= 0, ">= 0"),
            ("batch_size", self.batch_size, self.batch_size > 0, "> 0"),
            ("optimizer", self.optimizer, self.optimizer in ("adam", "sgd"), "'adam' or 'sgd'"),
            (
                "weight_decay",
                self.weight_decay,
                math.isfinite(self.weight_decay) and self.weight_decay >= 0,
                "a finite number >= 0",
            ),
            ("momentum", self.momentum, math.isfinite(self.momentum) and self.momentum >= 0, "a finite number >= 0"),
        ):
            if not ok:
                raise ConfigValueError(key, expected, value)


L2_REDUCTIONS = ("pixel_mean", "pixel_sum")


@dataclass(frozen=True)
class NoiseConfig:
    # Pydantic (the pipeline's params.yaml) validates this dataclass directly: no unknown keys.
    __pydantic_config__ = {"extra": "forbid"}

    batch_size: int = 48  # noise samples per forget class (official: 256)
    steps: int = 10  # Adam steps on the whole tensor (official: 5 x 8 = 40 at lr 0.1)
    lr: float = 0.5
    l2_weight: float = 0.1
    l2_reduction: Literal["pixel_mean", "pixel_sum"] = "pixel_mean"

    def __post_init__(self) -> None:
        for key, value, ok, expected in (
            ("batch_size", self.batch_size, self.batch_size > 0, "> 0"),
            ("steps", self.steps, self.steps > 0, "> 0"),
            ("lr", self.lr, math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            (
                "l2_weight",
                self.l2_weight,
                math.isfinite(self.l2_weight) and self.l2_weight >= 0,
                "a finite number >= 0",
            ),
            ("l2_reduction", self.l2_reduction, self.l2_reduction in L2_REDUCTIONS, f"one of {L2_REDUCTIONS}"),
        ):
            if not ok:
                raise ConfigValueError(key, expected, value)


@dataclass(frozen=True)
class VerificationConfig:
    """When forgetting counts as done, and how many UNSIR rounds may be spent reaching it."""

    # Pydantic (the pipeline's params.yaml) validates this dataclass directly: no unknown keys.
    __pydantic_config__ = {"extra": "forbid"}

    max_rounds: int = 4  # round r learns new noise against the current model, copies x r
    max_forget_acc: float = 0.0  # forget-class accuracy on the validation split
    max_forget_confidence: float = 0.1  # highest forget-class probability of any such sample
    # Once forgotten, retain accuracy on the validation split may sit at most this far below the
    # parent model's; below it, up to ``max_recovery_epochs`` more repair epochs run, and the
    # epoch with the best validation retain accuracy that still forgets is kept. Two points: a
    # validation split of ~250 retain samples measures accuracy to about one point, and on the
    # tuning half a one-point trigger chased that noise (benchmarks/README.md).
    max_retain_drop: float = 0.02
    max_recovery_epochs: int = 4

    def __post_init__(self) -> None:
        if self.max_rounds < 1:
            raise ConfigValueError("max_rounds", ">= 1", self.max_rounds)
        if self.max_recovery_epochs < 0:
            raise ConfigValueError("max_recovery_epochs", ">= 0", self.max_recovery_epochs)
        for key in ("max_forget_acc", "max_forget_confidence", "max_retain_drop"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise ConfigValueError(key, "in [0, 1]", value)


@dataclass(frozen=True)
class UNSIRConfig:
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    noise_copies: int = 5  # copies of every noise tensor in the impair set (official: 20)
    impair: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, epochs=1, batch_size=32))
    repair: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=3, batch_size=32))
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    # After the last round, a short repair at a low learning rate: it recovers retain accuracy
    # that the high-rate steps cost, and is too gentle to relearn a forgotten class (checked
    # on the validation split, and undone if it did). None: no polish.
    polish: OptimConfig | None = field(default_factory=lambda: OptimConfig(lr=2e-4, epochs=2, batch_size=32))
    # Before round 1, give the forget classes' rows of the classifier head fresh weights, as a
    # model built from scratch has. The rows hold nothing but those classes, so retain accuracy
    # does not depend on them; measured, the verified rounds then forget in one round instead
    # of three (benchmarks/README.md). Shared layers are left to impair and repair.
    reset_forget_rows: bool = False
    # A round that forgot on accuracy but left some forget-class validation sample above the
    # confidence bound is followed by a *head round* instead of a full one: the classifier head
    # alone is refitted on D_r_sub's penultimate features (computed once; the rest of the model
    # is frozen) with these settings. A head round that verifies ends the run without the
    # polish; one that does not is followed by a full round. None: every round is a full one.
    head_round: OptimConfig | None = None
    # The share of the weight layers, counted from the input in forward order, that every step
    # leaves exactly as the original learned them (BatchNorm statistics too); the head always
    # trains. 0: every layer trains (``unsir.models.lower_layers_frozen``).
    frozen_lower_layers: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.frozen_lower_layers) and 0.0 <= self.frozen_lower_layers < 1.0):
            raise ConfigValueError(
                "frozen_lower_layers", "in [0, 1): a share of the weight layers", self.frozen_lower_layers
            )

    def for_round(self, round_number: int) -> UNSIRConfig:
        """Round r's settings: every noise sample copied ``noise_copies * r`` times."""
        return replace(self, noise_copies=self.noise_copies * round_number)


@dataclass(frozen=True)
class SplitFractions:
    # Pydantic (the pipeline's params.yaml) validates this dataclass directly: no unknown keys.
    __pydantic_config__ = {"extra": "forbid"}

    # A validation split is where forgetting is verified (``unsir.verification``).
    train: float = 0.55
    val: float = 0.15
    test: float = 0.3

    def __post_init__(self) -> None:
        # With all three >= 0 (train and test > 0) and a sum of 1, each is also below 1.
        for key, value, ok, expected in (
            ("train", self.train, self.train > 0, "> 0"),
            ("val", self.val, self.val >= 0, ">= 0"),
            ("test", self.test, self.test > 0, "> 0"),
        ):
            if not ok:
                raise ConfigValueError(key, expected, value)
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise UnlearningInputError(
                f"train + val + test must be 1, got {total} (train={self.train}, val={self.val}, test={self.test})"
            )
