"""What is wrong with a job type, and with a job's inputs and outputs against its type.

`validate` answers as Scale's `POST /job-types/validation/` does: every problem at once, each
under Scale's code and naming the field, so a user porting a Scale job type fixes all of
them in one pass. The checks of a job against its type live in `jobio`, re-exported here.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from orchestrator.jobtypes.jobio import (
    article,
    check_inputs,
    check_json_outputs,
    error_for_exit,
    glob_match,
    match_file_outputs,
    matches_type,
)
from orchestrator.jobtypes.manifest import (
    RESOURCE_NAMES,
    Configuration,
    Manifest,
    dask_resources,
    env_name,
)
from orchestrator.templating import placeholders

RESERVED = ("OUTPUT_DIR", "JOB_ID")  # variables every job gets; ALLOCATED_* are reserved too
PLAIN_VARIABLE = re.compile(r"(?<![\\$])\$([A-Za-z_][A-Za-z0-9_]*)")
BRACED_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
EXPANSION_OPERATORS = tuple(":-+=?/#%^,@[")  # ${NAME/#/-d } and the like: Bash's forms

__all__ = [
    "Issue", "Report", "validate", "check_inputs", "check_json_outputs", "match_file_outputs",
    "glob_match", "error_for_exit", "matches_type",
]


@dataclass
class Issue:
    name: str  # Scale's code, e.g. NAME_COLLISION_ERROR
    description: str  # starts with the field at fault


@dataclass
class Report:
    is_valid: bool
    errors: list[Issue] = field(default_factory=list)
    warnings: list[Issue] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Scale's answer: `{is_valid, errors: [{name, description}], warnings: [...]}`."""
        return asdict(self)


# ---- job types ----------------------------------------------------------------------------


def validate(
    body: dict,
    *,
    binary_exists: Callable[[str], bool] = lambda ref: True,
    worker_resources: list[dict[str, float]] | None = None,
) -> tuple[Report, Manifest | None, Configuration | None]:
    """Check `{"manifest": ..., "configuration": ...}`; other keys of `body` are ignored.

    Each model comes back as parsed (None if it did not parse) whatever the report says:
    callers must look at `report.is_valid`. `worker_resources` (Dask resources per worker:
    CPU, MEMORY in bytes, GPU) turns on the check that some worker can run the type.
    """
    errors: list[Issue] = []
    warnings: list[Issue] = []
    if not isinstance(body, dict):
        errors.append(Issue("JSON_VALIDATION_ERROR", "body: must be a JSON object"))
        return Report(False, errors, warnings), None, None
    manifest = _parse(Manifest, body.get("manifest"), "", errors)
    given = body.get("configuration")
    configuration = _parse(Configuration, {} if given is None else given, "configuration", errors)
    if configuration is not None:
        errors += _host_path_errors(configuration)
    if manifest is not None:
        errors += _manifest_errors(manifest, binary_exists)
        warnings += _resource_warnings(manifest, worker_resources)
        if configuration is not None:
            warnings += _configuration_warnings(manifest, configuration)
    return Report(not errors, errors, warnings), manifest, configuration


def _parse(model: type[BaseModel], data: Any, prefix: str, errors: list[Issue]) -> Any:
    """The model, or None with one JSON_VALIDATION_ERROR per problem pydantic found."""
    if data is None:
        errors.append(Issue("JSON_VALIDATION_ERROR", f"{prefix or 'manifest'}: is required"))
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors(include_url=False):
            where = _location(prefix, err.get("loc", ())) or "manifest"
            message = err.get("msg", "invalid").removeprefix("Value error, ")
            errors.append(Issue("JSON_VALIDATION_ERROR", f"{where}: {message}"))
        return None


def _location(prefix: str, loc: Iterable[Any]) -> str:
    """pydantic's location as people write it: `job.interface.inputs.files[0].name`."""
    text = prefix
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else f".{part}" if text else str(part)
    return text


def _manifest_errors(manifest: Manifest, binary_exists: Callable[[str], bool]) -> list[Issue]:
    return [
        *_command_errors(manifest),
        *_name_errors(manifest),
        *_error_mapping_errors(manifest),
        *_mount_path_errors(manifest),
        *_binary_errors(manifest, binary_exists),
        *_default_errors(manifest),
    ]


