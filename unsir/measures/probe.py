"""Shallow-forgetting check: can a linear probe on the penultimate features find the forget
classes again? If only the classifier head was disturbed, it can ("An Illusion of
Unlearning?", 2026). The retrained model's probe accuracy is the reference."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

from unsir.models import penultimate_features


def linear_probe_forget_accuracy(
    model: nn.Module,
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    forget_classes: tuple[int, ...],
    *,
    device: torch.device,
    seed: int = 0,
) -> float:
    """Accuracy on forget-class test samples of a logistic-regression probe trained on all
    classes' penultimate training features."""
    scaler = StandardScaler()
    train_feats = scaler.fit_transform(penultimate_features(model, train_images, device=device).numpy())
    test_feats = scaler.transform(penultimate_features(model, test_images, device=device).numpy())
    probe = LogisticRegression(max_iter=500, random_state=seed)
    probe.fit(train_feats, train_labels.numpy())
    mask = np.isin(test_labels.numpy(), forget_classes)
    return float((probe.predict(test_feats[mask]) == test_labels.numpy()[mask]).mean())
