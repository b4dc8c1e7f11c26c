"""Latency of jobs on a Slurm cluster: a cold start and warm jobs, against bare Slurm and raw Dask.

One run starts the test Slurm of tests/support/slurm.py (one node, this machine; its daemons
run as root), then the orchestrator's server in this process with ``cluster="slurm"``: every
Dask worker is a Slurm batch job of 1 core and 1 GiB (at most one here, kept while idle), and
measures, on the same Slurm:

1. cold start: ``POST /api/v1/jobs {"command": "true"}`` with no worker up, until the job is
   COMPLETED (``GET /jobs/{id}?wait=``): Slurm must start a worker job, the worker must join the
   scheduler, then the job runs: seconds, once;
2. bare sbatch: ``sbatch --wrap true`` until Slurm reports it ended (scontrol polled every
   0.1 s), measured before the server starts, on an idle Slurm: the median of ``--sbatch-runs``,
   the floor a cold start cannot go below;
3. warm: ``--jobs`` sequential ``POST /api/v1/jobs?sync=true&timeout=60`` of ``true`` with the
   worker up (after one unmeasured job): median and p90 per job, from the request to the answer
   saying COMPLETED;
4. raw dask: ``client.submit(subprocess.run, ["true"])`` and its result, ``--jobs`` times in
   sequence (after one unmeasured task) on the same scheduler and worker, through the cluster's
   TLS: what Dask alone costs per task.

The ratios cold/sbatch and warm/raw-dask say how much the orchestrator (worker start-up, HTTP,
job store, storage, plugin) adds to what Slurm and Dask cost alone. Needs root and the Slurm
and munge packages (``bash .ci/system-packages.sh``):

    python benchmarks/slurm_jobs.py --jobs 50 --sbatch-runs 5

On a small shared machine numbers are noisy: compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test Slurm lives with the tests

import httpx  # noqa: E402
from distributed import Client  # noqa: E402

from orchestrator.config import Settings  # noqa: E402
from orchestrator.loop_thread import LoopThread  # noqa: E402
from orchestrator.server.running import RunningServer, start_server  # noqa: E402
from tests.support.slurm import MARKER_VAR, SlurmInfo, outer_slurm_vars, slurm_cluster  # noqa: E402

TERMINAL = ("COMPLETED", "FAILED", "STOPPED")
SERVER_START_TIMEOUT_S = 120.0
SERVER_CLOSE_TIMEOUT_S = 120.0
SQUEUE_EMPTY_TIMEOUT_S = 30.0
PLAIN = {"command": "true"}


def percentile(values: list[float], share: float) -> float:
    """Nearest-rank percentile (share in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def cluster_options(folder: Path, idle_timeout: float) -> dict:
    """Those of tests/test_slurm.py, with one worker job at most, kept while the run lasts."""
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "cores": 1, "memory": "1GiB", "queue": "debug", "walltime": "00:30:00",
        "minimum": 0, "maximum": 1, "idle_timeout": idle_timeout, "scheduler_host": "127.0.0.1",
        "python": sys.executable, "local_directory": str(folder / "work"),
        "log_directory": str(folder / "logs"), "shared_temp_directory": str(folder / "tls"),
        "job_extra_directives": [f"--chdir={REPO}"],
    }


