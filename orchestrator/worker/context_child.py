"""A warm Python context: the child process that runs entry points (and callables sent over
REST) for one owner and one set of artifacts, job after job, as a Spark Jobserver context does.

The worker starts it as `python -c <this file's text> FD OPTIONS`: it imports nothing of the
orchestrator, so it starts fast and can run under a job owner's identity without reading the
orchestrator's install. Modules it imports stay imported: the second job of an application
pays no import. On the socket FD the worker sends, per job, one byte carrying the job's
stdout and stderr descriptors, then a framed JSON request (and, for a pickled callable, a
framed payload); the child answers with one framed JSON reply. A reply with `"fatal": true`
(a MemoryError) is its last: the worker replaces it.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import struct
import sys
import traceback
import types
from typing import Any

HEADER = struct.Struct("!I")
CONTEXT_MODULE = "_orchestrator_warm_context"  # what orchestrator.get_client() looks for
RETURN_FILE = "return.pkl"  # storage/layout.py's: this file imports nothing of the orchestrator


def read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = sock.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the worker closed the context's socket")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket) -> bytes:
    (size,) = HEADER.unpack(read_exactly(sock, HEADER.size))
    return read_exactly(sock, size)


def write_frame(sock: socket.socket, data: bytes) -> None:
    sock.sendall(HEADER.pack(len(data)) + data)


def resolve(entrypoint: str) -> Any:
    """'package.module:function' (or 'module:Class.method') to the object it names."""
    module_name, _, qualname = entrypoint.partition(":")
    try:
        target = importlib.import_module(module_name)
    except BaseException as exc:  # noqa: BLE001 - a broken module is the job's failure
        raise LookupError(f"cannot import {module_name!r}: {type(exc).__name__}: {exc}") from exc
    for part in qualname.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise LookupError(f"module {module_name!r} has no {qualname!r}") from None
    if not callable(target):
        raise LookupError(f"{entrypoint} is not callable (a {type(target).__name__})")
    return target


def call(request: dict[str, Any], payload: bytes | None) -> dict[str, Any]:
    """Run one job's function; the reply says what it returned or why it failed."""
    if payload is not None:
        import cloudpickle

        function, args, kwargs = cloudpickle.loads(payload)
        kwargs = {**kwargs, **(request.get("kwargs") or {})}
    else:
        try:
            function = resolve(request["entrypoint"])
        except LookupError as exc:
            return {"error": f"entry point {request['entrypoint']}: {exc}"}
        args, kwargs = (), request.get("kwargs") or {}
    value = function(*args, **kwargs)
    try:
        text = json.dumps(value)
    except (TypeError, ValueError, RecursionError) as exc:
        if payload is None:
            return {"error": f"the return value is not JSON: {type(exc).__name__}: {exc}"}
        import cloudpickle

        with open(RETURN_FILE, "wb") as out:  # an output of the job, as the embedded API keeps it
            out.write(cloudpickle.dumps(value))
        return {"value": repr(value)[:1000], "pickled": True}
    return {"value_json": text}


def run_job(request: dict[str, Any], payload: bytes | None, fds: list[int], base_env: dict[str, str],
            context: types.ModuleType) -> dict[str, Any]:
    """One job: its folder, environment and log files for the time of the call, then back."""
    os.dup2(fds[0], 1)
    os.dup2(fds[1], 2)
    for fd in fds:
        os.close(fd)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update({**base_env, **request["env"]})
    context.task_key, context.announced = request["task_key"], False
    try:
        return call(request, payload)
    except MemoryError:
        return {"error": "MemoryError: the function ran out of memory", "fatal": True}
    except SystemExit as exc:
        return {"error": f"SystemExit: the function exited (code {exc.code!r})"}
    except BaseException as exc:  # noqa: BLE001 - the function's own failure is the job's
        traceback.print_exc()
        return {"error": f"{type(exc).__name__}: {exc}"[:2000]}
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        context.task_key = None
        os.environ.clear()
        os.environ.update(base_env)
        os.chdir("/")


def stand_in_for_the_orchestrator(context: types.ModuleType) -> None:
    """A job owner's context may run a Python without the orchestrator installed (the worker's
    own is out of the job's reach): `orchestrator.get_client()` still answers why not."""
    import importlib.util

    if importlib.util.find_spec("orchestrator") is not None:
        return

    def get_client() -> Any:
        refusal = (context.cluster or {}).get("refused")
        raise RuntimeError(refusal or "the orchestrator is not installed for this context's Python")

    stand_in = types.ModuleType("orchestrator")
    stand_in.get_client = get_client
    sys.modules["orchestrator"] = stand_in


def serve(fd: int, site_folders: list[str], worker_path: list[str]) -> None:
    """`worker_path`: the worker's own module path, which a single-user context shares (its
    orchestrator and libraries); a job owner's context gets none."""
    sock = socket.socket(fileno=fd)
    own = [entry for entry in sys.path if entry not in worker_path]
    sys.path[:] = [*site_folders, *worker_path, *own]
    sys.stdout.reconfigure(line_buffering=True)  # the job's log reads what it printed so far
    context = types.ModuleType(CONTEXT_MODULE)
    context.cluster = context.client = context.task_key = None
    context.announced = False
    context.sites = site_folders

    def announce_cluster_use() -> None:
        """Tell the worker once per job that it fans out: the worker frees its own thread
        for the job's tasks while it waits (Dask's secede), as worker_client does."""
        if not context.announced and context.task_key is not None:
            context.announced = True
            write_frame(sock, json.dumps({"event": "uses_cluster"}).encode())

    context.announce_cluster_use = announce_cluster_use
    sys.modules[CONTEXT_MODULE] = context
    stand_in_for_the_orchestrator(context)
    base_env = dict(os.environ)
    quiet = os.open(os.devnull, os.O_RDWR)
    while True:
        try:
            _, fds, _, _ = socket.recv_fds(sock, 1, 2)
            if len(fds) != 2:
                return
            request = json.loads(read_frame(sock))
            payload = read_frame(sock) if request.get("pickled") else None
        except (EOFError, OSError):
            return  # the worker went away or dropped this context
        if request.get("cluster") is not None:
            context.cluster = request["cluster"]
        reply = run_job(request, payload, fds, base_env, context)
        os.dup2(quiet, 1)
        os.dup2(quiet, 2)
        write_frame(sock, json.dumps(reply).encode())
        if reply.get("fatal"):
            os._exit(70)


if __name__ == "__main__":
    options = json.loads(sys.argv[2])
    serve(int(sys.argv[1]), options["sites"], options["path"])
