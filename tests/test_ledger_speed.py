"""What the ledger's speed work could break: the name search must answer exactly as the old
`name LIKE '%text%' ESCAPE '\\'` did, and the counts kept by triggers (jobs by owner and
status, each sweep's runs by status with output problems and storage bytes) must equal what
counting the rows gives, through every way a job changes, and after migrating an old ledger."""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.models import JobRecord, JobResult, JobStatus, Resources, StatusChange
from orchestrator.server.ledger import LATEST, StatusUpdate, Store, SweepRow
from orchestrator.server.ledger.connection import like_escape
from tests.support.ledger import assert_kept_counts_true

NOW = datetime.now(timezone.utc)
QUEUED = [StatusChange(status=JobStatus.QUEUED, at=NOW)]
NAMES = [
    "render_frame", "RENDER_FRAME", "Render-Frame", "rEnDeR", "a", "ab", "A_B", "a%b", "a\\b",
    "50%_off", "x_y", "xAy", "ÉCLAIR", "éclair", "straße", "STRASSE", "Kelvin", "\u212aelvin",
    "İstanbul", "istanbul", "日本語のジョブ", "naïve run", "quote\"d", "sp ace", "", "zz",
]
SEARCHES = [
    "a", "A", "b", "_", "%", "\\", "a_b", "A_B", "a%b", "a\\b", "%_", "50%", "x_y", "xay", "render",
    "RENDER", "nde", "Ren", "r", "é", "É", "éclair", "ÉCLAIR", "clair", "CLAIR", "ß", "straße",
    "kel", "elvin", "\u212a", "i", "İst", "stanbul", "本語", "日本語の", "ïve", "\"", "e\"d",
    "quote\"d", " ", "p a", "sp ace", "zz", "zzz", "no such name", "ab", "AB",
]


def job(job_id: str, name: str, owner: str = "alice", sweep_id: str | None = None,
        index: int | None = None) -> JobRecord:
    return JobRecord(id=job_id, name=name, owner=owner, status=JobStatus.QUEUED, resources=Resources(),
                     sweep_id=sweep_id, index=index, created_at=NOW)


def sweep_row(sweep_id: str, owner: str = "alice") -> SweepRow:
    return SweepRow(id=sweep_id, name="s", owner=owner, kind="command", spec={}, names=["x"],
                    seed=None, created_at=NOW)


