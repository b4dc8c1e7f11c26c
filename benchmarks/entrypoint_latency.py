"""Round trip of one trivial job, sequentially: an entry point over REST against a command over
REST and raw Dask, on the same embedded cluster in the same run.

1. entrypoint: ``POST /api/v1/jobs?sync=true`` of ``bench_app:noop`` (a one-module binary) in a
   warm context, the way Spark Jobserver answers a job of a loaded application;
2. command:    the same with the command ``true`` (a process per job);
   then the time from ``POST /jobs/{id}/stop`` of a running endless entry point to its
   ``STOPPED`` record (the issue's bound: 5 s);
3. raw dask:   ``client.submit(noop).result()`` from a client of the same cluster (TLS),
   what Dask alone costs per round trip.

Each measurement is sequential (one request after the other, after a few warm-up calls) and
prints p50 and p90; the ratio says how many raw Dask round trips one entry-point job costs.

    PYTHONPATH=. python benchmarks/entrypoint_latency.py --jobs 300
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from distributed import Client

from orchestrator.config import Settings
from orchestrator.loop_thread import LoopThread
from orchestrator.server.running import RunningServer, start_server

APP = b"def noop(**kwargs):\n    return 1\n\n\ndef spin():\n    while True:\n        pass\n"
STOPS = 5
WARM_UP = 10


def noop() -> int:
    return 1


def timed(call: Callable[[], None], times: int) -> list[float]:
    for _ in range(WARM_UP):
        call()
    durations = []
    for _ in range(times):
        started = time.perf_counter()
        call()
        durations.append(time.perf_counter() - started)
    return durations


def sync_job(http: httpx.Client, body: dict) -> Callable[[], None]:
    def call() -> None:
        response = http.post("/jobs", params={"sync": "true", "timeout": 60}, json=body)
        job = response.json()
        if response.status_code != 201 or job["status"] != "COMPLETED":
            raise RuntimeError(f"the job did not complete: {response.status_code} {response.text[:500]}")
    return call


def stop_time(http: httpx.Client) -> float:
    """Seconds from `POST /jobs/{id}/stop` of a running endless entry point to its STOPPED record."""
    job = http.post("/jobs", json={"entrypoint": "bench_app:spin", "binaries": ["bench_app.py"]}).json()
    deadline = time.monotonic() + 60
    while http.get(f"/jobs/{job['id']}").json()["status"] != "RUNNING":
        if time.monotonic() > deadline:
            raise RuntimeError("the endless entry point never started")
        time.sleep(0.05)
    started = time.perf_counter()
    http.post(f"/jobs/{job['id']}/stop").raise_for_status()
    record = http.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
    if record["status"] != "STOPPED":
        raise RuntimeError(f"the stopped entry point ended {record['status']}")
    return time.perf_counter() - started


def quantiles(durations: list[float]) -> tuple[float, float]:
    cuts = statistics.quantiles(durations, n=10)
    return statistics.median(durations), cuts[8]


def report(label: str, durations: list[float]) -> float:
    p50, p90 = quantiles(durations)
    print(f"{label}: p50 {p50 * 1000:.2f} ms, p90 {p90 * 1000:.2f} ms ({len(durations)} jobs)")
    return p50


def measure(server: RunningServer, jobs: int) -> None:
    with httpx.Client(base_url=server.url + "/api/v1", timeout=120) as http:
        http.post("/binaries/bench_app.py", content=APP).raise_for_status()
        entry = report("entrypoint (REST, sync)", timed(sync_job(
            http, {"entrypoint": "bench_app:noop", "binaries": ["bench_app.py"]}), jobs))
        command = report("command true (REST, sync)", timed(sync_job(http, {"command": "true"}), jobs))
        stops = [stop_time(http) for _ in range(STOPS)]
        print(f"stop of a running entry point (endless loop) to STOPPED: p50 {statistics.median(stops):.2f} s, "
              f"max {max(stops):.2f} s ({STOPS} stops; the issue's bound: 5 s)")
    connection = server.service.connection
    with Client(connection.address, security=connection.security) as client:
        raw = report("raw dask submit().result()",
                     timed(lambda: client.submit(noop, pure=False).result(), jobs))
    print(f"ratio entrypoint-p50/raw-dask-p50 = {entry / raw:.2f}")
    print(f"ratio entrypoint-p50/command-p50 = {entry / command:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=300, help="jobs per measurement")
    args = parser.parse_args()
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrator-bench-"))
    loop = LoopThread()
    try:
        settings = Settings(data_dir=data_dir, port=0, dashboard_address=":0", workers=1, threads_per_worker=2)
        server = loop.run(start_server(settings))
        try:
            measure(server, args.jobs)
        finally:
            loop.run(server.close())
    finally:
        loop.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
