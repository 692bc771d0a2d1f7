"""DVC data versioning against real DVC projects in temporary git repositories."""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unsir_pipeline.adapters.data_versioning import (
    DataVersioningError,
    default_remote,
    ensure_repo,
    pull,
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
    local = (root / ".dvc" / "config.local").read_text()
    ensure_repo(root, root / "state" / "remote")  # the same directory, given absolute
    assert (root / ".dvc" / "config").read_text() == config
    assert (root / ".dvc" / "config.local").read_text() == local
    assert "analytics = false" in config and "check_update = false" in config
    assert "no_scm" not in config  # git-backed
    # The remote is this clone's choice: never in the committed config, relative to .dvc/.
    assert "remote" not in config
    assert "remote = shared" in local and "url = ../state/remote" in local
    assert default_remote(root) == str((root / "state" / "remote").resolve())  # where dvc push uploads


def test_the_committed_config_never_names_a_remote(tmp_path: Path) -> None:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root, "state/remote")
    committed = (root / ".dvc" / "config").read_text()

    use_remote(root, "s3://unsir-dvc/store", endpoint="http://127.0.0.1:9000")
    local = (root / ".dvc" / "config.local").read_text()
    assert "s3://unsir-dvc/store" in local and "endpointurl = http://127.0.0.1:9000" in local
    assert default_remote(root) == "s3://unsir-dvc/store"

    shared = tmp_path / "team-remote"  # a directory outside the project
    use_remote(root, shared)
    assert default_remote(root) == str(shared.resolve())
    # Replacing the remote drops the old one's endpoint rather than carrying it over.
    assert "endpointurl" not in (root / ".dvc" / "config.local").read_text()

    use_remote(root, "state/remote")
    assert default_remote(root) == str((root / "state" / "remote").resolve())
    assert "url = ../state/remote" in (root / ".dvc" / "config.local").read_text()  # relative to .dvc/
    assert (root / ".dvc" / "config").read_text() == committed
    ignored = subprocess.run(["git", "check-ignore", "-q", ".dvc/config.local"], cwd=root, check=False)
    assert ignored.returncode == 0  # config.local never reaches another clone


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
    (project / "dvc.yaml").write_text(f"stages:\n  {name}:\n    cmd: {json.dumps(command)}\n    outs:\n      - {out}\n")


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


def _git(directory: Path, *args: str) -> str:
    identity = ["-c", "user.email=t@t", "-c", "user.name=t"]
    return subprocess.run(["git", *identity, *args], cwd=directory, check=True, capture_output=True, text=True).stdout


def _publish_and_clone(first: Path, second: Path, message: str) -> None:
    """What a teammate does: reproduce, push the outputs, commit; then someone clones."""
    repro(first)
    push(first)
    _git(first, "add", "-A")
    _git(first, "commit", "-qm", message)
    _git(second.parent, "clone", "-q", str(first), str(second))


def test_a_second_clone_pulls_from_the_shared_remote(tmp_path: Path) -> None:
    shared = tmp_path / "team-remote"
    first = _git_init(tmp_path / "first")
    ensure_repo(first, shared)
    table = first / "data" / "table.csv"
    table.parent.mkdir()
    table.write_text("x\n1\n")
    track(first, table)
    code = "import pathlib; pathlib.Path('stage.txt').write_text('made by a stage\\n')"
    _write_stage(first, "make", code, "stage.txt")
    second = tmp_path / "second"
    _publish_and_clone(first, second, "data")
    assert _git(first, "status", "--porcelain") == ""
    # The first clone's remote stayed in its own config.local: the clone has none, and says so.
    with pytest.raises(DataVersioningError, match="no DVC remote configured; set UNSIR_DVC_REMOTE"):
        pull(second)
    use_remote(second, shared)
    pull(second)
    assert (second / "data" / "table.csv").read_text() == "x\n1\n"
    assert (second / "stage.txt").read_text() == "made by a stage\n"
    assert _git(second, "status", "--porcelain") == ""


