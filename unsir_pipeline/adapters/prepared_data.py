"""The project's prepared data set on disk: the files DVC versions (tensors, metadata, the split
manifest) and the retain subsets drawn from them. Every step that needs the data reads it here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters import data_versioning
from unsir_pipeline.settings.workspace import Workspace

if TYPE_CHECKING:
    import pandas as pd

    from unsir.data import ClassificationData

# The tensors, the manifest's table and the retain subset's draw import torch, pandas and
# scikit-learn where they are read: the light commands (`unsir request add` checks class names
# here) must not pay seconds of imports for the metadata alone.

PREPARED_FILES = ("dataset.safetensors", "dataset.json", "manifest.csv")


class PreparedDataMissing(UnlearningInputError):
    """The prepared data set is not on disk: the message says how to get it back."""


class PreparedDataDamaged(UnlearningInputError):
    """A prepared data file is on disk but cannot be read as `prepare` wrote it (truncated,
    overwritten, edited by hand): the message names it and says how to get it back."""


def require_prepared(ws: Workspace) -> None:
    """Raise ``PreparedDataMissing`` unless the prepared data set is on disk. When ``dvc.lock``
    records it (a clone, or files deleted by hand), DVC restores exactly those files from its
    cache or remote; rebuilding would draw a new split, which forgetting then refuses."""
    missing = [name for name in PREPARED_FILES if not (ws.prepared_dir / name).is_file()]
    if not missing:
        return
    raise PreparedDataMissing(
        f"no prepared data at {ws.prepared_dir} (missing {', '.join(missing)}); {how_to_restore(ws)}"
    )


def require_prepared_as_recorded(ws: Workspace) -> None:
    """Raise ``PreparedDataMissing`` or ``PreparedDataDamaged`` unless the prepared data is on
    disk and, where ``dvc.lock`` records it, is what it records (file by file, as the flow's
    validation checks it again). The commands that run a flow check it before Prefect starts:
    a file edited or cut short is refused in a second, not after half a minute of start-up."""
    require_prepared(ws)
    recorded = recorded_prepared_path(ws)
    problems = data_versioning.verify(ws.root, [recorded]) if recorded is not None else []
    if problems:
        raise PreparedDataDamaged(
            f"the prepared data is not what dvc.lock records ({'; '.join(problems)}); {how_to_restore(ws, force=True)}"
        )


def how_to_restore(ws: Workspace, *, force: bool = False) -> str:
    """How to get the prepared data back. When ``dvc.lock`` records it, DVC restores exactly
    those files (``force``: over damaged ones, which `dvc pull` otherwise refuses to replace);
    rebuilding would draw a new split, which forgetting then refuses."""
    recorded = recorded_prepared_path(ws)
    if recorded is not None:
        return f"restore it with `dvc pull{' --force' if force else ''} {recorded}` (dvc.lock records it)"
    return "run `unsir bootstrap` (or `dvc repro prepare`)"


@contextmanager
def _restorable(ws: Workspace) -> Iterator[None]:
    """Add to a damaged file's error how to get the prepared data back."""
    try:
        yield
    except PreparedDataDamaged as err:
        raise PreparedDataDamaged(f"{err}; {how_to_restore(ws, force=True)}") from err.__cause__


@contextmanager
def _reading(path: Path, *errors: type[Exception]) -> Iterator[None]:
    """A file that cannot be parsed (``errors``: its parser's own, besides ``ValueError``), or
    lacks an entry `prepare` writes into it, is named with what is wrong, not left to the
    parser's message, which names no file."""
    unparseable: tuple[type[Exception], ...] = (ValueError, TypeError, *errors)
    try:
        yield
    except KeyError as err:  # parsed, but without an entry `prepare` writes
        raise PreparedDataDamaged(f"{path} is damaged: it has no {err} entry") from err
    except unparseable as err:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else "unreadable"
        raise PreparedDataDamaged(f"{path} is damaged: {type(err).__name__}: {detail}") from err


