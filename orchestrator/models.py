"""Request and record models: the JSON users send and see."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from orchestrator.declared_outputs import DeclaredOutputs
from orchestrator.jobtypes.manifest import ENTRYPOINT_PATTERN, Configuration
from orchestrator.kinds import JobKind
from orchestrator.paths import _NAME as SAFE_NAME
from orchestrator.paths import safe_name

MAX_VERSION = 2**31  # binary versions: far past any real count, inside SQLite's integers
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,127}$")
NO_NUL = r"^[^\x00]*$"
ENTRYPOINT = re.compile(ENTRYPOINT_PATTERN)  # 'package.module:function'
MAX_PICKLED_BYTES = 16 * 2**20
COMMAND_LINE = r"^[^\x00]*\S[^\x00]*$"  # what _non_empty_command takes as a line

# ---- constraints of query parameters, each declared once ---------------------------------

MAX_WAIT_S = 3600.0  # the longest a request may wait for a job or sweep to end
MAX_PAGE_SIZE = 1000
MAX_QUERY_INT = 2**62  # any integer the API takes stays inside SQLite's 64-bit integers
MAX_LOG_BYTES = 16 * 2**20  # one read of a log

PageNumber = Annotated[int, Field(ge=1, le=10**9, description="1-based")]
PageSize = Annotated[int, Field(ge=1, le=MAX_PAGE_SIZE, description=f"1-{MAX_PAGE_SIZE}")]
WaitSeconds = Annotated[float, Field(ge=0, le=MAX_WAIT_S, allow_inf_nan=False)]
Position = Annotated[int, Field(ge=0, le=MAX_QUERY_INT)]  # byte offsets, cursors
VersionNumber = Annotated[int, Field(ge=1, le=MAX_QUERY_INT, description="a version number (default latest)")]
LogBytes = Annotated[int, Field(ge=1, le=MAX_LOG_BYTES, description="most bytes to return")]
SafeName = Annotated[
    str, AfterValidator(safe_name), WithJsonSchema({"type": "string", "pattern": SAFE_NAME.pattern})
]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class JobStatus(str, Enum):
    CREATED = "CREATED"
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATUSES

    @property
    def is_active(self) -> bool:
        return self in (JobStatus.QUEUED, JobStatus.RUNNING)


TERMINAL_STATUSES = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED})


class Request(BaseModel):
    """Requests refuse unknown fields so typos are reported, not ignored."""

    model_config = ConfigDict(extra="forbid")


class Resources(Request):
    cores: float = Field(1, ge=0, le=4096, description="CPU cores (Dask resource CPU)")
    gpus: int = Field(0, ge=0, le=64, description="GPU devices (Dask resource GPU)")
    memory: int | None = Field(
        None, ge=0, le=2**60, description="bytes, or a size such as '2GiB' (Dask resource MEMORY)"
    )

    @field_validator("memory", mode="before")
    @classmethod
    def _parse_size(cls, value: Any) -> Any:
        if isinstance(value, str):
            from dask.utils import parse_bytes  # the whole of Dask: not for every CLI command

            try:
                return parse_bytes(value)
            except (ValueError, TypeError) as exc:
                raise ValueError(f"not a size: {value!r}") from exc
        return value

    def as_dask(self) -> dict[str, float]:
        """The Dask resource restrictions; zero requests are left out."""
        wanted = {"CPU": self.cores, "GPU": self.gpus, "MEMORY": self.memory or 0}
        return {name: amount for name, amount in wanted.items() if amount}


def _check_job_name(value: str) -> str:
    if not JOB_NAME.fullmatch(value):
        raise ValueError(
            "must be 1-128 letters, digits, spaces, '.', '_' or '-', starting with a letter or digit"
        )
    return value


JobName = Annotated[
    str, AfterValidator(_check_job_name), WithJsonSchema({"type": "string", "pattern": JOB_NAME.pattern})
]
# What the validators of JobTemplate check, as JSON Schema (pydantic cannot derive it).
_LINE = {"type": "string", "pattern": COMMAND_LINE}
_ARGS = {"type": "array", "minItems": 1, "prefixItems": [_LINE], "items": {"type": "string", "pattern": NO_NUL}}
COMMAND_SCHEMA: dict[str, Any] = {"anyOf": [_LINE, _ARGS]}
ENV_SCHEMA: dict[str, Any] = {
    "propertyNames": {"pattern": ENV_NAME.pattern},
    "additionalProperties": {"type": "string", "pattern": NO_NUL},
}
_NAME_PART = SAFE_NAME.pattern.removeprefix("^").removesuffix("$")
BINARY_REFS_SCHEMA: dict[str, Any] = {"items": {
    "type": "string",
    "description": "'name', 'name@version', an admin's 'owner/name[@version]', or an fsspec URL",
    "pattern": rf"^(({_NAME_PART})/)?{_NAME_PART}(@[0-9]+)?$|://",
}}


class JobTemplate(Request):
    """What a job runs and with what; a sweep fills it in once per run."""

    name: JobName | None = Field(None, description="shown in lists and in Dask task keys")
    command: str | list[str] | None = Field(
        ..., description="a shell command line, or an argument list run without a shell",
        json_schema_extra={"anyOf": [*COMMAND_SCHEMA["anyOf"], {"type": "null"}]},
    )
    binaries: list[str] = Field(
        default_factory=list,
        description="uploaded binaries ('name' or 'name@version'; admins also 'owner/name') "
        "or fsspec URLs to stage",
        json_schema_extra=BINARY_REFS_SCHEMA,
    )
    env: dict[str, str] = Field(default_factory=dict, json_schema_extra=ENV_SCHEMA)
    secret_env: dict[str, str] = Field(
        default_factory=dict,
        description="environment passed to the process but stored encrypted and shown as '****'",
        json_schema_extra=ENV_SCHEMA,
    )
    resources: Resources = Field(default_factory=Resources)
    timeout_s: float | None = Field(None, gt=0, le=30 * 24 * 3600)
    retries: int = Field(0, ge=0, le=10, description="extra attempts after a failure")
    priority: int = Field(0, ge=-1_000_000, le=1_000_000, description="higher runs first")
    outputs: DeclaredOutputs = Field(
        default_factory=list,
        description="scalar outputs read from files the command writes (a regex's last match, a "
        "CSV cell, a JSON value), kept as outputs.json values are",
    )
    entrypoint: str | None = Field(
        None, pattern=ENTRYPOINT.pattern, description="instead of a command: 'package.module:function' "
        "of the uploaded Python binaries (a wheel, a zip of modules or one .py), called in a warm "
        "context on a worker; its JSON return value is the job's result")
    kwargs: dict[str, Any] | None = Field(
        None, description="keyword arguments of the entry point (JSON values; a sweep's variables join them)")

    @field_validator("command")
    @classmethod
    def _non_empty_command(cls, value: str | list[str] | None) -> str | list[str] | None:
        if value is None:
            return value
        if isinstance(value, str):
            if not value.strip():
                raise ValueError("must not be empty")
            if "\x00" in value:
                raise ValueError("must not contain NUL")
        else:
            if not value or not value[0].strip():
                raise ValueError("must not be empty")
            if any("\x00" in arg for arg in value):
                raise ValueError("must not contain NUL")
        return value

    @field_validator("env", "secret_env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, item in value.items():
            if not ENV_NAME.fullmatch(name):
                raise ValueError(f"invalid variable name {name!r}")
            if "\x00" in item:
                raise ValueError(f"value of {name} contains NUL")
        return value

    @field_validator("binaries")
    @classmethod
    def _binary_refs(cls, value: list[str]) -> list[str]:
        for ref in value:
            if "://" in ref:
                continue
            name, _, version = ref.partition("@")
            owner, _, name = name.rpartition("/")
            safe_name(name)
            if owner:
                safe_name(owner)
            if version and not (version.isdigit() and int(version) <= MAX_VERSION):
                raise ValueError(f"{ref!r}: version must be a number up to {MAX_VERSION}")
        return value


JOB_TYPE_REF = r"^[A-Za-z0-9-]{1,128}(@[0-9A-Za-z.+-]{1,64})?$"
INPUT_SECTIONS = ("files", "json")


def _command_or_job_type(schema: dict[str, Any]) -> None:
    schema["anyOf"] = [{"required": ["command"]}, {"required": ["job_type"]}, {"required": ["entrypoint"]},
                       {"required": ["pickled"]}]


def check_entrypoint_fields(request: JobTemplate) -> None:
    """An entry point (or a pickled callable) is what runs, alone; kwargs go with one of them.
    (A command with a job_type is refused by the request's own validator, naming command.)"""
    python = [name for name in ("entrypoint", "pickled") if getattr(request, name, None) is not None]
    if python:
        others = [name for name in ("command", "job_type", "entrypoint", "pickled")
                  if name != python[0] and getattr(request, name, None) is not None]
        if others:
            raise ValueError(f"{python[0]}: give one of command, entrypoint, job_type or pickled, "
                             f"not {python[0]} and {others[0]}")
    elif request.kwargs is not None:
        raise ValueError("kwargs: keyword arguments go with an entrypoint")


class JobCreate(JobTemplate):
    model_config = ConfigDict(json_schema_extra=_command_or_job_type)

    command: str | list[str] | None = Field(
        None, description="a shell command line, or an argument list run without a shell "
        "(required unless job_type is given)",
        json_schema_extra={"anyOf": [*COMMAND_SCHEMA["anyOf"], {"type": "null"}]},
    )
    job_type: str | None = Field(
        None, pattern=JOB_TYPE_REF,
        description="run a registered job type: 'name@version', or 'name' for its latest active version")
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="a job type's inputs: {'files': {NAME: [uploaded file, "
        "'binary@version' or URL, ...]}, 'json': {NAME: value}}")
    configuration: Configuration | None = Field(None, description="laid over the job type's")
    pickled: str | None = Field(
        None, max_length=MAX_PICKLED_BYTES * 4 // 3 + 4, description="a Python callable: base64 of "
        "cloudpickle.dumps((function, args, kwargs)), unpickled only by the worker, in the owner's "
        "warm context (servers may refuse pickled code)")
    submit: bool = Field(True, description="false saves the job as CREATED")

    @field_validator("pickled")
    @classmethod
    def _base64(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                raise ValueError("must be base64 (of a cloudpickle.dumps((function, args, kwargs)))") from None
        return value

    @field_validator("inputs")
    @classmethod
    def _input_sections(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(value) - set(INPUT_SECTIONS))
        if unknown:
            raise ValueError(f"unknown section {unknown[0]!r}; inputs has 'files' and 'json'")
        return value

    @model_validator(mode="after")
    def _runs_something(self) -> JobCreate:
        check_entrypoint_fields(self)
        if self.job_type is None:
            if self.command is None and self.entrypoint is None and self.pickled is None:
                raise ValueError("command: give a command, an entrypoint, or a job_type to run")
            if self.inputs or self.configuration is not None:
                raise ValueError("job_type: inputs and configuration belong to a job type")
        elif self.command is not None:
            raise ValueError("command: a job of a type runs the type's command; leave command out")
        elif self.outputs:
            raise ValueError("outputs: a job type declares its own outputs")
        return self


class JobTypeRef(BaseModel):
    """The job type a job runs, pinned: its command, inputs and limits are that revision's."""

    name: str
    version: str
    revision: int


class JobPatch(Request):
    model_config = ConfigDict(json_schema_extra={"anyOf": [  # what _something asks
        {"required": ["name"], "properties": {"name": {"type": "string"}}},
        {"required": ["priority"], "properties": {"priority": {"type": "integer"}}},
    ]})

    name: JobName | None = None
    priority: int | None = Field(None, ge=-1_000_000, le=1_000_000)

    @model_validator(mode="after")
    def _something(self) -> JobPatch:
        if self.name is None and self.priority is None:
            raise ValueError("give name or priority")
        return self


class JobShare(Request):
    """Read-only access to a job for named users: they can see it, its logs and outputs."""

    users: list[SafeName] = Field(..., min_length=1, max_length=1000)


class JobShares(BaseModel):
    job_id: str
    shared_with: list[str]


class JobSelection(Request):
    """Bulk stop and delete: explicit ids, or filters; never everything by accident."""

    model_config = ConfigDict(json_schema_extra={"anyOf": [  # what _something asks
        {"required": ["ids"], "properties": {"ids": {"type": "array", "minItems": 1}}},
        {"required": ["status"], "properties": {"status": {"not": {"type": "null"}}}},
        {"required": ["sweep_id"], "properties": {"sweep_id": {"type": "string"}}},
    ]})

    ids: list[str] | None = Field(None, max_length=10_000)
    status: JobStatus | None = None
    sweep_id: str | None = None

    @model_validator(mode="after")
    def _something(self) -> JobSelection:
        if not self.ids and self.status is None and self.sweep_id is None:
            raise ValueError("give ids, status or sweep_id")
        return self


class StatusChange(BaseModel):
    status: JobStatus
    at: datetime
    reason: str | None = None


class FileEntry(BaseModel):
    path: str
    size: int
    sha256: str
    kind: Literal["output", "input"] = Field(
        "output", description="'output': written by the run; 'input': a file it ran with, as "
        "staged (a sweep's rendered template)")


class JobResult(BaseModel):
    exit_code: int | None = None
    outputs: dict[str, Any] = Field(
        default_factory=dict, description="scalar outputs the job wrote to outputs.json"
    )
    value: Any = Field(None, description="the return value of an entry point or a Python callable, if JSON")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float | None = None
    worker: str | None = None
    error: str | None = None


class JobRecord(BaseModel):
    id: str
    name: str
    owner: str
    kind: JobKind = Field(JobKind.COMMAND, description="'command', 'callable', 'job_type' or 'entrypoint'")
    status: JobStatus
    status_reason: str | None = None
    command: str | list[str] | None = None
    binaries: list[str] = Field(default_factory=list, description="pinned as name@version")
    files: list[str] = Field(default_factory=list, description="input files staged with the job")
    env: dict[str, str] = Field(default_factory=dict)
    secret_env: dict[str, str] = Field(default_factory=dict, description="names only: values show as '****'")
    resources: Resources
    timeout_s: float | None = None
    retries: int = 0
    priority: int = 0
    attempt: int = 0
    worker_losses: int = Field(0, description="times a worker died while running it")
    storage_bytes: int = Field(0, description="bytes it keeps in storage: inputs, outputs and logs")
    worker: str | None = None
    sweep_id: str | None = None
    index: int | None = None
    variables: dict[str, Any] | None = Field(None, description="a sweep run's variable values")
    job_type: JobTypeRef | None = Field(None, description="the job type (and revision) it runs")
    inputs: dict[str, dict[str, Any]] | None = Field(None, description="a job type's inputs as given")
    outputs: DeclaredOutputs = Field(default_factory=list, description="declared outputs read from its files")
    entrypoint: str | None = Field(None, description="the function an entry-point job calls")
    kwargs: dict[str, Any] | None = Field(None, description="the entry point's keyword arguments")
    in_context: bool = Field(False, description="a callable sent over REST: runs in its owner's warm "
                             "context process, not in the worker's own thread")
    created_at: datetime
    submitted_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: JobResult | None = None


class BinaryRecord(BaseModel):
    name: str
    version: int
    size: int
    sha256: str
    content_type: str
    owner: str
    uploaded_at: datetime


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    count: int
    next: str | None = None
    previous: str | None = None
    results: list[T]


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody



# ---- answers that are not records -----------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"] = "ok"


class JobsDeleted(BaseModel):
    deleted: list[str]
    deleting: list[str] = Field(description="stopping; deleted once stopped")
    skipped_active: list[str]


class JobsStopping(BaseModel):
    stopping: list[str]


class BinaryDetail(BinaryRecord):
    versions: list[int] = Field(description="every version, oldest first")


class ContextState(BaseModel):
    """A warm context on a worker: a Python process keeping an application's artifacts
    imported between its owner's entry-point jobs."""

    artifacts: list[str] = Field(description="the binaries on its path, as 'name@version'")
    artifact: str | None = Field(None, description="the (first) binary's name; null for a callable's context")
    version: int | None = Field(None, description="that binary's version")
    owner: str
    pid: int
    jobs_run: int
    busy: bool = Field(description="running a job now")
    started_at: datetime
    idle_since: datetime | None = Field(None, description="when its last job ended (null while busy)")


class WorkerState(BaseModel):
    address: str
    name: str
    nthreads: int
    memory_limit: int | None = None
    declared: dict[str, float]
    used: dict[str, float]
    free: dict[str, float]
    running_jobs: list[str] = Field(default_factory=list, description="your running jobs there")
    contexts: list[ContextState] = Field(
        default_factory=list, description="your warm entry-point contexts there (as of its last heartbeat)")


class ClusterState(BaseModel):
    scheduler: str
    dashboard_link: str | None
    jobs_page: str | None
    can_grow: bool
    workers: list[WorkerState]


class OpenAPIDocument(BaseModel):
    model_config = ConfigDict(extra="allow")

    openapi: str
    paths: dict[str, Any]
