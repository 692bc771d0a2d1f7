"""Where the governance state lives: the deletion-request store and the audit trail, in the
shared state database when ``state.database_url`` is set, else in SQLite files under the
project. Opening them needs neither MLflow nor torch, so `unsir request list` and
`unsir audit show` start without either (``intake``, ``claims``, ``trail``, ``decisions`` and
``auditor`` hold the work that needs the registry).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unsir_pipeline.adapters.state_store import StateDatabase, StateError, StateWriteRefused, head_revision
from unsir_pipeline.governance.audit import AuditError, AuditLog, AuditRecord, audit_key_from_env
from unsir_pipeline.governance.deletion_requests import RETRIED_BY, DeletionRequest, RequestError, RequestStore
from unsir_pipeline.settings.config import ConfigError
from unsir_pipeline.settings.workspace import Workspace


def state_target(ws: Workspace, relative: str) -> Path | str:
    """Where a store lives: the shared database when ``state.database_url`` is set (requests and
    trail together), else its SQLite file under the project."""
    if ws.params.state.database_url:
        return ws.params.state.database_url
    path = ws.path(relative)
    if path.is_dir():  # SQLite would say only "disk I/O error" or "unable to open database file"
        keys = [f"requests.{key}" for key in ("store", "audit_log") if getattr(ws.params.requests, key) == relative]
        raise ConfigError(
            f"{' and '.join(keys) or 'a state file'} {relative!r} is a directory ({path}); expected the path of a "
            "SQLite file, e.g. state/requests.sqlite"
        )
    return path


def request_store(ws: Workspace) -> RequestStore:
    """The deletion requests, for a command that may change them: created empty where none was."""
    return RequestStore(state_target(ws, ws.params.requests.store))


def existing_request_store(ws: Workspace) -> RequestStore | None:
    """The deletion requests opened without writing, for the commands that only read, so a
    read-only copy of the state can be read; None where none was ever created (nothing filed
    yet), which opening it would create."""
    target = state_target(ws, ws.params.requests.store)
    return RequestStore(target, read_only=True) if RequestStore.exists(target) else None


def stored_requests(ws: Workspace, request_ids: list[str]) -> list[DeletionRequest]:
    """The requests with ``request_ids``, read without writing; :class:`RequestError` naming
    the first unknown one, or that no request was ever filed."""
    store = existing_request_store(ws)
    if store is None:
        shown = StateDatabase(state_target(ws, ws.params.requests.store)).shown
        raise RequestError(
            f"no deletion request with id {request_ids[0]!r}: no request was ever filed (no request store {shown})"
        )
    return store.get_many(request_ids)


def audit_key(ws: Workspace) -> bytes | None:
    """The anchor's HMAC key from the environment; a key file in the state directory is refused."""
    return audit_key_from_env(forbidden_dirs=[ws.state_dir])


def audit_log(ws: Workspace) -> AuditLog:
    """The audit trail, for a command that records: created where none was. A missing trail
    beside a request store that holds requests was deleted: refuse to start a fresh one over it
    (that would reset the evidence); verify_trail reports it."""
    target = state_target(ws, ws.params.requests.audit_log)
    if not AuditLog.exists(target):
        _refuse_a_deleted_trail(ws, existing_request_store(ws))
    return AuditLog(target, key=audit_key(ws))


def existing_audit_log(ws: Workspace) -> AuditLog | None:
    """The audit trail opened read-only (as :func:`existing_request_store`); None where none
    was ever started, which opening it would create. A deleted trail is refused as by
    :func:`audit_log`."""
    target = state_target(ws, ws.params.requests.audit_log)
    if AuditLog.exists(target):
        return AuditLog(target, key=audit_key(ws), read_only=True)
    _refuse_a_deleted_trail(ws, existing_request_store(ws))
    return None


def _refuse_a_deleted_trail(ws: Workspace, store: RequestStore | None) -> None:
    """For a trail that does not exist: raise :class:`AuditError` when the request ``store``
    holds requests, whose records the trail held."""
    count = len(store.list()) if store is not None else 0
    if store is not None and count:
        target = state_target(ws, ws.params.requests.audit_log)
        raise AuditError(
            f"the audit trail in {store.db.shown if isinstance(target, str) else target} does not exist, but the "
            f"request store {store.db.shown} holds {count} request(s): the trail was deleted; refusing to start "
            "a new one (run `unsir audit verify`)"
        )


def unwritable_state(ws: Workspace, *, with_registry: bool = False) -> list[str]:
    """The state this user may not write: the request store's and the trail's SQLite files (and,
    ``with_registry``, a SQLite registry's), on an auditor's read-only copy or mount or after
    `chmod a-w state/*.sqlite` (see :attr:`StateDatabase.writable`); a file not yet created is
    named by the directory it would be made in. The one place that says whether the state may
    be written."""
    files = [state_target(ws, ws.params.requests.store), state_target(ws, ws.params.requests.audit_log)]
    if with_registry and ws.registry_database is not None:
        files.append(ws.registry_database)
    unwritable = [db.path for db in map(StateDatabase, files) if db.path is not None and not db.writable]
    return list(dict.fromkeys(str(path if path.exists() else path.parent) for path in unwritable))


