"""Error-maximising noise (UNSIR step 1), learned without touching the model.

For each forget class c a tensor N_c of shape (B, C, H, W) in the model's normalised input
space, initialised from a standard normal, minimises

    L(N_c) = -CE(f(N_c), c) + l2_weight * R(N_c)

with the model frozen in eval() mode. ``R`` is the squared L2 norm of each noise sample,
averaged over the batch, reduced over pixels either by a *mean* (``pixel_mean``, our default:
its scale does not depend on resolution) or by a *sum* (``pixel_sum``, the official code: at
3x32x32 the paper's lambda=0.1 equals pixel_mean with l2_weight=307.2, and at 224 px the
cross-entropy term becomes negligible).

What the public code gets wrong and this module does not: the model stays in eval() mode so
BatchNorm uses (and keeps) its running statistics; parameters get no gradient, so nothing
leaks into the first impair step; the mode and ``requires_grad`` flags are restored after.
"""

from __future__ import annotations

import torch
from torch import nn

from unsir.configs import NoiseConfig
from unsir.errors import UnlearningInputError
from unsir.training import in_eval_mode


def noise_regularizer(noise: torch.Tensor, reduction: str) -> torch.Tensor:
    """Squared L2 norm per sample (reduced over pixels by mean or sum), averaged over the batch."""
    squared = noise.pow(2).flatten(1)
    per_sample = squared.mean(dim=1) if reduction == "pixel_mean" else squared.sum(dim=1)
    return per_sample.mean()


def learn_error_maximizing_noise(
    model: nn.Module,
    forget_classes: tuple[int, ...],
    input_shape: tuple[int, int, int],
    config: NoiseConfig,
    *,
    device: torch.device,
    generator: torch.Generator,
) -> dict[int, torch.Tensor]:
    """One learned noise tensor per forget class, each of shape (batch_size, *input_shape).

    All classes are optimised in one batched forward pass. The loss is the *sum* of the
    per-class losses, so each class's tensor receives exactly the gradient it would get if
    optimised alone (Adam's update is per element), at a fraction of the cost.
    """
    if not forget_classes:
        raise UnlearningInputError("no forget class given; expected at least one class index")
    if len(input_shape) != 3 or any(int(d) <= 0 for d in input_shape):
        raise UnlearningInputError(f"input_shape must be (C, H, W) with positive sizes, got {input_shape}")
    k, b = len(forget_classes), config.batch_size
    init = torch.randn((k, b, *input_shape), generator=generator)
    # In the dtype of the model's parameters, which its inputs have (unsir.models.check_classifier):
    # a float64 model failed on float32 noise. Drawn in float32 first, so a seed gives the same noise.
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), init.dtype)
    noise = init.to(device, dtype).requires_grad_(True)
    targets = torch.as_tensor(forget_classes, device=device).repeat_interleave(b)
    optimizer = torch.optim.Adam([noise], lr=config.lr)

    grad_flags = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        with in_eval_mode(model):
            for _ in range(config.steps):
                optimizer.zero_grad(set_to_none=True)
                logits = model(noise.view(k * b, *input_shape))
                ce = nn.functional.cross_entropy(logits, targets, reduction="none").view(k, b).mean(dim=1)
                reg = torch.stack([noise_regularizer(noise[i], config.l2_reduction) for i in range(k)])
                loss = (-ce + config.l2_weight * reg).sum()
                loss.backward()
                optimizer.step()
    finally:
        for p, flag in zip(model.parameters(), grad_flags, strict=True):
            p.requires_grad_(flag)
    learned = noise.detach()
    return {int(c): learned[i] for i, c in enumerate(forget_classes)}


def build_impair_set(
    noise: dict[int, torch.Tensor],
    retain_images: torch.Tensor,
    retain_labels: torch.Tensor,
    *,
    copies: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """D_r_sub united with ``copies`` copies of *every* sample of every noise tensor.

    Each noise sample is labelled with its own forget class (the official code labels them all
    class 0 and copies only 3 of 256 samples).
    """
    if copies < 0:
        raise UnlearningInputError(f"noise copies must be >= 0, got {copies}")
    device = retain_images.device
    parts_x, parts_y = [retain_images], [retain_labels]
    for cls, tensor in noise.items():
        if tuple(tensor.shape[1:]) != tuple(retain_images.shape[1:]):
            raise UnlearningInputError(
                f"noise for class {cls} has sample shape {tuple(tensor.shape[1:])}, "
                f"retain images have {tuple(retain_images.shape[1:])}"
            )
        if copies:
            parts_x.append(tensor.to(device).repeat(copies, 1, 1, 1))
            parts_y.append(torch.full((copies * tensor.shape[0],), cls, dtype=retain_labels.dtype, device=device))
    return torch.cat(parts_x), torch.cat(parts_y)
