"""Job types from Python: `orch.job_types` (register, validate, list, show, pause, retire) and
the request `orch.run(...)` sends to run one, with local input files uploaded as parts.

Requests are checked here with the server's own models, so a mistake raises the same
ValidationFailed embedded and over REST.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.client.backend import Backend
from orchestrator.errors import ValidationFailed, validation_failed
from orchestrator.jobtypes.records import (
    ORDER_FIELDS,
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.models import INPUT_SECTIONS, JobCreate

Manifest = dict[str, Any] | str | os.PathLike
FileSources = dict[str, str | os.PathLike | list[str | os.PathLike]]
ORDER = re.compile(rf"-?({'|'.join(ORDER_FIELDS)})")
_UNSET: Any = object()  # `update(max_scheduled=None)` clears the limit; leaving it out keeps it


class JobTypes:
    """The registered job types: `orch.job_types`. Changing them takes an administrator."""

    def __init__(self, backend: Backend):
        self._backend = backend

    def create(
        self, manifest: Manifest, configuration: dict[str, Any] | None = None, *,
        icon_code: str | None = None, is_active: bool = True, is_paused: bool = False,
        max_scheduled: int | None = None,
    ) -> JobTypeDetails:
        """Register a Seed manifest (a dict, or the path of its JSON file); an existing name
        and version is edited (a changed manifest makes a new revision). Invalid: ValidationFailed
        whose `details` hold Scale's `errors` and `warnings`."""
        request = _checked(JobTypeCreate, manifest=load_manifest(manifest), configuration=configuration,
                           icon_code=icon_code, is_active=is_active, is_paused=is_paused,
                           max_scheduled=max_scheduled)
        return self._backend.create_job_type(request)

    def validate(self, manifest: Manifest, configuration: dict[str, Any] | None = None) -> ValidationResult:
        """What `create` would say, saving nothing: `is_valid`, `errors`, `warnings`."""
        body: dict[str, Any] = {"manifest": load_manifest(manifest)}
        if configuration is not None:
            body["configuration"] = configuration
        return self._backend.validate_job_type(body)

    def list(self, keyword: str | None = None, is_active: bool | None = None,
             order: str = "name") -> list[JobTypeSummary]:
        """One row per name; active names only unless `is_active=False` (the inactive ones).
        `order`: name, title, created or last_modified, '-' first for descending."""
        if not ORDER.fullmatch(order):
            raise ValidationFailed(f"order: {order!r} is not one of {', '.join(ORDER_FIELDS)} "
                                   "(with '-' for descending)", {"order": "unknown field"})
        return self._backend.list_job_types(keyword, is_active, order)

    def get(self, name: str, version: str | None = None) -> JobTypeDetails:
        """One version's details. Without a version (and no 'name@version'): the newest
        version by SemVer precedence, active or not; `versions(name)` gives them all."""
        name, version = _split(name, version)
        if version is None:
            return self.versions(name)[-1]
        return self._backend.get_job_type(name, version)

    def versions(self, name: str) -> list[JobTypeDetails]:
        """Every version's details, oldest (by SemVer precedence) first."""
        return self._backend.job_type_versions(name)

    def revisions(self, name: str, version: str | None = None) -> list[JobTypeRevision]:
        """Every revision of one version's manifest, oldest first."""
        return self._backend.job_type_revisions(*_required(name, version))

    def pause(self, name: str, version: str | None = None) -> JobTypeDetails:
        """Hold its queued jobs back (new ones are still accepted) until `resume`."""
        return self.update(name, version, is_paused=True)

    def resume(self, name: str, version: str | None = None) -> JobTypeDetails:
        return self.update(name, version, is_paused=False)

    def deactivate(self, name: str, version: str | None = None) -> JobTypeDetails:
        """Retire it: no new jobs; the jobs that ran it keep their record."""
        return self.update(name, version, is_active=False)

    def activate(self, name: str, version: str | None = None) -> JobTypeDetails:
        return self.update(name, version, is_active=True)

    def update(
        self, name: str, version: str | None = None, *, icon_code: str | None = _UNSET,
        is_active: bool | None = None, is_paused: bool | None = None, max_scheduled: int | None = _UNSET,
        configuration: dict[str, Any] | None = None,
    ) -> JobTypeDetails:
        """Change flags or configuration (no new revision). Only what is given changes:
        `max_scheduled=None` clears the limit, leaving it out keeps it."""
        given = {"icon_code": icon_code, "is_active": is_active, "is_paused": is_paused,
                 "max_scheduled": max_scheduled, "configuration": configuration}
        nullable = ("icon_code", "max_scheduled")
        fields = {k: v for k, v in given.items() if (v is not _UNSET if k in nullable else v is not None)}
        patch = _checked(JobTypePatch, **fields)
        return self._backend.patch_job_type(*_required(name, version), patch)

    def delete(self, name: str, version: str | None = None) -> None:
        """Only a version no job references (Conflict otherwise: deactivate it instead)."""
        self._backend.delete_job_type(*_required(name, version))


