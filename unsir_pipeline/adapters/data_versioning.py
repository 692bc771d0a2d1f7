"""Data versioning with DVC: the repository, stages, tracked files, the remote, digest checks.

This is the only module that talks to DVC. It drives DVC's command line (``python -m dvc``
from this interpreter, so the venv's DVC is the one used) rather than its Python internals:
the CLI is DVC's stable interface, each call is isolated in its own process, and its
error output can be quoted as is. A call costs 0.3-1.3 s (a Python process importing DVC), so
the module starts none where the files already answer: an unchanged file is not added again, a
remote directory that holds every object is not pushed to, the cache directory is read from
DVC's config files.

Digests are read from ``dvc.lock`` and ``*.dvc`` files directly and recomputed here, so
that checking data before a run (``verify``) needs no DVC process.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import platformdirs
import yaml
from configobj import ConfigObj, ConfigObjError

# The remote lives in .dvc/config.local (git-ignored), never in the committed .dvc/config:
# where a team keeps its data (a shared directory, an object store) is a fact about a
# deployment, and a directory inside one clone is useless to every other clone.
REMOTE_NAME = "shared"
_STDERR_TAIL_LINES = 20
_CHUNK = 1 << 20
# Folders DVC never reads (its own, and version control's); a Python virtual environment
# (a folder holding pyvenv.cfg) and these tool folders are passed over too, as holding no data
# (walking a virtual environment costs about 0.5 s).
_DVC_SKIPPED_DIRS = {".git", ".hg", ".dvc"}
_TOOL_DIRS = {"__pycache__", "node_modules"}
# `dvc cache dir` answers, where a remote is the cache (cache.local), by (project, text of each
# config file): a cache moved at any level is asked again.
_CACHE_DIRS: dict[tuple[Path | str, ...], Path] = {}
# A DVC config as DVC parses it (its Config.load_file): {section: {key: value}}, names lowercased,
# named sections gathered by kind ({"remote": {name: {key: value}}}); a value is a string, or a
# list where ConfigObj reads an unquoted comma.
_Config = dict[str, dict[str, Any]]
_NAMED_SECTION = re.compile(r'^\s*(remote|machine|db)\s*"(.*)"\s*$')
NO_REMOTE_HELP = (
    "set UNSIR_DVC_REMOTE (a shared directory or s3://bucket/path) and run `unsir bootstrap`, "
    "or `dvc remote add --local --default shared URL`"
)


class DataVersioningError(Exception):
    """A DVC command failed or DVC metadata could not be read; the message says which and why."""


def ensure_repo(project_dir: Path, remote: str | Path, endpoint: str | None = None) -> None:
    """Make ``project_dir`` a DVC project whose default remote is ``remote``; safe to call again.

    Inside a git repository whose root is elsewhere, DVC is initialised with ``--subdir``;
    outside any git repository, with ``--no-scm``. Analytics and the update check are
    switched off in the project's config so that later CLI calls stay offline and quiet.
    """
    project_dir = Path(project_dir).resolve()
    project_dir.mkdir(parents=True, exist_ok=True)
    if not (project_dir / ".dvc").is_dir():
        git_root = _git_root(project_dir)
        if git_root is None:
            flags = ["--no-scm"]
        elif git_root != project_dir:
            flags = ["--subdir"]
        else:
            flags = []
        _dvc(project_dir, "init", "--quiet", *flags)
    _quiet_config(project_dir)
    use_remote(project_dir, remote, endpoint)


def use_remote(project_dir: Path, remote: str | Path, endpoint: str | None = None) -> None:
    """Make ``remote`` (a directory or a URL such as ``s3://bucket/path``) the default remote
    of this clone, in ``.dvc/config.local``.

    The committed ``.dvc/config`` is never written: a remote is chosen per deployment (by
    ``paths.dvc_remote`` or ``UNSIR_DVC_REMOTE``), and ``config.local`` wins over anything
    committed. A relative directory is taken from the project and stored relative to
    ``.dvc/``, as DVC does. ``endpoint`` is an S3-compatible endpoint URL (MinIO). Calls DVC
    only when the configuration differs, so every run can call this cheaply.

    A remote of the same kind (another bucket, another endpoint) keeps the user's other
    settings of ``shared`` (a profile, credentials): only url and endpointurl change. A remote
    of another kind (a directory after S3) replaces the section, whose settings DVC would
    refuse for it.
    """
    project_dir = _project(project_dir)
    url, stored = _remote_url(project_dir, remote)
    local = _read_config(project_dir / ".dvc" / "config.local")
    section = _configured_remote(local)
    if (section.get("url"), section.get("endpointurl")) == (stored, endpoint):
        return
    section = local.get("remote", {}).get(REMOTE_NAME, {})
    if not section.get("url") or _scheme(str(section["url"])) != _scheme(stored):
        # --force replaces the whole section (a stale endpointurl included): idempotent.
        _dvc(project_dir, "remote", "add", "--local", "--default", "--force", REMOTE_NAME, url)
        if endpoint:
            _dvc(project_dir, "remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
        return
    if section["url"] != stored:
        _dvc(project_dir, "remote", "modify", "--local", REMOTE_NAME, "url", url)
    if endpoint and section.get("endpointurl") != endpoint:
        _dvc(project_dir, "remote", "modify", "--local", REMOTE_NAME, "endpointurl", endpoint)
    elif not endpoint and "endpointurl" in section:
        _dvc(project_dir, "remote", "modify", "--local", "--unset", REMOTE_NAME, "endpointurl")
    if str(local.get("core", {}).get("remote", "")).lower() != REMOTE_NAME:
        _dvc(project_dir, "remote", "default", "--local", REMOTE_NAME)


def _scheme(url: str) -> str:
    """The kind of remote a URL names (``s3``, ``gs``...); empty for a directory."""
    return url.split("://", 1)[0].lower() if "://" in url else ""


def default_remote(project_dir: Path) -> str | None:
    """The URL (or absolute directory) ``dvc push`` would upload to, as configured now at any
    of DVC's levels (the system's, the user's, the project's, this clone's)."""
    return _configured_remote(_config(_project(project_dir))).get("url")


def repro(project_dir: Path, targets: Sequence[str] = (), *, force: bool = False) -> None:
    """Run ``dvc repro`` (all stages, or ``targets``); stages whose inputs are unchanged are skipped.

    With a remote configured, outputs that ``dvc.lock`` records and the remote holds are
    pulled instead of rebuilt (``--pull``): a clone gets the team's model of record rather
    than training one whose bytes differ. What the remote lacks is rebuilt. ``force`` runs the
    targets' commands even so, bypassing DVC's run cache too: for a stage that reads files DVC
    does not track, whose changes it cannot see.
    """
    project_dir = _project(project_dir)
    pull = ["--pull"] if default_remote(project_dir) else []
    _dvc(project_dir, "repro", *pull, *(["--force"] if force else []), *targets)


def track(project_dir: Path, path: Path) -> str:
    """``dvc add`` a file (or directory) and return the md5 DVC recorded for it.

    A path whose ``.dvc`` file git would ignore (per-run data such as retain subsets, under
    ``data/retain/``) is tracked by a side store: a DVC project without git rooted at the
    path's directory, sharing this project's cache and remote. Its ``.dvc`` file then sits beside the path, git-ignored,
    so a run leaves the git tree clean; ``push`` uploads it with the rest. A file whose
    ``.dvc`` file already records its md5, with that object in the cache, is not added again
    (no DVC process); the same digest is returned.
    """
    project_dir = _project(project_dir)
    relative = relative_path(project_dir, path)
    target = project_dir / relative
    if not target.exists():
        raise DataVersioningError(f"cannot track {relative}: no such file or directory in {project_dir}")
    # What DVC refuses is a .dvc file git ignores; the path itself is ignored after any add
    # (DVC lists it in .gitignore), so asking about the path would move a project-tracked
    # file into a side store the second time.
    meta = target.with_name(f"{target.name}.dvc")
    if meta in _git_ignored(project_dir, [meta]):
        store = target.parent
        _ensure_side_store(project_dir, store)
        if _unchanged(project_dir, target) is None:
            _dvc(store, "add", "--quiet", target.name)
    elif _unchanged(project_dir, target) is None:
        _dvc(project_dir, "add", "--quiet", relative)
    digest = recorded_digests(project_dir).get(relative)
    if digest is None:
        raise DataVersioningError(f"`dvc add {relative}` succeeded but no .dvc file records it")
    return digest


def _unchanged(project_dir: Path, target: Path) -> str | None:
    """The md5 that ``target``'s ``.dvc`` file records, when the file's bytes still have it and
    the cache holds that object: then ``dvc add`` would change nothing. None otherwise (a
    directory, an untracked or changed file, an object missing from the cache)."""
    meta = target.with_name(f"{target.name}.dvc")
    if not target.is_file() or not meta.is_file():
        return None
    content = _read_yaml(meta)
    outs = content.get("outs") or []
    if "wdir" in content or len(outs) != 1 or not isinstance(outs[0], dict):
        return None
    out = outs[0]
    md5 = str(out.get("md5") or "")
    if out.get("path") != target.name or out.get("hash") != "md5" or not md5 or file_md5(target) != md5:
        return None
    cached = _cache_dir(project_dir) / "files" / "md5" / md5[:2] / md5[2:]
    return md5 if cached.is_file() else None


def push(project_dir: Path) -> None:
    """Upload every tracked output in the cache, side stores' included, to the default remote.

    A repository (the project, a side store) whose recorded objects a directory remote
    already holds is not pushed: no DVC process for what would upload nothing.
    """
    project_dir = _project(project_dir)
    if default_remote(project_dir) is None:
        raise DataVersioningError(f"cannot push from {project_dir}: no DVC remote configured; {NO_REMOTE_HELP}")
    stores = _side_stores(project_dir)
    if not _on_remote(project_dir, project_dir):
        _dvc(project_dir, "push", "--quiet")
    for store in stores:
        _sync_side_store(project_dir, store)
        if not _on_remote(project_dir, store):
            _dvc(store, "push", "--quiet")


def _on_remote(project_dir: Path, repo: Path) -> bool:
    """Whether the default remote, a directory, already holds every object that ``repo`` (the
    project or one of its side stores) records: then ``dvc push`` there would upload nothing.

    Checked by looking for each object's file in the remote directory; a remote behind a URL,
    or an output recorded otherwise than by md5, answers False (push as always).
    """
    url = default_remote(project_dir)
    if url is None or "://" in url:
        return False
    remote = Path(url) / "files" / "md5"
    for meta in _metadata_files(repo):
        for _, out in _outputs(meta):
            if out.get("cache") is False or out.get("push") is False:
                continue  # `dvc push` leaves it out as well
            md5 = str(out.get("md5") or "")
            if out.get("hash") != "md5" or not md5:
                return False
            # A directory output counts as there when its .dir listing is, as `dvc push` counts it.
            if not (remote / md5[:2] / md5[2:]).is_file():
                return False
    return True


def pull(project_dir: Path, targets: Sequence[str] = ()) -> None:
    """Download what ``dvc.lock`` and the ``*.dvc`` files record (or ``targets``) from the remote."""
    project_dir = _project(project_dir)
    if default_remote(project_dir) is None:
        raise DataVersioningError(f"cannot pull into {project_dir}: no DVC remote configured; {NO_REMOTE_HELP}")
    _dvc(project_dir, "pull", "--quiet", *targets)


def stage_param_keys(project_dir: Path, stage: str) -> list[str]:
    """The ``params.yaml`` keys a stage of ``dvc.yaml`` reads (a key may name a whole section,
    such as ``model``); empty when the project has no such stage."""
    content = _read_yaml(Path(project_dir) / "dvc.yaml")
    keys = ((content.get("stages") or {}).get(stage) or {}).get("params") or []
    # A plain entry names a key of params.yaml; a mapping names another parameters file.
    return [key for key in keys if isinstance(key, str)]


def locked_params(project_dir: Path, stage: str) -> dict[str, object] | None:
    """The ``params.yaml`` values ``dvc.lock`` records for the last run of ``stage``: what its
    outputs were built from. None when the lock has no such stage (it never ran here)."""
    lock = Path(project_dir) / "dvc.lock"
    if not lock.is_file():
        return None
    entry = (_read_yaml(lock).get("stages") or {}).get(stage)
    if not isinstance(entry, dict):
        return None
    return dict((entry.get("params") or {}).get("params.yaml") or {})


def _read_yaml(path: Path) -> dict:
    """A DVC metadata file (``dvc.yaml``, ``dvc.lock``, ``*.dvc``) as a mapping; empty when absent."""
    try:
        content = yaml.safe_load(path.read_text()) if path.is_file() else {}
    except (OSError, yaml.YAMLError) as err:
        raise DataVersioningError(f"cannot read DVC metadata {path}: {err}") from err
    if content is None:
        return {}
    if not isinstance(content, dict):
        raise DataVersioningError(f"DVC metadata {path} is not a mapping")
    return content


def recorded_digests(project_dir: Path) -> dict[str, str]:
    """md5 of every output recorded in the ``dvc.lock`` and ``*.dvc`` files that DVC reads in
    the project and in its side stores (hidden folders included; what git ignores, outside a
    side store, is not read, as DVC does not).

    Keys are POSIX paths relative to ``project_dir``; a directory output's digest ends in
    ``.dir``, as DVC writes it.
    """
    project_dir = _project(project_dir)
    digests: dict[str, str] = {}
    metadata = (meta for repo in (project_dir, *_side_stores(project_dir)) for meta in _metadata_files(repo))
    for meta in metadata:
        for base, out in _outputs(meta):
            md5 = out.get("md5")
            if not md5 or "path" not in out:
                continue
            # Normalised, not resolved: with symlinked cache links, resolving would land in the cache.
            digests[relative_path(project_dir, base / out["path"])] = str(md5)
    return digests


def verify(project_dir: Path, paths: Sequence[str]) -> list[str]:
    """Recompute the md5 of each path and list every way it differs from what DVC recorded.

    An empty list means every path matches. Files are hashed as DVC 3 does (plain md5 of the
    bytes); a directory output is checked file by file against its ``.dir`` listing in the
    cache.
    """
    project_dir = _project(project_dir)
    recorded = recorded_digests(project_dir)
    problems: list[str] = []
    for given in paths:
        relative = relative_path(project_dir, given)
        expected = recorded.get(relative)
        target = project_dir / relative
        if expected is None:
            problems.append(f"{relative}: not tracked by DVC")
        elif not target.exists():
            problems.append(f"{relative}: recorded md5 {expected}, but the path does not exist")
        elif expected.endswith(".dir"):
            problems.extend(_verify_directory(project_dir, relative, expected))
        elif target.is_dir():
            problems.append(f"{relative}: recorded as a file (md5 {expected}), found a directory")
        else:
            found = file_md5(target)
            if found != expected:
                problems.append(f"{relative}: recorded md5 {expected}, found {found}")
    return problems


def file_md5(path: Path) -> str:
    """Plain md5 of a file's bytes, read in chunks (DVC 3's file hash)."""
    digest = hashlib.md5()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- helpers ------------------------------------------------------------------------------


def _dvc(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # DVC_NO_ANALYTICS also covers `dvc init`, which runs before the config can say so.
    # Stage commands run this interpreter (UNSIR_PYTHON, read by the stage wrapper), and
    # `unsir` resolves to this environment's entry point, activated or not.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {"UNSIR_PYTHON": sys.executable, **os.environ, "DVC_NO_ANALYTICS": "1", "PATH": path}
    command = [sys.executable, "-m", "dvc", *args]
    try:
        result = subprocess.run(command, cwd=project_dir, env=env, capture_output=True, text=True, check=False)
    except OSError as err:
        raise DataVersioningError(f"cannot start `dvc {' '.join(args)}` in {project_dir}: {err}") from err
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip().splitlines()
        tail = "\n".join(output[-_STDERR_TAIL_LINES:]) or "(no output)"
        raise DataVersioningError(
            f"`dvc {' '.join(args)}` in {project_dir} exited with code {result.returncode}:\n{tail}"
        )
    return result


def _quiet_config(project_dir: Path) -> None:
    core = _read_config(project_dir / ".dvc" / "config").get("core", {})
    if not all(str(core.get(key, "")).lower() == "false" for key in ("analytics", "check_update")):
        _dvc(project_dir, "config", "core.analytics", "false")
        _dvc(project_dir, "config", "core.check_update", "false")


def _ensure_side_store(project_dir: Path, store: Path) -> None:
    """A git-less DVC project at ``store`` that shares ``project_dir``'s cache and remote.

    DVC refuses a ``.dvc`` file that git ignores inside a git-backed project; without git
    there is nothing to refuse. The outer project skips the store as a sub-repository.
    """
    store.mkdir(parents=True, exist_ok=True)
    if not (store / ".dvc").is_dir():
        _dvc(store, "init", "--quiet", "--no-scm")
    _sync_side_store(project_dir, store)  # switches analytics and the update check off as well


def _sync_side_store(project_dir: Path, store: Path) -> None:
    """Point a side store at the project's cache and current default remote (absolute paths),
    with DVC's analytics and update check off.

    The remote's whole section is copied, as DVC merges it from every level: what a push needs
    besides the URL (credentials, a profile, a region, an endpoint) reaches the store's push."""
    # The store's config.local is this module's alone: written here, not by `dvc config`
    # (a process per key).
    wanted: _Config = {
        "core": {"analytics": "false", "check_update": "false"},
        "cache": {"dir": str(_cache_dir(project_dir))},
    }
    remote = _configured_remote(_config(project_dir))
    if remote.get("url"):
        wanted["core"]["remote"] = REMOTE_NAME
        wanted["remote"] = {REMOTE_NAME: remote}
    path = store / ".dvc" / "config.local"
    if _read_config(path) == wanted:
        return
    # Written by ConfigObj, as DVC writes its config: a value is quoted where it must be.
    packed = {key: values for key, values in wanted.items() if key != "remote"}
    packed.update({f'remote "{name}"': values for name, values in wanted.get("remote", {}).items()})
    path.write_text("\n".join(ConfigObj(packed).write()) + "\n")


def _side_stores(project_dir: Path) -> list[Path]:
    """Every side store (a directory holding its own ``.dvc``) below the project, hidden and
    git-ignored folders included: that is where per-run data lives."""
    stores = []
    for root, dirs, _ in os.walk(project_dir):
        here = Path(root)
        if ".dvc" in dirs and here != project_dir:
            stores.append(here)
        dirs[:] = sorted(d for d in dirs if not _never_walked(here / d))
    return stores


def _never_walked(folder: Path) -> bool:
    """Whether ``folder`` is one that DVC never reads, or a tool's that holds no data."""
    return folder.name in _DVC_SKIPPED_DIRS or folder.name in _TOOL_DIRS or (folder / "pyvenv.cfg").is_file()


def _project(project_dir: Path) -> Path:
    project_dir = Path(project_dir).resolve()
    if not (project_dir / ".dvc").is_dir():
        raise DataVersioningError(f"{project_dir} is not a DVC project (no .dvc directory); call ensure_repo first")
    return project_dir


def _git_root(start: Path) -> Path | None:
    """The nearest directory at or above ``start`` holding ``.git`` (a directory or a worktree file)."""
    for directory in (start, *start.parents):
        if (directory / ".git").exists():
            return directory
    return None


def relative_path(project_dir: Path, path: str | Path) -> str:
    """``path`` (absolute, or relative to ``project_dir``) as a POSIX path relative to the project."""
    candidate = Path(path)
    absolute = candidate if candidate.is_absolute() else project_dir / candidate
    absolute = Path(os.path.normpath(absolute))
    try:
        return absolute.relative_to(project_dir).as_posix()
    except ValueError:
        raise DataVersioningError(f"{str(path)!r} is outside the DVC project {project_dir}") from None


def _metadata_files(repo: Path) -> Iterator[Path]:
    """Every ``dvc.lock`` and ``*.dvc`` file that DVC reads in ``repo`` (the project or a side
    store): in every folder but .git, .hg and .dvc, hidden ones included, except nested DVC
    projects (side stores, read on their own) and, in a git-backed project, what git ignores.
    ``.dvcignore`` is not read; virtual environments and tool folders are passed over.

    Walked a level at a time, so that git is asked once a level what it ignores there and
    what it ignores is never entered."""
    level = [repo]
    while level:
        folders: list[Path] = []
        files: list[Path] = []
        for folder in level:
            for entry in sorted(os.scandir(folder), key=lambda entry: entry.name):
                path = Path(entry.path)
                if entry.is_dir(follow_symlinks=False):
                    if not _never_walked(path) and not (path / ".dvc").is_dir():
                        folders.append(path)
                elif entry.name == "dvc.lock" or entry.name.endswith(".dvc"):
                    files.append(path)
        ignored = _git_ignored(repo, [*folders, *files])
        yield from (path for path in files if path not in ignored)
        level = [path for path in folders if path not in ignored]


def _git_ignored(repo: Path, paths: Sequence[Path]) -> set[Path]:
    """Which of ``paths`` (inside ``repo``, existing or not) git ignores, asked of git once;
    none where DVC runs without git (``no_scm`` at any config level, as side stores set it: then
    it refuses nothing)
    or git does not answer (not a git repository, no git)."""
    if not paths or str(_config(repo).get("core", {}).get("no_scm", "")).lower() == "true":
        return set()
    # A trailing slash lets a folder-only pattern (`/data/retain/`) match, as DVC asks.
    asked = {path.relative_to(repo).as_posix() + ("/" if path.is_dir() else ""): path for path in paths}
    try:
        result = subprocess.run(
            ["git", "check-ignore", "-z", "--stdin"],
            cwd=repo,
            input="\0".join(asked) + "\0",
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return set()
    # 0: some ignored; 1: none ignored; 128: not a git repository (or another git error).
    if result.returncode != 0:
        return set()
    return {asked[name] for name in result.stdout.split("\0") if name in asked}


def _outputs(meta: Path) -> Iterator[tuple[Path, dict]]:
    """(directory its path is relative to, output entry) for each output a metadata file records."""
    content = _read_yaml(meta)
    if meta.name == "dvc.lock":
        wdirs = _stage_wdirs(meta.parent)
        for name, stage in (content.get("stages") or {}).items():
            base = meta.parent / wdirs.get(name.split("@")[0], ".")
            for out in stage.get("outs") or []:
                yield base, out
    else:
        base = meta.parent / content.get("wdir", ".")
        for out in content.get("outs") or []:
            yield base, out


def _stage_wdirs(directory: Path) -> dict[str, str]:
    """Working directories of the stages in ``dvc.yaml`` (lock paths are relative to them)."""
    pipeline = directory / "dvc.yaml"
    if not pipeline.is_file():
        return {}
    try:
        stages = (yaml.safe_load(pipeline.read_text()) or {}).get("stages") or {}
    except (OSError, yaml.YAMLError) as err:
        raise DataVersioningError(f"cannot read {pipeline}: {err}") from err
    return {name: str(stage["wdir"]) for name, stage in stages.items() if isinstance(stage, dict) and "wdir" in stage}


def _verify_directory(project_dir: Path, relative: str, expected: str) -> list[str]:
    """Compare a directory with the file listing DVC cached for its ``.dir`` digest."""
    listing_path = _cache_dir(project_dir) / "files" / "md5" / expected[:2] / expected[2:]
    if not listing_path.is_file():
        return [f"{relative}: recorded md5 {expected}, but its file listing is not in the local cache to compare with"]
    try:
        listing = json.loads(listing_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataVersioningError(f"cannot read DVC directory listing {listing_path}: {err}") from err
    recorded = {entry["relpath"]: entry["md5"] for entry in listing}
    directory = project_dir / relative
    present = {p.relative_to(directory).as_posix() for p in directory.rglob("*") if p.is_file()}
    problems = []
    for name in sorted(recorded.keys() | present):
        where = f"{relative}/{name}"
        if name not in present:
            problems.append(f"{where}: recorded md5 {recorded[name]}, but the file is missing")
        elif name not in recorded:
            problems.append(f"{where}: not recorded in {relative} (md5 {expected})")
        else:
            found = file_md5(directory / name)
            if found != recorded[name]:
                problems.append(f"{where}: recorded md5 {recorded[name]}, found {found}")
    return problems


def _cache_dir(project_dir: Path) -> Path:
    """The project's cache directory, as ``dvc cache dir`` answers: ``cache.dir`` from DVC's
    merged config, else ``.dvc/cache``. Read from the config files, no DVC process: a forget
    run needs it four times (two directory checks, the side store's setup and its push).

    Where a remote is the cache (the deprecated ``cache.local``), DVC is asked, once per
    project and configuration in a process.
    """
    cache = _config(project_dir).get("cache", {})
    if "local" not in cache:
        return Path(cache.get("dir") or project_dir / ".dvc" / "cache")
    key: tuple[Path | str, ...] = (project_dir, *(_text(path) for path in _config_files(project_dir)))
    if key not in _CACHE_DIRS:
        _CACHE_DIRS[key] = Path(_dvc(project_dir, "cache", "dir").stdout.strip())
    return _CACHE_DIRS[key]


def _text(path: Path) -> str:
    """A file's text, empty when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""
    except OSError as err:
        raise DataVersioningError(f"cannot read DVC config {path}: {err}") from err


def _remote_url(project_dir: Path, remote: str | Path) -> tuple[str, str]:
    """(URL to give ``dvc remote add`` from the project, URL as DVC stores it in ``.dvc/``)."""
    text = str(remote)
    if "://" in text:
        return text, text
    directory = Path(text) if Path(text).is_absolute() else project_dir / text
    directory = directory.resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if directory.is_relative_to(project_dir):
        relative = os.path.relpath(directory, project_dir)
        return relative, os.path.relpath(directory, project_dir / ".dvc")
    return str(directory), str(directory)


def _config(project_dir: Path) -> _Config:
    """The project's DVC config as DVC merges it, each level over the one before: the system's,
    the user's (``dvc config --global``), the project's ``.dvc/config``, this clone's
    ``.dvc/config.local``. Relative paths (a remote's url, ``cache.dir``) are made absolute
    against the folder of the file that holds them, ``~`` expanded, as DVC reads them."""
    merged: _Config = {}
    for path in _config_files(project_dir):
        config = _read_config(path)
        cache = config.get("cache", {})
        if "dir" in cache:
            cache["dir"] = _resolved(path, "cache.dir", cache["dir"])
        for name, remote in config.get("remote", {}).items():
            for key in _REMOTE_PATH_KEYS & remote.keys():
                remote[key] = _resolved(path, f"remote.{name}.{key}", remote[key])
        _merge(merged, config)
    return merged


def _merge(into: dict[str, Any], update: dict[str, Any]) -> None:
    """Merge ``update`` into ``into`` key by key, nested mappings too (DVC's config merge)."""
    for key, value in update.items():
        if isinstance(into.get(key), dict) and isinstance(value, dict):
            _merge(into[key], value)
        else:
            into[key] = value


def _config_files(project_dir: Path) -> tuple[Path, ...]:
    """DVC's config files for the project, lowest level first, where DVC looks for them."""
    return (
        Path(os.environ.get("DVC_SYSTEM_CONFIG_DIR") or platformdirs.site_config_dir("dvc", "iterative")) / "config",
        Path(os.environ.get("DVC_GLOBAL_CONFIG_DIR") or platformdirs.user_config_dir("dvc", "iterative")) / "config",
        project_dir / ".dvc" / "config",
        project_dir / ".dvc" / "config.local",
    )


# The keys of a remote whose values DVC reads as paths relative to their config file (its
# Config._map_dirs), as it reads cache.dir.
_REMOTE_PATH_KEYS = {
    "url",
    "gdrive_user_credentials_file",
    "gdrive_service_account_json_file_path",
    "credentialpath",
    "configpath",
    "keyfile",
    "cert_path",
    "key_path",
}


def _resolved(config_file: Path, key: str, value: object) -> str:
    """A path that ``config_file`` sets as DVC reads it (its Config._resolve): a URL as is; ``~``
    expanded; a relative path joined to the file's folder, normalised, links kept."""
    if not isinstance(value, str):
        # ConfigObj reads `a, b` as a list, which DVC cannot use as a path either.
        raise DataVersioningError(
            f"DVC config {config_file}: {key} is {value!r}, expected one path; quote a value that holds a comma"
        )
    if re.match(r"\w+://", value):
        return value
    expanded = os.path.expanduser(value)
    return expanded if os.path.isabs(expanded) else os.path.abspath(config_file.parent / value)


def _configured_remote(config: _Config) -> dict[str, Any]:
    """The section (url, endpointurl, credentials...) of the default remote that ``config``
    names; empty when it names none."""
    name = config.get("core", {}).get("remote")
    if not name:
        return {}
    return dict(config.get("remote", {}).get(str(name).lower(), {}))  # DVC's schema lowercases the name


def _read_config(path: Path) -> _Config:
    """A DVC config file as DVC reads it (ConfigObj, then its Config.load_file): a value without
    its quotes or an inline comment; section and key names lowercased; a named section
    (``remote "x"``, in DVC's outer single quotes or not, spaced or not) under its kind
    (``{"remote": {"x": {...}}}``). Empty when the file does not exist."""
    try:
        with path.open(encoding="utf-8") as handle:
            parsed = ConfigObj(handle).dict()
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, ConfigObjError) as err:
        raise DataVersioningError(f"cannot read DVC config {path}: {err}") from err
    config: _Config = {}
    for section, values in _lowered(parsed).items():
        if not isinstance(values, dict):
            continue  # a key outside any section, which DVC's schema refuses
        named = _NAMED_SECTION.match(section)
        if named:
            config.setdefault(named[1], {})[named[2]] = values
        else:
            config[section] = values
    return config


def _lowered(values: dict[str, Any]) -> dict[str, Any]:
    """Every key lowercased, nested ones too, as DVC reads a config file."""
    return {key.lower(): _lowered(value) if isinstance(value, dict) else value for key, value in values.items()}
