"""Whose fault a failure is: the run's own, or the setup's (the input, the configuration, the
data, a service or a state file), which an operator fixes and a retry cannot.

One place answers it for the command line and the deletion batch: `unsir` exits 2 for bad input
or configuration (:func:`is_bad_input`), and a failed batch counts the attempt against its
requests' ``requests.max_attempts`` only when the run itself failed (:func:`setup_fault` is
None). That limit stops a request whose unlearning run fails whatever is tried (training that
diverges, a crash inside the method) from being retried for ever; a damaged file or a server that
is down would otherwise use up every attempt of every request queued, and end them ``failed``.

Imports are made inside the functions: the command line asks on its error path, where a failing
import must not hide the error being described.
"""

from __future__ import annotations


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
    from unsir_pipeline.adapters.orchestration import GlobalLockRefused
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.adapters.state_store import StateError
    from unsir_pipeline.adapters.validation import ValidationFailed
    from unsir_pipeline.governance.audit import AuditError
    from unsir_pipeline.governance.locks import LockError

    if isinstance(err, ValidationFailed):  # bad input too, but the more telling name
        return "the data failed validation"
    if is_bad_input(err):
        return "bad input or configuration (a setting, the prepared data or the weights)"
    faults: list[tuple[type[BaseException] | tuple[type[BaseException], ...], str]] = [
        ((RegistryError, MlflowException), "the MLflow registry (down, damaged or refusing)"),
        (StateError, "the state database"),
        (DataVersioningError, "DVC (the data's versioning)"),
        (AuditError, "the audit trail"),
        ((LockError, GlobalLockRefused), "a lock another run holds"),
        (OSError, "a file, the disk or the network"),
    ]
    return next((what for kinds, what in faults if isinstance(err, kinds)), None)
