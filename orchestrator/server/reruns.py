"""Finishing what failed or stopped: an ended job, or a sweep's ended runs, run again as new
attempts under the same ids (their histories say `QUEUED: rerun requested by USER`), and
deleting a whole sweep. The attempt a rerun replaces keeps its outputs and logs, copied to
`jobs/<id>/attempts/<n>/` before the new attempt clears them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from pydantic import Field

from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.models import JobRecord, JobStatus, Request
from orchestrator.server import run_sets
from orchestrator.server.auth import Principal
from orchestrator.server.decisions import ACTIVE, ENDED
from orchestrator.server.ledger import sweep_runs
from orchestrator.storage import Storage, layout
from orchestrator.sweep_models import SweepRecord

logger = logging.getLogger(__name__)


class SweepRerun(Request):
    """Which of a sweep's ended runs run again: by status (default FAILED and STOPPED, which
    includes the runs a stop kept from starting), or by id."""

    status: list[JobStatus] | None = Field(None, max_length=3, description="default: FAILED and STOPPED")
    ids: list[str] | None = Field(None, max_length=1_000_000, description="runs of the sweep, by id")


def archive_attempts(storage: Storage, attempts: Iterable[tuple[str, int]]) -> None:
    """Keep each job's current attempt's outputs and logs, (job id, attempt), before a rerun
    clears them."""
    for job_id, attempt in attempts:
        if attempt < 1:
            continue
        kept = layout.attempt_prefix(job_id, attempt)
        storage.copy_prefix(layout.outputs_prefix(job_id), kept + "outputs")
        storage.copy_prefix(layout.logs_prefix(job_id), kept + "logs")


async def rerun_job(service, job_id: str, requested_by: str, viewer: Principal | None) -> JobRecord:
    """POST /jobs/{id}/rerun: a sweep's run reruns through its sweep (which stages its files)."""
    job = service.jobs.get(job_id, viewer, change=True)
    if not job.status.is_terminal:
        raise Conflict(f"job {job_id} is {job.status.value}; only an ended job can be rerun")
    if job.sweep_id is not None:
        await rerun_sweep(service, job.sweep_id, SweepRerun(ids=[job_id]), requested_by, None)
        return service.jobs.get(job_id)
    await asyncio.to_thread(archive_attempts, service.storage, [(job.id, job.attempt)])
    if service.engine.rerun(job, requested_by) is None:
        raise Conflict(f"job {job_id} is running again already")
    return service.jobs.get(job_id)


async def rerun_sweep(
    service, sweep_id: str, request: SweepRerun, requested_by: str, owner: str | None,
) -> SweepRecord:
    """Run a sweep's chosen ended runs again; a stopped sweep resumes. Chosen by status, they
    are queued again as a set (a million stopped runs never become a million records)."""
    sweeps = service.sweeps
    sweeps.get(sweep_id, owner)
    if request.ids is not None:
        runs = _chosen_runs(service, sweep_id, request.ids)
        await asyncio.to_thread(archive_attempts, service.storage, [(run.id, run.attempt) for run in runs])
        queued = service.engine.requeue_ended(runs, requested_by)
        feed: list[JobRecord] | None = queued
    else:
        statuses = request.status or [JobStatus.FAILED, JobStatus.STOPPED]
        if any(status not in ENDED for status in statuses):
            raise ValidationFailed("only ended runs can be rerun", {"status": "COMPLETED, FAILED or STOPPED"})
        async for attempts in run_sets.sent_attempts(service.store, sweep_id, statuses):
            await asyncio.to_thread(archive_attempts, service.storage, attempts)
        queued = await run_sets.requeue_ended(service.store, service.engine.recorder, sweep_id, statuses,
                                              f"rerun requested by {requested_by}")
        feed = None  # queued in the ledger as a set: the dispatcher reads them there
    service.store.clear_sweep_stop_reason(sweep_id)
    if queued:
        sweeps.feed(sweep_id, feed)
    return sweeps.get(sweep_id)


def _chosen_runs(service, sweep_id: str, ids: list[str]) -> list[JobRecord]:
    _, runs = service.store.list_jobs(sweep_id=sweep_id, ids=ids, limit=None)
    unknown = sorted(set(ids) - {run.id for run in runs})
    if unknown:
        raise ValidationFailed(f"not runs of sweep {sweep_id}: {', '.join(unknown[:5])}",
                               {"ids": f"{unknown[0]} is not a run of sweep {sweep_id}"})
    active = [run.id for run in runs if not run.status.is_terminal]
    if active:
        raise Conflict(f"runs still active: {', '.join(active[:5])}; only ended runs can be rerun")
    return runs


async def delete_sweep(service, sweep_id: str, stop: bool, requested_by: str, owner: str | None) -> bool:
    """Delete the sweep with its runs and files now (True); with `stop`, an active sweep is
    stopped first and deleted once every run has ended (False)."""
    service.sweeps.get(sweep_id, owner)
    counts = service.store.sweep_counts(sweep_id)  # kept counts: no run read
    active = sum(counts.get(status.value, 0) for status in ACTIVE)
    if active and not stop:
        raise Conflict(f"sweep {sweep_id} has {active} active runs; stop it first or pass stop=true")
    if not active:
        await _remove_sweep(service, sweep_id)
        return True
    await service.sweeps.stop(sweep_id, requested_by, owner)
    service.engine.background(_remove_when_ended(service, sweep_id))
    return False


async def _remove_when_ended(service, sweep_id: str) -> None:
    await service.sweeps.wait(sweep_id, None)
    await _remove_sweep(service, sweep_id)


async def _remove_sweep(service, sweep_id: str) -> None:
    """Its runs a chunk per transaction, in a thread (the API keeps answering while a million
    go), each chunk's files first; then the sweep's own files and row. Interrupted, the sweep
    is still there with the runs left, and deleting it again goes on."""
    store, storage, removed, sizer = service.store, service.storage, 0, run_sets.ChunkSizer()
    while True:
        seqs, with_files = await asyncio.to_thread(sweep_runs.runs_to_delete, store, sweep_id, sizer.size)
        if not seqs:
            break
        await asyncio.to_thread(_delete_run_files, storage, with_files)
        with sizer.timed():  # the transaction only: files are not the writer's time
            await asyncio.to_thread(sweep_runs.delete_runs, store, sweep_id, seqs)
        removed += len(seqs)
    await asyncio.to_thread(storage.delete_prefix, layout.sweep_prefix(sweep_id))
    store.delete_sweep(sweep_id)
    logger.info("sweep %s deleted with its %d runs", sweep_id, removed)


def _delete_run_files(storage: Storage, run_ids: list[str]) -> None:
    for run_id in run_ids:
        storage.delete_prefix(layout.job_prefix(run_id))
