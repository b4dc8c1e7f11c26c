"""A 1 GiB binary through `orchestrator serve`: streamed in and out, never held in memory."""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
import time
from collections.abc import Iterator

import httpx
import psutil
import pytest

from orchestrator.config import Settings
from tests.conftest import free_port, kill_session, serve_subprocess, wait_until_serving

SIZE = 2**30
CHUNK = 2**20
RSS_GROWTH_LIMIT = 200 * 2**20
SAMPLE_INTERVAL_S = 0.05


class RssSampler:
    """The peak resident memory of one process, sampled every 50 ms in a thread."""

    def __init__(self, process: psutil.Process):
        self.process = process
        self.peak = process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            self._stop.wait(SAMPLE_INTERVAL_S)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


class Payload:
    """SIZE pseudo-random bytes made chunk by chunk as the request body is sent."""

    def __init__(self, seed: int = 1234):
        self._random = random.Random(seed)
        self.digest = hashlib.sha256()
        self.sent = 0
        self.last_chunk = b""

    def __iter__(self) -> Iterator[bytes]:
        while self.sent < SIZE:
            chunk = self._random.randbytes(min(CHUNK, SIZE - self.sent))
            self.digest.update(chunk)
            self.sent += len(chunk)
            self.last_chunk = chunk
            yield chunk


@pytest.mark.timeout(300)
def test_1gib_binary_streams_up_and_down_in_bounded_server_memory(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert Settings(data_dir=data_dir).max_upload_bytes >= SIZE  # the default (10 GiB) fits it
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = serve_subprocess(data_dir, port)
    api = httpx.Client(base_url=url + "/api/v1", timeout=httpx.Timeout(120, connect=10))
    try:
        wait_until_serving(url, server)
        # Every path of the upload and download imported and warm before the baseline.
        assert api.post("/binaries/warm", content=b"x" * CHUNK,
                        headers={"Content-Type": "application/octet-stream"}).status_code == 201
        assert api.get("/binaries/warm/content").content == b"x" * CHUNK
        process = psutil.Process(server.pid)
        baseline = process.memory_info().rss

        payload = Payload()
        started = time.monotonic()
        with RssSampler(process) as upload_rss:
            response = api.post(
                "/binaries/big.bin", content=iter(payload),
                headers={"Content-Type": "application/octet-stream", "Content-Length": str(SIZE)},
            )
        upload_s = time.monotonic() - started
        assert response.status_code == 201, response.text
        digest = payload.digest.hexdigest()
        record = response.json()
        assert (payload.sent, record["size"], record["sha256"]) == (SIZE, SIZE, digest)
        assert api.get("/binaries/big.bin").json()["sha256"] == digest

        ranged = api.get("/binaries/big.bin/content", headers={"Range": f"bytes=-{CHUNK}"})
        assert ranged.status_code == 206
        assert ranged.headers["Content-Range"] == f"bytes {SIZE - CHUNK}-{SIZE - 1}/{SIZE}"
        assert ranged.headers["Content-Length"] == str(CHUNK)
        assert ranged.content == payload.last_chunk

        downloaded, received = hashlib.sha256(), 0
        started = time.monotonic()
        with RssSampler(process) as download_rss, api.stream("GET", "/binaries/big.bin/content") as body:
            assert body.status_code == 200
            assert body.headers["Content-Length"] == str(SIZE)
            assert body.headers["X-Checksum-Sha256"] == digest
            for chunk in body.iter_bytes(CHUNK):
                downloaded.update(chunk)
                received += len(chunk)
        download_s = time.monotonic() - started
        assert (received, downloaded.hexdigest()) == (SIZE, digest)

        growth = {"upload": upload_rss.peak - baseline, "download": download_rss.peak - baseline}
        print(f"\n1 GiB upload {upload_s:.1f} s, download {download_s:.1f} s; peak server RSS "
              f"growth over {baseline / 2**20:.0f} MiB: upload {growth['upload'] / 2**20:.1f} MiB, "
              f"download {growth['download'] / 2**20:.1f} MiB")
        assert growth["upload"] < RSS_GROWTH_LIMIT, growth
        assert growth["download"] < RSS_GROWTH_LIMIT, growth
    finally:
        api.close()
        kill_session(server)
        shutil.rmtree(data_dir, ignore_errors=True)  # pytest keeps its last tmp dirs: not 1 GiB
