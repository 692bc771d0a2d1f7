"""DVC data versioning against real DVC projects in temporary git repositories."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from unsir_pipeline.data_versioning import (
    DataVersioningError,
    default_remote,
    ensure_repo,
    push,
    recorded_digests,
    repro,
    track,
    use_remote,
    verify,
)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _git_init(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q", str(directory)], check=True)
    return directory


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root, tmp_path / "remote")
    return root


def test_ensure_repo_is_idempotent(tmp_path: Path) -> None:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root, "state/remote")
    config = (root / ".dvc" / "config").read_text()
    ensure_repo(root, root / "state" / "remote")  # the same directory, given absolute
    assert (root / ".dvc" / "config").read_text() == config
    assert "analytics = false" in config and "check_update = false" in config
    # Inside the project: committed, relative to .dvc/, so it works in every clone.
    assert "remote = local" in config and "url = ../state/remote" in config
    assert not (root / ".dvc" / "config.local").exists()
    assert "no_scm" not in config  # git-backed


def test_a_deployment_remote_stays_out_of_the_committed_config(tmp_path: Path) -> None:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root, "state/remote")
    committed = (root / ".dvc" / "config").read_text()

    use_remote(root, "s3://unsir-dvc/store", endpoint="http://127.0.0.1:9000")
    assert (root / ".dvc" / "config").read_text() == committed
    local = (root / ".dvc" / "config.local").read_text()
    assert "s3://unsir-dvc/store" in local and "endpointurl = http://127.0.0.1:9000" in local
    assert default_remote(root) == "s3://unsir-dvc/store"

    shared = tmp_path / "team-remote"  # a directory outside the project is a deployment's too
    use_remote(root, shared)
    assert default_remote(root) == str(shared.resolve())
    assert (root / ".dvc" / "config").read_text() == committed

    use_remote(root, "state/services/dvc-remote")  # inside the project, but not the committed one
    assert default_remote(root) == "../state/services/dvc-remote"
    assert (root / ".dvc" / "config").read_text() == committed

    use_remote(root, "state/remote")  # back to the committed default
    assert default_remote(root) == "../state/remote"


def test_push_goes_to_the_deployment_remote(project: Path, tmp_path: Path) -> None:
    data = project / "data" / "subset.csv"
    data.parent.mkdir()
    data.write_text("sample_id,label\na,0\n")
    digest = track(project, data)
    shared = tmp_path / "team-remote"
    use_remote(project, shared)
    push(project)
    assert (shared / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def test_subdir_and_no_scm_projects(tmp_path: Path) -> None:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root / "pipeline", tmp_path / "remote-a")
    assert (root / "pipeline" / ".dvc").is_dir() and not (root / ".dvc").exists()

    plain = tmp_path / "plain"  # not inside any git repository
    ensure_repo(plain, tmp_path / "remote-b")
    assert "no_scm = True" in (plain / ".dvc" / "config").read_text()


def test_track_then_verify_detects_a_changed_file(project: Path) -> None:
    data = project / "data" / "manifest.csv"
    data.parent.mkdir()
    data.write_text("sample_id,label\na,0\n")
    digest = track(project, data)
    assert digest == _md5(data)
    assert track(project, Path("data/manifest.csv")) == digest  # idempotent, relative path accepted
    assert recorded_digests(project) == {"data/manifest.csv": digest}
    assert verify(project, ["data/manifest.csv"]) == []

    data.write_text("sample_id,label\na,1\n")
    problems = verify(project, ["data/manifest.csv", "data/other.csv"])
    assert problems == [
        f"data/manifest.csv: recorded md5 {digest}, found {_md5(data)}",
        "data/other.csv: not tracked by DVC",
    ]


def test_directory_output_is_checked_file_by_file(project: Path) -> None:
    images = project / "images"
    images.mkdir()
    (images / "a.bin").write_bytes(b"\x00\x01")
    (images / "b.bin").write_bytes(b"\x02")
    assert track(project, images).endswith(".dir")
    assert verify(project, ["images"]) == []
    (images / "b.bin").write_bytes(b"\x03")
    (images / "c.bin").write_bytes(b"\x04")
    problems = verify(project, ["images"])
    assert len(problems) == 2
    assert problems[0].startswith("images/b.bin: recorded md5 ")
    assert problems[1].startswith("images/c.bin: not recorded")


def _write_stage(project: Path, name: str, code: str, out: str) -> None:
    command = f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"
    # A JSON string is valid YAML, which sidesteps YAML's quoting rules for the command.
    (project / "dvc.yaml").write_text(
        f"stages:\n  {name}:\n    cmd: {json.dumps(command)}\n    outs:\n      - {out}\n"
    )


def test_repro_records_the_stage_output(project: Path) -> None:
    code = "import pathlib; p = pathlib.Path('out'); p.mkdir(exist_ok=True); (p / 'result.txt').write_text('42\\n')"
    _write_stage(project, "make", code, "out/result.txt")
    repro(project)
    result = project / "out" / "result.txt"
    assert result.read_text() == "42\n"
    assert recorded_digests(project)["out/result.txt"] == _md5(result)
    assert verify(project, ["out/result.txt"]) == []
    repro(project, ["make"])  # unchanged: nothing to do, still succeeds


def test_failed_repro_quotes_the_stage_error(project: Path) -> None:
    _write_stage(project, "broken", "import sys; sys.exit('boom: no input file')", "never.txt")
    with pytest.raises(DataVersioningError) as info:
        repro(project)
    message = str(info.value)
    assert "dvc repro" in message and "boom: no input file" in message


def test_push_fills_the_remote(project: Path, tmp_path: Path) -> None:
    data = project / "table.csv"
    data.write_text("x\n1\n")
    digest = track(project, data)
    push(project)
    stored = tmp_path / "remote" / "files" / "md5" / digest[:2] / digest[2:]
    assert stored.read_bytes() == data.read_bytes()


def test_paths_outside_the_project_are_refused(project: Path, tmp_path: Path) -> None:
    with pytest.raises(DataVersioningError, match="outside the DVC project"):
        verify(project, [str(tmp_path / "elsewhere.csv")])
    with pytest.raises(DataVersioningError, match="not a DVC project"):
        recorded_digests(tmp_path)
