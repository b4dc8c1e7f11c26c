"""`orchestrator.get_client()`: the cluster, from inside a job, as a Spark job uses its context.

In an entry point (or a callable sent over REST) it answers a Dask client of the cluster the
job runs on, made once per warm context and kept warm with it. The tasks it starts are named
under the job's task key, so the dashboard groups them under the job's name, and they belong
to the context's connection: stopping the job ends the context, and Dask forgets the tasks of
a client that went away. Elsewhere (an embedded callable in a worker thread, a plain Dask
task) it is Dask's own `get_client()`.
"""

from __future__ import annotations

import base64
import os
import pickle
import sys
import uuid
from functools import lru_cache
from typing import Any

CONTEXT_MODULE = "_orchestrator_warm_context"  # set up by orchestrator/worker/context_child.py


class ClusterUnavailable(RuntimeError):
    """The job may not use the cluster (multi-user mode), or none is known."""


def get_client() -> Any:
    context = sys.modules.get(CONTEXT_MODULE)
    if context is None:
        from distributed import get_client as dask_get_client

        return dask_get_client()
    if getattr(context, "client", None) is None:
        context.client = _connect(context)
    _ship_artifacts_by_value(context.sites)
    context.announce_cluster_use()
    return context.client


def _ship_artifacts_by_value(sites: list[str]) -> None:
    """The application's own modules travel with the tasks it submits (other workers have
    not imported its binaries): cloudpickle pickles their functions by value."""
    import cloudpickle

    roots = tuple(os.path.join(site, "") for site in sites)
    registered = cloudpickle.list_registry_pickle_by_value()
    for name, module in list(sys.modules.items()):  # each module: Dask asks by the exact module name
        origin = getattr(module, "__file__", None) or ""
        if roots and name not in registered and origin.startswith(roots):
            cloudpickle.register_pickle_by_value(module)


def _connect(context: Any) -> Any:
    cluster = context.cluster
    if not cluster or not cluster.get("address"):
        raise ClusterUnavailable(
            (cluster or {}).get("refused")
            or "this job cannot reach the cluster: it runs outside a Dask worker")
    security = pickle.loads(base64.b64decode(cluster["security"])) if cluster.get("security") else None
    return _job_client_class()(cluster["address"], security=security, timeout=30)


def _job_client_class() -> type:
    from dask.base import tokenize
    from dask.utils import funcname
    from distributed import Client

    class JobClient(Client):
        """Names what it submits under the running job's task key (`<job key>/<function>-<token>`):
        Dask's dashboard groups keys by their first part, the job's name."""

        def submit(self, func, *args, key=None, **kwargs):
            prefix = _job_prefix()
            if key is None and prefix is not None:
                pure = kwargs.get("pure", True)
                token = tokenize(func, kwargs, *args) if pure else uuid.uuid4().hex
                key = f"{prefix}/{funcname(func)}-{token}"
            return super().submit(shipped(func), *args, key=key, **kwargs)

        def map(self, func, *iterables, key=None, **kwargs):
            prefix = _job_prefix()
            if key is None and prefix is not None:
                key = f"{prefix}/{funcname(func)}"
            return super().map(shipped(func), *iterables, key=key, **kwargs)

    return JobClient


class ShippedFunction:
    """A function of the application, carried by value: Dask pickles a task graph by
    reference, and the scheduler and other workers cannot import the job's binaries."""

    def __init__(self, function: Any):
        import cloudpickle

        self.payload = cloudpickle.dumps(function)
        self.__name__ = getattr(function, "__name__", "function")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return _loaded(self.payload)(*args, **kwargs)


@lru_cache(maxsize=64)
def _loaded(payload: bytes) -> Any:
    import cloudpickle

    return cloudpickle.loads(payload)


def shipped(function: Any) -> Any:
    """`function` as a task may carry it: by value when it comes from the job's binaries."""
    import cloudpickle

    module = getattr(function, "__module__", None)
    return ShippedFunction(function) if module in cloudpickle.list_registry_pickle_by_value() else function


def _job_prefix() -> str | None:
    context = sys.modules.get(CONTEXT_MODULE)
    return getattr(context, "task_key", None) if context is not None else None
