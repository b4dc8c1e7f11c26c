"""Clusters on batch systems through dask-jobqueue: `orchestrator serve --cluster slurm
--cluster-options '{"cores": 8, "memory": "32GiB", "gpus": 2, "queue": "gpu",
"walltime": "04:00:00", "minimum": 0, "maximum": 20}'` (or `--cluster orchestrator.clusters:slurm`).

Each Dask worker is one batch job of one worker process. What the orchestrator needs of it is
set here, from the same options the batch system is asked for, so they cannot disagree:

- every worker declares `CPU`, `MEMORY` and `GPU` resources of the job's size and loads the
  worker plugin, so jobs are placed on it like on any other worker;
- the cluster adapts between `minimum` and `maximum` jobs, keeping an idle worker
  `idle_timeout` seconds (a new job's start on a busy batch system takes far longer);
- workers retire before their walltime (`lifetime`, default the walltime less a margin), and
  a job on a retiring worker runs again elsewhere as a new attempt;
- the cluster's comms are TLS with certificates made for it (written for the workers into
  `shared_temp_directory`, private to the orchestrator's user: on several nodes, a folder of
  a filesystem they share);
- the batch-system id of every worker job is reported as it is submitted (`batch_jobs`), so
  an orchestrator killed with jobs pending cancels them when it starts again;
- the worker shape is declared (`worker_shape`): a request no worker of it could run is
  refused at submission instead of waiting for ever.

Every other option goes to dask-jobqueue unchanged (`account`, `job_extra_directives`,
`job_script_prologue`, `python`, `local_directory`, `log_directory`, ...). Storage must be
reachable from the compute nodes (S3, or a folder on a shared filesystem).
"""

from __future__ import annotations

import importlib
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask.utils import format_bytes, parse_bytes, parse_timedelta

from orchestrator.paths import private_folder

SYSTEMS = {  # --cluster NAME: the dask-jobqueue class it builds
    "slurm": "SLURMCluster", "pbs": "PBSCluster", "sge": "SGECluster", "lsf": "LSFCluster",
    "htcondor": "HTCondorCluster",
}
IDLE_TIMEOUT_S = 60.0  # an idle worker's job is cancelled after this long
ADAPT_INTERVAL_S = 1.0
LIFETIME_MARGIN = (0.1, 300.0)  # retire this share of the walltime early, at most this many seconds
LIFETIME_STAGGER_S = 30.0


class BatchJobs:
    """The batch-system ids of a cluster's worker jobs as they are submitted and closed, kept
    until the orchestrator attaches its ledger (a factory may scale before it returns)."""

    def __init__(self, cancel_command: str):
        self.cancel_command = cancel_command
        self.live: set[str] = set()
        self._sinks: list[tuple[Callable[[str], None], Callable[[str], None]]] = []

    def attach(self, submitted: Callable[[str], None], closed: Callable[[str], None]) -> None:
        self._sinks.append((submitted, closed))
        for job_id in sorted(self.live):
            submitted(job_id)

    def submitted(self, job_id: str) -> None:
        self.live.add(job_id)
        for sink, _ in self._sinks:
            sink(job_id)

    def closed(self, job_id: str) -> None:
        self.live.discard(job_id)
        for _, sink in self._sinks:
            sink(job_id)


def slurm(**options: Any) -> Any:
    return batch_cluster("slurm", **options)


def pbs(**options: Any) -> Any:
    return batch_cluster("pbs", **options)


def sge(**options: Any) -> Any:
    return batch_cluster("sge", **options)


def lsf(**options: Any) -> Any:
    return batch_cluster("lsf", **options)


def htcondor(**options: Any) -> Any:
    return batch_cluster("htcondor", **options)


