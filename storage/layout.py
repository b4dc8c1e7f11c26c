"""Where each kind of object lives in storage, and the log format readers and writers share.

    binaries/<owner>/<name>/<version>/content   each user has their own binary names
    jobs/<job_id>/inputs/<path>        files uploaded with the job
    jobs/<job_id>/outputs/<path>       what the job left in its working folder
    jobs/<job_id>/logs/<stream>.log    the whole log, once the attempt ended
    jobs/<job_id>/logs/<stream>/<offset>  segments shipped while it runs
    jobs/<job_id>/callable.pkl         a pickled Python callable job
    sweeps/<sweep_id>/inputs/<path>    files and templates shared by a sweep's runs
    sweeps/<sweep_id>/callable.pkl     the callable every run of a sweep calls
    sweeps/<sweep_id>/cases.csv        the cases CSV a sweep was created from

Logs are shipped as append-only segments named by their byte offset, because object stores
cannot append: a reader can tail any fsspec backend by listing segments past its offset.
"""

from __future__ import annotations

import posixpath

from orchestrator.storage.fsstore import Storage

LOG_STREAMS = ("stdout", "stderr")
RETURN_FILE = "return.pkl"  # the output holding a callable's value that JSON cannot hold (pickled)
OFFSET_DIGITS = 15


def binary_key(owner: str, name: str, version: int) -> str:
    return f"binaries/{owner}/{name}/{version}/content"


def binary_version(key: str) -> int:
    """The version in a binary's key (binaries/<owner>/<name>/<version>/content)."""
    return int(key.rsplit("/", 2)[-2])


def binary_prefix(owner: str, name: str) -> str:
    return f"binaries/{owner}/{name}"


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}"


def input_key(job_id: str, path: str) -> str:
    return f"jobs/{job_id}/inputs/{path}"


def output_key(job_id: str, path: str) -> str:
    return f"jobs/{job_id}/outputs/{path}"


def outputs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/outputs"


def attempt_prefix(job_id: str, attempt: int) -> str:
    """Where an attempt's outputs and logs are kept once a rerun starts the next one."""
    return f"{job_prefix(job_id)}/attempts/{attempt}/"


def callable_key(job_id: str) -> str:
    return f"jobs/{job_id}/callable.pkl"


def sweep_prefix(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}"


def sweep_input_key(sweep_id: str, path: str) -> str:
    return f"sweeps/{sweep_id}/inputs/{path}"


def sweep_cases_key(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}/cases.csv"


def sweep_callable_key(sweep_id: str) -> str:
    return f"sweeps/{sweep_id}/callable.pkl"


def log_key(job_id: str, stream: str) -> str:
    return f"jobs/{job_id}/logs/{stream}.log"


def logs_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/logs"


def log_segments_prefix(job_id: str, stream: str) -> str:
    return f"jobs/{job_id}/logs/{stream}"


def segment_key(job_id: str, stream: str, offset: int) -> str:
    return posixpath.join(log_segments_prefix(job_id, stream), f"{offset:0{OFFSET_DIGITS}d}")


def read_log(storage: Storage, job_id: str, stream: str, offset: int, limit: int) -> bytes:
    """Up to `limit` bytes of a job's log from `offset`, whether the job still runs or not."""
    final = log_key(job_id, stream)
    for _ in range(3):
        if storage.exists(final):
            return storage.read_range(final, offset, offset + limit)
        try:
            return _read_segments(storage, job_id, stream, offset, limit)
        except FileNotFoundError:
            continue  # segments were compacted into the final log meanwhile
    return b""


def log_size(storage: Storage, job_id: str, stream: str) -> int:
    final = log_key(job_id, stream)
    if storage.exists(final):
        return storage.size(final)
    sizes = storage.list_sizes(log_segments_prefix(job_id, stream))
    return sum(sizes.values())


def _read_segments(storage: Storage, job_id: str, stream: str, offset: int, limit: int) -> bytes:
    sizes = storage.list_sizes(log_segments_prefix(job_id, stream))
    parts: list[bytes] = []
    wanted = limit
    for name in sorted(sizes):
        if not name.isdigit() or wanted <= 0:
            continue
        start, size = int(name), sizes[name]
        if start + size <= offset:
            continue
        skip = max(0, offset - start)
        data = storage.read_range(segment_key(job_id, stream, start), skip, skip + wanted)
        parts.append(data)
        wanted -= len(data)
    return b"".join(parts)
