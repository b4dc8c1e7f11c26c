"""/events (Server-Sent Events of every status change) and /metrics (Prometheus text)."""

from __future__ import annotations

import asyncio
import contextlib
import json

from prometheus_client import CONTENT_TYPE_LATEST
from tornado.iostream import StreamClosedError

from orchestrator.api.base import BaseHandler, Operation
from orchestrator.events import LAGGED

HEARTBEAT_S = 15.0
CLOSED = {"event": "closed"}


class EventsHandler(BaseHandler):
    openapi = {"get": Operation(
        "A Server-Sent Events stream of status changes as they happen",
        query={"job_id": "only this job", "sweep_id": "only this sweep's runs"},
        raw_response="text/event-stream",
    )}

    async def get(self) -> None:
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        job_id = self.get_query_argument("job_id", None)
        sweep_id = self.get_query_argument("sweep_id", None)
        self.subscription = self.service.events.subscribe(job_id, sweep_id, self._owner_heard(job_id, sweep_id))
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

    async def _pump(self) -> None:
        queue = self.subscription.queue
        while True:
            try:
                event = await asyncio.wait_for(queue.get(), HEARTBEAT_S)
            except asyncio.TimeoutError:
                self.write(": keep-alive\n\n")  # also how a vanished client is noticed
                await self.flush()
                continue
            if event is CLOSED:
                return
            self.write(f"id: {event.get('id', '')}\nevent: {event['event']}\ndata: {json.dumps(event)}\n\n")
            await self.flush()
            if event is LAGGED:
                return

    def on_connection_close(self) -> None:
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
