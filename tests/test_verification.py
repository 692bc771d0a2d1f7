"""Verified forgetting: the round loop, its zero-glance premise, the recipe's choice, the gate."""

import copy
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import unsir.methods.unsir as unsir_module
from unsir.configs import OptimConfig, UNSIRConfig, VerificationConfig
from unsir.errors import UnlearningInputError
from unsir.methods import make_method
from unsir.problem import build_task
from unsir.recipes import OFFICIAL, unsir_config_for
from unsir.splits import draw_retain_subset
from unsir.verification import ForgettingCheck, check_forgetting
from unsir_pipeline.governance.promotion import (
    GATE_FAILED_BOUNDS_TAG,
    GateInput,
    choose_registration,
    failed_bounds,
    failed_its_gate,
    gate_decision,
    registered_choice,
    retrained_candidate,
)
from unsir_pipeline.settings.config import ConfigError, load_params

CPU = torch.device("cpu")
ROOT = Path(__file__).resolve().parents[1]


def _task(digits, manifest, splits, forget):
    rows = draw_retain_subset(manifest, forget_classes=forget, per_class=50, seed=0, num_classes=10)
    return build_task(splits, digits, rows, forget)


def test_the_default_split_has_a_validation_part_that_the_task_carries(digits, digits_manifest, digits_splits):
    counts = digits_manifest["split"].value_counts()
    assert counts["val"] > 0.1 * len(digits_manifest)
    task = _task(digits, digits_manifest, digits_splits, (5,))
    assert task.validation_images is not None and (task.validation_labels == 5).sum() >= 20
    assert task.forget_train_images is None  # UNSIR's task holds no forget-class training sample


