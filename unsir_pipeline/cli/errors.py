"""How a command fails: its exit codes (docs/cli.md), and the one ``error:`` line naming what
was wrong, for bad input found before any work started (:class:`UsageError`, exit 2) or any other
error the command raised (:func:`describe_error`; exit 2 for the user's errors, else 1)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

# Imports only the standard library when it loads: light enough for every command.
from unsir_pipeline.adapters import orchestration

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: whoever read the output stopped reading


class UsageError(ValueError):
    """Bad input found before any work started (exit 2); the message names the value."""


# SQLite's words for a state directory that is read-only or missing (a full disk is named by
# governance/full_disk.py).
_STATE_ERRORS = (
    "unable to open database file",
    "disk I/O error",
    "attempt to write a readonly database",
    "Read-only file system",
)


def fail_with(args, message: str, code: int) -> int:
    """One line on stderr; with ``--json`` also one object on stdout, so that a script reading
    stdout gets a document whatever the outcome."""
    print(f"error: {message}", file=sys.stderr)
    if getattr(args, "json", False):
        print(json.dumps({"error": message, "exit_code": code}))
    return code


def describe_error(err: Exception, project: Path | None = None, overrides: list[str] | None = None) -> str:
    """The command's one error line; ``overrides`` are its ``--set`` values (the registry it used)."""
    from unsir_pipeline.adapters.state_store import StateWriteRefused
    from unsir_pipeline.governance.full_disk import describe_full_disk, full_disk_error, project_places

    startup = orchestration.describe_startup_failure(err)
    if startup:
        return startup
    prefect_server = orchestration.describe_unreachable_server(err) or orchestration.describe_server_refusal(err)
    if prefect_server:
        return prefect_server
    full = full_disk_error(err)
    if full is not None:
        return describe_full_disk(full, project_places(project) if project is not None else [])
    registry_fault = _registry_file_fault(err, project, overrides or [])
    if registry_fault is not None:
        return registry_fault
    message = str(err).strip() or type(err).__name__
    first = message.splitlines()[0]
    rest = message.splitlines()[1:]
    # A refused write names its database and what it needs already.
    if project is not None and not isinstance(err, StateWriteRefused) and any(w in message for w in _STATE_ERRORS):
        return (
            f"cannot use the project's state files under {project} (paths.state_dir, the MLflow and Prefect "
            f"databases): {first}; check they exist, are writable and the disk has space"
        )
    # Validation failures list one failed expectation per line, and a failed DVC command quotes
    # its output (the stage's own error) after the first line: keep them, they are the point.
    detailed = type(err).__name__ in ("ValidationFailed", "DataVersioningError")
    return first + ("".join(f"\n  {line}" for line in rest) if detailed else "")


def _registry_file_fault(err: Exception, project: Path | None, overrides: list[str]) -> str | None:
    """The run's SQLite registry (its ``--set`` values applied, as the command applied them) named,
    when another process held it locked or it may not be written (MLflow's error says only
    "database is locked" or "attempt to write a readonly database")."""
    from unsir_pipeline.adapters.registry import describe_registry_file_fault
    from unsir_pipeline.settings.config import ConfigError
    from unsir_pipeline.settings.workspace import Workspace

    if project is None or not any(words in str(err) for words in ("database is locked", "readonly database")):
        return None
    try:
        database = Workspace.load(project, tuple(overrides)).registry_database
    except (ConfigError, OSError):  # the settings are not what failed here: keep the error as it is
        return None
    return describe_registry_file_fault(err, database)


def is_user_error(err: Exception) -> bool:
    from unsir_pipeline.governance.failures import is_bad_input

    return isinstance(err, UsageError) or is_bad_input(err)
