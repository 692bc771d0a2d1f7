"""The state database in PostgreSQL (`state.database_url`): what differs from SQLite, the intake
lock and read-only opens, against a real server.

Only PostgreSQL is started, by the services stack's own script (`infra/local/stack.py up
postgres`, a second or two), once for the module; each test gets an empty database of its own.
CI installs Debian's PostgreSQL (`infra/system-packages.sh`), as for `test_services.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import ROOT, free_port, leaves_a_class, run_stack
from sqlalchemy.pool import NullPool

from unsir_pipeline.adapters.state_store import StateDatabase, StateError, StateSchemaRefused, StateWriteRefused
from unsir_pipeline.cli import main
from unsir_pipeline.governance.audit import GENESIS, AuditLog
from unsir_pipeline.governance.deletion_requests import DeletionRequest, RequestError, RequestStore
from unsir_pipeline.governance.stores import record_missing_intake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres() -> Iterator[sa.URL]:
    """A PostgreSQL server on a free loopback port; yields the URL of its superuser (the stack's
    database user) on the stack's state database."""
    # Outside pytest's private (0700) temporary root: PostgreSQL runs as its own user under root.
    directory = Path(tempfile.mkdtemp(prefix="unsir-postgres-"))
    env = {**os.environ, "UNSIR_SERVICES_DIR": str(directory), "UNSIR_PG_PORT": str(free_port())}
    try:
        started = run_stack(env, "up", "postgres")
        assert started.returncode == 0, started.stdout + started.stderr
        client = dict(line.split("=", 1) for line in (directory / "client.env").read_text().splitlines())
        yield sa.make_url(client["UNSIR_STATE_DATABASE_URL"])
    finally:
        run_stack(env, "down", "postgres")
        shutil.rmtree(directory, ignore_errors=True)


def _admin(postgres: sa.URL) -> sa.Engine:
    return sa.create_engine(postgres, isolation_level="AUTOCOMMIT", poolclass=NullPool)


@pytest.fixture
def state_url(postgres: sa.URL) -> str:
    """An empty database of this test's own on the module's server (dropped with the server)."""
    name = f"state_{uuid.uuid4().hex[:12]}"
    with _admin(postgres).connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    return postgres.set(database=name).render_as_string(hide_password=False)


def _select_only_role(state_url: str) -> str:
    """The URL of a new role that may read every table of ``state_url``'s database and write none
    (an auditor's credentials)."""
    url = sa.make_url(state_url)
    role, password = f"auditor_{uuid.uuid4().hex[:12]}", uuid.uuid4().hex
    with _admin(url).connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.exec_driver_sql(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}")
    return url.set(username=role, password=password).render_as_string(hide_password=False)


# --- the intake lock ------------------------------------------------------------------------


def _waiting_for_an_advisory_lock(store: RequestStore) -> bool:
    with store.db.read() as conn:
        return bool(
            conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
            ).scalar_one()
        )


@pytest.mark.parametrize("first_claimed_by", [None, "forget-run-1"], ids=["request", "forget-run"])
def test_two_intakes_at_once_are_each_checked_against_the_other(state_url: str, first_claimed_by) -> None:
    """On PostgreSQL a row lock cannot stop an insert: intake holds an advisory lock from before
    it reads the queue until it commits. Two intakes (a request, or a forget run's own claim, then
    a request) that would each leave a class alone but not together: the first checks the queue
    and waits, holding the lock, until the second is seen waiting for it; the second then reads
    the first's request and is refused. Without the lock the second would read an empty queue,
    be admitted and finish, and the first, let go then, would be admitted too."""
    store = RequestStore(state_url)
    first_checking, second_finished = threading.Event(), threading.Event()
    outcomes: dict[str, DeletionRequest | RequestError] = {}

    def first_admit(queued: list[DeletionRequest]) -> None:
        first_checking.set()
        deadline = time.monotonic() + 30
        while not (second_finished.is_set() or _waiting_for_an_advisory_lock(store)):
            assert time.monotonic() < deadline, "the second intake neither waited for the lock nor finished"
            time.sleep(0.02)
        leaves_a_class(0)(queued)

    def file(name: str, classes: list[int], admit, claimed_by: str | None = None) -> None:
        try:
            outcomes[name] = store.add(
                classes, [str(c) for c in classes], name, "r", admit=admit, claimed_by=claimed_by
            )
        except RequestError as err:
            outcomes[name] = err
        finally:
            if name == "second":
                second_finished.set()

    first = threading.Thread(target=file, args=("first", [0], first_admit, first_claimed_by), daemon=True)
    first.start()
    assert first_checking.wait(30)
    second = threading.Thread(target=file, args=("second", [1], leaves_a_class(1)), daemon=True)
    second.start()
    first.join(60)
    second.join(60)

    assert isinstance(outcomes["first"], DeletionRequest), outcomes
    assert isinstance(outcomes["second"], RequestError), outcomes
    assert str(outcomes["second"]) == "class 1 with queued [0] would leave no class"
    assert [(r.classes, r.status, r.batch_id) for r in store.list()] == [
        ((0,), "pending" if first_claimed_by is None else "running", first_claimed_by)
    ]


