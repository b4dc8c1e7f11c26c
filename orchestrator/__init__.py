"""dask-orchestrator: jobs and parameter sweeps on a Dask cluster, over REST, Python and a CLI."""

from orchestrator.client import Job, Orchestrator
from orchestrator.config import Settings
from orchestrator.doe import frange, linspace, lognormal, normal, triangular, uniform, values
from orchestrator.errors import (
    ChecksumMismatch,
    Conflict,
    JobFailed,
    NotFound,
    OrchestratorError,
    PayloadTooLarge,
    StorageUnavailable,
    ValidationFailed,
)
from orchestrator.models import JobRecord, JobResult, JobStatus, Resources
from orchestrator.sweep_client import Sweep
from orchestrator.sweeps import DryRun, SweepRecord
from plugins.worker import assigned_gpus

__all__ = [
    "assigned_gpus",
    "ChecksumMismatch",
    "Conflict",
    "DryRun",
    "Sweep",
    "SweepRecord",
    "frange",
    "linspace",
    "lognormal",
    "normal",
    "triangular",
    "uniform",
    "values",
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
