"""dask-orchestrator: jobs and parameter sweeps on a Dask cluster, over REST, Python and a CLI."""

from orchestrator.client import Job, Orchestrator
from orchestrator.config import Settings
from orchestrator.errors import (
    Conflict,
    JobFailed,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    StorageUnavailable,
    ValidationFailed,
)
from orchestrator.models import JobRecord, JobResult, JobStatus, Resources

__all__ = [
    "Conflict",
    "Job",
    "JobFailed",
    "JobRecord",
    "JobResult",
    "JobStatus",
    "NotFound",
    "Orchestrator",
    "OrchestratorError",
    "PayloadTooLarge",
    "Resources",
    "Settings",
    "StorageUnavailable",
    "ValidationFailed",
]
