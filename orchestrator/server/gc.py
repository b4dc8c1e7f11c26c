"""Garbage collection of storage: objects that no ledger row owns any more.

A crash between deleting a job's row and its files, an upload whose request died, a writer
killed before its commit, or an S3 multipart upload never completed leaves objects behind
that nothing will read again. `find_garbage` lists them and `remove` deletes them.

Everything is judged by age as well as by the ledger: a job's (sweep's, binary's) files are
stored a moment before its row is inserted, and temporary objects are being written while an
upload runs, so only what nobody wrote to for `older_than` seconds is garbage. That makes it
safe to run beside a running server (the ledger is SQLite in WAL mode).
"""

from __future__ import annotations

import contextlib
import posixpath
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import fsspec

from orchestrator.server.ledger import Store
from orchestrator.storage import Storage
from orchestrator.storage.fsstore import TEMP_PREFIX

# Fields of an fsspec listing entry telling when an object was last written, by backend:
# local folders 'mtime', s3fs 'LastModified', adlfs 'last_modified', gcsfs 'updated', memory
# 'created' (its objects are written once). The first one present is used: local 'created'
# is the inode change time, which is not when the bytes were written.
TIME_FIELDS = ("mtime", "LastModified", "last_modified", "updated", "created")

# The prefixes whose children are owned by ledger rows (see storage/layout.py).
JOBS, SWEEPS, BINARIES = "jobs", "sweeps", "binaries"


@dataclass(frozen=True)
class Garbage:
    """One thing to remove, with what it weighs and when it was last written to.

    kind is 'temp' (one object under _tmp/), 'job', 'sweep' or 'binary' (a whole prefix),
    or 'multipart' (an unfinished S3 upload, aborted rather than deleted).
    """

    kind: str
    key: str  # relative to the storage root
    bytes: int
    modified: float | None  # epoch seconds of the newest write; None when the backend tells none
    upload_id: str | None = None  # multipart only

    def to_json(self) -> dict[str, Any]:
        modified = (
            datetime.fromtimestamp(self.modified, timezone.utc).isoformat()
            if self.modified is not None else None
        )
        body: dict[str, Any] = {"kind": self.kind, "key": self.key, "bytes": self.bytes,
                                "modified": modified}
        if self.upload_id is not None:
            body["upload_id"] = self.upload_id
        return body


def find_garbage(
    store: Store, storage: Storage, older_than: float, now: float | None = None
) -> list[Garbage]:
    """Everything in storage that no ledger row owns and nobody wrote to for `older_than` s.

    With `older_than` 0 the age guard is off: objects whose backend tells no time count too.
    Storage is listed before the ledger is asked, so a row inserted meanwhile still protects
    its files (and files stored meanwhile are too young to be taken).
    """
    now = time.time() if now is None else now

    def old(modified: float | None) -> bool:
        return older_than <= 0 or (modified is not None and now - modified > older_than)

    storage.fs.invalidate_cache()  # a listing cached by the filesystem may be stale
    uploads = Uploads(storage)  # before the objects: one that completes meanwhile is listed
    found = [item for item in _temp_objects(storage) if old(item.modified)]

    jobs = _children(storage, JOBS)
    unknown = set(jobs) - store.existing_job_ids(list(jobs))
    found += _old_prefixes(storage, uploads, "job", JOBS, jobs, unknown, old)

    sweeps = _children(storage, SWEEPS)
    unknown = set(sweeps) - store.existing_sweep_ids(list(sweeps))
    found += _old_prefixes(storage, uploads, "sweep", SWEEPS, sweeps, unknown, old)

    known = store.binary_versions_known()
    for owner, name in _binary_names(storage):
        entries = _children(storage, f"{BINARIES}/{owner}/{name}")
        unknown = {v for v in entries if (owner, name, _version(v)) not in known}
        found += _old_prefixes(storage, uploads, "binary", f"{BINARIES}/{owner}/{name}", entries,
                               unknown, old)

    found += uploads.old(old)
    return found


