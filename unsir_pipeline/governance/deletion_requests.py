"""A durable store of deletion requests: who asked to forget which classes, and what came of it.

Requests outlive any one batch run, so they live in a database rather than in a flow's memory:
a SQLite file under the project's state directory by default, or the stack's PostgreSQL when
``state.database_url`` is set (``unsir_pipeline.adapters.state_store``), through the same SQLAlchemy
statements. A batch that is killed half-way leaves its requests ``running``, and the next batch
puts them back in the queue (:meth:`RequestStore.release_stale`). Every state change is one
transaction, so two processes (a CLI adding requests, a scheduled batch claiming them) never
see or write a half-done change, and every change stamps ``updated_at``. Claims lock the rows
they take (``FOR UPDATE SKIP LOCKED`` on PostgreSQL; SQLite's single writer), so two workers on
two machines never take the same request.

Lifecycle::

    add                                      -> pending
    add(claimed_by=RUN)                      -> running    (a forget run outside a batch, attempts 1)
    add_rejected                             -> rejected   (refused at intake; never runs)
    pending --claim_pending-->                  running    (batch_id set, attempts + 1)
    running --mark_done-->                      done       (model_version set)
    running --release / release_stale-->        pending, or failed once attempts >= max_attempts
    running --release(count_attempt=False)-->   pending    (the setup failed: attempts - 1)
    done    --return_to_pending-->              pending    (a reviewer rejected the version)
    pending or failed --withdraw-->             withdrawn  (taken back; never claimed again)
    failed  --retry-->                          pending    (the cause fixed: attempts 0 again)

This module talks to nothing but the state database and imports nothing else from the pipeline,
so the queue can be inspected from a notebook or a shell without Prefect or MLflow.
"""

from __future__ import annotations

import builtins
import json
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from unsir.classes import check_forget_classes, resolve_classes
from unsir.errors import UnlearningInputError
from unsir_pipeline.adapters.state_store import VALUES_PER_QUERY, StateDatabase

STATUSES = ("pending", "running", "done", "failed", "rejected", "withdrawn")
# What may be withdrawn: a request taken in (not rejected) that no run holds (running) and none
# carried out (done). A failed one is claimed no more, but stays an open deletion until withdrawn.
WITHDRAWABLE = ("pending", "failed")
# The start of a retried request's ``error`` until a batch claims it: who put it back and why.
RETRIED_BY = "retried by "

# Longest text each field may hold, in characters. A request is read by people (``request
# list``, the evidence report) and travels in every audit record: a megabyte reason would run
# any table off the page and bloat the trail for nothing.
TEXT_LIMITS = {"requester": 200, "reason": 2000, "requested": 100, "class_names": 200}
MAX_REQUESTED = 64
# Bidirectional overrides and isolates reorder what a terminal shows ("U+202E" spoofing); line
# and paragraph separators start a new line in some viewers, like a newline.
_INVISIBLE_LAYOUT = {"\u2028", "\u2029", *map(chr, range(0x202A, 0x202F)), *map(chr, range(0x2066, 0x206A))}
_PREVIEW = 60

# The table as the statements see it; its DDL is the migrations' (unsir_pipeline/adapters/migrations).
_REQUESTS = sa.Table(
    "requests",
    sa.MetaData(),
    sa.Column("seq", sa.Integer, primary_key=True),
    *(
        sa.Column(name, sa.Text)
        for name in ("id", "classes", "class_names", "requested", "requester", "reason", "status")
    ),
    sa.Column("attempts", sa.Integer),
    sa.Column("batch_id", sa.Text),
    sa.Column("model_version", sa.Integer),
    *(sa.Column(name, sa.Text) for name in ("error", "created_at", "updated_at")),
)
_COLUMNS = [c for c in _REQUESTS.c if c.name != "seq"]


class RequestError(ValueError):
    """A request operation got a bad value (unknown id, unknown status, malformed classes)."""


