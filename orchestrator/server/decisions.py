"""What the engine decides, as pure code: records and events in, status updates and
instructions out (in the manner of distributed's WorkerState).

Nothing here talks to Dask or the store, and nothing here keeps state: the engine reads
what a rule needs (the job's record, its state in the ledger, whether a stop was asked for,
whether the scheduler is online), calls the rule, records the updates through its recorder
and carries out the instructions. Every reason text a job's history shows is written here.

Which status may follow which is named once, in MAY_FOLLOW; every update a rule makes is
guarded by `from_states`, that table narrowed to what the rule saw.
"""

from __future__ import annotations

import asyncio
import functools
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from distributed.client import FutureCancelledError

from orchestrator import failures
from orchestrator.models import FileEntry, JobRecord, JobResult, JobStatus, StatusChange
from orchestrator.server.ledger import StatusUpdate

CREATED, QUEUED, RUNNING = JobStatus.CREATED, JobStatus.QUEUED, JobStatus.RUNNING
COMPLETED, FAILED, STOPPED = JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED

# Which status may follow which. A job never leaves an ended status.
MAY_FOLLOW: dict[JobStatus, frozenset[JobStatus]] = {
    CREATED: frozenset({QUEUED, STOPPED}),  # submitted, or stopped before it was
    QUEUED: frozenset({QUEUED, RUNNING, COMPLETED, FAILED, STOPPED}),  # a new attempt; its start...
    RUNNING: frozenset({QUEUED, COMPLETED, FAILED, STOPPED}),  # a retry; its end
    COMPLETED: frozenset(),
    FAILED: frozenset(),
    STOPPED: frozenset(),
}
ACTIVE = (QUEUED, RUNNING)  # an attempt is under way (sent, or to be sent): the one definition
UNFINISHED = (CREATED, *ACTIVE)  # not ended yet, submitted or not

Outcome = dict[str, Any] | BaseException  # what a run's future ends with

CONNECTION_LOST = "scheduler connection lost, resubmitted"
OFFLINE = "the Dask scheduler is unreachable; sent when it is back"
NO_WORKER = "waiting for a worker: none is connected to the scheduler"
LOST_CONNECTION_REASON = "scheduler-connection-lost"  # why Dask's client cancels its futures
CANCELLED = "its Dask task was cancelled; queued again"
RESTARTED = "resubmitted after orchestrator restart"
UNRECORDABLE = "its outcome could not be recorded"


@functools.cache  # asked for every update recorded: iterating an Enum is slow
def from_states(status: JobStatus, among: tuple[JobStatus, ...] | None = None) -> tuple[JobStatus, ...]:
    """The statuses `status` may follow (MAY_FOLLOW), narrowed to `among`: an update's guard."""
    return tuple(s for s in JobStatus if status in MAY_FOLLOW[s] and (among is None or s in among))


def may_follow(current: JobStatus, status: JobStatus) -> bool:
    return status in MAY_FOLLOW[current]


# ---- instructions: what the engine carries out on Dask ------------------------------------


@dataclass(frozen=True)
class Submit:
    """Record a new QUEUED attempt of the job and send it (engine.submit)."""

    job: JobRecord
    reason: str | None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Send:
    """Send the attempt the record already holds as QUEUED (queued while the scheduler was away)."""

    job: JobRecord


@dataclass(frozen=True)
class FlagStale:
    """Tell the workers to stop these attempts now (or on reconnection)."""

    keys: list[str]
    why: str


@dataclass(frozen=True)
class MarkStale:
    """Attempts that may still run somewhere: told to stop when next connected."""

    keys: list[str]


@dataclass(frozen=True)
class ForgetStop:
    """The job's stop request is settled: forget it."""

    job_id: str


@dataclass(frozen=True)
class Cancel:
    """Cancel the future of the job's current attempt."""

    job_id: str


Instruction = Submit | Send | FlagStale | MarkStale | ForgetStop | Cancel


@dataclass
class Decision:
    updates: list[StatusUpdate] = field(default_factory=list)
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class BatchReport:
    """What a finished batch of sweep runs tells the dispatcher feeding it."""

    requeued: list[JobRecord] = field(default_factory=list)  # failed runs with retries left
    failed: int = 0  # runs that ended FAILED for good
    run_seconds: float | None = None  # worker time per run, to size the next batches


# ---- keys ---------------------------------------------------------------------------------


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


