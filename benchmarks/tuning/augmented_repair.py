"""Tuning-half experiment: D_r_sub's images shifted by a pixel in every step that trains on them.

Every MIA failure of the unseen MLP (and most of digits') reads *below* the retrained model's:
the unlearned model files the forget samples less confidently than retraining does. Retraining
sees twice as many retain images as D_r_sub, for 30 epochs; the unlearned model's later layers
are refitted on 50 images a class, confident on those and on little around them. Here each epoch
of impair, repair, polish, recovery and the head round (``aug_all``) or of every step but impair
(``aug_repair``) trains on D_r_sub with each image shifted by up to one pixel in each direction
(drawn afresh every epoch, the border filled with the image's own background value), so the
retained classes cover more of the input space. No forget-class sample is read.

    python benchmarks/tuning/augmented_repair.py --arch mlp --retrain-again
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

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402
from unsir.training import make_optimizer, resolve_device, train_one_epoch  # noqa: E402

AUGMENTED_STEPS = {
    "aug_repair": {"repair", "polish", "recovery", "head round"},
    "aug_all": {"impair", "repair", "polish", "recovery", "head round"},
    "mixup_hard": {"repair", "polish", "recovery", "head round"},
    "mixup_hard_all": {"impair", "repair", "polish", "recovery", "head round"},
}
# How each variant changes D_r_sub's images in an epoch.
KIND = {"aug_repair": "shift", "aug_all": "shift", "mixup_hard": "mixup", "mixup_hard_all": "mixup"}


def mixed(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image blended with another of D_r_sub, its own weight drawn from [0.5, 1]: an input
    between two retained images, labelled (hard) with the class of the one it is closer to."""
    n = len(images)
    partner = torch.randperm(n, generator=generator)
    own = 0.5 + 0.5 * torch.rand((n, 1, 1, 1), generator=generator)
    return own * images + (1 - own) * images[partner]


def shifted(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Each image moved by (dy, dx) in {-1, 0, 1}^2, the uncovered border its minimum value."""
    n, _, h, w = images.shape
    background = images.amin(dim=(1, 2, 3), keepdim=True)
    padded = torch.nn.functional.pad(images - background, (1, 1, 1, 1)) + background
    offsets = torch.randint(0, 3, (n, 2), generator=generator)
    out = torch.empty_like(images)
    for dy in range(3):
        for dx in range(3):
            chosen = (offsets[:, 0] == dy) & (offsets[:, 1] == dx)
            out[chosen] = padded[chosen, :, dy : dy + h, dx : dx + w]
    return out


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    return {"shipped": shipped, **dict.fromkeys(AUGMENTED_STEPS, shipped)}


def augmented_fit_for(steps: set[str], kind: str):
    def replacement(original_model, task, fit, device):
        retain = task.retain_images.cpu()

        def augmented_fit(model, images, labels, config, *, device, generator, description="train", **kw):
            x_cpu = images.detach().cpu()
            if description not in steps or x_cpu.dim() != 4:
                return fit(model, images, labels, config, device=device, generator=generator, description=description, **kw)
            # Only D_r_sub's rows are shifted (impair's set may hold noise after them).
            is_retain = torch.zeros(len(x_cpu), dtype=torch.bool)
            if len(x_cpu) >= len(retain) and torch.equal(x_cpu[: len(retain)], retain):
                is_retain[: len(retain)] = True
            device = resolve_device(device)
            model.to(device)
            y = labels.to(device)
            optimizer = make_optimizer(config, model.parameters())
            draws = torch.Generator().manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
            for _ in range(config.epochs):
                x = x_cpu.clone()
                x[is_retain] = (shifted if kind == "shift" else mixed)(x_cpu[is_retain], draws)
                train_one_epoch(model, x.to(device), y, optimizer, batch_size=config.batch_size, generator=generator)
            model.eval()
            return model

        return augmented_fit

    return replacement


def method_for(variant: str, method_name: str, config):
    method = schedule_length.plain_method(variant, method_name, config)
    if variant in AUGMENTED_STEPS:
        method = with_replaced_step(method, "fit", augmented_fit_for(AUGMENTED_STEPS[variant], KIND[variant]))
    return method


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(
        schedule_length.main(variants, out="reports/bench/tuning-augmented-repair.json", method_for=method_for)
    )