@dataclass(frozen=True)
class DeletionRequest:
    """One request to forget classes, as stored; a snapshot, never updated in place."""

    id: str
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    requester: str
    reason: str
    status: str
    attempts: int
    batch_id: str | None
    model_version: int | None
    error: str | None
    created_at: str
    updated_at: str
    # What the requester typed, before resolution to class indices: kept so that a refused
    # request still shows what was asked even when nothing in it named a known class.
    requested: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (tuples become lists), for ``--json`` output and logs."""
        data = asdict(self)
        for key in ("classes", "class_names", "requested"):
            data[key] = list(data[key])
        return data


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _row_to_request(row: sa.RowMapping) -> DeletionRequest:
    return DeletionRequest(
        id=row["id"],
        classes=tuple(json.loads(row["classes"])),
        class_names=tuple(json.loads(row["class_names"])),
        requester=row["requester"],
        reason=row["reason"],
        status=row["status"],
        attempts=row["attempts"],
        batch_id=row["batch_id"],
        model_version=row["model_version"],
        error=row["error"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        requested=tuple(json.loads(row["requested"])),
    )


def _preview(value: str | bytes) -> str:
    """The start of a bad value, quoted, with its full length when cut."""
    if len(value) <= _PREVIEW:
        return repr(value)
    return f"{value[:_PREVIEW]!r}... ({len(value)} characters)"


def _refusal(name: str, shown: str, problem: str, *, typed: bool, then: str = "") -> RequestError:
    """``name problem: value; then``, or, for an entry named by what was typed (``typed``: a
    class of `request add`), ``name value problem; then``."""
    if typed:
        return RequestError(f"{name} {shown} {problem}{then}")
    return RequestError(f"{name} {problem}: {shown}{then}")


def _check_text(name: str, value: object, *, allow_empty: bool = False, typed: bool = False) -> str:
    if isinstance(value, bytes):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError as err:
            raise _refusal(
                name,
                _preview(value),
                f"is not valid UTF-8 (byte 0x{value[err.start]:02x} at position {err.start})",
                typed=typed,
                then="; expected text",
            ) from None
    if not isinstance(value, str) or (not allow_empty and not value.strip()):
        expected = "a string" if allow_empty else "a non-empty string"
        shown = _preview(value) if isinstance(value, (str, bytes)) else repr(value)
        if typed:
            raise RequestError(f"{name} {shown} must be {expected}, got {type(value).__name__}")
        raise RequestError(f"{name} must be {expected}, got {shown}")
    return value


def check_request_text(name: str, value: object, *, limit: int, allow_empty: bool = False, typed: bool = False) -> str:
    """Text a person typed into a request: a string of valid UTF-8, at most ``limit`` characters,
    with no control character (newline, tab, escape, NUL...) and no bidirectional override.

    The error names the field, the offending character and its position, the value (cut) and
    the limit, so that whoever filed it can fix it. With ``typed``, the value names the entry
    (``class 'a\\tb' contains ...``): one of several that the user typed, not a field.
    """
    text = _check_text(name, value, allow_empty=allow_empty, typed=typed)
    # Python keeps undecodable bytes of argv or a file as lone surrogates (surrogateescape):
    # report them as what they were, bytes that are not UTF-8, not as a codec traceback later.
    for position, char in enumerate(text):
        if 0xDC80 <= ord(char) <= 0xDCFF:
            raise _refusal(
                name,
                _preview(text),
                f"is not valid UTF-8 (byte 0x{ord(char) - 0xDC00:02x} at position {position})",
                typed=typed,
                then="; expected text",
            )
        if 0xD800 <= ord(char) <= 0xDFFF:
            raise _refusal(
                name, _preview(text), f"holds a lone surrogate U+{ord(char):04X} at position {position}", typed=typed
            )
    if len(text) > limit:
        raise _refusal(name, _preview(text), f"has {len(text)} characters; the limit is {limit}", typed=typed)
    for position, char in enumerate(text):
        if unicodedata.category(char) == "Cc" or char in _INVISIBLE_LAYOUT:
            raise _refusal(
                name,
                _preview(text),
                f"contains control character U+{ord(char):04X} at position {position}",
                typed=typed,
                then=f"; expected printable text on one line (at most {limit} characters)",
            )
    return text


def check_request_fields(requester: object, reason: object, requested: object = None) -> None:
    """Every free-text field of a request, checked before anything is stored or recorded. Each
    requested class is named as it was typed (``class 'a\\tb'``), not by its place in a field."""
    check_request_text("requester", requester, limit=TEXT_LIMITS["requester"])
    check_request_text("reason", reason, limit=TEXT_LIMITS["reason"], allow_empty=True)
    if requested is None:
        return
    if isinstance(requested, (str, bytes)):
        raise RequestError(f"requested must be a sequence of strings, got {_preview(requested)}")
    # Any iterable, as before; each entry is checked below. A non-iterable raises TypeError.
    names: list[object] = list(requested)  # type: ignore[call-overload]
    if len(names) > MAX_REQUESTED:
        raise RequestError(f"{len(names)} classes given; a request names at most {MAX_REQUESTED}")
    for entry in names:
        # A blank entry is text nothing can spoof: intake refuses it as an unknown class, as typed.
        check_request_text("class", entry, limit=TEXT_LIMITS["requested"], allow_empty=True, typed=True)


def _check_positive_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a model version or attempt limit is a bug, not a 1.
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"{name} must be an integer >= 1, got {value!r}")
    return value


def _normalise_classes(
    classes: Sequence[int], class_names: Sequence[str], *, allow_empty: bool
) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Sort classes ascending and keep each name beside its index, so two requests for the same
    classes look the same however they were typed."""
    if isinstance(classes, (str, bytes)) or isinstance(class_names, (str, bytes)):
        raise RequestError(f"classes and class_names must be sequences, got {classes!r} and {class_names!r}")
    classes, class_names = tuple(classes), tuple(class_names)
    if len(classes) != len(class_names):
        raise RequestError(
            f"classes {list(classes)} and class_names {list(class_names)} must have the same "
            f"length, got {len(classes)} and {len(class_names)}"
        )
    if not classes and not allow_empty:
        raise RequestError("classes must name at least one class to forget, got none")
    names: dict[int, str] = {}
    for index, name in zip(classes, class_names, strict=True):
        if isinstance(index, bool) or not isinstance(index, int) or index < 0:
            raise RequestError(f"class index must be an integer >= 0, got {index!r}")
        check_request_text(f"class_names entry for class {index}", name, limit=TEXT_LIMITS["class_names"])
        if names.setdefault(index, name) != name:
            raise RequestError(f"class {index} is given two names, {names[index]!r} and {name!r}; expected one")
    ordered = sorted(names)
    return tuple(ordered), tuple(names[i] for i in ordered)


