"""Crash recovery with nothing lost, with real processes on 127.0.0.1: `orchestrator serve`
killed with SIGKILL, a `dask worker` killed, and the `dask scheduler` of an external cluster
restarted, each in the middle of a 300-run sweep. Every run must end COMPLETED exactly once,
with the output of the attempt its record names, and its history must say what happened."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import httpx
import pytest
from distributed import Client

from tests.conftest import REPO, TlsFiles, free_port, kill_session
from tests.support import wait_until
from tests.test_persistence import _place, kill_9, serving, stop_cleanly

RUNS = 300
WAIT_S = 300  # whole sweeps on a shared 2-core machine: generous, never a timing assertion


class DaskProcesses:
    """A `dask scheduler` on a fixed port and plain `dask worker`s (no preload: the server must
    register its worker plugin itself), each in its own session, to kill and start again; all
    on TLS with the certificate files, so reconnections must present them again."""

    def __init__(self, folder: Path, tls: TlsFiles):
        self.folder = folder
        self.tls = tls
        self.port = free_port()
        self.address = f"tls://127.0.0.1:{self.port}"
        self.scheduler: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self._logs: list[IO[bytes]] = []  # each process's output, kept to read after a failure

    def start_scheduler(self) -> None:
        self.scheduler = self._spawn("distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                                     "--port", str(self.port), "--protocol", "tls", "--no-dashboard")

    def start_workers(self, *names: str) -> dict[str, str]:
        """Start workers (1 thread, CPU=1 each); answers every worker's address by name."""
        for name in names:
            self.workers[name] = self._spawn(
                "distributed.cli.dask_worker", self.address, "--name", name, "--nthreads", "1",
                "--resources", "CPU=1", "--no-dashboard", "--local-directory", str(self.folder / name))
        with self._client() as client:
            client.wait_for_workers(len(self.workers), timeout=90)
            return {info["name"]: a for a, info in client.scheduler_info()["workers"].items()}

    def kill_scheduler(self) -> None:
        if self.scheduler is not None:
            kill_session(self.scheduler)
            self.scheduler = None

    def kill_worker(self, name: str) -> None:
        kill_session(self.workers.pop(name))

    def close(self) -> None:
        for name in list(self.workers):
            self.kill_worker(name)
        self.kill_scheduler()
        for log in self._logs:
            log.close()

    @property
    def serve_flags(self) -> list[str]:
        """`orchestrator serve` flags that reach this cluster."""
        return ["--scheduler", self.address, *self.tls.flags]

    def on_scheduler(self, function: Callable) -> object:
        with self._client() as client:
            return client.run_on_scheduler(function)

    def other_clients(self) -> set[str]:
        """The ids of the clients connected to the scheduler, this question's own left out."""
        with self._client() as client:
            ids = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.clients))
            return set(ids) - {client.id, "fire-and-forget"}

    def _client(self) -> Client:
        return Client(self.address, security=self.tls.security(), timeout=60)

    def _spawn(self, module: str, *args: str) -> subprocess.Popen:
        """A scheduler or worker given the TLS files."""
        args = (*args, *self.tls.flags)
        log = (self.folder / f"{module.rsplit('.', 1)[-1]}-{len(self._logs)}.log").open("wb")
        self._logs.append(log)
        return subprocess.Popen(
            [sys.executable, "-m", module, *args], env=_environ(), cwd=self.folder,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )


