"""The dashboard's Jobs page summary (orchestrator.server.board) counts right without full scans:
ended totals follow the engine's changes between recounts, ended sweeps are cached, and a
recount catches what no hook reports (deletions)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from orchestrator.models import JobRecord, JobStatus, StatusChange
from orchestrator.server import board
from orchestrator.server.ledger import Store, SweepRow

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


def job(job_id: str, status: JobStatus, sweep_id: str | None = None, index: int | None = None) -> JobRecord:
    return JobRecord(id=job_id, name="j", owner="o", status=status, resources={}, created_at=NOW,
                     sweep_id=sweep_id, index=index)


def change(store: Store, summary: board.Board, job_id: str, status: JobStatus) -> None:
    """As the engine does: record the change, then tell the hooks."""
    assert store.record_status(job_id, status, None, NOW)
    summary.observe(status)


@pytest.fixture
def store(tmp_path):
    store = Store(tmp_path / "jobs.db")
    store.insert_jobs([job(f"q{i}", JobStatus.QUEUED) for i in range(3)]
                      + [job("c0", JobStatus.CREATED)], [StatusChange(status="QUEUED", at=NOW)])
    sweep = SweepRow(id="s1", name="sw", owner="o", kind="command", spec={}, names=["x"],
                     seed=None, created_at=NOW)
    store.insert_sweep(sweep, [job(f"r{i}", JobStatus.QUEUED, "s1", i) for i in range(4)],
                       [StatusChange(status="QUEUED", at=NOW)])
    yield store
    store.close()


def totals(summary: dict) -> dict[str, int]:
    return summary["totals"]


def test_totals_follow_changes_between_recounts(store, monkeypatch):
    monkeypatch.setattr(board, "RECOUNT_S", 3600.0)
    feed = board.Board(store)
    assert totals(feed.summarize()) == {"QUEUED": 7, "CREATED": 1} == store.count_by_status()
    change(store, feed, "q0", JobStatus.RUNNING)
    change(store, feed, "q1", JobStatus.COMPLETED)
    change(store, feed, "r0", JobStatus.FAILED)
    change(store, feed, "c0", JobStatus.STOPPED)
    summary = feed.summarize()
    assert totals(summary) == store.count_by_status() == {
        "QUEUED": 4, "RUNNING": 1, "COMPLETED": 1, "FAILED": 1, "STOPPED": 1}
    assert [job["job_id"] for job in summary["running"]] == ["q0"]
    groups = {group["label"]: group["counts"] for group in summary["groups"]}
    assert groups == {"sw (s1)": {"QUEUED": 3, "FAILED": 1},
                      "single jobs": {"QUEUED": 1, "RUNNING": 1, "COMPLETED": 1, "STOPPED": 1}}


def test_an_ended_sweep_is_cached_and_deletions_show_at_the_next_recount(store, monkeypatch):
    monkeypatch.setattr(board, "RECOUNT_S", 3600.0)
    feed = board.Board(store)
    for i in range(4):
        change(store, feed, f"r{i}", JobStatus.COMPLETED)
    assert feed.summarize()["groups"][0]["counts"] == {"COMPLETED": 4}
    store.delete_job("r0")  # no hook tells of deletions
    summary = feed.summarize()
    assert summary["groups"][0]["counts"] == {"COMPLETED": 4} and totals(summary)["COMPLETED"] == 4
    monkeypatch.setattr(board, "RECOUNT_S", 0.0)
    feed._next_recount = 0.0  # the recount is due
    summary = feed.summarize()
    assert summary["groups"][0]["counts"] == {"COMPLETED": 3}
    assert totals(summary) == store.count_by_status() == {"QUEUED": 3, "CREATED": 1, "COMPLETED": 3}


def test_the_full_summary_matches_the_ledger(store):
    summary = board.summarize(store)
    assert totals(summary) == store.count_by_status()
    assert summary["groups"][-1] == {"label": "single jobs", "counts": {"QUEUED": 3, "CREATED": 1}}
