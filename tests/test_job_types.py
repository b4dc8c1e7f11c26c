"""Job types over REST, on a real multi-user server and Dask cluster: Scale's own example type
(`test` 1.0.0) registered by an admin with its script as a binary, run by a user end to end;
revisions pinned by jobs; pausing and max_scheduled; secret settings never shown; Scale's
validation codes; the submission errors; who may register and change types."""

from __future__ import annotations

import copy
import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime

import httpx
import pytest

from orchestrator.config import Settings
from tests.support import job_types as jt
from tests.support import wait_until
from tests.support.tenants import Tenants, tenants_on

TEXT = b"hello world, this is the input text\n"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, dask_cluster) -> Iterator[Tenants]:
    with tenants_on(Settings(data_dir=tmp_path_factory.mktemp("job-types") / "data", port=0,
                             **dask_cluster.settings)) as tenants:
        jt.register(tenants["root"])
        yield tenants


def finished(client: httpx.Client, response: httpx.Response) -> dict:
    assert response.status_code == 201, response.text
    done = client.get(f"/jobs/{response.json()['id']}", params={"wait": 60}, timeout=90).json()
    assert done["status"] in ("COMPLETED", "FAILED", "STOPPED"), done
    return done


def register_version(root: httpx.Client, version: str, **interface) -> dict:
    """Another version of `test` whose interface differs (a command, outputs...)."""
    seed = jt.manifest(jobVersion=version)
    seed["job"]["interface"].update(interface)
    created = root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION})
    assert created.status_code == 201, created.text
    return created.json()


# ---- running ----------------------------------------------------------------------------------


def test_scales_example_type_runs_end_to_end(tenants: Tenants):
    bob = tenants["bob"]
    job = finished(bob, jt.run(bob, TEXT, 5))
    assert job["status"] == "COMPLETED", job
    assert job["kind"] == "job_type" and job["owner"] == "bob"
    assert job["job_type"] == {"name": "test", "version": "1.0.0", "revision": 1}
    assert job["inputs"] == {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 5}}
    assert job["timeout_s"] == 60 and job["resources"]["memory"] == 64 * 2**20
    result = bob.get(f"/jobs/{job['id']}/result").json()
    assert result["outputs"]["total_input"] == len(TEXT)
    output = result["outputs"]["OUTPUT_TEXT"]
    assert output["path"] == "output_text.txt" and output["size"] == 5 and len(output["sha256"]) == 64
    assert bob.get(f"/jobs/{job['id']}/files/output_text.txt").content == TEXT[:5]
    assert "connecting to db.example" in bob.get(f"/jobs/{job['id']}/logs").text


def test_inputs_settings_and_allocations_reach_the_job_as_seed_variables(tenants: Tenants):
    root = tenants["root"]
    register_version(root, "1.1.0", command="env > ${OUTPUT_DIR}/output_text.txt; "
                     "echo '{\"TOTAL_INPUT\": 1}' > ${OUTPUT_DIR}/seed.outputs.json; "
                     "cat ${INPUT_TEXT} > ${OUTPUT_DIR}/copy.bin")
    bob = tenants["bob"]
    job = finished(bob, jt.run(bob, TEXT, 7, ref="test@1.1.0"))
    assert job["status"] == "COMPLETED", job
    env = dict(line.split("=", 1) for line in
               bob.get(f"/jobs/{job['id']}/files/output_text.txt").text.splitlines() if "=" in line)
    assert env["INPUT_TEXT"].endswith("/inputs/INPUT_TEXT/in.txt") and env["INPUT_TEXT"].startswith("/")
    assert env["READ_LENGTH"] == "7" and env["DB_HOST"] == "db.example"
    assert env["DB_PASS"] == jt.DB_PASS  # the job gets its secret; only records hide it
    assert env["ALLOCATED_CPUS"] == "1" and env["ALLOCATED_MEM"] == "64"
    assert env["ALLOCATED_DISK"] == "10" and env["ALLOCATED_SHAREDMEM"] == "16"
    assert env["JOB_ID"] == job["id"] and env["OUTPUT_DIR"].startswith("/")
    assert bob.get(f"/jobs/{job['id']}/files/copy.bin").content == TEXT