def _environ() -> dict[str, str]:
    """This checkout, and Dask's own timeouts (a test may shorten the server's)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_")}
    return {**env, "PYTHONPATH": str(REPO)}


@pytest.fixture
def dask_processes(tmp_path: Path, tls_files: TlsFiles) -> Iterator[DaskProcesses]:
    processes = DaskProcesses(tmp_path, tls_files)
    try:
        yield processes
    finally:
        processes.close()


# ---- the sweep and its checks ------------------------------------------------------------


def start_sweep(api: httpx.Client, ledger: Path) -> str:
    """Each run appends `index task-key` (the key holds the attempt) to a ledger every run
    shares, writes the same line as its output file, and reports its index as an output."""
    line = 'line="${i} $ORCHESTRATOR_TASK_KEY"; '
    command = (line + f'echo "$line" >> {ledger}; echo "$line" > out.txt; '
               + "printf '{\"seen\": %s}' ${i} > outputs.json")
    created = api.post("/sweeps", json={
        "command": command, "name": "crash",
        "variables": [{"name": "i", "range": {"start": 0, "stop": RUNS - 1, "step": 1}}],
    })
    assert created.status_code == 201, created.text
    return created.json()["id"]


def wait_counts(api: httpx.Client, sweep_id: str, predicate: Callable[[dict], bool], timeout: float = 120) -> None:
    wait_until(lambda: predicate(api.get(f"/sweeps/{sweep_id}").json()["counts"]), timeout,
               f"sweep {sweep_id} that far", every=0.05)


def check_every_run_completed_once(api: httpx.Client, sweep_id: str, ledger: Path) -> dict[str, list[dict]]:
    """The sweep completed with one row per run, each run's stored output written by the
    attempt its record names, no attempt run twice and none after it; answers each run's
    status history by job id."""
    done = api.get(f"/sweeps/{sweep_id}", params={"wait": WAIT_S}, timeout=WAIT_S + 60).json()
    if done["counts"] != {"COMPLETED": RUNS}:  # say which runs did not complete, and why
        failed = api.get(f"/sweeps/{sweep_id}/runs", params={"status": "FAILED", "page_size": 5}).json()
        raise AssertionError({run["id"]: api.get(f"/jobs/{run['id']}/statuses").json()
                              for run in failed["results"]} or done)
    assert done["status"] == "COMPLETED", done
    rows = api.get(f"/sweeps/{sweep_id}/results").json()["rows"]
    assert sorted(row["index"] for row in rows) == list(range(RUNS))  # no lost run, no duplicate row
    assert len({row["job_id"] for row in rows}) == RUNS
    wrong = [row for row in rows if (row["status"], row["exit_code"], row["seen"]) != ("COMPLETED", 0, row["i"])]
    assert not wrong, wrong[:5]

    ran = Counter(tuple(line.split()) for line in ledger.read_text().splitlines())
    assert max(ran.values()) == 1, [k for k, n in ran.items() if n > 1][:5]  # no attempt ran twice
    attempts_ran: dict[str, list[int]] = {}
    for _, key in ran:
        _, attempt, job_id = key.rsplit("-", 2)
        attempts_ran.setdefault(job_id, []).append(int(attempt))

    records = api.get(f"/sweeps/{sweep_id}/runs", params={"page_size": 1000}).json()["results"]
    histories = {}
    for record in records:
        out = api.get(f"/jobs/{record['id']}/files/out.txt")
        assert out.status_code == 200, out.text
        index, key = out.text.split()
        assert key.rsplit("-", 2)[1:] == [str(record["attempt"]), record["id"]], (record, out.text)
        assert int(index) == record["variables"]["i"]
        assert max(attempts_ran[record["id"]]) == record["attempt"], (record, attempts_ran[record["id"]])
        history = api.get(f"/jobs/{record['id']}/statuses").json()
        statuses = [change["status"] for change in history]
        assert statuses.count("COMPLETED") == 1 and statuses[-1] == "COMPLETED", history
        histories[record["id"]] = history
    return {job_id: histories[job_id] for job_id in histories}


def assert_retries_explained(api: httpx.Client, sweep_id: str, histories: dict[str, list[dict]],
                             because: str) -> None:
    """Some runs were caught mid-flight and ran again; the history of each says why."""
    records = api.get(f"/sweeps/{sweep_id}/runs", params={"page_size": 1000}).json()["results"]
    again = [r["id"] for r in records if r["attempt"] >= 2]
    assert again, "no run was caught in flight: the test proved nothing"
    unexplained = [histories[job_id] for job_id in again
                   if not any(because in (change["reason"] or "") for change in histories[job_id])]
    assert not unexplained, unexplained[:2]


# ---- the server killed --------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_kill_9_of_the_server_mid_sweep_loses_and_repeats_nothing(tmp_path):
    data_dir, port, url, api = _place(tmp_path)
    ledger = tmp_path / "ledger.txt"
    with serving(data_dir, port, url) as server:
        sweep_id = start_sweep(api, ledger)
        wait_counts(api, sweep_id, lambda c: c.get("COMPLETED", 0) >= 20)
        assert api.get(f"/sweeps/{sweep_id}").json()["counts"].get("QUEUED", 0) > 0
        kill_9(server)

    with serving(data_dir, port, url) as server, contextlib.closing(api):
        histories = check_every_run_completed_once(api, sweep_id, ledger)
        assert_retries_explained(api, sweep_id, histories, "resubmitted after orchestrator restart")
        stop_cleanly(server)


# ---- a worker killed ----------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_a_worker_killed_mid_sweep_loses_and_repeats_nothing(tmp_path, dask_processes):
    data_dir, port, url, api = _place(tmp_path)
    ledger = tmp_path / "ledger.txt"
    dask_processes.start_scheduler()
    workers = dask_processes.start_workers("w0", "w1")
    with serving(data_dir, port, url, *dask_processes.serve_flags) as server, \
            contextlib.closing(api):
        sweep_id = start_sweep(api, ledger)
        wait_counts(api, sweep_id, lambda c: c.get("COMPLETED", 0) >= 20)
        busy = _busy_worker(dask_processes)
        dask_processes.kill_worker(busy)
        histories = check_every_run_completed_once(api, sweep_id, ledger)
        assert_retries_explained(api, sweep_id, histories, f"worker lost ({workers[busy]})")
        stop_cleanly(server)


def _busy_worker(processes: DaskProcesses) -> str:
    """The name of a worker processing a batch now."""
    busy = wait_until(lambda: processes.on_scheduler(
        lambda dask_scheduler: [ws.name for ws in dask_scheduler.workers.values() if ws.processing]),
        60, "a worker processing a batch", every=0.02)
    return str(busy[0])


# ---- the scheduler restarted --------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("outage_s", [0, 8], ids=["client-reconnects", "client-gives-up"])
def test_a_restarted_scheduler_gets_back_every_job_and_run(tmp_path, dask_processes, monkeypatch, outage_s):
    """The scheduler (and with it every worker) goes away mid-sweep, with single jobs running
    and queued, and comes back on the same address. The server keeps answering meanwhile and
    accepts work; once back, it sends again whatever was lost. With a long outage Dask's client
    gives up (connect timeout 3 s here) and the server must make a new one."""
    if outage_s:
        monkeypatch.setenv("DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT", "3")
    data_dir, port, url, api = _place(tmp_path)
    ledger = tmp_path / "ledger.txt"
    dask_processes.start_scheduler()
    dask_processes.start_workers("w0", "w1")
    with serving(data_dir, port, url, *dask_processes.serve_flags) as server, \
            contextlib.closing(api):
        clients = dask_processes.other_clients()
        sweep_id = start_sweep(api, ledger)
        wait_counts(api, sweep_id, lambda c: c.get("COMPLETED", 0) >= 20)
        singles = [_submit(api, "sleep 3; echo $ORCHESTRATOR_TASK_KEY > out.txt", priority=10) for _ in range(3)]
        _wait_any_running(api, singles)

        lost_at = time.monotonic()
        dask_processes.kill_scheduler()  # first: workers are lost with it, not one by one
        for name in list(dask_processes.workers):
            dask_processes.kill_worker(name)
        _wait_loss_noticed(api, sweep_id)
        meanwhile = _still_answering(api)
        time.sleep(max(0.0, outage_s - (time.monotonic() - lost_at)))
        dask_processes.start_scheduler()
        dask_processes.start_workers("w2", "w3")

        histories = {job_id: _finished(api, job_id) for job_id in [*singles, meanwhile]}
        for job_id in singles:
            reasons = [change["reason"] or "" for change in histories[job_id] if change["status"] == "QUEUED"]
            assert any(r.startswith("scheduler connection lost, resubmitted") for r in reasons), histories[job_id]
        assert any("(was RUNNING on tls://" in (change["reason"] or "")
                   for job_id in singles for change in histories[job_id]), histories
        assert histories[meanwhile][1]["reason"] == "the Dask scheduler is unreachable; sent when it is back"
        run_histories = check_every_run_completed_once(api, sweep_id, ledger)
        # requeued on reconnection ('scheduler connection lost, resubmitted'), or by its batch's
        # result gather failing as the scheduler went ('connection lost: CommClosedError: ...')
        assert_retries_explained(api, sweep_id, run_histories, "connection lost")
        _check_attached_again(api, dask_processes)
        if outage_s:  # Dask's client gave up: a new one took its place
            assert not dask_processes.other_clients() & clients
        else:  # the same client came back
            assert dask_processes.other_clients() == clients
        assert server.poll() is None
        stop_cleanly(server)


def _submit(api: httpx.Client, command: str, **fields) -> str:
    created = api.post("/jobs", json={"command": command, **fields})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def _wait_any_running(api: httpx.Client, job_ids: list[str]) -> None:
    wait_until(lambda: any(api.get(f"/jobs/{job_id}").json()["status"] == "RUNNING" for job_id in job_ids),
               60, "a single job RUNNING", every=0.05)


def _wait_loss_noticed(api: httpx.Client, sweep_id: str) -> None:
    """Until the server has seen the loss: its batches in flight came back cancelled."""
    def noticed() -> bool:
        runs = api.get(f"/sweeps/{sweep_id}/runs", params={"status": "QUEUED", "page_size": 1000}).json()
        return any((run["status_reason"] or "").startswith("scheduler connection lost") for run in runs["results"])

    wait_until(noticed, 60, "the server noticing its scheduler was gone", every=0.05)


def _still_answering(api: httpx.Client) -> str:
    """With no scheduler: health, listings and new jobs answer at once; the new job waits."""
    assert api.get("/health", timeout=10).status_code == 200
    assert api.get("/jobs", timeout=10).status_code == 200
    assert api.get("/metrics", timeout=10).status_code == 200
    cluster = api.get("/cluster", timeout=10)
    assert cluster.status_code == 503 and cluster.json()["error"]["code"] == "scheduler_unavailable"
    created = api.post("/jobs", json={"command": "echo meanwhile > out.txt"}, timeout=10)
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "QUEUED"
    return created.json()["id"]


def _finished(api: httpx.Client, job_id: str) -> list[dict]:
    job = api.get(f"/jobs/{job_id}", params={"wait": WAIT_S}, timeout=WAIT_S + 60).json()
    assert job["status"] == "COMPLETED", job
    return api.get(f"/jobs/{job_id}/statuses").json()


def _check_attached_again(api: httpx.Client, processes: DaskProcesses) -> None:
    """The new scheduler has our worker plugin, and a job's start is seen as it happens (the
    status topic was subscribed again: else RUNNING would only be recorded with the end)."""
    plugins = processes.on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
    assert "orchestrator" in plugins
    job_id = _submit(api, "sleep 1.5")
    _wait_any_running(api, [job_id])
    assert api.get(f"/jobs/{job_id}", params={"wait": 60}, timeout=90).json()["status"] == "COMPLETED"
