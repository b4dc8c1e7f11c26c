"""The Dask cluster behind the orchestrator: an embedded LocalCluster, or an existing one.

Only what this module started is closed at shutdown: an external scheduler keeps running.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import dask
from distributed import Client, LocalCluster

from orchestrator.config import Settings, machine_resources

logger = logging.getLogger(__name__)

# Measured in FACTS.md: the default queuing costs ~3x per-task overhead on tiny tasks, and
# orchestrator tasks carry resource restrictions that bound concurrency anyway.
DASK_CONFIG = {"distributed.scheduler.worker-saturation": float("inf")}


@dataclass
class ClusterConnection:
    client: Client
    cluster: LocalCluster | None
    dashboard_link: str | None

    async def close(self) -> None:
        await self.client.close()
        if self.cluster is not None:
            await self.cluster.close()


async def connect(settings: Settings) -> ClusterConnection:
    """Start the embedded cluster, or connect to `settings.scheduler`."""
    if settings.scheduler:
        client = await Client(settings.scheduler, asynchronous=True)
        return ClusterConnection(client, None, client.dashboard_link)
    with dask.config.set(DASK_CONFIG):
        cluster = await LocalCluster(**embedded_cluster_options(settings), asynchronous=True)
    client = await Client(cluster, asynchronous=True)
    return ClusterConnection(client, cluster, cluster.dashboard_link)


def embedded_cluster_options(settings: Settings) -> dict[str, Any]:
    """Worker processes that together declare what this machine has."""
    machine = machine_resources()
    workers = settings.workers
    per_worker = {name: amount / workers for name, amount in machine.items()}
    per_worker["CPU"] = max(1.0, per_worker["CPU"])
    if "GPU" in per_worker:
        per_worker["GPU"] = float(int(per_worker["GPU"]))
    threads = settings.threads_per_worker or max(1, int(per_worker["CPU"]))
    return {
        "n_workers": workers,
        "threads_per_worker": threads,
        "processes": True,
        "resources": per_worker,
        "dashboard_address": settings.dashboard_address,
        "host": "127.0.0.1",
    }
