import copy

import pytest
import torch

from unsir.configs import NoiseConfig
from unsir.errors import UnlearningInputError
from unsir.noise import build_impair_set, learn_error_maximizing_noise, noise_regularizer

CPU = torch.device("cpu")


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_noise_shape_and_one_tensor_per_class(trained_digits_model):
    noise = learn_error_maximizing_noise(
        trained_digits_model,
        (2, 7, 9),
        (1, 8, 8),
        NoiseConfig(batch_size=6, steps=3),
        device=CPU,
        generator=torch.Generator().manual_seed(0),
    )
    assert sorted(noise) == [2, 7, 9]
    assert all(t.shape == (6, 1, 8, 8) and not t.requires_grad for t in noise.values())


def test_noise_learning_leaves_model_untouched(trained_digits_model):
    model = copy.deepcopy(trained_digits_model).train()  # train mode: BN would update running stats
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    before = _state(model)
    learn_error_maximizing_noise(
        model,
        (1,),
        (1, 8, 8),
        NoiseConfig(batch_size=8, steps=5),
        device=CPU,
        generator=torch.Generator().manual_seed(0),
    )
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "parameters or BN buffers changed"
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters()), "gradients leaked"
    assert model.training and all(p.requires_grad for p in model.parameters())


def test_noise_maximises_the_error_on_its_class(trained_digits_model):
    config = NoiseConfig(batch_size=32, steps=30)
    noise = learn_error_maximizing_noise(
        trained_digits_model, (4,), (1, 8, 8), config, device=CPU, generator=torch.Generator().manual_seed(0)
    )
    target = torch.full((32,), 4)
    with torch.no_grad():
        learned_ce = torch.nn.functional.cross_entropy(trained_digits_model(noise[4]), target)
        random_ce = torch.nn.functional.cross_entropy(
            trained_digits_model(torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))), target
        )
    assert learned_ce > random_ce + 1.0


def test_same_seed_same_noise(trained_digits_model):
    def learn():
        return learn_error_maximizing_noise(
            trained_digits_model,
            (3,),
            (1, 8, 8),
            NoiseConfig(batch_size=4, steps=4),
            device=CPU,
            generator=torch.Generator().manual_seed(11),
        )[3]

    assert torch.equal(learn(), learn())


def test_impair_set_uses_every_noise_sample_with_its_own_label():
    noise = {2: torch.randn(7, 3, 5, 5), 5: torch.randn(7, 3, 5, 5)}
    retain_x, retain_y = torch.zeros(10, 3, 5, 5), torch.tensor([0, 1] * 5)
    x, y = build_impair_set(noise, retain_x, retain_y, copies=4)
    assert len(x) == 10 + 2 * 4 * 7
    assert (y == 2).sum() == 28 and (y == 5).sum() == 28
    # every noise sample of class 5 appears exactly 4 times, under label 5
    class5 = x[y == 5]
    for sample in noise[5]:
        assert sum(torch.equal(sample, row) for row in class5) == 4


def test_regularizer_pixel_mean_is_resolution_independent():
    small, large = torch.ones(4, 1, 8, 8), torch.ones(4, 3, 224, 224)
    assert noise_regularizer(small, "pixel_mean") == pytest.approx(noise_regularizer(large, "pixel_mean"))
    assert noise_regularizer(large, "pixel_sum") == pytest.approx(3 * 224 * 224)


def test_bad_noise_input_is_rejected():
    with pytest.raises(UnlearningInputError, match=r"l2_reduction must be one of .*, got 'pixel_max'"):
        NoiseConfig(l2_reduction="pixel_max")
    with pytest.raises(UnlearningInputError, match=r"l2_weight must be a finite number >= 0, got -1"):
        NoiseConfig(l2_weight=-1)
    with pytest.raises(UnlearningInputError, match="sample shape"):
        build_impair_set(
            {1: torch.randn(2, 1, 4, 4)}, torch.zeros(3, 1, 8, 8), torch.zeros(3, dtype=torch.long), copies=1
        )
