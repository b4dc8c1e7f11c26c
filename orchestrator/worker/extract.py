"""Declared outputs read out of the files a run wrote (see orchestrator/declared_outputs.py
for what a declaration holds): pure logic, no Dask and no pydantic, run on the worker after
the command.

Files are read as `outputs.upload` reads them: folder by folder from the working folder with
O_NOFOLLOW, the file itself through `outputs.open_regular` (a regular file, owned by the
job's uid in multi-user mode), so a link the job left never leads outside its folder. Each
file is read once, at most MAX_FILE_BYTES of it: a regex searches the last MAX_FILE_BYTES of
a larger file (a log's final value is at its end), a CSV or JSON file past the bound is
refused.

- regex: compiled MULTILINE; the LAST match wins, its group 1 if the regex has a capture
  group, else the whole match.
- column: the header row names the columns (names compared stripped); `row` counts data
  rows from 0, negative from the end; blank lines are not rows.
- json_path: keys and list indexes joined by '.'; a list index may be negative.
- type "number": an integer's text stays an int, other numbers are floats; NaN and infinities
  are refused. A JSON number is taken as it is, a JSON string is parsed. Type "string": the
  text as found (a CSV cell stripped); a JSON number or boolean as its JSON text.

A regex runs in the worker's thread with no time limit: the run's owner can only slow their
own run's end with a pathological pattern, bounded by the file size.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from orchestrator.worker import outputs

MAX_FILE_BYTES = 64 * 2**20
MAX_STRING_CHARS = 8192  # 100 declared strings stay inside the 1 MiB of scalar outputs
MAX_REASON_CHARS = 2000
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INTEGER = re.compile(r"[-+]?\d+")
_INDEX = re.compile(r"-?\d+")


class Problem(Exception):
    """Why one declared output has no value (the message names the file and what was found)."""


@dataclass
class Extraction:
    values: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)  # of required outputs: fail a completed run
    problems: list[str] = field(default_factory=list)  # of optional ones: shown in the error

    @property
    def failure(self) -> str | None:
        return _bounded("; ".join(self.failures)) if self.failures else None


def extract(workdir: Path, declared: list[dict[str, Any]], owner_uid: int | None) -> tuple[dict[str, Any], str | None]:
    """(value by name, why the required outputs that have none have none, or None)."""
    found = read_declared(workdir, declared, owner_uid)
    return found.values, found.failure


def read_declared(workdir: Path, declared: list[dict[str, Any]], owner_uid: int | None) -> Extraction:
    """Every declared output's value, and the problems of those that have none."""
    found = Extraction()
    files: dict[str, _File] = {}
    for item in declared:
        name, path = item["name"], item["file"]
        if path not in files:
            files[path] = _File.read(workdir, path, owner_uid)
        try:
            found.values[name] = _value(item, files[path])
        except Problem as exc:
            (found.failures if item.get("required") else found.problems).append(f"output {name}: {exc}")
    return found


def merge(
    values: dict[str, Any], error: str | None, found: Extraction, completed: bool,
) -> tuple[dict[str, Any], str | None, str | None]:
    """(outputs, error, failure) of a run: `values` (from outputs.json) with the declared
    outputs laid over them (a declared output with a value wins over a key of the same
    name). `failure` is the reason a completed run fails for its required outputs; a run that
    did not complete keeps its own reason and has their problems in its error."""
    merged, too_big = outputs.checked_outputs({**values, **found.values})
    problems = [error] if error else []
    if too_big:  # outputs.json's values were bounded alone: keep the declared ones
        merged = dict(found.values)
        problems.append(f"outputs.json not recorded with the declared outputs: {too_big}")
    failure = found.failure if completed else None
    if not completed:
        problems += found.failures
    problems += found.problems
    return merged, _bounded("; ".join(problems)) if problems else None, failure


# ---- files ------------------------------------------------------------------------------


