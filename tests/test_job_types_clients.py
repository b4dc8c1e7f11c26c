"""Job types from Python (embedded and remote: the same calls, models and exceptions) and
from the CLI, as users drive them: register Scale's example type, run it on a local file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator import (
    Conflict,
    Forbidden,
    JobStatus,
    JobTypeDetails,
    NotFound,
    Orchestrator,
    ValidationFailed,
)
from orchestrator.models import JobKind
from tests.conftest import REPO
from tests.support.job_types import CONFIGURATION, DB_PASS, FOLDER, manifest

MANIFEST = FOLDER / "manifest.json"
CLI_TIMEOUT_S = 120


@pytest.fixture(params=["embedded", "remote"])
def orch(request, tmp_path, dask_cluster) -> Iterator[Orchestrator]:
    """The same Python API on each backend: in this process, or over REST."""
    if request.param == "embedded":
        client = Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings)
    else:
        client = Orchestrator.connect(request.getfixturevalue("server").url)
    with client:
        yield client


def register(orch: Orchestrator, **job: Any) -> JobTypeDetails:
    """Scale's `test` type: its script uploaded as the binary it runs, then the manifest."""
    orch.upload_binary("run.sh", FOLDER / "run.sh")
    return orch.job_types.create(manifest(**job) if job else MANIFEST, CONFIGURATION)


def text_file(folder: Path, text: str, name: str = "in.txt") -> Path:
    path = folder / name
    path.write_text(text)
    return path


# ---- Python: registering and managing -------------------------------------------------------


def test_register_show_and_list(orch):
    details = register(orch)
    assert (details.name, details.version, details.revision_num) == ("test", "1.0.0", 1)
    assert details.configuration["settings"] == {"DB_HOST": "db.example", "DB_PASS": "****"}
    assert DB_PASS not in details.model_dump_json()

    assert orch.job_types.get("test") == orch.job_types.get("test@1.0.0") == orch.job_types.get("test", "1.0.0")
    assert [v.version for v in orch.job_types.versions("test")] == ["1.0.0"]
    assert [(s.name, s.latest_version, s.num_versions) for s in orch.job_types.list()] == [("test", "1.0.0", 1)]
    assert [s.name for s in orch.job_types.list(keyword="TEXT")] == ["test"]  # a tag, any case
    assert orch.job_types.list(keyword="nothing-like-it") == []
    with pytest.raises(NotFound):
        orch.job_types.get("test", "9.9.9")
    with pytest.raises(ValidationFailed):
        orch.job_types.list(order="size")


def test_pause_resume_limit_and_deactivate(orch):
    register(orch)
    types = orch.job_types
    paused = types.pause("test", "1.0.0")
    assert paused.is_paused and paused.paused is not None
    assert not types.resume("test@1.0.0").is_paused

    assert types.update("test", "1.0.0", max_scheduled=2).max_scheduled == 2
    assert types.update("test", "1.0.0", icon_code="f013").max_scheduled == 2  # left out: kept
    assert types.update("test", "1.0.0", max_scheduled=None).max_scheduled is None  # None: cleared

    retired = types.deactivate("test", "1.0.0")
    assert not retired.is_active and retired.deprecated is not None
    assert types.list() == []
    assert [s.name for s in types.list(is_active=False)] == ["test"]
    assert types.activate("test", "1.0.0").is_active
    with pytest.raises(ValidationFailed):
        types.pause("test")  # which version?


def test_a_changed_manifest_makes_a_revision_and_a_new_version_a_row(orch):
    register(orch)
    assert orch.job_types.create(MANIFEST, CONFIGURATION).revision_num == 1  # the same: no revision
    edited = orch.job_types.create(manifest(description="reads less"), CONFIGURATION)
    assert (edited.revision_num, edited.description) == (2, "reads less")
    assert [r.revision_num for r in orch.job_types.revisions("test", "1.0.0")] == [1, 2]

    orch.job_types.create(manifest(jobVersion="2.0.0"), CONFIGURATION)
    assert [v.version for v in orch.job_types.versions("test")] == ["1.0.0", "2.0.0"]
    assert orch.job_types.get("test").version == "2.0.0"  # no version: the newest
    orch.job_types.delete("test", "2.0.0")  # no job references it
    with pytest.raises(NotFound):
        orch.job_types.get("test@2.0.0")


