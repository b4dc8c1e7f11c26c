"""The CLI against a live server, as a user types it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from orchestrator.cli import main

REPO = Path(__file__).resolve().parents[1]


def run(capsys, *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def test_submit_wait_list_status_logs_files_download(server, capsys, tmp_path):
    url = ["--url", server.url]
    code, out = run(capsys, "submit", *url, "--wait", "--json", "--name", "cli-job",
                    "echo hi; echo 42 > answer.txt")
    assert code == 0
    job = json.loads(out)
    assert job["status"] == "COMPLETED"
    code, out = run(capsys, "list", *url)
    assert code == 0 and job["id"] in out and "COMPLETED" in out and "cli-job" in out
    code, out = run(capsys, "status", *url, job["id"])
    assert "RUNNING" in out and "COMPLETED" in out
    code, out = run(capsys, "logs", *url, job["id"])
    assert out == "hi\n"
    code, out = run(capsys, "logs", *url, "-f", job["id"])
    assert out == "hi\n"
    code, out = run(capsys, "files", *url, job["id"])
    assert "answer.txt" in out
    code, out = run(capsys, "download", *url, job["id"], "answer.txt", "-o", str(tmp_path / "a.txt"))
    assert code == 0 and (tmp_path / "a.txt").read_text() == "42\n"
    code, out = run(capsys, "download", *url, job["id"], "answer.txt", "-o", str(tmp_path / "b.txt"), "--verify")
    assert code == 0 and "sha256 verified" in out and (tmp_path / "b.txt").read_text() == "42\n"


def test_stop_and_errors(server, capsys):
    url = ["--url", server.url]
    code, out = run(capsys, "submit", *url, "--json", "sleep 600")
    job = json.loads(out)
    code, out = run(capsys, "stop", *url, job["id"])
    assert code == 0 and job["id"] in out
    assert server.wait(job["id"], timeout=10)["status"] == "STOPPED"
    code = main(["status", *url, "nope"])
    assert code == 2
    assert "no job nope" in capsys.readouterr().err


def test_upload_and_follow_submit(server, capsys, tmp_path):
    url = ["--url", server.url]
    script = tmp_path / "hello.sh"
    script.write_text("echo hello from binary")
    code, out = run(capsys, "upload", *url, str(script))
    assert code == 0 and out.startswith("hello.sh@1")
    code, out = run(capsys, "submit", *url, "--follow", "-b", "hello.sh", "sh hello.sh")
    assert code == 0 and out.startswith("hello from binary\n")


def test_config_prints_settings(capsys, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_MAX_UPLOAD_BYTES", "12345")
    monkeypatch.setenv("ORCHESTRATOR_STORAGE_OPTIONS",
                       '{"key": "AKIA-x", "secret": "s3cr3t", "endpoint_url": "http://127.0.0.1:9000"}')
    code, out = run(capsys, "config", "--json")
    assert "s3cr3t" not in out and "AKIA-x" not in out
    settings = json.loads(out)
    assert settings["ORCHESTRATOR_STORAGE_OPTIONS"]["endpoint_url"] == "http://127.0.0.1:9000"
    assert settings["ORCHESTRATOR_MAX_UPLOAD_BYTES"] == 12345
    assert settings["ORCHESTRATOR_HOST"] == "127.0.0.1"
    assert settings["ORCHESTRATOR_PORT"] == 8080


def test_client_commands_start_without_dask(server):
    """A user's command starts in a fraction of the second Dask's import takes: only `serve`
    and `worker` import it."""
    script = ("import sys\nfrom orchestrator.cli import main\n"
              f"code = main(['submit', '--url', {server.url!r}, '--wait', 'true'])\n"
              "print(code, sorted(m for m in ('dask', 'distributed') if m in sys.modules))")
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines()[-1] == "0 []", ran.stdout
