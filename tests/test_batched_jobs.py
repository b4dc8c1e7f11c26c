"""Single jobs accepted together (group commit) and sent to Dask in batches under a burst
(orchestrator.server.admission, orchestrator.server.single_feed), on a real cluster over real
HTTP: each batched job keeps its own history, logs, outputs, stop, retries and resources, a
worker lost under a batch runs its jobs again, and a server killed with SIGKILL right after
answering 201 loses no acknowledged job."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from distributed import Client

from orchestrator.config import Settings
from orchestrator.models import JobRecord, JobStatus, Resources, utcnow
from orchestrator.server.jobs import new_job_id
from tests.conftest import start_test_server
from tests.support import wait_until
from tests.test_persistence import _place, kill_9, serving

BURST = 60  # jobs of one command at once: far more than the test cluster's 4 slots


def _burst(server, jobs: list[dict], blocker_s: float = 2.0) -> list[dict]:
    """Post `jobs` from 8 connections (each answered 201) while blockers (`sleep`, a kind of
    their own, with the jobs' resources) hold every slot of their resource shape: the jobs
    wait, and leave in batches once the blockers end."""
    resources = jobs[0].get("resources")
    slots = 2 * server.running.service.engine.known_threads()
    for _ in range(slots):
        server.submit(command=f"sleep {blocker_s}", **({"resources": resources} if resources else {}))
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(lambda job: server.submit(**job), jobs))


def _feed(server):
    return server.running.service.engine.singles


def _history(server, job_id: str) -> list[dict]:
    return server.http.get(f"/jobs/{job_id}/statuses").json()


def _timed_then_burst(server, count: int, **job) -> list[dict]:
    """One job of the kind first (so it is timed), then a burst of it: batches follow."""
    server.wait(server.submit(**job)["id"])
    return _burst(server, [job] * count)


def test_a_burst_goes_in_batches_and_each_job_keeps_its_history_logs_and_outputs(server):
    command = 'echo "out $X"; echo "err $X" >&2; echo "{\\"x\\": $X}" > outputs.json; echo "$X" > mine.txt'
    server.wait(server.submit(command=command, env={"X": "0"})["id"])
    jobs = _burst(server, [{"command": command, "env": {"X": str(n)}, "name": f"burst-{n}"}
                           for n in range(1, BURST + 1)])
    feed = _feed(server)
    assert all(job["status"] == "QUEUED" for job in jobs)
    for number, job in enumerate(jobs, start=1):
        done = server.wait(job["id"])
        assert done["status"] == "COMPLETED", done
        assert done["result"]["outputs"] == {"x": number}
        assert server.http.get(f"/jobs/{job['id']}/logs").text == f"out {number}\n"
        assert server.http.get(f"/jobs/{job['id']}/logs", params={"stream": "stderr"}).text == f"err {number}\n"
        assert server.http.get(f"/jobs/{job['id']}/files/mine.txt").text == f"{number}\n"
        statuses = [change["status"] for change in _history(server, job["id"])]
        assert statuses == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"], statuses
        assert done["attempt"] == 1 and done["name"] == f"burst-{number}"
    assert feed.batches_sent > 0 and feed.jobs_batched > feed.batches_sent, "nothing was batched"


def test_a_batched_job_fails_and_retries_on_its_own(server, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    # Jobs with FAIL_ONCE set fail their first attempt; the rest of the burst shares their command.
    command = f'if [ -n "$FAIL_ONCE" ] && [ ! -e {marks}/$NUMBER ]; then touch {marks}/$NUMBER; exit 3; fi; echo ok'
    server.wait(server.submit(command=command, env={"NUMBER": "first"})["id"])

    jobs = _burst(server, [{"command": command, "retries": 1,
                            "env": {"NUMBER": str(n), **({"FAIL_ONCE": "1"} if n % 10 == 0 else {})}}
                           for n in range(BURST)])
    for number, job in enumerate(jobs):
        done = server.wait(job["id"])
        assert done["status"] == "COMPLETED", done
        history = _history(server, job["id"])
        if number % 10 == 0:
            assert done["attempt"] == 2
            assert any("exit code 3, retry 1/1" in (change["reason"] or "") for change in history), history
        else:
            assert done["attempt"] == 1, history
    assert _feed(server).jobs_batched > 0, "nothing was batched"


def test_a_batched_job_stops_alone_and_the_rest_of_its_batch_runs(server):
    command = 'sleep "$SLEEP"; echo done'
    server.wait(server.submit(command=command, env={"SLEEP": "0"})["id"])
    feed = _feed(server)
    before = feed.jobs_batched

    jobs = _burst(server, [{"command": command, "env": {"SLEEP": "60" if n == 20 else "0"}} for n in range(BURST)])
    sleeper = jobs[20]["id"]
    server.wait_for_status(sleeper, "RUNNING", timeout=60)
    assert server.http.post(f"/jobs/{sleeper}/stop").status_code in (200, 202)
    stopped = server.wait(sleeper, timeout=30)
    assert stopped["status"] == "STOPPED", stopped
    for job in jobs:
        if job["id"] != sleeper:
            assert server.wait(job["id"])["status"] == "COMPLETED"
    assert feed.jobs_batched > before, "nothing was batched"


def test_a_queued_job_waiting_for_a_batch_stops_at_once(server):
    command = "sleep 0.2"
    jobs = _timed_then_burst(server, 40, command=command)
    last = jobs[-1]["id"]
    answer = server.http.post(f"/jobs/{last}/stop")
    assert answer.status_code in (200, 202), answer.text
    assert server.wait(last, timeout=60)["status"] == "STOPPED"
    assert [c["status"] for c in _history(server, last)][-1] == "STOPPED"
    for job in jobs[:-1]:
        assert server.wait(job["id"], timeout=120)["status"] == "COMPLETED"


def test_batched_jobs_keep_their_resources(server, tmp_path):
    """The test worker declares CPU=2: jobs asking for 2 cores run one at a time, batched or not."""
    spans = tmp_path / "spans"
    command = f'start=$(date +%s.%N); sleep 0.05; echo "$start $(date +%s.%N)" >> {spans}'
    before = _feed(server).jobs_batched
    jobs = _timed_then_burst(server, 30, command=command, resources={"cores": 2})
    for job in jobs:
        assert server.wait(job["id"], timeout=120)["status"] == "COMPLETED"
    intervals = sorted(tuple(map(float, line.split())) for line in spans.read_text().splitlines())
    assert len(intervals) == 31  # the blockers wrote nothing there
    overlapping = [(a, b) for a, b in zip(intervals, intervals[1:], strict=False) if b[0] < a[1]]
    assert not overlapping, overlapping[:3]
    assert _feed(server).jobs_batched > before, "nothing was batched"


def test_a_worker_lost_under_a_batch_runs_its_jobs_again(make_server):
    server = make_server(scheduler=None, workers=2, threads_per_worker=1, dashboard_address=":0")
    command = "sleep 0.1"  # timed, then batched five to a task (about 0.5 s of work each)
    server.wait(server.submit(command=command)["id"], timeout=120)
    connection = server.running.service.connection
    with Client(connection.address, security=connection.security) as client:
        pids = client.run(os.getpid)  # asked first: the kill follows the sighting at once
    jobs = _burst(server, [{"command": command}] * 40)
    later = jobs[10:30]  # batched, with more batches to follow on the same worker
    running = wait_until(lambda: next((j for j in (server.http.get(f"/jobs/{job['id']}").json() for job in later)
                                       if j["status"] == "RUNNING" and j["worker"]), None),
                         60, "a batched job of the burst running")
    os.kill(pids[running["worker"]], signal.SIGKILL)
    ended = [server.wait(job["id"], timeout=240) for job in jobs]
    assert all(job["status"] == "COMPLETED" for job in ended), [j for j in ended if j["status"] != "COMPLETED"][:3]
    lost = [job for job in ended if any("worker lost" in (c["reason"] or "") for c in _history(server, job["id"]))]
    assert lost, "no job was caught on the killed worker: the test proved nothing"
    assert all(job["attempt"] >= 2 for job in lost)
    assert _feed(server).jobs_batched > 0, "nothing was batched"


@pytest.mark.timeout(300)
def test_kill_9_right_after_201s_loses_no_acknowledged_job(tmp_path):
    data_dir, port, url, api = _place(tmp_path)
    acknowledged: list[str] = []
    stop = threading.Event()

    def submitter() -> None:
        with httpx.Client(base_url=url + "/api/v1", timeout=30) as client:
            while not stop.is_set():
                try:
                    answer = client.post("/jobs", json={"command": "true"})
                except httpx.HTTPError:
                    return  # the server died under this request: it was never acknowledged
                if answer.status_code == 201:
                    acknowledged.append(answer.json()["id"])

    with serving(data_dir, port, url) as server:
        threads = [threading.Thread(target=submitter) for _ in range(8)]
        for thread in threads:
            thread.start()
        wait_until(lambda: len(acknowledged) >= 200, 120, "200 jobs acknowledged")
        kill_9(server)  # while the submitters still post
        stop.set()
        for thread in threads:
            thread.join(60)
        known = list(acknowledged)

    with serving(data_dir, port, url):
        for job_id in known:
            record = api.get(f"/jobs/{job_id}", params={"wait": 120}, timeout=180)
            assert record.status_code == 200, (job_id, record.text)
            assert record.json()["status"] == "COMPLETED", record.json()
            statuses = [c["status"] for c in api.get(f"/jobs/{job_id}/statuses").json()]
            assert statuses[:2] == ["CREATED", "QUEUED"], statuses
    api.close()


def test_jobs_accepted_in_one_turn_are_one_transaction(server):
    """Group commit: jobs admitted in one turn of the event loop are recorded by one
    transaction, and each is sent after it."""
    engine = server.running.service.engine
    store = server.running.service.store
    counted: list[int] = []
    original = store.insert_admitted

    def counting(admitted):
        counted.append(len(admitted))
        return original(admitted)

    async def admit(count: int) -> list[JobRecord]:
        jobs = [JobRecord(id=new_job_id(), name="grouped", owner="admin", status=JobStatus.CREATED,
                          created_at=utcnow(), command="true", resources=Resources()) for _ in range(count)]
        return await asyncio.gather(*(engine.admit(job, None, None) for job in jobs))

    store.insert_admitted = counting
    try:
        queued = server.loop.run(admit(5))
    finally:
        del store.insert_admitted
    assert counted == [5]
    for job in queued:
        assert job.status == JobStatus.QUEUED and job.attempt == 1
        assert server.wait(job.id)["status"] == "COMPLETED"
        assert [c["status"] for c in _history(server, job.id)] == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"]


def test_the_sync_answer_of_a_job_on_an_idle_server_is_its_end(server):
    answer = server.http.post("/jobs", params={"sync": "true"}, json={"command": "echo hi"})
    assert answer.status_code == 201 and answer.json()["status"] == "COMPLETED"
    assert server.http.get(f"/jobs/{answer.json()['id']}/logs").text == "hi\n"


def test_a_rerun_of_a_stopped_job_is_not_stopped_again_by_a_restart(make_server, dask_cluster, tmp_path):
    """The first attempt's stop request is settled when that attempt ends: a start after the
    rerun must resubmit the job, not stop it again (its old request used to linger). The job
    is short, so nothing of it outlives the test on the shared cluster."""
    data_dir = tmp_path / "kept"
    first = start_test_server(Settings(data_dir=data_dir, port=0, **dask_cluster.settings))
    job = first.submit(command="sleep 3")
    first.wait_for_status(job["id"], "RUNNING")
    first.http.post(f"/jobs/{job['id']}/stop")
    assert first.wait(job["id"])["status"] == "STOPPED"
    again = first.http.post(f"/jobs/{job['id']}/rerun")
    assert again.status_code == 202, again.text
    first.http.close()  # closed with the rerun still active, like a crash: nothing stops it
    first.loop.run(first.running.close(), timeout=60)
    first.loop.stop()

    second = make_server(data_dir=data_dir)
    ended = second.wait(job["id"], timeout=120)
    assert ended["status"] == "COMPLETED", ended
    history = [c["reason"] or "" for c in _history(second, job["id"])]
    assert any("resubmitted after orchestrator restart" in reason for reason in history), history
