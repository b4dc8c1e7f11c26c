"""The engine's decisions, without Dask or a store: plain records in, updates and
instructions out (orchestrator.server.decisions)."""

from __future__ import annotations

import asyncio
from datetime import datetime, timezone

import pytest
from distributed.client import FutureCancelledError
from distributed.comm import CommClosedError

from orchestrator.models import JobRecord, JobStatus, Resources
from orchestrator.server import decisions as d
from orchestrator.server.decisions import (
    ACTIVE,
    CONNECTION_LOST,
    MAY_FOLLOW,
    OFFLINE,
    UNFINISHED,
    FlagStale,
    ForgetStop,
    MarkStale,
    Send,
    Submit,
    task_key,
)

Q, R, C, F, S = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED
NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
LOST = CommClosedError("in <TCP ConnectionPool.gather>: ConnectionResetError: reset by peer")


def job(status: JobStatus = R, **fields) -> JobRecord:
    values = {"id": "j1", "name": "sim", "owner": "alice", "status": status, "command": "run",
              "resources": Resources(), "created_at": NOW, "attempt": 1,
              "worker": "tcp://w:1" if status == R else None, **fields}
    return JobRecord(**values)


def outcome(status: str = "COMPLETED", reason: str | None = "exit code 0", **more) -> dict:
    return {"status": status, "reason": reason, "exit_code": 0, "started_at": 100.0, "finished_at": 103.0,
            "worker": "tcp://w:1", "files": [], "log_bytes": 7, **more}


def guarded(update) -> None:
    """Every update a rule makes is allowed by the one table."""
    assert update.only_from is not None
    assert set(update.only_from) <= set(d.from_states(update.status)), update


# ---- the table ------------------------------------------------------------------------------


def test_the_table_names_every_status_and_ended_ones_lead_nowhere():
    assert set(MAY_FOLLOW) == set(JobStatus)
    for status in (C, F, S):
        assert not MAY_FOLLOW[status]
    assert ACTIVE == (Q, R) and UNFINISHED == (JobStatus.CREATED, Q, R)
    assert d.from_states(R) == (Q,)
    assert d.from_states(F) == ACTIVE and d.from_states(C) == ACTIVE
    assert d.from_states(S) == UNFINISHED
    assert d.from_states(Q, ACTIVE) == ACTIVE
    assert d.may_follow(JobStatus.CREATED, Q) and not d.may_follow(JobStatus.CREATED, R)
    assert not d.may_follow(C, Q)


# ---- submitting and starting ----------------------------------------------------------------


def test_submission_is_a_new_attempt():
    update, record = d.submission(job(JobStatus.CREATED, attempt=0), "why", True, NOW, {})
    assert (update.status, update.reason, update.only_from) == (Q, "why", None)
    assert update.fields == {"attempt": 1, "worker": None, "submitted_at": NOW}
    assert record.attempt == 1 and record.status == Q and record.status_reason == "why"


def test_submission_while_the_scheduler_is_away_says_so():
    update, _ = d.submission(job(Q, submitted_at=NOW), None, False, NOW, {"worker_losses": 1})
    assert update.reason == OFFLINE and "submitted_at" not in update.fields
    assert update.fields["worker_losses"] == 1
    assert d.submission(job(Q), "own reason", False, NOW, {})[0].reason == "own reason"


def test_a_start_is_recorded_only_for_the_current_attempt():
    record = job(Q)
    message = {"key": task_key(record), "worker": "tcp://w:2", "at": 100.0}
    update = d.started(record, message, batched=False)
    assert (update.status, update.reason, update.fields["worker"]) == (R, "on tcp://w:2", "tcp://w:2")
    guarded(update)
    assert d.started(record, {**message, "key": task_key(record, 0)}, batched=False) is None
    assert d.started(None, message, batched=False) is None
    run = job(Q, sweep_id="s1")
    assert d.started(run, {**message, "key": task_key(run)}, batched=False) is None  # not ours
    assert d.started(run, {**message, "key": task_key(run)}, batched=True) is not None