def _normalise_requested(requested: Sequence[str] | None, default: tuple[str, ...]) -> tuple[str, ...]:
    if requested is None:
        return default
    if isinstance(requested, (str, bytes)) or not all(isinstance(r, str) for r in requested):
        raise RequestError(f"requested must be a sequence of strings, got {requested!r}")
    if len(requested) > MAX_REQUESTED:
        raise RequestError(f"requested names {len(requested)} classes; the limit is {MAX_REQUESTED}")
    return tuple(
        check_request_text(f"requested[{i}]", r, limit=TEXT_LIMITS["requested"]) for i, r in enumerate(requested)
    )


class RequestStore:
    """Deletion requests in the state database (a SQLite file, or a database URL), safe to
    share between processes and machines.

    Each method runs its own transaction, so a store object may be used across threads and
    survives ``fork``; there is nothing to close. Opening it creates or migrates the table.
    """

    def __init__(self, path: Path | str, *, read_only: bool = False) -> None:
        """``path``: a SQLite file (a :class:`~pathlib.Path`) or a database URL (a string).
        ``read_only``: for listing alone (a read-only copy of the state); changes are refused."""
        self.db = StateDatabase(path, read_only=read_only)
        self.path = self.db.path  # None for a database server
        self.db.migrate("requests", RequestError)

    def __repr__(self) -> str:
        return f"RequestStore({self.db.shown!r})"

    @staticmethod
    def exists(path: Path | str) -> bool:
        """Whether a store was ever created at ``path`` (a file, or a database holding the
        table); opens and creates nothing."""
        db = StateDatabase(path)
        return db.path.exists() if db.path is not None else db.table_exists("requests")

    # -- transactions ----------------------------------------------------------------------

    def _select(self, conn: sa.Connection, where: sa.ColumnElement[bool]) -> list[DeletionRequest]:
        rows = conn.execute(sa.select(*_COLUMNS).where(where).order_by(_REQUESTS.c.seq)).mappings()
        return [_row_to_request(row) for row in rows]

    def _transition(
        self, where: sa.ColumnElement[bool], values: dict[str, Any], *, claim: bool = False
    ) -> list[DeletionRequest]:
        """Apply ``values`` to every row matching ``where``, in one transaction, and return the
        changed rows as they are afterwards (oldest first).

        The rows are locked first (``SELECT ... FOR UPDATE``; on SQLite the write transaction
        holds the file's lock). With ``claim``, rows another transaction holds are skipped
        (``SKIP LOCKED``): two workers claiming at once each get a disjoint set, without waiting.
        """
        table = _REQUESTS
        with self.db.write() as conn:
            locked = (
                conn.execute(
                    sa.select(table.c.seq).where(where).order_by(table.c.seq).with_for_update(skip_locked=claim)
                )
                .scalars()
                .all()
            )
            if not locked:
                return []
            rows = (
                conn.execute(
                    sa.update(table)
                    .where(table.c.seq.in_(locked))
                    .values(**values, updated_at=_now())
                    .returning(table.c.seq, *_COLUMNS)
                )
                .mappings()
                .all()
            )
        # RETURNING's order is unspecified, hence the sort.
        return [_row_to_request(row) for row in sorted(rows, key=lambda row: row["seq"])]

    # -- intake ----------------------------------------------------------------------------

    def _insert(
        self,
        classes: tuple[int, ...],
        class_names: tuple[str, ...],
        requested: tuple[str, ...],
        requester: str,
        reason: str,
        status: str,
        error: str | None,
        admit: Callable[[builtins.list[DeletionRequest]], None] | None = None,
        claimed_by: str | None = None,
    ) -> DeletionRequest:
        request_id = f"req-{uuid.uuid4().hex[:12]}"
        now = _now()
        with self.db.write() as conn:
            if admit is not None:
                # Read the queue in the transaction that inserts: two requests filed at once are
                # each checked against the other (on SQLite the write transaction holds the file;
                # on PostgreSQL FOR UPDATE would not stop an insert, so intake takes a lock).
                self.db.serialise(conn, "intake")
                admit(self._select(conn, _REQUESTS.c.status.in_(("pending", "running"))))
            conn.execute(
                sa.insert(_REQUESTS).values(
                    id=request_id,
                    classes=json.dumps(list(classes)),
                    class_names=json.dumps(list(class_names)),
                    requested=json.dumps(list(requested)),
                    requester=requester,
                    reason=reason,
                    status=status,
                    attempts=0 if claimed_by is None else 1,
                    batch_id=claimed_by,
                    error=error,
                    created_at=now,
                    updated_at=now,
                )
            )
            return self._select(conn, _REQUESTS.c.id == request_id)[0]

    def add(
        self,
        classes: Sequence[int],
        class_names: Sequence[str],
        requester: str,
        reason: str,
        *,
        requested: Sequence[str] | None = None,
        admit: Callable[[builtins.list[DeletionRequest]], None] | None = None,
        claimed_by: str | None = None,
    ) -> DeletionRequest:
        """Queue a request (status ``pending``). Classes are stored sorted and unique, each name
        beside its index. ``requested`` is what the requester typed; by default the names.
        ``admit`` is given the requests queued (pending or running), read in the transaction that
        inserts, and raises to refuse the request: nothing is stored then.

        With ``claimed_by``, the request is claimed at once by that run (status ``running``,
        ``batch_id`` = ``claimed_by``, attempt 1): a forget run outside a batch, which ends it as
        a batch ends its requests (:meth:`mark_done`, :meth:`release`)."""
        if claimed_by is not None:
            _check_text("claimed_by", claimed_by)
        return self._file(
            classes,
            class_names,
            requester,
            reason,
            requested,
            status="pending" if claimed_by is None else "running",
            refusal=None,
            admit=admit,
            claimed_by=claimed_by,
        )

    def add_rejected(
        self,
        classes: Sequence[int],
        class_names: Sequence[str],
        requester: str,
        reason: str,
        refusal: str,
        *,
        requested: Sequence[str] | None = None,
    ) -> DeletionRequest:
        """Record a request refused at intake (status ``rejected``, ``error`` = ``refusal``).

        Refusals are stored, not dropped, so that "I asked and nothing happened" can be answered.
        ``classes`` holds whatever did resolve (possibly nothing); ``requested`` keeps the raw
        strings, including those that named no known class.
        """
        refusal = _check_text("refusal", refusal)
        return self._file(classes, class_names, requester, reason, requested, status="rejected", refusal=refusal)

    def _file(
        self,
        classes: Sequence[int],
        class_names: Sequence[str],
        requester: str,
        reason: str,
        requested: Sequence[str] | None,
        *,
        status: str,
        refusal: str | None,
        admit: Callable[[builtins.list[DeletionRequest]], None] | None = None,
        claimed_by: str | None = None,
    ) -> DeletionRequest:
        """Check and store one request; a refused one may name no class that resolved."""
        classes, class_names = _normalise_classes(classes, class_names, allow_empty=status == "rejected")
        return self._insert(
            classes,
            class_names,
            _normalise_requested(requested, class_names),
            check_request_text("requester", requester, limit=TEXT_LIMITS["requester"]),
            check_request_text("reason", reason, limit=TEXT_LIMITS["reason"], allow_empty=True),
            status,
            refusal,
            admit,
            claimed_by,
        )

    # -- queries ---------------------------------------------------------------------------

    def get(self, request_id: str) -> DeletionRequest:
        with self.db.read() as conn:
            found = self._select(conn, _REQUESTS.c.id == request_id)
        if not found:
            raise self._unknown(request_id)
        return found[0]

    def get_many(self, request_ids: Sequence[str]) -> list[DeletionRequest]:
        """The requests with ``request_ids``, in that order, read in one transaction (a statement
        per :data:`VALUES_PER_QUERY` ids, not one per id); :class:`RequestError` naming the first
        unknown id, as :meth:`get` names it."""
        wanted = list(dict.fromkeys(request_ids))
        found: dict[str, DeletionRequest] = {}
        with self.db.read() as conn:
            for start in range(0, len(wanted), VALUES_PER_QUERY):
                in_chunk = _REQUESTS.c.id.in_(wanted[start : start + VALUES_PER_QUERY])
                found.update((request.id, request) for request in self._select(conn, in_chunk))
        unknown = next((request_id for request_id in request_ids if request_id not in found), None)
        if unknown is not None:
            raise self._unknown(unknown)
        return [found[request_id] for request_id in request_ids]

    def _unknown(self, request_id: str) -> RequestError:
        return RequestError(f"no deletion request with id {request_id!r} in {self.db.shown}")

    # Below this method, a bare `list` in the class's annotations would name it: builtins.list.
    def list(self, status: str | None = None, *, model_version: int | None = None) -> list[DeletionRequest]:
        """Every request, or those with ``status`` and/or done by ``model_version``, oldest first."""
        where: sa.ColumnElement[bool] = sa.true()
        if status is not None:
            if status not in STATUSES:
                raise RequestError(f"unknown request status {status!r}; expected one of {', '.join(STATUSES)}")
            where = _REQUESTS.c.status == status
        if model_version is not None:
            where = sa.and_(where, _REQUESTS.c.model_version == _check_positive_int("model_version", model_version))
        with self.db.read() as conn:
            return self._select(conn, where)

    def batch_requests(self, batch_id: str) -> builtins.list[DeletionRequest]:
        """The requests a batch holds or held (the last batch to claim each), oldest first."""
        with self.db.read() as conn:
            return self._select(conn, _REQUESTS.c.batch_id == _check_text("batch_id", batch_id))

    # -- batch lifecycle -------------------------------------------------------------------

    def claim_pending(self, batch_id: str) -> builtins.list[DeletionRequest]:
        """Move every pending request to ``running`` under ``batch_id`` and count the attempt.

        Atomic: two batches claiming at once, on one machine or two, each get a disjoint set
        (one of them usually none).
        """
        _check_text("batch_id", batch_id)
        return self._transition(
            _REQUESTS.c.status == "pending",
            {"status": "running", "batch_id": batch_id, "attempts": _REQUESTS.c.attempts + 1},
            claim=True,
        )

    def mark_done(self, batch_id: str, model_version: int) -> builtins.list[DeletionRequest]:
        """The batch's running requests were forgotten by ``model_version``: mark them ``done``.

        Returns the requests this call changed; a retried call changes and returns nothing (see
        :meth:`batch_requests` for the batch's full list). ``error`` keeps the last failure, if any.
        """
        _check_text("batch_id", batch_id)
        _check_positive_int("model_version", model_version)
        return self._transition(
            (_REQUESTS.c.status == "running") & (_REQUESTS.c.batch_id == batch_id),
            {"status": "done", "model_version": model_version},
        )

    def release(
        self, batch_id: str, error: str, max_attempts: int, *, count_attempt: bool = True
    ) -> builtins.list[DeletionRequest]:
        """The batch failed: its running requests go back to ``pending`` to be retried, or to
        ``failed`` once they have been attempted ``max_attempts`` times; ``error`` is recorded.

        Without ``count_attempt`` (the setup failed, not the run: a damaged file, a server down),
        they go back to ``pending`` and the claim's attempt is taken back: only the run's own
        failures use up a request's attempts."""
        _check_text("batch_id", batch_id)
        return self._release(
            (_REQUESTS.c.status == "running") & (_REQUESTS.c.batch_id == batch_id),
            error,
            max_attempts,
            count_attempt=count_attempt,
        )

    def release_stale(self, error: str, max_attempts: int) -> builtins.list[DeletionRequest]:
        """Release every running request, whichever batch (or forget run) holds it.

        Only a batch that holds the batch lock may call this: at that moment no other batch or
        forget run can be running (a forget run holds the lock too), so anything still
        ``running`` belongs to one that was killed.
        """
        return self._release(_REQUESTS.c.status == "running", error, max_attempts)

    def _release(
        self, where: sa.ColumnElement[bool], error: str, max_attempts: int, *, count_attempt: bool = True
    ) -> builtins.list[DeletionRequest]:
        _check_text("error", error)
        _check_positive_int("max_attempts", max_attempts)
        attempts = _REQUESTS.c.attempts
        if not count_attempt:  # every claim counted one (claim_pending, add(claimed_by=...))
            uncounted = sa.case((attempts > 0, attempts - 1), else_=0)
            return self._transition(where, {"status": "pending", "attempts": uncounted, "error": error})
        status = sa.case((attempts >= max_attempts, "failed"), else_="pending")
        return self._transition(where, {"status": status, "error": error})

    def return_to_pending(self, model_version: int, error: str) -> builtins.list[DeletionRequest]:
        """A reviewer rejected ``model_version``: the requests it completed are not honoured after
        all. They go back to ``pending`` with ``model_version`` cleared and ``error`` = the reason;
        ``attempts`` and ``batch_id`` keep their history."""
        _check_positive_int("model_version", model_version)
        _check_text("error", error)
        return self._transition(
            (_REQUESTS.c.status == "done") & (_REQUESTS.c.model_version == model_version),
            {"status": "pending", "model_version": None, "error": error},
        )

    def withdraw(self, request_id: str, by: str, reason: str) -> DeletionRequest:
        """Take back a pending or failed request (filed by mistake or twice, or its requester
        changed their mind): status ``withdrawn``, ``error`` = who and why; no batch claims it
        after. ``attempts`` and ``batch_id`` keep their history.

        The row is locked as a claim locks it, in one transaction: a batch claiming at the same
        moment either took it first (then it is refused here) or skips it and never sees it
        pending again. Anything else is refused, naming the request's status, and nothing changes.
        """
        _check_text("request_id", request_id)
        check_request_text("by", by, limit=TEXT_LIMITS["requester"])
        check_request_text("reason", reason, limit=TEXT_LIMITS["reason"])
        this = _REQUESTS.c.id == request_id
        with self.db.write() as conn:
            locked = conn.execute(sa.select(*_COLUMNS).where(this).with_for_update()).mappings().all()
            if not locked:
                raise self._unknown(request_id)
            request = _row_to_request(locked[0])
            if request.status not in WITHDRAWABLE:
                raise RequestError(
                    f"request {request_id} is {request.status}{_why_not_withdrawable(request)}; only a "
                    f"{' or '.join(WITHDRAWABLE)} request can be withdrawn"
                )
            conn.execute(
                sa.update(_REQUESTS)
                .where(this)
                .values(status="withdrawn", error=f"withdrawn by {by}: {reason}", updated_at=_now())
            )
            return self._select(conn, this)[0]

    def retry(
        self, request_ids: Sequence[str], by: str, reason: str
    ) -> builtins.list[tuple[DeletionRequest, DeletionRequest]]:
        """Put failed requests back in the queue once whoever runs the pipeline fixed what made
        their runs fail: status ``pending``, ``attempts`` 0 (``requests.max_attempts`` tries
        again), ``error`` = who and why, after the attempts and the error they had. ``batch_id``
        keeps its history. Returns each request as it was and as it is now, in the order given.

        All or nothing, in one transaction that locks the rows as a claim does: a request that is
        not failed (or not known) is refused, naming its status, and nothing changes.
        """
        ids = builtins.list(dict.fromkeys(_check_text("request_id", i) for i in request_ids))
        if not ids:
            raise RequestError("no request id given; expected the ids of failed requests")
        check_request_text("by", by, limit=TEXT_LIMITS["requester"])
        check_request_text("reason", reason, limit=TEXT_LIMITS["reason"])
        chosen = _REQUESTS.c.id.in_(ids)
        with self.db.write() as conn:
            rows = conn.execute(sa.select(*_COLUMNS).where(chosen).with_for_update()).mappings().all()
            found = {row["id"]: _row_to_request(row) for row in rows}
            unknown = next((i for i in ids if i not in found), None)
            if unknown is not None:
                raise self._unknown(unknown)
            refused = [found[i] for i in ids if found[i].status != "failed"]
            if refused:
                raise RequestError(
                    "; ".join(f"request {r.id} is {r.status}{_why_not_retryable(r)}" for r in refused)
                    + "; only a failed request can be retried (nothing was changed)"
                )
            now = _now()
            for request in found.values():
                error = f"{RETRIED_BY}{by}: {reason} (failed after {request.attempts} attempts: {request.error})"
                conn.execute(
                    sa.update(_REQUESTS)
                    .where(_REQUESTS.c.id == request.id)
                    .values(status="pending", attempts=0, error=error, updated_at=now)
                )
            after = {r.id: r for r in self._select(conn, chosen)}
        return [(found[i], after[i]) for i in ids]


