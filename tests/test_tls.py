"""Authenticated cluster comms: every Dask connection the orchestrator makes or starts is TLS
with certificates, so a job (or anyone on the network) that learns an address cannot connect
and run code in the scheduler, a worker or a nanny.

The attackers below speak TLS and trust any server, so only the cluster's own check of their
certificate can turn them away; the same attacker holding the cluster's certificate gets in,
which shows that it is the certificate, not the attacker's code, that makes the difference.
"""

from __future__ import annotations

import asyncio
import gc
import os
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import dask
import httpx
import pytest
from distributed import Client
from distributed.core import rpc
from distributed.security import Security

from orchestrator.cli import build_parser, worker_command
from orchestrator.config import Settings
from orchestrator.server.cluster import ClusterConnection, configured_security, connect
from orchestrator.server.connection import SchedulerLink
from tests.conftest import (
    Server,
    SessionCluster,
    TlsFiles,
    free_port,
    kill_session,
    serve_subprocess,
    start_test_server,
    stop_test_server,
    wait_until_serving,
    write_tls_files,
)
from tests.test_cluster import real_cluster

REFUSED_WITHIN_S = 2.0  # the connect timeout given to attackers: they must fail, and fast


class Attacker(Security):
    """Speaks TLS, trusts any server and presents `cert` (or no certificate at all)."""

    def __init__(self, cert: Path | None = None, key: Path | None = None):
        super().__init__(require_encryption=True)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = ssl.CERT_NONE
        if cert is not None:
            self.context.load_cert_chain(cert, key)

    def get_connection_args(self, role: str) -> dict:
        return {"ssl_context": self.context, "require_encryption": True, "extra_conn_args": {}}


def pem_files(security: Security, folder: Path) -> tuple[Path, Path]:
    """An in-memory certificate and key of `security`, written where an attacker can load it."""
    folder.mkdir()
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_text(security.tls_client_cert)
    key.write_text(security.tls_client_key)
    return cert, key


async def _identity(address: str, security: Security) -> dict:
    """The `identity` handler, which the scheduler, workers and nannies all have (as they have
    `run`, which runs any function): reaching it is reaching everything."""
    remote = rpc(address, connection_args=security.get_connection_args("client"),
                 timeout=REFUSED_WITHIN_S)
    try:
        return await remote.identity()
    finally:
        await remote.close_rpc()


def reachable(address: str, security: Security) -> bool:
    started = time.monotonic()
    try:
        asyncio.run(_identity(address, security))
    except (OSError, asyncio.TimeoutError):  # CommClosedError is an OSError
        assert time.monotonic() - started < REFUSED_WITHIN_S + 5  # turned away, not hanging
        return False
    return True


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_test_server(Settings(
        data_dir=tmp_path_factory.mktemp("tls-embedded") / "data", port=0,
        dashboard_address="127.0.0.1:0",
    ))
    yield server
    stop_test_server(server)


@pytest.fixture(scope="module")
def embedded_addresses(embedded: Server) -> dict[str, str]:
    """The scheduler's, a worker's and a nanny's address, as the server's own client sees them."""
    connection = embedded.running.service.connection
    identity = embedded.loop.run(connection.client.scheduler.identity())
    worker, info = next(iter(identity["workers"].items()))
    return {"scheduler": connection.address, "worker": worker, "nanny": info["nanny"]}


@pytest.fixture(scope="module")
def attackers(embedded: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Security]:
    folder = tmp_path_factory.mktemp("attackers")
    return {
        "without a certificate": Attacker(),
        "with a self-made certificate": Attacker(*pem_files(Security.temporary(), folder / "own")),
        "with the cluster's certificate": Attacker(
            *pem_files(embedded.running.service.connection.security, folder / "stolen")),
    }


def test_the_embedded_cluster_is_tls_and_its_jobs_run(embedded: Server, embedded_addresses):
    assert all(address.startswith("tls://") for address in embedded_addresses.values())
    assert embedded.running.service.cluster_authenticated is True
    done = embedded.wait(embedded.submit(command="echo fine")["id"])
    assert done["status"] == "COMPLETED", done


