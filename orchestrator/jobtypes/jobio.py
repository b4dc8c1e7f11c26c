"""A job of a type: its inputs checked before it runs, its outputs and exit code after.

`check_inputs` raises `ValidationFailed` naming every input at fault; the output and exit
checks return a reason for the caller to record as the job's failure, as Scale records
`missing-required-output` or a named error. `validation` re-exports these.
"""

from __future__ import annotations

import fnmatch
from typing import Any

from orchestrator.errors import ValidationFailed
from orchestrator.jobtypes.manifest import InputFile, InputJson, Manifest, env_name

_PYTHON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float),
    "boolean": (bool,), "array": (list,), "object": (dict,),
}


def matches_type(value: Any, json_type: str) -> bool:
    """Whether a JSON value is of a Seed type: booleans are not numbers; integers are."""
    if isinstance(value, bool) and json_type != "boolean":
        return False
    return isinstance(value, _PYTHON_TYPES[json_type])


def article(json_type: str) -> str:
    return ("an " if json_type[0] in "aeiou" else "a ") + json_type


def _type_of(value: Any) -> str:
    for name in ("boolean", "integer", "number", "string", "array", "object"):
        if matches_type(value, name):
            return name
    return "null" if value is None else type(value).__name__


def check_inputs(manifest: Manifest, inputs: dict) -> dict:
    """A job's `{"files": {NAME: [sources]}, "json": {NAME: value}}` checked against its type
    and normalised: declared names, JSON defaults filled in. Raises ValidationFailed naming
    every input at fault (`inputs.files.NAME` or `inputs.json.NAME`)."""
    fields: dict[str, str] = {}
    inputs = {} if inputs is None else inputs
    if not isinstance(inputs, dict):
        raise ValidationFailed("invalid inputs: must be an object", {"inputs": "must be an object"})
    for key in inputs:
        if key not in ("files", "json"):
            fields[f"inputs.{key}"] = "unknown section: give files and json"
    declared_files = {item.name: item for item in manifest.job.interface.inputs.files}
    declared_json = {item.name: item for item in manifest.job.interface.inputs.json_}
    files = _by_declared_name(inputs, "files", declared_files, declared_json, fields)
    values = _by_declared_name(inputs, "json", declared_json, declared_files, fields)
    checked_files = _check_files(declared_files, files, fields)
    checked_json = _check_json(declared_json, values, fields)
    if fields:
        summary = "; ".join(f"{name}: {reason}" for name, reason in list(fields.items())[:5])
        raise ValidationFailed(f"invalid inputs: {summary}", fields)
    return {"files": checked_files, "json": checked_json}


def _by_declared_name(
    inputs: dict, section: str, declared: dict[str, Any], other: dict[str, Any], fields: dict[str, str]
) -> dict[str, tuple[str, Any]]:
    """{declared name: (key as given, value)}; a name may be given as declared or as its variable."""
    given = inputs.get(section)
    given = {} if given is None else given
    if not isinstance(given, dict):
        fields[f"inputs.{section}"] = "must be an object of input names"
        return {}
    found: dict[str, tuple[str, Any]] = {}
    for key, value in given.items():
        where = f"inputs.{section}.{key}"
        name = _resolve(key, declared)
        if name is None:
            other_section = "json" if section == "files" else "files"
            fields[where] = (f"{key} is a {other_section} input: give it under inputs.{other_section}"
                             if _resolve(key, other) else f"unknown input {key}")
        elif name in found:
            fields[where] = f"input {name} is given twice (also as {found[name][0]})"
        else:
            found[name] = (key, value)
    return found


def _resolve(key: str, declared: dict[str, Any]) -> str | None:
    if key in declared:
        return key
    return next((name for name in declared if env_name(name) == env_name(key)), None)


