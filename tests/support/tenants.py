"""A multi-user server: alice and bob (users) and root (an admin), each with a client."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import httpx

from orchestrator.config import Settings
from tests.conftest import Server, start_test_server, stop_test_server
from tests.support import wait_until
from tests.support.raw_http import HANG_S


@dataclass
class Tenants:
    server: Server
    tokens: dict[str, str]
    clients: dict[str, httpx.Client]

    def __getitem__(self, user: str) -> httpx.Client:
        return self.clients[user]

    def job(self, user: str = "alice", command: str = "echo hi; echo err >&2; echo out > out.txt", **extra) -> dict:
        response = self[user].post("/jobs", params={"sync": "true", "timeout": 60},
                                   json={"command": command, **extra})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["status"] == "COMPLETED", job
        return job

    def running(self, user: str = "alice") -> dict:
        job = self[user].post("/jobs", json={"command": "sleep 600"}).json()
        wait_until(lambda: self[user].get(f"/jobs/{job['id']}").json()["status"] == "RUNNING", 60,
                   "job RUNNING")
        return job

    def stop(self, job: dict, user: str = "alice") -> None:
        self[user].post(f"/jobs/{job['id']}/stop")
        self[user].get(f"/jobs/{job['id']}", params={"wait": 30}, timeout=HANG_S)

    def sweep(self, user: str = "alice") -> dict:
        response = self[user].post("/sweeps", json={"command": "echo ${u} > out.txt",
                                                    "cases": [{"u": 1}, {"u": 2}]})
        assert response.status_code == 201, response.text
        done = self[user].get(f"/sweeps/{response.json()['id']}", params={"wait": 60}, timeout=HANG_S + 30)
        assert done.json()["status"] == "COMPLETED", done.text
        return done.json()


@contextlib.contextmanager
def token_holders(server: Server, admins: dict[str, bool], timeout: float = HANG_S) -> Iterator[Tenants]:
    """Tokens for these users (name -> admin) on a running server, each with its client."""
    tokens = {user: server.running.service.tokens.create(user, admin=admin) for user, admin in admins.items()}
    clients = {user: httpx.Client(base_url=server.url + "/api/v1", timeout=timeout,
                                  headers={"Authorization": f"Token {token}"})
               for user, token in tokens.items()}
    try:
        yield Tenants(server, tokens, clients)
    finally:
        for client in clients.values():
            client.close()


@contextlib.contextmanager
def tenants_on(settings: Settings) -> Iterator[Tenants]:
    """A server with three token holders: alice and bob (users) and root (an admin)."""
    server = start_test_server(settings)
    try:
        with token_holders(server, {"alice": False, "bob": False, "root": True}) as tenants:
            yield tenants
    finally:
        stop_test_server(server)