def remove(storage: Storage, garbage: Iterable[Garbage]) -> list[tuple[Garbage, Exception]]:
    """Delete each item; go on past failures and return them, so one cannot block the rest."""
    failed: list[tuple[Garbage, Exception]] = []
    for item in garbage:
        try:
            if item.kind == "multipart":
                _abort_multipart(storage, item)
            elif item.kind == "temp":
                storage.delete(item.key)
            else:
                storage.delete_prefix(item.key)
        except Exception as exc:  # reported by the caller; the next item may still go
            failed.append((item, exc))
    return failed


def modified_time(entry: dict[str, Any]) -> float | None:
    """When a listed object was last written, as epoch seconds, whatever the backend."""
    for name in TIME_FIELDS:
        value = _epoch(entry.get(name))
        if value is not None:
            return value
    return None


# ---- listing --------------------------------------------------------------------------------


def _temp_objects(storage: Storage) -> Iterator[Garbage]:
    """Each object under _tmp/: written by AtomicWriter, left by a writer that never finished.

    Objects only, never the folder itself: a running server made it once and writes into it.
    """
    for entry in _find(storage.fs, storage.path(TEMP_PREFIX), withdirs=False):
        if entry.get("type") == "directory":
            continue
        yield Garbage("temp", _key(storage, entry["name"]), int(entry.get("size") or 0),
                      modified_time(entry))


def _old_prefixes(
    storage: Storage,
    uploads: Uploads,
    kind: str,
    parent: str,
    children: dict[str, dict[str, Any]],
    unknown: set[str],
    old: Callable[[float | None], bool],
) -> list[Garbage]:
    """The prefixes among `unknown` children of `parent` that nobody wrote under for long."""
    found = []
    for name in sorted(unknown):
        item = _measure(storage, uploads, kind, f"{parent}/{name}", children[name])
        if old(item.modified):
            found.append(item)
    return found


def _measure(
    storage: Storage, uploads: Uploads, kind: str, key: str, entry: dict[str, Any]
) -> Garbage:
    """Total bytes under a prefix, and its newest write: of its objects, of its folders (a
    local folder's time changes as entries come and go), and of uploads still landing in it."""
    infos = [entry]
    if entry.get("type") == "directory":
        infos += _find(storage.fs, storage.path(key), withdirs=True)
    size = sum(int(info.get("size") or 0) for info in infos if info.get("type") != "directory")
    times = [*map(modified_time, infos), *uploads.times_under(key)]
    return Garbage(kind, key, size, max((t for t in times if t is not None), default=None))


def _children(storage: Storage, prefix: str) -> dict[str, dict[str, Any]]:
    """Entries directly below `prefix` by name, with their listing details; {} if none."""
    path = storage.path(prefix)
    try:
        try:
            entries = storage.fs.ls(path, detail=True, refresh=True)
        except TypeError:  # filesystems whose ls takes no refresh
            entries = storage.fs.ls(path, detail=True)
    except FileNotFoundError:
        return {}
    children = {}
    for entry in entries:
        name = posixpath.basename(entry["name"].rstrip("/"))
        if name and entry["name"].rstrip("/") != path.rstrip("/"):
            children[name] = entry
    return children


def _find(fs: fsspec.AbstractFileSystem, path: str, withdirs: bool) -> list[dict[str, Any]]:
    try:
        return list(fs.find(path, withdirs=withdirs, detail=True).values())
    except FileNotFoundError:
        return []


def _key(storage: Storage, path: str) -> str:
    """A listed path back to its key relative to the storage root."""
    root = storage.fs._strip_protocol(storage.root).rstrip("/")
    path = storage.fs._strip_protocol(path)
    return path[len(root) + 1:] if path.startswith(f"{root}/") else path


def _binary_names(storage: Storage) -> list[tuple[str, str]]:
    """(owner, name) of every binary folder in storage (binaries/<owner>/<name>/<version>)."""
    return sorted(
        (owner, name)
        for owner, entry in _children(storage, BINARIES).items() if entry.get("type") == "directory"
        for name, inner in _children(storage, f"{BINARIES}/{owner}").items()
        if inner.get("type") == "directory"
    )


