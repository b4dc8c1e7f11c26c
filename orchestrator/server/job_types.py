"""Job types: applications an administrator registers once (a Seed manifest and its
configuration) and every user runs by name, after NGA Scale's v6 job types.

A type is `name` + `version`. A change of its manifest makes a new revision; a job pins the
revision it was created with and always runs what that revision says. Secret settings are
sealed like a job's secret environment and only ever shown as '****'.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import ValidationError

from orchestrator.errors import Conflict, Forbidden, NotFound, ValidationFailed, field_errors
from orchestrator.jobtypes.manifest import Configuration, Manifest
from orchestrator.jobtypes.records import (
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.jobtypes.validation import Issue, Report, validate
from orchestrator.models import JobTypeRef, utcnow
from orchestrator.server.auth import Principal
from orchestrator.server.binaries import BinaryRef, BinaryService
from orchestrator.server.ledger import JobTypeRow, Store
from orchestrator.server.secrets import MASK, Sealer

RESERVED_NAMES = ("validation",)  # a path segment of the API
Offers = Callable[[], Awaitable[list[dict[str, float]] | None]]


class JobTypeService:
    def __init__(self, store: Store, binaries: BinaryService, sealer: Sealer, offers: Offers):
        self.offers = offers  # workers' resources of a cluster that cannot grow, else None
        self.store = store
        self.binaries = binaries
        self.sealer = sealer
        self._manifests: dict[tuple[str, str, int], tuple[Manifest, dict[str, Any]]] = {}
        self.on_flags_changed: list[Any] = []  # callbacks(row): pausing, limits (the engine's gate)

    # ---- validating and registering ---------------------------------------------------------

    def validate(self, body: dict[str, Any], creator: Principal,
                 workers: list[dict[str, float]] | None = None) -> tuple[Report, Manifest | None, Configuration | None]:
        """Scale's validation: errors and warnings, nothing saved."""
        report, manifest, configuration = validate(
            body, binary_exists=lambda ref: self._binary(ref, creator) is not None, worker_resources=workers)
        if manifest is not None and manifest.job.name.lower() in RESERVED_NAMES:
            report.errors.append(Issue("JSON_VALIDATION_ERROR", f"job.name: {manifest.job.name!r} is reserved"))
            report.is_valid = False
        return report, manifest, configuration

    async def validation(self, body: dict[str, Any], creator: Principal) -> ValidationResult:
        """POST /job-types/validation: the manifest and configuration as `validate` reads them,
        and the flags beside them (icon_code, max_scheduled...) as a create would."""
        problems = []
        try:
            JobTypeCreate.model_validate(body)
        except ValidationError as exc:
            problems = [Issue("JSON_VALIDATION_ERROR", f"{where}: {message}")
                        for where, message in field_errors(exc).items()
                        if where.split(".")[0] not in ("manifest", "configuration")]
        report, _, _ = self.validate(body, creator, await self.offers())
        report.errors[:0] = problems
        report.is_valid = not report.errors
        return ValidationResult.model_validate(report.as_dict())

    async def save(self, request: JobTypeCreate, creator: Principal) -> tuple[JobTypeDetails, bool]:
        """Create the type, or edit it when name and version exist: a new revision if its
        manifest changed, and only the flags and configuration the request gives change (the
        rest, secret settings included, stay). Returns the details and whether it was created."""
        self._admin_only(creator, "register job types")
        body = request.model_dump(exclude_none=True)
        existing = self._named_in(request.manifest)
        if existing is not None and "configuration" not in request.model_fields_set:
            body["configuration"] = self._stored_configuration(existing)
        report, manifest, configuration = self.validate(body, creator, await self.offers())
        if not report.is_valid or manifest is None or configuration is None:
            raise invalid(report)
        seed = self._pinned_manifest(manifest, creator)
        name, version = manifest.job.name, manifest.job.job_version
        revision = existing.revision_num if existing else 0
        new_revision = existing is None or self.store.job_type_manifest(name, version, revision) != seed
        settings, sealed = self._split_settings(manifest, configuration)
        now = utcnow()
        row = JobTypeRow(
            name=name, version=version, title=manifest.job.title, description=manifest.job.description,
            revision_num=revision + 1 if new_revision else revision,
            configuration={**settings, "mounts": configuration.mounts, "priority": configuration.priority},
            created_by=existing.created_by if existing else creator.user,
            created=existing.created if existing else now, last_modified=now, tags=manifest.job.tags,
            maintainer=manifest.job.maintainer.model_dump(exclude_none=True) if manifest.job.maintainer else None,
        )
        for flag in ("icon_code", "is_active", "is_paused", "max_scheduled"):
            given = existing is None or flag in request.model_fields_set
            setattr(row, flag, getattr(request if given else existing, flag))
        row.paused = _since(existing and existing.is_paused and existing.paused, now) if row.is_paused else None
        row.deprecated = None if row.is_active else _since(existing and existing.deprecated, now)
        self.store.save_job_type(row, seed if new_revision else None, sealed)
        self._flags_changed(row)
        return self.details(name, version), existing is None

    def _named_in(self, manifest: dict[str, Any]) -> JobTypeRow | None:
        """The type a manifest names, if it exists (before validation: it may be malformed)."""
        job = manifest.get("job") if isinstance(manifest, dict) else None
        if not isinstance(job, dict):
            return None
        name, version = job.get("name"), job.get("jobVersion", job.get("job_version"))
        if not isinstance(name, str) or not isinstance(version, str):
            return None
        return self.store.get_job_type(name, version)

    def _stored_configuration(self, row: JobTypeRow) -> dict[str, Any]:
        """The configuration as it was given, secret settings opened: what an edit keeps."""
        return {"settings": {**row.configuration.get("settings", {}), **self.secret_settings(row)},
                "mounts": row.configuration.get("mounts", {}), "priority": row.configuration.get("priority")}

    def _pinned_manifest(self, manifest: Manifest, creator: Principal) -> dict[str, Any]:
        """The manifest as Seed JSON, its uploaded binaries pinned to owner/name@version: the
        revision stages exactly those bytes for every user, whoever runs it."""
        seed = manifest.model_dump(mode="json", by_alias=True, exclude_none=True)
        pinned = []
        for ref in manifest.job.binaries:
            record = None if "://" in ref else self._binary(ref, creator)
            pinned.append(ref if record is None else f"{record.owner}/{record.name}@{record.version}")
        seed["job"]["binaries"] = pinned
        return seed

    def _binary(self, ref: str, creator: Principal) -> Any:
        try:
            parsed = BinaryRef.parse(ref, creator.user)
        except ValueError:
            return None
        if parsed.owner != creator.user and not creator.admin:
            return None
        return self.store.get_binary(parsed.owner, parsed.name, parsed.version)

    def _split_settings(self, manifest: Manifest, configuration: Configuration) -> tuple[dict[str, Any], bytes | None]:
        """Plain settings kept as they are; secret ones sealed apart, only their names kept."""
        secret = {s.name for s in manifest.job.interface.settings if s.secret}
        plain = {k: v for k, v in configuration.settings.items() if k not in secret}
        hidden = {k: v for k, v in configuration.settings.items() if k in secret}
        return {"settings": plain, "secret_settings": sorted(hidden)}, self.sealer.seal(hidden)

    # ---- reading ----------------------------------------------------------------------------

    def details(self, name: str, version: str) -> JobTypeDetails:
        return self._details(self._row(name, version))

    def _details(self, row: JobTypeRow) -> JobTypeDetails:
        manifest = self.store.job_type_manifest(row.name, row.version, row.revision_num) or {}
        configuration = {
            "settings": {**row.configuration.get("settings", {}),
                         **dict.fromkeys(row.configuration.get("secret_settings", []), MASK)},
            "mounts": row.configuration.get("mounts", {}),
            "priority": row.configuration.get("priority"),
        }
        return JobTypeDetails(
            name=row.name, version=row.version, title=row.title, description=row.description, tags=row.tags,
            icon_code=row.icon_code, maintainer=row.maintainer,
            docker_image=manifest.get("job", {}).get("dockerImage"), revision_num=row.revision_num,
            manifest=manifest, configuration=configuration, is_active=row.is_active, is_paused=row.is_paused,
            max_scheduled=row.max_scheduled, created_by=row.created_by, created=row.created,
            last_modified=row.last_modified, paused=row.paused, deprecated=row.deprecated,
        )

    def _row(self, name: str, version: str) -> JobTypeRow:
        row = self.store.get_job_type(name, version)
        if row is None:
            raise NotFound(f"no job type {name} {version}")
        return row

    def list(self, keyword: str | None, is_active: bool | None, order: str) -> list[JobTypeSummary]:
        """One row per name; inactive names hidden unless asked for (Scale #604, #1696)."""
        by_name: dict[str, list[JobTypeRow]] = {}
        for row in self.store.job_types():
            by_name.setdefault(row.name, []).append(row)
        summaries = [_summary(rows) for rows in by_name.values()]
        wanted = True if is_active is None else is_active
        summaries = [s for s in summaries if s.is_active == wanted and _matches(s, keyword)]
        field = order.lstrip("-")
        summaries.sort(key=lambda s: _sort_key(s, field, by_name[s.name]), reverse=order.startswith("-"))
        return summaries

    def versions(self, name: str) -> list[JobTypeDetails]:
        rows = sorted(self.store.job_types(name), key=lambda r: version_key(r.version))
        if not rows:
            raise NotFound(f"no job type {name}")
        return [self._details(row) for row in rows]

    def revisions(self, name: str, version: str) -> list[JobTypeRevision]:
        self._row(name, version)
        return [JobTypeRevision(name=name, version=version, revision_num=n, manifest=m, created=at)
                for n, m, at in self.store.job_type_revisions(name, version)]

    def revision(self, name: str, version: str, number: int) -> JobTypeRevision:
        for revision in self.revisions(name, version):
            if revision.revision_num == number:
                return revision
        raise NotFound(f"job type {name} {version} has no revision {number}")

    def manifest(self, name: str, version: str, revision: int) -> Manifest:
        return self.revision_contract(JobTypeRef(name=name, version=version, revision=revision))[0]

    def revision_contract(self, ref: JobTypeRef) -> tuple[Manifest, dict[str, Any]]:
        """A revision's manifest, parsed and as Seed JSON (what a worker is given), cached:
        revisions never change."""
        key = (ref.name, ref.version, ref.revision)
        if key not in self._manifests:
            seed = self.store.job_type_manifest(*key)
            if seed is None:
                raise NotFound(f"job type {ref.name} {ref.version} revision {ref.revision} is gone")
            self._manifests[key] = (Manifest.model_validate(seed), seed)
        return self._manifests[key]

    def resolve(self, ref: str) -> JobTypeRow:
        """'name@version', or 'name' for its newest active version; inactive is a 409."""
        name, _, version = ref.partition("@")
        if version:
            row = self.store.get_job_type(name, version)
            if row is None:
                raise ValidationFailed(f"no job type {ref}", {"job_type": f"no job type {ref}"})
        else:
            active = [r for r in self.store.job_types(name) if r.is_active]
            if not active:
                raise ValidationFailed(f"no active job type {name}", {"job_type": f"no active job type {name}"})
            row = max(active, key=lambda r: version_key(r.version))
        if not row.is_active:
            raise Conflict(f"job type {row.name} {row.version} is inactive; it runs no new jobs")
        return row

    def secret_settings(self, row: JobTypeRow) -> dict[str, str]:
        sealed = self.store.sealed_secrets([row.secret_holder]).get(row.secret_holder)
        return self.sealer.open(sealed) if sealed else {}

    # ---- changing ---------------------------------------------------------------------------

    def patch(self, name: str, version: str, patch: JobTypePatch, changer: Principal) -> JobTypeDetails:
        """Flags and configuration: no new revision. An explicit null clears max_scheduled
        (Scale's edit cannot)."""
        self._admin_only(changer, "change job types")
        row = self._row(name, version)
        given = patch.model_fields_set
        now = utcnow()
        if "icon_code" in given:
            row.icon_code = patch.icon_code
        if "max_scheduled" in given:
            row.max_scheduled = patch.max_scheduled
        if patch.is_paused is not None and patch.is_paused != row.is_paused:
            row.is_paused, row.paused = patch.is_paused, now if patch.is_paused else None
        if patch.is_active is not None and patch.is_active != row.is_active:
            row.is_active, row.deprecated = patch.is_active, None if patch.is_active else now
        sealed = self._sealed_now(row)
        if patch.configuration is not None:
            sealed = self._reconfigure(row, patch.configuration, changer)
        row.last_modified = now
        self.store.save_job_type(row, None, sealed)
        self._flags_changed(row)
        return self._details(row)

    def _reconfigure(self, row: JobTypeRow, configuration: Configuration, changer: Principal) -> bytes | None:
        manifest = self.manifest(row.name, row.version, row.revision_num)
        body = {"manifest": manifest.model_dump(mode="json", by_alias=True, exclude_none=True),
                "configuration": configuration.model_dump(exclude_none=True)}
        report, _, parsed = self.validate(body, changer)
        if not report.is_valid or parsed is None:
            raise invalid(report)
        settings, sealed = self._split_settings(manifest, parsed)
        row.configuration = {**settings, "mounts": parsed.mounts, "priority": parsed.priority}
        return sealed

    def _sealed_now(self, row: JobTypeRow) -> bytes | None:
        return self.store.sealed_secrets([row.secret_holder]).get(row.secret_holder)

    def delete(self, name: str, version: str, deleter: Principal) -> None:
        self._admin_only(deleter, "delete job types")
        self._row(name, version)
        jobs = self.store.count_jobs_of_type(name, version)
        if jobs:
            raise Conflict(f"job type {name} {version} is referenced by {jobs} jobs; deactivate it instead "
                           "(PATCH is_active false)")
        self.store.delete_job_type(name, version)

    def _flags_changed(self, row: JobTypeRow) -> None:
        for callback in self.on_flags_changed:
            callback(row)

    @staticmethod
    def _admin_only(principal: Principal, doing: str) -> None:
        if not principal.admin:
            raise Forbidden(f"only administrators {doing}")


