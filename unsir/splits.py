"""Deterministic stratified splits, the split manifest, retain subsets and normalisation.

The manifest is a table with one row per sample (``sample_id``, ``label``, ``split``,
``digest``): the pipeline versions it and validates it before any compute, and every
downstream step selects samples through it rather than through array positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from unsir.classes import check_forget_classes
from unsir.configs import SplitFractions, check_seed
from unsir.data import ClassificationData
from unsir.errors import UnlearningInputError

SPLITS = ("train", "val", "test")
MANIFEST_COLUMNS = ("sample_id", "label", "split", "digest")


def make_split_manifest(
    data: ClassificationData, *, seed: int, fractions: SplitFractions = SplitFractions()
) -> pd.DataFrame:
    """Assign every sample to train/val/test, stratified by label, reproducibly from ``seed``."""
    seed = check_seed("split seed", seed)
    positions = np.arange(len(data))
    labels = data.labels.numpy()
    split = np.empty(len(data), dtype=object)
    try:
        train_pos, rest_pos = train_test_split(
            positions, train_size=fractions.train, stratify=labels, random_state=seed
        )
        split[train_pos] = "train"
        if fractions.val > 0:
            val_share = fractions.val / (fractions.val + fractions.test)
            val_pos, test_pos = train_test_split(
                rest_pos, train_size=val_share, stratify=labels[rest_pos], random_state=seed
            )
            split[val_pos] = "val"
            split[test_pos] = "test"
        else:
            split[rest_pos] = "test"
    except ValueError as err:  # scikit-learn's: a class too small to stratify, a split too small
        raise _too_few_to_split(data, fractions, err) from err
    return pd.DataFrame(
        {
            "sample_id": list(data.sample_ids),
            "label": labels.astype(np.int64),
            "split": split.astype(str),
            "digest": data.sample_digests(),
        }
    )


def _too_few_to_split(data: ClassificationData, fractions: SplitFractions, err: ValueError) -> UnlearningInputError:
    counts = np.bincount(data.labels.numpy(), minlength=data.num_classes)
    smallest = int(counts.argmin())
    return UnlearningInputError(
        f"cannot split data set {data.name!r} ({len(data)} samples, {data.num_classes} classes) into "
        f"train/val/test fractions {fractions.train}/{fractions.val}/{fractions.test} stratified by class: "
        f"its smallest class {data.class_names[smallest]!r} has {int(counts[smallest])} sample(s) ({err}); "
        "expected enough samples of every class for each split: add samples or change the fractions"
    )


def split_positions(manifest: pd.DataFrame, split: str) -> np.ndarray:
    """Row positions (into the dataset the manifest was made from) of one split."""
    if split not in SPLITS:
        raise UnlearningInputError(f"unknown split {split!r}; expected one of {SPLITS}")
    return np.flatnonzero(manifest["split"].to_numpy() == split)


def draw_retain_subset(
    manifest: pd.DataFrame,
    *,
    forget_classes: tuple[int, ...],
    per_class: int,
    seed: int,
    num_classes: int,
) -> pd.DataFrame:
    """Draw ``per_class`` training samples of every retain class, never a forget-class sample.

    Returns the subset's manifest rows (sorted by sample id, so the same seed gives the same
    file byte for byte). A class with fewer training samples than ``per_class`` gives all it has.
    """
    check_forget_classes(forget_classes, num_classes)
    seed = check_seed("retain seed", seed)
    if per_class <= 0:
        raise UnlearningInputError(f"retain samples per class must be positive, got {per_class}")
    train = manifest[manifest["split"] == "train"]
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(num_classes):
        if label in forget_classes:
            continue
        rows = train[train["label"] == label]
        if rows.empty:
            raise UnlearningInputError(f"retain class {label} has no training sample to draw from")
        take = min(per_class, len(rows))
        chosen.append(rows.iloc[np.sort(rng.choice(len(rows), size=take, replace=False))])
    return pd.concat(chosen).sort_values("sample_id").reset_index(drop=True)


def select(data: ClassificationData, manifest_rows: pd.DataFrame) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels of the samples named by ``manifest_rows`` (matched by sample id)."""
    index = {sid: i for i, sid in enumerate(data.sample_ids)}
    try:
        positions = [index[sid] for sid in manifest_rows["sample_id"]]
    except KeyError as err:
        raise UnlearningInputError(f"sample id {err.args[0]!r} is not in dataset {data.name!r}") from None
    positions_t = torch.as_tensor(positions, dtype=torch.long)
    return data.images[positions_t], data.labels[positions_t]


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std, computed on the training split and kept with the model."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, images: torch.Tensor) -> Normalization:
        mean = images.mean(dim=(0, 2, 3))
        # A constant channel would divide by zero; treat it as unit spread.
        std = images.std(dim=(0, 2, 3)).clamp_min(1e-6)
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] != len(self.mean):
            raise UnlearningInputError(
                f"images have {images.shape[1]} channels, normalisation expects {len(self.mean)}"
            )
        mean = torch.tensor(self.mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, dtype=images.dtype).view(1, -1, 1, 1)
        return (images - mean) / std
