"""From a dataset and its manifest to the normalised tensors that methods and measures take.

This is the glue a notebook, the benchmark and the pipeline share: select the splits named by
the manifest, normalise them with statistics fit on the training split, and assemble the
unlearning task and the evaluation data for a set of forget classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import torch

from unsir.classes import check_forget_classes
from unsir.data import ClassificationData
from unsir.measures import EvaluationData
from unsir.methods.base import UnlearningTask
from unsir.splits import Normalization, select


@dataclass(frozen=True)
class PreparedSplits:
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    normalization: Normalization
    class_names: tuple[str, ...]
    # The validation split (may be empty): forgetting is verified on it, never trained on.
    val_images: torch.Tensor | None = None
    val_labels: torch.Tensor | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train_images.shape[1:])  # type: ignore[return-value]

    def evaluation_data(self, forget_classes: tuple[int, ...]) -> EvaluationData:
        forget_classes = check_forget_classes(forget_classes, self.num_classes, self.class_names)
        return EvaluationData(
            self.train_images,
            self.train_labels,
            self.test_images,
            self.test_labels,
            self.num_classes,
            tuple(forget_classes),
            self.val_images,
            self.val_labels,
        )


def prepare_splits(
    data: ClassificationData, manifest: pd.DataFrame, normalization: Normalization | None = None
) -> PreparedSplits:
    """Normalised train and test tensors; statistics are fit on train unless given (a registered
    model carries its own, and must be evaluated with them)."""
    train_x, train_y = select(data, manifest[manifest["split"] == "train"])
    test_x, test_y = select(data, manifest[manifest["split"] == "test"])
    val_x, val_y = select(data, manifest[manifest["split"] == "val"])
    normalization = normalization or Normalization.fit(train_x)
    return PreparedSplits(
        normalization.apply(train_x),
        train_y,
        normalization.apply(test_x),
        test_y,
        normalization,
        data.class_names,
        normalization.apply(val_x) if len(val_y) else None,
        val_y if len(val_y) else None,
    )


def build_task(
    splits: PreparedSplits,
    data: ClassificationData,
    retain_rows: pd.DataFrame,
    forget_classes: tuple[int, ...],
    *,
    with_baseline_data: bool = False,
) -> UnlearningTask:
    """The unlearning task: D_r_sub from ``retain_rows``, the validation split when the manifest
    has one (UNSIR verifies forgetting on it); with ``with_baseline_data`` also the full retain
    and forget training sets that baselines (not UNSIR) read."""
    forget_classes = check_forget_classes(forget_classes, splits.num_classes, splits.class_names)
    retain_x, retain_y = select(data, retain_rows)
    extra: dict[str, torch.Tensor] = {}
    if with_baseline_data:
        forget_mask = torch.isin(splits.train_labels, torch.as_tensor(forget_classes))
        extra = {
            "retain_train_images": splits.train_images[~forget_mask],
            "retain_train_labels": splits.train_labels[~forget_mask],
            "forget_train_images": splits.train_images[forget_mask],
            "forget_train_labels": splits.train_labels[forget_mask],
        }
    return UnlearningTask(
        forget_classes=tuple(forget_classes),
        num_classes=splits.num_classes,
        retain_images=splits.normalization.apply(retain_x),
        retain_labels=retain_y,
        validation_images=splits.val_images,
        validation_labels=splits.val_labels,
        **extra,
    )
