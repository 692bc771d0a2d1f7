"""Tuning-half experiment: keep the retained classes' head rows as the original fitted them.

``tuning/head_diagnostics.py`` found that a head fitted on D_r_sub alone loses most of the
retrained model's MIA, even on the retrained model's own body: the member-like reading of the
forget samples needs a head fitted on the whole retain set. The original's retained rows were
fitted on the whole training set; impair, repair and polish on D_r_sub move them. This variant
zeroes their gradients throughout (Adam then leaves them exactly as they were), so only the
body and the re-drawn forget rows learn. No forget-class sample is read. Works on the
registered architectures and on ``benchmarks/unseen_architectures.py``'s.

    python benchmarks/tuning/frozen_retained_rows.py --arch mlp --retrain-again
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from patching import with_replaced_step  # noqa: E402
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.methods.base import prepare  # noqa: E402
from unsir.models import ARCHITECTURES, classifier_head  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402


def prepare_with_frozen_rows(model, task, device):
    """``prepare``'s working copy, its head's retained rows' gradients zeroed by hooks."""
    working = prepare(model, task, device)
    head = classifier_head(working)
    retained = torch.ones(head.out_features, dtype=torch.bool, device=head.weight.device)
    retained[list(task.forget_classes)] = False
    head.weight.register_hook(lambda grad: grad.masked_fill(retained[:, None], 0.0))
    if head.bias is not None:
        head.bias.register_hook(lambda grad: grad.masked_fill(retained, 0.0))
    return working


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, "frozen_rows": shipped}


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant == "frozen_rows":
        method = with_replaced_step(method, "prepare", lambda *_: prepare_with_frozen_rows)
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-frozen-retained-rows.json", method_for=method_for)
    )
