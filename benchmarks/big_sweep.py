"""A million-run sweep as a user makes one over REST: its creation, its pending memory, its stop,
and whether the API keeps answering meanwhile (issue 20, goal 2).

One run:

1. starts ``orchestrator serve`` on a fresh data directory (a subprocess, 127.0.0.1, a free
   port, an embedded cluster of ``--workers`` worker processes) and submits one single job, so
   the prober has a job to read before the sweep exists;
2. measures the server's idle memory: the RSS of the server process itself (psutil, its own
   pages only: the Dask workers are its children and are left out), the median of a second of
   samples after a warm-up;
3. creates a ``--runs`` sweep of ``--command`` (default 1,000,000 runs of ``sleep 1``) with a
   small ``max_parallel``, so nearly every run stays pending, and times ``POST /sweeps``;
4. lets it run ``--run-seconds``, sampling the server's RSS (memory pending: the peak over
   that phase, minus idle);
5. stops it (``POST /sweeps/{id}/stop``), timed until ``GET /sweeps/{id}`` says it ended;
6. resumes it (``POST /sweeps/{id}/rerun``: its stopped runs queued again), timed until its 202,
   lets it run ``--run-seconds`` again and stops it again;
7. deletes it (``DELETE /sweeps/{id}``), timed until its 204, with the runs' history and files.

All along, a prober thread asks ``GET /health`` and ``GET /jobs/{id}`` (the single job during
the creation, a run of the sweep afterwards) every 50 ms, each on a new connection, and keeps
each answer's latency by phase. A request the server does not answer counts with all the time
it took, so a stalled event loop shows as one long sample.

It prints one line per figure of the goal, with the goal in brackets:

    create = N s (<= 30)
    stop = N s (<= 15)
    probe p99 = N ms (<= 200), max = N ms      (create, run, stop, and overall)
    memory pending = +N MiB over idle (<= 500)
    rerun = N s, stop again = N s              (no goal set: resuming a stopped sweep)
    delete = N s, memory +N MiB over idle      (no goal set: a sweep's end of life)

    python benchmarks/big_sweep.py                      # 1,000,000 runs
    python benchmarks/big_sweep.py --runs 100000        # a tenth: minutes less
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, however it is started
from api_latency import (  # noqa: E402
    API,
    Background,
    add_data_dir_options,
    get_json,
    request,
    run_in_data_dir,
    start_orchestrator,
    sweep_body,
)

PROBE_S = 0.05
GOAL_CREATE_S = 30.0
GOAL_STOP_S = 15.0
GOAL_P99_MS = 200.0
GOAL_MEMORY_MIB = 500.0
DELETE_TIMEOUT_S = 3600.0
MIB = 2**20


@dataclass
class Phase:
    """Probe latencies (seconds) and server RSS samples (bytes) of one phase."""

    name: str
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    rss: list[int] = field(default_factory=list)
    began: float = field(default_factory=time.perf_counter)
    worst_at: float = float("nan")  # seconds into the phase when its slowest probe was sent

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Prober(Background):
    """GET /health and GET /jobs/{id} every PROBE_S, filed under the phase current when each
    was sent; the server's own RSS sampled as often."""

    def __init__(self, port: int, pid: int, job_id: str):
        self.port = port
        self.server = psutil.Process(pid)
        self.job_id = job_id
        self.phases: dict[str, Phase] = {}
        self.phase = self._enter("idle")
        super().__init__()

    def _enter(self, name: str) -> Phase:
        return self.phases.setdefault(name, Phase(name))

    def switch(self, name: str, job_id: str | None = None) -> None:
        if job_id is not None:
            self.job_id = job_id
        self.phase = self._enter(name)

    def _run(self) -> None:
        while not self._stop.is_set():
            phase = self.phase
            for path in (f"{API}/health", f"{API}/jobs/{self.job_id}"):
                begun = time.perf_counter()
                try:
                    status, _ = request(self.port, path, timeout=600)
                except (OSError, http.client.HTTPException):
                    status = 0
                latency = time.perf_counter() - begun
                if latency > max(phase.latencies, default=0.0):
                    phase.worst_at = begun - phase.began
                phase.latencies.append(latency)
                phase.failures += status != 200
            with contextlib.suppress(psutil.Error):
                phase.rss.append(self.server.memory_info().rss)
            self._stop.wait(PROBE_S)


