"""Tuning-half experiment: label smoothing in the steps that refit the model on D_r_sub.

Every MIA failure of the unseen MLP (and most of digits') reads *below* the retrained model's,
and the unlearned model is sharper on its members than retraining (members' median entropy
0.00015-0.00046 against 0.00057-0.00083 on the MLP; `tuning-mia-calibration-mlp.log`): repair
fits 50 images a class to near-zero loss, so the attack's member threshold sits very low and
hardly any forget sample falls under it. Temperature scaling softens members and forget samples
alike; label smoothing caps only what training pushes, the retained classes' confidence on
retain-like inputs. Here repair, polish, recovery and the head round (``ls*_repair``) or every
step (``ls*_all``) train with cross-entropy smoothed by eps. No forget-class sample is read.

    python benchmarks/tuning/label_smoothing.py --arch mlp --retrain-again
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

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402
from unsir.training import iterate_batches, make_optimizer, resolve_device  # noqa: E402

REFIT = {"repair", "polish", "recovery", "head round"}
SMOOTHED = {
    "ls02_repair": (0.02, REFIT),
    "ls05_repair": (0.05, REFIT),
    "ls10_repair": (0.10, REFIT),
    "ls05_all": (0.05, REFIT | {"impair"}),
}


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, **dict.fromkeys(SMOOTHED, shipped)}


def smoothed_fit_for(eps: float, steps: set[str]):
    def replacement(original_model, task, fit, device):
        def smoothed_fit(model, images, labels, config, *, device, generator, description="train", **kw):
            if description not in steps or len(images) == 0:
                return fit(
                    model, images, labels, config, device=device, generator=generator, description=description, **kw
                )
            device = resolve_device(device)
            model.to(device)
            x, y = images.to(device), labels.to(device)
            optimizer = make_optimizer(config, model.parameters())
            for _ in range(config.epochs):
                model.train()
                for batch in iterate_batches(len(x), config.batch_size, generator, device=device):
                    optimizer.zero_grad(set_to_none=True)
                    nn.functional.cross_entropy(model(x[batch]), y[batch], label_smoothing=eps).backward()
                    optimizer.step()
            model.eval()
            return model

        return smoothed_fit

    return replacement


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant in SMOOTHED:
        method = with_replaced_step(method, "fit", smoothed_fit_for(*SMOOTHED[variant]))
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    torch.set_num_threads(1)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-label-smoothing.json", method_for=method_for)
    )
