"""Named architectures, their classifier head, and checkpoints that rebuild them exactly."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from unsir.checkpoint import CARD_FILE, WEIGHTS_FILE, ModelCard, load_checkpoint, save_checkpoint
from unsir.errors import UnlearningInputError
from unsir.models import (
    ARCHITECTURES,
    ModelSpec,
    build_model,
    classifier_head,
    penultimate_features,
)
from unsir.splits import Normalization
from unsir.training import inference_batch_size, predict_logits

CPU = torch.device("cpu")
# Each architecture's natural input; small_cnn is sized for 8x8 digits, the rest for CIFAR.
NATURAL_INPUT = {arch: (3, 32, 32) for arch in ARCHITECTURES} | {"small_cnn": (1, 8, 8)}


def _model(arch: str, num_classes: int = 7, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return build_model(ModelSpec(arch, num_classes, NATURAL_INPUT[arch][0], kwargs)).eval()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_architecture_gives_logits_and_penultimate_features(arch):
    model = _model(arch, num_classes=7)  # not 10, so a hard-coded class count would show
    images = torch.randn(2, *NATURAL_INPUT[arch], generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(images)
    assert logits.shape == (2, 7)

    head = classifier_head(model)
    assert head.out_features == 7
    features = penultimate_features(model, images, device=CPU, batch_size=1)
    assert features.shape == (2, head.in_features)
    # They really are the head's inputs: the head maps them back to the model's logits.
    with torch.inference_mode():
        assert torch.allclose(head(features), logits, atol=1e-5)


def test_architecture_arguments_it_cannot_take_are_named():
    """model.kwargs {num_classes: 5} failed the train stage with "SmallCNN() got multiple values
    for keyword argument 'num_classes'", and {foo: 1} with a bare TypeError."""
    with pytest.raises(UnlearningInputError, match=r"\['num_classes'\] of 'small_cnn' come from the data"):
        build_model(ModelSpec("small_cnn", 3, 1, {"num_classes": 5}))
    with pytest.raises(UnlearningInputError, match=r"'small_cnn' takes no argument 'foo'; it takes: width \(int\)"):
        build_model(ModelSpec("small_cnn", 3, 1, {"foo": 1}))
    assert build_model(ModelSpec("small_cnn", 3, 1, {"width": 4})).classifier.out_features == 3


def test_penultimate_features_restore_the_training_mode():
    model = _model("small_cnn").train()
    penultimate_features(model, torch.zeros(3, 1, 8, 8), device=CPU)
    assert model.training


def test_classifier_head_needs_a_linear_layer():
    model = _model("small_cnn")
    assert classifier_head(model) is model.classifier  # the last Linear, not the one inside features
    with pytest.raises(UnlearningInputError, match="Sequential has no nn.Linear"):
        classifier_head(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten()))


def test_unknown_architecture_lists_the_known_ones():
    with pytest.raises(UnlearningInputError, match="unknown architecture 'vgg11'") as info:
        build_model(ModelSpec("vgg11", 10, 3))
    assert all(arch in str(info.value) for arch in ARCHITECTURES)


def test_spec_arguments_survive_a_dict_round_trip():
    spec = ModelSpec("small_cnn", 4, 1, {"width": 8})
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    assert build_model(spec).features[0].out_channels == 8


def test_checkpoint_round_trip_is_exact(tmp_path):
    spec = ModelSpec("small_cnn", 10, 1, {"width": 8})
    torch.manual_seed(0)
    model = build_model(spec)
    # One train-mode forward moves BatchNorm's running statistics off their initial values.
    model.train()(torch.randn(16, 1, 8, 8))
    model.eval()
    card = ModelCard(spec, Normalization((0.25,), (0.5,)), tuple(str(i) for i in range(10)), (1, 8, 8), (3,))

    merged = card.with_forgotten((8, 1, 3))
    assert merged.forgotten_classes == (1, 3, 8)  # union, sorted, no duplicate
    assert card.forgotten_classes == (3,)  # the earlier card is left as it was

    save_checkpoint(tmp_path / "ckpt", model, merged)
    loaded, loaded_card = load_checkpoint(tmp_path / "ckpt")
    assert loaded_card == merged
    assert not loaded.training
    original, restored = model.state_dict(), loaded.state_dict()
    assert original.keys() == restored.keys()
    for key, tensor in original.items():
        assert restored[key].dtype == tensor.dtype and torch.equal(restored[key], tensor), key
    images = torch.randn(4, 1, 8, 8)
    with torch.inference_mode():
        assert torch.equal(loaded(images), model(images))


@pytest.mark.parametrize("present", [(), (CARD_FILE,)])
def test_loading_a_directory_without_checkpoint_files_names_it(tmp_path, present):
    directory = tmp_path / "not-a-checkpoint"
    directory.mkdir()
    for name in present:
        (directory / name).write_text("{}")
    with pytest.raises(UnlearningInputError, match=re.escape(str(directory)) + f".*{WEIGHTS_FILE}"):
        load_checkpoint(directory)


def test_inference_in_small_batches_gives_the_logits_of_one_large_batch():
    # The CPU's default inference batch (64) is smaller than most evaluation sets: 150 samples
    # take three batches, the last one partial, and must come back whole and in order.
    model = _model("small_cnn").train()
    images = torch.randn(150, *NATURAL_INPUT["small_cnn"], generator=torch.Generator().manual_seed(2))
    assert inference_batch_size(CPU) < len(images) <= inference_batch_size(torch.device("cuda"))
    batched = predict_logits(model, images, device=CPU)
    whole = predict_logits(model, images, device=CPU, batch_size=len(images))
    assert batched.shape == (150, 7) and torch.allclose(batched, whole, atol=1e-5)
    assert model.training  # predict_logits restores the mode it found
