"""Tuning-half experiment: do SGD steps keep a depthwise network's retain accuracy where Adam's don't?

MobileNetV2 (and the unseen ShuffleNetV2, both built of depthwise or grouped convolutions)
loses up to 6-9 retain points to every schedule tried, where its second retraining loses at
most 2.6; every schedule tried used Adam. Adam's first steps after a fresh start move *every*
parameter by about the learning rate, whatever its gradient: on a network of many small
depthwise kernels and BatchNorm scales, 15 impair steps at 2e-3 shift weights that D_r_sub says
nothing about by several percent of their size. SGD with momentum moves each weight in
proportion to its gradient, so weights that do not matter for the retain loss stay where the
original left them. The variants run impair, repair and polish with SGD (momentum 0.9) at 1x and 3x
the Adam rates; the head round stays Adam (it refits a fresh-ish layer). No
forget-class sample is read.

    python benchmarks/tuning/sgd_steps.py --arch mobilenet_v2 --seeds 0 --sets 0 2 5 7 3,4 4,7,9
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.configs import OptimConfig  # noqa: E402
from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402

# At 10x and 25x the Adam rates MobileNetV2's retain accuracy fell 69-76 points on the first run
# and repair diverged on the second (tuning-sgd-steps-mobilenet_v2-x10.log); at 1x repair diverged
# on the first (5e-4 with momentum 0.9, tuning-sgd-steps-mobilenet_v2-x1.log). Refuted.
SCALES = (1, 3)


def sgd(phase: OptimConfig, scale: float) -> OptimConfig:
    return replace(phase, optimizer="sgd", momentum=0.9, lr=phase.lr * scale)


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    assert shipped.polish is not None
    out = {"shipped": shipped}
    for scale in SCALES:
        impair, repair, polish = (sgd(phase, scale) for phase in (shipped.impair, shipped.repair, shipped.polish))
        out[f"sgd_x{scale}"] = replace(shipped, impair=impair, repair=repair, polish=polish)
    return out


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(schedule_length.main(variants, out="reports/bench/tuning-sgd-steps.json"))