def batch_cluster(
    system: str, *, cores: int = 1, memory: str = "4GiB", gpus: int = 0, minimum: int = 0,
    maximum: int = 10, idle_timeout: float = IDLE_TIMEOUT_S, adapt_interval: float = ADAPT_INTERVAL_S,
    walltime: str | None = None, lifetime: str | None = None, lifetime_stagger: str | None = None,
    interface: str | None = None, scheduler_host: str | None = None,
    shared_temp_directory: str | None = None, **jobqueue_options: Any,
) -> Any:
    """A dask-jobqueue cluster for `system` that adapts, with workers declaring their shape."""
    cluster_class = _jobqueue_class(system)
    shape = {"CPU": float(cores), "MEMORY": float(parse_bytes(memory)), "GPU": float(gpus)}
    resources = ",".join(f"{name}={int(value) if value.is_integer() else value}" for name, value in shape.items())
    worker_args = ["--resources", resources, "--preload", "orchestrator.plugins.worker",
                   *_lifetime_args(walltime, lifetime, lifetime_stagger),
                   *jobqueue_options.pop("worker_extra_args", [])]
    directives = list(jobqueue_options.pop("job_extra_directives", []))
    if gpus and system == "slurm":
        directives.append(f"--gres=gpu:{gpus}")
    scheduler_options = {"dashboard_address": ":0", **jobqueue_options.pop("scheduler_options", {})}
    if scheduler_host:
        scheduler_options["host"] = scheduler_host
    jobs = BatchJobs(cluster_class.job_cls.cancel_command)
    cluster = cluster_class(
        cores=cores, processes=1, memory=format_bytes(parse_bytes(memory)).replace(" ", ""),
        walltime=walltime, interface=interface, worker_extra_args=worker_args,
        job_extra_directives=directives, scheduler_options=scheduler_options, security=True,
        shared_temp_directory=str(_private(shared_temp_directory)),
        job_cls=_reporting(cluster_class.job_cls, jobs), **jobqueue_options,
    )
    cluster.worker_shape = shape  # the orchestrator refuses what no such worker could run
    cluster.batch_jobs = jobs
    cluster.adapt(minimum=minimum, maximum=maximum, interval=f"{adapt_interval}s",
                  wait_count=max(1, round(idle_timeout / adapt_interval)))
    return cluster


def _private(folder: str | None) -> Path:
    """Where the workers' certificates are written: readable by the orchestrator's user only
    (a job that read the key could run code in the scheduler)."""
    if folder is None:
        return Path(tempfile.mkdtemp(prefix="orchestrator-tls-"))
    return private_folder(Path(folder))


def _jobqueue_class(system: str) -> Any:
    return getattr(_import_jobqueue(), SYSTEMS[system])


def _import_jobqueue() -> Any:
    """dask_jobqueue's runner module sets a SIGINT handler (sys.exit) when imported: that fails
    off the main thread (factories run in a thread) and would replace the server's own
    handling of Ctrl-C, so the import runs with signal.signal made inert."""
    original = signal.signal
    signal.signal = lambda *_: None  # type: ignore[assignment]
    try:
        return importlib.import_module("dask_jobqueue")
    except ImportError as exc:
        raise ValueError("batch-system clusters need dask-jobqueue: "
                         "pip install 'dask-orchestrator[batch]'") from exc
    finally:
        signal.signal = original


def _lifetime_args(walltime: str | None, lifetime: str | None, stagger: str | None) -> list[str]:
    """Workers leave before the batch system kills them: by default the walltime less 10%
    (at most 5 minutes), staggered so that they do not all leave at once."""
    if lifetime is None and walltime is not None:
        seconds = _walltime_seconds(walltime)
        lifetime = f"{max(seconds - min(LIFETIME_MARGIN[0] * seconds, LIFETIME_MARGIN[1]), 1):.0f}s"
    if lifetime is None:
        return []
    stagger_s = parse_timedelta(stagger) if stagger is not None else min(
        LIFETIME_STAGGER_S, parse_timedelta(lifetime) / 10)
    return ["--lifetime", lifetime, "--lifetime-stagger", f"{stagger_s:g}s"]


def _walltime_seconds(walltime: str) -> float:
    """Slurm's [days-]hours:minutes:seconds (or minutes:seconds, or minutes)."""
    days, _, clock = walltime.rpartition("-")
    parts = [float(p) for p in clock.split(":")]
    if len(parts) == 1:
        parts = [0.0, parts[0], 0.0]
    while len(parts) < 3:
        parts.insert(0, 0.0)
    hours, minutes, seconds = parts
    return (float(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds


def _reporting(job_cls: Any, jobs: BatchJobs) -> Any:
    """The system's job class, reporting each batch job's id as it is submitted and closed."""

    class ReportingJob(job_cls):
        def _job_id_from_submit_output(self, out: str) -> str:
            job_id = super()._job_id_from_submit_output(out)
            jobs.submitted(job_id)
            return job_id

        async def close(self) -> None:
            await super().close()
            if self.job_id:
                jobs.closed(self.job_id)

    ReportingJob.__name__ = job_cls.__name__
    return ReportingJob
