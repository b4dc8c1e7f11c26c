"""The kinds of job, apart from the models: a worker needs the names without pydantic."""

from __future__ import annotations

from enum import Enum


class JobKind(str, Enum):
    """What a job runs: a shell command (or program and arguments), a Python callable, a
    registered job type, or an entry point (a function of uploaded Python binaries)."""

    COMMAND = "command"
    CALLABLE = "callable"
    JOB_TYPE = "job_type"
    ENTRYPOINT = "entrypoint"