def test_the_loop_stops_at_the_first_round_that_passes(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    lenient = replace(
        UNSIRConfig(), verification=VerificationConfig(max_rounds=4, max_forget_acc=1.0, max_forget_confidence=1.0)
    )
    result = make_method("unsir", lenient).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.verified is True
    assert len(result.rounds) == 1
    assert {"val_forget_acc", "val_forget_confidence", "val_retain_acc"} <= set(result.rounds[0])
    assert result.rounds[0]["verified"] == 1.0


def test_the_loop_stops_at_its_budget_and_says_so(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    # No model gives a forget-class sample a probability below 0: the check can never pass.
    impossible = replace(
        UNSIRConfig(), polish=None, verification=VerificationConfig(max_rounds=3, max_forget_confidence=0.0)
    )
    result = make_method("unsir", impossible).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.verified is False
    assert [r["round"] for r in result.rounds] == [1, 2, 3]
    # Round r copies the noise r times as often as round 1.
    assert [r["noise_copies"] for r in result.rounds] == [5, 10, 15]


def test_without_a_validation_split_unsir_runs_one_unverified_round(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    task = replace(_task(digits, digits_manifest, digits_splits, (3,)), validation_images=None, validation_labels=None)
    result = make_method("unsir", UNSIRConfig()).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.verified is None and len(result.rounds) == 1


def test_no_step_trains_on_a_forget_class_sample(
    trained_digits_model, digits, digits_manifest, digits_splits, monkeypatch
):
    """Every tensor UNSIR trains on is D_r_sub plus noise: no row equals a forget-class sample
    of the training split or of the validation split (which is only measured)."""
    forget = (5,)
    task = _task(digits, digits_manifest, digits_splits, forget)
    forget_samples = torch.cat(
        [
            digits_splits.train_images[digits_splits.train_labels == 5],
            digits_splits.val_images[digits_splits.val_labels == 5],
        ]
    ).flatten(1)
    trained_on = []
    real_fit = unsir_module.fit

    def recording_fit(model, images, labels, *args, **kwargs):
        trained_on.append(images.detach().cpu().flatten(1))
        return real_fit(model, images, labels, *args, **kwargs)

    real_features = unsir_module.head_features

    def recording_features(model, images, **kwargs):
        trained_on.append(images.detach().cpu().flatten(1))  # what the head round's features come from
        return real_features(model, images, **kwargs)

    monkeypatch.setattr(unsir_module, "fit", recording_fit)
    monkeypatch.setattr(unsir_module, "head_features", recording_features)
    config = replace(
        UNSIRConfig(),  # with the paper's noise
        reset_forget_rows=True,  # round 1 then forgets on accuracy, so a head round follows
        head_round=OptimConfig(lr=1e-3, epochs=1),
        verification=VerificationConfig(max_rounds=3, max_forget_confidence=0.0),
    )
    result = make_method("unsir", config).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert [("head_round" in r) for r in result.rounds] == [False, True, False]  # full, head, full
    # Impair and repair per full round, the head round's features and fit, then polish epochs.
    assert len(trained_on) >= 2 * 2 + 2 + 1
    trained_on = [images for images in trained_on if images.shape[1] == forget_samples.shape[1]]
    assert len(trained_on) >= 2 * 2 + 1 + 1
    for images in trained_on:
        distances = torch.cdist(images, forget_samples)
        assert float(distances.min()) > 1e-4


def _with_head_round(**verification) -> UNSIRConfig:
    return replace(
        unsir_config_for("small_cnn", retain_per_class=50),
        head_round=OptimConfig(lr=1e-3, epochs=3),
        verification=VerificationConfig(**verification),
    )


def test_a_round_that_forgot_but_left_confidence_is_followed_by_a_head_round_then_a_full_one(
    trained_digits_model, digits, digits_manifest, digits_splits, monkeypatch
):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    trained = []
    real_fit = unsir_module.fit

    def recording_fit(model, images, labels, config, *, description, **kwargs):
        trained.append((description, type(model).__name__))
        return real_fit(model, images, labels, config, description=description, **kwargs)

    monkeypatch.setattr(unsir_module, "fit", recording_fit)
    # No probability is below 0, so every check fails; round 1 forgets on accuracy (the head reset).
    config = _with_head_round(max_rounds=4, max_forget_confidence=0.0)
    result = make_method("unsir", config).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.verified is False
    assert result.rounds[0]["val_forget_acc"] == 0.0
    # Never two head rounds in a row: one that does not verify is followed by a full round.
    assert [("head_round" in r) for r in result.rounds] == [False, True, False, True]
    head = result.rounds[1]
    assert "head_s" in head and "impair_s" not in head and "repair_s" not in head
    assert trained[:3] == [("impair", "SmallCNN"), ("repair", "SmallCNN"), ("head round", "Linear")]
    assert trained[-1] == ("polish", "SmallCNN")  # the run did not verify: the polish still runs


def test_a_round_that_still_classifies_the_forget_class_is_followed_by_a_full_round(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    # Without the head reset and at a tiny rate, round 1 leaves class 3 recognised.
    gentle = replace(
        _with_head_round(max_rounds=2),
        reset_forget_rows=False,
        impair=OptimConfig(lr=1e-7, epochs=1),
        repair=OptimConfig(lr=1e-7, epochs=1),
        polish=None,
    )
    result = make_method("unsir", gentle).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.rounds[0]["val_forget_acc"] > 0.5
    assert ["head_round" in r for r in result.rounds] == [False, False]
    assert all("impair_s" in r for r in result.rounds)


def test_a_head_round_that_verifies_ends_the_run_without_the_polish(
    trained_digits_model, digits, digits_manifest, digits_splits, monkeypatch
):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    # The validation check scripted: the parent's, round 1 forgot on accuracy only, the head round passes.
    said = iter([(1.0, 1.0), (0.0, 0.5), (0.0, 0.01)])

    def scripted(model, images, labels, forget_classes, *, device):
        forget_acc, confidence = next(said)
        return ForgettingCheck(forget_acc, confidence, retain_acc=1.0, forget_samples=1, retain_samples=1)

    monkeypatch.setattr(unsir_module, "check_forgetting", scripted)
    descriptions = []
    real_fit = unsir_module.fit

    def recording_fit(model, images, labels, config, *, description, **kwargs):
        descriptions.append(description)
        return real_fit(model, images, labels, config, description=description, **kwargs)

    monkeypatch.setattr(unsir_module, "fit", recording_fit)
    result = make_method("unsir", _with_head_round()).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    assert result.verified is True and len(result.rounds) == 2
    assert descriptions == ["impair", "repair", "head round"]
    assert "polished" not in result.rounds[-1]


def test_a_head_round_changes_the_head_alone(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    model = copy.deepcopy(trained_digits_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unsir_module.refit_head(
        model, task, OptimConfig(lr=1e-2, epochs=2), device=CPU, generator=torch.Generator().manual_seed(0)
    )
    after = model.state_dict()
    # BatchNorm's running statistics included: the features are read in eval() mode.
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"classifier.weight", "classifier.bias"}


class _TemperatureScaled(nn.Module):
    """A calibrated classifier: its forward pass divides the head's logits by a temperature."""

    def __init__(self, temperature: float) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU())
        self.head = nn.Linear(16, 10)
        self.temperature = nn.Parameter(torch.tensor(temperature))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x)) / self.temperature


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_a_head_round_trains_the_head_through_what_follows_it_in_the_forward_pass(temperature):
    """The head round fitted the head alone on the features, so a temperature-scaled model's
    head was fitted to logits the model never outputs (a temperature of 4 ignored): the head that
    comes out must be the one fitted through the model's own forward pass, the rest frozen."""
    torch.manual_seed(0)
    model = _TemperatureScaled(temperature)
    images = torch.rand(96, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(96) % 10
    task = SimpleNamespace(retain_images=images, retain_labels=labels)
    settings = OptimConfig(lr=0.1, epochs=3, batch_size=32)
    expected = copy.deepcopy(model)
    expected.body.requires_grad_(False)
    expected.temperature.requires_grad_(False)
    unsir_module.fit(expected, images, labels, settings, device=CPU, generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(model.state_dict())
    unsir_module.refit_head(model, task, settings, device=CPU, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(model.head.weight, expected.head.weight, atol=1e-6)
    assert torch.allclose(model.head.bias, expected.head.bias, atol=1e-6)
    after = model.state_dict()
    assert {k for k in before if not torch.equal(before[k], after[k])} == {"head.weight", "head.bias"}
    assert all(p.requires_grad for p in model.parameters())  # the rest was frozen for the round only


def _damaging(max_recovery_epochs: int) -> UNSIRConfig:
    # A high impair rate and a short repair leave retain accuracy below the parent's on the
    # validation split, with the forget class gone: what the recovery epochs are for.
    return replace(
        UNSIRConfig(),
        noise_copies=0,
        reset_forget_rows=True,
        polish=None,
        impair=replace(UNSIRConfig().impair, lr=0.02),
        repair=replace(UNSIRConfig().repair, lr=1e-3, epochs=1),
        verification=VerificationConfig(max_rounds=2, max_retain_drop=0.0, max_recovery_epochs=max_recovery_epochs),
    )


def test_recovery_epochs_raise_validation_retain_accuracy_and_keep_forgetting(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    task = _task(digits, digits_manifest, digits_splits, (5,))

    def run(epochs):
        return make_method("unsir", _damaging(epochs)).unlearn(
            trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
        )

    without, recovered = run(0), run(3)
    assert without.verified is True and recovered.verified is True
    last, before = recovered.rounds[-1], without.rounds[-1]
    assert before["val_retain_acc"] < last["parent_val_retain_acc"]  # the setting leaves something to recover
    assert 1 <= last["recovery_epochs"] <= 3
    assert last["recovery_kept_epoch"] >= 1
    assert last["val_retain_acc"] > before["val_retain_acc"]
    check = check_forgetting(recovered.model, digits_splits.val_images, digits_splits.val_labels, (5,), device=CPU)
    assert check.passes(VerificationConfig()) and check.retain_acc == last["val_retain_acc"]


def test_recovery_never_keeps_an_epoch_that_brings_a_forget_class_back(
    trained_digits_model, digits, digits_manifest, digits_splits, monkeypatch
):
    task = _task(digits, digits_manifest, digits_splits, (5,))
    real_fit = unsir_module.fit

    recovery_inputs = []

    def relearning_fit(model, images, labels, config, *, description, **kwargs):
        if description == "recovery":  # the parent's weights: every retain sample right, class 5 back
            recovery_inputs.append(images)
            model.load_state_dict(trained_digits_model.state_dict())
            return model
        return real_fit(model, images, labels, config, description=description, **kwargs)

    monkeypatch.setattr(unsir_module, "fit", relearning_fit)
    result = make_method("unsir", _damaging(2)).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    last = result.rounds[-1]
    assert result.verified is True
    assert (last["recovery_epochs"], last["recovery_kept_epoch"]) == (2.0, 0.0)  # the budget ran out, none kept
    # Recovery trains on D_r_sub alone, like repair: no forget-class sample, no validation sample.
    assert len(recovery_inputs) == 2 and all(torch.equal(x.cpu(), task.retain_images) for x in recovery_inputs)
    check = check_forgetting(result.model, digits_splits.val_images, digits_splits.val_labels, (5,), device=CPU)
    assert check.forget_acc == 0.0 and check.retain_acc == last["val_retain_acc"]


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_rounds": 0}, r"max_rounds must be >= 1, got 0"),
        ({"max_forget_confidence": 1.5}, r"max_forget_confidence must be in \[0, 1\], got 1\.5"),
        ({"max_recovery_epochs": -1}, r"max_recovery_epochs must be >= 0, got -1"),
        ({"max_retain_drop": -0.1}, r"max_retain_drop must be in \[0, 1\], got -0\.1"),
    ],
)
def test_verification_settings_name_the_bad_value(settings, message):
    with pytest.raises(UnlearningInputError, match=message):
        VerificationConfig(**settings)


def test_check_forgetting_measures_confidence_not_only_accuracy(trained_digits_model, digits_splits):
    check = check_forgetting(trained_digits_model, digits_splits.val_images, digits_splits.val_labels, (3,), device=CPU)
    assert check.forget_acc > 0.8 and check.forget_confidence > 0.9
    assert not check.passes(VerificationConfig())
    # A class of 5 samples gets none of a 0.15 validation split: "give data.fractions.val > 0" was
    # no help when it already was.
    with pytest.raises(UnlearningInputError, match=r"no sample of forget classes \[3\]; .* add samples of it"):
        keep = digits_splits.val_labels != 3
        check_forgetting(
            trained_digits_model, digits_splits.val_images[keep], digits_splits.val_labels[keep], (3,), device=CPU
        )


def test_the_recipe_follows_the_architecture_and_the_retain_subset():
    # The shipped choice: no noise, the forget classes' head rows re-drawn (measured better on
    # the tuning half); with the noise, the paper's method leaves the head alone.
    shipped = unsir_config_for("small_cnn", retain_per_class=50)
    assert shipped.noise_copies == 0 and shipped.reset_forget_rows
    # The compact schedule chosen on the tuning half: 1 impair, 2 repair, 1 polish epoch.
    assert shipped.polish is not None
    assert (shipped.impair.epochs, shipped.repair.epochs, shipped.polish.epochs) == (1, 2, 1)
    deep = unsir_config_for("mobilenet_v2", retain_per_class=50)
    assert deep.polish is not None and (deep.repair.epochs, deep.polish.epochs) == (3, 2)
    # After a round that forgot on accuracy only: the head alone, 3 epochs at 3e-3, in both families.
    assert shipped.head_round == deep.head_round == OptimConfig(lr=3e-3, epochs=3, batch_size=32)
    small = unsir_config_for("small_cnn", retain_per_class=50, with_noise=True)
    assert not small.reset_forget_rows and small.head_round is None  # measured without the noise only
    assert small.polish is not None and (small.repair.epochs, small.polish.epochs) == (3, 2)  # measured with noise
    assert (small.noise.batch_size, small.noise_copies, small.impair.lr, small.repair.lr) == (50, 5, 2e-3, 1e-3)
    assert small.noise.l2_reduction == "pixel_mean"
    # 1000 retain samples per class: the noise batch caps at 256, copies keep 5x the retain share.
    large = unsir_config_for("resnet18_cifar", retain_per_class=1000, with_noise=True)
    assert (large.noise.batch_size, large.noise_copies) == (256, 20)
    assert large.repair.lr < small.repair.lr  # deep BatchNorm networks take a gentler repair
    assert unsir_config_for("small_cnn", retain_per_class=8).noise.batch_size == 16
    with pytest.raises(UnlearningInputError, match="'vit_b16'"):
        unsir_config_for("vit_b16", retain_per_class=50)
    assert OFFICIAL.noise_copies == 20 and OFFICIAL.impair.lr == 0.02 and OFFICIAL.noise.l2_reduction == "pixel_sum"


def test_an_architecture_without_a_measurement_takes_the_family_its_depth_matches(monkeypatch):
    from torch import nn

    import unsir.recipes as recipes
    from unsir.models import ARCHITECTURES, ModelSpec, build_model

    # The rule reproduces every measured choice.
    for arch, family in recipes.ARCHITECTURE_FAMILY.items():
        assert recipes.inferred_family(build_model(ModelSpec(arch, 10, 3))) == family

    def wide_mlp(num_classes, in_channels):
        return nn.Sequential(nn.Flatten(), nn.LazyLinear(64), nn.ReLU(), nn.Linear(64, num_classes))

    def deep_plain(num_classes, in_channels):
        convs = [nn.Conv2d(in_channels, 16, 3, padding=1)] + [nn.Conv2d(16, 16, 3, padding=1) for _ in range(7)]
        return nn.Sequential(*convs, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))

    monkeypatch.setitem(ARCHITECTURES, "wide_mlp", wide_mlp)
    monkeypatch.setitem(ARCHITECTURES, "deep_plain", deep_plain)
    assert recipes.family_of("wide_mlp") == "compact" and recipes.family_of("deep_plain") == "deep"
    assert unsir_config_for("deep_plain", retain_per_class=50) == unsir_config_for("allcnn", retain_per_class=50)
    # A model of one's own, never registered, is passed itself (the library without the pipeline).
    own = deep_plain(10, 1)
    assert unsir_config_for(own, retain_per_class=50) == unsir_config_for("allcnn", retain_per_class=50)
    assert recipes.training_for(wide_mlp(10, 1)) == recipes.training_for("small_cnn")


def test_resetting_the_forget_rows_touches_nothing_else(trained_digits_model):
    model = copy.deepcopy(trained_digits_model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    unsir_module.reset_head_rows(model, (2, 7), generator=torch.Generator().manual_seed(0))
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}
    rows_changed = (before["classifier.weight"] != after["classifier.weight"]).any(dim=1)
    assert rows_changed.nonzero().flatten().tolist() == [2, 7]
    # Fresh rows are small, like nn.Linear's own initialisation, not zero.
    bound = 1 / model.classifier.in_features**0.5
    assert 0 < after["classifier.weight"][[2, 7]].abs().max() <= bound


@pytest.mark.parametrize("parametrization", ["weight_norm", "spectral_norm"])
def test_resetting_the_forget_rows_of_a_parametrized_head_takes_effect(parametrization):
    """A head under weight_norm or spectral_norm kept its forget rows' weights: the reset wrote
    into the weight its parametrization computes afresh on every read, and was lost."""
    wrap = getattr(torch.nn.utils.parametrizations, parametrization)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), wrap(nn.Linear(16, 10))).eval()
    before = model[3].weight.detach().clone()
    unsir_module.reset_head_rows(model, (2, 7), generator=torch.Generator().manual_seed(0))
    after = model[3].weight.detach()
    assert not torch.allclose(before[[2, 7]], after[[2, 7]], atol=1e-3)
    if parametrization == "weight_norm":  # spectral_norm rescales every row by the new norm
        assert torch.allclose(before[[0, 1, 3, 4, 5, 6, 8, 9]], after[[0, 1, 3, 4, 5, 6, 8, 9]], atol=1e-6)
        # The effective rows are re-drawn, not the direction or the norm alone: a plain head reset
        # from the same generator gets the same rows.
        plain = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
        unsir_module.reset_head_rows(plain, (2, 7), generator=torch.Generator().manual_seed(0))
        assert torch.allclose(after[[2, 7]], plain[3].weight.detach()[[2, 7]], atol=1e-6)


def test_params_yaml_runs_the_measured_recipe_and_explicit_settings_win():
    params = load_params(ROOT / "params.yaml")
    assert params.unsir_config() == unsir_config_for(params.model.arch, retain_per_class=params.data.retain_per_class)
    changed = load_params(ROOT / "params.yaml", ["unlearn.noise_copies=9", "unlearn.verification.max_rounds=2"])
    assert changed.unsir_config().noise_copies == 9 and changed.unsir_config().verification.max_rounds == 2
    official = load_params(ROOT / "params.yaml", ["unlearn.recipe=official"])
    assert official.unsir_config().impair == OFFICIAL.impair
    noisy = load_params(ROOT / "params.yaml", ["unlearn.recipe=measured_with_noise"])
    assert noisy.unsir_config().noise_copies == 5 and params.unsir_config().noise_copies == 0
    assert params.unsir_config().reset_forget_rows and not noisy.unsir_config().reset_forget_rows
    kept = load_params(ROOT / "params.yaml", ["unlearn.reset_forget_rows=false"])
    assert not kept.unsir_config().reset_forget_rows
    head = load_params(ROOT / "params.yaml", ['unlearn.head_round={"lr": 0.01, "epochs": 5}'])
    assert head.unsir_config().head_round == OptimConfig(lr=0.01, epochs=5)
    assert params.unsir_config().head_round is not None and OFFICIAL.head_round is None
    lower = load_params(ROOT / "params.yaml", ["unlearn.frozen_lower_layers=0.5"])
    assert lower.unsir_config().frozen_lower_layers == 0.5 and params.unsir_config().frozen_lower_layers == 0.0
    assert lower.digest() != params.digest()  # and params that leave it out keep their digest (test_config)
    with pytest.raises(ConfigError, match=r"unlearn\.frozen_lower_layers: Input should be less than 1, got 1\.5"):
        load_params(ROOT / "params.yaml", ["unlearn.frozen_lower_layers=1.5"])


def _gate_ws():
    return SimpleNamespace(params=load_params(ROOT / "params.yaml"))


def _metrics(**changes):
    metrics = {
        "forget_acc": 0.0,
        "retain_acc": 0.99,
        "original_retain_acc": 0.995,
        "mia": 0.02,
        "reference_mia": 0.03,
        "reference_retain_acc": 0.995,
    }
    metrics.update(changes)
    return metrics


def _candidate(metrics, per_class=None, verified=True):
    per_class = per_class or [0.99] * 10
    return GateInput(metrics=metrics, per_class_test=per_class, forget_classes=[3], verified=verified, rounds=1)


def test_the_gate_passes_a_model_that_forgot_and_matches_retraining():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(), per_class), set())
    assert ok, reasons


