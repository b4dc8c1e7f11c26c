"""The loopback address and a free port on it: shared by benchmarks/chaos.py (through
chaos_cluster.py) and benchmarks/api_latency.py, siblings that import it by plain module name
(they run as scripts)."""

from __future__ import annotations

import socket

HOST = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
