"""`orchestrator gc` with real parts: a SQLite ledger and a storage folder in tmp_path (and an
S3 server from moto where it is installed). Objects are made old with os.utime."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import pytest

from orchestrator.cli import main
from orchestrator.models import BinaryRecord, JobRecord, JobStatus, Resources, StatusChange
from orchestrator.server.gc import Garbage, find_garbage, modified_time, remove
from orchestrator.server.ledger import Store, SweepRow
from orchestrator.storage import Storage

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600


def add_job(store: Store, job_id: str) -> None:
    now = datetime.now(timezone.utc)
    job = JobRecord(id=job_id, name=job_id, owner="me", status=JobStatus.QUEUED,
                    command="true", resources=Resources(), created_at=now)
    store.insert_job(job, [StatusChange(status=JobStatus.QUEUED, at=now)])


def add_sweep(store: Store, sweep_id: str) -> None:
    sweep = SweepRow(id=sweep_id, name=sweep_id, owner="me", kind="command", spec={}, names=[],
                     seed=None, created_at=datetime.now(timezone.utc))
    store.insert_sweep(sweep, [], [])


def add_binary(store: Store, name: str, version: int) -> None:
    store.insert_binary(BinaryRecord(
        name=name, version=version, size=1, sha256="0" * 64, content_type="application/x",
        owner="me", uploaded_at=datetime.now(timezone.utc),
    ))


def put(root: Path, key: str, data: bytes = b"x", age: float = 0) -> Path:
    """Write an object under the storage folder, last written `age` seconds ago."""
    path = root / key
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    if age:
        make_old(path, age)
    return path


def make_old(path: Path, age: float) -> None:
    """Set the time of `path`, everything below it and its folders up to the prefix."""
    when = time.time() - age
    targets = [path] if path.is_file() else [Path(d) / f for d, _, fs in os.walk(path) for f in fs]
    if path.is_dir():
        targets += [Path(d) for d, _, _ in os.walk(path)]
    for target in targets:
        os.utime(target, (when, when))


@pytest.fixture
def parts(tmp_path: Path) -> tuple[Store, Storage, Path]:
    data = tmp_path / "data"
    store = Store(data / "jobs.db")
    storage = Storage(str(data / "storage"))
    yield store, storage, Path(storage.root)
    store.close()


def populate(store: Store, root: Path) -> tuple[set[tuple[str, str]], list[Path], list[Path]]:
    """A storage with owned, fresh and orphaned objects: (expected garbage, gone, kept)."""
    add_job(store, "job1")
    add_sweep(store, "sweep1")
    add_binary(store, "tool", 1)
    old = 2 * HOUR
    kept = [
        put(root, "jobs/job1/inputs/a.txt", b"aaa", old),  # a job in the ledger
        put(root, "jobs/job1/logs/stdout.log", b"log", old),
        put(root, "sweeps/sweep1/cases.csv", b"a\n1\n", old),  # a sweep in the ledger
        put(root, "binaries/me/tool/1/content", b"bin", old),  # a binary version in the ledger
        put(root, "jobs/fresh/inputs/b.txt", b"new"),  # no row yet: being created
        put(root, "binaries/me/tool/3/content", b"new"),  # version being published
        put(root, "_tmp/fresh-temp", b"writing"),  # an upload in progress
        put(root, "jobs/mixed/inputs/fresh.txt", b"new"),  # newest write under it is recent
        put(root, "jobs/mixed/inputs/old.txt", b"old", old),
    ]
    gone = [
        put(root, "jobs/deleted/outputs/out.txt", b"12345", old),
        put(root, "jobs/deleted/logs/stderr.log", b"e", old),
        put(root, "sweeps/sweep-gone/inputs/t.txt", b"tt", old),
        put(root, "binaries/me/tool/2/content", b"v2v2", old),
        put(root, "binaries/me/ghost/1/content", b"g", old),
        put(root, "_tmp/abandoned", b"half", old),
    ]
    for prefix in ("jobs/job1", "jobs/deleted", "sweeps/sweep1", "sweeps/sweep-gone",
                   "binaries/me/tool/1", "binaries/me/tool/2", "binaries/me/ghost"):
        make_old(root / prefix, old)
    expected = {("job", "jobs/deleted"), ("sweep", "sweeps/sweep-gone"),
                ("binary", "binaries/me/tool/2"), ("binary", "binaries/me/ghost/1"),
                ("temp", "_tmp/abandoned")}
    return expected, gone, kept


def test_old_orphans_are_removed_and_owned_or_fresh_objects_kept(parts):
    store, storage, root = parts
    expected, gone, kept = populate(store, root)

    garbage = find_garbage(store, storage, older_than=HOUR)
    assert {(g.kind, g.key) for g in garbage} == expected
    sizes = {g.key: g.bytes for g in garbage}
    assert sizes["jobs/deleted"] == 6 and sizes["_tmp/abandoned"] == 4
    assert all(g.modified is not None and time.time() - g.modified > HOUR for g in garbage)

    assert remove(storage, garbage) == []
    assert not any(path.exists() for path in gone)
    assert not (root / "jobs/deleted").exists() and not (root / "binaries/me/tool/2").exists()
    assert all(path.exists() for path in kept)
    assert (root / "_tmp").is_dir()  # a running server writes into it
    assert find_garbage(store, storage, older_than=HOUR) == []


def test_older_than_zero_takes_fresh_orphans_but_never_owned_ones(parts):
    store, storage, root = parts
    expected, _, kept = populate(store, root)
    garbage = find_garbage(store, storage, older_than=0)
    assert {(g.kind, g.key) for g in garbage} == expected | {
        ("job", "jobs/fresh"), ("job", "jobs/mixed"), ("binary", "binaries/me/tool/3"),
        ("temp", "_tmp/fresh-temp"),
    }
    remove(storage, garbage)
    assert (root / "jobs/job1/inputs/a.txt").exists()
    assert (root / "sweeps/sweep1/cases.csv").exists()
    assert (root / "binaries/me/tool/1/content").exists()
    assert not (root / "jobs/fresh").exists()


def test_empty_storage_has_no_garbage(parts):
    store, storage, _ = parts
    assert find_garbage(store, storage, older_than=0) == []


def test_times_of_each_backend():
    assert modified_time({"mtime": 1000.5}) == 1000.5  # local folders
    s3 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)
    assert modified_time({"LastModified": s3}) == s3.timestamp()  # s3fs
    assert modified_time({"last_modified": "2024-01-02T03:04:05Z"}) == s3.timestamp()
    assert modified_time({"name": "x", "size": 1}) is None


def cli(*argv: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_")}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", "gc", *argv], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=60, check=False)


def test_cli_dry_run_then_removal(parts, tmp_path):
    store, _, root = parts
    expected, gone, kept = populate(store, root)
    data = ["--data-dir", str(tmp_path / "data")]

    dry = cli(*data, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    listed = json.loads(dry.stdout)
    assert {(g["kind"], g["key"]) for g in listed} == expected
    assert not any(g["removed"] for g in listed)
    assert all(path.exists() for path in gone + kept)  # a dry run removes nothing

    done = cli(*data, "--older-than", str(HOUR))
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["KIND", "KEY", "BYTES"]
    rows = {(kind, key): int(size) for kind, key, size in map(str.split, lines[1:-1])}
    assert rows == {(g["kind"], g["key"]): g["bytes"] for g in listed}
    total = sum(g["bytes"] for g in listed)
    assert lines[-1] == f"total: removed {len(expected)} item(s), {total} bytes"
    assert not any(path.exists() for path in gone)
    assert all(path.exists() for path in kept)

    again = cli(*data, "--json")
    assert again.returncode == 0 and json.loads(again.stdout) == []


def test_cli_refuses_a_missing_ledger(tmp_path, capsys, monkeypatch):
    """An empty ledger would make every job's files look orphaned: nothing is touched."""
    for name in [k for k in os.environ if k.startswith("ORCHESTRATOR_")]:
        monkeypatch.delenv(name)
    orphan = put(tmp_path / "data" / "storage", "jobs/j/inputs/a", age=2 * HOUR)
    assert main(["gc", "--data-dir", str(tmp_path / "data")]) == 2
    assert "no job store" in capsys.readouterr().err
    assert orphan.exists() and not (tmp_path / "data" / "jobs.db").exists()


