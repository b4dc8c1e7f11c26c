"""Prometheus metrics: jobs by status and queue length from the ledger, run durations as they
end, and worker resources declared, used and free as the scheduler sees them."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

from orchestrator.models import JobStatus
from orchestrator.server.cluster import worker_states
from orchestrator.server.engine import Engine
from orchestrator.server.ledger import StatusUpdate, Store

DURATION_BUCKETS = (0.01, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)


class Metrics:
    def __init__(self, store: Store, engine: Engine):
        self.store = store
        self.engine = engine
        self.registry = CollectorRegistry()
        self.durations = Histogram(
            "orchestrator_run_duration_seconds", "Run time of jobs that ended since the server started",
            ["status"], buckets=DURATION_BUCKETS, registry=self.registry,
        )
        self._workers: list[dict[str, Any]] = []
        self.registry.register(_LedgerCollector(self))
        engine.update_hooks.append(self._observe)

    def _observe(self, update: StatusUpdate) -> None:
        result = update.fields.get("result")
        if update.status.is_terminal and result is not None and result.duration_s is not None:
            self.durations.labels(update.status.value).observe(result.duration_s)

    async def render(self) -> bytes:
        """The text exposition; worker resources are read from the scheduler first."""
        if self.engine.online:  # else the last known workers, rather than a 30 s wait
            with contextlib.suppress(Exception):
                self._workers = await self.engine.client.run_on_scheduler(worker_states)
        return generate_latest(self.registry)


class _LedgerCollector:
    def __init__(self, metrics: Metrics):
        self.metrics = metrics

    def collect(self):
        counts = self.metrics.store.count_by_status()
        jobs = GaugeMetricFamily("orchestrator_jobs", "Jobs in the ledger by status", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], counts.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily("orchestrator_queue_length", "Jobs QUEUED and not yet running",
                                value=counts.get(JobStatus.QUEUED.value, 0))
        families = {
            kind: GaugeMetricFamily(f"orchestrator_worker_resource_{kind}",
                                    f"Resources workers declare ({kind})", labels=["worker", "resource"])
            for kind in ("declared", "used", "free")
        }
        for worker in self.metrics._workers:
            for kind, family in families.items():
                for resource in worker["declared"]:
                    family.add_metric([worker["address"], resource], worker[kind].get(resource, 0))
        yield from families.values()

