"""The SQLite plumbing shared by the request store and the audit trail: connections that wait
for each other, explicit write transactions, and schema set-up with a version check.

Both files are written by several processes (the CLI filing a request while a batch runs), so
every connection waits on locks instead of failing, every write takes the lock up front
(``BEGIN IMMEDIATE``), and the file is in WAL mode so that readers never block the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

BUSY_TIMEOUT_MS = 30_000


def connect(path: Path) -> sqlite3.Connection:
    # isolation_level=None: no implicit transactions; writers issue BEGIN IMMEDIATE themselves.
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA synchronous = FULL")  # a committed write survives a power cut
    return conn


@contextmanager
def transaction(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction. IMMEDIATE takes the write lock before the first read, so a
    read-then-write (claim the pending requests, extend the chain from its head) cannot
    interleave with another process's."""
    with closing(connect(path)) as conn:
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")


def split_statements(script: str) -> list[str]:
    """Split a schema into statements; a trigger body's inner ``;`` belongs to the trigger."""
    statements, current = [], []
    for line in script.strip().splitlines():
        current.append(line)
        joined = "\n".join(current).strip()
        if joined and sqlite3.complete_statement(joined):
            statements.append(joined)
            current = []
    return statements


def ensure_schema(path: Path, schema: str, version: int, error: type[Exception], what: str) -> None:
    """Create the file's tables (idempotent) in WAL mode, refusing a file of another schema
    version with ``error``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with closing(connect(path)) as conn:
        # The journal mode is a property of the file: setting it once here is enough.
        conn.execute("PRAGMA journal_mode=WAL")
    with transaction(path) as conn:
        found = conn.execute("PRAGMA user_version").fetchone()[0]
        if found not in (0, version):
            raise error(f"{path} holds {what} schema version {found}; this code expects version {version}")
        # executescript() would COMMIT this transaction, so run the statements one by one.
        for statement in split_statements(schema):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {version}")