def own_failures(job: JobRecord, attempt: int | None = None) -> int:
    """Attempts that ended by the job's own failure (a lost worker is not the job's fault)."""
    return (job.attempt if attempt is None else attempt) - job.worker_losses


def was_running(job: JobRecord) -> str:
    return f" (was RUNNING on {job.worker})" if job.status == RUNNING else ""


# ---- submitting and starting ----------------------------------------------------------------


def submission(
    job: JobRecord, reason: str | None, online: bool, now: datetime, recorded: dict[str, Any],
) -> tuple[StatusUpdate, JobRecord]:
    """A new QUEUED attempt: the update, and the record as it will be. While the scheduler is
    away, the reason says so. Unguarded: a saved, queued or running job may be submitted."""
    reason = reason if online else reason or OFFLINE
    fields: dict[str, Any] = {"attempt": job.attempt + 1, "worker": None, **recorded}
    if job.submitted_at is None:
        fields["submitted_at"] = now
    update = StatusUpdate(job.id, QUEUED, reason, now, None, fields)
    return update, job.model_copy(update={**fields, "status": QUEUED, "status_reason": reason})


ENDED = (COMPLETED, FAILED, STOPPED)


def rerun(job: JobRecord, requested_by: str, online: bool, now: datetime) -> tuple[StatusUpdate, JobRecord]:
    """An ended job runs again as a new attempt, its history kept: the one way out of an
    ended status, guarded so that a job that is running again is not queued twice."""
    update, queued = submission(job, f"rerun requested by {requested_by}", online, now, {
        "started_at": None, "finished_at": None, "result": None, "worker_losses": 0})
    update.only_from = ENDED
    return update, queued


def started(job: JobRecord | None, message: dict[str, Any], batched: bool) -> StatusUpdate | None:
    """A worker announced an attempt's start: RUNNING, unless the attempt is not ours now."""
    if job is None or task_key(job) != message.get("key"):
        return None  # a stale attempt
    if job.sweep_id is not None and not batched:
        return None  # a batch sent before a restart, still running somewhere: not ours
    at = datetime.fromtimestamp(message["at"], timezone.utc)
    worker = message.get("worker")
    return StatusUpdate(job.id, RUNNING, f"on {worker}", at, from_states(RUNNING),
                        {"worker": worker, "started_at": at})


# ---- judging outcomes -----------------------------------------------------------------------


def judge(outcome: Outcome, stopper: str | None) -> tuple[JobStatus | None, str | None]:
    """The status an outcome earns. None: the attempt ends with no outcome of its own,
    either retracted on purpose (no reason) or cut off from us (the reason to run again)."""
    if isinstance(outcome, dict):
        status, reason = JobStatus(outcome["status"]), outcome["reason"]
    elif isinstance(outcome, (asyncio.CancelledError, FutureCancelledError)):
        if stopper is None:
            return None, None  # retracted on purpose; a new attempt follows
        status, reason = STOPPED, stopper
    elif failures.runs_again(outcome):
        if stopper is not None:
            return STOPPED, stopper
        return None, f"{failures.describe(outcome)}; queued again"
    else:
        status, reason = FAILED, failures.describe(outcome)
    if stopper is not None and status == FAILED:
        status, reason = STOPPED, f"{stopper}; {reason}"
    return status, reason


def finish(
    job_id: str, current: JobStatus, status: JobStatus, reason: str | None, outcome: Outcome,
    now: datetime, final: bool = True,
) -> Decision:
    """RUNNING (if the start was never announced) then the end, with result and outputs;
    not `final`: a retry follows, whose outputs and result replace this attempt's."""
    outcome = outcome if isinstance(outcome, dict) else None
    result = result_from(outcome)
    fields: dict[str, Any] = {}
    passed = []
    if current == QUEUED and result.started_at is not None:
        # its start was never announced: record it with the end, in one change
        passed.append(StatusChange.model_construct(
            status=RUNNING, at=result.started_at, reason=f"on {result.worker}"))
        fields["started_at"] = result.started_at
    finished = result.finished_at or now
    if result.worker:
        fields["worker"] = result.worker
    guard = from_states(status, ACTIVE)
    if not final:
        return Decision([StatusUpdate(job_id, status, reason, finished, guard, fields, passed=passed)])
    fields.update(result=result, finished_at=finished)
    files = [FileEntry.model_construct(**f) for f in outcome.get("files", [])] if outcome else None
    if outcome:
        fields["attempt_bytes"] = sum(f.size for f in files or []) + outcome.get("log_bytes", 0)
    return Decision([StatusUpdate(job_id, status, reason, finished, guard, fields, files, passed)],
                    [ForgetStop(job_id)])


