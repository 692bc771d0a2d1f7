"""Relearn time: how fast does fine-tuning on forget data bring the forget classes back?

A model that only hides the forget classes relearns them in a few steps; a model that never
knew them (the retrained reference) takes longer. The anamnesis index (Chundawat et al. 2023)
is the ratio of the two: near or above 1 is good forgetting.
"""

from __future__ import annotations

import torch
from torch import nn

from unsir.configs import OptimConfig
from unsir.models import working_copy
from unsir.training import iterate_batches, make_optimizer, predict_logits


def relearn_steps(
    model: nn.Module,
    forget_train_images: torch.Tensor,
    forget_train_labels: torch.Tensor,
    forget_test_images: torch.Tensor,
    forget_test_labels: torch.Tensor,
    *,
    target_accuracy: float,
    config: OptimConfig,
    max_steps: int,
    device: torch.device,
    generator: torch.Generator,
) -> int:
    """Optimiser steps of fine-tuning on forget-train data until forget-test accuracy reaches
    ``target_accuracy``; ``max_steps`` if it never does. ``model`` is left untouched."""
    working = working_copy(model, device)
    optimizer = make_optimizer(config, working.parameters())
    x, y = forget_train_images.to(device), forget_train_labels.to(device)

    def reached() -> bool:
        preds = predict_logits(working, forget_test_images, device=device).argmax(1)
        return float((preds == forget_test_labels.cpu()).float().mean()) >= target_accuracy

    steps = 0
    if reached():
        return 0
    while steps < max_steps:
        for batch in iterate_batches(len(x), config.batch_size, generator):
            working.train()
            optimizer.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(working(x[batch.to(device)]), y[batch.to(device)]).backward()
            optimizer.step()
            steps += 1
            if reached():
                return steps
            if steps >= max_steps:
                break
    return max_steps
