"""Keeps the dashboard's Jobs page current (plugins/dashboard.py).

A summary of the ledger (newest sweeps with their runs by status, the running jobs) is sent to
the scheduler whenever work changed, at most every INTERVAL_S, so a busy sweep costs one
small message a second however many runs it finishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from orchestrator.engine import Engine
from orchestrator.models import JobStatus
from orchestrator.store import Store
from plugins.dashboard import publish

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
RETRY_S = 30.0  # after the scheduler refused (e.g. started without plugins.dashboard)
SWEEPS_SHOWN = 20
RUNNING_SHOWN = 200


class BoardFeed:
    def __init__(self, store: Store, engine: Engine):
        self.store = store
        self.engine = engine
        self._changed = asyncio.Event()
        self._task: asyncio.Task | None = None
        engine.update_hooks.append(lambda _update: self._changed.set())

    def start(self) -> None:
        self._changed.set()
        self._task = asyncio.ensure_future(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        warned = False
        while True:
            await self._changed.wait()
            self._changed.clear()
            try:
                summary = await asyncio.to_thread(summarize, self.store)
                await self.engine.client.run_on_scheduler(publish, summary)
            except Exception as exc:  # noqa: BLE001 - the page is a view: never fail the service
                if not warned:
                    logger.warning("the dashboard's Jobs page cannot be updated: %s", exc)
                    warned = True
                self._changed.set()
                await asyncio.sleep(RETRY_S)
                continue
            await asyncio.sleep(INTERVAL_S)


def summarize(store: Store) -> dict[str, Any]:
    """What the Jobs page shows: plain data, as it travels to the scheduler."""
    _, sweeps = store.list_sweeps(limit=SWEEPS_SHOWN, newest_first=True)
    groups = [{"label": f"{sweep['name']} ({sweep['id']})", "counts": store.sweep_counts(sweep["id"])}
              for sweep in reversed(sweeps)]
    singles = store.sweep_counts(None)
    if singles:
        groups.append({"label": "single jobs", "counts": singles})
    names = {sweep["id"]: sweep["name"] for sweep in sweeps}
    _, running = store.list_jobs(status=JobStatus.RUNNING, limit=RUNNING_SHOWN)
    return {
        "groups": groups,
        "totals": store.count_by_status(),
        "running": [
            {"job_id": job.id, "name": job.name, "worker": job.worker,
             "group": f"{names.get(job.sweep_id, '')} ({job.sweep_id})" if job.sweep_id else "",
             "started_at": job.started_at.timestamp() if job.started_at else None}
            for job in running
        ],
        "published_at": time.time(),
    }
