"""What runs on a Dask worker: stage inputs, run the command, ship logs, collect outputs.

The task carries only a small `RunSpec`; bytes move between the worker and storage directly.
It returns a small outcome dict, never raising for the job's own failures, so the engine can
tell a failed command (an outcome) from a broken worker (an exception). Imports no API or
store code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import psutil

from orchestrator import templating
from orchestrator.kinds import JobKind
from orchestrator.paths import safe_relative_path
from orchestrator.plugins.worker import (
    TASK_KEY_VARIABLE,
    gpu_devices,
    is_stale,
    job_processes,
    signal_group,
)
from orchestrator.storage import Storage, is_storage_failure, layout
from orchestrator.worker import extract, outputs
from orchestrator.worker.executors import Executor, RunContext, executor_for
from orchestrator.worker.jobuser import RunAs, clean_environment, fetch_as, hand_over
from orchestrator.worker.logship import LogShipper, ship_final_logs
from orchestrator.worker.scratch import Scratch, current_worker, worker_address

STATUS_TOPIC = "orchestrator-status"
RETURN_FILE = layout.RETURN_FILE
STOP_GRACE_S = 2.0
ANNOUNCE_INTERVAL_S = 0.1
MAX_EARLY_OUTCOME = 8192  # bytes of an outcome announced before its batch ends
LEGACY_VARIABLES = ("ORCHESTRATOR_JOB_ID", "ORCHESTRATOR_TASK_KEY")  # single-user jobs only
TIMEOUT_REASON = "timeout after"  # how a run stopped at its time limit is told apart


@dataclass
class StagedInput:
    path: str
    key: str | None = None  # in storage
    url: str | None = None  # any fsspec URL
    executable: bool = False
    template: bool = False  # `${name}` placeholders filled with the run's variables


@dataclass
class RunSpec:
    job_id: str
    key: str
    attempt: int
    storage_url: str  # options (credentials) come from the worker's own environment
    command: str | list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    inputs: list[StagedInput] = field(default_factory=list)
    timeout_s: float | None = None
    callable_key: str | None = None
    kind: str = JobKind.COMMAND.value  # which Executor runs it (orchestrator.worker.executors)
    variables: dict[str, Any] | None = None  # a sweep run's values
    gpus: int = 0  # devices lent to the run from the worker's own
    shell_template: str | None = None  # a sweep's shell line, made into `command` per run
    run_as: dict[str, Any] | None = None  # the job owner's OS identity (multi-user mode)
    workdir_env: dict[str, str] = field(default_factory=dict)  # variables naming paths in the working folder
    job_type: dict[str, Any] | None = None  # a job type's revision: manifest and mounts (typed.py)
    declared_outputs: list[dict[str, Any]] = field(default_factory=list)  # read from files after the run (extract.py)
    entrypoint: str | None = None  # 'package.module:function', called in a warm context (entrypoints.py)
    kwargs: dict[str, Any] | None = None  # its keyword arguments (a sweep run's variables join them)
    artifacts: list[dict[str, str]] = field(default_factory=list)  # binaries on its path: {ref, key}
    owner: str | None = None  # whose warm context it may use
    in_context: bool = False  # a pickled callable run in a warm context, not in this worker's thread

    @classmethod
    def from_dict(cls, fields: dict[str, Any]) -> RunSpec:
        spec = cls(**{**fields, "inputs": [StagedInput(**i) for i in fields.get("inputs", [])]})
        if spec.shell_template is not None:
            spec.command = templating.shell_command(spec.shell_template, spec.variables or {})
        return spec


@dataclass
class Outcome:
    status: str
    reason: str | None = None
    exit_code: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    files: list[dict[str, Any]] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)
    value: Any = None
    error: str | None = None
    log_bytes: int = 0  # stored as the attempt's logs

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))  # shallow: dataclasses.asdict's deep copy costs per run


class Sealed:
    """A task argument whose repr never shows what it holds: Dask prints a failed task's
    arguments in its logs ("Compute Failed") and on its dashboard; a run spec holds the job's
    opened secret environment."""

    __slots__ = ("content",)

    def __init__(self, content: Any):
        self.content = content

    def __repr__(self) -> str:
        return "<orchestrator run spec>"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, tuple[Any]]:
        return Sealed, (self.content,)


def _unsealed(value: Any) -> Any:
    return value.content if isinstance(value, Sealed) else value


def run_job(spec_dict: Sealed | dict[str, Any]) -> dict[str, Any]:
    """The Dask task of a single job. It never raises: an exception escaping a task would
    have Dask log it with its arguments, so every failure becomes the job's outcome."""
    try:
        with Scratch() as scratch:
            spec = RunSpec.from_dict(_unsealed(spec_dict))
            outcome = execute(spec, announce=True, scratch=scratch).as_dict()
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - RecursionError, MemoryError in a parse...
        return _unexpected(exc).as_dict()
    announce_ended(spec, outcome)  # the engine records it now, without gathering the task's result
    return outcome


