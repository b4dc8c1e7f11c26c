"""Users cannot escape their jobs (multi-user mode: tokens in use, workers as root, TLS).

Everything here goes through the REST API with tokens, the way an attacker would: bob submits
jobs that try to reach the scheduler, the server's files, alice's files and her running job's
environment. Each attack must fail for the right reason (a refused handshake, permission
denied), and each test also checks that its target exists, so none passes vacuously.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import psutil
import pytest

from orchestrator.config import Settings
from tests.conftest import Server, start_test_server, stop_test_server
from tests.support import wait_until
from tests.support.tenants import tenants_on

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as other users needs root")

WAIT_S = 60
CANARY = "alice-secret-canary-7f3a"


@dataclass
class Users:
    server: Server
    clients: dict[str, httpx.Client]

    def __getitem__(self, user: str) -> httpx.Client:
        return self.clients[user]

    @property
    def data_dir(self) -> Path:
        return self.server.settings.data_dir.resolve()

    def run(self, user: str, command: str, **extra) -> tuple[dict, str, str]:
        """Run a job to its end: (record, stdout, stderr)."""
        response = self[user].post("/jobs", params={"sync": "true", "timeout": WAIT_S},
                                   json={"command": command, **extra}, timeout=WAIT_S + 30)
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["status"] in ("COMPLETED", "FAILED"), job
        logs = [self[user].get(f"/jobs/{job['id']}/logs", params={"stream": s}).text
                for s in ("stdout", "stderr")]
        return job, logs[0], logs[1]


@pytest.fixture(scope="module")
def users(tmp_path_factory, dask_cluster) -> Iterator[Users]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("isolation") / "data", port=0, **dask_cluster.settings)
    with tenants_on(settings) as tenants:
        yield Users(tenants.server, tenants.clients)


def test_each_user_runs_under_their_own_uid(users):
    alice = users.run("alice", "id -u")[1].split()
    bob = users.run("bob", "id -u")[1].split()
    assert alice != bob and "0" not in alice + bob, (alice, bob)
    assert users.run("bob", "id -u")[1].split() == bob  # stable per user


def test_a_job_cannot_open_a_connection_to_the_scheduler(users):
    """The scheduler demands a client certificate the job does not have (run_on_scheduler
    needs a connection first); the job's own TLS handshake is refused."""
    address = users.server.running.service.connection.client.scheduler.address
    assert address.startswith("tls://"), address
    parts = urlsplit(address)
    probe = (
        "import socket, ssl\n"
        "context = ssl._create_unverified_context()\n"
        f"sock = socket.create_connection(({parts.hostname!r}, {parts.port}), timeout=10)\n"
        "try:\n"
        f"    tls = context.wrap_socket(sock, server_hostname={parts.hostname!r})\n"
        "    tls.sendall(b'x' * 64)\n"
        "    print('answered', tls.recv(64))\n"
        "except (ssl.SSLError, OSError) as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    job, out, err = users.run("bob", f"python3 -c {_quoted(probe)}")
    assert out.startswith("refused"), (job, out, err)
    with pytest.raises((ssl.SSLError, OSError)):  # the same probe from here, as a control
        _handshake_without_certificate(parts.hostname, parts.port)


def _handshake_without_certificate(host: str, port: int) -> None:
    import socket

    with socket.create_connection((host, port), timeout=10) as sock:
        context = ssl._create_unverified_context()
        with context.wrap_socket(sock, server_hostname=host) as tls:
            tls.sendall(b"x" * 64)
            if not tls.recv(64):
                raise OSError("closed")


def test_a_job_cannot_read_the_servers_files(users):
    data = users.data_dir
    targets = [data / "secret.key", data / "jobs.db", data / "storage"]
    for target in targets:
        assert target.exists(), target
    assert oct(data.stat().st_mode & 0o777) == "0o700"
    command = "; ".join(f"cat {t} >/dev/null 2>&1 && echo READ {t}; ls {t} >/dev/null 2>&1 && echo LISTED {t}"
                        for t in targets)
    _, out, _ = users.run("bob", command)
    assert "READ" not in out and "LISTED" not in out, out


def test_a_job_cannot_read_another_users_outputs(users):
    alice_job, _, _ = users.run("alice", "echo private > mine.txt")
    stored = users.data_dir / "storage" / "jobs" / alice_job["id"] / "outputs" / "mine.txt"
    assert stored.read_text() == "private\n"
    _, out, err = users.run("bob", f"cat {stored} && echo LEAKED")
    assert "LEAKED" not in out and "Permission denied" in err


def test_a_job_has_no_orchestrator_settings_or_storage_credentials(users):
    _, out, _ = users.run("bob", "env")
    assert "ORCHESTRATOR_" not in out and "AWS_" not in out and "FSSPEC" not in out, out
    names = {line.split("=", 1)[0] for line in out.splitlines() if "=" in line}
    assert {"PATH", "HOME", "JOB_ID", "OUTPUT_DIR"} <= names, names


def test_a_job_cannot_read_another_users_running_job_environment(users):
    alice = users["alice"].post("/jobs", json={"command": "sleep 120", "secret_env": {"TOKEN": CANARY}}).json()
    try:
        _wait_for_process_with(CANARY)  # the target exists: root sees it
        _, out, err = users.run(
            "bob", f"for f in /proc/[0-9]*/environ; do grep -l {CANARY} $f 2>/dev/null; done; echo scanned")
        assert out.strip() == "scanned", out
    finally:
        users["alice"].post(f"/jobs/{alice['id']}/stop")


def _wait_for_process_with(marker: str, timeout: float = WAIT_S) -> None:
    wait_until(lambda: any(marker in _environ(proc).get("TOKEN", "") for proc in psutil.process_iter()),
               timeout, "alice's job started")


def _environ(proc: psutil.Process) -> dict[str, str]:
    try:
        return proc.environ()
    except psutil.Error:
        return {}


def test_file_urls_of_the_servers_data_are_not_staged(users):
    secret = users.data_dir / "secret.key"
    job, out, _ = users.run("bob", "cat staged", binaries=[f"file://{secret}"])
    assert job["status"] == "FAILED" and "staging inputs" in job["status_reason"], job
    assert secret.read_text().strip() not in out
    job, _, _ = users.run("bob", "cat passwd", binaries=["file:///etc/passwd"])
    assert job["status"] == "COMPLETED", job  # what the job's uid may read, it may stage


def _quoted(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


@pytest.fixture(scope="module")
def plain_scheduler() -> Iterator[str]:
    """A cluster without TLS: anyone who reaches it, a job included, could run code in it."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, host="127.0.0.1", protocol="tcp://",
                      dashboard_address=None, resources={"CPU": 1}) as cluster:
        yield cluster.scheduler_address


@pytest.mark.parametrize("trusted", [False, True], ids=["refused", "trusted-users"])
def test_without_isolation_only_admins_run_jobs_unless_users_are_trusted(tmp_path, plain_scheduler, trusted):
    server = start_test_server(Settings(data_dir=tmp_path / "data", port=0, scheduler=plain_scheduler,
                                        trusted_users=trusted))
    try:
        tokens = server.running.service.tokens
        headers = {name: {"Authorization": f"Token {tokens.create(name, admin=name == 'root')}"}
                   for name in ("bob", "root")}
        bob = server.http.post("/jobs", json={"command": "id -u"}, headers=headers["bob"])
        sweep = server.http.post("/sweeps", json={"command": "echo ${u}", "cases": [{"u": 1}]},
                                 headers=headers["bob"])
        if trusted:
            assert bob.status_code == 201 and sweep.status_code == 201, (bob.text, sweep.text)
        else:
            for refused in (bob, sweep):
                assert refused.status_code == 403, refused.text
                error = refused.json()["error"]
                assert error["code"] == "isolation_unavailable" and "TLS" in error["message"], error
            assert server.http.get("/jobs", headers=headers["root"]).json()["count"] == 0
        admin = server.http.post("/jobs", params={"sync": "true", "timeout": WAIT_S},
                                 json={"command": "id -u"}, headers=headers["root"])
        assert admin.status_code == 201 and admin.json()["status"] == "COMPLETED", admin.text
    finally:
        stop_test_server(server)


def _cli(data_dir: Path, *args: str) -> str:
    import subprocess
    import sys

    from tests.conftest import REPO

    done = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--data-dir", str(data_dir)],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


def _worker_log_pages(dashboard: str) -> list[str]:
    """Every worker's log page on the Dask dashboard (what anyone on the machine can open)."""
    import re

    listing = httpx.get(f"{dashboard}/info/main/workers.html", timeout=30).text
    links = sorted(set(re.findall(r'href="(\.\./logs/[^"]+)"', listing)))
    assert links, listing[:2000]
    return [httpx.get(f"{dashboard}/info/main/{link}", timeout=30).text for link in links]


def test_orchestrator_serve_with_tokens_isolates_jobs_and_never_logs_a_secret(tmp_path):
    """The real deployment: `orchestrator serve` as root with tokens, its embedded cluster."""
    from tests.conftest import (
        free_port,
        kill_session,
        serve_subprocess,
        server_output,
        wait_until_serving,
    )

    data_dir, port = tmp_path / "data", free_port()
    data_dir.mkdir()
    bob = _cli(data_dir, "token", "create", "bob").split()[-1]
    server = serve_subprocess(data_dir, port)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server)
        api = httpx.Client(base_url=f"{url}/api/v1", timeout=WAIT_S + 30,
                           headers={"Authorization": f"Token {bob}"})
        deep = """python3 -c 'print("{\\"a\\": " + "[" * 200000 + "]" * 200000 + "}")' > outputs.json"""
        failed = api.post("/jobs", params={"sync": "true", "timeout": WAIT_S}, json={
            "command": f"{deep}; echo $API_KEY | wc -c; exit 3", "secret_env": {"API_KEY": CANARY}}).json()
        assert failed["status"] == "FAILED" and failed["status_reason"] == "exit code 3", failed
        assert api.get(f"/jobs/{failed['id']}/logs").text.strip() == str(len(CANARY) + 1)
        uid = api.post("/jobs", params={"sync": "true", "timeout": WAIT_S}, json={"command": "id -u"}).json()
        assert api.get(f"/jobs/{uid['id']}/logs").text.strip() not in ("", "0")
        cluster = api.get("/cluster").json()
        assert cluster["scheduler"].startswith("tls://"), cluster
        pages = _worker_log_pages(cluster["dashboard_link"].removesuffix("/status"))
        assert all(CANARY not in page for page in pages)
        assert oct((data_dir / "jobs.db").stat().st_mode & 0o777) == "0o600"
        assert oct(data_dir.stat().st_mode & 0o777) == "0o700"
    finally:
        kill_session(server)
    log = server_output(server)
    assert "orchestrator API" in log and CANARY not in log


def test_sweep_runs_run_under_their_owners_uid(users):
    created = users["bob"].post("/sweeps", json={"command": "id -u > uid.txt; echo ${u} >> uid.txt",
                                                 "cases": [{"u": 1}, {"u": 2}, {"u": 3}]})
    assert created.status_code == 201, created.text
    sweep = users["bob"].get(f"/sweeps/{created.json()['id']}", params={"wait": WAIT_S}).json()
    assert sweep["status"] == "COMPLETED", sweep
    bob_uid = users.run("bob", "id -u")[1].strip()
    runs = users["bob"].get(f"/sweeps/{sweep['id']}/runs").json()["results"]
    seen = sorted(users["bob"].get(f"/jobs/{run['id']}/files/uid.txt").text for run in runs)
    assert seen == [f"{bob_uid}\n{u}\n" for u in (1, 2, 3)]


def test_a_user_mapped_to_an_os_account_runs_as_that_account(tmp_path, dask_cluster):
    import pwd

    nobody = pwd.getpwnam("nobody")
    settings = Settings(data_dir=tmp_path / "data", port=0, **dask_cluster.settings,
                        job_accounts={"alice": "nobody"})
    with tenants_on(settings) as tenants:
        users = Users(tenants.server, tenants.clients)
        _, out, _ = users.run("alice", "id -u; id -g; echo $USER")
        assert out.split() == [str(nobody.pw_uid), str(nobody.pw_gid), "nobody"], out
        _, out, _ = users.run("bob", "id -u")
        assert out.strip() not in ("0", str(nobody.pw_uid)), out  # bob keeps a uid of the range
