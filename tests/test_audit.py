"""The audit trail: hash chaining, idempotent appends, and tamper detection.

Tampering is done as an attacker with the file would do it: raw sqlite3, dropping the
append-only triggers first.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import shutil
import sqlite3
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from conftest import flow_result

from unsir_pipeline.adapters.state_store import StateError, StateSchemaRefused, sqlite_read_only_uri
from unsir_pipeline.governance.audit import (
    GENESIS,
    AuditError,
    AuditLog,
    VerifyResult,
    audit_key_from_env,
    head_mac,
)


def _hash(row: dict) -> str:
    """The documented recipe, written out independently of the module."""
    body = {key: row[key] for key in ("seq", "ts", "event", "actor", "idempotency_key", "prev_hash")}
    body["request_ids"] = json.loads(row["request_ids"])
    body["payload"] = json.loads(row["payload"])
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _tamper(path: Path, *statements: str, params: tuple = ()) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TRIGGER audit_no_update")
        conn.execute("DROP TRIGGER audit_no_delete")
        for statement in statements:
            conn.execute(statement, params if "?" in statement else ())


def _row(path: Path, seq: int) -> dict:
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        return dict(conn.execute("SELECT * FROM audit WHERE seq = ?", (seq,)).fetchone())


@pytest.fixture(scope="module")
def ten_records(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten records: 1..10, payload {"n": seq}, request ids req-a (odd) / req-a, req-b (even).
    Written once (each append is fsynced) and copied for every test that tampers with it."""
    path = tmp_path_factory.mktemp("ten") / "audit.db"
    log = AuditLog(path)
    for n in range(1, 11):
        log.append(
            "request-added" if n % 2 else "batch-finished",
            actor="tester",
            payload={"n": n},
            request_ids=("req-a",) if n % 2 else ("req-a", "req-b"),
        )
    return path


@pytest.fixture
def log(ten_records: Path, tmp_path: Path) -> AuditLog:
    # The last connection to close checkpoints the WAL, so the .db file alone holds the records.
    for name in (ten_records.name, ten_records.name + ".head"):
        shutil.copyfile(ten_records.with_name(name), tmp_path / name)
    return AuditLog(tmp_path / ten_records.name)


def test_append_chains_each_record_to_the_one_before(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    first = log.append("request-added", actor="alice", payload={"classes": (3,)}, request_ids=["req-1"])
    second = log.append("batch-finished", actor="batch", payload={"version": 2})

    assert (first.seq, second.seq) == (1, 2)
    assert first.prev_hash == GENESIS
    assert second.prev_hash == first.hash
    assert first.payload == {"classes": [3]}  # as read back: JSON has no tuples
    assert datetime.fromisoformat(first.ts).utcoffset() == timedelta(0)
    assert log.records() == [first, second]
    # Anyone can re-check a record with the recipe in the module docstring.
    assert _hash(_row(log.path, 1)) == first.hash
    assert _hash(_row(log.path, 2)) == second.hash


def test_records_filter_by_request_and_event_in_seq_order(log: AuditLog) -> None:
    assert [r.seq for r in log.records(request_id="req-b")] == [2, 4, 6, 8, 10]
    assert [r.seq for r in log.records(request_id="req-a", event="request-added")] == [
        1,
        3,
        5,
        7,
        9,
    ]
    assert log.records(request_id="req-") == []  # whole ids only, not substrings
    assert log.records()[4].to_dict()["request_ids"] == ["req-a"]


def test_idempotent_append_returns_the_existing_record_and_writes_nothing(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db")
    first = log.append("batch-finished", actor="batch", payload={"v": 2}, idempotency_key="batch-7")
    head = log.head_path.read_text()

    retried = log.append("batch-finished", actor="batch", payload={"v": 3}, idempotency_key="batch-7")

    assert retried == first
    assert len(log.records()) == 1
    assert log.head_path.read_text() == head
    with pytest.raises(AuditError, match="'batch-7' already belongs to record 1 .*'batch-finished'"):
        log.append("model-promoted", actor="batch", payload={}, idempotency_key="batch-7")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"mia": float("nan")}, r"payload.mia is nan"),
        ({"per_class": {3: 0.1}}, r"payload.per_class has key 3 of type int"),
        ({"model": object()}, r"not JSON-serialisable"),
    ],
)
def test_append_refuses_payloads_json_cannot_hold_exactly(tmp_path: Path, payload, message) -> None:
    log = AuditLog(tmp_path / "audit.db")
    with pytest.raises(AuditError, match=message):
        log.append("evaluated", actor="batch", payload=payload)
    assert log.records() == []


def test_append_refuses_blank_actor(tmp_path: Path) -> None:
    with pytest.raises(AuditError, match="actor must be a non-empty string, got ''"):
        AuditLog(tmp_path / "audit.db").append("e", actor="", payload={})


@pytest.mark.parametrize("statement", ["UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"])
def test_table_refuses_updates_and_deletes(log: AuditLog, statement: str) -> None:
    with (
        sqlite3.connect(log.path) as conn,
        pytest.raises(sqlite3.DatabaseError, match="append-only"),
    ):
        conn.execute(statement)
    assert log.verify().ok


def test_untouched_log_verifies(log: AuditLog, tmp_path: Path) -> None:
    assert log.verify() == VerifyResult(ok=True, records=10, first_bad_seq=None, problem=None)
    assert AuditLog(tmp_path / "empty.db").verify().ok


def test_edited_payload_is_found(log: AuditLog) -> None:
    _tamper(log.path, """UPDATE audit SET payload = '{"n":700}' WHERE seq = 7""")

    result = log.verify()

    assert (result.ok, result.first_bad_seq) == (False, 7)
    assert result.problem.startswith("record 7: content does not match its hash")


def test_edited_and_rehashed_record_is_found_by_the_next_link(log: AuditLog) -> None:
    row = _row(log.path, 7)
    row["payload"] = '{"n":700}'
    _tamper(
        log.path,
        "UPDATE audit SET payload = ?, hash = ? WHERE seq = 7",
        params=(row["payload"], _hash(row)),
    )

    result = log.verify()

    assert result.first_bad_seq == 8
    assert result.problem.startswith("record 8: prev_hash does not match record 7")
    assert result.later_problems == ()  # the walk goes on from record 8's stored hash: one break, one problem


def test_verify_and_read_gives_what_verify_and_records_give_from_one_read(log: AuditLog) -> None:
    assert log.verify_and_read() == (log.verify(), log.records())

    _tamper(log.path, """UPDATE audit SET payload = '{"n":700}' WHERE seq = 7""")  # readable, not intact
    assert log.verify_and_read() == (log.verify(), log.records())

    with sqlite3.connect(log.path) as conn:  # the triggers are gone already
        conn.execute("UPDATE audit SET payload = 'not json' WHERE seq = 4")
        conn.execute("UPDATE audit SET payload = '[' WHERE seq = 9")
    result, read = log.verify_and_read()
    assert result == log.verify()
    assert sorted(result.bad_seqs) == [4, 7, 9]
    with pytest.raises(AuditError) as raised:
        log.records()
    assert isinstance(read, AuditError)
    assert str(read) == str(raised.value)  # the first unreadable record, as records() names it
    assert str(read).startswith("record 4:")


