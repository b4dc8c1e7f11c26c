"""Keeps the dashboard's Jobs page current (plugins/dashboard.py).

A summary of the ledger (newest sweeps with their runs by status, the running jobs, totals by
status) is sent to the scheduler whenever work changed, at most every INTERVAL_S, so a busy
sweep costs one small message a second however many runs it finishes.

A summary must stay cheap however large the ledger grows (a million ended jobs is a normal
ledger), so it never counts every job:

- totals of active statuses (CREATED, QUEUED, RUNNING) are counted from the status index:
  the cost follows the work under way, not the history;
- totals of ended statuses are counted in full only now and then (RECOUNT_S, longer when the
  count is slow); in between, each change the engine records to an ended status adds one.
  A job never leaves an ended status, so only deletions (which no hook reports) wait for the
  next recount; a change recorded while a recount reads may be counted twice until the next;
- the counts of a sweep that has ended are kept until the next recount: only deletions change
  them;
- and whatever a summary still costs, the next one waits LOAD_FACTOR times as long as it took,
  so the page never takes more than a small share of the ledger's time.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from typing import Any

from orchestrator.models import TERMINAL_STATUSES, JobStatus
from orchestrator.plugins.dashboard import publish
from orchestrator.server.background import BackgroundLoop
from orchestrator.server.decisions import UNFINISHED  # CREATED, QUEUED, RUNNING: not ended yet
from orchestrator.server.engine import Engine
from orchestrator.server.ledger import StatusUpdate, Store

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
RETRY_S = 30.0  # after the scheduler refused (e.g. started without orchestrator.plugins.dashboard)
SWEEPS_SHOWN = 20
RUNNING_SHOWN = 200
RECOUNT_S = 60.0  # full count of ended jobs at most this often...
LOAD_FACTOR = 20  # ...and a summary (or recount) that took t waits LOAD_FACTOR * t before the next
ENDED = tuple(status for status in JobStatus if status in TERMINAL_STATUSES)


class BoardFeed(BackgroundLoop):
    def __init__(self, store: Store, engine: Engine):
        self.store = store
        self.engine = engine
        self.board = Board(store)
        self._changed = asyncio.Event()
        engine.update_hooks.append(self._on_update)

    def _on_update(self, update: StatusUpdate) -> None:
        self.board.observe(update.status)
        self._changed.set()

    def start(self) -> None:
        self._changed.set()
        super().start()

    async def _run(self) -> None:
        warned = False
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                began = time.monotonic()
                summary = await asyncio.to_thread(self.board.summarize)
                took = time.monotonic() - began
                await self.engine.until_online()  # the page lives on the scheduler
                await self.engine.client.run_on_scheduler(publish, summary)
            except Exception as exc:  # noqa: BLE001 - the page is a view: never fail the service
                if not warned:
                    logger.warning("the dashboard's Jobs page cannot be updated: %s", exc)
                    warned = True
                self._changed.set()
                await asyncio.sleep(RETRY_S)
                continue
            await asyncio.sleep(max(INTERVAL_S, LOAD_FACTOR * took))


class Board:
    """What the Jobs page shows, counted as cheaply as the ledger allows (see the module)."""

    def __init__(self, store: Store):
        self.store = store
        self._lock = threading.Lock()  # hooks run on the event loop, summaries in a thread
        self._ended: dict[str, int] | None = None  # ended jobs by status at the last recount
        self._ended_since: Counter[str] = Counter()  # changes to an ended status since then
        self._next_recount = 0.0
        self._ended_sweeps: dict[str, dict[str, int]] = {}  # counts of sweeps with nothing active

    def observe(self, status: JobStatus) -> None:
        """A status change the engine recorded."""
        if status in TERMINAL_STATUSES:
            with self._lock:
                self._ended_since[status.value] += 1

    def summarize(self) -> dict[str, Any]:
        """The page's data: plain data, as it travels to the scheduler."""
        ended = self._ended_totals()
        store = self.store
        _, sweeps = store.list_sweeps(limit=SWEEPS_SHOWN, newest_first=True)
        groups = [{"label": f"{sweep.name} ({sweep.id})", "counts": self._sweep_counts(sweep.id)}
                  for sweep in reversed(sweeps)]
        singles = store.sweep_counts(None)
        if singles:
            groups.append({"label": "single jobs", "counts": singles})
        names = {sweep.id: sweep.name for sweep in sweeps}
        running_count, running = store.list_jobs(status=JobStatus.RUNNING, limit=RUNNING_SHOWN)
        totals = {JobStatus.RUNNING.value: running_count, **ended}
        for status in UNFINISHED:
            if status != JobStatus.RUNNING:
                totals[status.value] = store.list_jobs(status=status, limit=0)[0]
        return {
            "groups": groups,
            "totals": {status: count for status, count in totals.items() if count},
            "running": [
                {"job_id": job.id, "name": job.name, "worker": job.worker,
                 "group": f"{names.get(job.sweep_id, '')} ({job.sweep_id})" if job.sweep_id else "",
                 "started_at": job.started_at.timestamp() if job.started_at else None}
                for job in running
            ],
            "published_at": time.time(),
        }

    def _ended_totals(self) -> dict[str, int]:
        if self._ended is None or time.monotonic() >= self._next_recount:
            with self._lock:
                self._ended_since.clear()  # what ends from now on adds to this count
            began = time.monotonic()
            counts = self.store.count_by_status()
            took = time.monotonic() - began
            self._ended = {status.value: counts.get(status.value, 0) for status in ENDED}
            self._ended_sweeps.clear()  # deletions, if any, show from now on
            self._next_recount = time.monotonic() + max(RECOUNT_S, LOAD_FACTOR * took)
        with self._lock:
            return {status: count + self._ended_since[status] for status, count in self._ended.items()}

    def _sweep_counts(self, sweep_id: str) -> dict[str, int]:
        counts = self._ended_sweeps.get(sweep_id)
        if counts is None:
            counts = self.store.sweep_counts(sweep_id)
            if counts and not any(counts.get(status.value) for status in UNFINISHED):
                self._ended_sweeps[sweep_id] = counts
        return counts


def summarize(store: Store) -> dict[str, Any]:
    """One summary of a ledger, counted in full (what BoardFeed publishes, without its caches)."""
    return Board(store).summarize()
