"""Plain training and inference loops over in-memory tensors.

Batches are sliced from tensors already on the device, in an order drawn from an explicit
``torch.Generator``: no DataLoader workers, no hidden global state, so the hot loop costs what
a bare PyTorch loop costs and the same seed gives the same model.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from unsir.configs import OptimConfig
from unsir.errors import TrainingDivergedError, UnlearningInputError


def resolve_device(device: torch.device | str) -> torch.device:
    """``device`` (a ``torch.device`` or its text) as a ``torch.device``, refused before any
    compute when it is no device or one this machine lacks: torch would otherwise fail on the
    first ``.to()``, after a model was copied or noise drawn, with a driver message."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UnlearningInputError(
            f"unknown device {device!r}; expected 'cpu', 'cuda', 'cuda:N', 'mps' or a torch.device"
        ) from err
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise UnlearningInputError(
            f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s); "
            "expected 'cpu' or one of those"
        )
    if resolved.type == "mps" and not torch.backends.mps.is_available():
        raise UnlearningInputError(f"device {str(device)!r}: MPS is not available on this machine; expected 'cpu'")
    return resolved


@contextmanager
def in_eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval() mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def make_optimizer(config: OptimConfig, params) -> torch.optim.Optimizer:
    """The optimiser ``config`` names, over ``params``."""
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a generator for batch order."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def iterate_batches(
    n: int,
    batch_size: int,
    generator: torch.Generator | None,
    *,
    shuffle: bool = True,
    device: torch.device | None = None,
) -> Iterator[torch.Tensor]:
    """Training batches of ``batch_size`` indices; a last batch of one sample joins the one before
    it. BatchNorm cannot normalise a single sample in training mode once a network has pooled it
    to one value per channel (MobileNetV2 or ResNet18 on 8x8 digits), and relearning a forget
    class of 97 training samples in batches of 32 would stop the flow there."""
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    # One host-to-device copy per epoch: on CUDA a blocking .to() per batch would stall the CPU
    # until the GPU drains its queue, every step.
    if device is not None:
        order = order.to(device)
    starts = list(range(0, n, batch_size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    for i, start in enumerate(starts):
        yield order[start : starts[i + 1] if i + 1 < len(starts) else n]


def train_one_epoch(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    *,
    batch_size: int,
    generator: torch.Generator | None,
    loss_sign: float = 1.0,
) -> float:
    """One pass of cross-entropy training; ``images``/``labels`` already on the model's device.

    ``loss_sign=-1`` ascends the loss (gradient ascent, used by NegGrad). Returns the mean loss.
    """
    model.train()
    device = images.device
    total, count = torch.zeros((), device=device), 0
    for batch in iterate_batches(len(images), batch_size, generator, device=device):
        x, y = images[batch], labels[batch]
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(x), y)
        (loss_sign * loss).backward()
        optimizer.step()
        total += loss.detach() * len(batch)
        count += len(batch)
    return float(total) / max(count, 1)


def fit(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    config: OptimConfig,
    *,
    device: torch.device,
    generator: torch.Generator | None,
    progress: bool = False,
    description: str = "train",
) -> nn.Module:
    """Train ``model`` in place for ``config.epochs`` epochs; returns it for chaining."""
    if len(images) == 0:
        raise UnlearningInputError(f"{description}: no training samples given")
    device = resolve_device(device)
    model.to(device)
    x, y = images.to(device), labels.to(device)
    optimizer = make_optimizer(config, model.parameters())
    started = time.perf_counter()
    for epoch in range(config.epochs):
        loss = train_one_epoch(model, x, y, optimizer, batch_size=config.batch_size, generator=generator)
        _require_finite_weights(model, config, description=description, epoch=epoch)
        if progress:
            print(
                f"\r{description}: epoch {epoch + 1}/{config.epochs} loss {loss:.4f} "
                f"({time.perf_counter() - started:.1f}s)",
                end="" if epoch + 1 < config.epochs else "\n",
                file=sys.stderr,
                flush=True,
            )
    model.eval()
    return model


def _require_finite_weights(model: nn.Module, config: OptimConfig, *, description: str, epoch: int) -> None:
    """A learning rate too high for the model turns its weights into inf or NaN within a step or
    two; every later step would work on them, and fail far from the cause (scikit-learn's "Input
    X contains NaN" in the membership attack, after the evaluation)."""
    checks = [torch.isfinite(p).all() for p in model.parameters()]
    if checks and not bool(torch.stack(checks).all()):  # one synchronisation per epoch
        raise TrainingDivergedError(
            f"{description}: the model's weights became inf or NaN in epoch {epoch + 1}/{config.epochs} at "
            f"learning rate {config.lr:g} ({config.optimizer}); expected finite weights: lower the learning rate "
            f"of {description}"
        )


def inference_batch_size(device: torch.device) -> int:
    """How many samples one forward pass of inference takes on ``device``.

    On the CPU a large batch costs more than it saves: each call allocates the batch's
    activations afresh, and blocks that large are mapped from the kernel, which zero-fills every
    page (system time). Measured on 2 cores, one torch thread (benchmarks/cpu_overheads.py): 750
    28x28 images through the compact CNN took 0.52 s in one batch of 1024 and 0.27 s in batches
    of 64; 512 3x32x32 images through ResNet18 5.0 s and 4.0 s, MobileNetV2 1.7 s and 0.9 s. A
    GPU needs large batches to stay busy.
    """
    return 64 if torch.device(device).type == "cpu" else 1024  # "cpu" as text too, as torch takes it


@torch.inference_mode()
def predict_logits(
    model: nn.Module, images: torch.Tensor, *, device: torch.device, batch_size: int | None = None
) -> torch.Tensor:
    """Logits for ``images`` in eval() mode, on CPU; restores the model's previous mode.
    ``batch_size`` defaults to :func:`inference_batch_size` for ``device``."""
    batch_size = batch_size or inference_batch_size(device)
    with in_eval_mode(model):
        out = [model(images[s : s + batch_size].to(device)).float().cpu() for s in range(0, len(images), batch_size)]
    if not out:
        return torch.empty(0, 0)
    return torch.cat(out)
