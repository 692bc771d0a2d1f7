"""Tuning-half experiment: does Adam's L2 weight decay close the MIA gap of the head-reset recipe?

Every digits failure of the shipped recipe is the MIA bound, nearly always in one direction: the
unlearned model is *less* member-like on the forget-train samples than the retrained model
(class 1: 0.000 against 0.08-0.29). Both send most 1s to 8, but retraining does it as
confidently as it classifies its members and the unlearned model does not
(``tuning-mia-calibration.log``). One mechanism fits: the original learned to *suppress* the
retained classes on forget-class features (its head rows carry weight against them), and
D_r_sub never activates those features, so impair and repair send no gradient to that weight
and the suppression survives; retraining never learned it.

Adam with an L2 term (``OptimConfig.weight_decay``, coupled, as ``torch.optim.Adam`` applies
it) shrinks a weight that gets no data gradient by about the learning rate every step, whatever
the decay's size, while a weight the retain data uses barely feels it: a data-free way to let
what only the forget classes used fade, as it never grew in a retrained model. No forget-class
sample is read. The variants add the decay to every step of the recipe (impair, repair,
polish, head round) or to repair and polish only; the grid walker is schedule_length's.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import schedule_length  # noqa: E402  (the tuning-grid walker)

from unsir.recipes import unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    assert shipped.polish is not None and shipped.head_round is not None
    out = {"shipped": shipped}
    for decay in (1e-4, 1e-3, 1e-2):
        out[f"wd{decay:g}"] = replace(
            shipped,
            impair=replace(shipped.impair, weight_decay=decay),
            repair=replace(shipped.repair, weight_decay=decay),
            polish=replace(shipped.polish, weight_decay=decay),
            head_round=replace(shipped.head_round, weight_decay=decay),
        )
        out[f"wd{decay:g}_repair"] = replace(
            shipped,
            repair=replace(shipped.repair, weight_decay=decay),
            polish=replace(shipped.polish, weight_decay=decay),
        )
    return out


if __name__ == "__main__":
    raise SystemExit(schedule_length.main(variants, out="reports/bench/tuning-weight-decay.json"))
