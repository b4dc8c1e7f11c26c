"""Running again what was lost: work under a worker that left, everything after a
reconnection to the scheduler, and everything after a restart of the orchestrator.

A mixin of Engine (it uses the engine's store, client, futures and recorder); what each
loss means for a job is decided by orchestrator.server.decisions.
"""

from __future__ import annotations

import contextlib
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.models import JobRecord, utcnow
from orchestrator.plugins.worker import end_orphans, stale_attempt
from orchestrator.server import decisions
from orchestrator.server.decisions import ACTIVE, NO_WORKER, task_key

WAITING_REASONS = ("waiting for a worker", NO_WORKER)  # what a QUEUED job says while none fits
WORKER_FITS = "a worker that fits is connected; waiting for the scheduler to start it"


class Recovery:
    """Uses the engine's store, client, online, worker_loss_retries, _futures, _batched, _batch_futures,
    _lost_batches, _stop_requests, _unsent, _stale_keys, _carry_out, _spawn, _cancel and
    _flag_on_workers."""

    # ---- losing workers ---------------------------------------------------------------

    def _on_cluster_event(self, event: tuple[float, dict[str, Any]]) -> None:
        _, message = event
        if message.get("action") in ("add-worker", "remove-worker"):
            self._spawn(self._refresh_waiting())
        if message.get("action") != "remove-worker":
            return
        # Results computed there but not yet collected are lost too, and Dask would compute
        # them again under the same key: the same attempt would run twice, unrecorded.
        keys = {*message.get("processing-tasks", ()), *message.get("lost-computed-tasks", ())}
        if keys:
            self._spawn(self._worker_lost(message["worker"], keys))

    async def _refresh_waiting(self) -> None:
        """Single jobs told they wait for a worker say what holds now that workers came or went
        (the reason given at submission would otherwise stand for ever)."""
        for job in self.store.queued_waiting(WAITING_REASONS):
            try:
                reason = await self.placer.placement(job.resources) or WORKER_FITS
            except ValidationFailed as exc:  # a fixed cluster lost the only worker that fitted
                reason = exc.message
            if reason != job.status_reason:
                self.store.update_job(job.id, status_reason=reason)

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
            self._carry_out(decisions.worker_lost_under_job(
                self.store.get_job(job_id), future.key, worker, self.worker_loss_retries,
                job_id in self._stop_requests, utcnow()))
        stale = [f.key for f in singles.values()] + [k for _, run_keys in batches.values() for k in run_keys]
        await self._flag_on_workers(stale, stale_attempt(f"{worker} lost"))
        await self._cancel([*singles.values(), *(future for future, _ in batches.values())])

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
        for job in self.store.jobs_with_status(list(ACTIVE), singles=True):  # runs: their batches
            self._carry_out(decisions.after_reconnect(
                job, self._holds(job), self._stop_requests.get(job.id), self._unsent.pop(job.id, None),
                utcnow()))
        self._unsent.clear()

    def _holds(self, job: JobRecord) -> bool:
        """A live future (sent on this connection) runs the job's current attempt, alone or in
        a batch."""
        key = task_key(job)
        future = self._futures.get(job.id)
        if future is not None:
            return not future.cancelled() and future.key == key
        future, run_keys = self._batch_futures.get(self._batched.get(job.id, ""), (None, []))
        return future is not None and not future.cancelled() and key in run_keys

    async def recover(self) -> None:
        """Reconcile what the store says is active with what the user wants: a job asked to
        stop ends STOPPED, the rest is resubmitted (the futures died with us). Processes an
        earlier life left behind (a job runs in its own session, so it outlives a worker
        killed with us) are ended first, found by their marker."""
        active = self.store.active_to_recover()
        if self.online and (keys := [task_key(job) for job in active if job.attempt > 0]):
            with contextlib.suppress(Exception):
                await self.client.run(end_orphans, keys, on_error="ignore")
        for job in active:
            self._carry_out(decisions.after_restart(
                job, job.id in self._futures, self._stop_requests.get(job.id), utcnow()))
