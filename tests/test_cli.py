"""The command line keeps its word: exit 2 for bad input before any work starts, errors that name
the bad value, help and examples everywhere, --json, precedence flag > environment > file,
thread and Prefect settings, progress on a terminal only, and no server left after SIGTERM."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import (
    ROOT,
    AnsweringEveryVerb,
    a_registry_that_does_not_answer,
    clone_project,
    flow_result,
    http_server_on_loopback,
    set_version_status,
)

from unsir_pipeline.adapters import orchestration
from unsir_pipeline.cli import build_parser, main
from unsir_pipeline.cli import progress as progress_module
from unsir_pipeline.settings import runtime
from unsir_pipeline.settings.workspace import Workspace

CLI = [sys.executable, "-m", "unsir_pipeline.cli"]


@pytest.fixture
def params_only(tmp_path) -> Path:
    """A directory with the project's params.yaml and nothing registered."""
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    return tmp_path


def _parsers(parser: argparse.ArgumentParser, path: str = "unsir"):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


# --- help, version, parsing -----------------------------------------------------------------


def test_every_option_has_help_and_every_command_examples():
    missing, without_examples = [], []
    for path, parser in _parsers(build_parser()):
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction) and not action.help:
                missing.append(f"{path} {action.dest}")
        if "examples:" not in (parser.epilog or ""):
            without_examples.append(path)
    assert missing == [] and without_examples == []


def test_the_forget_summary_names_every_forgotten_class_by_name():
    """Image folders named "1", "10", "2", "cat dog": the summary said "forgot classes ['cat dog']
    (all forgotten so far: [2, 3])", indices that read as the classes named "2" and "3"."""
    from unsir_pipeline.cli.forget import format_result

    metrics = {f"{prefix}{key}": 0.0 for prefix in ("", "original_") for key in ("forget_acc", "retain_acc", "mia")}
    per_class = [{"class": name, "before": 1.0, "after": 1.0, "forgotten": False} for name in ("1", "10", "2")]
    per_class.append({"class": "cat dog", "before": 1.0, "after": 0.0, "forgotten": True})
    result = flow_result(
        forget_class_names=["cat dog"],
        all_forgotten=[1, 3],
        parent_version=2,
        new_version=3,
        per_class=per_class,
        metrics=metrics,
    )
    assert (
        format_result(result)
        .splitlines()[0]
        .startswith("forgot classes ['cat dog'] (all forgotten so far: ['10', 'cat dog']) from version 2")
    )


def test_the_forget_summary_names_the_classes_its_forget_figures_measure():
    """A forget of class 1 from a version that had forgotten 3, 5 and 8 measures all four: the
    table's 'forget accuracy' read 0.2535 before, beside class 1 at 1.000 in the per-class rows,
    and nothing said the figure covered 3, 5 and 8 too (the evidence report names them)."""
    from unsir_pipeline.cli.forget import format_result

    metrics = {"original_forget_acc": 0.2535, "forget_acc": 0.0, "original_retain_acc": 0.9, "retain_acc": 0.9}
    metrics |= {"original_mia": 0.3, "mia": 0.1}
    per_class = [
        {"class": f"digit-{c}", "before": 0.0 if c in (3, 5, 8) else 1.0, "after": 0.0, "forgotten": c in (1, 3, 5, 8)}
        for c in range(10)
    ]
    result = flow_result(
        forget_class_names=["digit-1"],
        forget_classes=[1],
        all_forgotten=[1, 3, 5, 8],
        parent_version=4,
        new_version=5,
        per_class=per_class,
        metrics=metrics,
    )
    lines = format_result(result).splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("test split"))
    assert lines[header - 1] == (
        "forget accuracy and membership inference (D_f) measure: digit-1, digit-3, digit-5, digit-8 "
        "(every class forgotten so far; asked this time: digit-1)"
    ), lines
    first = format_result({**result, "forget_class_names": ["digit-3"], "forget_classes": [3], "all_forgotten": [3]})
    assert "forget accuracy and membership inference (D_f) measure: digit-3" in first.splitlines()


def test_the_forget_summary_marks_the_retrained_column_when_the_retrained_model_was_registered():
    """The gate registered the retrained reference in place of UNSIR's model: both tables
    labelled their columns 'after' and 'retrained' with nothing saying which model is the new
    version. The registered column is marked, and only when it is the retrained one."""
    from unsir_pipeline.cli.forget import format_result

    keys = ("forget_acc", "retain_acc", "mia")
    metrics = {f"{prefix}{key}": 0.5 for prefix in ("", "original_", "reference_") for key in keys}
    per_class = [
        {"class": f"digit-{c}", "before": 1.0, "after": 0.5, "retrained": 0.0 if c == 5 else 1.0, "forgotten": c == 5}
        for c in range(10)
    ]
    result = flow_result(
        forget_class_names=["digit-5"],
        forget_classes=[5],
        all_forgotten=[5],
        per_class=per_class,
        metrics=metrics,
        unsir_gate_reasons=["FAIL: round budget ran out"],
        method="retrain",
    )
    lines = format_result(result).splitlines()
    assert f"{'class':<12}{'before':>10}{'after':>10}{'retrained*':>11}  * registered as version 2" in lines, lines
    assert f"{'test split':<28}{'before':>10}{'after':>10}{'retrained*':>11}" in lines, lines
    unsirs = format_result({**result, "method": "unsir"})
    assert "*" not in unsirs and f"{'class':<12}{'before':>10}{'after':>10}{'retrained':>11}" in unsirs.splitlines()


def test_batch_run_names_the_evidence_report_of_its_batch():
    """`unsir forget` ends with 'audit trail: `unsir audit report forget-...`'; `unsir batch run`
    printed no such line, for a batch that registered a version or one whose classes the
    champion had already forgotten."""
    from unsir_pipeline.cli.requests_and_batches import format_batch_result

    metrics = {f"{prefix}{key}": 0.0 for prefix in ("", "original_") for key in ("forget_acc", "retain_acc", "mia")}
    per_class = [{"class": str(c), "before": 1.0, "after": 1.0, "forgotten": c == 5} for c in range(10)]
    # As the deletion-batch flow returns it: its batch, then the unlearn flow's result.
    result = {
        "status": "done",
        "batch_id": "batch-7f3a",
        "request_ids": ["r1", "r2"],
        **flow_result(
            forget_class_names=["5"], forget_classes=[5], all_forgotten=[5], per_class=per_class, metrics=metrics
        ),
    }
    lines = format_batch_result(result).splitlines()
    assert lines[0] == "batch batch-7f3a: 2 request(s) done with version 2"
    assert lines[-1] == "audit trail: `unsir audit report batch-7f3a`"
    recovered = {"status": "done", "batch_id": "batch-7f3a", "new_version": 2, "request_ids": ["r1"], "promoted": True}
    assert format_batch_result(recovered).splitlines() == [
        "batch batch-7f3a: requests done; their classes were already forgotten by version 2",
        "audit trail: `unsir audit report batch-7f3a`",
    ]
    assert format_batch_result({"status": "empty"}) == "batch empty: nothing pending"
    # What `batch run` finished before the flow, however the batch ended.
    assert format_batch_result({**recovered, "finished_promotion": 1}).splitlines()[0] == (
        "batch batch-7f3a: requests done; their classes were already forgotten by version 2; finished promoting "
        "version 1, which a stopped run left promoted but not yet champion"
    )


def test_models_keeps_its_columns_aligned_past_a_wide_forgotten_list():
    """Nine forgotten classes in one version's row, one in another's: every column after
    'forgotten' (method, gate, created) started at a different place in each row."""
    from unsir_pipeline.cli.models import format_versions

    def version(number: int, forgotten: list[int], gate: str) -> dict:
        return {
            "version": number,
            "aliases": ["champion"] if number == 3 else [],
            "created_at": "2026-12-07T12:00:00",
            "parent_version": str(number - 1) if number > 1 else None,
            "forgotten_classes": forgotten,
            "forgotten_class_names": [str(c) for c in forgotten],
            "gate": gate,
            "review_decision": None,
            "status": "READY",
            "tags": {"method": "retrain"} if number == 3 else {},
        }

    versions = [version(1, [], ""), version(2, [3], "held"), version(3, list(range(9)), "promoted-by-override")]
    header, *rows = format_versions(versions)
    # Where each column starts in the header, and where its value starts in each row.
    created = {header.index("created"), *(row.index("2026-") for row in rows)}
    method = {header.index("method"), rows[0].index(" - ", header.index("forgotten")) + 1, rows[2].index("retrain")}
    gate = {header.index("gate"), rows[1].index("held"), rows[2].index("promoted-by-override")}
    assert len(created) == len(method) == len(gate) == 1, "\n".join([header, *rows])


