"""A job of a job type, both ends: the record made from a request (inputs checked against the
pinned revision, configuration laid over the type's) and the run spec a worker gets from it
(file inputs staged as `inputs/NAME/<file>`, every input, setting and mount exported under
its Seed variable name, the command filled so each value is one shell word)."""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.jobtypes.jobio import check_inputs
from orchestrator.jobtypes.manifest import (
    Configuration,
    Manifest,
    allocated,
    dask_resources,
    env_name,
)
from orchestrator.models import JobCreate, JobKind, JobRecord, JobTypeRef, Resources
from orchestrator.server.binaries import BinaryService, binary_input
from orchestrator.server.ledger import JobTypeRow
from orchestrator.server.secrets import masked
from orchestrator.storage import layout
from orchestrator.templating import format_value, shell_command
from orchestrator.worker.runner import StagedInput

INPUTS_FOLDER = "inputs"


@dataclass
class TypedJob:
    """The fields a job of a type takes from its type, and its secret settings' values."""

    fields: dict[str, Any]
    secrets: dict[str, str]


def typed_job(
    request: JobCreate, row: JobTypeRow, manifest: Manifest, type_secrets: dict[str, str],
    uploaded: list[str], binaries: BinaryService, owner: str, admin: bool,
) -> TypedJob:
    inputs = check_inputs(manifest, request.inputs)
    inputs["files"] = _file_sources(inputs.get("files", {}), uploaded, binaries, owner, admin)
    configuration = _configuration(row, request.configuration)
    secret_names = {s.name for s in manifest.job.interface.settings if s.secret}
    settings = {**configuration.settings}
    secrets = {**type_secrets, **{k: v for k, v in settings.items() if k in secret_names}}
    plain = {env_name(k): v for k, v in settings.items() if k not in secret_names}
    env = {
        **plain,
        **{env_name(name): host for name, host in configuration.mounts.items()},
        **json_env(inputs.get("json", {})),
        **{name: format_value(value) for name, value in allocated(manifest).items()},
    }
    priority = request.priority if "priority" in request.model_fields_set else configuration.priority or 0
    fields = {
        "kind": JobKind.JOB_TYPE,
        "name": request.name or manifest.job.name,
        "command": manifest.job.interface.command,
        "entrypoint": manifest.job.interface.entrypoint,
        "binaries": list(manifest.job.binaries),
        "env": env,
        "secret_env": masked({env_name(k): v for k, v in secrets.items()}),
        "resources": Resources(**dask_resources(manifest)),
        "timeout_s": manifest.job.timeout,
        "priority": priority,
        "job_type": JobTypeRef(name=row.name, version=row.version, revision=row.revision_num),
        "inputs": inputs,
    }
    return TypedJob(fields, {env_name(k): v for k, v in secrets.items()})


def _configuration(row: JobTypeRow, given: Configuration | None) -> Configuration:
    """The type's plain settings, mounts and priority with the job's laid over them."""
    own = row.configuration
    merged = Configuration(settings=own.get("settings", {}), mounts=own.get("mounts", {}),
                           priority=own.get("priority"))
    if given is None:
        return merged
    return Configuration(settings={**merged.settings, **given.settings}, mounts={**merged.mounts, **given.mounts},
                         priority=given.priority if given.priority is not None else merged.priority)


def _file_sources(
    files: dict[str, list[str]], uploaded: list[str], binaries: BinaryService, owner: str, admin: bool,
) -> dict[str, list[str]]:
    """Each source an uploaded part, a URL, or the owner's binary (pinned now); every
    uploaded part must be given to an input, and one input's files need distinct names."""
    parts = set(uploaded)
    used: set[str] = set()
    resolved: dict[str, list[str]] = {}
    for name, sources in files.items():
        where = f"inputs.files.{name}"
        pinned = []
        for source in sources:
            if source in parts:
                used.add(source)
                pinned.append(source)
            elif "://" in source:
                pinned.append(source)
            else:
                try:
                    pinned += binaries.pin([source], owner, admin)
                except ValidationFailed:
                    raise ValidationFailed(f"{where}: {source!r} is no uploaded file, URL or binary of yours",
                                           {where: f"no uploaded file, URL or binary {source!r}"}) from None
        names = [_base_name(source, source in parts) for source in pinned]
        if len(set(names)) < len(names):
            raise ValidationFailed(f"{where}: two files named alike", {where: "two files have the same name"})
        resolved[name] = pinned
    unused = sorted(parts - used)
    if unused:
        raise ValidationFailed(f"uploaded file {unused[0]!r} is given to no input",
                               {"inputs.files": f"uploaded file {unused[0]!r} is given to no input"})
    return resolved


