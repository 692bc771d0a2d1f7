"""Tuning-half experiment: unlearn with the lower layers of a deep network frozen.

MobileNetV2 (and the unseen ShuffleNetV2, both of depthwise or grouped convolutions) lose
retain accuracy to impair, repair and polish on D_r_sub: up to 4.7 points against their own
original on the held-out grid, where every other tried schedule, rate, optimiser and BatchNorm
treatment left the loss in place (benchmarks/README.md). Those steps move every one of ~50
layers on 450 samples. The head reset, which does the forgetting, touches only the top. This
variant keeps the lower ``fraction`` of the weight layers (Conv2d and Linear, in module order,
with every module registered before the cut: their BatchNorm statistics too) exactly as the
original learned them on the whole training set, so impair and repair move only the top of the
network. No forget-class sample is read. Variants are named by the fraction of weight layers
frozen.

    python benchmarks/tuning/frozen_lower_layers.py --arch mobilenet_v2 --seeds 0 1 \
        --sets 0 2 5 7 3,4 4,7,9 --train-epochs 15
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from patching import with_replaced_step  # noqa: E402
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402

FRACTIONS = {"frozen50": 0.5, "frozen75": 0.75, "frozen90": 0.9}


def _keep_in_eval_mode(module: nn.Module, _inputs) -> None:
    # A pre-hook, so the training loop's model.train() cannot put the layer back in train mode:
    # BatchNorm then normalises with, and never updates, the original's running statistics.
    module.training = False


def freeze_lower_layers(model: nn.Module, fraction: float) -> nn.Module:
    """Freeze every module registered before the first weight layer above ``fraction`` of them."""
    weight_layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    cut = weight_layers[int(len(weight_layers) * fraction)]
    for module in model.modules():
        if module is cut:
            break
        if next(module.children(), None) is not None:
            continue  # a container: its leaves are visited one by one
        for parameter in module.parameters(recurse=False):
            parameter.requires_grad_(False)
        module.register_forward_pre_hook(_keep_in_eval_mode)
    return model


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, **{name: shipped for name in FRACTIONS}}


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant in FRACTIONS:

        def replacement(_model, _task, prepare, _device):
            return lambda model, task, device: freeze_lower_layers(prepare(model, task, device), FRACTIONS[variant])

        method = with_replaced_step(method, "prepare", replacement)
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-frozen-lower-layers.json", method_for=method_for)
    )
