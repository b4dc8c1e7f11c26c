"""What the Python API's handles (`Job`, `Sweep`) share: a record that every read refreshes."""

from __future__ import annotations

from abc import ABC, abstractmethod
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
