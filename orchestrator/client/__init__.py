"""The Python API, what runs in a user's process: the `Orchestrator` facade, the handles it
returns (`Job`, `Sweep`), and its two backends (REST through httpx, or embedded: a whole
orchestrator in this process). Nothing here runs on a worker."""

from orchestrator.client.backend import Job
from orchestrator.client.facade import Orchestrator
from orchestrator.client.remote import RemoteBackend
from orchestrator.client.sweeps import Sweep

__all__ = ["Job", "Orchestrator", "RemoteBackend", "Sweep"]
