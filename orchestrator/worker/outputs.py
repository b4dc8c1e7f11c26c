"""What a finished job leaves behind, read back on the worker: its files and `outputs.json`.

The worker may run as root while the job ran under another uid, so nothing here follows a
link or trusts a path twice: folders are walked by descriptor (`os.fwalk`) and every file is
opened relative to its folder with O_NOFOLLOW, then checked on the open descriptor. A link,
device, fifo or a file the job's uid does not own (a hard link to someone else's file) is
never read, whatever the job did to its folder while or after it ran.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from orchestrator.storage import Storage, layout

OUTPUTS_FILE = "outputs.json"
MAX_OUTPUTS_BYTES = 1 * 2**20
MAX_OUTPUTS_DEPTH = 32
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)

Staged = dict[str, tuple[int, int]]  # path -> (size, mtime_ns) of the inputs put there


def upload(
    storage: Storage, job_id: str, workdir: Path, staged: Staged, owner_uid: int | None = None
) -> list[dict[str, Any]]:
    """Store every new or changed regular file of the working folder as an output.

    `owner_uid`: the uid the job ran as; files owned by anyone else are not the job's.
    """
    files = []
    for relative, source in _regular_files(workdir, owner_uid):
        with source:
            info = os.fstat(source.fileno())
            if staged.get(relative) == (info.st_size, info.st_mtime_ns):
                continue  # an input left as it was
            stored = storage.put_stream(layout.output_key(job_id, relative), source)
        files.append({"path": relative, "size": stored.size, "sha256": stored.sha256})
    return files


def keep_inputs(storage: Storage, job_id: str, workdir: Path, paths: list[str]) -> list[dict[str, Any]]:
    """Store the staged files a run should be seen to have run with (a sweep's rendered
    templates) as its inputs, before it runs: listed with its files, downloadable."""
    kept = []
    for path in paths:
        with open(workdir / path, "rb") as source:  # the worker wrote it a moment ago; no job ran yet
            stored = storage.put_stream(layout.input_key(job_id, path), source)
        kept.append({"path": path, "size": stored.size, "sha256": stored.sha256, "kind": "input"})
    return kept


def _regular_files(workdir: Path, owner_uid: int | None) -> Iterator[tuple[str, BinaryIO]]:
    """(relative path, open file) of each regular file, in a stable order."""
    for folder, dirs, names, folder_fd in os.fwalk(workdir, follow_symlinks=False):
        dirs.sort()
        relative_folder = os.path.relpath(folder, workdir)
        for name in sorted(names):
            source = open_regular(name, folder_fd, owner_uid)
            if source is not None:
                relative = name if relative_folder == "." else f"{relative_folder}/{name}"
                yield Path(relative).as_posix(), source


def open_regular(name: str, folder_fd: int | None, owner_uid: int | None) -> BinaryIO | None:
    """`name` opened for reading if it is a regular file (owned by `owner_uid` when given)."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=folder_fd)
    except OSError:
        return None  # a link (ELOOP), gone, or unreadable: not an output
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (owner_uid is not None and info.st_uid != owner_uid):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_outputs_json(
    workdir: Path, owner_uid: int | None = None, names: tuple[str, ...] = (OUTPUTS_FILE,),
) -> tuple[dict[str, Any], str | None]:
    """(scalar outputs, problem) from the first of `names` the job wrote (outputs.json; a job
    type's seed.outputs.json first); ({}, None) when it wrote none.

    Read with a size bound, and any parse failure (deep nesting raises RecursionError) is a
    problem reported with the job, never an exception escaping the task.
    """
    folder_fd = os.open(workdir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        found = ((name, open_regular(name, folder_fd, owner_uid)) for name in names)
        name, source = next(((n, f) for n, f in found if f is not None), (OUTPUTS_FILE, None))
    finally:
        os.close(folder_fd)
    if source is None:
        return {}, None
    with source:
        text = source.read(MAX_OUTPUTS_BYTES + 1)
    if len(text) > MAX_OUTPUTS_BYTES:
        return {}, f"outputs not recorded: more than {MAX_OUTPUTS_BYTES} bytes"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return {}, f"{name} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}"
    if not isinstance(data, dict):
        return {}, f"{name} must hold a JSON object"
    return checked_outputs(data)


def checked_outputs(data: dict[str, Any]) -> tuple[dict[str, Any], str | None]:
    """Scalar outputs are kept in the ledger: refuse what would bloat or break it."""
    problem = too_big(data)
    if problem is None:
        with contextlib.suppress(TypeError, ValueError):
            if len(json.dumps(data)) > MAX_OUTPUTS_BYTES:
                problem = f"more than {MAX_OUTPUTS_BYTES} bytes"
    if problem:
        return {}, f"outputs not recorded: {problem}"
    return data, None


def too_big(value: Any, depth: int = MAX_OUTPUTS_DEPTH) -> str | None:
    """Why `value` is nested too deep for the ledger, or None."""
    if depth < 0:
        return f"nested deeper than {MAX_OUTPUTS_DEPTH} levels"
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        problem = too_big(child, depth - 1)
        if problem:
            return problem
    return None