def state_read_only(ws: Workspace) -> bool:
    """Whether this user may not write the request store or the trail."""
    return bool(unwritable_state(ws))


def require_writable_state(
    ws: Workspace, would: str, *, instead: str = "run it where the project's state may be written"
) -> None:
    """Refuse (:class:`StateWriteRefused`) a step that ``would`` write the registry, the request
    store and the trail where this user may not write one of them, before anything is written: a
    write refused half-way left a decision in the registry with no record on the trail."""
    read_only = unwritable_state(ws, with_registry=True)
    if read_only:
        raise StateWriteRefused(
            f"{would}, and this user cannot write {', '.join(read_only)} (a read-only copy or mount?): {instead}"
        )


@dataclass(frozen=True)
class SchemaMigration:
    """One store's schema revision as `unsir state migrate` found it, and the one it brought
    it to (or, in a dry run, would)."""

    store: str  # "requests" or "audit"
    database: str  # the SQLite file, or the database's URL without its password
    found: str | None  # None: never created (the first command that writes creates it at the head)
    head: str

    @property
    def changes(self) -> bool:
        return self.found is not None and self.found != self.head

    def to_dict(self) -> dict:
        return {
            "store": self.store,
            "database": self.database,
            "from": self.found,
            "to": self.head,
            "changes": self.changes,
        }


def migrate_state(ws: Workspace, *, dry_run: bool = False) -> list[SchemaMigration]:
    """Bring the request store and the audit trail to this code's schema revisions, each under
    the migration lock, as opening them for a write does; a store never created is left so.
    ``dry_run``: read the revisions alone, writing nothing. Nothing but the schema changes: no
    store is created, no record or anchor written (see docs/audit.md)."""
    migrations = []
    for store, relative in (("requests", ws.params.requests.store), ("audit", ws.params.requests.audit_log)):
        db = StateDatabase(state_target(ws, relative), read_only=dry_run)
        if not db.holds(store):
            found = None
        elif dry_run:
            found = db.pending_migration(store)
        else:
            found = db.migrate(store, StateError)
        migrations.append(SchemaMigration(store, db.shown, found, head_revision(store)))
    return migrations


def intake_trail(ws: Workspace) -> tuple[RequestStore, AuditLog]:
    """The request store and the trail for a step that takes requests in, claims, withdraws or
    retries them (`request add`, a forget run, a batch, `request withdraw|retry`), with the
    records a killed `request add`, `request withdraw` or `request retry` left unwritten written
    first (:func:`record_missing_intake`, :func:`record_missing_withdrawals`,
    :func:`record_missing_retries`): before a request moves on, so that one whose intake record is
    missing is still pending or rejected, and one whose retry record is missing still says so."""
    store, log = request_store(ws), audit_log(ws)
    record_missing_intake(store, log)
    record_missing_withdrawals(store, log)
    record_missing_retries(store, log)
    return store, log


# The states a request whose intake was killed between its two writes can be in: a batch or a
# withdrawal writes the missing records (intake_trail) first, so a request that moved on has its record.
INTAKE_RECOVERABLE = ("pending", "rejected")


def intake_key(request_id: str) -> str:
    """The idempotency key of a request's intake record (``request_received`` or ``request_refused``)."""
    return f"intake-{request_id}"


def intake_event(request: DeletionRequest) -> str:
    return "request_refused" if request.status == "rejected" else "request_received"


def intake_payload(request: DeletionRequest) -> dict:
    """What a request's intake record says of it, as the request was stored."""
    return {
        "classes": list(request.classes),
        "class_names": list(request.class_names),
        "requested": list(request.requested),
        "reason": request.reason,
    }


def record_missing_intake(store: RequestStore, log: AuditLog) -> list[AuditRecord]:
    """Write the intake record of every stored request the trail has none for, from the request
    as stored, and return those records.

    `unsir request add` stores the request, then records it: two writes, in two SQLite files by
    default, so no one transaction can hold both. Killed in between, the request waits in the
    queue with no record, and `audit verify` would fail for good; the next intake or claim
    writes it. Keyed by the request, as the intake's own record is: written once, whoever writes
    first. Only a request still pending or rejected can be one whose intake stopped (see
    ``INTAKE_RECOVERABLE``).
    """
    candidates = [r for status in INTAKE_RECOVERABLE for r in store.list(status)]

    def record_of(request: DeletionRequest) -> _Record:
        payload = {
            **intake_payload(request),
            "recorded_from": f"the request store (no intake record was on the trail; stored {request.created_at})",
        }
        if request.status == "rejected":
            payload["refusal"] = request.error
        return intake_event(request), request.requester, payload

    return _record_missing(
        log, candidates, ("request_received", "request_refused"), lambda r: intake_key(r.id), record_of
    )


# What a recovered record is: its event, actor and payload.
_Record = tuple[str, str, dict]


