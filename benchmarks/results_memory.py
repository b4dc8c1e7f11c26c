"""Memory of the Python API reading a large sweep's results (issue 20, goal 4).

1. records one ended ``--runs``-run sweep (default 1,000,000) in a fresh data directory's
   ledger: the sweep through ``Store.insert_sweep``, its runs as rows and histories made by
   ``benchmarks/api_latency.py``'s ledger builder (``_job_row``: the rows Store writes, with a
   status mix of 88 % COMPLETED, 7 % FAILED, 5 % STOPPED, variables x and y, output loss);
2. starts ``orchestrator serve`` on it (a subprocess, 127.0.0.1);
3. in a fresh client process each (so that one read's freed memory cannot hide the next
   one's), reads the results as a DataFrame through ``Orchestrator.connect(url)``:
   ``sweep.results()`` (pages of ``--page-size`` runs, Arrow columns, one frame), then the old
   whole read (the whole table in one JSON answer, ``pandas.DataFrame(rows)``) unless
   ``--no-old``; for each, the client's peak resident memory above its size before the call
   (Linux VmHWM, reset first), the frame's own size (``memory_usage(deep=True)``), their
   ratio, the time, and the server's peak resident growth meanwhile.

    python benchmarks/results_memory.py                    # 1,000,000 runs
    python benchmarks/results_memory.py --runs 100000      # a few minutes
    python benchmarks/results_memory.py --ledger-cache /tmp/results-1m.db   # reruns skip step 1

It ends with ``goal results memory: peak/frame = R (< 2)``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout
from benchmarks.api_latency import _ended, _job_row, start_orchestrator  # noqa: E402
from orchestrator.config import Settings  # noqa: E402
from orchestrator.server.ledger import Store, SweepRow  # noqa: E402
from orchestrator.sweep_models import RESULTS_PAGE_MAX, new_sweep_id  # noqa: E402

CHUNK = 50_000
MIB = 2**20


def record_sweep(path: Path, owner: str, runs: int, seed: int = 1) -> str:
    """One ended `runs`-run sweep of `owner` in a new ledger at `path`; answers its id."""
    store = Store(path)  # the schema, exactly as the server creates it
    sweep_id = new_sweep_id()
    created = datetime.now(timezone.utc) - timedelta(days=1)
    spec = {"name": "results-memory", "command": "python sim.py --x ${x} --y ${y}",
            "variables": [{"name": "x", "values": [0.5]}, {"name": "y", "values": [1, 2, 3]}]}
    store.insert_sweep(SweepRow(id=sweep_id, name="results-memory", owner=owner, kind="command",
                                spec=spec, names=["x", "y"], seed=seed, created_at=created), [], [])
    store.close()
    rng = random.Random(seed)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    jobs_sql = (
        "INSERT INTO jobs (id, name, owner, kind, status, status_reason, spec, priority, attempt,"
        " worker, sweep_id, idx, variables, created_at, submitted_at, started_at, finished_at,"
        " result, input_bytes, storage_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    history_sql = "INSERT INTO job_statuses (job_id, status, at, reason, attempt) VALUES (?,?,?,?,?)"
    for start in range(0, runs, CHUNK):
        jobs, history = [], []
        for index in range(start, min(start + CHUNK, runs)):
            job, changes = _job_row(rng, f"{rng.getrandbits(48):012x}", owner, "results-memory",
                                    _ended(rng), sweep_id, index, created)
            jobs.append(job)
            history.extend(changes)
        db.execute("BEGIN")
        db.executemany(jobs_sql, jobs)
        db.executemany(history_sql, history)
        db.execute("COMMIT")
    db.close()
    return sweep_id


# ---- one read, in its own client process -------------------------------------------------

def rss_bytes(field: str = "VmRSS") -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(url: str, sweep_id: str, way: str, page_size: int) -> dict:
    """Read the results one `way` and say what it cost this process."""
    import pandas

    from orchestrator import Orchestrator

    with Orchestrator.connect(url, timeout=3600) as orch:
        sweep = orch.get_sweep(sweep_id)
        next(sweep.iter_results(page_size=10))  # warm: the connection, pyarrow and pandas loaded
        gc.collect()
        before = rss_bytes()
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current size
        started = time.perf_counter()
        if way == "paged":
            frame = sweep.results(page_size=page_size)
        else:  # the old whole read, as Sweep.results() did it before pages
            table = sweep._backend.sweep_results(sweep_id)
            frame = pandas.DataFrame(table.rows, columns=table.columns)
            del table
            frame["exit_code"] = frame["exit_code"].astype("Int64")
            frame = frame.set_index("index")
        seconds = time.perf_counter() - started
        peak = rss_bytes("VmHWM") - before
        size = int(frame.memory_usage(deep=True).sum())
        return {"rows": len(frame), "seconds": seconds, "peak": peak, "frame": size,
                "after": rss_bytes() - before}


class ServerPeak:
    """The server's resident size, sampled every 20 ms, above where it was at the start."""

    def __init__(self, pid: int):
        import psutil

        self.process = psutil.Process(pid)
        self.start = self.peak = self.process.memory_info().rss
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._done.set()
        self._thread.join()
        return self.peak - self.start


