"""A sweep of a job type: every run a job of one pinned revision, its JSON inputs filled from
the run's variables, either by `${variable}` placeholders in the sweep's inputs or by a
variable named like the input. Every run's inputs are checked against the type before any
run is recorded, so a sweep is refused whole, naming the run and the input."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from orchestrator import doe, templating
from orchestrator.errors import ValidationFailed
from orchestrator.jobtypes.jobio import check_inputs
from orchestrator.jobtypes.manifest import Manifest
from orchestrator.models import JobCreate, JobRecord, JobStatus, JobTypeRef, utcnow
from orchestrator.server.auth import Principal
from orchestrator.server.binaries import BinaryService, artifacts
from orchestrator.server.job_types import JobTypeService
from orchestrator.server.secrets import MASK
from orchestrator.server.typed_jobs import TypedJob, json_env, typed_job, typed_run_fields
from orchestrator.storage import layout
from orchestrator.sweep_models import SweepCreate


@dataclass
class TypedSweepPlan:
    runs: list[JobRecord]
    runtime: dict[str, Any]  # what every run's task shares (the batch template)
    secrets: dict[str, str]  # the type's secret settings, sealed with the sweep
    shown_configuration: dict[str, Any] | None  # the request's, secret settings masked

    def queued(self, reason: str) -> list[JobRecord]:
        for run in self.runs:
            run.status_reason = reason
        return self.runs


def plan(
    request: SweepCreate, creator: Principal, sweep_id: str, table: doe.RunTable, uploaded: list[str],
    job_types: JobTypeService, binaries: BinaryService,
) -> TypedSweepPlan:
    assert request.job_type is not None
    row = job_types.resolve(request.job_type)
    manifest, seed = job_types.revision_contract(JobTypeRef(name=row.name, version=row.version,
                                                             revision=row.revision_num))
    rows = list(table.indexed())
    inputs = [_run_inputs(manifest, request.inputs, variables, index) for index, variables in rows]
    given_priority = {"priority": request.priority} if "priority" in request.model_fields_set else {}
    first = JobCreate(job_type=request.job_type, inputs=inputs[0], name=request.name,
                      configuration=request.configuration, **given_priority)
    common = typed_job(first, row, manifest, job_types.secret_settings(row), uploaded, binaries,
                       creator.user, creator.admin)
    runs = _runs(common, request, creator, sweep_id, uploaded, rows, inputs)
    secret_names = {s.name for s in manifest.job.interface.settings if s.secret}
    shown = None if request.configuration is None else request.configuration.model_dump(mode="json")
    if shown is not None:
        shown["settings"] = {k: MASK if k in secret_names else v for k, v in shown["settings"].items()}
    return TypedSweepPlan(runs, _runtime(runs[0], manifest, seed, sweep_id), common.secrets, shown)


def _run_inputs(manifest: Manifest, given: dict[str, dict[str, Any]], variables: dict[str, Any],
                index: int) -> dict[str, Any]:
    """One run's inputs: placeholders filled, variables named like a JSON input given to it."""
    declared = {spec.name for spec in manifest.job.interface.inputs.json_}
    values = {name: _filled(value, variables) for name, value in given.get("json", {}).items()}
    values.update({name: value for name, value in variables.items() if name in declared})
    try:
        return check_inputs(manifest, {**given, "json": values})
    except ValidationFailed as exc:
        raise ValidationFailed(f"run {index}: {exc.message}", exc.fields) from None


def _filled(value: Any, variables: dict[str, Any]) -> Any:
    """`"${x}"` alone takes x's value with its type; text around placeholders gives text."""
    if not isinstance(value, str):
        return value
    names = templating.placeholders(value)
    if len(names) == 1 and value == "${" + names[0] + "}" and names[0] in variables:
        return variables[names[0]]
    try:
        return templating.render(value, variables)
    except templating.PlaceholderError as exc:
        raise ValidationFailed(str(exc), {"inputs.json": str(exc)}) from None


def _runs(
    common: TypedJob, request: SweepCreate, creator: Principal, sweep_id: str, uploaded: list[str],
    rows: list[tuple[int, dict[str, Any]]], inputs: list[dict[str, Any]],
) -> list[JobRecord]:
    now = utcnow()
    prototype = JobRecord(
        id="-", owner=creator.user, status=JobStatus.QUEUED,
        files=sorted(uploaded), retries=request.retries, sweep_id=sweep_id, created_at=now, **common.fields,
    )
    return _like(prototype, inputs[0], rows, inputs)


def grown_runs(prototype: JobRecord, its_inputs: dict[str, Any], request: SweepCreate, manifest: Manifest,
               table: doe.RunTable) -> list[JobRecord]:
    """An extension's runs (sweep_growth): jobs of the revision the sweep pinned, like
    `prototype` (its first run, whose inputs were `its_inputs`), each run's inputs filled from its
    variables and checked as at the sweep's creation."""
    rows = list(table.indexed())
    inputs = [_run_inputs(manifest, request.inputs, variables, index) for index, variables in rows]
    return _like(prototype, its_inputs, rows, inputs)


def _like(prototype: JobRecord, its_inputs: dict[str, Any], rows: list[tuple[int, dict[str, Any]]],
          inputs: list[dict[str, Any]]) -> list[JobRecord]:
    """Runs like `prototype` (whose environment holds `its_inputs`' JSON values), with their
    own index, variables, inputs and the environment those make."""
    shared_env = {k: v for k, v in prototype.env.items() if k not in json_env(its_inputs.get("json", {}))}
    return [
        prototype.model_copy(update={
            "id": uuid.uuid4().hex[:12], "index": index, "variables": variables, "inputs": run_inputs,
            "env": {**shared_env, **json_env(run_inputs.get("json", {}))},
        })
        for (index, variables), run_inputs in zip(rows, inputs, strict=True)
    ]


def _runtime(first: JobRecord, manifest: Manifest, seed: dict[str, Any], sweep_id: str) -> dict[str, Any]:
    """The batch template: the staged inputs (the same for every run), the type's command
    filled per run on the worker from the run's JSON inputs, and the revision's contract."""
    fields = typed_run_fields(first, manifest, seed, lambda path: layout.sweep_input_key(sweep_id, path))
    return {
        "shell_template": first.command,
        "entrypoint": first.entrypoint,
        "kwargs": fields["kwargs"],
        "artifacts": artifacts(first.binaries, first.owner) if first.entrypoint else [],
        "inputs": [vars(item) for item in fields["inputs"]],
        "workdir_env": fields["workdir_env"],
        "job_type": fields["job_type"],
        "timeout_s": first.timeout_s,
        "gpus": first.resources.gpus,
        "callable_key": None,
    }
