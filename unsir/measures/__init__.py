"""The measures that judge forgetting, defined as in ``shared/UNSIR.md``, and one function
that applies them all to a model."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import torch
from torch import nn

from unsir.classes import check_forget_classes
from unsir.configs import OptimConfig
from unsir.errors import UnlearningInputError
from unsir.measures.accuracy import forget_retain_accuracy, group_accuracy, per_class_accuracy
from unsir.measures.distance import activation_distance, js_divergence, weight_distance, zrf_score
from unsir.measures.membership import MIA_FEATURES, MembershipAttack, attack_power, membership_inference
from unsir.measures.probe import linear_probe_forget_accuracy
from unsir.measures.relearn import relearn_steps
from unsir.models import check_classifier
from unsir.training import predict_logits, resolve_device

__all__ = [
    "EvaluationConfig",
    "EvaluationData",
    "MembershipAttack",
    "ModelEvaluation",
    "activation_distance",
    "attack_power",
    "confusion_matrix",
    "evaluate_model",
    "forget_retain_accuracy",
    "group_accuracy",
    "js_divergence",
    "linear_probe_forget_accuracy",
    "membership_inference",
    "per_class_accuracy",
    "relearn_steps",
    "weight_distance",
    "zrf_score",
]


@dataclass(frozen=True)
class EvaluationData:
    """Normalised train and test tensors, and which classes count as forgotten. A validation
    split, when given, holds non-members the MIA attack is not fit on."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    forget_classes: tuple[int, ...]
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        check_forget_classes(self.forget_classes, self.num_classes)

    def mask(self, labels: torch.Tensor, forget: bool) -> torch.Tensor:
        inside = torch.isin(labels, torch.as_tensor(self.forget_classes, dtype=labels.dtype))
        return inside if forget else ~inside


@dataclass(frozen=True)
class EvaluationConfig:
    mia_feature: str = "entropy"
    probe: bool = False
    relearn: bool = False
    relearn_target_fraction: float = 0.9  # of the original model's forget-test accuracy
    relearn_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-3, batch_size=16))
    relearn_max_steps: int = 300

    def __post_init__(self) -> None:
        if self.mia_feature not in MIA_FEATURES:
            raise UnlearningInputError(f"unknown MIA feature {self.mia_feature!r}; expected one of {MIA_FEATURES}")
        if not 0 < self.relearn_target_fraction <= 1:
            raise UnlearningInputError(f"relearn_target_fraction must be in (0, 1], got {self.relearn_target_fraction}")


@dataclass
class ModelEvaluation:
    metrics: dict[str, float]
    per_class_test: list[float]
    confusion_test: list[list[int]]


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_classes: int) -> np.ndarray:
    """Rows: true class; columns: predicted class."""
    matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(matrix, (labels.cpu().numpy(), predictions.cpu().numpy()), 1)
    return matrix


def _check_relearn_data(data: EvaluationData, config: EvaluationConfig) -> None:
    """Relearn time is measured on forget-class test samples: without any, it failed deep in
    the measure (an IndexError from an empty batch of logits)."""
    if config.relearn and not bool(data.mask(data.test_labels, True).any()):
        raise UnlearningInputError(
            f"relearn time needs test samples of the forget classes {list(data.forget_classes)}; "
            "the test split has none (give some, or EvaluationConfig(relearn=False))"
        )


