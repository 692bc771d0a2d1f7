"""The interface every unlearning method implements, and the registry that names them.

A method is a class with a ``name``, a frozen ``Config`` dataclass and an ``unlearn`` method;
decorating it with ``@register`` makes it available by name. Adding a method is adding one
module to this package (modules here are imported automatically).
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import ClassVar

import torch
from torch import nn

from unsir.classes import check_forget_classes
from unsir.errors import UnlearningInputError
from unsir.models import check_classifier, working_copy
from unsir.training import resolve_device


@dataclass(frozen=True)
class UnlearningTask:
    """What to forget and the data a method may read, as normalised tensors.

    ``retain_images``/``retain_labels`` is D_r_sub, the small retain subset UNSIR uses. The full
    retain training set and the forget training set are optional: only baselines that need them
    (retraining, fine-tuning, NegGrad, random labels) read them. UNSIR never reads forget data.
    """

    forget_classes: tuple[int, ...]
    num_classes: int
    retain_images: torch.Tensor
    retain_labels: torch.Tensor
    retain_train_images: torch.Tensor | None = None
    retain_train_labels: torch.Tensor | None = None
    forget_train_images: torch.Tensor | None = None
    forget_train_labels: torch.Tensor | None = None
    # A validation split (never trained on; forget-class samples included): UNSIR measures on
    # it whether forgetting is done and keeps going until it is (``unsir.verification``).
    validation_images: torch.Tensor | None = None
    validation_labels: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.retain_images.shape[1:])  # type: ignore[return-value]

    def validate(self) -> None:
        """Check everything that can be checked without compute; raise naming the bad value."""
        check_forget_classes(self.forget_classes, self.num_classes)
        _check_pair("retain subset", self.retain_images, self.retain_labels)
        if len(self.retain_labels) == 0:
            raise UnlearningInputError("the retain subset is empty; expected at least one retain sample")
        leaked = sorted(set(self.retain_labels.unique().tolist()) & set(self.forget_classes))
        if leaked:
            raise UnlearningInputError(f"the retain subset contains samples of forget classes {leaked}")
        for name, (x, y) in {
            "retain training set": (self.retain_train_images, self.retain_train_labels),
            "forget training set": (self.forget_train_images, self.forget_train_labels),
            "validation set": (self.validation_images, self.validation_labels),
        }.items():
            if x is not None or y is not None:
                _check_pair(name, x, y)
                assert x is not None  # _check_pair refuses a missing half
                if tuple(x.shape[1:]) != self.input_shape:
                    raise UnlearningInputError(
                        f"{name} samples have shape {tuple(x.shape[1:])}, the retain subset's have {self.input_shape}"
                    )

    def require(self, *names: str, method: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise UnlearningInputError(f"method {method!r} needs {missing} in the task; they were not given")


def _check_pair(name: str, images: torch.Tensor | None, labels: torch.Tensor | None) -> None:
    if images is None or labels is None:
        raise UnlearningInputError(f"{name}: images and labels must be given together")
    if images.ndim != 4:
        raise UnlearningInputError(f"{name}: images must have shape (N, C, H, W), got {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise UnlearningInputError(
            f"{name}: expected one label per image ({len(images)}), got labels of shape {tuple(labels.shape)}"
        )
    if labels.dtype != torch.int64:  # cross-entropy takes no other, and would fail mid-training
        raise UnlearningInputError(f"{name}: labels are {labels.dtype}; expected torch.int64 class indices (.long())")


@dataclass
class UnlearningResult:
    model: nn.Module
    timings_s: dict[str, float] = field(default_factory=dict)
    noise: dict[int, torch.Tensor] | None = None
    # One entry per UNSIR round (its settings, seconds and validation check); empty for methods
    # without rounds. ``verified`` is None when no validation split was given.
    rounds: list[dict[str, float]] = field(default_factory=list)
    verified: bool | None = None

    @property
    def wall_s(self) -> float:
        return sum(self.timings_s.values())


class UnlearningMethod(ABC):
    name: ClassVar[str]
    Config: ClassVar[type]

    def __init__(self, config=None):
        self.config = config if config is not None else self.Config()

    @abstractmethod
    def unlearn(
        self, model: nn.Module, task: UnlearningTask, *, device: torch.device, generator: torch.Generator
    ) -> UnlearningResult:
        """Return an unlearned copy of ``model``; ``model`` itself is left untouched."""


METHODS: dict[str, type[UnlearningMethod]] = {}


def register(cls: type[UnlearningMethod]) -> type[UnlearningMethod]:
    if cls.name in METHODS:
        raise ValueError(f"unlearning method {cls.name!r} registered twice")
    METHODS[cls.name] = cls
    return cls


def make_method(name: str, config=None, **overrides) -> UnlearningMethod:
    """A method by registry name, with its default config (or ``config``) and overrides."""
    try:
        cls = METHODS[name]
    except KeyError:
        raise UnlearningInputError(f"unknown unlearning method {name!r}; expected one of {sorted(METHODS)}") from None
    config = config if config is not None else cls.Config()
    if overrides:
        known = {f.name for f in fields(config)} if is_dataclass(config) else set()
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise UnlearningInputError(f"method {name!r} has no settings {unknown}; expected some of {sorted(known)}")
        config = replace(config, **overrides)
    return cls(config)


def prepare(model: nn.Module, task: UnlearningTask, device: torch.device) -> nn.Module:
    """Validate the task against the model, then return a working copy on ``device``.

    One sample goes through the model so that a shape or class-count mismatch fails here,
    with a clear message, before any optimisation starts.
    """
    task.validate()
    device = resolve_device(device)
    if not any(p.requires_grad for p in model.parameters()):
        # Every method trains the copy; without this, the first backward pass fails mid-run
        # ("element 0 of tensors does not require grad"), after UNSIR has learned its noise.
        raise UnlearningInputError(
            f"every parameter of {type(model).__name__} is frozen (requires_grad=False, as after "
            "model.requires_grad_(False) for inference); expected some to train: unfreeze the layers to unlearn "
            "with model.requires_grad_(True)"
        )
    working = working_copy(model, device)
    images = {
        name: x
        for name, x in {
            "retain subset": task.retain_images,
            "retain training set": task.retain_train_images,
            "forget training set": task.forget_train_images,
            "validation set": task.validation_images,
        }.items()
        if x is not None
    }
    check_classifier(working, images, task.num_classes, device=device)
    return working


@contextmanager
def timed(timings: dict[str, float], key: str, device: torch.device) -> Iterator[None]:
    """Record wall time of a block; synchronise CUDA so the time covers the work itself."""
    device = torch.device(device)  # "cuda" as text too, as torch takes it
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    yield
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - started


def derived_seed(generator: torch.Generator) -> int:
    """A seed for code that uses torch's global RNG (weight init), drawn from ``generator``."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
