"""The one SQL database that holds deletion requests and the audit trail, embedded or shared.

By default each store is a SQLite file under the project's state directory, as before. With
``state.database_url`` (or ``UNSIR_STATE_DATABASE_URL``) set to a PostgreSQL URL, both live in
that database, so every checkout and worker pointed at the stack sees the same requests and
extends the same trail. The request store and the audit log run the same SQLAlchemy Core
statements on both; what differs is confined here (connections, locking) and to the
migrations.

Schema changes are Alembic migrations shipped in ``unsir_pipeline/adapters/migrations``, applied at open
(or alone, by ``unsir state migrate``) with a configuration built in code (no ``alembic.ini``).
Each store keeps its own revision (version table ``unsir_requests_schema`` /
``unsir_audit_schema``), so the two SQLite files each carry only their own tables. A SQLite
file written before the migrations existed (``PRAGMA user_version = 1``) is stamped at the
baseline revision, whose schema is that one; opened read-only, it is read as that revision,
unstamped.

Write transactions serialise the read-then-write steps (claim the pending requests, extend the
chain from its head): on SQLite every write transaction is ``BEGIN IMMEDIATE`` (one writer at a
time, across processes); on PostgreSQL the statements take row locks (``FOR UPDATE``, ``SKIP
LOCKED`` for claims), and migrations hold an advisory lock.

A store opened ``read_only`` (the commands that only read: ``unsir audit verify``, ``audit show``,
``request list``) neither migrates nor writes, so an auditor can check a read-only copy of the
state, or the shared database with a role that may only SELECT; see
:func:`sqlite_read_only_uri` for how a SQLite file is opened then. On PostgreSQL its
transactions are READ ONLY, so the server refuses a write as SQLite's read-only URI does.
Such a store must be at this code's head revision, or at an older one from which every
migration to the head declares ``READ_COMPATIBLE = True`` in its script: it leaves what this
code reads as it was (requests_0002 only widens a check), so the copy is read unmigrated. Any
other revision (a newer or unknown one, or an older one behind a migration not so declared) is
refused, naming it: :class:`StateSchemaRefused`.

A write the server refuses to the configured role or server (a role that may only SELECT, a
read-only standby), or a SQLite file this user may not write (its permissions, a read-only
mount), is :class:`StateWriteRefused`, naming the database and what a write needs; the
transaction is rolled back, so nothing of it is written.
"""

from __future__ import annotations

import functools
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import NullPool

from unsir_pipeline.settings.database_url import DatabaseURLError, parse_database_url

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
STORES = ("requests", "audit")
# Values bound per `IN (...)` statement: below SQLite's oldest limit on bound parameters (999).
VALUES_PER_QUERY = 500
# The schema files of this layout carried before Alembic (PRAGMA user_version).
LEGACY_SQLITE_VERSION = 1
# Serialises migrations of one PostgreSQL database (pg_advisory_xact_lock key: "unsir" in hex).
_MIGRATION_LOCK_KEY = 0x756E736972
# Other read-then-insert steps a row lock cannot serialise (there is no row yet to lock).
_LOCK_KEYS = {"intake": _MIGRATION_LOCK_KEY + 1}


class StateError(ValueError):
    """The state database's URL is malformed, it cannot be reached, or it holds a schema this
    code does not know; the message names the database (never its password)."""


class StateSchemaRefused(StateError):
    """The database holds a schema revision this code does not open so: an older one that a
    command that only reads cannot read as it is, or one this code does not know (written by a
    newer version). The copy or the code is at the wrong revision, not the pipeline at fault."""


class StateWriteRefused(StateError):
    """The database refused a write to the role or server the configuration names (a role that
    may only SELECT, a read-only standby), or the SQLite file is read-only to this user: the
    configuration or the copy is wrong, not the pipeline."""


class StateFileDamaged(StateError):
    """A SQLite state file that is not a database or whose pages are damaged (overwritten, cut
    short by a full disk or a bad copy): the copy on disk is at fault, and only a backup can
    restore it."""


# SQLSTATEs of a write refused by the database's configuration, and what a write needs instead.
_WRITE_NEEDS = {
    "42501": (  # insufficient_privilege
        "a database role with INSERT and UPDATE rights on the state tables (state.database_url or "
        "UNSIR_STATE_DATABASE_URL): run the command as a role that has them"
    ),
    "25006": (  # read_only_sql_transaction: a standby, or default_transaction_read_only
        "a server and role whose transactions may write (state.database_url or UNSIR_STATE_DATABASE_URL): "
        "the primary, not a standby, and no default_transaction_read_only"
    ),
}


