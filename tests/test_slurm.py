"""The orchestrator on a real single-node Slurm (tests/support/slurm.py), as a user runs it:
`orchestrator serve --cluster slurm --cluster-options {...}` in its own process, every Dask
worker a Slurm batch job that declares what it offers. Jobs, a sweep over two worker jobs,
a stop, refusals of what no worker could run, a kill -9 with a worker job pending (cancelled
at the restart), a clean stop (nothing left), and workers retiring before their walltime."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import (
    REPO,
    free_port,
    kill_session,
    serve_subprocess,
    server_output,
    wait_until_serving,
)
from tests.support import wait_until
from tests.support.slurm import MARKER_VAR, SlurmInfo, outer_slurm_vars, slurm_cluster

pytestmark = pytest.mark.timeout(300)


@dataclass
class SlurmServer:
    process: object
    url: str
    api: httpx.Client
    data_dir: Path
    options: dict


@pytest.fixture(scope="module")
def slurm(tmp_path_factory) -> Iterator[SlurmInfo]:
    with slurm_cluster(tmp_path_factory.mktemp("slurm")) as info:
        saved = dict(os.environ)
        for var in outer_slurm_vars(saved):
            os.environ.pop(var)
        os.environ.update(SLURM_CONF=info.env["SLURM_CONF"], **{MARKER_VAR: info.env[MARKER_VAR]})
        try:
            yield info
        finally:
            os.environ.clear()
            os.environ.update(saved)


def cluster_options(folder: Path, **overrides) -> dict:
    """What a user gives `--cluster-options`: the worker shape, the queue, and where the
    workers find the code (this checkout), write their logs and read their certificates."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "cores": 1, "memory": "1GiB", "queue": "debug", "walltime": "00:10:00",
        "minimum": 0, "maximum": 2, "idle_timeout": 5, "scheduler_host": "127.0.0.1",
        "python": sys.executable, "local_directory": str(folder / "work"),
        "log_directory": str(folder / "logs"), "shared_temp_directory": str(folder / "tls"),
        "job_extra_directives": [f"--chdir={REPO}"], **overrides,
    }


def start_server(data_dir: Path, options: dict, port: int | None = None) -> SlurmServer:
    port = port or free_port()
    process = serve_subprocess(data_dir, port, "--cluster", "slurm", "--cluster-options", json.dumps(options))
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(url, process, timeout=120)
    return SlurmServer(process, url, httpx.Client(base_url=f"{url}/api/v1", timeout=90), data_dir, options)


def stop_server(server: SlurmServer) -> None:
    """A clean stop: SIGTERM, as a service manager stops it."""
    server.api.close()
    os.killpg(server.process.pid, signal.SIGTERM)
    try:
        server.process.wait(timeout=60)
    finally:
        kill_session(server.process)


@pytest.fixture(scope="module")
def server(slurm: SlurmInfo, tmp_path_factory) -> Iterator[SlurmServer]:
    root = tmp_path_factory.mktemp("slurm-server")
    started = start_server(root / "data", cluster_options(root / "cluster"))
    yield started
    stop_server(started)
    wait_until(lambda: slurm.squeue_ids() == [], 30, "no worker job left after a clean stop")


def finished(server: SlurmServer, job_id: str, timeout: float = 120) -> dict:
    job = server.api.get(f"/jobs/{job_id}", params={"wait": timeout}, timeout=timeout + 30).json()
    assert job["status"] in ("COMPLETED", "FAILED", "STOPPED"), job
    return job


def test_a_job_runs_in_a_slurm_worker_job(server: SlurmServer, slurm: SlurmInfo):
    created = server.api.post("/jobs", json={"command": "echo slurm job $SLURM_JOB_ID"})
    assert created.status_code == 201, created.text
    job = finished(server, created.json()["id"])
    assert job["status"] == "COMPLETED", (job, server_output(server.process)[-3000:])
    words = server.api.get(f"/jobs/{job['id']}/logs").text.split()
    assert words[:2] == ["slurm", "job"] and words[2].isdigit()  # the worker is a Slurm job


