"""Reconciles the ledger with Dask: submits what should run, records what happened.

The store is the truth. The engine keeps only the live futures in memory; after a restart it
resubmits every job the store says is QUEUED or RUNNING, so recovery is the ordinary path.
All methods run on the service's event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from distributed import Client, Future
from distributed.client import ClosedClientError, FutureCancelledError

from orchestrator import failures
from orchestrator.auth import Principal
from orchestrator.binaries import BinaryRef
from orchestrator.connection import ClientFactory, SchedulerLink
from orchestrator.errors import ValidationFailed
from orchestrator.isolation import Isolation
from orchestrator.models import (
    FileEntry,
    JobRecord,
    JobResult,
    JobStatus,
    Resources,
    StatusChange,
    utcnow,
)
from orchestrator.plugins.worker import (
    OrchestratorWorkerPlugin,
    end_orphans,
    request_stop,
    stale_attempt,
)
from orchestrator.runner import STATUS_TOPIC, RunSpec, Sealed, StagedInput, run_batch, run_job
from orchestrator.secrets import Sealer, SecretsUnreadable
from orchestrator.storage import layout
from orchestrator.store import StatusUpdate, Store

logger = logging.getLogger(__name__)

RESOURCE_CACHE_S = 2.0
RESOURCE_FIELDS = {"CPU": "cores", "GPU": "gpus", "MEMORY": "memory"}

CLUSTER_TOPIC = "all"  # where the scheduler logs workers joining and leaving
StatusListener = Callable[[JobRecord, StatusChange], None]
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)
CONNECTION_LOST = "scheduler connection lost, resubmitted"
OFFLINE = "the Dask scheduler is unreachable; sent when it is back"
NO_WORKER = "waiting for a worker: none is connected to the scheduler"
LOST_CONNECTION_REASON = "scheduler-connection-lost"  # why Dask's client cancels its futures


@dataclass
class BatchReport:
    """What a finished batch of sweep runs tells the dispatcher feeding it."""

    requeued: list[JobRecord] = field(default_factory=list)  # failed runs with retries left
    failed: int = 0  # runs that ended FAILED for good
    run_seconds: float | None = None  # worker time per run, to size the next batches


class Engine:
    def __init__(
        self,
        client: Client,
        store: Store,
        storage_url: str,
        *,
        can_grow: bool = False,
        worker_loss_retries: int = 3,
        sealer: Sealer,
        reconnect: ClientFactory | None = None,
        isolation: Isolation | None = None,
    ):
        self.sealer = sealer
        self.isolation = isolation or Isolation.single_user()
        self.link = SchedulerLink(client, reconnect)  # `reconnect`: a new client, if Dask's gives up
        self.store = store
        self.storage_url = storage_url
        self.can_grow = can_grow
        self.worker_loss_retries = worker_loss_retries
        self._futures: dict[str, Future] = {}  # job id -> future of its current attempt
        self._batched: dict[str, str] = {}  # job id -> Dask key of the batch running it
        self._batch_futures: dict[str, tuple[Future, list[str]]] = {}  # batch key -> future, run keys
        self._lost_batches: dict[str, str] = {}  # batch key -> address of the worker lost under it
        self._stop_requests: dict[str, str] = {}  # job id -> who asked
        self._waiters: dict[str, list[asyncio.Future]] = defaultdict(list)
        self._tasks: set[asyncio.Task] = set()
        self.listeners: list[StatusListener] = []  # given the whole record: for watchers
        self.update_hooks: list[Callable[[StatusUpdate], None]] = []  # cheap: the change only
        self._offers: list[dict[str, float]] | None = None
        self._threads = 0
        self._offers_at = 0.0
        self.on_finished: list[Callable[[list[str]], Any]] = []  # called with job ids
        self._unsent: dict[str, int] = {}  # job id -> attempt queued while the scheduler was away
        self._stale_keys: list[str] = []  # attempts to stop on the workers once connected again

    @property
    def client(self) -> Client:
        """The current Dask client: a new one replaces a client that gave up reconnecting."""
        return self.link.client

    @property
    def online(self) -> bool:
        """Whether the scheduler is reachable now (while not, nothing waits on it)."""
        return self.link.online

    async def until_online(self) -> None:
        await self.link.wait_online()

    async def start(self) -> None:
        self._stop_requests.update(self.store.stop_requests())  # wishes a crash interrupted
        await self.link.start(self._attach, self._reconnected)
        await self.recover()

    async def _attach(self, client: Client) -> None:
        """What a scheduler must know of us; a new one (or one that dropped us) knows nothing."""
        await client.register_plugin(OrchestratorWorkerPlugin())
        await self.isolation.refresh(client)
        client.subscribe_topic(STATUS_TOPIC, self._on_worker_event)
        client.subscribe_topic(CLUSTER_TOPIC, self._on_cluster_event)

    async def close(self) -> None:
        await self.link.close()
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(STATUS_TOPIC)
            self.client.unsubscribe_topic(CLUSTER_TOPIC)
        for task in list(self._tasks):
            task.cancel()
        self._futures.clear()

    # ---- submitting -------------------------------------------------------------------

    async def placement(self, resources: Resources) -> str | None:
        """Refuse work no connected worker could ever run; on a cluster that can grow, the
        reason it waits instead (None when a worker fits now).

        Worker resources are cached briefly: asking the scheduler on every submit would
        cost a round trip per job. A refusal always re-asks, so a new worker is seen.
        """
        if not self.online:
            return OFFLINE  # no worker to ask now: accept, and let the scheduler judge later
        wanted = resources.as_dask()
        if not wanted or _fits_any(wanted, await self._worker_resources(fresh=False)):
            return None
        offers = await self._worker_resources(fresh=True)
        if _fits_any(wanted, offers):
            return None
        best = {r: max((o.get(r, 0) for o in offers), default=0) for r in wanted}
        missing = [r for r, n in wanted.items() if best[r] < n] or list(wanted)
        if self.can_grow:
            asked = ", ".join(f"{wanted[r]:g} {r}" for r in missing)
            most = "no worker is connected" if not offers else ", ".join(
                f"the most any worker offers is {best[r]:g} {r}" for r in missing)
            return f"waiting for a worker offering {asked} ({most}; the cluster can grow)"
        if not offers:  # e.g. a restarted scheduler whose workers have not come back yet
            return NO_WORKER
        fields = {
            f"resources.{RESOURCE_FIELDS[r]}": f"no worker offers {wanted[r]:g} {r}; the most is {best[r]:g}"
            for r in missing if best[r] < wanted[r]
        } or {"resources": "no single worker offers all of these together"}
        raise ValidationFailed("no worker can satisfy the requested resources", fields)

    async def check_may_run(self, principal: Principal | None) -> None:
        """Refuse a user's work where it would run with the orchestrator's own identity."""
        await self.isolation.check(principal, self.client)

    async def _worker_resources(self, fresh: bool) -> list[dict[str, float]]:
        """While the scheduler is away, the last known offers (asking would wait out a timeout)."""
        now = time.monotonic()
        stale = fresh or self._offers is None or now - self._offers_at > RESOURCE_CACHE_S
        if stale and self.online:
            identity = await self.client.scheduler.identity(n_workers=-1)
            workers = identity.get("workers", {}).values()
            self._offers = [w.get("resources", {}) for w in workers]
            self._threads = sum(w.get("nthreads", 1) for w in workers)
            self._offers_at = now
        return self._offers or []

    async def cluster_threads(self) -> int:
        """Worker threads in the cluster now (cached like the resource offers)."""
        await self._worker_resources(fresh=False)
        return max(self._threads, 1)

    def submit(self, job: JobRecord, reason: str | None = None, **recorded: Any) -> JobRecord:
        """Queue the job's next attempt on Dask, record it as QUEUED and return the record.

        `recorded`: more job fields that change with it (e.g. worker_losses).
        """
        now = utcnow()
        online = self.online
        reason = reason if online else reason or OFFLINE
        fields: dict[str, Any] = {"attempt": job.attempt + 1, "worker": None, **recorded}
        if job.submitted_at is None:
            fields["submitted_at"] = now
        self._transition(job.id, JobStatus.QUEUED, reason, now, **fields)
        job = job.model_copy(update={**fields, "status": JobStatus.QUEUED, "status_reason": reason})
        if not online:
            self._unsent[job.id] = job.attempt  # the record says QUEUED: sent on reconnection
            return job
        return self._send(job)

    def _send(self, job: JobRecord) -> JobRecord:
        """Hand a QUEUED attempt to Dask and follow its future."""
        try:
            spec = self._run_spec(job)
        except SecretsUnreadable as exc:
            self.fail_active([job.id], str(exc))
            return self.store.get_job(job.id) or job
        try:
            future = self.client.submit(
                run_job,
                Sealed(spec),
                key=spec["key"],
                resources=job.resources.as_dask() or None,
                priority=job.priority,
                pure=False,
                retries=0,
            )
        except ClosedClientError:  # it gave up on the scheduler just now: sent on reconnection
            self._unsent[job.id] = job.attempt
            return job
        self._futures[job.id] = future
        self._spawn(self._await_outcome(job.id, spec["key"], future))
        return job

    def _run_spec(self, job: JobRecord) -> dict[str, Any]:
        inputs = [binary_input(ref, job.owner) for ref in job.binaries]
        inputs += [StagedInput(path=path, key=layout.input_key(job.id, path)) for path in job.files]
        spec = RunSpec(
            job_id=job.id,
            key=task_key(job),
            attempt=job.attempt,
            storage_url=self.storage_url,
            command=job.command,
            env={**job.env, **self.secret_env(job)},
            inputs=inputs,
            timeout_s=job.timeout_s,
            callable_key=layout.callable_key(job.id) if job.kind == "callable" else None,
            gpus=job.resources.gpus,
            run_as=self.isolation.run_as(job.owner) if job.kind == "command" else None,
        )
        return asdict(spec)

    def secret_env(self, job: JobRecord) -> dict[str, str]:
        """The opened secret environment of a job (a sweep run: its sweep's), for its task
        only; records and events keep the masked names."""
        if not job.secret_env:
            return {}
        holder = job.sweep_id or job.id
        sealed = self.store.sealed_secrets([holder]).get(holder)
        if sealed is None:
            raise SecretsUnreadable(f"the secret environment of {holder} is missing from the ledger")
        return self.sealer.open(sealed)

    # ---- batches of sweep runs -------------------------------------------------------

    async def run_batch(
        self, jobs: list[JobRecord], key: str, template: dict[str, Any],
        failure_budget: int | None = None,
    ) -> BatchReport:
        """Run QUEUED sweep runs as one Dask task, record every outcome, report to the feeder.

        `template` holds the RunSpec fields the runs share (inputs, timeout, callable...);
        after `failure_budget` runs fail for good, the batch stops the rest.
        """
        now = utcnow()
        attempts = [job.attempt + 1 for job in jobs]
        self.store.set_attempts([(job.id, attempt, job.submitted_at or now)
                                 for job, attempt in zip(jobs, attempts, strict=True)])
        for job in jobs:
            self._batched[job.id] = key
        try:
            secrets = self.secret_env(jobs[0])  # runs of one sweep share its secrets
        except SecretsUnreadable as exc:
            self.fail_active([job.id for job in jobs], str(exc))
            return BatchReport(failed=len(jobs))
        runs = [
            {"job_id": job.id, "key": task_key(job, attempt), "attempt": attempt,
             "env": {**job.env, **secrets}, "variables": job.variables,
             "last_try": _failures(job, attempt) > job.retries,
             **({} if template.get("shell_template") else {"command": job.command})}
            for job, attempt in zip(jobs, attempts, strict=True)
        ]
        run_as = self.isolation.run_as(jobs[0].owner) if jobs[0].kind == "command" else None
        spec = {"template": {**template, "storage_url": self.storage_url, "run_as": run_as},
                "runs": runs, "failure_budget": failure_budget}
        # As JSON text, so Dask does not walk every run's fields looking for futures.
        future = self.client.submit(
            run_batch, Sealed(json.dumps(spec)), key=key, resources=jobs[0].resources.as_dask() or None,
            priority=jobs[0].priority, pure=False, retries=0,
        )
        self._batch_futures[key] = (future, [run["key"] for run in runs])
        try:
            outcomes: list[dict[str, Any]] | BaseException = json.loads(await future)
        except (asyncio.CancelledError, FutureCancelledError) as exc:
            if isinstance(exc, asyncio.CancelledError) and not future.cancelled():
                raise
            outcomes = exc
        except Exception as exc:  # noqa: BLE001 - worker loss, ...
            outcomes = exc
        finally:
            future.release()
            del self._batch_futures[key]
            for job in jobs:
                if self._batched.get(job.id) == key:
                    del self._batched[job.id]
        return self._record_batch(jobs, attempts, outcomes, self._lost_batches.pop(key, None))

    def _record_batch(
        self, jobs: list[JobRecord], attempts: list[int], outcomes: list[dict[str, Any]] | BaseException,
        lost_worker: str | None = None,
    ) -> BatchReport:
        report = BatchReport()
        states = self.store.job_states([job.id for job in jobs])
        updates: list[StatusUpdate] = []
        spans: list[tuple[float, float]] = []
        for position, (job, attempt) in enumerate(zip(jobs, attempts, strict=True)):
            outcome = outcomes[position] if isinstance(outcomes, list) else outcomes
            state = states.get(job.id)
            if state is None or state[0].is_terminal or state[1] != attempt:
                continue
            status, reason = self._judge(job, outcome)
            if status is None and lost_worker is not None:
                update = self._after_worker_loss(job, lost_worker)
                updates.append(update)
                if update.status == JobStatus.QUEUED:
                    report.requeued.append(job.model_copy(update={
                        "attempt": attempt, "worker_losses": update.fields["worker_losses"]}))
                else:
                    report.failed += 1
                continue
            if status is None:  # cancelled, or cut off (a lost connection): run it again
                updates.append(StatusUpdate(job.id, JobStatus.QUEUED, reason or self._cancelled_reason(outcome, state[0]),
                                            utcnow(), ACTIVE, {"worker": None}))
                self._stale_keys.append(task_key(job, attempt))  # in case its batch still runs
                report.requeued.append(job.model_copy(update={"attempt": attempt}))
                continue
            if isinstance(outcome, dict) and outcome.get("started_at") and outcome.get("finished_at"):
                spans.append((outcome["started_at"], outcome["finished_at"]))
            if status == JobStatus.FAILED and _failures(job, attempt) <= job.retries:
                retry = f"{reason}, retry {_failures(job, attempt)}/{job.retries}"
                updates += self._finish_updates(job.id, state[0], JobStatus.QUEUED, retry, outcome, final=False)
                report.requeued.append(job.model_copy(update={"attempt": attempt}))
                continue
            report.failed += status == JobStatus.FAILED
            updates += self._finish_updates(job.id, state[0], status, reason, outcome)
        self._apply_each(updates)
        if spans:
            busy = max(end for _, end in spans) - min(start for start, _ in spans)
            report.run_seconds = max(busy, 0.0) / len(spans)
        return report

    def _cancelled_reason(self, outcome: Any, status: JobStatus) -> str:
        if not self.online or getattr(outcome, "reason", None) == LOST_CONNECTION_REASON:
            return CONNECTION_LOST + (" (was RUNNING)" if status == JobStatus.RUNNING else "")
        return "its Dask task was cancelled; queued again"

    def still_queued(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Runs of a batch that never reached Dask (the client was closed), as the store has
        them now: QUEUED, with the attempt already recorded, to be sent again."""
        states = self.store.job_states([job.id for job in jobs])
        for job in jobs:
            self._batched.pop(job.id, None)
        return [job.model_copy(update={"attempt": states[job.id][1]}) for job in jobs
                if states.get(job.id, (None,))[0] == JobStatus.QUEUED]

    def connection_problem(self, exc: BaseException) -> bool:
        """Whether a failure to send work came from the scheduler being away."""
        return not self.online or failures.classify(exc) != failures.Failure.INTERNAL

    async def requeue(self, jobs: list[JobRecord], reason: str) -> list[JobRecord]:
        """Active sweep runs whose batches were lost with us go back to QUEUED, saying so.

        Their old attempts are told to stop, in case their batch still runs on a cluster
        that outlived us; the new attempt has a new key, so the old one can never be mistaken
        for it.
        """
        sent = [task_key(job) for job in jobs if job.attempt > 0]
        if sent:
            await self._flag_on_workers(sent, stale_attempt("restarted"))
        now = utcnow()
        updates = [
            StatusUpdate(job.id, JobStatus.QUEUED,
                         reason + (f" (was RUNNING on {job.worker})" if job.status == JobStatus.RUNNING else ""),
                         now, ACTIVE, {"worker": None})
            for job in jobs
        ]
        self._apply(updates)
        return [job.model_copy(update={"status": JobStatus.QUEUED, "worker": None}) for job in jobs]

    def fail_active(self, job_ids: list[str], reason: str) -> None:
        """Runs whose batch broke in the orchestrator itself: failed, saying why."""
        now = utcnow()
        self._apply_each([StatusUpdate(job_id, JobStatus.FAILED, reason, now, ACTIVE,
                                       {"finished_at": now}) for job_id in job_ids])

    def stop_unsent(self, job_ids: list[str], reason: str) -> None:
        """QUEUED runs no Dask task holds yet: the record alone stops them."""
        now = utcnow()
        self._apply([StatusUpdate(job_id, JobStatus.STOPPED, reason, now, [JobStatus.QUEUED],
                                  {"finished_at": now}) for job_id in job_ids])

    # ---- stopping ---------------------------------------------------------------------

    async def stop(self, job: JobRecord, requested_by: str) -> None:
        """Stop a job whatever its state; the STOPPED record follows when it is really gone."""
        await self.stop_many([job], requested_by)

    async def stop_many(self, jobs: list[JobRecord], requested_by: str, reason: str | None = None) -> None:
        """Stop jobs with one round trip to the workers, however many there are."""
        reason = reason or f"stop requested by {requested_by}"
        jobs = [job for job in jobs if not job.status.is_terminal]
        if not jobs:
            return
        updates = [StatusUpdate(job.id, JobStatus.STOPPED, reason, utcnow(), [JobStatus.CREATED])
                   for job in jobs if job.status == JobStatus.CREATED]
        live = [job for job in jobs if job.status != JobStatus.CREATED]
        states = self.store.job_states([job.id for job in live])
        self.store.request_stops([job.id for job in live], reason)
        for job in live:
            self._stop_requests[job.id] = reason
        keys = [task_key(job, states[job.id][1]) for job in live if job.id in states]
        if keys:
            await self._flag_on_workers(keys, requested_by)
        states = self.store.job_states([job.id for job in live])
        for job in live:
            state = states.get(job.id)
            if state is None or not state[0].is_active:
                continue
            future = self._futures.get(job.id)
            if job.id in self._batched:
                continue  # its batch skips it if not started, or reports it stopped: no guess here
            if state[0] == JobStatus.QUEUED:
                if future is not None:
                    await self._cancel([future])
                updates.append(StatusUpdate(job.id, JobStatus.STOPPED, reason, utcnow(),
                                            [JobStatus.QUEUED], {"finished_at": utcnow()}))
            elif future is None:
                # Nothing of ours runs it (e.g. its worker vanished while we were down).
                updates.append(StatusUpdate(job.id, JobStatus.STOPPED, reason, utcnow(),
                                            [JobStatus.RUNNING], {"finished_at": utcnow()}))
        self._apply(updates)

    async def retract(self, job: JobRecord) -> None:
        """Take a queued attempt back from Dask, making sure it never starts."""
        await self._flag_on_workers([task_key(job)], stale_attempt("retracted"))
        future = self._futures.pop(job.id, None)
        self._unsent.pop(job.id, None)
        if future is not None:
            await self._cancel([future])

    async def _flag_on_workers(self, keys: list[str], requested_by: str) -> None:
        """Tell the workers to stop these attempts; while the scheduler is away, on reconnection."""
        if not self.online:
            self._stale_keys.extend(keys)
            return
        with contextlib.suppress(Exception):
            await self.client.run(request_stop, keys, requested_by, on_error="ignore")

    async def _cancel(self, futures: Iterable[Future]) -> None:
        """Dask forgets these futures; without a scheduler they are cancelled already."""
        if self.online:
            with contextlib.suppress(ClosedClientError):
                await self.client.cancel(list(futures))

    # ---- losing workers ---------------------------------------------------------------

    def _on_cluster_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if message.get("action") != "remove-worker":
            return
        # Results computed there but not yet collected are lost too, and Dask would compute
        # them again under the same key: the same attempt would run twice, unrecorded.
        keys = {*message.get("processing-tasks", ()), *message.get("lost-computed-tasks", ())}
        if keys:
            self._spawn(self._worker_lost(message["worker"], keys))

    async def _worker_lost(self, worker: str, keys: set[str]) -> None:
        """Work that was running on a worker that left is run again as a new attempt.

        Dask alone would rerun the task quietly under the same key (and fail it only after
        `allowed-failures` losses); a new attempt lets the history say what happened, keeps
        the budget ours (`worker_loss_retries`, apart from the job's own `retries`), and
        makes any copy Dask already restarted stale: it is told to stop.
        """
        singles = {job_id: f for job_id, f in self._futures.items() if f.key in keys}
        batches = {key: batch for key, batch in self._batch_futures.items() if key in keys}
        if not singles and not batches:
            return
        for key in batches:
            self._lost_batches[key] = worker  # its runs are judged when its future reports
        for job_id, future in singles.items():
            job = self.store.get_job(job_id)
            if job is None or job.status.is_terminal or task_key(job) != future.key:
                continue
            if job_id in self._stop_requests:
                continue  # being stopped anyway: the cancellation records STOPPED
            update = self._after_worker_loss(job, worker)
            if update.status == JobStatus.QUEUED:
                self.submit(job, update.reason, worker_losses=update.fields["worker_losses"])
            else:
                self._apply([update])
        stale = [f.key for f in singles.values()] + [k for _, run_keys in batches.values() for k in run_keys]
        await self._flag_on_workers(stale, stale_attempt(f"{worker} lost"))
        await self._cancel([*singles.values(), *(future for future, _ in batches.values())])

    def _after_worker_loss(self, job: JobRecord, worker: str) -> StatusUpdate:
        """QUEUED for another attempt while the budget lasts, FAILED after; both say why."""
        losses, limit = job.worker_losses + 1, self.worker_loss_retries
        now = utcnow()
        if losses <= limit:
            return StatusUpdate(job.id, JobStatus.QUEUED, f"worker lost ({worker}), retry {losses}/{limit}",
                                now, ACTIVE, {"worker": None, "worker_losses": losses})
        return StatusUpdate(job.id, JobStatus.FAILED, f"worker lost ({worker}), no retries left ({limit}/{limit})",
                            now, ACTIVE, {"worker_losses": losses, "finished_at": now})

    # ---- recording --------------------------------------------------------------------

    def _on_worker_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if message.get("status") != "RUNNING":
            return
        job = self.store.get_job(message["job_id"])
        if job is None or task_key(job) != message.get("key"):
            return  # a stale attempt
        if job.sweep_id is not None and job.id not in self._batched:
            return  # a batch sent before a restart, still running somewhere: not ours
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
        status, reason = self._judge(job, outcome)
        if status is None:
            if reason is not None and self.online:  # a lost connection: a new attempt now
                self._spawn(self._flag_on_workers([key], stale_attempt("connection lost")))
                self.submit(job, reason=reason)
            return  # retracted on purpose, or sent again once the scheduler is back
        if status == JobStatus.FAILED and _failures(job) <= job.retries:
            self.submit(job, reason=f"{reason}, retry {_failures(job)}/{job.retries}")
            return
        self._apply(self._finish_updates(job.id, job.status, status, reason, outcome))

    def _judge(
        self, job: JobRecord, outcome: dict[str, Any] | BaseException
    ) -> tuple[JobStatus | None, str | None]:
        """The status an outcome earns. None: the attempt ends with no outcome of its own,
        either retracted on purpose (no reason) or cut off from us (the reason to run again)."""
        stopper = self._stop_requests.get(job.id)
        if isinstance(outcome, dict):
            status, reason = JobStatus(outcome["status"]), outcome["reason"]
        elif isinstance(outcome, (asyncio.CancelledError, FutureCancelledError)):
            if stopper is None:
                return None, None  # retracted on purpose; a new attempt follows
            status, reason = JobStatus.STOPPED, stopper
        elif failures.runs_again(outcome):
            if stopper is not None:
                return JobStatus.STOPPED, stopper
            return None, f"{failures.describe(outcome)}; queued again"
        else:
            status, reason = JobStatus.FAILED, failures.describe(outcome)
        if stopper is not None and status == JobStatus.FAILED:
            status, reason = JobStatus.STOPPED, f"{stopper}; {reason}"
        return status, reason

    def _finish_updates(
        self,
        job_id: str,
        current: JobStatus,
        status: JobStatus,
        reason: str | None,
        outcome: dict[str, Any] | BaseException,
        final: bool = True,
    ) -> list[StatusUpdate]:
        """RUNNING (if the start was never announced) then the end, with result and outputs."""
        outcome = outcome if isinstance(outcome, dict) else None
        result = _result_from(outcome)
        fields: dict[str, Any] = {}
        passed = []
        if current == JobStatus.QUEUED and result.started_at is not None:
            # its start was never announced: record it with the end, in one change
            passed.append(StatusChange.model_construct(
                status=JobStatus.RUNNING, at=result.started_at, reason=f"on {result.worker}"))
            fields["started_at"] = result.started_at
        finished = result.finished_at or utcnow()
        if result.worker:
            fields["worker"] = result.worker
        if not final:  # a retry follows: its outputs and result replace this attempt's
            return [StatusUpdate(job_id, status, reason, finished, ACTIVE, fields, passed=passed)]
        self._stop_requests.pop(job_id, None)
        fields.update(result=result, finished_at=finished)
        files = [FileEntry.model_construct(**f) for f in outcome.get("files", [])] if outcome else None
        if outcome:
            fields["attempt_bytes"] = sum(f.size for f in files or []) + outcome.get("log_bytes", 0)
        return [StatusUpdate(job_id, status, reason, finished, ACTIVE, fields, files, passed)]

    def _transition(
        self, job_id: str, status: JobStatus, reason: str | None, at: datetime, **kwargs: Any
    ) -> bool:
        only_from = kwargs.pop("only_from", None)
        return self._apply([StatusUpdate(job_id, status, reason, at, only_from, kwargs)])[0]

    def _apply(self, updates: list[StatusUpdate]) -> list[bool]:
        """Record status changes in one transaction, then tell whoever waits for them."""
        if not updates:
            return []
        made = self.store.record_statuses(updates)
        finished = []
        for update, changed in zip(updates, made, strict=True):
            if not changed:
                continue
            self._notify_listeners(update)
            for hook in self.update_hooks:
                try:
                    hook(update)
                except Exception:
                    logger.exception("status hook failed")
            if update.status.is_terminal:
                self._wake_waiters(update.job_id)
                finished.append(update.job_id)
        if finished:
            for callback in list(self.on_finished):
                try:
                    self._spawn_maybe(callback(finished))
                except Exception:
                    logger.exception("finish callback failed")
        return made

    def _apply_each(self, updates: list[StatusUpdate]) -> None:
        """Many changes in one transaction; if that fails, one job at a time, and a job whose
        outcome cannot be recorded ends FAILED saying why, rather than staying active."""
        try:
            self._apply(updates)
            return
        except Exception:
            logger.exception("recording a batch failed; recording its runs one by one")
        for update in updates:
            try:
                self._apply([update])
            except Exception as exc:
                logger.exception("recording the outcome of %s failed", update.job_id)
                self._apply([StatusUpdate(update.job_id, JobStatus.FAILED,
                                          f"its outcome could not be recorded: {type(exc).__name__}: {exc}"[:500],
                                          utcnow(), ACTIVE, {"finished_at": utcnow()})])

    def _notify_listeners(self, update: StatusUpdate) -> None:
        if not self.listeners:
            return
        job = self.store.get_job(update.job_id)
        if job is None:
            return
        changes = [*update.passed, StatusChange(status=update.status, at=update.at, reason=update.reason)]
        for change in changes:
            for listener in list(self.listeners):
                try:
                    listener(job, change)
                except Exception:  # a listener's failure never takes the engine down
                    logger.exception("status listener failed")

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

    async def _reconnected(self) -> None:
        """Back on a scheduler: Dask cancelled every future of the old connection, so what the
        store says is active is sent again; stale attempts that may still run are told to stop.
        Sweep runs come back through their batches, whose dispatchers wait for the connection."""
        self._resubmit_lost()
        stale, self._stale_keys = self._stale_keys, []
        if stale:
            await self._flag_on_workers(stale, stale_attempt("scheduler connection lost"))

    def _resubmit_lost(self) -> None:
        """Every active single job no live future holds: a new attempt (or the first sending of
        one queued while away); one asked to stop while away ends STOPPED. Idempotent."""
        for job in self.store.jobs_with_status(list(ACTIVE)):
            if job.sweep_id is not None or self._holds(job):
                continue
            if self._settle_stop_request(job):
                continue
            if self._unsent.pop(job.id, None) == job.attempt and job.status == JobStatus.QUEUED:
                self._send(job)
            else:
                if job.attempt > 0:
                    self._stale_keys.append(task_key(job))
                was = f" (was RUNNING on {job.worker})" if job.status == JobStatus.RUNNING else ""
                self.submit(job, reason=CONNECTION_LOST + was)
        self._unsent.clear()

    def _holds(self, job: JobRecord) -> bool:
        """A live future (sent on this connection) runs the job's current attempt."""
        future = self._futures.get(job.id)
        return future is not None and not future.cancelled() and future.key == task_key(job)

    async def recover(self) -> None:
        """Reconcile what the store says is active with what the user wants: a job asked to
        stop ends STOPPED, the rest is resubmitted (the futures died with us). Processes an
        earlier life left behind (a job runs in its own session, so it outlives a worker
        killed with us) are ended first, found by their marker."""
        active = self.store.jobs_with_status([JobStatus.QUEUED, JobStatus.RUNNING])
        await self._end_orphans([task_key(job) for job in active if job.attempt > 0])
        for job in active:
            if job.id in self._futures or self._settle_stop_request(job) or job.sweep_id is not None:
                continue  # sweep runs are resumed by their sweep's dispatcher
            was = f" (was RUNNING on {job.worker})" if job.status == JobStatus.RUNNING else ""
            self.submit(job, reason=f"resubmitted after orchestrator restart{was}")

    def _settle_stop_request(self, job: JobRecord) -> bool:
        """A job whose stop was asked for and whose attempt is gone ends STOPPED now."""
        reason = self._stop_requests.pop(job.id, None)
        if reason is None:
            return False
        self._apply([StatusUpdate(job.id, JobStatus.STOPPED, reason, utcnow(), ACTIVE,
                                  {"finished_at": utcnow()})])
        return True

    async def _end_orphans(self, keys: list[str]) -> None:
        if keys and self.online:
            with contextlib.suppress(Exception):
                await self.client.run(end_orphans, keys, on_error="ignore")

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


def _failures(job: JobRecord, attempt: int | None = None) -> int:
    """Attempts that ended by the job's own failure (a lost worker is not the job's fault)."""
    return (job.attempt if attempt is None else attempt) - job.worker_losses


def key_name(name: str, fallback: str) -> str:
    """The part of a Dask key the dashboard groups tasks by (dask.utils.key_split keeps it)."""
    return re.sub(r"[^A-Za-z0-9_.]+", "_", name).strip("_.") or fallback


def task_key(job: JobRecord, attempt: int | None = None) -> str:
    """Unique per attempt. A number follows the name so key_split stops there: an id that
    happens to be all letters would otherwise join the group name."""
    return f"{key_name(job.name, 'job')}-{job.attempt if attempt is None else attempt}-{job.id}"


def batch_key(name: str, number: int, sweep_id: str) -> str:
    """A batch of sweep runs, grouped in the dashboard under the sweep's name."""
    return f"{key_name(name, 'sweep')}-b{number}-{sweep_id}"


def binary_input(ref: str, owner: str) -> StagedInput:
    """A pinned binary (`name@v` of the job's owner, or `other/name@v`) or a URL to stage."""
    if "://" in ref:
        name = ref.rstrip("/").rsplit("/", 1)[-1] or "download"
        return StagedInput(path=name, url=ref, executable=True)
    pinned = BinaryRef.parse(ref, owner)
    return StagedInput(path=pinned.name, key=pinned.key, executable=True)


def _result_from(outcome: dict[str, Any] | None) -> JobResult:
    """Built without validation: the runner's outcome already has the right types."""
    if outcome is None:
        return JobResult()
    started, finished = outcome.get("started_at"), outcome.get("finished_at")
    return JobResult.model_construct(
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