def test_the_gate_refuses_a_model_that_still_classifies_the_forget_class_whatever_its_mia():
    # MIA identical to the retrained model's, yet the class is still classified at 59%.
    per_class = [0.99] * 10
    per_class[3] = 0.59
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(forget_acc=0.59, mia=0.03), per_class), set())
    assert not ok
    assert any(r.startswith("FAIL: membership inference") and "still classified" in r for r in reasons)


def test_the_gate_judges_mia_against_the_retrained_model_not_zero():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    # Retraining itself scores 0.30: an unlearned model at 0.28 is as good as it gets.
    ok, _ = gate_decision(_gate_ws(), _candidate(_metrics(mia=0.28, reference_mia=0.30), per_class), set())
    assert ok
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(mia=0.40, reference_mia=0.30), per_class), set())
    assert not ok and any("FAIL: membership inference" in r for r in reasons)
    assert any(r.endswith("; more member-like than the retrained model") for r in reasons)


def test_a_held_mia_says_which_way_it_missed_and_what_unseen_samples_read():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    # Less member-like than retraining, reading like unseen samples of the class (class 1 on digits).
    less = _metrics(mia=0.0, reference_mia=0.29, mia_forget_holdout=0.0)
    ok, reasons = gate_decision(_gate_ws(), _candidate(less, per_class), set())
    (mia,) = [r for r in reasons if "membership inference" in r]
    assert not ok and mia.startswith("FAIL: ")
    assert mia.endswith(
        "; less member-like than the retrained model (its forget-train samples read 0.0000, "
        "unseen forget-class validation samples 0.0000)"
    )
    # A passing bound says nothing of direction.
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(mia=0.28, reference_mia=0.30), per_class), set())
    assert ok and not any("member-like" in r for r in reasons)


