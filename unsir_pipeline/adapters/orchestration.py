"""Prefect's machinery around our flows: the one module that talks to it (the flows and tasks use
only its decorators, its run context and its logging).

- Its temporary (ephemeral) server: ``PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS``
  (Prefect's own setting; Prefect's default is 20 s, ours 120 s). When it still does not start,
  :func:`describe_startup_failure` gives the one line that names the fix, and
  :func:`start_prefect_server_early` starts it while the command imports its flow;
  :func:`stop_prefect_server` stops it when a signal ends the command.
- Its run-history database (the temporary server's SQLite file): one the server cannot open or
  migrate is named, with the command that moves it aside (:class:`PrefectDatabaseUnusable`),
  rather than reported as a start-up timeout; a Prefect home that cannot be written, or on a
  nearly full disk, is refused before the server starts (:func:`require_writable_prefect_home`).
- Its console (Prefect's INFO lines and its tracebacks kept off it) and its engine's SIGTERM
  handler, which must still leave the stop for :mod:`unsir_pipeline.settings.runtime` to see.
- Its global concurrency limits, taken as locks that reach every machine using the same Prefect
  server (:func:`global_lock`; which lock is needed when is ``governance.locks``'s to decide).

Like :mod:`unsir_pipeline.settings.runtime`, this module imports only the standard library when
it loads: the command line imports it at start-up, and :func:`configure_prefect` must set
Prefect's variables before Prefect is imported, since it reads them then. Prefect itself is
imported inside the functions that need it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NoReturn

from unsir_pipeline.settings.runtime import RuntimeSettingError, remember_terminated

if TYPE_CHECKING:
    from prefect.server.api.server import SubprocessASGIServer

PREFECT_STARTUP_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_PREFECT_STARTUP_S = 120
# Prefect's first start migrates its SQLite database (2.6 MB written) and a batch run adds a few
# MB more. Cut short by a full disk, the migration stayed half-applied: every later start failed
# ("duplicate column name: state_timestamp"), retried until the start-up timeout and reported as
# "a busy machine?", even once space was freed. 64 MiB leaves ten runs' room.
PREFECT_HOME_MIN_FREE = 64 * 2**20
_PREFECT_TIMEOUT_MESSAGE = "Timed out while attempting to connect to ephemeral Prefect API server"
# Seconds a held slot of a global concurrency limit survives without renewal (Prefect renews it
# while its holder runs).
LEASE_S = 300


class GlobalLockRefused(RuntimeError):
    """The Prefect server refused a slot of a global concurrency limit, for another reason than
    another holder having it (that is ``global_lock`` yielding False)."""


class GlobalLockUnreadable(RuntimeError):
    """The configured Prefect server refused (401, 403, 500...) or did not answer the read of a
    global concurrency limit; the message is the one line naming the server and what to check
    (:func:`describe_server_refusal`, :func:`describe_unreachable_server`)."""


class PrefectDatabaseUnusable(Exception):
    """Prefect's run-history database (its temporary server's SQLite file) is not a database, or
    holds a schema the server cannot migrate (one left half-migrated by a full disk, or written
    by another Prefect version). Only Prefect's records of past runs are in it: moving it aside
    loses nothing of the project's, and the next start makes a new one."""


def configure_prefect(*, quiet_console: bool) -> None:
    """A start-up timeout for Prefect's temporary server that a busy machine can meet (an
    operator's value wins), and, with ``quiet_console``, Prefect's INFO lines kept off the
    console (``--json`` output and progress lines replace them)."""
    raw = os.environ.get(PREFECT_STARTUP_ENV, "").strip()
    if raw and not raw.isdigit():
        raise RuntimeSettingError(f"{PREFECT_STARTUP_ENV}={raw!r}: expected a whole number of seconds, e.g. 300")
    os.environ.setdefault(PREFECT_STARTUP_ENV, str(DEFAULT_PREFECT_STARTUP_S))
    if quiet_console:
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_FLOW_RUNS_LEVEL", "WARNING")
        os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_TASK_RUNS_LEVEL", "WARNING")