def _record_missing(
    log: AuditLog,
    candidates: list[DeletionRequest],
    events: tuple[str, ...],
    key_of: Callable[[DeletionRequest], str],
    record_of: Callable[[DeletionRequest], _Record],
) -> list[AuditRecord]:
    """Append ``record_of(request)``, keyed ``key_of(request)``, for every candidate that no
    record of ``events`` names, and return what was appended (the recoveries of a command killed
    between its store write and its record). Every intake checks every request refused or
    withdrawn since the store began, so each candidate's record is looked up by its idempotency
    key (one index lookup), and built only when missing; the trail's records of ``events`` are
    read only for a candidate whose keyed record is missing: recorded before intake records were
    keyed, or not at all."""
    if not candidates:
        return []
    keys = {request.id: key_of(request) for request in candidates}
    keyed = log.recorded_keys(list(keys.values()))
    unkeyed = [request for request in candidates if keys[request.id] not in keyed]
    if not unkeyed:
        return []
    recorded = {i for event in events for r in log.records(event=event) for i in r.request_ids}
    written = []
    for request in unkeyed:
        if request.id in recorded:
            continue
        event, actor, payload = record_of(request)
        try:
            written.append(
                log.append(
                    event, actor=actor, request_ids=[request.id], payload=payload, idempotency_key=keys[request.id]
                )
            )
        except AuditError:
            # The trail refuses records now (its head cut or forged): `audit verify` names that,
            # and this request's missing record beside it; a reader of the trail still opens it.
            break
    return written


def withdrawal_key(request_id: str) -> str:
    """The idempotency key of a request's ``request_withdrawn`` record."""
    return f"withdraw-{request_id}"


def withdrawal_payload(request: DeletionRequest) -> dict:
    """What a request's ``request_withdrawn`` record says of it, as the store holds it withdrawn
    (the withdrawal adds its reason; its recovery, the store's text of who and why)."""
    return {
        "requester": request.requester,
        "classes": list(request.classes),
        "class_names": list(request.class_names),
        "attempts": request.attempts,
    }


# The actor of a withdrawal record written from the store. Who withdrew the request and why are
# stored only as one text, ``error`` ("withdrawn by WHO: REASON"), which the record carries
# verbatim (``withdrawal``): WHO may itself hold ": ", so it cannot be split back exactly.
RECOVERY_ACTOR = "request-store"


def record_missing_withdrawals(store: RequestStore, log: AuditLog) -> list[AuditRecord]:
    """Write the ``request_withdrawn`` record of every withdrawn request the trail has none for,
    from the request as stored, and return those records.

    `unsir request withdraw` updates the store, then records it: killed in between, the request
    is withdrawn with no record, `audit verify` names it, and running the withdrawal again is
    refused ("withdrawn already"); the next intake, claim or withdrawal writes it. Keyed by the
    request, as the withdrawal's own record is: written once, whoever writes first. Reads the
    withdrawn requests alone, and looks each one's record up by its key (:func:`_record_missing`).
    """

    def record_of(request: DeletionRequest) -> _Record:
        payload = {
            **withdrawal_payload(request),
            "withdrawal": request.error,
            "recorded_from": (
                f"the request store (no request_withdrawn record was on the trail; withdrawn {request.updated_at})"
            ),
        }
        return "request_withdrawn", RECOVERY_ACTOR, payload

    return _record_missing(
        log, store.list("withdrawn"), ("request_withdrawn",), lambda r: withdrawal_key(r.id), record_of
    )


def retry_key(request: DeletionRequest) -> str:
    """The idempotency key of a ``request_retried`` record: one per retry (a request may fail
    and be retried again), named by the time the retry stamped on the request."""
    return f"retry-{request.id}@{request.updated_at}"


def retry_payload(request: DeletionRequest) -> dict:
    """What a ``request_retried`` record says of the request (the retry adds who, why and the
    attempts and error it had; its recovery, the store's text of them)."""
    return {"requester": request.requester, "classes": list(request.classes), "class_names": list(request.class_names)}


def record_missing_retries(store: RequestStore, log: AuditLog) -> list[AuditRecord]:
    """Write the ``request_retried`` record of every retried request still pending that the trail
    has none for, from the request as stored, and return those records.

    `unsir request retry` updates the store, then records it: killed in between, the request is
    pending with no record. Its ``error`` still says who retried it, why and what it had before
    (:data:`~unsir_pipeline.governance.deletion_requests.RETRIED_BY`) until a batch claims it,
    and every claim writes the missing records first (:func:`intake_trail`). Keyed by the
    retry, as the retry's own record is: written once, whoever writes first. No fallback to
    unkeyed records: an earlier retry of the same request has one of its own."""

    def record_of(request: DeletionRequest) -> _Record:
        payload = {
            **retry_payload(request),
            "retry": request.error,
            "recorded_from": (
                f"the request store (no request_retried record was on the trail; retried {request.updated_at})"
            ),
        }
        return "request_retried", RECOVERY_ACTOR, payload

    retried = [r for r in store.list("pending") if (r.error or "").startswith(RETRIED_BY)]
    return _record_missing(log, retried, (), retry_key, record_of)
