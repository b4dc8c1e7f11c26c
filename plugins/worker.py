"""Worker-side state of the orchestrator: the processes of running jobs, and stop requests.

`Future.cancel()` does not stop a running task, so the orchestrator stops a job by calling
`request_stop` on the workers (`Client.run`). It flags the task key, so a job that has not
started yet never starts, and signals the process group of one that runs; the runner that
owns the process then escalates to SIGKILL and checks that nothing was left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field

from distributed.diagnostics.plugin import WorkerPlugin

logger = logging.getLogger(__name__)

STOP_FLAG_TTL_S = 3600.0


@dataclass
class _StopRequest:
    requested_by: str
    at: float = field(default_factory=time.monotonic)


class JobProcesses:
    """The processes of the jobs running in this worker process, by Dask task key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}
        self._stops: dict[str, _StopRequest] = {}

    def register(self, key: str, process: subprocess.Popen) -> str | None:
        """Track a started process; returns who asked to stop it if that came first."""
        with self._lock:
            self._running[key] = process
            request = self._stops.get(key)
        if request:
            signal_group(process, signal.SIGTERM)
            return request.requested_by
        return None

    def unregister(self, key: str) -> None:
        with self._lock:
            self._running.pop(key, None)

    def request_stop(self, key: str, requested_by: str) -> str:
        with self._lock:
            self._forget_old_stops()
            self._stops[key] = _StopRequest(requested_by)
            process = self._running.get(key)
        if process is None:
            return "flagged"
        signal_group(process, signal.SIGTERM)
        return "signalled"

    def stop_requested(self, key: str) -> str | None:
        with self._lock:
            request = self._stops.get(key)
        return request.requested_by if request else None

    def running_keys(self) -> list[str]:
        with self._lock:
            return list(self._running)

    def kill_all(self) -> None:
        """Worker shutdown: no job process may outlive its worker."""
        with self._lock:
            processes = list(self._running.values())
        for process in processes:
            signal_group(process, signal.SIGKILL)

    def _forget_old_stops(self) -> None:
        horizon = time.monotonic() - STOP_FLAG_TTL_S
        for key in [k for k, r in self._stops.items() if r.at < horizon]:
            del self._stops[key]


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal the process group the job's process leads (it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


class GpuDevices:
    """The GPU devices this worker owns, lent to jobs one set at a time.

    Dask's GPU resource only counts; it never says which device. The devices come from
    ORCHESTRATOR_GPU_DEVICES (set by `orchestrator worker --gpu-devices 0,2`), else devices
    0..N-1 for a worker declaring GPU=N. A job holds its devices until it ends, however it
    ends, and sees only them (CUDA_VISIBLE_DEVICES, NVIDIA_VISIBLE_DEVICES).
    """

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._free: list[str] | None = None
        self._held = threading.local()  # what the job in this thread holds, for assigned()

    def _owned(self) -> list[str]:
        listed = os.environ.get(GPU_DEVICES_VARIABLE, "").strip()
        if listed:
            return [d.strip() for d in listed.split(",") if d.strip()]
        from distributed import get_worker

        try:
            total = get_worker().state.total_resources.get("GPU", 0)
        except ValueError:
            total = 0
        return [str(i) for i in range(int(total))]

    @contextlib.contextmanager
    def lend(self, count: int, timeout: float = 60.0):
        """Yield `count` device ids, waiting (briefly) if the worker's jobs hold them all."""
        if count <= 0:
            yield []
            return
        with self._condition:
            if self._free is None:
                self._free = self._owned()
            if not self._condition.wait_for(lambda: len(self._free) >= count, timeout):
                raise RuntimeError(
                    f"this worker cannot lend {count} GPU device(s); it owns {self._owned() or 'none'}"
                )
            devices, self._free = self._free[:count], self._free[count:]
        self._held.devices = devices
        try:
            yield devices
        finally:
            self._held.devices = []
            with self._condition:
                self._free.extend(devices)
                self._free.sort(key=_device_order)  # lend the lowest ids first, predictably
                self._condition.notify_all()


    def assigned(self) -> list[str]:
        """The devices the job running in this thread holds."""
        return list(getattr(self._held, "devices", []))


