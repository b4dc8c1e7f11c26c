"""API tokens over real HTTP: required once any exists, stored only as hashes, revocable;
a server on a non-loopback address refuses to start without one."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from orchestrator import Orchestrator
from orchestrator.cli import main
from orchestrator.errors import Unauthorized
from tests.conftest import REPO


def create_token(capsys, data_dir, user: str, *flags: str) -> str:
    assert main(["token", "create", user, "--data-dir", str(data_dir), *flags]) == 0
    return capsys.readouterr().out.split()[-1]  # the token is the last word


def test_tokens_are_required_once_one_exists(make_server, capsys):
    server = make_server()
    data_dir = server.settings.data_dir
    assert server.http.get("/jobs").status_code == 200  # no token yet: a one-user machine
    token = create_token(capsys, data_dir, "alice", "--admin")
    assert token.startswith("orch_")
    assert token.encode() not in (data_dir / "jobs.db").read_bytes()  # only its hash is kept

    url = server.url + "/api/v1"
    denied = httpx.get(f"{url}/jobs", timeout=10)
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "unauthorized"
    assert denied.headers["WWW-Authenticate"].startswith("Token")
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Token {token}"}).status_code == 200
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Token {token}x"}).status_code == 401
    assert httpx.get(f"{url}/jobs", headers={"Authorization": "Basic YWxpY2U6"}).status_code == 401
    assert httpx.get(f"{url}/health").status_code == 200  # liveness stays open
    upload = httpx.post(f"{url}/binaries/tool", content=b"x" * 1000)
    assert upload.status_code == 401  # refused before the body is stored
    assert httpx.get(f"{url}/binaries", headers={"Authorization": f"Token {token}"}).json()["count"] == 0

    with Orchestrator.connect(server.url, token=token) as orch:
        assert orch.submit("echo hi").wait(60).status.value == "COMPLETED"
    with Orchestrator.connect(server.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.jobs()

    assert main(["token", "revoke", "alice", "--data-dir", str(data_dir)]) == 0
    assert "revoked 1 token(s) of alice" in capsys.readouterr().out
    assert httpx.get(f"{url}/jobs", headers={"Authorization": f"Token {token}"}).status_code == 401


def test_the_cli_takes_the_token_from_the_environment(make_server, capsys, monkeypatch):
    server = make_server()
    token = create_token(capsys, server.settings.data_dir, "bob")
    assert main(["list", "--url", server.url]) == 2
    assert "API token" in capsys.readouterr().err
    monkeypatch.setenv("ORCHESTRATOR_TOKEN", token)
    assert main(["list", "--url", server.url]) == 0


def test_a_public_address_without_tokens_is_refused(tmp_path):
    refused = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--host", "0.0.0.0", "--port", "0",
         "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )
    assert refused.returncode == 2
    assert "refusing to serve on 0.0.0.0 without API tokens" in refused.stderr