def test_validate_reports_and_an_invalid_create_raises(orch):
    orch.upload_binary("run.sh", FOLDER / "run.sh")
    bare = orch.job_types.validate(MANIFEST)
    assert bare.is_valid and {w.name for w in bare.warnings} == {"MISSING_SETTING"}
    assert orch.job_types.validate(MANIFEST, CONFIGURATION).warnings == []

    broken = manifest(interface={**manifest()["job"]["interface"], "command": "./run.sh ${NOPE}"})
    report = orch.job_types.validate(broken, CONFIGURATION)
    assert not report.is_valid and [e.name for e in report.errors] == ["UNKNOWN_PLACEHOLDER"]
    with pytest.raises(ValidationFailed) as refused:
        orch.job_types.create(broken, CONFIGURATION)
    assert [e["name"] for e in refused.value.details["errors"]] == ["UNKNOWN_PLACEHOLDER"]
    with pytest.raises(ValidationFailed):
        orch.job_types.create(MANIFEST, CONFIGURATION, max_scheduled=-1)
    assert orch.job_types.list() == []


# ---- Python: running ------------------------------------------------------------------------


def test_run_a_job_type_on_a_local_file(orch, tmp_path):
    register(orch)
    job = orch.run("test@1.0.0", {"READ_LENGTH": 5}, files={"INPUT_TEXT": text_file(tmp_path, "hello world")})
    result = job.result(timeout=60)
    record = job.record
    assert record.status == JobStatus.COMPLETED and record.kind == JobKind.JOB_TYPE
    assert (record.job_type.name, record.job_type.version, record.job_type.revision) == ("test", "1.0.0", 1)
    assert result.outputs["total_input"] == 11 and "OUTPUT_TEXT" in result.outputs
    assert job.download("output_text.txt", tmp_path / "out").read_text() == "hello"

    again = orch.run("test", {"json": {"READ_LENGTH": 2}, "files": {"INPUT_TEXT": [str(tmp_path / "in.txt")]}},
                     wait=60)  # the REST form of inputs; no version: the newest active one
    assert again.record.status == JobStatus.COMPLETED, again.record.status_reason
    assert again.result().outputs["total_input"] == 11
    with pytest.raises(Conflict):
        orch.job_types.delete("test", "1.0.0")  # jobs reference it


def test_a_sweep_of_a_job_type_from_python(orch, tmp_path):
    register(orch)
    sweep = orch.sweep(job_type="test@1.0.0", inputs={"READ_LENGTH": "${n}"},
                       files={"INPUT_TEXT": text_file(tmp_path, "hello world")},
                       variables={"n": [1, 3, 5]})
    record = sweep.wait(timeout=90)
    assert record.status == JobStatus.COMPLETED, record
    table = sweep.results()
    assert sorted(table["n"]) == [1, 3, 5] and set(table["total_input"]) == {11}
    preview = orch.sweep(job_type="test@1.0.0", inputs={"READ_LENGTH": "${n}"},
                         files={"INPUT_TEXT": text_file(tmp_path, "hello world")},
                         variables={"n": [1, 2]}, dry_run=True)
    assert preview.count == 2


def test_run_refuses_what_its_type_does_not_take(orch, tmp_path):
    register(orch)
    source = text_file(tmp_path, "hello")
    with pytest.raises(ValidationFailed):
        orch.run("test@1.0.0", {"READ_LENGTH": "five"}, files={"INPUT_TEXT": source})
    with pytest.raises(ValidationFailed):
        orch.run("test@1.0.0", {"READ_LENGTH": 5})  # INPUT_TEXT is required
    with pytest.raises(ValidationFailed):
        orch.run("nope@1.0.0", {"READ_LENGTH": 5}, files={"INPUT_TEXT": source})
    with pytest.raises(FileNotFoundError):
        orch.run("test@1.0.0", {"READ_LENGTH": 5}, files={"INPUT_TEXT": tmp_path / "missing.txt"})
    orch.job_types.deactivate("test@1.0.0")
    with pytest.raises(Conflict):
        orch.run("test@1.0.0", {"READ_LENGTH": 5}, files={"INPUT_TEXT": source})
    assert orch.jobs() == []


def test_a_run_takes_its_types_priority_unless_given(orch, tmp_path):
    """Only what the caller gives is sent: an unset priority is the type's configured one.
    The type is named '42', which a multipart form field must still carry as text."""
    orch.upload_binary("run.sh", FOLDER / "run.sh")
    orch.job_types.create(manifest(name="42"), {**CONFIGURATION, "priority": 7})
    files = {"INPUT_TEXT": text_file(tmp_path, "hello")}
    typed = orch.run("42@1.0.0", {"READ_LENGTH": 1}, files=files, submit=False)
    assert (typed.record.status, typed.record.priority, typed.record.job_type.name) == (JobStatus.CREATED, 7, "42")
    assert orch.run("42", {"READ_LENGTH": 1}, files=files, priority=1, submit=False).record.priority == 1


