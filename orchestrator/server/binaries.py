"""Uploaded binaries: named, versioned artifacts that jobs stage into their working folder.

Each user has their own binary names (`solver` of alice and of bob are two binaries). A job
refers to its owner's binaries as `name[@version]`; an admin may name anyone's as
`owner/name[@version]`.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.models import MAX_VERSION, BinaryRecord, utcnow
from orchestrator.paths import safe_name
from orchestrator.server.auth import Principal
from orchestrator.server.ledger import Store
from orchestrator.storage import AtomicWriter, Storage, layout
from orchestrator.worker.runner import StagedInput


@dataclass(frozen=True)
class BinaryRef:
    owner: str
    name: str
    version: int | None = None

    @classmethod
    def parse(cls, ref: str, owner: str) -> BinaryRef:
        """`name[@version]` of `owner`, or `other/name[@version]`; ValueError when malformed."""
        qualified, _, version = ref.partition("@")
        ref_owner, _, name = qualified.rpartition("/")
        if version and not (version.isdigit() and int(version) <= MAX_VERSION):
            raise ValueError(f"version must be a number up to {MAX_VERSION}, not {version!r}")
        return cls(safe_name(ref_owner or owner), safe_name(name), int(version) if version else None)

    def shown_to(self, owner: str) -> str:
        """The pinned form kept with a job: owner-relative when it is the job owner's."""
        prefix = "" if self.owner == owner else f"{self.owner}/"
        return f"{prefix}{self.name}@{self.version}"

    @property
    def key(self) -> str:
        assert self.version is not None, "only pinned refs have bytes"
        return layout.binary_key(self.owner, self.name, self.version)


class BinaryService:
    def __init__(self, store: Store, storage: Storage):
        self.store = store
        self.storage = storage
        self._versioning = threading.Lock()
        self._reserved: dict[tuple[str, str], int] = {}  # (owner, name) -> newest version handed out

    @staticmethod
    def check_name(name: str) -> str:
        try:
            return safe_name(name)
        except ValueError as exc:
            raise ValidationFailed(f"invalid binary name {name!r}", {"name": str(exc)}) from exc

    def begin_upload(self, name: str, owner: str) -> AtomicWriter:
        """A writer straight to the bytes' final key: the version is reserved now, so object
        stores publish the upload where it lands instead of copying it afterwards.

        Versions follow the order uploads start in; one that fails leaves a gap.
        """
        self.check_name(name)
        with self._versioning:
            reserved = self._reserved.get((owner, name), 0)
            version = max(self.store.next_binary_version(owner, name), reserved + 1)
            self._reserved[(owner, name)] = version
        return self.storage.writer(layout.binary_key(owner, name, version))

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
        writer = self.begin_upload(name, owner)
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        return self.finish_upload(name, writer, content_type, owner)

    def get(
        self, name: str, viewer: Principal, version: int | None = None, owner: str | None = None
    ) -> BinaryRecord:
        """The caller's binary `name` (an admin names another `owner`); 404 for anyone else's."""
        ref = self._ref(name, viewer, owner)
        record = self.store.get_binary(ref.owner, ref.name, version)
        if record is None:
            shown = f"{name}@{version}" if version is not None else name
            raise NotFound(f"no binary {shown}")
        return record

    def versions(self, record: BinaryRecord) -> list[BinaryRecord]:
        return self.store.binary_versions(record.owner, record.name)

    def list(
        self, viewer: Principal, search: str | None, offset: int, limit: int
    ) -> tuple[int, list[BinaryRecord]]:
        return self.store.list_binaries(viewer.scope, search, offset, limit)

    async def delete(self, name: str, viewer: Principal, owner: str | None = None) -> None:
        record = self.get(name, viewer, owner=owner)
        self.store.delete_binary(record.owner, record.name)
        await asyncio.to_thread(
            self.storage.delete_prefix, layout.binary_prefix(record.owner, record.name)
        )

    def pin(self, refs: list[str], owner: str, admin: bool = False) -> list[str]:
        """'name' becomes 'name@<latest>'; unknown names are a 400 naming the entry.

        Other users' binaries do not exist for a non-admin: the same 400 as a missing one."""
        pinned = []
        for position, ref in enumerate(refs):
            if "://" in ref:
                pinned.append(ref)
                continue
            record = self._pinned(ref, owner, admin)
            if record is None:
                raise ValidationFailed(
                    f"unknown binary {ref!r}", {f"binaries.{position}": f"no binary {ref!r} uploaded"}
                )
            pinned.append(BinaryRef(record.owner, record.name, record.version).shown_to(owner))
        return pinned

    def _pinned(self, ref: str, owner: str, admin: bool) -> BinaryRecord | None:
        try:
            parsed = BinaryRef.parse(ref, owner)
        except ValueError:
            return None
        if parsed.owner != owner and not admin:
            return None
        return self.store.get_binary(parsed.owner, parsed.name, parsed.version)

    def _ref(self, name: str, viewer: Principal, owner: str | None) -> BinaryRef:
        try:
            ref = BinaryRef.parse(name, owner or viewer.user)
        except ValueError:
            raise NotFound(f"no binary {name}") from None
        if not viewer.owns(ref.owner):
            raise NotFound(f"no binary {name}")
        return ref


def binary_input(ref: str, owner: str) -> StagedInput:
    """A pinned binary (`name@v` of the job's owner, or `other/name@v`) or a URL to stage."""
    if "://" in ref:
        name = ref.rstrip("/").rsplit("/", 1)[-1] or "download"
        return StagedInput(path=name, url=ref, executable=True)
    pinned = BinaryRef.parse(ref, owner)
    return StagedInput(path=pinned.name, key=pinned.key, executable=True)


def artifacts(refs: list[str], owner: str) -> list[dict[str, str]]:
    """Pinned binaries an entry point imports ({ref, key}): put on its context's path, not staged."""
    return [{"ref": ref, "key": BinaryRef.parse(ref, owner).key} for ref in refs]
