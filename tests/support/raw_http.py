"""HTTP spoken byte by byte over a socket (nothing normalised, so attacks arrive as sent), the
answers parsed back, and a bystander client that must keep being served meanwhile."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from tests.conftest import Server

HANG_S = 60.0  # an answer slower than this is a hang, not a slow machine


@dataclass
class Reply:
    status: int
    head: bytes
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def json(self) -> Any:
        return json.loads(self.body)


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    assert host == "127.0.0.1"
    return host, int(port)


def request(
    method: str, target: str | bytes, headers: Iterable[tuple[str, str | bytes]] = (),
    body: bytes = b"", length: int | None = None, auth: str | None = None, host: str = "127.0.0.1",
) -> bytes:
    """One HTTP/1.1 request, byte for byte as given (nothing is normalised or re-encoded)."""
    target_bytes = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [method.encode() + b" " + target_bytes + b" HTTP/1.1", b"Host: " + host.encode("latin-1"),
             b"Connection: close"]
    names = set()
    for name, value in headers:
        names.add(name.lower())
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    if auth:
        lines.append(f"Authorization: Token {auth}".encode())
    if "transfer-encoding" not in names and (body or length is not None or method in ("POST", "PATCH", "PUT")):
        lines.append(b"Content-Length: " + str(len(body) if length is None else length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def exchange(server: Server, data: bytes | Iterable[bytes], timeout: float = HANG_S) -> Reply:
    """Send the request (pieces in turn) and read the whole answer; a missing answer is a hang."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        pieces = [data] if isinstance(data, bytes) else data
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for piece in pieces:
                sock.sendall(piece)
        return read_reply(sock, timeout)


def read_reply(sock: socket.socket, timeout: float = HANG_S) -> Reply:
    sock.settimeout(timeout)
    buffer = b""
    deadline = time.monotonic() + timeout
    while not _complete(buffer):
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            raise AssertionError(f"no complete answer within {timeout} s (a hang): {buffer[:300]!r}") from None
        except ConnectionResetError:
            break
        if not chunk:
            break
        buffer += chunk
        assert time.monotonic() < deadline, f"answer still incomplete after {timeout} s: {buffer[:300]!r}"
    return _parse(buffer)


def _complete(buffer: bytes) -> bool:
    head, sep, body = buffer.partition(b"\r\n\r\n")
    if not sep:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    if length:
        return len(body) >= int(length.group(1))
    if re.search(rb"(?im)^transfer-encoding:\s*chunked\s*$", head):
        return body.endswith(b"0\r\n\r\n")
    return False


def _parse(buffer: bytes) -> Reply:
    head, sep, body = buffer.partition(b"\r\n\r\n")
    if not sep:
        return Reply(0, buffer, [], b"")
    lines = head.split(b"\r\n")
    match = re.match(rb"HTTP/1\.[01] (\d{3})", lines[0])
    status = int(match.group(1)) if match else 0
    headers = []
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers.append((name.decode("latin-1").strip(), value.decode("latin-1").strip()))
    if any(k.lower() == "transfer-encoding" and "chunked" in v.lower() for k, v in headers):
        body = _dechunk(body)
    return Reply(status, head, headers, body)


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2:]
    return out


def chunked(pieces: Iterable[bytes], final: bool = True) -> Iterator[bytes]:
    for piece in pieces:
        yield f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    if final:
        yield b"0\r\n\r\n"


def multipart(
    fields: Iterable[tuple[str, bytes | str]] = (),
    files: Iterable[tuple[str, bytes | str, bytes]] = (),
    raw_parts: Iterable[tuple[bytes, bytes]] = (),
    boundary: str = "attack-boundary-7f3a",
    close: bool = True,
) -> tuple[bytes, str]:
    """A multipart body built by hand, so file names go out exactly as given."""
    b = boundary.encode()
    out = b""
    for name, value in fields:
        value = value.encode() if isinstance(value, str) else value
        out += b"--" + b + b'\r\nContent-Disposition: form-data; name="' + name.encode() + b'"\r\n\r\n'
        out += value + b"\r\n"
    for field, filename, data in files:
        raw = filename.encode("utf-8", "surrogateescape") if isinstance(filename, str) else filename
        quoted = raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"')
        disposition = b'form-data; name="' + field.encode() + b'"; filename="' + quoted + b'"'
        out += b"--" + b + b"\r\nContent-Disposition: " + disposition
        out += b"\r\nContent-Type: application/octet-stream\r\n\r\n" + data + b"\r\n"
    for disposition, data in raw_parts:
        out += b"--" + b + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"
    if close:
        out += b"--" + b + b"--\r\n"
    return out, f"multipart/form-data; boundary={boundary}"


# ---- checks -----------------------------------------------------------------------------


class Failures(list):
    """What went wrong across many attacks, reported together instead of at the first."""

    def expect_refused(self, label: str, answer: Reply | httpx.Response, *allowed: int) -> None:
        try:
            refused(answer, *allowed)
        except AssertionError as exc:
            self.append(f"{label}: {exc}")

    def check(self) -> None:
        assert not self, "\n".join(self)


def refused(answer: Reply | httpx.Response, *allowed: int) -> dict:
    """A clean refusal: a 4xx (one of `allowed` when given) with the JSON error body."""
    if isinstance(answer, Reply):
        status, body = answer.status, answer.body
    else:
        status, body = answer.status_code, answer.content
    assert 400 <= status < 500 and (not allowed or status in allowed), (
        f"expected a refusal {allowed or '4xx'}, got {status}: {body[:400]!r}"
    )
    try:
        payload = json.loads(body)
    except ValueError:
        raise AssertionError(f"{status} without a JSON error body: {body[:400]!r}") from None
    error = payload.get("error") if isinstance(payload, dict) else None
    assert isinstance(error, dict), payload
    assert isinstance(error.get("code"), str) and error["code"], payload
    assert isinstance(error.get("message"), str), payload
    assert set(error) <= {"code", "message", "fields"}, payload
    if "fields" in error:
        assert isinstance(error["fields"], dict), payload
    return error


def names_field(error: dict, prefix: str) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") or name.startswith(prefix + "[")
               for name in error.get("fields") or {})


@contextlib.contextmanager
def bystander(
    server: Server, path: str = "/jobs?page_size=1", token: str | None = None,
    timings: list[float] | None = None, pause: float = 0.2,
) -> Iterator[list]:
    """Another client asking `path` all along: every answer must come, and be a 200. With
    `timings`, the seconds each answer took are appended to it."""
    stop = threading.Event()
    answered: list[int] = []
    problems: list[str] = []
    headers = {"Authorization": f"Token {token}"} if token else {}

    def ask() -> None:
        with httpx.Client(base_url=server.url + "/api/v1", timeout=HANG_S, headers=headers) as client:
            while not stop.is_set():
                try:
                    started = time.monotonic()
                    response = client.get(path)
                    if timings is not None:
                        timings.append(time.monotonic() - started)
                    (answered if response.status_code == 200 else problems).append(response.status_code)
                except httpx.HTTPError as exc:
                    problems.append(repr(exc))
                stop.wait(pause)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    try:
        yield answered
    finally:
        stop.set()
        thread.join(HANG_S + 10)
    assert not thread.is_alive(), f"another client's GET {path} hung during the attack"
    assert not problems, f"another client's GET {path} failed during the attack: {problems[:5]}"
    final = httpx.get(server.url + "/api/v1" + path, headers=headers, timeout=HANG_S)
    assert final.status_code == 200, final.text
