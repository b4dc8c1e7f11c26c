"""The public error family: safe to show users, each with its HTTP status and code.

The REST layer maps these to `{"error": {...}}` bodies; the Python client maps the bodies back
to the same classes, so embedded and remote callers catch the same exceptions.
"""

from __future__ import annotations

import re
from typing import Any


class OrchestratorError(Exception):
    """An error whose message is meant for the user."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, fields: dict[str, str] | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.details = details or {}  # more of the error's body (a job type's validation report)

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.fields:
            body["fields"] = self.fields
        return {"error": {**body, **self.details}}


class ValidationFailed(OrchestratorError, ValueError):
    status = 400
    code = "validation_error"


class Unauthorized(OrchestratorError):
    status = 401
    code = "unauthorized"


class Forbidden(OrchestratorError):
    """Visible but not yours to change: a job shared with you read-only."""

    status = 403
    code = "forbidden"


class PickledCodeRefused(Forbidden):
    """This server runs only registered applications and entry points, never pickled code."""

    code = "pickled_code_disabled"


class ForbiddenHost(Forbidden):
    """The Host header names another server (DNS rebinding)."""

    code = "forbidden_host"


class CrossOrigin(Forbidden):
    """A state-changing request a browser sent from another origin."""

    code = "cross_origin"


class IsolationUnavailable(OrchestratorError):
    """Multi-user mode where a user's jobs would run with the orchestrator's own identity."""

    status = 403
    code = "isolation_unavailable"


class NotFound(OrchestratorError, LookupError):
    status = 404
    code = "not_found"


class Conflict(OrchestratorError):
    status = 409
    code = "conflict"


class BodyTimeout(OrchestratorError):
    status = 408
    code = "body_timeout"

    def __init__(self, seconds: float):
        super().__init__(f"the request body sent nothing for {seconds:g} s (body_idle_timeout_s)",
                         {"body": "idle"})


class RangeNotSatisfiable(OrchestratorError):
    status = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int):
        super().__init__(f"the requested range is outside the {size} bytes available")


class PayloadTooLarge(OrchestratorError):
    status = 413
    code = "too_large"


class QuotaExceeded(OrchestratorError):
    """A per-user limit that protects the service for everyone (e.g. queued jobs)."""

    status = 429
    code = "quota_exceeded"


class ChecksumMismatch(OrchestratorError):
    """Stored bytes no longer match the size and sha256 recorded when they were written."""

    status = 409
    code = "checksum_mismatch"


class StorageUnavailable(OrchestratorError):
    status = 503
    code = "storage_unavailable"


class SchedulerUnavailable(OrchestratorError):
    """The Dask scheduler is away; work is still accepted and sent when it is back."""

    status = 503
    code = "scheduler_unavailable"


class SecretsUnreadable(OrchestratorError):
    """A secret environment sealed with another key: the key file was replaced or
    ORCHESTRATOR_SECRET_KEY changed. The server's configuration, not the request, is at fault."""

    status = 500
    code = "secrets_unreadable"


class JobFailed(Exception):
    """Raised by `Job.result()` when the job ended in FAILED or STOPPED."""

    def __init__(self, job: Any):
        self.job = job
        super().__init__(f"job {job.id} {job.status.value}: {job.status_reason or ''}".rstrip(": "))


def _by_code() -> dict[str, type[OrchestratorError]]:
    """Every class of the family by its code, however deep; a subclass that keeps its
    parent's code does not take the code over."""
    found: dict[str, type[OrchestratorError]] = {}
    level: list[type[OrchestratorError]] = [OrchestratorError]
    while level:
        level = [sub for cls in level for sub in cls.__subclasses__()]
        for cls in level:
            found.setdefault(cls.code, cls)
    return found


def from_json(status: int, body: Any) -> OrchestratorError:
    """Rebuild the exception a server answered with."""
    error = body.get("error", {}) if isinstance(body, dict) else {}
    cls = _by_code().get(error.get("code"), OrchestratorError)
    exc = cls.__new__(cls)  # past any __init__ of its own: the server already wrote the message
    details = {k: v for k, v in error.items() if k not in ("code", "message", "fields")}
    OrchestratorError.__init__(exc, error.get("message") or f"HTTP {status}", error.get("fields"), details)
    exc.status = status
    return exc


MODEL_LEVEL = re.compile(r"([a-z_][a-z0-9_.]*): (.+)", re.S)


def field_errors(validation_error: Any) -> dict[str, str]:
    """pydantic's error list as {"dotted.field": "message"}."""
    fields: dict[str, str] = {}
    for err in validation_error.errors(include_url=False):
        location = ".".join(str(part) for part in err.get("loc", ()))
        message = err.get("msg", "invalid").removeprefix("Value error, ")
        if not location:  # a model-level check names its field first: "field: message"
            named = MODEL_LEVEL.fullmatch(message)
            location, message = (named.group(1), named.group(2)) if named else ("body", message)
        fields.setdefault(location, message)
    return fields


def validation_failed(validation_error: Any) -> ValidationFailed:
    fields = field_errors(validation_error)
    summary = "; ".join(f"{name}: {msg}" for name, msg in list(fields.items())[:5])
    return ValidationFailed(f"invalid request: {summary}", fields)
