"""The ledger itself: what a crash in the middle of recording a sweep leaves behind, and
reads that do not wait for a long write."""

from __future__ import annotations

import threading
from datetime import datetime, timezone

import pytest

from orchestrator.models import JobRecord, JobStatus, Resources, StatusChange
from orchestrator.server.ledger import INSERT_CHUNK, Store, SweepRow


def runs(sweep_id: str, count: int) -> list[JobRecord]:
    now = datetime.now(timezone.utc)
    return [JobRecord(id=f"{sweep_id}-{i}", name="r", owner="me", status=JobStatus.QUEUED,
                      resources=Resources(), sweep_id=sweep_id, index=i, created_at=now)
            for i in range(count)]


def sweep_row(sweep_id: str) -> SweepRow:
    return SweepRow(id=sweep_id, name="r", owner="me", kind="command", spec={}, names=["x"],
                    seed=None, created_at=datetime.now(timezone.utc))


def test_runs_of_a_sweep_whose_row_never_landed_are_dropped_on_open(tmp_path):
    store = Store(tmp_path / "jobs.db")
    history = [StatusChange(status=JobStatus.QUEUED, at=datetime.now(timezone.utc))]
    store.insert_sweep(sweep_row("whole"), runs("whole", INSERT_CHUNK + 5), history)
    store.insert_jobs(runs("half", 7), history)  # a crash after some chunks, before the sweep row
    store.close()

    reopened = Store(tmp_path / "jobs.db")
    assert reopened.list_jobs(sweep_id="whole", limit=1)[0] == INSERT_CHUNK + 5
    assert reopened.list_jobs(sweep_id="half", limit=1)[0] == 0
    assert reopened.history("half-0") == []
    assert reopened.get_sweep("whole") is not None


def test_reads_answer_while_a_write_transaction_is_open(tmp_path):
    store = Store(tmp_path / "jobs.db")
    store.insert_jobs(runs("s", 3), [])
    writing, release = threading.Event(), threading.Event()

    def hold_the_writer() -> None:
        with store.transaction():
            writing.set()
            release.wait(30)

    writer = threading.Thread(target=hold_the_writer)
    writer.start()
    assert writing.wait(10)
    answered: list[int] = []
    reader = threading.Thread(target=lambda: answered.append(store.list_jobs(limit=1)[0]))
    reader.start()
    reader.join(10)
    blocked = reader.is_alive()  # a read that waits for the writer is still stuck here
    release.set()
    writer.join(10)
    assert not blocked and answered == [3]


def test_job_uids_skip_real_accounts_stay_per_user_and_survive_a_reopen(tmp_path):
    import pwd

    from orchestrator.errors import IsolationUnavailable
    from orchestrator.server.isolation import JobIdentities

    nobody = pwd.getpwnam("nobody").pw_uid  # a real account inside the range
    uid_range = (nobody, nobody + 2)
    store = Store(tmp_path / "jobs.db")
    identities = JobIdentities(store, uid_range, {})
    alice, bob = identities.for_user("alice"), identities.for_user("bob")
    assert [alice["uid"], bob["uid"]] == [nobody + 1, nobody + 2]
    assert alice["gid"] == alice["uid"] and alice["user"] == "alice"
    with pytest.raises(IsolationUnavailable, match="no free uid"):  # the range is spent
        identities.for_user("carol")
    store.close()
    reopened = JobIdentities(Store(tmp_path / "jobs.db"), uid_range, {})
    assert reopened.for_user("bob")["uid"] == nobody + 2
