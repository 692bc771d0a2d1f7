"""Denominators and definitions of every measure, on hand-made cases."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from unsir.configs import OptimConfig
from unsir.errors import UnlearningInputError
from unsir.measures import (
    EvaluationData,
    activation_distance,
    attack_power,
    confusion_matrix,
    evaluate_model,
    forget_retain_accuracy,
    js_divergence,
    membership_inference,
    per_class_accuracy,
    relearn_steps,
    weight_distance,
)

CPU = torch.device("cpu")


def test_forget_and_retain_accuracy_divide_by_their_own_counts():
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 1, 1, 1, 2, 2, 2, 2, 0])
    forget, retain = forget_retain_accuracy(preds, labels, (0,), 3)
    assert forget == pytest.approx(1 / 3)  # 1 of the 3 class-0 samples, not of 10
    assert retain == pytest.approx(6 / 7)
    per_class = per_class_accuracy(preds, labels, 4)
    np.testing.assert_allclose(per_class[:3], [1 / 3, 1.0, 0.8])
    assert math.isnan(per_class[3])  # no sample: undefined, not 0


def test_confusion_matrix_rows_are_true_classes():
    matrix = confusion_matrix(torch.tensor([1, 1, 0]), torch.tensor([0, 1, 0]), 2)
    assert matrix.tolist() == [[1, 1], [0, 1]]


def _logits_with_entropy(n, confident):
    logits = torch.zeros(n, 4)
    logits[:, 0] = 8.0 if confident else 0.2
    return logits


def test_membership_inference_calls_confident_targets_members():
    members, nonmembers = _logits_with_entropy(50, True), _logits_with_entropy(50, False)
    labels = torch.zeros(50, dtype=torch.long)
    as_members = membership_inference(members, labels, nonmembers, labels, _logits_with_entropy(20, True), labels[:20])
    as_outsiders = membership_inference(
        members, labels, nonmembers, labels, _logits_with_entropy(20, False), labels[:20]
    )
    assert as_members == 1.0 and as_outsiders == 0.0
    loss_based = membership_inference(
        members, labels, nonmembers, labels, _logits_with_entropy(20, True), labels[:20], feature="loss"
    )
    assert loss_based == 1.0


def test_attack_power_is_one_when_members_stand_out_and_a_half_when_they_do_not():
    labels = torch.zeros(200, dtype=torch.long)
    members, outsiders = _logits_with_entropy(200, True), _logits_with_entropy(200, False)
    assert attack_power(members, labels, outsiders, labels, _logits_with_entropy(50, False), labels[:50]) == 1.0
    # Members, non-members and unseen samples drawn alike: no attack tells them apart.
    generator = torch.Generator().manual_seed(0)
    alike = [torch.randn(200, 4, generator=generator) for _ in range(3)]
    power = attack_power(alike[0], labels, alike[1], labels, alike[2], labels)
    assert 0.4 <= power <= 0.6, power


def test_js_divergence_and_activation_distance_bounds():
    a = torch.tensor([[10.0, -10.0]])
    b = torch.tensor([[-10.0, 10.0]])
    assert js_divergence(a, a) == pytest.approx(0.0, abs=1e-6)
    assert js_divergence(a, b) == pytest.approx(math.log(2), abs=1e-4)
    assert activation_distance(a, b) == pytest.approx(math.sqrt(2), abs=1e-4)


def test_weight_distance_is_relative():
    a, b = nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        a.weight.copy_(torch.tensor([[3.0, 4.0]]))
        b.weight.copy_(torch.tensor([[0.0, 0.0]]))
    assert weight_distance(a, a) == 0.0
    assert weight_distance(b, a) == pytest.approx(1.0)


def test_relearn_steps_zero_when_target_already_met_and_counts_otherwise(trained_digits_model, digits_splits):
    forget = digits_splits.train_labels == 5
    test_forget = digits_splits.test_labels == 5
    args = (
        digits_splits.train_images[forget],
        digits_splits.train_labels[forget],
        digits_splits.test_images[test_forget],
        digits_splits.test_labels[test_forget],
    )
    kwargs = {
        "config": OptimConfig(lr=1e-3, batch_size=16),
        "max_steps": 50,
        "device": CPU,
        "generator": torch.Generator().manual_seed(0),
    }
    assert relearn_steps(trained_digits_model, *args, target_accuracy=0.5, **kwargs) == 0
    fresh = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))
    steps = relearn_steps(fresh, *args, target_accuracy=0.9, **kwargs)
    assert 0 < steps <= 50
    assert all(p.grad is None for p in fresh.parameters()), "relearning must work on a copy"


def test_evaluate_model_reports_forget_retain_and_mia(trained_digits_model, digits_splits):
    data = EvaluationData(
        digits_splits.train_images,
        digits_splits.train_labels,
        digits_splits.test_images,
        digits_splits.test_labels,
        10,
        (3,),
    )
    result = evaluate_model(trained_digits_model, data, device=CPU, original=trained_digits_model)
    assert result.metrics["forget_acc"] > 0.85 and result.metrics["retain_acc"] > 0.85
    assert 0.0 <= result.metrics["mia"] <= 1.0
    assert result.metrics["weight_distance"] == 0.0
    assert len(result.per_class_test) == 10 and sum(map(sum, result.confusion_test)) == len(digits_splits.test_labels)


def test_membership_attack_without_signal_does_not_call_unsure_samples_members():
    """Members and non-members alike (both confident): the free logistic regression may learn
    that *higher* entropy means member and call every unsure forget sample a member; the
    monotone attack keeps the premise that members are fit better."""
    gen = torch.Generator().manual_seed(0)
    members = _logits_with_entropy(200, True) + 0.3 * torch.randn(200, 4, generator=gen)
    nonmembers = _logits_with_entropy(200, True) + 0.3 * torch.randn(200, 4, generator=gen)
    unsure = _logits_with_entropy(50, False)
    labels = torch.zeros(200, dtype=torch.long)
    constrained = membership_inference(members, labels, nonmembers, labels, unsure, labels[:50])
    assert constrained == 0.0


def test_monotone_threshold_separates_and_can_call_nobody_a_member():
    from unsir.measures.membership import monotone_threshold

    values = np.array([0.1, 0.2, 0.3, 0.9, 1.0, 1.1])
    members = np.array([1, 1, 1, 0, 0, 0])
    assert 0.3 <= monotone_threshold(values, members) < 0.9
    inverted = np.array([0, 0, 0, 1, 1, 1])  # members have the HIGHER values: no monotone signal
    assert monotone_threshold(values, inverted) < values.min()


def test_comparison_times_relearning_against_the_originals_forget_accuracy(trained_digits_model, digits_splits):
    """The unlearned and reference models relearn towards the original's forget accuracy; the
    original itself is not timed, and the validation split gives the attack's non-member rate."""
    import copy

    from unsir.measures import EvaluationConfig, compare_models

    data = digits_splits.evaluation_data((3,))
    assert data.val_images is not None
    damaged = copy.deepcopy(trained_digits_model)
    with torch.no_grad():
        damaged.classifier.bias[3] -= 50.0  # never predicts 3 until relearned
    comparison = compare_models(
        trained_digits_model,
        damaged,
        data,
        device=torch.device("cpu"),
        config=EvaluationConfig(relearn=True),
        reference=damaged,
    )
    m = comparison.metrics
    assert m["forget_acc"] == 0.0 and m["original_forget_acc"] > 0.8
    assert m["relearn_steps"] >= 1 and m["relearn_steps"] == m["reference_relearn_steps"]
    assert m["anamnesis"] == 1.0
    assert "original_relearn_steps" not in m
    assert 0.0 <= m["mia_nonmember_rate"] <= 1.0
    assert 0.0 <= m["mia_attack_power"] <= 1.0 and 0.0 <= m["reference_mia_attack_power"] <= 1.0
    # The forget-class validation samples: the no-reference MIA baseline, with its sample counts.
    forget_val = int((data.val_labels == 3).sum())
    assert forget_val > 0 and m["mia_forget_holdout_samples"] == forget_val
    assert m["mia_forget_train_samples"] == int((data.train_labels == 3).sum())
    assert 0.0 <= m["mia_forget_holdout"] <= 1.0


