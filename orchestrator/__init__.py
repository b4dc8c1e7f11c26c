"""dask-orchestrator: jobs and parameter sweeps on a Dask cluster, over REST, Python and a CLI.

Public names load on first use (PEP 562): a worker that unpickles a task imports
`orchestrator.worker.runner`, and must not pay for the API, the ledger and the engine with it.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

_SOURCES = {
    "Job": "orchestrator.client", "Orchestrator": "orchestrator.client",
    "Settings": "orchestrator.config",
    "frange": "orchestrator.doe", "linspace": "orchestrator.doe", "lognormal": "orchestrator.doe",
    "normal": "orchestrator.doe", "triangular": "orchestrator.doe", "uniform": "orchestrator.doe",
    "values": "orchestrator.doe", "loguniform": "orchestrator.doe", "logspace": "orchestrator.doe",
    "integer": "orchestrator.doe", "choice": "orchestrator.doe", "constant": "orchestrator.doe",
    "ChecksumMismatch": "orchestrator.errors", "Conflict": "orchestrator.errors",
    "JobFailed": "orchestrator.errors", "NotFound": "orchestrator.errors",
    "OrchestratorError": "orchestrator.errors", "PayloadTooLarge": "orchestrator.errors",
    "StorageUnavailable": "orchestrator.errors", "ValidationFailed": "orchestrator.errors",
    "JobRecord": "orchestrator.models", "JobResult": "orchestrator.models",
    "JobStatus": "orchestrator.models", "Resources": "orchestrator.models",
    "Sweep": "orchestrator.client.sweeps", "JobTypes": "orchestrator.client.job_types",
    "Forbidden": "orchestrator.errors",
    "JobTypeDetails": "orchestrator.jobtypes.records", "JobTypeRevision": "orchestrator.jobtypes.records",
    "JobTypeSummary": "orchestrator.jobtypes.records", "ValidationResult": "orchestrator.jobtypes.records",
    "DryRun": "orchestrator.sweep_models", "SweepRecord": "orchestrator.sweep_models",
    "assigned_gpus": "orchestrator.plugins.worker", "get_client": "orchestrator.jobclient",
}
__all__ = sorted(_SOURCES)


def __getattr__(name: str) -> Any:
    if name not in _SOURCES:
        raise AttributeError(f"module 'orchestrator' has no attribute {name!r}")
    value = getattr(importlib.import_module(_SOURCES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def _from_a_checkout() -> None:
    """Installed, storage/ and plugins/ live inside this package (pyproject's package-dir);
    run from a checkout (the tests, `python -m orchestrator.cli`), they are found beside it."""
    root = Path(__file__).resolve().parent.parent
    if (root / "pyproject.toml").is_file() and (root / "storage" / "__init__.py").is_file():
        __path__.append(str(root))  # noqa: F821 - the package's own __path__


_from_a_checkout()
