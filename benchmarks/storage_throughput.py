"""Binary upload and download through the REST API, against s3fs and a local copy.

One run starts, as subprocesses on 127.0.0.1, a moto S3 server and `orchestrator serve` on
``--storage s3://<bucket>/orch`` (its storage options given in ORCHESTRATOR_STORAGE_OPTIONS),
then, for one file of ``--size-mib`` MiB of random bytes written to a temporary folder:

1. s3fs put / get:  ``S3FileSystem.put`` and ``get`` of that file to and from the same moto
   bucket, the floor set by the S3 client alone;
2. api upload / download (S3 storage): ``POST /api/v1/binaries/{name}`` with the file as a
   raw body streamed from disk, and ``GET /api/v1/binaries/{name}/content`` streamed to a
   file;
3. local copy: ``shutil.copyfile`` of the file, the floor of the machine's disk (page cache);
4. api upload / download (local storage): the same requests to a second server on its default
   storage (a folder under its data directory), started once the first is stopped.

Each figure is the best of ``--repeat`` runs; a baseline is measured in the same conditions as
the API figures it is compared with (alternated with them, the same servers up). Every
download is checked against the file's sha256, and so is the digest the API recorded. The
ratios are of throughputs (the same bytes everywhere, so the inverse ratio of times):

    ratio api-upload/s3fs-put = X.XX
    ratio api-download/s3fs-get = X.XX          (target >= 0.8)
    ratio api-upload-local/local-copy = X.XX
    ratio api-download-local/local-copy = X.XX

    python benchmarks/storage_throughput.py --size-mib 256 --repeat 3
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from loopback import free_port  # its sibling: run as a script

REPO = Path(__file__).resolve().parent.parent
CHUNK = 1024 * 1024
BUCKET = "orchestrator-bench"
CREDENTIALS = {"key": "testing", "secret": "testing"}
START_TIMEOUT_S = 120.0
TRANSFER_TIMEOUT_S = 1800.0


# ---- processes ----------------------------------------------------------------------------


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    """A process in its own session (so that its children stop with it), output to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=log.parent,
            start_new_session=True,
        )


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL for the whole session if it is not gone within 60 s."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def wait_answering(url: str, process: subprocess.Popen, log: Path, ok: Callable[[int], bool]) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited: {log.read_text(errors='replace')[-2000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if ok(httpx.get(url, timeout=2).status_code):
                return
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer in {START_TIMEOUT_S} s")


def start_moto(work: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = work / "moto.log"
    process = spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], log)
    try:
        wait_answering(url, process, log, lambda status: status < 500)
    except BaseException:
        stop(process)
        raise
    return process, url