def test_training_never_hands_batchnorm_a_single_sample():
    """97 forget-train samples in batches of 32 left a last batch of one, which BatchNorm cannot
    normalise once a network has pooled it to one value per channel: relearning class 2 with
    MobileNetV2 on 8x8 digits stopped the flow. The lone sample joins the batch before it."""
    from unsir.training import fit, iterate_batches

    assert [len(b) for b in iterate_batches(97, 32, None, shuffle=False)] == [32, 32, 33]
    assert [len(b) for b in iterate_batches(96, 32, None, shuffle=False)] == [32, 32, 32]
    assert [len(b) for b in iterate_batches(1, 32, None, shuffle=False)] == [1]
    order = torch.cat(list(iterate_batches(65, 32, torch.Generator().manual_seed(0))))
    assert sorted(order.tolist()) == list(range(65))  # every sample, once
    pooled = nn.Sequential(nn.Flatten(), nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    x, y = torch.randn(97, 4), torch.arange(97) % 3
    fit(pooled, x, y, OptimConfig(lr=1e-3, epochs=1, batch_size=32), device=torch.device("cpu"), generator=None)
    steps = relearn_steps(
        pooled,
        x,
        y,
        x[:10],
        y[:10],
        target_accuracy=1.01,  # never reached: every batch is run
        config=OptimConfig(lr=1e-3, epochs=1, batch_size=32),
        max_steps=6,
        device=torch.device("cpu"),
        generator=torch.Generator().manual_seed(0),
    )
    assert steps == 6


def test_relearn_time_without_forget_class_test_samples_is_refused_before_any_compute(
    trained_digits_model, digits_splits
):
    """Before: IndexError "argmax(): Expected reduction dim 1 to have non-zero size" once the
    original had been evaluated."""
    from dataclasses import replace

    from unsir.measures import EvaluationConfig, compare_models

    data = digits_splits.evaluation_data((3,))
    keep = data.test_labels != 3
    data = replace(data, test_images=data.test_images[keep], test_labels=data.test_labels[keep])
    config = EvaluationConfig(relearn=True)
    expected = r"relearn time needs test samples of the forget classes \[3\]; the test split has none"
    with pytest.raises(UnlearningInputError, match=expected):
        compare_models(trained_digits_model, trained_digits_model, data, device=CPU, config=config)
    with pytest.raises(UnlearningInputError, match=expected):
        evaluate_model(trained_digits_model, data, device=CPU, config=config, original_forget_acc=0.9)
    assert "relearn_steps" not in evaluate_model(trained_digits_model, data, device=CPU).metrics
