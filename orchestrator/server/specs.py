"""What a worker is given to run: a job's RunSpec, a batch's spec, with the inputs to stage
and the opened secret environment (for the task only; records keep the masked names)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from orchestrator.declared_outputs import as_run_fields
from orchestrator.jobtypes.manifest import Manifest
from orchestrator.models import JobKind, JobRecord, JobTypeRef
from orchestrator.server.binaries import artifacts, binary_input
from orchestrator.server.decisions import own_failures, task_key
from orchestrator.server.isolation import Isolation
from orchestrator.server.ledger import Store
from orchestrator.server.secrets import Sealer, SecretsUnreadable
from orchestrator.server.typed_jobs import entry_kwargs, json_values, typed_run_fields
from orchestrator.storage import layout
from orchestrator.worker.runner import RunSpec, StagedInput


def secret_env(store: Store, sealer: Sealer, job: JobRecord) -> dict[str, str]:
    """The opened secret environment of a job (a sweep run: its sweep's)."""
    if not job.secret_env:
        return {}
    holder = job.sweep_id or job.id
    sealed = store.sealed_secrets([holder]).get(holder)
    if sealed is None:
        raise SecretsUnreadable(f"the secret environment of {holder} is missing from the ledger")
    return sealer.open(sealed)


Contracts = Callable[[JobTypeRef], tuple[Manifest, dict[str, Any]]]  # a revision's manifest


def run_spec(
    job: JobRecord, storage_url: str, secrets: dict[str, str], isolation: Isolation,
    contracts: Contracts | None = None,
) -> dict[str, Any]:
    python = job.entrypoint is not None or job.in_context  # runs in a warm context
    inputs = [] if python else [binary_input(ref, job.owner) for ref in job.binaries]
    inputs += [StagedInput(path=path, key=layout.input_key(job.id, path)) for path in job.files]
    in_thread = job.kind == JobKind.CALLABLE and not job.in_context  # the embedded API's callables
    spec = RunSpec(
        job_id=job.id,
        key=task_key(job),
        attempt=job.attempt,
        storage_url=storage_url,
        command=job.command,
        env={**job.env, **secrets},
        inputs=inputs,
        timeout_s=job.timeout_s,
        callable_key=layout.callable_key(job.id) if job.kind == JobKind.CALLABLE else None,
        kind=JobKind.ENTRYPOINT.value if job.in_context else job.kind.value,
        gpus=job.resources.gpus,
        run_as=None if in_thread else isolation.run_as(job.owner),
        declared_outputs=as_run_fields(job.outputs),
        entrypoint=job.entrypoint,
        kwargs=job.kwargs,
        artifacts=artifacts(job.binaries, job.owner) if python else [],
        owner=job.owner,
        in_context=job.in_context,
    )
    if job.job_type is not None and contracts is not None:
        for name, value in typed_run_fields(job, *contracts(job.job_type)).items():
            setattr(spec, name, value)
        if job.entrypoint is not None:
            spec.kwargs = {**(spec.kwargs or {}), **entry_kwargs(job)}
    return as_fields(spec)


def as_fields(spec: RunSpec) -> dict[str, Any]:
    """The spec's fields as a dict, without dataclasses.asdict's deep copy (it cost more than
    a trivial job's whole acceptance): the values are the job record's, serialised as sent."""
    fields = dict(vars(spec))
    fields["inputs"] = [dict(vars(staged)) for staged in spec.inputs]
    return fields


def batch_spec(
    jobs: list[JobRecord], attempts: list[int], template: dict[str, Any], storage_url: str,
    secrets: dict[str, str], isolation: Isolation, failure_budget: int | None,
) -> dict[str, Any]:
    """Runs of one sweep as one task: `template` holds the RunSpec fields they share."""
    runs = [
        {"job_id": job.id, "key": task_key(job, attempt), "attempt": attempt,
         "env": {**job.env, **secrets}, "variables": _run_variables(job),
         "last_try": own_failures(job, attempt) > job.retries,
         **({} if template.get("shell_template") else {"command": job.command})}
        for job, attempt in zip(jobs, attempts, strict=True)
    ]
    kind = jobs[0].kind  # the runs of one sweep are of one kind
    run_as = isolation.run_as(jobs[0].owner) if kind != JobKind.CALLABLE else None
    return {"template": {**template, "storage_url": storage_url, "run_as": run_as, "kind": kind.value,
                         "owner": jobs[0].owner},
            "runs": runs, "failure_budget": failure_budget}


def _run_variables(job: JobRecord) -> dict[str, Any] | None:
    """What a sweep run fills in: a typed run's JSON inputs (by variable name for its command,
    by keyword for its entry point), or the run's own variables."""
    if job.job_type is None:
        return job.variables
    return entry_kwargs(job) if job.entrypoint else json_values(job)
