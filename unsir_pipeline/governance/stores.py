"""Where the governance state lives: the deletion-request store and the audit trail, in the
shared state database when ``state.database_url`` is set, else in SQLite files under the
project. Opening them needs neither MLflow nor torch, so `unsir request list` and
`unsir audit show` start without either (``batches`` holds the work that needs the registry).
"""

from __future__ import annotations

from pathlib import Path

from unsir_pipeline.governance.audit import AuditError, AuditLog, audit_key_from_env
from unsir_pipeline.governance.deletion_requests import RequestStore
from unsir_pipeline.settings.workspace import Workspace


def state_target(ws: Workspace, relative: str) -> Path | str:
    """Where a store lives: the shared database when ``state.database_url`` is set (requests and
    trail together), else its SQLite file under the project."""
    return ws.params.state.database_url or ws.path(relative)


def request_store(ws: Workspace) -> RequestStore:
    return RequestStore(state_target(ws, ws.params.requests.store))


def audit_key(ws: Workspace) -> bytes | None:
    """The anchor's HMAC key from the environment; a key file in the state directory is refused."""
    return audit_key_from_env(forbidden_dirs=[ws.state_dir])


def audit_log(ws: Workspace) -> AuditLog:
    """The audit trail. A missing trail beside a request store that holds requests was deleted:
    refuse to start a fresh one over it (that would reset the evidence); verify_trail reports it."""
    target = state_target(ws, ws.params.requests.audit_log)
    store_target = state_target(ws, ws.params.requests.store)
    if not AuditLog.exists(target) and RequestStore.exists(store_target):
        store = RequestStore(store_target)
        count = len(store.list())
        if count:
            raise AuditError(
                f"the audit trail in {store.db.shown if isinstance(target, str) else target} does not exist, but the "
                f"request store {store.db.shown} holds {count} request(s): the trail was deleted; refusing to start "
                "a new one (run `unsir audit verify`)"
            )
    return AuditLog(target, key=audit_key(ws))
