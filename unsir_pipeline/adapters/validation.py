"""Data contracts on the split manifest and the retain subset, checked by Great Expectations.

This is the only module that imports Great Expectations. The pipeline validates its inputs
here before any compute: a manifest with a duplicated sample, an unknown split, a class
missing from the test split or a retain subset that leaks a forget-class sample would make
every later number meaningless, so it must stop the run with a message naming what is wrong.

Each check is a real GE expectation run on an ephemeral context against a pandas frame.
Checks that need a join or a count (class counts per split, retain rows against the
manifest) are computed with pandas into small derived frames first, so that the expectation
and its failure message can name the split, class or sample concerned.

The expectations see the manifest alone. :func:`manifest_row_failures` checks it row by row
against the data set it describes (every id known and present once, every label the data
set's, per-class counts equal, content digests recomputed on a sample of rows), naming the
manifest's lines; :func:`require_retain_subset_unaltered` refuses to redraw over a retain
subset that matches neither a fresh draw nor its DVC record.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import great_expectations as gx
import great_expectations.expectations as gxe
import numpy as np
import pandas as pd
from great_expectations.core import ExpectationSuiteValidationResult
from great_expectations.core.expectation_validation_result import ExpectationValidationResult
from great_expectations.data_context.types.base import ProgressBarsConfig

from unsir.errors import UnlearningInputError

if TYPE_CHECKING:
    from unsir.data import ClassificationData

MANIFEST_COLUMNS = ("sample_id", "label", "split", "digest")
KNOWN_SPLITS = ("train", "val", "test")
DIGEST_PATTERN = r"^[0-9a-f]{64}$"
INTEGER_DTYPES = [
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "Int8",
    "Int16",
    "Int32",
    "Int64",
    "UInt8",
    "UInt16",
    "UInt32",
    "UInt64",
]

# How many offending values or rows a failure line quotes before it summarises.
_SAMPLE_SIZE = 5
# Rows whose content digest is recomputed per validation: every row of a small data set, a
# seeded sample of a large one (hashing CIFAR-10 whole costs about a second).
DIGEST_SAMPLE_ROWS = 2048


class ValidationFailed(UnlearningInputError):
    """The data broke its contract; ``report`` holds every failure found, not just the first,
    and ``remedy``, when known, how to get the data back. Bad input, as a damaged prepared file
    is: the data on disk is to be restored or rebuilt, the pipeline did not fail."""

    def __init__(self, report: ValidationReport, remedy: str | None = None) -> None:
        self.report = report
        lines = "\n".join(f"  - {line}" for line in report.failures)
        super().__init__(
            f"data validation failed: {len(report.failures)} failure(s) "
            f"out of {report.evaluated} expectation(s) evaluated:\n{lines}" + (f"\n{remedy}" if remedy else "")
        )


@dataclass(frozen=True)
class ValidationReport:
    """Outcome of one validation: ``evaluated`` counts the GE expectations that were run."""

    success: bool
    failures: tuple[str, ...]
    evaluated: int

    def to_markdown(self) -> str:
        """A short report for a Prefect markdown artifact."""
        status = "passed" if self.success else "FAILED"
        lines = [
            "# Data validation",
            "",
            f"**Status:** {status}  ",
            f"**Expectations evaluated:** {self.evaluated}  ",
            f"**Failures:** {len(self.failures)}",
        ]
        if self.failures:
            lines += ["", "## Failures", ""]
            lines += [f"- {_escape_markdown(line)}" for line in self.failures]
        return "\n".join(lines) + "\n"


class _Suite:
    """The expectations of one validation, run table by table: every failure is kept, not just
    the first, so that one report names everything wrong."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.evaluated = 0

    def run(
        self,
        table: str,
        frame: pd.DataFrame,
        expectations: list[gxe.Expectation],
        index_columns: Sequence[str] = (),
    ) -> None:
        result = _validate_frame(table, frame, expectations, index_columns)
        self.evaluated += result.statistics["evaluated_expectations"]
        self.failures.extend(_describe(table, frame, r) for r in result.results if not r.success)

    def run_rows(self, table: str, frame: pd.DataFrame, expectations: Callable[[bool], list[gxe.Expectation]]) -> bool:
        """A table of manifest rows: ``expectations(has_columns)`` run on it, keyed by sample id
        when it has the manifest's columns. Returns whether it has them."""
        has_columns = _has_columns(frame, MANIFEST_COLUMNS)
        self.run(table, frame, expectations(has_columns), ["sample_id"] if has_columns else ())
        return has_columns

    def check_manifest(
        self,
        manifest: pd.DataFrame,
        num_classes: int,
        min_per_class: int,
        data: ClassificationData | None,
        digest_sample_rows: int,
    ) -> bool:
        """The manifest's columns and rows, and the class balance of each split; with ``data``,
        the rows against the data set. Returns whether the manifest has its columns."""
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1, got {num_classes}")
        if min_per_class < 0:
            raise ValueError(f"min_per_class must be non-negative, got {min_per_class}")
        # One class leaves nothing to retain: every forget would be refused, so the data set is.
        self.evaluated += 1
        if num_classes < 2:
            names = f" {list(data.class_names)}" if data is not None else ""
            self.failures.append(
                f"classes: the data set has {num_classes} class{names}; expected at least 2 "
                "(forgetting a class must leave one to retain)"
            )
        manifest_ok = self.run_rows("manifest", manifest, lambda ok: _manifest_expectations(ok, num_classes))
        if manifest_ok:
            counts, keys = _class_counts(manifest, num_classes), ["split", "label"]
            if data is not None and data.num_classes == num_classes:  # a folder's "cat", not only label 0
                counts["class"], keys = [data.class_names[label] for label in counts["label"]], [*keys, "class"]
            before = len(self.failures)
            self.run(
                "class counts",
                counts,
                [gxe.ExpectColumnValuesToBeBetween(column="count", min_value=min_per_class)],
                keys,
            )
            if len(self.failures) > before:
                self.failures[-1] += (
                    f"; every class needs at least {min_per_class} samples in every split (data.min_per_class): "
                    "add samples of those classes, lower data.min_per_class, or give that split more in data.fractions"
                )
        if data is not None and manifest_ok:
            rows = manifest_row_failures(manifest, data, sample_rows=digest_sample_rows)
            self.evaluated += 1
            self.failures.extend(f"manifest rows: {line}" for line in rows)
        return manifest_ok

    def report(self, extra_failures: Sequence[str] = ()) -> ValidationReport:
        failures = [*self.failures, *(str(f) for f in extra_failures)]
        return ValidationReport(success=not failures, failures=tuple(failures), evaluated=self.evaluated)


