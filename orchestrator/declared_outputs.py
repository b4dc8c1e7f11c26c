"""Declared outputs: scalar results a job or sweep asks to be read out of the files its
command writes, so the command need not write `outputs.json` itself.

Each declaration names one value and where it is: the last match of a regex in a text file
(a log's final value), a cell of a CSV file (a column by its header name, a row counted from
the first data row, negative from the end), or a value at a dotted path in a JSON file
(`forces.drag`, `runs.0.t`). It is read on the worker after the run (orchestrator/worker/
extract.py, which imports nothing of this module: a worker's task stays free of pydantic) and
becomes a scalar output like a key of `outputs.json`; a declared output with a value wins
over an `outputs.json` key of the same name.

The model is the request's and the record's (JobTemplate, JobRecord), so it cannot derive
from orchestrator.models.Request (models imports it); it refuses unknown fields the same way.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from orchestrator.paths import safe_relative_path
from orchestrator.templating import VARIABLE_NAME

MAX_DECLARED_OUTPUTS = 100
MAX_PATTERN_CHARS = 1000  # a regex, a column name or a JSON path
MAX_NAME_CHARS = 128
MAX_ROW = 10**9
SOURCES = ("regex", "column", "json_path")


def _one_source(schema: dict[str, Any]) -> None:
    """What `_exactly_one_source` asks, as JSON Schema; null stands for 'not given', as the
    record shows the declaration with every field."""
    schema["anyOf"] = [
        {"required": [name], "properties": {name: {"type": "string"}}} for name in SOURCES
    ]


class DeclaredOutput(BaseModel):
    """One scalar output read from a file the run wrote."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_one_source)

    name: str = Field(
        ..., max_length=MAX_NAME_CHARS, pattern=VARIABLE_NAME.pattern,
        description="the output's name: its key in the result's outputs and its column in a "
        "sweep's results (letters, digits and '_', not starting with a digit)",
    )
    file: str = Field(
        ..., min_length=1, max_length=1024,
        description="the file to read, relative to the run's working folder (a regular file the "
        "run wrote; links are not followed)",
    )
    regex: str | None = Field(
        None, min_length=1, max_length=MAX_PATTERN_CHARS,
        description="a Python regular expression (multi-line: ^ and $ match at each line); the "
        "LAST match in the file wins, its capture group if it has one, else the whole match. "
        "A file past the size bound is searched in its last part",
    )
    column: str | None = Field(
        None, min_length=1, max_length=MAX_PATTERN_CHARS, validate_default=True,
        description="a CSV column, by its name in the header row",
    )
    row: int | None = Field(
        None, ge=-MAX_ROW, le=MAX_ROW, validate_default=True,
        description="with column: the data row (0 is the first after the header; negative "
        "counts from the end; default -1, the last)",
    )
    json_path: str | None = Field(
        None, min_length=1, max_length=MAX_PATTERN_CHARS, validate_default=True,
        description="dotted keys and list indexes into a JSON file: 'forces.drag', 'runs.0.t'",
    )
    type: Literal["number", "string"] = Field(
        "number", description="'number' (an integer stays an integer; NaN and infinities are "
        "refused) or 'string'",
    )
    required: bool = Field(
        False, description="a missing or unreadable value fails a run that completed; otherwise "
        "the value is left out and the problem shown in the result's error",
    )

    # Exactly one of regex, column and json_path: checked field by field (in their order),
    # so an error names the field at fault; a field that failed its own check is not in
    # `info.data`, and is then not blamed twice.

    @field_validator("file")
    @classmethod
    def _safe_file(cls, value: str) -> str:
        return safe_relative_path(value)

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            compiled = re.compile(value, re.MULTILINE)
        except (re.error, OverflowError, RecursionError, ValueError) as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from None
        if compiled.groups > 1:
            raise ValueError(f"has {compiled.groups} capture groups; the value is group 1, so "
                             "write the others as (?:...)")
        return value

    @field_validator("column")
    @classmethod
    def _column_alone(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and info.data.get("regex") is not None:
            raise ValueError("give only one of regex, column and json_path (got regex and column)")
        return value

    @field_validator("row")
    @classmethod
    def _row_of_column(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value is None:  # -1 for a column, shown so in the record; none for the others
            return -1 if info.data.get("column") is not None else None
        if "column" in info.data and info.data["column"] is None:
            raise ValueError("only a CSV column has a row: give column too")
        return value

    @field_validator("json_path")
    @classmethod
    def _json_path_alone(cls, value: str | None, info: ValidationInfo) -> str | None:
        others = [name for name in ("regex", "column") if info.data.get(name) is not None]
        if value is None:
            if not others and {"regex", "column"} <= set(info.data):
                raise ValueError("give one of regex, column (a CSV file) or json_path")
            return value
        if others:
            raise ValueError(f"give only one of regex, column and json_path (got {others[0]} and json_path)")
        if any(not part for part in value.split(".")):
            raise ValueError("must be keys or indexes joined by '.', none of them empty")
        return value


def _unique_names(outputs: list[DeclaredOutput]) -> list[DeclaredOutput]:
    """Refuse a name declared twice (a result holds one value per name)."""
    seen: dict[str, int] = {}
    for index, output in enumerate(outputs):
        if output.name in seen:
            raise ValueError(f"output {output.name!r} is declared twice (items {seen[output.name]} "
                             f"and {index})")
        seen[output.name] = index
    return outputs


# JobTemplate's `outputs` (the job's or sweep's declarations) and JobRecord's (as recorded).
DeclaredOutputs = Annotated[
    list[DeclaredOutput], AfterValidator(_unique_names), Field(max_length=MAX_DECLARED_OUTPUTS)
]


def as_run_fields(outputs: list[DeclaredOutput]) -> list[dict[str, Any]]:
    """What a worker's RunSpec carries: plain dicts (the worker never imports this module)."""
    return [output.model_dump(mode="json") for output in outputs]