def killed_on(outcome: Outcome) -> str | None:
    """The worker named by a KilledWorker outcome: Dask gave up on the task when its worker
    died (it reruns nothing itself: the engine sets allowed_failures to 0). None otherwise."""
    if isinstance(outcome, BaseException) and failures.classify(outcome) == failures.Failure.WORKER_DIED:
        worker = getattr(outcome, "last_worker", None)  # a WorkerState, or its address
        return str(getattr(worker, "address", worker) or "a worker that died")
    return None


def outcome_of_job(
    job: JobRecord | None, key: str, outcome: Outcome, stopper: str | None, online: bool, now: datetime,
    worker_loss_retries: int = 3,
) -> Decision:
    """A single job's attempt ended: its end, a retry while its own retries last, a new
    attempt after a lost connection or worker, or nothing (retracted, stale, or already ended)."""
    if job is None or task_key(job) != key or job.status.is_terminal:
        return Decision()  # deleted, superseded by a newer attempt, or already stopped
    killed = killed_on(outcome)
    if killed is not None and stopper is None:
        return worker_lost_under_job(job, key, killed, worker_loss_retries, False, now)
    status, reason = judge(outcome, stopper)
    if status is None:
        if reason is not None and online:  # a lost connection: a new attempt now
            return Decision([], [FlagStale([key], "connection lost"), Submit(job, reason)])
        return Decision()  # retracted on purpose, or sent again once the scheduler is back
    if status == FAILED and own_failures(job) <= job.retries:
        return Decision([], [Submit(job, f"{reason}, retry {own_failures(job)}/{job.retries}")])
    return finish(job.id, job.status, status, reason, outcome, now)


def outcome_of_batched_job(
    job: JobRecord | None, key: str, outcome: Outcome, stopper: str | None, lost_worker: str | None,
    online: bool, now: datetime, worker_loss_retries: int = 3,
) -> Decision:
    """A single job's attempt that went in a batch ended: judged as a single job, except that a
    batch lost with its worker (cancelled by us) means the worker was lost under the job."""
    if lost_worker is not None and isinstance(outcome, BaseException) and stopper is None:
        return worker_lost_under_job(job, key, lost_worker, worker_loss_retries, False, now)
    return outcome_of_job(job, key, outcome, stopper, online, now, worker_loss_retries)


def cancelled_reason(outcome: Any, status: JobStatus, online: bool) -> str:
    if not online or getattr(outcome, "reason", None) == LOST_CONNECTION_REASON:
        return CONNECTION_LOST + (" (was RUNNING)" if status == RUNNING else "")
    return CANCELLED


def outcomes_of_batch(
    jobs: list[JobRecord], attempts: list[int], outcomes: list[Outcome] | BaseException,
    states: dict[str, tuple[JobStatus, int]], stoppers: dict[str, str], lost_worker: str | None,
    worker_loss_retries: int, online: bool, now: datetime,
) -> tuple[Decision, BatchReport]:
    """Every run of a finished batch judged, and what to tell the dispatcher feeding it.
    `states`: each run's (status, attempt) in the ledger now; a run whose attempt moved on or
    that ended already is left alone."""
    decision, report = Decision(), BatchReport()
    spans: list[tuple[float, float]] = []
    for position, (job, attempt) in enumerate(zip(jobs, attempts, strict=True)):
        outcome = outcomes[position] if isinstance(outcomes, list) else outcomes
        state = states.get(job.id)
        if state is None or state[0].is_terminal or state[1] != attempt:
            continue
        status, reason = judge(outcome, stoppers.get(job.id))
        lost = lost_worker if status is None else killed_on(outcome) if job.id not in stoppers else None
        if lost is not None:
            update = worker_lost(job, lost, worker_loss_retries, now)
            decision.updates.append(update)
            if update.status == QUEUED:
                report.requeued.append(job.model_copy(update={
                    "attempt": attempt, "worker_losses": update.fields["worker_losses"]}))
            else:
                report.failed += 1
            continue
        if status is None:  # cancelled, or cut off (a lost connection): run it again
            decision.updates.append(StatusUpdate(
                job.id, QUEUED, reason or cancelled_reason(outcome, state[0], online), now,
                from_states(QUEUED, ACTIVE), {"worker": None}))
            decision.instructions.append(MarkStale([task_key(job, attempt)]))  # in case its batch still runs
            report.requeued.append(job.model_copy(update={"attempt": attempt}))
            continue
        if isinstance(outcome, dict) and outcome.get("started_at") and outcome.get("finished_at"):
            spans.append((outcome["started_at"], outcome["finished_at"]))
        if status == FAILED and own_failures(job, attempt) <= job.retries:
            retry = f"{reason}, retry {own_failures(job, attempt)}/{job.retries}"
            decision.updates += finish(job.id, state[0], QUEUED, retry, outcome, now, final=False).updates
            report.requeued.append(job.model_copy(update={"attempt": attempt}))
            continue
        report.failed += status == FAILED
        ended = finish(job.id, state[0], status, reason, outcome, now)
        decision.updates += ended.updates
        decision.instructions += ended.instructions
    report.run_seconds = _seconds_per_run(spans)
    return decision, report