def validate_manifest(
    manifest: pd.DataFrame,
    *,
    num_classes: int,
    min_per_class: int,
    data: ClassificationData | None = None,
    digest_sample_rows: int = DIGEST_SAMPLE_ROWS,
) -> ValidationReport:
    """The split manifest alone, as :func:`validate_splits` checks it: what ``unsir bootstrap``
    checks before it trains, so that a data set every forget would refuse (a split with too
    few samples of a class) is refused before a model is trained on it."""
    suite = _Suite()
    suite.check_manifest(manifest, num_classes, min_per_class, data, digest_sample_rows)
    return suite.report()


def validate_splits(
    manifest: pd.DataFrame,
    retain_subset: pd.DataFrame,
    *,
    num_classes: int,
    forget_classes: tuple[int, ...],
    min_per_class: int,
    extra_failures: Sequence[str] = (),
    data: ClassificationData | None = None,
    digest_sample_rows: int = DIGEST_SAMPLE_ROWS,
) -> ValidationReport:
    """Check the manifest, the class balance of each split, the forget classes and the retain subset.

    ``extra_failures`` are failures found elsewhere (for example DVC digest mismatches); they are
    appended so that one report, and one error, lists everything wrong with the inputs. With
    ``data`` (the data set the manifest describes) the manifest is also checked row by row
    against it (:func:`manifest_row_failures`).
    """
    suite = _Suite()
    manifest_ok = suite.check_manifest(manifest, num_classes, min_per_class, data, digest_sample_rows)

    forget = pd.DataFrame({"forget_class": list(forget_classes)})
    suite.run(
        "forget classes",
        forget,
        [
            # At least one class to forget, each a known class, and at least one class left over.
            gxe.ExpectTableRowCountToBeBetween(min_value=1),
            gxe.ExpectColumnValuesToBeBetween(column="forget_class", min_value=0, max_value=num_classes - 1),
            gxe.ExpectColumnUniqueValueCountToBeBetween(column="forget_class", max_value=num_classes - 1),
        ],
    )

    retain_ok = suite.run_rows("retain subset", retain_subset, lambda ok: _retain_expectations(ok, forget_classes))
    if retain_ok and manifest_ok:
        suite.run(
            "retain vs manifest",
            _retain_against_train(retain_subset, manifest),
            [
                # A null means the id is not in the manifest's train split at all.
                gxe.ExpectColumnValuesToNotBeNull(column="train_split_digest"),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="digest",
                    column_B="train_split_digest",
                    ignore_row_if="either_value_is_missing",
                ),
                gxe.ExpectColumnPairValuesToBeEqual(
                    column_A="label",
                    column_B="train_split_label",
                    ignore_row_if="either_value_is_missing",
                ),
            ],
            ["sample_id"],
        )
    return suite.report(extra_failures)