def test_a_json_input_is_one_shell_word_never_shell_code(tenants: Tenants):
    root = tenants["root"]
    seed = jt.manifest(jobVersion="1.2.0")
    seed["job"]["interface"]["inputs"] = {"json": [{"name": "GREETING", "type": "string"}]}
    seed["job"]["interface"]["command"] = "printf '%s|' ${GREETING} > ${OUTPUT_DIR}/output_text.txt; " \
                                          "echo '{\"TOTAL_INPUT\": 0}' > ${OUTPUT_DIR}/seed.outputs.json"
    assert root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}).status_code == 201
    bob = tenants["bob"]
    hostile = "two words; touch ${OUTPUT_DIR}/pwned $(id)"
    response = bob.post("/jobs", json={"job_type": "test@1.2.0", "inputs": {"json": {"GREETING": hostile}}})
    job = finished(bob, response)
    assert job["status"] == "COMPLETED", job
    assert bob.get(f"/jobs/{job['id']}/files/output_text.txt").text == hostile + "|"
    names = [f["path"] for f in bob.get(f"/jobs/{job['id']}/files").json()["results"]]
    assert "pwned" not in names


@pytest.mark.parametrize(("text", "length", "settings", "reason", "error"), [
    (b"", 5, {}, "error 1 (data): Data Issue discovered", "data-issue"),
    (TEXT, -3, {}, "error 2 (job): Job partially executed", "job-partially-executed"),
    (TEXT, 5, {"DB_PASS": ""}, "exit code 3", None),
])
def test_declared_exit_codes_fail_the_job_with_their_error(tenants, text, length, settings, reason, error):
    bob = tenants["bob"]
    extra = {"configuration": {"settings": settings}} if settings else {}
    job = finished(bob, jt.run(bob, text, length, **extra))
    assert job["status"] == "FAILED"
    assert job["status_reason"].startswith(reason), job["status_reason"]
    assert job["result"]["error"] == error


def test_outputs_are_checked_against_the_declaration(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "1.3.0", command="true")
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.3.0"))
    assert job["status"] == "FAILED"
    assert "missing required output OUTPUT_TEXT" in job["status_reason"]
    assert "missing required output total_input" in job["status_reason"]
    register_version(root, "1.4.0", command="echo a > ${OUTPUT_DIR}/a.txt; echo b > ${OUTPUT_DIR}/b.txt; "
                     "echo '{\"TOTAL_INPUT\": \"many\"}' > ${OUTPUT_DIR}/seed.outputs.json",
                     outputs={"files": [{"name": "OUTPUT_TEXT", "pattern": "*.txt"}],
                              "json": [{"name": "total_input", "key": "TOTAL_INPUT", "type": "integer"}]})
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.4.0"))
    assert job["status"] == "FAILED"
    assert "several files match single output OUTPUT_TEXT: a.txt, b.txt" in job["status_reason"]
    assert "output total_input is not an integer" in job["status_reason"]


def test_the_revisions_timeout_is_a_hard_limit(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    seed = jt.manifest(jobVersion="1.7.0", timeout=1)
    seed["job"]["interface"]["command"] = "sleep 30"
    assert root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}).status_code == 201
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.7.0"))
    assert job["status"] == "FAILED" and job["status_reason"].startswith("timeout after 1 s"), job
    assert job["result"]["error"] is None  # a timeout is not an error the type declares


def test_an_empty_outputs_section_is_valid_and_runs(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "1.5.0", command="echo done", outputs={})
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.5.0"))
    assert job["status"] == "COMPLETED", job