# What a write to a SQLite file this user may not write needs instead.
_SQLITE_WRITE_NEEDS = (
    "a SQLite file this user may write, in a directory it may write: this one is read-only here (its "
    "permissions, or a read-only mount or copy); the commands that only read (`audit verify`, `request "
    "list`) read it as it is"
)


_ENGINES: dict[tuple[str, bool, int], Engine] = {}


def _engine(url: URL, *, read_only: bool = False) -> Engine:
    """One engine per database, mode and process (a pool must not cross ``fork``)."""
    key = (url.render_as_string(hide_password=False), read_only, os.getpid())
    if key not in _ENGINES:
        if url.get_backend_name() == "sqlite":
            # No pool: a connection kept open would outlive a file that was deleted and made
            # again (the tamper tests, a reset project); opening a SQLite file costs microseconds.
            timeout = BUSY_TIMEOUT_MS / 1000
            if read_only:
                # The URI is chosen at each connection, against the files as they are then.
                path = Path(url.database or "")
                engine = sa.create_engine(
                    "sqlite://",
                    poolclass=NullPool,
                    creator=lambda: sqlite3.connect(sqlite_read_only_uri(path), uri=True, timeout=timeout),
                )
            else:
                engine = sa.create_engine(url, poolclass=NullPool, connect_args={"timeout": timeout})
            sa.event.listen(engine, "connect", _sqlite_connect)
            sa.event.listen(engine, "begin", _sqlite_begin)
        else:
            # Read-only, every transaction is READ ONLY: the server refuses a write whatever the
            # code does, as SQLite's mode=ro does.
            engine = sa.create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"connect_timeout": CONNECT_TIMEOUT_S},
                execution_options={"postgresql_readonly": True} if read_only else {},
            )
        _ENGINES[key] = engine
    return _ENGINES[key]


def sqlite_read_only_uri(path: Path) -> str:
    """The URI that opens the SQLite file ``path`` for reading alone, wherever it lies.

    ``mode=ro``: SQLite refuses every write, root's included. A file in WAL mode (ours are) is
    read through its ``-shm`` index, which SQLite makes beside the file when the directory is
    writable, or reads as it is when it was copied along with its ``-wal``. In a directory
    nobody may write (an auditor's read-only copy), without them, the file is opened
    ``immutable``: no index and no locks. That is safe only because nothing can write the
    file there; on a file something may write, immutable could read a half-written page, so
    it is never used where the directory is writable. Raises :class:`StateError` for a
    ``-wal`` that holds commits the copy cannot read without its ``-shm``.
    """
    wal, shm = (path.with_name(path.name + suffix) for suffix in ("-wal", "-shm"))
    uri = f"{path.as_uri()}?mode=ro"
    if os.access(path.parent, os.W_OK) or (wal.exists() and shm.exists()):
        return uri
    if wal.exists() and wal.stat().st_size > 0:
        raise StateError(
            f"cannot read the state database {path}: its {wal.name} holds commits, but there is no {shm.name} "
            "and the directory is not writable; copy the database with both files, or into a writable directory"
        )
    return f"{uri}&immutable=1"


def _sqlite_connect(dbapi_connection, _record) -> None:
    # No implicit transactions from the driver: _sqlite_begin issues BEGIN itself.
    dbapi_connection.isolation_level = None
    dbapi_connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    dbapi_connection.execute("PRAGMA synchronous = FULL")  # a committed write survives a power cut