def _check_files(declared: dict[str, InputFile], given: dict[str, tuple[str, Any]],
                 fields: dict[str, str]) -> dict[str, list[str]]:
    checked: dict[str, list[str]] = {}
    for name, spec in declared.items():
        key, sources = given.get(name, (name, None))
        where = f"inputs.files.{key}"
        if sources is not None and (not isinstance(sources, list)
                                    or not all(isinstance(s, str) and s for s in sources)):
            fields[where] = "must be a list of file sources"
        elif not sources:
            if spec.required:
                fields[where] = (f"required input {name} is missing" if sources is None else
                                 f"input {name} takes {'files' if spec.multiple else 'one file'}; "
                                 "none given")
        elif not spec.multiple and len(sources) > 1:
            fields[where] = f"input {name} takes one file; {len(sources)} given"
        else:
            checked[name] = list(sources)
    return checked


def _check_json(declared: dict[str, InputJson], given: dict[str, tuple[str, Any]],
                fields: dict[str, str]) -> dict[str, Any]:
    checked: dict[str, Any] = {}
    for name, spec in declared.items():
        key, value = given.get(name, (name, None))
        where = f"inputs.json.{key}"
        if value is None:
            if spec.required:
                fields[where] = f"required input {name} is missing"
            elif spec.default is not None:
                checked[name] = spec.default
        elif not matches_type(value, spec.type):
            fields[where] = f"input {name} must be {article(spec.type)}, not {_type_of(value)}"
        else:
            checked[name] = value
    return checked


def check_json_outputs(manifest: Manifest, values: dict) -> tuple[dict[str, Any], str | None]:
    """The declared JSON outputs picked by key from seed.outputs.json, and what is wrong
    (None when nothing is): a missing required output or a value of the wrong type."""
    if not isinstance(values, dict):
        return {}, "seed.outputs.json is not a JSON object"
    outputs: dict[str, Any] = {}
    problems = []
    for spec in manifest.job.interface.outputs.json_:
        value = values.get(spec.json_key)
        if value is None:
            if spec.required:
                problems.append(f"missing required output {spec.name}")
        elif not matches_type(value, spec.type):
            problems.append(f"output {spec.name} is not {article(spec.type)}")
        else:
            outputs[spec.name] = value
    return outputs, "; ".join(problems) or None


def match_file_outputs(manifest: Manifest, paths: list[str]) -> tuple[dict[str, list[str]], str | None]:
    """Each declared file output's matches among the files produced (POSIX paths relative to
    the output folder), and what is wrong. A `<file>.metadata.json` next to a produced file
    is Seed's sidecar, not an output."""
    produced = sorted({path.removeprefix("./") for path in paths})
    present = set(produced)
    candidates = [p for p in produced if not (p.endswith(".metadata.json")
                                              and p.removesuffix(".metadata.json") in present)]
    matches: dict[str, list[str]] = {}
    problems = []
    for spec in manifest.job.interface.outputs.files:
        found = [path for path in candidates if glob_match(path, spec.pattern)]
        matches[spec.name] = found
        if not found and spec.required:
            problems.append(f"missing required output {spec.name}")
        elif len(found) > 1 and not spec.multiple:
            problems.append(f"several files match single output {spec.name}: {', '.join(found)}")
    return matches, "; ".join(problems) or None


def glob_match(path: str, pattern: str) -> bool:
    """Seed's output globs: `*` and `?` stay inside one folder level, no recursion."""
    path_parts, pattern_parts = path.split("/"), pattern.removeprefix("./").split("/")
    return len(path_parts) == len(pattern_parts) and all(
        fnmatch.fnmatchcase(part, glob) for part, glob in zip(path_parts, pattern_parts, strict=True)
    )


def error_for_exit(manifest: Manifest, exit_code: int) -> tuple[str | None, str]:
    """(the job type's error name or None, the reason to record) for a job's exit code."""
    if exit_code == 0:
        return None, "exit code 0 (success)"
    for error in manifest.job.errors:
        if error.code == exit_code:
            return error.name, f"error {exit_code} ({error.category}): {error.title or error.name}"
    return None, f"exit code {exit_code} (not an error the job type declares)"
