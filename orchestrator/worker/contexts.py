"""Warm contexts on a worker: long-lived Python processes that run entry points job after job.

Spark Jobserver keeps a context with the application loaded; here a context is a child
process of the worker (orchestrator/worker/context_child.py) keyed by its owner, the owner's
OS identity and the exact artifact versions on its path. A job borrows an idle context of its
key or starts one; a context that a job stopped, timed out or crashed is never returned, so
the next job gets a fresh one. Contexts idle past `idle_s`, or past `max_contexts`, or while
the machine is short of memory, are ended (oldest idle first).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from orchestrator.worker import context_child
from orchestrator.worker.jobuser import (
    RunAs,
    clean_environment,
    enterable_by_anyone,
    folders_root,
    hand_over,
)

IDLE_S = 600.0
MAX_CONTEXTS = 8
LOW_MEMORY_FRACTION = 0.10  # available memory below this share of the machine's: drop idle contexts
REAP_INTERVAL_S = 1.0
PYTHON_VARIABLE = "ORCHESTRATOR_CONTEXT_PYTHON"
SYSTEM_PYTHON = "/usr/bin/python3"


class ContextFailed(RuntimeError):
    """A context could not be made: an artifact that is neither a zip (wheel) nor a module."""


class ContextDied(RuntimeError):
    """The context's process ended while it ran a job (os._exit, a crash, a signal)."""


@dataclass(frozen=True)
class Artifact:
    ref: str  # as the job pinned it: 'name@version'
    key: str  # its bytes in storage

    @property
    def module_name(self) -> str:
        """A single module's name: the binary's name without '.py'."""
        return self.ref.rsplit("@", 1)[0].rsplit("/", 1)[-1].removesuffix(".py")


@dataclass(frozen=True)
class ContextKey:
    owner: str
    uid: int | None
    storage_url: str
    artifacts: tuple[Artifact, ...]

    @property
    def digest(self) -> str:
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@dataclass(eq=False)
class WarmContext:
    key: ContextKey
    process: subprocess.Popen
    sock: socket.socket
    started_at: float = field(default_factory=time.time)
    idle_since: float | None = None
    jobs_run: int = 0
    alive: bool = True
    told_cluster: bool = False  # the cluster's address went with an earlier job

    def send(self, request: dict[str, Any], payload: bytes | None, log_fds: tuple[int, int]) -> None:
        socket.send_fds(self.sock, [b"j"], list(log_fds))
        context_child.write_frame(self.sock, json.dumps(request).encode())
        if payload is not None:
            context_child.write_frame(self.sock, payload)

    def receive(self, timeout: float) -> dict[str, Any] | None:
        """The next frame from the context, or None if none came within `timeout`."""
        ready, _, _ = select.select([self.sock], [], [], timeout)
        if not ready:
            return None
        try:
            return json.loads(context_child.read_frame(self.sock))
        except (EOFError, OSError) as exc:
            self.alive = False
            raise ContextDied(self.died_reason()) from exc

    def died_reason(self) -> str:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=2.0)
        code = self.process.returncode
        if code is None:
            return "the entry point's process stopped answering"
        if code < 0:
            with contextlib.suppress(ValueError):
                return f"the entry point's process was killed by signal {signal.Signals(-code).name}"
        return f"the entry point's process exited with code {code}"

    def end(self) -> None:
        """Kill the context and everything in its process group."""
        self.alive = False
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5.0)
        self.sock.close()

    def describe(self) -> dict[str, Any]:
        first = self.key.artifacts[0].ref if self.key.artifacts else None
        name, _, version = first.rpartition("@") if first else (None, "", "")
        return {
            "artifacts": [artifact.ref for artifact in self.key.artifacts], "owner": self.key.owner,
            "artifact": name.rsplit("/", 1)[-1] if name else None,  # an admin's 'owner/name' as its name
            "version": int(version) if version.isdigit() else None,
            "pid": self.process.pid, "jobs_run": self.jobs_run, "busy": self.idle_since is None,
            "started_at": self.started_at, "idle_since": self.idle_since,
        }


