"""Membership inference: does the model treat the forget-train samples as training members?

A balanced logistic regression learns to tell retain-train samples (members) from test samples
of the retain classes (non-members) from one per-sample feature of the softmax output: its
entropy, or the cross-entropy loss. Applied to the forget-train samples, the share it judges
"member" is the MIA score. Compare it with the retrained model's score, not with zero: a model
that never saw the forget classes still calls some of them members.

The attack's premise is that members are fit better: lower entropy or loss. When a model
treats members and non-members alike (digits: ~100% train and ~99% test accuracy), the fitted
coefficient can come out at ~0 with the wrong sign, and the "attack" then calls every
*high*-entropy sample a member: an unlearned model that is unsure about the forget samples
scores ~1.0, an artefact of an attack with no signal. So when the logistic regression's slope
is not negative, the attack falls back to the best monotone threshold (member iff feature <= t,
t maximising balanced accuracy, as in Yeom et al. 2018), which keeps the premise. The literal
logistic-regression value is reported beside it (``unconstrained=True``).
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


class MembershipAttack:
    """The attack fitted once on members and non-members, to be asked of several sets of samples
    (the forget-train set, held-out ones, the members themselves): the evaluation asks it five
    questions, and each used to fit it afresh."""

    def __init__(
        self,
        member_logits: torch.Tensor,
        member_labels: torch.Tensor,
        nonmember_logits: torch.Tensor,
        nonmember_labels: torch.Tensor,
        *,
        feature: str = "entropy",
    ) -> None:
        if len(member_logits) == 0 or len(nonmember_logits) == 0:
            raise UnlearningInputError(
                f"membership inference needs members and non-members; got {len(member_logits)}, "
                f"{len(nonmember_logits)} samples"
            )
        self.feature = feature
        self._members = (member_logits, member_labels)
        x = np.concatenate(
            [
                sample_feature(member_logits, member_labels, feature),
                sample_feature(nonmember_logits, nonmember_labels, feature),
            ]
        )
        y = np.concatenate([np.ones(len(member_logits)), np.zeros(len(nonmember_logits))])
        self._regression = LogisticRegression(class_weight="balanced", solver="lbfgs").fit(x, y)
        # The premise's rule, for a regression whose slope came out the wrong way (module docstring).
        self._threshold = None if self._regression.coef_[0, 0] < 0 else monotone_threshold(x[:, 0], y)

    def share_called_members(self, logits: torch.Tensor, labels: torch.Tensor, *, unconstrained: bool = False) -> float:
        """Share of these samples the attack judges to be members."""
        if len(logits) == 0:
            raise UnlearningInputError("membership inference needs target samples; got 0")
        target = sample_feature(logits, labels, self.feature)
        if unconstrained or self._threshold is None:
            return float(self._regression.predict(target).mean())
        return float((target[:, 0] <= self._threshold).mean())

    def power(self, unseen_logits: torch.Tensor, unseen_labels: torch.Tensor) -> float:
        """The attack's balanced accuracy: the share of its members it calls members, and of
        non-members it was not fit on (``unseen``) it calls non-members, averaged. 0.5 is an
        attack that cannot tell them apart, whose MIA score on the forget samples is then noise."""
        members_called = self.share_called_members(*self._members)
        return 0.5 * (members_called + 1.0 - self.share_called_members(unseen_logits, unseen_labels))


def membership_inference(
    member_logits: torch.Tensor,
    member_labels: torch.Tensor,
    nonmember_logits: torch.Tensor,
    nonmember_labels: torch.Tensor,
    target_logits: torch.Tensor,
    target_labels: torch.Tensor,
    *,
    feature: str = "entropy",
    unconstrained: bool = False,
) -> float:
    """Share of the target samples (the forget-train set) the attack judges to be members."""
    if len(member_logits) == 0 or len(nonmember_logits) == 0 or len(target_logits) == 0:
        raise UnlearningInputError(
            f"membership inference needs members, non-members and targets; got "
            f"{len(member_logits)}, {len(nonmember_logits)}, {len(target_logits)} samples"
        )
    attack = MembershipAttack(member_logits, member_labels, nonmember_logits, nonmember_labels, feature=feature)
    return attack.share_called_members(target_logits, target_labels, unconstrained=unconstrained)


def attack_power(
    member_logits: torch.Tensor,
    member_labels: torch.Tensor,
    nonmember_logits: torch.Tensor,
    nonmember_labels: torch.Tensor,
    unseen_logits: torch.Tensor,
    unseen_labels: torch.Tensor,
    *,
    feature: str = "entropy",
) -> float:
    """:meth:`MembershipAttack.power` of the attack fitted on these members and non-members."""
    attack = MembershipAttack(member_logits, member_labels, nonmember_logits, nonmember_labels, feature=feature)
    return attack.power(unseen_logits, unseen_labels)


def monotone_threshold(values: np.ndarray, is_member: np.ndarray) -> float:
    """The t maximising balanced accuracy of the rule "member iff value <= t"."""
    order = np.argsort(values, kind="stable")
    sorted_values, sorted_members = values[order], is_member[order]
    members, nonmembers = sorted_members.sum(), (1 - sorted_members).sum()
    # Cutting after position i calls samples 0..i members.
    tpr = np.cumsum(sorted_members) / members
    tnr = 1 - np.cumsum(1 - sorted_members) / nonmembers
    score = (tpr + tnr) / 2
    # Only cut between distinct values, and allow calling nobody a member (t below the minimum).
    distinct = np.r_[sorted_values[1:] != sorted_values[:-1], True]
    score = np.where(distinct, score, -1.0)
    best = int(np.argmax(score))
    if score[best] <= 0.5:
        return float(sorted_values[0]) - 1.0
    return float(sorted_values[best])
