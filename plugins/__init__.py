"""Dask scheduler and worker plugins of the orchestrator."""

from orchestrator.plugins.worker import OrchestratorWorkerPlugin, job_processes, request_stop

__all__ = ["OrchestratorWorkerPlugin", "job_processes", "request_stop"]
