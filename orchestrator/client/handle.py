"""What the Python API's handles share: `Job` and `Sweep` a record that every read refreshes;
`EventStream` a subscription to live changes."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from orchestrator.models import JobStatus

R = TypeVar("R")


class LiveHandle(ABC, Generic[R]):
    """A handle on one thing the orchestrator tracks; `record` is its last known state."""

    def __init__(self, backend: Any, record: R):
        self._backend = backend
        self.record = record

    @property
    def id(self) -> str:
        return self.record.id  # type: ignore[attr-defined]

    @property
    def status(self) -> JobStatus:
        return self.refresh().status  # type: ignore[attr-defined]

    def refresh(self) -> R:
        self.record = self._fetch()
        return self.record

    @abstractmethod
    def _fetch(self) -> R:
        """The thing's current record, from the backend."""


class EventStream(Iterator[dict[str, Any]]):
    """Status changes as they happen. Subscribed from its creation, so no change made after
    `events()` returns is missed; `close()` (or leaving a `with` block) unsubscribes."""

    def __init__(self, events: Iterator[dict[str, Any]], unsubscribe: Callable[[], None]):
        self._events = events
        self._unsubscribe: Callable[[], None] | None = unsubscribe

    def __next__(self) -> dict[str, Any]:
        if self._unsubscribe is None:
            raise StopIteration
        return next(self._events)

    def close(self) -> None:
        unsubscribe, self._unsubscribe = self._unsubscribe, None
        if unsubscribe is not None:
            unsubscribe()

    def __enter__(self) -> EventStream:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()
