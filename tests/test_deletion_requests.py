"""The deletion-request store: intake, the batch lifecycle, and safety across processes."""

from __future__ import annotations

import json
import multiprocessing
import re
import sqlite3
import sys
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from unsir_pipeline.adapters.state_store import StateError, StateSchemaRefused
from unsir_pipeline.governance import deletion_requests
from unsir_pipeline.governance.deletion_requests import (
    STATUSES,
    DeletionRequest,
    RequestError,
    RequestStore,
    check_request_fields,
)


@pytest.fixture
def store(tmp_path: Path) -> RequestStore:
    return RequestStore(tmp_path / "requests.db")


def test_add_sorts_classes_keeps_names_aligned_and_stamps_utc(store: RequestStore) -> None:
    request = store.add([7, 3], ["seven", "three"], "alice", "consent withdrawn")

    assert re.fullmatch(r"req-[0-9a-f]{12}", request.id)
    assert request.classes == (3, 7)
    assert request.class_names == ("three", "seven")
    assert request.requested == ("three", "seven")  # defaults to the names
    assert (request.status, request.attempts, request.batch_id) == ("pending", 0, None)
    assert (request.model_version, request.error) == (None, None)
    created = datetime.fromisoformat(request.created_at)
    assert created.utcoffset() == timedelta(0)
    assert request.updated_at == request.created_at
    assert store.get(request.id) == request


def test_add_keeps_the_raw_request_and_dedupes_repeated_classes(store: RequestStore) -> None:
    request = store.add([3, 3], ["three", "three"], "bob", "", requested=["3", "three"])

    assert request.classes == (3,)
    assert request.requested == ("3", "three")
    assert request.to_dict()["requested"] == ["3", "three"]
    assert request.to_dict()["classes"] == [3]


