"""The data contracts: a clean manifest passes, and each kind of corruption is named."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pandas as pd
import pytest

from unsir_pipeline.validation import (
    ValidationFailed,
    ValidationReport,
    require_valid,
    validate_splits,
)

NUM_CLASSES = 3
FORGET = (1,)


def _digest(sample_id: str) -> str:
    return hashlib.sha256(sample_id.encode()).hexdigest()


def _manifest() -> pd.DataFrame:
    """Three classes, four samples of each in train and two in test."""
    rows = []
    for split, per_class in (("train", 4), ("test", 2)):
        for label in range(NUM_CLASSES):
            for i in range(per_class):
                sid = f"{split}-{label}-{i}"
                rows.append(
                    {"sample_id": sid, "label": label, "split": split, "digest": _digest(sid)}
                )
    return pd.DataFrame(rows)


def _retain(manifest: pd.DataFrame) -> pd.DataFrame:
    train = manifest[manifest["split"] == "train"]
    return train[~train["label"].isin(FORGET)].head(4).reset_index(drop=True)


def _validate(manifest: pd.DataFrame, retain: pd.DataFrame, **overrides) -> ValidationReport:
    kwargs = {"num_classes": NUM_CLASSES, "forget_classes": FORGET, "min_per_class": 2}
    kwargs.update(overrides)
    return validate_splits(manifest, retain, **kwargs)


def test_clean_inputs_pass_every_expectation() -> None:
    manifest = _manifest()
    report = _validate(manifest, _retain(manifest))
    assert report.success, report.failures
    assert report.failures == ()
    assert report.evaluated >= 20
    require_valid(report)  # does not raise


def _set(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    frame = frame.copy()
    frame.loc[row, column] = value
    return frame


MANIFEST_CORRUPTIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], list[str]]] = {
    "label out of range": (
        lambda m: _set(m, 0, "label", 7),
        ["'label'", "label=7", "sample_id=train-0-0"],
    ),
    "sample in two splits": (
        lambda m: _set(m, 12, "sample_id", "train-0-0"),
        ["expect_column_values_to_be_unique", "sample_id=train-0-0"],
    ),
    "unknown split": (lambda m: _set(m, 3, "split", "holdout"), ["'split'", "split=holdout"]),
    "malformed digest": (lambda m: _set(m, 5, "digest", "ABC"), ["'digest'", "digest=ABC"]),
    "missing digest": (
        lambda m: _set(m, 5, "digest", None),
        ["expect_column_values_to_not_be_null", "'digest'"],
    ),
    "class absent from test": (
        lambda m: m[~((m["split"] == "test") & (m["label"] == 2))].reset_index(drop=True),
        ["class counts", "split=test, label=2", "count=0"],
    ),
    "missing column": (
        lambda m: m.drop(columns="split"),
        ["expect_column_to_exist", "'split'", "missing"],
    ),
}


@pytest.mark.parametrize("name", sorted(MANIFEST_CORRUPTIONS))
def test_manifest_corruption_is_named(name: str) -> None:
    corrupt, expected = MANIFEST_CORRUPTIONS[name]
    manifest = _manifest()
    report = _validate(corrupt(manifest), _retain(manifest))
    assert not report.success
    text = "\n".join(report.failures)
    for fragment in expected:
        assert fragment in text, f"{name}: {fragment!r} not in\n{text}"


def test_too_few_rows_per_class_names_split_and_class() -> None:
    manifest = _manifest()
    # Test holds 2 per class: a floor of 3 fails there only, for every class.
    report = _validate(manifest, _retain(manifest), min_per_class=3)
    assert len(report.failures) == 1
    assert "split=test, label=0" in report.failures[0]
    assert "split=train" not in report.failures[0]


@pytest.mark.parametrize(
    ("forget", "fragment"),
    [
        ((0, 1, 2), "expect_column_unique_value_count_to_be_between"),
        ((5,), "e.g. [5]"),
        ((), "row_count"),
    ],
)
def test_bad_forget_classes_fail(forget: tuple[int, ...], fragment: str) -> None:
    manifest = _manifest()
    retain = _retain(manifest)
    retain = retain[~retain["label"].isin(forget)]
    report = _validate(manifest, retain, forget_classes=forget)
    assert any(f.startswith("forget classes:") and fragment in f for f in report.failures), (
        report.failures
    )


def test_retain_subset_leaks_and_strangers_are_named() -> None:
    manifest = _manifest()
    retain = _retain(manifest)
    forget_row = manifest[(manifest["split"] == "train") & (manifest["label"] == 1)].iloc[[0]]
    test_row = manifest[manifest["split"] == "test"].iloc[[0]]
    retain = pd.concat([retain, forget_row, test_row], ignore_index=True)
    retain = _set(retain, 0, "digest", "0" * 64)  # content changed since the manifest was made

    report = _validate(manifest, retain)
    text = "\n".join(report.failures)
    assert "retain subset: expect_column_values_to_not_be_in_set" in text
    assert "sample_id=train-1-0" in text  # the forget-class sample
    assert "sample_id=test-0-0" in text  # not in the train split
    assert "'digest' and 'train_split_digest'" in text and "sample_id=train-0-0" in text


def test_duplicate_retain_ids_fail() -> None:
    manifest = _manifest()
    retain = _retain(manifest)
    report = _validate(manifest, pd.concat([retain, retain.iloc[[0]]], ignore_index=True))
    assert any(
        f.startswith("retain subset: expect_column_values_to_be_unique") for f in report.failures
    )


def test_extra_failures_are_reported_and_raised_with_every_line() -> None:
    manifest = _manifest()
    report = _validate(
        _set(manifest, 12, "digest", "xyz"),
        _retain(manifest),
        extra_failures=["data/manifest.csv: recorded md5 a, found b"],
    )
    assert report.failures[-1] == "data/manifest.csv: recorded md5 a, found b"
    with pytest.raises(ValidationFailed) as info:
        require_valid(report)
    assert info.value.report is report
    message = str(info.value)
    assert "2 failure(s)" in message
    assert all(line in message for line in report.failures)


def test_markdown_lists_status_and_failures() -> None:
    report = ValidationReport(success=False, failures=("a | b", "c"), evaluated=4)
    markdown = report.to_markdown()
    assert "FAILED" in markdown and "**Expectations evaluated:** 4" in markdown
    assert "- a \\| b" in markdown and "- c" in markdown
    assert "passed" in ValidationReport(True, (), 4).to_markdown()