def test_mounts_are_host_paths_and_a_missing_one_fails_the_job(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    seed = jt.manifest(jobVersion="1.6.0")
    seed["job"]["interface"]["mounts"] = [{"name": "REFERENCE", "path": "/ref", "mode": "ro"}]
    seed["job"]["interface"]["command"] = "ls ${REFERENCE} > ${OUTPUT_DIR}/output_text.txt; " \
                                          "echo '{\"TOTAL_INPUT\": 0}' > ${OUTPUT_DIR}/seed.outputs.json"
    configuration = {**jt.CONFIGURATION, "mounts": {"REFERENCE": "/usr/bin"}}
    created = root.post("/job-types", json={"manifest": seed, "configuration": configuration})
    assert created.status_code == 201, created.text
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.6.0"))
    assert job["status"] == "COMPLETED", job
    assert "env" in bob.get(f"/jobs/{job['id']}/files/output_text.txt").text.split()
    missing = {"configuration": {"mounts": {"REFERENCE": "/nonexistent/reference-data"}}}
    job = finished(bob, jt.run(bob, TEXT, ref="test@1.6.0", **missing))
    assert job["status"] == "FAILED"
    assert job["status_reason"] == "mount REFERENCE: host path /nonexistent/reference-data is missing on this worker"


# ---- revisions, pausing, limits -------------------------------------------------------------------


def test_a_waiting_job_runs_the_revision_it_was_created_with(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "3.0.0")
    paused = root.patch("/job-types/test/3.0.0", json={"is_paused": True})
    assert paused.json()["is_paused"] is True and paused.json()["paused"] is not None
    assert paused.json()["revision_num"] == 1  # flags make no revision
    job = jt.run(bob, TEXT, 4, ref="test@3.0.0").json()
    waiting = wait_until(lambda: (j := bob.get(f"/jobs/{job['id']}").json())["status_reason"] and j, 20, "held")
    assert waiting["status"] == "QUEUED"
    assert waiting["status_reason"] == "job type test 3.0.0 is paused"
    edited = register_version(root, "3.0.0", command="echo revised > ${OUTPUT_DIR}/output_text.txt")
    assert edited["revision_num"] == 2 and edited["is_paused"] is True  # an edit keeps what it does not give
    assert bob.get(f"/jobs/{job['id']}").json()["status"] == "QUEUED"
    assert root.patch("/job-types/test/3.0.0", json={"is_paused": False}).json()["is_paused"] is False
    done = bob.get(f"/jobs/{job['id']}", params={"wait": 60}, timeout=90).json()
    assert done["status"] == "COMPLETED", done
    assert done["job_type"]["revision"] == 1
    assert bob.get(f"/jobs/{job['id']}/files/output_text.txt").content == TEXT[:4]
    revisions = root.get("/job-types/test/3.0.0/revisions").json()
    assert revisions["count"] == 2 and [r["revision_num"] for r in revisions["results"]] == [1, 2]
    assert root.get("/job-types/test/3.0.0/revisions/2").json()["manifest"]["job"]["interface"]["command"] \
        .startswith("echo revised")
    newer = finished(bob, jt.run(bob, TEXT, ref="test@3.0.0"))
    assert newer["job_type"]["revision"] == 2 and newer["status"] == "FAILED"  # revised writes no JSON


def test_reposting_a_manifest_changes_only_what_it_gives(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "3.1.0")
    root.patch("/job-types/test/3.1.0", json={"max_scheduled": 2, "icon_code": "f013"})
    seed = jt.manifest(jobVersion="3.1.0", title="Retitled")
    again = root.post("/job-types", json={"manifest": seed})  # no configuration, no flags
    assert again.status_code == 201, again.text
    details = again.json()
    assert details["title"] == "Retitled" and details["revision_num"] == 2
    assert details["max_scheduled"] == 2 and details["icon_code"] == "f013" and details["is_active"] is True
    assert details["configuration"]["settings"] == {"DB_HOST": "db.example", "DB_PASS": "****"}
    job = finished(bob, jt.run(bob, TEXT, ref="test@3.1.0"))
    assert job["status"] == "COMPLETED", job  # run.sh exits 3 without DB_PASS: the secret was kept


def test_max_scheduled_one_runs_its_jobs_one_at_a_time_and_holds_back_no_other(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "4.0.0", command="sleep 1; ./run.sh ${INPUT_TEXT} ${READ_LENGTH} ${OUTPUT_DIR}")
    limited = root.patch("/job-types/test/4.0.0", json={"max_scheduled": 1})
    assert limited.json()["max_scheduled"] == 1
    ids = [jt.run(bob, TEXT, ref="test@4.0.0").json()["id"] for _ in range(4)]
    plain = finished(bob, bob.post("/jobs", json={"command": "echo other types pass"}))
    assert plain["status"] == "COMPLETED"
    assert any(bob.get(f"/jobs/{i}").json()["status"] == "QUEUED" for i in ids)  # the type still waits
    reasons = {bob.get(f"/jobs/{i}").json()["status_reason"] for i in ids}
    assert "job type test 4.0.0 has 1 jobs scheduled (max_scheduled); waiting for one to end" in reasons
    jobs = [bob.get(f"/jobs/{i}", params={"wait": 60}, timeout=90).json() for i in ids]
    assert all(job["status"] == "COMPLETED" for job in jobs), jobs
    spans = sorted((datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
                   for j in jobs)
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert start >= end, spans  # never two at once
    cleared = root.patch("/job-types/test/4.0.0", json={"max_scheduled": None})
    assert cleared.status_code == 200 and cleared.json()["max_scheduled"] is None  # Scale cannot clear it


# ---- secrets ------------------------------------------------------------------------------------


def test_a_secret_setting_is_never_shown(tenants: Tenants, caplog):
    caplog.set_level(logging.DEBUG)  # every record the server logs while the job runs
    root, bob = tenants["root"], tenants["bob"]
    events: list[str] = []
    opened, ended = threading.Event(), threading.Event()

    def listen() -> None:
        with bob.stream("GET", "/events", timeout=httpx.Timeout(60)) as stream:
            for line in stream.iter_lines():
                opened.set()
                events.append(line)
                if '"COMPLETED"' in line or '"FAILED"' in line:
                    ended.set()
                    return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(30), "the event stream opened"
    override = "job-level-secret-override"
    job = finished(bob, jt.run(bob, TEXT, 3, configuration={"settings": {"DB_PASS": override}}))
    assert job["status"] == "COMPLETED", job  # the job got a password
    assert ended.wait(30), "the job's end was heard"
    shown = [
        json.dumps(job), root.get("/job-types/test/1.0.0").text, root.get("/job-types/test").text,
        root.get("/job-types").text, root.get("/job-types/test/1.0.0/revisions").text,
        bob.get(f"/jobs/{job['id']}").text, bob.get("/jobs").text, root.get("/jobs").text,
        bob.get(f"/jobs/{job['id']}/statuses").text, bob.get(f"/jobs/{job['id']}/result").text,
        "\n".join(events),
    ]
    assert any(job["id"] in text for text in events), "the event stream was read"
    assert job["secret_env"] == {"DB_PASS": "****"}
    assert root.get("/job-types/test/1.0.0").json()["configuration"]["settings"]["DB_PASS"] == "****"
    ledger = tenants.server.settings.database_path
    stored = b"".join(p.read_bytes() for p in ledger.parent.glob(ledger.name + "*"))
    assert f"/api/v1/jobs/{job['id']}" in caplog.text  # the server's request log was captured
    for secret in (jt.DB_PASS, override):
        assert all(secret not in text for text in shown), secret
        assert secret not in caplog.text, secret
        assert secret.encode() not in stored, secret


# ---- validation -------------------------------------------------------------------------------


def variant(change) -> dict:
    seed = jt.manifest()
    change(seed["job"])
    return {"manifest": seed, "configuration": copy.deepcopy(jt.CONFIGURATION)}


def _set(**fields):
    return lambda job: job.update(fields)


def _interface(**fields):
    return lambda job: job["interface"].update(fields)


VALIDATION_ERRORS = {
    "JSON_VALIDATION_ERROR": (_set(name="not a name!"), "job.name"),
    "NAME_COLLISION_ERROR": (_interface(settings=[{"name": "input-text"}]), "INPUT_TEXT"),
    "DUPLICATE_MOUNT_NAMES": (_interface(mounts=[{"name": "M", "path": "/a"}, {"name": "M", "path": "/b"}]), "M"),
    "DUPLICATE_ERROR_NAMES": (lambda job: job["errors"].append({"code": 9, "name": "data-issue"}), "data-issue"),
    "INVALID_MOUNT_PATH": (_interface(mounts=[{"name": "M", "path": "relative/path"}]), "relative/path"),
    "UNKNOWN_PLACEHOLDER": (_interface(command="./run.sh ${NOT_DECLARED}"), "NOT_DECLARED"),
    "UNKNOWN_BINARY": (_set(binaries=["never-uploaded@3"]), "never-uploaded"),
    "NO_COMMAND": (lambda job: (job["interface"].pop("command"), job.update(dockerImage="test:1.0")),
                   "container images"),
}


@pytest.mark.parametrize("code", list(VALIDATION_ERRORS))
def test_each_validation_error_is_reported_and_refuses_the_create(tenants: Tenants, code: str):
    root = tenants["root"]
    change, named = VALIDATION_ERRORS[code]
    body = variant(change)
    report = root.post("/job-types/validation", json=body)
    assert report.status_code == 200, report.text
    assert report.json()["is_valid"] is False
    errors = [e for e in report.json()["errors"] if e["name"] == code]
    assert errors and named in errors[0]["description"], report.json()
    refused = root.post("/job-types", json={**body, "manifest": {**body["manifest"], "job": {
        **body["manifest"]["job"], "jobVersion": "9.9.9"}}})
    assert refused.status_code == 400
    assert code in [e["name"] for e in refused.json()["error"]["errors"]]
    assert root.get("/job-types/test/9.9.9").status_code == 404  # nothing saved


VALIDATION_WARNINGS = {
    "MISSING_SETTING": lambda body: body.update(configuration={"settings": {"DB_HOST": "h"}}),
    "UNKNOWN_SETTING": lambda body: body["configuration"]["settings"].update(EXTRA="x"),
    "MISSING_MOUNT": lambda body: body["manifest"]["job"]["interface"].update(mounts=[{"name": "M", "path": "/m"}]),
    "UNKNOWN_MOUNT": lambda body: body.update(configuration={**jt.CONFIGURATION, "mounts": {"OTHER": "/x"}}),
    "NONSTANDARD_RESOURCE": lambda body: body["manifest"]["job"]["resources"]["scalar"].append(
        {"name": "fpgas", "value": 1}),
    "UNSATISFIABLE_RESOURCES": lambda body: body["manifest"]["job"]["resources"]["scalar"].append(
        {"name": "gpus", "value": 64}),
}


@pytest.mark.parametrize("code", list(VALIDATION_WARNINGS))
def test_each_validation_warning_is_reported_and_still_valid(tenants: Tenants, code: str):
    body = variant(lambda job: None)
    VALIDATION_WARNINGS[code](body)
    report = tenants["root"].post("/job-types/validation", json=body).json()
    assert code in [w["name"] for w in report["warnings"]], report
    assert report["is_valid"] is True, report


def test_validation_saves_nothing_and_a_clean_type_has_no_issues(tenants: Tenants):
    root = tenants["root"]
    body = variant(_set(jobVersion="7.7.7"))
    assert root.post("/job-types/validation", json=body).json() == {"is_valid": True, "errors": [], "warnings": []}
    assert root.get("/job-types/test/7.7.7").status_code == 404


# ---- submitting -----------------------------------------------------------------------------------


SUBMISSION_ERRORS = [
    ({"json": {"READ_LENGTH": 5}}, [], "inputs.files.INPUT_TEXT", "missing"),
    ({"files": {"INPUT_TEXT": ["in.txt"]}}, ["in.txt"], "inputs.json.READ_LENGTH", "missing"),
    ({"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": "five"}}, ["in.txt"],
     "inputs.json.READ_LENGTH", "integer"),
    ({"files": {"INPUT_TEXT": []}, "json": {"READ_LENGTH": 5}}, [], "inputs.files.INPUT_TEXT", ""),
    ({"files": {"INPUT_TEXT": ["a.txt", "b.txt"]}, "json": {"READ_LENGTH": 5}}, ["a.txt", "b.txt"],
     "inputs.files.INPUT_TEXT", "one"),
    ({"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 5, "COLOUR": "red"}}, ["in.txt"],
     "inputs.json.COLOUR", "unknown"),
]


@pytest.mark.parametrize(("inputs", "parts", "field", "words"), SUBMISSION_ERRORS)
def test_submission_errors_name_the_input(tenants: Tenants, inputs, parts, field, words):
    bob = tenants["bob"]
    data = {"job_type": "test@1.0.0", "inputs": json.dumps(inputs)}
    files = [("file[]", (name, TEXT, "text/plain")) for name in parts]
    refused = bob.post("/jobs", data=data, files=files) if files else bob.post(
        "/jobs", json={"job_type": "test@1.0.0", "inputs": inputs})
    assert refused.status_code == 400, refused.text
    fields = refused.json()["error"]["fields"]
    assert field in fields and words in fields[field], fields


def test_inactive_and_unknown_types_are_refused(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "5.0.0")
    assert root.patch("/job-types/test/5.0.0", json={"is_active": False}).json()["deprecated"] is not None
    inactive = jt.run(bob, TEXT, ref="test@5.0.0")
    assert inactive.status_code == 409 and "inactive" in inactive.json()["error"]["message"]
    unknown = bob.post("/jobs", json={"job_type": "no-such-type@1.0.0", "inputs": {}})
    assert unknown.status_code == 400 and "job_type" in unknown.json()["error"]["fields"]
    neither = bob.post("/jobs", json={"name": "nothing to run"})
    assert neither.status_code == 400 and "command" in neither.json()["error"]["fields"]
    both = bob.post("/jobs", json={"command": "true", "job_type": "test@1.0.0"})
    assert both.status_code == 400 and "command" in both.json()["error"]["fields"]
    assert root.patch("/job-types/test/5.0.0", json={"is_active": True}).json()["deprecated"] is None


# ---- registry and tenancy -----------------------------------------------------------------------


def test_only_admins_register_change_and_delete_types(tenants: Tenants):
    bob, root = tenants["bob"], tenants["root"]
    body = variant(_set(jobVersion="6.0.0"))
    assert bob.post("/job-types", json=body).status_code == 403
    assert root.post("/job-types", json=body).status_code == 201
    assert bob.patch("/job-types/test/6.0.0", json={"is_paused": True}).status_code == 403
    assert bob.delete("/job-types/test/6.0.0").status_code == 403
    assert bob.get("/job-types/test/6.0.0").json()["configuration"]["settings"]["DB_PASS"] == "****"
    assert root.delete("/job-types/test/6.0.0").status_code == 204
    assert root.get("/job-types/test/6.0.0").status_code == 404


def test_a_type_jobs_reference_cannot_be_deleted(tenants: Tenants):
    refused = tenants["root"].delete("/job-types/test/1.0.0")
    assert refused.status_code == 409 and "deactivate" in refused.json()["error"]["message"]


def test_the_list_has_a_row_per_name_with_filters_and_order(tenants: Tenants):
    root = tenants["root"]
    seed = jt.manifest(name="word-count", title="Word count", tags=["words"])
    assert root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}).status_code == 201
    page = root.get("/job-types").json()
    rows = {row["name"]: row for row in page["results"]}
    assert page["count"] == len(rows) and {"test", "word-count"} <= set(rows)
    assert rows["test"]["num_versions"] >= 2 and rows["word-count"]["latest_version"] == "1.0.0"
    assert [r["name"] for r in root.get("/job-types", params={"keyword": "words"}).json()["results"]] == ["word-count"]
    names = [r["name"] for r in root.get("/job-types", params={"order": "-name"}).json()["results"]]
    assert names == sorted(names, reverse=True)
    assert root.patch("/job-types/word-count/1.0.0", json={"is_active": False}).status_code == 200
    assert "word-count" not in [r["name"] for r in root.get("/job-types").json()["results"]]
    hidden = root.get("/job-types", params={"is_active": "false"}).json()["results"]
    assert "word-count" in [r["name"] for r in hidden]
    versions = root.get("/job-types/test").json()
    assert versions["count"] >= 2 and "1.0.0" in [v["version"] for v in versions["results"]]
    assert tenants["bob"].get("/job-types").status_code == 200  # every user lists types