def read_in_child(url: str, sweep_id: str, way: str, page_size: int, server_pid: int) -> dict:
    peak = ServerPeak(server_pid)
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--child", way, "--url", url, "--sweep", sweep_id,
             "--page-size", str(page_size)], capture_output=True, text=True, check=False)
    finally:
        server = peak.stop()
    if done.returncode != 0:
        raise RuntimeError(f"the {way} read failed:\n{done.stderr[-3000:]}")
    return {**json.loads(done.stdout.strip().splitlines()[-1]), "server": server}


def line(label: str, result: dict) -> str:
    return (f"{label:<22} {result['rows']:>9,} rows {result['seconds']:7.1f} s   peak +{result['peak'] / MIB:8,.0f} MiB"
            f"   frame {result['frame'] / MIB:7,.0f} MiB   ratio peak/frame = {result['peak'] / result['frame']:5.2f}"
            f"   server peak +{result['server'] / MIB:6,.0f} MiB")


def run(args: argparse.Namespace, data_dir: Path) -> None:
    settings = Settings(data_dir=data_dir)
    ledger = settings.database_path
    started = time.perf_counter()
    cache = Path(args.ledger_cache) if args.ledger_cache else None
    if cache is not None and cache.exists():
        shutil.copyfile(cache, ledger)
        print(f"ledger: copied from {cache}")
    else:
        record_sweep(ledger, settings.default_owner, args.runs)
        print(f"ledger: a {args.runs:,}-run sweep recorded in {time.perf_counter() - started:.1f} s")
        if cache is not None:
            shutil.copyfile(ledger, cache)
    sweep_id = sqlite3.connect(ledger).execute("SELECT id FROM sweeps").fetchone()[0]
    server = start_orchestrator(data_dir)
    url = f"http://127.0.0.1:{server.port}"
    try:
        paged = read_in_child(url, sweep_id, "paged", args.page_size, server.popen.pid)
        print(line(f"results() page {args.page_size:,}", paged))
        if not args.no_old:
            print(line("old whole read", read_in_child(url, sweep_id, "whole", args.page_size,
                                                       server.popen.pid)))
    finally:
        server.stop()
    print(f"goal results memory: peak/frame = {paged['peak'] / paged['frame']:.2f} (< 2)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1_000_000, help="runs of the sweep")
    parser.add_argument("--page-size", type=int, default=RESULTS_PAGE_MAX, help="runs per page of results()")
    parser.add_argument("--no-old", action="store_true", help="skip the old whole read (it needs "
                        "several times the frame's memory, in the client and in the server)")
    parser.add_argument("--ledger-cache", help="copy the ledger from this file if it exists, "
                        "else record it and save a copy there")
    parser.add_argument("--data-root", help="where the temporary data directory goes")
    parser.add_argument("--child", choices=["paged", "whole"], help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.url, args.sweep, args.child, args.page_size)))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="orchestrator-results-", dir=args.data_root))
    os.chmod(data_dir, 0o700)
    try:
        run(args, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
