"""A full disk, as every command reports it: the error that says so, wherever in the chain of
causes it is, and how much space is left where the project writes.

The failing write is named in many ways: an ``OSError`` (ENOSPC, EDQUOT) naming a file, SQLite's
"database or disk is full" (or "disk I/O error" where it could not extend a WAL file's ``-shm``
index), MLflow's exception wrapping SQLAlchemy's, a DVC command's output. Whatever it names, the
operator has to free space on the right disk, so the message lists the free space of each disk
the project writes to, the fullest first.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

# What a wrapped error keeps of a write that found no space (lower case): SQLite's words, the
# OS's, and those of the state store's own message.
_WORDS = ("database or disk is full", "no space left", "disk quota exceeded")


def _says_full(err: BaseException) -> bool:
    from unsir_pipeline.adapters.state_store import sqlite_says_full

    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if sqlite_says_full(err):
        return True
    first = (str(err).strip().splitlines() or [""])[0].lower()
    return any(word in first for word in _WORDS)


def full_disk_error(err: BaseException) -> BaseException | None:
    """The first error in ``err``'s chain (``err``, then its causes) that says a disk was full."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if _says_full(link):
            return link
        link = link.__cause__ or link.__context__
    return None


def _size(free: int) -> str:
    if free < 1024:
        return f"{free} B"
    shown = float(free)
    for unit in ("KiB", "MiB", "GiB"):
        shown /= 1024
        if shown < 1024 or unit == "GiB":
            break
    return f"{shown:.1f} {unit}"


def _existing(path: Path) -> Path | None:
    """``path``, or the nearest folder above it that exists (a file the write never created)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return candidate
    return None


def free_space(places: list[tuple[str, Path]]) -> str:
    """``places`` (what, where) grouped by the disk each is on, the one with least space first:
    "0 B free for the state directory /p/state; 11.2 GiB free for the project /p, temporary
    files /tmp"."""
    disks: dict[int, tuple[int, list[str]]] = {}
    for what, path in places:
        found = _existing(path)
        if found is None:
            continue
        try:
            device, free = os.stat(found).st_dev, shutil.disk_usage(found).free
        except OSError:
            continue
        disks.setdefault(device, (free, []))[1].append(f"{what} {path}")
    return "; ".join(f"{_size(free)} free for {', '.join(named)}" for free, named in sorted(disks.values()))


def describe_full_disk(full: BaseException, places: list[tuple[str, Path]]) -> str:
    """One line: what could not be written, the free space where the project writes, and the fix."""
    line = (str(full).strip().splitlines() or [type(full).__name__])[0]
    if isinstance(full, OSError) and full.filename is not None:
        # The written file, for a copy the destination (the source is on a disk that holds it).
        written = full.filename2 if full.filename2 is not None else full.filename
        places = [("the file written", Path(os.fsdecode(written))), *places]
    return (
        f"no space left on a disk: {line}; {free_space(places)}. "
        "Free space there (or move that directory to a larger disk) and rerun the command"
    )


def project_places(project: Path) -> list[tuple[str, Path]]:
    """Where a command of ``project`` writes: its state, Prefect's home, DVC's cache, the prepared
    data, temporary files; the project's own folders as ``params.yaml`` places them, or as they
    are by default where it cannot be read."""
    state, prepared = project / "state", project / "data" / "prepared"
    try:
        from unsir_pipeline.settings.workspace import Workspace

        ws = Workspace.load(project)
        state, prepared = ws.state_dir, ws.prepared_dir
    except Exception:  # a full disk is what is being reported; the defaults still help
        pass
    places = [("the state directory", state)]
    if os.environ.get("PREFECT_HOME"):
        places.append(("Prefect's home", Path(os.environ["PREFECT_HOME"])))
    places += [
        ("DVC's cache", project / ".dvc" / "cache"),
        ("the prepared data", prepared),
        ("the project", project),
        ("temporary files", Path(tempfile.gettempdir())),
    ]
    return places
