"""/jobs: create (JSON or multipart with files), list, show, edit, submit, stop, delete,
status history, logs (tail and follow), output files and result."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any, Literal

from pydantic import Field, ValidationError
from tornado.iostream import StreamClosedError

from orchestrator.errors import (
    Conflict,
    NotFound,
    PickledCodeRefused,
    ValidationFailed,
    validation_failed,
)
from orchestrator.models import (
    FileEntry,
    JobCreate,
    JobKind,
    JobPatch,
    JobRecord,
    JobResult,
    JobsDeleted,
    JobSelection,
    JobShare,
    JobShares,
    JobsStopping,
    JobStatus,
    LogBytes,
    Page,
    Position,
    StatusChange,
    WaitSeconds,
)
from orchestrator.server import reruns
from orchestrator.server.api.base import Answer, BaseHandler, Operation, Paged, Query
from orchestrator.server.api.uploads import StreamingBodyHandler
from orchestrator.server.jobs import new_job_id
from orchestrator.storage import AtomicWriter, layout


class JobForm(JobCreate):
    """A job as multipart/form-data: JobCreate's fields as text (structured ones as JSON
    text, `binaries` also one part each), and input files."""

    files: list[bytes] = Field(default_factory=list, alias="file[]",
                               description="input files; each part's file name is its path")


class CreateQuery(Query):
    sync: bool = Field(False, description="wait for the job to finish")
    timeout: WaitSeconds = Field(60.0, description="seconds to wait with sync")


class ListQuery(Paged):
    status: JobStatus | None = None
    search: str | None = Field(None, description="part of the name")
    sweep_id: str | None = Field(None, description="runs of one sweep")
    owner: str | None = Field(None, description="jobs of one owner (admins; others see only their own)")
    shared: bool = Field(False, description="true: jobs shared with you instead of your own")


class DeleteManyQuery(Query):
    stop: bool = Field(False, description="stop active jobs and delete them once stopped")
    ids: str | None = Field(None, description="comma-separated job ids (without a JSON body)")
    status: str | None = Field(None, description="jobs with this status (without a JSON body)")
    sweep_id: str | None = Field(None, description="runs of one sweep (without a JSON body)")


class JobsHandler(StreamingBodyHandler):
    openapi = {
        "post": Operation(
            "Create a job (and submit it unless submit is false); multipart adds files",
            body=JobCreate, form=JobForm, query=CreateQuery, response=JobRecord, status=201,
            answers=(Answer(202, JobRecord, "with sync: the job had not ended in time"),),
        ),
        "get": Operation("List jobs", query=ListQuery, response=Page[JobRecord]),
        "delete": Operation(
            "Delete jobs by ids or filters", body=JobSelection, body_required=False,
            query=DeleteManyQuery, response=JobsDeleted,
            answers=(Answer(202, JobsDeleted, "some jobs are stopping and are deleted once stopped"),),
        ),
    }
    body_methods = ("POST", "DELETE")

    async def prepare(self) -> None:
        self.job_id = new_job_id()
        await super().prepare()

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        path = self.claim_file(field_name, filename)
        return self.service.storage.writer(layout.input_key(self.job_id, path))

    def upload_prefix(self) -> str:
        return layout.job_prefix(self.job_id)  # a new id: nothing else lives there yet

    async def post(self) -> None:
        await self.finish_body()
        query = self.query_args()  # a bad query refuses the job before it exists
        request = self._job_request()
        kind = JobKind.COMMAND
        if request.pickled is not None:
            await self._store_pickled(request.pickled)
            kind = JobKind.CALLABLE
        job = await self.service.jobs.create_from_upload(
            request, self.principal, job_id=self.job_id, files=sorted(self.file_paths), kind=kind)
        self.keep_upload()
        status = 201
        if query.sync:
            job = await self.service.jobs.wait(job.id, query.timeout, self.principal)
            status = 201 if job.status.is_terminal else 202
        self.set_header("Location", f"/api/v1/jobs/{job.id}")
        self.send_json(job, status)

    async def _store_pickled(self, pickled: str) -> None:
        """A callable's bytes, stored as they came: only a worker ever unpickles them."""
        if not self.service.settings.pickled_code:
            raise PickledCodeRefused("this server runs only entry points, job types and commands: "
                                     "pickled code is switched off (pickled_code=false)")
        await asyncio.to_thread(
            self.service.storage.put_bytes, layout.callable_key(self.job_id), base64.b64decode(pickled))

    def _job_request(self) -> JobCreate:
        if self.json_body is not None:
            return self.parse_body(JobCreate, bytes(self.json_body))
        if self.multipart is None:
            raise ValidationFailed("send JSON or multipart/form-data", {"body": "missing"})
        fields = {name: _form_value(name, values) for name, values in self.multipart.fields.items()}
        for name, value in fields.items():
            _check_text(name, value)
        try:
            return JobCreate.model_validate(fields)
        except ValidationError as exc:
            raise validation_failed(exc) from None

    async def get(self) -> None:
        query = self.query_args()
        page, size = query.page, query.page_size
        count, jobs = self.service.jobs.list(
            self.principal,
            shared=query.shared,
            status=query.status,
            search=query.search,
            sweep_id=query.sweep_id,
            owner=query.owner,
            offset=(page - 1) * size,
            limit=size,
        )
        self.send_page(count, jobs, page, size)

    async def delete(self) -> None:
        await self.finish_body()
        query = self.query_args()
        selection = self._selection(query)
        result = JobsDeleted(**await self.service.jobs.delete_many(
            selection, self.user, self.principal.scope, stop=query.stop
        ))
        self.send_json(result, 202 if result.deleting else 200)

    def _selection(self, query: DeleteManyQuery) -> JobSelection:
        if self.json_body:
            return self.parse_body(JobSelection, bytes(self.json_body))
        chosen: dict[str, Any] = {
            "ids": [i for i in query.ids.split(",") if i] if query.ids else None,
            "status": query.status,
            "sweep_id": query.sweep_id,
        }
        try:
            return JobSelection.model_validate({k: v for k, v in chosen.items() if v is not None})
        except ValidationError as exc:
            raise validation_failed(exc) from None


