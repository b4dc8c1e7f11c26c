"""Jobs as users see them: create, submit, edit, stop, delete, and read logs and outputs.

The REST handlers and the embedded Python API both call this one service, so the two can
never disagree about what a request means.
"""

from __future__ import annotations

import asyncio
import shlex
import uuid
from typing import Any

from orchestrator.errors import Conflict, Forbidden, NotFound, QuotaExceeded, ValidationFailed
from orchestrator.models import (
    FileEntry,
    JobCreate,
    JobKind,
    JobPatch,
    JobRecord,
    JobSelection,
    JobShares,
    JobStatus,
    JobTypeRef,
    StatusChange,
    utcnow,
)
from orchestrator.server.auth import Principal
from orchestrator.server.binaries import BinaryService
from orchestrator.server.engine import Engine
from orchestrator.server.job_types import JobTypeService
from orchestrator.server.ledger import Store
from orchestrator.server.secrets import Sealer, masked
from orchestrator.server.typed_jobs import TypedJob, typed_job
from orchestrator.storage import Storage, layout

MAX_LOG_CHUNK = 16 * 2**20
_QUOTING = frozenset("'\"\\")  # what makes shlex.split differ from str.split


def new_job_id() -> str:
    return uuid.uuid4().hex[:12]


class JobService:
    """Every method that takes a `viewer` answers only what that principal may see: their own
    jobs (an admin: everyone's), plus jobs shared with them read-only. Anyone else's job is a
    404 exactly like a missing one, so ids reveal nothing. `viewer=None` is the orchestrator
    itself (embedded use, recovery)."""

    def __init__(
        self, store: Store, storage: Storage, engine: Engine, binaries: BinaryService,
        sealer: Sealer, max_queued_per_user: int, job_types: JobTypeService,
    ):
        self.job_types = job_types
        self.store = store
        self.storage = storage
        self.engine = engine
        self.binaries = binaries
        self.sealer = sealer
        self.max_queued_per_user = max_queued_per_user
        engine.on_finished.append(self._delete_if_asked)

    # ---- creating ---------------------------------------------------------------------

    async def create(
        self,
        request: JobCreate,
        creator: Principal,
        *,
        job_id: str | None = None,
        files: list[str] | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> JobRecord:
        """Record a job whose input files are already stored under its id, and submit it."""
        owner = creator.user
        if request.submit:
            self.check_queue_quota(owner)
            await self.engine.check_may_run(creator)
        now = utcnow()
        job_id = job_id or new_job_id()
        stored = 0
        if files or kind == JobKind.CALLABLE:
            stored = await asyncio.to_thread(self.storage.prefix_bytes, layout.job_prefix(job_id))
        kind = JobKind.ENTRYPOINT if request.entrypoint is not None else kind
        fields: dict[str, Any] = dict(
            name=request.name or default_name(request.command, request.entrypoint),
            kind=kind,
            command=request.command if kind == JobKind.COMMAND else None,
            binaries=self.binaries.pin(request.binaries, owner, creator.admin),
            env=request.env,
            secret_env=masked(request.secret_env),
            resources=request.resources,
            timeout_s=request.timeout_s,
            priority=request.priority,
            outputs=request.outputs,
            entrypoint=request.entrypoint,
            kwargs=request.kwargs,
            in_context=request.pickled is not None,
        )
        if kind == JobKind.ENTRYPOINT:
            refuse_url_artifacts(request.binaries)
        secrets = request.secret_env
        if request.job_type is not None:
            typed = self._typed(request, creator, files or [])
            fields.update(typed.fields)
            secrets = typed.secrets
        job = JobRecord(
            id=job_id, storage_bytes=stored, owner=owner, status=JobStatus.CREATED,
            files=sorted(files or []), retries=request.retries, created_at=now, **fields,
        )
        waiting = await self.engine.placement(job.resources)
        sealed = self.sealer.seal(secrets)
        if request.submit:
            return await self.engine.admit(job, waiting, sealed)
        self.store.insert_job(job, [StatusChange(status=JobStatus.CREATED, at=now)], sealed)
        return job

    def _typed(self, request: JobCreate, creator: Principal, files: list[str]) -> TypedJob:
        """A job of a job type: the pinned revision's command, inputs and limits."""
        assert request.job_type is not None
        if request.env or request.secret_env or request.binaries:
            raise ValidationFailed("a job of a type takes inputs and configuration, not env or binaries",
                                   {"job_type": "give inputs and configuration instead of env or binaries"})
        row = self.job_types.resolve(request.job_type)
        ref = JobTypeRef(name=row.name, version=row.version, revision=row.revision_num)
        manifest, _ = self.job_types.revision_contract(ref)
        return typed_job(request, row, manifest, self.job_types.secret_settings(row), files,
                         self.binaries, creator.user, creator.admin)

    async def create_from_upload(
        self, request: JobCreate, creator: Principal, *, job_id: str, files: list[str] | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> JobRecord:
        """`create` for a job whose inputs were stored under its new id first (uploaded parts,
        local files, a pickled callable): a refused job takes its inputs with it."""
        try:
            return await self.create(request, creator, job_id=job_id, files=files, kind=kind)
        except BaseException:
            await asyncio.to_thread(self.storage.delete_prefix, layout.job_prefix(job_id))
            raise

    def check_queue_quota(self, owner: str, adding: int = 1) -> None:
        """Refuse work past the owner's cap on queued jobs (sweep runs are bounded by the
        sweep size limit instead), so one user cannot bury the queue for everyone."""
        queued = self.store.count_owned(owner, [JobStatus.QUEUED])
        if queued + adding > self.max_queued_per_user:
            raise QuotaExceeded(
                f"{owner} already has {queued} queued jobs; the limit is {self.max_queued_per_user}",
                {"submit": f"at most {self.max_queued_per_user} queued jobs per user"},
            )

    async def submit(self, job_id: str, viewer: Principal | None = None) -> JobRecord:
        job = self.get(job_id, viewer, change=True)
        self.check_queue_quota(job.owner)
        await self.engine.check_may_run(viewer)
        if job.status != JobStatus.CREATED:
            raise Conflict(f"job {job_id} is {job.status.value}; only CREATED jobs can be submitted")
        self.engine.submit(job, reason=await self.engine.placement(job.resources))
        return self.get(job_id)

    # ---- reading ----------------------------------------------------------------------

    def get(self, job_id: str, viewer: Principal | None = None, *, change: bool = False) -> JobRecord:
        """The job if `viewer` may see it; with `change`, only if they may also act on it."""
        job = self.store.get_job(job_id)
        if job is None or not self._visible(job, viewer):
            raise NotFound(f"no job {job_id}")
        if change and viewer is not None and not viewer.owns(job.owner):
            raise Forbidden(f"job {job_id} is shared with you read-only")
        return job

    def _visible(self, job: JobRecord, viewer: Principal | None) -> bool:
        return viewer is None or viewer.owns(job.owner) or self.store.is_shared_with(job.id, viewer.user)

    def list(self, viewer: Principal | None = None, shared: bool = False, **filters: Any) -> tuple[int, list[JobRecord]]:
        """Own jobs (an admin: everyone's, or one `owner`'s); with `shared`, those shared with
        the viewer instead."""
        if viewer is not None and shared:
            filters["shared_with"] = viewer.user
        elif viewer is not None and not viewer.admin:
            if filters.get("owner") not in (None, viewer.user):
                return 0, []
            filters["owner"] = viewer.user
        return self.store.list_jobs(**filters)

    def share(self, job_id: str, users: list[str], viewer: Principal | None) -> JobShares:
        job = self.get(job_id, viewer, change=True)
        self.store.share_job(job.id, [u for u in users if u != job.owner], viewer.user if viewer else job.owner)
        return self.shares(job_id, viewer)

    def unshare(self, job_id: str, users: list[str], viewer: Principal | None) -> JobShares:
        self.get(job_id, viewer, change=True)
        self.store.unshare_job(job_id, users)
        return self.shares(job_id, viewer)

    def shares(self, job_id: str, viewer: Principal | None) -> JobShares:
        self.get(job_id, viewer, change=True)
        return JobShares(job_id=job_id, shared_with=self.store.job_shared_with(job_id))

    def history(self, job_id: str, viewer: Principal | None = None) -> list[StatusChange]:
        self.get(job_id, viewer)
        return self.store.history(job_id)

    async def wait(self, job_id: str, timeout: float | None, viewer: Principal | None = None) -> JobRecord:
        self.get(job_id, viewer)
        await self.engine.wait(job_id, timeout)
        return self.get(job_id)

    async def read_log(
        self, job_id: str, stream: str, offset: int, limit: int, viewer: Principal | None = None
    ) -> bytes:
        self.get(job_id, viewer)
        if stream not in layout.LOG_STREAMS:
            raise ValidationFailed("unknown log stream", {"stream": "must be stdout or stderr"})
        limit = min(limit, MAX_LOG_CHUNK)
        return await asyncio.to_thread(
            layout.read_log, self.storage, job_id, stream, offset, limit
        )

    def list_files(
        self, job_id: str, search: str | None, offset: int, limit: int, viewer: Principal | None = None
    ) -> tuple[int, list[FileEntry]]:
        self.get(job_id, viewer)
        return self.store.list_files(job_id, search, offset, limit)

    def file(self, job_id: str, path: str, viewer: Principal | None = None) -> tuple[FileEntry, str]:
        """The manifest entry of one of the run's files (an output, or an input it ran with)
        and its storage key."""
        self.get(job_id, viewer)
        entry = self.store.get_file(job_id, path)
        if entry is None:
            raise NotFound(f"job {job_id} has no output {path!r}")
        key_of = layout.input_key if entry.kind == "input" else layout.output_key
        return entry, key_of(job_id, entry.path)

    # ---- changing ---------------------------------------------------------------------

    async def patch(self, job_id: str, patch: JobPatch, viewer: Principal | None = None) -> JobRecord:
        job = self.get(job_id, viewer, change=True)
        if job.status not in (JobStatus.CREATED, JobStatus.QUEUED):
            raise Conflict(f"job {job_id} is {job.status.value}; only CREATED or QUEUED jobs can be edited")
        changes = patch.model_dump(exclude_none=True)
        if job.sweep_id is not None and "priority" in changes:
            raise Conflict(f"job {job_id} is a run of sweep {job.sweep_id}; runs share the sweep's priority")
        self.store.update_job(job_id, **changes)
        if job.status == JobStatus.QUEUED and "priority" in changes:
            await self.engine.retract(job)
            current = self.get(job_id)
            if current.status == JobStatus.QUEUED:
                self.engine.submit(current, reason=f"priority changed to {patch.priority}")
        return self.get(job_id)

    async def stop(self, job_id: str, requested_by: str, viewer: Principal | None = None) -> JobRecord:
        job = self.get(job_id, viewer, change=True)
        await self.engine.stop(job, requested_by)
        return self.get(job_id)

    async def delete(
        self, job_id: str, *, stop: bool, requested_by: str, viewer: Principal | None = None
    ) -> bool:
        """Delete now (True), or, with `stop`, once the job has stopped (False)."""
        job = self.get(job_id, viewer, change=True)
        if job.status.is_active:
            if not stop:
                raise Conflict(
                    f"job {job_id} is {job.status.value}; stop it first or pass stop=true",
                )
            self.store.update_job(job_id, delete_when_done=True)
            await self.engine.stop(job, requested_by)
            if not self.get(job_id).status.is_terminal:
                return False
        await self.remove(job_id)
        return True

    async def stop_many(self, selection: JobSelection, requested_by: str, owner: str | None) -> list[str]:
        jobs = [job for job in self._select(selection, owner) if not job.status.is_terminal]
        await self.engine.stop_many(jobs, requested_by)
        return [job.id for job in jobs]

    async def delete_many(
        self, selection: JobSelection, requested_by: str, owner: str | None, stop: bool
    ) -> dict[str, list[str]]:
        deleted, scheduled, skipped = [], [], []
        for job in self._select(selection, owner):
            if job.status.is_active and not stop:
                skipped.append(job.id)
            elif await self.delete(job.id, stop=stop, requested_by=requested_by):
                deleted.append(job.id)
            else:
                scheduled.append(job.id)
        return {"deleted": deleted, "deleting": scheduled, "skipped_active": skipped}

    def _select(self, selection: JobSelection, owner: str | None) -> list[JobRecord]:
        _, jobs = self.store.list_jobs(
            ids=selection.ids, status=selection.status, sweep_id=selection.sweep_id,
            owner=owner, limit=None,
        )
        return jobs

    async def remove(self, job_id: str) -> None:
        await asyncio.to_thread(self.storage.delete_prefix, layout.job_prefix(job_id))
        self.store.delete_job(job_id)

    async def _delete_if_asked(self, job_ids: list[str]) -> None:
        for job_id in self.store.marked_among(job_ids):
            await self.remove(job_id)

    async def finish_pending_deletes(self) -> None:
        """After a restart: deletions that were waiting for a stop."""
        for job in self.store.jobs_to_delete():
            if job.status.is_terminal:
                await self.remove(job.id)


def refuse_url_artifacts(binaries: list[str]) -> None:
    """A warm context is kept per exact artifact version: a URL's bytes may change under it."""
    for position, ref in enumerate(binaries):
        if "://" in ref:
            raise ValidationFailed(
                "an entry point's binaries are uploaded binaries", {f"binaries.{position}": (
                    "an entry point imports uploaded binaries (pinned versions keep its warm "
                    "context exact); upload it: POST /binaries/{name}")})


def default_name(command: str | list[str] | None, entrypoint: str | None = None) -> str:
    """A name from the program a command runs (an entry point's function), shown in lists,
    task keys and the dashboard.

    Leading `NAME=value` words are environment for the program, often secrets
    (`DB_PASSWORD=hunter2 ./run.sh`), so they are skipped, and nothing after an '=' is ever
    used; a command line that cannot be split (unbalanced quotes) gets the plain "job"."""
    word = entrypoint.rpartition(":")[2].rpartition(".")[2] if entrypoint else _program_word(command)
    if not word:
        return "job"
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in word)[:64]
    return cleaned if cleaned[:1].isalnum() else f"job{cleaned}"[:64]


def _program_word(command: str | list[str] | None) -> str:
    if isinstance(command, str):
        try:  # a line without quotes or escapes splits the same way, without shlex's cost
            words = command.split() if not _QUOTING.intersection(command) else shlex.split(command)
        except ValueError:
            return ""
    else:
        words = list(command or [])
    program = next((word for word in words if "=" not in word), "")
    return program.rsplit("/", 1)[-1]