# ---- judging outcomes -----------------------------------------------------------------------


@pytest.mark.parametrize("given, stopper, expected", [
    (outcome(), None, (C, "exit code 0")),
    (outcome("FAILED", "exit code 3"), None, (F, "exit code 3")),
    (outcome("FAILED", "timeout after 600 s"), None, (F, "timeout after 600 s")),
    (outcome("FAILED", "exit code 3"), "stop requested by bob", (S, "stop requested by bob; exit code 3")),
    (outcome("STOPPED", "stop requested by bob"), "stop requested by bob", (S, "stop requested by bob")),
    (FutureCancelledError("k", "cancelled"), None, (None, None)),
    (asyncio.CancelledError(), "stop requested by bob", (S, "stop requested by bob")),
    (LOST, "stop requested by bob", (S, "stop requested by bob")),
    (ValueError("cannot unpickle"), None, (F, "error: ValueError: cannot unpickle")),
    (ValueError("boom"), "stop requested by bob", (S, "stop requested by bob; error: ValueError: boom")),
])
def test_judge(given, stopper, expected):
    assert d.judge(given, stopper) == expected


def test_a_lost_connection_is_no_outcome_but_a_reason_to_run_again():
    status, reason = d.judge(LOST, None)
    assert status is None and reason.startswith("connection lost: CommClosedError")
    assert reason.endswith("; queued again")


def test_a_completed_job_ends_with_its_result_and_forgets_its_stop():
    decision = d.outcome_of_job(job(R), task_key(job(R)), outcome(files=[{"path": "a", "size": 5}]),
                                None, True, NOW)
    [update] = decision.updates
    guarded(update)
    assert (update.status, update.reason) == (C, "exit code 0")
    assert update.fields["result"].exit_code == 0 and update.fields["result"].duration_s == 3.0
    assert update.fields["attempt_bytes"] == 12 and [f.path for f in update.files] == ["a"]
    assert update.at == update.fields["finished_at"] == datetime.fromtimestamp(103.0, timezone.utc)
    assert not update.passed  # its start was announced
    assert decision.instructions == [ForgetStop("j1")]


def test_an_unannounced_start_is_recorded_with_the_end():
    [update] = d.outcome_of_job(job(Q), task_key(job(Q)), outcome(), None, True, NOW).updates
    [passed] = update.passed
    assert (passed.status, passed.reason) == (R, "on tcp://w:1")
    assert update.fields["started_at"] == datetime.fromtimestamp(100.0, timezone.utc)


def test_a_failure_with_retries_left_is_a_new_attempt():
    record = job(R, retries=2)
    decision = d.outcome_of_job(record, task_key(record), outcome("FAILED", "exit code 3"), None, True, NOW)
    assert decision.updates == []
    assert decision.instructions == [Submit(record, "exit code 3, retry 1/2")]


def test_a_failure_without_retries_left_fails_for_good():
    record = job(R, attempt=3, retries=2)
    decision = d.outcome_of_job(record, task_key(record), outcome("FAILED", "exit code 3"), None, True, NOW)
    [update] = decision.updates
    assert (update.status, update.reason) == (F, "exit code 3")


def test_worker_losses_do_not_count_against_the_jobs_retries():
    record = job(R, attempt=3, retries=1, worker_losses=2)
    decision = d.outcome_of_job(record, task_key(record), outcome("FAILED", "exit code 3"), None, True, NOW)
    assert decision.instructions == [Submit(record, "exit code 3, retry 1/1")]


def test_a_stop_requested_while_a_failure_arrives_is_stopped_with_both_reasons():
    record = job(R, retries=5)  # retries left, but stopping wins
    decision = d.outcome_of_job(record, task_key(record), outcome("FAILED", "exit code 9"),
                                "stop requested by bob", True, NOW)
    [update] = decision.updates
    assert (update.status, update.reason) == (S, "stop requested by bob; exit code 9")


