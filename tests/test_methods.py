import contextlib
import copy
import re
from dataclasses import replace

import pytest
import torch

from unsir.configs import OptimConfig, UNSIRConfig, VerificationConfig
from unsir.errors import TrainingDivergedError, UnlearningInputError
from unsir.measures import evaluate_model
from unsir.methods import METHODS, UnlearningTask, make_method
from unsir.problem import build_task
from unsir.recipes import unsir_config_for
from unsir.splits import draw_retain_subset

CPU = torch.device("cpu")
FAST = UNSIRConfig()  # the shipped digits recipe


def _seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _task(digits, manifest, splits, forget, per_class=50, **kwargs):
    rows = draw_retain_subset(manifest, forget_classes=forget, per_class=per_class, seed=0, num_classes=10)
    return build_task(splits, digits, rows, forget, **kwargs)


def test_every_method_is_registered_by_name():
    assert {"unsir", "noise_free", "retrain", "finetune", "neggrad", "random_labels"} <= set(METHODS)
    with pytest.raises(UnlearningInputError, match="unknown unlearning method 'magic'"):
        make_method("magic")
    with pytest.raises(UnlearningInputError, match="no settings"):
        make_method("unsir", noise_cpies=3)


@pytest.mark.parametrize("forget", [(3,), (3, 8)])
def test_unsir_forgets_and_keeps_retain_accuracy(trained_digits_model, digits, digits_manifest, digits_splits, forget):
    task = _task(digits, digits_manifest, digits_splits, forget)
    before = evaluate_model(trained_digits_model, digits_splits.evaluation_data(forget), device=CPU).metrics
    result = make_method("unsir", FAST).unlearn(trained_digits_model, task, device=CPU, generator=_seeded(0))
    after = evaluate_model(result.model, digits_splits.evaluation_data(forget), device=CPU).metrics
    assert before["forget_acc"] > 0.85
    assert after["forget_acc"] < 0.10
    assert after["retain_acc"] > before["retain_acc"] - 0.05
    assert {"noise_s", "impair_s", "repair_s", "verify_s"} <= set(result.timings_s)
    assert result.verified is True and 1 <= len(result.rounds) <= 4
    assert sorted(result.noise) == list(forget)


def test_unlearning_leaves_the_original_model_untouched(trained_digits_model, digits, digits_manifest, digits_splits):
    before = {k: v.clone() for k, v in trained_digits_model.state_dict().items()}
    task = _task(digits, digits_manifest, digits_splits, (1,))
    make_method("unsir", FAST).unlearn(trained_digits_model, task, device=CPU, generator=_seeded(0))
    assert all(torch.equal(before[k], v) for k, v in trained_digits_model.state_dict().items())


