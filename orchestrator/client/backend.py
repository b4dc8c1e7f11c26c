"""What the Python API is built on: the backend protocol (embedded or REST) and the Job handle.

Kept apart from the facade (`orchestrator.client`) so that sweep handles and the embedded
backend use them without importing the facade that imports them.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

from orchestrator.analysis_models import SweepAnalysis
from orchestrator.client.handle import EventStream, LiveHandle
from orchestrator.errors import ChecksumMismatch, JobFailed
from orchestrator.jobtypes.records import (
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.models import (
    BinaryRecord,
    FileEntry,
    JobCreate,
    JobKind,
    JobRecord,
    JobResult,
    JobStatus,
    StatusChange,
)
from orchestrator.sweep_models import (
    DryRun,
    FinishedRuns,
    ResultsPage,
    ResultsTable,
    SweepCreate,
    SweepRecord,
)


class Backend(Protocol):
    def create_job(self, request: JobCreate, files: dict[str, Path]) -> JobRecord: ...
    def create_callable(self, request: JobCreate, function: Callable, args: tuple, kwargs: dict) -> JobRecord: ...
    def get_job(self, job_id: str) -> JobRecord: ...
    def list_jobs(self, **filters: Any) -> tuple[int, list[JobRecord]]: ...
    def wait(self, job_id: str, timeout: float | None) -> JobRecord: ...
    def stop(self, job_id: str) -> JobRecord: ...
    def rerun(self, job_id: str) -> JobRecord: ...
    def share(self, job_id: str, users: list[str], revoke: bool) -> list[str]: ...
    def delete(self, job_id: str, stop: bool) -> None: ...
    def statuses(self, job_id: str) -> list[StatusChange]: ...
    def read_log(self, job_id: str, stream: str, offset: int) -> bytes: ...
    def list_files(self, job_id: str, search: str | None) -> list[FileEntry]: ...
    def download(self, job_id: str, path: str, dest: Path, verify: bool) -> None: ...
    def return_value(self, job_id: str) -> Any: ...
    def upload_binary(self, name: str, source: Path | bytes) -> BinaryRecord: ...
    def list_binaries(self) -> list[BinaryRecord]: ...
    def create_sweep(self, request: SweepCreate, files: dict[str, Path], function: Callable | None) -> SweepRecord | DryRun: ...
    def get_sweep(self, sweep_id: str) -> SweepRecord: ...
    def wait_sweep(self, sweep_id: str, timeout: float) -> SweepRecord: ...
    def list_sweeps(self) -> list[SweepRecord]: ...
    def events(self, job_id: str | None, sweep_id: str | None) -> EventStream: ...
    def sweep_runs(self, sweep_id: str, status: Any) -> list[JobRecord]: ...
    def sweep_finished(self, sweep_id: str, after: int) -> FinishedRuns: ...
    def sweep_results(self, sweep_id: str) -> ResultsTable: ...
    def sweep_results_page(self, sweep_id: str, after: int | None, limit: int) -> ResultsPage: ...
    def sweep_analysis(self, sweep_id: str, output: str) -> SweepAnalysis: ...
    def stop_sweep(self, sweep_id: str) -> SweepRecord: ...
    def rerun_sweep(self, sweep_id: str, status: list[str] | None, ids: list[str] | None) -> SweepRecord: ...
    def delete_sweep(self, sweep_id: str, stop: bool) -> None: ...
    def extend_sweep(self, sweep_id: str, samples: int) -> SweepRecord: ...
    def create_job_type(self, request: JobTypeCreate) -> JobTypeDetails: ...
    def validate_job_type(self, body: dict[str, Any]) -> ValidationResult: ...
    def list_job_types(self, keyword: str | None, is_active: bool | None, order: str) -> list[JobTypeSummary]: ...
    def get_job_type(self, name: str, version: str) -> JobTypeDetails: ...
    def job_type_versions(self, name: str) -> list[JobTypeDetails]: ...
    def job_type_revisions(self, name: str, version: str) -> list[JobTypeRevision]: ...
    def patch_job_type(self, name: str, version: str, patch: JobTypePatch) -> JobTypeDetails: ...
    def delete_job_type(self, name: str, version: str) -> None: ...
    def close(self) -> None: ...


class Job(LiveHandle[JobRecord]):
    """A live handle on one job; every property reads fresh state."""

    def _fetch(self) -> JobRecord:
        return self._backend.get_job(self.id)

    def wait(self, timeout: float | None = None) -> JobRecord:
        """Block until the job ends (or the timeout runs out) and return its record."""
        self.record = self._backend.wait(self.id, timeout)
        return self.record

    def result(self, timeout: float | None = None) -> Any:
        """The result of a finished job: JobResult for commands, the return value for
        callables and entry points.

        Raises JobFailed if it failed or was stopped, TimeoutError if it is still going.
        """
        record = self.wait(timeout)
        if not record.status.is_terminal:
            raise TimeoutError(f"job {self.id} is still {record.status.value}")
        if record.status != JobStatus.COMPLETED:
            raise JobFailed(record)
        if record.kind in (JobKind.CALLABLE, JobKind.ENTRYPOINT):
            return self._backend.return_value(self.id)
        return record.result or JobResult()

    def stop(self) -> JobRecord:
        self.record = self._backend.stop(self.id)
        return self.record

    def delete(self, stop: bool = False) -> None:
        self._backend.delete(self.id, stop)

    def rerun(self) -> JobRecord:
        """Run this ended job again as a new attempt (same id, its history kept)."""
        self.record = self._backend.rerun(self.id)
        return self.record

    def share(self, *users: str, revoke: bool = False) -> list[str]:
        """Let these users read the job (its logs, outputs, result), or with `revoke` no
        longer; answers everyone it is shared with now."""
        return self._backend.share(self.id, list(users), revoke)

    def statuses(self) -> list[StatusChange]:
        return self._backend.statuses(self.id)

    def logs(self, stream: str = "stdout", offset: int = 0) -> str:
        return self._backend.read_log(self.id, stream, offset).decode("utf-8", "replace")

    def follow(self, stream: str = "stdout", poll_s: float = 0.5) -> Iterator[str]:
        """Yield log text as it is written, until the job has ended and all is read."""
        offset = 0
        while True:
            data = self._backend.read_log(self.id, stream, offset)
            offset += len(data)
            if data:
                yield data.decode("utf-8", "replace")
                continue
            if self.status.is_terminal:
                tail = self._backend.read_log(self.id, stream, offset)
                if tail:
                    yield tail.decode("utf-8", "replace")
                return
            time.sleep(poll_s)

    def files(self, search: str | None = None) -> list[FileEntry]:
        return self._backend.list_files(self.id, search)

    def download(self, path: str, dest: str | os.PathLike | None = None, verify: bool = False) -> Path:
        """Save one output file; `dest` may be a folder or a file name (default: here).

        `verify=True` checks the stored bytes and the bytes saved against the sha256 recorded
        when the file was stored (ChecksumMismatch if they differ; nothing is left at `dest`).
        """
        target = Path(dest) if dest is not None else Path(Path(path).name)
        if target.is_dir():
            target = target / Path(path).name
        target.parent.mkdir(parents=True, exist_ok=True)
        self._backend.download(self.id, path, target, verify)
        return target

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.record.name} {self.record.status.value}>"



def save_stream(chunks: Iterator[bytes], dest: Path, expected_sha256: str | None = None) -> None:
    """Write to a temporary name and rename, so a broken (or, checked against
    `expected_sha256`, corrupted) download leaves no file."""
    partial = dest.with_name(dest.name + ".part")
    digest = hashlib.sha256()
    try:
        with open(partial, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
        if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
            raise ChecksumMismatch(f"{dest.name}: received sha256 {digest.hexdigest()}, "
                                   f"recorded {expected_sha256}")
        partial.replace(dest)
    finally:
        partial.unlink(missing_ok=True)


