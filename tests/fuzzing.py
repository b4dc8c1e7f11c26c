"""Fuzzing the REST API against its own OpenAPI document with schemathesis, as an
authenticated user. Shared by tests/test_fuzz.py (a short CI run) and benchmarks/fuzz_api.py
(a long run).

Every documented operation gets generated requests (positive: what the document allows;
negative: what it forbids), sent with a valid token, and each answer goes through
schemathesis's checks: no 5xx, a documented status, a documented media type, a body that
matches the documented schema. Path parameters are drawn both from generated values and from
real resources made first (a finished job with output files, a job saved unsubmitted, a
sweep, a binary), so the routes get past their 404s.

Nothing fuzzed runs a command and no request can wait long: created jobs are saved with
submit=false, sweeps are dry runs, ?wait/?timeout are capped, ?follow is off, and the
Server-Sent Events stream is left out (it never ends by design). The run stops on nothing:
each distinct failure is collected with a curl command that reproduces it.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks, not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.parameters import ParameterLocation
from schemathesis.core.result import Err
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    response_schema_conformance,
    status_code_conformance,
)

API = "/api/v1"
# Streams that end only when the client goes: never fuzzed.
EXCLUDED = {"GET /api/v1/events"}
CI_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    ignored_auth,
]
MAX_QUERY_WAIT_S = 0.2
REDACTED = "Token [redacted]"

SEED_SCRIPT = (
    "echo hello; echo oops >&2; mkdir -p res/sub; printf 0123456789 > res/a.txt; "
    "echo b > res/sub/b.dat; echo '{\"loss\": 0.25, \"tag\": \"a\"}' > outputs.json"
)


def all_checks() -> list[Callable]:
    """Every check this schemathesis has (the long run's set)."""
    load_all_checks()
    return list(CHECKS.get_all())


# ---- real resources for path parameters ------------------------------------------------


@dataclass
class Seeds:
    """Path parameters that name real resources, per parameter name."""

    values: dict[str, list[str]] = field(default_factory=dict)
    # (job_id, path) of a real output file
    files: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def add(self, name: str, value: str) -> None:
        self.values.setdefault(name, []).append(value)

    def path_parameters(self, names: Iterable[str]) -> list[dict[str, str]]:
        """Fixed path parameters for an operation whose path has `names`."""
        names = set(names)
        if names == {"job_id", "path"}:
            return [{"job_id": job, "path": path} for job, path in self.files]
        fixed: list[dict[str, str]] = []
        for name in sorted(names):
            fixed += [{name: value} for value in self.values.get(name, [])]
        return fixed


def make_seeds(api_url: str, token: str, timeout: float = 120) -> Seeds:
    """A finished job with outputs, an unsubmitted job, a finished sweep and a binary with two
    versions. A step that fails is noted and skipped: the fuzzing reports the route anyway."""
    seeds = Seeds()
    headers = {"Authorization": f"Token {token}"}
    with httpx.Client(base_url=api_url, headers=headers, timeout=timeout) as http:

        def step(what: str, send: Callable[[], httpx.Response], expect: int) -> dict | None:
            try:
                response = send()
            except httpx.HTTPError as exc:
                seeds.problems.append(f"{what}: {type(exc).__name__}: {exc}")
                return None
            if response.status_code != expect:
                seeds.problems.append(f"{what}: {response.status_code} {response.text[:300]}")
                return None
            return response.json() if response.content else {}

        for content in (b"#!/bin/sh\necho v1\n", b"#!/bin/sh\necho v2\n"):
            binary = step("upload binary", lambda c=content: http.post(
                "/binaries/fuzz-tool", content=c,
                headers={"Content-Type": "application/octet-stream"}), 201)
        if binary:
            seeds.add("name", binary["name"])
        done = step("finished job", lambda: http.post(
            "/jobs", params={"sync": "true", "timeout": 60},
            json={"name": "fuzz-done", "command": SEED_SCRIPT}), 201)
        if done:
            seeds.add("job_id", done["id"])
            seeds.files += [(done["id"], "res/a.txt"), (done["id"], "res/sub/b.dat")]
        created = step("unsubmitted job", lambda: http.post(
            "/jobs", json={"name": "fuzz-created", "command": "true", "submit": False}), 201)
        if created:
            seeds.add("job_id", created["id"])
        sweep = step("sweep", lambda: http.post("/sweeps", json={
            "name": "fuzz-sweep", "command": "echo ${x}",
            "variables": [{"name": "x", "values": [1, 2]}]}), 201)
        if sweep:
            step("sweep end", lambda: http.get(f"/sweeps/{sweep['id']}", params={"wait": 60}), 200)
            seeds.add("sweep_id", sweep["id"])
            runs = step("sweep runs", lambda: http.get(f"/sweeps/{sweep['id']}/runs"), 200)
            for run in (runs or {}).get("results", [])[:1]:
                seeds.add("job_id", run["id"])
    return seeds


# ---- keeping generated requests harmless and short -------------------------------------


def _capped(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return value  # invalid: answered 400 at once
    return str(MAX_QUERY_WAIT_S) if number > MAX_QUERY_WAIT_S else value


def bound_case(case: schemathesis.Case) -> None:
    """Make a generated request safe to send: nothing it creates runs, nothing waits long."""
    query = case.query
    if isinstance(query, dict):
        for name in ("wait", "timeout"):
            if name in query:
                value = query[name]
                query[name] = [_capped(v) for v in value] if isinstance(value, list) else _capped(value)
        if "follow" in query:
            query["follow"] = "false"
        if "sync" in query and "timeout" not in query:
            query["timeout"] = str(MAX_QUERY_WAIT_S)
    body = case.body
    path = case.operation.path
    if isinstance(body, dict) and case.method.upper() == "POST":
        multipart = (case.media_type or "").startswith("multipart/")
        if path == f"{API}/jobs":
            body["submit"] = "false" if multipart else False
        elif path == f"{API}/sweeps":
            if multipart:
                body["spec"] = _dry_spec(body.get("spec"))
            else:
                body["dry_run"] = True


def _dry_spec(spec: Any) -> Any:
    try:
        parsed = json.loads(spec)
    except (TypeError, ValueError):
        return spec
    if isinstance(parsed, dict):
        parsed["dry_run"] = True
        return json.dumps(parsed)
    return spec


# ---- the run ---------------------------------------------------------------------------


@dataclass
class Finding:
    operation: str
    kind: str
    status: int | None
    request: str  # a curl command
    detail: str
    count: int = 1

    def __str__(self) -> str:
        seen = f" (x{self.count})" if self.count > 1 else ""
        status = f" -> {self.status}" if self.status is not None else ""
        return f"{self.operation}{status}: {self.kind}{seen}\n    {self.request}\n    {self.detail}"


@dataclass
class Report:
    operations: list[str] = field(default_factory=list)
    requests: int = 0
    statuses: dict[str, dict[int, int]] = field(default_factory=dict)  # operation -> status -> n
    findings: dict[tuple[str, str, int | None], Finding] = field(default_factory=dict)
    unsatisfiable: list[str] = field(default_factory=list)  # no request could be generated
    seconds: float = 0.0

    def record(self, operation: str, status: int) -> None:
        self.requests += 1
        counts = self.statuses.setdefault(operation, {})
        counts[status] = counts.get(status, 0) + 1

    def fail(self, finding: Finding) -> None:
        key = (finding.operation, finding.kind, finding.status)
        if key in self.findings:
            self.findings[key].count += 1
        else:
            self.findings[key] = finding

    def successes(self, operation: str) -> int:
        return sum(n for status, n in self.statuses.get(operation, {}).items() if status < 300)

    def summary(self) -> str:
        lines = [
            f"{len(self.operations)} operations, {self.requests} requests in {self.seconds:.1f} s, "
            f"{len(self.findings)} distinct failures"
        ]
        for operation in self.operations:
            counts = ", ".join(f"{s}: {n}" for s, n in sorted(self.statuses.get(operation, {}).items()))
            lines.append(f"  {operation:50} {counts}")
        if self.unsatisfiable:
            lines.append(f"  nothing to generate: {', '.join(self.unsatisfiable)}")
        lines += [str(finding) for finding in self.findings.values()]
        return "\n".join(lines)


def load_schema(api_url: str, token: str) -> Any:
    return schemathesis.openapi.from_url(
        f"{api_url}/openapi.json", headers={"Authorization": f"Token {token}"}, timeout=30
    )


def _order(operation: Any) -> tuple[int, str]:
    """Reads first, then writes, and what deletes or stops in bulk last (it could take the
    seeded resources with it)."""
    method = operation.method.upper()
    destructive = method == "DELETE" or operation.path.endswith("/stop")
    return (2 if destructive else 0 if method == "GET" else 1, operation.label)


def fuzz(
    schema: Any,
    token: str,
    seeds: Seeds,
    *,
    max_examples: int,
    checks: list[Callable],
    modes: tuple[GenerationMode, ...] = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE),
    seed: int | None = None,
    coverage: bool = False,
    request_timeout: float = 30,
    exclude: set[str] = EXCLUDED,
    log: Callable[[str], None] | None = None,
) -> Report:
    """Fuzz every operation of `schema` (but `exclude`); never raises on a failed check.

    `max_examples` generated requests per operation and mode; with `coverage`, first
    schemathesis's deterministic coverage cases (boundary values, wrong types, missing and
    unexpected parameters, undocumented methods), sent on the seeded resources where the
    case keeps its path valid."""
    report = Report()
    started = time.monotonic()
    operations = [_operation(result) for result in schema.get_all_operations()]
    operations = sorted((op for op in operations if op.label not in exclude), key=_order)
    with requests.Session() as session:
        sender = _Sender(session, {"Authorization": f"Token {token}"}, checks, report, request_timeout)
        for operation in operations:
            report.operations.append(operation.label)
            fixed = seeds.path_parameters(p.name for p in operation.path_parameters)
            if coverage:
                config = schema.config.generation_for(operation=operation)
                for case in schema.iter_coverage_cases(
                    operation, generation_modes=list(modes), generation_config=config
                ):
                    if fixed and not _negative_at(case, ParameterLocation.PATH):
                        case.path_parameters = {**(case.path_parameters or {}), **fixed[0]}
                    sender.send(case)
            for mode in modes:
                strategies = [operation.as_strategy(generation_mode=mode)]
                strategies += [
                    operation.as_strategy(generation_mode=mode, path_parameters=values)
                    for values in fixed
                ]
                try:
                    _generate(st.one_of(strategies), sender.send, max_examples, seed)
                except Unsatisfiable:  # e.g. nothing to make invalid in GET /health
                    report.unsatisfiable.append(f"{operation.label} ({mode.value})")
            if log is not None:
                log(f"{operation.label}: {report.statuses.get(operation.label, {})}")
    report.seconds = time.monotonic() - started
    return report


def send_cases(
    cases: Iterable[schemathesis.Case], token: str, checks: list[Callable], request_timeout: float = 30
) -> Report:
    """Send hand-made cases (e.g. `schema[path][method].Case(query=...)`) as the fuzzer does."""
    report = Report()
    started = time.monotonic()
    with requests.Session() as session:
        sender = _Sender(session, {"Authorization": f"Token {token}"}, checks, report, request_timeout)
        for case in cases:
            if case.operation.label not in report.operations:
                report.operations.append(case.operation.label)
            sender.send(case)
    report.seconds = time.monotonic() - started
    return report


def _operation(result: Any) -> Any:
    if isinstance(result, Err):
        raise result.err()  # the document itself is broken
    return result.ok()


def _negative_at(case: schemathesis.Case, location: ParameterLocation) -> bool:
    meta = case.meta
    return meta is not None and meta.is_negative_at(location)


def _generate(strategy: Any, send: Callable, max_examples: int, seed: int | None) -> None:
    @settings(
        max_examples=max_examples,
        derandomize=seed is None,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: failures are collected
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def run(case: schemathesis.Case) -> None:
        send(case)

    if seed is not None:
        run = hypothesis_seed(seed)(run)
    run()


@dataclass
class _Sender:
    session: requests.Session
    auth: dict[str, str]
    checks: list[Callable]
    report: Report
    timeout: float

    def send(self, case: schemathesis.Case) -> None:
        """Send one case with the token, check the answer, record what failed."""
        bound_case(case)
        label, report = case.operation.label, self.report
        curl = case.as_curl_command(headers={"Authorization": REDACTED})
        # A case made invalid in its headers is one without a token, or with a wrong one: sent
        # as generated, it must be refused. Every other case carries the token.
        headers = None if _negative_at(case, ParameterLocation.HEADER) else self.auth
        try:
            response = case.call(session=self.session, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            report.fail(Finding(label, f"no answer: {type(exc).__name__}", None, curl, str(exc)[:300]))
            return
        report.record(label, response.status_code)
        sent = response.request.headers.get("Authorization")
        if response.status_code == 401 and sent == self.auth["Authorization"]:
            report.fail(Finding(label, "401 with a valid token", 401, curl, response.text[:300]))
        transport = {"session": self.session, "headers": headers, "timeout": self.timeout}
        try:
            case.validate_response(
                response, checks=self.checks, headers=headers, transport_kwargs=transport
            )
        except FailureGroup as group:
            for failure in group.exceptions:
                _add(report, label, failure, response, curl)
        except Failure as failure:
            _add(report, label, failure, response, curl)


def _add(report: Report, label: str, failure: Failure, response: Any, curl: str) -> None:
    body = response.text
    detail = f"{failure.message.strip()[:600]} | body: {body[:300]}"
    kind = f"{failure.code} {failure.title}{_reason(body)}"
    report.fail(Finding(label, kind, response.status_code, curl, detail))


def _reason(body: str) -> str:
    """The error code and fields of an error answer: what tells one rejection from another."""
    try:
        error = json.loads(body)["error"]
        fields = {re.sub(r"\.\d+", ".N", name) for name in error.get("fields") or {}}
        return f" [{error['code']}: {', '.join(sorted(fields))}]"
    except (ValueError, KeyError, TypeError):
        return ""