def single_job(port: int) -> str:
    status, body = request(port, f"{API}/jobs", "POST", {"command": "true", "name": "probe_target"})
    if status != 201:
        raise RuntimeError(f"POST /jobs answered {status}: {body[:300]!r}")
    return json.loads(body)["id"]


def create(port: int, body: dict) -> tuple[str, float]:
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps", "POST", body, timeout=3600)
    took = time.perf_counter() - begun
    if status != 201:
        raise RuntimeError(f"POST /sweeps answered {status}: {answer[:500]!r}")
    return json.loads(answer)["id"], took


def stop(port: int, sweep_id: str, timeout: float = 3600) -> tuple[float, dict]:
    """Seconds from POST .../stop until the sweep reads as ended, and its counts then."""
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps/{sweep_id}/stop", "POST", {}, timeout=timeout)
    if status != 202:
        raise RuntimeError(f"POST /sweeps/{sweep_id}/stop answered {status}: {answer[:500]!r}")
    while True:
        sweep = get_json(port, f"{API}/sweeps/{sweep_id}")
        if sweep["status"] in ("COMPLETED", "FAILED", "STOPPED"):
            return time.perf_counter() - begun, sweep["counts"]
        if time.perf_counter() - begun > timeout:
            raise TimeoutError(f"sweep {sweep_id} still {sweep['status']} after {timeout} s")
        time.sleep(0.1)


def rerun(port: int, sweep_id: str) -> float:
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps/{sweep_id}/rerun", "POST", {}, timeout=DELETE_TIMEOUT_S)
    if status != 202:
        raise RuntimeError(f"POST /sweeps/{sweep_id}/rerun answered {status}: {answer[:500]!r}")
    return time.perf_counter() - begun


def delete(port: int, sweep_id: str) -> float:
    begun = time.perf_counter()
    status, answer = request(port, f"{API}/sweeps/{sweep_id}", "DELETE", timeout=DELETE_TIMEOUT_S)
    if status != 204:
        raise RuntimeError(f"DELETE /sweeps/{sweep_id} answered {status}: {answer[:500]!r}")
    return time.perf_counter() - begun


def run_then_stop(port: int, prober: Prober, sweep_id: str, seconds: float, phase: str) -> tuple[float, dict]:
    """Let the sweep run `seconds`, then stop it, timed, with the probes filed under `phase`."""
    time.sleep(seconds)
    during = get_json(port, f"{API}/sweeps/{sweep_id}")["counts"]
    print(f"while running: {during}; stopping ...", flush=True)
    prober.switch(phase)
    took, counts = stop(port, sweep_id)
    print(f"stopped in {took:.1f} s", flush=True)
    return took, counts


def first_run(port: int, sweep_id: str) -> str:
    return get_json(port, f"{API}/sweeps/{sweep_id}/runs?page_size=1")["results"][0]["id"]


@dataclass
class Timings:
    create_s: float
    stop_s: float
    rerun_s: float
    restop_s: float
    delete_s: float