def describe_startup_failure(err: BaseException) -> str | None:
    """The one line naming the fix when Prefect's temporary server did not start; else None."""
    if _PREFECT_TIMEOUT_MESSAGE not in str(err):
        return None
    timeout = os.environ.get(PREFECT_STARTUP_ENV, str(DEFAULT_PREFECT_STARTUP_S))
    return (
        f"Prefect's temporary server did not answer within {timeout}s (a busy machine?): raise "
        f"{PREFECT_STARTUP_ENV} (e.g. =300), or start one with `prefect server start` and set "
        "PREFECT_API_URL=http://127.0.0.1:4200/api"
    )


def describe_unreachable_server(err: BaseException) -> str | None:
    """The one line naming the configured Prefect server and what to check when it did not
    answer (httpx's "All connection attempts failed", anywhere in ``err``'s chain); else None."""
    found = _prefect_server_error(err, "TransportError")
    if found is None:
        return None
    url, cause = found
    reason = str(cause).strip() or type(cause).__name__
    return (
        f"cannot reach the Prefect server at {url} (PREFECT_API_URL): {reason}; check that it runs "
        "(`prefect server start`) and answers there, or correct PREFECT_API_URL in the environment or in "
        f"the active profile of {prefect_profiles_path()}"
    )


def describe_server_refusal(err: BaseException) -> str | None:
    """The one line naming the configured Prefect server, the HTTP status it answered and what to
    check, when it refused a request (401, 403, 404, 500...: Prefect passes on httpx's text, a
    status line and a link to MDN's page on the status, anywhere in ``err``'s chain); else None."""
    found = _prefect_server_error(err, "HTTPStatusError")
    if found is None:
        return None
    url, cause = found
    import httpx

    assert isinstance(cause, httpx.HTTPStatusError)  # as _prefect_server_error looked for
    status, request = cause.response.status_code, cause.request
    answered = f"{status} {cause.response.reason_phrase}".strip()
    profile = f"in the environment or in the active profile of {prefect_profiles_path()}"
    if status in (401, 403):
        check = (
            "check the credentials the client sends (PREFECT_API_AUTH_STRING, user:password, for a server started "
            f"with PREFECT_SERVER_API_AUTH_STRING; PREFECT_API_KEY for Prefect Cloud) {profile}"
        )
    elif status == 404:
        check = (
            "check that PREFECT_API_URL names the server's API (it ends in /api, e.g. http://127.0.0.1:4200/api) "
            f"and that the server is a Prefect 3 server; correct it {profile}"
        )
    elif status >= 500:
        check = "the server failed to answer: check the server's logs (and its database), then run the command again"
    else:
        check = (
            "check that the server runs a Prefect version this client speaks to "
            f"(the client is Prefect {_prefect_version()}) and the server's logs"
        )
    asked = f"{request.method} {request.url.path}"
    return f"the Prefect server at {url} (PREFECT_API_URL) answered {answered} to {asked}; {check}"


def _prefect_server_error(
    err: BaseException, httpx_error: Literal["TransportError", "HTTPStatusError"]
) -> tuple[str, BaseException] | None:
    """The configured server's URL and the first httpx error of the class named ``httpx_error``
    in ``err``'s chain, when that error's request went to the configured server; else None."""
    if "httpx" not in sys.modules:  # Prefect's client was never used: not its error
        return None
    import httpx

    kind: type[BaseException] = getattr(httpx, httpx_error)
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, kind):
            break
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    else:
        return None
    url = prefect_api_url()
    if url is None or cause is None:
        return None
    try:
        requested = str(cause.request.url)  # type: ignore[attr-defined]  # httpx's errors carry it
    except RuntimeError:  # an error raised before its request was set
        requested = url
    if not requested.startswith(url.rstrip("/")):
        return None  # another server's (MLflow's is reached with requests, but be sure)
    return url, cause


def _prefect_version() -> str:
    import prefect

    return str(prefect.__version__)