def run_seconds(outcomes: list[Outcome]) -> float | None:
    """Worker time per run of a batch's runs that ran (what sizes the next batches)."""
    return _seconds_per_run([(o["started_at"], o["finished_at"]) for o in outcomes
                             if isinstance(o, dict) and o.get("started_at") and o.get("finished_at")])


def _seconds_per_run(spans: list[tuple[float, float]]) -> float | None:
    if not spans:
        return None
    busy = max(end for _, end in spans) - min(start for start, _ in spans)
    return max(busy, 0.0) / len(spans)


def unrecordable(update: StatusUpdate, exc: BaseException, now: datetime) -> StatusUpdate:
    """A job whose outcome cannot be recorded ends FAILED saying why, rather than staying active."""
    return StatusUpdate(update.job_id, FAILED, f"{UNRECORDABLE}: {type(exc).__name__}: {exc}"[:500],
                        now, from_states(FAILED, ACTIVE), {"finished_at": now})


# ---- losing workers -------------------------------------------------------------------------


def worker_lost(job: JobRecord, worker: str, limit: int, now: datetime) -> StatusUpdate:
    """QUEUED for another attempt while the budget lasts, FAILED after; both say why."""
    losses = job.worker_losses + 1
    if losses <= limit:
        return StatusUpdate(job.id, QUEUED, f"worker lost ({worker}), retry {losses}/{limit}",
                            now, from_states(QUEUED, ACTIVE), {"worker": None, "worker_losses": losses})
    return StatusUpdate(job.id, FAILED, f"worker lost ({worker}), no retries left ({limit}/{limit})",
                        now, from_states(FAILED, ACTIVE), {"worker_losses": losses, "finished_at": now})


def worker_lost_under_job(
    job: JobRecord | None, key: str, worker: str, limit: int, stopping: bool, now: datetime,
) -> Decision:
    """The worker running a single job's attempt `key` left: a new attempt, or FAILED."""
    if job is None or job.status.is_terminal or task_key(job) != key:
        return Decision()
    if stopping:
        return Decision()  # being stopped anyway: the cancellation records STOPPED
    update = worker_lost(job, worker, limit, now)
    if update.status == QUEUED:
        return Decision([], [Submit(job, update.reason, {"worker_losses": update.fields["worker_losses"]})])
    return Decision([update])


# ---- stopping -------------------------------------------------------------------------------


def stop_reason(requested_by: str, reason: str | None = None) -> str:
    return reason or f"stop requested by {requested_by}"


def stop_saved(job: JobRecord, reason: str, now: datetime) -> StatusUpdate:
    """A job never submitted: the record alone stops it."""
    return StatusUpdate(job.id, STOPPED, reason, now, from_states(STOPPED, (CREATED,)))