def _command_errors(manifest: Manifest) -> list[Issue]:
    command, entrypoint = manifest.job.interface.command, manifest.job.interface.entrypoint
    if entrypoint is not None:
        if command is not None:
            return [Issue("COMMAND_AND_ENTRYPOINT", (
                "job.interface: give a command or an entrypoint, not both"))]
        return []
    if not command or not command.strip():
        return [Issue("NO_COMMAND", (
            "job.interface.command: is required (or an entrypoint of the type's Python binaries); "
            "running container images is not supported yet, so a job type must give a command, "
            "and binaries or URLs to run"))]
    known = {env_name(name) for name in _variable_names(manifest)} | set(RESERVED)
    issues = []
    for written, name in _command_variables(command):
        if name is None or not (env_name(name) in known or env_name(name).startswith("ALLOCATED_")):
            issues.append(Issue("UNKNOWN_PLACEHOLDER", (
                f"job.interface.command: {written} is not an input, setting, mount, "
                "OUTPUT_DIR, JOB_ID or ALLOCATED_* variable")))
    return issues


def _command_variables(command: str) -> list[tuple[str, str | None]]:
    """(as written, variable name or None if malformed) for `${NAME}` (with Bash's
    `${NAME/#/prefix}` forms, as Scale reads them) and plain `$NAME`."""
    found: dict[str, str | None] = {}
    for inside in placeholders(command):
        match = BRACED_NAME.match(inside)
        rest = inside[match.end():] if match else inside
        ok = match is not None and (not rest or rest.startswith(EXPANSION_OPERATORS))
        found.setdefault("${" + inside + "}", match.group() if ok else None)
    for match in PLAIN_VARIABLE.finditer(command):
        found.setdefault("$" + match.group(1), match.group(1))
    return list(found.items())


def _variable_names(manifest: Manifest) -> list[str]:
    """The names a job gets as variables: its inputs, settings and mounts."""
    interface = manifest.job.interface
    groups: list[Iterable[Any]] = [
        interface.inputs.files, interface.inputs.json_, interface.settings, interface.mounts,
    ]
    return [item.name for group in groups for item in group]


def _named_fields(manifest: Manifest) -> list[tuple[str, str]]:
    """(field path, name) of every input, output, setting and mount."""
    interface = manifest.job.interface
    groups: list[tuple[str, Iterable[Any]]] = [
        ("inputs.files", interface.inputs.files), ("inputs.json", interface.inputs.json_),
        ("outputs.files", interface.outputs.files), ("outputs.json", interface.outputs.json_),
        ("settings", interface.settings), ("mounts", interface.mounts),
    ]
    return [
        (f"job.interface.{where}[{index}].name", item.name)
        for where, items in groups for index, item in enumerate(items)
    ]


def _name_errors(manifest: Manifest) -> list[Issue]:
    """Names become variables, so two that are the same once upper-cased collide."""
    issues = []
    first: dict[str, str] = {}
    for path, name in _named_fields(manifest):
        variable = env_name(name)
        if variable in RESERVED or variable.startswith("ALLOCATED_"):
            issues.append(Issue("NAME_COLLISION_ERROR", (
                f"{path}: {name!r} is reserved (OUTPUT_DIR, JOB_ID and ALLOCATED_* are "
                "variables every job gets)")))
        elif variable in first:
            mounts = "job.interface.mounts["
            code = ("DUPLICATE_MOUNT_NAMES" if path.startswith(mounts)
                    and first[variable].startswith(mounts) else "NAME_COLLISION_ERROR")
            issues.append(Issue(code, f"{path}: {name!r} collides with {first[variable]} "
                                      f"(both are {variable} as a variable)"))
        else:
            first[variable] = path
    return issues


def _error_mapping_errors(manifest: Manifest) -> list[Issue]:
    issues = []
    names: dict[str, int] = {}
    codes: dict[int, int] = {}
    for index, error in enumerate(manifest.job.errors):
        path = f"job.errors[{index}]"
        if error.name in names:
            issues.append(Issue("DUPLICATE_ERROR_NAMES", (
                f"{path}.name: {error.name!r} is also the name of job.errors[{names[error.name]}]")))
        if error.code in codes:
            issues.append(Issue("DUPLICATE_ERROR_CODES", (
                f"{path}.code: {error.code} is also the code of job.errors[{codes[error.code]}]")))
        names.setdefault(error.name, index)
        codes.setdefault(error.code, index)
    return issues


