"""/health, /cluster and /openapi.json."""

from __future__ import annotations

from collections import defaultdict

from orchestrator.api.base import BaseHandler, Operation
from orchestrator.models import JobStatus


class HealthHandler(BaseHandler):
    openapi = {"get": Operation("Liveness: the API answers and the store is readable")}

    async def get(self) -> None:
        self.service.store.list_jobs(limit=1)
        self.send_json({"status": "ok"})


class ClusterHandler(BaseHandler):
    openapi = {"get": Operation("Workers, their declared resources and running jobs, and the "
                                "dashboard link")}

    async def get(self) -> None:
        client = self.service.connection.client
        identity = await client.scheduler.identity(n_workers=-1)
        running: dict[str, list[str]] = defaultdict(list)
        for job in self.service.store.jobs_with_status([JobStatus.RUNNING]):
            running[job.worker or ""].append(job.id)
        workers = [
            {
                "address": address,
                "name": str(info.get("name")),
                "nthreads": info.get("nthreads"),
                "memory_limit": info.get("memory_limit"),
                "resources": info.get("resources", {}),
                "running_jobs": running.get(address, []),
            }
            for address, info in sorted(identity.get("workers", {}).items())
        ]
        self.send_json(
            {
                "scheduler": identity.get("address"),
                "dashboard_link": self.service.dashboard_link,
                "workers": workers,
            }
        )


class OpenAPIHandler(BaseHandler):
    openapi = {"get": Operation("This document")}

    async def get(self) -> None:
        from orchestrator.api.openapi import build_spec

        self.send_json(build_spec(self.application))