class _WithoutTraceback(logging.Formatter):
    """Formats a copy of each record without its traceback, with the handler's own formatter.
    The record itself is left whole: handlers after the console's still get the traceback."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info, bare.exc_text, bare.stack_info = None, None, None
        return self.inner.format(bare)


def console_without_tracebacks() -> None:
    """Prefect writes a failed task's and flow's traceback to the console, forty lines above the
    one line the command prints naming the error. Its console handler keeps the messages and
    drops the tracebacks (call after Prefect is imported; ``--debug`` skips it). Every other
    handler, the one sending the run's logs to the Prefect server included, gets them whole."""
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is None:
        return
    for handler in logging.getLogger().handlers:
        if isinstance(handler, handlers.PrefectConsoleHandler) and not isinstance(handler.formatter, _WithoutTraceback):
            handler.setFormatter(_WithoutTraceback(handler.formatter))


def remember_stops_prefect_catches() -> None:
    """While a flow runs, Prefect's engine puts its own SIGTERM handler in place of ours. It hands
    the signal back to ours only when its ``TerminationSignal`` reaches the top of the flow; a
    task that turns it into a crash of its own keeps it (seen: "Task run is not set", exit 1, and
    ``runtime.raise_if_stopped`` blind to the stop). Wrapping Prefect's handler remembers the stop
    either way. Call before running a flow; idempotent."""
    from prefect.utilities import engine

    prefects = engine._prefect_sigterm_handler
    if prefects is _remembering_prefect_sigterm:
        return

    global _prefects_sigterm_handler
    _prefects_sigterm_handler = prefects
    # Prefect installs and recognises its handler by this module attribute at each flow run.
    engine._prefect_sigterm_handler = _remembering_prefect_sigterm


_prefects_sigterm_handler: Callable[..., object] | None = None


def _remembering_prefect_sigterm(sig_num: int, *args: object) -> NoReturn:  # Prefect's signature
    remember_terminated()
    assert _prefects_sigterm_handler is not None  # set before this handler is installed
    _prefects_sigterm_handler(sig_num, *args)  # raises Prefect's TerminationSignal
    raise RuntimeError("Prefect's SIGTERM handler returned instead of raising")


def start_prefect_server_early() -> Callable[[], None]:
    """Start Prefect's temporary server now, in a thread, when no server is configured.

    The server is a child process that spends its start-up importing Prefect's server and
    migrating its database; meanwhile the command imports its flow and the flow's libraries
    instead of doing so after. The call returned waits until the server answers and raises what
    starting it raised (a time-out :func:`describe_startup_failure` names). Prefect's client then
    finds the server already started: there is one per process. Call only once the command's
    input has been checked, so that bad input still starts no server."""
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return lambda: None
    require_writable_prefect_home()
    database = _prefect_database()
    if database is not None:
        _require_usable_prefect_database(database)
    failure: list[BaseException] = []
    server = _server_that_outlives_no_one()

    def start() -> None:
        try:
            server.start()
        except BaseException as err:  # re-raised in the command's thread by wait()
            failure.append(err)

    thread = threading.Thread(target=start, name="prefect-server-start", daemon=True)
    thread.start()

    def wait() -> None:
        thread.join()
        if failure:
            # The server exits when it cannot migrate its database, and Prefect starts it again
            # until the time-out: the migration, made here, says why. The last server, perhaps
            # still migrating on a busy machine, is stopped first, so the two cannot collide.
            if database is not None and _PREFECT_TIMEOUT_MESSAGE in str(failure[0]):
                stop_prefect_server()
                _require_migratable_prefect_database(database)
            raise failure[0]

    return wait


