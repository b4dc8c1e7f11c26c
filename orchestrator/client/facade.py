"""The Python API: one `Orchestrator` facade, embedded (no server) or over REST.

Both backends answer the same calls with the same models and raise the same exceptions, so
a script written against the embedded orchestrator runs unchanged against a server.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from orchestrator.client.backend import Backend, Job
from orchestrator.client.handle import EventStream
from orchestrator.client.job_types import FileSources, JobTypes, job_type_request, typed_inputs
from orchestrator.client.remote import RemoteBackend
from orchestrator.client.sweeps import Sweep, load_spec_file, sweep_spec, validated
from orchestrator.errors import validation_failed
from orchestrator.models import (
    ENTRYPOINT,
    BinaryRecord,
    JobCreate,
)
from orchestrator.sweep_models import DryRun, SweepRecord

Files = list[str | os.PathLike] | dict[str, str | os.PathLike] | None


class Orchestrator:
    """`Orchestrator()` runs everything in this process; `Orchestrator.connect(url)` uses a server.

    `job_types` registers and manages job types (Seed manifests); `run` runs one."""

    def __init__(self, settings: Any = None, *, _backend: Backend | None = None, **overrides: Any):
        if _backend is None:
            from orchestrator.client.embedded import EmbeddedBackend
            from orchestrator.config import Settings

            settings = settings or Settings(**overrides)
            _backend = EmbeddedBackend(settings)
        self._backend = _backend
        self.job_types = JobTypes(_backend)

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
        outputs: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> Job:
        """Run a command, an entry point ('package.module:function' of uploaded `binaries`,
        called with `kwargs={...}`), or a Python callable called with *args, **kwargs (over
        REST it is pickled with cloudpickle and only a worker unpickles it).

        `secret_env` reaches the process like `env` but is stored sealed and shown as '****'.
        `outputs` declares scalar outputs read from files the command writes: {"name", "file",
        and "regex", "column" (with "row"), or "json_path"; "type", "required"}."""
        fields = {
            "name": name, "binaries": binaries or [], "env": env or {}, "secret_env": secret_env or {},
            "resources": resources or {}, "timeout_s": timeout_s, "retries": retries,
            "priority": priority, "submit": submit,
        }
        if callable(command):
            fields["name"] = _callable_name(command, name)
            request = _job_request(command=_qualified_name(command), **fields)
            return Job(self._backend, self._backend.create_callable(request, command, args, kwargs))
        if isinstance(command, str) and ENTRYPOINT.fullmatch(command):
            call_kwargs = kwargs.pop("kwargs", None)
            if args or kwargs:
                raise TypeError(f"an entry point takes its arguments as kwargs={{...}}, not {args or kwargs}")
            request = _job_request(command=None, entrypoint=command, kwargs=call_kwargs,
                                   outputs=outputs or [], **fields)
            return Job(self._backend, self._backend.create_job(request, _file_map(files)))
        if args or kwargs:
            raise TypeError(f"unexpected arguments for a command job: {args or kwargs}")
        request = _job_request(command=command, outputs=outputs or [], **fields)
        return Job(self._backend, self._backend.create_job(request, _file_map(files)))

    def run(
        self,
        job_type: str,
        inputs: dict[str, Any] | None = None,
        *,
        files: FileSources | None = None,
        configuration: dict[str, Any] | None = None,
        name: str | None = None,
        priority: int | None = None,
        submit: bool = True,
        wait: bool | float = False,
    ) -> Job:
        """Run a registered job type: 'name@version', or 'name' for its newest active version.

        `inputs`: its JSON inputs {NAME: value} (or the REST form {"json": ..., "files": ...});
        `files`: its file inputs {NAME: source or [sources]}, where an existing local file is
        uploaded and a URL or binary ('name@version') is fetched by the worker. `configuration`
        ({settings, mounts, priority}) is laid over the type's. `wait`: True, or seconds, to
        wait for the job to end before returning its handle."""
        request, uploads = job_type_request(job_type, inputs, files, configuration=configuration,
                                            name=name, priority=priority, submit=submit)
        job = Job(self._backend, self._backend.create_job(request, uploads))
        if wait is not False:
            job.wait(None if wait is True else float(wait))
        return job

    def job(self, job_id: str) -> Job:
        return Job(self._backend, self._backend.get_job(job_id))

    def sweep(
        self,
        command: str | list[str] | Callable | None = None,
        *,
        job_type: str | None = None,
        inputs: dict[str, Any] | None = None,
        configuration: dict[str, Any] | None = None,
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
        outputs: list[dict[str, Any]] | None = None,
        kwargs: dict[str, Any] | None = None,
        until: dict[str, Any] | None = None,
    ) -> Sweep | DryRun:
        """Run a command (or, embedded, a callable given the variables as keyword arguments)
        once per row of a run table: `variables` (generators: `linspace(...)`, a list, ...)
        with a `design`, or `cases` (rows, a DataFrame or a CSV path). A dry run returns the
        rendered table and runs nothing. An entry point ('package.module:function' of `binaries`)
        gets each run's variables as keyword arguments, joined to `kwargs`. `until` ({output,
        statistic, rel_ci_half_width, confidence, batch, max_samples}) grows a sampled design by
        `batch` samples until the statistic's interval is narrow enough. A sweep of a job type gives `job_type`, its `inputs`
        (a JSON input may hold ${variable}; a variable named like a JSON input fills it) and
        `files` as for `run`, instead of a command."""
        if job_type is not None:
            return self._typed_sweep(job_type, inputs, files, configuration, variables=variables,
                                     design=design, samples=samples, seed=seed, cases=cases,
                                     include_nominal_run=include_nominal_run, max_parallel=max_parallel,
                                     max_failures=max_failures, dry_run=dry_run, name=name,
                                     retries=retries, priority=priority or None)
        function = command if callable(command) else None
        if function is not None:
            name = _callable_name(function, name)
        entrypoint = command if isinstance(command, str) and ENTRYPOINT.fullmatch(command) else None
        spec, uploads = sweep_spec(
            None if function or entrypoint else command, variables=variables, design=design, samples=samples,
            seed=seed, cases=cases, templates=templates, name=name, binaries=binaries, env=env,
            secret_env=secret_env, resources=resources, timeout_s=timeout_s, retries=retries, priority=priority,
            include_nominal_run=include_nominal_run, max_parallel=max_parallel,
            max_failures=max_failures, dry_run=dry_run, outputs=outputs, until=until,
        )
        if entrypoint is not None:
            spec.pop("command", None)
            spec.update(entrypoint=entrypoint, **({"kwargs": kwargs} if kwargs is not None else {}))
        file_map = _file_map(files)
        if file_map:
            spec["files"] = sorted(file_map)
        return self.sweep_spec(spec, {**file_map, **uploads}, function)

    def _typed_sweep(self, job_type: str, inputs: dict[str, Any] | None, files: Any,
                     configuration: dict[str, Any] | None, **fields: Any) -> Sweep | DryRun:
        given, uploads = typed_inputs(inputs, files)
        spec, _ = sweep_spec(None, templates=None, job_type=job_type, inputs=given,
                             configuration=configuration, **fields)
        spec.pop("command")
        return self.sweep_spec(spec, uploads)

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
