"""The REST server: a Service with its Tornado HTTP front on the same event loop."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from tornado.httpserver import HTTPServer

from orchestrator.api.app import make_app
from orchestrator.api.uploads import READ_CHUNK_SIZE
from orchestrator.auth import is_loopback
from orchestrator.config import Settings
from orchestrator.service import Service


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
    service = await Service(settings).start()
    try:
        if not is_loopback(settings.host) and not service.tokens.required():
            raise ValueError(
                f"refusing to serve on {settings.host} without API tokens: anyone who can reach it "
                "could run commands. Create one first: orchestrator token create USER --admin"
            )
        http = HTTPServer(
            make_app(service),
            max_body_size=settings.max_json_bytes,
            chunk_size=READ_CHUNK_SIZE,
            idle_connection_timeout=300,
            body_timeout=3600,
        )
        sockets = _bind(settings.host, settings.port)
        http.add_sockets(sockets)
    except BaseException:
        await service.close()
        raise
    port = sockets[0].getsockname()[1]
    return RunningServer(service, http, f"http://{_url_host(settings.host)}:{port}")


def _bind(host: str, port: int) -> list[socket.socket]:
    from tornado.netutil import bind_sockets

    return bind_sockets(port, address=host, reuse_port=False)[:1]


def _url_host(host: str) -> str:
    try:
        return f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        return host
