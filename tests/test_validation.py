"""The data contracts: a clean manifest passes, and each kind of corruption is named."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pandas as pd
import pytest

from unsir_pipeline.adapters.validation import (
    ValidationFailed,
    ValidationReport,
    manifest_row_failures,
    require_valid,
    validate_manifest,
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
                rows.append({"sample_id": sid, "label": label, "split": split, "digest": _digest(sid)})
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


def test_too_few_rows_per_class_name_the_classes_and_the_setting_to_change() -> None:
    """With 40 images a class the validation split holds 6 of each: the failure said
    'min_value=10.0 ... label=0', naming neither the class ('cat') nor data.min_per_class."""
    import torch

    from unsir.data import ClassificationData
    from unsir.splits import make_split_manifest

    labels = torch.arange(3).repeat(40)
    data = ClassificationData(
        "pets", torch.rand(120, 3, 2, 2), labels, ("cat", "dog", "emu"), tuple(map(str, range(120)))
    )
    report = validate_manifest(make_split_manifest(data, seed=0), num_classes=3, min_per_class=10, data=data)
    [failure] = report.failures
    assert "count=6, split=val, label=0, class=cat" in failure
    assert failure.endswith(
        "every class needs at least 10 samples in every split (data.min_per_class): add samples "
        "of those classes, lower data.min_per_class, or give that split more in data.fractions"
    )


def test_a_single_class_data_set_is_refused_before_training() -> None:
    manifest = _manifest()
    single = manifest[manifest["label"] == 0].reset_index(drop=True)
    report = validate_manifest(single, num_classes=1, min_per_class=2)
    assert not report.success
    assert any("1 class" in f and "at least 2" in f for f in report.failures), report.failures
    assert validate_manifest(manifest, num_classes=NUM_CLASSES, min_per_class=2).success


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
    assert any(f.startswith("forget classes:") and fragment in f for f in report.failures), report.failures


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
    assert any(f.startswith("retain subset: expect_column_values_to_be_unique") for f in report.failures)


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


# --- row by row, against the data set --------------------------------------------------------


def _rows(digits, manifest: pd.DataFrame, **kwargs) -> list[str]:
    return manifest_row_failures(manifest, digits, **kwargs)


def test_clean_manifest_matches_its_data_set_row_by_row(digits, digits_manifest) -> None:
    assert _rows(digits, digits_manifest) == []
    report = validate_splits(
        digits_manifest,
        digits_manifest[digits_manifest["split"] == "train"].head(20),
        num_classes=10,
        forget_classes=(3,),
        min_per_class=1,
        data=digits,
    )
    assert report.failures == () or all("retain subset" in f for f in report.failures)
    assert not any(f.startswith("manifest rows:") for f in report.failures)


def test_flipped_label_is_named_by_line_and_id(digits, digits_manifest) -> None:
    manifest = digits_manifest.copy()
    pos = 117
    true_label = int(manifest.loc[pos, "label"])
    manifest.loc[pos, "label"] = (true_label + 1) % 10
    sid = manifest.loc[pos, "sample_id"]

    failures = _rows(digits, manifest)

    assert any(
        f"1 rows carry another label than the data set's: line {pos + 2} (sample_id {sid!r}, "
        f"label {(true_label + 1) % 10}, data set {true_label})" in f
        for f in failures
    ), failures
    assert any(f"class {true_label} " in f and "manifest rows, but the data set has" in f for f in failures)


def test_deleted_rows_are_counted_and_named(digits, digits_manifest) -> None:
    dropped = digits_manifest.iloc[100:161]
    failures = _rows(digits, digits_manifest.drop(index=dropped.index))
    assert any(
        f.startswith(
            "61 samples of the data set 'digits' have no manifest row (deleted rows?): "
            f"sample_id {dropped.iloc[0]['sample_id']!r}"
        )
        for f in failures
    ), failures


def test_duplicated_unknown_and_out_of_range_rows_are_named(digits, digits_manifest) -> None:
    manifest = digits_manifest.copy()
    manifest.loc[5, "sample_id"] = manifest.loc[4, "sample_id"]
    manifest.loc[9, "sample_id"] = "stranger"
    manifest.loc[12, "label"] = 10

    text = "\n".join(_rows(digits, manifest))

    assert f"2 rows repeat a sample_id: line 6 (sample_id {manifest.loc[4, 'sample_id']!r}); line 7" in text
    assert "1 rows name a sample the data set 'digits' does not have: line 11 (sample_id 'stranger')" in text
    assert "1 rows have a label outside 0..9: line 14 (sample_id" in text and "label 10" in text


def test_digest_is_recomputed_on_a_seeded_sample(digits, digits_manifest) -> None:
    manifest = digits_manifest.copy()
    manifest["digest"] = manifest["digest"].astype(object)
    manifest.loc[:, "digest"] = ["f" * 64] * len(manifest)  # every row altered

    sampled = _rows(digits, manifest, sample_rows=50)
    assert any(f.startswith("50 of 50 rows checked have a digest that does not match") for f in sampled), sampled
    assert _rows(digits, manifest, sample_rows=50) == sampled  # the same rows each time
    one = digits_manifest.copy()
    one.loc[3, "digest"] = "0" * 64
    assert any(
        f"line 5 (sample_id {one.loc[3, 'sample_id']!r}, recorded 000000000000..." in f for f in _rows(digits, one)
    )


def test_retain_subset_edited_by_hand_is_reported_not_redrawn(tmp_path, monkeypatch) -> None:
    from unsir_pipeline.adapters import data_versioning
    from unsir_pipeline.adapters.validation import require_retain_subset_unaltered

    path = tmp_path / "retain.csv"
    drawn = "sample_id,label,split,digest\na,0,train,x\n"
    path.write_text(drawn)
    record = path.with_name("retain.csv.dvc")
    record.write_text("outs:\n- md5: 123\n  path: retain.csv\n")
    recorded = {"answer": []}
    monkeypatch.setattr(data_versioning, "verify", lambda root, paths: recorded["answer"])

    require_retain_subset_unaltered(tmp_path, path, drawn)  # the same draw: nothing to say
    require_retain_subset_unaltered(tmp_path, path, drawn + "b,1,train,y\n")  # matches its record: redraw
    recorded["answer"] = ["data/retain/retain.csv: recorded md5 123, found 456"]
    with pytest.raises(ValidationFailed, match=r"recorded md5 123, found 456: it was changed after it was drawn"):
        require_retain_subset_unaltered(tmp_path, path, drawn + "b,1,train,y\n")
    record.unlink()
    require_retain_subset_unaltered(tmp_path, path, "anything")  # never recorded: nothing to compare with
