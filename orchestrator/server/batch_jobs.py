"""Batch-system jobs of the cluster's workers survive the orchestrator: recorded in the ledger
as they are submitted, so that jobs a killed orchestrator left pending (or running, unable to
reach a dead scheduler) are cancelled when it starts again, with the batch system's own
cancel command (scancel, qdel, bkill, condor_rm)."""

from __future__ import annotations

import logging
import shlex
import subprocess
from typing import Any

from orchestrator.server.ledger import Store

logger = logging.getLogger(__name__)
CANCEL_TIMEOUT_S = 30.0


def cancel_leftovers(store: Store) -> list[str]:
    """Cancel the batch jobs a previous run of the orchestrator left; their ids."""
    leftovers = store.batch_jobs()
    for job_id, command in leftovers:
        try:
            done = subprocess.run([*shlex.split(command), job_id], capture_output=True, text=True,
                                  timeout=CANCEL_TIMEOUT_S, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            logger.warning("could not cancel batch job %s left by the previous run: %s", job_id, exc)
            continue
        if done.returncode != 0:  # already gone, mostly: nothing holds it any more
            logger.info("%s %s: %s", command, job_id, (done.stderr or done.stdout).strip()[:300])
        store.forget_batch_job(job_id)
    if leftovers:
        logger.warning("cancelled %d batch jobs left by the orchestrator's previous run: %s",
                       len(leftovers), ", ".join(job_id for job_id, _ in leftovers))
    return [job_id for job_id, _ in leftovers]


def record(store: Store, batch_jobs: Any) -> None:
    """Follow a batch-system cluster's worker jobs (orchestrator.clusters.BatchJobs) in the ledger."""
    batch_jobs.attach(lambda job_id: store.record_batch_job(job_id, batch_jobs.cancel_command),
                      store.forget_batch_job)
