"""Entry points in multi-user mode (tokens, TLS, root workers): each user's function runs under
their own uid with a clean environment, in a context no other user's job ever shares, and
cannot reach the scheduler through orchestrator.get_client()."""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator

import cloudpickle
import pytest

from orchestrator.config import Settings
from tests.support.tenants import Tenants, tenants_on
from tests.support.wheels import wordcount_wheel

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="running jobs as other users needs root")


@pytest.fixture(scope="module")
def tenants(tmp_path_factory, dask_cluster) -> Iterator[Tenants]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("entry-isolation") / "data", port=0, **dask_cluster.settings)
    with tenants_on(settings) as tenants:
        for user in ("alice", "bob"):
            response = tenants[user].post("/binaries/wordcount", content=wordcount_wheel(1))
            assert response.status_code == 201, response.text
        yield tenants


def run(tenants: Tenants, user: str, entrypoint: str, **body) -> dict:
    response = tenants[user].post("/jobs", params={"sync": "true", "timeout": 120},
                                  json={"entrypoint": entrypoint, "binaries": ["wordcount"], **body})
    assert response.status_code == 201, response.text
    return response.json()


def test_each_users_function_runs_as_that_user_in_a_context_of_their_own(tenants):
    alice = run(tenants, "alice", "wordcount.jobs:context_info")["result"]["value"]
    bob = run(tenants, "bob", "wordcount.jobs:context_info")["result"]["value"]
    alice_again = run(tenants, "alice", "wordcount.jobs:context_info")["result"]["value"]

    assert 0 not in (alice["uid"], bob["uid"]) and alice["uid"] != bob["uid"]
    assert alice["pid"] != bob["pid"]  # never one context for two users
    assert alice_again["pid"] == alice["pid"] and alice_again["imported_at"] == alice["imported_at"]
    leaked = [name for name in alice["env"] if name.startswith(("ORCHESTRATOR_", "AWS_", "FSSPEC"))]
    assert not leaked and "JOB_ID" in alice["env"]


def test_a_users_function_cannot_reach_the_cluster(tenants):
    job = run(tenants, "bob", "wordcount.jobs:fan_out", kwargs={"n": 3})

    assert job["status"] == "FAILED"
    assert "cannot reach the cluster in multi-user mode" in job["status_reason"]


def test_a_pickled_callable_runs_under_its_owners_identity(tenants):
    def whoami():
        return os.getuid()

    payload = base64.b64encode(cloudpickle.dumps((whoami, (), {}))).decode()
    response = tenants["alice"].post("/jobs", params={"sync": "true", "timeout": 120}, json={"pickled": payload})

    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "COMPLETED", job
    assert job["result"]["value"] not in (0, None)


def test_others_contexts_are_not_listed(tenants):
    run(tenants, "alice", "wordcount.jobs:context_info")
    run(tenants, "bob", "wordcount.jobs:context_info")

    def owners(user: str) -> set[str]:
        workers = tenants[user].get("/cluster").json()["workers"]
        return {context["owner"] for worker in workers for context in worker["contexts"]}

    from tests.support import wait_until

    wait_until(lambda: owners("root") >= {"alice", "bob"}, 30, "both contexts listed for the admin")
    assert owners("alice") == {"alice"} and owners("bob") == {"bob"}