# --- row locks -------------------------------------------------------------------------------


def _at_once(work: Callable[[int], object], workers: int = 2) -> None:
    """Run ``work(0)``, ``work(1)``... in threads released together; re-raise what any raised.
    Each thread's statements go through a connection (a database session) of its own."""
    barrier = threading.Barrier(workers)
    failures: list[BaseException] = []

    def run(worker: int) -> None:
        barrier.wait()
        try:
            work(worker)
        except BaseException as err:
            failures.append(err)

    # Daemons: a thread stuck in a deadlock must not keep pytest from exiting.
    threads = [threading.Thread(target=run, args=(w,), daemon=True) for w in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not any(thread.is_alive() for thread in threads), "a worker still runs after 30 s (a deadlock?)"
    if failures:
        raise failures[0]


def test_two_writers_appending_at_once_keep_one_chain(state_url: str) -> None:
    """The anchor row's lock (FOR UPDATE) holds the head for each append: without it two
    appends read the same last record and both write the next."""
    log = AuditLog(state_url)

    def append_many(worker: int) -> None:
        for i in range(20):
            log.append("concurrent", actor=f"worker-{worker}", payload={"worker": worker, "i": i})

    _at_once(append_many)

    assert log.verify().ok and [r.seq for r in log.records()] == list(range(1, 41))
    for w in range(2):
        assert [r.payload["i"] for r in log.records() if r.actor == f"worker-{w}"] == list(range(20))


def test_two_writers_opening_a_new_database_at_once_create_it_once(state_url: str) -> None:
    """The migration's advisory lock and the anchor's insert: both open the empty database, one
    creates the tables and the anchor, the other finds them."""
    _at_once(lambda w: (RequestStore(state_url), AuditLog(state_url)))

    log = AuditLog(state_url)
    assert log.verify().ok and log.head() == (0, GENESIS)
    assert RequestStore(state_url).db.revision("requests") and RequestStore(state_url).list() == []


# --- read-only opens --------------------------------------------------------------------------


def _filed_and_recorded(state_url: str) -> tuple[RequestStore, AuditLog, DeletionRequest]:
    """A request in the store and its intake record on the trail, as `request add` leaves them."""
    store, log = RequestStore(state_url), AuditLog(state_url)
    request = store.add([3], ["three"], "alice", "consent withdrawn")
    assert len(record_missing_intake(store, log)) == 1
    return store, log, request


def test_a_store_and_trail_opened_read_only_read_and_refuse_every_write(state_url: str) -> None:
    store, log, request = _filed_and_recorded(state_url)
    requests, trail = RequestStore(state_url, read_only=True), AuditLog(state_url, read_only=True)

    assert requests.list() == [request] and requests.get(request.id) == request
    assert trail.verify().ok and [r.request_ids for r in trail.records()] == [(request.id,)]
    refused = "the state database postgresql.*/state_.* was opened read-only; cannot write to it"
    for write in (
        lambda: requests.add([4], ["four"], "mallory", "r"),
        lambda: requests.add_rejected([4], ["four"], "mallory", "r", "refused"),
        lambda: requests.claim_pending("batch-x"),
        lambda: requests.release_stale("gone", 3),
        lambda: trail.append("cover-up", actor="mallory", payload={}),
        trail.check_appendable,
    ):
        with pytest.raises(StateError, match=refused):
            write()
    assert store.list() == [request] and len(log.records()) == 1 and log.verify().ok


def test_a_store_at_requests_0001_is_read_read_only_as_it_is(state_url: str) -> None:
    """requests_0002 is READ_COMPATIBLE (it replaces the status check in place here): a database
    an older version left at requests_0001 is read by the commands that only read, unmigrated."""
    from conftest import downgrade_schema

    _, _, request = _filed_and_recorded(state_url)
    downgrade_schema(state_url, "requests", "requests_0001")

    assert RequestStore(state_url, read_only=True).list("pending") == [request]
    assert StateDatabase(state_url).revision("requests") == ["requests_0001"]


def test_a_database_never_migrated_is_not_created_by_a_read_only_open(state_url: str) -> None:
    with pytest.raises(
        StateSchemaRefused, match="requests schema revision none, an older one; a command that only reads"
    ):
        RequestStore(state_url, read_only=True)
    with pytest.raises(StateSchemaRefused, match="audit schema revision none, an older one; a command that only reads"):
        AuditLog(state_url, read_only=True)
    assert sa.inspect(sa.create_engine(state_url, poolclass=NullPool)).get_table_names() == []


def test_the_commands_that_only_read_work_with_select_rights_alone(state_url, tmp_path, monkeypatch, capsys):
    """What docs/audit.md promises of `request list`/`show`, `audit show` and `audit verify`
    ("only read"): an auditor's database role with SELECT rights alone runs them."""
    _, _, request = _filed_and_recorded(state_url)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.setenv("UNSIR_STATE_DATABASE_URL", _select_only_role(state_url))
    monkeypatch.delenv("UNSIR_AUDIT_KEY", raising=False)
    monkeypatch.delenv("UNSIR_AUDIT_KEY_FILE", raising=False)

    def unsir(*argv: str) -> str:
        assert main(["--project", str(tmp_path), *argv]) == 0, capsys.readouterr().err
        return capsys.readouterr().out

    assert [r["id"] for r in json.loads(unsir("request", "list", "--json"))] == [request.id]
    assert request.id in unsir("request", "show", request.id)
    assert "request_received" in unsir("audit", "show")
    assert "audit trail intact: 1 records" in unsir("audit", "verify")


def test_a_read_only_open_is_read_only_in_the_database_too(state_url: str) -> None:
    """As SQLite's read-only URI refuses writes whatever the code does, PostgreSQL runs a
    read-only store's transactions READ ONLY: a write that got past the store's own refusal
    is refused by the server, the superuser's included."""
    _filed_and_recorded(state_url)
    reader = AuditLog(state_url, read_only=True)
    for snapshot in (False, True):
        with (
            reader.db.read(snapshot=snapshot) as conn,
            pytest.raises(sa.exc.DBAPIError, match="cannot execute UPDATE in a read-only transaction"),
        ):
            conn.execute(sa.text("UPDATE audit_head SET records = 0"))
    assert AuditLog(state_url).verify().ok


def test_a_write_the_role_may_not_make_is_named_with_what_it_needs(state_url, tmp_path, monkeypatch, capsys):
    """The commands that write, run with an auditor's role (SELECT alone): one line naming the
    database (not its password), what the server refused and the rights needed, exit 2 (the
    configuration, not the pipeline), and nothing written."""
    store, log, request = _filed_and_recorded(state_url)
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    auditor = _select_only_role(state_url)
    monkeypatch.setenv("UNSIR_STATE_DATABASE_URL", auditor)
    monkeypatch.setenv("UNSIR_AUDIT_KEY", "k" * 32)
    shown = sa.make_url(auditor).render_as_string(hide_password=True)

    for command in (
        ["request", "add", "--classes", "4", "--requester", "bob", "--reason", "r"],
        ["audit", "sign-head"],
    ):
        assert main(["--project", str(tmp_path), *command]) == 2, command
        err = capsys.readouterr().err
        assert err.splitlines() == [
            f"error: cannot write to the state database {shown}: permission denied for table audit_head; "
            "expected a database role with INSERT and UPDATE rights on the state tables (state.database_url or "
            "UNSIR_STATE_DATABASE_URL): run the command as a role that has them"
        ], command
        assert sa.make_url(auditor).password not in err
    assert store.list() == [request] and [r.seq for r in log.records()] == [1] and log.verify().ok


def test_a_server_that_runs_every_transaction_read_only_is_named(state_url: str) -> None:
    """A role or a standby whose transactions are READ ONLY: the write is refused naming that."""
    store, log, request = _filed_and_recorded(state_url)
    url = sa.make_url(state_url)
    with _admin(url).connect() as conn:
        conn.exec_driver_sql(f'ALTER DATABASE "{url.database}" SET default_transaction_read_only = on')
    store.db.engine.dispose()  # the setting applies to sessions opened from now on
    refused = (
        r"cannot write to the state database postgresql\+psycopg2://.*/state_\w+: cannot execute INSERT in a "
        r"read-only transaction; expected a server and role whose transactions may write .*not a standby"
    )
    with pytest.raises(StateWriteRefused, match=refused):
        RequestStore(state_url).add([4], ["four"], "bob", "r")
    assert RequestStore(state_url, read_only=True).list() == [request]


def test_state_migrate_migrates_the_shared_database_and_its_dry_run_needs_select_alone(
    state_url, tmp_path, monkeypatch, capsys
):
    """`unsir state migrate` on the shared database: the request store at requests_0001 is
    migrated (under the migration lock), the trail at the head is left as it is; the dry run
    only reads, so an auditor's role with SELECT rights alone runs it."""
    from conftest import downgrade_schema

    _, log, request = _filed_and_recorded(state_url)
    downgrade_schema(state_url, "requests", "requests_0001")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.delenv("UNSIR_AUDIT_KEY", raising=False)
    monkeypatch.delenv("UNSIR_AUDIT_KEY_FILE", raising=False)

    monkeypatch.setenv("UNSIR_STATE_DATABASE_URL", _select_only_role(state_url))
    assert main(["--project", str(tmp_path), "state", "migrate", "--dry-run"]) == 0, capsys.readouterr().err
    assert "would migrate requests_0001 -> requests_0002" in capsys.readouterr().out
    assert StateDatabase(state_url).revision("requests") == ["requests_0001"]

    monkeypatch.setenv("UNSIR_STATE_DATABASE_URL", state_url)
    assert main(["--project", str(tmp_path), "state", "migrate"]) == 0, capsys.readouterr().err
    shown = sa.make_url(state_url).render_as_string(hide_password=True)
    assert capsys.readouterr().out.splitlines() == [
        f"requests ({shown}): migrated requests_0001 -> requests_0002",
        f"audit ({shown}): already current (audit_0002)",
    ]
    assert StateDatabase(state_url).revision("requests") == ["requests_0002"]
    assert RequestStore(state_url).list() == [request] and [r.seq for r in log.records()] == [1]
