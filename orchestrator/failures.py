"""Why an attempt did not give an outcome: one classification for every exception a job's
Dask future can end with.

The job's own failures (exit code, timeout, an error in a callable) never arrive here: the
runner reports them as outcomes and never raises. What does arrive is the machinery failing,
and the kinds need different answers. A connection to the scheduler or a worker dropping is
not the job's fault and says nothing about storage: the run goes back to QUEUED as a new
attempt. Careful with the order: distributed's CommClosedError and tornado's
StreamClosedError are OSErrors, like the errors of an unreachable storage.
"""

from __future__ import annotations

import asyncio
from enum import Enum

from orchestrator.storage import is_storage_failure

MAX_REASON = 2000


class Failure(str, Enum):
    CONNECTION = "connection"  # scheduler or worker connection lost: run it again
    WORKER_DIED = "worker"  # Dask gave up on a worker that kept dying under the task
    STORAGE = "storage"  # storage unreachable or refusing
    INTERNAL = "internal"  # anything else Dask or the runner raised


def classify(exc: BaseException) -> Failure:
    from distributed.client import ClosedClientError
    from distributed.comm import CommClosedError
    from distributed.scheduler import KilledWorker
    from tornado.iostream import StreamClosedError

    if isinstance(exc, KilledWorker):
        return Failure.WORKER_DIED
    connection = (CommClosedError, StreamClosedError, ClosedClientError, ConnectionError,
                  asyncio.TimeoutError, TimeoutError)
    if isinstance(exc, connection):
        return Failure.CONNECTION
    if is_storage_failure(exc):
        return Failure.STORAGE
    return Failure.INTERNAL


def describe(exc: BaseException) -> str:
    """The reason recorded with the attempt, naming the kind first."""
    prefix = {Failure.CONNECTION: "connection lost", Failure.WORKER_DIED: "worker lost",
              Failure.STORAGE: "storage error", Failure.INTERNAL: "error"}[classify(exc)]
    return f"{prefix}: {type(exc).__name__}: {exc}"[:MAX_REASON]


def runs_again(exc: BaseException) -> bool:
    """Whether the attempt goes back to QUEUED as a new attempt instead of failing."""
    return classify(exc) == Failure.CONNECTION