class ContextPool:
    """The warm contexts of this worker process."""

    def __init__(self) -> None:
        self.idle_s = IDLE_S
        self.max_contexts = MAX_CONTEXTS
        self._lock = threading.Lock()
        self._contexts: list[WarmContext] = []
        self._sites: dict[ContextKey, Path] = {}
        self._starting: Counter[ContextKey] = Counter()  # contexts being made: their sites stay
        self._site_lock = threading.Lock()
        self._reaper: threading.Thread | None = None

    def configure(self, idle_s: float | None = None, max_contexts: int | None = None) -> None:
        if idle_s is not None:
            self.idle_s = idle_s
        if max_contexts is not None:
            self.max_contexts = max_contexts

    @contextlib.contextmanager
    def borrow(self, key: ContextKey, run_as: RunAs | None, fetch: Any) -> Iterator[WarmContext]:
        """An idle context of `key`, or a new one; returned to the pool only if still sound.

        `fetch(storage_key, path)` copies an artifact's bytes to a local path."""
        context = self._take_idle(key) or self._start(key, run_as, fetch)
        try:
            yield context
        finally:
            context.jobs_run += 1
            with self._lock:
                if context.alive:
                    context.idle_since = time.time()
                else:
                    self._contexts.remove(context)
            self.reap(check_memory=False)  # the count at once; memory is the reaper thread's, off the job's path

    def _take_idle(self, key: ContextKey) -> WarmContext | None:
        with self._lock:
            for context in self._contexts:
                if context.key == key and context.idle_since is not None and context.alive:
                    context.idle_since = None
                    return context
        return None

    def _start(self, key: ContextKey, run_as: RunAs | None, fetch: Any) -> WarmContext:
        """A new context of `key`. Until it is listed, its key counts as starting, so that a
        reap meanwhile (the reaper thread, another job's end) cannot remove its site."""
        with self._lock:
            self._starting[key] += 1
        try:
            context = self._spawn(key, run_as, fetch)
        finally:
            with self._lock:
                self._starting[key] -= 1
                if not self._starting[key]:
                    del self._starting[key]
        self._start_reaper()
        return context

    def _spawn(self, key: ContextKey, run_as: RunAs | None, fetch: Any) -> WarmContext:
        site = self._site(key, run_as, fetch)
        ours, theirs = socket.socketpair()
        env = clean_environment(run_as, site, {}) if run_as else dict(os.environ)
        try:
            process = subprocess.Popen(
                [context_python(run_as), "-c", _child_source(), str(theirs.fileno()),
                 json.dumps({"sites": [str(site)], "path": [] if run_as else [p for p in sys.path if p]})],
                pass_fds=[theirs.fileno()], cwd=site, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
                **(run_as.popen_options() if run_as else {}),
            )
        finally:
            theirs.close()
        context = WarmContext(key, process, ours)
        with self._lock:
            self._contexts.append(context)
        return context

    def _site(self, key: ContextKey, run_as: RunAs | None, fetch: Any) -> Path:
        """The folder on the context's path holding its artifacts, made once per key."""
        with self._site_lock:
            site = self._sites.get(key)
            if site is not None and site.is_dir():
                return site
            # Beside job folders (enterable, not listable); a name of its own each time, so that
            # removing an ended context's site never removes a newer one of the same key.
            folder = Path(tempfile.mkdtemp(prefix=f"context-{key.digest}-", dir=folders_root()))
            try:
                for artifact in key.artifacts:
                    unpack(artifact, folder, fetch)
                if context_python(run_as) != sys.executable:
                    lend_cloudpickle(folder)
                if run_as is not None:
                    hand_over(folder, run_as)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise
            self._sites[key] = folder
            return folder

    def reap(self, check_memory: bool = True) -> list[WarmContext]:
        """End idle contexts that are past their idle time, too many, or while memory is short."""
        now = time.time()
        with self._lock:
            idle = sorted((c for c in self._contexts if c.idle_since is not None), key=lambda c: c.idle_since)
            doomed = [c for c in idle if now - c.idle_since > self.idle_s]
            keep = [c for c in idle if c not in doomed]
            excess = len(self._contexts) - len(doomed) - self.max_contexts
            doomed += keep[:max(0, excess)]
            if check_memory and memory_short():
                doomed += [c for c in keep if c not in doomed]
            for context in doomed:
                self._contexts.remove(context)
            left = {c.key for c in self._contexts} | set(self._starting)
            gone_sites = [self._sites.pop(k) for k in list(self._sites) if k not in left]
        for context in doomed:
            context.end()
        for site in gone_sites:
            shutil.rmtree(site, ignore_errors=True)
        return doomed

    def _start_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None and self._reaper.is_alive():
                return
            self._reaper = threading.Thread(target=self._reap_forever, name="orchestrator-contexts", daemon=True)
            self._reaper.start()

    def _reap_forever(self) -> None:
        while True:
            time.sleep(REAP_INTERVAL_S)
            with contextlib.suppress(Exception):
                self.reap()
            with self._lock:
                if not self._contexts:
                    self._reaper = None
                    return

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [context.describe() for context in self._contexts]

    def end_all(self) -> None:
        """Worker shutdown: no context outlives its worker."""
        with self._lock:
            contexts, self._contexts = list(self._contexts), []
            sites, self._sites = list(self._sites.values()), {}
        for context in contexts:
            context.end()
        for site in sites:
            shutil.rmtree(site, ignore_errors=True)