def test_a_held_mia_says_how_well_the_attack_tells_members_apart():
    """On mnist5k the attack could not tell the retrained model's members from non-members and
    its MIA ran 0.000 to 0.978 across classes: a reviewer of a held version sees that."""
    per_class = [0.99] * 10
    per_class[3] = 0.0
    for mia, direction in ((0.0, "less"), (0.9, "more")):
        held = _metrics(mia=mia, reference_mia=0.5, reference_mia_attack_power=0.514)
        ok, reasons = gate_decision(_gate_ws(), _candidate(held, per_class), set())
        (line,) = [r for r in reasons if "membership inference" in r]
        assert not ok and f"; {direction} member-like than the retrained model" in line
        assert line.endswith("; the attack's balanced accuracy on the retrained model: 0.51 (0.5: none)")


def _without_reference(**changes):
    metrics = _metrics(**changes)
    del metrics["reference_mia"], metrics["reference_retain_acc"]
    return metrics


def test_without_a_reference_mia_is_judged_against_forget_class_validation_samples():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    sizes = {"mia_forget_train_samples": 100.0, "mia_forget_holdout_samples": 27.0}
    # Retain-class non-members read ~0.85 "member" on digits; forget-class samples nobody
    # trained on read like the forget-train samples of a model that forgot them. That passes.
    same = _without_reference(mia=0.03, mia_forget_holdout=0.0, mia_nonmember_rate=0.85, **sizes)
    ok, reasons = gate_decision(_gate_ws(), _candidate(same, per_class), set())
    assert ok, reasons
    assert any("forget-class validation samples, n=27" in r for r in reasons)
    # Forget-train samples read far more "member" than unseen samples of their class: held.
    leaks = _without_reference(mia=0.60, mia_forget_holdout=0.10, **sizes)
    ok, reasons = gate_decision(_gate_ws(), _candidate(leaks, per_class), set())
    assert not ok and any(r.startswith("FAIL: membership inference 0.6000 vs 0.1000") for r in reasons)
    # The allowance widens with sampling error: the same gap over 10x the samples is held.
    gap = {"mia": 0.20, "mia_forget_holdout": 0.05}
    ok_small, _ = gate_decision(_gate_ws(), _candidate(_without_reference(**gap, **sizes), per_class), set())
    big = {"mia_forget_train_samples": 1000.0, "mia_forget_holdout_samples": 270.0}
    ok_big, _ = gate_decision(_gate_ws(), _candidate(_without_reference(**gap, **big), per_class), set())
    assert ok_small and not ok_big
    # Nothing to compare with: held, and the reason says what to turn on.
    ok, reasons = gate_decision(_gate_ws(), _candidate(_without_reference(), per_class), set())
    assert not ok and any("nothing to be compared with" in r and "retrain_reference" in r for r in reasons)


