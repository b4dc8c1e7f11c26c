"""What makes a million-run sweep cost no more than a thousand-run one, tested at a size a test
can afford: runs recorded from rows made one chunk at a time, a dispatcher that pages the
sweep's queued runs from the ledger (and resumes after a restart mid-sweep), and a stop of the
queued runs made as a set. Figures are benchmarks/big_sweep.py's, never asserted here."""

from __future__ import annotations

import asyncio
import sqlite3
from collections import Counter
from pathlib import Path

import psutil
import pytest

from orchestrator.config import Settings
from orchestrator.models import JobRecord, JobStatus, Resources, StatusChange, utcnow
from orchestrator.server import dispatch
from orchestrator.server.ledger import Store, SweepRow, sweep_runs
from orchestrator.server.ledger.sweep_runs import RunRows, end_queued, queued_page, run_ids
from tests.conftest import start_test_server
from tests.support import wait_until
from tests.support.ledger import assert_kept_counts_true

TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}


# ---- the ledger ---------------------------------------------------------------------------


def _prototype(sweep_id: str) -> JobRecord:
    return JobRecord(id="-", name="study", owner="me", status=JobStatus.QUEUED, status_reason="run of it",
                     resources=Resources(cores=1), sweep_id=sweep_id, created_at=utcnow(),
                     env={"A": "1"}, secret_env={"TOKEN": "s3cret"}, files=["in.txt"], retries=2)


def _history(at) -> list[StatusChange]:
    return [StatusChange(status=JobStatus.CREATED, at=at),
            StatusChange(status=JobStatus.QUEUED, at=at, reason="run of it")]


def _jobs_table(path: Path) -> list[tuple]:
    db = sqlite3.connect(path)
    try:
        return db.execute("SELECT * FROM jobs ORDER BY idx").fetchall()
    finally:
        db.close()


def test_rows_made_from_a_prototype_are_the_rows_its_records_make(tmp_path):
    """A run recorded from RunRows reads back exactly as the same run recorded from a record."""
    prototype = _prototype("s1")
    runs = [prototype.model_copy(update={"id": f"r{i}", "index": i, "variables": {"x": i * 0.5, "n": "a b"},
                                         "command": f"echo {i}", "env": {"X": str(i)}}) for i in range(5)]
    by_records, by_rows = Store(tmp_path / "records.db"), Store(tmp_path / "rows.db")
    sweep = SweepRow(id="s1", name="study", owner="me", kind="command", spec={}, names=["x", "n"], seed=None,
                     created_at=prototype.created_at)
    history = _history(prototype.created_at)
    by_records.insert_sweep(sweep, runs, history)
    rows = RunRows(prototype)
    by_rows.insert_sweep_rows(sweep, [[rows.row(run.id, run.index, run.variables, command=run.command,
                                                env=run.env) for run in runs]], history)
    assert by_rows.get_job("r3") == by_records.get_job("r3")
    assert by_rows.history("r3") == by_records.history("r3")
    assert by_rows.sweep_counts("s1") == by_records.sweep_counts("s1") == {"QUEUED": 5}
    by_records.close(), by_rows.close()
    assert _jobs_table(tmp_path / "rows.db") == _jobs_table(tmp_path / "records.db")


def test_queued_runs_are_paged_and_ended_as_a_set_with_counts_kept(tmp_path):
    store = Store(tmp_path / "jobs.db")
    prototype = _prototype("s1")
    rows = RunRows(prototype)
    sweep = SweepRow(id="s1", name="study", owner="me", kind="command", spec={}, names=["x"], seed=None,
                     created_at=prototype.created_at)
    store.insert_sweep_rows(sweep, ([rows.row(f"r{i}", i, {"x": i}) for i in range(start, start + 100)]
                                    for start in range(0, 500, 100)), _history(prototype.created_at))
    store.record_status("r1", JobStatus.RUNNING, "on w", utcnow())
    page = queued_page(store, "s1", -1, 3)
    assert [job.index for job in page] == [0, 2, 3]  # in index order, the running one skipped
    assert [job.index for job in queued_page(store, "s1", 497, 10)] == [498, 499]

    ended = end_queued(store, "s1", JobStatus.STOPPED, "stop requested by me", utcnow(), ["r0", "r7"], 200)
    assert len(ended) == 200 and not {"r0", "r7", "r1"} & set(ended)
    while end_queued(store, "s1", JobStatus.STOPPED, "stop requested by me", utcnow(), ["r0", "r7"], 200):
        pass
    assert store.sweep_counts("s1") == {"STOPPED": 497, "QUEUED": 2, "RUNNING": 1}
    assert store.count_by_status() == {"STOPPED": 497, "QUEUED": 2, "RUNNING": 1}
    counted = Counter(job.status.value for job in store.list_jobs(sweep_id="s1", limit=None)[1])
    assert counted == store.sweep_counts("s1")  # the kept counts follow the set change
    stopped = store.get_job("r300")
    assert stopped.status_reason == "stop requested by me" and stopped.finished_at is not None
    assert [(h.status, h.reason) for h in store.history("r300")][-1] == (JobStatus.STOPPED, "stop requested by me")
    store.close()
    assert_kept_counts_true(tmp_path / "jobs.db")  # names and bytes too, counted without a trigger per row


