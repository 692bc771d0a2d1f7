"""Tuning-half experiment: move the whole network part of the way back to a fresh initialisation
before the recipe, so that what D_r_sub does not restore (the forget class's own features)
fades, as it never formed in a retrained model.

The MIA gap's diagnosis (benchmarks/README.md, "Head or features? Both") found its root in the
features: a body that learned the forget class keeps its samples apart from the retained
classes, where a body that never saw it files them confidently with one. Every try so far kept
the body and changed the head or the top layer. Here every weight and bias becomes
``lam * original + (1 - lam) * fresh`` (a fresh draw of the layer's own initialisation, as in
shrink-and-perturb), then the forget rows are re-drawn and the recipe runs; a longer repair is
tried beside the shipped one, since the retained classes must be re-fitted from further away.
No forget-class sample is read.

    python benchmarks/tuning/shrink_towards_init.py --arch mlp --retrain-again
"""

from __future__ import annotations

import copy
import sys
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from patching import with_replaced_step  # noqa: E402
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402

SHRINKS = {"lam0.8": 0.8, "lam0.6": 0.6}


def shrink_towards_init(model: nn.Module, lam: float, *, generator: torch.Generator) -> None:
    """Every layer with its own initialiser: ``lam * weights + (1 - lam) * a fresh draw``. The
    fresh draw seeds torch's global generator from ``generator`` (``reset_parameters`` takes none)."""
    torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=generator)))
    for module in model.modules():
        if not hasattr(module, "reset_parameters") or not list(module.parameters(recurse=False)):
            continue
        old = {name: p.detach().clone() for name, p in module.named_parameters(recurse=False)}
        fresh = copy.deepcopy(module)
        fresh.reset_parameters()
        with torch.no_grad():
            for name, p in module.named_parameters(recurse=False):
                p.copy_(lam * old[name] + (1 - lam) * dict(fresh.named_parameters(recurse=False))[name])


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    longer = replace(shipped, repair=replace(shipped.repair, epochs=4))
    out = {"shipped": shipped}
    for name in SHRINKS:
        out[name] = shipped
        out[name + "_r4"] = longer
    return out


def shrink_then_reset(lam: float):
    def replacement(_model, _task, reset_head_rows, _device):
        def reset(model, classes, *, generator):
            shrink_towards_init(model, lam, generator=generator)
            reset_head_rows(model, classes, generator=generator)

        return reset

    return replacement


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    shrink = SHRINKS.get(variant.removesuffix("_r4"))
    if shrink is not None:
        method = with_replaced_step(method, "reset_head_rows", shrink_then_reset(shrink))
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-shrink-towards-init.json", method_for=method_for)
    )
