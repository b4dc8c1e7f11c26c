"""The OpenAPI 3.1 document, built from the routes and the pydantic models they name.

The `Operation` declarations of the handlers give each route's summary, body, main response
and query names; what they cannot say (the type of each query parameter, the other statuses
a route answers, multipart bodies, schemas of untyped answers) is filled in here, so that the
document describes every answer the server gives (tests/test_fuzz.py holds it to that).
"""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from pydantic import TypeAdapter

from orchestrator.api.base import MAX_PAGE_SIZE, BaseHandler, Operation
from orchestrator.models import (
    _ENV_NAME,
    _JOB_NAME,
    BinaryRecord,
    ErrorResponse,
    JobCreate,
    JobRecord,
    JobStatus,
)
from orchestrator.paths import _NAME
from orchestrator.sweeps import DryRun

REF = "#/components/schemas/{model}"
PREFIX = "/api/v1"
MAX_WAIT_S = 3600
MAX_LOG_LIMIT = 16 * 2**20
MAX_QUERY_INT = 2**62  # BaseHandler.query_int's default ceiling (inside SQLite's integers)

# Query parameters by name: the handlers read them with query_int/query_bool/... and these bounds.
QUERY_SCHEMAS: dict[str, dict[str, Any]] = {
    "page": {"type": "integer", "minimum": 1, "maximum": 10**9},
    "page_size": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE},
    "offset": {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT},
    "limit": {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_INT},
    "after": {"type": "integer", "minimum": 0, "maximum": MAX_QUERY_INT},
    "version": {"type": "integer", "minimum": 1, "maximum": MAX_QUERY_INT},
    "wait": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
    "timeout": {"type": "number", "minimum": 0, "maximum": MAX_WAIT_S},
    "sync": {"type": "boolean"},
    "follow": {"type": "boolean"},
    "stop": {"type": "boolean"},
    "verify": {"type": "boolean"},
    "status": {"type": "string", "enum": [s.value for s in JobStatus]},
    "stream": {"type": "string", "enum": ["stdout", "stderr"]},
    "format": {"type": "string", "enum": ["json", "csv"]},
}
# ... and where one route bounds a name differently.
QUERY_OVERRIDES: dict[tuple[str, str], dict[str, Any]] = {
    ("/jobs/{job_id}/logs", "limit"): {"maximum": MAX_LOG_LIMIT},
    ("/sweeps/{sweep_id}/finished", "limit"): {"maximum": 1000},
}

_ERROR = {"$ref": REF.format(model="ErrorResponse")}
_STRING_LIST = {"type": "array", "items": {"type": "string"}}
_BINARY = {"type": "string", "format": "binary"}