def test_a_lost_connection_runs_again_at_once_when_online():
    record = job(R)
    decision = d.outcome_of_job(record, task_key(record), LOST, None, True, NOW)
    assert decision.updates == []
    flag, submit = decision.instructions
    assert flag == FlagStale([task_key(record)], "connection lost")
    assert submit.job == record and submit.reason.startswith("connection lost: CommClosedError")
    assert submit.reason.endswith("; queued again")
    # offline: sent again by the reconnection
    assert d.outcome_of_job(record, task_key(record), LOST, None, False, NOW) == d.Decision()


def test_a_retracted_attempt_records_nothing():
    record = job(Q)
    cancelled = FutureCancelledError(task_key(record), "cancelled")
    assert d.outcome_of_job(record, task_key(record), cancelled, None, True, NOW) == d.Decision()


@pytest.mark.parametrize("record, key", [
    (None, "sim-1-j1"),
    (job(R), "sim-0-j1"),  # superseded by a newer attempt
    (job(S), "sim-1-j1"),  # already stopped
])
def test_an_outcome_that_is_not_current_is_ignored(record, key):
    assert d.outcome_of_job(record, key, outcome(), None, True, NOW) == d.Decision()


# ---- batches --------------------------------------------------------------------------------


def _batch(outcomes, *, jobs=None, states=None, stoppers=None, lost=None, online=True, limit=3):
    jobs = jobs or [job(Q, id="a", attempt=0), job(Q, id="b", attempt=0, retries=1)]
    attempts = [j.attempt + 1 for j in jobs]
    states = states if states is not None else {j.id: (Q, a) for j, a in zip(jobs, attempts, strict=True)}
    return d.outcomes_of_batch(jobs, attempts, outcomes, states, stoppers or {}, lost, limit, online, NOW)


def test_a_batch_records_each_run_and_reports_to_its_feeder():
    decision, report = _batch([outcome(), outcome("FAILED", "exit code 1")])
    done, retry = decision.updates
    assert (done.status, retry.status, retry.reason) == (C, Q, "exit code 1, retry 1/1")
    assert "result" not in retry.fields  # a retry follows: its result replaces this one
    assert [j.id for j in report.requeued] == ["b"] and report.requeued[0].attempt == 1
    assert report.failed == 0 and report.run_seconds == 1.5
    assert decision.instructions == [ForgetStop("a")]
    for update in decision.updates:
        guarded(update)


def test_a_batch_counts_runs_failed_for_good():
    jobs = [job(Q, id="a", attempt=0)]
    decision, report = _batch([outcome("FAILED", "exit code 1")], jobs=jobs)
    assert report.failed == 1 and decision.updates[0].status == F


def test_a_batch_cut_off_requeues_its_runs():
    decision, report = _batch(LOST)
    assert [u.status for u in decision.updates] == [Q, Q]
    assert all(u.reason.startswith("connection lost: CommClosedError") for u in decision.updates)
    assert sorted(j.id for j in report.requeued) == ["a", "b"] and report.failed == 0
    assert decision.instructions == [MarkStale(["sim-1-a"]), MarkStale(["sim-1-b"])]


@pytest.mark.parametrize("cancel, online, status, reason", [
    (FutureCancelledError("k", "cancelled"), True, Q, "its Dask task was cancelled; queued again"),
    (FutureCancelledError("k", "cancelled"), False, Q, CONNECTION_LOST),
    (FutureCancelledError("k", d.LOST_CONNECTION_REASON), True, R, CONNECTION_LOST + " (was RUNNING)"),
])
def test_a_cancelled_batch_says_why_its_runs_run_again(cancel, online, status, reason):
    jobs = [job(Q, id="a", attempt=0)]
    decision, _ = _batch(cancel, jobs=jobs, states={"a": (status, 1)}, online=online)
    assert decision.updates[0].reason == reason