def test_an_impair_rate_that_blows_the_weights_up_is_named_where_it_happens(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    """`--set 'unlearn.impair={lr: 1.0e+30, epochs: 1}'` turned every weight into NaN; the run went
    on and failed in the evaluation with scikit-learn's "Input X contains NaN", naming no setting."""
    task = _task(digits, digits_manifest, digits_splits, (1,))
    config = replace(FAST, impair=OptimConfig(lr=1e30, epochs=1, batch_size=32))
    with pytest.raises(TrainingDivergedError) as diverged:
        make_method("unsir", config).unlearn(trained_digits_model, task, device=CPU, generator=_seeded(0))
    assert str(diverged.value) == (
        "impair: the model's weights became inf or NaN in epoch 1/1 at learning rate 1e+30 (adam); expected "
        "finite weights: lower the learning rate of impair"
    )


def test_same_seed_gives_same_unlearned_model(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (6,))

    def run(seed):
        result = make_method("unsir", FAST).unlearn(trained_digits_model, task, device=CPU, generator=_seeded(seed))
        model = result.model
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


def test_same_seed_gives_same_model_with_dropout_whatever_the_global_generator(digits, digits_manifest, digits_splits):
    # AllCNN has dropout, which draws from torch's global generator: the flow and the DVC stage
    # reach UNSIR with different global states, and must still get the same weights.
    from unsir.models import ModelSpec, build_model

    task = _task(digits, digits_manifest, digits_splits, (6,))
    torch.manual_seed(0)
    model = build_model(ModelSpec("allcnn", 10, 1, {"width": 8}))
    config = replace(FAST, reset_forget_rows=True)

    def run(global_seed):
        torch.manual_seed(global_seed)
        before = torch.random.get_rng_state()
        result = make_method("unsir", config).unlearn(model, task, device=CPU, generator=_seeded(4))
        assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left alone
        return torch.cat([p.detach().flatten() for p in result.model.parameters()])

    assert torch.equal(run(1), run(2))


@pytest.mark.parametrize("name", ["retrain", "finetune", "neggrad", "random_labels", "noise_free"])
def test_baselines_run_behind_the_same_interface(trained_digits_model, digits, digits_manifest, digits_splits, name):
    task = _task(digits, digits_manifest, digits_splits, (2,), with_baseline_data=True)
    # Retraining shortened; gradient ascent at a rate that moves a trained model in one epoch (its
    # default, 1e-4, moved it only through a last batch of one sample, which training no longer makes).
    overrides = {
        "retrain": {"train": OptimConfig(lr=2e-3, epochs=2, batch_size=64)},
        "neggrad": {"train": OptimConfig(lr=1e-3, epochs=1, batch_size=32)},
    }.get(name, {})
    result = make_method(name, **overrides).unlearn(trained_digits_model, task, device=CPU, generator=_seeded(0))
    assert result.wall_s > 0 and result.model is not trained_digits_model
    original = trained_digits_model.state_dict()
    assert any(not torch.equal(original[k], v) for k, v in result.model.state_dict().items()), "weights unchanged"
    data = digits_splits.evaluation_data((2,))
    before = evaluate_model(trained_digits_model, data, device=CPU).metrics["forget_acc"]
    after = evaluate_model(result.model, data, device=CPU).metrics["forget_acc"]
    assert after < before, f"{name}: forget accuracy {before} -> {after}"
    if name == "retrain":  # never saw class 2
        assert after == 0.0


def test_device_may_be_given_as_text_as_torch_takes_it(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (3,), with_baseline_data=True)
    assert (
        "forget_acc" in evaluate_model(trained_digits_model, digits_splits.evaluation_data((3,)), device="cpu").metrics
    )
    for method in (make_method("unsir", FAST), make_method("finetune")):
        assert method.unlearn(trained_digits_model, task, device="cpu", generator=_seeded(0)).wall_s > 0


def test_baselines_needing_more_data_say_so(trained_digits_model, digits, digits_manifest, digits_splits):
    task = _task(digits, digits_manifest, digits_splits, (2,))
    with pytest.raises(UnlearningInputError, match="forget_train_images"):
        make_method("neggrad").unlearn(trained_digits_model, task, device=CPU, generator=torch.Generator())


class ForwardCounter:
    def __init__(self, model):
        self.calls = 0
        model.register_forward_hook(self.hook)

    def hook(self, *_):
        self.calls += 1


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"lr": 0.0}, r"lr must be a finite number > 0, got 0\.0"),
        ({"epochs": -1}, r"epochs must be >= 0, got -1"),
        ({"optimizer": "rmsprop"}, r"optimizer must be 'adam' or 'sgd', got 'rmsprop'"),
        ({"weight_decay": -0.1}, r"weight_decay must be a finite number >= 0, got -0\.1"),
    ],
)
def test_optimiser_settings_name_the_bad_value(settings, message):
    with pytest.raises(UnlearningInputError, match=message):
        OptimConfig(**settings)


@pytest.mark.parametrize(
    ("forget", "retain_x", "retain_y", "message"),
    [
        ((12,), torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 4]), "unknown forget class 12"),
        (tuple(range(10)), torch.zeros(4, 1, 8, 8), torch.tensor([0, 1, 2, 4]), "every one of the 10 classes"),
        ((3,), torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long), "retain subset is empty"),
        ((3,), torch.zeros(4, 1, 8, 8), torch.tensor([0, 3, 2, 4]), r"samples of forget classes \[3\]"),
        ((3,), torch.zeros(4, 8, 8), torch.tensor([0, 1, 2, 4]), r"shape \(N, C, H, W\)"),
        ((3,), torch.zeros(4, 1, 8), torch.tensor([0, 1, 2, 4]), r"shape \(N, C, H, W\)"),
    ],
)
def test_bad_input_fails_before_any_compute(trained_digits_model, forget, retain_x, retain_y, message):
    import copy

    model = copy.deepcopy(trained_digits_model)
    counter = ForwardCounter(model)
    task = UnlearningTask(forget_classes=forget, num_classes=10, retain_images=retain_x, retain_labels=retain_y)
    with pytest.raises(UnlearningInputError, match=message):
        make_method("unsir", FAST).unlearn(model, task, device=CPU, generator=torch.Generator())
    assert counter.calls == 0