def test_swapped_payloads_are_found_at_the_first(log: AuditLog) -> None:
    _tamper(
        log.path,
        """UPDATE audit SET payload = '{"n":6}' WHERE seq = 3""",
        """UPDATE audit SET payload = '{"n":3}' WHERE seq = 6""",
    )

    result = log.verify()

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert "record 3:" in result.problem
    assert [seq for seq, _ in result.later_problems] == [6]


def test_every_broken_record_is_named_and_the_rest_known_intact(log: AuditLog) -> None:
    """verify() used to stop at the first problem: after one edited record, an auditor could not
    tell whether any later record (a later deletion's evidence) was still intact, and a second
    edit hid behind the first. The walk now goes on, resynchronised on the stored hashes."""
    _tamper(
        log.path,
        """UPDATE audit SET payload = '{"n":300}' WHERE seq = 3""",
        "DELETE FROM audit WHERE seq IN (6, 7)",
        """UPDATE audit SET actor = 'mallory' WHERE seq = 9""",
    )

    result = log.verify()

    assert (result.ok, result.records, result.first_bad_seq) == (False, 8, 3)
    assert result.later_problems == (
        (6, "records 6-7 are missing: the log jumps from record 5 to record 8 (deleted?)"),
        (9, "record 9: content does not match its hash (edited, or moved from another position?)"),
    )
    assert result.bad_seqs == {3, 6, 9}  # records 1, 2, 4, 5, 8 and 10 verify


def test_a_break_in_the_middle_does_not_stop_appends_nor_hide_behind_them(log: AuditLog) -> None:
    """Deletions go on after an earlier record was edited (holding them would let whoever can
    write the disk hold every deletion); the break stays named, the new record verifies."""
    _tamper(log.path, """UPDATE audit SET payload = '{"n":300}' WHERE seq = 3""")

    log.append("request-added", actor="tester", payload={"n": 11})

    result = log.verify()
    assert (result.ok, result.records, result.first_bad_seq, result.later_problems) == (False, 11, 3, ())


def test_the_evidence_report_says_whether_a_break_reaches_its_own_records(log: AuditLog) -> None:
    from unsir_pipeline.governance.report import batch_report_html

    for n in (1, 2):
        log.append("batch_started", actor="tester", payload={"batch_id": "b-1", "n": n})
    _tamper(log.path, """UPDATE audit SET payload = '{"n":300}' WHERE seq = 3""")
    own = [rec for rec in log.records() if rec.payload.get("batch_id") == "b-1"]

    html = batch_report_html("b-1", own, [], log.verify(), {})
    assert "BROKEN at record 3" in html
    assert "None of this batch's 2 record(s) (11, 12) is among them" in html

    with sqlite3.connect(log.path) as conn:  # the triggers are gone already
        conn.execute("UPDATE audit SET actor = 'mallory' WHERE seq = 12")
    html = batch_report_html("b-1", own, [], log.verify(), {})
    assert "and at record 12" in html
    assert "This batch's record(s) 12 are among them" in html


def test_deleted_middle_record_is_found(log: AuditLog) -> None:
    _tamper(log.path, "DELETE FROM audit WHERE seq = 5")

    result = log.verify()

    assert (result.ok, result.records, result.first_bad_seq) == (False, 9, 5)
    assert result.problem == "record 5 is missing: the log jumps from record 4 to record 6 (deleted?)"


def test_deleted_first_record_is_found(log: AuditLog) -> None:
    _tamper(log.path, "DELETE FROM audit WHERE seq = 1")

    result = log.verify()

    assert result.first_bad_seq == 1
    assert "the log starts at record 2" in result.problem


def test_deleted_last_record_is_found_by_the_head_anchor(log: AuditLog) -> None:
    _tamper(log.path, "DELETE FROM audit WHERE seq = 10")

    result = log.verify()

    assert (result.ok, result.records, result.first_bad_seq) == (False, 9, 10)
    assert result.problem == ("log ends at record 9 but the head anchor records 10 (records removed from the end?)")


def test_append_refuses_to_cover_up_a_cut_tail(log: AuditLog) -> None:
    # Appending would write a new record 10 and re-anchor: the deletion would become invisible.
    _tamper(log.path, "DELETE FROM audit WHERE seq = 10")

    with pytest.raises(AuditError, match="log ends at record 9 .* head anchor records 10"):
        log.append("request-added", actor="tester", payload={})

    assert log.verify().first_bad_seq == 10


def test_missing_head_anchor_is_found_and_blocks_appends(log: AuditLog) -> None:
    log.head_path.unlink()

    result = log.verify()

    assert (result.ok, result.first_bad_seq) == (False, 11)
    assert result.problem == f"head anchor {log.head_path} is missing (deleted?)"
    with pytest.raises(AuditError, match="head anchor is missing"):
        log.append("request-added", actor="tester", payload={})


def test_unreadable_head_anchor_is_reported_not_raised(log: AuditLog) -> None:
    log.head_path.write_text("{not json")

    result = log.verify()

    assert not result.ok
    assert "is unreadable: '{not json'" in result.problem


def test_check_appendable_says_in_advance_what_append_would_refuse(log: AuditLog, signed_log: AuditLog) -> None:
    """Callers check before a change whose record must follow it (a request stored, an alias
    moved); the check writes nothing and refuses what append refuses."""
    log.check_appendable()  # intact: nothing raised
    assert log.verify().records == 10
    log.head_path.write_text("{not json")
    with pytest.raises(AuditError, match="is unreadable"):
        log.check_appendable()
    with pytest.raises(AuditError, match="is signed, but this process has no audit key"):
        AuditLog(signed_log.path).check_appendable()
    _tamper(signed_log.path, "DELETE FROM audit WHERE seq = 5")
    with pytest.raises(AuditError, match="log ends at record 4 .* head anchor records 5"):
        signed_log.check_appendable()


def test_reordered_records_are_found_and_named_with_the_place_each_was_written_at(log: AuditLog) -> None:
    """Two records swapped were reported as 'content does not match its hash (edited, or moved
    from another position?)' and 'prev_hash does not match': an auditor could not tell a
    reordering from an edit, nor where each record belongs."""
    _tamper(
        log.path,
        "UPDATE audit SET seq = -1 WHERE seq = 3",
        "UPDATE audit SET seq = 3 WHERE seq = 4",
        "UPDATE audit SET seq = 4 WHERE seq = -1",
    )

    result = log.verify()

    assert (result.ok, result.first_bad_seq) == (False, 3)
    assert result.problem.startswith("record 3:")
    problems = [(result.first_bad_seq, result.problem), *result.later_problems]
    assert problems == [
        (3, "record 3: content does not match its hash: it is record 4 as written, moved (records reordered)"),
        (3, "record 3: prev_hash does not match record 2: it links to the record now at 4 (records reordered)"),
        (4, "record 4: content does not match its hash: it is record 3 as written, moved (records reordered)"),
        (4, "record 4: prev_hash does not match record 3: it links to the record now at 2 (records reordered)"),
        (5, "record 5: prev_hash does not match record 4: it links to the record now at 3 (records reordered)"),
    ]


def test_reordered_and_rehashed_records_are_found_by_prev_hash(log: AuditLog) -> None:
    # A careful attacker swaps records 3 and 4 and re-hashes both under their new seqs; each
    # record is then self-consistent, and only the chain's links give it away.
    third, fourth = _row(log.path, 3), _row(log.path, 4)
    third["seq"], fourth["seq"] = 4, 3
    _tamper(log.path, "DELETE FROM audit WHERE seq IN (3, 4)")
    with sqlite3.connect(log.path) as conn:
        for row in (fourth, third):
            row["hash"] = _hash(row)
            conn.execute(
                "INSERT INTO audit VALUES (:seq, :ts, :event, :actor, :request_ids, :payload,"
                " :idempotency_key, :prev_hash, :hash)",
                row,
            )

    result = log.verify()

    assert result.first_bad_seq == 3
    assert result.problem.startswith("record 3: prev_hash does not match record 2")


