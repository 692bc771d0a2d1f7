"""An append-only, hash-chained audit trail: what was done about each deletion request, provably.

A regulator asking "when was this person's class forgotten, by which model version, and who
approved it?" must get an answer that nobody could have quietly rewritten. Each record therefore
carries the hash of the record before it: editing, deleting, inserting or reordering any record
breaks the chain at that record, and :meth:`AuditLog.verify` names it.

The trail lives in the state database (``unsir_pipeline.adapters.state_store``): a SQLite file under the
project's state directory by default, or the stack's PostgreSQL when ``state.database_url`` is
set; the statements are the same on both. How a record's hash is computed (so anyone can re-check
the log with ``sqlite3`` or ``psql`` and a few lines of any language)::

    sha256(json.dumps({"seq", "ts", "event", "actor", "request_ids", "payload",
                       "idempotency_key", "prev_hash"}, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False, allow_nan=False).encode("utf-8")).hexdigest()

with ``prev_hash`` of the first record equal to :data:`GENESIS`.

A chain alone cannot show that its *last* records were removed, so a small head anchor
(``{"records": n, "hash": "<hash of record n>"}``) is rewritten on every append and checked by
:meth:`AuditLog.verify`: for a SQLite trail, the file ``<log>.head`` (JSON, replaced atomically);
for a trail in a shared database, the one row of table ``audit_head``, written in the appending
transaction (a file would be seen by one machine only). Triggers make the table append-only for
any code path that goes through the database; someone with the file, or the database's owner,
can drop them, which is what the chain and the anchor are for.

The chain and an unkeyed anchor stop accidents and careless edits, not someone who can write the
directory: they can recompute every hash and rewrite the anchor. Given a key that lives outside
the project's state (:func:`audit_key_from_env`), the anchor also carries
``"mac": HMAC-SHA256(key, {"purpose": "unsir-audit-head/v1", "records": n, "hash": h})`` (the
same canonical JSON), so a rewritten chain can no longer be re-anchored without the key. With a
key, an unsigned or wrongly signed anchor is a verification failure and blocks appends. The
anchor cannot show that *both* files were deleted; the pipeline cross-checks the trail against
the request store and the registry for that (``unsir_pipeline.governance.auditor.verify_trail``). See
``docs/audit.md`` for the threat model. This module talks to nothing but the state database, the
anchor file and the key's source, and imports nothing else from the pipeline.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from unsir_pipeline.adapters.state_store import VALUES_PER_QUERY, StateDatabase

GENESIS = "0" * 64

# Where the HMAC key of the head anchor comes from: the key itself, or a file holding it.
KEY_ENV = "UNSIR_AUDIT_KEY"
KEY_FILE_ENV = "UNSIR_AUDIT_KEY_FILE"
# 32 bytes: a key shorter than SHA-256's output weakens the MAC.
MIN_KEY_BYTES = 32
_MAC_PURPOSE = "unsir-audit-head/v1"

# The tables as the statements see them; their DDL is the migrations' (unsir_pipeline/adapters/migrations).
_METADATA = sa.MetaData()
_AUDIT = sa.Table(
    "audit",
    _METADATA,
    sa.Column("seq", sa.Integer, primary_key=True, autoincrement=False),
    *(
        sa.Column(name, sa.Text)
        for name in ("ts", "event", "actor", "request_ids", "payload", "idempotency_key", "prev_hash", "hash")
    ),
)
_HEAD = sa.Table(
    "audit_head",
    _METADATA,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("records", sa.Integer),
    sa.Column("hash", sa.Text),
    sa.Column("mac", sa.Text),
)
_HEAD_ROW = 1


class AuditError(Exception):
    """The audit log was given a bad value, or what is stored cannot be read as a record."""


class AuditKeyError(AuditError):
    """``UNSIR_AUDIT_KEY`` or ``UNSIR_AUDIT_KEY_FILE`` holds a key that cannot be used, or neither
    is set where an append needs the key (the head anchor is signed): a setting to fix (the CLI's
    exit 2), not a trail that failed."""


@dataclass(frozen=True)
class AuditRecord:
    """One audit record as stored. ``payload`` is a fresh dict per read; changing it changes
    nothing stored (and would no longer match ``hash``)."""

    seq: int
    ts: str
    event: str
    actor: str
    request_ids: tuple[str, ...]
    payload: dict[str, Any]
    idempotency_key: str | None
    prev_hash: str
    hash: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values (a deep copy), for ``--json`` output and reports."""
        return {
            "seq": self.seq,
            "ts": self.ts,
            "event": self.event,
            "actor": self.actor,
            "request_ids": list(self.request_ids),
            "payload": json.loads(_canonical(self.payload)),
            "idempotency_key": self.idempotency_key,
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


@dataclass(frozen=True)
class VerifyResult:
    """The outcome of :meth:`AuditLog.verify`: ``ok``, or the first record found wrong and why,
    and every later one (``later_problems``, ``(seq, problem)`` each)."""

    ok: bool
    records: int
    first_bad_seq: int | None
    problem: str | None
    # Whether the audit key verified the head anchor's HMAC (False without a key, however the
    # anchor is signed: AuditLog.head_is_signed says that).
    signed: bool = False
    # One edited record does not make the rest unreadable: the walk goes on past it, so an
    # auditor learns which records are still intact (those named nowhere here).
    later_problems: tuple[tuple[int, str], ...] = ()

    @property
    def bad_seqs(self) -> frozenset[int]:
        """Every record number named by a problem (a head problem names the record after the
        last one, or the last)."""
        first = () if self.first_bad_seq is None else (self.first_bad_seq,)
        return frozenset((*first, *(seq for seq, _ in self.later_problems)))


def _canonical(value: Any) -> str:
    # allow_nan=False: NaN/Infinity are not JSON, and a log anyone must be able to re-hash
    # cannot depend on Python's extension of it.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _record_hash(
    seq: int,
    ts: str,
    event: str,
    actor: str,
    request_ids: Sequence[str],
    payload: dict[str, Any],
    idempotency_key: str | None,
    prev_hash: str,
) -> str:
    body = {
        "seq": seq,
        "ts": ts,
        "event": event,
        "actor": actor,
        "request_ids": list(request_ids),
        "payload": payload,
        "idempotency_key": idempotency_key,
        "prev_hash": prev_hash,
    }
    return hashlib.sha256(_canonical(body).encode("utf-8")).hexdigest()


