"""UNSIR: error-maximising noise, impair, repair (Tarun et al., TNNLS 2023).

The three steps are also exposed as functions, so that a pipeline can run (and time, and log)
each one as its own step. Defaults come from ``benchmarks/quality.py`` on digits; see README.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from unsir.methods.base import (
    UnlearningMethod,
    UnlearningResult,
    UnlearningTask,
    prepare,
    register,
    timed,
)
from unsir.noise import NoiseConfig, build_impair_set, learn_error_maximizing_noise
from unsir.training import OptimConfig, fit


@dataclass(frozen=True)
class UNSIRConfig:
    noise: NoiseConfig = field(default_factory=NoiseConfig)
    noise_copies: int = 5  # copies of every noise tensor in the impair set (official: 20)
    impair: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3, epochs=1, batch_size=32))
    repair: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, epochs=3, batch_size=32))


def impair(
    model: nn.Module,
    noise: dict[int, torch.Tensor],
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    config: UNSIRConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> nn.Module:
    """Train on D_r_sub plus labelled noise at a high learning rate: damages the forget classes."""
    x, y = build_impair_set(noise, retain_images.to(device), retain_labels.to(device), copies=config.noise_copies)
    return fit(model, x, y, config.impair, device=device, generator=generator, description="impair")


def repair(
    model: nn.Module,
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    config: UNSIRConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> nn.Module:
    """Train on D_r_sub alone: restores the retain classes the impair step damaged."""
    return fit(model, retain_images, retain_labels, config.repair, device=device, generator=generator, description="repair")


@register
class UNSIR(UnlearningMethod):
    name = "unsir"
    Config = UNSIRConfig
    uses_noise = True

    def unlearn(self, model, task: UnlearningTask, *, device, generator) -> UnlearningResult:
        working = prepare(model, task, device)
        timings: dict[str, float] = {}
        noise: dict[int, torch.Tensor] = {}
        if self.uses_noise:
            with timed(timings, "noise_s", device):
                noise = learn_error_maximizing_noise(
                    working, task.forget_classes, task.input_shape, self.config.noise, device=device, generator=generator
                )
        with timed(timings, "impair_s", device):
            impair(working, noise, task.retain_images, task.retain_labels, self.config, device=device, generator=generator)
        with timed(timings, "repair_s", device):
            repair(working, task.retain_images, task.retain_labels, self.config, device=device, generator=generator)
        return UnlearningResult(working.eval(), timings, noise or None)


@register
class NoiseFreeControl(UNSIR):
    """UNSIR's impair and repair on D_r_sub with no noise: isolates what the noise contributes."""

    name = "noise_free"
    uses_noise = False
