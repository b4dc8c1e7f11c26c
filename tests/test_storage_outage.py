"""The S3 server goes away mid-job and comes back: clear errors while it is gone, nothing
recorded as stored that was not, and everything works again without a restart."""

from __future__ import annotations


def test_s3_down_mid_job_then_back(make_server, s3):
    bucket = s3.new_bucket()
    server = make_server(storage=f"s3://{bucket}/orchestrator", storage_options=s3.options)
    assert server.http.post("/binaries/stored_before", content=b"echo hi\n").status_code == 201
    job = server.submit(command="sleep 2; echo result > out.txt; echo done")
    server.wait_for_status(job["id"], "RUNNING")
    s3.stop()
    try:
        upload = server.http.post("/binaries/tool", content=b"#!/bin/sh\n")
        assert upload.status_code == 503, upload.text
        error = upload.json()["error"]
        assert error["code"] == "storage_unavailable" and "storage" in error["message"]
        staging = server.wait(server.submit(command="sh stored_before", binaries=["stored_before"])["id"], timeout=90)
        assert staging["status"] == "FAILED", staging
        assert staging["status_reason"].startswith("storage error while staging inputs"), staging
        ended = server.wait(job["id"], timeout=90)
        assert ended["status"] == "FAILED", ended
        assert ended["status_reason"].startswith("storage error while storing logs and outputs"), ended
        assert server.http.get(f"/jobs/{job['id']}/files").json()["count"] == 0  # nothing unstored listed
        logs = server.http.get(f"/jobs/{job['id']}/logs")
        assert logs.status_code == 503 and logs.json()["error"]["code"] == "storage_unavailable"
    finally:
        s3.start()
    s3.recreate_bucket(bucket)  # moto keeps objects in memory: a restarted one starts empty
    again = server.wait(server.submit(command="echo back > out.txt")["id"], timeout=60)
    assert again["status"] == "COMPLETED", again
    assert server.http.get(f"/jobs/{again['id']}/files/out.txt").content == b"back\n"
    assert server.http.post("/binaries/tool", content=b"#!/bin/sh\n").status_code == 201
