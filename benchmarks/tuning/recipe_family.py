"""Tuning-half experiment: on an architecture no recipe choice looked at, is the family its depth
picks (``unsir.recipes.inferred_family``) the better of the two measured recipes?

Runs, on the tuning grid, the recipe of the family inferred for ``--arch``, the other family's
recipe, and the inferred one without the head reset (the forget rows left as trained). No
forget-class sample is read. Works on the registered architectures and on
``benchmarks/unseen_architectures.py``'s.

    python benchmarks/tuning/recipe_family.py --arch mlp --retrain-again
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
from unsir.recipes import family_of, unsir_config_for  # noqa: E402


def variants(arch: str, retain_per_class: int) -> dict:
    inferred = unsir_config_for(arch, retain_per_class=retain_per_class)
    other_arch = "allcnn" if family_of(arch) == "compact" else "small_cnn"
    return {
        "shipped": inferred,
        "other_family": unsir_config_for(other_arch, retain_per_class=retain_per_class),
        "no_head_reset": replace(inferred, reset_forget_rows=False),
    }


if __name__ == "__main__":
    ARCHITECTURES.update(UNSEEN)
    raise SystemExit(schedule_length.main(variants, out="reports/bench/tuning-recipe-family.json"))
