"""schemathesis against the live server's /api/v1/openapi.json, with a token: a bounded run
(schemathesis's deterministic coverage cases, then a few generated requests per operation with
a fixed seed and no shrinking) that fails on any 5xx, any
undocumented status or media type, any body that does not match the documented schema, and
any operation that answers a valid request without its token. The harness is
tests/fuzzing.py; benchmarks/fuzz_api.py runs it much longer with every check."""

from __future__ import annotations

import httpx
import pytest

from tests.fuzzing import CI_CHECKS, EXCLUDED, fuzz, load_schema, make_seeds, send_cases

MAX_EXAMPLES = 10  # generated per operation and generation mode (positive, negative)
SEED = 20261122
BIG = 2**63  # one past what the job store's integers hold
SCHEMA_ITSELF = "GET /api/v1/openapi.json"  # schemathesis does not fuzz the document it loaded


@pytest.fixture
def fuzz_server(make_server):
    """A server with a token, so every route but /health needs one; sweeps are capped small so
    that even a generated dry run stays quick."""
    server = make_server(max_sweep_runs=100)
    token = server.running.service.tokens.create("alice")
    return server, token


@pytest.mark.timeout(600)
def test_every_operation_answers_as_documented(fuzz_server):
    server, token = fuzz_server
    api = server.url + "/api/v1"
    seeds = make_seeds(api, token)
    assert not seeds.problems, seeds.problems
    schema = load_schema(api, token)
    report = fuzz(schema, token, seeds, max_examples=MAX_EXAMPLES, checks=CI_CHECKS, seed=SEED,
                  coverage=True)
    print(report.summary())
    assert not report.findings, report.summary()
    documented = {f"{m.upper()} {p}" for p, ops in schema.raw_schema["paths"].items() for m in ops}
    assert set(report.operations) == documented - EXCLUDED - {SCHEMA_ITSELF}
    # the token was accepted: the seeded resources were served, not refused
    for operation in ("GET /api/v1/jobs/{job_id}", "GET /api/v1/jobs/{job_id}/files/{path}",
                      "GET /api/v1/jobs/{job_id}/logs", "GET /api/v1/sweeps/{sweep_id}/results",
                      "GET /api/v1/binaries/{name}"):
        assert report.successes(operation) > 0, report.summary()


@pytest.mark.timeout(300)
def test_edge_values_found_by_fuzzing_answer_as_documented(fuzz_server):
    """Requests the long run (benchmarks/fuzz_api.py) and probing around it found answered
    with a 5xx, replayed every time: integers past what SQLite holds, a log offset past any
    file's end, a binary name ending in a newline."""
    server, token = fuzz_server
    api = server.url + "/api/v1"
    seeds = make_seeds(api, token)
    assert not seeds.problems, seeds.problems
    schema = load_schema(api, token)
    binary, job = seeds.values["name"][0], seeds.values["job_id"][0]
    cases = [
        schema["/api/v1/binaries/{name}"]["GET"].Case(
            path_parameters={"name": binary}, query={"version": str(BIG)}),
        schema["/api/v1/binaries/{name}/content"]["GET"].Case(
            path_parameters={"name": binary}, query={"version": str(BIG)}),
        schema["/api/v1/jobs"]["POST"].Case(
            body={"command": "true", "submit": False, "binaries": [f"{binary}@{BIG}"]},
            media_type="application/json"),
        schema["/api/v1/jobs/{job_id}/logs"]["GET"].Case(
            path_parameters={"job_id": job}, query={"offset": str(2**62)}),
        # a name the route takes but safe_name should refuse ('$' matches before a final '\n')
        schema["/api/v1/binaries/{name}"]["POST"].Case(
            path_parameters={"name": "fuzz\n"}, body=b"#!/bin/sh\n",
            media_type="application/octet-stream"),
        # following a finished job's log ends (the fuzzer never follows: a job may not end)
        schema["/api/v1/jobs/{job_id}/logs"]["GET"].Case(
            path_parameters={"job_id": job}, query={"follow": "true", "stream": "stderr"}),
    ]
    report = send_cases(cases, token, CI_CHECKS)
    assert not report.findings, report.summary()


def test_every_operation_but_health_refuses_a_request_without_token(fuzz_server):
    server, token = fuzz_server
    api = server.url + "/api/v1"
    spec = httpx.get(f"{api}/openapi.json", headers={"Authorization": f"Token {token}"}).json()
    assert spec["security"] == [{"token": []}]
    for path, operations in spec["paths"].items():
        url = server.url + path.format(job_id="j1", sweep_id="s1", name="tool", path="a.txt",
                                       version="1.0.0", revision_num="1")
        for method, operation in operations.items():
            for headers in ({}, {"Authorization": "Token orch_wrong"}):
                answer = httpx.request(method, url, headers=headers, timeout=30)
                if operation.get("security") == []:
                    assert answer.status_code == 200, (method, path, answer.text)
                    continue
                assert answer.status_code == 401, (method, path, headers, answer.text)
                assert answer.headers["WWW-Authenticate"].startswith("Token")
                assert answer.json()["error"]["code"] == "unauthorized"


def test_the_event_stream_opens_with_a_token_only(fuzz_server):
    """/events never ends, so it is not fuzzed: its opening is checked against the document."""
    server, token = fuzz_server
    api = server.url + "/api/v1"
    spec = httpx.get(f"{api}/openapi.json", headers={"Authorization": f"Token {token}"}).json()
    documented = spec["paths"]["/api/v1/events"]["get"]["responses"]["200"]["content"]
    headers = {"Authorization": f"Token {token}"}
    with httpx.stream("GET", f"{api}/events", headers=headers, timeout=30) as answer:
        assert answer.status_code == 200
        assert answer.headers["Content-Type"].split(";")[0] in documented
        assert next(answer.iter_text()).startswith(": stream open")
    refused = httpx.get(f"{api}/events", timeout=30)
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