def _sqlite_begin(conn: Connection) -> None:
    # IMMEDIATE takes the write lock before the first read, so a read-then-write cannot
    # interleave with another process's; reads take no lock (WAL: they never block the writer).
    immediate = conn.get_execution_options().get("unsir_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


class StateDatabase:
    """A SQLite file or a database URL, with its engine, transactions and migrations.

    Holds no connection: each transaction takes one (from the pool on PostgreSQL), so an
    instance may be shared across threads and survives ``fork``.
    """

    def __init__(self, target: Path | str, *, read_only: bool = False) -> None:
        """``read_only``: never write, migrate or create; a SQLite file is opened through
        :func:`sqlite_read_only_uri`, a PostgreSQL database in READ ONLY transactions."""
        self.read_only = read_only
        if isinstance(target, Path):
            self.url = URL.create("sqlite", database=str(target.resolve()))
        else:
            try:
                self.url = parse_database_url(target)
            except DatabaseURLError as err:
                raise StateError(str(err)) from None
        self.path = Path(self.url.database) if self.is_sqlite and self.url.database else None
        # What messages show: the file, or the URL without its password.
        self.shown = str(self.path) if self.path else self.url.render_as_string(hide_password=True)

    @property
    def is_sqlite(self) -> bool:
        return self.url.get_backend_name() == "sqlite"

    @property
    def engine(self) -> Engine:
        return _engine(self.url, read_only=self.read_only)

    def __repr__(self) -> str:
        return f"StateDatabase({self.shown!r})"

    # -- transactions ----------------------------------------------------------------------

    @contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, committed at the end and rolled back on any exception; a write
        the database's permissions refuse raises :class:`StateWriteRefused`."""
        if self.read_only:
            raise StateError(f"the state database {self.shown} was opened read-only; cannot write to it")
        with self._connect() as conn:
            conn.execution_options(unsir_write=True)
            try:
                with conn.begin():
                    yield conn
            except DBAPIError as err:
                if self.is_sqlite and sqlite_says_full(err.orig):  # SQLite's own words name no file
                    raise StateError(
                        f"cannot write to the state database {self.shown}: {_first_line(err)}{_no_space_hint(self)}"
                    ) from err
                if self.is_sqlite and is_locked_sqlite(err.orig):
                    raise StateError(self.locked_message(err)) from err
                needs = self._refused_write_needs(err)
                if needs is None:
                    raise
                raise StateWriteRefused(
                    f"cannot write to the state database {self.shown}: {_first_line(err)}; expected {needs}"
                ) from err

    def locked_message(self, err: DBAPIError) -> str:
        """A write that waited out SQLite's busy timeout: another process holds the file's write
        lock. SQLite's own words ("database is locked") name neither the file nor what to do."""
        return (
            f"cannot write to the state database {self.shown}: {_first_line(err)}: another process held its "
            f"write lock for {BUSY_TIMEOUT_MS / 1000:g} s (a command still writing, or a program left in a "
            f"transaction on it: `fuser {self.shown}` names it); nothing was written to it: run the command again "
            "once that process has finished or been stopped"
        )

    def _refused_write_needs(self, err: DBAPIError) -> str | None:
        """What a write needs that the database refused by its configuration, not by a fault;
        None for any other failure."""
        if not self.is_sqlite:
            return _WRITE_NEEDS.get(getattr(err.orig, "pgcode", None) or "")
        return _SQLITE_WRITE_NEEDS if is_read_only_sqlite(err.orig) else None

    def serialise(self, conn: Connection, step: str) -> None:
        """Hold ``step`` (a key of ``_LOCK_KEYS``) for the rest of ``conn``'s write transaction:
        one such transaction at a time. SQLite's write transaction holds the file already."""
        if not self.is_sqlite:
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK_KEYS[step]})

    @contextmanager
    def read(self, *, snapshot: bool = False) -> Iterator[Connection]:
        """One read transaction. With ``snapshot``, all its statements see the same committed
        state (PostgreSQL's REPEATABLE READ; a SQLite read transaction always does)."""
        with self._connect() as conn:
            if snapshot and not self.is_sqlite:
                conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                yield conn

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        try:
            conn = self.engine.connect()
        except DBAPIError as err:
            raise self.unreachable(err) from err
        with conn:
            yield conn

    @property
    def writable(self) -> bool:
        """Whether this user may write the SQLite file, and the directory SQLite keeps its -wal
        and -shm (or makes the file) in: False on a read-only copy or mount. A database server
        is taken as writable: only a write tells that its role may only SELECT."""
        if self.path is None:
            return True
        folder = self.path.parent
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent  # not made yet: the first write makes it in the nearest one that is
        return os.access(folder, os.W_OK) and (not self.path.exists() or os.access(self.path, os.W_OK))

    def unreachable(self, err: DBAPIError) -> StateError:
        detail = _first_line(err)
        if self.is_sqlite and sqlite_says_full(err.orig):
            return StateError(f"cannot open the state database {self.shown}: {detail}{_no_space_hint(self)}")
        if self.is_sqlite and is_damaged_sqlite(err.orig):
            return self.damaged(detail)
        if self.is_sqlite and is_locked_sqlite(err.orig):  # another process's lock, not the file's fault
            return StateError(self.locked_message(err))
        if not self.read_only and not self.writable:
            # A WAL file opened for writing in a directory this user may not write (a read-only
            # copy) fails at the open ("unable to open database file"), before any write.
            return StateWriteRefused(
                f"cannot write to the state database {self.shown}: {detail}; expected {_SQLITE_WRITE_NEEDS}"
            )
        expected = (
            f"a {'readable' if self.read_only else 'writable'} SQLite file"
            if self.is_sqlite
            else "a running PostgreSQL server that accepts these credentials and holds this database"
        )
        source = "" if self.is_sqlite else " (state.database_url or UNSIR_STATE_DATABASE_URL)"
        return StateError(f"cannot open the state database {self.shown}: {detail}; expected {expected}{source}")

    def damaged(self, detail: str) -> StateFileDamaged:
        return StateFileDamaged(
            f"cannot open the state database {self.shown}: {detail}; expected a "
            f"{'readable' if self.read_only else 'writable'} SQLite file (a damaged file: restore it from a backup)"
        )

    # -- schema ----------------------------------------------------------------------------

    def table_exists(self, name: str) -> bool:
        with self.read() as conn:
            return sa.inspect(conn).has_table(name)

    def revision(self, store: str) -> list[str]:
        """The revisions ``store``'s version table records (none before the first migration)."""
        table = version_table(store)
        with self.read() as conn:
            if not sa.inspect(conn).has_table(table):
                return []
            return list(conn.execute(sa.text(f"SELECT version_num FROM {table}")).scalars())

    def holds(self, store: str) -> bool:
        """Whether ``store``'s tables were ever created here (at any revision); creates nothing."""
        if self.path is not None and not self.path.exists():
            return False
        return self.table_exists(store) or self.table_exists(version_table(store))

    def found_revisions(self, store: str) -> tuple[list[str], bool]:
        """``store``'s revisions as its version table records them, read without writing. A store
        written before migrations were recorded (no version table, the baseline's layout) is at
        the baseline's, unstamped: then True, else False."""
        found = self.revision(store)
        if found or not self.table_exists(store):
            return found, False
        with self.read() as conn:
            return [self._legacy_revision(conn, store)], True

    def pending_migration(self, store: str) -> str:
        """The revision :meth:`migrate` would start from, read without writing (a dry run): as
        :meth:`migrate`, a revision this code does not know raises :class:`StateSchemaRefused`."""
        found, _ = self.found_revisions(store)
        self._refuse_unknown(store, found)
        return ", ".join(found)

    def _refuse_unknown(self, store: str, found: list[str]) -> None:
        head, known, _ = _revisions(store)
        unknown = [rev for rev in found if rev not in known]
        if unknown:
            raise StateSchemaRefused(
                f"{self.shown} holds {store} schema revision {unknown[0]!r}, which this code does not "
                f"know (written by a newer version?); this code expects revision {head!r}"
            )

    def migrate(self, store: str, error: type[Exception]) -> str | None:
        """Create or upgrade ``store``'s tables to this code's head revision, and return the
        revision they were at (None: created now).

        A database already at the head costs one query. A schema this code does not know (a
        newer revision, another layout) raises :class:`StateSchemaRefused`, naming what was found
        and expected; a migration Alembic cannot apply raises ``error``. Opened read-only, the
        schema is only checked: it must be at a revision this code reads (the head, or one the
        migrations since declare read-compatible; see the module docstring), else
        :class:`StateSchemaRefused`.
        """
        head, _, readable = _revisions(store)
        if self.read_only:
            # A store written before migrations were recorded is read as the baseline's layout,
            # unstamped (a write stamps it).
            found, legacy = self.found_revisions(store)
            self._refuse_unknown(store, found)
            if len(found) != 1 or found[0] not in readable:
                shown = " (the layout of a file from before migrations were recorded)" if legacy else ""
                raise StateSchemaRefused(
                    f"{self.shown} holds {store} schema revision {', '.join(found) or 'none'}{shown}, an older "
                    "one; a command that only reads does not migrate it: `unsir state migrate` brings it to this "
                    f"code's revision {head!r} (on a writable copy)"
                )
            return found[0]
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.revision(store) == [head]:
            return head
        if self.path is not None:
            self._sqlite_wal()
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.util import CommandError

        config = _alembic_config(store)
        try:
            with self.write() as conn:
                if not self.is_sqlite:  # two processes opening a new database at once
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
                current = MigrationContext.configure(
                    conn, opts={"version_table": version_table(store)}
                ).get_current_heads()
                self._refuse_unknown(store, list(current))
                config.attributes["connection"] = conn
                before = ", ".join(current) or None
                if not current and sa.inspect(conn).has_table(store):
                    before = self._legacy_revision(conn, store)
                    command.stamp(config, before)
                command.upgrade(config, f"{store}@head")
        except DBAPIError as err:
            raise self.unreachable(err) from err
        except CommandError as err:
            raise error(f"{self.shown}: cannot migrate the {store} schema to revision {head!r}: {err}") from err
        return before

    def _legacy_revision(self, conn: Connection, store: str) -> str:
        """The revision of a store written before migrations existed: only a SQLite file of the
        old layout (user_version 1) is adopted; anything else is refused, not guessed at."""
        what = "request" if store == "requests" else store
        found = conn.exec_driver_sql("PRAGMA user_version").scalar() if self.is_sqlite else None
        if found != LEGACY_SQLITE_VERSION:
            version = f"schema version {found}" if self.is_sqlite else "a table without a schema revision"
            raise StateSchemaRefused(
                f"{self.shown} holds {what} {version}; this code expects version {LEGACY_SQLITE_VERSION} "
                f"or a database migrated by this project (table {version_table(store)})"
            )
        return f"{store}_0001"

    def _sqlite_wal(self) -> None:
        # The journal mode is a property of the file, and cannot change inside a transaction.
        try:
            raw = self.engine.raw_connection()
        except DBAPIError as err:
            raise self.unreachable(err) from err
        try:
            driver = raw.driver_connection
            assert driver is not None  # a fresh connection from the pool is open
            driver.execute("PRAGMA journal_mode=WAL")
        except sqlite3.Error as err:  # the file is not a database, or not writable
            if is_damaged_sqlite(err):
                raise self.damaged(str(err)) from err
            raise StateError(f"cannot open the state database {self.shown}: {err}; expected a SQLite file") from err
        finally:
            raw.close()


