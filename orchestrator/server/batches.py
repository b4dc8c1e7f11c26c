"""Runs sent to Dask in batches, one task for many runs: the engine's side of it. Sweep runs
go in batches of one sweep (SweepDispatcher); single jobs of one kind when a burst fills the
cluster (SingleFeed), each judged as a single job.

A mixin of Engine (it uses the engine's store, client, futures and recorder): what its
batches' outcomes mean is decided by orchestrator.server.decisions.outcomes_of_batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from typing import Any

from distributed import Future
from distributed.client import ClosedClientError, FutureCancelledError

from orchestrator import failures
from orchestrator.models import JobRecord, utcnow
from orchestrator.server import decisions, run_sets, specs
from orchestrator.server.decisions import BatchReport, task_key
from orchestrator.server.secrets import SecretsUnreadable
from orchestrator.worker.runner import Sealed, run_batch


class SweepBatches:
    """Uses the engine's store, client, isolation, storage_url, worker_loss_retries, online,
    secret_env, send_when_back, _run_spec, _record_outcome, _batched, _batch_futures, _lost_batches,
    _stop_requests, _carry_out, _apply, _apply_each and _flag_on_workers."""

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
        try:
            secrets = self.secret_env(jobs[0])  # runs of one sweep share its secrets
        except SecretsUnreadable as exc:
            self.fail_active([job.id for job in jobs], str(exc))
            return BatchReport(failed=len(jobs))
        spec = specs.batch_spec(jobs, attempts, template, self.storage_url, secrets, self.isolation,
                                failure_budget)
        outcomes, (judged, early) = await self._one_task(jobs, key, spec)
        report = self._record_batch(*_undecided(jobs, attempts, outcomes, judged), self._lost_batches.pop(key, None))
        return merged(early, report, outcomes)

    async def run_singles(self, jobs: list[JobRecord], key: str) -> float | None:
        """Single jobs' QUEUED attempts sent as one Dask task (see SingleFeed), each judged as a
        single job is; the seconds each run took, to size the next batches of their kind."""
        runs, sendable = [], []
        for job in jobs:
            try:
                runs.append(self._run_spec(job))
                sendable.append(job)
            except SecretsUnreadable as exc:
                self.fail_active([job.id], str(exc))
        if not runs:
            return None
        spec = {"template": {}, "runs": runs, "failure_budget": None}
        try:
            outcomes, (judged, _) = await self._one_task(sendable, key, spec)
        except ClosedClientError:  # it gave up on the scheduler just now
            for job in sendable:
                self.send_when_back(job.id, job.attempt)
            return None
        lost = self._lost_batches.pop(key, None)
        left = [(job, run["key"], i) for i, (job, run) in enumerate(zip(sendable, runs, strict=True))
                if job.id not in judged]
        current = self._as_recorded([job for job, _, _ in left])
        decision = decisions.Decision()
        for job, run_key, position in left:
            outcome = outcomes if isinstance(outcomes, BaseException) else outcomes[position]
            ruled = decisions.outcome_of_batched_job(
                current.get(job.id), run_key, outcome, self._stop_requests.get(job.id), lost, self.online,
                utcnow(), self.worker_loss_retries)
            decision.updates += ruled.updates
            decision.instructions += ruled.instructions
        self._carry_out(decision, each=True)
        return None if isinstance(outcomes, BaseException) else decisions.run_seconds(outcomes)

    def _as_recorded(self, jobs: list[JobRecord]) -> dict[str, JobRecord]:
        """The jobs whose attempt the ledger still holds, with the status it has now: all a
        single job's judgement reads that can have changed while its attempt ran (a new
        attempt would have changed the attempt too)."""
        states = self.store.job_states([job.id for job in jobs])
        return {job.id: job.model_copy(update={"status": states[job.id][0]}) for job in jobs
                if states.get(job.id, (None, None))[1] == job.attempt}

    async def _one_task(
        self, jobs: list[JobRecord], key: str, spec: dict[str, Any],
    ) -> tuple[list[dict[str, Any]] | BaseException, tuple[set[str], BatchReport]]:
        """Send a batch's spec as one Dask task and wait for it: every run's outcome (or what
        the task ended with), and the runs judged from their announced ends (ids, report)."""
        # As JSON text, so Dask does not walk every run's fields looking for futures.
        future = self.client.submit(
            run_batch, Sealed(json.dumps(spec)), key=key, resources=jobs[0].resources.as_dask() or None,
            priority=jobs[0].priority, pure=False, retries=0,
        )
        for job in jobs:
            self._batched[job.id] = key
        self._batch_futures[key] = (future, [run["key"] for run in spec["runs"]])
        self._early[key] = (set(), BatchReport())
        try:
            outcomes: list[dict[str, Any]] | BaseException = await outcome_of(future, json.loads)
        finally:
            future.release()
            del self._batch_futures[key]
            for job in jobs:
                if self._batched.get(job.id) == key:
                    del self._batched[job.id]
            early = self._early.pop(key)
        return outcomes, early

    def _ended_in_batch(self, message: dict[str, Any]) -> None:
        """A batched run announced its end before its batch did: judged now (its counts tell
        the truth while the batch runs), and left out when the batch reports."""
        job = self.store.get_job(message.get("job_id", ""))
        key = self._batched.get(job.id) if job is not None else None
        if job is None or key is None or key not in self._early or task_key(job) != message.get("key"):
            return  # not (or no longer) ours: the batch's own report judges it
        judged, early = self._early[key]
        judged.add(job.id)
        if job.sweep_id is None:  # a single job sent in a batch: judged as a single job
            self._record_outcome(job.id, message["key"], message["outcome"])
            return
        report = self._record_batch([job], [job.attempt], [message["outcome"]])
        early.requeued += report.requeued
        early.failed += report.failed

    def _record_batch(
        self, jobs: list[JobRecord], attempts: list[int], outcomes: list[dict[str, Any]] | BaseException,
        lost_worker: str | None = None,
    ) -> BatchReport:
        states = self.store.job_states([job.id for job in jobs])
        decision, report = decisions.outcomes_of_batch(
            jobs, attempts, outcomes, states, self._stop_requests, lost_worker,
            self.worker_loss_retries, self.online, utcnow())
        self._carry_out(decision, each=True)
        return report

    def still_queued(self, jobs: list[JobRecord]) -> list[JobRecord]:
        """Runs of a batch that never reached Dask (the client was closed), as the store has
        them now: QUEUED, with the attempt already recorded, to be sent again."""
        states = self.store.job_states([job.id for job in jobs])
        for job in jobs:
            self._batched.pop(job.id, None)
        return [job.model_copy(update={"attempt": states[job.id][1]}) for job in jobs
                if states.get(job.id, (None,))[0] == decisions.QUEUED]

    def connection_problem(self, exc: BaseException) -> bool:
        """Whether a failure to send work came from the scheduler being away."""
        return not self.online or failures.classify(exc) != failures.Failure.INTERNAL

    async def requeue(self, sweep_id: str, reason: str) -> None:
        """After a restart, the sweep's runs whose batches were lost with us go back to QUEUED,
        saying so; their old attempts are told to stop (see run_sets.requeue_sent). A set, a
        window of runs at a time: the sweep's dispatcher reads them from the ledger."""
        await run_sets.requeue_sent(self.store, self.recorder, self._flag_on_workers, sweep_id, reason)

    def fail_active(self, job_ids: list[str], reason: str) -> None:
        """Runs whose batch broke in the orchestrator itself: failed, saying why."""
        self._apply_each(decisions.fail(job_ids, reason, utcnow()))

    async def stop_unsent(self, sweep_id: str, reason: str, keep: Iterable[str] = ()) -> None:
        """The sweep's QUEUED runs no Dask task holds (all but `keep`, those of batches in
        flight): the record alone stops them, as a set, a chunk per transaction in a thread."""
        await run_sets.end_queued(self.store, self.recorder, sweep_id, decisions.STOPPED, reason, keep)


