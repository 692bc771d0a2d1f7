"""Accuracy per class and over the forget and retain classes.

Every accuracy divides by the number of samples *in the set evaluated* (the official UNSIR
code divides by the size of the whole training set).
"""

from __future__ import annotations

import numpy as np
import torch


def per_class_accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Accuracy of each class over its own samples; NaN for a class with no sample."""
    preds, labels_np = predictions.cpu().numpy(), labels.cpu().numpy()
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        mask = labels_np == c
        if mask.any():
            out[c] = float((preds[mask] == c).mean())
    return out


def group_accuracy(predictions: torch.Tensor, labels: torch.Tensor, classes: tuple[int, ...]) -> float:
    """Accuracy over the samples whose label is in ``classes`` (NaN if there are none)."""
    mask = torch.isin(labels.cpu(), torch.as_tensor(classes, dtype=labels.dtype))
    count = int(mask.sum())
    if count == 0:
        return float("nan")
    return float((predictions.cpu()[mask] == labels.cpu()[mask]).sum()) / count


def forget_retain_accuracy(
    predictions: torch.Tensor, labels: torch.Tensor, forget_classes: tuple[int, ...], num_classes: int
) -> tuple[float, float]:
    retain = tuple(c for c in range(num_classes) if c not in forget_classes)
    return group_accuracy(predictions, labels, forget_classes), group_accuracy(predictions, labels, retain)