def test_a_set_change_counts_its_runs_itself_only_inside_its_transaction(tmp_path, monkeypatch):
    """Creating and stopping runs as a set holds the per-row count triggers and counts the
    chunk itself; a chunk that fails midway leaves neither its change nor the hold behind, and
    every other change is counted by the triggers again."""
    store = Store(tmp_path / "jobs.db")
    prototype = _prototype("s1").model_copy(update={"storage_bytes": 7})
    rows = RunRows(prototype)
    sweep = SweepRow(id="s1", name="study", owner="me", kind="command", spec={}, names=["x"], seed=None,
                     created_at=prototype.created_at)
    store.insert_sweep_rows(sweep, ([rows.row(f"r{i}", i, {"x": i}) for i in range(start, start + 50)]
                                    for start in range(0, 150, 50)), _history(prototype.created_at))
    assert_kept_counts_true(store.path)
    assert store.sweep_storage_bytes("s1") == 150 * 7

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(sweep_runs, "count_runs", broken)
    with pytest.raises(sqlite3.OperationalError):
        end_queued(store, "s1", JobStatus.STOPPED, "stop requested by me", utcnow(), [], 100)
    monkeypatch.undo()
    assert store.sweep_counts("s1") == {"QUEUED": 150}
    assert store._query("SELECT held FROM counts_held")[0][0] == 0
    store.record_status("r0", JobStatus.RUNNING, "on w", utcnow())  # counted by its trigger
    store.insert_jobs([prototype.model_copy(update={"id": "single", "sweep_id": None, "name": "Other"})],
                      _history(prototype.created_at))
    assert len(end_queued(store, "s1", JobStatus.FAILED, "failed as a set", utcnow(), [], 100)) == 100
    assert store.sweep_counts("s1") == {"QUEUED": 49, "RUNNING": 1, "FAILED": 100}
    assert store.sweep_storage_bytes("s1") == 150 * 7
    store.close()
    assert_kept_counts_true(tmp_path / "jobs.db")


def test_a_sweep_whose_rows_stop_midway_is_never_half_recorded(tmp_path):
    """Chunks are committed as they come, the sweep's row last: rows of a creation that died
    midway belong to no sweep, and the next start removes them."""
    store = Store(tmp_path / "jobs.db")
    prototype = _prototype("s1")
    rows = RunRows(prototype)
    sweep = SweepRow(id="s1", name="study", owner="me", kind="command", spec={}, names=["x"], seed=None,
                     created_at=prototype.created_at)

    def chunks():
        yield [rows.row(f"r{i}", i, {"x": i}) for i in range(10)]
        raise RuntimeError("the server died here")

    with pytest.raises(RuntimeError):
        store.insert_sweep_rows(sweep, chunks(), _history(prototype.created_at))
    assert store.get_sweep("s1") is None and store.get_job("r3") is not None
    store.close()
    reopened = Store(tmp_path / "jobs.db")
    assert reopened.get_job("r3") is None and reopened.count_by_status() == {}
    reopened.close()


def test_run_ids_are_consecutive_under_a_prefix_no_job_has(tmp_path):
    store = Store(tmp_path / "jobs.db")
    ids = list(run_ids(store, 70_000))
    assert len(set(ids)) == 70_000 and all(len(i) == 12 for i in ids) and ids == sorted(ids)
    assert len({i[:7] for i in ids}) == 1  # 5 hex digits number 70,000 runs
    store.close()


# ---- the service --------------------------------------------------------------------------


def _close(server) -> None:
    """Shut the server down as a restart would, leaving its runs as the ledger has them."""
    server.http.close()
    server.loop.run(server.running.close(), timeout=60)
    server.loop.stop()


