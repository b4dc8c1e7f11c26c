"""Real parts only: a LocalCluster with worker processes, SQLite files and storage folders in
tmp dirs, and the REST server on 127.0.0.1 with a real HTTP client."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
from distributed import Client, LocalCluster

from orchestrator.certs import TlsFiles, write_tls_files
from orchestrator.config import Settings
from orchestrator.loop_thread import LoopThread
from orchestrator.server.running import RunningServer, start_server
from tests.support.ports import free_port  # noqa: F401 - imported from here by test modules

REPO = Path(__file__).resolve().parent.parent
TERMINAL = {"COMPLETED", "FAILED", "STOPPED"}


class S3Server:
    """moto's S3-compatible server on 127.0.0.1, as a process the tests can stop and start."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def options(self) -> dict:
        return {"key": "testing", "secret": "testing", "endpoint_url": self.endpoint}

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(self.endpoint, timeout=1)
                return
            time.sleep(0.1)
        raise AssertionError("moto server did not start")

    def stop(self) -> None:
        if self.process is not None:
            kill_session(self.process)
            self.process = None

    def new_bucket(self) -> str:
        """A fresh bucket (moto keeps everything in memory: a restart empties it)."""
        return self.recreate_bucket(f"b{uuid.uuid4().hex[:12]}")

    def recreate_bucket(self, name: str) -> str:
        import s3fs

        s3fs.S3FileSystem(**self.options, skip_instance_cache=True).mkdir(name)
        return name


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return write_tls_files(tmp_path_factory.mktemp("tls") / "certs")


@dataclass(frozen=True)
class SessionCluster:
    address: str
    tls: TlsFiles

    @property
    def settings(self) -> dict[str, Any]:
        """Settings (or Orchestrator) keywords that reach this cluster."""
        return {"scheduler": self.address, **self.tls.settings}

    def client(self, **kwargs: Any) -> Client:
        return Client(self.address, security=self.tls.security(), **kwargs)


@pytest.fixture(scope="session")
def dask_cluster(s3: S3Server, tls_files: TlsFiles) -> Iterator[SessionCluster]:
    """One real cluster for the suite, on TLS with certificate files: 1 worker process, 2
    threads, declaring CPU=2. Its worker reaches the test S3 server through fsspec's own
    configuration (FSSPEC_S3), as a remote worker would: credentials never travel with tasks."""
    with LocalCluster(
        n_workers=1, threads_per_worker=2, processes=True, host="127.0.0.1", protocol="tls://",
        security=tls_files.security(), dashboard_address=None,
        resources={"CPU": 2, "MEMORY": 8 * 2**30}, env={"FSSPEC_S3": json.dumps(s3.options)},
    ) as cluster:
        yield SessionCluster(cluster.scheduler_address, tls_files)


@dataclass
class Server:
    running: RunningServer
    loop: LoopThread
    http: httpx.Client
    settings: Settings

    @property
    def url(self) -> str:
        return self.running.url

    def submit(self, **job) -> dict:
        response = self.http.post("/jobs", json=job)
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, job_id: str, timeout: float = 60) -> dict:
        return self._wait_ended(f"/jobs/{job_id}", timeout)

    def wait_sweep(self, sweep_id: str, timeout: float = 60) -> dict:
        return self._wait_ended(f"/sweeps/{sweep_id}", timeout)

    def _wait_ended(self, path: str, timeout: float) -> dict:
        """GET with ?wait= and check that the job or sweep has ended."""
        response = self.http.get(path, params={"wait": timeout}, timeout=timeout + 10)
        assert response.status_code == 200, response.text
        record = response.json()
        assert record["status"] in TERMINAL, record
        return record

    def wait_for_status(self, job_id: str, status: str, timeout: float = 30) -> dict:
        from tests.support import wait_until

        def reached() -> dict | None:
            job = self.http.get(f"/jobs/{job_id}").json()
            return job if job["status"] == status else None

        return wait_until(reached, timeout, f"job {job_id} {status}", every=0.05)


def start_test_server(settings: Settings) -> Server:
    loop = LoopThread()
    running = loop.run(start_server(settings))
    http = httpx.Client(base_url=running.url + "/api/v1", timeout=60)
    return Server(running, loop, http, settings)


def stop_test_server(server: Server) -> None:
    server.http.close()
    jobs = server.running.service.jobs
    _, active = server.running.service.store.list_jobs(limit=None)
    for job in active:
        if job.status.is_active:
            with contextlib.suppress(Exception):
                server.loop.run(jobs.stop(job.id, "teardown"), timeout=10)
    server.loop.run(server.running.close(), timeout=60)
    server.loop.stop()


@pytest.fixture
def make_server(tmp_path: Path, dask_cluster: SessionCluster):
    servers: list[Server] = []

    def make(**overrides) -> Server:
        options = {
            "data_dir": tmp_path / f"data{len(servers)}", "port": 0,
            **dask_cluster.settings, **overrides,
        }
        server = start_test_server(Settings(**options))
        servers.append(server)
        return server

    yield make
    for server in servers:
        stop_test_server(server)


@pytest.fixture
def server(make_server) -> Server:
    return make_server()


@pytest.fixture(params=["local", "s3"])
def any_server(request, make_server) -> Server:
    """A server on each storage backend: a local folder, and S3 (the test moto server)."""
    if request.param == "local":
        return make_server()
    s3: S3Server = request.getfixturevalue("s3")
    return make_server(storage=f"s3://{s3.new_bucket()}/orchestrator", storage_options=s3.options)


def serve_subprocess(data_dir: Path, port: int, *extra: str) -> subprocess.Popen:
    """`orchestrator serve` as a user runs it, from this checkout. Its output (a line per
    request) goes to a file beside the data folder, never to a pipe nobody drains: a full
    pipe would stall the server. `server_output(process)` reads it."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "ORCHESTRATOR_DASHBOARD_ADDRESS": "127.0.0.1:0"}
    log_path = data_dir.parent / f"serve-{port}-{uuid.uuid4().hex[:6]}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator.cli", "serve", "--data-dir", str(data_dir),
             "--port", str(port), *extra],
            env=env, cwd=data_dir.parent, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    return process


def server_output(process: subprocess.Popen) -> str:
    """What `serve_subprocess`'s server has printed so far."""
    return process.log_path.read_text(errors="replace")  # type: ignore[attr-defined]


def wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {server_output(process)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/api/v1/health", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise AssertionError("server did not start")


def kill_session(process: subprocess.Popen) -> None:
    """Everything the server started (worker processes and their jobs) after it is gone. A
    killed process waiting for PID 1 to reap it (a zombie) is gone: it runs nothing."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, 9)
    process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        p.info["pid"] != os.getpid() and p.info["status"] != psutil.STATUS_ZOMBIE and _session(p) == process.pid
        for p in psutil.process_iter(["pid", "status"])
    ):
        time.sleep(0.1)


def _session(proc: psutil.Process) -> int | None:
    try:
        return os.getsid(proc.pid)
    except OSError:
        return None