def _device_order(device: str) -> tuple[int, str]:
    return (int(device), "") if device.isdigit() else (1 << 30, device)


GPU_DEVICES_VARIABLE = "ORCHESTRATOR_GPU_DEVICES"
_processes = JobProcesses()
_gpus = GpuDevices()


def gpu_devices() -> GpuDevices:
    return _gpus


def assigned_gpus() -> list[str]:
    """The GPU device ids lent to the calling job, for Python callables.

    A command sees only its devices through CUDA_VISIBLE_DEVICES; a callable runs in a
    thread of the worker process, whose environment every thread shares, so it must pick
    its devices by id: e.g. `torch.device(f"cuda:{assigned_gpus()[0]}")`.
    """
    return _gpus.assigned()


def job_processes() -> JobProcesses:
    return _processes


STALE_MARK = "; a newer attempt replaces this one)"


def stale_attempt(why: str) -> str:
    """Who stops an attempt that a newer one replaces: such an attempt must store nothing,
    or its late logs and outputs could overwrite the newer attempt's."""
    return f"the orchestrator ({why}{STALE_MARK}"


def is_stale(key: str) -> bool:
    stopper = job_processes().stop_requested(key)
    return bool(stopper and stopper.endswith(STALE_MARK))


def request_stop(keys: str | list[str], requested_by: str) -> list[str]:
    """Run on every worker through `Client.run`; cheap, never blocks the worker's loop.

    Takes many keys so stopping a whole sweep is one round trip, not one per run.
    """
    keys = [keys] if isinstance(keys, str) else keys
    return [_processes.request_stop(key, requested_by) for key in keys]


def end_orphans(keys: list[str]) -> list[int]:
    """Run on every worker after a restart: kill the processes of these attempts that no
    runner of this worker owns. A job runs in its own session, so one whose worker was
    killed (with the server, or alone) lives on; its marker variable names its attempt.
    Returns the pids killed."""
    import psutil

    wanted = set(keys) - set(_processes.running_keys())
    killed = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get(TASK_KEY_VARIABLE) in wanted:
                proc.kill()
                killed.append(proc.pid)
    return killed


PROMPT_SEND_INTERVAL_S = 0.001  # as orchestrator/server/prompt_sends.py sets the scheduler's
CONTEXTS_METRIC = "orchestrator_contexts"  # a worker's warm contexts, as /cluster lists them
TASK_KEY_VARIABLE = "JOB_TASK_KEY"  # set in every job's environment by the runner


class OrchestratorWorkerPlugin(WorkerPlugin):
    """Kills job processes when a worker closes. The engine registers it on every worker;
    `dask worker --preload orchestrator.plugins.worker` (what `orchestrator worker` runs) has it in place
    from the worker's start."""

    name = "orchestrator"

    def __init__(self, context_idle_s: float | None = None, max_contexts: int | None = None):
        self.context_idle_s = context_idle_s  # the server's settings for warm contexts
        self.max_contexts = max_contexts

    def setup(self, worker) -> None:  # noqa: D401 - dask hook
        from orchestrator.worker.contexts import context_pool

        pool = context_pool()
        pool.configure(getattr(self, "context_idle_s", None), getattr(self, "max_contexts", None))
        worker.metrics[CONTEXTS_METRIC] = lambda _worker: pool.describe()  # sent with each heartbeat
        stream = getattr(worker, "batched_stream", None)
        if stream is not None:  # a job's end reaches the scheduler without waiting out Dask's 2 ms window
            stream.interval = PROMPT_SEND_INTERVAL_S
        logger.debug("orchestrator plugin set up on %s", worker.address)

    def teardown(self, worker) -> None:
        """Only a closing worker kills its jobs. The engine registers this plugin again each
        time it attaches to a scheduler, and Dask tears the old instance down on workers that
        keep running (a fresh worker that preloaded it, too): their jobs must live on."""
        from distributed.core import Status

        if worker.status in (Status.closing, Status.closing_gracefully, Status.closed, Status.failed):
            _processes.kill_all()
            from orchestrator.worker.contexts import context_pool

            context_pool().end_all()


async def dask_setup(worker) -> None:
    """The preload hook: `dask worker --preload orchestrator.plugins.worker`."""
    await worker.plugin_add(OrchestratorWorkerPlugin())
