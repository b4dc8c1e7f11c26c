"""Bad input gets a 4xx JSON error naming the field; never a 500, a hang, or a dead server."""

from __future__ import annotations

import socket

import pytest

BAD_JOBS = [
    ({"command": "true", "surprise": 1}, "surprise"),
    ({"command": 5}, "command"),
    ({"command": ""}, "command"),
    ({"command": "   "}, "command"),
    ({"command": []}, "command"),
    ({"command": "true", "resources": {"cores": -1}}, "resources.cores"),
    ({"command": "true", "resources": {"gpus": -2}}, "resources.gpus"),
    ({"command": "true", "resources": {"memory": "lots"}}, "resources.memory"),
    ({"command": "true", "resources": "big"}, "resources"),
    ({"command": "true", "timeout_s": "soon"}, "timeout_s"),
    ({"command": "true", "timeout_s": -5}, "timeout_s"),
    ({"command": "true", "retries": -1}, "retries"),
    ({"command": "true", "env": {"1BAD": "x"}}, "env"),
    ({"command": "true", "env": {"A": 1}}, "env.A"),
    ({"command": "true", "name": "../etc"}, "name"),
    ({"command": "true", "binaries": ["../passwd"]}, "binaries"),
    ({"command": "true", "binaries": ["tool@latest"]}, "binaries"),
    ({}, "command"),
]


@pytest.mark.parametrize(("body", "field"), BAD_JOBS)
def test_bad_job_fields_are_named(server, body, field):
    response = server.http.post("/jobs", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(name == field or name.startswith(field + ".") for name in error["fields"]), error


@pytest.mark.parametrize("raw", [b"{bad json", b"[1, 2]", b"null", b"", b"\xff\xfe"])
def test_malformed_json_is_a_400(server, raw):
    response = server.http.post("/jobs", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("filename", ["../x", "/etc/passwd", "a/../../b", "..", "~/x", "a\\b"])
def test_path_escaping_file_names_are_refused(server, filename):
    response = server.http.post("/jobs", data={"command": "true"}, files=[("file[]", (filename, b"x"))])
    assert response.status_code == 400, response.text
    assert "file[]" in response.json()["error"]["fields"]
    assert server.http.get("/jobs").json()["count"] == 0


def test_malformed_multipart_is_a_400(server):
    body = b"--XYZ\r\nContent-Disposition: form-data; name=\"command\"\r\n\r\ntrue\r\n--XY"
    response = server.http.post(
        "/jobs", content=body, headers={"Content-Type": "multipart/form-data; boundary=XYZ"}
    )
    assert response.status_code == 400
    no_boundary = server.http.post("/jobs", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert no_boundary.status_code == 400


def test_unsupported_content_type_is_a_400(server):
    response = server.http.post("/jobs", content=b"command=true",
                                headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 400


@pytest.mark.parametrize("path", ["/jobs/nope", "/jobs/nope/logs", "/jobs/nope/files",
                                  "/jobs/nope/statuses", "/jobs/nope/result", "/binaries/nope",
                                  "/not-a-route"])
def test_unknown_ids_and_routes_are_404_json(server, path):
    response = server.http.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


@pytest.mark.parametrize("query", [{"page": "0"}, {"page_size": "1001"}, {"page": "x"},
                                   {"status": "DONE"}])
def test_bad_list_queries_are_400(server, query):
    response = server.http.get("/jobs", params=query)
    assert response.status_code == 400
    assert list(response.json()["error"]["fields"]) == [next(iter(query))]


def test_bad_log_queries_are_400(server):
    job = server.wait(server.submit(command="true")["id"])
    assert server.http.get(f"/jobs/{job['id']}/logs", params={"stream": "stdin"}).status_code == 400
    assert server.http.get(f"/jobs/{job['id']}/logs", params={"offset": "-1"}).status_code == 400
    assert server.http.get(f"/jobs/{job['id']}/logs", params={"follow": "maybe"}).status_code == 400


def test_wrong_method_is_a_405_json(server):
    response = server.http.put("/jobs")
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"


def test_oversized_upload_is_413_before_the_body_is_read(make_server):
    server = make_server(max_upload_bytes=10_000)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(
            b"POST /api/v1/binaries/big HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/octet-stream\r\nContent-Length: 50000000000\r\n\r\n"
            + b"x" * 1000
        )
        reply = sock.recv(65536).decode()
    assert reply.startswith("HTTP/1.1 413")
    assert '"too_large"' in reply
    assert server.http.get("/binaries").json()["count"] == 0
    assert server.http.get("/health").status_code == 200


def test_chunked_upload_over_the_limit_is_refused_and_not_kept(make_server):
    server = make_server(max_upload_bytes=10_000)

    def chunks():
        for _ in range(100):
            yield b"x" * 1000

    response = server.http.post("/binaries/big", content=chunks(),
                                headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 413
    assert server.http.get("/binaries").json()["count"] == 0
    assert server.http.get("/health").status_code == 200


def test_upload_within_the_limit_is_accepted(make_server):
    server = make_server(max_upload_bytes=10_000)
    response = server.http.post("/binaries/ok", content=b"x" * 9_000,
                                headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201


def test_wrong_method_names_the_allowed_ones_and_trailing_newlines_are_refused(server):
    refused = server.http.put("/jobs")
    assert refused.status_code == 405 and refused.json()["error"]["code"] == "method_not_allowed"
    assert refused.headers["Allow"] == "GET, POST, DELETE"
    for body in ({"command": "true", "name": "abc\n"}, {"command": "true", "env": {"A\n": "1"}}):
        assert server.http.post("/jobs", json=body).status_code == 400, body
    assert server.http.post("/binaries/x%0A", content=b"hello").status_code == 400