def test_store_persists_across_instances_and_creates_parent_dirs(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state" / "requests.db"
    first = RequestStore(path).add([1], ["one"], "alice", "gdpr")

    assert RequestStore(path).get(first.id) == first


@pytest.mark.parametrize("read_only", [False, True])
@pytest.mark.parametrize(("damage", "problem"), [("garbage", "file is not a database"), ("truncated", "malformed")])
def test_a_damaged_store_file_is_named_with_what_to_do(tmp_path: Path, damage, problem, read_only) -> None:
    """A request store overwritten or cut short (a full disk, a bad copy) was named, but with
    "expected a writable SQLite file", as if a permission were wrong."""
    path = tmp_path / "requests.db"
    store = RequestStore(path)
    for n in range(40):  # pages enough that a third of the file cuts into the table
        store.add([n % 10], [str(n % 10)], "alice", "x" * 200)
    checkpoint = sqlite3.connect(path)  # every page in the file itself, none left in its -wal
    checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    checkpoint.close()
    content = b"garbage" * 100 if damage == "garbage" else path.read_bytes()[: path.stat().st_size // 3]
    path.write_bytes(content)
    for companion in (path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        companion.unlink(missing_ok=True)
    with pytest.raises(StateError, match=rf"{path}: .*{problem}.*\(a damaged file: restore it from a backup\)"):
        RequestStore(path, read_only=read_only).list()


def test_store_uses_wal_so_readers_do_not_block_a_batch(store: RequestStore) -> None:
    with sqlite3.connect(store.path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


@pytest.mark.parametrize(
    ("classes", "names", "requester", "message"),
    [
        ([1, 2], ["one"], "alice", r"same length, got 2 and 1"),
        ([], [], "alice", r"at least one class"),
        ([-1], ["minus"], "alice", r"integer >= 0, got -1"),
        ([True], ["true"], "alice", r"integer >= 0, got True"),
        ([1, 1], ["one", "uno"], "alice", r"class 1 is given two names, 'one' and 'uno'"),
        ([1], [""], "alice", r"class_names entry for class 1 must be a non-empty string"),
        ([1], ["one"], "  ", r"requester must be a non-empty string, got '  '"),
        ("12", ["one", "two"], "alice", r"must be sequences"),
    ],
)
def test_add_refuses_malformed_input_naming_it(store: RequestStore, classes, names, requester, message) -> None:
    with pytest.raises(RequestError, match=message):
        store.add(classes, names, requester, "reason")
    assert store.list() == []


def test_rejected_request_keeps_what_was_asked_and_never_runs(store: RequestStore) -> None:
    rejected = store.add_rejected([], [], "carol", "please", "no class named 'unicorn'", requested=["unicorn"])
    store.add([2], ["two"], "dave", "gdpr")

    assert rejected.status == "rejected"
    assert rejected.error == "no class named 'unicorn'"
    assert rejected.requested == ("unicorn",)
    assert rejected.classes == ()
    claimed = store.claim_pending("batch-1")
    assert [r.requester for r in claimed] == ["dave"]
    assert store.get(rejected.id).status == "rejected"
    with pytest.raises(RequestError, match="refusal must be a non-empty string"):
        store.add_rejected([], [], "carol", "please", "")


def test_get_unknown_id_names_it(store: RequestStore) -> None:
    with pytest.raises(RequestError, match="'req-000000000000'"):
        store.get("req-000000000000")


def test_get_many_gives_each_request_as_get_does_in_the_order_asked(
    store: RequestStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deletion_requests, "VALUES_PER_QUERY", 2)  # several statements for 5 ids
    ids = [store.add([i], [str(i)], "alice", "r").id for i in range(5)]
    store.claim_pending("batch-1")
    asked = [ids[3], ids[0], ids[4], ids[3], ids[1]]

    assert store.get_many(asked) == [store.get(i) for i in asked]
    assert store.get_many([]) == []
    with pytest.raises(RequestError, match="'req-000000000000'"):
        store.get_many([ids[0], "req-000000000000", "req-ffffffffffff"])


def test_list_is_oldest_first_and_filters_by_status(store: RequestStore) -> None:
    ids = [store.add([i], [str(i)], "alice", "r").id for i in range(4)]
    store.claim_pending("batch-1")
    late = store.add([9], ["nine"], "bob", "r")

    assert [r.id for r in store.list()] == [*ids, late.id]
    assert [r.id for r in store.list("running")] == ids
    assert [r.id for r in store.list("pending")] == [late.id]
    assert store.list("done") == []


def test_list_by_model_version_gives_the_requests_that_version_did(store: RequestStore) -> None:
    first = [store.add([i], [str(i)], "alice", "r") for i in range(2)]
    store.claim_pending("batch-1")
    store.mark_done("batch-1", 3)
    second = store.add([5], ["five"], "bob", "r")
    store.claim_pending("batch-2")
    store.mark_done("batch-2", 4)
    store.add([6], ["six"], "carol", "r")

    for version in (3, 4, 5):
        expected = [r for r in store.list() if r.model_version == version]  # what the callers filtered by
        assert store.list(model_version=version) == expected
    assert [r.id for r in store.list(model_version=3)] == [r.id for r in first]
    assert [r.id for r in store.list("done", model_version=4)] == [second.id]
    assert store.list("pending", model_version=4) == []
    with pytest.raises(RequestError, match="model_version must be an integer >= 1, got 0"):
        store.list(model_version=0)


def test_list_unknown_status_names_the_valid_ones(store: RequestStore) -> None:
    with pytest.raises(RequestError, match="'finished'.*" + ", ".join(STATUSES)):
        store.list("finished")


def test_claim_pending_takes_every_pending_request_once(store: RequestStore) -> None:
    a = store.add([1], ["one"], "alice", "r")
    b = store.add([2], ["two"], "bob", "r")

    claimed = store.claim_pending("batch-1")

    assert [r.id for r in claimed] == [a.id, b.id]
    assert all(r.status == "running" and r.batch_id == "batch-1" for r in claimed)
    assert all(r.attempts == 1 for r in claimed)
    assert claimed[0].updated_at >= a.updated_at
    assert store.claim_pending("batch-2") == []
    assert store.batch_requests("batch-1") == claimed
    assert store.batch_requests("batch-2") == []


def test_a_request_that_would_forget_every_class_names_them() -> None:
    """`unsir forget bird dog fish` with 'cat' forgotten said "forgetting classes [0, 1, 2, 3]":
    indices the user never typed, which with folders named 1, 10, 2 read as other classes."""
    from unsir.errors import UnlearningInputError
    from unsir_pipeline.governance.deletion_requests import resolve_request

    names = ("bird", "cat", "dog", "fish")
    expected = r"forgetting classes \['bird', 'cat', 'dog', 'fish'\] would forget every one of the 4 classes"
    with pytest.raises(UnlearningInputError, match=expected):
        resolve_request(["bird", "dog", "fish"], names, forgotten=[1], forgotten_by="the champion (version 2)")


def test_a_batch_names_its_classes_so_the_flow_resolves_the_requested_ones(store: RequestStore) -> None:
    from unsir.classes import resolve_classes
    from unsir_pipeline.governance.claims import ClaimedBatch

    # An image folder whose classes are "1", "2", "3": class "2" is index 1.
    names = ("1", "2", "3")
    store.add([1], ["2"], "alice", "r")
    store.add([2], ["3"], "bob", "r")
    batch = ClaimedBatch("batch-1", "key", store.claim_pending("batch-1"), resumed=False)
    given = batch.names_of(batch.classes)
    assert given == ["2", "3"]
    # The unlearn flow resolves what it is given; indices as text ("1", "2") named classes 0 and 1.
    assert resolve_classes(given, names) == (1, 2)


def test_a_failed_batch_leaves_its_requests_the_whole_reason_on_one_line() -> None:
    from unsir_pipeline.adapters.validation import ValidationFailed, ValidationReport
    from unsir_pipeline.governance.failures import failure_message

    report = ValidationReport(success=False, failures=("class counts: count=6, split=val, label=0",), evaluated=32)
    message = failure_message(ValidationFailed(report))
    assert "\n" not in message
    assert message.startswith("ValidationFailed: data validation failed: 1 failure(s) out of 32")
    assert message.endswith("class counts: count=6, split=val, label=0")


def _full_database_error(tmp_path: Path) -> BaseException:
    """The error SQLAlchemy raises when a session's pending rows meet a full SQLite file (as
    MLflow's tracking store does): several lines, the statement and its parameters included."""
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, Session, mapped_column

    class Base(DeclarativeBase):
        pass

    class Tag(Base):
        __tablename__ = "tags"
        key = mapped_column(sa.String, primary_key=True)
        value = mapped_column(sa.String)

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'full.db'}")
    Base.metadata.create_all(engine)
    engine.dispose()

    @sa.event.listens_for(engine, "connect")
    def no_room_left(conn, _record) -> None:  # the file may not grow: SQLite's "disk is full"
        conn.execute(f"PRAGMA max_page_count = {conn.execute('PRAGMA page_count').fetchone()[0]}")

    with Session(engine) as session:
        session.add_all(Tag(key=f"k{i}", value="v" * 500) for i in range(50))
        try:
            session.query(Tag).first()  # flushes the rows first
        except sa.exc.OperationalError as err:
            return err
        finally:
            engine.dispose()
    raise AssertionError("the full database accepted the rows")


def test_a_failed_batch_stores_a_short_readable_error_not_sqlalchemys_whole_text(tmp_path: Path) -> None:
    """A batch that failed on a full MLflow database left its requests SQLAlchemy's text: a hint
    about autoflush first, then the statement and 50 rows of parameters, 8 KB on one line of
    `unsir request list`."""
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.governance.failures import failure_message

    err = _full_database_error(tmp_path)
    assert len(str(err)) > 2000 and "autoflush" in str(err)
    assert failure_message(err) == "OperationalError: (sqlite3.OperationalError) database or disk is full"
    # As the registry passes it on, after its own words.
    wrapped = RegistryError(f"registering 'models/x' as model 'digits' failed: {err}")
    assert failure_message(wrapped) == (
        "RegistryError: registering 'models/x' as model 'digits' failed: "
        "(sqlite3.OperationalError) database or disk is full"
    )


def test_a_long_failure_is_cut_saying_where_the_rest_is() -> None:
    from unsir_pipeline.governance.failures import failure_message

    message = failure_message(RuntimeError("the server answered: " + "x" * 5000))
    assert message.startswith("RuntimeError: the server answered: xxx")
    assert len(message) < 600
    assert message.endswith("(cut at 500 characters: the whole error is in the flow run's log)")


def test_mark_done_touches_only_that_batch_and_is_a_no_op_when_retried(
    store: RequestStore,
) -> None:
    first = store.add([1], ["one"], "alice", "r")
    store.claim_pending("batch-1")
    second = store.add([2], ["two"], "bob", "r")
    store.claim_pending("batch-2")

    done = store.mark_done("batch-1", 4)

    assert [(r.id, r.status, r.model_version) for r in done] == [(first.id, "done", 4)]
    assert store.get(second.id).status == "running"
    assert store.mark_done("batch-1", 4) == []
    with pytest.raises(RequestError, match="model_version must be an integer >= 1, got 0"):
        store.mark_done("batch-2", 0)


def test_release_retries_until_max_attempts_then_fails(store: RequestStore) -> None:
    request = store.add([1], ["one"], "alice", "r")

    store.claim_pending("batch-1")
    (released,) = store.release("batch-1", "CUDA out of memory", max_attempts=2)
    assert (released.status, released.attempts) == ("pending", 1)
    assert released.error == "CUDA out of memory"
    assert released.batch_id == "batch-1"  # the batch that held it stays visible

    store.claim_pending("batch-2")
    (failed,) = store.release("batch-2", "CUDA out of memory again", max_attempts=2)
    assert (failed.id, failed.status, failed.attempts) == (request.id, "failed", 2)
    assert store.claim_pending("batch-3") == []


def test_a_release_that_counts_no_attempt_keeps_the_request_pending_however_often(store: RequestStore) -> None:
    """Every failed batch counted an attempt, its setup's fault or not: three nights on a
    damaged file ended every request queued `failed`, and nothing queued them again."""
    request = store.add([1], ["one"], "alice", "r")
    for night in range(4):
        store.claim_pending(f"batch-{night}")
        (released,) = store.release(f"batch-{night}", "PreparedDataDamaged: ...", max_attempts=3, count_attempt=False)
        assert (released.status, released.attempts, released.error) == ("pending", 0, "PreparedDataDamaged: ...")
    forget = store.add([2], ["two"], "bob", "r", claimed_by="forget-1")  # a forget run's own, attempt 1
    (released,) = store.release("forget-1", "RegistryError: ...", max_attempts=1, count_attempt=False)
    assert (released.id, released.status, released.attempts) == (forget.id, "pending", 0)
    assert store.get(request.id).attempts == 0


def test_release_leaves_other_batches_alone(store: RequestStore) -> None:
    store.add([1], ["one"], "alice", "r")
    store.claim_pending("batch-1")

    assert store.release("batch-other", "boom", max_attempts=3) == []
    assert store.list("running") != []
    with pytest.raises(RequestError, match="max_attempts must be an integer >= 1, got 0"):
        store.release("batch-1", "boom", max_attempts=0)


def test_release_stale_frees_a_killed_batchs_requests_only(store: RequestStore) -> None:
    killed = store.add([1], ["one"], "alice", "r")
    store.claim_pending("batch-killed")
    finished = store.add([2], ["two"], "bob", "r")
    store.claim_pending("batch-ok")
    store.mark_done("batch-ok", 2)
    waiting = store.add([3], ["three"], "carol", "r")

    released = store.release_stale("batch killed before finishing", max_attempts=3)

    assert [(r.id, r.status) for r in released] == [(killed.id, "pending")]
    assert released[0].error == "batch killed before finishing"
    assert store.get(finished.id).status == "done"
    assert store.get(waiting.id) == waiting


def test_return_to_pending_reopens_the_rejected_versions_requests(store: RequestStore) -> None:
    forgotten = store.add([1], ["one"], "alice", "r")
    store.claim_pending("batch-1")
    store.mark_done("batch-1", 5)
    other = store.add([2], ["two"], "bob", "r")
    store.claim_pending("batch-2")
    store.mark_done("batch-2", 6)

    reopened = store.return_to_pending(5, "reviewer: retain accuracy too low")

    assert [r.id for r in reopened] == [forgotten.id]
    assert reopened[0].status == "pending"
    assert reopened[0].model_version is None
    assert reopened[0].error == "reviewer: retain accuracy too low"
    assert store.get(other.id).model_version == 6
    (again,) = store.claim_pending("batch-3")
    assert (again.id, again.attempts) == (forgotten.id, 2)


def test_every_status_change_moves_updated_at(store: RequestStore) -> None:
    request = store.add([1], ["one"], "alice", "r")
    stamps = [request.updated_at]
    stamps.append(store.claim_pending("b")[0].updated_at)
    stamps.append(store.mark_done("b", 2)[0].updated_at)
    stamps.append(store.return_to_pending(2, "rejected")[0].updated_at)

    assert stamps == sorted(stamps)
    assert len(set(stamps)) == len(stamps)
    assert store.get(request.id).created_at == request.created_at


# The store's layout before migrations (schema version 1, in PRAGMA user_version).
LEGACY_SCHEMA = """
CREATE TABLE requests (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, classes TEXT NOT NULL,
    class_names TEXT NOT NULL, requested TEXT NOT NULL, requester TEXT NOT NULL, reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'rejected')),
    attempts INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0), batch_id TEXT, model_version INTEGER,
    error TEXT, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX requests_status ON requests (status);
CREATE INDEX requests_batch ON requests (batch_id);
"""


def _legacy_store(path: Path, user_version: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.executescript(LEGACY_SCHEMA)
        conn.execute(
            "INSERT INTO requests (id, classes, class_names, requested, requester, reason, status, created_at, "
            "updated_at) "
            "VALUES ('req-000000000001', '[4]', '[\"four\"]', '[\"4\"]', 'alice', 'old', 'pending', "
            "'2026-01-01T00:00:00.000000+00:00', '2026-01-01T00:00:00.000000+00:00')"
        )
        conn.execute(f"PRAGMA user_version = {user_version}")


def test_store_written_before_migrations_is_adopted_and_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    _legacy_store(path, 1)

    store = RequestStore(path)

    old = store.get("req-000000000001")
    assert (old.classes, old.requester, old.status) == ((4,), "alice", "pending")
    new = store.add([5], ["five"], "bob", "new")
    assert [r.id for r in store.claim_pending("batch-1")] == [old.id, new.id]
    assert store.db.revision("requests") == ["requests_0002"]
    # The table rebuilt for status `withdrawn` keeps its rows, numbering and checks.
    later = store.add([6], ["six"], "carol", "filed twice")
    assert store.withdraw(later.id, "carol", "filed twice").status == "withdrawn"
    assert [r.id for r in store.list()] == [old.id, new.id, later.id]
    with sqlite3.connect(path) as conn:
        assert [seq for (seq,) in conn.execute("SELECT seq FROM requests ORDER BY seq")] == [1, 2, 3]
        assert "AUTOINCREMENT" in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'requests'").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            conn.execute("UPDATE requests SET status = 'lost'")


def test_a_read_only_copy_written_before_migrations_is_read_as_its_baseline(tmp_path: Path) -> None:
    """`unsir request list` on an auditor's read-only copy of a store from before migrations
    were recorded: refused as "schema revision none, an older one", though its layout is the
    baseline's (requests_0001), which a read-only open reads as it is. Now it is read as that
    revision, unstamped; another schema version is still refused."""
    path = tmp_path / "requests.db"
    _legacy_store(path, 1)

    (old,) = RequestStore(path, read_only=True).list()
    assert (old.id, old.requester, old.status) == ("req-000000000001", "alice", "pending")
    assert RequestStore(path, read_only=True).db.revision("requests") == []  # read, not stamped

    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 99")
    with pytest.raises(StateSchemaRefused, match="schema version 99; this code expects version 1"):
        RequestStore(path, read_only=True)


def test_store_from_another_schema_version_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    _legacy_store(path, 99)

    with pytest.raises(StateSchemaRefused, match="schema version 99.*expects version 1"):
        RequestStore(path)


def test_store_from_a_newer_revision_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    RequestStore(path)
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE unsir_requests_schema SET version_num = 'requests_9999'")

    with pytest.raises(
        StateSchemaRefused,
        match="revision 'requests_9999', which this code does not know.*expects revision 'requests_0002'",
    ):
        RequestStore(path)


def test_a_read_only_copy_from_before_withdrawn_is_listed_and_verified(tmp_path: Path, capsys) -> None:
    """An auditor's read-only copy of state written at requests_0001 (before status `withdrawn`):
    requests_0002 only widened the status check, yet `request list` and `audit verify` refused
    it, since a command that only reads must not migrate it. A migration declared
    READ_COMPATIBLE now lets the copy be read as it is; a revision this code does not know is
    still refused."""
    from conftest import downgrade_schema, make_project

    from unsir_pipeline.adapters.state_store import StateDatabase
    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    store, _ = stores.intake_trail(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # its intake record, as `request add` leaves it
    target = stores.state_target(ws, ws.params.requests.store)
    downgrade_schema(target, "requests", "requests_0001")

    assert main(["--project", str(project), "request", "list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["status"], listed["requester"]) == (request.id, "pending", "alice")
    assert main(["--project", str(project), "audit", "verify"]) == 0
    assert StateDatabase(target).revision("requests") == ["requests_0001"]  # read, not migrated

    with sqlite3.connect(target) as conn:
        conn.execute("UPDATE unsir_requests_schema SET version_num = 'requests_9999'")
    with pytest.raises(StateSchemaRefused, match="revision 'requests_9999', which this code does not know"):
        stores.existing_request_store(ws)


def test_a_write_to_a_read_only_sqlite_state_exits_2_naming_the_file_and_changes_nothing(tmp_path: Path) -> None:
    """`chmod a-w state/*.sqlite` (or an auditor's read-only copy), then `unsir request withdraw`:
    exit 1 with "cannot use the project's state files ...: (sqlite3.OperationalError) attempt to
    write a readonly database; check they exist, are writable and the disk has space", where the
    same write refused by PostgreSQL exits 2 naming the database. Now SQLite's does too."""
    from conftest import make_project, run_with_read_only

    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    store, trail = stores.intake_trail(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # its intake record, as `request add` leaves it
    records = trail.records()
    files = [Path(stores.state_target(ws, name)) for name in (ws.params.requests.store, ws.params.requests.audit_log)]

    withdraw = ["request", "withdraw", request.id, "--reason", "asked twice", "--by", "bob"]
    ran = run_with_read_only(files, [sys.executable, "-m", "unsir_pipeline.cli", "--project", str(project), *withdraw])

    assert ran.returncode == 2, ran.stderr[-2000:]
    assert (
        f"error: cannot write to the state database {files[0]}: attempt to write a readonly database; expected "
        "a SQLite file this user may write" in ran.stderr
    )
    assert store.get(request.id).status == "pending" and trail.records() == records


def test_a_write_in_a_read_only_state_directory_exits_2_naming_the_file(tmp_path: Path) -> None:
    """An auditor's read-only copy, its directory read-only too: SQLite cannot open a WAL file
    for writing there, so `unsir request withdraw` (and `batch run` with requests pending, where
    PREFECT_API_URL names a server) failed at the open, exit 1, with "cannot use the project's
    state files ...: unable to open database file; expected a writable SQLite file". Now the write
    is refused as on read-only files: exit 2, naming the file and what a write needs."""
    from conftest import make_project, run_with_read_only

    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    store, trail = stores.intake_trail(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)
    records = trail.records()
    state = [ws.state_dir, *ws.state_dir.rglob("*")]

    withdraw = ["request", "withdraw", request.id, "--reason", "asked twice", "--by", "bob"]
    ran = run_with_read_only(state, [sys.executable, "-m", "unsir_pipeline.cli", "--project", str(project), *withdraw])

    assert ran.returncode == 2, ran.stderr[-2000:]
    assert ran.stderr.startswith("error: cannot write to the state database "), ran.stderr[-2000:]
    assert "expected a SQLite file this user may write, in a directory it may write" in ran.stderr
    assert store.get(request.id).status == "pending" and trail.records() == records


def test_the_commands_that_only_read_create_no_store_on_a_read_only_copy(tmp_path: Path) -> None:
    """A read-only copy taken before anything was filed (no requests.sqlite, no audit.sqlite):
    `request list`, `request show`, `audit show` (with `--request` too) and `audit report` created
    the store or the trail in order to read it, and exited 1 ("cannot use the project's state
    files ...: unable to open database file"). Now the queue and the trail are read as empty, an
    unknown request or batch is named (exit 2), and nothing is written."""
    from conftest import make_project, run_with_read_only

    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    state = Workspace.load(project).state_dir
    state.mkdir(exist_ok=True)
    commands = [
        ["request", "list", "--json"],
        ["audit", "show", "--json"],
        ["request", "show", "req-0123456789ab"],
        ["audit", "show", "--request", "req-0123456789ab"],
        ["audit", "report", "batch-0123456789ab", "--out", str(tmp_path / "evidence.html")],
    ]
    code = (
        "import json, sys\nfrom unsir_pipeline.cli import main\n"
        "codes = [main(['--project', sys.argv[1], *argv]) for argv in json.loads(sys.argv[2])]\n"
        "print(json.dumps(codes))\n"
    )
    read_only = [project, *project.rglob("*")]
    ran = run_with_read_only(read_only, [sys.executable, "-c", code, str(project), json.dumps(commands)])

    assert ran.returncode == 0, ran.stderr[-3000:]
    listed, shown, codes = ran.stdout.splitlines()
    assert (json.loads(listed), json.loads(shown), json.loads(codes)) == ([], {"records": []}, [0, 0, 2, 2, 2])
    errors = ran.stderr.splitlines()
    assert errors[:2] == 2 * [
        f"error: no deletion request with id 'req-0123456789ab': no request was ever filed (no request store "
        f"{state / 'requests.sqlite'})"
    ], errors
    assert errors[2] == "error: no audit record mentions batch 'batch-0123456789ab'; known ids: []", errors
    assert list(state.iterdir()) == [] and not (tmp_path / "evidence.html").exists()


def test_a_write_to_a_full_disk_exits_2_naming_the_state_file_and_the_free_space(tmp_path: Path) -> None:
    """`unsir request withdraw` with the state directory on a full disk: exit 1 with "cannot use
    the project's state files ...: cannot open the state database .../requests.sqlite: disk I/O
    error; expected a writable SQLite file" (SQLite could not make the WAL file's -shm index), or
    "(sqlite3.OperationalError) database or disk is full", naming no file. Now exit 2, naming
    the file, that no space is left, the free space of the state's disk, and the fix."""
    from conftest import make_project, run_on_full_disk

    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    store, _ = stores.intake_trail(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)

    withdraw = ["request", "withdraw", request.id, "--reason", "asked twice", "--by", "bob"]
    cli = [sys.executable, "-m", "unsir_pipeline.cli", "--project", str(project)]
    ran = run_on_full_disk(ws.state_dir, [*cli, *withdraw])

    assert ran.returncode == 2, ran.stderr[-2000:]
    error = ran.stderr.strip().splitlines()[-1]
    opening = f"error: no space left on a disk: cannot open the state database {ws.state_dir}/requests.sqlite"
    assert error.startswith(opening)
    assert f"0 B free for the state directory {ws.state_dir}" in error
    assert error.endswith("Free space there (or move that directory to a larger disk) and rerun the command")


def test_withdraw_takes_a_pending_or_failed_request_out_of_the_queue(store: RequestStore) -> None:
    failed = store.add([2], ["two"], "alice", "r")
    store.claim_pending("batch-1")
    store.release("batch-1", "MLflow unreachable", max_attempts=1)
    pending = store.add([1], ["one"], "alice", "consent withdrawn")
    kept = store.add([3], ["three"], "bob", "r")

    first = store.withdraw(pending.id, "alice", "filed twice")
    second = store.withdraw(failed.id, "dpo@corp", "requester took it back")

    assert (first.status, first.error) == ("withdrawn", "withdrawn by alice: filed twice")
    assert (second.status, second.error) == ("withdrawn", "withdrawn by dpo@corp: requester took it back")
    assert (second.attempts, second.batch_id) == (1, "batch-1")  # its history stays
    assert first.updated_at > pending.updated_at
    assert [r.id for r in store.list("withdrawn")] == [failed.id, pending.id]
    assert [r.id for r in store.claim_pending("batch-2")] == [kept.id]  # never claimed


def test_retry_queues_failed_requests_again_with_their_attempts_reset(store: RequestStore) -> None:
    """A failed request could only be withdrawn: nothing queued it again once its cause was
    fixed, so a deletion nobody took back was never carried out."""
    first, second = store.add([1], ["one"], "alice", "r"), store.add([2], ["two"], "bob", "r")
    store.claim_pending("batch-1")
    store.release("batch-1", "TrainingDivergedError: impair", max_attempts=1)
    kept = store.add([3], ["three"], "carol", "r")

    retried = store.retry([second.id, first.id, second.id], "dpo@corp", "lowered the impair rate")

    assert [(before.id, before.status, before.attempts) for before, _ in retried] == [
        (second.id, "failed", 1),
        (first.id, "failed", 1),
    ]
    (_, again), _ = retried
    assert (again.status, again.attempts, again.batch_id) == ("pending", 0, "batch-1")  # its history stays
    assert again.error == (
        "retried by dpo@corp: lowered the impair rate (failed after 1 attempts: TrainingDivergedError: impair)"
    )
    assert [r.id for r in store.claim_pending("batch-2")] == [first.id, second.id, kept.id]


def test_retry_refuses_any_request_not_failed_and_changes_nothing(store: RequestStore) -> None:
    failed = store.add([2], ["two"], "alice", "r")
    store.claim_pending("batch-1")
    store.release("batch-1", "boom", max_attempts=1)
    pending = store.add([1], ["one"], "alice", "r")
    before = store.list()

    with pytest.raises(RequestError) as refused:
        store.retry([failed.id, pending.id], "bob", "fixed")
    assert str(refused.value) == (
        f"request {pending.id} is pending (queued: the next batch takes it); only a failed request can be "
        "retried (nothing was changed)"
    )
    with pytest.raises(RequestError, match="no deletion request with id 'req-nope'"):
        store.retry([failed.id, "req-nope"], "bob", "fixed")
    with pytest.raises(RequestError, match="reason must be a non-empty string"):
        store.retry([failed.id], "bob", "")
    assert store.list() == before


def _running(store: RequestStore) -> DeletionRequest:
    request = store.add([1], ["one"], "alice", "r")
    store.claim_pending("batch-1")  # a batch claimed it first
    return request


def _done(store: RequestStore) -> DeletionRequest:
    request = _running(store)
    store.mark_done("batch-1", 4)
    return request


def _rejected(store: RequestStore) -> DeletionRequest:
    return store.add_rejected([1], ["one"], "alice", "r", "already forgotten")


def _withdrawn(store: RequestStore) -> DeletionRequest:
    return store.withdraw(store.add([1], ["one"], "alice", "r").id, "alice", "filed twice")


@pytest.mark.parametrize(
    ("make", "status"),
    [
        (_running, r"running \(claimed by batch-1: wait for it to end\)"),
        (_done, r"done \(forgotten by version 4\)"),
        (_rejected, r"rejected \(refused at intake: it never runs\)"),
        (_withdrawn, r"withdrawn already \(withdrawn by alice: filed twice\)"),
    ],
)
def test_withdraw_refuses_a_request_claimed_done_or_closed_and_changes_nothing(
    store: RequestStore, make, status
) -> None:
    request = store.get(make(store).id)

    with pytest.raises(RequestError, match=rf"^request {request.id} is {status}; only a pending or failed request"):
        store.withdraw(request.id, "bob", "changed my mind")

    assert store.get(request.id) == request


def test_withdraw_of_an_unknown_id_is_refused_as_show_refuses_it(store: RequestStore) -> None:
    with pytest.raises(RequestError) as shown:
        store.get("req-000000000000")
    with pytest.raises(RequestError) as withdrawn:
        store.withdraw("req-000000000000", "bob", "typo")
    assert str(withdrawn.value) == str(shown.value)


@pytest.mark.parametrize(
    ("by", "reason", "message"),
    [
        ("bob", "", "reason must be a non-empty string, got ''"),
        ("bob", "   ", "reason must be a non-empty string"),
        ("bob", "dup\nlicate", "reason contains control character U\\+000A"),
        ("", "dup", "by must be a non-empty string"),
    ],
)
def test_withdraw_needs_who_and_a_reason_and_changes_nothing_without(store: RequestStore, by, reason, message) -> None:
    request = store.add([1], ["one"], "alice", "r")
    with pytest.raises(RequestError, match=message):
        store.withdraw(request.id, by, reason)
    assert store.get(request.id) == request


def test_deletion_request_is_immutable(store: RequestStore) -> None:
    request = store.add([1], ["one"], "alice", "r")
    with pytest.raises(AttributeError):
        request.status = "done"  # type: ignore[misc]
    assert isinstance(request, DeletionRequest)


def _claim(path: Path, batch_id: str, barrier) -> None:
    store = RequestStore(path)
    barrier.wait()
    store.claim_pending(batch_id)


def test_two_processes_claiming_at_once_never_share_a_request(tmp_path: Path) -> None:
    path = tmp_path / "requests.db"
    store = RequestStore(path)
    for i in range(30):
        store.add([i], [str(i)], "alice", "r")
    # spawn, not fork: the test process has torch loaded, and a clean child is what a second
    # `unsir` process would be.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_claim, args=(path, f"batch-{w}", barrier)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    requests = store.list()
    # A request claimed twice would show attempts == 2.
    assert all(r.status == "running" and r.attempts == 1 for r in requests)
    assert {r.batch_id for r in requests} <= {"batch-0", "batch-1"}
    assert len(requests) == 30


# --- limits on request text ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("requester", "reason", "message"),
    [
        (
            "alice\nid  status  mallory",
            "r",
            r"requester contains control character U\+000A at position 5: 'alice\\nid  status  mallory'",
        ),
        ("alice", "ok\x1b[2Jcleared", r"reason contains control character U\+001B at position 2"),
        ("alice", "tab\there", r"reason contains control character U\+0009"),
        ("alice\x00", "r", r"requester contains control character U\+0000"),
        ("\u202eecila", "r", r"requester contains control character U\+202E at position 0"),
        ("a" * 201, "r", r"requester has 201 characters; the limit is 200: 'a{60}'\.\.\. \(201 characters\)"),
        (
            "alice",
            "x" * 1_000_000,
            r"reason has 1000000 characters; the limit is 2000: 'x{60}'\.\.\. \(1000000 characters\)",
        ),
        ("al\udcffce", "r", r"requester is not valid UTF-8 \(byte 0xff at position 2\)"),
        (b"al\xffce", "r", r"requester is not valid UTF-8 \(byte 0xff at position 2\)"),
    ],
)
def test_request_text_limits_name_field_value_and_limit(store: RequestStore, requester, reason, message) -> None:
    with pytest.raises(RequestError, match=message):
        store.add([1], ["one"], requester, reason)
    with pytest.raises(RequestError, match=message):
        store.add_rejected([], [], requester, reason, "refused")
    assert store.list() == []


def test_text_at_the_limit_and_non_ascii_is_accepted(store: RequestStore) -> None:
    request = store.add([1], ["one"], "Zoë Ångström <zoe@corp>", "é" * 2000, requested=["ünö"])
    assert store.get(request.id).reason == "é" * 2000
    assert store.get(request.id).requested == ("ünö",)


def test_requested_entries_are_limited_too(store: RequestStore) -> None:
    with pytest.raises(RequestError, match=r"requested\[1\] contains control character U\+000A"):
        store.add([1], ["one"], "alice", "r", requested=["one", "x\ny"])
    with pytest.raises(RequestError, match=r"requested names 65 classes; the limit is 64"):
        store.add([1], ["one"], "alice", "r", requested=["1"] * 65)
    with pytest.raises(RequestError, match=r"class_names entry for class 1 has 201 characters"):
        store.add([1], ["n" * 201], "alice", "r")


def test_check_request_fields_runs_before_anything_is_stored() -> None:
    check_request_fields("alice", "", ["3"])
    too_long = r"^class '3{60}'\.\.\. \(101 characters\) has 101 characters; the limit is 100$"
    with pytest.raises(RequestError, match=too_long):
        check_request_fields("alice", "r", ["3" * 101])
    with pytest.raises(RequestError, match=r"^class 3 must be a string, got int$"):  # named as given, not requested[1]
        check_request_fields("alice", "r", ["3", 3])


def test_two_requests_filed_at_once_are_each_checked_against_the_other(store: RequestStore) -> None:
    """`request add` read the queued classes outside the store's write transaction: two added at
    once both passed "a class must remain" and together queued every class, so the batch
    taking them failed them. Now the check and the insert are one write transaction."""
    import threading
    import time

    # Here, not at the top: the processes the tests above spawn import this module, and
    # conftest would have each import torch (13 s more for the claim test).
    from conftest import leaves_a_class

    checking = threading.Event()

    def slow(queued: list[DeletionRequest]) -> None:
        checking.set()
        time.sleep(0.5)  # the second request is filed meanwhile
        leaves_a_class(0)(queued)

    first = threading.Thread(target=store.add, args=([0], ["zero"], "alice", "r"), kwargs={"admit": slow})
    first.start()
    checking.wait()
    with pytest.raises(RequestError, match=r"class 1 with queued \[0\] would leave no class"):
        store.add([1], ["one"], "bob", "r", admit=leaves_a_class(1))
    first.join()
    assert [r.classes for r in store.list("pending")] == [(0,)]


def test_a_setup_fault_is_told_from_a_failure_of_the_run() -> None:
    """What decides whether a failed batch counts an attempt of its requests, and the exit code
    of `unsir` (2 for bad input or configuration): one classification for both."""
    from mlflow.exceptions import MlflowException

    from unsir.checkpoint import CheckpointIntegrityError
    from unsir.errors import TrainingDivergedError
    from unsir_pipeline.adapters.data_versioning import DataVersioningError
    from unsir_pipeline.adapters.prepared_data import PreparedDataDamaged, PreparedDataMissing
    from unsir_pipeline.adapters.registry import RegistryError
    from unsir_pipeline.adapters.validation import ValidationFailed, ValidationReport
    from unsir_pipeline.cli.errors import is_user_error
    from unsir_pipeline.governance.failures import is_bad_input, setup_fault
    from unsir_pipeline.settings.config import ConfigError

    bad_input = [
        PreparedDataDamaged("x"),
        PreparedDataMissing("x"),
        CheckpointIntegrityError("x"),
        ConfigError("x"),
        ValidationFailed(ValidationReport(success=False, failures=("split",), evaluated=1)),  # data to restore
    ]
    environment = [
        RegistryError("cannot reach the MLflow registry"),
        MlflowException("connection refused"),
        StateError("file is not a database"),
        DataVersioningError("dvc pull failed"),
        OSError("disk I/O error"),
    ]
    run = [TrainingDivergedError("impair: inf"), RuntimeError("a crash inside the method"), KeyboardInterrupt()]
    assert all(is_bad_input(err) and is_user_error(err) and setup_fault(err) for err in bad_input)
    assert all(setup_fault(err) and not is_user_error(err) for err in environment)  # exit 1: a service down...
    assert [setup_fault(err) for err in run] == [None, None, None]


def test_a_prefect_server_that_stops_answering_is_a_setup_fault_named_in_one_line() -> None:
    """Prefect's client meeting a configured server that no longer answers (httpx's ConnectError,
    no OSError) was taken for a failure of the run: a batch counted an attempt of its requests
    and kept httpx's bare "All connection attempts failed"."""
    import socket

    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    from unsir_pipeline.governance.failures import failure_message, setup_fault

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}/api"
    with temporary_settings({PREFECT_API_URL: url, PREFECT_CLIENT_MAX_RETRIES: 0}):
        with pytest.raises(Exception) as raised, get_client(sync_client=True) as client:  # noqa: B017
            client.read_global_concurrency_limit_by_name("unsir-deletion-batch")
        fault, message = setup_fault(raised.value), failure_message(raised.value)
    assert fault == "the Prefect server (not answering)", (fault, raised.value)
    assert f"cannot reach the Prefect server at {url} (PREFECT_API_URL)" in message and "\n" not in message


def test_a_request_pending_after_a_failed_batch_shows_why_and_when(tmp_path: Path, capsys) -> None:
    """A batch that failed on bad input (here a model the head check refuses) releases its
    requests to pending without counting an attempt, so the next night tries them again. `request
    list` showed the error without when it happened (only when the request was filed), and a
    request a batch holds again showed the earlier error bare, as if it were failing now."""
    import shutil

    import torch
    from conftest import ROOT

    from unsir.errors import UnlearningInputError
    from unsir.models import check_classifier_head
    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.governance.failures import failure_message
    from unsir_pipeline.settings.workspace import Workspace

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    ws = Workspace.load(tmp_path)
    store = stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    store.claim_pending("batch-1")
    head_free = torch.nn.Sequential(torch.nn.Conv2d(1, 10, 8), torch.nn.Flatten())
    with pytest.raises(UnlearningInputError) as refused:
        check_classifier_head(head_free, torch.zeros(1, 1, 8, 8), 10, device=torch.device("cpu"))
    error = failure_message(refused.value)
    (released,) = store.release("batch-1", error, ws.params.requests.max_attempts, count_attempt=False)
    assert (released.status, released.attempts) == ("pending", 0)

    cli = ["--project", str(tmp_path), "request"]
    assert main([*cli, "list"]) == 0
    assert f"\n{'':<18}at {released.updated_at}: {error}\n" in capsys.readouterr().out
    for argv in ([*cli, "list", "--json"], [*cli, "show", request.id, "--json"]):
        assert main(argv) == 0
        shown = json.loads(capsys.readouterr().out)
        shown = shown[0] if isinstance(shown, list) else shown
        assert (shown["status"], shown["error"], shown["updated_at"]) == ("pending", error, released.updated_at)
    assert main([*cli, "show", request.id]) == 0
    out = capsys.readouterr().out
    assert f"error         {error}\n" in out and f"updated_at    {released.updated_at}\n" in out

    store.claim_pending("batch-2")  # the next night's batch holds it
    assert main([*cli, "list"]) == 0
    assert f"an earlier attempt failed: {error}" in capsys.readouterr().out


def test_a_request_a_stopped_batch_left_running_says_so_and_what_releases_it(tmp_path: Path, capsys) -> None:
    """A batch killed mid-run leaves its requests `running` until the next batch releases them.
    `request list` and `request show` showed them as plain `running`, as if a batch were still
    at work. No batch holds the batch lock any more: they say so, and that the next `unsir batch
    run` puts them back in the queue; under a live batch (the lock held), plain `running`. Reading
    makes no lock file."""
    import shutil

    from conftest import ROOT

    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import locks, stores
    from unsir_pipeline.settings.workspace import Workspace

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    ws = Workspace.load(tmp_path)
    store = stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    store.claim_pending("batch-killed")  # what a killed batch leaves
    cli = ["--project", str(tmp_path), "request"]
    stopped = (
        "no batch or forget run is running it now (batch-killed stopped before finishing); the next "
        "`unsir batch run` puts it back in the queue"
    )

    assert main([*cli, "list"]) == 0
    assert f"\n{'':<18}{stopped}\n" in capsys.readouterr().out
    assert main([*cli, "show", request.id]) == 0
    assert f"\n{'note':<14}{stopped}\n" in capsys.readouterr().out
    for argv in ([*cli, "list", "--json"], [*cli, "show", request.id, "--json"]):
        assert main(argv) == 0
        shown = json.loads(capsys.readouterr().out)
        shown = shown[0] if isinstance(shown, list) else shown
        assert (shown["status"], shown["run_alive"]) == ("running", False)
    assert not (ws.state_dir / "batch.lock").exists()  # asking made none

    with locks.deletion_batch_lock(ws) as acquired:  # a live batch holds the queue
        assert acquired
        assert main([*cli, "list"]) == 0
        assert "no batch or forget run" not in capsys.readouterr().out
        assert main([*cli, "show", request.id, "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["run_alive"] is True
    assert main([*cli, "list"]) == 0  # the lock file there now, and free: stopped again
    assert stopped in capsys.readouterr().out


_HOLD_WRITE_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()  # until the test closes our stdin
"""


def test_a_store_another_process_holds_locked_names_its_file_and_what_to_do(
    store: RequestStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`unsir request add` while another process holds the request store's write lock (a
    `sqlite3` shell left in a transaction, a backup tool): it said only "(sqlite3.OperationalError)
    database is locked", naming no file and nothing to do."""
    import subprocess

    from unsir_pipeline.adapters import state_store

    monkeypatch.setattr(state_store, "BUSY_TIMEOUT_MS", 300)  # SQLite's wait, shortened for the test
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(store.db.path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError) as refused:
            store.add([3], ["three"], "alice", "consent withdrawn")
    finally:
        holder.communicate("")
    message = str(refused.value)
    assert str(store.db.path) in message and "another process" in message, message
    assert "run the command again" in message, message
    assert store.list() == []  # nothing half-written; the lock gone, the same request is filed
    assert [r.requester for r in [store.add([3], ["three"], "alice", "consent withdrawn")]] == ["alice"]


def test_a_store_locked_before_its_first_migration_names_its_file_and_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first command of a project (the store's tables made then) while another process holds
    the file: it said "cannot open the state database ...: database is locked; expected a
    writable SQLite file", as if the file were the fault."""
    import subprocess

    from unsir_pipeline.adapters import state_store

    monkeypatch.setattr(state_store, "BUSY_TIMEOUT_MS", 300)
    path = tmp_path / "requests.db"
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_WRITE_LOCK, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StateError) as refused:
            RequestStore(path)
    finally:
        holder.communicate("")
    message = str(refused.value)
    assert str(path) in message and "another process" in message and "expected a writable" not in message, message
    assert RequestStore(path).list() == []  # the lock gone, the store is made


def test_a_state_file_in_a_folder_not_yet_made_counts_as_writable(tmp_path: Path) -> None:
    """A fresh clone has no state/ folder until the first write makes it: read as read-only, it
    refused `unsir promote` as "a read-only copy or mount"."""
    from unsir_pipeline.adapters.state_store import StateDatabase

    assert StateDatabase(tmp_path / "state" / "nested" / "requests.sqlite").writable