def _unexpected(exc: BaseException) -> Outcome:
    """An error of the runner itself (not of the job's command) as a failed outcome."""
    kind = "storage error" if is_storage_failure(exc) else "runner error"
    return Outcome("FAILED", f"{kind}: {describe_error(exc)}", worker=worker_address())


def run_batch(batch: Sealed | dict[str, Any] | str) -> str:
    """The Dask task of several sweep runs, one after another, sharing one template.

    Cheap runs are batched so Dask's per-task cost is paid once per batch. A run starting
    is announced at most every ANNOUNCE_INTERVAL_S; runs that start and end in between are
    recorded as RUNNING with their real start time when the batch reports. One run's
    unexpected error fails that run only. Answers the outcomes as JSON text.
    """
    batch = _unsealed(batch)
    batch = json.loads(batch) if isinstance(batch, str) else batch
    template = batch["template"]
    budget = batch.get("failure_budget")  # the sweep's max_failures, less failures so far
    outcomes = []
    announced_at = float("-inf")
    with Scratch() as scratch:
        for run in batch["runs"]:
            if budget is not None and budget <= 0:
                outcomes.append(Outcome("STOPPED", "max_failures reached", worker=worker_address()).as_dict())
                continue
            last_try = run.pop("last_try", True)  # a failure now is for good: no retry left
            spec = RunSpec.from_dict({**template, **run})
            announce = time.monotonic() - announced_at >= ANNOUNCE_INTERVAL_S
            if announce:
                announced_at = time.monotonic()
            late = None if announce else LateStart(spec)  # a long run is shown RUNNING all the same
            try:
                outcome = execute(spec, announce, scratch)
            except (Exception, SystemExit) as exc:  # one run's failure never loses the batch
                outcome = _unexpected(exc)
            if budget is not None and outcome.status == "FAILED" and last_try:
                budget -= 1
            outcomes.append(outcome.as_dict())
            if late is not None:
                late.ended(outcomes[-1])
            else:  # its start was announced: its end is too, or it would show RUNNING till the batch ends
                announce_ended(spec, outcomes[-1])
    return json.dumps(outcomes)  # one string: cheap for the scheduler to pass on