def _server_that_outlives_no_one() -> SubprocessASGIServer:
    """Prefect's temporary server for this process (the one instance its client finds, as
    ``SubprocessASGIServer()``), started so that it ends when this process does, however it
    ends: a SIGKILL runs no clean-up here, and the server it started served on for good. The
    server's process watches for this one's death itself (:func:`_serve_while_parent_lives`),
    which no thread of ours need outlive (a parent-death signal is tied to the starting thread,
    which ends once the server answers)."""
    from prefect.server.api.server import SubprocessASGIServer

    class ParentWatchedServer(SubprocessASGIServer):
        def _run_uvicorn_command(self) -> subprocess.Popen[bytes]:
            # Prefect's own command (prefect.server.api.server), its uvicorn run by this module.
            import prefect
            from prefect.settings import get_current_settings

            server_env = {"PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
            uvicorn = ["--app-dir", str(prefect.__module_path__.parent), "--factory"]
            uvicorn += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
            uvicorn += ["--log-level", "error", "--lifespan", "on"]
            return subprocess.Popen(
                [sys.executable, "-m", __name__, str(os.getpid()), *uvicorn],
                env={
                    **os.environ,
                    **server_env,
                    **get_current_settings().to_environment_variables(exclude_unset=True),
                },
            )

    existing = SubprocessASGIServer._instances.get(None)
    if existing is not None:  # already made (and perhaps started) in this process
        return existing
    return ParentWatchedServer()


# How often the server's process looks for its parent, and how long it gives uvicorn to stop.
_PARENT_POLL_S = 0.5
_STOP_GRACE_S = 10.0


def _serve_while_parent_lives(parent: int, uvicorn_args: list[str]) -> None:
    """Run in the temporary server's own process: uvicorn with ``uvicorn_args``, stopped
    (SIGTERM, then SIGKILL after a grace) once process ``parent`` is no longer its parent: it
    died, and the server was handed to init or a subreaper."""
    import runpy
    import signal
    import time

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os.kill(os.getpid(), signal.SIGTERM)  # uvicorn's own graceful shutdown
        time.sleep(_STOP_GRACE_S)
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()
    sys.argv = ["uvicorn", *uvicorn_args]
    runpy.run_module("uvicorn", run_name="__main__", alter_sys=True)


def _prefect_database() -> Path | None:
    """The SQLite file the temporary server keeps its run history in (PREFECT_HOME/prefect.db
    unless PREFECT_API_DATABASE_CONNECTION_URL says otherwise); None for another database."""
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from sqlalchemy.engine import make_url

    url = make_url(PREFECT_API_DATABASE_CONNECTION_URL.value())
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _require_usable_prefect_database(database: Path) -> None:
    """Before the server starts: refuse a file that is not a SQLite database, whose schema
    revision this Prefect does not know, or whose due migration fails (tried on a copy). Its
    server would exit at each start, and Prefect would start it again until the time-out. A
    missing file, or one without tables, is the server's to make."""
    import sqlite3

    from unsir_pipeline.adapters.state_store import is_damaged_sqlite

    if not database.is_file():
        return
    try:
        with closing(sqlite3.connect(database)) as conn:
            tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            recorded: set[str] = set()
            if "alembic_version" in tables:  # none yet: nothing migrated, or the first migration cut short
                recorded = {revision for (revision,) in conn.execute("SELECT version_num FROM alembic_version")}
    except sqlite3.DatabaseError as err:
        if is_damaged_sqlite(err):
            raise PrefectDatabaseUnusable(_unusable(database, str(err))) from err
        raise
    migrations = _prefect_migrations()
    unknown = sorted(recorded - migrations.keys())
    if unknown:
        import prefect

        raise PrefectDatabaseUnusable(
            _unusable(
                database,
                f"its schema is at revision {', '.join(unknown)}, which Prefect {prefect.__version__} does not know "
                "(a newer Prefect wrote it?)",
            )
        )
    latest = migrations.keys() - {earlier for follows in migrations.values() for earlier in follows}
    if tables and len(latest) == 1 and recorded != latest:  # a migration is due: the server's first step
        _require_migratable_copy(database)


def _prefect_migrations() -> dict[str, set[str]]:
    """Every revision of Prefect's SQLite schema, with the revisions it follows, read from the
    ``revision = "..."`` and ``down_revision = ...`` lines of each migration it ships:
    milliseconds, where alembic's own reading of the scripts (which imports every one) cost over
    a second on each command start that finds a database."""
    import re

    import prefect

    versions = Path(prefect.__file__).parent / "server" / "database" / "_migrations" / "versions" / "sqlite"
    declared = re.compile(r"""^revision\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""", re.MULTILINE)
    follows = re.compile(r"^down_revision\b[^=\n]*=(.*)$", re.MULTILINE)  # None, "rev" or ("rev", "rev")
    quoted = re.compile(r"""["']([^"']+)["']""")
    migrations: dict[str, set[str]] = {}
    for script in versions.glob("*.py"):
        text = script.read_text()
        earlier = {revision for line in follows.findall(text) for revision in quoted.findall(line)}
        for revision in declared.findall(text):
            migrations[revision] = earlier
    return migrations


def _require_migratable_copy(database: Path) -> None:
    """Before the server starts, where a migration is due: make it on a copy of the database, as
    the server makes it first, and refuse the database with the error it gives. A migration a
    full disk cut short (its first statements committed, its revision not recorded) otherwise
    failed at each start of the server ("duplicate column name: state_timestamp") until the
    start-up timeout. Only when a migration is due (the first command after Prefect was upgraded):
    0.1 s for one migration, 4.4 s for 70 (measured on a loaded 2-core machine); the file itself is
    left as it is. Not where the server is told not to migrate at its start."""
    import asyncio
    import sqlite3
    import tempfile

    from prefect.server.database.configurations import AioSqliteConfiguration
    from prefect.server.database.dependencies import provide_database_interface, temporary_database_config
    from prefect.settings import PREFECT_API_DATABASE_MIGRATE_ON_START

    if not PREFECT_API_DATABASE_MIGRATE_ON_START.value():
        return
    with tempfile.TemporaryDirectory(prefix="unsir-prefect-db-") as scratch:
        copy = Path(scratch) / database.name
        try:
            with closing(sqlite3.connect(database)) as source, closing(sqlite3.connect(copy)) as target:
                source.backup(target)
        except (OSError, sqlite3.Error):  # no copy (no room for it, the file busy): the check made after a
            return  # failed start remains
        try:
            with temporary_database_config(AioSqliteConfiguration(connection_url=f"sqlite+aiosqlite:///{copy}")):
                asyncio.run(provide_database_interface().create_db())
        except Exception as err:  # whatever the migration raised is why the server would not start
            if _out_of_space(err):  # where the copy was made: no verdict on the database
                return
            raise PrefectDatabaseUnusable(_unusable(database, _could_not_migrate(err))) from err


def _out_of_space(err: BaseException) -> bool:
    return "database or disk is full" in str(err) or (isinstance(err, OSError) and err.errno == errno.ENOSPC)


def _could_not_migrate(err: BaseException) -> str:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"Prefect's server could not migrate it: {first}"


def _require_migratable_prefect_database(database: Path) -> None:
    """After the server did not start: migrate its database here, as the server does first, and
    refuse it with the error the migration gives (none: the server was only slow). Not where the
    server is told not to migrate at its start."""
    import asyncio

    from prefect.server.database import provide_database_interface
    from prefect.settings import PREFECT_API_DATABASE_MIGRATE_ON_START

    if not PREFECT_API_DATABASE_MIGRATE_ON_START.value():
        return
    try:
        asyncio.run(provide_database_interface().create_db())
    except Exception as err:  # whatever the migration raised is why the server could not start
        raise PrefectDatabaseUnusable(_unusable(database, _could_not_migrate(err))) from err


def _unusable(database: Path, problem: str) -> str:
    # Its -wal and -shm files go with it: a -wal left beside a new database would be read into it.
    aside = database.with_name(f"{database.stem}-moved-aside{database.suffix}")
    moves = [
        f"mv {shlex.quote(str(path))} {shlex.quote(str(target))}"
        for suffix in ("", "-wal", "-shm")
        if (path := database.with_name(database.name + suffix)).exists()
        for target in [aside.with_name(aside.name + suffix)]
    ]
    return (
        f"Prefect's run-history database {database} cannot be used: {problem}. It holds only Prefect's records "
        "of past flow runs (the deletion requests, the audit trail and the model registry are kept elsewhere and "
        f"are untouched): move it aside, and Prefect makes a new one at the next start: `{' && '.join(moves)}`"
    )


def require_writable_prefect_home() -> None:
    """Refuse a Prefect home this user cannot write, where the temporary server keeps its
    database (the project's state/prefect unless PREFECT_HOME says otherwise). On a read-only
    copy the server started anyway and the command ended once the flow ran, with hundreds of
    lines of the server's tracebacks and "500 Internal Server Error". Refuse one on a disk
    nearly full too (``PREFECT_HOME_MIN_FREE``). Nothing to check where PREFECT_API_URL names
    a server: no temporary server is started then."""
    from prefect.settings import PREFECT_API_URL, PREFECT_HOME

    if PREFECT_API_URL.value():
        return
    home = PREFECT_HOME.value()
    try:
        home.mkdir(parents=True, exist_ok=True)
        writable = os.access(home, os.W_OK)
    except OSError:
        writable = False
    if not writable:
        raise RuntimeSettingError(
            f"PREFECT_HOME={home}: Prefect's temporary server keeps its database there, and this user cannot "
            "write it (a read-only copy or mount?); expected a directory this user may write, or PREFECT_API_URL "
            "naming a Prefect server. The commands that only read (`audit verify`, `request list`) start no Prefect"
        )
    free = shutil.disk_usage(home).free
    if free < PREFECT_HOME_MIN_FREE:
        raise RuntimeSettingError(
            f"PREFECT_HOME={home}: no space left for Prefect's temporary server's database ({free // 1024} KiB "
            f"free on its disk; expected at least {PREFECT_HOME_MIN_FREE // 2**20} MiB): free space there, or set "
            "PREFECT_API_URL to a Prefect server"
        )


def stop_prefect_server() -> None:
    """Stop Prefect's temporary server if this process started one, now rather than at exit
    (idempotent; on a normal exit Prefect's own atexit handler does it after its last logs)."""
    module = sys.modules.get("prefect.server.api.server")
    if module is None:
        return
    handlers = sys.modules.get("prefect.logging.handlers")
    if handlers is not None:  # the crash records still queued for the server, sent first
        handlers.APILogWorker.drain_all(timeout=5)
    for server in list(module.SubprocessASGIServer._instances.values()):
        server.stop()


def prefect_api_url() -> str | None:
    """The Prefect server this process talks to, as Prefect reads it (the environment, else the
    active profile of :func:`prefect_profiles_path`); None in ephemeral mode (no server).

    Prefect's settings cost a second to import (they import all of Prefect): where none of the
    places Prefect reads them from can name a server (:func:`_no_prefect_server_can_be_set`),
    the commands that run no flow (`promote`, `reject`, `request list`) answer None without them."""
    if "prefect.settings" not in sys.modules and _no_prefect_server_can_be_set():
        return None
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def _no_prefect_server_can_be_set() -> bool:
    """True only when none of the sources Prefect reads its settings from can set its API URL:
    the environment, a ``.env``, ``prefect.toml`` or ``pyproject.toml`` ([tool.prefect]) in the
    working directory, the active profile of PREFECT_HOME's profiles.toml (or
    PREFECT_PROFILES_PATH's), else the default profile Prefect ships. Read with the standard
    library, as Prefect 3 reads them (``prefect.settings.sources``); anything this does not read
    for certain says False, and Prefect itself is asked."""
    import tomllib

    names = {name.upper() for name in os.environ}  # Prefect reads its variables in any case
    if names & {"PREFECT_API_URL", "PREFECT_PROFILE"}:
        return False
    cwd = Path.cwd()
    if (cwd / "prefect.toml").exists():
        return False
    try:
        if (cwd / ".env").exists() and "PREFECT_" in (cwd / ".env").read_text(errors="replace").upper():
            return False
        pyproject = cwd / "pyproject.toml"
        if pyproject.exists() and "prefect" in tomllib.loads(pyproject.read_text()).get("tool", {}):
            return False
        home = os.environ.get("PREFECT_HOME")
        profiles = os.environ.get("PREFECT_PROFILES_PATH") or (home and str(Path(home) / "profiles.toml"))
        if not profiles:  # Prefect's own default home: not read here
            return False
        if Path(profiles).exists():
            data = tomllib.loads(Path(profiles).read_text())
            active = data.get("profiles", {}).get(data.get("active"))
            if active is not None:
                return not _names_a_server(active)
        return not _names_a_server(_shipped_default_profile())
    except (OSError, ValueError, AttributeError):  # unreadable or not TOML as expected: Prefect decides
        return False


def _names_a_server(profile: object) -> bool:
    return not isinstance(profile, dict) or any(str(key).upper() == "PREFECT_API_URL" for key in profile)


def _shipped_default_profile() -> object:
    """The active profile of the profiles file Prefect ships (its "ephemeral"), found without
    importing Prefect."""
    import importlib.util
    import tomllib

    spec = importlib.util.find_spec("prefect")
    locations = spec.submodule_search_locations if spec else None
    if not locations:
        return None  # not a dict: taken as naming a server, so Prefect is asked
    data = tomllib.loads((Path(locations[0]) / "settings" / "profiles.toml").read_text())
    return data.get("profiles", {}).get(data.get("active", "ephemeral"))


def prefect_profiles_path() -> Path:
    """The profiles file Prefect reads its settings from (``prefect config set`` writes there):
    PREFECT_HOME's profiles.toml unless PREFECT_PROFILES_PATH says otherwise. The command line's
    PREFECT_HOME is the project's state/prefect unless the environment sets one."""
    from prefect.settings import PREFECT_PROFILES_PATH

    return Path(PREFECT_PROFILES_PATH.value())


def ensure_limit(name: str) -> None:
    """Create the global concurrency limit ``name`` with one slot, unless it exists (an
    operator may have changed it; it is left as it is)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):  # another batch created it a moment ago
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def global_lock_held(name: str) -> bool | None:
    """Whether a holder has the global concurrency limit ``name``'s slot now, read without taking
    it; False when the limit does not exist yet (no holder ever took it), None when no Prefect
    server is configured. Raises :class:`GlobalLockUnreadable` when the configured server refuses
    or does not answer: a reader may go on without the answer, but says why it has none (a server
    refusing the credentials is not one that cannot tell)."""
    if prefect_api_url() is None:
        return None
    import httpx
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    try:
        with get_client(sync_client=True) as client:
            limit = client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return False
    except (httpx.HTTPError, OSError) as err:
        why = describe_server_refusal(err) or describe_unreachable_server(err)
        raise GlobalLockUnreadable(
            why or f"cannot read the lock {name!r} on the Prefect server {prefect_api_url()}: {err}"
        ) from err
    return limit.active_slots > 0


@contextmanager
def global_lock(name: str, *, wait_s: float = 0) -> Iterator[bool]:
    """One slot of the global concurrency limit ``name``: yields False when another holder kept
    it for ``wait_s`` seconds (0: do not wait)."""
    import httpx
    from prefect.concurrency._asyncio import ConcurrencySlotAcquisitionError
    from prefect.concurrency.sync import concurrency

    ensure_limit(name)
    waiting = {"max_retries": 0} if wait_s <= 0 else {"timeout_seconds": wait_s}
    with ExitStack() as held:
        # Only the acquisition is guarded: a timeout inside the holder's work is its own error.
        try:
            held.enter_context(concurrency(name, occupy=1, strict=True, lease_duration=LEASE_S, **waiting))
        except TimeoutError:
            yield False  # the wait ran out while another holder kept the slot
            return
        except ConcurrencySlotAcquisitionError as err:
            cause = err.__cause__
            if isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423:
                yield False  # 423 Locked: the slot is taken, and we were not to wait
                return
            raise GlobalLockRefused(
                f"cannot take the lock {name!r} on the Prefect server {prefect_api_url()}: {err}"
            ) from err
        yield True


if __name__ == "__main__":  # the temporary server's process (see _server_that_outlives_no_one)
    _serve_while_parent_lives(int(sys.argv[1]), sys.argv[2:])
