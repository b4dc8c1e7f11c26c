"""Reconciles the ledger with Dask: submits what should run, records what happened.

The store is the truth. The engine keeps only the live futures in memory; after a restart it
resubmits every job the store says is QUEUED or RUNNING, so recovery is the ordinary path.
All methods run on the service's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from typing import Any

from distributed import Client, Future
from distributed.client import FutureCancelledError

from orchestrator.errors import ValidationFailed
from orchestrator.models import (
    FileEntry,
    JobRecord,
    JobResult,
    JobStatus,
    StatusChange,
    utcnow,
)
from orchestrator.runner import STATUS_TOPIC, RunSpec, StagedInput, run_job
from orchestrator.store import Store
from plugins.worker import OrchestratorWorkerPlugin, request_stop
from storage import layout

logger = logging.getLogger(__name__)

RESOURCE_CACHE_S = 2.0

StatusListener = Callable[[JobRecord, StatusChange], None]


class Engine:
    def __init__(
        self,
        client: Client,
        store: Store,
        storage_url: str,
        storage_options: dict[str, Any],
        *,
        can_grow: bool = False,
    ):
        self.client = client
        self.store = store
        self.storage_url = storage_url
        self.storage_options = storage_options
        self.can_grow = can_grow
        self._futures: dict[str, Future] = {}  # job id -> future of its current attempt
        self._stop_requests: dict[str, str] = {}  # job id -> who asked
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)
        self._tasks: set[asyncio.Task] = set()
        self.listeners: list[StatusListener] = []
        self._offers: list[dict[str, float]] | None = None
        self._offers_at = 0.0
        self.on_finished: list[Callable[[str], Any]] = []  # called with the job id

    async def start(self) -> None:
        await self.client.register_plugin(OrchestratorWorkerPlugin())
        self.client.subscribe_topic(STATUS_TOPIC, self._on_worker_event)
        await self.recover()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(STATUS_TOPIC)
        for task in list(self._tasks):
            task.cancel()
        self._futures.clear()

    # ---- submitting -------------------------------------------------------------------

    async def check_feasible(self, job: JobRecord) -> None:
        """Refuse a job no connected worker could ever run, unless the cluster can grow.

        Worker resources are cached briefly: asking the scheduler on every submit would
        cost a round trip per job. A refusal always re-asks, so a new worker is seen.
        """
        wanted = job.resources.as_dask()
        if not wanted or self.can_grow:
            return
        if _fits_any(wanted, await self._worker_resources(fresh=False)):
            return
        offers = await self._worker_resources(fresh=True)
        if _fits_any(wanted, offers):
            return
        best = {r: max((o.get(r, 0) for o in offers), default=0) for r in wanted}
        missing = [r for r, n in wanted.items() if best[r] < n]
        field_name = {"CPU": "cores", "GPU": "gpus", "MEMORY": "memory"}
        fields = {
            f"resources.{field_name[r]}": f"no worker offers {wanted[r]:g} {r}; the most is {best[r]:g}"
            for r in missing
        } or {"resources": "no single worker offers all of these together"}
        raise ValidationFailed("no worker can satisfy the requested resources", fields)

    async def _worker_resources(self, fresh: bool) -> list[dict[str, float]]:
        now = time.monotonic()
        if fresh or self._offers is None or now - self._offers_at > RESOURCE_CACHE_S:
            identity = await self.client.scheduler.identity(n_workers=-1)
            self._offers = [w.get("resources", {}) for w in identity.get("workers", {}).values()]
            self._offers_at = now
        return self._offers

    def submit(self, job: JobRecord, reason: str | None = None) -> JobRecord:
        """Queue the job's next attempt on Dask, record it as QUEUED and return the record."""
        now = utcnow()
        fields: dict[str, Any] = {"attempt": job.attempt + 1, "worker": None}
        if job.submitted_at is None:
            fields["submitted_at"] = now
        self._transition(job.id, JobStatus.QUEUED, reason, now, **fields)
        job = job.model_copy(update={**fields, "status": JobStatus.QUEUED, "status_reason": reason})
        spec = self._run_spec(job)
        future = self.client.submit(
            run_job,
            spec,
            key=spec["key"],
            resources=job.resources.as_dask() or None,
            priority=job.priority,
            pure=False,
            retries=0,
        )
        self._futures[job.id] = future
        self._spawn(self._await_outcome(job.id, spec["key"], future))
        return job

    def _run_spec(self, job: JobRecord) -> dict[str, Any]:
        inputs = [_binary_input(ref) for ref in job.binaries]
        inputs += [StagedInput(path=path, key=layout.input_key(job.id, path)) for path in job.files]
        spec = RunSpec(
            job_id=job.id,
            key=task_key(job),
            attempt=job.attempt,
            storage_url=self.storage_url,
            storage_options=self.storage_options,
            command=job.command,
            env=job.env,
            inputs=inputs,
            timeout_s=job.timeout_s,
            callable_key=layout.callable_key(job.id) if job.kind == "callable" else None,
        )
        return asdict(spec)

    # ---- stopping ---------------------------------------------------------------------

    async def stop(self, job: JobRecord, requested_by: str) -> None:
        """Stop a job whatever its state; the STOPPED record follows when it is really gone."""
        if job.status.is_terminal:
            return
        reason = f"stop requested by {requested_by}"
        if job.status == JobStatus.CREATED:
            self._transition(job.id, JobStatus.STOPPED, reason, utcnow(), only_from=[JobStatus.CREATED])
            return
        self._stop_requests[job.id] = requested_by
        await self._flag_on_workers(task_key(job), requested_by)
        future = self._futures.get(job.id)
        current = self.store.get_job(job.id)
        if current is not None and current.status == JobStatus.QUEUED:
            if future is not None:
                await self.client.cancel([future])
            self._transition(job.id, JobStatus.STOPPED, reason, utcnow(), only_from=[JobStatus.QUEUED],
                             finished_at=utcnow())
        elif future is None and current is not None and current.status.is_active:
            # Nothing of ours runs it (e.g. its worker vanished while we were down).
            self._transition(job.id, JobStatus.STOPPED, reason, utcnow(),
                             only_from=[JobStatus.RUNNING], finished_at=utcnow())

    async def retract(self, job: JobRecord) -> None:
        """Take a queued attempt back from Dask, making sure it never starts."""
        await self._flag_on_workers(task_key(job), "the orchestrator")
        future = self._futures.pop(job.id, None)
        if future is not None:
            await self.client.cancel([future])

    async def _flag_on_workers(self, key: str, requested_by: str) -> None:
        with contextlib.suppress(Exception):
            await self.client.run(request_stop, key, requested_by, on_error="ignore")

    # ---- recording --------------------------------------------------------------------

    def _on_worker_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if message.get("status") != "RUNNING":
            return
        job = self.store.get_job(message["job_id"])
        if job is None or task_key(job) != message.get("key"):
            return  # a stale attempt
        at = datetime.fromtimestamp(message["at"], timezone.utc)
        self._transition(
            job.id, JobStatus.RUNNING, f"on {message.get('worker')}", at,
            only_from=[JobStatus.QUEUED], worker=message.get("worker"), started_at=at,
        )

    async def _await_outcome(self, job_id: str, key: str, future: Future) -> None:
        try:
            outcome: dict[str, Any] | BaseException = await future
        except (asyncio.CancelledError, FutureCancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not future.cancelled():
                raise
            outcome = exc
        except Exception as exc:  # noqa: BLE001 - worker loss, unpicklable result, ...
            outcome = exc
        finally:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]
            future.release()
        self._record_outcome(job_id, key, outcome)

    def _record_outcome(self, job_id: str, key: str, outcome: dict[str, Any] | BaseException) -> None:
        job = self.store.get_job(job_id)
        if job is None or task_key(job) != key or job.status.is_terminal:
            return  # deleted, superseded by a newer attempt, or already stopped
        stopper = self._stop_requests.get(job_id)
        if isinstance(outcome, dict):
            status = JobStatus(outcome["status"])
            reason = outcome["reason"]
        elif isinstance(outcome, (asyncio.CancelledError, FutureCancelledError)):
            if stopper is None:
                return  # retracted on purpose; a new attempt follows
            status, reason = JobStatus.STOPPED, f"stop requested by {stopper}"
        else:
            status, reason = JobStatus.FAILED, _describe_failure(outcome)
        if stopper is not None and status == JobStatus.FAILED:
            status, reason = JobStatus.STOPPED, f"stop requested by {stopper}; {reason}"
        if status == JobStatus.FAILED and job.attempt <= job.retries:
            self.submit(job, reason=f"{reason}, retry {job.attempt}/{job.retries}")
            return
        self._finish(job, status, reason, outcome if isinstance(outcome, dict) else None)

    def _finish(
        self, job: JobRecord, status: JobStatus, reason: str | None, outcome: dict[str, Any] | None
    ) -> None:
        result = _result_from(outcome)
        if outcome is not None:
            self.store.set_files(job.id, [FileEntry(**f) for f in outcome.get("files", [])])
            if job.status == JobStatus.QUEUED and result.started_at is not None:
                self._transition(job.id, JobStatus.RUNNING, f"on {result.worker}", result.started_at,
                                 only_from=[JobStatus.QUEUED], worker=result.worker,
                                 started_at=result.started_at)
        finished = result.finished_at or utcnow()
        self._transition(job.id, status, reason, finished, only_from=[JobStatus.QUEUED, JobStatus.RUNNING],
                         result=result, finished_at=finished,
                         **({"worker": result.worker} if result.worker else {}))
        self._stop_requests.pop(job.id, None)

    def _transition(
        self, job_id: str, status: JobStatus, reason: str | None, at: datetime, **kwargs: Any
    ) -> bool:
        changed = self.store.record_status(job_id, status, reason, at, **kwargs)
        if not changed:
            return False
        if self.listeners:
            job = self.store.get_job(job_id)
            change = StatusChange(status=status, at=at, reason=reason)
            for listener in list(self.listeners):
                try:
                    if job is not None:
                        listener(job, change)
                except Exception:  # a listener's failure never takes the engine down
                    logger.exception("status listener failed")
        if status.is_terminal:
            self._wake_waiters(job_id)
            for callback in list(self.on_finished):
                try:
                    self._spawn_maybe(callback(job_id))
                except Exception:
                    logger.exception("finish callback failed")
        return True

    # ---- waiting ----------------------------------------------------------------------

    async def wait(self, job_id: str, timeout: float | None) -> bool:
        """Wait until the job is terminal; returns False when the timeout ran out first."""
        job = self.store.get_job(job_id)
        if job is None or job.status.is_terminal:
            return True
        if job.status == JobStatus.CREATED:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._waiters[job_id].append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout)
            return True
        except asyncio.TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters[job_id].remove(waiter)
            if not self._waiters.get(job_id):
                self._waiters.pop(job_id, None)

    def _wake_waiters(self, job_id: str) -> None:
        for waiter in self._waiters.get(job_id, []):
            if not waiter.done():
                waiter.set_result(True)

    # ---- recovery ---------------------------------------------------------------------

    async def recover(self) -> None:
        """Resubmit what the store says should be running: the futures died with us."""
        for job in self.store.jobs_with_status([JobStatus.QUEUED, JobStatus.RUNNING]):
            if job.id in self._futures:
                continue
            was = f" (was RUNNING on {job.worker})" if job.status == JobStatus.RUNNING else ""
            self.submit(job, reason=f"resubmitted after orchestrator restart{was}")

    # ---- helpers ----------------------------------------------------------------------

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn_maybe(self, value: Any) -> None:
        if asyncio.iscoroutine(value):
            self._spawn(value)