def test_repro_pulls_recorded_outputs_instead_of_rebuilding(tmp_path: Path) -> None:
    shared = tmp_path / "team-remote"
    first = _git_init(tmp_path / "first")
    ensure_repo(first, shared)
    # Not reproducible on purpose, like training: every run writes different bytes.
    code = "import pathlib, uuid; pathlib.Path('model.bin').write_text(uuid.uuid4().hex)"
    _write_stage(first, "train", code, "model.bin")
    second = tmp_path / "second"
    _publish_and_clone(first, second, "model")
    ensure_repo(second, shared)
    repro(second, ["train"])
    assert (second / "model.bin").read_text() == (first / "model.bin").read_text()
    assert _git(second, "status", "--porcelain") == ""  # dvc.lock untouched


def test_an_ignored_run_file_is_tracked_without_dirtying_the_tree(project: Path, tmp_path: Path) -> None:
    (project / ".gitignore").write_text("/data/retain/\n")
    _git(project, "add", "-A")
    _git(project, "commit", "-qm", "project")
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")

    digest = track(project, subset)
    assert digest == _md5(subset)
    assert track(project, subset) == digest  # idempotent
    assert (project / "data" / "retain" / "retain-forget3.csv.dvc").is_file()
    assert recorded_digests(project)["data/retain/retain-forget3.csv"] == digest
    assert _git(project, "status", "--porcelain", "--untracked-files=all") == ""

    push(project)  # the side store shares the project's remote
    assert (tmp_path / "remote" / "files" / "md5" / digest[:2] / digest[2:]).is_file()
    use_remote(project, tmp_path / "other-remote")
    push(project)  # and follows it when the remote changes
    assert (tmp_path / "other-remote" / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def test_a_rewritten_dvc_lock_does_not_mark_the_code_dirty(tmp_path: Path) -> None:
    from unsir_pipeline.adapters.provenance import git_commit

    root = _git_init(tmp_path / "repo")
    (root / "dvc.lock").write_text("schema: '2.0'\n")
    (root / "params.yaml").write_text("seed: 0\n")
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "project")
    head = _git(root, "rev-parse", "HEAD").strip()
    (root / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # a training elsewhere
    assert git_commit(root) == head
    (root / "params.yaml").write_text("seed: 1\n")  # a changed configuration is dirty
    assert git_commit(root) == f"{head}-dirty"


def test_push_without_a_remote_names_the_fix(tmp_path: Path) -> None:
    root = _git_init(tmp_path / "repo")
    ensure_repo(root, tmp_path / "remote")
    (root / ".dvc" / "config.local").unlink()
    with pytest.raises(DataVersioningError, match=r"cannot push from .*: no DVC remote configured"):
        push(root)


def _dvc_cli(directory: Path, *args: str) -> str:
    """Run DVC's own command line in ``directory`` (as a user would) and return what it printed."""
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args], cwd=directory, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture()
def user_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(global, system) DVC config folders of their own, as DVC_GLOBAL_CONFIG_DIR and
    DVC_SYSTEM_CONFIG_DIR name them for DVC and this module alike."""
    folders = tmp_path / "user-config", tmp_path / "system-config"
    monkeypatch.setenv("DVC_GLOBAL_CONFIG_DIR", str(folders[0]))
    monkeypatch.setenv("DVC_SYSTEM_CONFIG_DIR", str(folders[1]))
    return folders


def test_a_remote_in_the_users_config_is_pushed_to(tmp_path: Path, user_config: tuple[Path, Path]) -> None:
    # `dvc remote add --global -d`: every project of this user pushes there, none names it.
    root = _git_init(tmp_path / "repo")
    _dvc_cli(root, "init", "--quiet")
    _dvc_cli(root, "remote", "add", "--global", "--default", "team", "../team-remote")  # kept relative
    team = (user_config[0] / ".." / "team-remote").resolve()  # relative to the config's own folder
    assert default_remote(root) == str(team)

    (root / ".gitignore").write_text("/data/retain/\n")
    images = root / "images.bin"
    images.write_bytes(b"\x00")
    subset = root / "data" / "retain" / "retain-forget3.csv"  # a side store's, as a forget writes
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    digests = [track(root, images), track(root, subset)]
    push(root)  # DVC's push (the project's and the side store's) lands where default_remote says
    assert all((team / "files" / "md5" / d[:2] / d[2:]).is_file() for d in digests)

    # DVC's order: system < global < project < local; a level may name a remote another defines.
    system = tmp_path / "system-remote"
    (user_config[1]).mkdir()
    (user_config[1] / "config").write_text(f"[core]\n    remote = site\n['remote \"site\"']\n    url = {system}\n")
    assert default_remote(root) == str(team)  # the user's config wins over the system's
    _dvc_cli(root, "remote", "default", "--project", "site")
    assert default_remote(root) == str(system)
    _dvc_cli(root, "remote", "default", "--local", "team")
    assert default_remote(root) == str(team)


def test_a_hand_written_config_is_read_as_dvc_reads_it(tmp_path: Path, user_config: tuple[Path, Path]) -> None:
    # DVC reads its config with ConfigObj: quotes and inline comments are not part of a value,
    # section and key names are lowercased, a named section may be spaced; core.remote is
    # lowercased by DVC's schema, so it names `[remote "TEAM"]` whatever its case.
    root = _git_init(tmp_path / "repo")
    _dvc_cli(root, "init", "--quiet")
    team, cache = tmp_path / "team-remote", tmp_path / "team-cache"
    (root / ".dvc" / "config").write_text(
        "[Core]\n"
        '    Remote = "Team"  # the shared store\n'
        "    analytics = false\n"
        '[remote   "TEAM"]\n'
        f'    URL = "{team}"\n'
        "[cache]\n"
        f"    dir = '{cache}'\n"
    )
    assert _dvc_cli(root, "config", "remote.team.url") == str(team)  # what DVC reads
    assert default_remote(root) == str(team)
    from unsir_pipeline.adapters.data_versioning import _cache_dir

    assert str(_cache_dir(root)) == _dvc_cli(root, "cache", "dir") == str(cache)

    images = root / "images.bin"
    images.write_bytes(b"\x00")
    digest = track(root, images)
    push(root)  # lands where DVC pushes, as default_remote says
    assert (team / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def test_a_side_store_gets_every_setting_of_the_default_remote(project: Path) -> None:
    # Credentials, a profile, a region: whatever the remote needs to accept a push from the side
    # store, set at any level; a relative path resolved as DVC reads it, a secret kept intact.
    _dvc_cli(project, "remote", "add", "--project", "team", "s3://bucket/data")
    _dvc_cli(project, "remote", "modify", "--project", "team", "region", "eu-west-1")
    _dvc_cli(project, "remote", "modify", "--project", "team", "credentialpath", "creds/aws")
    _dvc_cli(project, "remote", "modify", "--local", "team", "profile", "ci")
    _dvc_cli(project, "remote", "modify", "--local", "team", "secret_access_key", "a#b, c")
    _dvc_cli(project, "remote", "default", "--local", "team")
    (project / ".gitignore").write_text("/data/retain/\n")
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    track(project, subset)  # sets up the side store in data/retain/

    listed = dict(line.split("=", 1) for line in _dvc_cli(subset.parent, "config", "-l").splitlines())
    remote = {key.split(".", 2)[2]: value for key, value in listed.items() if key.startswith("remote.shared.")}
    assert listed["core.remote"] == "shared"
    assert remote == {
        "url": "s3://bucket/data",
        "region": "eu-west-1",
        "credentialpath": str(project / "creds" / "aws"),  # relative to where it was set from
        "profile": "ci",
        "secret_access_key": "a#b, c",
    }


@pytest.mark.slow
def test_dvc_repro_runs_the_real_stage_without_an_activated_environment(tmp_path: Path) -> None:
    from conftest import make_project

    root = make_project(tmp_path / "project")
    ensure_repo(root, tmp_path / "remote")
    # What a user has after `python -m venv .venv && pip install ...`, never activated: the
    # interpreter in .venv/bin, and a PATH whose python3 lacks the package.
    venv_python = root / ".venv" / "bin" / "python"
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    venv_python.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DVC_NO_ANALYTICS": "1", "UNSIR_PROGRESS": "0"}
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro", "prepare"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (root / "data" / "prepared" / "manifest.csv").is_file()
    assert verify(root, ["data/prepared"]) == []


def test_the_stage_wrapper_names_the_fix_when_no_python_has_the_package(tmp_path: Path) -> None:
    wrapper = Path(__file__).resolve().parents[1] / "unsir_pipeline" / "templates" / "run-stage.sh"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        ["sh", str(wrapper), "prepare"], cwd=tmp_path, env=env, capture_output=True, text=True, check=False
    )
    if result.returncode == 0:  # pragma: no cover - a system python3 with the package installed
        pytest.skip("the system python3 has unsir-pipeline installed")
    assert result.returncode == 127
    assert "no Python with unsir-pipeline installed for stage 'prepare'" in result.stderr
    assert "UNSIR_PYTHON" in result.stderr


@pytest.mark.slow
def test_the_flows_version_data_step_leaves_the_tree_clean(bootstrapped_project: Path, tmp_path: Path) -> None:
    """The version-data task's body as the flow calls it, in a project with the repository's .gitignore:
    the retain subset is tracked and pushed, its md5 is in the lineage, git sees nothing new."""
    from conftest import clone_project
    from prefect.logging import disable_run_logger

    from unsir_pipeline.adapters.prepared_data import load_prepared, write_retain_subset
    from unsir_pipeline.settings.workspace import Workspace
    from unsir_pipeline.tasks.data import version_data

    root = clone_project(bootstrapped_project, tmp_path / "project")  # data prepared by `dvc repro`
    shutil.copy(Path(__file__).resolve().parents[1] / ".gitignore", root / ".gitignore")
    ws = Workspace.load(root, [f"paths.dvc_remote={tmp_path / 'team-remote'}"])
    _git(root, "add", "-A")
    _git(root, "commit", "-qm", "prepared")
    data, manifest = load_prepared(ws)
    subset = write_retain_subset(ws, manifest, (3,), data.num_classes)

    with disable_run_logger():
        digests = version_data.fn(ws, subset)
    key = subset.relative_to(root).as_posix()
    assert digests[key] == _md5(subset) and "data/prepared" in digests
    assert (tmp_path / "team-remote" / "files" / "md5" / digests[key][:2] / digests[key][2:]).is_file()
    assert _git(root, "status", "--porcelain", "--untracked-files=all") == ""


@pytest.mark.slow
def test_the_committed_lock_claims_only_what_reproduces(bootstrapped_project: Path) -> None:
    """dvc.lock commits `prepare` alone, and `prepare` run afresh from the repository's code and
    params gives exactly the md5s it records: the claim the lock makes holds on this machine."""
    import yaml

    repository = Path(__file__).resolve().parents[1]
    committed = yaml.safe_load((repository / "dvc.lock").read_text())["stages"]
    assert set(committed) == {"prepare"}  # model hashes are not reproducible (docs/dvc.md)

    # The session's project ran `prepare` afresh (bootstrap's `dvc repro train`) in a new
    # repository holding the repository's code and params.yaml.
    fresh = yaml.safe_load((bootstrapped_project / "dvc.lock").read_text())["stages"]["prepare"]
    stale = "the committed dvc.lock is stale: run `dvc repro prepare` and commit dvc.lock"
    assert fresh["deps"] == committed["prepare"]["deps"], stale
    assert fresh["params"] == committed["prepare"]["params"], stale
    assert fresh["outs"] == committed["prepare"]["outs"]  # same inputs, same bytes


def _spy_dvc(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, ...]]:
    """Record the arguments of every DVC process the module starts (each still runs for real)."""
    from unsir_pipeline.adapters import data_versioning

    calls: list[tuple[str, ...]] = []
    real = data_versioning._dvc

    def spy(project_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
        calls.append(args)
        return real(project_dir, *args)

    monkeypatch.setattr(data_versioning, "_dvc", spy)
    return calls


def test_the_cache_directory_is_asked_of_dvc_once_per_configuration(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = project / "images"
    images.mkdir()
    (images / "a.bin").write_bytes(b"\x00\x01")
    track(project, images)
    calls = _spy_dvc(monkeypatch)
    assert verify(project, ["images"]) == [] and verify(project, ["images"]) == []
    assert calls.count(("cache", "dir")) <= 1  # a flow run verifies twice, then tracks and pushes

    # A cache moved in the project's config is seen at once: the answer is not kept past it.
    moved = tmp_path / "moved-cache"
    subprocess.run([sys.executable, "-m", "dvc", "cache", "dir", "--local", str(moved)], cwd=project, check=True)
    assert verify(project, ["images"]) == [
        f"images: recorded md5 {recorded_digests(project)['images']}, "
        "but its file listing is not in the local cache to compare with"
    ]


def test_the_cache_directory_is_read_from_the_config_as_dvc_cache_dir_answers(
    tmp_path: Path, user_config: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from unsir_pipeline.adapters.data_versioning import _cache_dir

    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # for a `~` path
    root = _git_init(tmp_path / "repo")
    _dvc_cli(root, "init", "--quiet")
    settings = [
        (),  # DVC's default, .dvc/cache
        ("--global", "../user-cache"),  # relative to the user's config folder
        ("--global", "~/dvc-cache"),
        ("--project", "/srv/../srv/team-cache"),  # an absolute path, kept as written
        ("--local", "clone-cache"),  # relative to where it is set from, stored relative to .dvc/
    ]
    for setting in settings:
        if setting:
            _dvc_cli(root, "cache", "dir", *setting)
        with monkeypatch.context() as spied:
            calls = _spy_dvc(spied)
            assert str(_cache_dir(root)) == _dvc_cli(root, "cache", "dir"), setting
        assert calls == [], setting  # read from the config files: no DVC process

    # A remote as the cache (cache.local, which DVC still honours): DVC is asked, once.
    _dvc_cli(root, "remote", "add", "--local", "store", str(tmp_path / "store"))
    _dvc_cli(root, "config", "--local", "cache.local", "store")
    calls = _spy_dvc(monkeypatch)
    assert _cache_dir(root) == _cache_dir(root) == Path(_dvc_cli(root, "cache", "dir"))
    assert calls == [("cache", "dir")]


def test_a_changed_file_tracked_by_the_project_stays_in_the_project(project: Path) -> None:
    data = project / "data" / "manifest.csv"
    data.parent.mkdir()
    data.write_text("sample_id,label\na,0\n")
    track(project, data)  # `dvc add` writes data/.gitignore, so git now ignores the file itself
    data.write_text("sample_id,label\na,1\n")
    assert track(project, data) == _md5(data)
    assert not (project / "data" / ".dvc").exists()  # no side store: the project would skip data/
    assert recorded_digests(project) == {"data/manifest.csv": _md5(data)}


def test_an_unchanged_file_is_not_added_again(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / ".gitignore").write_text("/data/retain/\n")
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    digest = track(project, subset)
    calls = _spy_dvc(monkeypatch)
    subset.write_text("sample_id,label\na,0\n")  # a later forget of the same class writes the same bytes
    assert track(project, subset) == digest
    assert [call for call in calls if call[0] == "add"] == []

    # What the skip relies on is checked: an object missing from the cache is added again...
    cached = project / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
    cached.unlink()
    assert track(project, subset) == digest and cached.is_file()
    # ...and so is a changed file.
    subset.write_text("sample_id,label\na,1\n")
    assert track(project, subset) == _md5(subset)
    assert len([call for call in calls if call[0] == "add"]) == 2


def test_push_skips_a_repository_whose_objects_the_remote_already_holds(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (project / ".gitignore").write_text("/data/retain/\n")
    images = project / "images"
    images.mkdir()
    (images / "a.bin").write_bytes(b"\x00\x01")
    (images / "b.bin").write_bytes(b"\x02")
    listing = track(project, images)
    push(project)
    calls = _spy_dvc(monkeypatch)
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    digest = track(project, subset)
    push(project)  # a forget run: only the side store has something new
    assert [call for call in calls if call[0] == "push"] == [("push", "--quiet")]
    remote = tmp_path / "remote" / "files" / "md5"
    assert (remote / digest[:2] / digest[2:]).is_file()

    push(project)  # nothing new anywhere: no DVC process
    assert len([call for call in calls if call[0] == "push"]) == 1

    # An object missing from the remote is uploaded again (a directory output is complete on a
    # remote that holds its .dir listing, for DVC as here).
    (remote / listing[:2] / listing[2:]).unlink()
    push(project)
    assert (remote / listing[:2] / listing[2:]).is_file()
    assert len([call for call in calls if call[0] == "push"]) == 2


def test_a_new_side_store_is_set_up_quiet_by_one_dvc_process(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (project / ".gitignore").write_text("/data/retain/\n")
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    calls = _spy_dvc(monkeypatch)
    track(project, subset)
    assert [call[0] for call in calls] == ["init", "add"]
    for key in ("core.analytics", "core.check_update"):  # offline and quiet, as the project is
        shown = subprocess.run(
            [sys.executable, "-m", "dvc", "config", key], cwd=subset.parent, capture_output=True, text=True
        )
        assert shown.stdout.strip() == "false"


@pytest.mark.parametrize("folder", [".assets", "venv"])
def test_push_uploads_what_a_dvc_file_in_a_hidden_or_tool_folder_records(
    project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, folder: str
) -> None:
    # DVC walks every folder git does not ignore (all but .git, .hg, .dvc): a .dvc file in a
    # hidden or tool folder is pushed by `dvc push`, so it must not be passed over when push
    # decides whether the remote already holds everything.
    logo = project / folder / "logo.bin"
    logo.parent.mkdir()
    logo.write_bytes(b"\x00")
    dvc = [sys.executable, "-m", "dvc", "add", "--quiet", f"{folder}/logo.bin"]
    subprocess.run(dvc, cwd=project, check=True)
    push(project)
    calls = _spy_dvc(monkeypatch)
    push(project)  # nothing new: no DVC process, the folder walked or not
    assert [call for call in calls if call[0] == "push"] == []

    logo.write_bytes(b"\x01")
    subprocess.run(dvc, cwd=project, check=True)
    push(project)
    digest = _md5(logo)
    assert (tmp_path / "remote" / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def _dvc_listed(project: Path) -> dict[str, str]:
    """What DVC itself says the project tracks: {path: md5} from `dvc ls -R --dvc-only`."""
    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "ls", "-R", "--dvc-only", "--json", "."],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    )
    return {entry["path"]: entry["md5"] for entry in json.loads(listed.stdout)}


def test_a_file_in_a_hidden_folder_is_recorded_as_dvc_records_it(project: Path) -> None:
    # DVC reads .dvc files in every folder git does not ignore, hidden ones included (all but
    # .git, .hg and .dvc); a folder git ignores it passes over.
    (project / ".gitignore").write_text("/.cache/\n")
    logo = project / ".assets" / "logo.bin"
    logo.parent.mkdir()
    logo.write_bytes(b"\x00")
    assert track(project, logo) == _md5(logo)
    stale = project / ".cache" / "old.bin.dvc"  # a .dvc file git ignores: DVC never reads it
    stale.parent.mkdir()
    shutil.copy(project / ".assets" / "logo.bin.dvc", stale)
    assert recorded_digests(project) == _dvc_listed(project) == {".assets/logo.bin": _md5(logo)}
    assert verify(project, [".assets/logo.bin"]) == []


def test_a_run_file_in_a_hidden_ignored_folder_is_tracked_and_pushed(project: Path, tmp_path: Path) -> None:
    (project / ".gitignore").write_text("/.runs/\n")
    subset = project / ".runs" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    digest = track(project, subset)  # a side store in .runs/retain/
    assert digest == _md5(subset) and recorded_digests(project) == {".runs/retain/retain-forget3.csv": digest}
    push(project)
    assert (tmp_path / "remote" / "files" / "md5" / digest[:2] / digest[2:]).is_file()


def test_no_scm_set_in_the_clones_config_is_honoured(project: Path) -> None:
    # `dvc config --local core.no_scm true` (or --global): DVC runs without git, so it reads the
    # .dvc files git ignores and refuses none; a run file is then the project's, no side store.
    _dvc_cli(project, "config", "--local", "core.no_scm", "True")
    (project / ".gitignore").write_text("/data/retain/\n")
    subset = project / "data" / "retain" / "retain-forget3.csv"
    subset.parent.mkdir(parents=True)
    subset.write_text("sample_id,label\na,0\n")
    digest = track(project, subset)
    assert not (subset.parent / ".dvc").exists()
    assert recorded_digests(project) == _dvc_listed(project) == {"data/retain/retain-forget3.csv": digest}


def test_changing_the_remote_keeps_the_users_other_settings_of_it(project: Path, tmp_path: Path) -> None:
    # A profile or credentials set on `shared` (`dvc remote modify --local shared profile ci`)
    # belong to the user; a new bucket or endpoint changes only url and endpointurl. A remote of
    # another kind (a directory after S3) takes none of them: DVC would refuse its config.
    use_remote(project, "s3://unsir-dvc/store", endpoint="http://127.0.0.1:9000")
    _dvc_cli(project, "remote", "modify", "--local", "shared", "profile", "ci")
    _dvc_cli(project, "remote", "modify", "--local", "shared", "credentialpath", "/etc/unsir/aws")
    _dvc_cli(project, "remote", "add", "--local", "team", "s3://team/data")
    _dvc_cli(project, "remote", "default", "--local", "team")  # another default, chosen by hand

    def listed() -> dict[str, str]:
        return dict(line.split("=", 1) for line in _dvc_cli(project, "config", "-l").splitlines())

    kept = {"remote.shared.profile": "ci", "remote.shared.credentialpath": "/etc/unsir/aws"}
    use_remote(project, "s3://unsir-dvc/other", endpoint="http://minio:9000")
    assert (
        listed().items()
        >= {
            "core.remote": "shared",
            "remote.shared.url": "s3://unsir-dvc/other",
            "remote.shared.endpointurl": "http://minio:9000",
            "remote.team.url": "s3://team/data",
            **kept,
        }.items()
    )
    use_remote(project, "s3://unsir-dvc/other")
    config = listed()
    assert config.items() >= {"core.remote": "shared", "remote.shared.url": "s3://unsir-dvc/other", **kept}.items()
    assert "remote.shared.endpointurl" not in config  # no endpoint asked for: AWS's own

    use_remote(project, "state/remote")
    config = listed()
    assert {key for key in config if key.startswith("remote.shared.")} == {"remote.shared.url"}
    assert "url = ../state/remote" in (project / ".dvc" / "config.local").read_text()  # as DVC stores it
    assert default_remote(project) == str((project / "state" / "remote").resolve())
    use_remote(project, "state/other")  # the same kind: the url alone is changed
    assert "url = ../state/other" in (project / ".dvc" / "config.local").read_text()
    assert default_remote(project) == str((project / "state" / "other").resolve())