def wait_for(predicate: Callable[[], bool], timeout: float, what: str, every: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(every)


def measure_sbatch(slurm: SlurmInfo, runs: int, timeout: float) -> list[float]:
    """Seconds of each `sbatch --wrap true` from submission until it has ended."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        slurm.sbatch_wait("true", timeout=timeout)
        times.append(time.perf_counter() - started)
    return times


def measure_cold(api: httpx.Client, slurm: SlurmInfo, timeout: float) -> float:
    """Seconds from the POST of a job, with no worker job in Slurm, until it is COMPLETED."""
    if slurm.squeue_ids():
        raise RuntimeError(f"not a cold start: worker jobs already in Slurm: {slurm.squeue_ids()}")
    started = time.perf_counter()
    created = api.post("/jobs", json=PLAIN)
    if created.status_code != 201:
        raise RuntimeError(f"submit answered {created.status_code}: {created.text}")
    job_id = created.json()["id"]
    deadline = started + timeout
    while True:
        left = deadline - time.perf_counter()
        if left <= 0:
            raise TimeoutError(f"job {job_id} not ended {timeout} s after its submission "
                               f"(squeue: {slurm.squeue_ids()})\n{slurm.log_tails()}")
        wait = min(left, 60.0)
        job = api.get(f"/jobs/{job_id}", params={"wait": f"{wait:.1f}"}, timeout=wait + 30).json()
        if job["status"] in TERMINAL:
            break
    elapsed = time.perf_counter() - started
    if job["status"] != "COMPLETED":
        raise RuntimeError(f"the cold-start job ended {job['status']}: {job}")
    return elapsed


def sync_job(api: httpx.Client, timeout: float) -> float:
    """Seconds of one `POST /jobs?sync=true` of `true`, checked COMPLETED."""
    started = time.perf_counter()
    answer = api.post("/jobs", params={"sync": "true", "timeout": f"{timeout:g}"}, json=PLAIN,
                      timeout=timeout + 30)
    elapsed = time.perf_counter() - started
    job = answer.json()
    if answer.status_code != 201 or job.get("status") != "COMPLETED":
        raise RuntimeError(f"sync submit answered {answer.status_code}: {answer.text}")
    return elapsed


def measure_warm(api: httpx.Client, jobs: int, timeout: float) -> list[float]:
    sync_job(api, timeout)  # unmeasured: the first request on this connection
    return [sync_job(api, timeout) for _ in range(jobs)]


def measure_raw_dask(server: RunningServer, jobs: int, timeout: float) -> list[float]:
    """Seconds of each `client.submit(subprocess.run, ["true"])` until its result is here
    (with the cluster's certificate: its comms are TLS)."""
    connection = server.service.connection
    with Client(connection.address, security=connection.security, timeout=timeout) as client:
        times = []
        for index in range(jobs + 1):  # the first one unmeasured
            started = time.perf_counter()
            done = client.submit(subprocess.run, ["true"], pure=False).result(timeout=timeout)
            elapsed = time.perf_counter() - started
            if done.returncode != 0:
                raise RuntimeError(f"`true` on the worker exited {done.returncode}")
            if index:
                times.append(elapsed)
        return times


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=50, help="warm jobs (and raw Dask tasks)")
    parser.add_argument("--sbatch-runs", type=int, default=5, help="bare sbatch round trips")
    parser.add_argument("--cold-timeout", type=float, default=300.0,
                        help="seconds the cold-start job may take")
    parser.add_argument("--job-timeout", type=float, default=60.0,
                        help="seconds one warm job, raw task or bare sbatch may take")
    args = parser.parse_args()
    if args.jobs < 1 or args.sbatch_runs < 1:
        parser.error("--jobs and --sbatch-runs must be at least 1")
    return args


def run(args: argparse.Namespace, slurm: SlurmInfo, root: Path) -> None:
    sbatch = measure_sbatch(slurm, args.sbatch_runs, args.job_timeout)
    sbatch_s = statistics.median(sbatch)
    print(f"bare sbatch round trip: median {sbatch_s:.2f} s over {len(sbatch)} "
          f"(min {min(sbatch):.2f}, max {max(sbatch):.2f})", flush=True)

    # The worker stays for the whole run: cold start, warm jobs and raw tasks on the same one.
    idle_timeout = args.cold_timeout + 4 * args.job_timeout * (args.jobs + 2)
    settings = Settings(data_dir=root / "data", port=0, cluster="slurm",
                        cluster_options=cluster_options(root / "cluster", idle_timeout))
    loop = LoopThread()
    try:
        server = loop.run(start_server(settings), timeout=SERVER_START_TIMEOUT_S)
        try:
            with httpx.Client(base_url=f"{server.url}/api/v1", timeout=90) as api:
                cold_s = measure_cold(api, slurm, args.cold_timeout)
                print(f"cold start: {cold_s:.2f} s (worker jobs in Slurm: {slurm.squeue_ids()})",
                      flush=True)
                warm = measure_warm(api, args.jobs, args.job_timeout)
            warm_ms = [1000 * s for s in warm]
            print(f"warm sync job: median {statistics.median(warm_ms):.1f} ms, "
                  f"p90 {percentile(warm_ms, 0.9):.1f} ms over {len(warm_ms)}", flush=True)
            raw_ms = [1000 * s for s in measure_raw_dask(server, args.jobs, args.job_timeout)]
            print(f"raw dask task: median {statistics.median(raw_ms):.1f} ms, "
                  f"p90 {percentile(raw_ms, 0.9):.1f} ms over {len(raw_ms)}", flush=True)
        finally:
            loop.run(server.close(), timeout=SERVER_CLOSE_TIMEOUT_S)
    finally:
        loop.stop()
    try:
        wait_for(lambda: slurm.squeue_ids() == [], SQUEUE_EMPTY_TIMEOUT_S,
                 "no worker job left in Slurm after the server closed")
    except TimeoutError as exc:
        print(f"warning: {exc}: {slurm.squeue_ids()} (cancelled at teardown)")

    print(f"ratio cold/sbatch = {cold_s / sbatch_s:.1f}")
    print(f"ratio warm/raw-dask (medians) = {statistics.median(warm_ms) / statistics.median(raw_ms):.1f}")


def main() -> None:
    args = parse_args()
    root = Path(tempfile.mkdtemp(prefix="orch-slurm-bench-"))  # short: Slurm's sockets live here
    saved = dict(os.environ)
    try:
        with slurm_cluster(root) as slurm:
            # sbatch (run by dask-jobqueue from this process) must find this Slurm, and the
            # worker jobs carry the marker that lets teardown find what they leave behind.
            for var in outer_slurm_vars(saved):
                os.environ.pop(var)
            os.environ.update(SLURM_CONF=slurm.env["SLURM_CONF"], **{MARKER_VAR: slurm.env[MARKER_VAR]})
            run(args, slurm, root)
    finally:
        os.environ.clear()
        os.environ.update(saved)
        # The closed cluster's certificate files (NamedTemporaryFile, under root) are removed
        # when it is collected: now, rather than at exit once their folder is gone.
        gc.collect()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
