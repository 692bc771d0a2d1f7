"""Membership inference: does the model treat the forget-train samples as training members?

A balanced logistic regression learns to tell retain-train samples (members) from test samples
of the retain classes (non-members) from one per-sample feature of the softmax output: its
entropy, or the cross-entropy loss. Applied to the forget-train samples, the share it judges
"member" is the MIA score. Compare it with the retrained model's score, not with zero: a model
that never saw the forget classes still calls some of them members.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from unsir.errors import UnlearningInputError

MIA_FEATURES = ("entropy", "loss")


def sample_feature(logits: torch.Tensor, labels: torch.Tensor, feature: str) -> np.ndarray:
    log_probs = torch.log_softmax(logits.float(), dim=1)
    if feature == "entropy":
        values = -(log_probs.exp() * log_probs).sum(dim=1)
    elif feature == "loss":
        values = -log_probs.gather(1, labels.view(-1, 1)).squeeze(1)
    else:
        raise UnlearningInputError(f"unknown MIA feature {feature!r}; expected one of {MIA_FEATURES}")
    return values.cpu().numpy().reshape(-1, 1)


def membership_inference(
    member_logits: torch.Tensor,
    member_labels: torch.Tensor,
    nonmember_logits: torch.Tensor,
    nonmember_labels: torch.Tensor,
    target_logits: torch.Tensor,
    target_labels: torch.Tensor,
    *,
    feature: str = "entropy",
) -> float:
    """Share of the target samples (the forget-train set) the attack judges to be members."""
    if len(member_logits) == 0 or len(nonmember_logits) == 0 or len(target_logits) == 0:
        raise UnlearningInputError(
            f"membership inference needs members, non-members and targets; got "
            f"{len(member_logits)}, {len(nonmember_logits)}, {len(target_logits)} samples"
        )
    x = np.concatenate([sample_feature(member_logits, member_labels, feature), sample_feature(nonmember_logits, nonmember_labels, feature)])
    y = np.concatenate([np.ones(len(member_logits)), np.zeros(len(nonmember_logits))])
    attack = LogisticRegression(class_weight="balanced", solver="lbfgs")
    attack.fit(x, y)
    return float(attack.predict(sample_feature(target_logits, target_labels, feature)).mean())
