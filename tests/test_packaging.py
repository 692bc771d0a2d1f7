"""Packaging: supported Pythons, licence and metadata, the templates shipped as package data,
and `unsir init` writing a working project outside this checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml
from packaging.specifiers import SpecifierSet

from unsir_pipeline.adapters.data_versioning import default_remote
from unsir_pipeline.cli import main
from unsir_pipeline.cli.project_templates import TEMPLATES, ProjectInitError, init_project
from unsir_pipeline.settings.config import load_params

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _git(directory: Path, *args: str) -> str:
    identity = ["-c", "user.email=t@t", "-c", "user.name=t"]
    return subprocess.run(["git", *identity, *args], cwd=directory, check=True, capture_output=True, text=True).stdout


def test_requires_python_admits_311_and_312_only() -> None:
    supported = SpecifierSet(PYPROJECT["requires-python"])
    assert "3.11.9" in supported and "3.12.7" in supported
    assert "3.10.14" not in supported and "3.13.0" not in supported
    classifiers = set(PYPROJECT["classifiers"])
    assert {"Programming Language :: Python :: 3.11", "Programming Language :: Python :: 3.12"} <= classifiers


def test_licence_and_metadata() -> None:
    assert PYPROJECT["license"] == "MIT" and PYPROJECT["license-files"] == ["LICENSE"]
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in licence
    assert PYPROJECT["authors"] and {"machine-unlearning", "mlops"} <= set(PYPROJECT["keywords"])
    # A licence expression and a licence classifier together are an error for setuptools >= 77.
    assert not any(c.startswith("License ::") for c in PYPROJECT["classifiers"])


def test_every_package_folder_is_installed_under_its_namespaced_name() -> None:
    """pyproject.toml lists the packages by hand, because package-dir installs the top-level
    flows/ and tasks/ folders as unsir_pipeline.flows and unsir_pipeline.tasks: a package folder
    missing from the list would be missing from the wheel."""
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folder_to_package = {folder: name for name, folder in setuptools["package-dir"].items()}
    assert folder_to_package == {"flows": "unsir_pipeline.flows", "tasks": "unsir_pipeline.tasks"}
    # Every folder, code or data (templates, Alembic's migrations): setuptools ships a data
    # folder only when it is listed too.
    found = set()
    for top in ("unsir", "unsir_pipeline", *folder_to_package):
        for folder in (ROOT / top, *(ROOT / top).rglob("*")):
            if folder.is_dir() and folder.name != "__pycache__":
                parts = folder.relative_to(ROOT).parts
                found.add(".".join((folder_to_package.get(parts[0], parts[0]), *parts[1:])))
    # Each data folder names what it ships.
    assert {"unsir_pipeline.templates", "unsir_pipeline.adapters.migrations"} <= set(setuptools["package-data"])
    assert set(setuptools["packages"]) == found


def test_every_template_ships_as_package_data() -> None:
    from importlib import resources

    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert package_data["unsir_pipeline.templates"] == ["*"]
    templates = resources.files("unsir_pipeline") / "templates"
    for name in TEMPLATES:
        assert (templates / name).is_file(), name
        assert "/" not in name and not name.startswith(".")  # matched by templates/*


def test_the_template_params_are_the_repositorys() -> None:
    # A symlink in the source tree; the wheel carries its content (test_wheel_... below).
    template = ROOT / "unsir_pipeline" / "templates" / "params.yaml"
    assert template.read_text() == (ROOT / "params.yaml").read_text()


def _stages(path: Path) -> dict:
    return yaml.safe_load(path.read_text())["stages"]


def test_the_template_pipeline_has_the_repositorys_stages() -> None:
    """Same stages, params, outputs, metrics and plots; only the source-file dependencies
    (which an installed package does not have beside the project) and the wrapper's path differ."""
    repository = _stages(ROOT / "dvc.yaml")
    template = _stages(ROOT / "unsir_pipeline" / "templates" / "dvc.yaml")
    assert list(template) == list(repository)

    def outputs(stage: dict, kind: str) -> list:
        return [next(iter(o)) if isinstance(o, dict) else o for o in stage.get(kind, [])]

    produced = {
        out for stage in repository.values() for kind in ("outs", "metrics", "plots") for out in outputs(stage, kind)
    }
    for name, stage in repository.items():
        assert template[name]["cmd"] == f"sh run-stage.sh {name}"
        assert stage["cmd"] == f"sh unsir_pipeline/templates/run-stage.sh {name}"
        assert template[name]["params"] == stage["params"]
        for kind in ("outs", "metrics", "plots"):
            assert template[name].get(kind) == stage.get(kind), (name, kind)
        assert template[name].get("deps", []) == [d for d in stage.get("deps", []) if d in produced]


