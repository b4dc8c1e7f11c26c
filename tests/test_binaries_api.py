"""Binaries: upload raw or multipart, versions, download, delete, and jobs that stage them."""

from __future__ import annotations

import hashlib


def test_raw_upload_records_size_sha256_and_content_type(server):
    body = b"#!/bin/sh\necho tool v1\n"
    response = server.http.post("/binaries/tool.sh", content=body, headers={"Content-Type": "text/x-sh"})
    assert response.status_code == 201
    assert response.headers["Location"] == "/api/v1/binaries/tool.sh"
    record = response.json()
    assert record["version"] == 1
    assert record["size"] == len(body)
    assert record["sha256"] == hashlib.sha256(body).hexdigest()
    assert record["content_type"] == "text/x-sh"
    assert record["uploaded_at"].endswith("Z") or "+00:00" in record["uploaded_at"]


def test_reupload_makes_a_new_version_and_jobs_pin_theirs(server):
    server.http.post("/binaries/tool.sh", content=b"echo v1", headers={"Content-Type": "text/plain"})
    first = server.wait(server.submit(command="sh tool.sh", binaries=["tool.sh"])["id"])
    server.http.post("/binaries/tool.sh", content=b"echo v2", headers={"Content-Type": "text/plain"})
    second = server.wait(server.submit(command="sh tool.sh", binaries=["tool.sh"])["id"])
    pinned = server.wait(server.submit(command="sh tool.sh", binaries=["tool.sh@1"])["id"])
    assert first["binaries"] == ["tool.sh@1"] and second["binaries"] == ["tool.sh@2"]
    logs = [server.http.get(f"/jobs/{j['id']}/logs").text for j in (first, second, pinned)]
    assert logs == ["v1\n", "v2\n", "v1\n"]
    shown = server.http.get("/binaries/tool.sh").json()
    assert shown["version"] == 2 and shown["versions"] == [1, 2]
    assert server.http.get("/binaries/tool.sh", params={"version": 1}).json()["version"] == 1


def test_multipart_upload_and_download(server):
    data = bytes(range(256)) * 100
    response = server.http.post("/binaries", files={"file": ("blob.bin", data)})
    assert response.status_code == 201, response.text
    assert response.json()["name"] == "blob.bin"
    download = server.http.get("/binaries/blob.bin/content")
    assert download.content == data
    assert download.headers["X-Checksum-Sha256"] == hashlib.sha256(data).hexdigest()
    ranged = server.http.get("/binaries/blob.bin/content", headers={"Range": "bytes=-10"})
    assert ranged.status_code == 206 and ranged.content == data[-10:]


def test_list_shows_latest_versions(server):
    for name in ("b-tool", "a-tool", "b-tool"):
        server.http.post(f"/binaries/{name}", content=b"x", headers={"Content-Type": "text/plain"})
    listing = server.http.get("/binaries").json()
    assert [(r["name"], r["version"]) for r in listing["results"]] == [("a-tool", 1), ("b-tool", 2)]


def test_delete_removes_every_version(server):
    server.http.post("/binaries/gone", content=b"x", headers={"Content-Type": "text/plain"})
    assert server.http.delete("/binaries/gone").status_code == 204
    assert server.http.get("/binaries/gone").status_code == 404
    assert server.http.get("/binaries/gone/content").status_code == 404
    assert not server.running.service.storage.exists("binaries/gone")


def test_job_naming_an_unknown_binary_is_refused(server):
    response = server.http.post("/jobs", json={"command": "true", "binaries": ["missing.sh"]})
    assert response.status_code == 400
    assert response.json()["error"]["fields"] == {"binaries.0": "no binary 'missing.sh' uploaded"}


def test_binary_from_a_url_is_staged(server, tmp_path):
    source = tmp_path / "remote.txt"
    source.write_text("from a URL\n")
    job = server.wait(server.submit(command="cat remote.txt", binaries=[f"file://{source}"])["id"])
    assert job["status"] == "COMPLETED"
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "from a URL\n"