class JobsStopHandler(BaseHandler):
    openapi = {"post": Operation("Stop jobs by ids or filters", body=JobSelection,
                                 response=JobsStopping, status=202)}

    async def post(self) -> None:
        selection = self.parse_body(JobSelection)
        stopped = await self.service.jobs.stop_many(selection, self.user, self.principal.scope)
        self.send_json(JobsStopping(stopping=stopped), 202)


class WaitQuery(Query):
    wait: WaitSeconds | None = Field(None, description="seconds to wait for it to end first")


class StopQuery(Query):
    stop: bool = Field(False, description="stop it first if running (answers 202)")


class JobHandler(BaseHandler):
    openapi = {
        "get": Operation("Show a job", query=WaitQuery, response=JobRecord),
        "patch": Operation("Edit name or priority while CREATED or QUEUED", body=JobPatch,
                           response=JobRecord),
        "delete": Operation("Delete a finished job and its files", query=StopQuery, status=204,
                            answers=(Answer(202, JobRecord, "with stop: stopping; deleted once stopped"),)),
    }

    async def get(self, job_id: str) -> None:
        wait = self.query_args().wait
        if wait:
            job = await self.service.jobs.wait(job_id, wait, self.principal)
        else:
            job = self.service.jobs.get(job_id, self.principal)
        self.send_json(job)

    async def patch(self, job_id: str) -> None:
        patch = self.parse_body(JobPatch)
        self.send_json(await self.service.jobs.patch(job_id, patch, self.principal))

    async def delete(self, job_id: str) -> None:
        deleted = await self.service.jobs.delete(
            job_id, stop=self.query_args().stop, requested_by=self.user, viewer=self.principal
        )
        if deleted:
            self.set_status(204)
            self.finish()
        else:
            self.send_json(self.service.jobs.get(job_id), 202)


class JobSubmitHandler(BaseHandler):
    openapi = {"post": Operation("Submit a CREATED job", response=JobRecord, status=202)}

    async def post(self, job_id: str) -> None:
        self.send_json(await self.service.jobs.submit(job_id, self.principal), 202)


class JobStopHandler(BaseHandler):
    openapi = {"post": Operation("Stop a job and every process it started", response=JobRecord,
                                 status=202)}

    async def post(self, job_id: str) -> None:
        self.send_json(await self.service.jobs.stop(job_id, self.user, self.principal), 202)


class JobRerunHandler(BaseHandler):
    openapi = {"post": Operation("Run an ended job again as a new attempt, its history kept (a "
                                 "sweep's run reruns within its sweep)", response=JobRecord, status=202)}

    async def post(self, job_id: str) -> None:
        self.send_json(await reruns.rerun_job(self.service, job_id, self.user, self.principal), 202)


class JobStatusesHandler(BaseHandler):
    openapi = {"get": Operation("Status history, oldest first", response=list[StatusChange])}

    async def get(self, job_id: str) -> None:
        history = self.service.jobs.history(job_id, self.principal)
        self.send_json([h.model_dump(mode="json") for h in history])


class LogQuery(Query):
    stream: Literal["stdout", "stderr"] = "stdout"
    offset: Position = Field(0, description="byte offset")
    limit: LogBytes = 4 * 2**20
    follow: bool = Field(False, description="stream until the job ends")


