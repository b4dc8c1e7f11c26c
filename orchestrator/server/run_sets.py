"""A sweep's runs changed as a set, never as a record object per run: its queued runs stopped
(or failed) all at once, and after a restart the runs that may have been sent requeued.

The ledger makes each change a chunk per transaction (ledger/sweep_runs.py), in a thread, so
the event loop keeps answering and its own status writes wait for one chunk at most; whoever
follows status changes is told a chunk at a time (Recorder.announce). A stop of a million
queued runs is thus a few hundred short transactions, not a million updates on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from typing import Any

from orchestrator.models import JobRecord, JobStatus, utcnow
from orchestrator.plugins.worker import stale_attempt
from orchestrator.server import decisions
from orchestrator.server.decisions import task_key
from orchestrator.server.ledger import StatusUpdate, Store, sweep_runs
from orchestrator.server.recorder import Recorder

CHUNK = 10_000  # the most runs changed per transaction
FIRST_CHUNK = 1_000  # the first chunk's runs: a cold cache makes it the slowest by far
CHUNK_S = 0.1  # what a chunk should take: the longest a status write on the event loop waits for one
TOLD = 500  # updates made per announcement: short-lived, they never reach Python's oldest GC generation
SPAN = 20_000  # run indexes looked at per query when finding the runs that may have been sent

Flag = Callable[[list[str], str], Awaitable[None]]  # Engine._flag_on_workers

logger = logging.getLogger(__name__)


async def end_queued(
    store: Store, recorder: Recorder, sweep_id: str, status: JobStatus, reason: str,
    keep: Iterable[str] = (),
) -> int:
    """Every QUEUED run of the sweep but those in `keep` (runs a batch in flight holds) ends
    `status` (STOPPED, or FAILED) saying `reason`; how many did. Runs queued again while it
    works (a batch's retries) are ended too: it stops only when none is left. A stop goes on
    only while the sweep is stopping: a rerun meanwhile queues runs that must run, not be
    stopped by the stop before it."""
    kept = sorted(keep)
    rule = decisions.stop_unsent if status == JobStatus.STOPPED else decisions.fail

    def chunk(at: datetime, size: int) -> list[str] | None:
        ids = sweep_runs.end_queued(store, sweep_id, status, reason, at, kept, size,
                                    while_stopping=status == JobStatus.STOPPED)
        return ids or None

    return await _in_chunks(store, recorder, chunk, lambda ids, at: rule(ids, reason, at),
                            f"queued runs of sweep {sweep_id} {status.value}")


async def requeue_ended(store: Store, recorder: Recorder, sweep_id: str, statuses: list[JobStatus], reason: str) -> int:
    """Every run of the sweep in these ended `statuses` QUEUED again as a new attempt (a rerun),
    looked at in index order, each once; how many were."""
    wanted = [status.value for status in statuses]
    after = -1

    def chunk(at: datetime, size: int) -> list[str] | None:
        nonlocal after
        ids, last = sweep_runs.requeue_ended(store, sweep_id, wanted, reason, at, after, size)
        if last is None:
            return None
        after = last
        return ids

    return await _in_chunks(store, recorder, chunk, lambda ids, at: decisions.rerun_as_set(ids, reason, at),
                            f"runs of sweep {sweep_id} queued again")


Chunk = Callable[[datetime, int], "list[str] | None"]  # one chunk of at most N changed: its ids (None: done)
Rule = Callable[[list[str], datetime], list[StatusUpdate]]  # the updates that announce them


async def _in_chunks(store: Store, recorder: Recorder, chunk: Chunk, rule: Rule, what: str) -> int:
    """`chunk` again and again in a thread, never waiting for the loop, until it says it is
    done; each chunk is announced on the loop meanwhile (with the records as they are now,
    read in the thread, when someone listens for whole records); how many runs changed,
    logged as `what` with the time it took."""
    loop = asyncio.get_running_loop()
    began = time.monotonic()
    halt = threading.Event()

    def tell(ids: list[str], at: datetime, records: dict[str, JobRecord] | None) -> None:
        for start in range(0, len(ids), TOLD):  # updates made and dropped a slice at a time
            recorder.announce(rule(ids[start:start + TOLD], at), records)

    def change_all() -> int:
        total, sizer = 0, ChunkSizer()
        while not halt.is_set():
            at = utcnow()
            with sizer.timed() as size:
                ids = chunk(at, size)
            if ids is None:
                break
            records = {job.id: job for job in store.jobs_by_ids(ids)} if recorder.bus.listeners and ids else None
            loop.call_soon_threadsafe(tell, ids, at, records)
            total += len(ids)
        return total

    try:
        total = await asyncio.to_thread(change_all)  # its announcements run before its answer
    finally:
        halt.set()  # cancelled (the service closes): the chunk under way is its last
    logger.info("%d %s in %.1f s", total, what, time.monotonic() - began)
    return total


class ChunkSizer:
    """Chunk sizes that keep each transaction near CHUNK_S: the writer lock is held a chunk at a
    time, and a status write of running work on the event loop waits for the chunk under way.
    The first is small (a cold cache can make 10,000 runs take half a second); then each is
    sized by how long the last took, growing at most fourfold, never past CHUNK."""

    def __init__(self) -> None:
        self.size = min(FIRST_CHUNK, CHUNK)

    @contextlib.contextmanager
    def timed(self) -> Iterator[int]:
        began = time.monotonic()
        yield self.size
        took = time.monotonic() - began
        aimed = int(self.size * CHUNK_S / took) if took > 0 else CHUNK
        self.size = max(1, min(aimed, 4 * self.size, CHUNK))


async def sent_attempts(store: Store, sweep_id: str, statuses: list[JobStatus]) -> AsyncIterator[list[tuple[str, int]]]:
    """(id, attempt) of the sweep's runs in `statuses` that ran at least once, a window of
    indexes at a time: the attempts a rerun keeps the outputs and logs of."""
    wanted = [status.value for status in statuses]
    async for runs in _windows(store, sweep_id, lambda after: sweep_runs.sent_attempts(
            store, sweep_id, wanted, after, SPAN)):
        yield runs


async def sent_runs(store: Store, sweep_id: str) -> AsyncIterator[list[JobRecord]]:
    """The sweep's active runs that may have been sent to Dask (RUNNING, or QUEUED with an
    attempt recorded), a window of indexes at a time: after a restart only these need a word
    to the workers and a line in their history; a run never sent is simply sent."""
    async for runs in _windows(store, sweep_id, lambda after: sweep_runs.sent_active(store, sweep_id, after, SPAN)):
        yield runs


async def _windows(store: Store, sweep_id: str, read: Callable[[int], list[Any]]) -> AsyncIterator[list[Any]]:
    """What `read` finds in each window of SPAN run indexes past `after` (in a thread, one
    query a window, so none walks the whole sweep), the empty windows left out."""
    last = await asyncio.to_thread(sweep_runs.last_index, store, sweep_id)
    for after in range(-1, last, SPAN):
        found = await asyncio.to_thread(read, after)
        if found:
            yield found


async def requeue_sent(store: Store, recorder: Recorder, flag: Flag, sweep_id: str, reason: str) -> None:
    """After a restart: the runs whose batches were lost with us go back to QUEUED saying so
    (the sweep's new dispatcher sends them); their old attempts are told to stop, in case a
    batch still runs on a cluster that outlived us. A new attempt has a new key, so the old
    one can never be mistaken for it."""
    async for runs in sent_runs(store, sweep_id):
        stale = [task_key(job) for job in runs if job.attempt > 0]
        if stale:
            await flag(stale, stale_attempt("restarted"))
        updates = decisions.requeue(runs, reason, utcnow())
        made = await asyncio.to_thread(store.record_statuses, updates)
        recorder.announce([update for update, ok in zip(updates, made, strict=True) if ok])

