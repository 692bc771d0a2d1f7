"""Tuning-half experiment: does a stronger repair close the MIA gap of the head-reset recipe?

On every architecture measured, nearly every MIA failure has the unlearned model *less*
member-like on the forget-train samples than the retrained model; on an MLP no recipe choice
looked at (``benchmarks/unseen_architectures.py``) 35 of 36. Retraining sends a forget class
confidently to its nearest retained class; the unlearned model stays unsure. One reading:
trained with the forget class, the original's retained outputs were pushed *down* on
forget-class features, hardest for the classes the forget samples resemble. Near the
original's optimum, the gradient of the retain data alone is exactly minus the forget data's,
so repair on retain data moves the retained rows back towards those features, but from a small
gradient; a short, low-rate repair stops early. The variants make repair longer or faster.
No forget-class sample is read. Runs on any registered architecture and on the unseen ones.

    python benchmarks/tuning/repair_strength.py --arch mlp --retrain-again
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import schedule_length  # noqa: E402  (the tuning-grid walker)
from unseen_architectures import UNSEEN  # noqa: E402

from unsir.models import ARCHITECTURES  # noqa: E402
from unsir.recipes import unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    shipped = unsir_config_for(arch, retain_per_class=retain_per_class)
    out = {"shipped": shipped}
    for lr in (2e-3, 4e-3):
        out[f"repair_lr{lr:g}"] = replace(shipped, repair=replace(shipped.repair, lr=lr))
    for epochs in (4, 8):
        out[f"repair_e{epochs}"] = replace(shipped, repair=replace(shipped.repair, epochs=epochs))
    out["impair_lr4e-3"] = replace(shipped, impair=replace(shipped.impair, lr=4e-3))
    return out


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(schedule_length.main(variants, out="reports/bench/tuning-repair-strength.json"))