def test_a_batch_whose_worker_was_lost_counts_the_loss():
    jobs = [job(Q, id="a", attempt=0), job(Q, id="b", attempt=0, worker_losses=1)]
    decision, report = _batch(FutureCancelledError("k", "x"), jobs=jobs, lost="tcp://w:9", limit=1)
    again, failed = decision.updates
    assert (again.status, again.reason) == (Q, "worker lost (tcp://w:9), retry 1/1")
    assert (failed.status, failed.reason) == (F, "worker lost (tcp://w:9), no retries left (1/1)")
    assert [j.worker_losses for j in report.requeued] == [1] and report.failed == 1


def test_a_batch_leaves_runs_that_moved_on_alone():
    decision, report = _batch([outcome(), outcome()], states={"a": (S, 1), "b": (Q, 5)})
    assert decision.updates == [] and report.requeued == [] and report.run_seconds is None


def test_a_batch_run_asked_to_stop_ends_stopped():
    decision, _ = _batch(FutureCancelledError("k", "x"), stoppers={"a": "stop requested by bob"})
    stopped, again = decision.updates
    assert (stopped.status, stopped.reason) == (S, "stop requested by bob")
    assert again.status == Q


def test_an_unrecordable_outcome_fails_saying_why():
    update = d.unrecordable(d.fail(["a"], "x", NOW)[0], ValueError("disk"), NOW)
    assert (update.status, update.reason) == (F, "its outcome could not be recorded: ValueError: disk")
    guarded(update)


# ---- losing workers -------------------------------------------------------------------------


def test_a_worker_loss_is_a_new_attempt_while_the_budget_lasts():
    record = job(R, worker_losses=1)
    decision = d.worker_lost_under_job(record, task_key(record), "tcp://w:1", 3, False, NOW)
    assert decision.instructions == [Submit(record, "worker lost (tcp://w:1), retry 2/3", {"worker_losses": 2})]


def test_a_worker_loss_past_the_budget_fails():
    record = job(R, worker_losses=3)
    [update] = d.worker_lost_under_job(record, task_key(record), "tcp://w:1", 3, False, NOW).updates
    assert (update.status, update.reason) == (F, "worker lost (tcp://w:1), no retries left (3/3)")
    assert update.fields == {"worker_losses": 4, "finished_at": NOW}
    guarded(update)


def test_a_worker_loss_under_a_job_being_stopped_or_gone_decides_nothing():
    record = job(R)
    assert d.worker_lost_under_job(record, task_key(record), "w", 3, True, NOW) == d.Decision()
    assert d.worker_lost_under_job(record, "other-key", "w", 3, False, NOW) == d.Decision()
    assert d.worker_lost_under_job(job(C), task_key(job(C)), "w", 3, False, NOW) == d.Decision()


# ---- stopping -------------------------------------------------------------------------------


def test_stop_reasons():
    assert d.stop_reason("bob") == "stop requested by bob"
    assert d.stop_reason("bob", "sweep stopped") == "sweep stopped"


def test_a_saved_job_is_stopped_by_its_record():
    update = d.stop_saved(job(JobStatus.CREATED), "stop requested by bob", NOW)
    assert (update.status, update.only_from) == (S, (JobStatus.CREATED,))


def test_stopping_a_queued_job_cancels_its_future_and_records_stopped():
    decision = d.stop_live("j1", Q, True, False, "stop requested by bob", NOW)
    [update] = decision.updates
    assert (update.status, update.reason, update.only_from) == (S, "stop requested by bob", (Q,))
    assert decision.instructions == [d.Cancel("j1")]
    assert d.stop_live("j1", Q, False, False, "r", NOW).instructions == []


