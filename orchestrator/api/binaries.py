"""/binaries: upload (raw body or multipart), list, show, download, delete."""

from __future__ import annotations

import asyncio

from orchestrator.api.base import BaseHandler, Operation
from orchestrator.api.uploads import StreamingBodyHandler
from orchestrator.errors import ValidationFailed
from orchestrator.models import BinaryRecord, Page
from orchestrator.storage import AtomicWriter, layout


class BinariesHandler(StreamingBodyHandler):
    """POST /binaries/{name} (or POST /binaries with a multipart file part) and GET /binaries."""

    commit_parts = False  # one file part, written to its version's key and committed with its record

    openapi = {
        "get": Operation("List your binaries (an admin: everyone's), the latest version of each",
                         response=Page[BinaryRecord],
                         query={"search": "part of the name", "page": "1-based", "page_size": "1-1000"}),
        "post": Operation("Upload a binary; re-uploading a name makes a new version",
                          response=BinaryRecord, status=201,
                          content_types=("application/octet-stream", "multipart/form-data")),
    }

    def open_raw(self) -> AtomicWriter | None:
        return self.service.binaries.begin_upload(self._name_from_path(), self.user)

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        if self.multipart and self.multipart.files:
            raise ValidationFailed("upload one binary per request", {field_name: "second file"})
        self._part_name = self.path_kwargs.get("name") or filename
        return self.service.binaries.begin_upload(self._part_name, self.user)

    def _name_from_path(self) -> str:
        name = self.path_kwargs.get("name") or self.get_query_argument("name", None)
        if not name:
            raise ValidationFailed("name the binary in the path", {"name": "missing"})
        return self.service.binaries.check_name(name)

    async def post(self, name: str | None = None) -> None:
        await self.finish_body()
        service = self.service.binaries
        if self.multipart is not None:
            if not self.multipart.files:
                raise ValidationFailed("the multipart body has no file part", {"file": "missing"})
            _, _, writer = self.multipart.files[0]
            name = self._part_name
            content_type = "application/octet-stream"
        elif self.raw is not None:
            writer, name = self.raw, self._name_from_path()
            content_type = self.request.headers.get("Content-Type") or "application/octet-stream"
        else:
            raise ValidationFailed("send the binary as a raw body or multipart", {"body": "missing"})
        record = await asyncio.to_thread(service.finish_upload, name, writer, content_type, self.user)
        self.send_created(record, f"/api/v1/binaries/{record.name}")

    async def get(self) -> None:
        page, size = self.pagination()
        count, records = self.service.binaries.list(
            self.principal, self.get_query_argument("search", None), (page - 1) * size, size
        )
        self.send_page(count, records, page, size)


class BinaryHandler(BinariesHandler):
    """/binaries/{name}: upload a version (inherited), show, delete."""

    openapi = {
        "get": Operation("Show a binary: its latest version and every version",
                         query={"version": "a version number (default latest)",
                                "owner": "another user's binary (admins)"}),
        "delete": Operation("Delete a binary with all its versions", status=204,
                            query={"owner": "another user's binary (admins)"}),
        "post": Operation("Upload a new version of this binary", response=BinaryRecord, status=201,
                          content_types=("application/octet-stream", "multipart/form-data")),
    }

    async def get(self, name: str) -> None:  # type: ignore[override]
        binaries = self.service.binaries
        version = self.query_int("version", 0, 1) or None
        record = binaries.get(name, self.principal, version, self.get_query_argument("owner", None))
        body = record.model_dump(mode="json")
        body["versions"] = [v.version for v in binaries.versions(record)]
        self.send_json(body)

    async def delete(self, name: str) -> None:
        await self.service.binaries.delete(name, self.principal, self.get_query_argument("owner", None))
        self.set_status(204)
        self.finish()


class BinaryContentHandler(BaseHandler):
    openapi = {
        "get": Operation("Download a binary's bytes (Range supported; ?verify=true checks its sha256 first)",
                         query={"version": "a version number (default latest)",
                                "owner": "another user's binary (admins)"},
                         raw_response="application/octet-stream"),
    }

    async def get(self, name: str) -> None:
        version = self.query_int("version", 0, 1) or None
        record = self.service.binaries.get(
            name, self.principal, version, self.get_query_argument("owner", None)
        )
        await self.send_stored(
            self.service.storage, layout.binary_key(record.owner, record.name, record.version), record.size,
            record.sha256, record.content_type, record.name,
        )
