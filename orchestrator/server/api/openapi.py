"""The OpenAPI 3.1 document, generated from the routes table (api/app.py ROUTES) and the
`Operation` each handler declares per method: its query model, JSON or multipart body model,
main answer and other answers. Nothing here restates a bound or a field: parameters, bodies
and answers are the JSON Schema of those pydantic models (tests/test_fuzz.py holds the
server to the document).
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, TypeAdapter

from orchestrator.models import ErrorResponse
from orchestrator.server.api.base import BaseHandler, Operation

REF = "#/components/schemas/{model}"
_BINARY = {"type": "string", "format": "binary"}
_JSON_TEXT = {"type": "string", "contentMediaType": "application/json"}
_SCALARS = ("string", "integer", "number", "boolean")


def build_spec(routes: list[tuple[str, type]], prefix: str = "") -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    paths: dict[str, Any] = {}
    for pattern, handler in routes:
        if not (isinstance(handler, type) and issubclass(handler, BaseHandler)):
            continue
        path, params = _openapi_path(prefix + pattern)
        operations = {
            method: _operation(op, _path_parameters(params, handler.path_model), handler.public, schemas)
            for method, op in handler.openapi.items()
        }
        if operations:
            paths.setdefault(path, {}).update(operations)
    _ref(ErrorResponse, schemas, "serialization")
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


def _openapi_path(regex: str) -> tuple[str, dict[str, str]]:
    """The OpenAPI path of a route, and the regex each of its parameters must match."""
    params = dict(re.findall(r"\(\?P<(\w+)>([^)]*)\)", regex))
    path = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", regex).rstrip("$").replace("\\.", ".")
    if "(" in path or "\\" in path:
        raise ValueError(f"route {regex!r} has a group that is not a named parameter")
    return path, params


def _schema(annotation: Any, schemas: dict[str, Any], mode: str) -> dict[str, Any]:
    """The JSON Schema of a type; models (also nested ones) go to the components."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel) and "[" not in annotation.__name__:
        return _ref(annotation, schemas, mode)
    schema = TypeAdapter(annotation).json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    schemas.update(schema.pop("$defs", {}))
    return schema


def _ref(model: type[BaseModel], schemas: dict[str, Any], mode: str) -> dict[str, Any]:
    schema = model.model_json_schema(ref_template=REF, mode=mode)  # type: ignore[arg-type]
    schemas.update(schema.pop("$defs", {}))
    schemas[model.__name__] = schema
    return {"$ref": REF.format(model=model.__name__)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_parameters(params: dict[str, str], model: type[BaseModel] | None) -> list[dict[str, Any]]:
    """What the route's regex matches, or what the handler's path model takes of it."""
    declared = model.model_json_schema(ref_template=REF)["properties"] if model else {}
    return [
        {"name": name, "in": "path", "required": True,
         "schema": declared.get(name, {"type": "string", "pattern": f"^{pattern}$"})}
        for name, pattern in params.items()
    ]


def _operation(
    op: Operation, path_parameters: list[dict[str, Any]], public: bool, schemas: dict[str, Any]
) -> dict[str, Any]:
    spec: dict[str, Any] = {"summary": op.summary}
    if public:
        spec["security"] = []
    parameters = list(path_parameters)
    if op.query is not None:
        parameters += _query_parameters(op.query)
    if parameters:
        spec["parameters"] = parameters
    content: dict[str, Any] = {}
    if op.body is not None:
        content["application/json"] = {"schema": _ref(op.body, schemas, "validation")}
    if op.raw_body:
        content["application/octet-stream"] = {"schema": _BINARY}
    if op.form is not None:
        content["multipart/form-data"] = {"schema": _form_schema(op.form, schemas)}
    if content:
        spec["requestBody"] = {"required": op.body_required, "content": content}
    success: dict[str, Any] = {"description": "success"}
    if op.raw_response:
        success["content"] = {op.raw_response: {"schema": {"type": "string"}}}
    elif op.response is not None:
        success["content"] = {"application/json": {"schema": _schema(op.response, schemas, "serialization")}}
    for media, annotation in op.also_as.items():
        success.setdefault("content", {})[media] = {"schema": _schema(annotation, schemas, "serialization")}
    responses: dict[str, Any] = {str(op.status): success}
    if op.ranges:
        responses["206"] = {**success, "description": "the requested byte range"}
    for answer in op.answers:
        responses[str(answer.status)] = _json(_schema(answer.model, schemas, "serialization"), answer.description)
    error = {"$ref": REF.format(model=ErrorResponse.__name__)}
    responses["4XX"] = _json(error, "error")
    responses["503"] = _json(error, "storage unavailable")
    spec["responses"] = responses
    return spec


def _query_parameters(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = _fix_bounds(model.model_json_schema(ref_template=REF))
    defs = schema.get("$defs", {})
    parameters = []
    for name, field in schema.get("properties", {}).items():
        field = _inline(_without_null(field), defs)
        description = field.pop("description", None) or defs.get(name, {}).get("description")
        field.pop("title", None)
        parameter = {"name": name, "in": "query", "required": name in schema.get("required", []),
                     "schema": field}
        if description:
            parameter["description"] = description
        parameters.append(parameter)
    return parameters


def _form_schema(model: type[BaseModel], schemas: dict[str, Any]) -> dict[str, Any]:
    """A multipart body: scalar fields as text, lists of them one part each, files as parts,
    structured fields as JSON text."""
    schema = _fix_bounds(model.model_json_schema(ref_template=REF, mode="validation"))
    schemas.update(schema.pop("$defs", {}))
    schema["properties"] = {name: _form_field(field) for name, field in schema.get("properties", {}).items()}
    schema.pop("title", None)
    return schema


def _form_field(field: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in field.items() if k in ("description", "title")}
    branches = [branch for branch in field.get("anyOf", [field]) if branch.get("type") in _SCALARS]
    if branches:
        return {**kept, **branches[0]} if len(branches) == 1 else {**kept, "anyOf": branches}
    if field.get("type") == "array" and field.get("items", {}).get("type") in _SCALARS:
        return {k: v for k, v in field.items() if k != "default"}
    return {**kept, **_JSON_TEXT}


def _without_null(schema: dict[str, Any]) -> dict[str, Any]:
    """A query parameter is absent, never null."""
    schema = {k: v for k, v in schema.items() if not (k == "default" and v is None)}
    branches = [b for b in schema.get("anyOf", []) if b.get("type") != "null"]
    if "anyOf" in schema and len(branches) == 1:
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return {**branches[0], **rest}
    return schema


def _inline(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = schema.pop("$ref", None)
    if ref is None:
        return schema
    target = dict(defs[ref.rsplit("/", 1)[-1]])
    target.pop("title", None)
    return {**target, **schema}


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