def invalid(report: Report) -> ValidationFailed:
    """A refused create: the 400 carries Scale's validation lists."""
    result = ValidationResult.model_validate(report.as_dict())
    fields = {}
    for issue in result.errors:
        field, _, _ = issue.description.partition(": ")
        fields.setdefault(field if " " not in field else issue.name, f"{issue.name}: {issue.description}")
    summary = "; ".join(f"{i.name}: {i.description}" for i in result.errors[:5])
    return ValidationFailed(f"invalid job type: {summary}", fields,
                            {"errors": [i.model_dump() for i in result.errors],
                             "warnings": [i.model_dump() for i in result.warnings]})


def version_key(version: str) -> tuple:
    """SemVer precedence: numbers compared as numbers, a pre-release before its release."""
    core, _, pre = version.partition("+")[0].partition("-")
    numbers = tuple(int(part) if part.isdigit() else 0 for part in core.split("."))
    return numbers, pre == "", tuple((0, int(p)) if p.isdigit() else (1, p) for p in pre.split(".") if p)


def _summary(rows: list[JobTypeRow]) -> JobTypeSummary:
    newest = max(rows, key=lambda r: version_key(r.version))
    return JobTypeSummary(
        name=newest.name, title=newest.title, description=newest.description, tags=newest.tags,
        icon_code=newest.icon_code, num_versions=len(rows), latest_version=newest.version,
        is_active=any(r.is_active for r in rows),
    )


def _matches(summary: JobTypeSummary, keyword: str | None) -> bool:
    if not keyword:
        return True
    word = keyword.lower()
    return any(word in text.lower() for text in (summary.name, summary.title, *summary.tags))


def _sort_key(summary: JobTypeSummary, field: str, rows: list[JobTypeRow]) -> Any:
    if field in ("created", "last_modified"):
        return max(getattr(r, field) for r in rows)
    return getattr(summary, field).lower()


def _since(earlier: Any, now: Any) -> Any:
    """When a state began: the recorded moment if it already held, else now."""
    return earlier or now