def test_a_sweep_spreads_over_two_worker_jobs(server: SlurmServer):
    created = server.api.post("/sweeps", json={
        "command": "sleep 2; echo $SLURM_JOB_ID > job.txt", "variables": [{"name": "i", "values": list(range(8))}]})
    assert created.status_code == 201, created.text
    sweep = server.api.get(f"/sweeps/{created.json()['id']}", params={"wait": 150}, timeout=180).json()
    assert sweep["status"] == "COMPLETED", sweep
    runs = server.api.get(f"/sweeps/{sweep['id']}/runs").json()["results"]
    slurm_jobs = {server.api.get(f"/jobs/{run['id']}/files/job.txt").text.strip() for run in runs}
    assert len(slurm_jobs) >= 2, slurm_jobs  # the cluster grew to two worker jobs


def test_a_running_job_stops(server: SlurmServer):
    job = server.api.post("/jobs", json={"command": "sleep 300"}).json()
    wait_until(lambda: server.api.get(f"/jobs/{job['id']}").json()["status"] == "RUNNING", 120, "RUNNING")
    assert server.api.post(f"/jobs/{job['id']}/stop").status_code == 202
    assert finished(server, job["id"], 60)["status"] == "STOPPED"


@pytest.mark.parametrize(("resources", "field"), [
    ({"cores": 2}, "resources.cores"), ({"gpus": 1}, "resources.gpus"),
    ({"memory": 8 * 2**30}, "resources.memory"),
])
def test_what_no_worker_of_the_shape_could_run_is_refused(server: SlurmServer, resources, field):
    refused = server.api.post("/jobs", json={"command": "true", "resources": resources})
    assert refused.status_code == 400, refused.text
    assert field in refused.json()["error"]["fields"], refused.json()


def test_a_killed_server_cancels_its_pending_worker_jobs_when_it_starts_again(slurm: SlurmInfo, tmp_path):
    """The node has 2 CPUs: with 3 one-core jobs wanted, the third worker job stays pending."""
    options = cluster_options(tmp_path / "cluster", maximum=3, idle_timeout=60)
    first = start_server(tmp_path / "data", options)
    try:
        for _ in range(3):
            assert first.api.post("/jobs", json={"command": "sleep 600"}).status_code == 201
        wait_until(lambda: any(slurm.job_state(i)[0] == "PENDING" for i in slurm.squeue_ids()), 90,
                   "a worker job pending in Slurm")
        left = set(slurm.squeue_ids())
        os.killpg(first.process.pid, signal.SIGKILL)
    finally:
        kill_session(first.process)
    assert set(slurm.squeue_ids()) & left, "the killed server's worker jobs are still in Slurm"
    again = start_server(tmp_path / "data", options)
    try:
        log = server_output(again.process)
        assert "cancelled" in log and all(job_id in log for job_id in left), log[-3000:]
        wait_until(lambda: not set(slurm.squeue_ids()) & left, 30, "the old worker jobs gone from squeue")
        jobs = again.api.get("/jobs").json()["results"]
        for job in jobs:
            again.api.post(f"/jobs/{job['id']}/stop")
    finally:
        stop_server(again)
    wait_until(lambda: slurm.squeue_ids() == [], 60, "nothing left in squeue after the clean stop")


def test_a_job_on_a_worker_that_retires_runs_again_as_a_new_attempt(slurm: SlurmInfo, tmp_path):
    """Workers leave before their walltime (`lifetime`); what ran there is rerun, saying why."""
    options = cluster_options(tmp_path / "cluster", lifetime="8s", lifetime_stagger="0s", maximum=1)
    server = start_server(tmp_path / "data", options)
    try:
        job = server.api.post("/jobs", json={"command": "sleep 600"}).json()

        def rerun() -> list[dict]:
            history = server.api.get(f"/jobs/{job['id']}/statuses").json()
            return [h for h in history if h["status"] == "QUEUED" and "worker lost" in (h["reason"] or "")]

        lost = wait_until(rerun, 120, "the job run again after its worker retired", every=0.5)
        assert "retry 1/" in lost[0]["reason"], lost
        assert server.api.get(f"/jobs/{job['id']}").json()["attempt"] >= 2
        server.api.post(f"/jobs/{job['id']}/stop")
    finally:
        stop_server(server)
    wait_until(lambda: slurm.squeue_ids() == [], 60, "nothing left in squeue")