def test_version_is_printed(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.startswith("unsir ")


@pytest.mark.parametrize(
    "command",
    [
        ["promote", "1", "--reason", "x"],
        ["reject", "1", "--reason", "x"],
        ["audit", "verify"],
        ["audit", "sign-head"],
        ["audit", "report", "b"],
        ["stage", "train"],
        ["serve"],
    ],
)
def test_reporting_commands_take_json(command):
    assert build_parser().parse_args([*command, "--json"]).json is True


def test_non_utf8_argument_exits_2_naming_it(params_only):
    result = subprocess.run(
        [
            *CLI,
            "--project",
            str(params_only),
            "request",
            "add",
            "--classes",
            "3",
            "--requester",
            b"al\xffce",
            "--reason",
            "x",
        ],
        capture_output=True,
        check=False,
    )
    assert result.returncode == 2
    err = result.stderr.decode().strip()
    assert err == "error: argument 8 (value of --requester) is not valid UTF-8: 'al\\xffce' (bytes shown as \\xNN)"


# --- configuration: precedence and validation -------------------------------------------------


def test_unknown_architecture_exits_2_naming_the_field(params_only, capsys):
    assert main(["--project", str(params_only), "--set", "model.arch=nope", "models"]) == 2
    err = capsys.readouterr().err
    assert "model.arch" in err and "'nope'" in err and "small_cnn" in err


def test_an_architecture_argument_the_builder_does_not_take_exits_2_at_load(params_only, capsys):
    # It used to fail in the train stage, once the data had been prepared and validated.
    assert main(["--project", str(params_only), "--set", "model.kwargs={widht: 8}", "forget", "3"]) == 2
    err = capsys.readouterr().err
    assert "model.kwargs: 'small_cnn' takes no argument 'widht'; it takes: width (int)" in err
    assert not (params_only / "data").exists()  # nothing prepared


def test_a_key_of_a_recipe_section_is_set_alone_and_a_bad_one_exits_2_at_load(params_only, capsys):
    # `--set unlearn.impair.epochs=2` was refused: "give the whole section".
    assert main(["--project", str(params_only), "--set", "unlearn.impair.epochs=2", "request", "list"]) == 0
    assert main(["--project", str(params_only), "--set", "unlearn.impair.epochs=-1", "forget", "3"]) == 2
    assert "unlearn.impair.epochs: must be >= 0, got -1" in capsys.readouterr().err
    assert not (params_only / "data").exists()  # nothing prepared


def test_with_json_an_error_is_also_one_object_on_stdout(params_only, tmp_path, capsys):
    assert main(["--project", str(params_only), "--set", "model.arch=nope", "models", "--json"]) == 2
    out, err = capsys.readouterr()
    shown = json.loads(out)
    assert shown["exit_code"] == 2 and "'nope'" in shown["error"] and err == f"error: {shown['error']}\n"
    assert main(["--project", str(tmp_path / "nowhere"), "models", "--json"]) == 2
    assert "no params.yaml" in json.loads(capsys.readouterr().out)["error"]
    assert main(["--project", str(params_only), "--set", "model.arch=nope", "models"]) == 2
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty


def test_precedence_is_flag_then_environment_then_file(params_only, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert Workspace.load(params_only).params.registry.tracking_uri == "sqlite:///state/mlflow/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://from-env:5000")
    assert Workspace.load(params_only).params.registry.tracking_uri == "http://from-env:5000"
    flag = ("registry.tracking_uri=http://from-flag:5000",)
    assert Workspace.load(params_only, flag).params.registry.tracking_uri == "http://from-flag:5000"


def test_a_set_flag_wins_over_the_environment_on_the_command_line(params_only, monkeypatch, capsys):
    # The environment names a closed port: had it won, `models` would fail to reach it. The
    # flag's SQLite file does not exist, and `models` only reads: nothing to list, none created.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    flag = f"registry.tracking_uri=sqlite:///{params_only / 'flag.db'}"
    assert main(["--project", str(params_only), "--set", flag, "models", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []
    assert not (params_only / "flag.db").exists()


# --- runtime settings ---------------------------------------------------------------------------


def test_torch_threads_default_and_setting(monkeypatch):
    monkeypatch.delenv(runtime.THREADS_ENV, raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "available_cpus", lambda: 2)
    assert runtime.torch_threads() == 1  # a 2-core host keeps a core for the other processes
    monkeypatch.setattr(runtime, "available_cpus", lambda: 64)
    assert runtime.torch_threads() == 4
    monkeypatch.setenv("OMP_NUM_THREADS", "6")  # an operator's OpenMP setting is kept...
    assert runtime.torch_threads() == 6
    monkeypatch.setenv(runtime.THREADS_ENV, "3")  # ...unless ours says otherwise
    assert runtime.torch_threads() == 3


def test_the_thread_setting_reaches_numpys_blas_loaded_before_it():
    # OpenBLAS's idle workers spin after each call (the MIA's logistic regression), charging CPU
    # to the other cores. NumPy loaded first, the environment alone comes too late.
    code = (
        "import numpy, threadpoolctl; from unsir_pipeline.settings import runtime; "
        "before = max(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'); "
        "runtime.configure_threads(); "
        "after = max(p['num_threads'] for p in threadpoolctl.threadpool_info() if p['user_api'] == 'blas'); "
        "import os; print(before, after, os.environ['OPENBLAS_NUM_THREADS'])"
    )
    variables = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", runtime.THREADS_ENV)
    env = {k: v for k, v in os.environ.items() if k not in variables} | {runtime.THREADS_ENV: "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    before, after, exported = out.stdout.split()
    if runtime.available_cpus() > 1:
        assert int(before) > 1  # unasked, OpenBLAS takes every core
    assert (after, exported) == ("1", "1")


def test_bad_thread_setting_exits_2_naming_the_variable(params_only, monkeypatch, capsys):
    monkeypatch.setenv(runtime.THREADS_ENV, "many")
    assert main(["--project", str(params_only), "models"]) == 2
    assert "UNSIR_TORCH_THREADS='many'" in capsys.readouterr().err


def test_prefect_startup_timeout_is_raised_and_an_operator_value_wins():
    code = (
        "from unsir_pipeline.adapters import orchestration; orchestration.configure_prefect(quiet_console=False); "
        "from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as s; print(s.value())"
    )
    env = {k: v for k, v in os.environ.items() if k != orchestration.PREFECT_STARTUP_ENV}
    default = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert default.stdout.strip() == str(orchestration.DEFAULT_PREFECT_STARTUP_S)
    chosen = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, orchestration.PREFECT_STARTUP_ENV: "300"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert chosen.stdout.strip() == "300"


def _prefect_home_with_a_server_profile(home: Path, api_url: str) -> dict[str, str]:
    """The environment of a user who set their Prefect server with `prefect config set`: the URL in
    the active profile of ``home``'s profiles.toml, none in the environment; a server that does not
    answer is given up on at once."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "profiles.toml").write_text(f'active = "team"\n\n[profiles.team]\nPREFECT_API_URL = "{api_url}"\n')
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_PROFILES_PATH")}
    return env | {"PREFECT_HOME": str(home), "PREFECT_CLIENT_MAX_RETRIES": "0"}


def test_batch_serve_takes_the_prefect_server_from_the_users_profile(params_only, tmp_path):
    """A user who set the server with `prefect config set PREFECT_API_URL=...` was refused, told to
    set PREFECT_API_URL: only the environment was read. The server is read as Prefect reads it now,
    so `batch serve` goes on to that server (here one that does not answer); without one the
    refusal names the profiles file it read, and comes before the flow's imports."""
    command = [*CLI, "--project", str(params_only), "batch", "serve"]
    env = _prefect_home_with_a_server_profile(tmp_path / "prefect", "http://127.0.0.1:9/api")
    served = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert "needs a Prefect server" not in served.stderr, served.stderr[-2000:]
    assert served.returncode == 1, served.stderr[-2000:]  # the profile's server does not answer

    empty = tmp_path / "no-profile"
    refused = subprocess.run(command, env=env | {"PREFECT_HOME": str(empty)}, capture_output=True, text=True)
    assert refused.returncode == 2
    assert "needs a Prefect server" in refused.stderr and f"the active profile of {empty / 'profiles.toml'}" in (
        refused.stderr
    )


def test_a_prefect_server_that_does_not_answer_is_named(params_only, tmp_path):
    """`batch serve` with a configured server that does not answer ended with "error: All
    connection attempts failed": no URL, nothing to check."""
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_PROFILES_PATH"}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_API_URL": down, "PREFECT_CLIENT_MAX_RETRIES": "0"}
    served = subprocess.run(
        [*CLI, "--project", str(params_only), "batch", "serve"], env=env, capture_output=True, text=True, timeout=300
    )
    assert served.returncode == 1, served.stderr[-2000:]
    last = served.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot reach the Prefect server at {down} (PREFECT_API_URL): "), last
    assert "`prefect server start`" in last and str(tmp_path / "prefect" / "profiles.toml") in last, last


@contextlib.contextmanager
def _a_server_answering(status: int) -> Iterator[str]:
    """A real HTTP server on 127.0.0.1 that answers every request with ``status`` and a JSON
    body, as a Prefect server refusing a client does; yields its API URL."""

    class Refusing(AnsweringEveryVerb):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.reply(status, b'{"detail": "refused by the test server"}')

    with http_server_on_loopback(Refusing) as url:
        yield url


def test_a_prefect_server_that_refuses_the_client_is_named(params_only, tmp_path):
    """`batch serve` against a configured server that answered 401 ended with Prefect's own text
    ("Client error '401 Unauthorized' for url '...' - Response: ... - For more information check:
    https://developer.mozilla.org/..."): nothing said which setting to check. Now one line names
    the server, the status and the credentials to check, exit 1 as for a server that does not
    answer."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_PROFILES_PATH", "PREFECT_API_AUTH_STRING")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect"), "PREFECT_CLIENT_MAX_RETRIES": "0"}
    with _a_server_answering(401) as url:
        served = subprocess.run(
            [*CLI, "--project", str(params_only), "batch", "serve"],
            env=env | {"PREFECT_API_URL": url},
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert served.returncode == 1, served.stderr[-2000:]
    lines = served.stderr.strip().splitlines()
    assert len(lines) == 1, served.stderr[-2000:]
    assert lines[0].startswith(f"error: the Prefect server at {url} (PREFECT_API_URL) answered 401 Unauthorized"), lines
    assert "PREFECT_API_AUTH_STRING" in lines[0] and "developer.mozilla.org" not in lines[0], lines


@pytest.mark.parametrize(
    ("status", "named", "to_check"),
    [
        (403, "403 Forbidden", "PREFECT_API_AUTH_STRING"),
        (404, "404 Not Found", "ends in /api"),
        (500, "500 Internal Server Error", "the server's logs"),
    ],
)
def test_each_refusal_of_the_prefect_server_names_what_to_check(status, named, to_check, tmp_path):
    """Prefect's own client (taking the lock a promotion or a batch takes) against a real server
    answering ``status``: the command's error line names the server, the status and what to
    check, in one line; the exit code is a failure's (1), not bad input's."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from unsir_pipeline.cli.errors import describe_error, is_user_error

    with _a_server_answering(status) as url, temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        with pytest.raises(Exception) as raised:
            orchestration.ensure_limit("unsir-promotion-test")
        line = describe_error(raised.value, tmp_path)
    assert line.startswith(f"the Prefect server at {url} (PREFECT_API_URL) answered {named} to "), line
    assert to_check in line and "\n" not in line, line
    assert not is_user_error(raised.value)


@pytest.mark.parametrize(("status", "named"), [(401, "401 Unauthorized"), (503, "503 Service Unavailable")])
def test_a_listing_says_the_prefect_server_refused_to_tell_whether_a_batch_runs(status, named, params_only, capsys):
    """With a shared state database, `request list` and `request show` ask the Prefect server
    whether a batch holds the lock of a request left `running`. A server that refused the
    credentials (or failed) was taken for one that cannot tell: plain `running`, and a null
    run_alive, with nothing saying that the server refused or why. The listing still answers
    (unknown is fair there); it names the refusal in one line under the request."""
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    shared = ["--set", f"state.database_url=sqlite:///{params_only}/shared.sqlite"]
    store = stores.request_store(Workspace.load(params_only, (shared[1],)))
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    store.claim_pending("batch-elsewhere")  # a batch on another machine, or one killed there
    cli = ["--project", str(params_only), *shared, "request"]
    with _a_server_answering(status) as url, temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert main([*cli, "list"]) == 0
        listed = capsys.readouterr().out
        assert main([*cli, "show", request.id, "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
    refusal = f"the Prefect server at {url} (PREFECT_API_URL) answered {named} to GET /api/v2/concurrency_limits/"
    notes = [line.strip() for line in listed.splitlines() if "whether a batch or forget run" in line]
    assert len(notes) == 1 and notes[0].startswith("whether a batch or forget run is running it is unknown: "), listed
    assert refusal in notes[0] and "no batch or forget run is running it now" not in listed, listed
    assert shown["run_alive"] is None and refusal in shown["run_alive_unknown"], shown


def test_library_info_lines_stay_off_the_console_and_their_warnings_on(tmp_path):
    """Every forget and batch printed Great Expectations' "Created temporary directory ..." (its
    module sets its own logger to INFO, below the "great_expectations" level we set) and MLflow's
    "INFO mlflow.pyfunc: Validating input example against model signature", with --json too."""
    code = (
        "import logging, sys; from pathlib import Path; from unsir_pipeline.settings import environment\n"
        "environment.configure(Path(sys.argv[1]))\n"
        "console = logging.StreamHandler(); console.setLevel(logging.INFO)\n"
        "logging.getLogger().addHandler(console)  # an INFO console on the root logger, as Prefect's\n"
        "import mlflow\n"
        "from unsir_pipeline.adapters import validation\n"
        "validation._batch_definition('library-chatter')  # makes GX's ephemeral context\n"
        "logging.getLogger('mlflow.pyfunc').info('Validating input example against model signature')\n"
        "logging.getLogger('mlflow.pyfunc').warning('an MLflow warning')\n"
        "logging.getLogger('great_expectations.data_context.types.base').warning('a GX warning')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    ran = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert "Created temporary directory" not in ran.stderr, ran.stderr
    assert "Validating input example" not in ran.stderr, ran.stderr
    assert "an MLflow warning" in ran.stderr and "a GX warning" in ran.stderr, ran.stderr


def test_a_fresh_project_on_a_terminal_gets_no_prefect_telemetry_notice(tmp_path):
    """The first flow of a fresh project, run on a terminal, printed Prefect's "Prefect collects
    anonymous usage data" notice above the flow's lines, and Prefect's client counted the install
    (its SDK analytics, off only with DO_NOT_TRACK); the project promises no telemetry."""
    import pty

    from prefect._internal.analytics.ci_detection import CI_ENV_VARS  # a CI run turns it off itself

    code = (
        "import sys; from pathlib import Path; from unsir_pipeline.settings import environment\n"
        "environment.configure(Path(sys.argv[1]))\n"
        "import prefect\n"
    )
    dropped = {"PREFECT_HOME", "DO_NOT_TRACK", *CI_ENV_VARS}
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    leader, terminal = pty.openpty()  # the notice is shown on a terminal only
    try:
        ran = subprocess.run(
            [sys.executable, "-c", code, str(tmp_path)], env=env, stdout=terminal, stderr=terminal, timeout=120
        )
        os.close(terminal)
        shown = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end is closed: all was read
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    assert ran.returncode == 0, shown[-2000:]
    assert b"anonymous usage data" not in shown, shown.decode(errors="replace")
    assert not (tmp_path / "state" / "prefect" / ".sdk_telemetry").exists()  # no milestone kept either


def test_startup_failure_is_one_line_naming_the_fix():
    err = RuntimeError("Timed out while attempting to connect to ephemeral Prefect API server. stderr: ...")
    line = orchestration.describe_startup_failure(err)
    assert "\n" not in line and orchestration.PREFECT_STARTUP_ENV in line and "PREFECT_API_URL" in line
    assert orchestration.describe_startup_failure(RuntimeError("something else")) is None


def test_state_that_cannot_be_written_is_named(tmp_path):
    from unsir_pipeline.cli.errors import describe_error

    err = RuntimeError("(sqlite3.OperationalError) unable to open database file\n[SQL: ...]")
    line = describe_error(err, tmp_path)
    assert "\n" not in line and str(tmp_path) in line and "unable to open database file" in line and "writable" in line


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_full_disk_under_another_error_is_named_with_the_free_space(tmp_path):
    """MLflow ending a run on a full disk raised "(raised as a result of Query-invoked autoflush;
    ...)" with the cause on a later line: the command printed that first line, exit 1."""
    from unsir_pipeline.cli.errors import describe_error, is_user_error

    try:
        try:
            with open("/dev/full", "w") as full:  # every write: ENOSPC
                full.write("x")
        except OSError as err:
            raise RuntimeError("(raised as a result of Query-invoked autoflush; ...)\n(sqlite3...)") from err
    except RuntimeError as err:
        line = describe_error(err, tmp_path)
        assert is_user_error(err)
    assert line.startswith("no space left on a disk: [Errno 28] No space left on device; ")
    assert f"free for the state directory {tmp_path / 'state'}" in line and "\n" not in line


def test_a_failed_dvc_stage_shows_the_stages_own_error(tmp_path):
    from unsir_pipeline.adapters.data_versioning import DataVersioningError
    from unsir_pipeline.cli.errors import describe_error

    err = DataVersioningError(
        "`dvc repro --pull prepare` in /p exited with code 255:\nRunning stage 'prepare':\n"
        "error: class 'a' has 5 samples\nERROR: failed to reproduce 'prepare'"
    )
    message = describe_error(err, tmp_path)
    assert message.startswith("`dvc repro --pull prepare` in /p exited with code 255:")
    assert "error: class 'a' has 5 samples" in message


def test_the_rounds_line_names_recovery_epochs_only_when_they_ran():
    from unsir_pipeline.governance.report import describe_rounds

    last = {"round": 1, "val_forget_acc": 0.0, "val_forget_confidence": 0.02, "val_retain_acc": 0.93}
    plain = describe_rounds([{**last, "recovery_epochs": 0.0}], True)
    assert "recovery" not in plain and "verified forgotten" in plain
    assert "NOT verified" in describe_rounds([last], False) and "not verified" in describe_rounds([last], None)
    recovered = {**last, "recovery_epochs": 3.0, "val_retain_acc_before_recovery": 0.88, "parent_val_retain_acc": 0.94}
    line = describe_rounds([recovered], True)
    assert "3 recovery epoch(s), validation retain accuracy 0.880 -> 0.930 (parent 0.940)" in line
    assert "head alone" not in line
    first = {"round": 1, "val_forget_acc": 0.0, "val_forget_confidence": 0.3, "val_retain_acc": 0.93}
    assert "UNSIR: 2 round(s) (1 on the head alone);" in describe_rounds([first, {**last, "head_round": 1.0}], True)


# --- progress -----------------------------------------------------------------------------------


def test_progress_on_a_terminal_only_and_never_with_json(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv(progress_module.ENV, raising=False)
    assert progress_module.wanted(quiet=False, stream=Terminal())
    assert not progress_module.wanted(quiet=False, stream=io.StringIO())
    assert not progress_module.wanted(quiet=True, stream=Terminal())
    monkeypatch.setenv(progress_module.ENV, "1")
    assert not progress_module.wanted(quiet=True, stream=Terminal())


@pytest.mark.parametrize(
    ("setting", "shown"), [("1", True), ("True", True), ("yes", True), ("0", False), ("off", False)]
)
def test_progress_setting_is_read_with_its_usual_spellings(monkeypatch, setting, shown):
    """UNSIR_PROGRESS=yes (or true) was taken as "not set": on a terminal, progress anyway; in a
    pipe, none, and the training stage left its epochs out (it read anything but 1 as off)."""
    monkeypatch.setenv(progress_module.ENV, setting)
    assert progress_module.wanted(quiet=False, stream=io.StringIO()) is shown


@pytest.mark.parametrize("flags", [[], ["--json"]])
def test_a_bad_progress_setting_exits_2_naming_the_variable(params_only, monkeypatch, capsys, flags):
    monkeypatch.setenv(progress_module.ENV, "sometimes")
    assert main(["--project", str(params_only), "request", "list", *flags]) == 2
    error = capsys.readouterr().err
    assert "UNSIR_PROGRESS='sometimes': expected 1 (or true, yes, on) to show progress" in error


def test_a_child_process_progress_reaches_the_parent_stream():
    child = (
        "import sys; from unsir_pipeline.cli.progress import relayed_stderr\n"
        "with relayed_stderr(): print('train: epoch 2/2', file=sys.stderr)"
    )
    shown = io.StringIO()
    with progress_module.relay(progress_module.Progress("bootstrap", enabled=True, stream=shown)):
        subprocess.run([sys.executable, "-c", child], check=True, capture_output=True)  # as DVC captures it
    assert "train: epoch 2/2" in shown.getvalue()
    quiet = io.StringIO()
    with progress_module.relay(progress_module.Progress("bootstrap", enabled=False, stream=quiet)):
        subprocess.run([sys.executable, "-c", child], check=True, capture_output=True)
    assert quiet.getvalue() == ""


@pytest.mark.slow
def test_flow_steps_are_shown_as_they_finish(prefect_harness):
    from prefect import flow, task

    @task(name="first-step")
    def first() -> int:
        return 1

    @task(name="second-step")
    def second(x: int) -> int:
        return x + 1

    @flow(name="progress-check")
    def two_steps() -> int:
        return second(first())

    shown = io.StringIO()
    with progress_module.flow_steps(progress_module.Progress("forget", enabled=True, stream=shown)):
        assert two_steps() == 2
    lines = shown.getvalue().splitlines()
    steps = [line.split(" (")[0] for line in lines if "] " in line]
    assert steps == ["forget: [1] first-step done", "forget: [2] second-step done"]


@pytest.mark.slow
def test_a_subflow_start_is_shown(prefect_harness):
    """The batch flow runs ``unlearn`` as a subflow; Prefect logs its start as "Beginning subflow
    run", on the parent's logger, so the line must name the subflow, not the parent."""
    from prefect import flow, task

    @task(name="inner-step")
    def inner() -> int:
        return 1

    @flow(name="inner-flow")
    def child() -> int:
        return inner()

    @flow(name="outer-flow")
    def parent() -> int:
        return child()

    shown = io.StringIO()
    with progress_module.flow_steps(progress_module.Progress("batch", enabled=True, stream=shown)):
        assert parent() == 1
    lines = [line.split(" (")[0] for line in shown.getvalue().splitlines()]
    assert lines == [
        "batch: flow outer-flow started",
        "batch: subflow inner-flow started",
        "batch: [1] inner-step done",
    ]


# --- against a bootstrapped project -------------------------------------------------------------


@pytest.fixture(scope="module")
def project(tmp_path_factory, bootstrapped_project) -> Path:
    return clone_project(bootstrapped_project, tmp_path_factory.mktemp("cli") / "project")


def _runs(project: Path) -> list:
    import mlflow

    ws = Workspace.load(project)
    client = mlflow.MlflowClient(ws.tracking_uri)
    experiment = client.get_experiment_by_name(ws.params.registry.experiment)
    return client.search_runs([experiment.experiment_id])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (
            ["forget", "1", "--from", "999"],
            "--from 999: model 'unsir-classifier' has no version 999; its versions are [1]",
        ),
        (
            ["forget", "1", "--from", "nosuchalias"],
            "--from 'nosuchalias': model 'unsir-classifier' has no alias 'nosuchalias'",
        ),
        (["forget", "eleven"], "unknown class 'eleven'"),
        (
            ["--set", "data.split_seed=1", "forget", "2"],
            "data.split_seed is 1, but data/prepared was built with 0 (dvc.lock): set it back, or rebuild",
        ),
        (["promote", "7", "--reason", "x"], "model 'unsir-classifier' has no version 7; its versions are [1]"),
        (["reject", "7", "--reason", "x"], "model 'unsir-classifier' has no version 7; its versions are [1]"),
        (["serve", "--alias", "nosuch"], "--alias 'nosuch': model 'unsir-classifier' has no alias 'nosuch'"),
        # It served the champion, as if --alias had not been given.
        (["serve", "--alias", ""], "--alias '': expected an alias name such as champion"),
        (["serve", "--port", "70000"], "--port 70000: expected 0 (any free port) to 65535"),
        (["serve", "--poll", "nan"], "--poll nan: expected a positive number of seconds"),
        # Named alone: the refusal named both options, the valid one as if it were wrong too.
        (["serve", "--startup-timeout", "0"], "--startup-timeout 0.0: expected a positive number of seconds"),
        # Who and why go on the audit trail: a value it refuses must stop the command before
        # the registry changes, or the change would have no record.
        (["forget", "1", "--by", "   "], "--by must be a non-empty string"),
        (["forget", "1", "--by", "eve\n    9  fake_record"], "--by contains control character U+000A"),
        (["promote", "1", "--reason", "x\ny"], "--reason contains control character U+000A"),
        (["reject", "1", "--reason", "x", "--by", ""], "--by must be a non-empty string"),
        (["forget", "1", "--from", ""], "--from '': expected a version number or an alias"),
        (["forget", "1", "--from", "\u00b2"], "--from '\u00b2': model 'unsir-classifier' has no alias"),
        (["--set", "device=cuda:7", "forget", "1"], "device 'cuda:7': this machine has"),
        (["audit", "show", "--request", ""], "--request '': expected a request id"),
        (["request", "add", "--by", "alice", "--reason", "x"], "no class given: expected the classes to forget"),
        (
            ["request", "add", "3", "--classes", "4", "--by", "alice", "--reason", "x"],
            "classes given twice, as arguments ['3'] and with --classes ['4']",
        ),
        (
            ["request", "withdraw", "req-000000000000", "--reason", "typo"],
            "no deletion request with id 'req-000000000000'",
        ),
        (["request", "withdraw", "req-000000000000", "--reason", "  "], "--reason must be a non-empty string"),
        (["request", "withdraw", "req-000000000000", "--reason", "a\tb"], "--reason contains control character U+0009"),
        (["request", "withdraw", "req-000000000000", "--reason", "x", "--by", ""], "--by must be a non-empty string"),
        (
            ["request", "retry", "req-000000000000", "--reason", "fixed"],
            "no deletion request with id 'req-000000000000'",
        ),
        (["request", "retry", "req-000000000000", "--reason", "a\nb"], "--reason contains control character U+000A"),
    ],
)
def test_bad_input_exits_2_before_any_run_or_server(project, capsys, argv, named):
    before = len(_runs(project))
    assert main(["--project", str(project), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and named in err[0]
    assert len(_runs(project)) == before  # no MLflow run opened (and none left FAILED)


@pytest.mark.slow
def test_a_prefect_home_on_a_full_disk_is_refused_before_the_server_starts(project, tmp_path):
    """With Prefect's home on a full disk, its temporary server's first start died migrating its
    database, half-way; the command waited out the start-up timeout and blamed "a busy machine?",
    and every later start failed on the half-migrated database, space freed or not."""
    from conftest import run_on_full_disk

    home = tmp_path / "prefect"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "20"}
    cli = [sys.executable, "-m", "unsir_pipeline.cli", "--project", str(project)]
    # What the home holds once the command ended, listed inside the command's mount namespace:
    # the full disk and every write to it vanish with the command. A server started there leaves
    # its prefect.db.
    then_list = '"$@"; status=$?; echo "home holds:" $(ls -A "$PREFECT_HOME"); exit $status'
    ran = run_on_full_disk(home, ["sh", "-c", then_list, "sh", *cli, "forget", "5", "--from", "original"], env=env)

    assert ran.returncode == 2, ran.stderr[-2000:]
    error = ran.stderr.strip().splitlines()[-1]
    assert f"error: no space left on a disk: PREFECT_HOME={home}: no space left for Prefect's" in error
    assert f"0 B free for Prefect's home {home}" in error
    assert ran.stdout.splitlines()[-1] == "home holds: .filler"  # the disk's filler only: no server started


def _prefect_database_error(home: Path, problem: str) -> str:
    database = home / "prefect.db"
    return (
        f"error: Prefect's run-history database {database} cannot be used: {problem}. It holds only Prefect's "
        "records of past flow runs (the deletion requests, the audit trail and the model registry are kept "
        "elsewhere and are untouched): move it aside, and Prefect makes a new one at the next start: "
        f"`mv {database} {home / 'prefect-moved-aside.db'}`"
    )


def _forget_with_prefect_home(project: Path, home: Path, timeout_s: int = 20) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"PREFECT_HOME": str(home), "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": str(timeout_s)}
    command = [*CLI, "--project", str(project), "forget", "5", "--from", "original"]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def _sqlite_file(path: Path, *statements: str) -> None:
    import sqlite3
    from contextlib import closing

    with closing(sqlite3.connect(path)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda db: db.write_bytes(b"garbage" * 100), "file is not a database"),
        (
            lambda db: _sqlite_file(
                db,
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)",
                "INSERT INTO alembic_version VALUES ('f00dfeedbeef')",
            ),
            "its schema is at revision f00dfeedbeef, which Prefect {version} does not know (a newer Prefect wrote it?)",
        ),
    ],
    ids=["not-a-database", "unknown-revision"],
)
def test_a_prefect_database_its_server_cannot_open_is_named_before_it_starts(project, tmp_path, make, problem):
    """Prefect's server exited at each start on its damaged database, Prefect started it again
    until the start-up timeout, and the command blamed "a busy machine?"."""
    import prefect

    home = tmp_path / "prefect"
    home.mkdir()
    make(home / "prefect.db")
    before = (home / "prefect.db").read_bytes()
    ran = _forget_with_prefect_home(project, home)

    assert ran.returncode == 2, ran.stderr[-3000:]
    expected = _prefect_database_error(home, problem.format(version=prefect.__version__))
    assert ran.stderr.strip().splitlines() == [expected]
    assert (home / "prefect.db").read_bytes() == before  # named, not repaired or replaced


@pytest.mark.slow
def test_a_half_migrated_prefect_database_is_named_not_blamed_on_a_busy_machine(project, tmp_path):
    """A migration cut short (here: the first one's table made, no revision recorded) fails every
    start of the server ("table flow already exists"; a full disk left "duplicate column name:
    state_timestamp"); the command waited out the start-up timeout and said "a busy machine?"."""
    home = tmp_path / "prefect"
    home.mkdir()
    _sqlite_file(home / "prefect.db", "CREATE TABLE flow (id CHAR(36) NOT NULL PRIMARY KEY)")
    ran = _forget_with_prefect_home(project, home, timeout_s=5)

    assert ran.returncode == 2, ran.stderr[-3000:]
    last = ran.stderr.strip().splitlines()[-1]
    problem = "Prefect's server could not migrate it: (sqlite3.OperationalError) table flow already exists"
    assert last == _prefect_database_error(home, problem), last
    assert "busy machine" not in ran.stderr


def _prefect_migration_cut_short_by_a_full_disk(database: Path) -> None:
    """The database as a full disk left it in Prefect's migration 22b7cb02e593 (add
    state_timestamp): Prefect's own migrations run up to the one before it, then that one, whose
    new columns its backfill block commits before the revision row is written, stopped by a disk
    full at that write."""
    import asyncio
    import sqlite3
    from contextlib import closing

    from prefect.server.database.alembic_commands import alembic_upgrade
    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import temporary_database_config
    from prefect.utilities.asyncutils import run_sync_in_worker_thread
    from sqlalchemy.exc import IntegrityError

    def upgrade(revision: str) -> None:
        with temporary_database_config(AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{database}")):
            asyncio.run(run_sync_in_worker_thread(alembic_upgrade, revision=revision))

    upgrade("e757138e954a")
    _sqlite_file(
        database,
        "CREATE TRIGGER full_disk BEFORE UPDATE ON alembic_version "
        "BEGIN SELECT RAISE(FAIL, 'database or disk is full'); END",
    )
    with pytest.raises(IntegrityError, match="database or disk is full"):
        upgrade("22b7cb02e593")
    _sqlite_file(database, "DROP TRIGGER full_disk")
    with closing(sqlite3.connect(database)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("e757138e954a",)]
        assert "state_timestamp" in {column for _, column, *_ in conn.execute("PRAGMA table_info(flow_run)")}


@pytest.mark.slow
def test_a_prefect_database_a_full_disk_left_half_migrated_is_named_before_the_server_starts(project, tmp_path):
    """Prefect's server failed at each start ("duplicate column name: state_timestamp"), Prefect
    started it again until the start-up timeout (120 s by default), and only then was the
    database named."""
    home = tmp_path / "prefect"
    home.mkdir()
    _prefect_migration_cut_short_by_a_full_disk(home / "prefect.db")
    before = (home / "prefect.db").read_bytes()
    ran = _forget_with_prefect_home(project, home, timeout_s=20)

    assert ran.returncode == 2, ran.stderr[-3000:]
    problem = "Prefect's server could not migrate it: (sqlite3.OperationalError) duplicate column name: state_timestamp"
    # One line: no server's traceback, no "Stopping temporary server": none was started.
    assert ran.stderr.strip().splitlines() == [_prefect_database_error(home, problem)], ran.stderr[-3000:]
    assert (home / "prefect.db").read_bytes() == before  # named, not changed by a migration tried on it


def test_serving_on_a_port_in_use_is_refused_in_one_line(project, capsys):
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--project", str(project), "serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --port {port}: already in use on 127.0.0.1; choose another, or 0 for any free port"]


@pytest.mark.parametrize(
    ("setting", "command"),
    [("requests.store=state", ["request", "list"]), ("requests.audit_log=/", ["audit", "verify"])],
)
def test_a_state_file_setting_that_names_a_directory_exits_2_naming_it(params_only, capsys, setting, command):
    """`--set requests.store=state` ended in "cannot open the state database .../state: disk I/O
    error" and `requests.audit_log=/` in "PosixPath('/') has an empty name", both exit 1."""
    (params_only / "state").mkdir()
    assert main(["--project", str(params_only), "--set", setting, *command]) == 2
    key, _, value = setting.partition("=")
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {key} {value!r} is a directory ({Path(params_only, value)});")
    assert err[-1].endswith("expected the path of a SQLite file, e.g. state/requests.sqlite")


@pytest.mark.parametrize(
    ("out", "named"),
    [
        # It wrote the report to reports/, as if --out had not been given.
        ("", "--out '': expected a file or directory to write the report to"),
        # Both ended in the operating system's words alone, exit 1: "[Errno 17] File exists: '...'".
        ("params.yaml/report.html", "--out {project}/params.yaml/report.html: {project}/params.yaml is a file"),
        ("params.yaml/", "--out {project}/params.yaml/: {project}/params.yaml is a file"),
    ],
)
def test_an_audit_report_path_that_cannot_be_written_exits_2_before_the_trail_is_read(params_only, capsys, out, named):
    out = f"{params_only}/{out}" if out else out
    assert main(["--project", str(params_only), "audit", "report", "batch-1", "--out", out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: {named.format(project=params_only)}"), err


def test_request_withdraw_needs_a_reason(params_only, capsys):
    with pytest.raises(SystemExit) as exited:
        main(["--project", str(params_only), "request", "withdraw", "req-000000000000"])
    assert exited.value.code == 2
    assert "the following arguments are required: --reason" in capsys.readouterr().err


def test_forget_before_bootstrap_refuses_a_parent_bootstrap_will_not_register(params_only, capsys):
    assert main(["--project", str(params_only), "forget", "1", "--from", "7"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own lines creating its store
    assert last.startswith("error: --from '7': model 'unsir-classifier' is not registered yet"), last
    assert not (params_only / "data").exists() and not (params_only / "models").exists()  # nothing built


def test_audit_verify_before_bootstrap_says_there_is_nothing_to_verify(tmp_path, capsys):
    """On a fresh `unsir init` project, nothing registered, `unsir audit verify` said "error:
    audit evidence disagrees: the audit trail ... does not exist" and exited 1, as for a deleted
    trail. It says there is nothing to verify yet and what to run, exit 0, and creates nothing."""
    project = tmp_path / "project"
    assert main(["init", str(project)]) == 0
    capsys.readouterr()
    state = sorted(p.relative_to(project) for p in (project / "state").rglob("*"))
    assert main(["--project", str(project), "audit", "verify"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == (
        f"nothing to verify yet: no model is registered and nothing recorded (no audit trail "
        f"{project / 'state' / 'audit.sqlite'}); `unsir bootstrap` registers the original model"
    )
    assert "error" not in err
    assert main(["--project", str(project), "audit", "verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["ok"], report["records"], report["trail_exists"], report["problems"]) == (True, 0, False, [])
    assert sorted(p.relative_to(project) for p in (project / "state").rglob("*")) == state  # nothing created


def test_init_refuses_an_empty_or_uncreatable_directory(tmp_path, capsys):
    assert main(["init", ""]) == 2  # Path("") would be the current directory
    assert "DIR '': expected a directory path" in capsys.readouterr().err
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["init", str(blocked / "project")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot create a project at {blocked / 'project'}")


@pytest.mark.slow
def test_missing_prepared_data_names_the_dvc_command_that_restores_it(project, capsys, tmp_path):
    from unsir_pipeline.adapters import data_versioning

    prepared = project / "data" / "prepared"
    recorded = data_versioning.recorded_digests(project)["data/prepared"]
    shutil.move(prepared, tmp_path / "prepared")  # deleted by hand, or a fresh clone of the repository
    try:
        before = len(_runs(project))
        assert main(["--project", str(project), "forget", "2"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "restore it with `dvc pull data/prepared`" in err[0], err
        assert len(_runs(project)) == before
        data_versioning.pull(project, ["data/prepared"])  # what the message says, for real
        assert data_versioning.verify(project, ["data/prepared"]) == [] and recorded.endswith(".dir")
    finally:
        if not prepared.exists():
            shutil.move(tmp_path / "prepared", prepared)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])


def _drop_key(key: str):
    def damage(path: Path) -> None:
        meta = json.loads(path.read_text())
        del meta[key]
        path.write_text(json.dumps(meta))

    return damage


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "damage", "problem"),
    [
        ("dataset.safetensors", _truncate, "SafetensorError: "),
        ("dataset.safetensors", lambda p: p.write_bytes(os.urandom(4096)), "SafetensorError: "),
        ("dataset.json", _truncate, "JSONDecodeError: "),
        ("dataset.json", _drop_key("sample_ids"), "it has no 'sample_ids' entry"),
        ("manifest.csv", lambda p: p.write_bytes(b'"unclosed\n' + bytes(range(256))), "UnicodeDecodeError: "),
    ],
)
def test_a_damaged_prepared_file_is_named_with_the_dvc_command_that_restores_it(
    project, capsys, tmp_path, name, damage, problem
):
    """A truncated or overwritten prepared file failed the run with the parser's own words
    (`error: 'sample_ids'`, `Error while deserializing header`), naming no file, exit 1."""
    from unsir_pipeline.adapters.prepared_data import PreparedDataDamaged, load_prepared

    path = project / "data" / "prepared" / name
    shutil.copy(path, tmp_path / name)
    damage(path)
    try:
        with pytest.raises(PreparedDataDamaged) as caught:
            load_prepared(Workspace.load(project))
        message = str(caught.value)
        assert message.startswith(f"{path} is damaged: ") and problem in message, message
        assert message.endswith("restore it with `dvc pull --force data/prepared` (dvc.lock records it)"), message
        if problem.startswith("JSONDecodeError"):  # the class names `request add` and `models` read
            argv = ["--project", str(project), "request", "add", "2", "--by", "alice", "--reason", "x"]
            assert main(argv) == 2
            assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
            assert main(["--project", str(project), "models", "--json"]) == 0  # listed, classes by index
            captured = capsys.readouterr()
            assert json.loads(captured.out)[0]["version"] == 1
            assert captured.err.strip().splitlines()[-1] == f"warning: {message}; classes are shown by index"
    finally:
        shutil.copy(tmp_path / name, path)


def _drop_row(path: Path) -> None:
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:5] + lines[6:]))


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        _drop_row,
        lambda p: p.write_bytes(p.read_bytes().replace(b",train,", b",test,", 1)),  # another split
        lambda p: p.write_bytes(p.read_bytes().replace(b"digits-00007,", b"digits-99999,")),  # an unknown sample
    ],
    ids=["row-removed", "split-changed", "unknown-sample"],
)
def test_a_damaged_manifest_is_refused_before_prefect_starts_naming_the_dvc_command_that_restores_it(
    project, capsys, tmp_path, damage
):
    """A split manifest edited or cut short failed `forget` and `batch run` in the flow's
    validation, after Prefect's start (half a minute), with exit 1 and no word of how to get the
    data back. Both now compare data/prepared with dvc.lock first (a second)."""
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "damaged")
    ws = Workspace.load(copy)
    pending = intake.file_request(ws, ["5"], "alice", "a batch has work to do")
    manifest = copy / "data" / "prepared" / "manifest.csv"
    damage(manifest)
    before = len(_runs(copy))
    for argv in (["forget", "3"], ["batch", "run"]):
        assert main(["--project", str(copy), *argv]) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert re.fullmatch(
            r"error: the prepared data is not what dvc\.lock records \(data/prepared/manifest\.csv: recorded md5 "
            r"[0-9a-f]{32}, found [0-9a-f]{32}\); restore it with `dvc pull --force data/prepared` "
            r"\(dvc\.lock records it\)",
            err[0],
        ), err
    assert len(_runs(copy)) == before  # no flow ran: no MLflow run opened
    assert stores.request_store(ws).get(pending.id).attempts == 0  # nor was the request claimed


@pytest.mark.parametrize(
    ("path", "command"),
    [
        ("state/requests.sqlite", ["request", "list"]),
        ("state/audit.sqlite", ["audit", "show"]),
        ("state/mlflow/mlflow.db", ["models"]),
    ],
)
def test_a_damaged_state_file_exits_2_naming_it(params_only, capsys, path, command):
    """A request store, audit trail or MLflow registry file overwritten (or cut short) is a file
    to restore from a backup, not a failure of the pipeline: it exited 1."""
    damaged = params_only / path
    damaged.parent.mkdir(parents=True, exist_ok=True)
    damaged.write_bytes(b"garbage" * 100)
    assert main(["--project", str(params_only), *command]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the ") and str(damaged) in last, last
    assert last.endswith("(a damaged file: restore it from a backup)"), last


@pytest.mark.slow
@pytest.mark.parametrize("path", ["state/audit.sqlite", "state/mlflow/mlflow.db"])
def test_batch_run_refuses_a_damaged_trail_or_registry_file_before_prefect_starts(project, tmp_path, path):
    """With requests pending, a damaged audit trail or registry file was found by the flow, once
    Prefect's temporary server had started (half a minute); the registry's not even then, taken
    for a server down. Both are refused now before the server starts, naming the file."""
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "damaged")
    ws = Workspace.load(copy)
    pending = intake.file_request(ws, ["5"], "alice", "a batch has work to do")
    damaged = copy / path
    damaged.write_bytes(b"garbage" * 100)
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    ran = subprocess.run(
        [*CLI, "--project", str(copy), "batch", "run"], env=env, capture_output=True, text=True, timeout=300
    )

    assert ran.returncode == 2, ran.stderr[-3000:]
    last = ran.stderr.strip().splitlines()[-1]
    assert last.startswith("error: cannot open the ") and str(damaged) in last, last
    assert last.endswith("(a damaged file: restore it from a backup)"), last
    assert not (home / "prefect.db").exists() and "temporary server" not in ran.stderr  # Prefect never started
    assert stores.request_store(ws).get(pending.id).attempts == 0  # nor was the request claimed


@pytest.mark.slow
@pytest.mark.parametrize("status", ["FAILED_REGISTRATION", "PENDING_REGISTRATION"])
def test_batch_run_refuses_a_champion_that_is_not_ready_before_prefect_starts(project, tmp_path, status):
    """With requests pending and the champion alias on a version whose registration failed or
    never finished, `batch run` was refused by the flow's first step, once Prefect's temporary
    server had started (half a minute), after claiming the requests and putting the batch on the
    trail; `unsir forget` is refused before Prefect starts. Now `batch run` is too, the same way."""
    from unsir_pipeline.adapters.registry import VersionNotReady, registry_for
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "unready-champion")
    ws = Workspace.load(copy)
    pending = intake.file_request(ws, ["5"], "alice", "a batch has work to do")
    unready = _register_held(ws, "unready-registration")
    set_version_status(ws, unready, status)
    registry = registry_for(ws)
    registry.set_alias(ws.params.registry.champion_alias, unready)
    with pytest.raises(VersionNotReady) as refused:
        registry.require_ready(unready)
    trail = len(stores.audit_log(ws).records())
    home = tmp_path / "prefect"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"} | {"PREFECT_HOME": str(home)}
    ran = subprocess.run(
        [*CLI, "--project", str(copy), "batch", "run"], env=env, capture_output=True, text=True, timeout=300
    )

    assert ran.returncode == 2, ran.stderr[-3000:]
    assert ran.stderr.strip().splitlines()[-1] == f"error: {refused.value}"
    assert not (home / "prefect.db").exists()  # Prefect's server never started
    assert stores.request_store(ws).get(pending.id).to_dict() == pending.to_dict()  # pending, never claimed
    assert len(stores.audit_log(ws).records()) == trail  # no batch on the trail


@pytest.mark.slow
def test_forget_counts_the_pending_requests_before_leaving_no_class(project, tmp_path, capsys):
    """A direct forget ignored the queue: with a request for 1-9 pending, `forget 0` ran, and
    every later batch failed on that request (nothing left to retain) while intake refused
    every new request, until the request had used up its attempts."""
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "queued")
    ws = Workspace.load(copy)
    intake.file_request(ws, [str(c) for c in range(1, 10)], "alice", "all but one")
    before = len(_runs(copy))
    assert main(["--project", str(copy), "forget", "0"]) == 2
    err = capsys.readouterr().err
    assert "would forget every one of the 10 classes" in err and "pending requests" in err
    assert len(_runs(copy)) == before  # refused before any run
    assert [r.status for r in stores.request_store(ws).list()] == ["pending"]


def _register_held(ws: Workspace, key: str) -> int:
    """A version the gate held (the original's weights again), registered under ``key``."""
    import numpy as np

    from unsir_pipeline.adapters.registry import registry_for

    registry = registry_for(ws)
    with registry.start_run(run_name=key):
        return registry.register_checkpoint(
            ws.original_model_dir,
            input_example=np.random.rand(2, 1, 8, 8).astype("float32"),
            tags={"gate_decision": "held"},
            idempotency_key=key,
        )


@pytest.mark.slow
def test_forget_from_a_rejected_version_is_refused_before_any_run(project, tmp_path, capsys):
    """`unsir forget 9 --from 8`, 8 rejected in review, ran and promoted a child of the rejected
    weights: the reviewer's decision was bypassed by a gate that passed."""
    from unsir_pipeline.governance import decisions

    copy = clone_project(project, tmp_path / "rejected")
    ws = Workspace.load(copy)
    held = _register_held(ws, "held")
    decisions.reject(ws, held, "rev", "leaks membership")
    before = len(_runs(copy))
    capsys.readouterr()  # MLflow's lines registering it
    assert main(["--project", str(copy), "forget", "1", "--from", str(held)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: version {held} was rejected in review (by rev: leaks membership); expected a parent nobody "
        "rejected: forget from the champion (leave out --from) or another version, or promote this one first "
        "(`unsir promote VERSION --override --reason TEXT`)"
    ]
    assert len(_runs(copy)) == before


@pytest.mark.slow
def test_forget_from_a_version_that_is_not_ready_is_refused_before_any_run(project, tmp_path, capsys):
    """MLflow downloads a version whatever its status: `unsir forget 1 --from N`, N left
    FAILED_REGISTRATION, and `unsir forget 1` with the champion alias moved onto it in MLflow,
    unlearned from whatever files the failed registration left."""
    from unsir_pipeline.adapters.registry import registry_for

    copy = clone_project(project, tmp_path / "failed")
    ws = Workspace.load(copy)
    failed = _register_held(ws, "failed-registration")
    set_version_status(ws, failed, "FAILED_REGISTRATION")
    registry_for(ws).set_alias(ws.params.registry.champion_alias, failed)
    before = len(_runs(copy))
    capsys.readouterr()  # MLflow's lines registering it
    for argv in (["forget", "1", "--from", str(failed)], ["forget", "1"]):
        assert main(["--project", str(copy), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [
            f"error: model {ws.params.registry.model_name!r} version {failed} is FAILED_REGISTRATION, not READY: "
            "its registration failed or never finished, so it has no model to load (registered by run key "
            "'failed-registration'); choose a READY version (`unsir models` lists them; move an alias to one with "
            "`unsir promote VERSION --reason ...`), or run the forget or batch that registered it again"
        ], argv
    assert len(_runs(copy)) == before


@pytest.mark.slow
def test_bootstrap_names_a_champion_that_is_not_ready_and_the_fix(project, tmp_path, capsys):
    """The champion alias moved onto a version whose registration failed, READY versions beside
    it: `unsir bootstrap` answered "already bootstrapped: champion is version 2", exit 0, as if
    the project had a model to serve and forget from."""
    from unsir_pipeline.adapters.registry import registry_for

    copy = clone_project(project, tmp_path / "unready-champion")
    ws = Workspace.load(copy)
    failed = _register_held(ws, "failed-registration")
    set_version_status(ws, failed, "FAILED_REGISTRATION")
    registry = registry_for(ws)
    registry.set_alias(ws.params.registry.champion_alias, failed)
    ready = [v.version for v in registry.list_versions() if v.ready]
    capsys.readouterr()  # MLflow's lines registering it
    assert main(["--project", str(copy), "bootstrap"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: already bootstrapped, but the 'champion' alias names version {failed}, which is FAILED_REGISTRATION, "
        "not READY (its registration failed or never finished): there is no model to serve or forget from; move "
        f"the alias to a READY version ({ready}; `unsir models` lists them) with `unsir promote VERSION --reason ...` "
        "(with --override where it would bring back a forgotten class)"
    ]
    assert registry.resolve_alias(ws.params.registry.champion_alias) == failed  # nothing changed
    assert main(["--project", str(copy), "promote", str(ready[-1]), "--reason", "its registration failed"]) == 0
    capsys.readouterr()
    assert main(["--project", str(copy), "bootstrap"]) == 0
    assert capsys.readouterr().out.strip() == f"already bootstrapped: champion is version {ready[-1]}"


@pytest.mark.slow
def test_reject_takes_only_a_version_held_for_review(project, tmp_path, capsys):
    """`unsir reject 1` rejected the original model, never held for review, once another version
    was the champion: every later `unsir forget --from original` (the demo's) was then refused."""
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.governance import stores

    copy = clone_project(project, tmp_path / "reject")
    ws = Workspace.load(copy)
    registry, log = registry_for(ws), stores.audit_log(ws)

    def state() -> tuple:
        return len(log.records()), [(v.version, v.aliases, v.tags) for v in registry.list_versions()]

    def reject(version: int, reason: str) -> int:
        return main(["--project", str(copy), "reject", str(version), "--by", "rev", "--reason", reason])

    before = state()
    assert reject(1, "drill") == 2
    assert capsys.readouterr().err.strip() == (
        "error: version 1 was never held for review: it is the original model, registered by `unsir bootstrap` "
        "(no gate judges it), and the 'champion'; expected a version held for review (`unsir review list`: none); "
        "to withdraw the 'champion', promote another version (`unsir promote VERSION --reason TEXT`), or forget "
        "from it (`unsir forget CLASSES`)"
    )
    assert state() == before

    # Once another version is the champion, the original is still no version held for review.
    promoted = _register_held(ws, "promoted")
    promote = ["promote", str(promoted), "--by", "rev", "--reason", "judged by hand", "--override"]
    assert main(["--project", str(copy), *promote]) == 0
    capsys.readouterr()
    before = state()
    assert reject(1, "drill") == 2
    assert capsys.readouterr().err.strip() == (
        "error: version 1 was never held for review: it is the original model, registered by `unsir bootstrap` "
        "(no gate judges it); expected a version held for review (`unsir review list`: none); it is not the "
        "'champion': nothing in production to withdraw"
    )
    assert reject(promoted, "drill") == 2
    assert "it is promoted by hand (by rev: judged by hand), and the 'champion';" in capsys.readouterr().err
    assert state() == before

    held = _register_held(ws, "held")
    assert reject(held, "leaks membership") == 0
    assert registry.get_version(held).tags["review_decision"] == "rejected"
    capsys.readouterr()
    before = state()
    assert reject(held, "again") == 2
    assert capsys.readouterr().err.strip() == (
        f"error: version {held} was already rejected (by rev: leaks membership); nothing to do"
    )
    assert state() == before

    # A rejection stopped between tagging its version and its record is finished, as decided.
    stopped = _register_held(ws, "stopped")
    registry.set_version_tags(stopped, {"review_decision": "rejected", "reviewed_by": "ann", "review_reason": "r1"})
    capsys.readouterr()
    assert reject(stopped, "other words") == 0
    assert capsys.readouterr().out.startswith(f"version {stopped} rejected (by ann: r1); 0 request(s) back to pending")
    records = [r for r in log.records(event="version_rejected") if r.payload["model_version"] == stopped]
    assert [(r.actor, r.payload["reason"]) for r in records] == [("ann", "r1")]
    assert "recovered_from" in records[0].payload


@pytest.mark.slow
def test_request_add_takes_classes_and_by_as_forget_does(project, tmp_path, capsys):
    """`unsir forget 3 --by alice` and `unsir request add --classes 3 --requester alice` named the
    same things two ways; a user who typed the first form for a request got a usage error."""
    from unsir_pipeline.governance import stores

    copy = clone_project(project, tmp_path / "request-forms")
    assert main(["--project", str(copy), "request", "add", "4", "6", "--by", "alice", "--reason", "r", "--json"]) == 0
    filed = json.loads(capsys.readouterr().out)
    request = stores.request_store(Workspace.load(copy)).get(filed["id"])
    assert (request.requester, list(request.classes), request.status) == ("alice", [4, 6], "pending")


@pytest.mark.slow
@pytest.mark.parametrize("blank", ["", "  "])
def test_request_add_of_a_blank_class_names_it_as_typed_and_stores_nothing(project, tmp_path, capsys, blank):
    """`unsir request add ''` said "requested[0] must be a non-empty string", a field of the
    store nobody typed; `unsir forget ''` names the class as typed and what a class is."""
    from unsir_pipeline.governance import stores

    copy = clone_project(project, tmp_path / "blank-class")
    ws = Workspace.load(copy)
    before = (stores.request_store(ws).list(), stores.audit_log(ws).records())
    assert main(["--project", str(copy), "request", "add", "4", blank, "--by", "alice", "--reason", "r"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: unknown class {blank!r}; expected an index in [0, 9] or one of {[str(c) for c in range(10)]}"
    ]
    assert (stores.request_store(ws).list(), stores.audit_log(ws).records()) == before


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            "a\tb",
            "class 'a\\tb' contains control character U+0009 at position 1; expected printable text on one line "
            "(at most 100 characters)",
        ),
        (
            "\u202eb",
            "class '\\u202eb' contains control character U+202E at position 0; expected printable text on one line "
            "(at most 100 characters)",
        ),
        ("7" * 101, f"class {'7' * 60!r}... (101 characters) has 101 characters; the limit is 100"),
    ],
)
def test_request_add_names_a_bad_class_as_typed(params_only, capsys, entry, message):
    """`unsir request add 4 'a<TAB>b'` said "requested[1] contains control character ...", a
    field of the store nobody typed: the entry is named as the user typed it. Checked before
    anything is opened (here no project was bootstrapped)."""
    argv = ["--project", str(params_only), "request", "add", "4", entry, "--by", "alice", "--reason", "r"]
    assert main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    assert not (params_only / "state").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--by", "a\nb"], "--by contains control character U+000A at position 1: 'a\\nb'"),
        (["--requester", " "], "--by must be a non-empty string, got ' '"),
        (["--by", "alice", "--reason", "x\ty"], "--reason contains control character U+0009 at position 1: 'x\\ty'"),
    ],
)
def test_request_add_names_its_options_as_typed(params_only, capsys, flags, message):
    """`unsir request add 3 --by 'a<LF>b'` said "requester contains control character ...", the
    store's field; every other command that records who and why says "--by" and "--reason"."""
    argv = ["--project", str(params_only), "request", "add", "3", *flags]
    assert main([*argv, *([] if "--reason" in flags else ["--reason", "r"])]) == 2
    assert capsys.readouterr().err.strip().splitlines()[0].startswith(f"error: {message}")


def test_request_add_of_too_many_classes_says_how_many_were_given(params_only, capsys):
    classes = [str(c) for c in range(65)]
    assert main(["--project", str(params_only), "request", "add", *classes, "--by", "alice", "--reason", "r"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: 65 classes given; a request names at most 64"]


@pytest.mark.slow
def test_models_keeps_wide_values_apart(project, tmp_path, capsys):
    """Nine forgotten classes and "promoted-by-override" are wider than their columns: they
    ran into the next one ("[0, 1, 2, 3, 4, 5, 6, 7, 8]retrain", "promoted-by-override2026-")."""
    from unsir_pipeline.adapters.registry import registry_for

    copy = clone_project(project, tmp_path / "wide")
    registry_for(Workspace.load(copy)).set_version_tags(
        1,
        {"forgotten_classes": json.dumps(list(range(9))), "method": "retrain", "gate_decision": "promoted-by-override"},
    )
    assert main(["--project", str(copy), "models"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert " ['0', '1', '2', '3', '4', '5', '6', '7', '8'] retrain " in row and " promoted-by-override 20" in row
    assert header.index("forgotten") == row.index("['0',")  # the columns still line up


@pytest.mark.slow
def test_models_and_review_name_the_forgotten_classes(project, tmp_path, capsys):
    """Image folders named "1", "10", "2", "cat dog": `unsir models` said "[1, 3]", indices that
    read as the classes named "1" and "3"; the forget that made the version had said ['10', 'cat dog']."""
    from unsir_pipeline.adapters.registry import registry_for

    copy = clone_project(project, tmp_path / "named")
    meta_path = copy / "data" / "prepared" / "dataset.json"
    meta = json.loads(meta_path.read_text())
    meta["class_names"] = ["1", "10", "2", "cat dog", *meta["class_names"][4:]]
    meta_path.write_text(json.dumps(meta))
    registry_for(Workspace.load(copy)).set_version_tags(
        1, {"forgotten_classes": "[1, 3]", "gate_decision": "held", "gate_reasons": "FAIL: x"}
    )
    assert main(["--project", str(copy), "models"]) == 0
    assert " ['10', 'cat dog'] " in capsys.readouterr().out.splitlines()[1]
    assert main(["--project", str(copy), "models", "--json"]) == 0
    [listed] = json.loads(capsys.readouterr().out)
    assert (listed["forgotten_classes"], listed["forgotten_class_names"]) == ([1, 3], ["10", "cat dog"])
    assert main(["--project", str(copy), "review", "list"]) == 0
    assert capsys.readouterr().out.startswith("version 1 (forgotten ['10', 'cat dog']): ")


@pytest.mark.slow
def test_promote_json(project, capsys):
    from unsir_pipeline.adapters.registry import registry_for

    # The project's only version is the champion: promoting it again is refused, tags untouched
    # (it used to say "is now 'champion'" and overwrite the version's gate_decision).
    tags = registry_for(Workspace.load(project)).get_version(1).tags
    assert main(["--project", str(project), "promote", "1", "--reason", "drill", "--by", "tester", "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out == {"error": "version 1 is already the 'champion'; nothing to promote", "exit_code": 2}
    assert registry_for(Workspace.load(project)).get_version(1).tags == tags


def _session_processes(session: int) -> list[str]:
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited while we looked
            continue
        fields = text.rsplit(")", 1)[1].split()
        if int(fields[3]) == session and fields[0] != "Z":
            alive.append(cmdline)
    return alive


def _forget_process(project: Path, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [*CLI, "--project", str(project), "forget", "1"],
        env={**os.environ, **env},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.slow
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_stopping_forget_leaves_no_server_running(project, stop_signal):
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.settings.workspace import Workspace

    registry = registry_for(Workspace.load(project))
    before = [v.version for v in registry.list_versions()]
    child = _forget_process(project, UNSIR_PROGRESS="1")
    try:
        for line in child.stderr:  # the first task has finished: the Prefect server is up
            if "forget: [1] " in line:
                break
        else:
            raise AssertionError(f"forget exited with {child.wait()} before its flow started")
        assert any("prefect.server" in p for p in _session_processes(child.pid))
        child.send_signal(stop_signal)
        _, rest = child.communicate(timeout=120)
        code = child.returncode
    finally:
        if child.poll() is None:
            child.kill()
    assert code == (128 + signal.SIGTERM if stop_signal == signal.SIGTERM else 130), rest[-3000:]
    assert _session_processes(child.pid) == []
    # Nothing registered or promoted: once seen, a stop swallowed by Prefect's engine let the
    # flow run on to a promoted version before the command exited as interrupted.
    assert [v.version for v in registry.list_versions()] == before


def test_a_sigterm_that_prefects_handler_takes_is_still_remembered(monkeypatch):
    """During a flow run Prefect's engine installs its own SIGTERM handler (by this module
    attribute); the stop must reach raise_if_stopped and the exit code even when a task turns
    Prefect's TerminationSignal into a crash of its own."""
    from prefect.exceptions import TerminationSignal
    from prefect.utilities import engine

    from unsir_pipeline.settings import runtime

    monkeypatch.setattr(engine, "_prefect_sigterm_handler", engine._prefect_sigterm_handler)
    monkeypatch.setattr(runtime, "_terminated", False)
    orchestration.remember_stops_prefect_catches()
    orchestration.remember_stops_prefect_catches()  # idempotent: wrapped once
    handler = engine._prefect_sigterm_handler
    assert handler is orchestration._remembering_prefect_sigterm
    with pytest.raises(TerminationSignal):  # Prefect's own behaviour is kept
        handler(signal.SIGTERM, None)
    assert runtime.was_terminated()
    with pytest.raises(runtime.Terminated):
        runtime.raise_if_stopped()


def test_a_stop_that_prefect_swallowed_is_raised_again_before_the_registry_changes(monkeypatch):
    from unsir_pipeline.settings import runtime

    runtime.raise_if_stopped()  # no signal: nothing happens
    monkeypatch.setattr(runtime, "_interrupted", True)
    with pytest.raises(KeyboardInterrupt):
        runtime.raise_if_stopped()
    monkeypatch.setattr(runtime, "_terminated", True)
    with pytest.raises(runtime.Terminated):
        runtime.raise_if_stopped()


@pytest.mark.slow
def test_prefects_console_keeps_a_failures_message_and_drops_its_traceback():
    import logging

    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()  # what importing a flow does in the command
    consoles = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    assert consoles
    before = {h: h.formatter for h in consoles}
    try:
        orchestration.console_without_tracebacks()
        formatters = [h.formatter for h in consoles]
        orchestration.console_without_tracebacks()  # once is enough: not wrapped twice
        assert [h.formatter for h in consoles] == formatters
        try:
            raise ValueError("bad value 7")
        except ValueError as err:
            record = logging.getLogger("prefect").makeRecord(
                "prefect", logging.ERROR, __file__, 1, "Task run failed: %r", (err,), sys.exc_info()
            )
        shown = consoles[0].format(record)
        assert "bad value 7" in shown and "Traceback" not in shown
        # The record stays whole for every other handler (a file handler, the API's).
        whole = logging.Formatter().format(record)
        assert record.exc_info is not None and "Traceback" in whole and "bad value 7" in whole
    finally:
        for handler, formatter in before.items():
            handler.setFormatter(formatter)


def test_prefect_startup_failure_names_the_fix_and_leaves_nothing(project):
    child = _forget_process(project, **{orchestration.PREFECT_STARTUP_ENV: "0"})
    _, err = child.communicate(timeout=300)
    assert child.returncode == 1, err[-2000:]
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: Prefect's temporary server did not answer within 0s")
    assert orchestration.PREFECT_STARTUP_ENV in errors[0] and "PREFECT_API_URL" in errors[0]
    assert _session_processes(child.pid) == []


def _quick_project(bootstrapped: Path, root: Path) -> Path:
    """The session's project without its state (nothing registered), its data prepared, and its
    training changed to 3 epochs so that bootstrap trains again: what is tested is what
    reaches the terminal."""
    import yaml

    shutil.copytree(
        bootstrapped,
        root,
        symlinks=True,
        ignore=lambda directory, names: ["state"] if Path(directory) == bootstrapped else [],
    )
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["model"]["train"]["epochs"] = 3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


@pytest.mark.slow
def test_bootstrap_shows_its_steps_and_epochs(bootstrapped_project, tmp_path):
    """What a terminal shows; that `--json` shows none of it is asserted by
    test_packaging::test_bootstrap_runs_in_an_initialised_project, a bootstrap of its own."""
    env = {**os.environ, "UNSIR_PROGRESS": "1"}  # as on a terminal
    project = _quick_project(bootstrapped_project, tmp_path / "project")
    shown = subprocess.run(
        [*CLI, "--project", str(project), "bootstrap"], env=env, capture_output=True, text=True, check=True
    )
    assert "bootstrap: [2/4] dvc repro train: prepare digits and validate its splits" in shown.stderr
    assert "train original model: epoch 3/3" in shown.stderr  # relayed from DVC's stage process
    assert "bootstrap: [4/4] register the original model" in shown.stderr


@pytest.mark.slow
def test_batch_run_shows_its_steps_and_its_unlearn_subflow(bootstrapped_project, tmp_path):
    """On a terminal `batch run` turned Prefect's INFO lines off for progress lines it never
    printed: nothing showed for minutes, not even the start of its `unlearn` subflow."""
    from unsir_pipeline.governance import intake

    project = clone_project(bootstrapped_project, tmp_path / "project")
    intake.file_request(Workspace.load(project), ["5"], "alice", "progress check")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env |= {"UNSIR_PROGRESS": "1", "PREFECT_HOME": str(tmp_path / "prefect")}  # as on a terminal
    shown = subprocess.run(
        [*CLI, "--project", str(project), "batch", "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert shown.returncode == 0, shown.stderr[-3000:]
    lines = [line.split(" (")[0] for line in shown.stderr.splitlines()]
    assert "batch: flow deletion-batch started" in lines, shown.stderr[-3000:]
    assert "batch: subflow unlearn started" in lines, shown.stderr[-3000:]
    registered = [line for line in lines if re.fullmatch(r"batch: \[\d+\] register-model-version done", line)]
    assert registered, shown.stderr[-3000:]


@pytest.mark.slow
def test_batch_run_output_carries_no_library_info_lines(bootstrapped_project, tmp_path):
    """A piped `batch run` printed "INFO | great_expectations.data_context.types.base - Created
    temporary directory ..." and "INFO mlflow.pyfunc: Validating input example ..." among its lines."""
    from unsir_pipeline.governance import intake

    project = clone_project(bootstrapped_project, tmp_path / "project")
    intake.file_request(Workspace.load(project), ["5"], "alice", "library chatter check")
    # Not what earlier in-process commands of this worker left in os.environ (the console levels
    # a progress run turns down): a user's shell has none of them.
    left_by_earlier_commands = ("PREFECT_API_URL", "MLFLOW_LOGGING_LEVEL", "PREFECT_LOGGING_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(left_by_earlier_commands)}
    env |= {"UNSIR_PROGRESS": "0", "PREFECT_HOME": str(tmp_path / "prefect")}  # piped: Prefect's INFO lines on
    ran = subprocess.run(
        [*CLI, "--project", str(project), "batch", "run"], env=env, capture_output=True, text=True, timeout=600
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert "Beginning subflow run" in ran.stderr, ran.stderr[-3000:]  # Prefect's own lines are there
    assert "Created temporary directory" not in ran.stderr, ran.stderr[-3000:]
    assert "INFO mlflow" not in ran.stderr, ran.stderr[-3000:]
    assert re.search(r"^audit trail: `unsir audit report batch-[0-9a-f]+`$", ran.stdout, re.M), ran.stdout[-3000:]


@pytest.mark.slow
def test_forget_on_a_new_project_checks_its_classes_before_training(bootstrapped_project, tmp_path, capsys):
    """`unsir forget 42` on a project with nothing registered trained and registered the original
    model (its bootstrap) and only then said that class 42 does not exist."""
    from unsir_pipeline.adapters.registry import registry_for

    root = _quick_project(bootstrapped_project, tmp_path / "project")
    shutil.rmtree(root / "models")
    assert main(["--project", str(root), "forget", "42"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: unknown class '42'; expected an index in [0, 9]"), err
    assert not (root / "models" / "original").exists()  # nothing trained
    assert not registry_for(Workspace.load(root)).has_model()


def test_bootstrap_refuses_a_setting_its_dvc_stages_would_not_see(bootstrapped_project, tmp_path):
    """`dvc repro` reads params.yaml only: a --set data or model key would be dropped silently
    while the version's parameters digest claimed it."""
    from unsir_pipeline.cli.bootstrap import bootstrap
    from unsir_pipeline.settings.config import ConfigError

    root = _quick_project(bootstrapped_project, tmp_path / "project")
    shutil.rmtree(root / "data" / "prepared")
    overrides = ["data.split_seed=4", "model.train.epochs=2", "evaluation.relearn=false"]
    with pytest.raises(ConfigError) as refused:
        bootstrap(Workspace.load(root, overrides))
    assert "data.split_seed is 4 here but 0 in params.yaml" in str(refused.value)
    assert "model is {" in str(refused.value)  # the train stage reads the whole model section
    assert "evaluation" not in str(refused.value)  # no stage of bootstrap's reads it
    assert not (root / "data" / "prepared").exists()


@pytest.mark.parametrize("command", [["bootstrap"], ["forget", "3"]])
def test_a_bootstrap_refused_for_its_settings_leaves_no_state(params_only, command, capsys):
    """`unsir --set model.train.epochs=3 bootstrap` was refused only after it had opened the
    registry, which created MLflow's database: a refused command left state behind."""
    shutil.copy(ROOT / "dvc.yaml", params_only / "dvc.yaml")
    assert main(["--project", str(params_only), "--set", "model.train.epochs=3", *command]) == 2
    assert "which reads params.yaml only: model is {" in capsys.readouterr().err
    assert [p for p in (params_only / "state").rglob("*") if p.is_file()] == []


@pytest.mark.slow
def test_bootstrap_validates_the_splits_before_it_trains(tmp_path, capsys):
    """A split too small for the validation every forget runs is refused before a model is
    trained and registered that no forget could start from: the data or the settings are to
    change, not the pipeline, so exit 2 (a validation failure exited 1)."""
    import yaml
    from conftest import make_project

    root = make_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["data"]["min_per_class"] = 40  # digits' validation split has 26-28 samples a class
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert main(["--project", str(root), "bootstrap"]) == 2
    assert re.search(
        r"^error: data validation failed: .*\n.*class counts: .*count=2\d, split=val",
        capsys.readouterr().err,
        re.M | re.S,
    )
    assert (root / "data" / "prepared" / "manifest.csv").is_file() and not (root / "models").exists()


def test_a_promotion_with_a_shared_registry_but_a_machine_local_lock_warns_once_naming_the_setting(
    params_only, monkeypatch, capsys
):
    """Without a Prefect server the promotion lock is a file on this machine: two machines
    promoting in one MLflow server were not kept apart, and nothing said so; with a shared state
    database, a promotion is refused until one is set."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from unsir_pipeline.governance.locks import PromotionLockError, machine_local_promotion_lock, promotion_lock

    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    # No server as Prefect reads it either (the session's test harness sets one in its settings).
    with temporary_settings(updates={PREFECT_API_URL: None}):
        shared = ["--set", "registry.tracking_uri=http://127.0.0.1:9", "--set", "registry.http_max_retries=0"]
        code = main(["--project", str(params_only), *shared, "promote", "2", "--reason", "drill"])
        err = capsys.readouterr().err
        assert code != 0  # nothing listens there
        warnings = [line for line in err.splitlines() if line.startswith("warning: the promotion lock is a file")]
        assert len(warnings) == 1, err
        assert "the registry http://127.0.0.1:9 may be shared" in warnings[0]
        assert "set PREFECT_API_URL" in warnings[0]

        assert machine_local_promotion_lock(Workspace.load(params_only)) is None  # SQLite under the project

        # Requests and the trail shared between machines: a promotion needs the shared lock, as a batch does.
        shared_state = Workspace.load(params_only, (f"state.database_url=sqlite:///{params_only}/shared.sqlite",))
        assert machine_local_promotion_lock(shared_state) is None  # refused instead of warned about
        with (
            pytest.raises(PromotionLockError, match="state.database_url is set .* set PREFECT_API_URL"),
            promotion_lock(shared_state),
        ):
            pass
    served = Workspace.load(params_only, ("registry.tracking_uri=http://h:5000",))
    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:4200/api"}):  # as Prefect reads it
        assert machine_local_promotion_lock(served) is None


@pytest.mark.slow
def test_a_promotion_without_a_prefect_server_does_not_import_prefect(project, tmp_path):
    """`unsir promote` runs no flow, but asked Prefect's settings whether a server was set for
    its lock: a second of imports (all of Prefect) on every promotion. Where nothing Prefect
    reads can name a server, the lock is the file, and Prefect is never imported."""
    copy = clone_project(project, tmp_path / "no-server")
    version = _register_held(Workspace.load(copy), "held")
    code = (
        "import sys\n"
        "from unsir_pipeline.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'prefect'), file=sys.stderr)\n"
        "sys.exit(code)\n"
    )
    dropped = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_HOME")
    env = {k: v for k, v in os.environ.items() if k.upper() not in dropped}
    promote = ["--project", str(copy), "promote", str(version), "--by", "rev", "--reason", "by hand", "--override"]
    ran = subprocess.run(
        [sys.executable, "-c", code, *promote], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert f"version {version} is now 'champion'" in ran.stdout
    assert ran.stderr.strip().splitlines()[-1] == "[]", ran.stderr[-2000:]


def _a_held_version_beside_read_only_state(project: Path, tmp_path: Path):
    """A copy of ``project`` with a request filed (so the store and the trail exist) and a held
    version; returns the copy, that version, the two state files to mount read-only, and a check
    that neither the registry nor the trail changed since."""
    from unsir_pipeline.adapters.registry import registry_for
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "project")
    ws = Workspace.load(copy)
    intake.file_request(ws, ["3"], "alice", "consent withdrawn")
    version = _register_held(ws, "held")
    registry, records = registry_for(ws), stores.audit_log(ws).records()

    def registry_state() -> list:
        return [(v.version, v.aliases, v.tags) for v in registry.list_versions()]

    before = registry_state()
    files = [copy / "state" / "requests.sqlite", copy / "state" / "audit.sqlite"]
    return copy, version, files, lambda: registry_state() == before and stores.audit_log(ws).records() == records


@pytest.mark.slow
@pytest.mark.parametrize(
    ("argv", "would"),
    [
        (
            ["promote", "--override"],
            "move the 'champion' to version {v}, which writes the registry and the audit trail",
        ),
        (["reject"], "reject version {v}, which writes the registry, the request store and the audit trail"),
    ],
    ids=["promote", "reject"],
)
def test_a_decision_with_read_only_state_files_is_refused_before_the_registry_changes(project, tmp_path, argv, would):
    """`chmod a-w state/*.sqlite` (or a copy whose request store and trail are read-only, its
    registry not): `unsir promote V` moved the champion to V, `unsir reject V` tagged V rejected,
    then both failed writing the trail ("cannot write to the state database .../audit.sqlite"),
    exit 2, leaving a decision in the registry with no record. Now they are refused, as `batch
    run` is on such a copy, before anything is written: one line naming the files, exit 2."""
    from conftest import run_with_read_only

    copy, version, files, unchanged = _a_held_version_beside_read_only_state(project, tmp_path)
    command, *options = argv
    decide = [command, str(version), *options, "--by", "rev", "--reason", "drill"]
    ran = run_with_read_only(files, [sys.executable, "-m", "unsir_pipeline.cli", "--project", str(copy), *decide])

    assert ran.returncode == 2, ran.stderr[-3000:]
    assert ran.stderr.splitlines() == [
        f"error: `unsir {command}` would {would.format(v=version)}, and this user cannot write {files[0]}, "
        f"{files[1]} (a read-only copy or mount?): run it where the project's state may be written; the commands "
        "that only read (`audit verify`, `request list`) read this copy as it is"
    ]
    assert unchanged()


@pytest.mark.slow
@pytest.mark.parametrize(
    ("decide", "would"),
    [
        (
            "promote(ws, {v}, 'rev', 'drill', override=True)",
            "a promotion of version {v} to the 'champion' writes the registry and the audit trail",
        ),
        (
            "reject(ws, {v}, 'rev', 'drill')",
            "a rejection of version {v} writes the registry, the request store and the audit trail",
        ),
    ],
    ids=["promote", "reject"],
)
def test_a_library_decision_with_read_only_state_files_is_refused_before_the_registry_changes(
    project, tmp_path, decide, would
):
    """A Python caller of `decisions.promote` / `decisions.reject` (the library, not the CLI) on a
    copy whose request store and trail are read-only, its registry not: the champion moved to V
    (V was tagged rejected), then the trail's write failed, leaving a decision with no record.
    Now refused before the registry is written, naming the files."""
    from conftest import run_with_read_only

    copy, version, files, unchanged = _a_held_version_beside_read_only_state(project, tmp_path)
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from unsir_pipeline.adapters.state_store import StateWriteRefused\n"
        "from unsir_pipeline.governance.decisions import promote, reject\n"
        "from unsir_pipeline.settings.workspace import Workspace\n"
        "ws = Workspace.load(Path(sys.argv[1]))\n"
        "try:\n"
        f"    {decide.format(v=version)}\n"
        "except StateWriteRefused as err:\n"
        "    sys.exit(f'refused: {err}')\n"
    )
    ran = run_with_read_only(files, [sys.executable, "-c", script, str(copy)])

    assert ran.returncode == 1, ran.stderr[-3000:]
    assert ran.stderr.splitlines() == [
        f"refused: {would.format(v=version)}, and this user cannot write {files[0]}, {files[1]} (a read-only copy "
        "or mount?): run it where the project's state may be written"
    ]
    assert unchanged()


@pytest.mark.parametrize(
    ("files", "variables", "skipped"),
    [
        ({}, {}, True),
        ({}, {"prefect_api_url": "http://127.0.0.1:4200/api"}, False),  # any case, as Prefect reads it
        ({"home/profiles.toml": 'active = "team"\n[profiles.team]\nPREFECT_API_URL = "http://h:1/api"\n'}, {}, False),
        # Another profile names a server, the active one none: no server, and no Prefect needed to say so.
        ({"home/profiles.toml": 'active = "a"\n[profiles.a]\n[profiles.b]\nPREFECT_API_URL = "h:1"\n'}, {}, True),
        ({}, {"PREFECT_PROFILE": "local"}, False),  # the shipped profiles' "local" names 127.0.0.1:4200
        ({"work/prefect.toml": '[api]\nurl = "http://h:2/api"\n'}, {}, False),
        ({"work/pyproject.toml": '[tool.prefect.api]\nurl = "http://h:3/api"\n'}, {}, False),
        ({"work/pyproject.toml": '[project]\nname = "x"\n'}, {}, True),
        ({"work/.env": "PREFECT_API_URL=http://h:4/api\n"}, {}, False),
        ({"other/profiles.toml": 'active = "o"\n[profiles.o]\nPREFECT_API_URL = "http://h:5/api"\n'}, {}, False),
    ],
    ids=[
        "none",
        "env",
        "profile",
        "other-profile",
        "named-profile",
        "prefect-toml",
        "pyproject",
        "pyproject-other",
        "dotenv",
        "profiles-path",
    ],
)
def test_the_prefect_server_read_without_prefect_is_the_one_prefect_reads(files, variables, skipped, tmp_path):
    """prefect_api_url answers without importing Prefect only where no source Prefect reads its
    settings from can name a server; wherever one does, the answer is Prefect's own."""
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    (tmp_path / "work").mkdir(exist_ok=True)
    code = (
        "import json, sys\n"
        "from unsir_pipeline.adapters import orchestration\n"
        "ours = orchestration.prefect_api_url()\n"
        "skipped = 'prefect' not in sys.modules\n"
        "from prefect.settings import PREFECT_API_URL\n"
        "print(json.dumps([ours, skipped, PREFECT_API_URL.value()]))\n"
    )
    dropped = ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH", "PREFECT_HOME")
    env = {k: v for k, v in os.environ.items() if k.upper() not in dropped and "TEST_MODE" not in k.upper()}
    env |= {"PREFECT_HOME": str(tmp_path / "home"), **variables}
    if "other/profiles.toml" in files:
        env["PREFECT_PROFILES_PATH"] = str(tmp_path / "other" / "profiles.toml")
    ran = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=120
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    ours, was_skipped, prefects = json.loads(ran.stdout.strip().splitlines()[-1])
    assert ours == prefects
    assert was_skipped == skipped


def test_the_promotion_lock_is_taken_on_the_prefect_server_of_the_users_profile(params_only, tmp_path):
    """With the server set by `prefect config set` (a profile) rather than the environment, the
    promotion lock was a file on this machine, a promotion in a shared registry was warned to
    "set PREFECT_API_URL", and one with a shared state database refused for want of a server.
    The server is read as Prefect reads it now: the lock is sought there (here a server that
    does not answer), and no warning says to set what is set."""
    code = (
        "import sys\n"
        "from unsir_pipeline.governance.locks import machine_local_promotion_lock, promotion_lock\n"
        "from unsir_pipeline.settings.workspace import Workspace\n"
        "root = sys.argv[1]\n"
        "print(machine_local_promotion_lock(Workspace.load(root, ('registry.tracking_uri=http://h:5000',))))\n"
        "shared = Workspace.load(root, (f'state.database_url=sqlite:///{root}/shared.sqlite',))\n"
        "try:\n"
        "    with promotion_lock(shared):\n"
        "        print('held')\n"
        "except Exception as err:\n"
        "    print(type(err).__name__, err)\n"
    )
    env = _prefect_home_with_a_server_profile(tmp_path / "prefect", "http://127.0.0.1:9/api")
    ran = subprocess.run([sys.executable, "-c", code, str(params_only)], env=env, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    warning, taken = ran.stdout.splitlines()[:2]
    assert warning == "None"  # a server is set: the lock reaches every machine
    assert "PromotionLockError" not in taken and "ConnectError" in taken, taken  # sought on the profile's server


def _run_cli_importing_none_of(project: Path, modules: set[str], *argvs: list[str]) -> str:
    """Run the command line on ``project`` with each of ``argvs`` in one fresh interpreter, and
    fail when it imported any of ``modules``; returns what it printed."""
    code = (
        "import json, sys\n"
        "from unsir_pipeline.cli import main\n"
        "for argv in json.loads(sys.argv[2]):\n"
        "    assert main(['--project', sys.argv[1], *argv]) == 0, argv\n"
        "heavy = sorted(set(json.loads(sys.argv[3])) & set(sys.modules))\n"
        "assert not heavy, f'imported {heavy}'\n"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code, str(project), json.dumps(argvs), json.dumps(sorted(modules))],
        capture_output=True,
        text=True,
    )
    assert ran.returncode == 0, ran.stderr[-2000:]
    return ran.stdout


def test_listing_requests_and_showing_the_trail_start_without_mlflow_or_torch(params_only):
    """`request list` and `audit show` read the state store alone: they must not pay for
    importing MLflow or PyTorch (seconds on every call) or need the registry to be reachable.
    Loading and validating params.yaml needs neither (the core's configs are plain data)."""
    listed = _run_cli_importing_none_of(
        params_only,
        {"mlflow", "prefect", "torch", "sklearn"},
        ["request", "list", "--json"],
        ["audit", "show", "--json"],
    )
    assert json.loads(listed.splitlines()[0]) == []


@pytest.mark.slow
def test_request_add_checks_its_classes_without_importing_torch(project, tmp_path):
    """`unsir request add` checks the classes against the prepared data's metadata: importing
    PyTorch (through the prepared data's tensor reader) for that took half the command's time."""
    copy = clone_project(project, tmp_path / "request-light")
    added = _run_cli_importing_none_of(
        copy, {"torch"}, ["request", "add", "4", "--by", "alice", "--reason", "r", "--json"]
    )
    assert json.loads(added.splitlines()[0])["status"] == "pending"


@pytest.mark.slow
def test_commands_that_read_the_registry_start_without_torch(project, tmp_path):
    """`audit verify`, `models` and `review list` read the trail, the store and the registry
    (MLflow), and `models` the prepared data's class names: none needs PyTorch, scikit-learn,
    Prefect, Great Expectations or DVC. They imported PyTorch and scikit-learn through
    ``governance.batches`` (prepared_data's top-level imports) until `request add`'s fix moved
    them: `audit verify` of 8912 records took 11.8 s and 894 MiB, against 5.9 s and 251 MiB."""
    from unsir_pipeline.governance.intake import file_request

    copy = clone_project(project, tmp_path / "registry-readers")
    file_request(Workspace.load(copy), ["4"], "alice", "a trail to verify")
    printed = _run_cli_importing_none_of(
        copy,
        {"torch", "sklearn", "prefect", "great_expectations", "dvc"},
        ["audit", "verify", "--json"],
        ["models", "--json"],
        ["review", "list"],
    )
    verified, listed = (json.loads(line) for line in printed.splitlines()[:2])
    assert verified["ok"] and verified["chain_ok"]
    assert listed[0]["version"] == 1 and listed[0]["forgotten_classes"] == []


def test_request_list_says_when_a_shown_failure_belongs_to_an_earlier_attempt(capsys):
    from types import SimpleNamespace

    from unsir_pipeline.cli.requests_and_batches import _print_requests

    common = {
        "class_names": ("3",),
        "requester": "alice",
        "created_at": "2026-11-29T10:00:00+00:00",
        "updated_at": "2026-11-30T02:00:00+00:00",
    }
    _print_requests(
        [
            SimpleNamespace(id="r-done", status="done", model_version=4, error="MLflow unreachable", **common),
            SimpleNamespace(id="r-pending", status="pending", model_version=None, error="MLflow unreachable", **common),
        ],
        as_json=False,
    )
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("r-done") and lines[2].strip() == "an earlier attempt failed: MLflow unreachable"
    assert lines[3].startswith("r-pending") and lines[4].strip() == "at 2026-11-30T02:00:00+00:00: MLflow unreachable"


def test_output_whose_reader_went_away_ends_quietly(project):
    """`unsir models | head -1` ended with "error: [Errno 32] Broken pipe" (exit 1), as if the
    command had failed; now it stops without a word, exit 141 (128 + SIGPIPE, as a shell says)."""
    child = subprocess.Popen(
        [*CLI, "--project", str(project), "models"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert child.stdout is not None
    child.stdout.close()  # the reader is gone before the first line
    _, err = child.communicate(timeout=300)
    assert child.returncode == 141, err
    assert b"Broken pipe" not in err and b"Traceback" not in err


def test_models_shows_a_rejected_version_as_rejected():
    """A version a reviewer rejected read "held" in `unsir models` (the decision was in --json only)."""
    from unsir_pipeline.cli.models import _gate_shown

    assert _gate_shown({"gate": "held", "review_decision": "rejected", "status": "READY"}) == "held (rejected)"
    assert _gate_shown({"gate": "held", "review_decision": None, "status": "READY"}) == "held"
    assert _gate_shown({"gate": None, "review_decision": None, "status": "READY"}) == "-"


def test_models_names_a_version_that_is_not_ready_and_a_champion_on_one():
    """A version MLflow left FAILED_REGISTRATION was listed like any other ('-' for its gate),
    and a champion alias moved onto one in MLflow went unremarked by `unsir models` and
    `unsir audit verify`, while serving would load it."""
    from unsir_pipeline.adapters.registry import VersionInfo
    from unsir_pipeline.cli.models import _gate_shown, summarize_versions
    from unsir_pipeline.governance.promotion import champion_problems

    failed = VersionInfo(2, ("champion",), {}, None, "", "FAILED_REGISTRATION")
    ready = VersionInfo(1, (), {"gate_decision": "promoted", "gate_reasons": ""}, None, "", "READY")
    listed = summarize_versions([ready, failed])
    assert [v["status"] for v in listed] == ["READY", "FAILED_REGISTRATION"]
    assert _gate_shown(listed[1]) == "FAILED_REGISTRATION"
    assert _gate_shown(listed[0]) == "promoted"
    problems, _ = champion_problems([ready, failed], "champion")
    assert problems == [
        "the champion is version 2, which is FAILED_REGISTRATION, not READY: there is no registered model to "
        "serve (alias moved in MLflow?); move 'champion' to a READY version with `unsir promote VERSION --reason ...`"
    ]


def test_audit_verify_without_a_registry_database_checks_the_trail_and_creates_none(params_only, capsys):
    """`audit verify` only reads: where the default SQLite registry was never made (nothing
    registered yet, or a copy without it) it verifies the trail and says the registry was not
    cross-checked, instead of opening the registry, which creates state/mlflow/mlflow.db."""
    from unsir_pipeline.governance import stores

    store, log = stores.intake_trail(Workspace.load(params_only))
    store.add([3], ["3"], "alice", "consent withdrawn")
    assert len(stores.record_missing_intake(store, log)) == 1

    assert main(["--project", str(params_only), "audit", "verify"]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("audit trail intact: 1 records")
    assert out.rstrip().endswith("request store agrees with it")  # the registry is not said to agree
    registry = params_only / "state" / "mlflow" / "mlflow.db"
    skipped = f"warning: no registry database {registry} (nothing registered yet): the registry is not cross-checked"
    assert skipped in err.splitlines()
    assert not registry.parent.exists()
    # Nor do the other commands that only read.
    request_id = store.list()[0].id
    for command in (["models"], ["review", "list"], ["audit", "show", "--request", request_id]):
        assert main(["--project", str(params_only), *command]) == 0, command
        assert not registry.parent.exists(), command
    capsys.readouterr()

    # A trail that records a version registered there: the database was lost, not never made.
    from unsir_pipeline.governance.trail import registry_name

    payload = {"registry": registry_name(Workspace.load(params_only)), "model_version": 2}
    log.append("model_registered", actor="batch", payload=payload)
    assert main(["--project", str(params_only), "audit", "verify"]) == 1
    err = capsys.readouterr().err
    assert "records versions [2] of sqlite:///state/mlflow/mlflow.db#" in err and "was lost or replaced" in err
    assert not registry.parent.exists()


def test_audit_show_summarises_the_evidence_and_the_versions_each_record_holds(tmp_path, capsys):
    """`unsir audit show` printed nothing after unlearning_metrics, validation_passed and
    model_registered, and only model_version after version_promoted: the forget accuracy, the
    membership inference against the retrained reference, the relearn steps, the validation
    check, 'no forget-class sample read', the parent version and the champion replaced were on
    the trail but only in --json."""
    from conftest import make_project

    from unsir_pipeline.governance import stores

    project = make_project(tmp_path / "project")
    log = stores.audit_log(Workspace.load(project))
    metrics = {
        "original_forget_acc": 0.9909,
        "forget_acc": 0.0,
        "reference_forget_acc": 0.0,
        "mia": 0.0647,
        "reference_mia": 0.1692,
        "relearn_steps": 17.0,
        "reference_relearn_steps": 25.0,
    }
    log.append("validation_passed", actor="deletion-batch", payload={"expectations_passed": 32})
    log.append(
        "unlearning_metrics",
        actor="deletion-batch",
        payload={"metrics": metrics, "verified": True, "verification_split": "val", "reads_forget_train": False},
    )
    log.append(
        "model_registered",
        actor="deletion-batch",
        payload={"model_version": 2, "parent_version": 1, "method": "retrain"},
    )
    log.append(
        "version_promoted",
        actor="grace@corp",
        payload={"model_version": 5, "previous_champion": 3, "override": True, "reason": "legal deadline"},
    )

    assert main(["--project", str(project), "audit", "show"]) == 0
    lines = [line.split(None, 4)[-1] for line in capsys.readouterr().out.splitlines()]
    assert lines == [
        "expectations_passed=32",
        "forget_acc=0.0000 (before 0.9909, retrained 0.0000), mia=0.0647 (retrained 0.1692), relearn_steps=17 "
        "(retrained 25), verified on val=True, reads_forget_train=False",
        "model_version=2, parent_version=1, method=retrain",
        "model_version=5, previous_champion=3, override=True, reason=legal deadline",
    ]


def test_audit_show_names_the_registered_retrained_models_figures_apart_from_unsirs(tmp_path, capsys):
    """A run that registered the retrained model recorded UNSIR's unregistered model's figures as
    forget_acc and mia, and `unsir audit show` printed them as the record's: 'forget_acc=0.3100'
    for a version whose forget accuracy is 0."""
    from conftest import make_project

    from unsir_pipeline.governance import stores
    from unsir_pipeline.governance.trail import run_records

    project = make_project(tmp_path / "project")
    log = stores.audit_log(Workspace.load(project))
    metrics = {
        "original_forget_acc": 0.99,
        "forget_acc": 0.31,
        "reference_forget_acc": 0.0,
        "mia": 0.62,
        "reference_mia": 0.17,
    }
    result = flow_result(metrics=metrics, method="retrain")
    log.append("unlearning_metrics", actor="deletion-batch", payload=dict(run_records(result))["unlearning_metrics"])

    assert main(["--project", str(project), "audit", "show"]) == 0
    line = capsys.readouterr().out.splitlines()[-1].split(None, 4)[-1]
    assert line == (
        "method=retrain, figures of the registered retrained model, forget_acc=0.0000 (before 0.9900, "
        "UNSIR's, not registered 0.3100), mia=0.1700 (UNSIR's, not registered 0.6200), verified on val=False, "
        "reads_forget_train=False"
    ), line


def test_batch_run_with_nothing_pending_names_a_registry_that_does_not_answer(params_only, monkeypatch, capsys):
    """Whether a stopped run left a promotion or a version for the batch to finish is the
    registry's to say: a server that does not answer is named (exit 1), after one wait through
    its retries, not read as "nothing left" and answered "batch empty" (which also waited
    through the retries twice)."""
    uri, overrides, asked = a_registry_that_does_not_answer(monkeypatch)
    assert main(["--project", str(params_only), *overrides, "batch", "run"]) == 1
    captured = capsys.readouterr()
    assert "batch empty" not in captured.out
    assert captured.err.splitlines()[-1].startswith(f"error: cannot reach the MLflow registry at {uri}")
    assert len(asked) == 1, asked


@pytest.mark.slow
def test_batch_run_with_requests_pending_asks_a_registry_that_does_not_answer_once(
    project, tmp_path, monkeypatch, capsys
):
    """With requests pending and the MLflow server down, `batch run` waited through the
    registry's retries twice for one answer: the trail check read the server as "left to the
    command's first registry call", and the champion check then asked it again (26 s with the
    default retries, each wait 7-8 s). Now the trail check names it, and nothing else asks; the
    requests stay pending, unclaimed, for the next batch."""
    from unsir_pipeline.governance import intake, stores

    copy = clone_project(project, tmp_path / "server-down")
    ws = Workspace.load(copy)
    request = intake.file_request(ws, ["3"], "alice", "consent withdrawn")
    uri, overrides, asked = a_registry_that_does_not_answer(monkeypatch)
    assert main(["--project", str(copy), *overrides, "batch", "run"]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot reach the MLflow registry at {uri}" in err
    assert len(asked) == 1, asked
    assert [(r.id, r.status, r.attempts) for r in stores.request_store(ws).list()] == [(request.id, "pending", 0)]


@pytest.mark.parametrize(
    "command",
    [
        ["promote", "1", "--by", "alice", "--reason", "roll back"],
        ["reject", "1", "--by", "alice", "--reason", "held"],
        ["request", "add", "--classes", "3", "--by", "alice", "--reason", "consent withdrawn"],
    ],
    ids=["promote", "reject", "request-add"],
)
def test_commands_that_need_the_registry_ask_one_that_does_not_answer_once(
    command, project, tmp_path, monkeypatch, capsys
):
    """A server that does not answer costs one wait through the registry's retries, not two.
    `request add` read the champion right after the trail check, which left such a server to
    "the command's first registry call", and so waited twice; now the trail check names it.
    `promote` and `reject` ask once already (the version is looked up first): kept so."""
    copy = clone_project(project, tmp_path / "server-down")
    uri, overrides, asked = a_registry_that_does_not_answer(monkeypatch)
    assert main(["--project", str(copy), *overrides, *command]) == 1
    assert f"cannot reach the MLflow registry at {uri}" in capsys.readouterr().err
    assert len(asked) == 1, asked
