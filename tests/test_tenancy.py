"""Tenancy, sharing, secrets and per-user limits over real HTTP with several users' tokens.

Another user's job, sweep or binary must be indistinguishable from a missing one (404), an
admin sees everyone's, a shared job is readable but not changeable, and a secret value is
given to the process and to nobody else.
"""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from tests.support import wait_until

CANARY = "s3cr3t-canary-7f1d"


class User:
    """An HTTP client holding one user's token."""

    def __init__(self, server, name: str, admin: bool = False):
        self.name = name
        token = server.running.service.tokens.create(name, admin)
        self.http = httpx.Client(base_url=server.url + "/api/v1", timeout=60,
                                 headers={"Authorization": f"Token {token}"})

    def job(self, **fields) -> dict:
        response = self.http.post("/jobs", json=fields)
        assert response.status_code == 201, response.text
        return response.json()

    def wait(self, job_id: str) -> dict:
        return self.http.get(f"/jobs/{job_id}", params={"wait": 60}).json()


@pytest.fixture
def users(server):
    alice, bob, root = User(server, "alice"), User(server, "bob"), User(server, "root", admin=True)
    yield alice, bob, root
    for user in (alice, bob, root):
        user.http.close()


def job_routes(job_id: str) -> list[tuple[str, str]]:
    """Every route that names one job, with its method."""
    return [("GET", f"/jobs/{job_id}"), ("GET", f"/jobs/{job_id}/statuses"),
            ("GET", f"/jobs/{job_id}/logs"), ("GET", f"/jobs/{job_id}/files"),
            ("GET", f"/jobs/{job_id}/files/out.txt"), ("GET", f"/jobs/{job_id}/result"),
            ("GET", f"/jobs/{job_id}/share"), ("POST", f"/jobs/{job_id}/stop"),
            ("POST", f"/jobs/{job_id}/submit"), ("DELETE", f"/jobs/{job_id}")]


def test_another_users_work_is_a_404_and_admins_see_everything(users):
    alice, bob, root = users
    job = alice.job(command="echo mine > out.txt")
    assert alice.wait(job["id"])["status"] == "COMPLETED"
    assert job["owner"] == "alice"

    for method, path in job_routes(job["id"]):
        theirs = bob.http.request(method, path)
        missing = bob.http.request(method, path.replace(job["id"], "000000000000"))
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["error"]["code"] == missing.json()["error"]["code"] == "not_found"
    patched = bob.http.patch(f"/jobs/{job['id']}", json={"name": "stolen"})
    assert patched.status_code == 404
    share = bob.http.post(f"/jobs/{job['id']}/share", json={"users": ["bob"]})
    assert share.status_code == 404

    assert bob.http.get("/jobs").json()["count"] == 0
    assert bob.http.get("/jobs", params={"owner": "alice"}).json()["count"] == 0
    bulk = bob.http.post("/jobs/stop", json={"ids": [job["id"]]}).json()
    assert bulk == {"stopping": []}
    deleted = bob.http.request("DELETE", "/jobs", json={"ids": [job["id"]]}).json()
    assert deleted["deleted"] == [] and alice.http.get(f"/jobs/{job['id']}").status_code == 200

    assert [j["id"] for j in alice.http.get("/jobs").json()["results"]] == [job["id"]]
    everyone = root.http.get("/jobs", params={"owner": "alice"}).json()
    assert [j["id"] for j in everyone["results"]] == [job["id"]]
    assert root.http.get(f"/jobs/{job['id']}/files/out.txt").content == b"mine\n"


def test_sweeps_are_private_to_their_owner(users):
    alice, bob, root = users
    sweep = alice.http.post("/sweeps", json={
        "command": "echo ${x}", "variables": [{"name": "x", "values": [1, 2]}],
    }).json()
    assert alice.http.get(f"/sweeps/{sweep['id']}", params={"wait": 60}).json()["status"] == "COMPLETED"
    for path in ("", "/runs", "/results", "/finished"):
        assert bob.http.get(f"/sweeps/{sweep['id']}{path}").status_code == 404, path
    assert bob.http.post(f"/sweeps/{sweep['id']}/stop").status_code == 404
    assert bob.http.get("/sweeps").json()["count"] == 0
    run = alice.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"][0]
    assert bob.http.get(f"/jobs/{run['id']}/logs").status_code == 404
    assert bob.http.get("/jobs", params={"sweep_id": sweep["id"]}).json()["count"] == 0
    assert root.http.get(f"/sweeps/{sweep['id']}/results").status_code == 200
    assert sweep["id"] in [s["id"] for s in root.http.get("/sweeps").json()["results"]]