def test_a_job_names_a_type_by_name_alone_for_its_newest_active_version(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    seed = jt.manifest(name="latest-pick", jobVersion="1.10.0")
    assert root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}).status_code == 201
    seed = jt.manifest(name="latest-pick", jobVersion="1.9.0")
    assert root.post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}).status_code == 201
    job = finished(bob, jt.run(bob, TEXT, ref="latest-pick"))
    assert job["job_type"]["version"] == "1.10.0" and job["status"] == "COMPLETED", job


# ---- sweeps of a type ----------------------------------------------------------------------------


def sweep_of_type(client: httpx.Client, spec: dict) -> httpx.Response:
    body = {"job_type": "test@1.0.0", **spec}
    return client.post("/sweeps", data={"spec": json.dumps(body)},
                       files=[("file[]", ("in.txt", TEXT, "text/plain"))])


def test_a_sweep_over_a_types_json_input_runs_every_run_as_a_job_of_that_revision(tenants: Tenants):
    bob = tenants["bob"]
    created = sweep_of_type(bob, {
        "inputs": {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": "${n}"}},
        "variables": [{"name": "n", "values": [1, 4, 9]}],
    })
    assert created.status_code == 201, created.text
    sweep = bob.get(f"/sweeps/{created.json()['id']}", params={"wait": 60}, timeout=90).json()
    assert sweep["status"] == "COMPLETED", sweep
    assert sweep["spec"]["configuration"] is None or "DB_PASS" not in json.dumps(sweep["spec"])
    assert sweep["spec"]["resources"]["memory"] == 64 * 2**20 and sweep["spec"]["timeout_s"] == 60
    runs = bob.get(f"/sweeps/{sweep['id']}/runs").json()["results"]
    assert {r["job_type"]["revision"] for r in runs} == {1} and {r["kind"] for r in runs} == {"job_type"}
    for run in runs:
        length = run["variables"]["n"]
        assert run["inputs"]["json"] == {"READ_LENGTH": length}
        assert bob.get(f"/jobs/{run['id']}/files/output_text.txt").content == TEXT[:length]
    table = bob.get(f"/sweeps/{sweep['id']}/results").json()
    assert "total_input" in table["columns"] and "OUTPUT_TEXT" not in table["columns"]
    assert {row["total_input"] for row in table["rows"]} == {len(TEXT)}


def test_a_variable_named_like_an_input_fills_it_and_a_bad_value_refuses_the_sweep(tenants: Tenants):
    bob = tenants["bob"]
    created = sweep_of_type(bob, {"inputs": {"files": {"INPUT_TEXT": ["in.txt"]}},
                                  "cases": [{"READ_LENGTH": 2}, {"READ_LENGTH": 3}]})
    assert created.status_code == 201, created.text
    sweep = bob.get(f"/sweeps/{created.json()['id']}", params={"wait": 60}, timeout=90).json()
    assert sweep["status"] == "COMPLETED", sweep
    refused = sweep_of_type(bob, {"inputs": {"files": {"INPUT_TEXT": ["in.txt"]}},
                                  "cases": [{"READ_LENGTH": 2}, {"READ_LENGTH": "long"}]})
    assert refused.status_code == 400
    assert "run 1" in refused.json()["error"]["message"]
    assert "inputs.json.READ_LENGTH" in refused.json()["error"]["fields"]


def test_a_sweep_of_a_type_grows_with_runs_of_the_revision_it_pinned(tenants: Tenants):
    bob = tenants["bob"]
    created = sweep_of_type(bob, {
        "inputs": {"files": {"INPUT_TEXT": ["in.txt"]}},
        "variables": [{"name": "READ_LENGTH", "integer": {"low": 1, "high": 9}}],
        "design": {"type": "monte_carlo", "samples": 3, "seed": 4}})
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    assert bob.get(f"/sweeps/{sweep_id}", params={"wait": 60}, timeout=90).json()["status"] == "COMPLETED"

    grown = bob.post(f"/sweeps/{sweep_id}/extend", json={"samples": 2})
    assert grown.status_code == 202, grown.text
    done = bob.get(f"/sweeps/{sweep_id}", params={"wait": 60}, timeout=90).json()
    assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": 5}, done
    runs = sorted(bob.get(f"/sweeps/{sweep_id}/runs").json()["results"], key=lambda run: run["index"])
    assert [run["index"] for run in runs] == list(range(5))
    for run in runs:
        length = run["variables"]["READ_LENGTH"]
        assert run["kind"] == "job_type" and run["job_type"] == runs[0]["job_type"], run
        assert run["inputs"] == {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": length}}
        assert bob.get(f"/jobs/{run['id']}/files/output_text.txt").content == TEXT[:length]
    rows = bob.get(f"/sweeps/{sweep_id}/results").json()["rows"]
    assert [row["READ_LENGTH"] for row in rows] == [run["variables"]["READ_LENGTH"] for run in runs]


def test_an_adaptive_sweep_of_a_type_grows_by_its_batches(tenants: Tenants):
    register_version(tenants["root"], "9.1.0", command=(
        "head -c ${READ_LENGTH} ${INPUT_TEXT} > ${OUTPUT_DIR}/output_text.txt; "
        "printf '{\"TOTAL_INPUT\": %s}' ${READ_LENGTH} > ${OUTPUT_DIR}/seed.outputs.json"))
    bob = tenants["bob"]
    created = sweep_of_type(bob, {
        "job_type": "test@9.1.0", "inputs": {"files": {"INPUT_TEXT": ["in.txt"]}},
        "variables": [{"name": "READ_LENGTH", "integer": {"low": 1, "high": 9}}],
        "design": {"type": "monte_carlo", "samples": 3, "seed": 4},
        "until": {"output": "total_input", "rel_ci_half_width": 0.0001, "batch": 2, "max_samples": 7}})
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    done = wait_until(lambda: (lambda s: s if s["until"]["state"] != "growing" else None)(
        bob.get(f"/sweeps/{sweep_id}").json()), 120, "the adaptive sweep settled", every=0.2)
    assert done["until"]["state"] == "max_samples", done
    table = bob.get(f"/sweeps/{sweep_id}/results").json()
    assert len(table["rows"]) == 7 and {row["status"] for row in table["rows"]} == {"COMPLETED"}, table
    assert all(row["total_input"] == row["READ_LENGTH"] for row in table["rows"]), table["rows"]


def test_a_paused_type_holds_its_sweep_until_resumed(tenants: Tenants):
    root, bob = tenants["root"], tenants["bob"]
    register_version(root, "8.0.0")
    root.patch("/job-types/test/8.0.0", json={"is_paused": True})
    created = bob.post("/sweeps", data={"spec": json.dumps({
        "job_type": "test@8.0.0", "inputs": {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 2}},
        "cases": [{"u": 1}, {"u": 2}]})}, files=[("file[]", ("in.txt", TEXT, "text/plain"))])
    assert created.status_code == 201, created.text
    sweep_id = created.json()["id"]
    held = bob.get(f"/sweeps/{sweep_id}", params={"wait": 2}).json()
    assert held["counts"].get("QUEUED") == 2, held
    root.patch("/job-types/test/8.0.0", json={"is_paused": False})
    done = bob.get(f"/sweeps/{sweep_id}", params={"wait": 60}, timeout=90).json()
    assert done["status"] == "COMPLETED", done