class LateStart:
    """Announces a batched run's start (as when it began) once it has run ANNOUNCE_INTERVAL_S
    unannounced: starts are announced at most that often, so a long run that began right after
    another would otherwise show QUEUED until its whole batch ends. Timed on the worker's event
    loop (a thread per run would cost more than a trivial run); whether it fired, and so whether
    the run's end is announced too, is settled there, in order."""

    def __init__(self, spec: RunSpec):
        self._spec, self._worker, self._began = spec, current_worker(), time.time()
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False
        if self._worker is not None:
            self._worker.loop.add_callback(self._arm)

    def _arm(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(ANNOUNCE_INTERVAL_S, self._announce)

    def _announce(self) -> None:
        self._fired = True
        self._worker.log_event(STATUS_TOPIC, {
            "job_id": self._spec.job_id, "key": self._spec.key, "status": "RUNNING",
            "worker": self._worker.address, "at": self._began})

    def ended(self, outcome: dict[str, Any]) -> None:
        """The run is over: its end is announced if its start was."""
        if self._worker is not None:
            self._worker.loop.add_callback(self._settle, outcome)

    def _settle(self, outcome: dict[str, Any]) -> None:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired:
            announce_ended(self._spec, outcome, self._worker)


def execute(spec: RunSpec, announce: bool, scratch: Scratch) -> Outcome:
    worker = worker_address()
    stopper = job_processes().stop_requested(spec.key)
    if stopper:
        return Outcome("STOPPED", f"stop requested by {stopper}", worker=worker)
    context = RunContext(_storage(spec.storage_url), worker, announce, scratch)
    return executor_for(spec.kind).run(spec, context)


class CommandExecutor(Executor):
    """A command in its own process group, in a working folder, under the job owner's
    identity in multi-user mode."""

    kind = JobKind.COMMAND
    outputs_files = (outputs.OUTPUTS_FILE,)  # where scalar outputs are read from, first found

    def prepare(self, spec: RunSpec, workdir: Path) -> str | None:
        """After staging, before the command: why the run cannot start, or None."""
        return None

    def conclude(self, spec: RunSpec, outcome: Outcome) -> None:
        """Judge the finished run (its outputs are stored by now) and amend its outcome."""

    def launch(
        self, workdir: Path, log_paths: dict[str, Path], spec: RunSpec, storage: Storage, worker: str | None,
    ) -> Outcome:
        """Run what the job runs, in its staged folder, and supervise it to its end: the
        command's own process, or a Python function in a warm context."""
        if spec.entrypoint is not None or spec.in_context:
            from orchestrator.worker.entrypoints import run_in_context

            return run_in_context(workdir, log_paths, spec, storage, worker)
        return _run_command(workdir, log_paths, spec, storage, worker)

    def run(self, spec: RunSpec, context: RunContext) -> Outcome:
        run_as = RunAs.from_spec(spec.run_as)
        try:
            with gpu_devices().lend(spec.gpus) as devices, context.scratch.folder(run_as) as workdir:
                if devices:
                    visible = ",".join(devices)
                    spec.env = {**spec.env, "CUDA_VISIBLE_DEVICES": visible, "NVIDIA_VISIBLE_DEVICES": visible}
                return _run_in(workdir, context.scratch.logs, spec, context, self)
        finally:
            job_processes().unregister(spec.key)


def _run_in(
    workdir: Path, log_paths: dict[str, Path], spec: RunSpec, context: RunContext, executor: CommandExecutor,
) -> Outcome:
    storage, worker = context.storage, context.worker
    run_as = RunAs.from_spec(spec.run_as)
    if spec.attempt > 1:
        forget_earlier_attempt(storage, spec.job_id)
    try:
        staged = _stage_inputs(storage, spec.inputs, workdir, spec.variables or {}, run_as)
        ran_with = outputs.keep_inputs(storage, spec.job_id, workdir, [i.path for i in spec.inputs if i.template])
    except Exception as exc:  # noqa: BLE001 - any staging failure fails the job with its reason
        return Outcome("FAILED", _step_failed("staging inputs", exc), worker=worker)
    refused = executor.prepare(spec, workdir)
    if refused is not None:
        return Outcome("FAILED", refused, worker=worker)
    started = time.time()
    if context.announce:
        announce_running(spec, worker, started)
    outcome = executor.launch(workdir, log_paths, spec, storage, worker)
    outcome.started_at = started
    if is_stale(spec.key):  # replaced while it ran: the newer attempt owns the job's files
        outcome.status, outcome.reason = "STOPPED", "replaced by a newer attempt; nothing stored"
        return outcome
    try:
        outcome.log_bytes = ship_final_logs(storage, spec.job_id, log_paths)
        outcome.files = ran_with + outputs.upload(storage, spec.job_id, workdir, staged, run_as and run_as.uid)
    except Exception as exc:  # noqa: BLE001 - nothing unstored may be recorded as stored
        outcome.status = "FAILED"
        outcome.reason = _step_failed("storing logs and outputs", exc)
        outcome.files = []
    written, problem = outputs.read_outputs_json(workdir, run_as and run_as.uid, executor.outputs_files)
    outcome.outputs, outcome.error = {**written, **outcome.outputs}, outcome.error or problem  # a returned dict wins
    if spec.declared_outputs:  # read whatever the run ended as; only a completed run fails for them
        found = extract.read_declared(workdir, spec.declared_outputs, run_as and run_as.uid)
        outcome.outputs, outcome.error, failure = extract.merge(
            outcome.outputs, outcome.error, found, completed=outcome.status == "COMPLETED")
        if failure is not None:
            outcome.status, outcome.reason = "FAILED", failure
    outcome.finished_at = time.time()
    executor.conclude(spec, outcome)
    return outcome


# ---- commands ---------------------------------------------------------------------------


def _run_command(
    workdir: Path, log_paths: dict[str, Path], spec: RunSpec, storage: Storage, worker: str | None
) -> Outcome:
    run_as = RunAs.from_spec(spec.run_as)
    argv = ["/bin/sh", "-c", spec.command] if isinstance(spec.command, str) else list(spec.command)
    with open(log_paths["stdout"], "wb") as out, open(log_paths["stderr"], "wb") as err:
        try:
            process = subprocess.Popen(
                argv, cwd=workdir, env=_job_environment(spec, workdir, run_as), stdin=subprocess.DEVNULL,
                stdout=out, stderr=err, start_new_session=True, **(run_as.popen_options() if run_as else {}),
            )
        except OSError as exc:
            err.write(f"cannot start {argv[0]}: {exc}\n".encode())
            return Outcome("FAILED", f"cannot start command: {exc.strerror or exc}", 127, worker=worker)
        return _supervise(process, spec, worker, LogShipper(storage, spec.job_id, log_paths))


def _supervise(
    process: subprocess.Popen, spec: RunSpec, worker: str | None, shipper: LogShipper
) -> Outcome:
    registry = job_processes()
    registry.register(spec.key, process)
    deadline = wait_deadline(spec)
    with _exit_waiter(process) as exited:
        while registry.stop_requested(spec.key) is None and not deadline.passed():
            if exited(0.1):
                break
            shipper.ship_if_due()
    stopper = registry.stop_requested(spec.key)
    if stopper is None and process.returncode is not None:
        _kill_group_remains(process)
        if process.returncode == 0:
            return Outcome("COMPLETED", None, 0, worker=worker)
        return Outcome("FAILED", _exit_reason(process.returncode), process.returncode, worker=worker)
    return ended_early(process, spec, stopper, worker)


@dataclass
class Deadline:
    at: float | None  # time.monotonic(), or None for no limit

    def passed(self) -> bool:
        return self.at is not None and time.monotonic() > self.at


def wait_deadline(spec: RunSpec) -> Deadline:
    return Deadline(time.monotonic() + spec.timeout_s if spec.timeout_s else None)


def ended_early(process: subprocess.Popen, spec: RunSpec, stopper: str | None, worker: str | None) -> Outcome:
    """A run stopped (`stopper` asked) or out of time: its whole process tree is ended."""
    leftovers = _terminate_tree(process, spec.key)
    if stopper is not None:
        reason = _with_leftovers(f"stop requested by {stopper}", leftovers)
        return Outcome("STOPPED", reason, process.returncode, worker=worker)
    reason = _with_leftovers(f"{TIMEOUT_REASON} {spec.timeout_s:g} s", leftovers)
    return Outcome("FAILED", reason, process.returncode, worker=worker)


@contextlib.contextmanager
def _exit_waiter(process: subprocess.Popen) -> Iterator[Callable[[float], bool]]:
    """A wait for the process's exit that wakes the moment it exits.

    `Popen.wait(timeout)` polls with growing sleeps, which costs a short run up to a
    millisecond for nothing; a pidfd (Linux) is readable as soon as the process ends.
    """
    try:
        descriptor = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        descriptor = None

    def exited(timeout: float) -> bool:
        if descriptor is not None and process.poll() is None:
            select.select([descriptor], [], [], timeout)
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
        return process.poll() is not None

    try:
        yield exited
    finally:
        if descriptor is not None:
            os.close(descriptor)


def _job_environment(spec: RunSpec, workdir: Path, run_as: RunAs | None) -> dict[bytes, bytes] | dict[str, str]:
    """A multi-user job's environment is built from scratch; a single-user job's extends the
    worker's own (that user owns the machine), as it always has."""
    promised = promised_environment(spec, workdir)
    if run_as is not None:
        return clean_environment(run_as, workdir, promised)
    extra = {**promised, LEGACY_VARIABLES[0]: spec.job_id, LEGACY_VARIABLES[1]: spec.key}
    return {**_base_environment(), **{os.fsencode(k): os.fsencode(v) for k, v in extra.items()}}


def promised_environment(spec: RunSpec, workdir: Path) -> dict[str, str]:
    """What every job's environment holds, whatever else it inherits."""
    return {**spec.env, **{name: str(workdir / path) for name, path in spec.workdir_env.items()},
            "JOB_ID": spec.job_id, "OUTPUT_DIR": str(workdir), TASK_KEY_VARIABLE: spec.key}


@lru_cache(maxsize=1)
def _base_environment() -> dict[bytes, bytes]:
    """The worker's environment, read and encoded once (Popen would encode it per run)."""
    return dict(os.environb)


def _exit_reason(exit_code: int) -> str:
    if exit_code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by signal {signal.Signals(-exit_code).name}"
    return f"exit code {exit_code}"


def _terminate_tree(process: subprocess.Popen, key: str) -> list[str]:
    """SIGTERM the group, SIGKILL what stays, then hunt escaped descendants by their marker.
    Returns descriptions of processes still running afterwards (there should be none)."""
    signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    signal_group(process, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=STOP_GRACE_S)
    marked = _marked_processes(key)
    for proc in marked:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    deadline = time.monotonic() + 1.0  # psutil.wait_procs would wait it all out on a zombie
    while (alive := [p for p in marked if _still_running(p)]) and time.monotonic() < deadline:
        time.sleep(0.02)
    return [f"pid {p.pid} ({_name(p)})" for p in alive]


def _still_running(proc: psutil.Process) -> bool:
    """Not gone nor a zombie: a killed orphan is one until PID 1 (not this worker) reaps it."""
    with contextlib.suppress(psutil.Error):
        return proc.status() != psutil.STATUS_ZOMBIE
    return False


def _kill_group_remains(process: subprocess.Popen) -> None:
    """Background processes a finished job left in its group do not outlive it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, 0)
        signal_group(process, signal.SIGKILL)


def _marked_processes(key: str) -> list[psutil.Process]:
    marked = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TASK_KEY_VARIABLE) == key:
                marked.append(proc)
    return marked


def _name(proc: psutil.Process) -> str:
    with contextlib.suppress(psutil.Error):
        return proc.name()
    return "?"


def _with_leftovers(reason: str, leftovers: list[str]) -> str:
    if not leftovers:
        return reason
    return f"{reason}; {len(leftovers)} process(es) survived: {', '.join(leftovers)}"


# ---- inputs and outputs -----------------------------------------------------------------


def _stage_inputs(
    storage: Storage, inputs: list[StagedInput], workdir: Path, variables: dict[str, Any],
    run_as: RunAs | None = None,
) -> outputs.Staged:
    """Copy inputs in; returns path -> (size, mtime_ns) so unchanged inputs are not outputs.

    Stored inputs come first, with the worker's rights, into a folder no job can enter yet;
    under a job identity the folder is then handed over and URLs are fetched as that uid.
    """
    staged: outputs.Staged = {}
    stored = [item for item in inputs if item.url is None]
    for item in stored:
        _stage_stored(storage, item, workdir, variables)
    if run_as is not None:
        hand_over(workdir, run_as)
    for item in inputs:
        if item.url is not None:
            _stage_url(item, workdir, run_as)
    for relative in map(safe_relative_path, (item.path for item in inputs)):
        info = os.lstat(workdir / relative)
        staged[relative] = (info.st_size, info.st_mtime_ns)
    return staged


def _stage_stored(storage: Storage, item: StagedInput, workdir: Path, variables: dict[str, Any]) -> None:
    target = workdir / safe_relative_path(item.path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if item.template:
        text = _read_template(storage, item.key)
        target.write_text(templating.render(text, variables), encoding="utf-8")
    else:
        storage.get_file(item.key, str(target))
    if item.executable:
        target.chmod(0o755)


def _stage_url(item: StagedInput, workdir: Path, run_as: RunAs | None) -> None:
    relative = safe_relative_path(item.path)
    if run_as is not None:
        fetch_as(run_as, item.url, relative, workdir, item.executable)
        return
    import fsspec

    target = workdir / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    with fsspec.open(item.url, "rb") as source, open(target, "wb") as out:
        shutil.copyfileobj(source, out, 4 * 2**20)
    if item.executable:
        target.chmod(0o755)


@lru_cache(maxsize=32)
def _read_template(storage: Storage, key: str) -> str:
    """Template sources never change under their key, so a batch reads each once."""
    with storage.open(key) as source:
        return source.read().decode("utf-8")


def forget_earlier_attempt(storage: Storage, job_id: str) -> None:
    """A retry starts clean: no outputs or logs of the attempt before it remain."""
    storage.delete_prefix(layout.outputs_prefix(job_id))
    storage.delete_prefix(layout.logs_prefix(job_id))


# ---- worker context ---------------------------------------------------------------------


def announce_running(spec: RunSpec, worker_address: str | None, started: float) -> None:
    worker = current_worker()
    if worker is not None:
        worker.log_event(
            STATUS_TOPIC,
            {"job_id": spec.job_id, "key": spec.key, "status": "RUNNING",
             "worker": worker_address, "at": started},
        )


def announce_ended(spec: RunSpec, outcome: dict[str, Any], worker: Any = None) -> None:
    """A run's outcome as soon as it ends: a batched run's sweep counts say what runs now, and
    a single job is recorded without a gather of its task's result (a round trip to its worker);
    an outcome too big to pass through the scheduler's event log waits for its task's result."""
    worker = worker or current_worker()
    if worker is None:
        return
    try:
        text = json.dumps(outcome)
    except (TypeError, ValueError):
        return
    if len(text) <= MAX_EARLY_OUTCOME:
        worker.log_event(STATUS_TOPIC, {"job_id": spec.job_id, "key": spec.key, "status": "ENDED",
                                        "outcome": outcome})


@lru_cache(maxsize=16)
def _storage(url: str) -> Storage:
    return Storage.from_environment(url)


def _step_failed(step: str, exc: BaseException) -> str:
    if is_storage_failure(exc):
        return f"storage error while {step}: {describe_error(exc)}"
    return f"{step} failed: {describe_error(exc)}"


def describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
