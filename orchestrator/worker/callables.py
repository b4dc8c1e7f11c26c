"""Python callables on a worker: the Executor of jobs the embedded Python API submits.

A callable runs in a thread of the worker process, with the worker's rights: only the
machine's owner submits them (REST has no callables).
"""

from __future__ import annotations

import json
import time
import traceback
from functools import lru_cache
from typing import Any

from orchestrator.kinds import JobKind
from orchestrator.plugins.worker import gpu_devices
from orchestrator.storage import Storage, layout
from orchestrator.worker import outputs
from orchestrator.worker.executors import Executor, RunContext
from orchestrator.worker.runner import (
    RETURN_FILE,
    Outcome,
    RunSpec,
    announce_running,
    describe_error,
    forget_earlier_attempt,
)


class CallableExecutor(Executor):
    """A Python callable (the embedded Python API's), in this worker thread."""

    kind = JobKind.CALLABLE

    def run(self, spec: RunSpec, context: RunContext) -> Outcome:
        return _call(context.storage, spec, context.worker, context.announce)


def _call(storage: Storage, spec: RunSpec, worker: str | None, announce: bool) -> Outcome:
    """A Python callable, in this worker thread; no working folder, no process.

    A sweep's variables are keyword arguments. A returned dict of JSON values is also the
    run's outputs; a value JSON cannot hold is pickled into the outputs as return.pkl.
    """
    import cloudpickle

    if spec.attempt > 1:
        forget_earlier_attempt(storage, spec.job_id)
    started = time.time()
    if announce:
        announce_running(spec, worker, started)
    function, args, kwargs = _load_callable(storage, spec.callable_key)
    try:
        with gpu_devices().lend(spec.gpus):  # the callable asks assigned_gpus() which
            value = function(*args, **{**kwargs, **(spec.variables or {})})
    except (Exception, SystemExit) as exc:  # the job's own exception (or exit) is its failure
        stderr = storage.put_bytes(layout.log_key(spec.job_id, "stderr"), traceback.format_exc().encode())
        outcome = Outcome("FAILED", describe_error(exc), worker=worker, error=describe_error(exc), log_bytes=stderr.size)
    else:
        outcome = Outcome("COMPLETED", None, 0, worker=worker)
        try:
            if outputs.too_big(value) or len(json.dumps(value)) > outputs.MAX_OUTPUTS_BYTES:
                raise ValueError("too large for the ledger")
            outcome.value = value
            if isinstance(value, dict):
                outcome.outputs, outcome.error = outputs.checked_outputs(value)
        except (TypeError, ValueError, RecursionError):
            stored = storage.put_bytes(layout.output_key(spec.job_id, RETURN_FILE), cloudpickle.dumps(value))
            outcome.files = [{"path": RETURN_FILE, "size": stored.size, "sha256": stored.sha256}]
            outcome.value = repr(value)[:1000]
    outcome.started_at, outcome.finished_at = started, time.time()
    return outcome


@lru_cache(maxsize=8)
def _load_callable_cached(storage: Storage, key: str) -> tuple[Any, tuple, dict]:
    import cloudpickle

    with storage.open(key) as source:
        return cloudpickle.loads(source.read())


def _load_callable(storage: Storage, key: str) -> tuple[Any, tuple, dict]:
    """A sweep's runs share one pickled callable: load it once per worker, not per run."""
    if key.startswith("sweeps/"):
        return _load_callable_cached(storage, key)
    with storage.open(key) as source:
        import cloudpickle

        return cloudpickle.loads(source.read())