@pytest.mark.timeout(600)
def test_a_restart_mid_sweep_resumes_and_every_run_ends_exactly_once(tmp_path, make_server, dask_cluster):
    """The new server's dispatcher reads the sweep's queued runs from the ledger; the runs
    that were in flight are requeued saying so; every run completes once, no attempt twice."""
    runs = 300
    ran = tmp_path / "ran.txt"
    data_dir = tmp_path / "data"
    first = start_test_server(Settings(data_dir=data_dir, port=0, **dask_cluster.settings))
    try:
        sweep = first.http.post("/sweeps", json={
            "name": "resumed", "max_parallel": 2,
            "command": f'sleep 0.02; echo "${{i}} $ORCHESTRATOR_TASK_KEY" >> {ran}',
            "variables": [{"name": "i", "range": {"start": 0, "stop": runs - 1, "step": 1}}],
        }).json()
        wait_until(lambda: first.http.get(f"/sweeps/{sweep['id']}").json()["counts"].get("COMPLETED", 0) >= 20,
                   120, "the sweep under way", every=0.05)
    finally:
        _close(first)
    left = Store(data_dir / "jobs.db")
    assert left.sweep_counts(sweep["id"]).get("QUEUED", 0) > 0, "closed mid-sweep"
    left.close()

    second = make_server(data_dir=data_dir)
    done = second.wait_sweep(sweep["id"], timeout=300)
    assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": runs}, done
    records = second.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 1000}).json()["results"]
    assert sorted(run["index"] for run in records) == list(range(runs))
    for run in records:
        history = second.http.get(f"/jobs/{run['id']}/statuses").json()
        assert [h["status"] for h in history].count("COMPLETED") == 1, history
        assert not TERMINAL & {h["status"] for h in history[:-1]}, history  # ended once, at the end
        if run["attempt"] >= 2:  # sent before the restart, and again after it: the history says why
            assert any((h["reason"] or "").startswith("resubmitted after orchestrator restart")
                       for h in history), history
    again = [run for run in records if run["attempt"] >= 2]
    assert again, "no run was in flight at the restart: the test proved nothing"
    keys = [line.split()[1] for line in ran.read_text().splitlines()]
    assert max(Counter(keys).values()) == 1  # no attempt ran twice
    assert {key.rsplit("-", 1)[1] for key in keys} == {run["id"] for run in records}


def test_stopping_a_sweep_ends_its_queued_runs_as_a_set_and_wakes_its_waiters(server):
    """Runs that were never sent end STOPPED by the record alone; what follows the sweep (a
    waiting client, the events stream's subscribers, the kept counts) learns it."""
    runs = 5000
    sweep = server.http.post("/sweeps", json={
        "name": "stopped", "max_parallel": 1, "command": "sleep 30",
        "variables": [{"name": "i", "range": {"start": 0, "stop": runs - 1, "step": 1}}],
    }).json()
    service = server.running.service
    subscription = service.events.subscribe(sweep_id=sweep["id"])
    try:
        wait_until(lambda: server.http.get(f"/sweeps/{sweep['id']}").json()["counts"].get("RUNNING"), 60,
                   "a run started", every=0.05)
        waiting = asyncio.run_coroutine_threadsafe(service.sweeps.wait(sweep["id"], 120), server.loop.loop)
        assert server.http.post(f"/sweeps/{sweep['id']}/stop").status_code == 202
        done = waiting.result(180)
        assert done.status == JobStatus.STOPPED and done.counts == {"STOPPED": runs}, done
        events = []
        while not subscription.queue.empty():
            events.append(subscription.queue.get_nowait())
    finally:
        service.events.unsubscribe(subscription)
    stopped = [event["job_id"] for event in events if event.get("status") == "STOPPED"]
    assert len(stopped) == len(set(stopped)) == runs  # one event per run, each once
    store = service.store
    assert Counter(job.status.value for job in store.list_jobs(sweep_id=sweep["id"], limit=None)[1]) \
        == store.sweep_counts(sweep["id"]) == {"STOPPED": runs}
    last = server.http.get(f"/sweeps/{sweep['id']}/runs", params={"page": runs // 100}).json()["results"][-1]
    history = server.http.get(f"/jobs/{last['id']}/statuses").json()
    assert [h["status"] for h in history] == ["CREATED", "QUEUED", "STOPPED"]
    assert history[-1]["reason"].startswith("stop requested by")


@pytest.mark.parametrize("held", [dispatch.HELD_RERUNS, 0], ids=["kept by id", "cursor moved back"])
def test_runs_rerun_behind_a_running_dispatchers_cursor_are_sent(server, monkeypatch, held):
    """A rerun while the sweep still runs goes to its dispatcher: a few runs are kept by id, a
    large rerun moves its ledger cursor back (HELD_RERUNS 0 makes any rerun large)."""
    monkeypatch.setattr(dispatch, "HELD_RERUNS", held)
    sweep = server.http.post("/sweeps", json={
        "name": "rerun", "max_parallel": 1, "command": "sleep 0.2",
        "variables": [{"name": "i", "range": {"start": 0, "stop": 24, "step": 1}}],
    }).json()
    wait_until(lambda: server.http.get(f"/sweeps/{sweep['id']}").json()["counts"].get("COMPLETED", 0) >= 3,
               60, "runs completed", every=0.05)
    first = server.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 3}).json()["results"]
    rerun = server.http.post(f"/sweeps/{sweep['id']}/rerun", json={"ids": [run["id"] for run in first]})
    assert rerun.status_code == 202, rerun.text
    assert server.running.service.sweeps._dispatchers.get(sweep["id"]) is not None  # fed, not replaced
    done = server.wait_sweep(sweep["id"], timeout=120)
    assert done["counts"] == {"COMPLETED": 25}, done
    for run in first:
        history = server.http.get(f"/jobs/{run['id']}/statuses").json()
        assert [h["status"] for h in history].count("COMPLETED") == 2, history
        assert history[-1]["status"] == "COMPLETED"


