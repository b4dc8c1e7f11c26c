"""Job types as the REST and Python APIs speak of them: requests, details, list rows and
revisions. A type is `name` + `version`; its manifest changes make revisions, its flags and
configuration do not."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from orchestrator.jobtypes.manifest import Configuration
from orchestrator.models import Request

ORDER_FIELDS = ("name", "title", "created", "last_modified")


class JobTypeCreate(Request):
    """A Seed manifest (`{"seedVersion": ..., "job": {...}}`) and its configuration. Posting
    an existing name and version edits it: a changed manifest makes a new revision."""

    manifest: dict[str, Any] = Field(..., description="a Seed manifest: {'seedVersion': ..., 'job': {...}}")
    configuration: dict[str, Any] | None = Field(
        None, description="settings (NAME: value), mounts (NAME: absolute host path) and priority")
    icon_code: str | None = Field(None, max_length=64)
    is_active: bool = True
    is_paused: bool = False
    max_scheduled: int | None = Field(None, ge=0, le=1_000_000,
                                      description="most of its jobs sent or running at once; null: no limit")


class JobTypePatch(Request):
    """Flags and configuration only: no revision. `max_scheduled: null` clears the limit."""

    icon_code: str | None = Field(None, max_length=64)
    is_active: bool | None = None
    is_paused: bool | None = None
    max_scheduled: int | None = Field(None, ge=0, le=1_000_000)
    configuration: Configuration | None = None


class JobTypeDetails(BaseModel):
    name: str
    version: str
    title: str
    description: str
    tags: list[str]
    icon_code: str | None = None
    maintainer: dict[str, Any] | None = None
    docker_image: str | None = Field(None, description="recorded only: images are not run yet")
    revision_num: int
    manifest: dict[str, Any] = Field(..., description="the latest revision's Seed manifest")
    configuration: dict[str, Any] = Field(..., description="secret settings show as '****'")
    is_active: bool
    is_paused: bool
    max_scheduled: int | None = None
    created_by: str
    created: datetime
    last_modified: datetime
    paused: datetime | None = None
    deprecated: datetime | None = None


class JobTypeSummary(BaseModel):
    """One row per name in the list: its newest version's words."""

    name: str
    title: str
    description: str
    tags: list[str]
    icon_code: str | None = None
    num_versions: int
    latest_version: str
    is_active: bool = Field(..., description="some version is active")


class JobTypeRevision(BaseModel):
    name: str
    version: str
    revision_num: int
    manifest: dict[str, Any]
    created: datetime


class ValidationIssue(BaseModel):
    name: str = Field(..., description="a Scale code, e.g. NAME_COLLISION_ERROR")
    description: str


class ValidationResult(BaseModel):
    is_valid: bool
    errors: list[ValidationIssue]
    warnings: list[ValidationIssue]