def _as_written_before_migrations(path: Path, user_version: int) -> None:
    """The trail's layout before migrations: the audit table and its triggers, no version
    table, the schema version in PRAGMA user_version."""
    with sqlite3.connect(path) as conn:
        conn.execute("DROP TABLE unsir_audit_schema")
        conn.execute("DROP TABLE audit_head")
        conn.execute(f"PRAGMA user_version = {user_version}")


def test_log_written_before_migrations_is_adopted_and_keeps_verifying(log: AuditLog) -> None:
    _as_written_before_migrations(log.path, 1)
    # Read-only, it is read as the baseline's layout, audit_0001, behind audit_0002 (not declared
    # read-compatible): refused as a stamped audit_0001 copy is, saying what the file holds.
    with pytest.raises(
        StateSchemaRefused,
        match=r"holds audit schema revision audit_0001 \(the layout of a file from before migrations were recorded\), "
        "an older one; a command that only reads does not migrate",
    ):
        AuditLog(log.path, read_only=True)

    adopted = AuditLog(log.path)

    assert adopted.verify() == VerifyResult(ok=True, records=10, first_bad_seq=None, problem=None)
    adopted.append("after-migration", actor="tester", payload={"n": 11})
    assert adopted.verify().ok and adopted.verify().records == 11
    assert adopted.db.revision("audit") == ["audit_0002"]
    # The triggers came through the adoption.
    with sqlite3.connect(log.path) as conn, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM audit WHERE seq = 1")


def test_log_from_another_schema_version_is_refused(log: AuditLog) -> None:
    _as_written_before_migrations(log.path, 2)

    with pytest.raises(StateSchemaRefused, match="schema version 2.*expects version 1"):
        AuditLog(log.path)


def test_log_from_a_newer_revision_is_refused(log: AuditLog) -> None:
    with sqlite3.connect(log.path) as conn:
        conn.execute("UPDATE unsir_audit_schema SET version_num = 'audit_9999'")

    with pytest.raises(
        StateSchemaRefused, match="revision 'audit_9999', which this code does not know.*expects revision 'audit_0002'"
    ):
        AuditLog(log.path)


def test_a_read_only_trail_behind_a_migration_not_declared_read_compatible_is_refused(log: AuditLog) -> None:
    """audit_0002 adds the table of a shared trail's head, which this code reads: it is not
    declared READ_COMPATIBLE, so a read-only copy at audit_0001 is refused, not read wrongly."""
    from conftest import downgrade_schema

    downgrade_schema(log.path, "audit", "audit_0001")

    with pytest.raises(
        StateSchemaRefused, match="revision audit_0001, an older one; a command that only reads does not"
    ):
        AuditLog(log.path, read_only=True)


def test_a_store_the_commands_that_only_read_cannot_open_exits_2_from_each_of_them(tmp_path: Path, capsys) -> None:
    """A copy whose trail is at audit_0001 (behind audit_0002, not read-compatible): `unsir
    audit verify` and `audit show` exited 1, "the pipeline failed", where `unsir request list`
    refused a request store at a revision it cannot read with 2. A copy at the wrong revision is
    the setup to fix, not a failure: all exit 2, with or without --json."""
    from conftest import downgrade_schema, make_project

    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    store, _ = stores.intake_trail(ws)
    store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # its intake record, as `request add` leaves it
    downgrade_schema(stores.state_target(ws, ws.params.requests.audit_log), "audit", "audit_0001")

    for command in (["audit", "verify"], ["audit", "show"]):
        assert main(["--project", str(project), *command]) == 2, command
        assert "holds audit schema revision audit_0001, an older one" in capsys.readouterr().err
        assert main(["--project", str(project), *command, "--json"]) == 2, command
        assert json.loads(capsys.readouterr().out)["exit_code"] == 2

    # As `request list` refuses a request store at a revision this code does not know.
    with sqlite3.connect(stores.state_target(ws, ws.params.requests.store)) as conn:
        conn.execute("UPDATE unsir_requests_schema SET version_num = 'requests_9999'")
    assert main(["--project", str(project), "request", "list"]) == 2
    assert "revision 'requests_9999', which this code does not know" in capsys.readouterr().err


def test_state_migrate_brings_the_stores_to_the_head_and_changes_nothing_else(tmp_path: Path, capsys) -> None:
    """A copy at requests_0001/audit_0001, which `unsir audit verify` refuses: its only way to the
    head was a command that writes (`unsir request add`, `unsir batch run`), a deletion request or
    an unlearning run for a schema change. `unsir state migrate` migrates both stores alone (no
    record, no request), says from and to which revision, and with --dry-run writes nothing."""
    from conftest import downgrade_schema, make_project

    from unsir_pipeline.adapters.state_store import StateDatabase
    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    migrate = ["--project", str(project), "state", "migrate"]
    targets = {"requests": ws.params.requests.store, "audit": ws.params.requests.audit_log}
    targets = {name: stores.state_target(ws, relative) for name, relative in targets.items()}
    assert main(migrate) == 0  # nothing to migrate, and nothing is created
    assert "requests (" in (out := capsys.readouterr().out) and "not created yet" in out
    assert not any(path.exists() for path in targets.values())

    store, log = stores.intake_trail(ws)
    store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # its intake record, as `request add` leaves it
    records = log.records()
    for store_name, revision in (("requests", "requests_0001"), ("audit", "audit_0001")):
        downgrade_schema(targets[store_name], store_name, revision)
    # The databases and the anchor, not SQLite's -wal/-shm, which reading them makes in a writable directory.
    state = {
        path: path.read_bytes() for path in (project / "state").iterdir() if not path.name.endswith(("-wal", "-shm"))
    }

    assert main([*migrate, "--dry-run", "--json"]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert planned["dry_run"] is True
    assert [(m["store"], m["from"], m["to"], m["changes"]) for m in planned["stores"]] == [
        ("requests", "requests_0001", "requests_0002", True),
        ("audit", "audit_0001", "audit_0002", True),
    ]
    assert {path: path.read_bytes() for path in state} == state  # nothing written
    assert main(["--project", str(project), "audit", "verify"]) == 2
    assert "`unsir state migrate` brings it to this code's revision 'audit_0002'" in capsys.readouterr().err

    assert main(migrate) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"requests ({targets['requests']}): migrated requests_0001 -> requests_0002",
        f"audit ({targets['audit']}): migrated audit_0001 -> audit_0002",
    ]
    assert [StateDatabase(targets[s]).revision(s) for s in ("requests", "audit")] == [["requests_0002"], ["audit_0002"]]
    assert AuditLog(targets["audit"], read_only=True).records() == records  # no record of its own
    assert main(["--project", str(project), "audit", "verify"]) == 0
    capsys.readouterr()
    assert main(migrate) == 0
    assert "audit (" in (out := capsys.readouterr().out) and "already current (audit_0002)" in out


