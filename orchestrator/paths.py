"""User-given paths: they must stay inside the job's folder, whatever the user sends."""

from __future__ import annotations

import posixpath
import re

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
