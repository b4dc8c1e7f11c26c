"""The chaos soak's processes and REST client: process-group kills, the TLS cluster (scheduler,
workers, server) as real processes in their own sessions, and GETs that ride out a server that
is down or restarting. A sibling of benchmarks/chaos.py, which imports it by plain module name
(it runs as a script).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import psutil
from distributed import Client
from loopback import HOST, free_port

if TYPE_CHECKING:
    from orchestrator.certs import TlsFiles

REPO = Path(__file__).resolve().parent.parent
TERMINAL = ("COMPLETED", "FAILED", "STOPPED")
START_TIMEOUT_S = 120.0  # a process (scheduler, worker, server) to answer
REQUEST_TIMEOUT_S = 60.0


# ---- processes --------------------------------------------------------------------------


def kill_group(process: subprocess.Popen, timeout: float = 15.0) -> None:
    """SIGKILL the process's whole group (it leads its own session) and reap it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_alive(process.pid):
        time.sleep(0.05)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie leader keeps the group "alive" to killpg: look for a live member
    for proc in psutil.process_iter(["pid", "status"]):
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(proc.info["pid"]) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
    return False


class Cluster:
    """The scheduler, the workers and the server, each started in its own session; every
    process ever started is remembered so that `close` ends them all."""

    def __init__(self, folder: Path, tls: TlsFiles):
        self.folder = folder
        self.tls = tls
        self.scheduler_port = free_port()
        self.scheduler_address = f"tls://{HOST}:{self.scheduler_port}"
        self.server_port = free_port()
        self.url = f"http://{HOST}:{self.server_port}"
        self.data_dir = folder / "data"
        self.data_dir.mkdir()
        (folder / "logs").mkdir()
        (folder / "dask-tmp").mkdir()
        self.lock = threading.RLock()
        self.scheduler: subprocess.Popen | None = None
        self.server: subprocess.Popen | None = None
        self.workers: dict[str, subprocess.Popen] = {}
        self.started: list[subprocess.Popen] = []
        self.logs: dict[int, Path] = {}  # pid -> its log file
        self._worker_number = 0
        self.counts: Counter[str] = Counter()
        self.unexpected: list[str] = []  # processes that exited without being killed

    def _env(self) -> dict[str, str]:
        """This checkout; Dask's and the orchestrator's defaults (nothing inherited)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DASK_", "ORCHESTRATOR_"))}
        return {**env, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
                "DASK_TEMPORARY_DIRECTORY": str(self.folder / "dask-tmp")}

    def _spawn(self, label: str, argv: list[str]) -> subprocess.Popen:
        log_path = self.folder / "logs" / f"{label}-{len(self.started)}.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, *argv], env=self._env(), cwd=self.folder, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            )
        self.started.append(process)
        self.logs[process.pid] = log_path
        return process

    # scheduler
    def start_scheduler(self) -> None:
        with self.lock:
            self.scheduler = self._spawn("scheduler", [
                "-m", "distributed.cli.dask_scheduler", "--host", HOST, "--port", str(self.scheduler_port),
                "--protocol", "tls", "--no-dashboard", *self.tls.flags])

    def kill_scheduler(self) -> None:
        with self.lock:
            scheduler, self.scheduler = self.scheduler, None
        if scheduler is not None:
            kill_group(scheduler)

    # workers
    def start_worker(self) -> str:
        with self.lock:
            name = f"w{self._worker_number}"
            self._worker_number += 1
            self.workers[name] = self._spawn(name, [
                "-m", "orchestrator.cli", "worker", self.scheduler_address, "--cores", "2",
                "--nthreads", "2", "--name", name, *self.tls.flags])
            return name

    def kill_worker(self, name: str) -> None:
        with self.lock:
            process = self.workers.pop(name, None)
        if process is not None:
            kill_group(process)

    def wait_workers(self, count: int, timeout: float = START_TIMEOUT_S) -> None:
        with Client(self.scheduler_address, security=self.tls.security(), timeout=timeout) as client:
            client.wait_for_workers(count, timeout=timeout)

    # server
    def start_server(self) -> None:
        with self.lock:
            self.server = self._spawn("server", [
                "-m", "orchestrator.cli", "serve", "--scheduler", self.scheduler_address,
                "--data-dir", str(self.data_dir), "--port", str(self.server_port), *self.tls.flags])

    def kill_server(self) -> None:
        with self.lock:
            server, self.server = self.server, None
        if server is not None:
            kill_group(server)

    def wait_serving(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            server = self.server
            if server is not None and server.poll() is not None:
                raise RuntimeError(f"the server exited ({server.returncode}):\n{self.log_tail(server)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/api/v1/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"the server did not answer within {timeout:.0f} s")

    def supervise(self) -> list[str]:
        """Replace workers that exited by themselves (e.g. with their scheduler); note any
        scheduler or server that exited without being killed, and start it again. Answers
        what it did."""
        done = []
        with self.lock:
            for name, process in list(self.workers.items()):
                if process.poll() is not None:
                    kill_group(process, timeout=2)
                    del self.workers[name]
                    self.counts["worker exits (replaced)"] += 1
                    done.append(f"worker {name} exited ({process.returncode}); started {self.start_worker()}")
            if self.scheduler is not None and self.scheduler.poll() is not None:
                self.unexpected.append(f"the scheduler exited by itself ({self.scheduler.returncode}):\n"
                                       + self.log_tail(self.scheduler))
                self.start_scheduler()
                done.append("the scheduler exited by itself; started it again")
            if self.server is not None and self.server.poll() is not None:
                self.unexpected.append(f"the server exited by itself ({self.server.returncode}):\n"
                                       + self.log_tail(self.server))
                self.start_server()
                done.append("the server exited by itself; started it again")
        return done

    def log_tail(self, process: subprocess.Popen, lines: int = 30) -> str:
        path = self.logs.get(process.pid)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        for process in self.started:
            kill_group(process, timeout=10)
        self.workers.clear()
        self.scheduler = self.server = None


# ---- REST -------------------------------------------------------------------------------


class Api:
    """GETs that ride out a server that is down or restarting (retried until a deadline)."""

    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url + "/api/v1", timeout=REQUEST_TIMEOUT_S)

    def close(self) -> None:
        self.http.close()

    def get(self, path: str, deadline_s: float = 180.0, **params: Any) -> Any:
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                response = self.http.get(path, params=params or None)
                if response.status_code < 500:
                    if response.status_code != 200:
                        raise RuntimeError(f"GET {path} {params}: {response.status_code} {response.text[:500]}")
                    return response.json()
                problem = f"{response.status_code} {response.text[:200]}"
            except httpx.TransportError as exc:
                problem = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {path} {params} failed for {deadline_s:.0f} s: {problem}")
            time.sleep(0.25)

    def text(self, path: str, deadline_s: float = 180.0) -> str:
        """A file's content; a missing file answers '' (reported by the caller)."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                response = self.http.get(path)
                if response.status_code < 500:
                    return response.text if response.status_code == 200 else ""
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"GET {path} failed for {deadline_s:.0f} s")
            time.sleep(0.25)

    def pages(self, path: str, **params: Any) -> list[dict]:
        """Every item of a paginated list (page_size 1000)."""
        items: list[dict] = []
        page = 1
        while True:
            answer = self.get(path, page=page, page_size=1000, **params)
            items += answer["results"]
            if not answer["results"] or len(items) >= answer["count"] or not answer.get("next"):
                return items
            page += 1

    def count(self, path: str, **params: Any) -> int:
        return int(self.get(path, page_size=1, **params)["count"])
