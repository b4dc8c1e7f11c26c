"""An existing cluster of real processes on TLS with certificate files: `dask scheduler` and two
`orchestrator worker`s on 127.0.0.1, one owning (fake) GPU devices 0 and 1, one with none."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence

import httpx
import psutil
import pytest
from distributed import Client, LocalCluster

from orchestrator import Orchestrator, Settings, assigned_gpus
from orchestrator.plugins.worker import GPU_DEVICES_VARIABLE, GpuDevices
from orchestrator.server.cluster import embedded_cluster_options
from tests.conftest import REPO, TlsFiles, free_port, kill_session
from tests.support import wait_until


@contextlib.contextmanager
def real_cluster(
    workers: dict[str, list[str]], tls: TlsFiles, scheduler_flags: Sequence[str] = ("--no-dashboard",)
) -> Iterator[tuple[str, dict[str, str], dict[str, subprocess.Popen]]]:
    """A `dask scheduler` and one worker per name, each in its own session, all given the TLS
    files as flags. A worker is `orchestrator worker` with the flags given, or the module and
    flags after `-m` when the flags start with "-m". Yields the scheduler address, worker
    addresses and processes."""
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", str(port), "--protocol", "tls", *tls.flags, *scheduler_flags],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    processes = {
        name: subprocess.Popen(
            [sys.executable, *(flags[:2] if flags[0] == "-m" else ["-m", "orchestrator.cli", "worker"]),
             address, *(flags[2:] if flags[0] == "-m" else flags), *tls.flags, "--name", name],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for name, flags in workers.items()
    }
    try:
        with Client(address, security=tls.security(), timeout=60) as client:
            client.wait_for_workers(len(workers), timeout=90)
            addresses = {info["name"]: addr for addr, info in client.scheduler_info()["workers"].items()}
        yield address, addresses, processes
    finally:
        for process in [scheduler, *processes.values()]:
            kill_session(process)


@pytest.fixture(scope="module")
def external_cluster(tls_files: TlsFiles):
    """The GPU worker is `orchestrator worker`; the other a plain `dask worker` with the plugin
    preloaded; the scheduler serves the dashboard with the Jobs page preloaded."""
    plain_worker = ["-m", "distributed.cli.dask_worker", "--resources", "CPU=2",
                    "--nthreads", "2", "--no-dashboard", "--preload", "orchestrator.plugins.worker"]
    dashboard = ["--dashboard-address", f"127.0.0.1:{free_port()}", "--preload", "orchestrator.plugins.dashboard"]
    with real_cluster({"gpu-worker": ["--gpu-devices", "0,1", "--cores", "2"], "cpu-worker": plain_worker},
                      tls_files, scheduler_flags=dashboard) as (address, workers, _):
        yield address, workers


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


def test_cluster_shows_each_workers_used_and_free_resources_and_running_jobs(cluster_server):
    server, workers = cluster_server
    job = server.submit(command="sleep 43", resources={"cores": 1, "gpus": 1})
    server.wait_for_status(job["id"], "RUNNING")
    cluster = server.http.get("/cluster").json()
    by_name = {worker["name"]: worker for worker in cluster["workers"]}
    gpu, cpu = by_name["gpu-worker"], by_name["cpu-worker"]
    assert gpu["address"] == workers["gpu-worker"] and gpu["running_jobs"] == [job["id"]]
    assert gpu["declared"]["GPU"] == 2 and gpu["used"]["GPU"] == 1 and gpu["free"]["GPU"] == 1
    assert gpu["used"]["CPU"] == 1 and gpu["free"]["CPU"] == 1
    assert "GPU" not in cpu["declared"] and cpu["running_jobs"] == [] and cpu["free"]["CPU"] == 2
    assert cluster["scheduler"] == server.settings.scheduler and cluster["can_grow"] is False
    server.http.post(f"/jobs/{job['id']}/stop")
    assert server.wait(job["id"], timeout=30)["status"] == "STOPPED"


def test_the_jobs_page_of_a_scheduler_started_with_the_preload(cluster_server):
    server, _ = cluster_server
    done = server.wait(server.submit(command="true", name="seen_on_the_page")["id"])
    page = server.http.get("/cluster").json()["jobs_page"]
    def shown() -> bool:
        response = httpx.get(page, timeout=10)
        assert response.status_code == 200
        return "single jobs" in response.text

    wait_until(shown, 15, "the Jobs page showing single jobs", every=0.3)
    assert done["status"] == "COMPLETED"


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


def test_a_job_whose_worker_dies_runs_again_elsewhere_then_fails_when_retries_are_spent(make_server, tls_files):
    """Kill the worker (nanny and all, as a machine loss) running a job: it is rerun on the
    other worker as a new attempt; when that one dies too, with worker_loss_retries=1, it fails."""
    flags = ["--gpus", "0", "--cores", "1"]
    with real_cluster({"first": flags, "second": flags}, tls_files) as (address, workers, processes), \
            orphans_killed("sleep 41"):
        server = make_server(scheduler=address, worker_loss_retries=1)
        job = server.submit(command="sleep 41; echo done", resources={"cores": 1})
        running = server.wait_for_status(job["id"], "RUNNING")
        victim = next(name for name, addr in workers.items() if addr == running["worker"])
        survivor = next(name for name in workers if name != victim)
        kill_session(processes[victim])

        record = _rerun_on(server, job["id"], workers[survivor], lost=running["worker"], retry="1/1")
        assert record["worker_losses"] == 1

        kill_session(processes[survivor])
        failed = server.wait(job["id"], timeout=60)
        assert failed["status"] == "FAILED", failed
        assert failed["status_reason"].startswith(f"worker lost ({workers[survivor]})")
        assert "no retries left (1/1)" in failed["status_reason"]


def test_a_sweep_run_whose_worker_dies_runs_again_elsewhere(make_server, tls_files):
    flags = ["--gpus", "0", "--cores", "1"]
    with real_cluster({"first": flags, "second": flags}, tls_files) as (address, workers, processes), \
            orphans_killed("sleep 42"):
        server = make_server(scheduler=address)
        created = server.http.post("/sweeps", json={
            "command": "sleep 42; echo ${x}", "variables": [{"name": "x", "values": [1]}],
            "resources": {"cores": 1},
        })
        assert created.status_code == 201, created.text
        run_id = server.http.get(f"/sweeps/{created.json()['id']}/runs").json()["results"][0]["id"]
        running = server.wait_for_status(run_id, "RUNNING")
        victim = next(name for name, addr in workers.items() if addr == running["worker"])
        kill_session(processes[victim])
        survivor = next(addr for name, addr in workers.items() if name != victim)
        _rerun_on(server, run_id, survivor, lost=running["worker"], retry="1/3")
        server.http.post(f"/sweeps/{created.json()['id']}/stop")
        assert server.wait(run_id, timeout=30)["status"] == "STOPPED"


def _rerun_on(server, job_id: str, worker: str, lost: str, retry: str) -> dict:
    """Wait until the job runs again on `worker`, and check the history says why."""
    def running_there() -> dict | None:
        record = server.http.get(f"/jobs/{job_id}").json()
        return record if record["status"] == "RUNNING" and record["worker"] == worker else None

    record = wait_until(running_there, 60, f"job {job_id} RUNNING on {worker}")
    assert record["status"] == "RUNNING" and record["worker"] == worker and record["attempt"] == 2, record
    history = server.http.get(f"/jobs/{job_id}/statuses").json()
    reasons = [h["reason"] for h in history if h["status"] == "QUEUED" and "worker lost" in (h["reason"] or "")]
    assert reasons == [f"worker lost ({lost}), retry {retry}"], history
    return record


@contextlib.contextmanager
def orphans_killed(marker: str) -> Iterator[None]:
    """A killed worker's job processes are orphans here (a dead machine takes them along)."""
    try:
        yield
    finally:
        for process in psutil.process_iter(["cmdline"]):
            if marker in " ".join(process.info["cmdline"] or []):
                with contextlib.suppress(psutil.Error):
                    process.kill()


