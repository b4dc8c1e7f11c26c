"""Attacks through job types on a multi-user server (tokens on, jobs under each user's own uid):
a user cannot publish, change or retire a type, cannot reach another user's binaries or the
server's files through a type's inputs, and runs an administrator's type as themself."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from orchestrator.config import Settings
from tests.support import job_types as jt
from tests.support.raw_http import Failures, refused
from tests.support.tenants import Tenants, tenants_on

TEXT = b"some input text\n"


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, dask_cluster) -> Iterator[Tenants]:
    with tenants_on(Settings(data_dir=tmp_path_factory.mktemp("type-attacks") / "data", port=0,
                             **dask_cluster.settings)) as tenants:
        jt.register(tenants["root"])
        seed = jt.manifest(jobVersion="2.0.0")
        seed["job"]["interface"]["command"] = (
            "id -u > ${OUTPUT_DIR}/output_text.txt; cat ${INPUT_TEXT} >> ${OUTPUT_DIR}/output_text.txt; "
            "echo '{\"TOTAL_INPUT\": 0}' > ${OUTPUT_DIR}/seed.outputs.json")
        assert tenants["root"].post("/job-types", json={"manifest": seed, "configuration": jt.CONFIGURATION}
                                    ).status_code == 201
        yield tenants


def test_users_cannot_publish_change_or_retire_types(tenants: Tenants):
    bob = tenants["bob"]
    failures = Failures()
    body = {"manifest": jt.manifest(name="bobs-type"), "configuration": jt.CONFIGURATION}
    for method, path, payload in [
        ("POST", "/job-types", body),
        ("POST", "/job-types", {**body, "manifest": jt.manifest()}),  # an edit of root's type
        ("PATCH", "/job-types/test/1.0.0", {"is_paused": True}),
        ("PATCH", "/job-types/test/1.0.0", {"configuration": {"settings": {"DB_HOST": "evil.example"}}}),
        ("PATCH", "/job-types/test/1.0.0", {"max_scheduled": 0}),
        ("DELETE", "/job-types/test/2.0.0", None),
    ]:
        response = bob.request(method, path, json=payload)
        if response.status_code != 403:
            failures.append(f"bob {method} {path}: {response.status_code} {response.text[:200]}")
    failures.check()
    details = tenants["root"].get("/job-types/test/1.0.0").json()
    assert details["revision_num"] == 1 and details["is_paused"] is False
    assert details["configuration"]["settings"]["DB_HOST"] == "db.example"
    assert tenants["root"].get("/job-types/bobs-type").status_code == 404


def test_an_admins_type_runs_as_the_user_who_submits(tenants: Tenants):
    bob = tenants["bob"]
    response = jt.run(bob, TEXT, ref="test@2.0.0")
    assert response.status_code == 201, response.text
    job = bob.get(f"/jobs/{response.json()['id']}", params={"wait": 60}, timeout=90).json()
    assert job["status"] == "COMPLETED", job
    uid, text = bob.get(f"/jobs/{job['id']}/files/output_text.txt").text.split("\n", 1)
    assert int(uid) != 0 and text == TEXT.decode()
    assert tenants["alice"].get(f"/jobs/{job['id']}").status_code == 404  # not alice's to see


def test_inputs_cannot_reach_another_users_binary(tenants: Tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    name = f"private-{uuid.uuid4().hex[:6]}"
    assert alice.post(f"/binaries/{name}", content=b"alice-secret").status_code == 201
    failures = Failures()
    for ref in [name, f"{name}@1", f"alice/{name}", f"alice/{name}@1"]:
        response = bob.post("/jobs", json={"job_type": "test@2.0.0", "inputs": {
            "files": {"INPUT_TEXT": [ref]}, "json": {"READ_LENGTH": 1}}})
        if response.status_code != 400 or b"alice-secret" in response.content:
            failures.append(f"bob input {ref!r}: {response.status_code} {response.text[:200]}")
    failures.check()


def test_a_url_input_reads_with_the_users_rights_only(tenants: Tenants):
    bob = tenants["bob"]
    data_dir = tenants.server.settings.data_dir
    for target in (data_dir / "secret.key", tenants.server.settings.database_path):
        response = bob.post("/jobs", json={"job_type": "test@2.0.0", "inputs": {
            "files": {"INPUT_TEXT": [f"file://{target}"]}, "json": {"READ_LENGTH": 1}}})
        assert response.status_code == 201, response.text
        job = bob.get(f"/jobs/{response.json()['id']}", params={"wait": 60}, timeout=90).json()
        assert job["status"] == "FAILED", job
        assert "staging inputs" in job["status_reason"]
        files = bob.get(f"/jobs/{job['id']}/files").json()["results"]
        assert [f["path"] for f in files if "INPUT_TEXT" in f["path"]] == []


@pytest.mark.parametrize("inputs", [
    {"files": {"../INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 1}},
    {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 1, "OUTPUT_DIR": "/"}},
    {"files": {"INPUT_TEXT": ["in.txt"]}, "json": {"READ_LENGTH": 1}, "env": {"PATH": "/tmp"}},
])
def test_inputs_cannot_name_what_the_type_does_not_declare(tenants: Tenants, inputs):
    bob = tenants["bob"]
    fields = {"job_type": "test@2.0.0", "inputs": json.dumps(inputs)}
    response = bob.post("/jobs", data=fields, files=[("file[]", ("in.txt", TEXT, "text/plain"))])
    refused(response, 400)


def test_a_typed_job_takes_no_env_or_binaries_of_its_own(tenants: Tenants):
    bob = tenants["bob"]
    for extra in ({"env": {"LD_PRELOAD": "/tmp/evil.so"}}, {"binaries": ["https://example.invalid/x"]},
                  {"secret_env": {"X": "y"}}, {"command": "cat /etc/shadow"}):
        response = bob.post("/jobs", json={"job_type": "test@2.0.0", "inputs": {"json": {"READ_LENGTH": 1}},
                                           **extra})
        refused(response, 400)


@pytest.mark.parametrize("path", [
    "/job-types/test/..%2F..%2Fjobs", "/job-types/..%2Fjobs/1.0.0", "/job-types/test/1.0.0/revisions/0",
    "/job-types/test/1.0.0/revisions/99999999999999999999", "/job-types/te%00st/1.0.0",
])
def test_odd_type_paths_are_404_never_500(tenants: Tenants, path: str):
    response = tenants["bob"].get(path)
    assert response.status_code in (400, 404), (path, response.status_code, response.text)
    assert response.json()["error"]["code"] in ("not_found", "validation_error")