def sqlite_says_full(err: BaseException | None) -> bool:
    """Whether SQLite found no space on the disk: for a page (SQLITE_FULL, "database or disk is
    full"), or for the ``-shm`` index a WAL file is read through (SQLITE_IOERR_SHMSIZE, "disk I/O
    error"), which even a read needs once the last connection has removed it."""
    code = getattr(err, "sqlite_errorcode", None)
    return _sqlite_primary_code(err) == sqlite3.SQLITE_FULL or code == sqlite3.SQLITE_IOERR_SHMSIZE


def _no_space_hint(db: StateDatabase) -> str:
    return f" (no space left on the disk that holds {db.path.parent if db.path else db.shown})"


def is_locked_sqlite(err: BaseException | None) -> bool:
    """Whether SQLite gave up waiting for a lock another connection holds (SQLITE_BUSY, "database
    is locked"; SQLITE_LOCKED is a conflict inside one connection, which no wait resolves)."""
    return _sqlite_primary_code(err) == sqlite3.SQLITE_BUSY


def is_read_only_sqlite(err: BaseException | None) -> bool:
    """Whether SQLite refused a write to a file, or its directory, this user may not write
    (permissions, an immutable attribute, a read-only mount or copy): SQLITE_READONLY."""
    return _sqlite_primary_code(err) == sqlite3.SQLITE_READONLY


