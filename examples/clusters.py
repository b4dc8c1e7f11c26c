"""Cluster factories for `orchestrator serve --cluster examples.clusters:NAME`.

A factory is any callable returning a Dask cluster object; `--cluster-options` JSON becomes
its keyword arguments. Batch systems have theirs built in: `--cluster slurm --cluster-options
'{"cores": 8, "memory": "32GiB"}'` (orchestrator.clusters, through dask-jobqueue).
"""

from __future__ import annotations

from distributed import LocalCluster
from distributed.security import Security


def adaptive_local_cluster(
    minimum: int = 0, maximum: int = 2, cores: int = 1, gpus: int = 0
) -> LocalCluster:
    """Worker processes that start when work waits and stop when idle: a cluster that grows.

    Each worker declares `cores` CPU (and `gpus` GPU), so the orchestrator places jobs on it
    by the same resources as on any other cluster. Its comms use TLS with certificates made
    for it alone (the orchestrator's client takes them from `cluster.security`): without
    them, whoever reaches the scheduler's port could run code in it.
    """
    resources = {"CPU": float(cores), **({"GPU": float(gpus)} if gpus else {})}
    cluster = LocalCluster(
        n_workers=minimum, threads_per_worker=cores, processes=True, host="127.0.0.1",
        dashboard_address="127.0.0.1:0", resources=resources, security=Security.temporary(),
    )
    cluster.adapt(minimum=minimum, maximum=maximum)
    return cluster