@dataclass
class _File:
    path: str
    text: str | None = None
    whole: bool = True  # False: only the file's last MAX_FILE_BYTES were read
    problem: str | None = None  # why it could not be read
    parsed: dict[str, Any] = field(default_factory=dict)  # "csv", "json": parsed once

    @classmethod
    def read(cls, workdir: Path, path: str, owner_uid: int | None) -> _File:
        try:
            source = _open(workdir, path, owner_uid)
            with source:
                size = os.fstat(source.fileno()).st_size
                if size > MAX_FILE_BYTES:
                    source.seek(size - MAX_FILE_BYTES)
                data = source.read(MAX_FILE_BYTES)
        except Problem as exc:
            return cls(path, problem=str(exc))
        except OSError as exc:
            return cls(path, problem=f"{path} could not be read: {exc.strerror or exc}")
        text = data.decode("utf-8", errors="replace").removeprefix("\ufeff")
        return cls(path, text, whole=size <= MAX_FILE_BYTES)

    def whole_text(self) -> str:
        if self.problem is not None:
            raise Problem(self.problem)
        if not self.whole:
            raise Problem(f"{self.path} is larger than {MAX_FILE_BYTES // 2**20} MiB")
        assert self.text is not None
        return self.text

    def rows(self) -> tuple[list[str], list[list[str]]]:
        """(header, data rows) of a CSV file."""
        if "csv" not in self.parsed:
            text = self.whole_text()
            try:
                rows = [row for row in csv.reader(io.StringIO(text)) if any(cell.strip() for cell in row)]
            except csv.Error as exc:
                raise Problem(f"{self.path} is not valid CSV: {str(exc)[:200]}") from None
            if not rows:
                raise Problem(f"{self.path} is empty")
            self.parsed["csv"] = ([cell.strip() for cell in rows[0]], rows[1:])
        return self.parsed["csv"]

    def json(self) -> Any:
        if "json" not in self.parsed:
            text = self.whole_text()
            try:
                self.parsed["json"] = json.loads(text)
            except (ValueError, RecursionError) as exc:
                raise Problem(f"{self.path} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
        return self.parsed["json"]


def _open(workdir: Path, path: str, owner_uid: int | None) -> Any:
    """`path` (already a safe relative path) opened for reading, each folder on the way
    opened without following a link, the file by `outputs.open_regular`."""
    *folders, name = path.split("/")
    folder_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for depth, folder in enumerate(folders):
            try:
                inner = os.open(folder, _DIR_FLAGS, dir_fd=folder_fd)
            except FileNotFoundError:
                raise Problem(f"file {path} not found") from None
            except OSError:
                where = "/".join(folders[:depth + 1])
                raise Problem(f"{where} (of {path}) is not a folder; links are not followed") from None
            os.close(folder_fd)
            folder_fd = inner
        source = outputs.open_regular(name, folder_fd, owner_uid)
        if source is None:
            raise Problem(_why_unread(path, name, folder_fd, owner_uid))
        return source
    finally:
        os.close(folder_fd)


def _why_unread(path: str, name: str, folder_fd: int, owner_uid: int | None) -> str:
    try:
        info = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
    except FileNotFoundError:
        return f"file {path} not found"
    except OSError as exc:
        return f"{path} could not be read: {exc.strerror or exc}"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link, which is not followed"
    if not stat.S_ISREG(info.st_mode):
        return f"{path} is not a regular file"
    if owner_uid is not None and info.st_uid != owner_uid:
        return f"{path} is not owned by the job's user"
    return f"{path} could not be read"


# ---- values -----------------------------------------------------------------------------


def _value(item: dict[str, Any], source: _File) -> Any:
    as_string = item.get("type") == "string"
    if item.get("regex") is not None:
        text = _last_match(item["regex"], source)
        return _string(text) if as_string else _number(text, source.path)
    if item.get("column") is not None:
        text = _cell(item["column"], -1 if item.get("row") is None else item["row"], source)
        return _string(text) if as_string else _number(text, source.path)
    value = _at_path(item["json_path"], source)
    return _json_string(value, item["json_path"], source.path) if as_string else \
        _json_number(value, item["json_path"], source.path)


def _last_match(pattern: str, source: _File) -> str:
    if source.problem is not None:
        raise Problem(source.problem)
    try:
        compiled = re.compile(pattern, re.MULTILINE)
    except (re.error, OverflowError, RecursionError, ValueError) as exc:
        raise Problem(f"regex {_shown(pattern)} is not valid: {exc}") from None
    last = None
    for last in compiled.finditer(source.text or ""):  # noqa: B007 - the last one is wanted
        pass
    where = source.path if source.whole else f"the last {MAX_FILE_BYTES // 2**20} MiB of {source.path}"
    if last is None:
        raise Problem(f"no match for regex {_shown(pattern)} in {where}")
    found = last.group(1) if compiled.groups else last.group(0)
    if found is None:
        raise Problem(f"the group of regex {_shown(pattern)} took no part in its last match in {where}")
    return found


def _cell(column: str, row: int, source: _File) -> str:
    header, rows = source.rows()
    wanted = column.strip()
    if wanted not in header:
        raise Problem(f"{source.path} has no column {_shown(wanted)} (columns: {_listed(header)})")
    if not -len(rows) <= row < len(rows):
        raise Problem(f"{source.path} has {len(rows)} data row(s); there is no row {row}")
    cells = rows[row]
    position = header.index(wanted)
    text = cells[position].strip() if position < len(cells) else ""
    if not text:
        raise Problem(f"row {row} of {source.path} has no value in column {_shown(wanted)}")
    return text


def _at_path(path: str, source: _File) -> Any:
    value = source.json()
    walked: list[str] = []
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and _INDEX.fullmatch(part) and -len(value) <= int(part) < len(value):
            value = value[int(part)]
        else:
            under = f" under {_shown('.'.join(walked))}" if walked else ""
            raise Problem(f"{_shown(path)} not found in {source.path} (no {_shown(part)}{under})")
        walked.append(part)
    return value


def _number(text: str, path: str) -> int | float:
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        raise Problem(f"{_shown(text)} in {path} is not a number")
    try:
        number: int | float = int(stripped) if _INTEGER.fullmatch(stripped) else float(stripped)
    except ValueError:  # an integer of more digits than Python converts
        raise Problem(f"{_shown(text)} in {path} has too many digits") from None
    if isinstance(number, float) and not math.isfinite(number):
        raise Problem(f"{_shown(text)} in {path} is not a finite number")
    return number


def _string(text: str) -> str:
    if len(text) > MAX_STRING_CHARS:
        raise Problem(f"the value found is longer than {MAX_STRING_CHARS} characters")
    return text


def _json_number(value: Any, path: str, file: str) -> int | float:
    if isinstance(value, str):
        return _number(value, file)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise Problem(f"{_shown(path)} in {file} is {_json_kind(value)}, not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise Problem(f"{_shown(path)} in {file} is {value}, not a finite number")
    return value


def _json_string(value: Any, path: str, file: str) -> str:
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, (bool, int, float)) and not (isinstance(value, float) and not math.isfinite(value)):
        return _string(json.dumps(value))
    raise Problem(f"{_shown(path)} in {file} is {_json_kind(value)}, not a string")


def _json_kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return {dict: "an object", list: "a list"}.get(type(value), type(value).__name__)


def _shown(text: str, limit: int = 100) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "...")


def _listed(names: list[str], limit: int = 20) -> str:
    shown = ", ".join(name[:50] for name in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _bounded(text: str) -> str:
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."