def test_stopping_a_running_job_waits_for_its_outcome_unless_nothing_runs_it():
    assert d.stop_live("j1", R, True, False, "r", NOW) == d.Decision()
    [update] = d.stop_live("j1", R, False, False, "r", NOW).updates
    assert (update.status, update.only_from) == (S, (R,))


def test_stopping_a_batched_or_ended_run_records_nothing_now():
    assert d.stop_live("j1", Q, False, True, "r", NOW) == d.Decision()
    assert d.stop_live("j1", C, False, False, "r", NOW) == d.Decision()
    assert d.stop_live("j1", None, False, False, "r", NOW) == d.Decision()


def test_stopping_unsent_runs_and_failing_active_ones():
    [stopped] = d.stop_unsent(["a"], "sweep stopped", NOW)
    assert (stopped.status, stopped.only_from) == (S, (Q,))
    [failed] = d.fail(["a"], "secrets unreadable", NOW)
    assert (failed.status, failed.reason, failed.only_from) == (F, "secrets unreadable", ACTIVE)


# ---- recovery -------------------------------------------------------------------------------


def test_after_a_restart_an_active_job_is_resubmitted_saying_where_it_ran():
    decision = d.after_restart(job(R, worker="tcp://w:3"), False, None, NOW)
    assert decision.instructions == [
        Submit(job(R, worker="tcp://w:3"), "resubmitted after orchestrator restart (was RUNNING on tcp://w:3)")]
    assert d.after_restart(job(Q), False, None, NOW).instructions[0].reason == \
        "resubmitted after orchestrator restart"


def test_a_stop_requested_before_a_crash_ends_stopped_after_it():
    decision = d.after_restart(job(R, sweep_id="s1"), False, "stop requested by bob", NOW)
    [update] = decision.updates
    assert (update.status, update.reason) == (S, "stop requested by bob")
    assert decision.instructions == [ForgetStop("j1")]
    guarded(update)


def test_after_a_restart_sweep_runs_and_held_jobs_are_left_to_others():
    assert d.after_restart(job(R, sweep_id="s1"), False, None, NOW) == d.Decision()
    assert d.after_restart(job(R), True, "stop requested by bob", NOW) == d.Decision()


def test_after_a_reconnection_lost_work_is_sent_again():
    record = job(R, worker="tcp://w:3")
    decision = d.after_reconnect(record, False, None, None, NOW)
    assert decision.instructions == [MarkStale([task_key(record)]),
                                     Submit(record, CONNECTION_LOST + " (was RUNNING on tcp://w:3)")]
    unsent = job(Q)
    assert d.after_reconnect(unsent, False, None, 1, NOW).instructions == [Send(unsent)]
    never_sent = job(Q, attempt=0)
    assert d.after_reconnect(never_sent, False, None, None, NOW).instructions == [
        Submit(never_sent, CONNECTION_LOST)]


def test_after_a_reconnection_a_stop_asked_while_away_is_settled():
    [update] = d.after_reconnect(job(Q), False, "stop requested by bob", 1, NOW).updates
    assert update.status == S
    assert d.after_reconnect(job(Q), True, None, None, NOW) == d.Decision()
    assert d.after_reconnect(job(Q, sweep_id="s"), False, None, None, NOW) == d.Decision()


def test_requeued_sweep_runs_say_where_they_ran():
    running, queued = job(R, id="a", worker="tcp://w:3"), job(Q, id="b")
    first, second = d.requeue([running, queued], "resubmitted after orchestrator restart", NOW)
    assert first.reason == "resubmitted after orchestrator restart (was RUNNING on tcp://w:3)"
    assert second.reason == "resubmitted after orchestrator restart"
    assert first.fields == {"worker": None} and first.only_from == ACTIVE


# ---- keys -----------------------------------------------------------------------------------


def test_keys_name_the_attempt():
    assert task_key(job(R, name="my sim!")) == "my_sim-1-j1"
    assert task_key(job(R, name="!!"), 4) == "job-4-j1"
    assert d.batch_key("sweep one", 2, "s1") == "sweep_one-b2-s1"