def _written_at(record: AuditRecord, seq_of: dict[str, int]) -> int | None:
    """The place ``record`` (whose content does not hash as it stands) was written at, when it
    hashes there intact, or None (edited). Only a record whose link names a stored record other
    than the one before it is looked for: a record edited in place still links to that one."""
    linked = 0 if record.prev_hash == GENESIS else seq_of.get(record.prev_hash)
    if linked is None or linked + 1 == record.seq:
        return None
    body = (record.ts, record.event, record.actor, record.request_ids, record.payload, record.idempotency_key)
    places = range(1, max(seq_of.values(), default=0) + 2)
    return next((at for at in places if _record_hash(at, *body, record.prev_hash) == record.hash), None)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds")


def _payload_problem(value: Any, where: str) -> str | None:
    """The first thing in ``value`` that JSON would reject or silently change, with its path, so
    the error names it: NaN/Infinity (not JSON) and non-string keys (JSON turns 1 into "1")."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where} is {value}, which JSON cannot hold; record null instead"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has key {key!r} of type {type(key).__name__}; expected str keys"
            found = _payload_problem(item, f"{where}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = _payload_problem(item, f"{where}[{i}]")
            if found:
                return found
    return None


def audit_key_from_env(
    environ: Mapping[str, str] | None = None, *, forbidden_dirs: Sequence[Path] = ()
) -> bytes | None:
    """The anchor's HMAC key from ``UNSIR_AUDIT_KEY`` (the key as text) or
    ``UNSIR_AUDIT_KEY_FILE`` (a file holding it); None when neither is set.

    A key file inside one of ``forbidden_dirs`` (the project's state directory) is refused:
    whoever can rewrite the trail could read the key there and re-sign a forged head.
    """
    environ = os.environ if environ is None else environ
    text, file_name = environ.get(KEY_ENV), environ.get(KEY_FILE_ENV)
    if text and file_name:
        raise AuditKeyError(f"both {KEY_ENV} and {KEY_FILE_ENV} are set; set only one")
    if text:
        key, source = text.encode("utf-8"), KEY_ENV
    elif file_name:
        path = Path(file_name).expanduser().resolve()
        for directory in forbidden_dirs:
            if path.is_relative_to(Path(directory).resolve()):
                raise AuditKeyError(
                    f"{KEY_FILE_ENV}={file_name} lies inside {directory}, which anyone who can "
                    "rewrite the audit trail can read; keep the key outside the project's state"
                )
        try:
            key = path.read_bytes().strip()
        except OSError as err:
            raise AuditKeyError(f"{KEY_FILE_ENV}={file_name}: cannot read the audit key ({err})") from err
        source = f"{KEY_FILE_ENV}={file_name}"
    else:
        return None
    if len(key) < MIN_KEY_BYTES:
        raise AuditKeyError(
            f"the audit key from {source} has {len(key)} bytes; expected at least {MIN_KEY_BYTES} "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return key


def head_mac(key: bytes, records: int, head_hash: str) -> str:
    """HMAC-SHA256 (hex) of a head anchor, as stored in its ``mac`` field."""
    message = _canonical({"purpose": _MAC_PURPOSE, "records": records, "hash": head_hash})
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).hexdigest()


def _check_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise AuditError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _parse_row(row: sa.RowMapping) -> AuditRecord:
    """A stored row as a record; :class:`AuditError` naming the record if a column is unreadable
    (possible only if someone wrote the table by hand)."""
    seq = row["seq"]
    try:
        request_ids = json.loads(row["request_ids"])
        payload = json.loads(row["payload"])
    except (TypeError, json.JSONDecodeError) as err:
        raise AuditError(f"record {seq}: request_ids or payload is not valid JSON ({err})") from err
    if not isinstance(request_ids, list) or not all(isinstance(r, str) for r in request_ids):
        raise AuditError(f"record {seq}: request_ids must be a JSON list of strings, got {row['request_ids']!r}")
    if not isinstance(payload, dict):
        raise AuditError(f"record {seq}: payload must be a JSON object, got {row['payload']!r}")
    return AuditRecord(
        seq=seq,
        ts=row["ts"],
        event=row["event"],
        actor=row["actor"],
        request_ids=tuple(request_ids),
        payload=payload,
        idempotency_key=row["idempotency_key"],
        prev_hash=row["prev_hash"],
        hash=row["hash"],
    )


class AuditLog:
    """The audit trail in the state database plus its head anchor; safe to share between
    processes (and, in a shared database, machines).

    Each method runs its own transaction, so an instance may be used across threads and survives
    ``fork``; there is nothing to close. Opening it creates or migrates the tables.
    """

    def __init__(self, path: Path | str, *, key: bytes | None = None, read_only: bool = False) -> None:
        """``path``: a SQLite file (a :class:`~pathlib.Path`) or a database URL (a string).
        ``read_only``: for reading and verifying alone (a read-only copy of the state): nothing
        is created, migrated or anchored, and appends are refused."""
        self.db = StateDatabase(path, read_only=read_only)
        self.path = self.db.path  # None for a database server
        if key is not None and (not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES):
            raise AuditError(
                f"key must be at least {MIN_KEY_BYTES} bytes, got {type(key).__name__} of length {len(key)}"
            )
        self._key = key
        # A SQLite trail's anchor is a file beside it; a shared database's, a row in it.
        self.head_path = None if self.path is None else self.path.with_name(self.path.name + ".head")
        self.head_where = str(self.head_path) if self.head_path else f"(table audit_head of {self.db.shown})"
        self.db.migrate("audit", AuditError)
        if read_only:
            return
        with self.db.write() as conn:
            self._lock_chain(conn)
            # A new log gets its anchor at once, so that a missing anchor always means tampering
            # (or a lost file), never "nothing appended yet".
            count = conn.execute(sa.select(sa.func.count()).select_from(_AUDIT)).scalar_one()
            if count == 0 and self._read_head_raw(conn) is None:
                self._write_head(0, GENESIS, conn, create=True)

    def __repr__(self) -> str:
        return f"AuditLog({self.db.shown!r}, signed={self._key is not None})"

    @property
    def signed(self) -> bool:
        """Whether this log signs and checks its head anchor with a key."""
        return self._key is not None

    @staticmethod
    def exists(path: Path | str) -> bool:
        """Whether a trail was ever started at ``path`` (a file, or a database holding its
        tables and anchor or records); opens and creates nothing."""
        db = StateDatabase(path)
        if db.path is not None:
            return db.path.exists()
        if not db.table_exists("audit_head"):
            return False
        with db.read() as conn:
            anchored = conn.execute(sa.select(_HEAD.c.id)).first() is not None
            return anchored or conn.execute(sa.select(_AUDIT.c.seq).limit(1)).first() is not None

    # -- the head anchor -------------------------------------------------------------------

    def _lock_chain(self, conn: sa.Connection) -> None:
        """Hold the chain's head for this write transaction, so two writers cannot both extend
        record n and fork the chain: the anchor row's lock on PostgreSQL; on SQLite the write
        transaction (BEGIN IMMEDIATE) holds the file already and FOR UPDATE is not rendered."""
        conn.execute(sa.select(_HEAD.c.id).where(_HEAD.c.id == _HEAD_ROW).with_for_update())

    def _read_head(self) -> tuple[int, str] | None:
        """The anchor's (records, hash), None if it is missing; AuditError if unreadable."""
        raw = self._read_head_raw()
        return None if raw is None else (raw[0], raw[1])

    def _read_head_raw(self, conn: sa.Connection | None = None) -> tuple[int, str, str | None] | None:
        """The anchor's (records, hash, mac or None); None if missing; AuditError if unreadable.
        A row anchor is read in ``conn``'s transaction when given."""
        if self.head_path is None:
            if conn is None:
                with self.db.read() as own:
                    return self._read_head_raw(own)
            row = conn.execute(
                sa.select(_HEAD.c.records, _HEAD.c.hash, _HEAD.c.mac).where(_HEAD.c.id == _HEAD_ROW)
            ).first()
            return None if row is None else (int(row.records), str(row.hash), row.mac)
        try:
            text = self.head_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        try:
            head = json.loads(text)
            mac = head.get("mac")
            return int(head["records"]), str(head["hash"]), None if mac is None else str(mac)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise AuditError(
                f"head anchor {self.head_where} is unreadable: {text[:200]!r}; expected "
                '{"records": <int>, "hash": "<sha256>"}'
            ) from err

    def _signature_problem(self, records: int, head_hash: str, mac: str | None) -> str | None:
        """What is wrong with the anchor's signature for this process, or None.

        With a key: the anchor must be signed with it. Without one: a signed anchor must not be
        overwritten unsigned (that would silently drop the protection), so it is a problem for
        appends; verify() only reports it as unchecked.
        """
        if self._key is None:
            if mac is not None:
                return (
                    f"head anchor {self.head_where} is signed, but this process has no audit key "
                    f"to check it (set {KEY_ENV} or {KEY_FILE_ENV})"
                )
            return None
        if mac is None:
            return (
                f"head anchor {self.head_where} is not signed, but an audit key is configured "
                "(anchor replaced by someone without the key, or written before the key was "
                "set: check the trail, then call sign_head())"
            )
        if not hmac.compare_digest(mac, head_mac(self._key, records, head_hash)):
            return (
                f"head anchor {self.head_where} has a signature that does not match the audit "
                "key (anchor forged, or signed with another key)"
            )
        return None

    def head(self) -> tuple[int, str] | None:
        """The head anchor's (records, hash), None if it is missing."""
        return self._read_head()

    def head_is_signed(self) -> bool:
        """Whether the head anchor carries a signature, checked or not (False if it is missing)."""
        raw = self._read_head_raw()
        return raw is not None and raw[2] is not None

    def record_hash(self, seq: int) -> str | None:
        """The stored hash of record ``seq``, None if there is no such record."""
        with self.db.read() as conn:
            return conn.execute(sa.select(_AUDIT.c.hash).where(_AUDIT.c.seq == seq)).scalar_one_or_none()

    def sign_head(self) -> VerifyResult:
        """Sign the current head with the key, after verifying the chain; for a trail written
        before the key was configured. Refused when the chain does not verify, since signing
        would vouch for whatever is there."""
        if self._key is None:
            raise AuditError(f"no audit key to sign with; set {KEY_ENV} or {KEY_FILE_ENV}")
        with self.db.write() as conn:
            self._lock_chain(conn)
            result, _ = self._verify_chain_and_head(check_signature=False)
            if not result.ok:
                raise AuditError(
                    f"refusing to sign the head of {self.db.shown}: record {result.first_bad_seq}: {result.problem}"
                )
            raw = self._read_head_raw(conn)
            records, head_hash = (raw[0], raw[1]) if raw else (0, GENESIS)
            self._write_head(records, head_hash, conn, create=raw is None)
        return self.verify()

    def _check_head(self, conn: sa.Connection) -> tuple[int, str]:
        """The anchor, after checking it names the log's last record.

        Appending over a log whose tail was cut would re-anchor it and hide the cut for good, so
        a disagreement stops the append; only a person who has looked (verify) can resolve it.
        """
        last = conn.execute(sa.select(_AUDIT.c.seq, _AUDIT.c.hash).order_by(_AUDIT.c.seq.desc()).limit(1)).first()
        actual = (last.seq, last.hash) if last else (0, GENESIS)
        raw = self._read_head_raw(conn)
        head = None if raw is None else (raw[0], raw[1])
        if raw is not None:
            problem = self._signature_problem(*raw)
            if problem:
                # Without the key, a signed anchor asks for the key to be set, not for the trail to be repaired.
                refused = AuditKeyError if self._key is None else AuditError
                raise refused(f"refusing to append to {self.db.shown}: {problem}")
        if head != actual:
            found = "is missing" if head is None else f"records {head[0]} (hash {head[1][:12]}...)"
            raise AuditError(
                f"refusing to append to {self.db.shown}: the log ends at record {actual[0]} "
                f"(hash {actual[1][:12]}...) but its head anchor {found}; run verify() to see "
                "what was removed"
            )
        return head

    def check_appendable(self) -> None:
        """Raise :class:`AuditError` when :meth:`append` would refuse a record now: the head
        anchor unreadable, missing or not naming the last record, or signed otherwise than this
        process signs (:class:`AuditKeyError` where it is signed and this process has no key).
        Writes nothing: a caller checks this before a change (a request stored, an alias moved, a
        version computed) whose record the trail would then refuse. Holds the chain as an append
        does, so an append in progress is not mistaken for a cut."""
        with self.db.write() as conn:
            self._lock_chain(conn)
            self._check_head(conn)

    def _write_head(
        self, records: int, head_hash: str, conn: sa.Connection | None = None, *, create: bool = False
    ) -> None:
        """Replace the anchor atomically: a reader sees the old one or the new one, never half.
        A row anchor is written in ``conn``'s transaction (``create``: the row may be missing)."""
        head: dict[str, Any] = {"records": records, "hash": head_hash}
        if self._key is not None:
            head["mac"] = head_mac(self._key, records, head_hash)
        if self.head_path is None:
            assert conn is not None, "a row anchor is written in the caller's transaction"
            values = {"records": records, "hash": head_hash, "mac": head.get("mac")}
            if conn.execute(sa.update(_HEAD).where(_HEAD.c.id == _HEAD_ROW).values(**values)).rowcount or not create:
                return
            try:
                with conn.begin_nested():
                    conn.execute(sa.insert(_HEAD).values(id=_HEAD_ROW, **values))
            except IntegrityError:
                pass  # another process opening the new trail at once anchored it first
            return
        tmp = self.head_path.with_name(f"{self.head_path.name}.tmp-{os.getpid()}")
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(_canonical(head))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.head_path)

    # -- writing ---------------------------------------------------------------------------

    def append(
        self,
        event: str,
        *,
        actor: str,
        payload: dict[str, Any],
        request_ids: Sequence[str] = (),
        idempotency_key: str | None = None,
    ) -> AuditRecord:
        """Append one record and return it as stored.

        With an ``idempotency_key`` already in the log, the existing record is returned and
        nothing is written, so a retried batch does not duplicate its records; reusing a key for
        a different event is a caller bug and raises :class:`AuditError`.
        """
        _check_text("event", event)
        _check_text("actor", actor)
        if not isinstance(payload, dict):
            raise AuditError(f"payload must be a dict, got {type(payload).__name__}: {payload!r}")
        if isinstance(request_ids, (str, bytes)) or not all(isinstance(r, str) and r for r in request_ids):
            raise AuditError(f"request_ids must be a sequence of non-empty strings, got {request_ids!r}")
        if idempotency_key is not None:
            _check_text("idempotency_key", idempotency_key)
        problem = _payload_problem(payload, "payload")
        if problem:
            raise AuditError(f"event {event!r}: {problem}")
        try:
            # Round-trip, so the record returned equals the one records() will read back
            # (tuples become lists) and its hash is over exactly that.
            payload = json.loads(_canonical(payload))
        except (TypeError, ValueError) as err:
            raise AuditError(f"payload of event {event!r} is not JSON-serialisable: {err}") from err
        request_ids = tuple(request_ids)

        head: tuple[int, str] | None = None
        try:
            with self.db.write() as conn:
                self._lock_chain(conn)
                record = self._existing(conn, idempotency_key, event)
                if record is None:
                    previous = self._check_head(conn)
                    record = self._insert(conn, event, actor, payload, request_ids, idempotency_key)
                    # Written while we hold the write lock, so anchors follow chain order. A row
                    # anchor commits with the record; a file anchor is put back below should the
                    # commit fail, and only a crash in the instant between the two leaves it one
                    # record ahead (verify reports that).
                    self._write_head(record.seq, record.hash, conn)
                    head = previous
        except BaseException:
            if head is not None and self.head_path is not None:
                self._write_head(*head)
            raise
        return record

    def _existing(self, conn: sa.Connection, idempotency_key: str | None, event: str) -> AuditRecord | None:
        if idempotency_key is None:
            return None
        row = conn.execute(sa.select(_AUDIT).where(_AUDIT.c.idempotency_key == idempotency_key)).mappings().first()
        if row is None:
            return None
        existing = _parse_row(row)
        if existing.event != event:
            raise AuditError(
                f"idempotency_key {idempotency_key!r} already belongs to record {existing.seq} "
                f"(event {existing.event!r}), not to event {event!r}"
            )
        return existing

    def _insert(
        self,
        conn: sa.Connection,
        event: str,
        actor: str,
        payload: dict[str, Any],
        request_ids: tuple[str, ...],
        idempotency_key: str | None,
    ) -> AuditRecord:
        """Insert the next record after the current head; the caller holds the write lock."""
        last = conn.execute(sa.select(_AUDIT.c.seq, _AUDIT.c.hash).order_by(_AUDIT.c.seq.desc()).limit(1)).first()
        seq, prev_hash = (last.seq + 1, last.hash) if last else (1, GENESIS)
        ts = _now()
        digest = _record_hash(seq, ts, event, actor, request_ids, payload, idempotency_key, prev_hash)
        conn.execute(
            sa.insert(_AUDIT).values(
                seq=seq,
                ts=ts,
                event=event,
                actor=actor,
                request_ids=_canonical(list(request_ids)),
                payload=_canonical(payload),
                idempotency_key=idempotency_key,
                prev_hash=prev_hash,
                hash=digest,
            )
        )
        return AuditRecord(seq, ts, event, actor, request_ids, payload, idempotency_key, prev_hash, digest)

    # -- reading ---------------------------------------------------------------------------

    def records(self, *, request_id: str | None = None, event: str | None = None) -> list[AuditRecord]:
        """Records in seq order; only those naming ``request_id`` and/or of kind ``event``."""
        query = sa.select(_AUDIT).order_by(_AUDIT.c.seq)
        if request_id is not None:
            # The JSON text narrows the rows in the database (the same statement on every
            # backend); the exact match is on the parsed list below.
            query = query.where(_AUDIT.c.request_ids.contains(_canonical(request_id), autoescape=True))
        if event is not None:
            query = query.where(_AUDIT.c.event == event)
        with self.db.read() as conn:
            rows = conn.execute(query).mappings().all()
        records = [_parse_row(row) for row in rows]
        return [r for r in records if request_id is None or request_id in r.request_ids]

    def recorded_keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` that a stored record carries as its idempotency key. Read through the
        key's unique index: the cost follows ``len(keys)``, not the trail's length."""
        wanted = list(dict.fromkeys(keys))
        found: set[str] = set()
        with self.db.read() as conn:
            for start in range(0, len(wanted), VALUES_PER_QUERY):
                chunk = wanted[start : start + VALUES_PER_QUERY]
                query = sa.select(_AUDIT.c.idempotency_key).where(_AUDIT.c.idempotency_key.in_(chunk))
                found.update(conn.execute(query).scalars())
        return found

    def verify(self) -> VerifyResult:
        """Walk the chain from record 1 and check the head anchor; report the first problem and
        every later one.

        Per record: its content must hash to its ``hash`` (else edited, or moved to another
        seq), its ``seq`` must follow the previous one (else records are missing), and its
        ``prev_hash`` must be the previous record's hash (else records were deleted, inserted or
        reordered, or the previous one was edited and re-hashed). Then the anchor must record
        the same number of records and the same last hash (else records were cut from the end),
        and, with a key, carry its HMAC (else the anchor was rewritten without the key).
        """
        return self._verify_chain_and_head(check_signature=True)[0]

    def verify_and_read(self) -> tuple[VerifyResult, list[AuditRecord] | AuditError]:
        """:meth:`verify`'s result and the records it walked, from one read of the trail (a
        caller that needs both reads and parses it once): every record in seq order, as
        :meth:`records` returns them, or, when one cannot be read as a record, the
        :class:`AuditError` that :meth:`records` would raise (the result names it too)."""
        return self._verify_chain_and_head(check_signature=True)

    def _verify_chain_and_head(self, *, check_signature: bool) -> tuple[VerifyResult, list[AuditRecord] | AuditError]:
        # One snapshot for the records and a row anchor: an append committing in between would
        # otherwise look like records cut from the end.
        with self.db.read(snapshot=True) as conn:
            rows = conn.execute(sa.select(_AUDIT).order_by(_AUDIT.c.seq)).mappings().all()
            row_head = None if self.head_path is not None else self._read_head_raw(conn)
        count = len(rows)
        problems: list[tuple[int, str]] = []
        walked: list[AuditRecord] = []
        unreadable: AuditError | None = None

        # Where each stored hash sits now: a record moved keeps its own hash and its link to the
        # record written before it, which name the place it was written at.
        seq_of = {str(row["hash"]): row["seq"] for row in rows}
        expected_seq, prev_hash = 1, GENESIS
        for row in rows:
            seq = row["seq"]
            # After a problem the walk resynchronises on what is stored: the next record links to
            # this one's stored hash, so a single edit is reported once, not for every record after it.
            try:
                record = _parse_row(row)
            except AuditError as err:
                problems.append((seq, f"{err} (edited?)"))
                unreadable = unreadable or err
                expected_seq, prev_hash = seq + 1, str(row["hash"])
                continue
            walked.append(record)
            recomputed = _record_hash(
                record.seq,
                record.ts,
                record.event,
                record.actor,
                record.request_ids,
                record.payload,
                record.idempotency_key,
                record.prev_hash,
            )
            if recomputed != record.hash:
                written_at = _written_at(record, seq_of)
                why = (
                    f": it is record {written_at} as written, moved (records reordered)"
                    if written_at is not None
                    else " (edited, or moved from another position?)"
                )
                problems.append((seq, f"record {seq}: content does not match its hash{why}"))
            if seq != expected_seq:
                if expected_seq == 1:
                    where = f"the log starts at record {seq}"
                else:
                    where = f"the log jumps from record {expected_seq - 1} to record {seq}"
                missing = f"record {expected_seq}" if seq == expected_seq + 1 else f"records {expected_seq}-{seq - 1}"
                verb = "is" if seq == expected_seq + 1 else "are"
                problems.append((expected_seq, f"{missing} {verb} missing: {where} (deleted?)"))
            elif record.prev_hash != prev_hash:  # after a gap the link is broken by the gap itself
                previous = "the genesis hash" if seq == 1 else f"record {seq - 1}"
                linked = seq_of.get(record.prev_hash)
                why = (
                    f": it links to the record now at {linked} (records reordered)"
                    if linked is not None and linked != seq - 1
                    else " (records deleted, inserted or reordered, or the one before edited and re-hashed?)"
                )
                problems.append((seq, f"record {seq}: prev_hash does not match {previous}{why}"))
            expected_seq, prev_hash = seq + 1, record.hash

        last_seq = rows[-1]["seq"] if rows else 0  # not the count: middle records may be missing
        problems += self._head_problems(last_seq, prev_hash, row_head, check_signature=check_signature)
        read = walked if unreadable is None else unreadable
        if problems:
            (first_seq, first_problem), *later = problems
            failed = VerifyResult(
                ok=False,
                records=count,
                first_bad_seq=first_seq,
                problem=first_problem,
                later_problems=tuple(later),
            )
            return failed, read
        passed = VerifyResult(
            ok=True,
            records=count,
            first_bad_seq=None,
            problem=None,
            signed=check_signature and self._key is not None,
        )
        return passed, read

    def _head_problems(
        self,
        last_seq: int,
        last_hash: str,
        row_head: tuple[int, str, str | None] | None,
        *,
        check_signature: bool,
    ) -> list[tuple[int, str]]:
        """What is wrong with the head anchor against a log whose last record is ``last_seq``, with hash
        ``last_hash``: at most one problem, since a missing or forged anchor says nothing more."""
        try:
            raw = row_head if self.head_path is None else self._read_head_raw()
        except AuditError as err:
            return [(last_seq + 1, str(err))]
        if raw is None:
            return [(last_seq + 1, f"head anchor {self.head_where} is missing (deleted?)")]
        head_records, head_hash, mac = raw
        # Checked before the numbers: a forged anchor's numbers mean nothing.
        if check_signature and self._key is not None:
            problem = self._signature_problem(head_records, head_hash, mac)
            if problem:
                return [(last_seq + 1, problem)]
        if head_records > last_seq:
            return [
                (
                    last_seq + 1,
                    f"log ends at record {last_seq} but the head anchor records {head_records} "
                    "(records removed from the end?)",
                )
            ]
        if head_records < last_seq:
            return [
                (
                    head_records + 1,
                    f"log ends at record {last_seq} but the head anchor records {head_records} "
                    f"(records from {head_records + 1} on written around append(), "
                    "or the anchor rolled back?)",
                )
            ]
        if head_hash != last_hash:
            return [(last_seq, f"record {last_seq}: hash does not match the head anchor (last record replaced?)")]
        return []