def test_the_gate_holds_a_version_that_would_bring_a_deleted_class_back():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(), per_class), {2, 6})
    assert not ok
    assert any("still classified: [2, 6]" in r for r in reasons)


def test_the_gate_holds_a_version_whose_budget_ran_out():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(), per_class, verified=False), set())
    assert not ok and any("round budget ran out" in r for r in reasons)


def test_a_class_never_requested_is_not_a_deletion_even_when_measured_at_zero():
    from unsir_pipeline.adapters.registry import VersionInfo
    from unsir_pipeline.governance.promotion import deletions_done

    # Asked to forget 3; class 1, a hard one, also scored 0 on the test split.
    tags = {"forgotten_classes": "[3]", "verified_forgotten_classes": "[1, 3]", "gate_decision": "promoted"}
    promoted = VersionInfo(2, ("champion",), tags, None, "", "READY")
    assert deletions_done([promoted]) == {3: [2]}
    # So a later version that learns class 1 is not held for bringing a deletion back.
    per_class = [0.99] * 10
    per_class[3] = 0.0
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(), per_class), set(deletions_done([promoted])))
    assert ok, reasons


def test_the_gate_does_not_claim_a_check_that_had_no_validation_split():
    per_class = [0.99] * 10
    per_class[3] = 0.0
    ok, reasons = gate_decision(_gate_ws(), _candidate(_metrics(), per_class, verified=None), set())
    assert ok and not any("verified on the validation split" in r for r in reasons)
    assert "pass: forgetting not checked on a validation split (there is none): judged on the test split" in reasons


