"""Uploaded binaries: named, versioned artifacts that jobs stage into their working folder."""

from __future__ import annotations

import asyncio
import threading

from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.models import BinaryRecord, utcnow
from orchestrator.paths import safe_name
from orchestrator.store import Store
from storage import AtomicWriter, Storage, layout


class BinaryService:
    def __init__(self, store: Store, storage: Storage):
        self.store = store
        self.storage = storage
        self._versioning = threading.Lock()
        self._reserved: dict[str, int] = {}  # name -> newest version handed to an upload

    @staticmethod
    def check_name(name: str) -> str:
        try:
            return safe_name(name)
        except ValueError as exc:
            raise ValidationFailed(f"invalid binary name {name!r}", {"name": str(exc)}) from exc

    def begin_upload(self, name: str) -> AtomicWriter:
        """A writer straight to the bytes' final key: the version is reserved now, so object
        stores publish the upload where it lands instead of copying it afterwards.

        Versions follow the order uploads start in; one that fails leaves a gap.
        """
        self.check_name(name)
        with self._versioning:
            version = max(self.store.next_binary_version(name), self._reserved.get(name, 0) + 1)
            self._reserved[name] = version
        return self.storage.writer(layout.binary_key(name, version))

    def finish_upload(
        self, name: str, writer: AtomicWriter, content_type: str, owner: str
    ) -> BinaryRecord:
        version = layout.binary_version(writer.key)
        stored = writer.commit()
        record = BinaryRecord(
            name=name, version=version, size=stored.size, sha256=stored.sha256,
            content_type=content_type or "application/octet-stream", owner=owner,
            uploaded_at=utcnow(),
        )
        self.store.insert_binary(record)
        return record

    def upload_bytes(self, name: str, data: bytes, content_type: str, owner: str) -> BinaryRecord:
        writer = self.begin_upload(name)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return self.finish_upload(name, writer, content_type, owner)

    def get(self, name: str, version: int | None = None) -> BinaryRecord:
        record = self.store.get_binary(name, version)
        if record is None:
            shown = f"{name}@{version}" if version is not None else name
            raise NotFound(f"no binary {shown}")
        return record

    def versions(self, name: str) -> list[BinaryRecord]:
        records = self.store.binary_versions(name)
        if not records:
            raise NotFound(f"no binary {name}")
        return records

    def list(self, search: str | None, offset: int, limit: int) -> tuple[int, list[BinaryRecord]]:
        return self.store.list_binaries(search, offset, limit)

    async def delete(self, name: str) -> None:
        self.get(name)
        self.store.delete_binary(name)
        await asyncio.to_thread(self.storage.delete_prefix, layout.binary_prefix(name))

    def pin(self, refs: list[str]) -> list[str]:
        """'name' becomes 'name@<latest>'; unknown names are a 400 naming the entry."""
        pinned = []
        for position, ref in enumerate(refs):
            if "://" in ref:
                pinned.append(ref)
                continue
            name, _, version = ref.partition("@")
            record = self.store.get_binary(name, int(version) if version else None)
            if record is None:
                raise ValidationFailed(
                    f"unknown binary {ref!r}", {f"binaries.{position}": f"no binary {ref!r} uploaded"}
                )
            pinned.append(f"{record.name}@{record.version}")
        return pinned
