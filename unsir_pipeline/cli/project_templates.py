"""``unsir init DIR``: a new pipeline project anywhere, from the files shipped in the package.

A project is a directory holding ``params.yaml`` (validated like any other), ``dvc.yaml`` (the
pipeline's stages), ``run-stage.sh`` (what the stages run: it finds a Python that has this
package installed) and a ``.gitignore`` that keeps run state and DVC outputs out of git. The
directory becomes a git repository (unless it is inside one already) and a DVC project whose
remote is the params' default, in ``.dvc/config.local``. Then ``cd DIR && unsir bootstrap``.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from unsir_pipeline.adapters import data_versioning
from unsir_pipeline.settings.config import load_params

# Template name in unsir_pipeline/templates -> file name in the project. The .gitignore ships
# without its dot: hidden files are easy to lose from package data.
TEMPLATES = {
    "params.yaml": "params.yaml",
    "dvc.yaml": "dvc.yaml",
    "run-stage.sh": "run-stage.sh",
    "gitignore": ".gitignore",
}


class ProjectInitError(Exception):
    """The directory cannot become a project; the message names the path and why."""


@dataclass(frozen=True)
class InitResult:
    root: Path
    written: tuple[str, ...]
    git_initialised: bool
    dvc_remote: str | None


def init_project(directory: str | Path) -> InitResult:
    """Write a working project into ``directory`` (created if missing).

    Refuses to overwrite: an existing ``params.yaml``, ``dvc.yaml``, ``run-stage.sh`` or
    ``.gitignore`` stops it before anything is written, so running it twice, or on an existing
    project, changes nothing.
    """
    if not str(directory).strip():  # Path("") is the current directory: never by accident
        raise ProjectInitError(f"DIR {str(directory)!r}: expected a directory path (use . for this one)")
    root = Path(directory).expanduser().resolve()
    if root.exists() and not root.is_dir():
        raise ProjectInitError(f"cannot create a project at {root}: it is a file, expected a directory")
    existing = [name for name in TEMPLATES.values() if (root / name).exists()]
    if existing:
        raise ProjectInitError(
            f"{root} already has {', '.join(existing)}; `unsir init` only writes into a directory "
            f"without them (choose a new directory, or remove them first)"
        )
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ProjectInitError(f"cannot create a project at {root}: {err.strerror or err}") from None

    templates = resources.files("unsir_pipeline") / "templates"
    for template, name in TEMPLATES.items():
        with resources.as_file(templates / template) as source:
            shutil.copyfile(source, root / name)
    (root / "run-stage.sh").chmod(0o755)

    # Validate what was written exactly as every command will read it, before initialising
    # anything around it: a broken template must fail here, not at the first bootstrap.
    params = load_params(root / "params.yaml")

    git_initialised = False
    if _git_toplevel(root) is None and shutil.which("git"):
        subprocess.run(["git", "init", "--quiet", str(root)], check=True, capture_output=True)
        git_initialised = True
    data_versioning.ensure_repo(root, params.paths.dvc_remote, params.paths.dvc_remote_endpoint)
    if git_initialised:
        # `dvc init` stages its own files; stage ours beside them so the first commit is one
        # `git commit`. Inside an existing repository its index is left to its owner.
        subprocess.run(
            ["git", "add", "--", *TEMPLATES.values(), ".dvc/config"], cwd=root, check=True, capture_output=True
        )
    return InitResult(root, tuple(TEMPLATES.values()), git_initialised, data_versioning.default_remote(root))


def _git_toplevel(directory: Path) -> Path | None:
    """The git work tree ``directory`` is inside, or None (also when git is not installed)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=directory,
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:
        return None
    return Path(result.stdout.strip()) if result.returncode == 0 else None