def like_names(path: Path, text: str) -> list[str]:
    """The old semantics, asked of the rows themselves."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT id FROM jobs WHERE name LIKE ? ESCAPE '\\' ORDER BY seq",
                          (f"%{like_escape(text)}%",)).fetchall()
    finally:
        db.close()
    return [row[0] for row in rows]


def searched(store: Store, text: str, **filters: object) -> list[str]:
    count, jobs = store.list_jobs(search=text, limit=None, **filters)
    ids = [j.id for j in jobs]
    for offset in (0, 3, len(ids)):  # pages, read as the index answers them when alone
        paged_count, page = store.list_jobs(search=text, offset=offset, limit=3, **filters)
        assert paged_count == count == len(ids) and [j.id for j in page] == ids[offset:offset + 3]
    return ids


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "jobs.db")
    yield store
    store.close()


def test_search_answers_as_like_did_over_tricky_names(store):
    store.insert_jobs([job(f"j{i}", name, owner="bob" if i % 3 else "alice")
                       for i, name in enumerate(NAMES)], QUEUED)
    for text in SEARCHES:
        assert searched(store, text) == like_names(store.path, text), text
        expected_bob = [i for i in like_names(store.path, text) if store.get_job(i).owner == "bob"]
        assert searched(store, text, owner="bob") == expected_bob, text


def test_search_follows_renames_and_deletes(store):
    store.insert_jobs([job(f"j{i}", name) for i, name in enumerate(NAMES)], QUEUED)
    store.update_job("j0", name="Totally_New%Name")
    store.update_jobs(["j1", "j2"], name="ab")
    store.delete_job("j3")
    store.delete_job("j12")
    for text in [*SEARCHES, "new%", "TOTALLY_new", "w%n", "render"]:
        assert searched(store, text) == like_names(store.path, text), text
    assert searched(store, "render") == []
    assert searched(store, "new%na") == ["j0"]
    assert_kept_counts_true(store.path)


def test_counts_are_kept_through_every_change(store):
    history = QUEUED
    store.insert_job(job("single", "one", owner="carol"), history)
    store.insert_jobs([job(f"b{i}", "batch", owner="dave") for i in range(5)], history)
    store.insert_sweep(sweep_row("s1"), [job(f"s1-{i}", "run", sweep_id="s1", index=i) for i in range(6)],
                       history)
    store.insert_sweep(sweep_row("s2", "bob"),
                       [job(f"s2-{i}", "run", owner="bob", sweep_id="s2", index=i) for i in range(3)], history)
    assert_kept_counts_true(store.path)

    store.record_status("s1-0", JobStatus.RUNNING, None, NOW)
    store.record_statuses([
        StatusUpdate("s1-0", JobStatus.COMPLETED, None, NOW,
                     fields={"result": JobResult(error="outputs.json unreadable"), "attempt_bytes": 70}),
        StatusUpdate("s1-1", JobStatus.COMPLETED, None, NOW,
                     fields={"result": JobResult(outputs={"y": 1}), "attempt_bytes": 30}),
        StatusUpdate("s1-2", JobStatus.FAILED, "exit 1", NOW,
                     fields={"result": JobResult(error="boom"), "finished_at": "2031-01-02T00:00:00+00:00"}),
        StatusUpdate("b0", JobStatus.STOPPED, "by hand", NOW),
    ])
    assert not store.record_status("s1-1", JobStatus.RUNNING, None, NOW, only_from=[JobStatus.QUEUED])
    assert_kept_counts_true(store.path)
    counts, problems = store.sweep_tally("s1")
    assert counts == {"COMPLETED": 2, "FAILED": 1, "QUEUED": 3} and problems == 1
    assert store.sweep_storage_bytes("s1") == 100
    assert store.sweep_last_finish("s1") == "2031-01-02T00:00:00+00:00"

    # a rerun requeues runs, and drops what they stored
    store.record_status("s1-0", JobStatus.QUEUED, "rerun", NOW, result=None, storage_bytes=0)
    store.update_jobs(["s1-1"], storage_bytes=5)
    store.grow_sweep("s1", [job(f"s1-{i}", "run", sweep_id="s1", index=i) for i in range(6, 9)], history, {})
    assert_kept_counts_true(store.path)
    assert store.sweep_tally("s1") == ({"COMPLETED": 1, "FAILED": 1, "QUEUED": 7}, 0)

    for i in range(3):
        store.delete_job(f"s2-{i}")
    store.delete_sweep("s2")
    store.delete_job("single")
    assert_kept_counts_true(store.path)
    assert store.sweep_tally("s2") == ({}, 0) and store.sweep_counts("s2") == {}

    store.insert_jobs([job(f"h{i}", "half", sweep_id="half", index=i) for i in range(4)], history)
    store.drop_half_created_sweeps()
    assert_kept_counts_true(store.path)


def test_listing_counts_equal_counted_rows(store):
    store.insert_jobs([job(f"a{i}", "x", owner="alice") for i in range(4)], QUEUED)
    store.insert_jobs([job(f"b{i}", "x", owner="bob") for i in range(3)], QUEUED)
    store.insert_sweep(sweep_row("s"), [job(f"s-{i}", "run", sweep_id="s", index=i) for i in range(5)], QUEUED)
    store.record_status("a0", JobStatus.FAILED, None, NOW)
    store.record_status("s-1", JobStatus.FAILED, None, NOW)
    db = sqlite3.connect(store.path)
    cases = [
        ({}, "1"), ({"status": JobStatus.FAILED}, "status = 'FAILED'"),
        ({"owner": "alice"}, "owner = 'alice'"),
        ({"owner": "bob", "status": JobStatus.FAILED}, "owner = 'bob' AND status = 'FAILED'"),
        ({"statuses": [JobStatus.QUEUED, JobStatus.FAILED]}, "status IN ('QUEUED', 'FAILED')"),
        ({"statuses": [JobStatus.QUEUED], "status": JobStatus.FAILED}, "0"),
        ({"statuses": []}, "0"),
        ({"sweep_id": "s"}, "sweep_id = 's'"),
        ({"sweep_id": "s", "status": JobStatus.FAILED}, "sweep_id = 's' AND status = 'FAILED'"),
        ({"sweep_id": "s", "owner": "alice"}, "sweep_id = 's' AND owner = 'alice'"),
        ({"sweep_id": "nope"}, "sweep_id = 'nope'"),
    ]
    for filters, where in cases:
        count, jobs = store.list_jobs(limit=2, **filters)
        expected = db.execute(f"SELECT COUNT(*) FROM jobs WHERE {where}").fetchone()[0]
        assert count == expected, filters
        assert len(jobs) == min(2, expected), filters
    db.close()
    assert store.count_by_status() == {"QUEUED": 10, "FAILED": 2}


def test_an_older_ledger_migrates_with_its_counts_and_search(tmp_path):
    path = tmp_path / "jobs.db"
    store = Store(path)
    store.insert_jobs([job(f"j{i}", name) for i, name in enumerate(NAMES)], QUEUED)
    store.insert_sweep(sweep_row("s"), [job(f"s-{i}", "Run_x", sweep_id="s", index=i) for i in range(4)],
                       QUEUED)
    store.record_status("s-0", JobStatus.COMPLETED, None, NOW, result=JobResult(error="bad"), storage_bytes=9)
    store.close()
    db = sqlite3.connect(path)  # as the release before the kept counts left it
    for name in ("jobs_counted_insert", "jobs_counted_delete", "jobs_counted_owner_status", "jobs_counted_run",
                 "jobs_named", "jobs_unnamed", "jobs_renamed", "job_names_indexed"):
        db.execute(f"DROP TRIGGER {name}")
    for table in ("job_counts", "sweep_tallies", "names_search", "job_names"):
        db.execute(f"DROP TABLE {table}")
    db.execute("DROP INDEX jobs_lower_name")
    db.execute("PRAGMA user_version = 10")
    db.execute("INSERT INTO jobs (id, name, owner, kind, status, spec, created_at) SELECT"
               " 'late', 'Late_Job', 'erin', kind, 'CREATED', spec, created_at FROM jobs WHERE id = 'j0'")
    db.commit()
    db.close()

    store = Store(path)
    try:
        assert store._query("PRAGMA user_version")[0][0] == LATEST
        assert_kept_counts_true(path)
        assert store.sweep_tally("s") == ({"COMPLETED": 1, "QUEUED": 3}, 1)
        assert store.list_jobs(owner="erin")[0] == 1
        for text in [*SEARCHES, "late_", "run_x"]:
            assert searched(store, text) == like_names(path, text), text
    finally:
        store.close()


def test_jobs_waiting_to_be_deleted_are_found_among_those_that_end(store):
    """An ended job is deleted if its owner asked while it ran: found through a partial index
    of the few marked jobs, or by looking the ended jobs up when more are marked than ended."""
    store.insert_jobs([job(f"j{i}", "x") for i in range(6)], QUEUED)
    assert store.marked_among([f"j{i}" for i in range(6)]) == []
    for job_id in ("j1", "j3", "j4"):
        store.update_job(job_id, delete_when_done=True)
    assert sorted(store.marked_among([f"j{i}" for i in range(6)])) == ["j1", "j3", "j4"]
    assert store.marked_among(["j3"]) == ["j3"]  # more marked than ended: looked up
    assert store.marked_among(["j0", "j4", "nope"]) == ["j4"]
    assert sorted(job.id for job in store.jobs_to_delete()) == ["j1", "j3", "j4"]


def test_the_queued_cap_counts_a_users_single_jobs_without_walking_them(store):
    """count_owned reads kept counts of single jobs (migration 15): sweep runs never count,
    and every insert, status change and delete of a single job is followed."""
    store.insert_jobs([job(f"a{i}", "x", owner="alice") for i in range(4)], QUEUED)
    store.insert_jobs([job("b0", "x", owner="bob")], QUEUED)
    store.insert_sweep(sweep_row("s", "alice"), [job(f"s-{i}", "run", owner="alice", sweep_id="s", index=i)
                                                for i in range(5)], QUEUED)
    assert store.count_owned("alice", [JobStatus.QUEUED]) == 4
    store.record_status("a0", JobStatus.RUNNING, None, NOW)
    store.record_status("a1", JobStatus.COMPLETED, None, NOW)
    store.delete_job("a2")
    assert store.count_owned("alice", [JobStatus.QUEUED]) == 1
    assert store.count_owned("alice", [JobStatus.QUEUED, JobStatus.RUNNING]) == 2
    assert store.count_owned("bob", [JobStatus.QUEUED]) == 1 and store.count_owned("carol", [JobStatus.QUEUED]) == 0
    assert_kept_counts_true(store.path)
