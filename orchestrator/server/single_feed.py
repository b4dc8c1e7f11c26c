"""Single jobs to Dask: a task of their own while the cluster has room, in batches past it.

Under a burst of thousands of trivial jobs, Dask's cost per task (scheduler, worker, the
client's bookkeeping), not the work, set the pace: raw Dask ran a quarter of what the machine
could. So while every slot of a resource shape is taken (twice the cluster's threads, as for a
sweep), waiting jobs of one kind (one owner, the same command, entry point or job type, the same
resources and priority) leave together as one batch task, sized by orchestrator.server.batch_sizing
from how long jobs of that kind took. A kind never timed goes one job per task, so a job of
unknown length never holds another back. A batch is only transport: each job keeps its own
attempt, history, logs, outputs, stop and retries, and is judged as a single job
(Engine.run_singles).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from orchestrator.models import JobKind, JobRecord, JobStatus
from orchestrator.server.batch_sizing import MAX_GROWING_SLOTS, batch_size, smoothed
from orchestrator.server.decisions import batch_key
from orchestrator.server.ledger import Store

TIMED_KINDS = 10_000  # run-time estimates kept (the least recently timed are forgotten)

Signature = tuple[tuple[str, float], ...]  # a job's Dask resource restrictions, sorted


class Sender(Protocol):
    """What the feed needs of the engine."""

    store: Store
    online: bool
    can_grow: bool

    def known_threads(self) -> int: ...
    def send_when_back(self, job_id: str, attempt: int) -> None: ...
    def send_task(self, job: JobRecord, on_end: Callable[[], None]) -> bool: ...
    def run_singles(self, jobs: list[JobRecord], key: str) -> Coroutine[Any, Any, float | None]: ...
    def background(self, coroutine: Coroutine[Any, Any, Any]) -> None: ...


@dataclass
class Group:
    """Waiting jobs that may share a task: (id, attempt, arrival number) of each, oldest first."""

    kind: str | None
    signature: Signature
    priority: int
    waiting: deque[tuple[str, int, int]] = field(default_factory=deque)


def signature(job: JobRecord) -> Signature:
    return tuple(sorted(job.resources.as_dask().items()))


def kind_of(job: JobRecord) -> str | None:
    """Jobs expected to take about as long as each other; None: never batched (a pickled
    callable is code of its own each time)."""
    if job.kind == JobKind.CALLABLE:
        return None
    if job.job_type is not None:
        what = f"type {job.job_type.name}@{job.job_type.version}"
    elif job.entrypoint is not None:
        what = f"entry {job.entrypoint} {job.binaries}"
    else:
        what = f"command {json.dumps(job.command)} {job.binaries}"
    return f"{job.owner}\0{what}"


class SingleFeed:
    def __init__(self, sender: Sender):
        self.sender = sender
        self._flying: Counter[Signature] = Counter()  # Dask tasks out, per resource shape
        self._groups: dict[tuple[str | None, Signature, int], Group] = {}
        self._timing: OrderedDict[str, float] = OrderedDict()  # kind -> seconds per run
        self._arrivals = itertools.count()
        self._draining = False
        self._batches = itertools.count(1)
        self.batches_sent = 0  # batch tasks sent so far, and the jobs they carried
        self.jobs_batched = 0

    def offer(self, job: JobRecord) -> None:
        """A QUEUED attempt to send: now on its own when its shape has room and nothing waits
        before it, else with the next batch of its kind."""
        shape = signature(job)
        if self._flying[shape] < self._slots() and not self._waits(shape):
            self._send_alone(job, shape)
            return
        key = (kind_of(job), shape, job.priority)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = Group(*key)
        group.waiting.append((job.id, job.attempt, next(self._arrivals)))
        self._schedule_drain()

    def timed(self, job: JobRecord, seconds: float | None) -> None:
        """How long an attempt of this kind ran: what sizes its next batches."""
        kind = kind_of(job)
        if kind is None or seconds is None:
            return
        self._timing[kind] = smoothed(self._timing.pop(kind, None), seconds)  # type: ignore[assignment]
        if len(self._timing) > TIMED_KINDS:
            self._timing.popitem(last=False)

    # ---- sending ------------------------------------------------------------------------

    def _slots(self) -> int:
        slots = max(2 * self.sender.known_threads(), 2)
        return max(slots, MAX_GROWING_SLOTS) if self.sender.can_grow else slots

    def _waits(self, shape: Signature) -> bool:
        return any(group.waiting for group in self._groups.values() if group.signature == shape)

    def _send_alone(self, job: JobRecord, shape: Signature) -> None:
        self._flying[shape] += 1
        if not self.sender.send_task(job, lambda: self._ended(shape)):
            self._ended(shape)  # never reached Dask (kept for the scheduler's return, or failed)

    def _ended(self, shape: Signature) -> None:
        self._flying[shape] -= 1
        if self._flying[shape] <= 0:
            del self._flying[shape]
        if self._groups:
            self._schedule_drain()

    def _schedule_drain(self) -> None:
        """Drain once per loop turn, after every job of this turn has been offered."""
        if not self._draining:
            self._draining = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _drain(self) -> None:
        self._draining = False
        if not self.sender.online:
            self._keep_for_reconnection()
            return
        slots = self._slots()
        while self._groups:
            group = self._next_group(slots)
            if group is None:
                return
            jobs = self._take(group, slots)
            if len(jobs) == 1:
                self._send_alone(jobs[0], group.signature)
            elif jobs:
                self._flying[group.signature] += 1
                self.batches_sent += 1
                self.jobs_batched += len(jobs)
                self.sender.background(self._run_batch(jobs, group.signature))

    def _next_group(self, slots: int) -> Group | None:
        """The group to send from: highest priority, then the oldest job, among the shapes
        with room. Empty groups are dropped."""
        for key in [key for key, group in self._groups.items() if not group.waiting]:
            del self._groups[key]
        ready = [g for g in self._groups.values() if self._flying[g.signature] < slots]
        if not ready:
            return None
        return max(ready, key=lambda g: (g.priority, -g.waiting[0][2]))

    def _take(self, group: Group, slots: int) -> list[JobRecord]:
        """The next jobs of a group whose attempt is still QUEUED as offered (one may have been
        stopped, deleted or sent again meanwhile)."""
        waiting_in_shape = sum(len(g.waiting) for g in self._groups.values() if g.signature == group.signature)
        size = batch_size(self._timing.get(group.kind) if group.kind else None, waiting_in_shape, slots)
        wanted = [group.waiting.popleft() for _ in range(min(size, len(group.waiting)))]
        states = self.sender.store.job_states([job_id for job_id, _, _ in wanted])
        current = [job_id for job_id, attempt, _ in wanted if states.get(job_id) == (JobStatus.QUEUED, attempt)]
        return self.sender.store.jobs_by_ids(current) if current else []

    async def _run_batch(self, jobs: list[JobRecord], shape: Signature) -> None:
        key = batch_key(jobs[0].name, next(self._batches), jobs[0].id)
        try:
            seconds = await self.sender.run_singles(jobs, key)
            self.timed(jobs[0], seconds)
        finally:
            self._ended(shape)

    def _keep_for_reconnection(self) -> None:
        """The scheduler is away: what waits is sent once it is back."""
        for group in self._groups.values():
            for job_id, attempt, _ in group.waiting:
                self.sender.send_when_back(job_id, attempt)
        self._groups.clear()
