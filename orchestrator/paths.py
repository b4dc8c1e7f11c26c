"""User-given paths: they must stay inside the job's folder, whatever the user sends."""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def safe_relative_path(path: str) -> str:
    """The normalised form of `path`, or ValueError when it could leave its folder."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("path must not be empty")
    if "\x00" in path or "\\" in path:
        raise ValueError("path must not contain NUL or backslashes")
    if path.startswith("/") or path.startswith("~") or re.match(r"^[A-Za-z]:", path):
        raise ValueError("path must be relative")
    if any(part == ".." for part in path.split("/")):
        raise ValueError("path must not contain '..'")
    normalised = posixpath.normpath(path)
    if normalised in (".", "") or normalised.startswith("../"):
        raise ValueError("path must name a file inside the job folder")
    if len(normalised) > 1024:
        raise ValueError("path is longer than 1024 characters")
    return normalised


def safe_name(name: str) -> str:
    """Names that become storage keys and staged file names (binaries)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(
            "must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def private_folder(path: Path) -> Path:
    """A folder only the orchestrator's own user may enter (the data folder: ledger,
    secret.key, storage), tightened if it already exists open to others."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _owner_only(path)
    return path


def private_file(path: Path) -> Path:
    """A file only its owner reads, created empty if missing (SQLite gives its -wal and -shm
    files the database file's mode)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600))
    _owner_only(path)
    return path


def _owner_only(path: Path) -> None:
    mode = path.stat().st_mode & 0o7777
    if mode & 0o077:
        path.chmod(mode & 0o700)
