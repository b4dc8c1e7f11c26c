"""Shorter batching windows on the scheduler's streams, for the round trip of one small job.

Dask batches what the scheduler sends a worker for 5 ms after each send, and what it sends a
client for 2 ms: a job submitted just after the previous one's results were released waits
out the rest of the window twice. An orchestrator answering `?sync=true` jobs one after the
other pays that on every job, so the engine shortens the windows when it attaches (new
workers get the short window from a small scheduler plugin). Under load messages still batch
within the window.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SEND_INTERVAL_S = 0.001
PLUGIN_NAME = "orchestrator-prompt-sends"


def prompt_sends(interval: float = SEND_INTERVAL_S) -> Callable[[Any], int]:
    """A function for `Client.run_on_scheduler`. Nested, so that cloudpickle sends it by value:
    a scheduler the orchestrator did not start need not have the orchestrator installed."""

    def quicken(dask_scheduler: Any) -> int:
        from distributed.diagnostics.plugin import SchedulerPlugin

        class PromptSends(SchedulerPlugin):
            name = PLUGIN_NAME

            def add_worker(self, scheduler: Any = None, worker: str | None = None) -> None:
                comm = scheduler.stream_comms.get(worker)
                if comm is not None:
                    comm.interval = interval

        comms = [*dask_scheduler.stream_comms.values(), *dask_scheduler.client_comms.values()]
        for comm in comms:
            comm.interval = interval
        dask_scheduler.plugins[PLUGIN_NAME] = PromptSends()  # replaces the one of an earlier attach
        return len(comms)

    return quicken