def unpack(artifact: Artifact, folder: Path, fetch: Any) -> None:
    """A wheel or zip is extracted onto the path (extensions and package data work, which
    zipimport would not allow); anything else is one module named after the binary."""
    download = folder / f".{artifact.module_name}.download"
    fetch(artifact.key, str(download))
    try:
        if zipfile.is_zipfile(download):
            with zipfile.ZipFile(download) as archive:
                archive.extractall(folder)  # member names are made safe: no '..', no absolute paths
            return
        if not artifact.module_name.isidentifier():
            raise ContextFailed(
                f"binary {artifact.ref} is neither a wheel nor a zip, and {artifact.module_name!r} "
                "cannot be a module name: name a single-module binary like the module (e.g. jobs.py)")
        download.rename(folder / f"{artifact.module_name}.py")
    finally:
        download.unlink(missing_ok=True)


def context_python(run_as: RunAs | None) -> str:
    """The interpreter of a context: the worker's own, unless the job's identity cannot run it
    (a Python installed under root's home); then the system's. ORCHESTRATOR_CONTEXT_PYTHON
    names another."""
    chosen = os.environ.get(PYTHON_VARIABLE)
    if chosen:
        return chosen
    if run_as is None or enterable_by_anyone(os.path.dirname(sys.executable)):
        return sys.executable
    if os.path.exists(SYSTEM_PYTHON):
        return SYSTEM_PYTHON
    raise ContextFailed(f"this worker's Python ({sys.executable}) cannot be run by other users, and there is "
                        f"no {SYSTEM_PYTHON}: set {PYTHON_VARIABLE} on the worker")


def lend_cloudpickle(folder: Path) -> None:
    """A context on another Python (the system's) still unpickles callables: cloudpickle is
    pure Python, so the worker lends its copy on the context's path."""
    import cloudpickle

    source = Path(cloudpickle.__file__).parent
    shutil.copytree(source, folder / source.name, ignore=shutil.ignore_patterns("__pycache__"))


def memory_short() -> bool:
    import psutil

    memory = psutil.virtual_memory()
    return memory.available < memory.total * LOW_MEMORY_FRACTION


@cache
def _child_source() -> str:
    return Path(context_child.__file__).read_text(encoding="utf-8")


_pool = ContextPool()


def context_pool() -> ContextPool:
    return _pool