def recorded_prepared_path(ws: Workspace) -> str | None:
    """The prepared data's path in the project when ``dvc.lock`` records it (DVC can restore it
    from its cache or remote), else None."""
    try:
        relative = ws.prepared_dir.relative_to(ws.root).as_posix()
    except ValueError:  # data_dir outside the project: DVC does not track it there
        return None
    if not (ws.root / ".dvc").is_dir():  # DVC not initialised yet (bootstrap does it): nothing recorded
        return None
    return relative if relative in data_versioning.recorded_digests(ws.root) else None


def prepared_class_names(ws: Workspace) -> tuple[str, ...]:
    """The prepared data set's class names (its metadata alone: no tensor is read)."""
    require_prepared(ws)
    path = ws.prepared_dir / "dataset.json"
    with _restorable(ws), _reading(path):
        return tuple(json.loads(path.read_text())["class_names"])


def load_prepared(ws: Workspace) -> tuple[ClassificationData, pd.DataFrame]:
    """The prepared data set and its manifest. The flow's steps each ask for them; they are
    read from disk once per process and read again only when a file changed."""
    require_prepared(ws)
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(ws.prepared_dir.iterdir()))
    with _restorable(ws):
        data, manifest = _read_prepared(str(ws.prepared_dir), stamp)
    return data, manifest.copy()  # callers may filter or edit the table; the tensors are only indexed


@lru_cache(maxsize=2)
def _read_prepared(prepared_dir: str, stamp: tuple) -> tuple[ClassificationData, pd.DataFrame]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from unsir.data import ClassificationData

    directory = Path(prepared_dir)
    with _reading(directory / "dataset.safetensors", SafetensorError):
        tensors = load_file(str(directory / "dataset.safetensors"))
        images, labels = tensors["images"], tensors["labels"]
    with _reading(directory / "dataset.json"):
        meta = json.loads((directory / "dataset.json").read_text())
        name, class_names, sample_ids = meta["name"], tuple(meta["class_names"]), tuple(meta["sample_ids"])
    # Tensors and metadata that disagree (one of them replaced by another data set's) are
    # named by ClassificationData's own checks.
    data = ClassificationData(name, images, labels, class_names, sample_ids)
    with _reading(directory / "manifest.csv"):
        manifest = read_manifest(directory / "manifest.csv")
    return data, manifest


def read_manifest(path: Path) -> pd.DataFrame:
    import pandas as pd

    dtypes: dict[str, str | type[str]] = {"sample_id": str, "label": "int64", "split": str, "digest": str}
    return pd.read_csv(path, dtype=dtypes, keep_default_na=False)


def retain_subset_path(ws: Workspace, forget_classes: tuple[int, ...]) -> Path:
    p = ws.params.data
    name = "-".join(str(c) for c in forget_classes)
    return ws.retain_dir / f"retain-forget{name}-n{p.retain_per_class}-seed{p.retain_seed}.csv"


def write_retain_subset(
    ws: Workspace, manifest: pd.DataFrame, forget_classes: tuple[int, ...], num_classes: int
) -> Path:
    """Draw D_r_sub (never a forget-class sample) and write it; same inputs, same bytes."""
    from unsir.splits import draw_retain_subset

    p = ws.params.data
    rows = draw_retain_subset(
        manifest,
        forget_classes=forget_classes,
        per_class=p.retain_per_class,
        seed=p.retain_seed,
        num_classes=num_classes,
    )
    path = retain_subset_path(ws, forget_classes)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A hand-edited subset is reported, not silently redrawn (imported here: GE costs 1.5 s).
    from unsir_pipeline.adapters.validation import require_retain_subset_unaltered

    require_retain_subset_unaltered(ws.root, path, rows.to_csv(index=False))
    rows.to_csv(path, index=False)
    return path
