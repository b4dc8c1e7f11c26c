"""How each kind of job runs on a worker: one Executor per kind, found by name.

Shaped like fsspec's registry of implementations: the registry maps a kind to the import path
of its class, imported on first use, so a worker loads only what it runs. A new kind of work
(an entry point, say) is one new Executor and one line here.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, ClassVar

from orchestrator.kinds import JobKind

if TYPE_CHECKING:
    from orchestrator.storage import Storage
    from orchestrator.worker.runner import Outcome, RunSpec
    from orchestrator.worker.scratch import Scratch


REGISTRY: dict[str, str] = {
    JobKind.COMMAND.value: "orchestrator.worker.runner:CommandExecutor",
    JobKind.CALLABLE.value: "orchestrator.worker.callables:CallableExecutor",
    JobKind.JOB_TYPE.value: "orchestrator.worker.typed:JobTypeExecutor",
    JobKind.ENTRYPOINT.value: "orchestrator.worker.entrypoints:EntrypointExecutor",
}


@dataclass
class RunContext:
    """What every executor is handed besides the spec."""

    storage: Storage
    worker: str | None  # the worker's address, reported with the outcome
    announce: bool  # report RUNNING now (a batch announces at most every so often)
    scratch: Scratch  # the worker's working folder and log files for this task


class Executor(ABC):
    """Runs one attempt of one kind of job and reports its Outcome; never raises for the
    job's own failures (exit code, timeout, an error in a callable)."""

    kind: ClassVar[JobKind]

    @abstractmethod
    def run(self, spec: RunSpec, context: RunContext) -> Outcome: ...


@cache
def executor_for(kind: str) -> Executor:
    try:
        module, _, name = REGISTRY[JobKind(kind).value].partition(":")
    except (KeyError, ValueError):
        raise ValueError(f"no executor runs jobs of kind {kind!r}; known: {', '.join(REGISTRY)}") from None
    return getattr(importlib.import_module(module), name)()