def _model(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(model=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


# What the handlers answer besides their main status, by (path, method).
EXTRA_RESPONSES: dict[tuple[str, str], dict[str, Any]] = {
    ("/jobs", "post"): {"202": _json(_model("JobRecord"), "with sync: the job had not ended in time")},
    ("/jobs", "delete"): {"202": _json(_model("JobsDeleted"), "some jobs are stopping and are deleted once stopped")},
    ("/jobs/{job_id}", "delete"): {"202": _json(_model("JobRecord"), "with stop: stopping; deleted once stopped")},
    ("/sweeps", "post"): {"200": _json(_model("DryRun"), "with dry_run: the rendered run table")},
}
# Downloads answer 206 to a Range request.
PARTIAL = {("/jobs/{job_id}/files/{path}", "get"), ("/binaries/{name}/content", "get")}
# Answers whose model the handler does not name.
RESPONSE_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("/health", "get"): {
        "type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}},
    },
    ("/openapi.json", "get"): {"type": "object", "required": ["openapi", "paths"]},
    ("/cluster", "get"): {
        "type": "object",
        "required": ["scheduler", "dashboard_link", "jobs_page", "can_grow", "workers"],
        "properties": {
            "scheduler": {"type": "string"},
            "dashboard_link": {"type": ["string", "null"]},
            "jobs_page": {"type": ["string", "null"]},
            "can_grow": {"type": "boolean"},
            "workers": {"type": "array", "items": {
                "type": "object",
                "required": ["address", "declared", "used", "free", "running_jobs"],
                "properties": {
                    "address": {"type": "string"},
                    "running_jobs": _STRING_LIST,
                    "declared": {"type": "object", "additionalProperties": {"type": "number"}},
                    "used": {"type": "object", "additionalProperties": {"type": "number"}},
                    "free": {"type": "object", "additionalProperties": {"type": "number"}},
                },
            }},
        },
    },
    ("/binaries/{name}", "get"): {
        "allOf": [_model("BinaryRecord")],
        "type": "object",
        "required": ["versions"],
        "properties": {"versions": {"type": "array", "items": {"type": "integer"}}},
    },
    ("/jobs", "delete"): _model("JobsDeleted"),
    ("/jobs/stop", "post"): {
        "type": "object", "required": ["stopping"], "properties": {"stopping": _STRING_LIST},
    },
}
# Other media types of an answer, e.g. the results table as CSV.
EXTRA_CONTENT: dict[tuple[str, str], dict[str, Any]] = {
    ("/sweeps/{sweep_id}/results", "get"): {"text/csv": {"schema": {"type": "string"}}},
}
# Query parameters a handler reads that its declaration leaves out.
EXTRA_QUERY: dict[tuple[str, str], dict[str, str]] = {
    ("/binaries", "post"): {"name": "the binary's name, for a raw body (multipart: the file name)"},
    ("/jobs", "delete"): {
        "ids": "comma-separated job ids (without a JSON body)",
        "status": "jobs with this status (without a JSON body)",
        "sweep_id": "runs of one sweep (without a JSON body)",
    },
}
# Bodies that may be left out: the selection can come from the query instead.
OPTIONAL_BODY = {("/jobs", "delete")}
# Multipart request bodies; their form fields carry text, structured values as JSON text.
_FILES = {"type": "array", "items": _BINARY}
_JSON_TEXT = {"type": "string", "contentMediaType": "application/json"}
_ONE_FILE = {"type": "object", "required": ["file"], "properties": {"file": _BINARY}}


def _multipart_bodies() -> dict[tuple[str, str], dict[str, Any]]:
    job_fields: dict[str, Any] = {name: _JSON_TEXT for name in JobCreate.model_fields}
    job_fields.update({
        "name": {"type": "string", "pattern": _JOB_NAME.pattern},
        "command": {**_COMMAND_LINE, "description": "a command line, or an argument list as JSON"},
        "binaries": {"type": "array", "items": _BINARY_REF, "description": "one part per binary"},
        "timeout_s": {"type": "number", "exclusiveMinimum": 0, "maximum": 30 * 24 * 3600},
        "retries": {"type": "integer", "minimum": 0, "maximum": 10},
        "priority": {"type": "integer", "minimum": -1_000_000, "maximum": 1_000_000},
        "submit": {"type": "boolean"},
        "file[]": {**_FILES, "description": "input files; each part's file name is its path"},
    })
    return {
        ("/jobs", "post"): {
            "type": "object", "required": ["command"], "properties": job_fields,
            "additionalProperties": False,
        },
        ("/sweeps", "post"): {
            "type": "object",
            "required": ["spec"],
            "properties": {
                "spec": {**_JSON_TEXT, "description": "the sweep as JSON (SweepCreate)"},
                "file[]": {**_FILES, "description": "shared input files; each part's file name is its path"},
                "cases": {**_BINARY, "description": "rows as CSV (header = variable names)"},
            },
            "additionalProperties": False,
        },
        ("/binaries", "post"): _ONE_FILE,
        ("/binaries/{name}", "post"): _ONE_FILE,
    }


def build_spec(app: tornado.web.Application) -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for rule in app.wildcard_router.rules:
        handler = rule.target
        if not (isinstance(handler, type) and issubclass(handler, BaseHandler)):
            continue
        path, params = _openapi_path(rule.matcher.regex.pattern)
        if path is None:
            continue
        operations = {
            method: _operation(op, method, path, params, schemas, public=handler.public)
            for method, op in handler.openapi.items()
        }
        if operations:
            paths.setdefault(path, {}).update(operations)
    schemas["ErrorResponse"] = _schema(ErrorResponse, schemas)
    schemas.setdefault("JobRecord", _schema(JobRecord, schemas))
    schemas.setdefault("BinaryRecord", _schema(BinaryRecord, schemas))
    schemas.setdefault("DryRun", _schema(DryRun, schemas))
    schemas["JobsDeleted"] = {
        "type": "object",
        "required": ["deleted", "deleting", "skipped_active"],
        "properties": {"deleted": _STRING_LIST, "deleting": _STRING_LIST, "skipped_active": _STRING_LIST},
    }
    _refine_requests(schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dask-orchestrator", "version": "1"},
        "paths": paths,
        "security": [{"token": []}],
        "components": {
            "schemas": _bounds_fixed(schemas),
            "securitySchemes": {
                "token": {
                    "type": "apiKey", "in": "header", "name": "Authorization",
                    "description": "'Token <token>' (or 'Bearer <token>'), once any token exists",
                },
            },
        },
    }


def _openapi_path(regex: str) -> tuple[str | None, dict[str, str]]:
    """The OpenAPI path of a route, and the regex each of its parameters must match."""
    params = dict(re.findall(r"\(\?P<(\w+)>([^)]*)\)", regex))
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex).rstrip("$")
    if "(" in path or "\\" in path.replace("\\.", ""):
        return None, {}
    return path.replace("\\.", "."), params


