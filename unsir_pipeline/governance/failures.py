"""Whose fault a failure is: the run's own, or the setup's (the input, the configuration, the
data, a service or a state file), which an operator fixes and a retry cannot.

One place answers it for the command line and the deletion batch: `unsir` exits 2 for bad input
or configuration (:func:`is_bad_input`), and a failed batch counts the attempt against its
requests' ``requests.max_attempts`` only when the run itself failed (:func:`setup_fault` is
None). That limit stops a request whose unlearning run fails whatever is tried (training that
diverges, a crash inside the method) from being retried for ever; a damaged file or a server that
is down would otherwise use up every attempt of every request queued, and end them ``failed``.

What a failed run leaves on its requests, a forget run's or a batch's: the error in one line
(:func:`failure_message`) and whether the attempt counted (:func:`attempt_counted`).

Imports are made inside the functions: the command line asks on its error path, where a failing
import must not hide the error being described.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unsir_pipeline.settings.workspace import Workspace

# What a released request keeps of its error, at most: one row of `request list`, not the
# several KB a database error can carry (the flow run's log keeps the whole text).
FAILURE_MESSAGE_LIMIT = 500


# The parts of SQLAlchemy's error text (which MLflow passes on as its own) that say nothing to
# the user: the autoflush hint before the cause, and the statement, its parameters (every row
# the session held) and the link to SQLAlchemy's docs after it.
_SQLALCHEMY_NOISE = re.compile(
    r"\(raised as a result of Query-invoked autoflush;[^)]*\)"
    r"|\n\[SQL: .*?\(Background on this error at: [^)]*\)"
    r"|\(Background on this error at: [^)]*\)",
    re.DOTALL,
)


def is_bad_input(err: BaseException) -> bool:
    """Bad input or configuration, found before any work could go on: a class, a setting, an
    audit key, a state schema or a write the configuration refuses, damaged prepared data or
    weights (``UnlearningInputError`` and its kinds), a damaged state file (Prefect's run history
    too), a full disk. The command line exits 2 on these."""
    from unsir.errors import UnlearningInputError
    from unsir_pipeline.adapters.orchestration import PrefectDatabaseUnusable
    from unsir_pipeline.adapters.state_store import StateFileDamaged, StateSchemaRefused, StateWriteRefused
    from unsir_pipeline.governance.audit import AuditKeyError
    from unsir_pipeline.governance.deletion_requests import RequestError
    from unsir_pipeline.governance.full_disk import full_disk_error
    from unsir_pipeline.settings.config import ConfigError
    from unsir_pipeline.settings.runtime import RuntimeSettingError

    if full_disk_error(err) is not None:  # the disk to free is named; the command did not fail of itself
        return True
    return isinstance(
        err,
        (
            AuditKeyError,
            UnlearningInputError,
            ConfigError,
            RequestError,
            RuntimeSettingError,
            PrefectDatabaseUnusable,  # Prefect's own run history, to move aside
            StateSchemaRefused,
            StateWriteRefused,
            StateFileDamaged,  # the MLflow registry's file too (RegistryFileDamaged)
        ),
    )


def setup_fault(err: BaseException) -> str | None:
    """What in the setup ``err`` says is to fix, or None when the run itself failed (and a stop,
    SIGTERM or Ctrl-C, which is no fault of the setup either)."""
    from mlflow.exceptions import MlflowException

    from unsir_pipeline.adapters.data_versioning import DataVersioningError
    from unsir_pipeline.adapters.orchestration import (
        GlobalLockRefused,
        describe_server_refusal,
        describe_unreachable_server,
    )
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.adapters.state_store import StateError
    from unsir_pipeline.adapters.validation import ValidationFailed
    from unsir_pipeline.governance.audit import AuditError
    from unsir_pipeline.governance.locks import LockError

    if isinstance(err, ValidationFailed):  # bad input too, but the more telling name
        return "the data failed validation"
    if is_bad_input(err):
        return "bad input or configuration (a setting, the prepared data or the weights)"
    # httpx's errors are no OSError: a Prefect server that refused the run mid-way (401, 403, 5xx)
    # or stopped answering counted an attempt of requests that did nothing wrong.
    if describe_server_refusal(err) is not None:
        return "the Prefect server (refusing the run)"
    if describe_unreachable_server(err) is not None:
        return "the Prefect server (not answering)"
    faults: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        ((RegistryError, MlflowException), "the MLflow registry (down, damaged or refusing)"),
        (StateError, "the state database"),
        (DataVersioningError, "DVC (the data's versioning)"),
        (AuditError, "the audit trail"),
        ((LockError, GlobalLockRefused), "a lock another run holds"),
        (OSError, "a file, the disk or the network"),
    ]
    return next((what for kinds, what in faults if isinstance(err, kinds)), None)


def failure_message(err: BaseException, ws: Workspace | None = None) -> str:
    """The error a released request keeps: one line (request list prints one row per request),
    but every line of the exception joined, since a validation failure's first line only counts
    the failures and the lines after it name them; without SQLAlchemy's framing, and cut at
    :data:`FAILURE_MESSAGE_LIMIT` characters saying where the rest is. A registry file another
    process held locked, or that may not be written, is named (with ``ws``), with what to do; so is
    a Prefect server that refused or did not answer (its URL, the status and what to check), where
    httpx's text ended in a link to MDN's page on the status."""
    from unsir_pipeline.adapters.orchestration import describe_server_refusal, describe_unreachable_server
    from unsir_pipeline.adapters.registry import describe_registry_file_fault

    registry_fault = describe_registry_file_fault(err, ws.registry_database) if ws is not None else None
    prefect_fault = describe_server_refusal(err) or describe_unreachable_server(err)
    text = registry_fault or prefect_fault or _SQLALCHEMY_NOISE.sub("", str(err))
    message = f"{type(err).__name__}: {' '.join(line.strip() for line in text.splitlines() if line.strip())}"
    if len(message) <= FAILURE_MESSAGE_LIMIT:
        return message
    cut = message[:FAILURE_MESSAGE_LIMIT].rstrip()
    return f"{cut} ... (cut at {FAILURE_MESSAGE_LIMIT} characters: the whole error is in the flow run's log)"


def attempt_counted(ws: Workspace, fault: str | None) -> dict:
    """What a ``batch_failed`` record says of the attempt its requests just had: counted against
    ``requests.max_attempts``, or not, the setup being at fault (``fault``, see
    :func:`setup_fault`)."""
    limit = ws.params.requests.max_attempts
    if fault is None:
        return {
            "attempt_counted": True,
            "attempt_reason": f"the run itself failed or was stopped: one of requests.max_attempts={limit}",
        }
    return {
        "attempt_counted": False,
        "attempt_reason": f"the setup failed, not the run ({fault}): fix it and the next batch tries again",
    }
