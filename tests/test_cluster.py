"""An existing cluster of real processes: `dask scheduler` and two `orchestrator worker`s on
127.0.0.1, one owning (fake) GPU devices 0 and 1, one with none."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import psutil
import pytest
from distributed import Client

from plugins.worker import GPU_DEVICES_VARIABLE, GpuDevices
from tests.conftest import REPO, free_port, kill_session


@pytest.fixture(scope="module")
def external_cluster():
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    started = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--no-dashboard"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )]
    for name, gpus in (("gpu-worker", ["--gpu-devices", "0,1"]), ("cpu-worker", ["--gpus", "0"])):
        started.append(subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "worker", address, *gpus, "--cores", "2",
             "--name", name],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        ))
    try:
        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=90)
            workers = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
        yield address, workers
    finally:
        for process in started:
            kill_session(process)


@pytest.fixture
def cluster_server(make_server, external_cluster):
    address, workers = external_cluster
    return make_server(scheduler=address), workers


def test_gpu_jobs_land_on_the_gpu_worker_and_see_disjoint_devices(cluster_server):
    server, workers = cluster_server
    command = "echo $CUDA_VISIBLE_DEVICES,$NVIDIA_VISIBLE_DEVICES > dev.txt; sleep 1"
    jobs = [server.submit(command=command, resources={"cores": 1, "gpus": 1}) for _ in range(2)]
    seen = []
    for job in jobs:
        done = server.wait(job["id"])
        assert done["status"] == "COMPLETED" and done["worker"] == workers["gpu-worker"]
        seen.append(server.http.get(f"/jobs/{job['id']}/files/dev.txt").text.strip())
    assert sorted(seen) == ["0,0", "1,1"]  # each saw only its own device, both variables set

    both = server.wait(server.submit(command=command, resources={"cores": 1, "gpus": 2})["id"])
    assert server.http.get(f"/jobs/{both['id']}/files/dev.txt").text.strip() == "0,1,0,1"


def test_a_gpu_request_no_worker_can_meet_is_refused(cluster_server):
    server, _ = cluster_server
    response = server.http.post("/jobs", json={"command": "true", "resources": {"gpus": 3}})
    assert response.status_code == 400
    assert "resources.gpus" in response.json()["error"]["fields"]


def test_cpu_jobs_spread_over_both_workers(cluster_server):
    server, workers = cluster_server
    jobs = [server.submit(command="sleep 1", resources={"cores": 2}) for _ in range(4)]
    used = {server.wait(job["id"])["worker"] for job in jobs}
    assert used == set(workers.values())


def test_stop_on_a_remote_worker_leaves_no_process(cluster_server):
    server, _ = cluster_server
    job = server.submit(command="sleep 77; echo never", resources={"cores": 2})
    server.wait_for_status(job["id"], "RUNNING")
    server.http.post(f"/jobs/{job['id']}/stop")
    assert server.wait(job["id"], timeout=30)["status"] == "STOPPED"
    time.sleep(0.5)
    left = [p for p in psutil.process_iter(["cmdline"]) if "sleep 77" in " ".join(p.info["cmdline"] or [])]
    assert left == []


def test_a_worker_lends_each_device_to_one_job_at_a_time(monkeypatch):
    """The pool itself, as a worker told it owns devices 0,1,2,3 uses it from 4 threads."""
    monkeypatch.setenv(GPU_DEVICES_VARIABLE, "0,1,2,3")
    pool = GpuDevices()
    holding: list[list[str]] = []
    barrier = threading.Barrier(4)

    def job() -> None:
        with pool.lend(1) as devices:
            holding.append(devices)
            barrier.wait(10)  # all four hold a device at once

    threads = [threading.Thread(target=job) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert sorted(d for held in holding for d in held) == ["0", "1", "2", "3"]
    with pool.lend(2) as pair, pool.lend(2) as other:
        assert len(pair) == 2 and len(other) == 2 and not set(pair) & set(other)
    with pytest.raises(RuntimeError, match="cannot lend 5"), pool.lend(5, timeout=0.1):
        pass