def test_a_trail_opened_read_only_verifies_and_cannot_be_written(log: AuditLog) -> None:
    """How `unsir audit verify` opens the trail: SQLite's read-only URI, which refuses writes
    to root too, so this holds whoever runs the tests."""
    path = log.path
    reader = AuditLog(path, read_only=True)

    assert reader.verify().ok and len(reader.records()) == 10
    with pytest.raises(StateError, match="opened read-only; cannot write"):
        reader.append("cover-up", actor="mallory", payload={})
    with (
        closing(sqlite3.connect(sqlite_read_only_uri(path), uri=True)) as conn,
        pytest.raises(sqlite3.OperationalError, match="readonly"),
    ):
        conn.execute("UPDATE audit_head SET records = 0")


@pytest.fixture
def read_only_dir(tmp_path: Path):
    directory = tmp_path / "snapshot"
    directory.mkdir()
    yield directory
    directory.chmod(0o755)  # or pytest cannot remove it


def test_a_trail_in_a_directory_nobody_may_write_is_read_immutable(log: AuditLog, read_only_dir: Path) -> None:
    """An auditor's read-only copy: SQLite cannot make the -shm index of a WAL file there, so
    the file is opened immutable (safe: nothing can write it there either)."""
    if os.geteuid() == 0:
        pytest.skip(
            "running as root: a directory's permissions do not stop root, so this read-only directory would "
            "not be one (test_batches checks the CLI on a read-only mount, and the read-only URI is checked above)"
        )
    for name in (log.path.name, log.path.name + ".head"):
        shutil.copyfile(log.path.with_name(name), read_only_dir / name)
    copy = read_only_dir / log.path.name
    read_only_dir.chmod(0o555)

    assert sqlite_read_only_uri(copy).endswith("?mode=ro&immutable=1")
    assert AuditLog(copy, read_only=True).verify().ok
    assert sorted(p.name for p in read_only_dir.iterdir()) == sorted([copy.name, copy.name + ".head"])

    # A -wal holding commits cannot be read without its -shm: refused, not silently ignored.
    read_only_dir.chmod(0o755)
    copy.with_name(copy.name + "-wal").write_bytes(b"\0" * 32)
    read_only_dir.chmod(0o555)
    with pytest.raises(StateError, match="audit.db-wal holds commits, but there is no audit.db-shm"):
        AuditLog(copy, read_only=True)


def _append_many(path: Path, worker: int, count: int, barrier) -> None:
    log = AuditLog(path)
    barrier.wait()
    for i in range(count):
        log.append("concurrent", actor=f"worker-{worker}", payload={"worker": worker, "i": i})


def test_two_processes_appending_at_once_keep_one_chain(tmp_path: Path) -> None:
    path = tmp_path / "audit.db"
    AuditLog(path)
    # spawn, not fork: the test process has torch loaded, and a clean child is what a second
    # batch process would be.
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    workers = [ctx.Process(target=_append_many, args=(path, w, 20, barrier)) for w in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0

    log = AuditLog(path)
    assert log.verify() == VerifyResult(ok=True, records=40, first_bad_seq=None, problem=None)
    records = log.records()
    assert [r.seq for r in records] == list(range(1, 41))
    for w in range(2):
        assert [r.payload["i"] for r in records if r.payload["worker"] == w] == list(range(20))
    assert not list(tmp_path.glob("*.tmp-*"))  # anchor temp files were all replaced


# --- the signed head anchor ----------------------------------------------------------------

KEY = b"k" * 32
OTHER_KEY = b"o" * 32


def _forge(path: Path, seq: int, payload: dict) -> None:
    """Edit record ``seq`` and recompute every hash from there on, as an attacker with the
    project's own recipe would; then rewrite the (unkeyed) head anchor to match."""
    _tamper(path, "UPDATE audit SET payload = ? WHERE seq = ?", params=(json.dumps(payload), seq))
    with sqlite3.connect(path) as conn:
        conn.row_factory = sqlite3.Row
        rows = [dict(r) for r in conn.execute("SELECT * FROM audit ORDER BY seq")]
        prev = rows[seq - 2]["hash"] if seq > 1 else GENESIS
        for row in rows[seq - 1 :]:
            row["prev_hash"] = prev
            row["hash"] = prev = _hash(row)
            conn.execute(
                "UPDATE audit SET prev_hash = ?, hash = ? WHERE seq = ?", (row["prev_hash"], row["hash"], row["seq"])
            )
    path.with_name(path.name + ".head").write_text(json.dumps({"records": len(rows), "hash": prev}))


@pytest.fixture
def signed_log(tmp_path: Path) -> AuditLog:
    log = AuditLog(tmp_path / "signed.db", key=KEY)
    for n in range(1, 6):
        log.append("request-added", actor="tester", payload={"n": n}, request_ids=("req-a",))
    return log


def test_signed_head_carries_the_hmac_of_records_and_hash(signed_log: AuditLog) -> None:
    head = json.loads(signed_log.head_path.read_text())
    assert head["mac"] == head_mac(KEY, 5, head["hash"]) != head_mac(OTHER_KEY, 5, head["hash"])
    assert signed_log.verify() == VerifyResult(ok=True, records=5, first_bad_seq=None, problem=None, signed=True)


def test_rewritten_chain_with_recomputed_hashes_is_found_with_the_key(signed_log: AuditLog) -> None:
    _forge(signed_log.path, 2, {"n": 200})

    # Without the key the forgery is consistent: this is what the key is for.
    assert AuditLog(signed_log.path).verify().ok
    result = signed_log.verify()
    assert not result.ok and "is not signed, but an audit key is configured" in result.problem
    with pytest.raises(AuditError, match="refusing to append .* not signed"):
        signed_log.append("request-added", actor="tester", payload={})


def test_anchor_signed_with_another_key_is_found(signed_log: AuditLog) -> None:
    records, head_hash = signed_log.head()
    signed_log.head_path.write_text(
        json.dumps({"records": records, "hash": head_hash, "mac": head_mac(OTHER_KEY, records, head_hash)})
    )

    result = signed_log.verify()

    assert not result.ok and "does not match the audit key" in result.problem


def test_a_process_without_the_key_cannot_strip_the_signature(signed_log: AuditLog) -> None:
    keyless = AuditLog(signed_log.path)
    with pytest.raises(AuditError, match="is signed, but this process has no audit key"):
        keyless.append("request-added", actor="tester", payload={})
    assert signed_log.verify().ok and len(signed_log.records()) == 5


def test_sign_head_adopts_an_intact_unsigned_trail_only(log: AuditLog) -> None:
    keyed = AuditLog(log.path, key=KEY)
    assert not keyed.verify().ok  # written before the key existed

    assert keyed.sign_head().signed
    assert keyed.verify().ok

    _tamper(log.path, """UPDATE audit SET payload = '{"n":700}' WHERE seq = 7""")
    with pytest.raises(AuditError, match="refusing to sign .* record 7"):
        keyed.sign_head()


def test_key_from_env_text_or_file(tmp_path: Path) -> None:
    assert audit_key_from_env({}) is None
    assert audit_key_from_env({"UNSIR_AUDIT_KEY": "x" * 32}) == b"x" * 32
    key_file = tmp_path / "secrets" / "audit.key"
    key_file.parent.mkdir()
    key_file.write_text("y" * 40 + "\n")
    assert audit_key_from_env({"UNSIR_AUDIT_KEY_FILE": str(key_file)}) == b"y" * 40


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"UNSIR_AUDIT_KEY": "short"}, "has 5 bytes; expected at least 32"),
        ({"UNSIR_AUDIT_KEY": "x" * 32, "UNSIR_AUDIT_KEY_FILE": "/k"}, "both UNSIR_AUDIT_KEY and UNSIR_AUDIT_KEY_FILE"),
        (
            {"UNSIR_AUDIT_KEY_FILE": "/nonexistent/audit.key"},
            "UNSIR_AUDIT_KEY_FILE=/nonexistent/audit.key: cannot read",
        ),
    ],
)
def test_bad_key_settings_are_named(environ: dict, message: str) -> None:
    with pytest.raises(AuditError, match=message):
        audit_key_from_env(environ)