def require_valid(report: ValidationReport, remedy: str | None = None) -> None:
    """Raise :class:`ValidationFailed` listing every failure (and ``remedy``) if the report is
    not a success."""
    if not report.success:
        raise ValidationFailed(report, remedy)


# --- row by row, against the data set ------------------------------------------------------


def _lines(
    positions: Sequence[int] | np.ndarray, manifest: pd.DataFrame, detail: Callable[[int], str] | None = None
) -> str:
    """'line 7 (sample_id x), line 9 (...) and 3 more': line numbers as in the CSV file (the
    header is line 1)."""
    ids = manifest["sample_id"].to_numpy()
    shown = [
        f"line {pos + 2} (sample_id {ids[pos]!r}{', ' + detail(pos) if detail else ''})"
        for pos in positions[:_SAMPLE_SIZE]
    ]
    more = len(positions) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _sample_digest(images: Any, labels: Any, index: int) -> str:
    # The recipe of ClassificationData.sample_digests, for one sample.
    return hashlib.sha256(images[index].tobytes() + int(labels[index]).to_bytes(2, "little")).hexdigest()


def manifest_row_failures(
    manifest: pd.DataFrame, data: ClassificationData, *, sample_rows: int = DIGEST_SAMPLE_ROWS, seed: int = 0
) -> list[str]:
    """Every way the manifest's rows disagree with the data set, each naming the rows.

    Checked: sample ids unique and known to the data set, no sample of the data set left out,
    labels in range and equal to the data set's, per-class counts equal, and the content
    digest recomputed for ``sample_rows`` rows (all of them when there are fewer; a seeded
    sample otherwise, so that a rerun checks the same rows).
    """
    if not _has_columns(manifest, MANIFEST_COLUMNS):
        return []  # the column expectations already say what is missing
    failures: list[str] = []
    num_classes = len(data.class_names)
    index_of = {sid: i for i, sid in enumerate(data.sample_ids)}
    ids = manifest["sample_id"].astype(str).to_numpy()
    labels = pd.to_numeric(manifest["label"], errors="coerce").to_numpy()
    data_labels = data.labels.numpy()

    duplicated = np.flatnonzero(pd.Series(ids).duplicated(keep=False).to_numpy())
    if len(duplicated):
        failures.append(f"{len(duplicated)} rows repeat a sample_id: {_lines(duplicated, manifest)}")
    unknown = np.flatnonzero([sid not in index_of for sid in ids])
    if len(unknown):
        failures.append(
            f"{len(unknown)} rows name a sample the data set {data.name!r} does not have: {_lines(unknown, manifest)}"
        )
    missing = sorted(set(index_of) - set(ids), key=index_of.__getitem__)
    if missing:
        quoted = ", ".join(repr(m) for m in missing[:_SAMPLE_SIZE])
        failures.append(
            f"{len(missing)} samples of the data set {data.name!r} have no manifest row (deleted rows?): "
            f"sample_id {quoted}" + (f" and {len(missing) - _SAMPLE_SIZE} more" if len(missing) > _SAMPLE_SIZE else "")
        )
    valid = ~np.isnan(labels.astype(float))
    in_range = valid & (labels >= 0) & (labels < num_classes)
    out_of_range = np.flatnonzero(~in_range)
    if len(out_of_range):
        failures.append(
            f"{len(out_of_range)} rows have a label outside 0..{num_classes - 1}: "
            + _lines(out_of_range, manifest, lambda pos: f"label {_plain(manifest['label'].iloc[pos])!r}")
        )
    known = np.array([sid in index_of for sid in ids], dtype=bool)
    rows_idx = np.array([index_of.get(sid, -1) for sid in ids])
    relabelled = np.flatnonzero(known & in_range & (labels != data_labels[np.where(known, rows_idx, 0)]))
    if len(relabelled):
        failures.append(
            f"{len(relabelled)} rows carry another label than the data set's: "
            + _lines(
                relabelled,
                manifest,
                lambda pos: f"label {int(labels[pos])}, data set {int(data_labels[rows_idx[pos]])}",
            )
        )
    manifest_counts = np.bincount(labels[in_range].astype(int), minlength=num_classes)
    data_counts = np.bincount(data_labels, minlength=num_classes)
    for label in np.flatnonzero(manifest_counts != data_counts):
        failures.append(
            f"class {int(label)} ({data.class_names[label]!r}): {int(manifest_counts[label])} manifest rows, "
            f"but the data set has {int(data_counts[label])} samples"
        )

    candidates = np.flatnonzero(known)
    if len(candidates) > sample_rows:
        candidates = np.sort(np.random.default_rng(seed).choice(candidates, size=sample_rows, replace=False))
    images = data.images.contiguous().numpy()
    digests = manifest["digest"].astype(str).to_numpy()
    altered = np.array(
        [pos for pos in candidates if _sample_digest(images, data_labels, rows_idx[pos]) != digests[pos]], dtype=int
    )
    if len(altered):
        failures.append(
            f"{len(altered)} of {len(candidates)} rows checked have a digest that does not match the sample's "
            "content: "
            + _lines(
                altered,
                manifest,
                lambda pos: (
                    f"recorded {digests[pos][:12]}..., "
                    f"content {_sample_digest(images, data_labels, rows_idx[pos])[:12]}..."
                ),
            )
        )
    return failures


