"""The REST server: a Service with its Tornado HTTP front on the same event loop."""

from __future__ import annotations

import ipaddress
import logging
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from tornado.httpserver import HTTPServer

from orchestrator.config import Settings
from orchestrator.server.api.app import make_app
from orchestrator.server.api.uploads import READ_CHUNK_SIZE
from orchestrator.server.auth import AuthState, Tokens, is_loopback
from orchestrator.server.ledger import Store
from orchestrator.server.service import Service

# How long a thread may hold the GIL while another waits for it (Python's default: 5 ms). The
# ledger's writes run in threads and give the GIL up at every SQLite statement; taking it back
# from a busy event loop cost them up to the whole interval each time, which made stopping a
# million runs half as slow again (benchmarks/big_sweep.py). A shorter turn keeps them moving.
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass
class RunningServer:
    service: Service
    http: HTTPServer
    url: str

    async def close(self) -> None:
        self.http.stop()
        await self.http.close_all_connections()
        await self.service.close()


async def start_server(settings: Settings) -> RunningServer:
    if not is_loopback(settings.host):
        refuse_unprotected(settings.host, _auth_state(settings))  # before a cluster starts
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    # The API's port first: the embedded cluster's scheduler and workers, which take free ports
    # as they start, can then never take the one asked for, and a port in use fails at once.
    sockets = _bind(settings.host, settings.port)
    service: Service | None = None
    try:
        service = await Service(settings).start()
        quiet_repeated_errors()
        http = HTTPServer(
            make_app(service),
            max_body_size=settings.max_json_bytes,
            chunk_size=READ_CHUNK_SIZE,
            idle_connection_timeout=300,
            body_timeout=None,  # bodies time out on inactivity instead (body_idle_timeout_s)
        )
        http.add_sockets(sockets)
    except BaseException:
        for sock in sockets:
            sock.close()
        if service is not None:
            await service.close()
        raise
    port = sockets[0].getsockname()[1]
    url = f"http://{_url_host(settings.host)}:{port}"
    service.api_url = url  # the dashboard's explorer links a run to its logs and files here
    return RunningServer(service, http, url)


def _auth_state(settings: Settings) -> AuthState:
    store = Store(settings.database_path)
    try:
        return Tokens(store).state()
    finally:
        store.close()


def refuse_unprotected(host: str, auth: AuthState) -> None:
    """Anyone who can reach a non-loopback address could run commands: serve there only
    when tokens are required and someone holds one."""
    create = "Create one first: orchestrator token create USER --admin"
    if not auth.required and auth.changed_by is None:
        raise ValueError(f"refusing to serve on {host} without API tokens: anyone who can reach it "
                         f"could run commands. {create}")
    if not auth.required:
        raise ValueError(f"refusing to serve on {host}: authentication was turned off by "
                         f"{auth.changed_by} at {auth.changed_at}. Turn it on: orchestrator auth enable")
    if auth.locked:
        raise ValueError(f"refusing to serve on {host}: authentication is required but no token is "
                         f"active (all were revoked), so nobody could use it. {create}")


class RepeatFilter(logging.Filter):
    """Lets at most `burst` identical records through per `interval_s`, then counts the rest
    and reports the count on the next one let through. An exhausted resource (EMFILE in the
    accept loop, which fires again on every loop turn) would otherwise flood the log."""

    def __init__(
        self, burst: int = 5, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic,
        keys: int = 1000,
    ):
        super().__init__()
        self.burst, self.interval_s, self.clock, self.keys = burst, interval_s, clock, keys
        self._seen: dict[tuple, list] = {}  # key -> [window start, passed, suppressed]

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        key = _record_key(record)
        seen = self._seen.get(key)
        if seen is None or now - seen[0] >= self.interval_s:
            suppressed = seen[2] if seen else 0
            self._remember(key, [now, 1, 0])
            if suppressed:
                record.msg = f"{record.msg} [{suppressed} identical messages suppressed in the last " \
                             f"{self.interval_s:g} s]"
            return True
        if seen[1] < self.burst:
            seen[1] += 1
            return True
        seen[2] += 1
        return False

    def _remember(self, key: tuple, entry: list) -> None:
        self._seen.pop(key, None)
        if len(self._seen) >= self.keys:
            self._seen.pop(next(iter(self._seen)))
        self._seen[key] = entry


QUIETED_LOGGERS = ("asyncio", "tornado.application", "tornado.general")


def quiet_repeated_errors() -> None:
    """Rate-limit the loggers of tornado's accept loop and connection handling (once)."""
    for name in QUIETED_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RepeatFilter) for f in logger.filters):
            logger.addFilter(RepeatFilter())


def _record_key(record: logging.LogRecord) -> tuple:
    exc = record.exc_info[1] if record.exc_info else None
    return (record.name, record.levelno, str(record.msg)[:200], type(exc).__name__, str(exc)[:200])


def _bind(host: str, port: int) -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(port, address=host, reuse_port=False)[:1]


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host