def evaluate_model(
    model: nn.Module,
    data: EvaluationData,
    *,
    device: torch.device,
    config: EvaluationConfig = EvaluationConfig(),
    original: nn.Module | None = None,
    reference: nn.Module | None = None,
    random_model: nn.Module | None = None,
    original_forget_acc: float | None = None,
    generator: torch.Generator | None = None,
) -> ModelEvaluation:
    """Every measure of ``model``; those needing another model run only when it is given.

    ``original``: the model before unlearning (weight distance). ``reference``: the retrained
    model (JS divergence, activation distance on D_f). ``random_model``: an untrained one (ZRF).
    """
    device = resolve_device(device)
    _check_relearn_data(data, config)
    samples = {"train": data.train_images, "test": data.test_images}
    if data.val_images is not None:
        samples["validation"] = data.val_images
    check_classifier(model, samples, data.num_classes, device=device)
    train_logits = predict_logits(model, data.train_images, device=device)
    test_logits = predict_logits(model, data.test_images, device=device)
    train_pred, test_pred = train_logits.argmax(1), test_logits.argmax(1)
    forget_acc, retain_acc = forget_retain_accuracy(test_pred, data.test_labels, data.forget_classes, data.num_classes)
    forget_acc_train, retain_acc_train = forget_retain_accuracy(
        train_pred, data.train_labels, data.forget_classes, data.num_classes
    )
    per_class = per_class_accuracy(test_pred, data.test_labels, data.num_classes)

    f_tr, r_tr = data.mask(data.train_labels, True), data.mask(data.train_labels, False)
    f_te, r_te = data.mask(data.test_labels, True), data.mask(data.test_labels, False)
    metrics = {
        "forget_acc": forget_acc,
        "retain_acc": retain_acc,
        "forget_acc_train": forget_acc_train,
        "retain_acc_train": retain_acc_train,
        "test_acc": float((test_pred == data.test_labels).float().mean()),
    }
    # Fitted once: retain-class members (train) against non-members (test), asked below of the
    # forget-train samples and of validation samples it was not fit on.
    attack = MembershipAttack(
        train_logits[r_tr],
        data.train_labels[r_tr],
        test_logits[r_te],
        data.test_labels[r_te],
        feature=config.mia_feature,
    )
    forget_train = (train_logits[f_tr], data.train_labels[f_tr])
    metrics["mia"] = attack.share_called_members(*forget_train)
    metrics["mia_unconstrained"] = attack.share_called_members(*forget_train, unconstrained=True)
    if data.val_images is not None and data.val_labels is not None:
        # The same attack on retain-class samples it was not fit on: the rate at which it calls
        # a true non-member a member. Kept for the record; it is no baseline for the forget
        # class, which a model that forgot it no longer classifies confidently (0.76-0.91 here
        # on digits against a retrained model's 0.0-0.3 on the forget class).
        r_va, f_va = data.mask(data.val_labels, False), data.mask(data.val_labels, True)
        val_logits = predict_logits(model, data.val_images, device=device)
        metrics["mia_nonmember_rate"] = attack.share_called_members(val_logits[r_va], data.val_labels[r_va])
        # How well the attack tells members from non-members at all: its balanced accuracy on
        # the retain classes, members (train) against non-members it was not fit on (validation).
        # Near 0.5 it cannot, and its verdict on the forget samples is noise (mnist5k: a model
        # that scores alike on train and test read MIA 0.000 to 0.978 across classes).
        metrics["mia_attack_power"] = attack.power(val_logits[r_va], data.val_labels[r_va])
        if bool(f_va.any()):
            # The same attack on forget-class samples nobody trained on: what it says of the
            # forget class when membership leaves no trace. Forgotten, the forget-train samples
            # should read like these (the reference when there is no retrained model).
            metrics["mia_forget_holdout"] = attack.share_called_members(val_logits[f_va], data.val_labels[f_va])
            metrics["mia_forget_holdout_samples"] = float(f_va.sum())
            metrics["mia_forget_train_samples"] = float(f_tr.sum())
    forget_train_images = data.train_images[f_tr]
    if original is not None:
        metrics["weight_distance"] = weight_distance(model, original)
    if reference is not None:
        ref_logits = predict_logits(reference, forget_train_images, device=device)
        metrics["js_to_retrain"] = js_divergence(train_logits[f_tr], ref_logits)
        metrics["activation_distance"] = activation_distance(train_logits[f_tr], ref_logits)
    if random_model is not None:
        metrics["zrf"] = zrf_score(train_logits[f_tr], predict_logits(random_model, forget_train_images, device=device))
    if config.probe:
        metrics["probe_forget_acc"] = linear_probe_forget_accuracy(
            model,
            data.train_images,
            data.train_labels,
            data.test_images,
            data.test_labels,
            data.forget_classes,
            device=device,
        )
    if config.relearn:
        if original_forget_acc is None:
            raise UnlearningInputError("relearn time needs original_forget_acc, the original model's forget accuracy")
        metrics["relearn_steps"] = float(
            relearn_steps(
                model,
                forget_train_images,
                data.train_labels[f_tr],
                data.test_images[f_te],
                data.test_labels[f_te],
                target_accuracy=config.relearn_target_fraction * original_forget_acc,
                config=config.relearn_optim,
                max_steps=config.relearn_max_steps,
                device=device,
                generator=generator if generator is not None else torch.Generator().manual_seed(0),
            )
        )
    confusion = confusion_matrix(test_pred, data.test_labels, data.num_classes)
    return ModelEvaluation(metrics, [float(v) for v in per_class], confusion.tolist())


@dataclass
class Comparison:
    """A model before and after unlearning (and optionally the retrained reference), measured
    on the same data: what every report of an unlearning run shows."""

    before: ModelEvaluation
    after: ModelEvaluation
    reference: ModelEvaluation | None = None

    @property
    def metrics(self) -> dict[str, float]:
        """The unlearned model's measures, with the original's (``original_``) and the
        reference's (``reference_``) beside them."""
        merged = {**self.after.metrics, **{f"original_{k}": v for k, v in self.before.metrics.items()}}
        if self.reference is not None:
            merged.update({f"reference_{k}": v for k, v in self.reference.metrics.items()})
            if "relearn_steps" in merged and merged.get("reference_relearn_steps"):
                merged["anamnesis"] = merged["relearn_steps"] / merged["reference_relearn_steps"]
        return merged


def compare_models(
    original: nn.Module,
    unlearned: nn.Module,
    data: EvaluationData,
    *,
    device: torch.device,
    config: EvaluationConfig = EvaluationConfig(),
    reference: nn.Module | None = None,
) -> Comparison:
    """With ``config.relearn``, the unlearned and the reference model are timed relearning to
    ``relearn_target_fraction`` of the original's forget accuracy (the original is not)."""
    _check_relearn_data(data, config)
    before = evaluate_model(original, data, device=device, config=replace(config, relearn=False))
    target = before.metrics["forget_acc"]
    return Comparison(
        before=before,
        after=evaluate_model(
            unlearned,
            data,
            device=device,
            config=config,
            original=original,
            reference=reference,
            original_forget_acc=target,
        ),
        reference=evaluate_model(reference, data, device=device, config=config, original_forget_acc=target)
        if reference is not None
        else None,
    )