# ---- the recorder and its status bus ---------------------------------------------------------


class FakeStore:
    """Records what it is given; the first update of each call changes, the rest as told."""

    def __init__(self, made=None):
        self.recorded: list = []
        self.made = made

    def record_statuses(self, updates):
        self.recorded += updates
        return self.made or [True] * len(updates)

    def get_job(self, job_id):
        return job(R, id=job_id)


def test_one_failing_subscriber_does_not_stop_the_others():
    from orchestrator.server.recorder import Recorder, StatusBus, Waiters

    spawned, seen = [], []
    bus = StatusBus(spawned.append)

    def broken(*args):
        raise RuntimeError("subscriber bug")

    bus.listeners += [broken, lambda record, change: seen.append(("listener", record.id, change.status))]
    bus.update_hooks += [broken, lambda update: seen.append(("hook", update.job_id))]
    bus.on_finished += [broken, lambda ids: seen.append(("finished", ids))]
    store = FakeStore()
    recorder = Recorder(store, bus, Waiters())
    made = recorder.apply(d.fail(["a", "b"], "r", NOW) + d.requeue([job(R, id="c")], "again", NOW))
    assert made == [True, True, True] and len(store.recorded) == 3
    assert seen == [("listener", "a", F), ("hook", "a"), ("listener", "b", F), ("hook", "b"),
                    ("listener", "c", Q), ("hook", "c"), ("finished", ["a", "b"])]


def test_the_recorder_tells_only_of_what_changed_and_records_the_unrecordable():
    from orchestrator.server.recorder import Recorder, StatusBus, Waiters

    seen = []
    bus = StatusBus(lambda coroutine: None)
    bus.update_hooks.append(lambda update: seen.append((update.job_id, update.status)))
    assert Recorder(FakeStore(made=[False, True]), bus, Waiters()).apply(d.fail(["a", "b"], "r", NOW)) == [False, True]
    assert seen == [("b", F)]

    class Failing(FakeStore):
        def record_statuses(self, updates):
            if any(u.job_id == "bad" and u.reason == "r" for u in updates):
                raise ValueError("disk")
            return super().record_statuses(updates)

    store = Failing()
    Recorder(store, StatusBus(lambda coroutine: None), Waiters()).apply_each(d.fail(["ok", "bad"], "r", NOW))
    assert [(u.job_id, u.reason) for u in store.recorded] == [
        ("ok", "r"), ("bad", "its outcome could not be recorded: ValueError: disk")]


# ---- placement ------------------------------------------------------------------------------


def test_placement_refusals_say_what_is_missing():
    from orchestrator.errors import ValidationFailed
    from orchestrator.server.placement import fits_any, refusal

    offers = [{"CPU": 4, "GPU": 1}, {"CPU": 16}]
    assert fits_any({"CPU": 8}, offers) and not fits_any({"CPU": 8, "GPU": 1}, offers)
    assert refusal({"GPU": 2}, offers, can_grow=True) == \
        "waiting for a worker offering 2 GPU (the most any worker offers is 1 GPU; the cluster can grow)"
    assert refusal({"GPU": 2}, [], can_grow=True) == \
        "waiting for a worker offering 2 GPU (no worker is connected; the cluster can grow)"
    assert refusal({"CPU": 1}, [], can_grow=False) == d.NO_WORKER
    with pytest.raises(ValidationFailed) as refused:
        refusal({"GPU": 2}, offers, can_grow=False)
    assert refused.value.fields == {"resources.gpus": "no worker offers 2 GPU; the most is 1"}
    with pytest.raises(ValidationFailed) as refused:
        refusal({"CPU": 8, "GPU": 1}, offers, can_grow=False)
    assert refused.value.fields == {"resources": "no single worker offers all of these together"}
