"""Baselines judged beside UNSIR: retraining from scratch, fine-tuning, NegGrad, random labels.

Unlike UNSIR, NegGrad and random labels read forget-class samples; retraining and fine-tuning
read the whole retain training set.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unsir.configs import OptimConfig
from unsir.methods.base import (
    UnlearningMethod,
    UnlearningResult,
    derived_seed,
    prepare,
    register,
    timed,
)
from unsir.training import fit, make_optimizer, train_one_epoch


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Fresh weights for any architecture: call every module's own ``reset_parameters``."""
    torch.manual_seed(seed)
    for module in model.modules():
        # getattr, not hasattr: nn.Module's attribute type would make the call a Tensor's.
        reset_parameters = getattr(module, "reset_parameters", None)
        if reset_parameters is not None:
            reset_parameters()
        reset_running_stats = getattr(module, "reset_running_stats", None)
        if reset_running_stats is not None:
            reset_running_stats()
    return model


@dataclass(frozen=True)
class RetrainConfig:
    # As long as the original was trained: the gold standard's cost is part of the comparison.
    train: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=30, batch_size=32))


def _train_on_retain_set(
    method: UnlearningMethod, model, task, *, device, generator, from_scratch: bool
) -> UnlearningResult:
    """Train on the whole retain training set: from fresh weights (retrain) or on (fine-tune)."""
    task.require("retain_train_images", method=method.name)
    working = prepare(model, task, device)
    timings: dict[str, float] = {}
    with timed(timings, "train_s", device):
        if from_scratch:
            reinitialize(working, derived_seed(generator))
        fit(
            working,
            task.retain_train_images,
            task.retain_train_labels,
            method.config.train,
            device=device,
            generator=generator,
            description=method.name,
        )
    return UnlearningResult(working.eval(), timings)


@register
class Retrain(UnlearningMethod):
    """Train the same architecture from scratch on the retain training set: the reference."""

    name = "retrain"
    Config = RetrainConfig

    def unlearn(self, model, task, *, device, generator) -> UnlearningResult:
        return _train_on_retain_set(self, model, task, device=device, generator=generator, from_scratch=True)


@dataclass(frozen=True)
class FinetuneConfig:
    train: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=3, batch_size=32))


@register
class Finetune(UnlearningMethod):
    """Continue training on the retain training set only (catastrophic forgetting)."""

    name = "finetune"
    Config = FinetuneConfig

    def unlearn(self, model, task, *, device, generator) -> UnlearningResult:
        return _train_on_retain_set(self, model, task, device=device, generator=generator, from_scratch=False)


@dataclass(frozen=True)
class NegGradConfig:
    train: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-4, epochs=1, batch_size=32))


@register
class NegGrad(UnlearningMethod):
    """Gradient ascent on the forget training set (Golatkar et al. 2020)."""

    name = "neggrad"
    Config = NegGradConfig

    def unlearn(self, model, task, *, device, generator) -> UnlearningResult:
        task.require("forget_train_images", method=self.name)
        working = prepare(model, task, device)
        timings: dict[str, float] = {}
        cfg = self.config.train
        with timed(timings, "train_s", device):
            x, y = task.forget_train_images.to(device), task.forget_train_labels.to(device)
            optimizer = make_optimizer(cfg, working.parameters())
            for _ in range(cfg.epochs):
                train_one_epoch(
                    working, x, y, optimizer, batch_size=cfg.batch_size, generator=generator, loss_sign=-1.0
                )
        return UnlearningResult(working.eval(), timings)


@dataclass(frozen=True)
class RandomLabelsConfig:
    train: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=1, batch_size=32))


@register
class RandomLabels(UnlearningMethod):
    """Amnesiac unlearning (Graves et al. 2021): forget samples relabelled at random among the
    retain classes, trained together with the retain subset."""

    name = "random_labels"
    Config = RandomLabelsConfig

    def unlearn(self, model, task, *, device, generator) -> UnlearningResult:
        task.require("forget_train_images", method=self.name)
        working = prepare(model, task, device)
        timings: dict[str, float] = {}
        with timed(timings, "train_s", device):
            retain_classes = torch.tensor([c for c in range(task.num_classes) if c not in task.forget_classes])
            picks = torch.randint(0, len(retain_classes), (len(task.forget_train_labels),), generator=generator)
            x = torch.cat([task.retain_images, task.forget_train_images])
            y = torch.cat([task.retain_labels, retain_classes[picks]])
            fit(working, x, y, self.config.train, device=device, generator=generator, description="random-labels")
        return UnlearningResult(working.eval(), timings)