def test_runs_rerun_by_status_while_the_sweep_runs_are_sent_by_its_dispatcher(server):
    """A rerun by status queues the runs again as a set while the sweep's dispatcher runs: the
    dispatcher reads its queue again from the start (not replaced), every run reruns exactly
    once more, and the events stream tells each run's new QUEUED once."""
    sweep = server.http.post("/sweeps", json={
        "name": "rerun-set", "max_parallel": 1, "command": "sleep 0.2",
        "variables": [{"name": "i", "range": {"start": 0, "stop": 24, "step": 1}}],
    }).json()
    service = server.running.service
    wait_until(lambda: server.http.get(f"/sweeps/{sweep['id']}").json()["counts"].get("COMPLETED", 0) >= 3,
               60, "runs completed", every=0.05)
    dispatcher = service.sweeps._dispatchers.get(sweep["id"])
    subscription = service.events.subscribe(sweep_id=sweep["id"])
    try:
        rerun = server.http.post(f"/sweeps/{sweep['id']}/rerun", json={"status": ["COMPLETED"]})
        assert rerun.status_code == 202, rerun.text
        assert service.sweeps._dispatchers.get(sweep["id"]) is dispatcher is not None  # rewound, not replaced
        done = server.wait_sweep(sweep["id"], timeout=120)
        events = []
        while not subscription.queue.empty():
            events.append(subscription.queue.get_nowait())
    finally:
        service.events.unsubscribe(subscription)
    assert done["counts"] == {"COMPLETED": 25}, done
    rerun_reason = "rerun requested by anonymous"
    told = [event["job_id"] for event in events if event.get("reason") == rerun_reason]
    assert len(told) == len(set(told)) >= 3
    for job_id in told:
        history = server.http.get(f"/jobs/{job_id}/statuses").json()
        assert [h["status"] for h in history].count("COMPLETED") == 2, history
        assert [h["reason"] for h in history].count(rerun_reason) == 1 and history[-1]["status"] == "COMPLETED"