def require_retain_subset_unaltered(project_dir: Path, path: Path, fresh: str) -> None:
    """Before a retain subset is (re)drawn over ``path``: an existing file that is neither the
    fresh draw (``fresh``, the CSV text about to be written) nor what DVC recorded for it was
    changed by hand; raise :class:`ValidationFailed` naming it instead of overwriting the
    evidence. A file equal to its record but not to the draw is legitimate (the manifest
    changed since) and is redrawn."""
    from unsir_pipeline.adapters import data_versioning

    record = path.with_name(path.name + ".dvc")
    if not path.is_file() or not record.is_file():
        return
    if path.read_bytes() == fresh.encode("utf-8"):
        return
    mismatches = data_versioning.verify(project_dir, [str(path)])
    if mismatches:
        report = ValidationReport(
            success=False,
            failures=tuple(
                f"retain subset {m}: it was changed after it was drawn and recorded; restore it "
                f"(`dvc checkout --force {data_versioning.relative_path(Path(project_dir), record)}` in the project) "
                "or delete it to draw it again"
                for m in mismatches
            ),
            evaluated=1,
        )
        raise ValidationFailed(report)


# --- expectations -------------------------------------------------------------------------


def _column_presence(columns: Iterable[str]) -> list[gxe.Expectation]:
    return [gxe.ExpectColumnToExist(column=c) for c in columns]


