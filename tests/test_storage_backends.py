"""End to end over each storage backend: a local folder and S3 (moto's server on 127.0.0.1).

Workers read and write storage themselves; the test cluster's worker reaches S3 through its
own configuration (FSSPEC_S3), so these also show credentials are never sent with tasks.
"""

from __future__ import annotations

import hashlib
import json

import pytest

from orchestrator import ChecksumMismatch, Orchestrator
from orchestrator.server.engine import Engine


def test_a_job_stages_inputs_and_stores_outputs_and_logs(any_server):
    server = any_server
    files = [("file[]", ("inputs/data.csv", b"x,y\n1,2\n")),
             ("file[]", ("run.sh", b"cat inputs/data.csv > copy.csv; head -c 100000 /dev/zero > zeros.bin; echo ran"))]
    response = server.http.post("/jobs", data={"command": "sh run.sh"}, files=files)
    assert response.status_code == 201, response.text
    job = server.wait(response.json()["id"])
    assert job["status"] == "COMPLETED", job
    listed = {f["path"]: f for f in server.http.get(f"/jobs/{job['id']}/files").json()["results"]}
    assert set(listed) == {"copy.csv", "zeros.bin"}
    assert listed["zeros.bin"]["sha256"] == hashlib.sha256(bytes(100000)).hexdigest()
    assert server.http.get(f"/jobs/{job['id']}/files/copy.csv").content == b"x,y\n1,2\n"
    part = server.http.get(f"/jobs/{job['id']}/files/zeros.bin", headers={"Range": "bytes=99990-"})
    assert part.status_code == 206 and part.content == bytes(10)
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "ran\n"


def test_binaries_round_trip_with_checksums(any_server):
    server = any_server
    data = bytes(range(256)) * 40_000  # 10 MiB: several S3 multipart parts
    first = server.http.post("/binaries/tool", content=data)
    second = server.http.post("/binaries/tool", content=b"v2")
    assert first.status_code == second.status_code == 201
    assert (first.json()["version"], second.json()["version"]) == (1, 2)
    download = server.http.get("/binaries/tool/content", params={"version": 1, "verify": "true"})
    assert download.status_code == 200 and download.content == data
    assert download.headers["X-Checksum-Sha256"] == hashlib.sha256(data).hexdigest()
    job = server.wait(server.submit(command="./tool", binaries=["tool@2"])["id"])
    assert job["status"] == "FAILED"  # b"v2" is not a program, but it was staged:
    assert "exit code" in job["status_reason"] or "Exec format" in job["status_reason"], job


def test_a_sweep_renders_templates_and_collects_results(any_server):
    server = any_server
    assert server.http.post("/binaries/calc.tmpl", content=b"echo '{\"double\": '$((${x}*2))'}'").status_code == 201
    created = server.http.post("/sweeps", json={
        "command": "sh calc.sh > outputs.json",
        "variables": [{"name": "x", "values": [1, 2, 3]}],
        "templates": [{"source": "calc.tmpl", "target": "calc.sh"}],
    })
    assert created.status_code == 201, created.text
    sweep = server.wait_sweep(created.json()["id"])
    assert sweep["counts"] == {"COMPLETED": 3}, sweep
    results = server.http.get(f"/sweeps/{sweep['id']}/results").json()
    assert sorted(row["double"] for row in results["rows"]) == [2, 4, 6]


def test_credentials_never_travel_with_tasks_or_records(make_server, s3):
    secret = "not-a-real-secret-4f9a"
    server = make_server(storage=f"s3://{s3.new_bucket()}/x",
                         storage_options={**s3.options, "secret": secret, "key": "k-4f9a"})
    engine: Engine = server.running.service.engine
    created = server.http.post("/jobs", json={"command": "true", "submit": False})
    job = server.running.service.jobs.get(created.json()["id"])
    payload = json.dumps(engine._run_spec(job))
    assert secret not in payload and "k-4f9a" not in payload and "storage_url" in payload
    assert secret not in created.text
    assert secret not in server.http.get("/openapi.json").text


@pytest.mark.parametrize("path", ["/jobs", "/binaries", "/sweeps"])
def test_listings_answer_on_both_backends(any_server, path):
    assert any_server.http.get(path).status_code == 200


def test_verify_catches_stored_bytes_that_changed(server, tmp_path):
    job = server.wait(server.submit(command="echo original > out.txt")["id"])
    assert server.http.get(f"/jobs/{job['id']}/files/out.txt", params={"verify": "true"}).status_code == 200
    stored = server.running.service.storage.path(f"jobs/{job['id']}/outputs/out.txt")
    with open(stored, "r+b") as handle:
        handle.write(b"tampered")
    response = server.http.get(f"/jobs/{job['id']}/files/out.txt", params={"verify": "true"})
    assert response.status_code == 409 and response.json()["error"]["code"] == "checksum_mismatch"
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    with Orchestrator.connect(server.url) as orch, pytest.raises(ChecksumMismatch):
        orch.job(job["id"]).download("out.txt", downloads, verify=True)
    assert list(downloads.iterdir()) == []  # nothing half-checked left behind


def test_jobs_and_sweeps_report_the_bytes_they_store(any_server):
    server = any_server
    files = [("file[]", ("input.bin", bytes(1000)))]
    created = server.http.post("/jobs", data={"command": "head -c 5000 /dev/zero > out.bin; echo 12345"},
                               files=files)
    job = server.wait(created.json()["id"])
    assert created.json()["storage_bytes"] == 1000  # its input, once stored
    assert job["storage_bytes"] == 1000 + 5000 + len("12345\n")  # + outputs + logs

    sweep = server.http.post("/sweeps", data={"spec": json.dumps({
        "command": "cat shared.txt > out.txt", "variables": [{"name": "x", "values": [1, 2]}]})},
        files=[("file[]", ("shared.txt", b"0123456789"))])
    assert sweep.status_code == 201, sweep.text
    done = server.wait_sweep(sweep.json()["id"])
    assert done["storage_bytes"] == 10 + 2 * 10  # the shared file, and each run's copy of it
