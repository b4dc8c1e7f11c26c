"""Status changes as a live stream: every change the engine records, pushed to subscribers.

Subscribers (the SSE route, the embedded Python API) each get a bounded queue. The hub
listens to the engine only while someone subscribes, so an unwatched orchestrator pays
nothing. A subscriber that falls too far behind is told so and dropped, never allowed to
hold memory or slow the engine.
"""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from orchestrator.models import JobRecord, StatusChange
from orchestrator.server.engine import Engine

QUEUE_LIMIT = 10_000
LAGGED = {"event": "lagged", "message": "too far behind: reconnect and re-read the state"}


@dataclass
class Subscription:
    job_id: str | None = None
    sweep_id: str | None = None
    owner: str | None = None  # a non-admin hears only about their own work
    queue: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(QUEUE_LIMIT + 1))

    def wants(self, job: JobRecord) -> bool:
        return (
            (self.job_id is None or job.id == self.job_id)
            and (self.sweep_id is None or job.sweep_id == self.sweep_id)
            and (self.owner is None or job.owner == self.owner)
        )


class EventHub:
    def __init__(self, engine: Engine):
        self.engine = engine
        self._subscriptions: list[Subscription] = []
        self._ids = itertools.count(1)

    def subscribe(
        self, job_id: str | None = None, sweep_id: str | None = None, owner: str | None = None
    ) -> Subscription:
        subscription = Subscription(job_id, sweep_id, owner)
        if not self._subscriptions:
            self.engine.listeners.append(self._publish)
        self._subscriptions.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        if subscription in self._subscriptions:
            self._subscriptions.remove(subscription)
        if not self._subscriptions and self._publish in self.engine.listeners:
            self.engine.listeners.remove(self._publish)

    def _publish(self, job: JobRecord, change: StatusChange) -> None:
        event = status_event(next(self._ids), job, change)
        for subscription in list(self._subscriptions):
            if not subscription.wants(job):
                continue
            if subscription.queue.qsize() >= QUEUE_LIMIT:
                subscription.queue.put_nowait(LAGGED)
                self.unsubscribe(subscription)
            else:
                subscription.queue.put_nowait(event)


def status_event(event_id: int, job: JobRecord, change: StatusChange) -> dict[str, Any]:
    return {
        "id": event_id, "event": "status", "job_id": job.id, "name": job.name,
        "sweep_id": job.sweep_id, "index": job.index, "status": change.status.value,
        "at": change.at.isoformat(), "reason": change.reason,
    }