def _manifest_expectations(columns_ok: bool, num_classes: int) -> list[gxe.Expectation]:
    expectations = _column_presence(MANIFEST_COLUMNS) + [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    if not columns_ok:
        # Every other expectation would only raise "column does not exist"; the presence
        # failures above already say what is wrong.
        return expectations
    expectations += [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in MANIFEST_COLUMNS]
    expectations += [
        gxe.ExpectColumnValuesToBeInTypeList(column="label", type_list=INTEGER_DTYPES),
        gxe.ExpectColumnValuesToBeBetween(column="label", min_value=0, max_value=num_classes - 1),
        # Unique ids also make the splits disjoint: a sample cannot sit in two of them.
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(KNOWN_SPLITS)),
        gxe.ExpectColumnValuesToMatchRegex(column="digest", regex=DIGEST_PATTERN),
    ]
    return expectations


def _retain_expectations(columns_ok: bool, forget_classes: tuple[int, ...]) -> list[gxe.Expectation]:
    expectations = _column_presence(MANIFEST_COLUMNS) + [gxe.ExpectTableRowCountToBeBetween(min_value=1)]
    if not columns_ok:
        return expectations
    expectations += [
        gxe.ExpectColumnValuesToNotBeNull(column="sample_id"),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id"),
        gxe.ExpectColumnValuesToBeInTypeList(column="label", type_list=INTEGER_DTYPES),
        gxe.ExpectColumnValuesToNotBeInSet(column="label", value_set=list(forget_classes)),
    ]
    return expectations


def _class_counts(manifest: pd.DataFrame, num_classes: int) -> pd.DataFrame:
    """Rows per (split, class) for every known split present and every class, zeros included.

    Unknown splits and out-of-range labels are left out here: the manifest expectations
    already report them, and counting them would only repeat the failure.
    """
    splits = [s for s in KNOWN_SPLITS if (manifest["split"] == s).any()]
    in_range = manifest[manifest["split"].isin(splits) & manifest["label"].isin(range(num_classes))]
    counts = in_range.groupby(["split", "label"]).size()
    grid = pd.MultiIndex.from_product([splits, range(num_classes)], names=["split", "label"])
    return counts.reindex(grid, fill_value=0).rename("count").reset_index()


def _retain_against_train(retain: pd.DataFrame, manifest: pd.DataFrame) -> pd.DataFrame:
    """Each retain row beside what the manifest's train split records for its id (NA if absent)."""
    train = manifest.loc[manifest["split"] == "train", ["sample_id", "digest", "label"]]
    # Duplicated ids are reported on the manifest; keep one so the join stays one-to-one.
    train = train.drop_duplicates("sample_id").rename(
        columns={"digest": "train_split_digest", "label": "train_split_label"}
    )
    return retain[["sample_id", "digest", "label"]].merge(train, on="sample_id", how="left")


def _has_columns(frame: pd.DataFrame, columns: Iterable[str]) -> bool:
    return all(c in frame.columns for c in columns)


# --- Great Expectations plumbing ----------------------------------------------------------

_LOCK = threading.Lock()
_BATCH_DEFINITIONS: dict[str, Any] = {}
_CONTEXT: Any = None


def _batch_definition(table: str) -> Any:
    """A whole-dataframe batch definition for ``table`` on one lazily created ephemeral context.

    Creating the context costs little, but reusing it keeps the data source and assets from
    piling up names; callers hold ``_LOCK`` because a GE context is not thread-safe.
    """
    global _CONTEXT
    if _CONTEXT is None:
        logging.getLogger("great_expectations").setLevel(logging.ERROR)
        # This module sets its own logger to INFO at import, under the level above: its
        # "Created temporary directory ... for ephemeral docs site" reached every forget's output.
        logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)
        context = gx.get_context(mode="ephemeral")
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        context.data_sources.add_pandas("unsir_frames")
        _CONTEXT = context
    if table not in _BATCH_DEFINITIONS:
        asset = _CONTEXT.data_sources.get("unsir_frames").add_dataframe_asset(table)
        _BATCH_DEFINITIONS[table] = asset.add_batch_definition_whole_dataframe("whole")
    return _BATCH_DEFINITIONS[table]


