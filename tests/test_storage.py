"""Storage conformance over a local folder, fsspec's memory filesystem and S3 (a real
S3-compatible server: moto's, started by the tests)."""

from __future__ import annotations

import hashlib
import uuid

import pytest

from orchestrator.storage import Storage, layout


@pytest.fixture(params=["local", "memory", "s3"])
def storage(request, tmp_path) -> Storage:
    if request.param == "local":
        return Storage(str(tmp_path / "store"))
    if request.param == "s3":
        s3 = request.getfixturevalue("s3")
        return Storage(f"s3://{s3.new_bucket()}/store", **s3.options)
    return Storage(f"memory://test-{uuid.uuid4().hex}")


def test_a_large_write_streams_in_parts_and_appears_only_when_complete(storage):
    """12 MiB: several S3 multipart parts. Invisible while written, whole once committed;
    an aborted one leaves nothing listed (on S3, its multipart upload is aborted)."""
    block = bytes(range(256)) * 4096  # 1 MiB
    writer = storage.writer("big/one.bin")
    for _ in range(12):
        writer.write(block)
    assert not storage.exists("big/one.bin") and storage.list_sizes("big") == {}
    stored = writer.commit()
    assert storage.size("big/one.bin") == 12 * len(block) == stored.size
    assert storage.info("big/one.bin").sha256 == hashlib.sha256(block * 12).hexdigest() == stored.sha256

    aborted = storage.writer("big/two.bin")
    for _ in range(12):
        aborted.write(block)
    aborted.abort()
    assert storage.list_sizes("big") == {"one.bin": 12 * len(block)}
    assert storage.list_sizes("_tmp") == {}
    if storage.url.startswith("s3://"):
        bucket = storage.root.split("/", 1)[0]
        assert storage.fs.list_multipart_uploads(bucket) == []


def test_writer_is_invisible_until_commit(storage):
    writer = storage.writer("a/b.txt")
    writer.write(b"half")
    assert not storage.exists("a/b.txt")
    stored = writer.commit()
    assert storage.exists("a/b.txt")
    assert stored.size == 4 and stored.sha256 == hashlib.sha256(b"half").hexdigest()


def test_aborted_write_leaves_nothing(storage):
    writer = storage.writer("x.bin")
    writer.write(b"partial")
    writer.abort()
    assert not storage.exists("x.bin")
    assert storage.list_sizes("_tmp") == {}


def test_failed_stream_leaves_nothing(storage):
    class Broken:
        def read(self, _):
            raise OSError("connection reset")

    with pytest.raises(OSError):
        storage.put_stream("y.bin", Broken())
    assert not storage.exists("y.bin")


def test_ranges_chunks_and_delete_prefix(storage):
    storage.put_bytes("d/one", b"0123456789")
    assert storage.read_range("d/one", 3, 6) == b"345"
    assert b"".join(storage.iter_chunks("d/one", 8)) == b"89"
    assert storage.list_sizes("d") == {"one": 10}
    storage.delete_prefix("d")
    assert not storage.exists("d/one")
    assert storage.list_sizes("d") == {}


def test_logs_read_from_segments_and_from_the_final_file(storage):
    storage.put_bytes(layout.segment_key("j", "stdout", 0), b"hello ")
    storage.put_bytes(layout.segment_key("j", "stdout", 6), b"world\n")
    assert layout.read_log(storage, "j", "stdout", 0, 100) == b"hello world\n"
    assert layout.read_log(storage, "j", "stdout", 3, 5) == b"lo wo"
    assert layout.read_log(storage, "j", "stdout", 12, 100) == b""
    storage.put_bytes(layout.log_key("j", "stdout"), b"hello world\n")
    storage.delete_prefix(layout.log_segments_prefix("j", "stdout"))
    assert layout.read_log(storage, "j", "stdout", 6, 100) == b"world\n"
    assert layout.log_size(storage, "j", "stdout") == 12
    assert layout.read_log(storage, "missing", "stderr", 0, 10) == b""


@pytest.mark.parametrize("path", ["../x", "/abs", "a/../../b", "", "a\x00b", "C:/x", "~/x"])
def test_unsafe_paths_are_refused(path):
    from orchestrator.paths import safe_relative_path

    with pytest.raises(ValueError):
        safe_relative_path(path)


def test_safe_paths_are_normalised():
    from orchestrator.paths import safe_relative_path

    assert safe_relative_path("a/./b//c.txt") == "a/b/c.txt"


def test_storage_pickles_as_url_and_options(tmp_path):
    import pickle

    original = Storage(str(tmp_path / "p"), auto_mkdir=True)
    original.put_bytes("k", b"v")
    copy = pickle.loads(pickle.dumps(original))
    assert (copy.url, copy.options) == (original.url, original.options)
    assert copy.read_range("k", 0) == b"v"
