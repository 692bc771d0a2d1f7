"""Tuning-half experiment: recompute BatchNorm's running statistics on D_r_sub after unlearning.

MobileNetV2 and ShuffleNetV2 (depthwise or grouped convolutions, BatchNorm after each) lose
retain accuracy to the recipe that the validation split does not see. BatchNorm's running
statistics after unlearning are an exponential average over the last batches of high-rate
steps; this variant replaces them by D_r_sub's exact statistics under the final weights (one
forward pass in train mode, cumulative average, nothing else trained). No forget-class sample
is read. Works on the registered architectures and on ``benchmarks/unseen_architectures.py``'s.

    python benchmarks/tuning/batchnorm_recalibration.py --arch mobilenet_v2 --seeds 0 --sets 0 2 5 7
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, images: torch.Tensor, *, device, batch_size: int = 64) -> None:
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m, m.momentum) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch of the pass
    was_training = model.training
    model.train()
    try:
        for start in range(0, len(images), batch_size):
            model(images[start : start + batch_size].to(device))
    finally:
        for m, momentum in saved:
            m.momentum = momentum
        model.train(was_training)


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, "bn_recalibrated": shipped}


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant != "bn_recalibrated":
        return method
    plain_unlearn = method.unlearn

    def unlearn(model, task, *, device, generator):
        result = plain_unlearn(model, task, device=device, generator=generator)
        recalibrate_batchnorm(result.model, task.retain_images, device=device)
        result.model.eval()
        return result

    method.unlearn = unlearn
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-batchnorm-recalibration.json", method_for=method_for)
    )
