"""A lean concurrent HTTP/1.1 POST client and a bare Tornado app that commits each POST to
SQLite: the load and the baseline of benchmarks/rest_submit.py's acceptance figure.

The client runs in a process of its own, on raw asyncio streams over keep-alive connections,
so that what is measured is the server's cost per request, not an HTTP library's: the same
client measures the orchestrator and the bare app, on the same machine, in the same run.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

BARE_COMMIT_APP = textwrap.dedent('''
    import json, sqlite3, sys, uuid
    import tornado.ioloop, tornado.web
    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    db = sqlite3.connect(sys.argv[1], isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute("CREATE TABLE jobs (id TEXT PRIMARY KEY, spec TEXT, status TEXT)")

    class Bare(tornado.web.RequestHandler):
        def post(self):
            spec = json.loads(self.request.body)
            job = {"id": uuid.uuid4().hex[:12], "status": "QUEUED", **spec}
            db.execute("BEGIN IMMEDIATE")
            db.execute("INSERT INTO jobs VALUES (?, ?, ?)", (job["id"], json.dumps(spec), "QUEUED"))
            db.execute("COMMIT")
            self.set_status(201)
            self.set_header("Content-Type", "application/json")
            self.finish(json.dumps(job))

    app = tornado.web.Application([(r"/api/v1/jobs", Bare)])
    sockets = bind_sockets(0, address="127.0.0.1")[:1]
    HTTPServer(app).add_sockets(sockets)
    print(sockets[0].getsockname()[1], flush=True)
    tornado.ioloop.IOLoop.current().start()
''')


async def _post_many(port: int, path: str, body: bytes, count: int, concurrency: int) -> float:
    request = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    left = [count]

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while left[0] > 0:
                left[0] -= 1
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head.split(b" ", 2)[1])
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                answer = await reader.readexactly(length)
                if status != 201:
                    raise RuntimeError(f"POST {path} answered {status}: {answer[:300]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return time.perf_counter() - started


def _client_process(port: int, path: str, body: bytes, count: int, concurrency: int, answer) -> None:
    try:
        answer.put(asyncio.run(_post_many(port, path, body, count, concurrency)))
    except BaseException as exc:  # noqa: BLE001 - handed to the parent, which raises it
        answer.put(exc)


def post_many(port: int, body: dict, count: int, concurrency: int, path: str = "/api/v1/jobs") -> float:
    """Seconds for `count` POSTs of `body` over `concurrency` keep-alive connections, from a
    client process of its own (each must answer 201)."""
    context = multiprocessing.get_context("spawn")
    answer = context.Queue()
    client = context.Process(target=_client_process,
                             args=(port, path, json.dumps(body).encode(), count, concurrency, answer))
    client.start()
    try:
        result = answer.get(timeout=600)
    finally:
        client.join(60)
    if isinstance(result, BaseException):
        raise result
    return result


def bare_commit_rate(body: dict, count: int, concurrency: int) -> float:
    """Requests/s of the bare Tornado app that commits each POST to SQLite (WAL)."""
    with tempfile.TemporaryDirectory(prefix="bare-commit-") as folder:
        app = subprocess.Popen([sys.executable, "-c", BARE_COMMIT_APP, str(Path(folder) / "bare.db")],
                               stdout=subprocess.PIPE, text=True)
        try:
            assert app.stdout is not None
            port = int(app.stdout.readline())
            seconds = post_many(port, body, count, concurrency)
        finally:
            app.terminate()
            app.wait(60)
            if app.stdout is not None:
                app.stdout.close()
    return count / seconds
