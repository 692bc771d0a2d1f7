"""Tuning-half experiment: re-draw the penultimate units the forget classes own, not only their rows.

``tuning/head_diagnostics.py`` traced the MIA gap to the features: a body that learned the forget
class keeps its samples apart, so no head sends them confidently to a retained class, where a
body that never saw the class does. The head reset re-draws the forget classes' rows; this goes
one layer down. A penultimate unit is *owned* by the class whose head row weighs it most; the
units the forget classes own get fresh incoming weights (and bias) and fresh outgoing head
weights, as a model built from scratch has them, before impair and repair train them on D_r_sub
with the rest. No forget-class sample is read. Applies when the head's input comes from an
``nn.Linear`` of as many outputs (the compact CNN, the unseen MLP and LeNet).

    python benchmarks/tuning/owned_units_reset.py --arch mlp --retrain-again
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from patching import with_replaced_step  # noqa: E402
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES, classifier_head  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402


def penultimate_linear(model: nn.Module, head: nn.Linear) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear) and m is not head]
    if not linears or linears[-1].out_features != head.in_features:
        raise SystemExit(f"{type(model).__name__}: the head's input is not an nn.Linear's output")
    return linears[-1]


def reset_owned_units(model: nn.Module, classes, *, generator: torch.Generator) -> int:
    """Re-draw the penultimate units ``classes`` own (in- and outgoing); returns how many."""
    head = classifier_head(model)
    layer = penultimate_linear(model, head)
    owner = head.weight.detach().argmax(dim=0)  # per unit, the class weighing it most
    units = torch.isin(owner, torch.as_tensor(list(classes), device=owner.device)).nonzero().flatten()
    with torch.no_grad():
        bound_in = 1.0 / layer.in_features**0.5
        fresh = (torch.rand((len(units), layer.in_features), generator=generator) * 2 - 1) * bound_in
        layer.weight[units] = fresh.to(layer.weight)
        if layer.bias is not None:
            layer.bias[units] = ((torch.rand(len(units), generator=generator) * 2 - 1) * bound_in).to(layer.bias)
        bound_out = 1.0 / head.in_features**0.5
        fresh_out = (torch.rand((head.out_features, len(units)), generator=generator) * 2 - 1) * bound_out
        head.weight[:, units] = fresh_out.to(head.weight)
    return len(units)


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, "owned_units": shipped}


def reset_rows_and_owned_units(_model, _task, reset_head_rows, _device):
    def reset(model, classes, *, generator):
        reset_head_rows(model, classes, generator=generator)
        reset_owned_units(model, classes, generator=generator)

    return reset


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant == "owned_units":
        method = with_replaced_step(method, "reset_head_rows", reset_rows_and_owned_units)
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-owned-units-reset.json", method_for=method_for)
    )