def test_init_writes_a_project_whose_params_validate(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.delenv("UNSIR_DVC_REMOTE", raising=False)
    project = tmp_path / "new" / "unlearning"
    assert main(["init", str(project)]) == 0
    out = capsys.readouterr().out
    assert f"next: cd {project} && unsir bootstrap" in out
    # Not "../state/dvc-remote", as .dvc/config.local holds it: read from the project, that is
    # a directory beside the project, not the state/dvc-remote of paths.dvc_remote.
    remote = str((project / "state" / "dvc-remote").resolve())
    assert f"DVC remote: {remote} (" in out

    for name in TEMPLATES.values():
        assert (project / name).is_file(), name
    assert os.access(project / "run-stage.sh", os.X_OK)
    params = load_params(project / "params.yaml")
    assert params.data.name == "digits"  # the embedded default: nothing to download
    assert yaml.safe_load((project / "dvc.yaml").read_text())["stages"]["prepare"]["cmd"] == "sh run-stage.sh prepare"
    # A git repository of its own, a DVC project whose remote is this clone's, in config.local.
    assert (project / ".git").is_dir() and (project / ".dvc").is_dir()
    assert "remote" not in (project / ".dvc" / "config").read_text()
    assert default_remote(project) == remote
    staged = set(_git(project, "diff", "--cached", "--name-only").split())
    assert set(TEMPLATES.values()) | {".dvc/config", ".dvcignore"} <= staged
    assert "state" not in _git(project, "status", "--porcelain", "--untracked-files=all")


def test_init_inside_a_repository_leaves_its_git_alone(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    result = init_project(tmp_path / "pipelines" / "unlearning")
    assert not result.git_initialised
    assert not (result.root / ".git").exists() and (result.root / ".dvc").is_dir()
    # Only what `dvc init` stages itself; our files are left for the repository's owner to add.
    staged = set(_git(tmp_path, "diff", "--cached", "--name-only").split())
    assert staged == {f"pipelines/unlearning/{n}" for n in (".dvc/.gitignore", ".dvc/config", ".dvcignore")}


def test_init_refuses_an_existing_project_and_changes_nothing(tmp_path: Path, capsys) -> None:
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    assert main(["init", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path} already has dvc.yaml" in err
    assert not (tmp_path / "params.yaml").exists() and not (tmp_path / ".dvc").exists()

    a_file = tmp_path / "notes.txt"
    a_file.write_text("x")
    with pytest.raises(ProjectInitError, match="it is a file, expected a directory"):
        init_project(a_file)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "UNSIR_", "PREFECT_"))}
    return {**env, "HOME": str(tmp_path), "OMP_NUM_THREADS": "1", "UNSIR_PROGRESS": "0", "DVC_NO_ANALYTICS": "1"}


@pytest.mark.slow
def test_bootstrap_runs_in_an_initialised_project(tmp_path: Path) -> None:
    project = init_project(tmp_path / "unlearning").root
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["model"]["train"]["epochs"] = 3  # the user's own file: a short training is enough here
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "new project")

    result = subprocess.run(
        [sys.executable, "-m", "unsir_pipeline.cli", "bootstrap", "--json"],
        cwd=project,
        env={**_clean_env(tmp_path), "UNSIR_PROGRESS": "1"},  # as on a terminal: --json still wins
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert json.loads(result.stdout)["created"] is True and json.loads(result.stdout)["version"] == 1
    assert "bootstrap:" not in result.stderr and "epoch" not in result.stderr  # no steps, no epochs
    assert (project / "models" / "original").is_dir()
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"prepare", "train"}
    # Everything the run wrote is git-ignored except the lock it made: the trained model is this
    # machine's result, which its owner commits with `dvc push` (docs/dvc.md).
    assert _git(project, "status", "--porcelain", "--untracked-files=all") == "?? dvc.lock\n"


