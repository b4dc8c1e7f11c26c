"""The ledger's numbered migrations: a ledger written before they existed (user_version 0,
kept as tests/data/ledger_v0.sql with rows in it) opens, migrates and keeps its rows; one from
before per-user binaries is still refused; each step runs once."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.models import JobRecord, JobStatus, Resources, StatusChange
from orchestrator.server.ledger import LATEST, MIGRATIONS, Store
from orchestrator.server.ledger.migrations import TENANCY_SCHEMA

V0_DUMP = Path(__file__).parent / "data" / "ledger_v0.sql"


def written(path: Path, script: str, user_version: int = 0) -> Path:
    db = sqlite3.connect(path)
    db.executescript(script)
    db.execute(f"PRAGMA user_version = {user_version}")
    db.commit()
    db.close()
    return path


def schema(path: Path) -> dict[str, set[str]]:
    """Columns of each table, and the index names (under "indexes")."""
    db = sqlite3.connect(path)
    tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    found = {t: {row[1] for row in db.execute(f"PRAGMA table_info({t})")} for t in tables}
    found["indexes"] = {row[0] for row in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")}
    db.close()
    return found


def version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def test_a_ledger_from_before_numbered_migrations_opens_with_its_rows(tmp_path):
    path = written(tmp_path / "jobs.db", V0_DUMP.read_text())
    store = Store(path)
    try:
        assert version(path) == LATEST
        job = store.get_job("job1")
        assert job is not None and job.status == JobStatus.COMPLETED and job.owner == "alice"
        assert job.result is not None and job.result.outputs == {"lift": 1.5}
        assert job.storage_bytes == 40 and job.env == {"A": "1"}
        assert [c.status for c in store.history("job1")] == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"]
        assert [f.path for f in store.list_files("job1")[1]] == ["out/lift.csv"]
        assert store.job_shared_with("job1") == ["bob"]
        assert store.sealed_secrets(["job1"]) == {"job1": b"sealed-job1"}
        assert store.stop_requests() == {"job2": "stopped by bob"}
        sweep = store.get_sweep("sw1")
        assert sweep is not None and sweep.names == ["x"] and sweep.seed == 7 and sweep.input_bytes == 5
        assert sweep.spec["max_parallel"] == 2
        assert sweep.created_at == datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
        assert store.sweep_counts("sw1") == {"FAILED": 1, "QUEUED": 2}
        assert store.get_binary("alice", "sim.py").version == 1
        assert store.active_token("f" * 64)["user"] == "alice"
        assert store.auth_required() and store.last_auth_change()["changed_by"] == "alice"
        assert store.job_uid("alice", lambda highest: 1 / 0) == 61000  # kept, not handed out again
        assert store.job_uid("bob", lambda highest: highest + 1) == 61001
        # writes go on where the old ledger left off
        now = datetime.now(timezone.utc)
        store.insert_job(JobRecord(id="job3", name="new", owner="alice", status=JobStatus.QUEUED,
                                   resources=Resources(), created_at=now),
                         [StatusChange(status=JobStatus.QUEUED, at=now)])
        assert store.list_jobs(owner="alice", limit=None)[0] == 5
    finally:
        store.close()
    fresh = tmp_path / "new.db"
    Store(fresh).close()
    assert schema(path) == schema(fresh)  # the same tables, columns and indexes as a new ledger


def test_each_numbered_step_runs_once_in_order(tmp_path):
    path = written(tmp_path / "jobs.db", ";\n".join(TENANCY_SCHEMA) + ";", user_version=1)
    before = schema(path)
    assert "stop_requested" not in before["jobs"] and "jobs_sweep_status" in before["indexes"]
    Store(path).close()
    after = schema(path)
    assert version(path) == LATEST == len(MIGRATIONS)
    assert "stop_requested" in after["jobs"] and {"auth_changes", "job_uids"} <= set(after)
    assert "jobs_sweep_status" not in after["indexes"]
    assert {"jobs_sweep_stats", "jobs_seq"} <= after["indexes"]
    Store(path).close()  # nothing left to do: opens again as it is
    assert schema(path) == after and version(path) == LATEST


def test_a_ledger_from_before_per_user_binaries_is_still_refused(tmp_path):
    old = """CREATE TABLE binaries (
        name TEXT NOT NULL, version INTEGER NOT NULL, size INTEGER NOT NULL, sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL, owner TEXT NOT NULL, uploaded_at TEXT NOT NULL,
        PRIMARY KEY (name, version));
        INSERT INTO binaries VALUES ('sim.py', 1, 3, 'ab', 'text/plain', 'alice', '2026-01-01');"""
    path = written(tmp_path / "jobs.db", old)
    with pytest.raises(RuntimeError, match="predates per-user binary names; re-upload binaries"):
        Store(path)
    assert version(path) == 0 and "jobs" not in schema(path)  # refused before any step ran


def test_a_ledger_from_a_newer_version_is_refused(tmp_path):
    path = written(tmp_path / "jobs.db", "", user_version=LATEST + 1)
    with pytest.raises(RuntimeError, match="newer than this orchestrator knows"):
        Store(path)


def test_a_new_ledger_stays_private(tmp_path):
    Store(tmp_path / "data" / "jobs.db").close()
    assert (tmp_path / "data").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "data" / "jobs.db").stat().st_mode & 0o777 == 0o600
