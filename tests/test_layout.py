"""The house rules a reader relies on: no module past 600 lines, no import cycle among the
orchestrator's modules, and one executor per kind of job, found by name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from orchestrator.models import JobKind
from orchestrator.worker.executors import REGISTRY, executor_for
from tests.conftest import REPO

PACKAGES = {"orchestrator": REPO / "orchestrator", "orchestrator.storage": REPO / "storage",
            "orchestrator.plugins": REPO / "plugins"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for prefix, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [p for p in path.relative_to(folder).with_suffix("").parts if p != "__init__"]
            found[".".join([prefix, *parts])] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """Modules imported when `path` is (its top level, not functions or TYPE_CHECKING blocks)."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.ImportFrom) and node.module:
            names |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
        elif isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
    return (names & known) - {"orchestrator"}


def test_no_module_is_longer_than_600_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(path, set(modules)) - {name} for name, path in modules.items()}
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        for dependency in graph[name]:
            assert dependency not in path, " -> ".join([*path[path.index(dependency):], dependency])
            if dependency not in done:
                visit(dependency, [*path, dependency])
        done.add(name)

    for name in graph:
        visit(name, [name])


def test_each_kind_of_job_has_its_executor():
    assert set(REGISTRY) == {kind.value for kind in JobKind}
    for kind in JobKind:
        assert executor_for(kind.value).kind == kind
    with pytest.raises(ValueError, match="no executor runs jobs of kind 'container'; known: command, callable"):
        executor_for("container")
