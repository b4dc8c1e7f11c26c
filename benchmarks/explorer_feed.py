"""What the dashboard's sweep explorer costs, at 10,000 and 100,000 runs.

For each size, in a fresh SQLite ledger (Store's own schema) holding one sweep of that many
runs (two variables, two outputs), 99 % of them ended with their outputs:

1. the feed's first publish of the sweep (orchestrator/server/explorer_feed.py, what runs in a
   thread of the server when a page opens): the ledger's cursor, the whole results table, its
   columns; and sending it to a scheduler (`Client.run_on_scheduler(receive, ...)` over TCP to
   a LocalCluster's scheduler), with its pickled size;
2. the last 1 % of runs end; the feed's incremental publish (the runs that ended since, read
   from the ledger's finished cursor) and its send;
3. on the scheduler side, the page's data build from the table it holds
   (plugins/explorer_view.py: the columns as numbers, the scatter's 20,000 points, the
   parallel plot's 2,000 lines, the histogram with its interval, a brush over every run), and
   the whole redraw of the page's bokeh models (plugins/explorer.py).

Each step is timed --repeat times; the best is printed (a 2-core machine is noisy).

    python benchmarks/explorer_feed.py [--sizes 10000 100000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import pickle
import sys
import tempfile
import time
import types
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout

from distributed import Client, LocalCluster  # noqa: E402

from orchestrator.models import JobRecord, JobResult, JobStatus, StatusChange  # noqa: E402
from orchestrator.plugins import explorer_view as view  # noqa: E402
from orchestrator.plugins.explorer import SweepExplorer  # noqa: E402
from orchestrator.plugins.explorer_state import ExplorerState, receive, watch  # noqa: E402
from orchestrator.server.explorer_feed import SweepRows  # noqa: E402
from orchestrator.server.ledger import StatusUpdate, Store, SweepRow  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
CHUNK = 10_000


def ledger(path: Path, runs: int) -> tuple[Store, list[str]]:
    """A ledger with one sweep of `runs` runs, 99 % ended with outputs; the others' ids."""
    store = Store(path)
    jobs = [JobRecord(id=uuid.uuid4().hex[:12], name="bench", owner="anonymous", status=JobStatus.QUEUED,
                      resources={}, created_at=NOW, sweep_id="sbench", index=i,
                      variables={"speed": 10 + i % 41, "angle": (i * 7.3) % 80})
            for i in range(runs)]
    store.insert_sweep(SweepRow(id="sbench", name="bench", owner="anonymous", kind="command", spec={},
                                names=["speed", "angle"], seed=None, created_at=NOW),
                       jobs, [StatusChange(status=JobStatus.QUEUED, at=NOW)])
    ended = runs - runs // 100
    finish(store, jobs[:ended])
    return store, [job.id for job in jobs[ended:]]


def finish(store: Store, jobs: list[JobRecord]) -> None:
    updates = [StatusUpdate(job.id, JobStatus.COMPLETED, None, NOW, fields={"result": JobResult(
        exit_code=0, duration_s=0.2, outputs={"range_m": job.index * 0.37 % 900, "peak_m": job.index % 97})})
        for job in jobs]
    for start in range(0, len(updates), CHUNK):
        store.record_statuses(updates[start:start + CHUNK])


def best(repeat: int, step: Callable[[], Any]) -> tuple[float, Any]:
    times, value = [], None
    for _ in range(repeat):
        began = time.perf_counter()
        value = step()
        times.append(time.perf_counter() - began)
    return min(times), value


def line(label: str, seconds: float, note: str = "") -> None:
    print(f"  {label:<56} {seconds * 1000:9.1f} ms  {note}")


def run_size(runs: int, repeat: int, client: Client, folder: Path) -> None:
    print(f"{runs:,} runs")
    store, left = ledger(folder / f"{runs}.db", runs)
    rows = SweepRows(store, allowed=lambda: True, api_url=lambda: "http://127.0.0.1:8080")
    client.run_on_scheduler(watch, "sbench")
    took, full = best(repeat, lambda: rows.full("sbench"))
    line("feed: first publish, built (thread)", took, f"{len(full['data']['index']):,} rows")
    took, _ = best(repeat, lambda: pickle.dumps(full))
    line("feed: first publish, pickled", took, f"{len(pickle.dumps(full)) / 2**20:.1f} MiB")
    took, _ = best(repeat, lambda: client.run_on_scheduler(receive, full))
    line("feed: first publish, sent to the scheduler", took)
    state = rows.published["sbench"]
    finish(store, [store.get_job(job_id) for job_id in left])
    rows.ended(left)
    cursor = state.cursor

    def incremental() -> dict[str, Any] | None:
        state.cursor = cursor  # the same runs each time
        return rows.since("sbench", state)

    took, update = best(repeat, incremental)
    line("feed: incremental publish, built (thread)", took, f"{len(update['data']['index']):,} runs ended")
    took, _ = best(repeat, lambda: client.run_on_scheduler(receive, update))
    line("feed: incremental publish, sent", took)
    state.read_at = time.monotonic()
    took, _ = best(repeat, lambda: rows.update("sbench", state.token))
    line("feed: a round with nothing new", took)
    took, _ = best(repeat, lambda: rows.since("sbench", state))
    line("feed: a recheck with nothing new (every 10 s)", took)

    holder = ExplorerState()
    holder.watch("sbench")
    receive(full, types.SimpleNamespace(plugins={ExplorerState.name: holder}))
    table = holder.tables["sbench"]

    def build() -> view.Frame:
        frame = view.Frame(table)
        view.scatter(frame, "speed", "range_m", "status")
        view.parallel(frame, frame.axes(), "peak_m")
        view.histogram(frame, "range_m")
        view.brushed(frame, {"speed": (0.2, 0.6)})
        return frame

    build()  # once first: its first call imports scipy (the interval's t quantile)
    took, frame = best(repeat, build)
    line("page: data build (scatter, parallel, histogram, brush)", took,
         f"{min(frame.size, view.MAX_POINTS):,} points, {min(frame.size, view.MAX_LINES):,} lines")
    page = SweepExplorer(types.SimpleNamespace(plugins={ExplorerState.name: holder}), "sbench")
    took, _ = best(repeat, lambda: page.redraw(table))
    line("page: whole redraw of its bokeh models", took)
    store.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder, \
            LocalCluster(n_workers=0, processes=True, protocol="tcp://", dashboard_address=None) as cluster, Client(cluster) as client:
        for runs in args.sizes:
            run_size(runs, args.repeat, client, Path(folder))


if __name__ == "__main__":
    main()
