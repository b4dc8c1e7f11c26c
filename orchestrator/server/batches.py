"""Sweep runs sent to Dask in batches, one task for many runs: the engine's side of it.

A mixin of Engine (it uses the engine's store, client, futures and recorder): what its
batches' outcomes mean is decided by orchestrator.server.decisions.outcomes_of_batch.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from distributed import Future
from distributed.client import FutureCancelledError

from orchestrator import failures
from orchestrator.models import JobRecord, utcnow
from orchestrator.plugins.worker import stale_attempt
from orchestrator.server import decisions, specs
from orchestrator.server.decisions import BatchReport, task_key
from orchestrator.server.secrets import SecretsUnreadable
from orchestrator.worker.runner import Sealed, run_batch


class SweepBatches:
    """Uses the engine's store, client, isolation, storage_url, worker_loss_retries, online,
    secret_env, _batched, _batch_futures, _lost_batches, _stop_requests, _carry_out, _apply,
    _apply_each and _flag_on_workers."""

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
        spec = specs.batch_spec(jobs, attempts, template, self.storage_url, secrets, self.isolation,
                                failure_budget)
        # As JSON text, so Dask does not walk every run's fields looking for futures.
        future = self.client.submit(
            run_batch, Sealed(json.dumps(spec)), key=key, resources=jobs[0].resources.as_dask() or None,
            priority=jobs[0].priority, pure=False, retries=0,
        )
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
        judged, early = self._early.pop(key)
        report = self._record_batch(*_undecided(jobs, attempts, outcomes, judged), self._lost_batches.pop(key, None))
        return merged(early, report, outcomes)

    def _ended_in_batch(self, message: dict[str, Any]) -> None:
        """A batched run announced its end before its batch did: judged now (its counts tell
        the truth while the batch runs), and left out when the batch reports."""
        job = self.store.get_job(message.get("job_id", ""))
        key = self._batched.get(job.id) if job is not None else None
        if job is None or key is None or key not in self._early or task_key(job) != message.get("key"):
            return  # not (or no longer) ours: the batch's own report judges it
        judged, early = self._early[key]
        report = self._record_batch([job], [job.attempt], [message["outcome"]])
        judged.add(job.id)
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

    async def requeue(self, jobs: list[JobRecord], reason: str) -> list[JobRecord]:
        """Active sweep runs whose batches were lost with us go back to QUEUED, saying so.

        Their old attempts are told to stop, in case their batch still runs on a cluster
        that outlived us; the new attempt has a new key, so the old one can never be mistaken
        for it.
        """
        sent = [task_key(job) for job in jobs if job.attempt > 0]
        if sent:
            await self._flag_on_workers(sent, stale_attempt("restarted"))
        self._apply(decisions.requeue(jobs, reason, utcnow()))
        return [job.model_copy(update={"status": decisions.QUEUED, "worker": None}) for job in jobs]

    def fail_active(self, job_ids: list[str], reason: str) -> None:
        """Runs whose batch broke in the orchestrator itself: failed, saying why."""
        self._apply_each(decisions.fail(job_ids, reason, utcnow()))

    def stop_unsent(self, job_ids: list[str], reason: str) -> None:
        """QUEUED runs no Dask task holds yet: the record alone stops them."""
        self._apply(decisions.stop_unsent(job_ids, reason, utcnow()))


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