def _mount_path_errors(manifest: Manifest) -> list[Issue]:
    return [
        Issue("INVALID_MOUNT_PATH", f"job.interface.mounts[{index}].path: {mount.path!r} is not absolute")
        for index, mount in enumerate(manifest.job.interface.mounts)
        if not posixpath.isabs(mount.path)
    ]


def _host_path_errors(configuration: Configuration) -> list[Issue]:
    return [
        Issue("INVALID_MOUNT_PATH", f"configuration.mounts.{name}: host path {path!r} is not absolute")
        for name, path in configuration.mounts.items()
        if not posixpath.isabs(path)
    ]


def _binary_errors(manifest: Manifest, binary_exists: Callable[[str], bool]) -> list[Issue]:
    return [
        Issue("UNKNOWN_BINARY", f"job.binaries[{index}]: no uploaded binary {ref!r}")
        for index, ref in enumerate(manifest.job.binaries)
        if "://" not in ref and not binary_exists(ref)
    ]


def _default_errors(manifest: Manifest) -> list[Issue]:
    """A default of the wrong type would be passed to every job that leaves the input out."""
    return [
        Issue("JSON_VALIDATION_ERROR", (
            f"job.interface.inputs.json[{index}].default: {item.default!r} "
            f"is not {article(item.type)}"))
        for index, item in enumerate(manifest.job.interface.inputs.json_)
        if item.default is not None and not matches_type(item.default, item.type)
    ]


def _resource_warnings(manifest: Manifest, workers: list[dict[str, float]] | None) -> list[Issue]:
    standard = {name.lower() for name in RESOURCE_NAMES}
    issues = [
        Issue("NONSTANDARD_RESOURCE", (
            f"job.resources.scalar[{index}].name: {scalar.name!r} is not one of "
            f"{', '.join(RESOURCE_NAMES)}; it is not reserved on the workers"))
        for index, scalar in enumerate(manifest.job.resources.scalar)
        if scalar.name.lower() not in standard
    ]
    if workers and not _some_worker_fits(dask_resources(manifest), workers):
        issues.append(Issue("UNSATISFIABLE_RESOURCES", (
            "job.resources.scalar: no worker offers all of the cpus, mem and gpus asked for; "
            "its jobs wait until one joins")))
    return issues


def _some_worker_fits(wanted: dict[str, Any], workers: list[dict[str, float]]) -> bool:
    needs = {"CPU": wanted.get("cores", 0), "MEMORY": wanted.get("memory", 0), "GPU": wanted.get("gpus", 0)}
    return any(
        all(worker.get(name, 0) >= amount for name, amount in needs.items() if amount)
        for worker in workers
    )


def _configuration_warnings(manifest: Manifest, configuration: Configuration) -> list[Issue]:
    interface = manifest.job.interface
    return [
        *_compare("SETTING", "settings", {s.name: s.secret for s in interface.settings},
                  configuration.settings),
        *_compare("MOUNT", "mounts", {m.name: False for m in interface.mounts}, configuration.mounts),
    ]


def _compare(kind: str, section: str, declared: dict[str, bool], given: dict[str, str]) -> list[Issue]:
    """MISSING_<kind> for a declared name without a value, UNKNOWN_<kind> for a value
    the manifest does not declare; names compared as variables."""
    given_variables = {env_name(name) for name in given}
    declared_variables = {env_name(name) for name in declared}
    noun = kind.lower()
    issues = [
        Issue(f"MISSING_{kind}", f"configuration.{section}.{name}: {'secret ' if secret else ''}"
                                 f"{noun} {name} has no value")
        for name, secret in declared.items() if env_name(name) not in given_variables
    ]
    issues += [
        Issue(f"UNKNOWN_{kind}", f"configuration.{section}.{name}: the manifest declares no {noun} {name}")
        for name in given if env_name(name) not in declared_variables
    ]
    return issues
