"""The Dask cluster behind the orchestrator: an embedded LocalCluster, one built by a factory
(`module:callable`, or a batch system such as `slurm`: orchestrator.clusters), or an existing scheduler.

Only what this module started is closed at shutdown: an external scheduler keeps running.

Every Dask connection made or started here can use TLS with certificates: the embedded cluster
makes its own (in memory: Dask hands them to its worker processes as arguments, never through
their environment), and an external one uses the tls_* settings or Dask's own TLS configuration.
Without them, whoever reaches the scheduler's port can run code in it (`run_on_scheduler`).
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import dask
from distributed import Client, LocalCluster, Nanny
from distributed.deploy import Cluster
from distributed.security import Security

from orchestrator.config import Settings, machine_resources
from orchestrator.plugins.worker import CONTEXTS_METRIC, GPU_DEVICES_VARIABLE
from orchestrator.storage.fsstore import OPTIONS_VARIABLE

logger = logging.getLogger(__name__)

BATCH_SYSTEMS = ("slurm", "pbs", "sge", "lsf", "htcondor")  # orchestrator.clusters' factories

# Measured in FACTS.md: the default queuing costs ~3x per-task overhead on tiny tasks, and
# orchestrator tasks carry resource restrictions that bound concurrency anyway.
DASK_CONFIG = {"distributed.scheduler.worker-saturation": float("inf"),
               "distributed.scheduler.allowed-failures": 0}  # see Engine._attach


@dataclass
class ClusterConnection:
    client: Client
    cluster: Cluster | None  # one we started, closed with us
    dashboard_link: str | None
    security: Security  # every client of ours presents it, a reconnection's too
    worker_shape: dict[str, float] | None = None  # what each worker a growing cluster adds offers
    batch_jobs: Any = None  # a batch-system cluster's worker job ids (orchestrator.clusters)
    address: str = field(init=False)  # the scheduler's, kept for a new client

    def __post_init__(self) -> None:
        self.address = self.client.scheduler.address

    @property
    def authenticated(self) -> bool:
        """Whether only holders of a certificate the cluster's CA signed can reach the
        scheduler: Dask's TLS listeners require one from every peer. False on tcp://, where
        anyone reaching the port can run code in the scheduler."""
        return self.address.startswith("tls://") and bool(self.security.require_encryption)

    async def reconnect(self) -> Client:
        """A new client to the same scheduler, once Dask's own gave up waiting for it (after
        `distributed.comm.timeouts.connect`); raises OSError while it is still away."""
        self.client = await Client(self.address, security=self.security, asynchronous=True)
        return self.client

    async def close(self) -> None:
        await self.client.close()
        if self.cluster is None:
            return
        if self.cluster.asynchronous:
            await self.cluster.close()
        else:  # a factory's cluster runs its own event loop: close it from a thread
            await asyncio.to_thread(self.cluster.close)


async def connect(settings: Settings) -> ClusterConnection:
    """Start the embedded cluster, build one with `settings.cluster`, or join `settings.scheduler`."""
    import orchestrator.plugins.dashboard  # noqa: F401 - adds the Jobs page to schedulers started here

    configured = configured_security(settings)  # checked first: no cluster is left running
    if settings.scheduler:
        security = configured or Security()  # Security(): Dask's own TLS configuration
        client = await Client(settings.scheduler, security=security, asynchronous=True)
        return _connected(ClusterConnection(client, None, await served_dashboard(client), security))
    if settings.cluster:
        cluster = await build_cluster(settings.cluster, settings.cluster_options)
        # a Dask cluster object carries its own security (Dask's TLS config unless told otherwise)
        security = configured or getattr(cluster, "security", None) or Security()
        client = await Client(cluster.scheduler_address, security=security, asynchronous=True)
        return _connected(ClusterConnection(client, cluster, cluster.dashboard_link, security,
                                            getattr(cluster, "worker_shape", None),
                                            getattr(cluster, "batch_jobs", None)))
    options = embedded_cluster_options(settings)
    with dask.config.set(DASK_CONFIG):
        cluster = await LocalCluster(**options, asynchronous=True)
    client = await Client(cluster, security=options["security"], asynchronous=True)
    return _connected(ClusterConnection(client, cluster, cluster.dashboard_link, options["security"]))


async def served_dashboard(client: Client) -> str | None:
    """The dashboard the scheduler really serves, or None when it serves none (Dask's own
    `dashboard_link` then names port 8787 all the same)."""
    from urllib.parse import urlsplit

    from distributed.utils import format_dashboard_link

    identity = await client.scheduler.identity(n_workers=0)
    port = identity.get("services", {}).get("dashboard")  # the HTTP server's, dashboard or not
    if not port:
        return None
    link = format_dashboard_link(urlsplit(client.scheduler.address).hostname, port)
    return link if await _answers(link) else None


async def _answers(url: str) -> bool:
    from tornado.httpclient import AsyncHTTPClient

    try:
        response = await AsyncHTTPClient().fetch(url, request_timeout=10, raise_error=False)
    except OSError:
        return False
    return response.code == 200


def configured_security(settings: Settings) -> Security | None:
    """The client side of an external cluster's TLS from the tls_* settings; None when none is
    given, so that Dask's own configuration (distributed.comm.tls.*) decides."""
    if not (settings.tls_ca_file or settings.tls_cert or settings.tls_key):
        return None
    if not (settings.tls_ca_file and settings.tls_cert):
        raise ValueError("TLS needs both tls_ca_file and tls_cert (and tls_key unless the "
                         "certificate file holds the key)")
    return Security(
        require_encryption=True, tls_ca_file=str(settings.tls_ca_file),
        tls_client_cert=str(settings.tls_cert),
        tls_client_key=str(settings.tls_key) if settings.tls_key else None,
    )


