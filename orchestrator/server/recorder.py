"""Records the engine's status updates and tells whoever follows them.

One recorder applies every update (store.record_statuses, one transaction per call), then
publishes what really changed on one status bus. Its subscribers are isolated from each
other: one that raises is logged and the rest are still told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from orchestrator.models import JobRecord, StatusChange, utcnow
from orchestrator.server import decisions
from orchestrator.server.ledger import StatusUpdate, Store

logger = logging.getLogger(__name__)

StatusListener = Callable[[JobRecord, StatusChange], None]


class StatusBus:
    """Who follows status changes, in three channels:

    - `listeners`: given the whole record and each change (the start never announced, then
      the change itself): for watchers;
    - `update_hooks`: given the update only: cheap;
    - `on_finished`: given the ids of the jobs that ended in one recording; a coroutine
      returned is run as a task.
    """

    def __init__(self, spawn: Callable[[Any], None]):
        self.listeners: list[StatusListener] = []
        self.update_hooks: list[Callable[[StatusUpdate], None]] = []
        self.on_finished: list[Callable[[list[str]], Any]] = []
        self._spawn = spawn

    def changed(self, update: StatusUpdate, job: Callable[[], JobRecord | None]) -> None:
        """One recorded update; `job` reads its record (only if a listener wants it)."""
        if self.listeners:
            record = job()
            if record is not None:
                changes = [*update.passed, StatusChange(status=update.status, at=update.at, reason=update.reason)]
                for change in changes:
                    self._deliver(self.listeners, "status listener", record, change)
        self._deliver(self.update_hooks, "status hook", update)

    def finished(self, job_ids: list[str]) -> None:
        if job_ids:
            self._deliver(self.on_finished, "finish callback", job_ids, spawn=True)

    def _deliver(self, subscribers: list[Callable], what: str, *args: Any, spawn: bool = False) -> None:
        for subscriber in list(subscribers):
            try:  # a subscriber's failure never takes the engine, or the other subscribers, down
                value = subscriber(*args)
                if spawn and asyncio.iscoroutine(value):
                    self._spawn(value)
            except Exception:
                logger.exception("%s failed", what)


class Waiters:
    """Coroutines waiting for jobs to end."""

    def __init__(self) -> None:
        self._waiting: dict[str, list[asyncio.Future]] = defaultdict(list)

    async def wait(self, job_id: str, timeout: float | None) -> bool:
        waiter = asyncio.get_running_loop().create_future()
        self._waiting[job_id].append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiting[job_id].remove(waiter)
            if not self._waiting.get(job_id):
                self._waiting.pop(job_id, None)

    def wake(self, job_id: str) -> None:
        for waiter in self._waiting.get(job_id, []):
            if not waiter.done():
                waiter.set_result(True)


class Recorder:
    def __init__(self, store: Store, bus: StatusBus, waiters: Waiters):
        self.store = store
        self.bus = bus
        self.waiters = waiters

    def apply(self, updates: list[StatusUpdate]) -> list[bool]:
        """Record status changes in one transaction, then tell whoever waits for them."""
        if not updates:
            return []
        made = self.store.record_statuses(updates)
        self.announce([update for update, changed in zip(updates, made, strict=True) if changed])
        return made

    def announce(self, updates: list[StatusUpdate], records: dict[str, JobRecord] | None = None) -> None:
        """Tell whoever waits for them of changes already recorded (by `apply`, or as a set by
        the ledger: see run_sets); `records`: the jobs as they are now, if read already."""
        finished = []
        for update in updates:
            self.bus.changed(update, lambda job_id=update.job_id: (
                records.get(job_id) if records is not None else self.store.get_job(job_id)))
            if update.status.is_terminal:
                self.waiters.wake(update.job_id)
                finished.append(update.job_id)
        self.bus.finished(finished)

    def apply_each(self, updates: list[StatusUpdate]) -> None:
        """Many changes in one transaction; if that fails, one job at a time, and a job whose
        outcome cannot be recorded ends FAILED saying why, rather than staying active."""
        try:
            self.apply(updates)
            return
        except Exception:
            logger.exception("recording a batch failed; recording its runs one by one")
        for update in updates:
            try:
                self.apply([update])
            except Exception as exc:
                logger.exception("recording the outcome of %s failed", update.job_id)
                self.apply([decisions.unrecordable(update, exc, utcnow())])
