"""/health, /cluster and /openapi.json."""

from __future__ import annotations

from collections import defaultdict

from orchestrator.errors import SchedulerUnavailable
from orchestrator.models import ClusterState, Health, JobStatus, OpenAPIDocument
from orchestrator.plugins.dashboard import JOBS_PAGE
from orchestrator.server.api.base import BaseHandler, Operation
from orchestrator.server.cluster import worker_states


class HealthHandler(BaseHandler):
    openapi = {"get": Operation("Liveness: the API answers and the store is readable", response=Health)}
    public = True

    async def get(self) -> None:
        self.service.store.ping()
        self.send_json(Health())


class ClusterHandler(BaseHandler):
    openapi = {"get": Operation("Workers with their resources (declared, used by running tasks, "
                                "free) and running jobs; the scheduler and its dashboard link",
                                response=ClusterState)}

    async def get(self) -> None:
        if not self.service.engine.online:
            raise SchedulerUnavailable("the Dask scheduler is unreachable; jobs are accepted "
                                       "and sent when it is back")
        client = self.service.connection.client
        workers = await client.run_on_scheduler(worker_states)
        running: dict[str, list[str]] = defaultdict(list)
        for job in self.service.store.jobs_with_status([JobStatus.RUNNING]):
            if self.principal.owns(job.owner):  # others' ids stay unknown to a non-admin
                running[job.worker or ""].append(job.id)
        for worker in workers:
            worker["running_jobs"] = running.get(worker["address"], [])
            worker["contexts"] = [c for c in worker["contexts"] if self.principal.owns(c["owner"])]
        self.send_json(ClusterState(
            scheduler=client.scheduler.address,
            dashboard_link=self.service.dashboard_link,
            jobs_page=_jobs_page(self.service.dashboard_link),
            can_grow=self.service.engine.can_grow,
            workers=sorted(workers, key=lambda w: w["address"]),
        ))


def _jobs_page(dashboard_link: str | None) -> str | None:
    """The dashboard's Jobs page, beside its status page."""
    if not dashboard_link:
        return None
    return dashboard_link.rsplit("/", 1)[0] + JOBS_PAGE


class OpenAPIHandler(BaseHandler):
    openapi = {"get": Operation("This document", response=OpenAPIDocument)}

    async def get(self) -> None:
        from orchestrator.server.api.app import PREFIX, ROUTES
        from orchestrator.server.api.openapi import build_spec

        self.send_json(build_spec(ROUTES, PREFIX))
