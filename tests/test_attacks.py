"""Attacks on the running server over real HTTP (httpx and raw sockets, 127.0.0.1 only).

Every attack must be refused cleanly: a 4xx with the JSON error body
`{"error": {"code", "message", "fields"?}}`, never a 500 and never a hang. Nothing may escape
(canary files planted around the storage root are never served nor changed, nothing is
written outside the job's folder, no shell interprets a field that is not a command), and
other clients keep being served while it happens. Counts and waits are bounded; nothing
asserts how fast the server is, only that it answers within a generous limit.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from orchestrator.config import Settings
from tests.conftest import Server, start_test_server, stop_test_server
from tests.support import wait_until
from tests.support.raw_http import (
    HANG_S,
    Failures,
    Reply,
    address,
    bystander,
    chunked,
    exchange,
    multipart,
    names_field,
    read_reply,
    refused,
    request,
)
from tests.support.tenants import Tenants, tenants_on

UPLOAD_LIMIT = 2_000_000
JSON_LIMIT = 1_048_576
FILE_FIELDS = ("file[]", "file", "files", "files[]")
STORAGE_AREAS = ("jobs", "sweeps", "binaries", "_tmp")
DEEP = 100_000
TRICKLE_PAUSE_S = 0.3  # between a slow client's bytes: seconds per request, far past a normal one


# ---- the target: one server with canaries planted around its storage ----------------------


@dataclass
class Target:
    server: Server
    root: Path  # holds the data folder; a canary lies here too
    data_dir: Path
    storage_root: Path
    secret: bytes
    canaries: list[Path]

    @property
    def http(self) -> httpx.Client:
        return self.server.http

    def intact(self) -> None:
        for canary in self.canaries:
            assert canary.read_bytes() == self.secret, f"{canary} was changed"

    def untouched(self) -> None:
        """Canaries intact and nothing in storage outside the areas jobs, sweeps and binaries own."""
        self.intact()
        storage = self.storage_root.relative_to(self.root).as_posix()
        strays = [p for p in self.snapshot()
                  if p.startswith(storage + "/") and not p.startswith(tuple(f"{storage}/{a}/" for a in STORAGE_AREAS))
                  and p != f"{storage}/canary.txt"]
        assert strays == []

    def snapshot(self) -> dict[str, tuple[int, int]]:
        """Every file under the root (the SQLite files aside) with its size and mtime."""
        files = {}
        for path in self.root.rglob("*"):
            if path.is_file() and not path.name.startswith("jobs.db"):
                stat = path.stat()
                files[path.relative_to(self.root).as_posix()] = (stat.st_size, stat.st_mtime_ns)
        return files

    def escaped(self, before: dict, after: dict) -> list[str]:
        """Files added or changed outside the storage areas that jobs, sweeps and binaries own."""
        storage = self.storage_root.relative_to(self.root).as_posix()
        allowed = tuple(f"{storage}/{area}/" for area in STORAGE_AREAS)
        return sorted(p for p, v in after.items() if before.get(p) != v and not p.startswith(allowed))

    def storage_added(self, before: dict) -> list[str]:
        storage = self.storage_root.relative_to(self.root).as_posix() + "/"
        return sorted(p for p in self.snapshot() if p not in before and p.startswith(storage))

    def counts(self) -> tuple[int, int, int]:
        return tuple(self.http.get(path).json()["count"] for path in ("/jobs", "/sweeps", "/binaries"))

    def nothing_kept(self, before_files: dict, before_counts: tuple[int, int, int]) -> None:
        """No job, sweep or binary recorded, and no byte of the attack left in storage."""
        wait_until(lambda: not self.storage_added(before_files), 30,
                   "storage emptied of the attack's bytes")
        assert self.counts() == before_counts
        self.intact()


@pytest.fixture(scope="module")
def target(tmp_path_factory, dask_cluster) -> Iterator[Target]:
    root = tmp_path_factory.mktemp("attacks")
    data_dir = root / "data"
    settings = Settings(data_dir=data_dir, port=0, **dask_cluster.settings,
                        max_upload_bytes=UPLOAD_LIMIT, max_json_bytes=JSON_LIMIT)
    server = start_test_server(settings)
    storage_root = Path(server.running.service.storage.root)
    secret = f"CANARY-{uuid.uuid4().hex}".encode()
    canaries = [root / "canary.txt", data_dir / "canary.txt", storage_root / "canary.txt"]
    for canary in canaries:
        canary.write_bytes(secret)
    target = Target(server, root, data_dir, storage_root, secret, canaries)
    yield target
    try:
        target.untouched()  # after every attack of the module, in whatever order they ran
    finally:
        stop_test_server(server)


@pytest.fixture(scope="module")
def finished_job(target: Target) -> dict:
    job = target.server.submit(command="mkdir sub; echo inside > out.txt; echo deeper > sub/in.txt")
    job = target.server.wait(job["id"])
    assert job["status"] == "COMPLETED", job
    return job


@pytest.fixture(scope="module")
def other_job(target: Target) -> dict:
    job = target.server.wait(target.server.submit(command="echo other > out.txt")["id"])
    assert job["status"] == "COMPLETED", job
    return job


@pytest.fixture(scope="module")
def saved_job(target: Target) -> dict:
    response = target.http.post("/jobs", json={"command": "true", "submit": False})
    assert response.status_code == 201, response.text
    return response.json()


# ---- path traversal ---------------------------------------------------------------------


def test_output_download_never_leaves_the_job_folder(target, finished_job, other_job):
    base = f"/api/v1/jobs/{finished_job['id']}/files/"
    good = exchange(target.server, request("GET", base + "sub/in.txt"))
    assert good.status == 200 and good.body == b"deeper\n"
    storage = str(target.storage_root).lstrip("/")
    evil = [
        "../../../canary.txt", "../../../../canary.txt", "../../../../../canary.txt",
        "sub/../../../../canary.txt", "../inputs/x", "../logs/stdout.log",
        f"../../{other_job['id']}/outputs/out.txt",
        "%2e%2e/%2e%2e/%2e%2e/canary.txt", "%2E%2E%2F%2E%2E%2F%2E%2E%2Fcanary.txt",
        "..%2f..%2f..%2fcanary.txt", "..%2F..%2F..%2F..%2Fcanary.txt",
        "%252e%252e%252f%252e%252e%252f%252e%252e%252fcanary.txt",
        "..%5c..%5c..%5ccanary.txt", "sub%5c..%5c..%5c..%5c..%5ccanary.txt",
        "/" + storage + "/canary.txt", quote("/" + storage + "/canary.txt", safe=""),
        "/etc/passwd", "%2Fetc%2Fpasswd", "file:%2F%2F%2Fetc%2Fpasswd",
        "out.txt%00", "out.txt%00.png", "%00", "..%00/..%00/..%00/canary.txt",
        "....//....//....//canary.txt", "..;/..;/..;/canary.txt",
        "%c0%ae%c0%ae/%c0%ae%c0%ae/%c0%ae%c0%ae/canary.txt", "..%c0%af..%c0%af..%c0%afcanary.txt",
        "%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/canary.txt",
    ]
    with bystander(target.server):
        for path in evil:
            reply = exchange(target.server, request("GET", base + path))
            refused(reply, 400, 404)
            assert target.secret not in reply.body, path
            assert b"other" not in reply.body and b"root:" not in reply.body, path
        for raw in [b"..\\..\\..\\canary.txt", b"sub\\..\\..\\..\\..\\canary.txt"]:
            reply = exchange(target.server, request("GET", base.encode() + raw))
            assert 400 <= reply.status < 500, reply
            assert target.secret not in reply.body
    target.intact()


def test_traversal_in_ids_and_names_of_other_routes_is_refused(target, finished_job):
    job = finished_job["id"]
    targets = [
        "/api/v1/jobs/../../../canary.txt", "/api/v1/jobs/..%2F..%2F..%2Fcanary.txt",
        f"/api/v1/jobs/{job}%2F..%2F..%2Fcanary.txt/files/out.txt",
        f"/api/v1/jobs/{job}/../../../canary.txt",
        "/api/v1/binaries/..", "/api/v1/binaries/../content", "/api/v1/binaries/..%2F..%2Fcanary.txt",
        "/api/v1/binaries/..%2F..%2F..%2Fcanary.txt/content", "/api/v1/binaries/%2e%2e/content",
        "/api/v1/binaries/%2Fetc%2Fpasswd/content", "/api/v1/binaries/canary.txt%00/content",
        "/api/v1/sweeps/..%2F..%2Fcanary.txt", "/api/v1/sweeps/../../canary.txt/results",
        "/api/v1/../../canary.txt", "/api/v1/%2e%2e/%2e%2e/canary.txt", "/../canary.txt",
    ]
    with bystander(target.server):
        for path in targets:
            reply = exchange(target.server, request("GET", path))
            refused(reply, 400, 404)
            assert target.secret not in reply.body, path
        for path in ["/api/v1/binaries/..%2F..%2Fcanary.txt", "/api/v1/binaries/..",
                     "/api/v1/binaries/..%2F..%2F..", "/api/v1/jobs/..%2F..%2Fdata"]:
            refused(exchange(target.server, request("DELETE", path)), 400, 404)
    target.intact()
    assert target.data_dir.is_dir() and target.storage_root.is_dir()


@pytest.mark.parametrize("stream", [
    "../../../../canary.txt", "../stdout.log", "stdout/../../outputs/out.txt", "/etc/passwd",
    "..%2f..%2fcanary.txt", "stdout.log", "STDOUT", "stdin", "stdout/", "./stdout",
    str(Path("/") / "tmp" / "canary.txt"),
])
def test_log_stream_names_cannot_point_elsewhere(target, finished_job, stream):
    response = target.http.get(f"/jobs/{finished_job['id']}/logs", params={"stream": stream})
    error = refused(response, 400)
    assert names_field(error, "stream"), error
    assert target.secret not in response.content


ESCAPING_FILE_NAMES = [
    "../canary.txt", "../../canary.txt", "../../../canary.txt", "../../../../canary.txt",
    "inputs/../../../../canary.txt", "a/../../b", "..", ".", "./", "", " ", "/canary.txt",
    "//canary.txt", "~/canary.txt", "..\\canary.txt", "a\\..\\..\\canary.txt", "C:\\canary.txt",
    "C:canary.txt", "a\x00b", "../\x00", "sub/..", "sub/../..",
]


def test_job_input_file_names_cannot_escape(target):
    before, counts = target.snapshot(), target.counts()
    names = [*ESCAPING_FILE_NAMES, str(target.storage_root / "canary.txt"), str(target.root / "canary.txt")]
    with bystander(target.server):
        for i, name in enumerate(names):
            field = FILE_FIELDS[i % len(FILE_FIELDS)]
            body, content_type = multipart([("command", "echo ran > ran.txt")], [(field, name, b"overwritten")])
            reply = exchange(target.server, request("POST", "/api/v1/jobs", [("Content-Type", content_type)], body))
            error = refused(reply, 400)
            assert error["code"] == "validation_error", (name, error)
        # RFC 2231 names are decoded by some parsers: refused, or kept inside the job folder
        for encoded in ["..%2F..%2F..%2Fcanary.txt", "%2Fetc%2Fpasswd", "..%5C..%5Ccanary.txt"]:
            disposition = b"form-data; name=\"file[]\"; filename*=UTF-8''" + encoded.encode()
            body, content_type = multipart([("command", "true")], raw_parts=[(disposition, b"overwritten")])
            response = target.http.post("/jobs", content=body, headers={"Content-Type": content_type})
            if response.status_code == 201:
                job = target.server.wait(response.json()["id"])
                for path in job["files"]:
                    assert not path.startswith("/") and ".." not in path.split("/"), job["files"]
                assert target.http.delete(f"/jobs/{job['id']}").status_code == 204
            else:
                refused(response, 400)
        # a `files` field naming paths instead of uploading them
        body, content_type = multipart([("command", "true"), ("files", '["../../canary.txt"]')])
        refused(target.http.post("/jobs", content=body, headers={"Content-Type": content_type}), 400)
        refused(target.http.post("/jobs", json={"command": "true", "files": ["../../canary.txt"]}), 400)
    target.nothing_kept(before, counts)
    assert target.escaped(before, target.snapshot()) == []


def test_odd_but_harmless_file_names_stay_inside_the_job_folder(target):
    before = target.snapshot()
    names = ["%2e%2e%2fcanary.txt", "..%2f..%2fcanary.txt", "...", "..../x", "a/./b.txt",
             "-rf", "--help", "..a", "a..", ".hidden", "ünï.txt", "sp ace"]
    body, content_type = multipart([("command", "ls -A -R > listing.txt")],
                                   [("file[]", name, name.encode()) for name in names])
    response = target.http.post("/jobs", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    job = target.server.wait(response.json()["id"])
    assert job["status"] == "COMPLETED", job
    assert "a/b.txt" in job["files"] and "%2e%2e%2fcanary.txt" in job["files"]
    for path in job["files"]:
        assert not path.startswith("/") and ".." not in path.split("/"), path
    stored = {p for p in target.storage_added(before)}
    inside = f"jobs/{job['id']}/"
    storage = target.storage_root.relative_to(target.root).as_posix() + "/"
    assert all(p.removeprefix(storage).startswith(inside) for p in stored), stored
    assert target.escaped(before, target.snapshot()) == []
    target.intact()


def test_sweep_file_names_and_template_paths_cannot_escape(target):
    before, counts = target.snapshot(), target.counts()
    spec = {"command": "true", "cases": [{"u": 1}]}
    with bystander(target.server):
        for i, name in enumerate(ESCAPING_FILE_NAMES[:14]):
            body, content_type = multipart([("spec", json.dumps(spec))], [(FILE_FIELDS[i % 4], name, b"x")])
            refused(target.http.post("/sweeps", content=body, headers={"Content-Type": content_type}), 400)
        files_field = target.http.post("/sweeps", json={**spec, "files": ["../../canary.txt"]})
        assert names_field(refused(files_field, 400), "files"), files_field.text
        targets = ["../escape", "../../canary.txt", "../../../../canary.txt", "/abs",
                   str(target.storage_root / "canary.txt"), "a/../../b", "..", ".", "", "~/x",
                   "a\\b", "..\\canary.txt", "a\x00b", "C:\\x", "sub/../.."]
        for where in targets:
            for dry_run in (True, False):
                response = target.http.post("/sweeps", json={
                    **spec, "dry_run": dry_run, "templates": [{"source": "t.tmpl", "target": where}]})
                assert names_field(refused(response, 400), "templates.0.target"), (where, response.text)
        body, content_type = multipart(
            [("spec", json.dumps({**spec, "templates": [{"source": "t.tmpl", "target": "../../../canary.txt"}]}))],
            [("file[]", "t.tmpl", b"overwritten ${u}")])
        refused(target.http.post("/sweeps", content=body, headers={"Content-Type": content_type}), 400)
        sources = ["../../canary.txt", "../../../canary.txt", "/etc/passwd",
                   str(target.storage_root / "canary.txt"), "file://" + str(target.root / "canary.txt"),
                   "..", "x/../../canary.txt", "%2e%2e", "a\\..\\canary.txt", "tool@99x"]
        for source in sources:
            response = target.http.post("/sweeps", json={
                **spec, "dry_run": True, "templates": [{"source": source, "target": "t.txt"}]})
            error = refused(response, 400)
            assert names_field(error, "templates.0"), (source, error)
            assert target.secret not in response.content
    target.nothing_kept(before, counts)
    assert target.escaped(before, target.snapshot()) == []


BAD_BINARY_NAMES = ["..", ".", "../canary.txt", "../../canary.txt", "a/../../canary.txt",
                    "/etc/passwd", ".hidden", "a\\..\\b", "a\x00b", "a b", "~", "-rf", "a;b",
                    "$(id)", "a\r\nX-Injected: 1"]


def test_binary_names_cannot_escape(target):
    before, counts = target.snapshot(), target.counts()
    names = [*BAD_BINARY_NAMES, str(target.storage_root / "canary.txt")]
    with bystander(target.server):
        for name in names:
            q = quote(name, safe="")
            raw = exchange(target.server, request(
                "POST", f"/api/v1/binaries/{q}", [("Content-Type", "application/octet-stream")], b"overwritten"))
            refused(raw, 400, 404)
            by_query = exchange(target.server, request(
                "POST", f"/api/v1/binaries?name={q}", [("Content-Type", "application/octet-stream")], b"overwritten"))
            refused(by_query, 400, 404)
            body, content_type = multipart(files=[("file", name, b"overwritten")])
            refused(target.http.post("/binaries", content=body, headers={"Content-Type": content_type}), 400)
            for method, suffix in [("GET", ""), ("GET", "/content"), ("DELETE", "")]:
                reply = exchange(target.server, request(method, f"/api/v1/binaries/{q}{suffix}"))
                refused(reply, 400, 404)
                assert target.secret not in reply.body
            job = target.http.post("/jobs", json={"command": "true", "binaries": [name]})
            assert names_field(refused(job, 400), "binaries"), job.text
    target.nothing_kept(before, counts)
    assert target.escaped(before, target.snapshot()) == []


def test_a_url_binary_named_dot_dot_never_writes_outside(target):
    before = target.snapshot()
    response = target.http.post("/jobs", json={"command": "true", "binaries": [f"file://{target.root}/.."]})
    if response.status_code == 201:
        assert target.server.wait(response.json()["id"])["status"] == "FAILED"
    else:
        assert names_field(refused(response, 400), "binaries"), response.text
    assert target.escaped(before, target.snapshot()) == []
    target.intact()


def test_output_symlinks_are_never_followed(target):
    command = (f"ln -s {target.root / 'canary.txt'} leak.txt; ln -s {target.storage_root} root; "
               f"ln -s / slash; mkdir d; ln -s {target.data_dir} d/data; echo ok > real.txt")
    job = target.server.wait(target.server.submit(command=command)["id"])
    listing = target.http.get(f"/jobs/{job['id']}/files", params={"page_size": 1000}).json()
    assert [f["path"] for f in listing["results"]] == ["real.txt"]
    for path in ["leak.txt", "root/canary.txt", "slash/etc/passwd", "d/data/canary.txt"]:
        reply = exchange(target.server, request("GET", f"/api/v1/jobs/{job['id']}/files/{path}"))
        refused(reply, 404)
        assert target.secret not in reply.body


# ---- header injection -------------------------------------------------------------------


def _no_injected_header(reply: Reply) -> None:
    assert reply.header("X-Injected") is None, reply.head
    assert b"\r\nX-Injected" not in reply.head and b"\nX-Injected" not in reply.head
    for name, value in reply.headers:
        assert "\r" not in value and "\n" not in value, (name, value)


def test_crlf_in_names_never_reaches_a_response_header(target):
    injected = ["a%0D%0AX-Injected:%201", "a%0AX-Injected:%201", "a%0DX-Injected:%201",
                "a%E5%98%8A%E5%98%8DX-Injected:%201"]  # U+560A U+560D: CR/LF in some decoders
    with bystander(target.server):
        for name in injected:
            reply = exchange(target.server, request(
                "POST", f"/api/v1/binaries/{name}", [("Content-Type", "text/plain")], b"x"))
            refused(reply, 400, 404)
            _no_injected_header(reply)
            reply = exchange(target.server, request(
                "POST", f"/api/v1/binaries?name={name}", [("Content-Type", "text/plain")], b"x"))
            refused(reply, 400, 404)
            _no_injected_header(reply)
            for suffix in ("", "/content"):
                reply = exchange(target.server, request("GET", f"/api/v1/binaries/{name}{suffix}"))
                refused(reply, 400, 404)
                _no_injected_header(reply)
            reply = exchange(target.server, request("GET", f"/api/v1/jobs?search={name}&page_size=1"))
            assert reply.status in (200, 400), reply
            _no_injected_header(reply)
        body, content_type = multipart(files=[("file", b"tool\rX-Injected: 1", b"x")])
        reply = exchange(target.server, request("POST", "/api/v1/binaries", [("Content-Type", content_type)], body))
        refused(reply, 400)
        _no_injected_header(reply)
        for bad_name in ["a\r\nX-Injected: 1", "a\nb", "a\rb"]:
            refused(target.http.post("/jobs", json={"command": "true", "name": bad_name}), 400)
            refused(target.http.post("/sweeps", json={"command": "true", "name": bad_name, "cases": [{"u": 1}]}), 400)


def test_output_file_names_are_quoted_in_content_disposition(target):
    command = (r"""printf x > "$(printf 'evil\r\nX-Injected: yes')"; """
               r"""printf y > 'q"; filename="x.sh'; printf z > "$(printf 'nl\nX-Injected: 2')" """)
    job = target.server.wait(target.server.submit(command=command)["id"])
    assert job["status"] == "COMPLETED", job
    paths = [f["path"] for f in target.http.get(f"/jobs/{job['id']}/files").json()["results"]]
    assert len(paths) == 3, paths
    for path in paths:
        reply = exchange(target.server, request("GET", f"/api/v1/jobs/{job['id']}/files/{quote(path, safe='')}"))
        assert reply.status == 200, (path, reply)
        assert reply.body in (b"x", b"y", b"z")
        _no_injected_header(reply)
        disposition = reply.header("Content-Disposition") or ""
        assert 'filename="x.sh' not in disposition, disposition
        assert re.fullmatch(r"attachment; filename\*=UTF-8''[A-Za-z0-9%._~-]+", disposition), disposition


# ---- oversized bodies -------------------------------------------------------------------


def _oversize_routes(saved_id: str) -> list[tuple[str, str, str]]:
    return [
        ("POST", "/api/v1/jobs", "application/json"),
        ("POST", "/api/v1/jobs", "multipart/form-data; boundary=xyz"),
        ("POST", "/api/v1/sweeps", "application/json"),
        ("POST", "/api/v1/sweeps", "multipart/form-data; boundary=xyz"),
        ("POST", "/api/v1/binaries/big", "application/octet-stream"),
        ("POST", "/api/v1/binaries", "multipart/form-data; boundary=xyz"),
        ("PATCH", f"/api/v1/jobs/{saved_id}", "application/json"),
        ("POST", "/api/v1/jobs/stop", "application/json"),
        ("DELETE", "/api/v1/jobs", "application/json"),
        ("POST", f"/api/v1/jobs/{saved_id}/submit", "application/json"),
    ]


def test_declared_oversized_bodies_are_413_json(target, saved_job):
    before, counts = target.snapshot(), target.counts()
    failures = Failures()
    with bystander(target.server):
        for method, path, content_type in _oversize_routes(saved_job["id"]):
            for declared in (10**12, UPLOAD_LIMIT + 2 * 2**20 if "json" not in content_type else JSON_LIMIT + 1):
                reply = exchange(target.server, request(
                    method, path, [("Content-Type", content_type)], b"{" + b" " * 999, length=declared))
                failures.expect_refused(f"{method} {path} [{content_type}] Content-Length {declared}", reply, 413)
    failures.check()
    target.nothing_kept(before, counts)
    assert target.http.get(f"/jobs/{saved_job['id']}").json()["status"] == "CREATED"


def test_chunked_oversized_json_is_413_json(target, saved_job):
    before, counts = target.snapshot(), target.counts()
    piece = b" " * 65536
    pieces = (JSON_LIMIT // len(piece)) + 4
    failures = Failures()
    with bystander(target.server):
        for method, path, content_type in _oversize_routes(saved_job["id"]):
            if "json" not in content_type:
                continue
            head = request(method, path, [("Content-Type", content_type), ("Transfer-Encoding", "chunked")])
            reply = exchange(target.server, [head, *chunked([b"{"] + [piece] * pieces)])
            failures.expect_refused(f"{method} {path} chunked", reply, 413)
    failures.check()
    target.nothing_kept(before, counts)


def test_multipart_upload_far_over_the_limit_is_413_and_not_kept(target):
    before, counts = target.snapshot(), target.counts()
    data = b"x" * (UPLOAD_LIMIT + 2 * 2**20)
    with bystander(target.server):
        for path, fields in [("/jobs", [("command", "true")]),
                             ("/sweeps", [("spec", json.dumps({"command": "true", "cases": [{"u": 1}]}))]),
                             ("/binaries", [])]:
            body, content_type = multipart(fields, [("file", "big.bin", data)])
            reply = exchange(target.server, request("POST", "/api/v1" + path, [("Content-Type", content_type)], body))
            refused(reply, 413)
        raw = exchange(target.server, request("POST", "/api/v1/binaries/big",
                                              [("Content-Type", "application/octet-stream")], b"x" * (UPLOAD_LIMIT + 1)))
        refused(raw, 413)
    target.nothing_kept(before, counts)


def test_multipart_file_just_over_the_upload_limit_is_413(target):
    """max_upload_bytes is the largest upload; the multipart slack is for the framing only."""
    before, counts = target.snapshot(), target.counts()
    data = b"x" * (UPLOAD_LIMIT + 10_000)
    failures = Failures()
    for path, fields in [("/jobs", [("command", "true"), ("submit", "false")]), ("/binaries", [])]:
        body, content_type = multipart(fields, [("file", "big.bin", data)])
        response = target.http.post(path, content=body, headers={"Content-Type": content_type})
        failures.expect_refused(f"POST {path} multipart, a {len(data)}-byte file", response, 413)
        if response.status_code == 201 and path == "/jobs":  # accepted by mistake: tidy up
            target.http.delete(f"/jobs/{response.json()['id']}")
        elif response.status_code == 201:
            target.http.delete("/binaries/big.bin")
    failures.check()
    target.nothing_kept(before, counts)


def test_multipart_form_field_over_the_json_limit_is_413(target):
    before, counts = target.snapshot(), target.counts()
    huge = json.dumps({"A": "x" * (JSON_LIMIT + 10)})
    body, content_type = multipart([("command", "true"), ("env", huge)])
    refused(target.http.post("/jobs", content=body, headers={"Content-Type": content_type}), 413)
    spec = json.dumps({"command": "true", "cases": [{"u": "x" * (JSON_LIMIT + 10)}]})
    body, content_type = multipart([("spec", spec)])
    refused(target.http.post("/sweeps", content=body, headers={"Content-Type": content_type}), 413)
    target.nothing_kept(before, counts)


# ---- truncated bodies -------------------------------------------------------------------


def _send_and_close(server: Server, data: Iterable[bytes]) -> None:
    with socket.create_connection(address(server), timeout=HANG_S) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in data:
                sock.sendall(piece)
                time.sleep(0.05)
        time.sleep(0.3)  # let the server take what was sent before the connection goes


def test_bodies_cut_short_leave_nothing_behind(target):
    before, counts = target.snapshot(), target.counts()
    blob = bytes(range(256)) * 800  # 200 KiB
    job_body, job_type = multipart([("command", "cat data.bin")], [("file[]", "data.bin", blob)])
    sweep_body, sweep_type = multipart([("spec", json.dumps({"command": "true", "cases": [{"u": 1}]}))],
                                       [("file[]", "data.bin", blob)])
    binary_body, binary_type = multipart(files=[("file", "cut.bin", blob)])
    cases = [
        ("POST", "/api/v1/binaries/cut-raw", "application/octet-stream", blob),
        ("POST", "/api/v1/jobs", "application/json", b'{"command": "true", "name": "cut-json"}'),
        ("POST", "/api/v1/jobs", job_type, job_body),
        ("POST", "/api/v1/sweeps", sweep_type, sweep_body),
        ("POST", "/api/v1/binaries", binary_type, binary_body),
    ]
    with bystander(target.server):
        for method, path, content_type, body in cases:
            head = request(method, path, [("Content-Type", content_type)], length=len(body))
            _send_and_close(target.server, [head, body[: len(body) // 2]])
        head = request("POST", "/api/v1/binaries/cut-chunked",
                       [("Content-Type", "application/octet-stream"), ("Transfer-Encoding", "chunked")])
        _send_and_close(target.server, [head, *chunked([blob[:60000], blob[60000:120000]], final=False)])
        head = request("POST", "/api/v1/jobs", [("Content-Type", job_type), ("Transfer-Encoding", "chunked")])
        _send_and_close(target.server, [head, *chunked([job_body[:100000]], final=False)])
    target.nothing_kept(before, counts)
    for name in ("cut-raw", "cut.bin", "cut-chunked"):
        refused(target.http.get(f"/binaries/{name}"), 404)


def test_multipart_without_its_closing_boundary_is_400_and_not_kept(target):
    before, counts = target.snapshot(), target.counts()
    blob = b"y" * 100_000
    cases = [
        ("/jobs", [("command", "true")], [("file[]", "data.bin", blob)]),
        ("/sweeps", [("spec", json.dumps({"command": "true", "cases": [{"u": 1}]}))], [("file[]", "d.bin", blob)]),
        ("/binaries", [], [("file", "open.bin", blob)]),
        ("/jobs", [("command", "true")], []),
    ]
    with bystander(target.server):
        for path, fields, files in cases:
            body, content_type = multipart(fields, files, close=False)
            cut = body[: len(body) - 5] if files else body  # inside the file, or after a field
            reply = exchange(target.server, request("POST", "/api/v1" + path, [("Content-Type", content_type)], cut))
            refused(reply, 400)
    target.nothing_kept(before, counts)
    refused(target.http.get("/binaries/open.bin"), 404)


# ---- slow clients -----------------------------------------------------------------------


def _trickle(server: Server, head: bytes, body: bytes, results: dict, key: str, close_early: bool = False) -> None:
    try:
        with socket.create_connection(address(server), timeout=HANG_S) as sock:
            sock.sendall(head)
            for byte in body:
                time.sleep(TRICKLE_PAUSE_S)
                sock.sendall(bytes([byte]))
            if close_early:
                results[key] = "abandoned"
                return
            results[key] = read_reply(sock)
    except Exception as exc:  # noqa: BLE001 - reported by the test
        results[key] = exc


def test_slow_clients_do_not_block_other_requests(target, saved_job):
    results: dict[str, Any] = {}
    upload = b"slow!!"
    json_body = b'{"command":"true"}'
    patch_body = b'{"priority": 3}'
    threads = [
        threading.Thread(target=_trickle, args=(target.server, request(
            "POST", "/api/v1/binaries/slow.bin", [("Content-Type", "application/octet-stream")],
            length=len(upload)), upload, results, "upload")),
        threading.Thread(target=_trickle, args=(target.server, request(
            "POST", "/api/v1/jobs", [("Content-Type", "application/json")], length=len(json_body)),
            json_body, results, "json")),
        threading.Thread(target=_trickle, args=(target.server, request(
            "PATCH", f"/api/v1/jobs/{saved_job['id']}", [("Content-Type", "application/json")],
            length=len(patch_body)), patch_body, results, "patch")),
        # slowloris: headers that never end
        threading.Thread(target=_trickle, args=(target.server, b"GET /api/v1/health HTTP/1.1\r\n",
                                                b"X-Slow: " + b"a" * 8, results, "headers", True)),
    ]
    for thread in threads:
        thread.daemon = True
        thread.start()
    answered = 0
    with httpx.Client(base_url=target.server.url + "/api/v1", timeout=HANG_S) as client:
        time.sleep(1.5)  # every slow request is in flight
        while any(t.is_alive() for t in threads[:3]):
            assert client.get("/health").status_code == 200
            assert client.get("/jobs", params={"page_size": 1}).status_code == 200
            answered += 1
            time.sleep(0.2)
    for thread in threads:
        thread.join(HANG_S)
        assert not thread.is_alive()
    assert answered >= 5, answered  # others were served while the slow bodies trickled in
    for key in ("upload", "json", "patch"):
        assert isinstance(results[key], Reply), results[key]
    assert results["upload"].status == 201, results["upload"]
    assert results["json"].status == 201, results["json"]
    assert results["patch"].status == 200, results["patch"]
    assert target.http.get("/binaries/slow.bin/content").content == upload


# ---- invalid UTF-8 and deep nesting -----------------------------------------------------


def test_invalid_utf8_in_json_bodies_is_a_400(target, saved_job):
    before, counts = target.snapshot(), target.counts()
    bodies = {
        "POST /api/v1/jobs": [b'{"command": "echo \xff"}', b'{"command": "true", "env": {"A": "\xc3\x28"}}',
                              b'{"command": "echo \xc0\xaf"}', b'{"command": "echo \xed\xa0\x80"}',
                              b'{"command": "true", "name": "\xf8\x88\x80\x80\x80"}', b'{"comm\xffand": "true"}',
                              b'{"command": "echo \\ud800"}', b'{"command": ["echo", "\\udfff"]}'],
        "POST /api/v1/sweeps": [b'{"command": "echo \xff", "cases": [{"u": 1}]}',
                                b'{"command": "echo ${u}", "cases": [{"u": "\xfe"}]}',
                                b'{"command": "echo ${u}", "cases": [{"u": "\\udc80"}]}'],
        f"PATCH /api/v1/jobs/{saved_job['id']}": [b'{"name": "\xff"}', b'{"name": "\\ud800"}'],
        "POST /api/v1/jobs/stop": [b'{"ids": ["\xff"]}'],
        "DELETE /api/v1/jobs": [b'{"ids": ["\xff\xfe"]}'],
    }
    with bystander(target.server):
        for route, payloads in bodies.items():
            method, path = route.split(" ")
            for payload in payloads:
                reply = exchange(target.server, request(method, path, [("Content-Type", "application/json")], payload))
                error = refused(reply, 400)
                assert error["code"] == "validation_error", (route, payload, error)
    target.nothing_kept(before, counts)


def test_invalid_utf8_and_lone_surrogates_in_forms_never_500(target):
    before, counts = target.snapshot(), target.counts()
    failures = Failures()
    attempts = [
        ("/jobs", [("command", b"echo \xff")], []),
        ("/jobs", [("command", "true"), ("env", b'{"A": "\xff"}')], []),
        ("/jobs", [("command", "true"), ("env", '{"A": "\\ud800"}')], []),
        ("/jobs", [("command", '["echo", "\\udc80"]')], []),
        ("/jobs", [("command", "true"), ("name", "\\ud800")], []),
        ("/jobs", [("command", "true"), ("binaries", '["\\ud800"]')], []),
        ("/sweeps", [("spec", b'{"command": "echo ${u}", "cases": [{"u": "\xff"}]}')], []),
        ("/sweeps", [("spec", '{"command": "echo ${u}", "cases": [{"u": "\\ud800"}]}')], []),
        ("/sweeps", [("spec", json.dumps({"command": "echo ${u}"}))], [("cases", "cases.csv", b"u\n\xff\xfe\n")]),
        ("/sweeps", [("spec", json.dumps({"command": "true", "cases": [{"u": 1}],
                                          "templates": [{"source": "t.tmpl", "target": "t.txt"}]}))],
         [("file[]", "t.tmpl", b"\xff${u}")]),
    ]
    with bystander(target.server):
        for path, fields, files in attempts:
            body, content_type = multipart(fields, files)
            response = target.http.post(path, content=body, headers={"Content-Type": content_type})
            failures.expect_refused(f"POST {path} multipart {fields[-1][0]}={fields[-1][1]!r}", response, 400)
    listing = target.http.get("/jobs", params={"page_size": 1000})
    if listing.status_code != 200:
        failures.append(f"afterwards GET /jobs answers {listing.status_code}: {listing.text[:200]}")
    failures.check()
    target.nothing_kept(before, counts)


def test_invalid_utf8_in_query_strings_and_path_segments_is_a_400(target, finished_job):
    job = finished_job["id"]
    targets = [
        "/api/v1/jobs?search=%ff", "/api/v1/jobs?status=%ff", "/api/v1/jobs?owner=%ff",
        "/api/v1/jobs?sweep_id=%c0%af", "/api/v1/jobs?page=%ff", "/api/v1/jobs?page_size=%ed%a0%80",
        "/api/v1/binaries?search=%ff", "/api/v1/sweeps?page=%fe", "/api/v1/binaries/%ff",
        "/api/v1/binaries/%ff/content", "/api/v1/binaries/%ed%a0%80", "/api/v1/binaries/a%c3",
        f"/api/v1/jobs/{job}/files/%ff", f"/api/v1/jobs/{job}/files/out%c3.txt",
        f"/api/v1/jobs/{job}/files?search=%ff", f"/api/v1/jobs/{job}/logs?stream=%ff",
        f"/api/v1/jobs/{job}/logs?offset=%ff", f"/api/v1/jobs/{job}?wait=%ff",
        f"/api/v1/jobs/{job}/files/out.txt?verify=%ff", "/api/v1/events?job_id=%ff",
        "/api/v1/events?sweep_id=%c0%80",
    ]
    before, counts = target.snapshot(), target.counts()
    failures = Failures()
    with bystander(target.server):
        for path in targets:
            reply = exchange(target.server, request("GET", path), timeout=30)
            failures.expect_refused(f"GET {path}", reply, 400)
        for method, path in [("POST", "/api/v1/binaries/%ff"), ("DELETE", "/api/v1/binaries/%ff"),
                             ("DELETE", "/api/v1/jobs?ids=%ff")]:
            reply = exchange(target.server, request(method, path, [("Content-Type", "application/json")]))
            failures.expect_refused(f"{method} {path}", reply, 400)
        for raw in [b"/api/v1/jobs?search=\xff", b"/api/v1/binaries/\xff\xfe", b"/api/v1/jobs/\xc3"]:
            reply = exchange(target.server, request("GET", raw), timeout=30)
            if not 400 <= reply.status < 500:  # refused by the HTTP parser or the app
                failures.append(f"GET {raw!r}: {reply.status} {reply.body[:200]!r}")
    failures.check()
    target.nothing_kept(before, counts)


def test_a_job_refused_for_its_query_is_not_created(target):
    """The query is part of the request: a 400 for it must not leave a job running anyway."""
    failures = Failures()
    for query in ["sync=%ff", "sync=maybe", "sync=true&timeout=%ff", "sync=true&timeout=soon",
                  "sync=true&timeout=-1", "sync=true&timeout=nan"]:
        _, counts = target.snapshot(), target.counts()
        body = b'{"command": "echo created-anyway > out.txt", "name": "refused-query"}'
        reply = exchange(target.server, request("POST", f"/api/v1/jobs?{query}",
                                                [("Content-Type", "application/json")], body))
        failures.expect_refused(f"POST /api/v1/jobs?{query}", reply, 400)
        time.sleep(0.5)
        created = target.http.get("/jobs", params={"search": "refused-query"}).json()["results"]
        if target.counts() != counts or created:
            failures.append(f"POST /api/v1/jobs?{query} answered {reply.status} but recorded job(s) "
                            f"{[(j['id'], j['status']) for j in created]}")
        for job in created:
            target.server.wait(job["id"])
            target.http.delete(f"/jobs/{job['id']}")
    failures.check()


def test_conflicting_input_paths_are_a_400_not_a_storage_error(target):
    before, counts = target.snapshot(), target.counts()
    failures = Failures()
    for files in ([("file[]", "a", b"file"), ("file[]", "a/b", b"under a file")],
                  [("file[]", "d/x", b"1"), ("file[]", "d", b"2")]):
        body, content_type = multipart([("command", "true")], files)
        response = target.http.post("/jobs", content=body, headers={"Content-Type": content_type})
        if response.status_code == 201:
            job = target.server.wait(response.json()["id"])
            stored = [p.split("/inputs/", 1)[1] for p in target.storage_added(before) if job["id"] in p]
            failures.append(f"POST /jobs with files {[f[1] for f in files]}: accepted as {job['files']}, "
                            f"stored as {stored}, ended {job['status']}: {job['status_reason']}")
            target.http.delete(f"/jobs/{job['id']}")
            continue
        try:
            assert names_field(refused(response, 400), "file[]"), response.text
        except AssertionError as exc:
            failures.append(f"POST /jobs with files {[f[1] for f in files]}: {exc}")
    time.sleep(1)
    left = target.storage_added(before)
    if left:
        failures.append(f"bytes left in storage with no job: {left}")
    failures.check()
    target.nothing_kept(before, counts)


def _deep_bodies() -> dict[str, bytes]:
    arrays = b"[" * DEEP + b"]" * DEEP
    objects = b'{"a":' * (DEEP // 2) + b"1" + b"}" * (DEEP // 2)
    return {"arrays": arrays, "objects": objects}


def test_deep_json_nesting_is_a_400(target, saved_job):
    before, counts = target.snapshot(), target.counts()
    deep = _deep_bodies()
    attacks = []
    for kind, nested in deep.items():
        attacks += [
            ("POST", "/api/v1/jobs", nested),
            ("POST", "/api/v1/jobs", b'{"command": "true", "env": ' + nested + b"}"),
            ("POST", "/api/v1/jobs", b'{"command": "true", "resources": {"memory": ' + nested + b"}}"),
            ("POST", "/api/v1/sweeps", nested),
            ("POST", "/api/v1/sweeps", b'{"command": "echo ${u}", "cases": [{"u": ' + nested + b"}]}"),
            ("PATCH", f"/api/v1/jobs/{saved_job['id']}", nested),
            ("POST", "/api/v1/jobs/stop", nested),
            ("DELETE", "/api/v1/jobs", nested),
        ]
        if kind == "arrays":
            attacks.append(("POST", "/api/v1/jobs?sync=true&timeout=1", nested))
    failures = Failures()
    with bystander(target.server):
        for method, path, body in attacks:
            reply = exchange(target.server, request(method, path, [("Content-Type", "application/json")], body))
            failures.expect_refused(f"{method} {path} ({len(body)} bytes)", reply, 400)
    failures.check()
    target.nothing_kept(before, counts)
    assert target.http.get(f"/jobs/{saved_job['id']}").json()["status"] == "CREATED"


def test_deep_nesting_in_form_fields_is_a_400(target):
    before, counts = target.snapshot(), target.counts()
    failures = Failures()
    with bystander(target.server):
        for kind, nested in _deep_bodies().items():
            for fields, path in [
                ([("command", "true"), ("env", nested)], "/jobs"),
                ([("command", nested)], "/jobs") if kind == "arrays" else ([("spec", nested)], "/sweeps"),
                ([("command", "true"), ("resources", nested)], "/jobs"),
                ([("command", "true"), ("binaries", nested)], "/jobs"),
                ([("command", "true"), ("timeout_s", nested)], "/jobs"),
                ([("spec", nested)], "/sweeps"),
            ]:
                body, content_type = multipart(fields)
                response = target.http.post(path, content=body, headers={"Content-Type": content_type})
                failures.expect_refused(f"POST {path} multipart field {fields[-1][0]}={kind} x{DEEP}", response, 400)
    failures.check()
    target.nothing_kept(before, counts)


def test_huge_numbers_are_refused_not_500(target, finished_job):
    big = "9" * 30
    job = finished_job["id"]
    upload = target.http.post("/binaries/num-tool", content=b"x", headers={"Content-Type": "text/plain"})
    assert upload.status_code == 201, upload.text
    failures = Failures()
    gets = [f"/jobs/{job}/logs?offset={big}", f"/jobs/{job}/logs?limit={big}", f"/binaries/num-tool?version={big}",
            f"/binaries/num-tool/content?version={big}", f"/jobs?page={big}", f"/jobs?page_size={big}",
            f"/jobs/{job}?wait={big}", f"/jobs/{job}?wait=1e400", f"/jobs/{job}?wait=nan",
            f"/jobs/{job}/files?page={big}", "/sweeps?page_size=-1"]
    bodies = [{"command": "true", "binaries": [f"num-tool@{big}"]},
              {"command": "true", "priority": int(big)}, {"command": "true", "timeout_s": 1e308},
              {"command": "true", "resources": {"memory": int("9" * 400)}},
              {"command": "true", "resources": {"cores": int(big)}},
              {"command": "true", "retries": int(big)}]
    with bystander(target.server):
        for path in gets:
            response = target.http.get(path)
            if response.status_code >= 500:
                failures.append(f"GET {path}: {response.status_code} {response.text[:300]}")
        for headers in [{"Range": f"bytes={big}-"}, {"Range": f"bytes=0-{big}"}, {"Range": f"bytes=-{big}"}]:
            response = target.http.get(f"/jobs/{job}/files/out.txt", headers=headers)
            if response.status_code >= 500:
                failures.append(f"GET out.txt {headers}: {response.status_code} {response.text[:300]}")
        for body in bodies:
            response = target.http.post("/jobs", json={**body, "submit": False})
            if response.status_code != 400:
                failures.append(f"POST /jobs {json.dumps(body)[:120]}: {response.status_code} {response.text[:300]}")
        sweep = target.http.post("/sweeps", json={"command": "true", "cases": [{"u": 1}], "dry_run": True,
                                                  "templates": [{"source": f"num-tool@{big}", "target": "t"}]})
        if sweep.status_code != 400:
            failures.append(f"POST /sweeps template num-tool@{big}: {sweep.status_code} {sweep.text[:300]}")
    failures.check()


# ---- shell metacharacters ---------------------------------------------------------------


def _evil_words(canary: Path) -> list[str]:
    c = str(canary)
    return [f"$(touch {c}-1)", f"`touch {c}-2`", f"a; touch {c}-3", f"a && touch {c}-4",
            f"a | touch {c}-5", f"a\ntouch {c}-6", f"'; touch {c}-7; '", f'"; touch {c}-8; "',
            f"$(touch${{IFS}}{c}-9)", f"a || touch {c}-10", f"a & touch {c}-11 &"]


def _no_canaries(folder: Path) -> None:
    assert sorted(p.name for p in folder.iterdir()) == [], "a field was run as shell code"


def test_names_with_shell_metacharacters_are_refused(target, tmp_path):
    canary = tmp_path / "pwned"
    with bystander(target.server):
        for word in [*_evil_words(canary), "a*", "a>b", "~root", "$HOME", "a\\b"]:
            assert names_field(refused(target.http.post("/jobs", json={"command": "true", "name": word}), 400), "name")
            refused(target.http.post("/sweeps", json={"command": "true", "name": word, "cases": [{"u": 1}]}), 400)
            body, content_type = multipart([("command", "true"), ("name", word)])
            refused(target.http.post("/jobs", content=body, headers={"Content-Type": content_type}), 400)
            reply = exchange(target.server, request(
                "POST", f"/api/v1/binaries/{quote(word, safe='')}", [("Content-Type", "text/plain")], b"x"))
            refused(reply, 400, 404)
            refused(target.http.post("/jobs", json={"command": "true", "binaries": [word]}), 400)
        saved = target.http.post("/jobs", json={"command": "true", "submit": False}).json()
        for word in _evil_words(canary)[:3]:
            refused(target.http.patch(f"/jobs/{saved['id']}", json={"name": word}), 400)
        target.http.delete(f"/jobs/{saved['id']}")
    time.sleep(1)
    _no_canaries(tmp_path)


def test_env_values_file_names_and_url_binaries_are_never_shell_code(target, tmp_path):
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    env = {f"E{i}": word for i, word in enumerate(_evil_words(canaries / "env"))}
    file_names = ["$(touch pwned-f1)", "`touch pwned-f2`", "a;touch pwned-f3", "a|touch pwned-f4",
                  "a&&touch pwned-f5", "'$(touch pwned-f6)'", "$(touch${IFS}pwned-f7)", "-rf *",
                  "x$((1+1))", "a>pwned-f8", "<pwned-f9"]
    sources = tmp_path / "sources"
    sources.mkdir()
    url_names = ["$(touch pwned-b1)", "`touch pwned-b2`", "b;touch pwned-b3"]
    for name in url_names:
        (sources / name).write_text("from a URL\n")
    body, content_type = multipart(
        [("command", "ls -A > listing.txt"), ("env", json.dumps(env)),
         ("binaries", json.dumps([f"file://{sources / name}" for name in url_names]))],
        [("file[]", name, b"staged") for name in file_names])
    response = target.http.post("/jobs", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    job = target.server.wait(response.json()["id"])
    assert job["status"] == "COMPLETED", job
    assert job["env"] == env
    outputs = [f["path"] for f in target.http.get(f"/jobs/{job['id']}/files").json()["results"]]
    assert outputs == ["listing.txt"], outputs  # no pwned-* was created in the working folder
    listing = target.http.get(f"/jobs/{job['id']}/files/listing.txt").text.splitlines()
    assert set(file_names) | set(url_names) <= set(listing), listing
    # the user's own shell line reading the values gets them as data
    echo = target.server.wait(target.server.submit(
        command='for v in "$E0" "$E1" "$E2" "$E8"; do printf "%s|" "$v"; done', env=env)["id"])
    assert target.http.get(f"/jobs/{echo['id']}/logs").text == "|".join(env[k] for k in ("E0", "E1", "E2", "E8")) + "|"
    time.sleep(1)
    _no_canaries(canaries)
    assert not list(Path.cwd().glob("pwned-*")) and not list(target.root.rglob("pwned-*"))


def test_sweep_values_never_reach_a_shell(target, tmp_path):
    canaries = tmp_path / "canaries"
    canaries.mkdir()
    values = _evil_words(canaries / "v")
    spec = {"command": ["printf", "%s|", "${v}"], "env": {"E": "x${v}"},
            "cases": [{"v": value} for value in values],
            "templates": [{"source": "t.tmpl", "target": "conf/t.txt"}]}
    body, content_type = multipart([("spec", json.dumps(spec))], [("file[]", "t.tmpl", b"value=${v}\n")])
    response = target.http.post("/sweeps", content=body, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    sweep = target.server.wait_sweep(response.json()["id"], timeout=120)
    assert sweep["status"] == "COMPLETED", sweep
    runs = target.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 100}).json()["results"]
    for run in runs:
        value = values[run["index"]]
        assert target.http.get(f"/jobs/{run['id']}/logs").text == value + "|"
        assert run["env"]["E"] == "x" + value
    shell = target.http.post("/sweeps", json={
        "command": 'printf "%s" "$E" > e.txt', "env": {"E": "${v}"}, "cases": [{"v": v} for v in values]})
    assert shell.status_code == 201, shell.text
    assert target.server.wait_sweep(shell.json()["id"], timeout=120)["status"] == "COMPLETED"
    for run in target.http.get(f"/sweeps/{shell.json()['id']}/runs", params={"page_size": 100}).json()["results"]:
        assert target.http.get(f"/jobs/{run['id']}/files/e.txt").text == values[run["index"]]
    time.sleep(1)
    _no_canaries(canaries)


def test_canaries_survived_every_attack(target):
    """Whenever it runs; the target's teardown checks the same once every attack has run."""
    target.untouched()


