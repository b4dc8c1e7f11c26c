"""Request bodies streamed to storage as they arrive, so no upload is held whole in memory.

A body is JSON (buffered, small), multipart (file parts streamed to storage writers, plain
fields buffered) or raw bytes (streamed to one writer). Parsing and writing run off the event
loop, one chunk at a time, so other requests keep being served during a large upload.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from email.message import Message

import tornado.web
from python_multipart.multipart import MultipartParser

from orchestrator.api.base import BODY_SLACK, BaseHandler
from orchestrator.errors import OrchestratorError, PayloadTooLarge, ValidationFailed
from orchestrator.paths import safe_relative_path
from storage import AtomicWriter

FILE_FIELDS = ("file[]", "file", "files", "files[]")
READ_CHUNK_SIZE = 1024 * 1024

OpenPart = Callable[[str, str], AtomicWriter]


class MultipartStream:
    """Feeds a multipart body through python-multipart; file parts go to writers."""

    def __init__(self, boundary: bytes, open_part: OpenPart, field_limit: int, file_limit: int):
        self.fields: dict[str, list[str]] = {}
        self._file_limit = file_limit
        self._file_bytes = 0
        self.files: list[tuple[str, str, AtomicWriter]] = []  # written, not yet committed
        self._open_part = open_part
        self._field_limit = field_limit
        self._field_bytes = 0
        self._header_name = b""
        self._headers: dict[str, str] = {}
        self._part: tuple[str, str | None] | None = None
        self._writer: AtomicWriter | None = None
        self._value = bytearray()
        self.writers: list[AtomicWriter] = []
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._part_begin,
                "on_header_field": self._header_field,
                "on_header_value": self._header_value,
                "on_header_end": self._header_end,
                "on_headers_finished": self._headers_finished,
                "on_part_data": self._part_data,
                "on_part_end": self._part_end,
            },
        )

    def feed(self, chunk: bytes) -> None:
        try:
            self._parser.write(chunk)
        except OrchestratorError:
            raise
        except Exception as exc:  # the parser's own errors: the body is malformed
            raise ValidationFailed(f"malformed multipart body: {exc}", {"body": "malformed multipart"}) from None

    def close(self) -> None:
        self._parser.finalize()
        if self._part is not None:
            raise ValidationFailed("truncated multipart body", {"body": "truncated multipart"})

    def abort(self) -> None:
        for writer in self.writers:
            with contextlib.suppress(Exception):
                writer.abort()

    def _part_begin(self) -> None:
        self._headers, self._value = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        name = self._header_name.decode("latin-1").lower()
        self._headers[name] = self._headers.get(name, "") + data[start:end].decode("utf-8", "replace")

    def _header_end(self) -> None:
        self._header_name = b""

    def _headers_finished(self) -> None:
        message = Message()
        message["content-disposition"] = self._headers.get("content-disposition", "")
        name = message.get_param("name", header="content-disposition")
        filename = message.get_param("filename", header="content-disposition")
        if not name:
            raise ValidationFailed("a multipart part has no name", {"body": "part without name"})
        name, filename = str(name), (str(filename) if filename is not None else None)
        self._part = (name, filename)
        if filename is not None:
            self._writer = self._open_part(name, filename)
            self.writers.append(self._writer)

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._file_bytes += end - start
            if self._file_bytes > self._file_limit:
                raise PayloadTooLarge(f"uploaded files exceed {self._file_limit} bytes")
            self._writer.write(data[start:end])
            return
        self._field_bytes += end - start
        if self._field_bytes > self._field_limit:
            raise PayloadTooLarge(f"form fields exceed {self._field_limit} bytes")
        self._value += data[start:end]

    def _part_end(self) -> None:
        assert self._part is not None
        name, filename = self._part
        if self._writer is not None:
            self.files.append((name, filename or "", self._writer))
            self._writer = None
        else:
            try:
                self.fields.setdefault(name, []).append(self._value.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValidationFailed(f"field {name} is not UTF-8", {name: "not UTF-8"}) from None
        self._part = None


@tornado.web.stream_request_body
class StreamingBodyHandler(BaseHandler):
    """Subclasses say which methods take bodies and where raw or file bytes go."""

    body_methods = ("POST",)

    def open_raw(self) -> AtomicWriter | None:
        """A writer for a raw (non-JSON, non-multipart) body, or None to refuse one."""
        return None

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        raise ValidationFailed("this route takes no files", {field_name: "unexpected file"})

    def claim_file(self, field_name: str, filename: str) -> str:
        """The safe relative path of an uploaded file part, refused if given twice."""
        if field_name not in FILE_FIELDS:
            raise ValidationFailed(f"unexpected file in field {field_name}", {field_name: "use file[]"})
        try:
            path = safe_relative_path(filename)
        except ValueError as exc:
            raise ValidationFailed(f"bad file name {filename!r}: {exc}", {"file[]": str(exc)}) from None
        if path in self.file_paths:
            raise ValidationFailed(f"file {path!r} given twice", {"file[]": f"duplicate {path}"})
        clash = next((p for p in self.file_paths if p.startswith(path + "/") or path.startswith(p + "/")), None)
        if clash is not None:
            raise ValidationFailed(f"file {path!r} and file {clash!r} cannot both exist",
                                   {"file[]": f"{path} clashes with {clash}"})
        self.file_paths.add(path)
        return path

    async def prepare(self) -> None:
        if self.has_body:
            self.authenticate()  # before a byte of the body is read
        self.file_paths: set[str] = set()
        self.multipart: MultipartStream | None = None
        self.raw: AtomicWriter | None = None
        self._received = 0
        if self.request.method not in self.body_methods or not self.has_body:
            return self.start_json_body()
        settings = self.service.settings
        self._body_limit = settings.max_upload_bytes
        self.refuse_declared_over(self._body_limit + BODY_SLACK, "uploads are limited")
        self.request.connection.set_max_body_size(self._body_limit + BODY_SLACK)
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            boundary = _boundary(content_type)
            self.multipart = MultipartStream(
                boundary, self.open_part, settings.max_json_bytes, settings.max_upload_bytes
            )
        elif content_type.startswith("application/json"):
            self.start_json_body()
        else:
            self.raw = await asyncio.to_thread(self.open_raw)
            if self.raw is None:
                raise ValidationFailed(
                    f"unsupported Content-Type {content_type!r}",
                    {"Content-Type": "use application/json or multipart/form-data"},
                )

    async def data_received(self, chunk: bytes) -> None:
        if self.multipart is None and self.raw is None:
            return await super().data_received(chunk)
        if self._body_problem is not None:
            return
        self._received += len(chunk)
        try:
            if self._received > self._body_limit + (BODY_SLACK if self.multipart else 0):
                raise PayloadTooLarge(f"the body is larger than the {self._body_limit}-byte limit")
            if self.multipart is not None:
                await asyncio.to_thread(self.multipart.feed, chunk)
            elif self.raw is not None:
                await asyncio.to_thread(self.raw.write, chunk)
        except Exception as exc:  # noqa: BLE001 - reported when the body has ended
            self._body_problem = exc
            await asyncio.to_thread(self._abort)

    async def finish_body(self) -> None:
        """Call first in the method: a multipart body must also have ended well."""
        if self.multipart is not None:
            try:
                self.multipart.close()
            except Exception:
                await asyncio.to_thread(self._abort)
                raise

    def on_connection_close(self) -> None:
        self._abort()

    def on_finish(self) -> None:
        if self.get_status() >= 400:
            self._abort()

    def _abort(self) -> None:
        if getattr(self, "multipart", None) is not None:
            self.multipart.abort()
        if getattr(self, "raw", None) is not None:
            with contextlib.suppress(Exception):
                self.raw.abort()


def _boundary(content_type: str) -> bytes:
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not boundary:
        raise ValidationFailed("multipart body without boundary", {"Content-Type": "no boundary"})
    return str(boundary).encode("latin-1")
