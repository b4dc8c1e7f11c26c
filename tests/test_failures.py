"""A lost connection is not a failed run: every exception a job's future can end with is
classified in one place, and the connection kinds put the run back to QUEUED as a new
attempt, never FAILED (a CI run once lost five sweep runs to 'storage error: CommClosedError')."""

from __future__ import annotations

import asyncio
import errno
import time

import pytest
from distributed.client import ClosedClientError
from distributed.comm import CommClosedError
from distributed.scheduler import KilledWorker
from tornado.iostream import StreamClosedError

from orchestrator import failures
from orchestrator.failures import Failure
from orchestrator.server.engine import NO_WORKER
from tests.support import wait_until


class WorkerAddress:
    """What KilledWorker names its last worker by (a WorkerState on the scheduler)."""

    def __init__(self, address: str):
        self.address = address


GATHER_RESET = CommClosedError(
    "in <TCP (closed) ConnectionPool.gather local=tcp://127.0.0.1:43534 remote=tcp://127.0.0.1:51151>: "
    "ConnectionResetError: [Errno 104] Connection reset by peer")


@pytest.mark.parametrize("exc, kind", [
    (GATHER_RESET, Failure.CONNECTION),
    (StreamClosedError(), Failure.CONNECTION),
    (ClosedClientError(), Failure.CONNECTION),
    (ConnectionResetError(errno.ECONNRESET, "reset"), Failure.CONNECTION),
    (TimeoutError("comm timed out"), Failure.CONNECTION),
    (KilledWorker("task", WorkerAddress("tcp://127.0.0.1:1"), 3), Failure.WORKER_DIED),
    (OSError(errno.ENOSPC, "No space left on device"), Failure.STORAGE),
    (PermissionError(errno.EACCES, "denied"), Failure.STORAGE),
    (ValueError("cannot unpickle"), Failure.INTERNAL),
])
def test_every_exception_has_one_kind(exc, kind):
    assert failures.classify(exc) == kind
    assert failures.runs_again(exc) == (kind == Failure.CONNECTION)
    assert failures.describe(exc).startswith({
        Failure.CONNECTION: "connection lost: ", Failure.WORKER_DIED: "worker lost: ",
        Failure.STORAGE: "storage error: ", Failure.INTERNAL: "error: "}[kind])


def _history(server, job_id: str) -> list[tuple[str, str]]:
    return [(h["status"], h["reason"] or "") for h in server.http.get(f"/jobs/{job_id}/statuses").json()]


def test_a_job_whose_result_gather_is_reset_runs_again(server):
    """The exact failure seen in CI, handed to the engine as its future's exception."""
    job = server.submit(command="sleep 30; echo first > out.txt")
    running = server.wait_for_status(job["id"], "RUNNING")
    engine = server.running.service.engine
    key = engine._futures[job["id"]].key
    server.loop.run(_record(engine, job["id"], key, GATHER_RESET))
    again = server.http.get(f"/jobs/{job['id']}").json()
    assert again["status"] in ("QUEUED", "RUNNING") and again["attempt"] == running["attempt"] + 1, again
    queued = [reason for status, reason in _history(server, job["id"]) if status == "QUEUED"]
    assert queued[-1].startswith("connection lost: CommClosedError") and "queued again" in queued[-1]
    assert "FAILED" not in [status for status, _ in _history(server, job["id"])]
    server.http.post(f"/jobs/{job['id']}/stop")


async def _record(engine, job_id: str, key: str, exc: BaseException) -> None:
    engine._record_outcome(job_id, key, exc)


def test_a_sweep_batch_whose_result_is_reset_requeues_its_runs(server):
    created = server.http.post("/sweeps", json={"command": "sleep 30", "cases": [{"u": 1}, {"u": 2}]})
    sweep_id = created.json()["id"]
    engine = server.running.service.engine
    runs = server.http.get(f"/sweeps/{sweep_id}/runs").json()["results"]
    for run in runs:
        server.wait_for_status(run["id"], "RUNNING")
    records = [engine.store.get_job(run["id"]) for run in runs]
    report = server.loop.run(_record_batch(engine, records, GATHER_RESET))
    assert sorted(job.id for job in report.requeued) == sorted(run["id"] for run in runs)
    assert report.failed == 0
    for run in runs:
        status, reason = _history(server, run["id"])[-1]
        assert status == "QUEUED" and reason.startswith("connection lost: CommClosedError"), (status, reason)
    server.http.post(f"/sweeps/{sweep_id}/stop")


async def _record_batch(engine, records, exc: BaseException):
    return engine._record_batch(records, [job.attempt for job in records], exc)


def test_a_result_lost_with_its_worker_runs_as_a_new_attempt(server):
    """A worker that dies after computing a task but before its result is collected: Dask
    would compute it again under the same key, running the same attempt twice unrecorded."""
    job = server.submit(command="sleep 30")
    running = server.wait_for_status(job["id"], "RUNNING")
    engine = server.running.service.engine
    key = engine._futures[job["id"]].key
    event = {"action": "remove-worker", "worker": "tls://127.0.0.1:1", "processing-tasks": [],
             "lost-computed-tasks": [key]}
    server.loop.run(_cluster_event(engine, event))
    wait_until(lambda: server.http.get(f"/jobs/{job['id']}").json()["attempt"] > running["attempt"], 30,
               "a new attempt")
    reasons = [reason for status, reason in _history(server, job["id"]) if status == "QUEUED"]
    assert reasons[-1] == "worker lost (tls://127.0.0.1:1), retry 1/3", reasons
    server.http.post(f"/jobs/{job['id']}/stop")


async def _cluster_event(engine, message: dict) -> None:
    engine._on_cluster_event((time.time(), message))
    await asyncio.sleep(0.5)


def test_work_waits_queued_while_no_worker_is_connected(make_server):
    """E.g. right after a scheduler restart, before its workers are back: never a 400."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=0, processes=False, protocol="tcp://", host="127.0.0.1",
                      dashboard_address=":0", resources={"CPU": 2}) as cluster:
        server = make_server(scheduler=cluster.scheduler_address, tls_ca_file=None, tls_cert=None, tls_key=None)
        job = server.submit(command="echo hi")
        assert job["status"] == "QUEUED" and job["status_reason"] == NO_WORKER, job
        cluster.scale(1)
        assert server.wait(job["id"])["status"] == "COMPLETED"


def test_registering_the_worker_plugin_again_leaves_running_jobs_alone(server):
    """The engine registers its plugin on every attach (a restarted scheduler, a new worker
    that preloaded it); the old instance's teardown once SIGKILLed the worker's jobs."""
    from orchestrator.plugins.worker import OrchestratorWorkerPlugin

    job = server.submit(command="sleep 2; echo survived")
    server.wait_for_status(job["id"], "RUNNING")
    engine = server.running.service.engine
    server.loop.run(_register(engine.client, OrchestratorWorkerPlugin()))
    done = server.wait(job["id"])
    assert done["status"] == "COMPLETED", done
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "survived\n"


async def _register(client, plugin) -> None:
    await client.register_plugin(plugin)