def _undecided(
    jobs: list[JobRecord], attempts: list[int], outcomes: list[dict[str, Any]] | BaseException, judged: set[str],
) -> tuple[list[JobRecord], list[int], list[dict[str, Any]] | BaseException]:
    """The runs of a batch its report still has to judge (not those that announced their end)."""
    if not judged:
        return jobs, attempts, outcomes
    keep = [i for i, job in enumerate(jobs) if job.id not in judged]
    kept_outcomes = outcomes if isinstance(outcomes, BaseException) else [outcomes[i] for i in keep]
    return [jobs[i] for i in keep], [attempts[i] for i in keep], kept_outcomes


def merged(early: BatchReport, report: BatchReport, outcomes: list[dict[str, Any]] | BaseException) -> BatchReport:
    """One report of the whole batch for its dispatcher: what was judged early and at its end,
    timed over every run it ran."""
    report.requeued = early.requeued + report.requeued
    report.failed += early.failed
    if not isinstance(outcomes, BaseException):
        report.run_seconds = decisions.run_seconds(outcomes) or report.run_seconds
    return report


async def outcome_of(future: Future, read: Callable[[Any], Any] = lambda value: value) -> Any:
    """What the future ended with: its result (as `read` makes it), or the exception it ended
    with, its cancellation included; our own cancellation (of the task awaiting) is raised."""
    try:
        return read(await future)
    except (asyncio.CancelledError, FutureCancelledError) as exc:
        if isinstance(exc, asyncio.CancelledError) and not future.cancelled():
            raise
        return exc
    except Exception as exc:  # noqa: BLE001 - worker loss, unpicklable result, ...
        return exc
