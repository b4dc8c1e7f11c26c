"""How long a sweep's sensitivity analysis (and its Parquet export) takes on large sweeps.

1. In process, on synthetic finished saltelli sweeps of the Ishigami function (3 variables)
   and of a 10-variable sum, with ``--runs`` (default 10,000 and 100,000) runs each, recorded
   in a temporary ledger with Store's own API: the best of ``--repeat`` times of reading the
   runs' columns (``analysis.read_columns``), of the computation on them (``analysis.analyse``:
   correlations, regression, Sobol indices), of the Sobol indices alone (SALib), and of the
   results table as Parquet; and ``stall``, the longest another thread (an event loop) had
   to wait while the whole analysis ran in a thread.
2. Through the route (unless ``--no-route``): the largest of those sweeps of the Ishigami
   function is recorded in a fresh data folder, ``orchestrator serve`` starts on it (a
   subprocess, 127.0.0.1), and ``GET /sweeps/{id}/analysis?output=f``, ``/results`` and
   ``/results?format=parquet`` are timed while ``/health`` is probed every 20 ms: its worst
   latency says whether the event loop stayed free meanwhile.

    python benchmarks/sweep_analysis.py
    python benchmarks/sweep_analysis.py --runs 10000 100000 1000000 --no-route
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout (and tests' helpers)
from orchestrator import doe  # noqa: E402
from orchestrator.models import JobRecord, JobResult, JobStatus, Resources  # noqa: E402
from orchestrator.server import analysis  # noqa: E402
from orchestrator.server.ledger import StatusUpdate, Store, SweepRow  # noqa: E402
from orchestrator.server.results_parquet import results_parquet  # noqa: E402
from orchestrator.server.sweep_results import results_table  # noqa: E402


def ishigami(x: np.ndarray) -> np.ndarray:
    return np.sin(x[:, 0]) + 7 * np.sin(x[:, 1]) ** 2 + 0.1 * x[:, 2] ** 4 * np.sin(x[:, 0])


MODELS = {  # name -> (variables, model on the value matrix)
    "ishigami": (3, ishigami),
    "sum10": (10, lambda x: (x * np.arange(1, 11)).sum(axis=1)),
}


def synthetic(model: str, runs: int) -> tuple[doe.RunTable, np.ndarray, dict]:
    """A saltelli table of about `runs` runs, the model's outputs and the design's spec."""
    dimensions, function = MODELS[model]
    samples = max(1, runs // (2 * dimensions + 2))
    names = [f"x{i + 1}" for i in range(dimensions)]
    variables = [doe.Variable(name=n, uniform={"low": -math.pi, "high": math.pi}) for n in names]
    design = {"type": "saltelli", "samples": samples, "seed": 7}
    table = doe.build_table(variables, doe.Saltelli(**design), None, include_nominal=False, max_runs=10**7)
    values = np.array([[row[n] for n in names] for row in table.rows])
    return table, function(values), {"variables": [{"name": n} for n in names], "design": design}


def best(repeat: int, measure) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        measure()
        times.append(time.perf_counter() - started)
    return min(times)


def worst_stall(work) -> float:
    """The longest this thread waits for a 5 ms sleep to end while `work` runs in another:
    what the event loop would wait (the GIL, a garbage collection, the store's read lock)."""
    done = threading.Event()
    thread = threading.Thread(target=lambda: (work(), done.set()))
    thread.start()
    worst = 0.0
    while not done.is_set():
        started = time.perf_counter()
        time.sleep(0.005)
        worst = max(worst, time.perf_counter() - started - 0.005)
    thread.join()
    return worst


def in_process(runs_list: list[int], repeat: int) -> None:
    print(f"{'model':<10}{'runs':>9}{'read':>9}{'compute':>10}{'sobol':>9}{'parquet':>10}{'stall':>9}"
          "  s1 (x1, x2, ...)")
    for model in MODELS:
        for runs in runs_list:
            table, outputs, spec = synthetic(model, runs)
            with tempfile.TemporaryDirectory() as folder:
                store = Store(Path(folder) / "jobs.db")
                sweep_id = record_sweep(store, "me", table, outputs, spec)
                sweep, names = store.get_sweep(sweep_id), table.names
                key, columns = analysis.read_columns(store, sweep_id, "f", names)
                answer = analysis.analyse(sweep, key, columns)
                read = best(repeat, lambda: analysis.read_columns(store, sweep_id, "f", names))  # noqa: B023
                compute = best(repeat, lambda: analysis.analyse(sweep, key, columns))  # noqa: B023
                sobol = best(repeat, lambda: analysis.sobol_indices(outputs, len(names)))  # noqa: B023
                parquet = best(repeat, lambda: results_parquet(  # noqa: B023
                    results_table(names, store.sweep_rows(sweep_id))))  # noqa: B023
                stall = worst_stall(lambda: analysis.analyse_sweep(store, sweep_id, "f"))  # noqa: B023
                store.close()
            s1 = ", ".join(f"{v.s1:.3f}" for v in answer.variables[:4])
            print(f"{model:<10}{len(table.rows):>9,}{ms(read)}{ms(compute, 10)}{ms(sobol)}{ms(parquet, 10)}"
                  f"{ms(stall)}  {s1}{' ...' if len(names) > 4 else ''}")


def ms(seconds: float, width: int = 9) -> str:
    return f"{seconds * 1000:>{width - 2}.0f}ms"


def record_sweep(store: Store, owner: str, table: doe.RunTable, outputs: np.ndarray, spec: dict) -> str:
    """The finished sweep in the ledger, through Store's own API, as the engine leaves it."""
    now = datetime.now(timezone.utc)
    sweep_id = "s" + uuid.uuid4().hex[:11]
    runs = [JobRecord(id=uuid.uuid4().hex[:12], name="bench", owner=owner, status=JobStatus.QUEUED,
                      resources=Resources(), sweep_id=sweep_id, index=i, variables=row, command="true",
                      created_at=now)
            for i, row in table.indexed()]
    store.insert_sweep(SweepRow(id=sweep_id, name="bench", owner=owner, kind="command", spec=spec,
                                names=table.names, seed=7, created_at=now), runs, [])
    store.record_statuses([
        StatusUpdate(run.id, JobStatus.COMPLETED, "exit code 0", now,
                     fields={"result": JobResult(exit_code=0, outputs={"f": float(y)}, duration_s=0.01)})
        for run, y in zip(runs, outputs, strict=True)])
    return sweep_id


def through_route(runs: int, repeat: int) -> None:
    """`orchestrator serve` in its own process (so the probes measure its event loop, not this
    process's), on a data folder holding the recorded sweep."""
    from orchestrator.config import Settings
    from tests.conftest import free_port, kill_session, serve_subprocess, wait_until_serving

    table, outputs, spec = synthetic("ishigami", runs)
    with tempfile.TemporaryDirectory() as folder:
        data_dir = Path(folder) / "data"
        data_dir.mkdir(mode=0o700)
        started = time.perf_counter()
        settings = Settings(data_dir=data_dir)
        store = Store(settings.database_path)
        sweep_id = record_sweep(store, settings.default_owner, table, outputs, spec)
        store.close()
        print(f"\nrecorded a {len(table.rows):,}-run sweep in {time.perf_counter() - started:.1f} s; "
              f"orchestrator serve on it (a subprocess)")
        port = free_port()
        server = serve_subprocess(data_dir, port)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(url, server)
            idle = [timed_with_probe(url, "/health", {})[0] for _ in range(20)]
            print(f"GET /health alone    median {statistics.median(idle) * 1000:6.1f} ms")
            for label, path, params in (("analysis", "analysis", {"output": "f"}),
                                        ("results json", "results", {}),
                                        ("results parquet", "results", {"format": "parquet"})):
                times, health = [], []
                for _ in range(repeat):
                    elapsed, worst = timed_with_probe(url, f"/sweeps/{sweep_id}/{path}", params)
                    times.append(elapsed)
                    health.append(worst)
                print(f"GET {label:<16} best {min(times):6.2f} s   /health worst meanwhile "
                      f"{max(health) * 1000:6.0f} ms (median of runs {statistics.median(health) * 1000:.0f} ms)")
        finally:
            kill_session(server)


def timed_with_probe(url: str, path: str, params: dict) -> tuple[float, float]:
    """How long the request takes, and /health's worst latency while it runs."""
    done = threading.Event()
    worst = [0.0]

    def probe() -> None:
        with httpx.Client(base_url=url + "/api/v1", timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get("/health")
                worst[0] = max(worst[0], time.perf_counter() - started)
                time.sleep(0.02)

    prober = threading.Thread(target=probe)
    prober.start()
    try:
        with httpx.Client(base_url=url + "/api/v1", timeout=600) as client:
            started = time.perf_counter()
            response = client.get(path, params=params)
            elapsed = time.perf_counter() - started
        response.raise_for_status()
    finally:
        done.set()
        prober.join()
    return elapsed, worst[0]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-route", action="store_true", help="skip the timing through the server")
    args = parser.parse_args(argv)
    in_process(args.runs, args.repeat)
    if not args.no_route:
        through_route(max(args.runs), args.repeat)


if __name__ == "__main__":
    main()