def _schema(annotation: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(annotation).json_schema(ref_template=REF, mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    return schema


def _path_schema(name: str, pattern: str) -> dict[str, Any]:
    """What the route matches; a binary's name must also be a safe name."""
    if name == "name":
        return {"type": "string", "pattern": _NAME.pattern}
    return {"type": "string", "pattern": f"^{pattern}$"}


def _query_schema(route: str, name: str) -> dict[str, Any]:
    schema = dict(QUERY_SCHEMAS.get(name, {"type": "string"}))
    schema.update(QUERY_OVERRIDES.get((route, name), {}))
    return schema


def _operation(
    op: Operation, method: str, path: str, params: dict[str, str], schemas: dict[str, Any],
    public: bool,
) -> dict[str, Any]:
    route = path.removeprefix(PREFIX)
    key = (route, method)
    spec: dict[str, Any] = {"summary": op.summary}
    if public:
        spec["security"] = []
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": _path_schema(name, pattern)}
        for name, pattern in params.items()
    ]
    query = {**op.query, **EXTRA_QUERY.get(key, {})}
    parameters += [
        {"name": name, "in": "query", "required": False, "description": text,
         "schema": _query_schema(route, name)}
        for name, text in query.items()
    ]
    if parameters:
        spec["parameters"] = parameters
    content: dict[str, Any] = {}
    if op.body is not None:
        body_schema = TypeAdapter(op.body).json_schema(ref_template=REF)
        schemas.update(body_schema.pop("$defs", {}))
        schemas[op.body.__name__] = body_schema
        content["application/json"] = {"schema": {"$ref": REF.format(model=op.body.__name__)}}
    if "application/octet-stream" in op.content_types:
        content["application/octet-stream"] = {"schema": _BINARY}
    if "multipart/form-data" in op.content_types:
        content["multipart/form-data"] = {"schema": _multipart_bodies().get(key, _BINARY)}
    if content:
        spec["requestBody"] = {"required": key not in OPTIONAL_BODY, "content": content}
    success: dict[str, Any] = {"description": "success"}
    if op.raw_response:
        success["content"] = {op.raw_response: {"schema": {"type": "string"}}}
    elif op.response is not None:
        success["content"] = {"application/json": {"schema": _schema(op.response, schemas)}}
    elif key in RESPONSE_SCHEMAS:
        success["content"] = {"application/json": {"schema": RESPONSE_SCHEMAS[key]}}
    if key in EXTRA_CONTENT:
        success.setdefault("content", {}).update(EXTRA_CONTENT[key])
    responses: dict[str, Any] = {str(op.status): success}
    if key in PARTIAL:
        responses["206"] = {**success, "description": "the requested byte range"}
    responses.update(EXTRA_RESPONSES.get(key, {}))
    responses["4XX"] = _json(_ERROR, "error")
    responses["503"] = _json(_ERROR, "storage unavailable")
    spec["responses"] = responses
    return spec


# What the request models check in validators, which pydantic cannot put in their schemas.
_NO_NUL = r"^[^\x00]*$"
_COMMAND_LINE = {"type": "string", "pattern": r"^[^\x00]*\S[^\x00]*$"}
_COMMAND_ARGS = {
    "type": "array", "minItems": 1,
    "prefixItems": [_COMMAND_LINE], "items": {"type": "string", "pattern": _NO_NUL},
}
_ENV = {
    "type": "object",
    "propertyNames": {"pattern": _ENV_NAME.pattern},
    "additionalProperties": {"type": "string", "pattern": _NO_NUL},
}
_NAME_PART = _NAME.pattern.removeprefix("^").removesuffix("$")
_BINARY_REF = {
    "type": "string",
    "description": "'name', 'name@version', an admin's 'owner/name[@version]', or an fsspec URL",
    "pattern": rf"^(({_NAME_PART})/)?{_NAME_PART}(@[0-9]+)?$|://",
}


def _refine_requests(schemas: dict[str, Any]) -> None:
    for model in ("JobCreate", "SweepCreate", "JobPatch"):
        properties = schemas.get(model, {}).get("properties", {})
        if "name" in properties:
            properties["name"] = _nullable(properties["name"], {"type": "string", "pattern": _JOB_NAME.pattern})
        if "command" in properties:
            properties["command"] = _nullable(properties["command"], {"anyOf": [_COMMAND_LINE, _COMMAND_ARGS]})
        for field_name in ("env", "secret_env"):
            if field_name in properties:
                properties[field_name] = {**properties[field_name], **_ENV}
        if "binaries" in properties:
            properties["binaries"] = {**properties["binaries"], "items": _BINARY_REF}
    if "JobSelection" in schemas:  # ids, status or sweep_id: never everything by accident
        schemas["JobSelection"]["anyOf"] = [
            {"required": ["ids"], "properties": {"ids": {"type": "array", "minItems": 1}}},
            {"required": ["status"], "properties": {"status": {"not": {"type": "null"}}}},
            {"required": ["sweep_id"], "properties": {"sweep_id": {"type": "string"}}},
        ]
    if "JobPatch" in schemas:
        schemas["JobPatch"]["anyOf"] = [
            {"required": ["name"], "properties": {"name": {"type": "string"}}},
            {"required": ["priority"], "properties": {"priority": {"type": "integer"}}},
        ]
    sweep = schemas.get("SweepCreate")
    if sweep and "command" in sweep.get("properties", {}):
        # optional only for the Python API's callables: a sweep over REST runs a command
        sweep["properties"]["command"] = {"anyOf": [_COMMAND_LINE, _COMMAND_ARGS]}
        sweep["required"] = sorted({*sweep.get("required", []), "command"})


def _nullable(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """`new` in place of `old`, still taking null where `old` did; descriptions kept."""
    kept = {k: v for k, v in old.items() if k in ("description", "title", "default")}
    takes_null = any(branch.get("type") == "null" for branch in old.get("anyOf", []))
    if takes_null:
        return {**kept, "anyOf": [new, {"type": "null"}]}
    return {**kept, **new}


_BOUNDS = {"gt": "exclusiveMinimum", "ge": "minimum", "lt": "exclusiveMaximum", "le": "maximum"}
_SCHEMA_MAPS = ("properties", "patternProperties", "$defs", "dependentSchemas")
_DATA = ("default", "const", "enum", "examples", "example")


def _bounds_fixed(schemas: dict[str, Any]) -> dict[str, Any]:
    return {name: _fix_bounds(schema) for name, schema in schemas.items()}


def _fix_bounds(schema: Any) -> Any:
    """pydantic leaves a bound on a union (e.g. `int | float` with gt=0) as a keyword of its
    own, which JSON Schema ignores; put it on each numeric branch instead."""
    if isinstance(schema, list):
        return [_fix_bounds(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    fixed: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _SCHEMA_MAPS and isinstance(value, dict):
            fixed[key] = _bounds_fixed(value)
        elif key in _DATA:
            fixed[key] = value
        else:
            fixed[key] = _fix_bounds(value)
    bounds = {
        _BOUNDS[key]: fixed.pop(key)
        for key in list(fixed)
        if key in _BOUNDS and isinstance(fixed[key], (int, float))
    }
    if bounds and "anyOf" in fixed:
        fixed["anyOf"] = [
            {**branch, **bounds} if branch.get("type") in ("integer", "number") else branch
            for branch in fixed["anyOf"]
        ]
    elif bounds:
        fixed.update(bounds)
    return fixed
