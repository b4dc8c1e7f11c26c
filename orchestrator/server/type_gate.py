"""Where job types' pausing and `max_scheduled` take effect: the moment a job would be sent
to Dask. A held job stays QUEUED saying why, in its type's own line, so a blocked type never
holds back the jobs of other types (Scale is known to stall its whole queue behind them).
The counts live in memory: after a restart, recovery sends the active jobs again through
this same gate, which counts them anew."""

from __future__ import annotations

import asyncio

from orchestrator.models import JobRecord
from orchestrator.server.ledger import Store


class TypeGate:
    def __init__(self, store: Store):
        self.store = store
        self._sent: dict[str, set[str]] = {}  # type key -> jobs sent to Dask and not ended
        self._held: dict[str, dict[str, None]] = {}  # type key -> jobs waiting, oldest first
        self._changes: dict[str, asyncio.Event] = {}  # type key -> set when room may have opened

    def room(self, key: str) -> int | None:
        """How many more of the type's jobs may be sent now: None when no limit, 0 when paused."""
        name, _, version = key.partition("@")
        row = self.store.get_job_type(name, version)
        if row is None or (not row.is_paused and row.max_scheduled is None):
            return None
        if row.is_paused:
            return 0
        return max(row.max_scheduled - len(self._sent.get(key, ())), 0)

    async def changed(self, key: str) -> None:
        """Wait until the type is resumed, its limit changed, or one of its jobs ended."""
        await self._changes.setdefault(key, asyncio.Event()).wait()

    def notify(self, key: str) -> None:
        """Wake every waiter once; later waiters wait for the next change."""
        event = self._changes.pop(key, None)
        if event is not None:
            event.set()

    def hold_reason(self, job: JobRecord) -> str | None:
        """Why the job must wait now (its type paused, or at its limit), or None."""
        if job.job_type is None:
            return None
        row = self.store.get_job_type(job.job_type.name, job.job_type.version)
        if row is None:
            return None
        shown = f"job type {row.name} {row.version}"
        if row.is_paused:
            return f"{shown} is paused"
        others = self._sent.get(row.key, set()) - {job.id}  # a job sent again frees its own slot
        if row.max_scheduled is not None and len(others) >= row.max_scheduled:
            return f"{shown} has {row.max_scheduled} jobs scheduled (max_scheduled); waiting for one to end"
        return None

    def hold(self, job: JobRecord) -> None:
        key = _key(job)
        self._sent.get(key, set()).discard(job.id)
        self._held.setdefault(key, {})[job.id] = None

    def sent_runs(self, key: str, job_ids: list[str]) -> None:
        """Sweep runs handed to Dask in a batch: they count toward the type's limit."""
        self._sent.setdefault(key, set()).update(job_ids)

    def sent(self, job: JobRecord) -> None:
        if job.job_type is not None:
            key = _key(job)
            self._held.get(key, {}).pop(job.id, None)
            self._sent.setdefault(key, set()).add(job.id)

    def ended(self, job_ids: list[str]) -> set[str]:
        """Forget ended jobs; the type keys that may now send more."""
        freed = set()
        for key, sent in self._sent.items():
            if sent.intersection(job_ids):
                sent.difference_update(job_ids)
                freed.add(key)
        for held in self._held.values():
            for job_id in job_ids:
                held.pop(job_id, None)
        return freed

    def waiting(self, key: str) -> list[str]:
        return list(self._held.get(key, {}))

    def drop(self, key: str, job_id: str) -> None:
        self._held.get(key, {}).pop(job_id, None)


def _key(job: JobRecord) -> str:
    assert job.job_type is not None
    return f"{job.job_type.name}@{job.job_type.version}"
