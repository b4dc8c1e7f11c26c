"""Refuse requests a browser was tricked into sending: DNS rebinding and cross-site requests.

Tokens do not help on a one-user machine (none exist) and a browser never holds one, so two
checks run before authentication and before any body is read:

- the Host header must name this server (a rebound DNS name pointing at 127.0.0.1 still
  arrives with the attacker's name in it): 403 `forbidden_host`;
- a state-changing request whose Origin (or, lacking one, Referer) is present must come from
  the origin it is addressed to, scheme aside (a proxy may terminate TLS): 403 `cross_origin`.
  Clients that send neither (curl, the Python API) are not browsers and pass.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from orchestrator.errors import CrossOrigin, ForbiddenHost
from orchestrator.server.auth import is_loopback, split_host

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})
STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DEFAULT_PORTS = {"http": 80, "https": 443}


__all__ = ["CrossOrigin", "ForbiddenHost", "HostPolicy"]


@dataclass(frozen=True)
class HostPolicy:
    """The names this server answers to; built once when the app is made."""

    names: frozenset[str]

    @classmethod
    def for_bind(cls, host: str, allowed_hosts: Iterable[str]) -> HostPolicy:
        """Loopback names, the bound address (also 0.0.0.0, the URL `serve` prints then) and
        the configured names; bound to every interface, the server cannot know its names, so it
        takes this machine's host name, FQDN and interface addresses (a proxy's or DNS name
        must be configured)."""
        bound = host.strip("[]").lower()
        names = {*LOOPBACK_NAMES, *allowed_hosts, bound} - {""}
        if bound in WILDCARDS:
            names |= _machine_names()
        return cls(frozenset(names))

    def allows(self, name: str) -> bool:
        return name in self.names or is_loopback(name)

    def check_host(self, host_header: str) -> None:
        try:
            name, _ = split_host(host_header)
        except ValueError:
            name = None
        if name is None or not self.allows(name):
            raise ForbiddenHost(
                f"this server does not answer to the host {host_header[:100]!r}; list it in "
                "ORCHESTRATOR_ALLOWED_HOSTS (serve --allowed-host) if it is a name of this server",
                {"Host": "not a name of this server"},
            )

    def check_origin(self, method: str, host_header: str, origin: str | None, referer: str | None) -> None:
        """For state-changing methods: the page that sent the request must be this server."""
        if method not in STATE_CHANGING:
            return
        header, source = ("Origin", origin) if origin is not None else ("Referer", referer)
        if source is None:
            return
        if not same_origin(source, host_header):
            raise CrossOrigin(
                f"cross-origin {method} refused: {header} {source[:100]!r} is not this server",
                {header: "not this server's origin"},
            )


def same_origin(url: str, host_header: str) -> bool:
    """Whether `url` (an Origin or Referer) has the host and port the request was sent to;
    a Host without a port stands for the URL scheme's default port."""
    scheme, sep, rest = url.strip().partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        return False  # 'null' (sandboxed pages, file://) and anything else that is no web origin
    authority = rest.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    try:
        name, port = split_host(authority)
        host, host_port = split_host(host_header)
    except ValueError:
        return False
    default = DEFAULT_PORTS[scheme]
    return name == host and (port or default) == (host_port or default)


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower(), socket.getfqdn().lower()}
    try:
        import psutil

        for addresses in psutil.net_if_addrs().values():
            for address in addresses:
                if address.family in (socket.AF_INET, socket.AF_INET6):
                    names.add(str(ipaddress.ip_address(address.address.split("%", 1)[0])))
    except (ImportError, OSError, ValueError):
        pass
    return {name for name in names if name}
