"""`orchestrator serve` logs one line per request (method, path, status, duration, user) at
INFO, and never a token or a secret value, whatever the requests carried."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx

from tests.conftest import (
    REPO,
    free_port,
    kill_session,
    serve_subprocess,
    server_output,
    wait_until_serving,
)
from tests.support import wait_until

SECRET = "request-log-secret-3b9e"


def test_each_request_is_logged_once_without_tokens_or_secrets(tmp_path):
    data_dir, port = tmp_path / "data", free_port()
    data_dir.mkdir()
    made = subprocess.run([sys.executable, "-m", "orchestrator.cli", "token", "create", "root", "--admin",
                           "--data-dir", str(data_dir)], capture_output=True, text=True, check=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    token = made.stdout.split()[-1]
    server = serve_subprocess(data_dir, port)
    url = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_until_serving(f"http://127.0.0.1:{port}", server)
        headers = {"Authorization": f"Token {token}"}
        job = httpx.post(f"{url}/jobs", params={"sync": "true", "timeout": 60}, headers=headers, timeout=90,
                         json={"command": "true", "secret_env": {"API_KEY": SECRET}}).json()
        assert job["status"] == "COMPLETED", job
        assert httpx.get(f"{url}/jobs/{job['id']}", headers=headers).status_code == 200
        assert httpx.get(f"{url}/jobs/missing", headers=headers).status_code == 404
        assert httpx.get(f"{url}/jobs", params={"search": token}).status_code == 401
        # a request is logged once it has been answered: wait for the last line before the kill
        wait_until(lambda: "GET /api/v1/jobs 401" in server_output(server), 10, "the last request logged")
    finally:
        kill_session(server)
    log = server_output(server)
    assert token not in log and SECRET not in log
    lines = [line for line in log.splitlines() if "orchestrator.access" in line]
    pattern = r"(INFO|WARNING) orchestrator\.access: (GET|POST) (/\S+) (\d{3}) \d+\.\d ms user=(\S+)$"
    logged = [re.search(pattern, line).groups() for line in lines]
    assert ("INFO", "POST", "/api/v1/jobs", "201", "root") in logged, lines
    assert ("INFO", "GET", f"/api/v1/jobs/{job['id']}", "200", "root") in logged, lines
    assert ("WARNING", "GET", "/api/v1/jobs/missing", "404", "root") in logged, lines
    assert ("WARNING", "GET", "/api/v1/jobs", "401", "-") in logged, lines  # the query is never logged