def test_each_user_has_their_own_binary_names(users):
    alice, bob, root = users
    assert alice.http.post("/binaries/tool.sh", content=b"echo alice").status_code == 201
    assert bob.http.get("/binaries/tool.sh").status_code == 404
    assert bob.http.get("/binaries/tool.sh/content").status_code == 404
    assert bob.http.delete("/binaries/tool.sh").status_code == 404
    assert bob.http.get("/binaries").json()["count"] == 0
    refused = bob.http.post("/jobs", json={"command": "sh tool.sh", "binaries": ["tool.sh"]})
    assert refused.status_code == 400 and "binaries.0" in refused.json()["error"]["fields"]
    as_other = bob.http.post("/jobs", json={"command": "sh tool.sh", "binaries": ["alice/tool.sh"]})
    assert as_other.status_code == 400

    mine = bob.http.post("/binaries/tool.sh", content=b"echo bob")
    assert mine.status_code == 201 and mine.json()["version"] == 1  # bob's own name, version 1
    ran = bob.wait(bob.job(command="sh tool.sh", binaries=["tool.sh"])["id"])
    assert ran["binaries"] == ["tool.sh@1"]
    assert bob.http.get(f"/jobs/{ran['id']}/logs").text == "bob\n"

    assert root.http.get("/binaries").json()["count"] == 2
    theirs = root.http.get("/binaries/tool.sh/content", params={"owner": "alice"})
    assert theirs.content == b"echo alice"
    borrowed = root.wait(root.job(command="sh tool.sh", binaries=["alice/tool.sh"])["id"])
    assert borrowed["binaries"] == ["alice/tool.sh@1"] and borrowed["status"] == "COMPLETED"
    assert root.http.get(f"/jobs/{borrowed['id']}/logs").text == "alice\n"


def test_a_shared_job_is_readable_but_not_changeable(users):
    alice, bob, _ = users
    job = alice.job(command="echo shared > out.txt; echo log")
    alice.wait(job["id"])
    shared = alice.http.post(f"/jobs/{job['id']}/share", json={"users": ["bob", "alice"]})
    assert shared.status_code == 200 and shared.json()["shared_with"] == ["bob"]

    assert bob.http.get(f"/jobs/{job['id']}").json()["owner"] == "alice"
    assert bob.http.get(f"/jobs/{job['id']}/logs").text == "log\n"
    assert bob.http.get(f"/jobs/{job['id']}/files/out.txt").content == b"shared\n"
    assert bob.http.get(f"/jobs/{job['id']}/result").json()["exit_code"] == 0
    for method, path in [("POST", f"/jobs/{job['id']}/stop"), ("DELETE", f"/jobs/{job['id']}"),
                         ("POST", f"/jobs/{job['id']}/submit"), ("GET", f"/jobs/{job['id']}/share")]:
        refused = bob.http.request(method, path)
        assert refused.status_code == 403 and refused.json()["error"]["code"] == "forbidden", path
    assert bob.http.get("/jobs").json()["count"] == 0  # his own list stays his own
    assert [j["id"] for j in bob.http.get("/jobs", params={"shared": "true"}).json()["results"]] == [job["id"]]

    revoked = alice.http.request("DELETE", f"/jobs/{job['id']}/share", json={"users": ["bob"]})
    assert revoked.json()["shared_with"] == []
    assert bob.http.get(f"/jobs/{job['id']}").status_code == 404
    bad = alice.http.post(f"/jobs/{job['id']}/share", json={"users": ["../etc"]})
    assert bad.status_code == 400 and "users.0" in bad.json()["error"]["fields"]


def test_events_reach_only_their_owner(users):
    alice, bob, _ = users
    heard: list[dict] = []
    opened = threading.Event()

    def listen() -> None:
        with bob.http.stream("GET", "/events", timeout=30) as stream:
            for line in stream.iter_lines():
                opened.set()
                if line.startswith("data: "):
                    heard.append(json.loads(line[6:]))
                    if heard[-1].get("status") == "COMPLETED":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    assert opened.wait(10)
    alices = alice.job(command="true")
    alice.wait(alices["id"])
    bobs = bob.job(command="true")
    listener.join(30)
    assert heard and {event["job_id"] for event in heard} == {bobs["id"]}
    assert bob.http.get("/events", params={"job_id": alices["id"]}).status_code == 404


