"""Whatever a `--cluster module:callable` factory returns starts the orchestrator, every time:
a synchronous cluster with workers at build time, one that scales inside the factory, and an
asynchronous factory. Awaiting a synchronous cluster from the server's loop (every Dask
cluster is awaitable) crashed 2 starts in 4, or hung them, before."""

from __future__ import annotations

import pytest
from distributed import LocalCluster

from orchestrator.config import Settings
from tests.conftest import start_test_server, stop_test_server

STARTS = 20
WORKER = {"processes": False, "protocol": "tcp://", "threads_per_worker": 1, "resources": {"CPU": 1},
          "host": "127.0.0.1", "dashboard_address": None}


def with_workers(n_workers: int = 1) -> LocalCluster:
    """A synchronous cluster whose workers start while it is built (`n_workers`)."""
    return LocalCluster(n_workers=n_workers, **WORKER)


def scaled_inside() -> LocalCluster:
    """A synchronous cluster the factory scales before returning it."""
    cluster = LocalCluster(n_workers=0, **WORKER)
    cluster.scale(1)
    return cluster


async def asynchronous() -> LocalCluster:
    """An async factory: it makes its cluster on the server's own loop."""
    return await LocalCluster(n_workers=1, asynchronous=True, **WORKER)


FACTORIES = ["with_workers", "scaled_inside", "asynchronous"]


@pytest.mark.timeout(300)
def test_every_kind_of_factory_starts_every_time(tmp_path):
    for start in range(STARTS):
        factory = FACTORIES[start % len(FACTORIES)]
        server = start_test_server(Settings(
            data_dir=tmp_path / f"data{start}", port=0, cluster=f"tests.test_cluster_factories:{factory}",
        ))
        try:
            done = server.wait(server.submit(command="echo started")["id"], timeout=60)
            assert done["status"] == "COMPLETED", (start, factory, done)
        finally:
            stop_test_server(server)