def is_damaged_sqlite(err: BaseException | None) -> bool:
    """Whether SQLite said the file is not a database or its pages are damaged (overwritten,
    truncated by a full disk or a bad copy): nothing here can repair it."""
    return _sqlite_primary_code(err) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _sqlite_primary_code(err: BaseException | None) -> int | None:
    """SQLite's primary result code of ``err`` (the low byte of its extended code), or None for
    an error SQLite did not raise."""
    code = getattr(err, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _first_line(err: DBAPIError) -> str:
    """The driver's own message, without SQLAlchemy's statement and parameters."""
    return str(err.orig).strip().splitlines()[0] if err.orig is not None else str(err)


def version_table(store: str) -> str:
    return f"unsir_{store}_schema"


def head_revision(store: str) -> str:
    """The revision this code migrates ``store`` to."""
    return _revisions(store)[0]


@functools.cache
def _revisions(store: str) -> tuple[str, frozenset[str], frozenset[str]]:
    """``store``'s head revision, every revision of its branch, and those a read-only open reads:
    the head and each older one from which every migration to the head declares
    ``READ_COMPATIBLE = True``, from the shipped scripts."""
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(_alembic_config(store))
    head = script.get_revision(f"{store}@head").revision
    branch = list(script.iterate_revisions(head, "base"))  # the head first
    readable = {head}
    for migration in branch:
        declared = getattr(migration.module, "READ_COMPATIBLE", False) is True
        # Below a migration not so declared (or a merge of branches), nothing is read as it is.
        if not declared or not isinstance(migration.down_revision, str):
            break
        readable.add(migration.down_revision)
    return head, frozenset(rev.revision for rev in branch), frozenset(readable)


def _alembic_config(store: str):
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["version_table"] = version_table(store)
    return config
