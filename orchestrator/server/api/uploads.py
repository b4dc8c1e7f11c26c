"""Request bodies streamed to storage as they arrive, so no upload is held whole in memory.

A body is JSON (buffered, small), multipart (file parts streamed to storage writers, plain
fields buffered) or raw bytes (streamed to one writer). Parsing and writing run off the event
loop, one chunk at a time, so other requests keep being served during a large upload.

What one request may hold is bounded: at most `max_upload_parts` parts, and one open file at
a time (each file part is finished when it ends), so no upload can exhaust the server's file
descriptors however many parts it sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from email.message import Message

import tornado.web
from python_multipart.multipart import MultipartParser

from orchestrator.errors import OrchestratorError, PayloadTooLarge, ValidationFailed
from orchestrator.paths import safe_relative_path
from orchestrator.server.api.base import BODY_SLACK, BaseHandler
from orchestrator.storage import AtomicWriter

logger = logging.getLogger(__name__)

FILE_FIELDS = ("file[]", "file", "files", "files[]")
READ_CHUNK_SIZE = 1024 * 1024

OpenPart = Callable[[str, str], AtomicWriter]
EndPart = Callable[[AtomicWriter], object]
_CLEANUPS: set[asyncio.Future] = set()  # discards still running after their request ended


@dataclass(frozen=True)
class UploadLimits:
    field_bytes: int  # all plain fields together (max_json_bytes)
    file_bytes: int  # all file parts together (max_upload_bytes)
    parts: int  # files and fields (max_upload_parts)


class MultipartStream:
    """Feeds a multipart body through python-multipart; file parts go to writers, and each
    is handed to `end_part` as soon as it ends (the handler commits it, closing its file)."""

    def __init__(self, boundary: bytes, open_part: OpenPart, end_part: EndPart, limits: UploadLimits):
        self.fields: dict[str, list[str]] = {}
        self.files: list[tuple[str, str, AtomicWriter]] = []  # ended parts, in order
        self._limits = limits
        self._parts = 0
        self._file_bytes = 0
        self._open_part = open_part
        self._end_part = end_part
        self._field_bytes = 0
        self._header_name = b""
        self._headers: dict[str, str] = {}
        self._part: tuple[str, str | None] | None = None
        self._writer: AtomicWriter | None = None
        self._value = bytearray()
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
        """Drop what is still being written; what ended was committed, the handler's to delete."""
        writers = [writer for _, _, writer in self.files]
        if self._writer is not None:
            writers.append(self._writer)
        for writer in writers:
            with contextlib.suppress(Exception):
                writer.abort()  # a committed one stays: it is not a writer's to delete

    def _part_begin(self) -> None:
        self._parts += 1
        if self._parts > self._limits.parts:
            limit = self._limits.parts
            raise PayloadTooLarge(f"multipart bodies are limited to {limit} parts (max_upload_parts)",
                                  {"body": f"more than {limit} parts"})
        self._headers, self._value = {}, bytearray()

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._count_field_bytes(end - start)
        self._header_name += data[start:end]

    def _header_value(self, data: bytes, start: int, end: int) -> None:
        self._count_field_bytes(end - start)
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

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        if self._writer is not None:
            self._file_bytes += end - start
            if self._file_bytes > self._limits.file_bytes:
                raise PayloadTooLarge(f"uploaded files exceed {self._limits.file_bytes} bytes")
            self._writer.write(data[start:end])
            return
        self._count_field_bytes(end - start)
        self._value += data[start:end]

    def _count_field_bytes(self, size: int) -> None:
        """Plain fields and part headers are held in memory: together they have one limit."""
        self._field_bytes += size
        if self._field_bytes > self._limits.field_bytes:
            raise PayloadTooLarge(f"form fields exceed {self._limits.field_bytes} bytes",
                                  {"body": "form fields too large"})

    def _part_end(self) -> None:
        assert self._part is not None
        name, filename = self._part
        if self._writer is not None:
            self._end_part(self._writer)
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
    """Subclasses say which methods take bodies and where raw or file bytes go.

    File parts are committed as they end, under a storage prefix private to the request
    (`upload_prefix`); a request that fails, is refused or is cut off has that prefix removed
    unless `keep_upload()` said its files now belong to a record.
    """

    body_methods = ("POST",)
    commit_parts = True  # False: the one file part stays open until the handler commits it

    def open_raw(self) -> AtomicWriter | None:
        """A writer for a raw (non-JSON, non-multipart) body, or None to refuse one."""
        return None

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        raise ValidationFailed("this route takes no files", {field_name: "unexpected file"})

    def upload_prefix(self) -> str | None:
        """The storage prefix that holds only this request's committed parts."""
        return None

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

    async def start_body(self) -> None:
        self.file_paths: set[str] = set()
        self.multipart: MultipartStream | None = None
        self.raw: AtomicWriter | None = None
        self._received = 0
        self._feeding = asyncio.Lock()  # a discard waits for the chunk being written
        self._discarded = self._kept = False
        if self.request.method not in self.body_methods or not self.has_body:
            return self.start_json_body()
        settings = self.service.settings
        self._body_limit = settings.max_upload_bytes
        self.refuse_declared_over(self._body_limit + BODY_SLACK, "uploads are limited")
        self.request.connection.set_max_body_size(self._body_limit + BODY_SLACK)
        content_type = self.request.headers.get("Content-Type", "")
        if content_type.startswith("multipart/form-data"):
            limits = UploadLimits(settings.max_json_bytes, settings.max_upload_bytes, settings.max_upload_parts)
            end_part = AtomicWriter.commit if self.commit_parts else _keep_open
            self.multipart = MultipartStream(_boundary(content_type), self.open_part, end_part, limits)
        elif content_type.startswith("application/json"):
            self.start_json_body()
        else:
            self.raw = await asyncio.to_thread(self.open_raw)
            if self.raw is None:
                raise ValidationFailed(
                    f"unsupported Content-Type {content_type!r}",
                    {"Content-Type": "use application/json or multipart/form-data"},
                )

    async def receive(self, chunk: bytes) -> None:
        if self.multipart is None and self.raw is None:
            return await super().receive(chunk)
        if self._body_problem is not None:
            return
        self._received += len(chunk)
        async with self._feeding:
            if self._discarded:
                return
            try:
                if self._received > self._body_limit + (BODY_SLACK if self.multipart else 0):
                    raise PayloadTooLarge(f"the body is larger than the {self._body_limit}-byte limit")
                await asyncio.to_thread(self._write, chunk)
            except Exception as exc:  # noqa: BLE001 - reported when the body has ended
                self._body_problem = exc
                await asyncio.to_thread(self._discard_now)

    def _write(self, chunk: bytes) -> None:
        if self.multipart is not None:
            self.multipart.feed(chunk)
        elif self.raw is not None:
            self.raw.write(chunk)

    async def finish_body(self) -> None:
        """Call first in the method: a multipart body must also have ended well."""
        if self.multipart is not None:
            try:
                self.multipart.close()
            except Exception:
                await asyncio.to_thread(self._discard_now)
                raise

    def keep_upload(self) -> None:
        """The committed parts now belong to a record: never discard them."""
        self._kept = True

    def on_connection_close(self) -> None:
        self._discard_later()
        super().on_connection_close()

    def on_finish(self) -> None:
        super().on_finish()
        if self.get_status() >= 400:
            self._discard_later()

    def _discard_later(self) -> None:
        """Off the event loop, after any chunk still being written (a thousand committed
        parts take a while to delete)."""
        if getattr(self, "_feeding", None) is None:
            return  # the body never started
        task = asyncio.ensure_future(self._discard())
        _CLEANUPS.add(task)
        task.add_done_callback(_CLEANUPS.discard)

    async def _discard(self) -> None:
        async with self._feeding:
            await asyncio.to_thread(self._discard_now)

    def _discard_now(self) -> None:
        if self._discarded or self._kept:
            return
        self._discarded = True
        if self.multipart is not None:
            self.multipart.abort()
            prefix = self.upload_prefix()
            if self.multipart.files and prefix is not None:
                try:
                    self.service.storage.delete_prefix(prefix)
                except Exception:  # noqa: BLE001 - `orchestrator gc` removes it later
                    logger.warning("could not remove the refused upload %s", prefix, exc_info=True)
        if self.raw is not None:
            with contextlib.suppress(Exception):
                self.raw.abort()


def _keep_open(writer: AtomicWriter) -> None:
    """An ended part that its handler commits itself (a binary, with its version record)."""


def _boundary(content_type: str) -> bytes:
    message = Message()
    message["content-type"] = content_type
    boundary = message.get_param("boundary")
    if not boundary:
        raise ValidationFailed("multipart body without boundary", {"Content-Type": "no boundary"})
    return str(boundary).encode("latin-1")
