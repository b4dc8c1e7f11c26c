"""/binaries: upload (raw body or multipart), list, show, download, delete."""

from __future__ import annotations

import asyncio

from pydantic import Field

from orchestrator.errors import ValidationFailed
from orchestrator.models import BinaryDetail, BinaryRecord, Page, Request, SafeName, VersionNumber
from orchestrator.server.api.base import BaseHandler, Operation, Paged, Query
from orchestrator.server.api.uploads import StreamingBodyHandler
from orchestrator.storage import AtomicWriter, layout


class BinaryPath(Request):
    name: SafeName


class BinaryForm(Request):
    """A binary as multipart/form-data: one file part."""

    file: bytes


class ListQuery(Paged):
    search: str | None = Field(None, description="part of the name")


class UploadQuery(Query):
    name: str | None = Field(None, description="the binary's name, for a raw body (multipart: the file name)")


class OwnerQuery(Query):
    owner: str | None = Field(None, description="another user's binary (admins)")


class VersionQuery(OwnerQuery):
    version: VersionNumber | None = None


class DownloadQuery(VersionQuery):
    verify: bool = Field(False, description="check the stored bytes against their sha256 first")


class BinariesHandler(StreamingBodyHandler):
    """POST /binaries/{name} (or POST /binaries with a multipart file part) and GET /binaries."""

    commit_parts = False  # one file part, written to its version's key and committed with its record

    openapi = {
        "get": Operation("List your binaries (an admin: everyone's), the latest version of each",
                         query=ListQuery, response=Page[BinaryRecord]),
        "post": Operation("Upload a binary; re-uploading a name makes a new version",
                          query=UploadQuery, raw_body=True, form=BinaryForm,
                          response=BinaryRecord, status=201),
    }

    def open_raw(self) -> AtomicWriter | None:
        return self.service.binaries.begin_upload(self._name_from_path(), self.user)

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        if self.multipart and self.multipart.files:
            raise ValidationFailed("upload one binary per request", {field_name: "second file"})
        self._part_name = self.path_kwargs.get("name") or filename
        return self.service.binaries.begin_upload(self._part_name, self.user)

    def _name_from_path(self) -> str:
        name = self.path_kwargs.get("name") or self.query_args().name
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
        query = self.query_args()
        page, size = query.page, query.page_size
        count, records = self.service.binaries.list(self.principal, query.search, (page - 1) * size, size)
        self.send_page(count, records, page, size)


class BinaryHandler(BinariesHandler):
    """/binaries/{name}: upload a version (inherited), show, delete."""

    path_model = BinaryPath

    openapi = {
        "get": Operation("Show a binary: its latest version and every version", query=VersionQuery,
                         response=BinaryDetail),
        "delete": Operation("Delete a binary with all its versions", query=OwnerQuery, status=204),
        "post": Operation("Upload a new version of this binary", raw_body=True, form=BinaryForm,
                          response=BinaryRecord, status=201),
    }

    async def get(self, name: str) -> None:  # type: ignore[override]
        binaries = self.service.binaries
        query = self.query_args()
        record = binaries.get(name, self.principal, query.version, query.owner)
        versions = [v.version for v in binaries.versions(record)]
        self.send_json(BinaryDetail(**record.model_dump(), versions=versions))

    async def delete(self, name: str) -> None:
        await self.service.binaries.delete(name, self.principal, self.query_args().owner)
        self.set_status(204)
        self.finish()


class BinaryContentHandler(BaseHandler):
    path_model = BinaryPath
    openapi = {
        "get": Operation("Download a binary's bytes (Range supported; ?verify=true checks its sha256 first)",
                         query=DownloadQuery, raw_response="application/octet-stream", ranges=True),
    }

    async def get(self, name: str) -> None:
        query = self.query_args()
        record = self.service.binaries.get(name, self.principal, query.version, query.owner)
        await self.send_stored(
            self.service.storage, layout.binary_key(record.owner, record.name, record.version), record.size,
            record.sha256, record.content_type, record.name, query.verify,
        )