def _devices_after_a_pause() -> list[str]:
    time.sleep(1)
    return assigned_gpus()


def test_callables_learn_their_own_devices(external_cluster, tls_files, tmp_path):
    """Callables share their worker's environment, so they ask which devices are theirs."""
    address, _ = external_cluster
    with Orchestrator(scheduler=address, **tls_files.settings, data_dir=tmp_path, port=0) as orch:
        jobs = [orch.submit(_devices_after_a_pause, resources={"cores": 1, "gpus": 1}) for _ in range(2)]
        seen = sorted(device for job in jobs for device in job.result(timeout=60))
    assert seen == ["0", "1"]


def test_embedded_workers_each_own_their_share_of_the_gpus(tmp_path):
    """LocalCluster gives every worker the same options; the devices must still be split."""
    settings = Settings(data_dir=tmp_path, workers=2, dashboard_address=":0")
    machine = {"CPU": 2.0, "MEMORY": 2.0 * 2**30, "GPU": 4.0}
    with LocalCluster(**embedded_cluster_options(settings, machine)) as cluster, Client(cluster) as client:
        owned = client.run(lambda: os.environ.get(GPU_DEVICES_VARIABLE))
        resources = {w["resources"]["GPU"] for w in client.scheduler_info()["workers"].values()}
    assert sorted(owned.values()) == ["0,1", "2,3"] and resources == {2.0}
