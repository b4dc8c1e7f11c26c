"""/events (Server-Sent Events of every status change) and /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import Field
from tornado.iostream import StreamClosedError

from orchestrator.errors import NotFound
from orchestrator.server.api.base import BaseHandler, Operation, Query
from orchestrator.server.events import LAGGED

CLOSED = {"event": "closed"}


class EventsQuery(Query):
    job_id: str | None = Field(None, description="only this job")
    sweep_id: str | None = Field(None, description="only this sweep's runs")


class EventsHandler(BaseHandler):
    openapi = {"get": Operation(
        "A Server-Sent Events stream of status changes as they happen",
        query=EventsQuery, raw_response="text/event-stream",
    )}

    async def get(self) -> None:
        query = self.query_args()
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        self.job_id, self.sweep_id = query.job_id, query.sweep_id
        owner = self._owner_heard(self.job_id, self.sweep_id)
        self.subscription = self.service.events.subscribe(self.job_id, self.sweep_id, owner)
        try:
            self.write(": stream open\n\n")
            await self.flush()
            await self._pump()
        except StreamClosedError:
            pass
        finally:
            self.service.events.unsubscribe(self.subscription)

    def _owner_heard(self, job_id: str | None, sweep_id: str | None) -> str | None:
        """Whose changes this caller may hear: a job or sweep they may see (404 otherwise),
        or else only their own work (admins: everyone's)."""
        if job_id is not None:
            self.service.jobs.get(job_id, self.principal)
            return None
        if sweep_id is not None:
            self.service.sweeps.get(sweep_id, self.principal.scope)
        return self.principal.scope

    def _still_allowed(self, heartbeat: bool = False) -> bool:
        """Asked before each event and at each heartbeat: a revoked token, or a job (at a
        heartbeat also a sweep, a costlier read) no longer visible to the caller, ends the
        stream."""
        if self.access_revoked():
            return False
        try:
            self._owner_heard(self.job_id, self.sweep_id if heartbeat else None)
        except NotFound:
            return False
        return True

    async def _pump(self) -> None:
        queue = self.subscription.queue
        heartbeat = self.service.settings.stream_heartbeat_s
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), heartbeat)
            except asyncio.TimeoutError:
                if not self._still_allowed(heartbeat=True):
                    return
                self.write(": keep-alive\n\n")  # also how a vanished client is noticed
                await self.flush()
                continue
            if event is CLOSED or not self._still_allowed():
                return
            self.write(f"id: {event.get('id', '')}\nevent: {event['event']}\ndata: {json.dumps(event)}\n\n")
            await self.flush()
            if event is LAGGED:
                return

    def on_connection_close(self) -> None:
        super().on_connection_close()
        subscription = getattr(self, "subscription", None)
        if subscription is not None:
            with contextlib.suppress(asyncio.QueueFull):
                subscription.queue.put_nowait(CLOSED)


class MetricsHandler(BaseHandler):
    openapi = {"get": Operation("Prometheus metrics: jobs by status, queue length, run durations, "
                                "worker resources", raw_response="text/plain")}

    async def get(self) -> None:
        body = await self.service.metrics.render()
        self.set_header("Content-Type", CONTENT_TYPE_LATEST)
        self.finish(body)