class JobLogsHandler(BaseHandler):
    openapi = {
        "get": Operation(
            "stdout or stderr from a byte offset; follow streams until the job ends",
            query=LogQuery, raw_response="text/plain",
        )
    }

    async def get(self, job_id: str) -> None:
        jobs = self.service.jobs
        query = self.query_args()
        stream, offset, limit, follow = query.stream, query.offset, query.limit, query.follow
        job = jobs.get(job_id, self.principal)
        data = await jobs.read_log(job_id, stream, offset, limit)
        self.set_header("Content-Type", "text/plain; charset=utf-8")
        if not follow:
            self.set_header("X-Log-Offset", str(offset + len(data)))
            self.set_header("X-Job-Status", job.status.value)
            self.finish(data)
            return
        await self._follow(job_id, stream, offset, data)

    async def _follow(self, job_id: str, stream: str, offset: int, data: bytes) -> None:
        """Write as the log grows; after the job ends, one last read takes the tail. Before
        each write and each poll (at least once a heartbeat) the caller's access is asked
        again: a revoked token or an unshared job ends the stream."""
        jobs, pause = self.service.jobs, 0.1
        longest_pause = min(1.0, self.service.settings.stream_heartbeat_s)
        try:
            while (job := self._visible_job(job_id)) is not None:
                if data:
                    self.write(data)
                    await self.flush()
                    offset += len(data)
                    pause = 0.1
                    data = await jobs.read_log(job_id, stream, offset, 4 * 2**20)
                    continue
                if job.status.is_terminal:
                    data = await jobs.read_log(job_id, stream, offset, 16 * 2**20)
                    if not data:
                        break
                    continue
                await asyncio.sleep(pause)
                pause = min(pause * 1.5, longest_pause)
                data = await jobs.read_log(job_id, stream, offset, 4 * 2**20)
        except StreamClosedError:
            return
        self.finish()

    def _visible_job(self, job_id: str) -> JobRecord | None:
        """The job while the caller may still read it; None once their token is revoked or
        the job is no longer theirs to see (unshared, deleted)."""
        if self.access_revoked():
            return None
        try:
            return self.service.jobs.get(job_id, self.principal)
        except NotFound:
            return None


class FilesQuery(Paged):
    search: str | None = Field(None, description="part of the path")


class DownloadQuery(Query):
    verify: bool = Field(False, description="check the stored bytes against their sha256 first")


class JobFilesHandler(BaseHandler):
    openapi = {"get": Operation("List output files", query=FilesQuery, response=Page[FileEntry])}

    async def get(self, job_id: str) -> None:
        query = self.query_args()
        page, size = query.page, query.page_size
        count, files = self.service.jobs.list_files(
            job_id, query.search, (page - 1) * size, size, self.principal
        )
        self.send_page(count, files, page, size)


class JobFileHandler(BaseHandler):
    openapi = {"get": Operation("Download an output file (Range supported; ?verify=true checks its sha256 first)",
                                query=DownloadQuery, raw_response="application/octet-stream",
                                ranges=True)}

    async def get(self, job_id: str, path: str) -> None:
        verify = self.query_args().verify
        entry, key = self.service.jobs.file(job_id, path, self.principal)
        await self.send_stored(
            self.service.storage, key, entry.size, entry.sha256, "application/octet-stream", entry.path,
            verify,
        )


class JobResultHandler(BaseHandler):
    openapi = {"get": Operation("The job's exit code, scalar outputs and timings",
                                response=JobResult)}

    async def get(self, job_id: str) -> None:
        job = self.service.jobs.get(job_id, self.principal)
        if job.result is None:
            raise Conflict(f"job {job_id} is {job.status.value}; it has no result yet")
        body = job.result.model_dump(mode="json")
        body.update(job_id=job.id, status=job.status.value, status_reason=job.status_reason)
        self.send_json(body)


class JobShareHandler(BaseHandler):
    openapi = {
        "get": Operation("Who the job is shared with (owner and admins)", response=JobShares),
        "post": Operation("Share the job read-only with named users: they may see it, its "
                          "history, logs, outputs and result, never change or stop it",
                          body=JobShare, response=JobShares),
        "delete": Operation("Stop sharing with named users", body=JobShare, response=JobShares),
    }

    async def get(self, job_id: str) -> None:
        self.send_json(self.service.jobs.shares(job_id, self.principal))

    async def post(self, job_id: str) -> None:
        users = self.parse_body(JobShare).users
        self.send_json(self.service.jobs.share(job_id, users, self.principal))

    async def delete(self, job_id: str) -> None:
        users = self.parse_body(JobShare).users
        self.send_json(self.service.jobs.unshare(job_id, users, self.principal))


def _form_value(name: str, values: list[str]) -> Any:
    """Form fields carry text; structured fields (and numbers) are JSON in that text."""
    if name == "binaries" and len(values) > 1:
        return values
    value = values[-1]
    if name == "name":
        return value
    if name == "command":
        return _json_or_text(value) if value.lstrip().startswith("[") else value
    if name == "binaries":
        parsed = _json_or_text(value)
        return parsed if isinstance(parsed, list) else [v for v in value.split(",") if v]
    return _json_or_text(value)


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError:
        return value
    except RecursionError:
        raise ValidationFailed("a form field nests too deeply", {"body": "nested too deeply"}) from None


def _check_text(name: str, value: Any) -> None:
    """JSON text may spell lone surrogates ('\\ud800'), which no process can be given."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationFailed(f"field {name} is not valid Unicode", {name: "lone surrogate"}) from None