# ---- S3 ---------------------------------------------------------------------------------------


@pytest.fixture
def s3_storage(monkeypatch) -> Storage:
    server_module = pytest.importorskip("moto.server")
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    bucket = f"gc-{uuid.uuid4().hex[:12]}"  # moto keeps buckets for the whole process
    storage = Storage(f"s3://{bucket}/root", endpoint_url=f"http://{host}:{port}")
    storage.fs.mkdir(bucket)
    yield storage
    server.stop()


def start_upload(storage: Storage, key: str, data: bytes | None = None) -> str:
    """An unfinished multipart upload of `key` (relative to the root), with one part sent."""
    upload_id = storage.fs.call_s3("create_multipart_upload", **s3_key(storage, key))["UploadId"]
    if data is not None:
        send_part(storage, key, upload_id, data)
    return upload_id


def send_part(storage: Storage, key: str, upload_id: str, data: bytes) -> None:
    storage.fs.call_s3("upload_part", **s3_key(storage, key), UploadId=upload_id, PartNumber=1,
                       Body=data)


def s3_key(storage: Storage, key: str) -> dict[str, str]:
    bucket, full, _ = storage.fs.split_path(storage.path(key))
    return {"Bucket": bucket, "Key": full}


def uploads(storage: Storage) -> list[str]:
    page = storage.fs.call_s3("list_multipart_uploads", Bucket=s3_key(storage, "")["Bucket"])
    return sorted(u["Key"] for u in page.get("Uploads", []))


