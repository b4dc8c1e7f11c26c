"""A multi-user job's process on the worker, called in-process as a worker (root) runs it:
its own uid, a folder only it owns, an environment built from scratch, and nothing it leaves
(links, hard links, deep JSON) can make the worker read or leak what the job could not."""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path

import pytest

from orchestrator.storage import Storage, layout
from orchestrator.worker.runner import Sealed, run_batch, run_job

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching a job to another uid needs root")

JOB_UID = 250_123


def _spec(tmp_path: Path, command: str, **extra) -> dict:
    storage = tmp_path / "storage"
    storage.mkdir(exist_ok=True, mode=0o700)
    return {"job_id": uuid.uuid4().hex[:12], "key": f"job-1-{uuid.uuid4().hex[:8]}", "attempt": 1,
            "storage_url": str(storage), "command": command,
            "run_as": {"uid": JOB_UID, "gid": JOB_UID, "user": "bob"}, **extra}


def _stdout(spec: dict, stream: str = "stdout") -> str:
    storage, key = Storage(spec["storage_url"]), layout.log_key(spec["job_id"], stream)
    return storage.read_range(key, 0).decode() if storage.exists(key) else ""


def _secret_file(tmp_path: Path) -> Path:
    secret = tmp_path / "secret.key"
    secret.write_text("server-secret")
    secret.chmod(0o600)
    return secret


def test_the_job_runs_as_its_uid_with_a_clean_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_SECRET_KEY", "canary-key")
    monkeypatch.setenv("ORCHESTRATOR_STORAGE_OPTIONS", '{"secret": "canary-s3"}')
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "canary-aws")
    spec = _spec(tmp_path, 'id -u; id -G; echo "home=$HOME out=$OUTPUT_DIR job=$JOB_ID"; env; '
                           'stat -c "%u %a" .; echo x > made.txt',
                 env={"MINE": "1"})
    outcome = run_job(Sealed(spec))
    assert outcome["status"] == "COMPLETED", outcome
    lines = _stdout(spec).splitlines()
    assert lines[0] == str(JOB_UID) and lines[1] == str(JOB_UID)  # no group of the worker kept
    home = lines[2].split()[0].removeprefix("home=")
    assert lines[2] == f"home={home} out={home} job={spec['job_id']}"
    text = _stdout(spec)
    for canary in ("canary-key", "canary-s3", "canary-aws", "ORCHESTRATOR_"):
        assert canary not in text
    assert "MINE=1" in text and "PATH=" in text
    assert f"{JOB_UID} 700" in text  # the folder is the job's own, closed to others
    assert [f["path"] for f in outcome["files"]] == ["made.txt"]
    assert not Path(home).exists()  # removed after the run


def test_the_job_cannot_read_the_servers_files_or_fetch_them_as_urls(tmp_path):
    secret = _secret_file(tmp_path)
    spec = _spec(tmp_path, f"cat {secret} && echo read-it")
    outcome = run_job(Sealed(spec))
    assert outcome["status"] == "FAILED" and "read-it" not in _stdout(spec)
    assert "Permission denied" in _stdout(spec, "stderr")

    staged = _spec(tmp_path, "cat secret.key", inputs=[{"path": "secret.key", "url": f"file://{secret}"}])
    outcome = run_job(Sealed(staged))
    assert outcome["status"] == "FAILED"
    assert outcome["reason"].startswith("staging inputs failed") and "Permission" in outcome["reason"]


def test_links_and_hard_links_the_job_leaves_are_never_stored(tmp_path):
    secret = _secret_file(tmp_path)
    os.chmod(tmp_path, 0o755)  # reachable, so only the file's own mode and owner protect it
    spec = _spec(tmp_path, f"ln -s {secret} soft.txt; ln {secret} hard.txt 2>/dev/null; "
                           f"mkdir d; ln -s / d/root; echo fine > ok.txt")
    outcome = run_job(Sealed(spec))
    assert outcome["status"] == "COMPLETED", outcome
    assert [f["path"] for f in outcome["files"]] == ["ok.txt"]


def test_deeply_nested_outputs_json_fails_cleanly_and_keeps_secrets_out(tmp_path, caplog):
    deep = """python3 -c 'print("{\\"a\\": " + "[" * 200000 + "]" * 200000 + "}")' > outputs.json"""
    spec = _spec(tmp_path, deep, env={"API_KEY": "canary-secret-value"})
    outcome = run_job(Sealed(spec))
    assert outcome["status"] == "COMPLETED"
    assert "not valid JSON" in outcome["error"] and outcome["outputs"] == {}
    assert "canary-secret-value" not in repr(Sealed(spec)) + caplog.text + json.dumps(outcome)


def test_a_batch_of_runs_gets_a_fresh_folder_each(tmp_path):
    spec = _spec(tmp_path, "")
    template = {k: spec[k] for k in ("storage_url", "run_as")}
    runs = [{"job_id": uuid.uuid4().hex[:12], "key": f"r-{i}", "attempt": 1,
             "command": f"ls; echo {i} > out{i}.txt; id -u"} for i in range(3)]
    outcomes = json.loads(run_batch(Sealed(json.dumps({"template": template, "runs": runs}))))
    assert [o["status"] for o in outcomes] == ["COMPLETED"] * 3
    for i, (run, outcome) in enumerate(zip(runs, outcomes, strict=True)):
        assert [f["path"] for f in outcome["files"]] == [f"out{i}.txt"]
        assert _stdout(run | template).split() == [str(JOB_UID)]  # no earlier run's file seen


@pytest.mark.parametrize("url", ["memory://worker/secret", "simplecache::file:///etc/hostname",
                                 "zip://a::file:///tmp/x.zip"])
def test_urls_that_could_reach_the_workers_own_state_are_refused(tmp_path, url):
    outcome = run_job(Sealed(_spec(tmp_path, "true", inputs=[{"path": "in", "url": url}])))
    assert outcome["status"] == "FAILED" and "inputs of multi-user jobs are file://" in outcome["reason"], outcome


def test_a_readable_file_url_is_staged_into_a_subfolder_as_the_job(tmp_path):
    with tempfile.TemporaryDirectory() as public:  # pytest's own folders are root's alone
        os.chmod(public, 0o755)
        source = Path(public) / "public.txt"
        source.write_text("shared")
        source.chmod(0o644)
        spec = _spec(tmp_path, "stat -c %u deep/er/in.txt; cat deep/er/in.txt",
                     inputs=[{"path": "deep/er/in.txt", "url": f"file://{source}"}])
        outcome = run_job(Sealed(spec))
    assert outcome["status"] == "COMPLETED", outcome
    assert _stdout(spec) == f"{JOB_UID}\nshared"
    assert outcome["files"] == []  # an unchanged input is no output