def _connected(connection: ClusterConnection) -> ClusterConnection:
    if not connection.authenticated:
        logger.warning("the Dask scheduler at %s does not authenticate its peers: anyone who can "
                       "reach it can run code in it; use tls:// with certificates",
                       connection.address)
    return connection


async def build_cluster(factory_path: str, options: dict[str, Any]) -> Cluster:
    """Call the factory in a thread: Dask's synchronous cluster classes start their own
    event loop, which they refuse to do from inside ours. A coroutine (an async factory) is
    awaited here; a cluster is never awaited: every Dask cluster is awaitable, and awaiting a
    synchronous one (already started) from this loop while its own loop still works, as when
    it scales at build time, crashed or hung the start."""
    factory = load_factory(factory_path)
    with dask.config.set(DASK_CONFIG):
        made = await asyncio.to_thread(factory, **options)
        if inspect.iscoroutine(made):  # an async factory: it makes (and starts) its cluster here
            made = await made
    if not isinstance(made, Cluster):
        raise ValueError(f"cluster factory {factory_path} returned {type(made).__name__}, not a Dask cluster")
    return made


def load_factory(path: str) -> Any:
    """'package.module:callable', or a batch system's name (slurm, pbs, sge, lsf, htcondor:
    orchestrator.clusters); the working folder is importable, as for `dask scheduler --preload`."""
    if path in BATCH_SYSTEMS:
        path = f"orchestrator.clusters:{path}"
    module_name, _, attribute = path.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"cluster factory {path!r} must look like module:callable")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cluster factory {path!r} cannot be loaded: {exc}") from exc
    if not callable(target):
        raise ValueError(f"cluster factory {path!r} is not callable")
    return target


def embedded_cluster_options(settings: Settings, machine: dict[str, float] | None = None) -> dict[str, Any]:
    """Worker processes that together declare what this machine has; each owns its own
    share of the GPU devices (device ids by worker name, see DeviceSharingNanny).

    Every listener (scheduler, nannies, workers) speaks TLS with a certificate made for this
    cluster alone and held in memory: a Nanny hands it to its worker process as a pickled
    argument, not through the environment a job inherits (Dask writes it to a private
    temporary folder only for the moment it loads it)."""
    machine = machine or machine_resources()
    workers = settings.workers
    per_worker = {name: amount / workers for name, amount in machine.items()}
    per_worker["CPU"] = max(1.0, per_worker["CPU"])
    options: dict[str, Any] = {}
    if "GPU" in per_worker:
        share = int(per_worker["GPU"])
        per_worker["GPU"] = float(share)
        options = {"worker_class": DeviceSharingNanny,
                   "devices_by_name": {i: [str(d) for d in range(i * share, (i + 1) * share)]
                                       for i in range(workers)}}
    if settings.storage_options:  # workers reach storage with the server's own options
        options["env"] = {OPTIONS_VARIABLE: json.dumps(settings.storage_options)}
    threads = settings.threads_per_worker or max(1, int(per_worker["CPU"]))
    return {
        "n_workers": workers,
        "threads_per_worker": threads,
        "processes": True,
        "resources": per_worker,
        "dashboard_address": settings.dashboard_address,  # plain HTTP, on 127.0.0.1 by default
        "host": "127.0.0.1",
        "protocol": "tls://",
        "security": Security.temporary(),
        **options,
    }


class DeviceSharingNanny(Nanny):
    """A LocalCluster worker told which GPU devices are its own: LocalCluster gives every
    worker the same options, but two workers must never lend the same device."""

    def __init__(self, *args: Any, devices_by_name: dict[int, list[str]], **kwargs: Any):
        devices = devices_by_name.get(kwargs.get("name"), [])
        kwargs["env"] = {**(kwargs.get("env") or {}), GPU_DEVICES_VARIABLE: ",".join(devices)}
        super().__init__(*args, **kwargs)


def worker_states(dask_scheduler: Any) -> list[dict[str, Any]]:
    """Run on the scheduler: each worker, what it declares and what running tasks hold."""
    return [
        {
            "address": ws.address, "name": str(ws.name), "nthreads": ws.nthreads,
            "memory_limit": ws.memory_limit, "declared": dict(ws.resources),
            "used": dict(ws.used_resources),
            "free": {r: amount - ws.used_resources.get(r, 0) for r, amount in ws.resources.items()},
            "contexts": list(ws.metrics.get(CONTEXTS_METRIC) or []),
        }
        for ws in dask_scheduler.workers.values()
    ]
