"""The OpenAPI 3.1 document, built from the routes and the pydantic models they name."""

from __future__ import annotations

import re
from typing import Any

import tornado.web
from pydantic import TypeAdapter

from orchestrator.api.base import BaseHandler, Operation
from orchestrator.models import ErrorResponse

REF = "#/components/schemas/{model}"


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
            method: _operation(op, params, schemas) for method, op in handler.openapi.items()
        }
        if operations:
            paths.setdefault(path, {}).update(operations)
    schemas["ErrorResponse"] = _schema(ErrorResponse, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "dask-orchestrator", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"token": {"type": "apiKey", "in": "header", "name": "Authorization"}},
        },
    }


def _openapi_path(regex: str) -> tuple[str | None, list[str]]:
    params = re.findall(r"\(\?P<(\w+)>", regex)
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex).rstrip("$")
    if "(" in path or "\\" in path.replace("\\.", ""):
        return None, []
    return path.replace("\\.", "."), params


def _schema(annotation: Any, schemas: dict[str, Any]) -> dict[str, Any]:
    schema = TypeAdapter(annotation).json_schema(ref_template=REF, mode="serialization")
    schemas.update(schema.pop("$defs", {}))
    return schema


def _operation(op: Operation, params: list[str], schemas: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {"summary": op.summary}
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}} for name in params
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "description": text, "schema": {"type": "string"}}
        for name, text in op.query.items()
    ]
    if parameters:
        spec["parameters"] = parameters
    if op.body is not None:
        body_schema = TypeAdapter(op.body).json_schema(ref_template=REF)
        schemas.update(body_schema.pop("$defs", {}))
        schemas[op.body.__name__] = body_schema
        spec["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": REF.format(model=op.body.__name__)}}},
        }
    elif "application/octet-stream" in op.content_types or "multipart/form-data" in op.content_types:
        spec["requestBody"] = {
            "content": {ct: {"schema": {"type": "string", "format": "binary"}} for ct in op.content_types}
        }
    success: dict[str, Any] = {"description": "success"}
    if op.raw_response:
        success["content"] = {op.raw_response: {"schema": {"type": "string"}}}
    elif op.response is not None:
        success["content"] = {"application/json": {"schema": _schema(op.response, schemas)}}
    error = {"description": "error", "content": {"application/json": {"schema": {"$ref": REF.format(model="ErrorResponse")}}}}
    spec["responses"] = {str(op.status): success, "4XX": error}
    return spec