def _held_unsir_and_retrained():
    """A UNSIR model that forgot class 3 but reads less member-like than retraining (held), and
    the retrained reference beside it, whose measures carry the ``reference_`` prefix."""
    per_class = [0.99] * 10
    per_class[3] = 0.0
    metrics = _metrics(
        mia=0.0,
        reference_mia=0.29,
        mia_forget_holdout=0.0,
        reference_forget_acc=0.0,
        reference_mia_forget_holdout=0.27,
        reference_mia_forget_train_samples=100.0,
        reference_mia_forget_holdout_samples=27.0,
    )
    unsir = _candidate(metrics, per_class)
    retrained_per_class = [0.995] * 10
    retrained_per_class[3] = 0.0
    return unsir, retrained_candidate(unsir, retrained_per_class)


def test_the_retrained_reference_is_judged_on_its_own_measures_against_unseen_samples():
    unsir, retrained = _held_unsir_and_retrained()
    assert retrained.method == "retrain" and retrained.metrics["mia"] == 0.29
    assert retrained.metrics["retain_acc"] == 0.995 and retrained.metrics["original_retain_acc"] == 0.995
    assert not any(k.startswith("reference_") for k in retrained.metrics)  # not compared with itself
    ok, reasons = gate_decision(_gate_ws(), retrained, set())
    assert ok, reasons
    assert any("vs 0.2700 (forget-class validation samples, n=27)" in r for r in reasons)
    assert "pass: exact unlearning: trained from scratch on the retain classes only" in reasons
    # A retrained model that still classifies a class a promoted version forgot is held too.
    assert not gate_decision(_gate_ws(), retrained, {5})[0]


