"""fsspec-backed storage of binaries, inputs, logs and outputs.

Every write goes to a temporary key first and is moved into place only once complete, so a
reader never sees half a file under its final name. Sizes and sha256 digests are computed
while the bytes stream through, so nothing is read twice.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import posixpath
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import IO, Any, BinaryIO

import fsspec

CHUNK_SIZE = 4 * 1024 * 1024
TEMP_PREFIX = "_tmp"
OPTIONS_VARIABLE = "ORCHESTRATOR_STORAGE_OPTIONS"
STORAGE_CLIENT_MODULES = {"botocore", "aiobotocore", "aiohttp", "s3fs", "gcsfs", "adlfs", "fsspec"}
# Object stores whose uploads appear only once complete (S3 multipart, GCS resumable,
# Azure blocks): written in place. Others go through a temporary key and a move.
ATOMIC_ON_CLOSE = {"s3", "s3a", "gcs", "gs", "abfs", "az"}
# Without these, botocore waits 60 s per connection attempt and retries many times: a
# storage outage would hang requests for minutes instead of answering 503.
S3_DEFAULTS: dict[str, Any] = {
    "config_kwargs": {"connect_timeout": 5, "read_timeout": 60, "retries": {"max_attempts": 3}},
}


@dataclass(frozen=True)
class StoredObject:
    """What a completed write left in storage."""

    key: str
    size: int
    sha256: str


class AtomicWriter:
    """A file-like writer that becomes visible under its key only on `commit()`.

    On object stores that publish an upload only when it completes, the bytes stream
    straight to the key (a move would copy them all again); elsewhere they go to a
    temporary key that is moved into place. An aborted upload leaves nothing listed.
    """

    def __init__(self, storage: Storage, key: str):
        self._storage = storage
        self.key = key
        self._in_place = storage.atomic_on_close
        self._temp_key = key if self._in_place else f"{TEMP_PREFIX}/{uuid.uuid4().hex}"
        self._file: IO[bytes] = storage.fs.open(storage.path(self._temp_key), "wb")
        self._digest = hashlib.sha256()
        self.size = 0
        self._done = False

    def write(self, data: bytes) -> int:
        self._file.write(data)
        self._digest.update(data)
        self.size += len(data)
        return len(data)

    def commit(self) -> StoredObject:
        """Publish under the key, all at once."""
        self._file.close()
        if not self._in_place:
            self._storage._ensure_parent(self.key)
            self._storage.fs.mv(self._storage.path(self._temp_key), self._storage.path(self.key))
        self._done = True
        return StoredObject(self.key, self.size, self._digest.hexdigest())

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        if self._in_place:
            with contextlib.suppress(Exception):
                self._file.discard()  # S3: aborts the multipart upload; nothing is published
            self._file.closed = True  # a discarded file must not try to finish on collection
            return
        try:
            self._file.close()
        finally:
            self._storage.delete(self._temp_key)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class Storage:
    """Keys are '/'-separated paths relative to the storage root URL."""

    def __init__(self, url: str, **storage_options: Any):
        self.url = url
        self.options = storage_options
        self._temp_ready = False

    @classmethod
    def from_environment(cls, url: str) -> Storage:
        """On a worker: options from its own ORCHESTRATOR_STORAGE_OPTIONS (and fsspec's and
        AWS's usual configuration), so credentials never travel inside task payloads."""
        return cls(url, **json.loads(os.environ.get(OPTIONS_VARIABLE) or "{}"))

    @cached_property
    def fs(self) -> fsspec.AbstractFileSystem:
        fs, _ = fsspec.url_to_fs(self.url, **_with_defaults(self.url, self.options))
        return fs

    @cached_property
    def atomic_on_close(self) -> bool:
        return bool(_protocols(self.fs) & ATOMIC_ON_CLOSE)

    @cached_property
    def root(self) -> str:
        _, root = fsspec.url_to_fs(self.url, **_with_defaults(self.url, self.options))
        root = root.rstrip("/")
        if _is_local(self.fs):
            self.fs.makedirs(root, exist_ok=True)
        return root

    def path(self, key: str) -> str:
        return f"{self.root}/{key}" if key else self.root

    def writer(self, key: str) -> AtomicWriter:
        if not self._temp_ready:
            self._ensure_parent(f"{TEMP_PREFIX}/x")  # once, not on every write
            self._temp_ready = True
        return AtomicWriter(self, key)

    def put_bytes(self, key: str, data: bytes) -> StoredObject:
        return self.put_stream(key, io.BytesIO(data))

    def put_stream(self, key: str, source: BinaryIO) -> StoredObject:
        out = self.writer(key)
        try:
            while chunk := source.read(CHUNK_SIZE):
                out.write(chunk)
        except BaseException:
            out.abort()
            raise
        return out.commit()

    def put_file(self, local_path: str, key: str) -> StoredObject:
        with open(local_path, "rb") as source:
            return self.put_stream(key, source)

    def get_file(self, key: str, local_path: str) -> None:
        with self.fs.open(self.path(key), "rb") as source, open(local_path, "wb") as target:
            shutil.copyfileobj(source, target, CHUNK_SIZE)

    def open(self, key: str) -> IO[bytes]:
        return self.fs.open(self.path(key), "rb")

    def read_range(self, key: str, start: int, end: int | None = None) -> bytes:
        """Bytes [start, end) of an object; end None means to its end."""
        with self.open(key) as source:
            try:
                source.seek(start)
            except OSError as exc:
                if exc.errno == errno.EINVAL:  # past the largest offset the filesystem allows
                    return b""
                raise
            return source.read() if end is None else source.read(max(0, end - start))

    def iter_chunks(self, key: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        with self.open(key) as source:
            source.seek(start)
            remaining = None if end is None else end - start
            while remaining is None or remaining > 0:
                chunk = source.read(CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining))
                if not chunk:
                    return
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk

    def info(self, key: str) -> StoredObject:
        """Size and sha256 of a stored object, reading it once."""
        digest = hashlib.sha256()
        size = 0
        for chunk in self.iter_chunks(key):
            digest.update(chunk)
            size += len(chunk)
        return StoredObject(key, size, digest.hexdigest())

    def exists(self, key: str) -> bool:
        return self.fs.exists(self.path(key))

    def size(self, key: str) -> int:
        return int(self.fs.size(self.path(key)))

    def list_sizes(self, prefix: str) -> dict[str, int]:
        """Object names directly below `prefix`, with sizes; empty when there is none."""
        try:
            entries = self.fs.ls(self.path(prefix), detail=True, refresh=True)
        except FileNotFoundError:
            return {}
        except TypeError:  # filesystems whose ls takes no refresh
            entries = self.fs.ls(self.path(prefix), detail=True)
        return {
            posixpath.basename(entry["name"].rstrip("/")): int(entry.get("size") or 0)
            for entry in entries
            if entry.get("type") != "directory"
        }

    def prefix_bytes(self, prefix: str) -> int:
        """Total size of the objects under a prefix (0 when there are none)."""
        try:
            return int(self.fs.du(self.path(prefix), total=True))
        except FileNotFoundError:
            return 0

    def delete(self, key: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(key))

    def copy_prefix(self, prefix: str, destination: str) -> int:
        """Copy every object under `prefix` to the same key under `destination` (within the
        store: no byte passes through this process on object stores); how many were copied."""
        root = self.path(prefix).rstrip("/")
        try:
            found = self.fs.find(root)
        except FileNotFoundError:
            return 0
        for path in found:
            target = destination.rstrip("/") + "/" + path[len(root):].lstrip("/")
            self._ensure_parent(target)
            self.fs.copy(path, self.path(target))
        self.fs.invalidate_cache()  # a listing cached now would hide what the next attempt writes
        return len(found)

    def delete_prefix(self, prefix: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.fs.rm(self.path(prefix), recursive=True)

    def _ensure_parent(self, key: str) -> None:
        if _is_local(self.fs):
            self.fs.makedirs(posixpath.dirname(self.path(key)), exist_ok=True)

    def __reduce__(self):
        """Pickle the URL and options only; the filesystem is rebuilt where it lands."""
        return (_storage_from, (self.url, self.options))


def _storage_from(url: str, options: dict[str, Any]) -> Storage:
    return Storage(url, **options)


def is_storage_failure(exc: BaseException) -> bool:
    """Storage could not be reached or refused the request (as opposed to a missing object
    or a bug): OS-level errors, and those of the object-store clients fsspec backends use."""
    if isinstance(exc, FileNotFoundError):
        return False
    if isinstance(exc, (OSError, TimeoutError)):
        return True
    return type(exc).__module__.split(".")[0] in STORAGE_CLIENT_MODULES


def _is_local(fs: fsspec.AbstractFileSystem) -> bool:
    """Local folders need their directories made; object stores have none."""
    return "file" in _protocols(fs)


def _protocols(fs: fsspec.AbstractFileSystem) -> set[str]:
    protocol = fs.protocol
    return {protocol} if isinstance(protocol, str) else set(protocol)


def _with_defaults(url: str, options: dict[str, Any]) -> dict[str, Any]:
    """S3 options with bounded timeouts and retries unless given."""
    if not url.startswith(("s3://", "s3a://")):
        return options
    merged = {**S3_DEFAULTS, **options}
    merged["config_kwargs"] = {**S3_DEFAULTS["config_kwargs"], **options.get("config_kwargs", {})}
    return merged