def test_wrong_input_shape_for_the_model_is_a_clear_error(trained_digits_model):
    task = UnlearningTask(
        forget_classes=(3,),
        num_classes=10,
        retain_images=torch.zeros(4, 3, 8, 8),
        retain_labels=torch.tensor([0, 1, 2, 4]),
    )
    with pytest.raises(UnlearningInputError, match=r"cannot take retain subset samples of shape \(3, 8, 8\)"):
        make_method("unsir", FAST).unlearn(trained_digits_model, task, device=CPU, generator=torch.Generator())


def test_class_count_mismatch_is_a_clear_error(trained_digits_model):
    task = UnlearningTask(
        forget_classes=(3,),
        num_classes=12,
        retain_images=torch.zeros(4, 1, 8, 8),
        retain_labels=torch.tensor([0, 1, 2, 4]),
    )
    with pytest.raises(UnlearningInputError, match=r"expected \(N, 12\) logits"):
        make_method("unsir", FAST).unlearn(trained_digits_model, task, device=CPU, generator=torch.Generator())


class _HeadDefinedFirst(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(16, 10)
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def _one_sample_per_retained_class(dtype: torch.dtype = torch.float32) -> UnlearningTask:
    """Class 3 forgotten; one random 1x8x8 retain sample of each other class: enough for the
    checks a model meets before any compute."""
    return UnlearningTask(
        forget_classes=(3,),
        num_classes=10,
        retain_images=torch.rand(9, 1, 8, 8, generator=_seeded(0), dtype=dtype),
        retain_labels=torch.tensor([0, 1, 2, 4, 5, 6, 7, 8, 9]),
    )


def _refused_by_the_recipe_run_by_the_paper(build, refusal: str) -> None:
    """The recipe (head reset, head round) refuses ``build()`` with ``refusal``; the paper's
    method, which touches no head, runs on it."""
    task = _one_sample_per_retained_class()
    recipe = unsir_config_for("small_cnn", retain_per_class=1)
    with pytest.raises(UnlearningInputError, match=refusal):
        make_method("unsir", recipe).unlearn(build(), task, device=CPU, generator=_seeded(0))
    paper = unsir_config_for("small_cnn", retain_per_class=1, with_noise=True)
    make_method("unsir", paper).unlearn(build(), task, device=CPU, generator=_seeded(0))


def test_a_head_defined_before_a_hidden_linear_is_refused_before_any_compute():
    """The head is found as the last nn.Linear a model registers: this model's hidden layer had
    its rows re-drawn and refitted in the head's place, and a trained one forgot nothing (forget
    accuracy 1.0 after 4 rounds). The paper's method, which touches no head, still runs."""
    _refused_by_the_recipe_run_by_the_paper(
        _HeadDefinedFirst, r"'body.1' \(64 -> 16\), but the last one its forward pass runs is 'head'"
    )


class _PrototypeHead(torch.nn.Module):
    """Logits from class prototypes through F.linear: the last nn.Linear is a hidden layer."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.prototypes = torch.nn.Parameter(torch.randn(10, 16, generator=_seeded(0)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(self.body(x), self.prototypes)


def test_a_model_whose_logits_come_from_no_linear_head_is_refused_before_any_compute():
    """Its hidden layer (64 -> 16) passed as the head: row 3, a hidden unit, was re-drawn, and a
    head round would have trained the hidden layer alone as a 16-class classifier, silently."""
    _refused_by_the_recipe_run_by_the_paper(
        _PrototypeHead, r"'body.1' \(64 -> 16\), but it has 16 outputs, not one per class \(10\)"
    )


def test_a_model_without_a_linear_layer_is_told_what_runs_without_a_head():
    """SqueezeNet's logits come out of a 1x1 convolution and a pooling: the recipe said only
    'SqueezeNet has no nn.Linear layer to read features from', not what needed one nor what
    runs without it."""
    task = _one_sample_per_retained_class()
    convolutional = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 10, 1),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
    )
    recipe = unsir_config_for(convolutional, retain_per_class=1)
    with pytest.raises(
        UnlearningInputError,
        match=r"Sequential has no nn.Linear layer, its last layer with weights is '2' \(Conv2d\); the recipe's head "
        r"reset and head round need an nn.Linear head .* with_noise=True",
    ):
        make_method("unsir", recipe).unlearn(convolutional, task, device=CPU, generator=_seeded(0))
    paper = unsir_config_for(convolutional, retain_per_class=1, with_noise=True)
    make_method("unsir", paper).unlearn(convolutional, task, device=CPU, generator=_seeded(0))


class _HeadTiedToClassEmbedding(torch.nn.Module):
    """A classifier whose head shares its weight with a class embedding (as label-conditioned or
    prototype models tie them): row c of one is row c of the other."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.class_embedding = torch.nn.Embedding(10, 16)
        self.head = torch.nn.Linear(16, 10)
        self.head.weight = self.class_embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_a_head_tied_to_another_layer_is_refused_before_any_compute():
    """The head reset re-drew the forget class's row of the class embedding too (the same
    Parameter), silently changing a layer the user never asked to unlearn. The paper's method,
    which trains the tied weight through the model's own forward pass, still runs."""
    task = _one_sample_per_retained_class()
    model = _HeadTiedToClassEmbedding()
    before = copy.deepcopy(model.state_dict())
    recipe = unsir_config_for(model, retain_per_class=1)
    with pytest.raises(
        UnlearningInputError,
        match=r"classifier head 'head' shares its weight with 'class_embedding.weight' .* untie it .* with_noise=True",
    ):
        make_method("unsir", recipe).unlearn(model, task, device=CPU, generator=_seeded(0))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    paper = unsir_config_for(model, retain_per_class=1, with_noise=True)
    make_method("unsir", paper).unlearn(model, task, device=CPU, generator=_seeded(0))


@pytest.mark.parametrize(
    ("norm", "layer", "module"), [("weight_norm", 1, "'1' (Linear)"), ("spectral_norm", 3, "'3' (Linear)")]
)
def test_a_hook_based_weight_or_spectral_norm_is_refused_before_any_compute(norm, layer, module):
    """torch's hook-based norms keep the weight they compute as a plain tensor: once a forward
    pass recorded gradients, copying the model failed with torch's 'Only Tensors created
    explicitly by the user (graph leaves) support the deepcopy protocol'; a head copied after an
    evaluation failed in the reset with 'Inplace update to inference tensor outside InferenceMode',
    and a write that went through would have been overwritten by the next forward pass."""
    task = _one_sample_per_retained_class()
    layers = [torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)]
    with pytest.warns(FutureWarning) if norm == "weight_norm" else contextlib.nullcontext():
        layers[layer] = getattr(torch.nn.utils, norm)(layers[layer])  # torch deprecates the hook-based weight_norm
    model = torch.nn.Sequential(*layers)
    if layer == 1:
        model(task.retain_images).sum().backward()  # as the last training step leaves it
    else:
        with torch.no_grad():  # as an evaluation leaves it
            model(task.retain_images)
    with pytest.raises(
        UnlearningInputError,
        match=rf"Sequential's module {re.escape(module)} uses the hook-based torch.nn.utils.{norm}, .* expected "
        rf"torch.nn.utils.parametrizations.{norm}: torch.nn.utils.remove_{norm}\(module\), then",
    ):
        make_method("unsir", unsir_config_for(model, retain_per_class=1)).unlearn(
            model, task, device=CPU, generator=_seeded(0)
        )