@pytest.mark.parametrize(
    "environ",
    [
        {"UNSIR_AUDIT_KEY": "short"},
        {"UNSIR_AUDIT_KEY_FILE": "/nonexistent/audit.key"},
        {"UNSIR_AUDIT_KEY_FILE": "state/k"},
    ],
)
def test_bad_key_settings_exit_2_as_configuration(tmp_path: Path, monkeypatch, capsys, environ: dict) -> None:
    """They exited 1, "the pipeline failed", where docs/cli.md counts configuration as exit 2 (as
    UNSIR_TORCH_THREADS=0 is): the setting is to fix, nothing failed."""
    from conftest import make_project

    from unsir_pipeline.cli import main

    project = make_project(tmp_path / "project")
    for name, value in environ.items():
        monkeypatch.setenv(name, str(project / value) if value.startswith("state/") else value)
    assert main(["--project", str(project), "audit", "verify", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["exit_code"] == 2


def test_verify_without_the_key_says_a_signed_anchor_is_signed_but_unchecked(tmp_path: Path, monkeypatch) -> None:
    """Without the key, `unsir audit verify` of a signed trail warned "the head anchor is not
    signed", about an anchor that is, while `request add` refused it as signed."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    monkeypatch.setenv("UNSIR_AUDIT_KEY", "k" * 32)
    stores.audit_log(ws).append("request_received", actor="alice", payload={"classes": [3]})
    monkeypatch.delenv("UNSIR_AUDIT_KEY")

    report = auditor.verify_trail(ws)
    assert report.warnings[0].startswith(
        "the head anchor is signed, but this process has no audit key to check the signature (set "
        "UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE)"
    )
    assert not any("not signed" in warning for warning in report.warnings)


def test_request_add_without_the_key_on_a_signed_trail_exits_2_naming_the_variables(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`request add` without the key refused a signed trail (rightly) but exited 1, "the pipeline
    failed", where a key setting to fix is exit 2 (docs/cli.md); nothing is stored or recorded."""
    from conftest import make_project

    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    ws = Workspace.load(project)
    monkeypatch.setenv("UNSIR_AUDIT_KEY", "k" * 32)
    stores.audit_log(ws).append("request_received", actor="alice", payload={"classes": [3]})
    monkeypatch.delenv("UNSIR_AUDIT_KEY")
    head = (project / "state" / "audit.sqlite.head").read_text()

    argv = ["--project", str(project), "request", "add", "5", "--by", "alice", "--reason", "r"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "refusing to start a deletion request" in err
    assert "is signed, but this process has no audit key to check it (set UNSIR_AUDIT_KEY or UNSIR_AUDIT_KEY_FILE)" in (
        err
    )
    assert stores.request_store(ws).list() == []
    assert len(stores.audit_log(ws).records()) == 1
    assert (project / "state" / "audit.sqlite.head").read_text() == head


def test_verify_json_says_whether_the_anchor_is_signed_and_whether_its_signature_was_verified(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """`audit verify --json` without the key said "signed": false of a signed anchor: "signed"
    meant "verified with the key". It now says whether the anchor is signed, and apart from that
    whether the key verified its signature."""
    from conftest import make_project

    from unsir_pipeline.cli import main
    from unsir_pipeline.governance import stores
    from unsir_pipeline.settings.workspace import Workspace

    project = make_project(tmp_path / "project")
    argv = ["--project", str(project), "audit", "verify", "--json"]

    def verified() -> dict:
        assert main(argv) == 0
        out = json.loads(capsys.readouterr().out)
        return {name: out[name] for name in ("signed", "signature_verified")}

    stores.audit_log(Workspace.load(project)).append("request_received", actor="alice", payload={"classes": [3]})
    assert verified() == {"signed": False, "signature_verified": False}
    monkeypatch.setenv("UNSIR_AUDIT_KEY", "k" * 32)
    assert main(["--project", str(project), "audit", "sign-head"]) == 0
    capsys.readouterr()
    assert verified() == {"signed": True, "signature_verified": True}
    monkeypatch.delenv("UNSIR_AUDIT_KEY")
    assert verified() == {"signed": True, "signature_verified": False}


def test_key_file_inside_the_state_directory_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "services").mkdir(parents=True)
    (state / "services" / "audit.key").write_text("z" * 32)
    with pytest.raises(AuditError, match="lies inside .*state"):
        audit_key_from_env({"UNSIR_AUDIT_KEY_FILE": str(state / "services" / "audit.key")}, forbidden_dirs=[state])


def test_the_evidence_report_says_what_became_of_the_batchs_version_and_requests(tmp_path: Path) -> None:
    """A batch's version was held, then rejected; its request went back to pending and a later
    batch completed it with another version. The report of the first batch said "held for
    review" and showed the request "done" with the later version as if this batch had done it."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    log.append("request_received", actor="alice", request_ids=[request.id], payload={"classes": [3]})
    store.claim_pending("batch-first")
    store.mark_done("batch-first", 2)
    for event, payload in [
        ("model_registered", {"model_version": 2, "parent_version": 1, "forgotten_classes": [3]}),
        ("gate_decision", {"model_version": 2, "promoted": False, "reasons": ["FAIL: membership inference"]}),
        ("batch_finished", {"model_version": 2, "promoted": False}),
    ]:
        log.append(
            event, actor="deletion-batch", request_ids=[request.id], payload={"batch_id": "batch-first", **payload}
        )
    store.return_to_pending(2, "version 2 rejected by bob: MIA miss")
    log.append(
        "version_rejected",
        actor="bob",
        request_ids=[request.id],
        payload={"model_version": 2, "reason": "MIA miss", "requests_returned": [request.id]},
    )
    store.claim_pending("batch-second")
    store.mark_done("batch-second", 3)

    html = auditor.write_batch_report(ws, "batch-first", tmp_path / "report.html").read_text()
    assert "version 2 <b>rejected</b> by <b>bob</b>: MIA miss; its requests went back to pending" in html
    assert "<td>done (in batch <code>batch-second</code>)</td><td>3</td>" in html
    assert "<th>status now</th><th>version now</th>" in html


def test_the_evidence_reports_key_figures_hold_the_mia_baseline_and_relearn_steps() -> None:
    """The unlearning_metrics record holds the attack's rate on unseen forget-class samples (what
    the gate compares MIA with when no model is retrained) and the relearn steps, but the report's
    key figures showed neither: a reader saw an MIA with nothing to judge it by."""
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.report import batch_report_html

    metrics = {
        **{f"{p}forget_acc": 0.0 for p in ("", "original_")},
        **{f"{p}retain_acc": 0.99 for p in ("", "original_")},
        "original_mia": 0.87,
        "mia": 0.02,
        "original_mia_forget_holdout": 0.76,
        "mia_forget_holdout": 0.13,
        "original_mia_attack_power": 0.54,
        "mia_attack_power": 0.53,
        "relearn_steps": 16.0,
    }
    per_class = [
        {"class": str(c), "before": 0.99, "after": 0.0 if c == 3 else 0.99, "forgotten": c == 3} for c in range(10)
    ]
    record = AuditRecord(
        1, "ts", "unlearning_metrics", "x", (), {"metrics": metrics, "per_class": per_class}, None, "", "h"
    )
    html = batch_report_html("batch-a", [record], [], VerifyResult(True, 1, None, None), {})
    assert '<td class="num">76.00%</td><td class="num" id="fig-3">13.00%</td>' in html
    # How well the attack tells members from non-members at all (0.5: not), beside the MIA.
    assert "membership attack&#x27;s balanced accuracy" in html or "membership attack's balanced accuracy" in html
    assert '<td class="num">54.00%</td><td class="num" id="fig-4">53.00%</td>' in html
    assert (
        '<td>fine-tuning steps to relearn the forget classes</td><td class="num">—</td>'
        '<td class="num" id="fig-5">16</td>' in html
    )


def test_the_evidence_reports_lineage_names_the_forgotten_classes() -> None:
    """Image folders named "1", "10", "2", "cat dog": the lineage read "classes forgotten so far:
    [1, 3]", indices that read as the classes named "1" and "3"."""
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.report import batch_report_html

    per_class = [{"class": n, "before": 1.0, "after": 1.0, "forgotten": False} for n in ("1", "10", "2", "cat dog")]
    records = [
        AuditRecord(1, "ts", "unlearning_metrics", "x", (), {"metrics": {}, "per_class": per_class}, None, "", "h"),
        AuditRecord(
            2,
            "ts",
            "model_registered",
            "x",
            (),
            {"model_version": 3, "parent_version": 2, "forgotten_classes": [1, 3]},
            None,
            "",
            "h",
        ),
    ]
    html = batch_report_html("batch-a", records, [], VerifyResult(True, 2, None, None), {})
    assert "classes forgotten so far: [&#x27;10&#x27;, &#x27;cat dog&#x27;]." in html


def test_the_evidence_report_of_a_batch_its_champion_had_done_points_to_that_versions_evidence(
    tmp_path: Path,
) -> None:
    """A request for class 3 was pending when `unsir forget 3` promoted version 2; the batch
    then completed it with version 2 and registered nothing. Its report said only "No model
    version was registered by this batch", beside a request done with version 2."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    log.append("request_received", actor="alice", request_ids=[request.id], payload={"classes": [3]})
    forget = {"batch_id": "forget-run-1", "via": "unsir forget"}
    log.append("model_registered", actor="bob", request_ids=[], payload={**forget, "model_version": 2})
    store.claim_pending("batch-late")
    store.mark_done("batch-late", 2)
    note = "classes already forgotten by the champion"
    for event, payload in [("batch_started", {}), ("batch_finished", {"model_version": 2, "note": note})]:
        log.append(
            event, actor="deletion-batch", request_ids=[request.id], payload={"batch_id": "batch-late", **payload}
        )

    html = auditor.write_batch_report(ws, "batch-late", tmp_path / "report.html").read_text()
    assert (
        "its requests were completed with version <b>2</b> (classes already forgotten by the champion). "
        "That version's evidence: <code>unsir audit report forget-run-1</code>" in html
    )


def test_a_request_stored_without_its_intake_record_is_recorded_once_at_the_next_open(tmp_path: Path) -> None:
    """`unsir request add` killed after storing the request, before its request_received record:
    `audit verify` failed for good ("has no request_received record"), nothing ever wrote it.
    Now verify (which only reads) warns, the next intake, forget or batch writes it from
    the stored request, once; the request stays pending, and the intake's own append (a slow
    one, not a killed one) finds it there."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    earlier = store.add([5], ["5"], "carol", "filed whole")
    # Recorded as before intake records were keyed: it counts as recorded all the same.
    log.append("request_received", actor="carol", request_ids=[earlier.id], payload={"classes": [5]})
    # What file_request writes first; the process dies before its second write.
    request = store.add([3], ["3"], "alice", "consent withdrawn", requested=["3"])
    refused = store.add_rejected([], [], "bob", "typo", "unknown class 'cat'", requested=["cat"])

    report = auditor.verify_trail(ws)
    assert report.ok, report.problems
    assert sum("stopped between storing and recording it" in w for w in report.warnings) == 2
    for _ in range(2):  # the next intake or claim completes it; later ones write nothing more
        _, log = stores.intake_trail(ws)
    assert not any("stopped between" in w for w in auditor.verify_trail(ws).warnings)
    (received,) = log.records(request_id=request.id)
    assert received.event == "request_received" and received.actor == "alice"
    assert received.payload["classes"] == [3] and received.payload["requested"] == ["3"]
    assert "recorded_from" in received.payload
    (refusal,) = log.records(request_id=refused.id)
    assert refusal.event == "request_refused" and refusal.payload["refusal"] == "unknown class 'cat'"
    # The intake's own append (a slow process, not a killed one) finds its record written.
    again = log.append(
        "request_received",
        actor="alice",
        request_ids=[request.id],
        payload={"classes": [3]},
        idempotency_key=stores.intake_key(request.id),
    )
    assert again == received and len(log.records()) == 3
    assert log.verify().ok and store.get(request.id).status == "pending"


def test_the_evidence_report_says_who_withdrew_a_request_of_the_batch_and_why(tmp_path: Path) -> None:
    """A request a batch failed for good, then withdrawn: the batch's report read "failed" or a
    bare "withdrawn", not that someone took it back, nor who or why."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, intake, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # as a batch writes its intake record before claiming it
    store.claim_pending("batch-failed")
    log.append("batch_failed", actor="deletion-batch", request_ids=[request.id], payload={"batch_id": "batch-failed"})
    store.release("batch-failed", "MLflow unreachable", max_attempts=1)
    intake.withdraw_request(ws, request.id, "dpo@corp", "requester took it back")
    # One whose `request add` was killed before its record: the withdrawal writes that first.
    unrecorded = store.add([4], ["4"], "bob", "filed twice")
    intake.withdraw_request(ws, unrecorded.id, "bob", "filed twice")

    html = auditor.write_batch_report(ws, "batch-failed", tmp_path / "report.html").read_text()
    assert "<td>withdrawn by dpo@corp: requester took it back</td>" in html
    assert auditor.verify_trail(ws).problems == ()
    assert [r.event for r in log.records(request_id=unrecorded.id)] == ["request_received", "request_withdrawn"]


def test_a_withdrawal_stopped_before_its_record_is_recorded_once_at_the_next_claim(tmp_path: Path) -> None:
    """`unsir request withdraw` killed after updating the store, before its request_withdrawn
    record: `audit verify` failed for good, and running the withdrawal again only said "withdrawn
    already". Now verify warns, and the next intake, claim or withdrawal writes the record from
    the store, once, carrying the store's text verbatim (who may hold ": ", so it is not split)."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, claims, intake, locks, stores
    from unsir_pipeline.governance.deletion_requests import RequestError
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    request = store.add([3], ["3"], "alice", "consent withdrawn")
    stores.intake_trail(ws)  # its intake recorded, as `request add` leaves it
    # What withdraw_request writes first; the process dies before its second write.
    store.withdraw(request.id, "dpo: legal", "filed twice: see ticket 7")

    report = auditor.verify_trail(ws)
    assert report.ok, report.problems
    assert sum("its `request withdraw` stopped between the store and the trail" in w for w in report.warnings) == 1
    with locks.deletion_batch_lock(ws) as acquired:  # a batch's claim: nothing pending, the record written
        assert acquired and claims.claim_batch(ws) is None
    (withdrawn,) = log.records(event="request_withdrawn")
    assert (withdrawn.actor, withdrawn.request_ids) == (stores.RECOVERY_ACTOR, (request.id,))
    assert withdrawn.payload["withdrawal"] == "withdrawn by dpo: legal: filed twice: see ticket 7"
    assert (withdrawn.payload["requester"], withdrawn.payload["classes"]) == ("alice", [3])
    assert "recorded_from" in withdrawn.payload
    report = auditor.verify_trail(ws)
    assert report.problems == () and not any("stopped between" in w for w in report.warnings)

    # Later intakes, and running the withdrawal again (refused, the request unchanged), write nothing more.
    written = len(log.records())
    stores.intake_trail(ws)
    with pytest.raises(RequestError, match="withdrawn already"):
        intake.withdraw_request(ws, request.id, "dpo", "again")
    assert len(log.records()) == written and log.verify().ok


def test_an_intake_reads_no_trail_record_when_each_request_has_its_keyed_record(tmp_path: Path, monkeypatch) -> None:
    """Every `request add`, withdrawal and claim looks for the records a killed command left
    unwritten, and read every intake and withdrawal record ever written to do it (a request
    refused or withdrawn years ago stays a candidate): each intake cost grew with the whole
    history. Now a candidate whose record is found by its idempotency key (the trail's unique
    index) costs one lookup, and the trail's records are read only for a request whose keyed
    record is missing: one recorded before keys existed counts, as before, and one with no
    record at all is recorded."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, intake, stores
    from unsir_pipeline.governance.audit import AuditLog
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    pending = store.add([3], ["3"], "alice", "consent withdrawn")
    refused = store.add_rejected([], [], "bob", "typo", "unknown class 'cat'", requested=["cat"])
    withdrawn = store.add([4], ["4"], "carol", "filed twice")
    stores.intake_trail(ws)  # their intake records, keyed as `request add` writes them
    intake.withdraw_request(ws, withdrawn.id, "carol", "filed twice")
    written = len(log.records())

    reads: list[dict] = []
    records = AuditLog.records

    def counted(self, **query):
        reads.append(query)
        return records(self, **query)

    monkeypatch.setattr(AuditLog, "records", counted)
    stores.intake_trail(ws)
    assert reads == []  # three candidates, each found by its key

    # Recorded before intake records were keyed: found by reading the intake records, not recorded twice.
    legacy = store.add([5], ["5"], "dave", "filed whole")
    log.append("request_received", actor="dave", request_ids=[legacy.id], payload={"classes": [5]})
    stores.intake_trail(ws)
    assert {"event": "request_received"} in reads
    assert len(log.records()) == written + 1
    # Stored with no record at all (its `request add` killed): recorded once, from the store.
    killed = store.add([6], ["6"], "erin", "consent withdrawn")
    stores.intake_trail(ws)
    stores.intake_trail(ws)
    assert [r.event for r in log.records(request_id=killed.id)] == ["request_received"]
    assert [r.event for r in log.records(request_id=pending.id)] == ["request_received"]
    assert [r.event for r in log.records(request_id=refused.id)] == ["request_refused"]
    assert log.verify().ok and auditor.verify_trail(ws).problems == ()


def test_a_request_edited_in_the_store_after_its_intake_record_is_named_field_by_field(tmp_path: Path) -> None:
    """The requester, reason or classes of a request changed in the request store (sqlite3 on
    state/requests.sqlite) passed `audit verify` ('request store and registry agree with it'), and
    the evidence report showed the forged values as the batch's requests, though the intake record
    on the hash chain holds what was filed."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    alice = store.add([3], ["3"], "alice@corp", "consent withdrawn (ticket 812)", requested=["3"])
    bob = store.add([5], ["5"], "bob@corp", "product line retired", requested=["5"])
    stores.intake_trail(ws)
    seq = {r.request_ids[0]: r.seq for r in log.records(event="request_received")}
    assert auditor.verify_trail(ws).problems == ()

    with sqlite3.connect(store.path) as conn:
        conn.execute(
            "UPDATE requests SET requester = 'mallory@corp', reason = 'routine cleanup' WHERE id = ?", (alice.id,)
        )
        conn.execute(
            """UPDATE requests SET classes = '[4]', class_names = '["4"]', requested = '["4"]' WHERE id = ?""",
            (bob.id,),
        )

    report = auditor.verify_trail(ws)
    assert not report.ok
    edited = [p for p in report.problems if "its request_received record" in p]
    assert edited == [
        f"request {alice.id}: the request store says requester 'mallory@corp', but its request_received record "
        f"{seq[alice.id]} says 'alice@corp' (the store edited since?)",
        f"request {alice.id}: the request store says reason 'routine cleanup', but its request_received record "
        f"{seq[alice.id]} says 'consent withdrawn (ticket 812)' (the store edited since?)",
        f"request {bob.id}: the request store says classes [4], but its request_received record {seq[bob.id]} "
        "says [5] (the store edited since?)",
        f"request {bob.id}: the request store says class_names ['4'], but its request_received record "
        f"{seq[bob.id]} says ['5'] (the store edited since?)",
        f"request {bob.id}: the request store says requested ['4'], but its request_received record {seq[bob.id]} "
        "says ['5'] (the store edited since?)",
    ], report.problems


def test_an_intake_record_edited_on_the_trail_is_named_with_what_it_said_before(tmp_path: Path) -> None:
    """A request_received record whose reason was changed with sqlite3: `audit verify` said only
    'record 1: content does not match its hash', not which field changed nor what it said; the
    request store still holds what was filed, and now names it, pointing at the record."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    alice = store.add([3], ["3"], "alice@corp", "consent withdrawn (ticket 812)", requested=["3"])
    stores.intake_trail(ws)
    (received,) = log.records(request_id=alice.id)
    _tamper(
        log.path,
        "UPDATE audit SET payload = replace(payload, 'consent withdrawn (ticket 812)', 'routine cleanup') "
        f"WHERE seq = {received.seq}",
    )

    report = auditor.verify_trail(ws)
    assert (
        report.chain.problem
        == f"record {received.seq}: content does not match its hash (edited, or moved from another position?)"
    )
    assert (
        f"request {alice.id}: the request store says reason 'consent withdrawn (ticket 812)', but its request_received "
        f"record {received.seq} says 'routine cleanup' (that record fails its hash: edited on the trail; the store "
        "holds what was filed)"
    ) in report.problems, report.problems


def test_the_evidence_reports_forget_figures_name_the_classes_they_cover() -> None:
    """A forget of class 1 from a version that had forgotten 3, 5 and 8 measures every class
    forgotten so far: the report's 'forget-class accuracy (test)' read 25.35% before, where the
    per-class chart shows class 1 at 100%, and nothing said the figure covered 3, 5 and 8 too."""
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.report import batch_report_html

    metrics = {"original_forget_acc": 0.2535, "forget_acc": 0.0, "original_mia": 0.30, "mia": 0.15}
    forgotten = (1, 3, 5, 8)
    per_class = [
        {"class": f"digit-{c}", "before": 0.0 if c in (3, 5, 8) else 1.0, "after": 0.0 if c in forgotten else 1.0}
        for c in range(10)
    ]
    payload = {"metrics": metrics, "per_class": per_class, "forget_classes": [1], "all_forgotten": list(forgotten)}
    record = AuditRecord(1, "ts", "unlearning_metrics", "x", (), payload, None, "", "h")
    html = batch_report_html("forget-a", [record], [], VerifyResult(True, 1, None, None), {})
    assert (
        "<td>forget-class accuracy (test): digit-1, digit-3, digit-5, digit-8 (every class forgotten so far; "
        'asked this time: digit-1)</td><td class="num">25.35%</td>'
    ) in html
    assert (
        "<td>membership inference on forget-train samples: digit-1, digit-3, digit-5, digit-8 (every class "
        "forgotten so far; asked this time: digit-1)</td>"
    ) in html
    # A first deletion: the classes asked are all there is to say.
    first = {**payload, "forget_classes": [3, 5], "all_forgotten": [3, 5]}
    html = batch_report_html(
        "batch-a", [dataclasses.replace(record, payload=first)], [], VerifyResult(True, 1, None, None), {}
    )
    assert '<td>forget-class accuracy (test): digit-3, digit-5</td><td class="num">25.35%</td>' in html


def test_a_record_that_registered_the_retrained_model_holds_its_figures_unprefixed() -> None:
    """A run that registered the retrained model in UNSIR's place recorded UNSIR's unregistered
    model's forget accuracy and MIA as its top-level `forget_acc` and `mia` (the registered
    model's only under `reference_`): an auditor reading the record took them for the
    registered model's. The evidence report reads the new record and an older one alike."""
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.report import batch_report_html
    from unsir_pipeline.governance.trail import run_records

    measured = {
        "original_forget_acc": 0.99,
        "forget_acc": 0.31,
        "reference_forget_acc": 0.0,
        "original_mia": 0.80,
        "mia": 0.62,
        "reference_mia": 0.17,
    }
    per_class = [{"class": f"digit-{c}", "before": 0.99, "after": 0.31 if c == 3 else 0.98} for c in range(10)]
    result = flow_result(metrics=measured, per_class=per_class, method="retrain")
    records = dict(run_records(result))
    evidence = records["unlearning_metrics"]
    assert evidence["method"] == "retrain"
    assert evidence["metrics"] == {
        "original_forget_acc": 0.99,
        "forget_acc": 0.0,
        "original_mia": 0.80,
        "mia": 0.17,
        "unsir_forget_acc": 0.31,
        "unsir_mia": 0.62,
    }
    # A run that registered UNSIR's model records its measures as measured.
    assert dict(run_records({**result, "method": "unsir"}))["unlearning_metrics"]["metrics"] == measured

    def report(evidence: dict) -> str:
        trail = [
            AuditRecord(1, "ts", "unlearning_metrics", "x", (), evidence, None, "", "h"),
            AuditRecord(2, "ts", "model_registered", "x", (), records["model_registered"], None, "", "h"),
        ]
        return batch_report_html("batch-a", trail, [], VerifyResult(True, 2, None, None), {})

    html = report(evidence)
    assert "<th>after UNSIR (not registered)</th><th>retrained from scratch (registered)</th>" in html
    assert '<td class="num">99.00%</td><td class="num" id="fig-0">31.00%</td><td class="num">0.00%</td>' in html
    older = {key: value for key, value in evidence.items() if key != "method"}
    assert report({**older, "metrics": measured}) == html


def test_the_evidence_report_warns_when_the_request_store_disagrees_with_the_intake_records(tmp_path: Path) -> None:
    """A request's requester and reason changed in the store after intake: the report, 'generated
    from the audit trail, whose hash chain is intact', listed the forged requester and reason as
    the batch's request, with nothing to say the trail recorded otherwise."""
    from conftest import make_project

    from unsir_pipeline.governance import auditor, stores
    from unsir_pipeline.settings.workspace import Workspace

    ws = Workspace.load(make_project(tmp_path / "project"))
    log, store = stores.audit_log(ws), stores.request_store(ws)
    alice = store.add([3], ["3"], "alice@corp", "consent withdrawn (ticket 812)", requested=["3"])
    stores.intake_trail(ws)
    store.claim_pending("batch-x")
    log.append("batch_failed", actor="deletion-batch", request_ids=[alice.id], payload={"batch_id": "batch-x"})
    with sqlite3.connect(store.path) as conn:
        conn.execute("UPDATE requests SET requester = 'mallory@corp' WHERE id = ?", (alice.id,))

    html = auditor.write_batch_report(ws, "batch-x", tmp_path / "report.html").read_text()
    assert (
        '<p class="bad">The request store disagrees with the requests\' intake records on the trail: '
        f"request {alice.id}: the request store says requester &#x27;mallory@corp&#x27;, but its request_received "
        "record 1 says &#x27;alice@corp&#x27; (the store edited since?)</p>"
    ) in html


def test_the_evidence_report_names_the_champion_a_gate_promotion_replaced() -> None:
    """The report said 'Version 1 -> version 2' (the run's parent) and 'Promotion gate: promoted',
    not which version was serving until the gate moved the alias."""
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.report import batch_report_html

    registered = {"model_version": 4, "parent_version": 1, "forgotten_classes": [3]}
    gate = {"model_version": 4, "promoted": True, "reasons": ["pass: x"], "previous_champion": 3}
    records = [
        AuditRecord(1, "ts", "model_registered", "x", (), registered, None, "", "h1"),
        AuditRecord(2, "ts", "gate_decision", "x", (), gate, None, "h1", "h2"),
    ]
    html = batch_report_html("batch-a", records, [], VerifyResult(True, 2, None, None), {4: ["champion"]})
    assert "promoted</b>, replacing champion version <b>3</b></p>" in html


def test_a_version_whose_registration_failed_is_not_taken_for_an_interrupted_registration():
    """A run killed while MLflow registered its version can leave it PENDING_REGISTRATION or
    FAILED_REGISTRATION, with the run's tags: no model (a retry registers a fresh one under the
    same key), so recording it as ``model_registered`` from its tags would be false evidence, and
    a batch with nothing pending would start a flow for it."""
    from unsir_pipeline.adapters.registry import VersionInfo
    from unsir_pipeline.governance.audit import AuditRecord
    from unsir_pipeline.governance.trail import interrupted_registrations

    intake = AuditRecord(
        seq=1, ts="t", event="request_received", actor="alice", request_ids=("req-1",),
        payload={"via": "unsir forget", "run_key": "killed", "batch_id": "forget-killed"},
        idempotency_key=None, prev_hash="", hash="h",
    )  # fmt: skip

    def version(number: int, status: str) -> VersionInfo:
        return VersionInfo(number, (), {"run_key": "killed"}, None, "t", status)

    found = interrupted_registrations(
        [version(2, "FAILED_REGISTRATION"), version(3, "PENDING_REGISTRATION"), version(4, "READY")], [intake], None
    )
    assert [f.version.version for f in found] == [4]
    # `audit verify` does not promise that the next batch records the failed ones.
    from unsir_pipeline.governance.auditor import _unrecorded_versions

    versions = {v: version(v, s) for v, s in [(2, "FAILED_REGISTRATION"), (4, "READY")]}
    _, warnings = _unrecorded_versions(versions, [intake], "champion")
    failed = "its registration never completed (it is FAILED_REGISTRATION): it holds no model"
    assert warnings[0] == f"version 2 has no record on the trail: {failed}"
    assert (
        warnings[1].startswith("version 4 has no record on the trail: its forget run") and "records it" in warnings[1]
    )