def _why_not_retryable(request: DeletionRequest) -> str:
    if request.status == "pending":
        return " (queued: the next batch takes it)"
    if request.status == "withdrawn":
        return f" ({request.error})"
    return _why_not_withdrawable(request)


def _why_not_withdrawable(request: DeletionRequest) -> str:
    if request.status == "running":
        return f" (claimed by {request.batch_id}: wait for it to end)"
    if request.status == "done":
        return f" (forgotten by version {request.model_version})"
    if request.status == "rejected":
        return " (refused at intake: it never runs)"
    return f" already ({request.error})"


def resolve_request(
    requested: Sequence[str],
    class_names: Sequence[str],
    *,
    forgotten: Sequence[int],
    forgotten_by: str,
    pending: Sequence[int] = (),
    pending_by: str = "pending requests",
) -> tuple[int, ...]:
    """The one check of the classes a request names, for `request add`, `forget` and the batch.

    Every name or index must be a class of the data set and none forgotten already (by
    ``forgotten_by``, e.g. "the champion (version 3)"); together with the classes forgotten so
    far and those of ``pending`` requests (``pending_by`` says whose), at least one class must
    remain. Returns the class
    indices; raises :class:`unsir.errors.UnlearningInputError` naming the offending classes.
    """
    names = tuple(class_names)
    classes = resolve_classes(list(requested), names)
    repeated = sorted(set(classes) & set(forgotten))
    if repeated:
        raise UnlearningInputError(
            f"classes {[names[c] for c in repeated]} are already forgotten by {forgotten_by} "
            f"(forgotten so far: {[names[c] for c in sorted(forgotten)]})"
        )
    together = tuple(sorted(set(classes) | set(forgotten) | set(pending)))
    try:
        check_forget_classes(together, len(names), names)
    except UnlearningInputError as err:
        counted = f"classes already forgotten and {pending_by}" if pending else "classes already forgotten"
        raise UnlearningInputError(f"{err} (counting {counted})") from None
    return classes
