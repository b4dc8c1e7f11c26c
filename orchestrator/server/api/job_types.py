"""/job-types: register, validate, list, show, edit, pause and retire job types (Scale v6)."""

from __future__ import annotations

import json
from typing import Any

from pydantic import Field

from orchestrator.errors import ValidationFailed
from orchestrator.jobtypes.records import (
    ORDER_FIELDS,
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.models import Page, Request
from orchestrator.server.api.base import BaseHandler, Operation, Paged

TYPE_NAME = r"^[A-Za-z0-9-]{1,128}$"
TYPE_VERSION = r"^[0-9A-Za-z.+-]{1,64}$"


class TypePath(Request):
    name: str = Field(..., pattern=TYPE_NAME)


class VersionPath(TypePath):
    version: str = Field(..., pattern=TYPE_VERSION)


class RevisionPath(VersionPath):
    revision_num: int = Field(..., ge=1, le=1_000_000)


class ListQuery(Paged):
    keyword: str | None = Field(None, max_length=200, description="part of the name, title or a tag")
    is_active: bool | None = Field(None, description="default: active types only (true)")
    order: str = Field("name", pattern=rf"^-?({'|'.join(ORDER_FIELDS)})$",
                       description="sort by name, title, created or last_modified; '-' first: descending")


class JobTypesHandler(BaseHandler):
    openapi = {
        "get": Operation("List job types, one row per name (inactive ones only with is_active=false)",
                         query=ListQuery, response=Page[JobTypeSummary]),
        "post": Operation(
            "Register a job type (admins); posting an existing name and version edits it (answered "
            "201 like a create), and a changed manifest makes a new revision", body=JobTypeCreate,
            response=JobTypeDetails, status=201),
    }

    async def get(self) -> None:
        query = self.query_args()
        self.send_list(self.service.job_types.list(query.keyword, query.is_active, query.order))

    async def post(self) -> None:
        request = self.parse_body(JobTypeCreate)
        details, _ = await self.service.job_types.save(request, self.principal)
        self.send_created(details, f"/api/v1/job-types/{details.name}/{details.version}")


class JobTypeValidationHandler(BaseHandler):
    openapi = {"post": Operation("Validate a job type as a create would, saving nothing",
                                 body=JobTypeCreate, response=ValidationResult)}

    async def post(self) -> None:
        self.send_json(await self.service.job_types.validation(self._raw_body(), self.principal))

    def _raw_body(self) -> dict[str, Any]:
        try:
            body = json.loads(bytes(self.json_body or b"") or b"null")
        except (ValueError, RecursionError):
            raise ValidationFailed("the body is not JSON", {"body": "not JSON"}) from None
        if not isinstance(body, dict):
            raise ValidationFailed("send a JSON object: {manifest, configuration}", {"body": "not an object"})
        return body


class JobTypeNameHandler(BaseHandler):
    path_model = TypePath
    openapi = {"get": Operation("Every version of a job type, oldest first", query=Paged,
                                response=Page[JobTypeDetails])}

    async def get(self, name: str) -> None:
        self.send_list(self.service.job_types.versions(name))


class JobTypeHandler(BaseHandler):
    path_model = VersionPath
    openapi = {
        "get": Operation("A job type's details: manifest, configuration (secrets masked), revision",
                         response=JobTypeDetails),
        "patch": Operation("Change flags or configuration (admins): icon_code, is_active, is_paused, "
                           "max_scheduled (null clears it), configuration; no new revision",
                           body=JobTypePatch, response=JobTypeDetails),
        "delete": Operation("Delete a job type no job references (admins); otherwise 409: deactivate it",
                            status=204),
    }

    async def get(self, name: str, version: str) -> None:
        self.send_json(self.service.job_types.details(name, version))

    async def patch(self, name: str, version: str) -> None:
        patch = self.parse_body(JobTypePatch)
        self.send_json(self.service.job_types.patch(name, version, patch, self.principal))

    async def delete(self, name: str, version: str) -> None:
        self.service.job_types.delete(name, version, self.principal)
        self.set_status(204)
        self.finish()


class JobTypeRevisionsHandler(BaseHandler):
    path_model = VersionPath
    openapi = {"get": Operation("Every revision of a job type's manifest, oldest first", query=Paged,
                                response=Page[JobTypeRevision])}

    async def get(self, name: str, version: str) -> None:
        self.send_list(self.service.job_types.revisions(name, version))


class JobTypeRevisionHandler(BaseHandler):
    path_model = RevisionPath
    openapi = {"get": Operation("One revision of a job type's manifest", response=JobTypeRevision)}

    async def get(self, name: str, version: str, revision_num: str) -> None:
        self.send_json(self.service.job_types.revision(name, version, int(revision_num)))