def test_a_held_unsir_model_gives_way_to_a_retrained_reference_that_passes():
    unsir, retrained = _held_unsir_and_retrained()
    choice = choose_registration(_gate_ws(), unsir, retrained, set())
    assert choice.method == "retrain" and choice.candidate is retrained
    assert choice.unsir_gate_reasons and all(r.startswith("FAIL: ") for r in choice.unsir_gate_reasons)
    assert "less member-like than the retrained model" in choice.unsir_gate_reasons[0]
    # UNSIR's own model whenever it passes, when the fallback is off, or with no reference.
    passing = _candidate(_metrics(mia=0.28, reference_mia=0.30), unsir.per_class_test)
    assert choose_registration(_gate_ws(), passing, retrained, set()).method == "unsir"
    assert choose_registration(_gate_ws(), passing, retrained, set()).no_fallback_because == ""
    # Each way the fallback cannot happen says why, for the held version's reader.
    off = SimpleNamespace(params=load_params(ROOT / "params.yaml", ["gates.fallback_to_retrained=false"]))
    kept = choose_registration(off, unsir, retrained, set())
    assert kept.candidate is unsir and "gates.fallback_to_retrained: false" in kept.no_fallback_because
    untrained = SimpleNamespace(params=load_params(ROOT / "params.yaml", ["gates.retrain_when_held=false"]))
    alone = choose_registration(untrained, unsir, None, set())
    assert alone.unsir_gate_reasons == [] and not alone.reference_wanted
    assert "evaluation.retrain_reference: false, gates.retrain_when_held: false" in alone.no_fallback_because
    # Nor a retrained reference that fails the gate itself: UNSIR's is registered, and held.
    failing = replace(retrained, metrics={**retrained.metrics, "retain_acc": 0.90})
    held = choose_registration(_gate_ws(), unsir, failing, set())
    assert held.method == "unsir" and held.no_fallback_because.startswith("the retrained reference fails the gate too")
    assert "retain accuracy drop +0.0950" in held.no_fallback_because


def test_a_resumed_run_is_judged_by_the_model_its_earlier_attempt_registered():
    unsir, retrained = _held_unsir_and_retrained()
    # This attempt's measures would fall back, but the version holds UNSIR's weights.
    assert choose_registration(_gate_ws(), unsir, retrained, set()).method == "retrain"
    assert registered_choice({"method": "unsir", "run_key": "k"}, unsir, retrained).candidate is unsir
    earlier = {"method": "retrain", "run_key": "k", "unsir_gate_reasons": json.dumps(["FAIL: x"])}
    choice = registered_choice(earlier, unsir, retrained)
    assert choice.candidate is retrained and choice.unsir_gate_reasons == ["FAIL: x"]
    # An attempt that has not trained the reference the version holds asks for it.
    wants = registered_choice(earlier, unsir, None)
    assert wants.reference_wanted and wants.unsir_gate_reasons == []


def test_failed_bounds_are_read_from_the_gates_list_and_for_older_versions_from_its_reasons():
    """The failed bounds were recovered from the joined gate_reasons by a regex split; the gate
    now writes them as a JSON list, and the split is left only for versions judged before."""
    joined = (
        "pass: forget accuracy 0.0000 (max 0.05); FAIL: every requested and every earlier-deleted class "
        "measured forgotten; still classified: [3]; FAIL: retain accuracy drop +0.0950 (max 0.05)"
    )
    # The list is what is read, whatever the joined text says.
    written = {"gate_decision": "held", "gate_reasons": joined, GATE_FAILED_BOUNDS_TAG: json.dumps(["FAIL: x; y"])}
    assert failed_bounds(written) == ["FAIL: x; y"]
    promoted = {"gate_decision": "promoted", "gate_reasons": "pass: all", GATE_FAILED_BOUNDS_TAG: "[]"}
    assert failed_bounds(promoted) == [] and not failed_its_gate(promoted)
    # Older versions: a reason's own "; " does not split it.
    older = {"gate_decision": "promoted-by-override", "gate_reasons": joined}
    assert failed_bounds(older) == [
        "FAIL: every requested and every earlier-deleted class measured forgotten; still classified: [3]",
        "FAIL: retain accuracy drop +0.0950 (max 0.05)",
    ]
    assert failed_its_gate(older)  # an override does not erase the verdict
    assert failed_bounds({}) == [] and failed_bounds({"origin": "bootstrap"}) == []