@pytest.mark.parametrize("name", ["unsir", "finetune"])
def test_a_model_with_every_parameter_frozen_is_refused_before_any_compute(
    trained_digits_model, digits, digits_manifest, digits_splits, name
):
    """A model frozen for inference (requires_grad_(False)) failed in the first backward pass with
    'element 0 of tensors does not require grad', after UNSIR had learned its noise."""
    frozen = copy.deepcopy(trained_digits_model).requires_grad_(False)
    task = _task(digits, digits_manifest, digits_splits, (3,), with_baseline_data=True)
    with pytest.raises(UnlearningInputError, match=r"every parameter of SmallCNN is frozen \(requires_grad=False"):
        make_method(name).unlearn(frozen, task, device=CPU, generator=_seeded(0))


def test_the_paper_method_runs_on_a_float64_model():
    """A float64 model with float64 images passed every check, then failed in the first noise
    step: 'Input type (float) and bias type (double) should be the same'."""
    task = _one_sample_per_retained_class(dtype=torch.float64)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10))
    paper = unsir_config_for(model, retain_per_class=1, with_noise=True)
    result = make_method("unsir", paper).unlearn(model.double(), task, device=CPU, generator=_seeded(0))
    assert result.noise is not None and result.noise[3].dtype == torch.float64