def stop_live(
    job_id: str, status: JobStatus | None, has_future: bool, batched: bool, reason: str, now: datetime,
) -> Decision:
    """A submitted job asked to stop (its workers already told): STOPPED now where nothing
    of ours will report its end; otherwise its outcome reports STOPPED."""
    if status is None or not status.is_active or batched:
        return Decision()  # its batch skips it if not started, or reports it stopped: no guess here
    if status == QUEUED:
        return Decision([StatusUpdate(job_id, STOPPED, reason, now, from_states(STOPPED, (QUEUED,)),
                                      {"finished_at": now})],
                        [Cancel(job_id)] if has_future else [])
    if not has_future:  # nothing of ours runs it (e.g. its worker vanished while we were down)
        return Decision([StatusUpdate(job_id, STOPPED, reason, now, from_states(STOPPED, (RUNNING,)),
                                      {"finished_at": now})])
    return Decision()


def stop_unsent(job_ids: list[str], reason: str, now: datetime) -> list[StatusUpdate]:
    """QUEUED runs no Dask task holds yet: the record alone stops them."""
    guard = from_states(STOPPED, (QUEUED,))  # once: a stop may end a million runs
    return [StatusUpdate(job_id, STOPPED, reason, now, guard, {"finished_at": now}) for job_id in job_ids]


def settle_stop(job: JobRecord, stopper: str | None, now: datetime) -> Decision | None:
    """A job whose stop was asked for and whose attempt is gone ends STOPPED now."""
    if stopper is None:
        return None
    return Decision([StatusUpdate(job.id, STOPPED, stopper, now, from_states(STOPPED, ACTIVE),
                                  {"finished_at": now})], [ForgetStop(job.id)])


def rerun_as_set(job_ids: list[str], reason: str, now: datetime) -> list[StatusUpdate]:
    """Ended runs the ledger queued again as a set (run_sets.requeue_ended), as announced."""
    guard = from_states(QUEUED, ENDED)
    return [StatusUpdate(job_id, QUEUED, reason, now, guard, {}) for job_id in job_ids]


def fail(job_ids: list[str], reason: str, now: datetime) -> list[StatusUpdate]:
    """Runs whose batch broke in the orchestrator itself: failed, saying why."""
    guard = from_states(FAILED, ACTIVE)
    return [StatusUpdate(job_id, FAILED, reason, now, guard, {"finished_at": now}) for job_id in job_ids]


# ---- recovery -------------------------------------------------------------------------------


def requeue(jobs: list[JobRecord], reason: str, now: datetime) -> list[StatusUpdate]:
    """Active sweep runs whose batches were lost with us go back to QUEUED, saying so."""
    return [StatusUpdate(job.id, QUEUED, reason + was_running(job), now, from_states(QUEUED, ACTIVE),
                         {"worker": None}) for job in jobs]


def after_restart(job: JobRecord, held: bool, stopper: str | None, now: datetime) -> Decision:
    """An active job found at start: STOPPED if a stop was asked before the crash, else a
    new attempt (its future died with us). Sweep runs are resumed by their dispatchers."""
    if held:
        return Decision()
    settled = settle_stop(job, stopper, now)
    if settled is not None:
        return settled
    if job.sweep_id is not None:
        return Decision()
    return Decision([], [Submit(job, f"{RESTARTED}{was_running(job)}")])


def after_reconnect(
    job: JobRecord, held: bool, stopper: str | None, unsent_attempt: int | None, now: datetime,
) -> Decision:
    """An active single job after the connection came back: no live future holds it, so a
    new attempt (or the first sending of one queued while away); asked to stop: STOPPED."""
    if job.sweep_id is not None or held:
        return Decision()
    settled = settle_stop(job, stopper, now)
    if settled is not None:
        return settled
    if unsent_attempt == job.attempt and job.status == QUEUED:
        return Decision([], [Send(job)])
    stale = [MarkStale([task_key(job)])] if job.attempt > 0 else []
    return Decision([], [*stale, Submit(job, CONNECTION_LOST + was_running(job))])


# ---- results --------------------------------------------------------------------------------


def result_from(outcome: dict[str, Any] | None) -> JobResult:
    """Built without validation: the runner's outcome already has the right types."""
    if outcome is None:
        return JobResult()
    started_at, finished_at = outcome.get("started_at"), outcome.get("finished_at")
    return JobResult.model_construct(
        exit_code=outcome.get("exit_code"),
        outputs=outcome.get("outputs") or {},
        value=outcome.get("value"),
        started_at=_from_epoch(started_at),
        finished_at=_from_epoch(finished_at),
        duration_s=round(finished_at - started_at, 6) if started_at and finished_at else None,
        worker=outcome.get("worker"),
        error=outcome.get("error"),
    )


def _from_epoch(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, timezone.utc) if value else None