# ---- tokens and tenancy -----------------------------------------------------------------


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, dask_cluster) -> Iterator[Tenants]:
    with tenants_on(Settings(data_dir=tmp_path_factory.mktemp("tenants") / "data", port=0,
                             **dask_cluster.settings)) as tenants:
        yield tenants


def _near_misses(token: str) -> list[str]:
    body = token.removeprefix("orch_")
    flips = [token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
             for i in range(0, len(token), max(1, len(token) // 12))]
    return [*flips, token[:-1], token + "A", token.upper(), token.lower(), body, "orch_",
            "orch_" + "A" * len(body), token.replace("orch_", "orch-"), token * 2,
            hashlib.sha256(token.encode()).hexdigest(), token[::-1], token[:20], "orch_" + body[1:] + body[0]]


def test_guessed_tokens_are_401_every_time(tenants):
    url = tenants.server.url + "/api/v1"
    alice, bob = tenants.tokens["alice"], tenants.tokens["bob"]
    job = tenants.job("alice")
    guesses = [f"Token orch_{secrets.token_urlsafe(32)}" for _ in range(60)]
    guesses += [f"Token {t}" for t in _near_misses(alice) + _near_misses(bob)]
    guesses += [f"Bearer {t}" for t in _near_misses(alice)[:5]]
    guesses += ["Token", "Bearer", f"Token{alice}", alice, f"Digest {alice}",
                f"Basic {base64.b64encode(f'alice:{alice}'.encode()).decode()}",
                f"Token {'x' * 600}", f"Token {alice}x", f"Token {alice} {alice}x",
                f"Token {secrets.token_hex(64)}", "Token null", "Token undefined", "Token *", "Token %",
                "Token ' OR '1'='1", "Token orch_%", "Token orch__"]
    failures = Failures()
    # one connection per guess: a refused request may close its connection (see the keep-alive test)
    closing = {"Connection": "close"}
    with httpx.Client(base_url=url, timeout=HANG_S, headers=closing) as client, bystander(tenants.server, "/health"):
        for header in guesses:
            for path in ("/jobs", f"/jobs/{job['id']}", f"/jobs/{job['id']}/files/out.txt"):
                try:
                    response = client.get(path, headers={"Authorization": header})
                except httpx.HTTPError as exc:
                    failures.append(f"{header[:40]!r} {path}: no answer: {exc!r}")
                    continue
                if response.status_code != 401 or not response.headers.get("WWW-Authenticate", "").startswith("Token"):
                    failures.append(f"{header[:40]!r} {path}: {response.status_code} {response.text[:200]}")
                    continue
                assert refused(response, 401)["code"] == "unauthorized"
                assert response.content != b"out\n"
        for extra in [{"params": {"token": alice}}, {"cookies": {"token": alice}},
                      {"headers": {"X-Token": alice}}, {"params": {"access_token": alice}}]:
            with httpx.Client(base_url=url, timeout=HANG_S, cookies=extra.get("cookies"), headers=closing) as other:
                response = other.get("/jobs", params=extra.get("params"), headers=extra.get("headers"))
                if response.status_code != 401:
                    failures.append(f"token via {list(extra)[0]}: {response.status_code}")
        for raw in [b"Token \xff\xfe\xfd", b"Token orch_\xe9\xe9", b"Token ", b"Token \t", b"Bearer  "]:
            reply = exchange(tenants.server, request("GET", "/api/v1/jobs", [("Authorization", raw)]))
            if reply.status != 401:
                failures.append(f"{raw!r}: {reply.status} {reply.body[:200]!r}")
        malformed = exchange(tenants.server, request("GET", "/api/v1/jobs", [("Authorization", b"Token \x7f\x7f")]))
        if not 400 <= malformed.status < 500:  # not a legal header value: the HTTP parser may refuse it
            failures.append(f"DEL in the header: {malformed.status}")
        upload = client.post("/binaries/guess", content=b"x" * 1000,
                             headers={"Authorization": f"Token {alice}x", "Content-Type": "text/plain"})
        if upload.status_code != 401:
            failures.append(f"upload with a bad token: {upload.status_code}")
    failures[40:] = []
    failures.check()
    assert tenants["alice"].get(f"/jobs/{job['id']}").status_code == 200  # the real ones still work
    assert tenants["bob"].get("/jobs").status_code == 200
    refused(tenants["alice"].get("/binaries/guess"), 404)


def _not_found_like_a_missing_one(response: httpx.Response, missing: httpx.Response, what: str) -> None:
    error = refused(response, 404)
    assert error["code"] == "not_found", (what, error)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found", missing.text
    assert "alice" not in error["message"] and "owner" not in error["message"], (what, error)


def test_another_users_job_reads_are_404(tenants):
    job = tenants.job("alice")
    bob = tenants["bob"]
    missing_id = uuid.uuid4().hex[:12]
    failures = Failures()
    for suffix in ["", "?wait=1", "/statuses", "/logs", "/logs?stream=stderr", "/logs?follow=true",
                   "/files", "/files?search=out", "/files/out.txt", "/files/out.txt?verify=true", "/result"]:
        path, _, query = suffix.partition("?")
        response = bob.get(f"/jobs/{job['id']}{path}" + (f"?{query}" if query else ""))
        missing = bob.get(f"/jobs/{missing_id}{path}" + (f"?{query}" if query else ""))
        try:
            _not_found_like_a_missing_one(response, missing, suffix)
            assert b"out\n" not in response.content and b"hi\n" not in response.content
        except AssertionError as exc:
            failures.append(f"bob GET /jobs/<alice's>{suffix}: {response.status_code} {response.text[:200]} ({exc})")
    failures.check()
    assert tenants["alice"].get(f"/jobs/{job['id']}/files/out.txt").content == b"out\n"


def test_another_users_job_cannot_be_changed(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    done = tenants.job("alice")
    saved = alice.post("/jobs", json={"command": "true", "submit": False, "name": "alice-saved"}).json()
    running = tenants.running("alice")
    failures = Failures()
    try:
        attempts = [
            ("PATCH", f"/jobs/{saved['id']}", {"json": {"name": "bob-was-here"}}),
            ("POST", f"/jobs/{saved['id']}/submit", {}),
            ("POST", f"/jobs/{running['id']}/stop", {}),
            ("DELETE", f"/jobs/{running['id']}?stop=true", {}),
            ("DELETE", f"/jobs/{done['id']}", {}),
            ("DELETE", f"/jobs/{saved['id']}", {}),
            ("POST", f"/jobs/{done['id']}/share", {"json": {"users": ["bob"]}}),  # sharing with himself
            ("GET", f"/jobs/{done['id']}/share", {}),
            ("DELETE", f"/jobs/{done['id']}/share", {"json": {"users": ["bob"]}}),
        ]
        for method, path, extra in attempts:
            response = bob.request(method, path, **extra)
            if response.status_code != 404:
                failures.append(f"bob {method} {path}: {response.status_code} {response.text[:200]}")
        if bob.get(f"/jobs/{done['id']}").status_code != 404:
            failures.append("bob can read alice's job after trying to share it with himself")
        with bob.stream("GET", "/events", params={"job_id": running["id"]}, timeout=HANG_S) as events:
            if events.status_code != 404:
                failures.append(f"bob GET /events?job_id=<alice's>: {events.status_code}")
        cluster = bob.get("/cluster")
        if cluster.status_code != 200 or running["id"] in cluster.text:
            failures.append(f"bob GET /cluster: {cluster.status_code}, shows alice's running job: "
                            f"{running['id'] in cluster.text}")
        time.sleep(1)
        assert alice.get(f"/jobs/{saved['id']}").json()["status"] == "CREATED"
        assert alice.get(f"/jobs/{saved['id']}").json()["name"] == "alice-saved"
        assert alice.get(f"/jobs/{running['id']}").json()["status"] == "RUNNING"
        assert alice.get(f"/jobs/{done['id']}").status_code == 200
    finally:
        tenants.stop(running)
    failures.check()


def test_bulk_actions_skip_another_users_jobs(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    done = tenants.job("alice")
    running = tenants.running("alice")
    failures = Failures()
    try:
        for body in [{"ids": [running["id"]]}, {"status": "RUNNING"}]:
            response = bob.post("/jobs/stop", json=body)
            if response.status_code != 202 or running["id"] in response.json().get("stopping", []):
                failures.append(f"bob POST /jobs/stop {body}: {response.status_code} {response.text[:200]}")
        for params, body in [({"ids": done["id"]}, None), ({}, {"status": "COMPLETED"}),
                             ({"ids": running["id"], "stop": "true"}, None)]:
            response = bob.request("DELETE", "/jobs", params=params, json=body)
            listed = json.dumps(response.json()) if response.headers.get("content-type", "").startswith("application/json") else ""
            if response.status_code not in (200, 202) or done["id"] in listed or running["id"] in listed:
                failures.append(f"bob DELETE /jobs {params or body}: {response.status_code} {response.text[:200]}")
        time.sleep(1)
        if alice.get(f"/jobs/{running['id']}").json().get("status") != "RUNNING":
            failures.append("alice's running job was stopped by bob's bulk stop")
        if alice.get(f"/jobs/{done['id']}").status_code != 200:
            failures.append("alice's finished job was deleted by bob's bulk delete")
    finally:
        tenants.stop(running)
    failures.check()


def test_another_users_sweep_is_404(tenants):
    sweep = tenants.sweep("alice")
    alice, bob = tenants["alice"], tenants["bob"]
    missing = "s" + uuid.uuid4().hex[:11]
    run_id = alice.get(f"/sweeps/{sweep['id']}/runs").json()["results"][0]["id"]
    failures = Failures()
    for suffix in ["", "?wait=1", "/runs", "/results", "/results?format=csv", "/finished"]:
        path, _, query = suffix.partition("?")
        response = bob.get(f"/sweeps/{sweep['id']}{path}" + (f"?{query}" if query else ""))
        other = bob.get(f"/sweeps/{missing}{path}" + (f"?{query}" if query else ""))
        try:
            _not_found_like_a_missing_one(response, other, suffix)
        except AssertionError as exc:
            failures.append(f"bob GET /sweeps/<alice's>{suffix}: {response.status_code} {response.text[:200]} ({exc})")
    with bob.stream("GET", "/events", params={"sweep_id": sweep["id"]}, timeout=HANG_S) as events:
        if events.status_code != 404:
            failures.append(f"bob GET /events?sweep_id=<alice's>: {events.status_code}")
    stop = bob.post(f"/sweeps/{sweep['id']}/stop")
    if stop.status_code != 404:
        failures.append(f"bob POST /sweeps/<alice's>/stop: {stop.status_code} {stop.text[:200]}")
    run = bob.get(f"/jobs/{run_id}/files/out.txt")
    if run.status_code != 404:
        failures.append(f"bob GET a run of alice's sweep: {run.status_code} {run.text[:200]}")
    failures.check()
    assert alice.get(f"/sweeps/{sweep['id']}").json()["status"] == "COMPLETED"


def test_another_users_binary_is_404_and_cannot_be_used(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    name = f"tool-{uuid.uuid4().hex[:6]}"
    uploaded = alice.post(f"/binaries/{name}", content=b"alice-secret", headers={"Content-Type": "text/plain"})
    assert uploaded.status_code == 201, uploaded.text
    failures = Failures()
    for method, path in [("GET", f"/binaries/{name}"), ("GET", f"/binaries/{name}/content"),
                         ("GET", f"/binaries/{name}?version=1"), ("GET", f"/binaries/alice%2F{name}"),
                         ("GET", f"/binaries/alice%2F{name}/content"), ("DELETE", f"/binaries/{name}"),
                         ("DELETE", f"/binaries/alice%2F{name}")]:
        response = bob.request(method, path)
        if response.status_code != 404 or b"alice-secret" in response.content:
            failures.append(f"bob {method} {path}: {response.status_code} {response.text[:200]}")
    for ref in [name, f"{name}@1", f"alice/{name}", f"alice/{name}@1"]:
        response = bob.post("/jobs", json={"command": f"cat {name}", "binaries": [ref]})
        if response.status_code != 400:
            failures.append(f"bob job with binaries [{ref!r}]: {response.status_code} {response.text[:200]}")
            if response.status_code in (201, 202):
                tenants.stop(response.json(), "bob")
        sweep = bob.post("/sweeps", json={"command": "cat t", "cases": [{"u": 1}], "dry_run": True,
                                          "templates": [{"source": ref, "target": "t"}]})
        if sweep.status_code != 400 or b"alice-secret" in sweep.content:
            failures.append(f"bob sweep template {ref!r}: {sweep.status_code} {sweep.text[:200]}")
    mine = bob.post(f"/binaries/{name}", content=b"bob-bytes", headers={"Content-Type": "text/plain"})
    if mine.status_code != 201:
        failures.append(f"bob uploading his own {name}: {mine.status_code} {mine.text[:200]}")
    assert alice.get(f"/binaries/{name}/content").content == b"alice-secret"
    assert alice.get(f"/binaries/{name}").json()["versions"] == [1]
    failures.check()


def test_lists_show_only_your_own(tenants):
    alice, bob = tenants["alice"], tenants["bob"]
    alices = tenants.job("alice", name="alice-only")
    sweep = tenants.sweep("alice")
    binary = f"alice-bin-{uuid.uuid4().hex[:6]}"
    assert alice.post(f"/binaries/{binary}", content=b"a", headers={"Content-Type": "text/plain"}).status_code == 201
    bobs = tenants.job("bob", name="bob-only")
    failures = Failures()
    queries = [("/jobs", {}), ("/jobs", {"owner": "alice"}), ("/jobs", {"sweep_id": sweep["id"]}),
               ("/jobs", {"search": "alice-only"}), ("/jobs", {"status": "COMPLETED"}),
               ("/sweeps", {}), ("/binaries", {}), ("/binaries", {"search": "alice"})]
    for path, params in queries:
        page = bob.get(path, params={**params, "page_size": 1000}).json()
        foreign = [r for r in page.get("results", []) if r.get("owner") != "bob"]
        if foreign or page.get("count") != len(page.get("results", [])):
            failures.append(f"bob GET {path} {params}: count {page.get('count')}, "
                            f"not his: {[(r.get('id') or r.get('name'), r.get('owner')) for r in foreign][:5]}")
    mine = {j["id"] for j in alice.get("/jobs", params={"page_size": 1000}).json()["results"]}
    if bobs["id"] in mine:
        failures.append("alice's GET /jobs lists bob's job")
    if alices["id"] not in mine:
        failures.append("alice's GET /jobs misses her own job")
    failures.check()


def test_admin_sees_everyone(tenants):
    root = tenants["root"]
    alices, bobs = tenants.job("alice"), tenants.job("bob")
    sweep = tenants.sweep("alice")
    ids = {j["id"] for j in root.get("/jobs", params={"page_size": 1000}).json()["results"]}
    assert {alices["id"], bobs["id"]} <= ids
    assert root.get(f"/jobs/{alices['id']}").status_code == 200
    assert root.get(f"/jobs/{alices['id']}/files/out.txt").content == b"out\n"
    only_alice = root.get("/jobs", params={"owner": "alice", "page_size": 1000}).json()["results"]
    assert only_alice and {j["owner"] for j in only_alice} == {"alice"}
    assert sweep["id"] in {s["id"] for s in root.get("/sweeps", params={"page_size": 1000}).json()["results"]}
    assert root.get(f"/sweeps/{sweep['id']}/results").status_code == 200


def test_event_stream_shows_only_your_own_jobs(tenants):
    bob_token = tenants.tokens["bob"]
    seen: list[str] = []
    ready, done = threading.Event(), threading.Event()
    bobs_job: dict = {}

    def bob_saw_his_job_end() -> bool:
        return bool(bobs_job) and any(bobs_job["id"] in line and '"COMPLETED"' in line for line in seen)

    def listen() -> None:
        headers = {"Authorization": f"Token {bob_token}"}
        with contextlib.suppress(httpx.HTTPError), httpx.stream(
            "GET", tenants.server.url + "/api/v1/events", headers=headers, timeout=HANG_S
        ) as stream:
            for line in stream.iter_lines():  # a keep-alive comment comes every 15 s at least
                seen.append(line)
                ready.set()
                if bob_saw_his_job_end():
                    break
        done.set()

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert ready.wait(HANG_S), "the event stream never opened"
    alices = tenants.job("alice")
    response = tenants["bob"].post("/jobs", json={"command": "sleep 1"})
    assert response.status_code == 201, response.text
    bobs_job.update(response.json())
    assert done.wait(HANG_S), "bob never saw his own job complete"
    assert bob_saw_his_job_end(), seen[-5:]
    assert alices["id"] not in "\n".join(seen), "bob's event stream carried alice's job"


def test_a_refused_request_does_not_break_a_keep_alive_connection(tenants):
    """A client reusing its connection after a 401 must get an answer, or have been told
    (`Connection: close`) that the server would close it."""
    failures = Failures()
    job = tenants.job("alice")
    for path in ("/api/v1/jobs", "/api/v1/sweeps", "/api/v1/binaries", f"/api/v1/jobs/{job['id']}"):
        with socket.create_connection(address(tenants.server), timeout=HANG_S) as sock:
            sock.sendall(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Authorization: Token orch_wrong\r\n\r\n")
            first = read_reply(sock)
            refused(first, 401)
            if (first.header("Connection") or "").lower() == "close":
                continue
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            second = read_reply(sock)
            if second.status != 200:
                failures.append(f"GET {path} with a bad token answered 401 without 'Connection: close', "
                                f"then the connection was dropped: next request got {second.status or 'nothing'}")
    failures.check()
