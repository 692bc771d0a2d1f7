"""The grammar of a state database URL: what `state.database_url` may say.

Configuration validates the URL when params.yaml is read, before anything connects; the state
store (``unsir_pipeline.adapters.state_store``) parses it again to connect. Both use this
module, so configuration never reaches up into an adapter.
"""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import URL
from sqlalchemy.exc import ArgumentError

EXPECTED_URL = "postgresql://USER:PASSWORD@HOST:PORT/DATABASE (or sqlite:////absolute/path.sqlite)"
DRIVERS = {"postgresql": ("psycopg2", "psycopg"), "sqlite": ("pysqlite",)}


class DatabaseURLError(ValueError):
    """A state database URL that is malformed or names a database this code cannot use; the
    message shows the URL without its password."""


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***``; also for a URL SQLAlchemy cannot parse."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def parse_database_url(url: str) -> URL:
    """A validated database URL; PostgreSQL without a driver gets psycopg2 (the stack's)."""
    if not isinstance(url, str) or not url.strip():
        raise DatabaseURLError(f"state database URL must be a non-empty string, got {url!r}; expected {EXPECTED_URL}")
    try:
        parsed = sa.make_url(url)
    except ArgumentError:
        raise DatabaseURLError(f"state database URL {redact(url)!r} is not a URL; expected {EXPECTED_URL}") from None
    backend, driver = parsed.get_backend_name(), parsed.get_driver_name()
    if backend not in DRIVERS or ("+" in parsed.drivername and driver not in DRIVERS[backend]):
        raise DatabaseURLError(
            f"state database URL {redact(url)!r} names {parsed.drivername!r}; expected {EXPECTED_URL} "
            f"(drivers: {', '.join(d for ds in DRIVERS.values() for d in ds)})"
        )
    if backend == "postgresql":
        if not parsed.host or not parsed.database:
            raise DatabaseURLError(
                f"state database URL {redact(url)!r} lacks a host or a database name; expected {EXPECTED_URL}"
            )
        if "+" not in parsed.drivername:
            parsed = parsed.set(drivername="postgresql+psycopg2")
    elif not parsed.database or parsed.database == ":memory:" or not Path(parsed.database).is_absolute():
        raise DatabaseURLError(
            f"state database URL {redact(url)!r}: a SQLite URL must name an absolute file path; expected {EXPECTED_URL}"
        )
    return parsed
