"""Distances between models' outputs and weights.

- JS divergence and activation distance to the retrained model on D_f: how far the unlearned
  model's behaviour on the forget samples is from the gold standard's (0 is identical).
- ZRF (Chundawat et al. 2023): 1 - mean JS divergence to a randomly initialised model on D_f;
  close to 1 means the forget samples get outputs as uninformative as a random model's.
- Weight distance: how far the unlearning moved the parameters from the original.
"""

from __future__ import annotations

import torch
from torch import nn


def js_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean over samples of the Jensen-Shannon divergence (natural log, in [0, ln 2])."""
    p, q = torch.softmax(logits_p.float(), 1), torch.softmax(logits_q.float(), 1)
    m = 0.5 * (p + q)

    def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a * (a.clamp_min(1e-12).log() - b.clamp_min(1e-12).log())).sum(1)

    return float((0.5 * kl(p, m) + 0.5 * kl(q, m)).mean())


def activation_distance(logits_p: torch.Tensor, logits_q: torch.Tensor) -> float:
    """Mean L2 distance between the two models' softmax outputs."""
    return float((torch.softmax(logits_p.float(), 1) - torch.softmax(logits_q.float(), 1)).norm(dim=1).mean())


def zrf_score(logits_model: torch.Tensor, logits_random: torch.Tensor) -> float:
    return 1.0 - js_divergence(logits_model, logits_random)


def weight_distance(model_a: nn.Module, model_b: nn.Module) -> float:
    """L2 norm of the difference of all parameters, relative to the norm of ``model_b``'s."""
    diff, base = 0.0, 0.0
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        diff += float((pa.detach().cpu() - pb.detach().cpu()).pow(2).sum())
        base += float(pb.detach().cpu().pow(2).sum())
    return (diff / max(base, 1e-12)) ** 0.5
