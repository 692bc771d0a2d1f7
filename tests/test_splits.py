import re

import pytest
import torch

from unsir.classes import resolve_classes
from unsir.configs import SplitFractions
from unsir.errors import UnlearningInputError
from unsir.splits import Normalization, draw_retain_subset, make_split_manifest


def test_manifest_is_deterministic_stratified_and_complete(digits, digits_manifest):
    again = make_split_manifest(digits, seed=0)
    assert digits_manifest.equals(again)
    assert not digits_manifest.equals(make_split_manifest(digits, seed=1))
    assert len(digits_manifest) == len(digits) and digits_manifest["sample_id"].is_unique
    share = digits_manifest.groupby("label")["split"].apply(lambda s: (s == "train").mean())
    assert share.between(0.5, 0.6).all(), share  # every class split ~55/15/30
    assert digits_manifest["digest"].str.fullmatch(r"[0-9a-f]{64}").all()


def test_manifest_with_validation_split(digits):
    manifest = make_split_manifest(digits, seed=0, fractions=SplitFractions(0.6, 0.2, 0.2))
    counts = manifest["split"].value_counts(normalize=True)
    assert counts["val"] == pytest.approx(0.2, abs=0.01)


@pytest.mark.parametrize(
    ("fractions", "message"),
    [
        ((0.0, 0.5, 0.5), r"train must be > 0, got 0\.0"),
        ((0.6, -0.1, 0.5), r"val must be >= 0, got -0\.1"),
        ((0.7, 0.2, 0.3), r"train \+ val \+ test must be 1, got 1\.2"),
    ],
)
def test_split_fractions_name_the_bad_value(fractions, message):
    with pytest.raises(UnlearningInputError, match=message):
        SplitFractions(*fractions)


@pytest.mark.parametrize("per_class", [1, 2, 5])
def test_too_few_samples_to_split_names_the_smallest_class(per_class):
    from unsir.data import ClassificationData

    labels = torch.arange(3).repeat_interleave(per_class)
    labels[-1] = 1  # class 'c' is the smallest
    data = ClassificationData(
        "few", torch.rand(len(labels), 1, 4, 4), labels, ("a", "b", "c"), tuple(f"s{i}" for i in range(len(labels)))
    )
    smallest = int((labels == 2).sum())
    with pytest.raises(UnlearningInputError, match=rf"'few'.*smallest class 'c' has {smallest} sample"):
        make_split_manifest(data, seed=0)


def test_retain_subset_has_no_forget_class_and_n_per_class(digits_manifest):
    rows = draw_retain_subset(digits_manifest, forget_classes=(3, 8), per_class=20, seed=5, num_classes=10)
    assert not rows["label"].isin([3, 8]).any()
    assert rows.groupby("label").size().to_dict() == {c: 20 for c in range(10) if c not in (3, 8)}
    assert set(rows["split"]) == {"train"}
    again = draw_retain_subset(digits_manifest, forget_classes=(3, 8), per_class=20, seed=5, num_classes=10)
    assert rows.equals(again)


@pytest.mark.parametrize(
    ("forget", "per_class", "message"),
    [
        ((10,), 5, "unknown forget class 10"),
        (tuple(range(10)), 5, "every one of the 10 classes"),
        ((), 5, "no forget class"),
        ((1,), 0, "must be positive"),
    ],
)
def test_retain_subset_rejects_bad_input(digits_manifest, forget, per_class, message):
    with pytest.raises(UnlearningInputError, match=message):
        draw_retain_subset(digits_manifest, forget_classes=forget, per_class=per_class, seed=0, num_classes=10)


def test_resolve_classes_accepts_names_and_indices():
    names = ("cat", "dog", "frog")
    assert resolve_classes(["dog", 0, "2"], names) == (0, 1, 2)
    with pytest.raises(UnlearningInputError, match="unknown class 'bird'"):
        resolve_classes(["bird"], names)


def test_resolve_classes_matches_a_name_in_either_unicode_form():
    import unicodedata

    # An image folder copied from macOS names its class "café" decomposed; a person types it composed.
    decomposed, composed = unicodedata.normalize("NFD", "café"), unicodedata.normalize("NFC", "café")
    assert decomposed != composed
    assert resolve_classes([composed], ("chat", decomposed)) == (1,)
    assert resolve_classes([decomposed], ("chat", composed)) == (1,)
    assert resolve_classes([composed], (decomposed, composed)) == (1,)  # an exact match wins


@pytest.mark.parametrize("typed", ["-0", " 1", "1 ", "+1", "0_1", "\u0661", "\uff11"])
def test_resolve_classes_takes_an_index_in_ascii_digits_only(typed):
    # `unsir forget -- -0` forgot class 0 while `-1` was refused; int() also reads these.
    with pytest.raises(UnlearningInputError, match=re.escape(f"unknown class {typed!r}")):
        resolve_classes([typed], ("cat", "dog", "frog"))
    assert resolve_classes(["01"], ("cat", "dog", "frog")) == (1,)


def test_normalization_fit_on_train_gives_zero_mean_unit_std():
    images = torch.rand(64, 3, 4, 4) * 5 + 2
    norm = Normalization.fit(images)
    out = norm.apply(images)
    assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-4
    assert (out.std(dim=(0, 2, 3)) - 1).abs().max() < 1e-3
    with pytest.raises(UnlearningInputError, match="1 channels"):
        norm.apply(torch.zeros(2, 1, 4, 4))


@pytest.mark.parametrize("seed", [-1, 2**32, None, 1.5, True])
def test_a_seed_outside_what_numpy_takes_is_named(digits, digits_manifest, seed):
    """Before: -1 failed as "its smallest class '8' has 174 sample(s) ... add samples or change
    the fractions", the retain seed -1 as "expected non-negative integer", and None drew a
    different split on every call."""
    with pytest.raises(
        UnlearningInputError, match=re.escape(f"split seed must be an integer in [0, 4294967295], got {seed!r}")
    ):
        make_split_manifest(digits, seed=seed)
    with pytest.raises(
        UnlearningInputError, match=re.escape(f"retain seed must be an integer in [0, 4294967295], got {seed!r}")
    ):
        draw_retain_subset(digits_manifest, forget_classes=(3,), per_class=5, seed=seed, num_classes=10)


def test_forget_classes_given_as_one_bare_index_are_named_and_an_array_is_taken(digits, digits_manifest, digits_splits):
    """Before: "'int' object is not iterable" for 3, and "the truth value of an array with more
    than one element is ambiguous" for np.array([3, 4])."""
    import numpy as np

    from unsir.problem import build_task

    expected = re.escape("forget classes must be a collection of class indices, e.g. (3,) or (3, 5); got 3")
    with pytest.raises(UnlearningInputError, match=expected):
        draw_retain_subset(digits_manifest, forget_classes=3, per_class=5, seed=0, num_classes=10)
    with pytest.raises(UnlearningInputError, match=expected):
        digits_splits.evaluation_data(3)
    rows = draw_retain_subset(digits_manifest, forget_classes=np.array([3, 4]), per_class=5, seed=0, num_classes=10)
    assert not set(rows["label"]) & {3, 4}
    with pytest.raises(UnlearningInputError, match=expected):
        build_task(digits_splits, digits, rows, 3)
    assert build_task(digits_splits, digits, rows, np.array([3, 4])).forget_classes == (3, 4)
    assert digits_splits.evaluation_data([4, 3]).forget_classes == (4, 3)