# ---- running a job type ---------------------------------------------------------------------


def job_type_request(
    job_type: str, inputs: dict[str, Any] | None, files: FileSources | None, *,
    configuration: dict[str, Any] | None, name: str | None, priority: int | None, submit: bool,
) -> tuple[JobCreate, dict[str, Path]]:
    """The JobCreate of a run and the local files to upload with it, by part name.

    `inputs` is {NAME: JSON value}, or the REST form {"json": {...}, "files": {...}}. A file
    source that names an existing local file (or any Path) is uploaded as the part
    'NAME/<file name>'; a URL or a binary ('name[@version]') goes as it is.
    """
    given, uploads = typed_inputs(inputs, files)
    fields: dict[str, Any] = {"job_type": job_type, "submit": submit, "inputs": given}
    optional = {"configuration": configuration, "name": name, "priority": priority}
    fields.update({k: v for k, v in optional.items() if v is not None})  # unset: the type's own
    return _checked(JobCreate, **fields), uploads


def typed_inputs(inputs: dict[str, Any] | None, files: FileSources | None) -> tuple[dict[str, Any], dict[str, Path]]:
    """A job type's `inputs` in the REST form, and the local files to upload, by part name
    (a job's and a sweep's alike)."""
    json_inputs, file_inputs = _sections(inputs or {})
    for input_name, sources in (files or {}).items():
        file_inputs.setdefault(input_name, []).extend(_as_list(sources))
    uploads: dict[str, Path] = {}
    given = {input_name: [_source(input_name, source, uploads) for source in sources]
             for input_name, sources in file_inputs.items()}
    return {k: v for k, v in (("files", given), ("json", json_inputs)) if v}, uploads


def _sections(inputs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """({NAME: value}, {NAME: [sources]}) from either form of `inputs`."""
    sectioned = bool(inputs) and set(inputs) <= set(INPUT_SECTIONS) and all(
        isinstance(v, dict) for v in inputs.values())
    if not sectioned:
        return dict(inputs), {}
    files = {k: _as_list(v) for k, v in inputs.get("files", {}).items()}
    return dict(inputs.get("json", {})), files


def _as_list(sources: Any) -> list[Any]:
    return list(sources) if isinstance(sources, list | tuple) else [sources]


def _source(input_name: str, source: Any, uploads: dict[str, Path]) -> str:
    """What the request names for one file: an upload's part name, or the source itself."""
    if isinstance(source, str) and ("://" in source or not Path(source).is_file()):
        return source  # a URL, or a binary of the caller's
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"inputs.files.{input_name}: no file {path}")
    part = f"{input_name}/{path.name}"
    if part in uploads:
        raise ValidationFailed(f"inputs.files.{input_name}: two files named {path.name!r}",
                               {f"inputs.files.{input_name}": "two files have the same name"})
    uploads[part] = path
    return part


# ---- plumbing -------------------------------------------------------------------------------


def load_manifest(manifest: Manifest) -> dict[str, Any]:
    """A manifest given as a dict, or read from its JSON file."""
    if isinstance(manifest, dict):
        return manifest
    text = Path(manifest).read_text()
    try:
        loaded = json.loads(text)
    except ValueError as exc:
        raise ValidationFailed(f"{manifest}: not JSON ({exc})", {"manifest": "not JSON"}) from None
    if not isinstance(loaded, dict):
        raise ValidationFailed(f"{manifest}: not a JSON object", {"manifest": "not an object"})
    return loaded


def split_ref(ref: str) -> tuple[str, str | None]:
    """'name@version' -> (name, version); 'name' -> (name, None)."""
    name, _, version = ref.partition("@")
    return name, version or None


def _split(name: str, version: str | None) -> tuple[str, str | None]:
    return (name, version) if version is not None else split_ref(name)


def _required(name: str, version: str | None) -> tuple[str, str]:
    name, version = _split(name, version)
    if not version:
        raise ValidationFailed(f"job type {name}: give a version (name@version)", {"version": "missing"})
    return name, version


def _checked(model: Any, **fields: Any) -> Any:
    """The request validated here, as the server would: the same ValidationFailed."""
    try:
        return model.model_validate(fields)
    except ValidationError as exc:
        raise validation_failed(exc) from None
