"""The Python API: one `Orchestrator` facade, embedded (no server) or over REST.

Both backends answer the same calls with the same models and raise the same exceptions, so
a script written against the embedded orchestrator runs unchanged against a server.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
from pydantic import ValidationError

from orchestrator.backend import Backend, Job, save_stream
from orchestrator.errors import from_json, validation_failed
from orchestrator.handle import EventStream
from orchestrator.models import (
    BinaryRecord,
    FileEntry,
    JobCreate,
    JobRecord,
    JobStatus,
    StatusChange,
)
from orchestrator.sweep_client import Sweep, load_spec_file, sweep_spec, validated
from orchestrator.sweeps import DryRun, FinishedRuns, ResultsTable, SweepCreate, SweepRecord

Files = list[str | os.PathLike] | dict[str, str | os.PathLike] | None


class Orchestrator:
    """`Orchestrator()` runs everything in this process; `Orchestrator.connect(url)` uses a server."""

    def __init__(self, settings: Any = None, *, _backend: Backend | None = None, **overrides: Any):
        if _backend is None:
            from orchestrator.config import Settings
            from orchestrator.embedded import EmbeddedBackend

            settings = settings or Settings(**overrides)
            _backend = EmbeddedBackend(settings)
        self._backend = _backend

    @classmethod
    def connect(cls, url: str, token: str | None = None, timeout: float = 60.0) -> Orchestrator:
        return cls(_backend=RemoteBackend(url, token or os.environ.get("ORCHESTRATOR_TOKEN"), timeout))

    def submit(
        self,
        command: str | list[str] | Callable,
        *args: Any,
        files: Files = None,
        binaries: list[str] | None = None,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        priority: int = 0,
        name: str | None = None,
        submit: bool = True,
        **kwargs: Any,
    ) -> Job:
        """Run a command (or, embedded, a Python callable called with *args, **kwargs).

        `secret_env` reaches the process like `env` but is stored sealed and shown as '****'."""
        fields = {
            "name": name, "binaries": binaries or [], "env": env or {}, "secret_env": secret_env or {},
            "resources": resources or {}, "timeout_s": timeout_s, "retries": retries,
            "priority": priority, "submit": submit,
        }
        if callable(command):
            fields["name"] = _callable_name(command, name)
            request = _job_request(command=_qualified_name(command), **fields)
            return Job(self._backend, self._backend.create_callable(request, command, args, kwargs))
        if args or kwargs:
            raise TypeError(f"unexpected arguments for a command job: {args or kwargs}")
        request = _job_request(command=command, **fields)
        return Job(self._backend, self._backend.create_job(request, _file_map(files)))

    def job(self, job_id: str) -> Job:
        return Job(self._backend, self._backend.get_job(job_id))

    def sweep(
        self,
        command: str | list[str] | Callable,
        *,
        variables: dict[str, Any] | None = None,
        design: str | dict[str, Any] | None = None,
        samples: int | None = None,
        seed: int | None = None,
        cases: Any = None,
        files: Files = None,
        templates: dict[str, str | os.PathLike] | None = None,
        include_nominal_run: bool = False,
        max_parallel: int | None = None,
        max_failures: int | None = None,
        dry_run: bool = False,
        name: str | None = None,
        binaries: list[str] | None = None,
        env: dict[str, str] | None = None,
        secret_env: dict[str, str] | None = None,
        resources: dict[str, Any] | None = None,
        timeout_s: float | None = None,
        retries: int = 0,
        priority: int = 0,
    ) -> Sweep | DryRun:
        """Run a command (or, embedded, a callable given the variables as keyword arguments)
        once per row of a run table: `variables` (generators: `linspace(...)`, a list, ...)
        with a `design`, or `cases` (rows, a DataFrame or a CSV path). A dry run returns the
        rendered table and runs nothing."""
        function = command if callable(command) else None
        if function is not None:
            name = _callable_name(function, name)
        spec, uploads = sweep_spec(
            None if function else command, variables=variables, design=design, samples=samples,
            seed=seed, cases=cases, templates=templates, name=name, binaries=binaries, env=env,
            secret_env=secret_env, resources=resources, timeout_s=timeout_s, retries=retries, priority=priority,
            include_nominal_run=include_nominal_run, max_parallel=max_parallel,
            max_failures=max_failures, dry_run=dry_run,
        )
        file_map = _file_map(files)
        if file_map:
            spec["files"] = sorted(file_map)
        return self.sweep_spec(spec, {**file_map, **uploads}, function)

    def sweep_spec(
        self, spec: dict[str, Any] | str | os.PathLike, files: dict[str, Path] | None = None,
        function: Callable | None = None,
    ) -> Sweep | DryRun:
        """A sweep from its REST spec, or from a spec.yaml / spec.json file path."""
        if not isinstance(spec, dict):
            spec, files = load_spec_file(spec)
        record = self._backend.create_sweep(validated(spec), files or {}, function)
        return record if isinstance(record, DryRun) else Sweep(self._backend, record)

    def get_sweep(self, sweep_id: str) -> Sweep:
        return Sweep(self._backend, self._backend.get_sweep(sweep_id))

    def sweeps(self) -> list[SweepRecord]:
        """Every sweep, oldest first."""
        return self._backend.list_sweeps()

    def events(self, job_id: str | None = None, sweep_id: str | None = None) -> EventStream:
        """Status changes as they happen (optionally of one job or one sweep), until closed."""
        return self._backend.events(job_id, sweep_id)

    def jobs(self, **filters: Any) -> list[Job]:
        """Jobs matching filters (status, search, sweep_id), oldest first."""
        _, records = self._backend.list_jobs(**filters)
        return [Job(self._backend, record) for record in records]

    def upload_binary(self, name: str, source: str | os.PathLike | bytes) -> BinaryRecord:
        data = source if isinstance(source, bytes) else Path(source)
        return self._backend.upload_binary(name, data)

    def binaries(self) -> list[BinaryRecord]:
        return self._backend.list_binaries()

    def close(self) -> None:
        self._backend.close()

    def __enter__(self) -> Orchestrator:
        return self

    def __exit__(self, *_: Any) -> None:
        self.close()


class RemoteBackend:
    """The REST API through httpx; errors come back as the same exception classes."""

    def __init__(self, url: str, token: str | None, timeout: float):
        headers = {"Authorization": f"Token {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/") + "/api/v1", headers=headers, timeout=timeout)

    def _call(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = {}
            raise from_json(response.status_code, body)
        return response

    def create_job(self, request: JobCreate, files: dict[str, Path]) -> JobRecord:
        body = request.model_dump(mode="json", exclude_none=True)
        if not files:
            return JobRecord.model_validate(self._call("POST", "/jobs", json=body).json())
        form = {k: v if isinstance(v, str) else _json(v) for k, v in body.items()}
        handles = [(dest, open(path, "rb")) for dest, path in files.items()]
        try:
            parts = [("file[]", (dest, handle, "application/octet-stream")) for dest, handle in handles]
            response = self._call("POST", "/jobs", data=form, files=parts)
        finally:
            for _, handle in handles:
                handle.close()
        return JobRecord.model_validate(response.json())

    def create_callable(self, request, function, args, kwargs) -> JobRecord:
        raise TypeError("Python callables run only on an embedded Orchestrator(); send a command")

    def get_job(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._call("GET", f"/jobs/{job_id}").json())

    def list_jobs(self, **filters: Any) -> tuple[int, list[JobRecord]]:
        params = {k: (v.value if isinstance(v, JobStatus) else v) for k, v in filters.items() if v is not None}
        records: list[JobRecord] = []
        page, count = 1, 0
        while True:
            body = self._call("GET", "/jobs", params={**params, "page": page, "page_size": 1000}).json()
            count = body["count"]
            records += [JobRecord.model_validate(item) for item in body["results"]]
            if not body["next"]:
                return count, records
            page += 1

    def wait(self, job_id: str, timeout: float | None) -> JobRecord:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            remaining = 30.0 if deadline is None else max(0.0, min(30.0, deadline - time.monotonic()))
            response = self._call(
                "GET", f"/jobs/{job_id}", params={"wait": remaining} if remaining else {},
                timeout=remaining + 30,
            )
            record = JobRecord.model_validate(response.json())
            if record.status.is_terminal or (deadline is not None and time.monotonic() >= deadline):
                return record
            if record.status == JobStatus.CREATED:
                time.sleep(min(1.0, remaining))

    def stop(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._call("POST", f"/jobs/{job_id}/stop").json())

    def share(self, job_id: str, users: list[str], revoke: bool) -> list[str]:
        method = "DELETE" if revoke else "POST"
        return self._call(method, f"/jobs/{job_id}/share", json={"users": users}).json()["shared_with"]

    def delete(self, job_id: str, stop: bool) -> None:
        self._call("DELETE", f"/jobs/{job_id}", params={"stop": "true"} if stop else {})

    def statuses(self, job_id: str) -> list[StatusChange]:
        return [StatusChange.model_validate(s) for s in self._call("GET", f"/jobs/{job_id}/statuses").json()]

    def read_log(self, job_id: str, stream: str, offset: int) -> bytes:
        params = {"stream": stream, "offset": offset}
        return self._call("GET", f"/jobs/{job_id}/logs", params=params).content

    def list_files(self, job_id: str, search: str | None) -> list[FileEntry]:
        files, page = [], 1
        while True:
            params = {"page": page, "page_size": 1000, **({"search": search} if search else {})}
            body = self._call("GET", f"/jobs/{job_id}/files", params=params).json()
            files += [FileEntry.model_validate(item) for item in body["results"]]
            if not body["next"]:
                return files
            page += 1

    def download(self, job_id: str, path: str, dest: Path, verify: bool) -> None:
        params = {"verify": "true"} if verify else {}
        with self._http.stream("GET", f"/jobs/{job_id}/files/{path}", params=params) as response:
            if response.status_code >= 400:
                response.read()
                raise from_json(response.status_code, response.json())
            expected = response.headers.get("X-Checksum-Sha256") if verify else None
            save_stream(response.iter_bytes(), dest, expected)

    def return_value(self, job_id: str) -> Any:
        record = self.get_job(job_id)
        return record.result.value if record.result else None

    def upload_binary(self, name: str, source: Path | bytes) -> BinaryRecord:
        headers = {"Content-Type": "application/octet-stream"}
        if isinstance(source, bytes):
            response = self._call("POST", f"/binaries/{name}", content=source, headers=headers)
        else:
            with open(source, "rb") as handle:
                response = self._call("POST", f"/binaries/{name}", content=handle, headers=headers)
        return BinaryRecord.model_validate(response.json())

    def list_binaries(self) -> list[BinaryRecord]:
        body = self._call("GET", "/binaries", params={"page_size": 1000}).json()
        return [BinaryRecord.model_validate(item) for item in body["results"]]

    def create_sweep(self, request: SweepCreate, files: dict[str, Path], function: Callable | None) -> SweepRecord | DryRun:
        if function is not None:
            raise TypeError("Python callables run only on an embedded Orchestrator(); send a command")
        body = request.model_dump(mode="json", exclude_none=True)
        if not files:
            response = self._call("POST", "/sweeps", json=body)
        else:
            handles = [(dest, open(path, "rb")) for dest, path in files.items()]
            try:
                parts = [("file[]", (dest, handle, "application/octet-stream")) for dest, handle in handles]
                response = self._call("POST", "/sweeps", data={"spec": _json(body)}, files=parts)
            finally:
                for _, handle in handles:
                    handle.close()
        payload = response.json()
        return DryRun.model_validate(payload) if payload.get("dry_run") else SweepRecord.model_validate(payload)

    def get_sweep(self, sweep_id: str) -> SweepRecord:
        return SweepRecord.model_validate(self._call("GET", f"/sweeps/{sweep_id}").json())

    def wait_sweep(self, sweep_id: str, timeout: float) -> SweepRecord:
        response = self._call("GET", f"/sweeps/{sweep_id}", params={"wait": timeout} if timeout else {},
                              timeout=timeout + 30)
        return SweepRecord.model_validate(response.json())

    def list_sweeps(self) -> list[SweepRecord]:
        return [SweepRecord.model_validate(item) for item in self._pages("/sweeps", {})]

    def events(self, job_id: str | None, sweep_id: str | None) -> EventStream:
        """Returns once the server's opening comment has arrived: subscribed by then."""
        params = {k: v for k, v in (("job_id", job_id), ("sweep_id", sweep_id)) if v}
        request = self._http.build_request("GET", "/events", params=params,
                                           timeout=httpx.Timeout(60, read=None))
        response = self._http.send(request, stream=True)
        if response.status_code >= 400:
            response.read()
            response.close()
            raise from_json(response.status_code, response.json())
        lines = response.iter_lines()
        for line in lines:
            if line.startswith(":"):
                break  # ": stream open"
        return EventStream(_sse_events(lines), response.close)

    def sweep_runs(self, sweep_id: str, status: Any) -> list[JobRecord]:
        status = status.value if isinstance(status, JobStatus) else status
        return [JobRecord.model_validate(item) for item in
                self._pages(f"/sweeps/{sweep_id}/runs", {"status": status} if status else {})]

    def sweep_finished(self, sweep_id: str, after: int) -> FinishedRuns:
        response = self._call("GET", f"/sweeps/{sweep_id}/finished", params={"after": after})
        return FinishedRuns.model_validate(response.json())

    def sweep_results(self, sweep_id: str) -> ResultsTable:
        return ResultsTable.model_validate(self._call("GET", f"/sweeps/{sweep_id}/results").json())

    def stop_sweep(self, sweep_id: str) -> SweepRecord:
        return SweepRecord.model_validate(self._call("POST", f"/sweeps/{sweep_id}/stop").json())

    def _pages(self, path: str, params: dict[str, Any]) -> list[Any]:
        items, page = [], 1
        while True:
            body = self._call("GET", path, params={**params, "page": page, "page_size": 1000}).json()
            items += body["results"]
            if not body["next"]:
                return items
            page += 1

    def close(self) -> None:
        self._http.close()


def _job_request(**fields: Any) -> JobCreate:
    """Validated here, so mistakes raise the same ValidationFailed a server would answer."""
    try:
        return JobCreate(**fields)
    except ValidationError as exc:
        raise validation_failed(exc) from None


def _file_map(files: Files) -> dict[str, Path]:
    if not files:
        return {}
    if isinstance(files, dict):
        return {str(dest): Path(src) for dest, src in files.items()}
    return {Path(src).name: Path(src) for src in files}


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[6:])


def _callable_name(function: Callable, name: str | None) -> str:
    """The job or sweep name of a callable: given, or the function's own name made a valid
    job name (`_private` -> `private`, `<lambda>` -> `lambda`)."""
    if name:
        return name
    own = re.sub(r"[^A-Za-z0-9 ._-]+", "_", getattr(function, "__name__", ""))
    return own.strip(" ._-")[:128] or "call"


def _qualified_name(function: Callable) -> str:
    module = getattr(function, "__module__", None) or "?"
    return f"{module}.{getattr(function, '__qualname__', repr(function))}"


def _json(value: Any) -> str:
    return json.dumps(value)