def test_only_admins_change_job_types_and_users_run_them(server, tmp_path):
    tokens = server.running.service.tokens
    admin_token, user_token = tokens.create("root", admin=True), tokens.create("alice")
    with Orchestrator.connect(server.url, token=user_token) as alice:
        with pytest.raises(Forbidden):
            register(alice)
        with Orchestrator.connect(server.url, token=admin_token) as root:
            register(root)
        with pytest.raises(Forbidden):
            alice.job_types.pause("test@1.0.0")
        assert [s.name for s in alice.job_types.list()] == ["test"]
        job = alice.run("test@1.0.0", {"READ_LENGTH": 3}, files={"INPUT_TEXT": text_file(tmp_path, "abcdef")})
        assert job.result(timeout=60).outputs["total_input"] == 6
        assert job.record.owner == "alice"


# ---- the CLI, as a user runs it -------------------------------------------------------------


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", *args], capture_output=True, text=True,
        timeout=CLI_TIMEOUT_S, env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
    )


def test_cli_job_type_commands(server, tmp_path):
    url = ("--url", server.url)
    assert cli("upload", str(FOLDER / "run.sh"), *url).returncode == 0
    settings = ("--setting", "DB_HOST=db.example", "--secret-setting", "DB_PASS")
    secret = {"DB_PASS": DB_PASS}

    valid = cli("job-type", "validate", str(MANIFEST), *url)
    assert valid.returncode == 0 and valid.stdout.startswith("valid") and "MISSING_SETTING" in valid.stdout
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(manifest(interface={**manifest()["job"]["interface"], "command": "${NOPE}"})))
    invalid = cli("job-type", "validate", str(broken), *settings, *url, env=secret)
    assert invalid.returncode == 1 and "error: UNKNOWN_PLACEHOLDER" in invalid.stdout
    refused = cli("job-type", "create", str(broken), *url)
    assert refused.returncode == 2 and "UNKNOWN_PLACEHOLDER" in refused.stderr

    created = cli("job-type", "create", str(MANIFEST), *settings, "--max-scheduled", "3", *url, env=secret)
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "test@1.0.0: revision 1"
    listed = json.loads(cli("job-type", "list", "--json", *url).stdout)
    assert [(row["name"], row["latest_version"]) for row in listed] == [("test", "1.0.0")]
    shown = json.loads(cli("job-type", "show", "test@1.0.0", "--json", *url).stdout)
    assert shown["max_scheduled"] == 3 and shown["configuration"]["settings"]["DB_PASS"] == "****"
    table = cli("job-type", "show", "test", *url)
    assert table.returncode == 0 and "Test Job" in table.stdout and DB_PASS not in table.stdout

    assert cli("job-type", "pause", "test@1.0.0", *url).stdout.strip() == "test@1.0.0: paused"
    assert server.http.get("/job-types/test/1.0.0").json()["is_paused"] is True
    assert cli("job-type", "resume", "test@1.0.0", *url).returncode == 0
    assert cli("job-type", "deactivate", "test@1.0.0", *url).returncode == 0
    assert json.loads(cli("job-type", "list", "--json", *url).stdout) == []
    assert [r["name"] for r in json.loads(cli("job-type", "list", "--all", "--json", *url).stdout)] == ["test"]


def test_cli_run(server, tmp_path):
    url = ("--url", server.url)
    with Orchestrator.connect(server.url) as orch:
        register(orch)
    source = text_file(tmp_path, "hello world")
    done = cli("run", "test@1.0.0", "--input", "READ_LENGTH=5", "--file", f"INPUT_TEXT={source}",
               "--wait", "--json", *url)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "COMPLETED" and record["kind"] == "job_type"
    assert record["result"]["outputs"]["total_input"] == 11

    queued = cli("run", "test", "--input", "READ_LENGTH=2", "--file", f"INPUT_TEXT={source}", *url)
    assert queued.returncode == 0, queued.stderr
    assert server.wait(queued.stdout.strip())["status"] == "COMPLETED"

    empty = text_file(tmp_path, "", "empty.txt")  # the type's data error: exit 1, FAILED
    failed = cli("run", "test@1.0.0", "--input", "READ_LENGTH=5", "--file", f"INPUT_TEXT={empty}", "--wait", *url)
    assert failed.returncode == 1 and "FAILED" in failed.stdout

    bad = cli("run", "test@1.0.0", "--input", "READ_LENGTH=five", "--file", f"INPUT_TEXT={source}", *url)
    assert bad.returncode == 2 and "READ_LENGTH" in bad.stderr