def _validate_frame(
    table: str,
    frame: pd.DataFrame,
    expectations: list[gxe.Expectation],
    index_columns: Sequence[str],
) -> ExpectationSuiteValidationResult:
    result_format: dict[str, Any] = {
        "result_format": "SUMMARY",
        "partial_unexpected_count": _SAMPLE_SIZE,
    }
    if index_columns:
        result_format["unexpected_index_column_names"] = list(index_columns)
    with _LOCK:
        batch = _batch_definition(table).get_batch(batch_parameters={"dataframe": frame})
        # A suite needs an active context to exist, so it is built after the context is.
        suite = gx.ExpectationSuite(name=f"unsir-{table.replace(' ', '-')}")
        for expectation in expectations:
            suite.add_expectation(expectation)
        return batch.validate(suite, result_format=result_format)


_UNINTERESTING_KWARGS = {"batch_id", "column", "column_A", "column_B", "result_format"}


def _describe(table: str, frame: pd.DataFrame, result: ExpectationValidationResult) -> str:
    """One readable line: table, expectation, column, what was expected and what was found."""
    config = result.expectation_config
    assert config is not None  # a suite's results carry their expectation
    kwargs = dict(config.kwargs)
    where = ""
    if "column" in kwargs:
        where = f" on column {kwargs['column']!r}"
    elif "column_A" in kwargs:
        where = f" on columns {kwargs['column_A']!r} and {kwargs['column_B']!r}"
    expected = ", ".join(
        f"{k}={v!r}" for k, v in sorted(kwargs.items()) if k not in _UNINTERESTING_KWARGS and v is not None
    )
    head = f"{table}: {config.type}{where}" + (f" ({expected})" if expected else "")
    if config.type == "expect_column_to_exist":
        return f"{head}: the column is missing; found columns {list(map(str, frame.columns))}"
    return f"{head}: {_found(result)}"


def _found(result: ExpectationValidationResult) -> str:
    info = result.exception_info or {}
    messages = _exception_messages(info)
    if messages:
        return f"could not be evaluated: {'; '.join(sorted(set(messages)))}"
    details: Mapping[str, Any] = result.result or {}
    if "unexpected_count" in details:
        count, total = details["unexpected_count"], details.get("element_count")
        text = f"{count} of {total} rows unexpected"
        rows = details.get("partial_unexpected_index_list")
        if rows and isinstance(rows[0], Mapping):
            quoted = "; ".join(", ".join(f"{k}={_plain(v)}" for k, v in row.items()) for row in rows[:_SAMPLE_SIZE])
            return f"{text}: {quoted}" + (" ..." if count > _SAMPLE_SIZE else "")
        values = [_plain(v) for v in details.get("partial_unexpected_list", [])[:_SAMPLE_SIZE]]
        return f"{text}, e.g. {values}"
    if "observed_value" in details:
        return f"observed {_plain(details['observed_value'])!r}"
    return "failed"


def _exception_messages(info: Mapping[str, Any]) -> list[str]:
    # GE nests exception info per metric when a metric fails, flat otherwise.
    if info.get("raised_exception"):
        return [str(info.get("exception_message"))]
    return [
        str(v.get("exception_message")) for v in info.values() if isinstance(v, Mapping) and v.get("raised_exception")
    ]


def _plain(value: Any) -> Any:
    """numpy scalars print as ``np.int64(3)``; show the plain Python value instead."""
    return value.item() if hasattr(value, "item") and callable(value.item) else value


def _escape_markdown(text: str) -> str:
    # Underscores inside words do not start emphasis in CommonMark; pipes and stars can.
    return text.replace("|", "\\|").replace("*", "\\*")
