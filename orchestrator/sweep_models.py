"""What a sweep is to its users: the request, the record and the previews, shared by the
server, the REST API and the Python API (which must not import the server to know them)."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchestrator import doe
from orchestrator.growth_models import Until, UntilState
from orchestrator.jobtypes.manifest import Configuration
from orchestrator.models import (
    COMMAND_SCHEMA,
    JOB_TYPE_REF,
    JobRecord,
    JobStatus,
    JobTemplate,
    Request,
    check_entrypoint_fields,
)
from orchestrator.paths import safe_relative_path

MAX_VARIABLES = 1000


class TemplateFile(Request):
    source: str = Field(..., description="an uploaded file's name, or a binary ('name' or 'name@version')")
    target: str = Field(..., description="where the rendered text goes in the run's working folder")

    @field_validator("target")
    @classmethod
    def _safe_target(cls, value: str) -> str:
        return safe_relative_path(value)


def _rest_needs_command(schema: dict[str, Any]) -> None:
    """Optional only for the Python API's callables: a sweep over REST runs a command or a
    job type."""
    schema["anyOf"] = [{"required": ["command"]}, {"required": ["job_type"]}, {"required": ["entrypoint"]}]


class SweepCreate(JobTemplate):
    model_config = ConfigDict(json_schema_extra=_rest_needs_command)

    command: str | list[str] | None = Field(
        None, description="with ${variable} placeholders; a shell line gets each value as one word",
        json_schema_extra=COMMAND_SCHEMA,
    )
    files: list[str] | None = Field(
        None, description="uploaded files to stage in every run (default: all uploaded)"
    )
    templates: list[TemplateFile] = Field(default_factory=list)
    variables: list[doe.Variable] | None = Field(None, max_length=MAX_VARIABLES)
    design: doe.Design | None = None
    cases: list[dict[str, Any]] | None = Field(None, description="explicit rows instead of variables")
    cases_csv: str | None = Field(None, description="rows as CSV text (header = variable names)")
    optional_columns: list[str] | None = Field(
        None, max_length=1000, description="columns of a cases CSV whose cells may be empty (they pass as empty text)")
    include_nominal_run: bool = False
    max_parallel: int | None = Field(None, ge=1, le=1_000_000)
    max_failures: int | None = Field(None, ge=1, description="stop the rest after this many failed runs")
    dry_run: bool = False
    until: Until | None = Field(None, description="grow the design by `batch` samples until the "
                                "statistic's confidence interval is narrow enough")
    job_type: str | None = Field(None, pattern=JOB_TYPE_REF,
                                 description="run a job type: 'name@version', or 'name' for its newest active version")
    inputs: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="the type's inputs; a JSON input may hold ${variable} "
        "placeholders, and a variable named like a JSON input fills it")
    configuration: Configuration | None = Field(None, description="laid over the job type's")

    @model_validator(mode="after")
    def _command_or_job_type(self) -> SweepCreate:
        check_entrypoint_fields(self)
        if self.job_type is not None:
            if self.command is not None:
                raise ValueError("command: a sweep of a job type runs the type's command; leave command out")
            if self.templates or self.env or self.secret_env or self.binaries or self.outputs:
                raise ValueError("job_type: a job type's sweep takes inputs and configuration, "
                                 "not templates, env, binaries or outputs")
        elif self.inputs or self.configuration is not None:
            raise ValueError("job_type: inputs and configuration belong to a job type")
        return self

    @model_validator(mode="after")
    def _until_grows_a_sampled_design(self) -> SweepCreate:
        if self.until is None:
            return self
        kind = getattr(self.design, "type", None)
        if not self.variables or kind not in ("monte_carlo", "latin_hypercube", "sobol", "saltelli"):
            raise ValueError("until: an adaptive sweep grows a monte_carlo, latin_hypercube, sobol or "
                             "saltelli design over variables; its samples are the first batch")
        if self.until.statistic == "sobol" and kind != "saltelli":
            raise ValueError("until: Sobol indices need a saltelli design")
        return self


class SweepRecord(BaseModel):
    id: str
    name: str
    owner: str
    kind: str
    status: JobStatus
    status_reason: str | None = None
    runs: int
    counts: dict[str, int]
    progress: float = Field(..., description="runs that ran to their end (COMPLETED or FAILED) / runs")
    output_problems: int = Field(0, description="completed runs whose outputs could not all be read")
    variables: list[str]
    design: str | None = None
    seed: int | None = None
    max_parallel: int | None = None
    max_failures: int | None = None
    storage_bytes: int = Field(0, description="bytes kept in storage: shared inputs and every run's")
    created_at: datetime
    finished_at: datetime | None = None
    spec: dict[str, Any] = Field(..., description="the request as recorded (cases left out)")
    extensions: list[dict[str, Any]] = Field(
        default_factory=list, description="samples added after creation, with how each block was made")
    until: UntilState | None = Field(None, description="an adaptive sweep's latest estimate and state")
    explorer: str | None = Field(None, description="the sweep's live explorer page in the Dask "
                                 "dashboard; null when the cluster serves no dashboard")


class RunPreview(BaseModel):
    index: int
    variables: dict[str, Any]
    command: str | list[str] | None = None
    templates: dict[str, str] = Field(default_factory=dict)


class DryRun(BaseModel):
    dry_run: bool = True
    count: int
    variables: list[str]
    seed: int | None = None
    runs: list[RunPreview]


RESULT_COLUMNS = ("index", "job_id", "status", "exit_code", "duration_s")
EXPLAINING_COLUMNS = ("status_reason", "outputs_error")  # last: the columns before them stay put
RESULTS_PAGE_MAX = 10_000  # rows per page of GET /sweeps/{id}/results?after=&limit=


class ResultsTable(BaseModel):
    columns: list[str]
    rows: list[dict[str, Any]]


class ResultsPage(ResultsTable):
    """The results table, or one slice of it in index order (`?after=&limit=`)."""

    outputs: dict[str, str] = Field(
        default_factory=dict, description="each output column and the outputs.json key it holds: "
        "a page's output columns are those its runs report, so pages are merged by key")
    next: int | None = Field(None, description="pass as `after` for the next page; null at the end")


def output_columns(keys: list[str], taken: set[str]) -> dict[str, str]:
    """Each output key's column: its own name, or `outputs.<key>` (then a number) if taken by
    a fixed column or a variable. Shared so that the Python API names a table merged from
    pages exactly as the server names a whole one."""
    columns: dict[str, str] = {}
    used = set(taken) | set(keys)
    for key in keys:
        column = key
        if key in taken:
            column, n = f"outputs.{key}", 2
            while column in used:
                column, n = f"outputs.{key}.{n}", n + 1
            used.add(column)
        columns[key] = column
    return columns


class FinishedRuns(BaseModel):
    cursor: int = Field(..., description="pass as `after` to get the runs that end later")
    results: list[JobRecord]


def new_sweep_id() -> str:
    return "s" + uuid.uuid4().hex[:11]