@pytest.mark.parametrize("role", ["scheduler", "worker", "nanny"])
def test_no_one_without_the_clusters_certificate_reaches_an_embedded_listener(
    role: str, embedded_addresses: dict[str, str], attackers: dict[str, Security]
):
    address = embedded_addresses[role]
    plain_tcp = address.replace("tls://", "tcp://", 1)
    assert not reachable(plain_tcp, Security())
    assert not reachable(address, attackers["without a certificate"])
    assert not reachable(address, attackers["with a self-made certificate"])
    assert reachable(address, attackers["with the cluster's certificate"])  # the control


def refusal(address: str, security: Security | None = None) -> BaseException | None:
    """What `Client(address)` raises for an attacker, or None if it connected.

    A Client that fails in its constructor is left for the garbage collector, and its
    finalizer closes it under distributed's class-wide LoopRunner lock. Collected at a random
    moment, it can run inside the next Client's start, which holds that lock: a deadlock (one
    CI run hung here for 120 s). So the failed Client is collected here, where no lock is held.
    """
    started = time.monotonic()
    try:
        Client(address, security=security, timeout=REFUSED_WITHIN_S).close()
        return None
    except Exception as error:  # noqa: BLE001 - the caller checks which
        return error
    finally:
        gc.collect()
        assert time.monotonic() - started < REFUSED_WITHIN_S + 5  # turned away, not hanging


def test_a_client_without_the_clusters_certificate_cannot_connect(
    embedded_addresses: dict[str, str], attackers: dict[str, Security]
):
    """What the attack in issue 12 did first: `Client(address)` from inside a job."""
    address = embedded_addresses["scheduler"]
    no_context = refusal(address)  # it will not even try
    assert isinstance(no_context, TypeError) and "TLS expects a `ssl_context`" in str(no_context)
    assert isinstance(refusal(address.replace("tls://", "tcp://", 1)), OSError)
    for name in ["without a certificate", "with a self-made certificate"]:
        assert isinstance(refusal(address, attackers[name]), OSError), name
    with Client(address, security=attackers["with the cluster's certificate"],
                timeout=REFUSED_WITHIN_S) as client:
        assert client.run_on_scheduler(os.getpid) == os.getpid()  # what a key holder could do


def test_no_worker_process_or_job_environment_holds_the_key(embedded: Server):
    """A job inherits its worker's environment: the key must reach workers another way."""
    security = embedded.running.service.connection.security
    key_line = security.tls_client_key.splitlines()[5]  # a line of the key's own base64
    client = embedded.running.service.connection.client

    async def worker_pids() -> dict[str, int]:
        return await client.run(os.getpid)

    pids = embedded.loop.run(worker_pids())
    assert pids and os.getpid() not in pids.values()  # worker processes, not the server's
    job = embedded.wait(embedded.submit(command="env > env.txt")["id"])
    job_env = embedded.http.get(f"/jobs/{job['id']}/files/env.txt").text
    environments = [Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
                    for pid in pids.values()]
    for environment in [*environments, job_env]:
        assert "PRIVATE KEY" not in environment and key_line not in environment
    assert "PATH=" in job_env  # the environment was really read


def test_an_external_tls_cluster_runs_jobs_through_the_serve_and_worker_flags(
    tls_files: TlsFiles, tmp_path: Path
):
    """`dask scheduler --tls-*`, `orchestrator worker tls://… --tls-*` and
    `orchestrator serve --scheduler tls://… --tls-*`, as processes, run a job end to end."""
    with real_cluster({"only": ["--cores", "1", "--gpus", "0"]}, tls_files) as (address, _, _):
        assert address.startswith("tls://")
        assert not reachable(address, Attacker())
        data_dir, port = tmp_path / "data", free_port()
        data_dir.mkdir()
        server = serve_subprocess(data_dir, port, "--scheduler", address, *tls_files.flags)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_serving(url, server)
            api = httpx.Client(base_url=f"{url}/api/v1", timeout=90)
            created = api.post("/jobs", json={"command": "echo over tls"})
            assert created.status_code == 201, created.text
            done = api.get(f"/jobs/{created.json()['id']}", params={"wait": 60}).json()
            assert done["status"] == "COMPLETED", done
            assert api.get(f"/jobs/{done['id']}/logs").text == "over tls\n"
        finally:
            kill_session(server)


