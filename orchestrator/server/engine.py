"""Reconciles the ledger with Dask: submits what should run, records what happened.

The store is the truth. The engine keeps only the live futures in memory; after a restart it
resubmits every job the store says is QUEUED or RUNNING, so recovery is the ordinary path.
All methods run on the service's event loop.

What to record and what to do next is decided by the pure rules of orchestrator.server.decisions;
the engine reads what they need, records their updates through its Recorder and carries out
their instructions on Dask. Placement (which worker could run what) is orchestrator.server.placement.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from typing import Any

from distributed import Client, Future
from distributed.client import ClosedClientError

from orchestrator.models import JobRecord, JobStatus, Resources, StatusChange, utcnow
from orchestrator.plugins.worker import (
    OrchestratorWorkerPlugin,
    request_stop,
    stale_attempt,
)
from orchestrator.server import decisions, specs
from orchestrator.server.admission import GroupCommit
from orchestrator.server.auth import Principal
from orchestrator.server.batches import SweepBatches, outcome_of
from orchestrator.server.connection import ClientFactory, SchedulerLink
from orchestrator.server.decisions import (  # noqa: F401 - re-exported: other modules import them from here
    ACTIVE,
    CONNECTION_LOST,
    LOST_CONNECTION_REASON,
    NO_WORKER,
    OFFLINE,
    BatchReport,
    Cancel,
    Decision,
    FlagStale,
    ForgetStop,
    MarkStale,
    Send,
    Submit,
    batch_key,
    key_name,
    task_key,
)
from orchestrator.server.isolation import Isolation
from orchestrator.server.ledger import Admitted, StatusUpdate, Store
from orchestrator.server.placement import RESOURCE_CACHE_S, RESOURCE_FIELDS, Placement  # noqa: F401
from orchestrator.server.prompt_sends import prompt_sends
from orchestrator.server.recorder import Recorder, StatusBus, StatusListener, Waiters  # noqa: F401
from orchestrator.server.recovery import Recovery
from orchestrator.server.secrets import Sealer, SecretsUnreadable
from orchestrator.server.single_feed import SingleFeed
from orchestrator.server.type_gate import TypeGate
from orchestrator.worker.runner import STATUS_TOPIC, Sealed, run_job

CLUSTER_TOPIC = "all"  # where the scheduler logs workers joining and leaving


class Engine(SweepBatches, Recovery):
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
        worker_shape: dict[str, float] | None = None,
        worker_plugin: OrchestratorWorkerPlugin | None = None,
    ):
        self.worker_plugin = worker_plugin or OrchestratorWorkerPlugin()  # with the workers' settings
        self.sealer = sealer
        self.isolation = isolation or Isolation.single_user()
        self.link = SchedulerLink(client, reconnect)  # `reconnect`: a new client, if Dask's gives up
        self.store = store
        self.storage_url = storage_url
        self.worker_loss_retries = worker_loss_retries
        self.placer = Placement(self.link, can_grow, worker_shape)
        self._tasks: set[asyncio.Task] = set()
        self.bus = StatusBus(self._spawn)
        self.waiters = Waiters()
        self.recorder = Recorder(store, self.bus, self.waiters)
        self.admissions = GroupCommit(store)  # new jobs: one transaction per loop turn
        self.singles = SingleFeed(self)  # single jobs to Dask: alone, or batched in a burst
        self._futures: dict[str, Future] = {}  # job id -> future of its current attempt
        self._batched: dict[str, str] = {}  # job id -> Dask key of the batch running it
        self._early: dict[str, tuple[set[str], BatchReport]] = {}  # batch key -> runs judged before it ended
        self._judged_early: set[str] = set()  # keys of single jobs recorded from their announced end
        self._batch_futures: dict[str, tuple[Future, list[str]]] = {}  # batch key -> future, run keys
        self._lost_batches: dict[str, str] = {}  # batch key -> address of the worker lost under it
        self._stop_requests: dict[str, str] = {}  # job id -> who asked
        self._unsent: dict[str, int] = {}  # job id -> attempt queued while the scheduler was away
        self._stale_keys: list[str] = []  # attempts to stop on the workers once connected again
        self.gate = TypeGate(store)  # job types' pausing and max_scheduled
        self.contracts: specs.Contracts | None = None  # a job type revision's manifest, by reference
        self.bus.on_finished.append(self._release_types)

    # the status bus's channels, as the rest of the service knows them
    listeners = property(lambda self: self.bus.listeners)  # (record, change): for watchers
    update_hooks = property(lambda self: self.bus.update_hooks)  # the update only: cheap
    on_finished = property(lambda self: self.bus.on_finished)  # job ids that ended

    @property
    def can_grow(self) -> bool:
        return self.placer.can_grow

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
        await client.register_plugin(self.worker_plugin)
        # Dask reruns a task whose worker died under the same key (up to `allowed-failures`
        # times), racing our own new attempt: a run could start twice under one attempt while
        # the stale flags travelled (seen under load). With none allowed the task errs
        # (KilledWorker) and the engine alone decides what runs again. A lambda: pickled by
        # value, so the scheduler needs none of the server's modules.
        await client.run_on_scheduler(lambda dask_scheduler: setattr(dask_scheduler, "allowed_failures", 0))
        await client.run_on_scheduler(prompt_sends())
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
        reason it waits instead (None when a worker fits now). See orchestrator.server.placement."""
        return await self.placer.placement(resources)

    async def fixed_offers(self) -> list[dict[str, float]] | None:
        """Each worker's resources when the cluster cannot grow (None when it can, or while
        the scheduler is away): what no worker offers now, none ever will."""
        if self.can_grow or not self.online:
            return None
        return await self.placer.worker_resources(fresh=False)

    async def cluster_threads(self) -> int:
        """Worker threads in the cluster now (cached like the resource offers)."""
        return await self.placer.cluster_threads()

    async def check_may_run(self, principal: Principal | None) -> None:
        """Refuse a user's work where it would run with the orchestrator's own identity."""
        await self.isolation.check(principal, self.client)

    async def admit(self, job: JobRecord, reason: str | None, sealed: bytes | None) -> JobRecord:
        """A new job recorded straight as QUEUED, in one transaction with the others accepted
        in this loop turn (see GroupCommit), then sent; returns once it is committed."""
        held = self.gate.hold_reason(job)
        update, queued = decisions.submission(job, held or reason, self.online, utcnow(), {})
        history = [(StatusChange(status=JobStatus.CREATED, at=job.created_at), job.attempt),
                   (StatusChange(status=JobStatus.QUEUED, at=update.at, reason=update.reason), queued.attempt)]

        def send() -> None:
            self.bus.changed(update, lambda: queued)
            self._queued(queued, held)

        await self.admissions.record(Admitted(queued, history, sealed), send)
        return queued

    def submit(self, job: JobRecord, reason: str | None = None, **recorded: Any) -> JobRecord:
        """Queue the job's next attempt on Dask, record it as QUEUED and return the record.

        `recorded`: more job fields that change with it (e.g. worker_losses).
        """
        online = self.online
        held = self.gate.hold_reason(job)
        update, job = decisions.submission(job, held or reason, online, utcnow(), recorded)
        self._apply([update])
        return self._queued(job, held)

    def rerun(self, job: JobRecord, requested_by: str) -> JobRecord | None:
        """An ended single job's new attempt (None when it is no longer ended)."""
        update, job = decisions.rerun(job, requested_by, self.online, utcnow())
        if not self._apply([update])[0]:
            return None
        return self._queued(job, self.gate.hold_reason(job))

    def requeue_ended(self, jobs: list[JobRecord], requested_by: str) -> list[JobRecord]:
        """Ended sweep runs QUEUED again as new attempts, in one transaction; their sweep's
        dispatcher sends them. The records of those that were still ended."""
        now = utcnow()
        queued = [decisions.rerun(job, requested_by, True, now) for job in jobs]
        made = self._apply([update for update, _ in queued])
        return [job for (_, job), ok in zip(queued, made, strict=True) if ok]

    def background(self, coroutine) -> None:
        """Run a coroutine on the engine's loop, kept alive until it ends."""
        self._spawn(coroutine)

    def _queued(self, job: JobRecord, held: str | None) -> JobRecord:
        """A QUEUED attempt just recorded: held by its type's gate, kept for the scheduler's
        return, or sent now."""
        online = self.online
        if held:
            self.gate.hold(job)
            return job
        if not online:
            self.send_when_back(job.id, job.attempt)  # the record says QUEUED
            return job
        return self._send(job, gated=True)

    def _send(self, job: JobRecord, gated: bool = False) -> JobRecord:
        """Hand a QUEUED attempt to Dask (alone, or in a batch when a burst fills the cluster:
        SingleFeed), unless its type holds it (`gated`: the caller just asked the gate)."""
        if not gated and self.gate.hold_reason(job):
            self.gate.hold(job)
            return job
        self.gate.sent(job)  # counts toward its type's limit from now: nothing passes meanwhile
        self.singles.offer(job)
        return job

    def send_task(self, job: JobRecord, on_end: Callable[[], None]) -> bool:
        """Send the attempt as a Dask task of its own and follow its future (`on_end` runs when
        it is over); False when nothing was sent (failed, or kept for the scheduler's return)."""
        try:
            spec = self._run_spec(job)
        except SecretsUnreadable as exc:
            self.fail_active([job.id], str(exc))
            return False
        try:
            future = self.client.submit(
                run_job, Sealed(spec), key=spec["key"], resources=job.resources.as_dask() or None,
                priority=job.priority, pure=False, retries=0,
            )
        except ClosedClientError:  # it gave up on the scheduler just now
            self.send_when_back(job.id, job.attempt)
            return False
        self._futures[job.id] = future
        self._spawn(self._await_outcome(job.id, spec["key"], future, on_end))
        return True

    def send_when_back(self, job_id: str, attempt: int) -> None:
        """A QUEUED attempt the scheduler's absence kept from Dask: sent on reconnection."""
        self._unsent[job_id] = attempt

    def known_threads(self) -> int:
        """Worker threads in the cluster as last asked (every submission refreshes it)."""
        return self.placer.known_threads()

    def release_type(self, key: str) -> None:
        """Send the held jobs of a job type (`name@version`) while its gate lets them pass:
        it was resumed, its limit raised, or one of its jobs ended."""
        for job_id in self.gate.waiting(key):
            job = self.store.get_job(job_id)
            if job is None or job.status != JobStatus.QUEUED:
                self.gate.drop(key, job_id)
                continue
            if self.gate.hold_reason(job) or not self.online:
                break
            self.gate.drop(key, job_id)
            self._send(job, gated=True)
        self.gate.notify(key)  # a sweep's dispatcher waiting on the type may send now

    def _release_types(self, job_ids: list[str]) -> None:
        for key in self.gate.ended(job_ids):
            self.release_type(key)

    def _run_spec(self, job: JobRecord) -> dict[str, Any]:
        return specs.run_spec(job, self.storage_url, self.secret_env(job), self.isolation, self.contracts)

    def secret_env(self, job: JobRecord) -> dict[str, str]:
        """The opened secret environment of a job (a sweep run: its sweep's), for its task
        only; records and events keep the masked names."""
        return specs.secret_env(self.store, self.sealer, job)

    # ---- stopping ---------------------------------------------------------------------

    async def stop(self, job: JobRecord, requested_by: str) -> None:
        """Stop a job whatever its state; the STOPPED record follows when it is really gone."""
        await self.stop_many([job], requested_by)

    async def stop_many(self, jobs: list[JobRecord], requested_by: str, reason: str | None = None) -> None:
        """Stop jobs with one round trip to the workers, however many there are."""
        reason = decisions.stop_reason(requested_by, reason)
        jobs = [job for job in jobs if not job.status.is_terminal]
        if not jobs:
            return
        updates = [decisions.stop_saved(job, reason, utcnow()) for job in jobs
                   if job.status == decisions.CREATED]
        live = [job for job in jobs if job.status != decisions.CREATED]
        states = self.store.job_states([job.id for job in live])
        self.store.request_stops([job.id for job in live], reason)
        for job in live:
            self._stop_requests[job.id] = reason
        keys = [task_key(job, states[job.id][1]) for job in live if job.id in states]
        if keys:
            await self._flag_on_workers(keys, requested_by)
        states = self.store.job_states([job.id for job in live])
        for job in live:
            future = self._futures.get(job.id)
            state = states.get(job.id)
            decision = decisions.stop_live(job.id, state[0] if state else None, future is not None,
                                           job.id in self._batched, reason, utcnow())
            if future is not None and any(isinstance(i, Cancel) for i in decision.instructions):
                await self._cancel([future])
            updates += decision.updates
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

    # ---- recording --------------------------------------------------------------------

    def _on_worker_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if message.get("status") == "ENDED":
            if not self._ended_single(message):
                self._ended_in_batch(message)
            return
        if message.get("status") != "RUNNING":
            return
        job = self.store.get_job(message["job_id"])
        update = decisions.started(job, message, job is not None and job.id in self._batched)
        if update is not None:
            self._apply([update])

    def _ended_single(self, message: dict[str, Any]) -> bool:
        """A single job announced its outcome as it ended: recorded now, and its task's own
        result (which would cost a gather from the worker) is not waited for."""
        job_id, key = message.get("job_id", ""), message.get("key")
        future = self._futures.get(job_id)
        if future is None or future.key != key or key in self._judged_early:
            return False
        self._judged_early.add(key)
        self._record_outcome(job_id, key, message["outcome"])
        return True

    async def _await_outcome(self, job_id: str, key: str, future: Future, on_end: Callable[[], None]) -> None:
        try:
            await future._state.wait()  # ended: its result is gathered only if it was not announced
            outcome: dict[str, Any] | BaseException = (
                {} if key in self._judged_early else await outcome_of(future))
        finally:
            if self._futures.get(job_id) is future:
                del self._futures[job_id]
            future.release()
            on_end()
        if key in self._judged_early:
            self._judged_early.discard(key)
            return
        self._record_outcome(job_id, key, outcome)

    def _record_outcome(self, job_id: str, key: str, outcome: dict[str, Any] | BaseException) -> None:
        job = self.store.get_job(job_id)
        if job is not None and isinstance(outcome, dict):
            self.singles.timed(job, decisions.run_seconds([outcome]))
        self._carry_out(decisions.outcome_of_job(
            job, key, outcome, self._stop_requests.get(job_id), self.online, utcnow(), self.worker_loss_retries))

    def _carry_out(self, decision: Decision, each: bool = False) -> None:
        """Forget what is settled, record the updates, then act on Dask (Cancel: the caller)."""
        for instruction in decision.instructions:
            if isinstance(instruction, ForgetStop):
                self._stop_requests.pop(instruction.job_id, None)
            elif isinstance(instruction, MarkStale):
                self._stale_keys.extend(instruction.keys)
        (self._apply_each if each else self._apply)(decision.updates)
        for instruction in decision.instructions:
            if isinstance(instruction, FlagStale):
                self._spawn(self._flag_on_workers(instruction.keys, stale_attempt(instruction.why)))
            elif isinstance(instruction, Submit):
                self.submit(instruction.job, instruction.reason, **instruction.fields)
            elif isinstance(instruction, Send):
                self._send(instruction.job)

    def _apply(self, updates: list[StatusUpdate]) -> list[bool]:
        """Record status changes in one transaction, then tell whoever waits for them."""
        return self.recorder.apply(updates)

    def _apply_each(self, updates: list[StatusUpdate]) -> None:
        """One transaction; if it fails, one job at a time (see Recorder.apply_each)."""
        self.recorder.apply_each(updates)

    # ---- waiting ----------------------------------------------------------------------

    async def wait(self, job_id: str, timeout: float | None) -> bool:
        """Wait until the job is terminal; returns False when the timeout ran out first."""
        job = self.store.get_job(job_id)
        if job is None or job.status.is_terminal:
            return True
        if job.status == decisions.CREATED:
            return False
        return await self.waiters.wait(job_id, timeout)

    # ---- helpers ----------------------------------------------------------------------

    def _spawn(self, coroutine) -> None:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