@pytest.mark.timeout(300)
def test_a_stop_recorded_before_a_restart_is_finished_by_the_next_start(tmp_path, make_server, dask_cluster):
    """The sweep's stop reason is in the ledger but its runs are still active (the server went
    down right after recording it): the next start stops the running run through its worker
    and every queued run by its record, as a set."""
    data_dir = tmp_path / "data"
    first = start_test_server(Settings(data_dir=data_dir, port=0, **dask_cluster.settings))
    try:
        sweep = first.http.post("/sweeps", json={
            "name": "stopping", "max_parallel": 1, "command": "sleep 60 # big-stop ${i}",
            "variables": [{"name": "i", "range": {"start": 0, "stop": 299, "step": 1}}],
        }).json()
        wait_until(lambda: first.http.get(f"/sweeps/{sweep['id']}").json()["counts"].get("RUNNING"), 60,
                   "a run started", every=0.05)
    finally:
        _close(first)
    ledger = Store(data_dir / "jobs.db")
    assert ledger.set_sweep_stop_reason(sweep["id"], "stop requested by alice")
    assert ledger.sweep_counts(sweep["id"]).get("RUNNING") == 1
    ledger.close()

    second = make_server(data_dir=data_dir)
    done = second.wait_sweep(sweep["id"], timeout=120)
    assert done["status"] == "STOPPED" and done["counts"] == {"STOPPED": 300}, done
    assert done["status_reason"] == "stop requested by alice"
    first_run = second.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 1}).json()["results"][0]
    history = second.http.get(f"/jobs/{first_run['id']}/statuses").json()
    assert [h["status"] for h in history][-2:] == ["RUNNING", "STOPPED"], history
    wait_until(lambda: not [p for p in psutil.process_iter(["cmdline"])
                            if "sleep 60 # big-stop" in " ".join(p.info["cmdline"] or [])],
               30, "the run's process ended")


def test_ended_runs_are_queued_again_as_a_set_in_index_order(tmp_path):
    """A rerun as a set: each chosen run a new attempt with its end, worker and result cleared
    and a history line, counted as a set (output problems too), each run looked at once."""
    from orchestrator.models import JobResult
    from orchestrator.server.ledger.sweep_runs import requeue_ended

    store = Store(tmp_path / "jobs.db")
    prototype = _prototype("s1")
    rows = RunRows(prototype)
    sweep = SweepRow(id="s1", name="study", owner="me", kind="command", spec={}, names=["x"], seed=None,
                     created_at=prototype.created_at)
    store.insert_sweep_rows(sweep, [[rows.row(f"r{i}", i, {"x": i}) for i in range(6)]], _history(prototype.created_at))
    store.record_status("r0", JobStatus.COMPLETED, None, utcnow(), result=JobResult(error="unreadable"), attempt=1,
                        worker="w", finished_at=utcnow(), storage_bytes=5)
    store.record_status("r1", JobStatus.FAILED, "exit 3", utcnow(), attempt=1, worker_losses=1, finished_at=utcnow())
    store.record_status("r4", JobStatus.STOPPED, "stop requested by me", utcnow())
    wanted = ["COMPLETED", "FAILED", "STOPPED"]
    ids, last = requeue_ended(store, "s1", wanted, "rerun requested by me", utcnow(), -1, 2)
    assert (ids, last) == (["r0", "r1"], 1)
    store.record_status("r1", JobStatus.FAILED, "again", utcnow())  # ends again meanwhile: not queued twice
    ids, last = requeue_ended(store, "s1", wanted, "rerun requested by me", utcnow(), last, 2)
    assert (ids, last) == (["r4"], 4)
    assert requeue_ended(store, "s1", wanted, "rerun requested by me", utcnow(), last, 2) == ([], None)
    again = store.get_job("r0")
    assert (again.status, again.status_reason, again.attempt) == (JobStatus.QUEUED, "rerun requested by me", 2)
    assert again.worker is None and again.finished_at is None and again.result is None
    assert store.get_job("r1").worker_losses == 0 and store.get_job("r1").attempt == 2  # requeued once
    assert [(h.status, h.reason) for h in store.history("r4")][-1] == (JobStatus.QUEUED, "rerun requested by me")
    assert store.sweep_tally("s1") == ({"QUEUED": 5, "FAILED": 1}, 0)
    store.close()
    assert_kept_counts_true(tmp_path / "jobs.db")


def test_set_changes_size_their_chunks_by_how_long_the_last_took(monkeypatch):
    """The first chunk is small (a cold cache makes it slow), the next ones aim at CHUNK_S
    each, growing at most fourfold a step, never past CHUNK: the event loop's own status
    writes never wait long for the writer."""
    from orchestrator.server import run_sets

    clock = [0.0]
    monkeypatch.setattr(run_sets.time, "monotonic", lambda: clock[0])
    sizer = run_sets.ChunkSizer()
    sizes = []
    for took in (0.02, 0.02, 0.01, 0.01, 0.5, 0.1):
        with sizer.timed() as size:
            sizes.append(size)
            clock[0] += took
    assert sizes == [run_sets.FIRST_CHUNK, 4_000, 10_000, 10_000, 10_000, 2_000]
    assert sizer.size == 2_000