def test_the_orchestrator_worker_passes_its_tls_flags_to_dask_worker():
    args = build_parser().parse_args(
        ["worker", "tls://host:8786", "--gpus", "0", "--tls-ca-file", "/c/ca.pem",
         "--tls-cert", "/c/cert.pem", "--tls-key", "/c/key.pem"])
    argv, _ = worker_command(args)
    assert argv[argv.index("--tls-ca-file"):][:6] == [
        "--tls-ca-file", "/c/ca.pem", "--tls-cert", "/c/cert.pem", "--tls-key", "/c/key.pem"]
    assert "--tls-cert" not in worker_command(build_parser().parse_args(["worker", "tls://h:1"]))[0]


def test_an_external_cluster_is_reached_with_the_tls_settings(server: Server):
    """make_server passes the session cluster's certificate files as tls_* settings."""
    assert server.settings.tls_cert is not None and server.settings.scheduler.startswith("tls://")
    assert server.running.service.cluster_authenticated is True
    assert server.wait(server.submit(command="true")["id"])["status"] == "COMPLETED"


def test_without_tls_settings_dasks_own_tls_configuration_is_used(make_server, tls_files: TlsFiles):
    """`DASK_DISTRIBUTED__COMM__TLS__…` variables or Dask's yaml, read when the server starts."""
    config = {
        "distributed.comm.require-encryption": True,
        "distributed.comm.tls.ca-file": str(tls_files.ca_file),
        "distributed.comm.tls.client.cert": str(tls_files.cert),
        "distributed.comm.tls.client.key": str(tls_files.key),
    }
    with dask.config.set(config):
        server = make_server(tls_ca_file=None, tls_cert=None, tls_key=None)
    assert server.running.service.cluster_authenticated is True
    assert server.wait(server.submit(command="true")["id"])["status"] == "COMPLETED"


def test_reconnections_present_the_same_certificate(dask_cluster: SessionCluster, tmp_path: Path):
    """ClusterConnection.reconnect (the engine's) and SchedulerLink's own fallback."""

    async def check() -> None:
        connection = await connect(Settings(data_dir=tmp_path, **dask_cluster.settings))
        first = connection.client
        try:
            again = await connection.reconnect()
            assert again is not first and again.security is connection.security
            assert await again.submit(sum, [1, 2]) == 3
            fallback = await SchedulerLink(again)._new_client()
            assert fallback.security is connection.security
            assert await fallback.submit(sum, [3, 4]) == 7
            await fallback.close()
        finally:
            await first.close()
            await connection.close()

    asyncio.run(check())


@pytest.mark.parametrize(("address", "security", "expected"), [
    ("tls://10.0.0.1:8786", Security(require_encryption=True), True),
    ("tcp://10.0.0.1:8786", Security(require_encryption=False), False),
    ("tls://10.0.0.1:8786", Security(require_encryption=False), False),
])
def test_authenticated_means_a_tls_address_and_encryption_required(address, security, expected):
    client = SimpleNamespace(scheduler=SimpleNamespace(address=address))
    assert ClusterConnection(client, None, None, security).authenticated is expected


def test_tls_settings_need_a_ca_and_a_certificate(tmp_path: Path):
    files = write_tls_files(tmp_path / "certs")
    assert configured_security(Settings(data_dir=tmp_path)) is None  # Dask's configuration decides
    security = configured_security(Settings(data_dir=tmp_path, **files.settings))
    assert security is not None and security.require_encryption
    assert security.tls_client_cert == str(files.cert) and security.tls_ca_file == str(files.ca_file)
    with pytest.raises(ValueError, match="tls_ca_file and tls_cert"):
        configured_security(Settings(data_dir=tmp_path, tls_cert=files.cert))


def test_orchestrator_certs_writes_a_certificate_a_cluster_runs_on(tmp_path: Path):
    from distributed import LocalCluster

    from orchestrator.certs import TlsFiles
    from orchestrator.cli import main

    folder = tmp_path / "certs"
    assert main(["certs", str(folder)]) == 0
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert all(oct(path.stat().st_mode & 0o777) == "0o600" for path in files.settings.values())
    with LocalCluster(n_workers=1, processes=False, protocol="tls://", host="127.0.0.1",
                      security=files.security(), dashboard_address=":0") as cluster, \
            Client(cluster.scheduler_address, security=files.security(), timeout=30) as client:
        assert client.submit(sum, [1, 2]).result(timeout=30) == 3
