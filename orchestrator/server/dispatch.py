"""Feeds one sweep's queued runs to the engine in batches sized to the work.

Runs are sent as Dask tasks of several runs each, so a sweep of cheap runs does not pay
Dask's per-task cost per run. Batches start at one run; once runs have been timed, a batch
holds about TARGET_BATCH_S of work, never more than its fair share of what is left (so the
tail still spreads over every worker) nor MAX_BATCH_RUNS (the rule is batch_sizing's, shared
with batched single jobs). At most `max_parallel` batches are
out at once (runs within a batch run one after another), or twice the cluster's threads.
Near the end batches shrink to spread the last runs, but not below MIN_BATCH_S of work.

The runs to send stay in the ledger: the dispatcher reads the sweep's QUEUED runs a batch at a
time in index order, past a cursor (an indexed query), so a million pending runs cost it
nothing. Runs queued again behind the cursor (retries, runs whose batch could not be sent,
reruns) are kept as (id, attempt) until sent; a large rerun moves the cursor back instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from orchestrator.models import JobRecord, JobStatus
from orchestrator.server import run_sets
from orchestrator.server.batch_sizing import (
    MAX_BATCH_RUNS,
    MAX_GROWING_SLOTS,
    TARGET_BATCH_S,
    batch_size,
    smoothed,
)
from orchestrator.server.engine import BatchReport, Engine, batch_key
from orchestrator.server.ledger import sweep_runs

logger = logging.getLogger(__name__)

HELD_RERUNS = 50_000  # runs added behind the cursor kept by id; more move the cursor back

LimitReached = Callable[[str, int, int], Awaitable[None]]


class SweepDispatcher:
    def __init__(
        self,
        engine: Engine,
        sweep_id: str,
        template: dict[str, Any],
        *,
        max_parallel: int | None,
        max_failures: int | None,
        failed: int,
        on_limit: LimitReached,
    ):
        self.engine = engine
        self.sweep_id = sweep_id
        self.template = template
        self.max_parallel = max_parallel
        self.max_failures = max_failures
        self.failed = failed
        self._on_limit = on_limit
        self._cursor = -1  # index of the last run read from the ledger's queue
        self._exhausted = False  # no QUEUED run past the cursor (until runs are added)
        self._again: deque[tuple[str, int]] = deque()  # (id, attempt) queued again behind the cursor
        self._flying: dict[asyncio.Task, list[JobRecord]] = {}
        self._in_flight: set[str] = set()  # ids of the runs of the batches in flight
        self._run_seconds: float | None = None
        self._batches_sent = 0
        self._stopped = False
        self._task: asyncio.Task | None = None
        self.done = asyncio.Event()
        name, type_key = sweep_runs.run_identity(engine.store, sweep_id) or ("sweep", None)
        self._name = name
        self.type_key = type_key  # its job type's gate (`name@version`), if it has one

    def start(self, on_done: Callable[[], None]) -> None:
        self._task = asyncio.ensure_future(self._feed())

        def finished(_: asyncio.Task) -> None:
            self.done.set()
            on_done()

        self._task.add_done_callback(finished)

    async def _feed(self) -> None:
        try:
            while True:
                await self._fill()
                if not self._flying:
                    if not (self._has_more() and self.type_key and not self._stopped):
                        return
                    await self.engine.gate.changed(self.type_key)  # paused or at its limit
                    continue
                done, _ = await asyncio.wait(self._flying, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    self._settle(task, self._flying.pop(task))
                await self._check_failures()
        except asyncio.CancelledError:
            raise
        except Exception:  # never leave runs active with nobody feeding them
            logger.exception("dispatcher of sweep %s failed", self.sweep_id)
            reason = "the orchestrator's sweep dispatcher failed; see its log"
            self.engine.fail_active([j.id for b in self._flying.values() for j in b], reason)
            await run_sets.end_queued(self.engine.store, self.engine.recorder, self.sweep_id,
                                      JobStatus.FAILED, reason)

    def _settle(self, task: asyncio.Task, batch: list[JobRecord]) -> None:
        self._in_flight.difference_update(job.id for job in batch)
        try:
            self._absorb(task.result())
        except Exception as exc:
            if self.engine.connection_problem(exc):  # never sent: the scheduler was away
                logger.warning("a batch of sweep %s could not be sent (%s); sent again later", self.sweep_id, exc)
                self._again.extend(_queued(self.engine.still_queued(batch)))
                return
            logger.exception("a batch of sweep %s failed in the orchestrator", self.sweep_id)
            self.engine.fail_active([job.id for job in batch], f"the orchestrator failed to run its batch: {exc}"[:500])

    async def _fill(self) -> None:
        if self._has_more() and not self._stopped:
            await self.engine.until_online()  # runs sent while the scheduler is away are lost
        slots = await self._slots()
        while self._has_more() and len(self._flying) < slots and not self._stopped:
            room = self.engine.gate.room(self.type_key) if self.type_key else None
            if room == 0:
                return
            batch = self._take(min(self._batch_size(slots), room or MAX_BATCH_RUNS))
            if not batch:
                continue
            self._in_flight.update(job.id for job in batch)
            if self.type_key:
                self.engine.gate.sent_runs(self.type_key, [job.id for job in batch])
            self._batches_sent += 1
            key = batch_key(self._name, self._batches_sent, self.sweep_id)
            budget = None if self.max_failures is None else self.max_failures - self.failed
            task = asyncio.ensure_future(self.engine.run_batch(batch, key, self.template, budget))
            self._flying[task] = batch

    async def _slots(self) -> int:
        if self.max_parallel is not None:
            return self.max_parallel
        slots = max(2 * await self.engine.cluster_threads(), 2)
        if self.engine.can_grow and (self._run_seconds is None or self._run_seconds >= TARGET_BATCH_S):
            # Dask's adaptive scaling grows a cluster for the work it sees queued: runs worth a
            # task each are all shown to it (a few thousand at most), or it never grows past the
            # size that keeps two batches per thread busy
            slots = max(slots, min(self._waiting(), MAX_GROWING_SLOTS))
        return slots

    def _batch_size(self, slots: int) -> int:
        return batch_size(self._run_seconds, self._waiting(), slots)  # one run until timed

    def _has_more(self) -> bool:
        """Whether runs may still wait to be sent (the ledger's queue is read to know)."""
        return bool(self._again) or not self._exhausted

    def _waiting(self) -> int:
        """About how many runs wait to be sent: the sweep's kept QUEUED count, less the runs
        of batches in flight (QUEUED until they start)."""
        return max(sweep_runs.queued_count(self.engine.store, self.sweep_id) - len(self._in_flight), 0)

    def _take(self, size: int) -> list[JobRecord]:
        """The next runs still QUEUED (a run may have been stopped or deleted meanwhile): those
        queued again first, then the ledger's queue past the cursor."""
        batch = self._take_again(size)
        if len(batch) < size and not self._exhausted:
            batch += self._take_queued(size - len(batch), {job.id for job in batch})
        return batch

    def _take_again(self, size: int) -> list[JobRecord]:
        wanted = [self._again.popleft() for _ in range(min(size, len(self._again)))]
        wanted = [(job_id, attempt) for job_id, attempt in wanted if job_id not in self._in_flight]
        if not wanted:
            return []
        states = self.engine.store.job_states([job_id for job_id, _ in wanted])
        current = list(dict.fromkeys(job_id for job_id, attempt in wanted
                                     if states.get(job_id) == (JobStatus.QUEUED, attempt)))
        return self.engine.store.jobs_by_ids(current) if current else []

    def _take_queued(self, size: int, taken: set[str]) -> list[JobRecord]:
        runs = sweep_runs.queued_page(self.engine.store, self.sweep_id, self._cursor, size)
        if len(runs) < size:
            self._exhausted = True
        if runs:
            self._cursor = runs[-1].index if runs[-1].index is not None else self._cursor
        return [job for job in runs if job.id not in self._in_flight and job.id not in taken]

    def _absorb(self, report: BatchReport) -> None:
        self.failed += report.failed
        self._again.extend(_queued(report.requeued))
        self._run_seconds = smoothed(self._run_seconds, report.run_seconds)

    async def _check_failures(self) -> None:
        if self.max_failures is not None and self.failed >= self.max_failures and not self._stopped:
            await self._on_limit(self.sweep_id, self.failed, self.max_failures)

    def add(self, runs: list[JobRecord]) -> bool:
        """More QUEUED runs to feed (a rerun); False once this dispatcher has ended or stops."""
        if self._stopped or self._task is None or self._task.done():
            return False
        if len(runs) <= HELD_RERUNS:
            self._again.extend(_queued(runs))
            return True
        return self.rewind(min((job.index for job in runs if job.index is not None), default=-1))

    def rewind(self, first: int = -1) -> bool:
        """Runs from index `first` on may be QUEUED again (a rerun as a set): the ledger's
        queue is read again from there. False once this dispatcher has ended or stops."""
        if self._stopped or self._task is None or self._task.done():
            return False
        self._cursor = min(self._cursor, first - 1)
        self._exhausted = False
        return True

    async def stop(self, reason: str, requested_by: str) -> None:
        """No more batches; queued runs stop now, running ones as soon as their workers can."""
        self._stopped = True
        if self.type_key:
            self.engine.gate.notify(self.type_key)  # a feed waiting on its type's gate ends
        self._again.clear()
        self._exhausted = True
        flying = [job for batch in self._flying.values() for job in batch]
        await self.engine.stop_many(flying, requested_by, reason)  # first: they are running
        await self.engine.stop_unsent(self.sweep_id, reason, keep=[job.id for job in flying])

    async def cancel(self) -> None:
        """Service shutdown: the ledger keeps every run's state for the next start."""
        tasks = [self._task, *self._flying] if self._task else list(self._flying)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _queued(runs: list[JobRecord]) -> list[tuple[str, int]]:
    """What the dispatcher keeps of runs to send: their ids and the attempts it sends."""
    return [(job.id, job.attempt) for job in runs]