def start_orchestrator(work: Path, name: str, storage: str | None = None,
                       storage_options: dict | None = None) -> tuple[subprocess.Popen, str]:
    """`orchestrator serve` from this checkout, one worker, its data folder under `work`."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data_dir = work / f"{name}-data"
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1",
           "ORCHESTRATOR_DASHBOARD_ADDRESS": "127.0.0.1:0"}
    if storage_options is not None:
        env["ORCHESTRATOR_STORAGE_OPTIONS"] = json.dumps(storage_options)
    argv = [sys.executable, "-m", "orchestrator.cli", "serve", "--port", str(port),
            "--data-dir", str(data_dir), "--workers", "1"]
    if storage:
        argv += ["--storage", storage]
    log = work / f"{name}.log"
    process = spawn(argv, log, env)
    try:
        wait_answering(f"{url}/api/v1/health", process, log, lambda status: status == 200)
    except BaseException:
        stop(process)
        raise
    return process, url


# ---- file and measurements ----------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """`size` random bytes at `path`; returns their sha256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(CHUNK, remaining))
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def timed(action: Callable[[], object]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def drop(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


class Api:
    """Upload and download of one binary name through one server."""

    def __init__(self, url: str, name: str):
        self.http = httpx.Client(base_url=f"{url}/api/v1", timeout=TRANSFER_TIMEOUT_S)
        self.name = name

    def upload(self, source: Path) -> dict:
        response = self.http.post(
            f"/binaries/{self.name}", content=file_chunks(source),
            headers={"Content-Type": "application/octet-stream",
                     "Content-Length": str(source.stat().st_size)},
        )
        if response.status_code != 201:
            raise RuntimeError(f"upload answered {response.status_code}: {response.text}")
        return response.json()

    def download(self, target: Path) -> str:
        """Streams the latest version to `target`; returns the X-Checksum-Sha256 header."""
        with self.http.stream("GET", f"/binaries/{self.name}/content") as response, \
                open(target, "wb") as out:
            if response.status_code != 200:
                response.read()
                raise RuntimeError(f"download answered {response.status_code}: {response.text}")
            for chunk in response.iter_raw(CHUNK):
                out.write(chunk)
            return response.headers["X-Checksum-Sha256"]

    def delete(self) -> None:
        self.http.delete(f"/binaries/{self.name}")

    def close(self) -> None:
        self.http.close()


def measure_api(api: Api, source: Path, target: Path, digest: str) -> tuple[float, float]:
    """(upload s, download s) of one round trip, checked byte for byte; the binary is deleted."""
    record: dict = {}
    upload_s = timed(lambda: record.update(api.upload(source)))
    if record["sha256"] != digest or record["size"] != source.stat().st_size:
        raise AssertionError(f"the API recorded {record}, not sha256 {digest}")
    header: list[str] = []
    download_s = timed(lambda: header.append(api.download(target)))
    if header[0] != digest or sha256_of(target) != digest:
        raise AssertionError("the downloaded bytes differ from the uploaded file")
    drop(target)
    api.delete()  # keeps moto's memory (and the disk) to one copy at a time
    return upload_s, download_s


def measure_s3fs(fs, source: Path, target: Path, digest: str) -> tuple[float, float]:
    key = f"{BUCKET}/direct/{source.name}"
    put_s = timed(lambda: fs.put(str(source), key))
    fs.invalidate_cache()
    get_s = timed(lambda: fs.get(key, str(target)))
    if sha256_of(target) != digest:
        raise AssertionError("s3fs get returned other bytes than were put")
    drop(target)
    fs.rm(key)
    return put_s, get_s


def measure_copy(source: Path, target: Path, digest: str) -> float:
    copy_s = timed(lambda: shutil.copyfile(source, target))
    if sha256_of(target) != digest:
        raise AssertionError("the local copy differs")
    drop(target)
    return copy_s


# ---- report -------------------------------------------------------------------------------


def rate(size: int, seconds: float) -> float:
    return size / 1e6 / seconds if seconds > 0 else float("inf")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256, help="size of the file in MiB")
    parser.add_argument("--repeat", type=int, default=3, help="measurements of each; the best counts")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    size = args.size_mib * CHUNK
    work = Path(tempfile.mkdtemp(prefix="storage-bench-"))
    source, target = work / "payload.bin", work / "download.bin"
    best: dict[str, float] = {}

    def keep(label: str, seconds: float) -> None:
        best[label] = min(seconds, best.get(label, float("inf")))

    try:
        digest = make_file(source, size)
        print(f"file: {args.size_mib} MiB ({size} bytes), sha256 {digest[:16]}..., best of {args.repeat}")

        import s3fs

        moto, s3_url = start_moto(work)
        try:
            options = {**CREDENTIALS, "endpoint_url": s3_url}
            fs = s3fs.S3FileSystem(**options)
            fs.mkdir(BUCKET)
            server, url = start_orchestrator(work, "s3", f"s3://{BUCKET}/orch", options)
            api = Api(url, "payload.bin")
            try:
                for _ in range(args.repeat):  # alternated, so that both see the same noise
                    put_s, get_s = measure_s3fs(fs, source, target, digest)
                    keep("s3fs put", put_s)
                    keep("s3fs get", get_s)
                    upload_s, download_s = measure_api(api, source, target, digest)
                    keep("api upload (s3)", upload_s)
                    keep("api download (s3)", download_s)
            finally:
                api.close()
                stop(server)
        finally:
            stop(moto)

        server, url = start_orchestrator(work, "local")
        api = Api(url, "payload.bin")
        try:
            for _ in range(args.repeat):
                keep("local copy", measure_copy(source, target, digest))
                upload_s, download_s = measure_api(api, source, target, digest)
                keep("api upload (local)", upload_s)
                keep("api download (local)", download_s)
        finally:
            api.close()
            stop(server)

        for label, seconds in best.items():
            print(f"{label + ':':22s} {rate(size, seconds):8.1f} MB/s ({seconds:.2f} s)")
        ratios = [
            ("api-upload/s3fs-put", "api upload (s3)", "s3fs put"),
            ("api-download/s3fs-get", "api download (s3)", "s3fs get"),
            ("api-upload-local/local-copy", "api upload (local)", "local copy"),
            ("api-download-local/local-copy", "api download (local)", "local copy"),
        ]
        for name, measured, baseline in ratios:
            target_note = "   (target >= 0.8)" if name == "api-download/s3fs-get" else ""
            print(f"ratio {name} = {best[baseline] / best[measured]:.2f}{target_note}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
