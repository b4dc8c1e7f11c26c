"""A run's logs into storage: segments while it runs, the whole log once it ends."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.storage import Storage, is_storage_failure, layout


class LogShipper:
    """Copies what the job writes to its log files into storage as offset-named segments.

    Driven by the supervising loop (no thread per run). Ships soon after the start, then
    less often, so short jobs cost nothing and long ones do not flood storage with tiny
    objects.
    """

    def __init__(self, storage: Storage, job_id: str, paths: dict[str, Path]):
        self._storage = storage
        self._job_id = job_id
        self._paths = paths
        self._shipped = dict.fromkeys(paths, 0)
        self._interval = 0.2
        self._due = time.monotonic() + self._interval

    def ship_if_due(self) -> None:
        """Best effort: while storage is unreachable the job runs on, and its whole log is
        stored when it ends (or the job fails saying storage could not take it)."""
        if time.monotonic() < self._due:
            return
        try:
            self._ship_new_bytes()
        except Exception as exc:
            if not is_storage_failure(exc):
                raise
        self._interval = min(self._interval * 1.2, 2.0)
        self._due = time.monotonic() + self._interval

    def _ship_new_bytes(self) -> None:
        for stream, path in self._paths.items():
            size = path.stat().st_size
            start = self._shipped[stream]
            if size <= start:
                continue
            with open(path, "rb") as source:
                source.seek(start)
                data = source.read(size - start)
            self._storage.put_bytes(layout.segment_key(self._job_id, stream, start), data)
            self._shipped[stream] = start + len(data)


def ship_final_logs(storage: Storage, job_id: str, paths: dict[str, Path]) -> int:
    """The whole log under its final key, then the segments go: readers prefer the final.
    Returns the bytes stored."""
    stored = 0
    for stream, path in paths.items():
        if path.exists() and path.stat().st_size:
            stored += storage.put_file(str(path), layout.log_key(job_id, stream)).size
            storage.delete_prefix(layout.log_segments_prefix(job_id, stream))
    return stored
