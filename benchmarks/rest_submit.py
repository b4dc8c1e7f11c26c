"""Throughput of trivial jobs through the REST API, against raw Dask and a bare loop.

One run starts the orchestrator's server in this process (embedded Dask LocalCluster,
temporary data directory) and measures, on the same machine and cluster:

1. accepted:  how fast N `true` jobs are accepted by ``POST /api/v1/jobs`` from a
   concurrent HTTP client (a process of its own on raw keep-alive connections,
   benchmarks/post_load.py), against a bare Tornado handler that commits each POST to SQLite
   (WAL) measured with the same client;
2. completed: how fast they finish, from the first submit until the count endpoint reports
   all N terminal (polled every 0.2 s);
3. raw dask:  ``client.map`` of a function running ``true`` N times on the same cluster,
   i.e. what Dask alone costs per task;
4. bare:      ``subprocess.run(["true"])`` N times in 2 parallel processes, the floor set by
   process creation on this machine;
5. job type:  the same N jobs submitted by job type (a registered type whose command is
   ``true``), to show that a job by type costs no more than a plain job;
6. sync:      one trivial ``POST /jobs?sync=true`` after another on the idle server (after the
   others have ended): p50 and p90 of the whole round trip, from a client in a process of its
   own, as any user's client is (in this process it would compete for the server's GIL),
   against raw Dask's own round trip: ``client.submit(run_true).result()`` one after another
   from a process of its own, with Dask's default settings;
7. deep queue: how fast N ``sleep 600`` jobs are accepted, last (closing the server ends them):
   jobs that outlast the burst, so the queue deepens and the workers spawn nothing meanwhile,
   which shows the accepting path alone; measurement 1's trivial jobs share the machine's cores
   with the workers running them.

The ratios against the bare loop say how much of the machine's process-spawning rate
survives Dask alone and the whole orchestrator (HTTP, job store, storage, Dask).

    python benchmarks/rest_submit.py --jobs 2000 --concurrency 16 --workers 2
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from statistics import median
from typing import Any
from urllib.parse import urlsplit

import httpx
from distributed import Client
from post_load import bare_commit_rate, post_many  # its sibling: run as a script

from orchestrator.config import Settings
from orchestrator.loop_thread import LoopThread
from orchestrator.server.running import RunningServer, start_server

TERMINAL = ("COMPLETED", "FAILED", "STOPPED")
POLL_INTERVAL_S = 0.2
COMPLETION_TIMEOUT_S = 600.0
BARE_PROCESSES = 2
SYNC_JOBS = 200
SYNC_WARM_UP = 10


@dataclass
class RestResult:
    accepted_s: float
    completed_s: float
    counts: dict[str, int]


def run_true(_: int) -> None:
    """The task of the raw Dask measurement: module-level so that workers can unpickle it."""
    subprocess.run(["true"], check=True)


def run_true_times(times: int) -> None:
    """The work of one process of the bare measurement."""
    for _ in range(times):
        subprocess.run(["true"], check=True)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


PLAIN = {"command": "true"}
LONG = {"command": "sleep 600"}  # outlasts any burst: never completes while measured
TYPED = {"job_type": "bench-true@1.0.0"}
BENCH_TYPE = {"manifest": {"seedVersion": "1.0.0", "job": {
    "name": "bench-true", "jobVersion": "1.0.0", "packageVersion": "1.0.0", "title": "true",
    "timeout": 60, "interface": {"command": "true"}}}}


def count_jobs(client: httpx.Client, url: str, status: str) -> int:
    response = client.get(f"{url}/api/v1/jobs", params={"status": status, "page_size": 1})
    response.raise_for_status()
    return int(response.json()["count"])


def wait_terminal(url: str, jobs: int, before: int = 0) -> dict[str, int]:
    """Poll the count endpoint until `jobs` jobs are terminal; returns the count per status."""
    deadline = time.perf_counter() + COMPLETION_TIMEOUT_S
    with httpx.Client(timeout=60) as client:
        while True:
            counts = {status: count_jobs(client, url, status) for status in TERMINAL}
            if sum(counts.values()) >= jobs + before:
                return counts
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {counts} of {jobs} jobs terminal after {COMPLETION_TIMEOUT_S} s")
            time.sleep(POLL_INTERVAL_S)


def measure_rest(url: str, jobs: int, concurrency: int, body: dict = PLAIN, before: int = 0) -> RestResult:
    """`before`: jobs of earlier measurements already ended on this server. The jobs are
    posted by a client process of its own (benchmarks/post_load.py)."""
    started = time.perf_counter()
    accepted_s = post_many(urlsplit(url).port, body, jobs, concurrency)
    counts = wait_terminal(url, jobs, before)
    return RestResult(accepted_s, time.perf_counter() - started, counts)


def measure_raw_dask(server: RunningServer, jobs: int) -> float:
    """Seconds for `jobs` tasks running `true` on the cluster, submitted with client.map
    (with the cluster's certificate: its comms are TLS)."""
    connection = server.service.connection
    with Client(connection.address, security=connection.security) as client:
        started = time.perf_counter()
        client.gather(client.map(run_true, range(jobs), pure=False))
        return time.perf_counter() - started


def measure_raw_dask_sync(address: str, security: Any) -> list[float]:
    """Sequential ``client.submit(run_true).result()`` round trips: the sync line's baseline,
    raw Dask as its users call it."""
    with Client(address, security=security) as client:
        return round_trips(lambda number: client.submit(run_true, number, pure=False).result())


def measure_bare(runs: int, processes: int = BARE_PROCESSES) -> float:
    """Seconds for `runs` runs of `true` split across `processes` processes, pool start included."""
    shares = [runs // processes + (1 if i < runs % processes else 0) for i in range(processes)]
    started = time.perf_counter()
    with ProcessPoolExecutor(processes) as pool:
        list(pool.map(run_true_times, shares))
    return time.perf_counter() - started


def round_trips(call: Callable[[int], None], count: int = SYNC_JOBS) -> list[float]:
    """Seconds of each of `count` calls one after another, after SYNC_WARM_UP unmeasured, sorted."""
    durations = []
    for number in range(count + SYNC_WARM_UP):
        started = time.perf_counter()
        call(number)
        if number >= SYNC_WARM_UP:
            durations.append(time.perf_counter() - started)
    return sorted(durations)


def measure_sync(url: str) -> list[float]:
    """Sequential `?sync=true` round trips of `true`."""
    with httpx.Client(base_url=f"{url}/api/v1", timeout=60) as client:
        def post(_: int) -> None:
            job = client.post("/jobs", params={"sync": "true"}, json=PLAIN).json()
            if job.get("status") != "COMPLETED":
                raise RuntimeError(f"a sync job did not complete: {job}")
        return round_trips(post)


def start(loop: LoopThread, data_dir: Path, workers: int) -> RunningServer:
    settings = Settings(
        data_dir=data_dir, port=0, dashboard_address=":0", workers=workers, threads_per_worker=1
    )
    return loop.run(start_server(settings))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2000, help="jobs (and runs) per measurement")
    parser.add_argument("--concurrency", type=int, default=16, help="concurrent HTTP requests")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the cluster")
    return parser.parse_args()


def report_rest(jobs: int, rest: RestResult) -> None:
    print(f"accepted: {jobs} jobs in {rest.accepted_s:.2f} s = {rate(jobs, rest.accepted_s):.1f} jobs/s")
    print(f"completed: {jobs} jobs in {rest.completed_s:.2f} s = {rate(jobs, rest.completed_s):.1f} jobs/s")
    for status in ("FAILED", "STOPPED"):
        if rest.counts[status]:
            print(f"{status.lower()}: {rest.counts[status]}")


def main() -> None:
    args = parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    loop = LoopThread()
    try:
        server = start(loop, data_dir, args.workers)
        try:
            rest = measure_rest(server.url, args.jobs, args.concurrency)
            report_rest(args.jobs, rest)
            registered = httpx.post(f"{server.url}/api/v1/job-types", json=BENCH_TYPE, timeout=60)
            registered.raise_for_status()
            typed = measure_rest(server.url, args.jobs, args.concurrency, TYPED, before=args.jobs)
            print(f"job type: {args.jobs} jobs completed in {typed.completed_s:.2f} s = "
                  f"{rate(args.jobs, typed.completed_s):.1f} jobs/s")
            raw_dask_s = measure_raw_dask(server, args.jobs)
            print(f"raw dask: {rate(args.jobs, raw_dask_s):.1f} runs/s ({raw_dask_s:.2f} s)")
            connection = server.service.connection
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:  # clients of their own
                sync = pool.submit(measure_sync, server.url).result()
                raw_sync = pool.submit(measure_raw_dask_sync, connection.address, connection.security).result()
            print(f"sync p50 = {median(sync) * 1000:.2f} ms (<= 10), "
                  f"p90 = {sync[int(len(sync) * 0.9)] * 1000:.2f} ms ({len(sync)} sequential jobs)")
            print(f"raw dask sync p50 = {median(raw_sync) * 1000:.2f} ms (client.submit(...).result() one after "
                  f"another), ratio sync/raw-dask-sync = {median(sync) / median(raw_sync):.2f}")
            deep_s = post_many(urlsplit(server.url).port, LONG, args.jobs, args.concurrency)
            print(f"accepted into a deep queue: {args.jobs} long jobs in {deep_s:.2f} s = "
                  f"{rate(args.jobs, deep_s):.1f} jobs/s (the workers spawn nothing meanwhile)")
        finally:
            loop.run(server.close())
    finally:
        loop.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    # After the cluster is gone, so that its idle processes take no CPU from the bare loop.
    bare_handler = bare_commit_rate(PLAIN, args.jobs, args.concurrency)
    print(f"bare tornado handler committing each POST to SQLite: {bare_handler:.1f} requests/s")
    print(f"goal accepted = {rate(args.jobs, rest.accepted_s):.0f} jobs/s (>= 1500), "
          f"ratio accepted/bare-handler = {rate(args.jobs, rest.accepted_s) / bare_handler:.2f}")
    bare_s = measure_bare(args.jobs)
    print(f"bare subprocess ({BARE_PROCESSES} processes): {rate(args.jobs, bare_s):.1f} runs/s ({bare_s:.2f} s)")
    # Same N everywhere, so a ratio of rates is the inverse ratio of durations.
    print(f"ratio raw-dask/bare = {bare_s / raw_dask_s:.2f}")
    print(f"ratio completed/bare = {bare_s / rest.completed_s:.2f} (>= 0.5)")
    print(f"ratio job-type/plain completed rate = {rest.completed_s / typed.completed_s:.2f}")


if __name__ == "__main__":
    main()