def test_a_frozen_head_gets_a_full_round_instead_of_a_head_round(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    """A model whose user froze its head (fine-tuning the body only) failed mid-run in the head
    round, 'element 0 of tensors does not require grad', once a round forgot on accuracy alone."""
    model = copy.deepcopy(trained_digits_model)
    model.classifier.requires_grad_(False)
    task = _task(digits, digits_manifest, digits_splits, (3,))
    # No round passes the confidence bound, so round 2 is where a head round would run.
    never_confident = VerificationConfig(max_rounds=2, max_forget_acc=1.0, max_forget_confidence=0.0)
    recipe = replace(unsir_config_for(model, retain_per_class=50), verification=never_confident)
    result = make_method("unsir", recipe).unlearn(model, task, device=CPU, generator=_seeded(0))
    assert [("head_round" in r, "impair_s" in r) for r in result.rounds] == [(False, True), (False, True)]
    assert not any(p.requires_grad for p in result.model.classifier.parameters())


@pytest.mark.parametrize(
    ("device", "expected"),
    [("cuda:99", r"device 'cuda:99': this machine has \d+ CUDA device"), ("gpu", r"unknown device 'gpu'; expected")],
)
@pytest.mark.parametrize("name", ["unsir", "finetune"])
def test_a_device_this_machine_lacks_is_refused_before_any_compute(
    trained_digits_model, digits, digits_manifest, digits_splits, device, expected, name
):
    import copy

    # Before: torch's "Found no NVIDIA driver" (or its list of device types) once the model was copied.
    model = copy.deepcopy(trained_digits_model)
    task = _task(digits, digits_manifest, digits_splits, (3,), per_class=5, with_baseline_data=True)
    counter = ForwardCounter(model)
    with pytest.raises(UnlearningInputError, match=expected):
        make_method(name).unlearn(model, task, device=device, generator=_seeded(0))
    with pytest.raises(UnlearningInputError, match=expected):
        evaluate_model(model, digits_splits.evaluation_data((3,)), device=device)
    assert counter.calls == 0


def test_images_of_another_dtype_or_labels_not_int64_are_refused_before_any_compute(
    trained_digits_model, digits, digits_manifest, digits_splits
):
    task = _task(digits, digits_manifest, digits_splits, (3,), per_class=5)
    method = make_method("unsir", FAST)
    for changed, expected in (
        # Before: "the model cannot take samples of shape (1, 8, 8)", a shape that was right.
        (
            {"retain_images": task.retain_images.double()},
            r"retain subset: images are torch.float64, the model's parameters",
        ),
        # Before: cross-entropy's "expected target dtype to be Long" once noise had been learned.
        ({"retain_labels": task.retain_labels.int()}, r"retain subset: labels are torch.int32; expected torch.int64"),
    ):
        with pytest.raises(UnlearningInputError, match=expected):
            method.unlearn(trained_digits_model, replace(task, **changed), device=CPU, generator=_seeded(0))
    data = digits_splits.evaluation_data((3,))
    with pytest.raises(UnlearningInputError, match=r"test: images are torch.float64"):
        evaluate_model(trained_digits_model, replace(data, test_images=data.test_images.double()), device=CPU)
    # Before: an IndexError from the confusion matrix.
    with pytest.raises(UnlearningInputError, match=r"outputs shape \(1, 10\) per batch; expected \(N, 5\) logits"):
        evaluate_model(trained_digits_model, replace(data, num_classes=5), device=CPU)


@pytest.mark.parametrize("name", ["unsir", "noise_free"])
def test_unsir_without_a_generator_is_a_clear_error(trained_digits_model, digits, digits_manifest, digits_splits, name):
    task = _task(digits, digits_manifest, digits_splits, (3,), per_class=5)
    # Before: AttributeError: 'NoneType' object has no attribute 'initial_seed'.
    with pytest.raises(UnlearningInputError, match=r"generator must be a torch.Generator .*got None"):
        make_method(name).unlearn(trained_digits_model, task, device=CPU, generator=None)


class _ReturnsLogitsAndFeatures(torch.nn.Module):
    def __init__(self, as_dict: bool) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 10)

    def forward(self, x: torch.Tensor):
        features = self.body(x)
        logits = self.head(features)
        return {"logits": logits, "features": features} if self.as_dict else (logits, features)


@pytest.mark.parametrize(("as_dict", "returned"), [(False, "tuple"), (True, "dict")])
def test_a_model_returning_a_tuple_or_dict_is_refused_by_name_before_any_compute(as_dict, returned):
    """A HuggingFace-style model (logits in a tuple or dict) failed with AttributeError: 'tuple'
    object has no attribute 'ndim', from the check meant to explain a wrong output."""
    task = _one_sample_per_retained_class()
    with pytest.raises(
        UnlearningInputError, match=rf"forward pass returns a {returned}; expected a tensor of \(N, 10\)"
    ):
        make_method("unsir", FAST).unlearn(_ReturnsLogitsAndFeatures(as_dict), task, device=CPU, generator=_seeded(0))
