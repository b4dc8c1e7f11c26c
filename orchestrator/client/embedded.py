"""The embedded backend of the Python API: the whole service on a private event loop thread.

Calls hop onto that loop, so the engine, the store and Dask see one thread as they would in
the server. Closing shuts down what this backend started and nothing else.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.client.handle import EventStream
from orchestrator.config import Settings
from orchestrator.errors import validation_failed
from orchestrator.jobtypes.records import (
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.loop_thread import LoopThread
from orchestrator.models import (
    BinaryRecord,
    FileEntry,
    JobCreate,
    JobKind,
    JobRecord,
    StatusChange,
)
from orchestrator.server import reruns
from orchestrator.server.auth import Principal
from orchestrator.server.service import Service
from orchestrator.storage import layout
from orchestrator.worker.runner import RETURN_FILE

LOG_READ_LIMIT = 16 * 2**20


class EmbeddedBackend:
    def __init__(self, settings: Settings):
        self.settings = settings
        self._loop = LoopThread()
        try:
            self.service: Service = self._loop.run(Service(settings).start())
        except BaseException:
            self._loop.stop()
            raise
        self._owner = settings.default_owner
        self._principal = Principal(settings.default_owner, admin=True)  # the machine's own user
        self._closed = False

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run(coroutine)

    async def _call(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        return function(*args, **kwargs)

    def _sync(self, function: Callable, *args: Any, **kwargs: Any) -> Any:
        """Run a synchronous service method on the loop thread."""
        return self._run(self._call(function, *args, **kwargs))

    # ---- jobs -------------------------------------------------------------------------

    def create_job(self, request: JobCreate, files: dict[str, Path]) -> JobRecord:
        from orchestrator.paths import safe_relative_path
        from orchestrator.server.jobs import new_job_id

        job_id = new_job_id()
        paths = [safe_relative_path(dest) for dest in files]
        try:
            for path, source in zip(paths, files.values(), strict=True):
                self.service.storage.put_file(str(source), layout.input_key(job_id, path))
        except BaseException:
            self.service.storage.delete_prefix(layout.job_prefix(job_id))
            raise
        return self._run(self.service.jobs.create_from_upload(request, self._principal, job_id=job_id, files=paths))

    def create_callable(
        self, request: JobCreate, function: Callable, args: tuple, kwargs: dict
    ) -> JobRecord:
        import cloudpickle

        from orchestrator.server.jobs import new_job_id

        job_id = new_job_id()
        self.service.storage.put_bytes(
            layout.callable_key(job_id), cloudpickle.dumps((function, args, kwargs))
        )
        return self._run(self.service.jobs.create_from_upload(
            request, self._principal, job_id=job_id, kind=JobKind.CALLABLE))

    def get_job(self, job_id: str) -> JobRecord:
        return self._sync(self.service.jobs.get, job_id)

    def list_jobs(self, **filters: Any) -> tuple[int, list[JobRecord]]:
        return self._sync(self.service.jobs.list, limit=None, **filters)

    def wait(self, job_id: str, timeout: float | None) -> JobRecord:
        return self._run(self.service.jobs.wait(job_id, timeout))

    def stop(self, job_id: str) -> JobRecord:
        return self._run(self.service.jobs.stop(job_id, self._owner))

    def rerun(self, job_id: str) -> JobRecord:
        return self._run(reruns.rerun_job(self.service, job_id, self._owner, self._principal))

    def share(self, job_id: str, users: list[str], revoke: bool) -> list[str]:
        jobs = self.service.jobs
        change = jobs.unshare if revoke else jobs.share
        return self._sync(change, job_id, users, self._principal).shared_with

    def delete(self, job_id: str, stop: bool) -> None:
        self._run(self.service.jobs.delete(job_id, stop=stop, requested_by=self._owner))

    def statuses(self, job_id: str) -> list[StatusChange]:
        return self._sync(self.service.jobs.history, job_id)

    def read_log(self, job_id: str, stream: str, offset: int) -> bytes:
        return self._run(self.service.jobs.read_log(job_id, stream, offset, LOG_READ_LIMIT))

    def list_files(self, job_id: str, search: str | None) -> list[FileEntry]:
        _, files = self._sync(self.service.jobs.list_files, job_id, search, 0, 1_000_000)
        return files

    def download(self, job_id: str, path: str, dest: Path, verify: bool) -> None:
        from orchestrator.client.backend import save_stream

        entry, key = self._sync(self.service.jobs.file, job_id, path)
        save_stream(self.service.storage.iter_chunks(key), dest, entry.sha256 if verify else None)

    def return_value(self, job_id: str) -> Any:
        record = self.get_job(job_id)
        key = layout.output_key(job_id, RETURN_FILE)
        if self.service.store.get_file(job_id, RETURN_FILE) is not None:
            import cloudpickle

            with self.service.storage.open(key) as source:
                return cloudpickle.loads(source.read())
        return record.result.value if record.result else None

    # ---- binaries ---------------------------------------------------------------------

    def upload_binary(self, name: str, source: Path | bytes) -> BinaryRecord:
        binaries = self.service.binaries
        if isinstance(source, bytes):
            return binaries.upload_bytes(name, source, "application/octet-stream", self._owner)
        writer = binaries.begin_upload(name, self._owner)
        try:
            with open(source, "rb") as handle:
                shutil.copyfileobj(handle, writer, 4 * 2**20)
        except BaseException:
            writer.abort()
            raise
        return binaries.finish_upload(name, writer, "application/octet-stream", self._owner)

    def list_binaries(self) -> list[BinaryRecord]:
        _, records = self._sync(self.service.binaries.list, self._principal, None, 0, 1_000_000)
        return records

    # ---- sweeps -----------------------------------------------------------------------

    def create_sweep(self, request: Any, files: dict[str, Path], function: Callable | None) -> Any:
        import cloudpickle

        from orchestrator.paths import safe_relative_path
        from orchestrator.sweep_models import new_sweep_id

        sweep_id = new_sweep_id()
        storage = self.service.storage
        uploaded = [safe_relative_path(dest) for dest in files]
        try:
            for path, source in zip(uploaded, files.values(), strict=True):
                storage.put_file(str(source), layout.sweep_input_key(sweep_id, path))
            if function is not None:
                storage.put_bytes(layout.sweep_callable_key(sweep_id), cloudpickle.dumps((function, (), {})))
        except BaseException:
            storage.delete_prefix(layout.sweep_prefix(sweep_id))
            raise
        return self._run(self.service.sweeps.create_from_upload(
            request, self._principal, sweep_id=sweep_id, uploaded=uploaded,
            kind=JobKind.CALLABLE if function is not None else JobKind.COMMAND))

    def get_sweep(self, sweep_id: str) -> Any:
        return self._sync(self.service.sweeps.get, sweep_id)

    def wait_sweep(self, sweep_id: str, timeout: float) -> Any:
        return self._run(self.service.sweeps.wait(sweep_id, timeout))

    def list_sweeps(self) -> list[Any]:
        _, records = self._sync(self.service.sweeps.list, None, 0, None)
        return records

    def events(self, job_id: str | None, sweep_id: str | None) -> EventStream:
        subscription = self._sync(self.service.events.subscribe, job_id, sweep_id)
        return EventStream(self._drain(subscription),
                           lambda: self._sync(self.service.events.unsubscribe, subscription))

    def _drain(self, subscription: Any) -> Iterator[dict[str, Any]]:
        while True:
            event = self._run(subscription.queue.get())
            yield event
            if event.get("event") == "lagged":
                return

    def sweep_runs(self, sweep_id: str, status: Any) -> list[JobRecord]:
        _, runs = self._sync(self.service.sweeps.runs, sweep_id, status, 0, None)
        return runs

    def sweep_finished(self, sweep_id: str, after: int) -> Any:
        return self._sync(self.service.sweeps.finished, sweep_id, after, 1000)

    def sweep_results(self, sweep_id: str) -> Any:
        return self._sync(self.service.sweeps.results, sweep_id)

    def sweep_results_page(self, sweep_id: str, after: int | None, limit: int) -> Any:
        return self._sync(self.service.sweeps.results, sweep_id, None, after, limit)

    def sweep_analysis(self, sweep_id: str, output: str) -> Any:
        from orchestrator.server.analysis import sweep_analysis

        return self._run(sweep_analysis(self.service.store, sweep_id, output))

    def stop_sweep(self, sweep_id: str) -> Any:
        return self._run(self.service.sweeps.stop(sweep_id, self._owner))

    def extend_sweep(self, sweep_id: str, samples: int) -> Any:
        from orchestrator.growth_models import SweepExtend

        try:
            SweepExtend(samples=samples)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        return self._run(self.service.sweeps.growth.extend(sweep_id, samples))

    def rerun_sweep(self, sweep_id: str, status: list[str] | None, ids: list[str] | None) -> Any:
        try:
            request = reruns.SweepRerun(status=status, ids=ids)
        except ValidationError as exc:
            raise validation_failed(exc) from None
        return self._run(reruns.rerun_sweep(self.service, sweep_id, request, self._owner, None))

    def delete_sweep(self, sweep_id: str, stop: bool) -> None:
        self._run(reruns.delete_sweep(self.service, sweep_id, stop, self._owner, None))

    # ---- job types (as the /job-types handlers call the service) ---------------------------

    def create_job_type(self, request: JobTypeCreate) -> JobTypeDetails:
        details, _ = self._run(self.service.job_types.save(request, self._principal))
        return details

    def validate_job_type(self, body: dict[str, Any]) -> ValidationResult:
        return self._run(self.service.job_types.validation(body, self._principal))

    def list_job_types(self, keyword: str | None, is_active: bool | None, order: str) -> list[JobTypeSummary]:
        return self._sync(self.service.job_types.list, keyword, is_active, order)

    def get_job_type(self, name: str, version: str) -> JobTypeDetails:
        return self._sync(self.service.job_types.details, name, version)

    def job_type_versions(self, name: str) -> list[JobTypeDetails]:
        return self._sync(self.service.job_types.versions, name)

    def job_type_revisions(self, name: str, version: str) -> list[JobTypeRevision]:
        return self._sync(self.service.job_types.revisions, name, version)

    def patch_job_type(self, name: str, version: str, patch: JobTypePatch) -> JobTypeDetails:
        return self._sync(self.service.job_types.patch, name, version, patch, self._principal)

    def delete_job_type(self, name: str, version: str) -> None:
        self._sync(self.service.job_types.delete, name, version, self._principal)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self.service.close())
        finally:
            self._loop.stop()