def test_s3_orphans_and_unfinished_multipart_uploads(s3_storage, tmp_path):
    storage = s3_storage
    store = Store(tmp_path / "jobs.db")
    add_job(store, "abcdef")
    for key in ("jobs/abcdef/inputs/a", "jobs/abc/inputs/a", "_tmp/left", "binaries/me/b/1/content"):
        storage.fs.pipe(storage.path(key), b"data")
    upload_id = start_upload(storage, "_tmp/big", b"p" * 10)

    assert find_garbage(store, storage, older_than=HOUR) == []  # all fresh
    later = time.time() + 2 * HOUR
    garbage = find_garbage(store, storage, older_than=HOUR, now=later)
    assert {(g.kind, g.key) for g in garbage} == {
        ("job", "jobs/abc"), ("temp", "_tmp/left"), ("binary", "binaries/me/b/1"),
        ("multipart", "_tmp/big"),
    }
    [multipart] = [g for g in garbage if g.kind == "multipart"]
    assert multipart == Garbage("multipart", "_tmp/big", 10, multipart.modified, upload_id)

    assert remove(storage, garbage) == []
    storage.fs.invalidate_cache()
    assert storage.exists("jobs/abcdef/inputs/a")  # a known id that starts like an orphan's
    assert not storage.exists("jobs/abc/inputs/a") and not storage.exists("_tmp/left")
    assert uploads(storage) == []
    assert find_garbage(store, storage, older_than=HOUR, now=later) == []
    store.close()


def test_s3_upload_in_progress_keeps_its_jobs_prefix(s3_storage, tmp_path):
    """Inputs are uploaded in place before the job's row exists: while one is still sending
    parts, the job's other, finished inputs are not orphans however old they are."""
    storage = s3_storage
    store = Store(tmp_path / "jobs.db")
    storage.fs.pipe(storage.path("jobs/creating/inputs/small"), b"s")
    storage.fs.pipe(storage.path("jobs/deleted/inputs/small"), b"s")
    upload_id = start_upload(storage, "jobs/creating/inputs/big")
    time.sleep(3)
    send_part(storage, "jobs/creating/inputs/big", upload_id, b"part")

    garbage = find_garbage(store, storage, older_than=2)
    assert {(g.kind, g.key) for g in garbage} == {("job", "jobs/deleted")}
    store.close()


def test_multipart_is_skipped_on_other_filesystems(parts):
    store, storage, root = parts
    put(root, "jobs/j/a", age=2 * HOUR)
    make_old(root / "jobs/j", 2 * HOUR)
    assert [g.kind for g in find_garbage(store, storage, older_than=HOUR)] == ["job"]