def test_secret_env_reaches_the_process_and_nothing_else(server, users, caplog):
    alice, _, _ = users
    job = alice.job(command='test "$API_KEY" = "$EXPECTED" && echo ok',
                    env={"EXPECTED": CANARY}, secret_env={"API_KEY": CANARY})
    done = alice.wait(job["id"])
    assert done["status"] == "COMPLETED", done
    assert done["secret_env"] == {"API_KEY": "****"}
    assert alice.http.get(f"/jobs/{job['id']}/logs").text == "ok\n"

    sweep = alice.http.post("/sweeps", json={
        "command": 'test "$TOKEN" = "$WANT" && echo run ${i}', "env": {"WANT": CANARY},
        "secret_env": {"TOKEN": CANARY}, "variables": [{"name": "i", "values": [1, 2, 3]}],
    }).json()
    finished = alice.http.get(f"/sweeps/{sweep['id']}", params={"wait": 60}).json()
    assert finished["counts"].get("COMPLETED") == 3, finished
    assert finished["spec"]["secret_env"] == {"TOKEN": "****"}

    # The canary above also sits in a plain env entry (to check it); this one is only secret.
    secret_only = alice.job(command="true", secret_env={"ONLY_SECRET": CANARY + "-only"})
    alice.wait(secret_only["id"])
    ledger = (server.settings.data_dir / "jobs.db").read_bytes()
    wal = server.settings.data_dir / "jobs.db-wal"
    ledger += wal.read_bytes() if wal.exists() else b""
    assert (CANARY + "-only").encode() not in ledger
    for body in (alice.http.get(f"/jobs/{secret_only['id']}").text,
                 alice.http.get(f"/jobs/{secret_only['id']}/statuses").text,
                 alice.http.get("/jobs", params={"page_size": 1000}).text):
        assert CANARY + "-only" not in body
    assert CANARY + "-only" not in caplog.text


def test_a_replaced_key_fails_the_job_clearly(server, users):
    alice, _, _ = users
    from cryptography.fernet import Fernet

    from orchestrator.server.secrets import Sealer

    service = server.running.service
    saved = alice.job(command="true", secret_env={"K": "v"}, submit=False)
    original = service.engine.sealer
    service.engine.sealer = Sealer(Fernet.generate_key())  # as if secret.key were replaced
    try:
        alice.http.post(f"/jobs/{saved['id']}/submit")
        failed = alice.wait(saved["id"])
    finally:
        service.engine.sealer = original
    assert failed["status"] == "FAILED"
    assert "cannot be decrypted" in failed["status_reason"]


def test_queued_jobs_per_user_are_capped(make_server):
    server = make_server(max_queued_per_user=2)
    alice, bob = User(server, "alice"), User(server, "bob")
    blocker = alice.job(command="sleep 60", resources={"cores": 2})
    wait_until(lambda: alice.http.get(f"/jobs/{blocker['id']}").json()["status"] == "RUNNING", 30,
               "the blocker RUNNING", every=0.05)
    queued = [alice.job(command="true", resources={"cores": 2}) for _ in range(2)]
    refused = alice.http.post("/jobs", json={"command": "true"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "quota_exceeded"
    assert "submit" in refused.json()["error"]["fields"]
    saved = alice.job(command="true", submit=False)  # saving is not queueing
    assert alice.http.post(f"/jobs/{saved['id']}/submit").status_code == 429
    assert bob.http.post("/jobs", json={"command": "true", "resources": {"cores": 2}}).status_code == 201
    alice.http.post("/jobs/stop", json={"ids": [blocker["id"], *(j["id"] for j in queued)]})
    assert alice.wait(blocker["id"])["status"] == "STOPPED"
    for user in (alice, bob):
        user.http.close()


def test_python_api_and_cli_carry_secrets_and_shares(server, users, capsys, monkeypatch):
    from orchestrator import Orchestrator
    from orchestrator.cli import main

    alice, bob, _ = users
    token = alice.http.headers["Authorization"].split()[-1]
    with Orchestrator.connect(server.url, token=token) as orch:
        job = orch.submit('test "$K" = "$WANT"', env={"WANT": CANARY}, secret_env={"K": CANARY})
        assert job.wait(60).status.value == "COMPLETED"
        assert job.record.secret_env == {"K": "****"}
        assert job.share("bob") == ["bob"]
        assert bob.http.get(f"/jobs/{job.id}").status_code == 200
        assert job.share("bob", revoke=True) == []

    monkeypatch.setenv("ORCHESTRATOR_TOKEN", token)
    monkeypatch.setenv("MY_SECRET", CANARY)
    assert main(["submit", "--url", server.url, "--wait", "--json", "--secret-env", "MY_SECRET",
                 f'test "$MY_SECRET" = {CANARY}']) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "COMPLETED" and record["secret_env"] == {"MY_SECRET": "****"}
    monkeypatch.delenv("MY_SECRET")
    with pytest.raises(SystemExit, match="MY_SECRET: not set"):
        main(["submit", "--url", server.url, "--secret-env", "MY_SECRET", "true"])
