"""Ports for servers the tests start, that no other process can take before they bind them.

A port picked by binding port 0 comes from the kernel's ephemeral range, which every other
bind(0) on the machine draws from too: a Dask scheduler or worker starting meanwhile (or, with
pytest-xdist, another test process) could take it between the pick and the server's own bind.
So ports are picked below that range, where bind(0) never reaches, each test process in a block
of its own, and checked free.
"""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

FIRST_PORT = 20000
BLOCK = 1500  # ports per test process
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")


def _block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # gw0, gw1... under pytest-xdist
    number = int(worker[2:]) if worker[2:].isdigit() else 0
    start = FIRST_PORT + number * BLOCK
    ephemeral = int(EPHEMERAL_RANGE.read_text().split()[0]) if EPHEMERAL_RANGE.exists() else 32768
    if start + BLOCK > ephemeral:
        raise RuntimeError(f"test process {worker} has no ports left below the ephemeral range ({ephemeral})")
    return range(start, start + BLOCK)


_candidates = itertools.cycle(_block())


def free_port() -> int:
    """A port of this test process's block that nothing listens on or holds now."""
    for _ in range(BLOCK):
        port = next(_candidates)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port left in this test process's block")
