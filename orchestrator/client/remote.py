"""The Python API over REST: the Backend protocol answered through httpx, with the server's
error bodies raised as the same exception classes the embedded backend raises."""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from orchestrator.analysis_models import SweepAnalysis
from orchestrator.client.backend import save_stream
from orchestrator.client.handle import EventStream
from orchestrator.errors import from_json
from orchestrator.jobtypes.records import (
    JobTypeCreate,
    JobTypeDetails,
    JobTypePatch,
    JobTypeRevision,
    JobTypeSummary,
    ValidationResult,
)
from orchestrator.models import (
    BinaryRecord,
    FileEntry,
    JobCreate,
    JobKind,
    JobRecord,
    JobStatus,
    StatusChange,
)
from orchestrator.storage import layout
from orchestrator.sweep_models import (
    DryRun,
    FinishedRuns,
    ResultsPage,
    ResultsTable,
    SweepCreate,
    SweepRecord,
)


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
        # only fields given: a job of a type takes its priority from the type unless one is
        body = request.model_dump(mode="json", exclude_none=True, exclude_unset=True)
        if not files:
            return JobRecord.model_validate(self._call("POST", "/jobs", json=body).json())
        form = {k: v if isinstance(v, str) and k != "job_type" else _json(v) for k, v in body.items()}
        handles = [(dest, open(path, "rb")) for dest, path in files.items()]
        try:
            parts = [("file[]", (dest, handle, "application/octet-stream")) for dest, handle in handles]
            response = self._call("POST", "/jobs", data=form, files=parts)
        finally:
            for _, handle in handles:
                handle.close()
        return JobRecord.model_validate(response.json())

    def create_callable(self, request, function, args, kwargs) -> JobRecord:
        """Pickled here with cloudpickle; the server stores the bytes and only a worker, in
        this user's warm context, unpickles them."""
        import cloudpickle

        body = request.model_dump(mode="json", exclude_none=True, exclude_unset=True)
        body["command"] = None
        body["pickled"] = base64.b64encode(cloudpickle.dumps((function, args, kwargs))).decode()
        return JobRecord.model_validate(self._call("POST", "/jobs", json=body).json())

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

    def rerun(self, job_id: str) -> JobRecord:
        return JobRecord.model_validate(self._call("POST", f"/jobs/{job_id}/rerun").json())

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
        """A callable's value: as JSON in its result, or pickled as its output return.pkl."""
        record = self.get_job(job_id)
        if record.kind == JobKind.CALLABLE and any(f.path == layout.RETURN_FILE for f in self.list_files(job_id, layout.RETURN_FILE)):
            import cloudpickle

            return cloudpickle.loads(self._call("GET", f"/jobs/{job_id}/files/{layout.RETURN_FILE}").content)
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

    def sweep_results_page(self, sweep_id: str, after: int | None, limit: int) -> ResultsPage:
        params = {"limit": limit, **({"after": after} if after is not None else {})}
        # the response is dropped before parsing: parsing a page while the response that
        # read it lives grows the heap by a page's worth with every page (glibc fragmentation)
        content = self._call("GET", f"/sweeps/{sweep_id}/results", params=params).content
        return ResultsPage.model_validate_json(content)  # one parse, no dict copy

    def sweep_analysis(self, sweep_id: str, output: str) -> SweepAnalysis:
        response = self._call("GET", f"/sweeps/{sweep_id}/analysis", params={"output": output})
        return SweepAnalysis.model_validate(response.json())

    def stop_sweep(self, sweep_id: str) -> SweepRecord:
        return SweepRecord.model_validate(self._call("POST", f"/sweeps/{sweep_id}/stop").json())

    def rerun_sweep(self, sweep_id: str, status: list[str] | None, ids: list[str] | None) -> SweepRecord:
        body = {k: v for k, v in (("status", status), ("ids", ids)) if v is not None}
        return SweepRecord.model_validate(self._call("POST", f"/sweeps/{sweep_id}/rerun", json=body).json())

    def extend_sweep(self, sweep_id: str, samples: int) -> SweepRecord:
        return SweepRecord.model_validate(
            self._call("POST", f"/sweeps/{sweep_id}/extend", json={"samples": samples}).json())

    def delete_sweep(self, sweep_id: str, stop: bool) -> None:
        self._call("DELETE", f"/sweeps/{sweep_id}", params={"stop": "true"} if stop else {})

    # ---- job types ----------------------------------------------------------------------

    def create_job_type(self, request: JobTypeCreate) -> JobTypeDetails:
        body = request.model_dump(mode="json", exclude_none=True)
        return JobTypeDetails.model_validate(self._call("POST", "/job-types", json=body).json())

    def validate_job_type(self, body: dict[str, Any]) -> ValidationResult:
        return ValidationResult.model_validate(self._call("POST", "/job-types/validation", json=body).json())

    def list_job_types(self, keyword: str | None, is_active: bool | None, order: str) -> list[JobTypeSummary]:
        params: dict[str, Any] = {"order": order}
        if keyword:
            params["keyword"] = keyword
        if is_active is not None:
            params["is_active"] = "true" if is_active else "false"
        return [JobTypeSummary.model_validate(item) for item in self._pages("/job-types", params)]

    def get_job_type(self, name: str, version: str) -> JobTypeDetails:
        return JobTypeDetails.model_validate(self._call("GET", _type_path(name, version)).json())

    def job_type_versions(self, name: str) -> list[JobTypeDetails]:
        return [JobTypeDetails.model_validate(item) for item in self._pages(_type_path(name), {})]

    def job_type_revisions(self, name: str, version: str) -> list[JobTypeRevision]:
        return [JobTypeRevision.model_validate(item)
                for item in self._pages(_type_path(name, version) + "/revisions", {})]

    def patch_job_type(self, name: str, version: str, patch: JobTypePatch) -> JobTypeDetails:
        body = patch.model_dump(mode="json", exclude_unset=True)  # an explicit null clears
        return JobTypeDetails.model_validate(self._call("PATCH", _type_path(name, version), json=body).json())

    def delete_job_type(self, name: str, version: str) -> None:
        self._call("DELETE", _type_path(name, version))

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


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: "):
            yield json.loads(line[6:])


def _type_path(name: str, *version: str) -> str:
    """/job-types/NAME[/VERSION], each segment quoted ('+' kept: a SemVer build mark)."""
    return "/".join(["/job-types", *(urllib.parse.quote(part, safe="+") for part in (name, *version))])


def _json(value: Any) -> str:
    return json.dumps(value)