def test_a_held_unsir_model_without_a_reference_asks_for_one_only_when_held():
    """With no reference from the evaluation, the reference is trained only when UNSIR's
    model fails the gate (``gates.retrain_when_held``), and never with the fallback off."""
    unsir, retrained = _held_unsir_and_retrained()
    wants = choose_registration(_gate_ws(), unsir, None, set())
    assert wants.reference_wanted and wants.candidate is unsir and wants.no_fallback_because == ""
    # Once trained, the choice is made as when the evaluation trained it.
    assert choose_registration(_gate_ws(), unsir, retrained, set()).method == "retrain"
    passing = _candidate(_metrics(), unsir.per_class_test)
    assert gate_decision(_gate_ws(), passing, set())[0]
    assert not choose_registration(_gate_ws(), passing, None, set()).reference_wanted  # nothing to replace
    off = SimpleNamespace(params=load_params(ROOT / "params.yaml", ["gates.fallback_to_retrained=false"]))
    assert not choose_registration(off, unsir, None, set()).reference_wanted


def _conv_net(in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    blocks = [
        nn.Sequential(nn.Conv2d(c_in, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()) for c_in in (in_channels, 8, 8, 8)
    ]
    return nn.Sequential(*blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))


def test_freezing_the_lower_layers_keeps_them_and_their_statistics_and_undoes_itself():
    from unsir.models import lower_layers_frozen
    from unsir.training import fit

    model = _conv_net()
    model[1][0].weight.requires_grad_(False)  # frozen by its user: stays frozen after the block
    images, labels = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    before = copy.deepcopy(model.state_dict())
    with lower_layers_frozen(model, images[:1], 0.5) as frozen:
        # Half the four convolutions, with the BatchNorm and ReLU between them; the head trains.
        assert frozen == [*model[0], *model[1]]
        fit(
            model,
            images,
            labels,
            OptimConfig(lr=1e-2, epochs=2, batch_size=16),
            device=CPU,
            generator=torch.Generator().manual_seed(0),
        )
    after = model.state_dict()
    for key in before:
        unchanged = torch.equal(before[key], after[key])
        assert unchanged == key.startswith(("0.", "1.")) or key.endswith("num_batches_tracked"), key
    assert model[0][0].weight.requires_grad and not model[1][0].weight.requires_grad
    assert all(not layer._forward_pre_hooks for layer in model.modules())


def test_layers_are_frozen_in_the_order_the_forward_pass_calls_them():
    from unsir.models import lower_layers_frozen

    class Reversed(nn.Module):  # registered top to bottom, called bottom to top
        def __init__(self) -> None:
            super().__init__()
            self.head = nn.Linear(8, 10)
            self.top = nn.Conv2d(8, 8, 3, padding=1)
            self.bottom = nn.Conv2d(1, 8, 3, padding=1)

        def forward(self, x):
            return self.head(self.top(self.bottom(x)).mean(dim=(2, 3)))

    model = Reversed()
    with lower_layers_frozen(model, torch.randn(1, 1, 8, 8), 0.5) as frozen:
        assert frozen == [model.bottom]
    with lower_layers_frozen(model, torch.randn(1, 1, 8, 8), 0.99) as frozen:
        assert frozen == [model.bottom]  # the head always trains, and the layer just below it


def test_unsir_with_frozen_lower_layers_leaves_them_as_the_original_learned_them(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    task = _task(digits, digits_manifest, digits_splits, (3,))
    config = replace(unsir_config_for("small_cnn", retain_per_class=50), frozen_lower_layers=0.5)
    result = make_method("unsir", config).unlearn(
        trained_digits_model, task, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    original, unlearned = trained_digits_model.state_dict(), result.model.state_dict()
    convolutions = [name for name, m in trained_digits_model.named_modules() if isinstance(m, nn.Conv2d)]
    lower = convolutions[0]  # the compact CNN's 2 convolutions and 2 linear layers: the first stays
    changed = {key for key in original if not torch.equal(original[key], unlearned[key])}
    assert changed and not any(key.startswith(f"{lower}.") for key in changed)
    assert all(p.requires_grad for p in result.model.parameters())
    assert result.verified is not None


@pytest.mark.parametrize("share", [1.0, -0.1, float("nan")])
def test_a_frozen_share_outside_zero_to_one_is_refused_naming_it(share):
    with pytest.raises(UnlearningInputError, match=r"frozen_lower_layers must be in \[0, 1\)"):
        UNSIRConfig(frozen_lower_layers=share)


def test_a_parametrized_lower_layer_is_frozen_whole():
    from torch.nn.utils.parametrizations import weight_norm

    from unsir.models import lower_layers_frozen

    model = _conv_net()
    weight_norm(model[0][0])
    with lower_layers_frozen(model, torch.randn(1, 1, 8, 8), 0.5) as frozen:
        assert model[0][0] in frozen and not any(p.requires_grad for p in model[0][0].parameters())
    assert all(p.requires_grad for p in model[0][0].parameters())
