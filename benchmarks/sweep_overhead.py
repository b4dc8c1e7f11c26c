"""What a sweep costs over raw Dask (callables) and over a bare process loop (commands).

In one process and on one LocalCluster (2 worker processes, 1 thread each, configured as the
orchestrator's embedded cluster is: no scheduler-side queuing), with the embedded
orchestrator (SQLite ledger and local storage in a temporary folder):

1. callable sweep: ``orch.sweep(noop, variables={"i": values(0..N-1)})`` and wait, against
   ``client.map(noop, range(N))`` + ``gather`` on the same cluster;
2. shell sweep: ``orch.sweep("true", ...)`` over M runs, each recorded with its status
   history, logs and outputs, against ``subprocess.run("true", shell=True)`` M times in 2
   parallel processes (the same shell and command the runs use).

Both sweeps are timed from the call to ``orch.sweep`` until every run is recorded as ended
in the ledger. The bare loop is measured in the same conditions as the shell sweep (the idle
cluster up); it is measured again with the cluster stopped and that ratio is printed too. Every measurement is taken ``--repeat`` times (after a warm-up) and the best
is kept, for the baselines as for the orchestrator, since a 2-core machine is noisy. The last
two lines are the ratios the targets are set on:

    ratio shell-sweep/bare = X.XX   (throughput; target >= 0.5)
    ratio sweep/raw = X.XX          (time; target <= 1.0)

    python benchmarks/sweep_overhead.py --runs 10000 --shell-runs 1000
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask
from distributed import Client, LocalCluster

from orchestrator import Orchestrator, Settings, values
from orchestrator.server.cluster import DASK_CONFIG

BARE_PROCESSES = 2


def noop(i: int) -> int:
    return i


def run_shell_true(times: int) -> None:
    for _ in range(times):
        subprocess.run("true", shell=True, check=True)


def best_of(times: int, measure):
    """The fastest of several runs of `measure` (a time, or a (time, extra) pair)."""
    results = [measure() for _ in range(times)]
    return min(results, key=lambda r: r[0] if isinstance(r, tuple) else r)


def time_raw_dask(client: Client, runs: int) -> float:
    started = time.perf_counter()
    futures = client.map(noop, range(runs), pure=False)
    client.gather(futures)
    elapsed = time.perf_counter() - started
    client.cancel(futures)
    return elapsed


def time_sweep(orch: Orchestrator, command, runs: int) -> tuple[float, dict[str, int]]:
    started = time.perf_counter()
    sweep = orch.sweep(command, variables={"i": values(*range(runs))}, name="bench")
    record = sweep.wait()
    return time.perf_counter() - started, record.counts


def time_bare(runs: int) -> float:
    share = [runs // BARE_PROCESSES + (1 if i < runs % BARE_PROCESSES else 0) for i in range(BARE_PROCESSES)]
    with ProcessPoolExecutor(BARE_PROCESSES) as pool:
        list(pool.map(run_shell_true, [1] * BARE_PROCESSES))  # start the processes first
        started = time.perf_counter()
        list(pool.map(run_shell_true, share))
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10_000, help="runs of the callable sweep")
    parser.add_argument("--shell-runs", type=int, default=1_000, help="runs of the shell sweep")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each; the best counts")
    args = parser.parse_args()

    data_dir = Path(tempfile.mkdtemp(prefix="sweep-bench-"))
    try:
        with dask.config.set(DASK_CONFIG), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
            dashboard_address=None, resources={"CPU": 1},
        ) as cluster, Client(cluster) as client:
            settings = Settings(data_dir=data_dir, scheduler=cluster.scheduler_address)
            with Orchestrator(settings) as orch:
                time_raw_dask(client, 200)  # warm every path up
                time_sweep(orch, noop, 200)
                time_sweep(orch, "true", 200)
                # shell first: releasing 10,000 raw Dask futures slows the cluster for a while
                bare_s = best_of(args.repeat, lambda: time_bare(args.shell_runs))
                shell_s, shell_counts = best_of(args.repeat, lambda: time_sweep(orch, "true", args.shell_runs))
                raw_s = best_of(args.repeat, lambda: time_raw_dask(client, args.runs))
                sweep_s, counts = best_of(args.repeat, lambda: time_sweep(orch, noop, args.runs))
        print(f"callable runs: {args.runs} (best of {args.repeat})")
        print(f"raw dask client.map + gather: {raw_s:.2f} s ({args.runs / raw_s:.0f} runs/s)")
        print(f"orch.sweep + wait:            {sweep_s:.2f} s ({args.runs / sweep_s:.0f} runs/s)  {counts}")
        shell_rate, bare_rate = args.shell_runs / shell_s, args.shell_runs / bare_s
        print(f"shell runs: {args.shell_runs} (best of {args.repeat})")
        print(f"bare {BARE_PROCESSES}-process subprocess loop: {bare_s:.2f} s ({bare_rate:.0f} runs/s)")
        print(f"shell sweep + wait:            {shell_s:.2f} s ({shell_rate:.0f} runs/s)  {shell_counts}")
        alone_s = best_of(args.repeat, lambda: time_bare(args.shell_runs))
        print(f"  (the bare loop alone, cluster stopped: {alone_s:.2f} s, "
              f"ratio {shell_rate / (args.shell_runs / alone_s):.2f})")
        print(f"ratio shell-sweep/bare = {shell_rate / bare_rate:.2f}")
        print(f"ratio sweep/raw = {sweep_s / raw_s:.2f}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