@pytest.mark.slow
def test_the_wheel_carries_the_templates_and_the_licence(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    for package in ("unsir", "unsir_pipeline", "flows", "tasks"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(tmp_path / "dist"),
            str(source),
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    (wheel,) = (tmp_path / "dist").glob("unsir_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        for template in TEMPLATES:
            assert f"unsir_pipeline/templates/{template}" in names
        # The state database's migrations, which run at open from the installed package.
        migrations = {n for n in names if n.startswith("unsir_pipeline/adapters/migrations/")}
        assert {
            "unsir_pipeline/adapters/migrations/env.py",
            "unsir_pipeline/adapters/migrations/versions/requests_0001_baseline.py",
            "unsir_pipeline/adapters/migrations/versions/audit_0002_shared_head.py",
        } <= migrations
        params = archive.read("unsir_pipeline/templates/params.yaml").decode()
        metadata = archive.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    assert params == (ROOT / "params.yaml").read_text()  # the symlink's content, not a link
    assert "Requires-Python: <3.13,>=3.11" in metadata and "License-Expression: MIT" in metadata


FENCED_BLOCK = re.compile(r"^```.*?^```", flags=re.DOTALL | re.MULTILINE)


def _markdown_files() -> list[Path]:
    """The project's own Markdown files: hidden directories, the virtual environment and the
    pipeline's outputs (state, data, models, reports) are not walked."""
    skipped = {"state", "data", "models", "reports", "node_modules", "__pycache__"}
    found = []
    for directory, subdirectories, files in os.walk(ROOT):
        subdirectories[:] = [d for d in subdirectories if not d.startswith(".") and d not in skipped]
        found += [Path(directory) / name for name in files if name.endswith(".md")]
    return sorted(found)


def _heading_anchors(markdown: str) -> set[str]:
    """GitHub's anchors: a heading lower-cased, punctuation dropped, spaces made hyphens."""
    headings = re.findall(r"^#{1,6}\s+(.+?)\s*$", FENCED_BLOCK.sub("", markdown), flags=re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_every_relative_link_in_the_markdown_resolves() -> None:
    files = _markdown_files()
    assert ROOT / "README.md" in files and ROOT / "docs" / "cli.md" in files
    broken = []
    for page in files:
        text = page.read_text()
        # Links inside code blocks and code spans are examples, not links.
        prose = re.sub(r"`[^`\n]*`", "", FENCED_BLOCK.sub("", text))
        for target in re.findall(r"\]\(([^)\s]+)\)", prose):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            resolved = (page.parent / path).resolve() if path else page
            if not resolved.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and resolved.suffix == ".md" and anchor not in _heading_anchors(resolved.read_text()):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_the_readme_is_short_and_its_test_command_is_what_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make test" in [line.strip() for line in ci]


@pytest.mark.parametrize("dvc_initialised", [True, False])
@pytest.mark.parametrize("root", ["pictures", "params.yaml"])
def test_bootstrap_refuses_a_data_root_that_is_no_directory_before_dvc_runs(
    tmp_path: Path, capsys, root, dvc_initialised
) -> None:
    """A mistyped data.root: `unsir bootstrap` (or a first `unsir forget`) initialised DVC and ran
    `dvc repro prepare`, 20 s, to fail inside the stage with exit 1 (a pipeline failure). In a
    project DVC was not yet initialised in (bootstrap does that), the check itself failed, exit 1:
    "... is not a DVC project (no .dvc directory); call ensure_repo first"."""
    project = init_project(tmp_path / "unlearning").root
    if not dvc_initialised:
        shutil.rmtree(project / ".dvc")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(name="imagefolder", root=root)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--project", str(project), "bootstrap"]) == 2
    err = capsys.readouterr().err
    assert f"data.root {root!r} ({project / root}) is not a directory; expected an image folder" in err
    assert not (project / "dvc.lock").exists() and not (project / "data").exists()


@pytest.mark.slow
def test_bootstrap_reads_an_image_folder_again_after_its_images_change(tmp_path: Path) -> None:
    """DVC tracks `data.root`, not the files under it: a bootstrap refused for too few images,
    rerun once the user added some, used to validate (and would train on) the folder's earlier
    contents, restored from DVC's run cache even after `data/prepared` and `dvc.lock` were
    deleted."""
    from PIL import Image

    from unsir_pipeline.adapters.validation import ValidationFailed
    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.settings.workspace import Workspace

    def write_images(per_class: int) -> None:
        for shade, name in ((30, "dark"), (220, "light")):
            (folder / name).mkdir(parents=True, exist_ok=True)
            for i in range(per_class):  # each image its own: a repeat would be left out
                image = Image.new("L", (4, 4), shade)
                image.putpixel((i % 4, i // 4 % 4), i)
                image.save(folder / name / f"{i}.png")

    folder = tmp_path / "shades"
    project = init_project(tmp_path / "unlearning").root
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"].update(name="imagefolder", root=str(folder), min_per_class=3, retain_per_class=2)
    params["model"]["train"]["epochs"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    write_images(8)  # 1 validation image a class
    with pytest.raises(ValidationFailed, match="class counts"):
        bootstrap(Workspace.load(project))
    write_images(30)  # 4 or 5
    assert bootstrap(Workspace.load(project)).created
    assert len((project / "data" / "prepared" / "manifest.csv").read_text().splitlines()) == 1 + 60


def _require_free_space(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(ROOT / "infra" / "require-free-space.sh"), *args], capture_output=True, text=True, timeout=60
    )


def test_a_nearly_full_disk_stops_the_build_at_once_with_the_figures(tmp_path: Path) -> None:
    not_yet_made = tmp_path / "venv" / "inner"
    assert _require_free_space(str(not_yet_made), "0", "a new virtual environment").returncode == 0

    refused = _require_free_space(str(not_yet_made), "1000000", "a new virtual environment")
    assert refused.returncode == 1
    assert f"GiB free on the disk holding {not_yet_made}" in refused.stderr
    assert "a new virtual environment needs about 1000000 GiB" in refused.stderr

    bad = _require_free_space(str(tmp_path), "8GiB", "x")
    assert bad.returncode == 2 and "'8GiB'" in bad.stderr


def test_make_checks_the_disk_before_installing_and_before_testing() -> None:
    recipe_lines = [line.strip() for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("\t")]
    first_check = next(i for i, line in enumerate(recipe_lines) if "require-free-space.sh $(VENV)" in line)
    assert first_check < next(i for i, line in enumerate(recipe_lines) if "-m venv" in line)
    test_check = next(i for i, line in enumerate(recipe_lines) if 'require-free-space.sh "$${TMPDIR' in line)
    assert test_check < next(i for i, line in enumerate(recipe_lines) if line.startswith("$(BIN)/pytest"))


@pytest.mark.parametrize("name", ["prefect", "mlflow", "dvc", "great-expectations", "ruff"])
def test_the_driven_systems_are_capped_at_a_minor_the_suite_runs_on(name: str) -> None:
    from importlib.metadata import version

    from packaging.requirements import Requirement
    from packaging.version import Version

    declared = PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["dev"]
    (requirement,) = [Requirement(spec) for spec in declared if Requirement(spec).name == name]
    installed = Version(version(name))
    assert installed in requirement.specifier, f"{name} {installed} is outside {requirement.specifier}"
    caps = [Version(clause.version) for clause in requirement.specifier if clause.operator == "<"]
    assert caps, f"{name}: {requirement.specifier} has no upper bound"
    (cap,) = caps
    assert cap.minor > 0 or len(cap.release) > 1, f"{name}: capped at a major ({cap}), which admits untested minors"
    beyond_next_minor = cap > Version(f"{installed.major}.{installed.minor + 2}")
    assert not beyond_next_minor, f"{name}: {cap} is beyond the minor after {installed}"