def _version(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _epoch(value: Any) -> float | None:
    if isinstance(value, datetime):
        return (value if value.tzinfo else value.replace(tzinfo=timezone.utc)).timestamp()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        with contextlib.suppress(ValueError):
            return _epoch(datetime.fromisoformat(value.replace("Z", "+00:00")))
    return None


# ---- S3 multipart uploads -------------------------------------------------------------------


class Uploads:
    """Unfinished S3 multipart uploads under the storage root; none on other filesystems.

    Their parts are billed yet invisible to listings. s3fs leaves one when a writer dies
    mid-upload, and the server uploads job inputs in place, so one in progress under an
    unknown job's prefix also means that job is still being created. The newest part, not
    the start, tells whether an upload is still going: a big file may take longer than the
    age limit to send. Parts are listed only for the uploads asked about, once each.
    """

    def __init__(self, storage: Storage):
        self.storage = storage
        self.items: list[dict[str, Any]] = []
        self._state: dict[str, tuple[int, float | None]] = {}
        self.bucket, self.prefix = "", ""
        if _is_s3(storage.fs):
            self.bucket, self.prefix = _s3_location(storage)
            self.items = list(_list_uploads(storage.fs, self.bucket, self.prefix))

    def state(self, upload: dict[str, Any]) -> tuple[int, float | None]:
        """Bytes sent so far and the time of the last activity (start or newest part)."""
        upload_id = upload["UploadId"]
        if upload_id not in self._state:
            size, newest = _upload_parts(self.storage.fs, self.bucket, upload["Key"], upload_id)
            times = [t for t in (_epoch(upload.get("Initiated")), newest) if t is not None]
            self._state[upload_id] = (size, max(times, default=None))
        return self._state[upload_id]

    def times_under(self, key: str) -> list[float | None]:
        """Last activity of each upload whose object will land under the prefix `key`."""
        inside = f"{self.prefix}{key}/"
        return [self.state(u)[1] for u in self.items if u["Key"].startswith(inside)]

    def old(self, old: Callable[[float | None], bool]) -> list[Garbage]:
        found = []
        for upload in self.items:
            if not old(_epoch(upload.get("Initiated"))):  # its parts are newer still
                continue
            size, modified = self.state(upload)
            if old(modified):
                found.append(Garbage("multipart", upload["Key"][len(self.prefix):], size,
                                     modified, upload["UploadId"]))
        return found


def _is_s3(fs: fsspec.AbstractFileSystem) -> bool:
    """Only s3fs has multipart uploads to list; other filesystems are skipped."""
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return bool({"s3", "s3a"} & set(protocols)) and hasattr(fs, "call_s3")


def _s3_location(storage: Storage) -> tuple[str, str]:
    """(bucket, key prefix ending in '/' or empty) of the storage root."""
    bucket, key, _ = storage.fs.split_path(storage.root)
    key = key.strip("/")
    return bucket, f"{key}/" if key else ""


def _list_uploads(fs: Any, bucket: str, prefix: str) -> Iterator[dict[str, Any]]:
    """Every unfinished upload under `prefix`, page by page (s3fs's helper reads one page)."""
    params: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
    while True:
        page = fs.call_s3("list_multipart_uploads", **params)
        yield from page.get("Uploads") or []
        if not page.get("IsTruncated"):
            return
        params.update(KeyMarker=page.get("NextKeyMarker", ""),
                      UploadIdMarker=page.get("NextUploadIdMarker", ""))


def _upload_parts(fs: Any, bucket: str, key: str, upload_id: str) -> tuple[int, float | None]:
    """Bytes uploaded so far and when the last part came, over all pages of parts."""
    size, newest = 0, None
    params: dict[str, Any] = {"Bucket": bucket, "Key": key, "UploadId": upload_id}
    while True:
        try:
            page = fs.call_s3("list_parts", **params)
        except FileNotFoundError:  # completed or aborted meanwhile
            return size, newest
        for part in page.get("Parts") or []:
            size += int(part.get("Size") or 0)
            at = _epoch(part.get("LastModified"))
            if at is not None and (newest is None or at > newest):
                newest = at
        if not page.get("IsTruncated"):
            return size, newest
        params["PartNumberMarker"] = page.get("NextPartNumberMarker", 0)


def _abort_multipart(storage: Storage, item: Garbage) -> None:
    bucket, prefix = _s3_location(storage)
    with contextlib.suppress(FileNotFoundError):  # NoSuchUpload: completed or aborted meanwhile
        storage.fs.call_s3("abort_multipart_upload", Bucket=bucket, Key=f"{prefix}{item.key}",
                           UploadId=item.upload_id)