def report(runs: int, took: Timings, counts: dict, idle: float, prober: Prober) -> None:
    phases = [prober.phases[name] for name in ("create", "run", "stop", "rerun", "restop", "delete")
              if name in prober.phases]
    pending = max(prober.phases["run"].rss, default=0)
    created_peak = max(prober.phases["create"].rss, default=0)
    print()
    print(f"{runs:,}-run sweep; ended with {counts}")
    print(f"create = {took.create_s:.1f} s (<= {GOAL_CREATE_S:g})")
    print(f"stop = {took.stop_s:.1f} s (<= {GOAL_STOP_S:g})")
    overall = Phase("overall", [x for p in phases for x in p.latencies], sum(p.failures for p in phases))
    for phase in [*phases, overall]:
        print(f"probe p99 ({phase.name}) = {phase.quantile(0.99) * 1000:.0f} ms (<= {GOAL_P99_MS:g}), "
              f"max = {max(phase.latencies, default=float('nan')) * 1000:.0f} ms "
              f"({len(phase.latencies)} probes, {phase.failures} failed"
              + (f"; the slowest {phase.worst_at:.1f} s in)" if phase.name != "overall" else ")"))
    print(f"memory pending = +{(pending - idle) / MIB:.0f} MiB over idle (<= {GOAL_MEMORY_MIB:g}) "
          f"(idle {idle / MIB:.0f} MiB; peak while creating +{(created_peak - idle) / MIB:.0f} MiB; "
          "the server process's own RSS, workers left out)")
    deleting = max(prober.phases["delete"].rss, default=0)
    print(f"rerun = {took.rerun_s:.1f} s, stop again = {took.restop_s:.1f} s (no goal set)")
    print(f"delete = {took.delete_s:.1f} s, memory +{(deleting - idle) / MIB:.0f} MiB over idle (no goal set)")


def run(args: argparse.Namespace, data_dir: Path) -> None:
    os.environ["ORCHESTRATOR_WORKERS"] = str(args.workers)  # start_orchestrator passes its environment on
    began = time.perf_counter()
    server = start_orchestrator(data_dir)
    try:
        print(f"server: up in {time.perf_counter() - began:.1f} s on 127.0.0.1:{server.port}, pid "
              f"{server.popen.pid} ({args.workers} worker processes)", flush=True)
        job_id = single_job(server.port)
        with Prober(server.port, server.popen.pid, job_id) as prober:
            time.sleep(args.idle_seconds)
            idle = statistics.median(prober.phases["idle"].rss[-max(1, int(1 / PROBE_S)):])
            print(f"idle: {idle / MIB:.0f} MiB; creating {args.runs:,} runs of `{args.command}` "
                  f"(max_parallel {args.max_parallel}) ...", flush=True)
            prober.switch("create")
            body = sweep_body("big_sweep", args.runs, args.command, args.max_parallel)
            sweep_id, create_s = create(server.port, body)
            print(f"created in {create_s:.1f} s; running {args.run_seconds:g} s ...", flush=True)
            prober.switch("run", first_run(server.port, sweep_id))
            stop_s, _ = run_then_stop(server.port, prober, sweep_id, args.run_seconds, "stop")
            prober.switch("rerun")
            rerun_s = rerun(server.port, sweep_id)
            print(f"resumed in {rerun_s:.1f} s", flush=True)
            restop_s, counts = run_then_stop(server.port, prober, sweep_id, args.run_seconds, "restop")
            prober.switch("delete", job_id)  # the sweep's runs go: the single job is asked for
            delete_s = delete(server.port, sweep_id)
            prober.switch("after")
            time.sleep(0.2)
        report(args.runs, Timings(create_s, stop_s, rerun_s, restop_s, delete_s), counts, idle, prober)
    finally:
        server.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs of the sweep")
    parser.add_argument("--command", default="sleep 1", help="each run's shell command")
    parser.add_argument("--max-parallel", type=int, default=2, help="the sweep's max_parallel")
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the embedded cluster")
    parser.add_argument("--run-seconds", type=float, default=5.0, help="how long it runs before the stop")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="warm-up before idle memory is read")
    add_data_dir_options(parser)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    run_in_data_dir(run, parse_args(argv), "orchestrator-big-sweep-")


if __name__ == "__main__":
    main()