def json_env(values: dict[str, Any]) -> dict[str, str]:
    """JSON inputs as variables: a string as it is, anything else as JSON (never Python's str())."""
    return {env_name(name): value if isinstance(value, str) else json.dumps(value) for name, value in values.items()}


def _base_name(source: str, uploaded: bool) -> str:
    """The file name a source is staged under: an uploaded part's own name, a binary's name,
    or a URL's last segment."""
    if uploaded:
        return posixpath.basename(source)
    if "://" in source:
        return source.rstrip("/").rsplit("/", 1)[-1] or "download"
    return source.partition("@")[0].rsplit("/", 1)[-1]


# ---- the worker's side ------------------------------------------------------------------------


def typed_run_fields(
    job: JobRecord, manifest: Manifest, seed: dict[str, Any], upload_key: Callable[[str], str] | None = None,
) -> dict[str, Any]:
    """RunSpec fields of a job of a type: inputs to stage, variables naming staged paths, the
    shell line, and the revision's contract for the worker to judge the run by.
    `upload_key`: where an uploaded source is stored (a sweep's runs share their sweep's)."""
    key_of = upload_key or (lambda path: layout.input_key(job.id, path))
    declared = {spec.name: spec for spec in manifest.job.interface.inputs.files}
    inputs = [] if job.entrypoint else [binary_input(ref, job.owner) for ref in job.binaries]  # else: on its path
    workdir_env: dict[str, str] = {}
    paths: dict[str, str | list[str]] = {}
    for name, sources in (job.inputs or {}).get("files", {}).items():
        folder = f"{INPUTS_FOLDER}/{name}"
        staged = [_staged(job, source, folder, key_of) for source in sources]
        inputs += staged
        multiple = declared[name].multiple if name in declared else False
        workdir_env[env_name(name)] = folder if multiple else staged[0].path
        paths[keyword(name)] = [item.path for item in staged] if multiple else staged[0].path
    return {
        "inputs": inputs,
        "workdir_env": workdir_env,
        "kwargs": paths if job.entrypoint else None,  # the JSON inputs join them per run (entry_kwargs)
        "command": shell_command(job.command or "", json_values(job)),
        "job_type": {"manifest": seed, "mounts": {
            name: job.env[name] for name in (env_name(m.name) for m in manifest.job.interface.mounts)
            if name in job.env}},
    }


def keyword(name: str) -> str:
    """An input's name as a Python keyword argument (Seed names may hold '-')."""
    return name.replace("-", "_")


def entry_kwargs(job: JobRecord) -> dict[str, Any]:
    """An entry-point type's JSON inputs as keyword arguments (its files' paths come with the spec)."""
    return {keyword(k): v for k, v in (job.inputs or {}).get("json", {}).items()}


def json_values(job: JobRecord) -> dict[str, Any]:
    """The job's JSON inputs by variable name: what its command's placeholders are filled with."""
    return {env_name(k): v for k, v in (job.inputs or {}).get("json", {}).items()}


def _staged(job: JobRecord, source: str, folder: str, key_of: Callable[[str], str]) -> StagedInput:
    path = f"{folder}/{_base_name(source, source in job.files)}"
    if source in job.files:
        return StagedInput(path=path, key=key_of(source))
    staged = binary_input(source, job.owner)
    return StagedInput(path=path, key=staged.key, url=staged.url)