def _fits_any(wanted: dict[str, float], offers: list[dict[str, float]]) -> bool:
    return any(all(offer.get(r, 0) >= n for r, n in wanted.items()) for offer in offers)


def task_key(job: JobRecord) -> str:
    """Readable and unique per attempt; the dashboard groups by the leading name."""
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", job.name).strip("_") or "job"
    return f"{slug}-{job.id}-{job.attempt}"


def _binary_input(ref: str) -> StagedInput:
    if "://" in ref:
        name = ref.rstrip("/").rsplit("/", 1)[-1] or "download"
        return StagedInput(path=name, url=ref, executable=True)
    name, _, version = ref.partition("@")
    return StagedInput(path=name, key=layout.binary_key(name, int(version)), executable=True)


def _describe_failure(exc: BaseException) -> str:
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return f"worker lost: {exc}"
    return f"error: {type(exc).__name__}: {exc}"[:2000]


def _result_from(outcome: dict[str, Any] | None) -> JobResult:
    if outcome is None:
        return JobResult()
    started, finished = outcome.get("started_at"), outcome.get("finished_at")
    return JobResult(
        exit_code=outcome.get("exit_code"),
        outputs=outcome.get("outputs") or {},
        value=outcome.get("value"),
        started_at=_from_epoch(started),
        finished_at=_from_epoch(finished),
        duration_s=round(finished - started, 6) if started and finished else None,
        worker=outcome.get("worker"),
        error=outcome.get("error"),
    )


def _from_epoch(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if value else None
