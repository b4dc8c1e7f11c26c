"""Every setting, declared once with its default and help; read from ORCHESTRATOR_* variables."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from orchestrator.paths import safe_name
from orchestrator.server.auth import host_name


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHESTRATOR_", extra="forbid")

    host: str = Field("127.0.0.1", description="address the REST API binds")
    port: int = Field(8080, ge=0, le=65535, description="port of the REST API (0: any free)")
    data_dir: Path = Field(
        Path("./orchestrator-data"), description="folder of the job store and default storage"
    )
    storage: str | None = Field(
        None, description="fsspec URL of storage (default: <data_dir>/storage)"
    )
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options of storage, as JSON"
    )
    database: Path | None = Field(None, description="SQLite file (default: <data_dir>/jobs.db)")
    scheduler: str | None = Field(
        None, description="address of an existing Dask scheduler (default: embedded cluster)"
    )
    cluster: str | None = Field(
        None, description="'module:callable' building a Dask cluster, or a batch system: slurm, pbs, sge, lsf, htcondor"
    )
    cluster_options: dict[str, Any] = Field(
        default_factory=dict, description="keyword arguments of the cluster factory, as JSON"
    )
    cluster_can_grow: bool | None = Field(
        None,
        description="whether the cluster adds workers on demand, so work no worker fits yet "
        "waits instead of being refused (default: true with a cluster factory)",
    )
    tls_ca_file: Path | None = Field(
        None, description="CA certificate (PEM) of an external cluster's TLS "
        "(default: Dask's distributed.comm.tls.ca-file); the embedded cluster makes its own"
    )
    tls_cert: Path | None = Field(
        None, description="client certificate (PEM) for an external cluster's TLS "
        "(default: Dask's distributed.comm.tls.client.cert)"
    )
    tls_key: Path | None = Field(
        None, description="private key (PEM) of tls_cert, unless the cert file holds it "
        "(default: Dask's distributed.comm.tls.client.key)"
    )
    worker_loss_retries: int = Field(
        3, ge=0, le=100, description="re-runs of a job whose worker died under it"
    )
    workers: int = Field(1, ge=1, description="worker processes of the embedded cluster")
    threads_per_worker: int | None = Field(
        None, ge=1, description="threads per embedded worker (default: cores / workers)"
    )
    dashboard_address: str = Field(
        "127.0.0.1:8787", description="Dask dashboard of the embedded cluster"
    )
    max_upload_bytes: int = Field(
        10 * 2**30, ge=1, description="largest upload (binary or job files) in bytes"
    )
    max_json_bytes: int = Field(8 * 2**20, ge=1024, description="largest JSON request body")
    max_sweep_runs: int = Field(
        1_000_000, ge=1, description="most runs one sweep may have (samples, cases or product)"
    )
    max_queued_per_user: int = Field(
        10_000, ge=1, description="most QUEUED jobs one user may have (sweep runs count per sweep)"
    )
    default_owner: str = Field("anonymous", description="owner of work when auth is off")
    secret_key: SecretStr | None = Field(
        None, description="key sealing secret environments (default: <data_dir>/secret.key, "
        "made on first use); an environment variable only, never a flag",
    )
    trusted_users: bool = Field(
        False, description="with tokens in use, accept every user's jobs even where they would "
        "run with the orchestrator's own identity (no TLS to the scheduler, or workers not root)",
    )
    job_uid_range: tuple[int, int] = Field(
        (200_000, 299_999), description="uids given to users' jobs in multi-user mode, one per "
        "user (first,last as JSON [first, last]); keep it clear of real accounts",
    )
    job_accounts: dict[str, str] = Field(
        default_factory=dict, description="users whose jobs run as an existing OS account "
        "instead of a uid from the range, as JSON {\"alice\": \"alice\"}",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="more names the API answers to in the Host header, e.g. a DNS or proxy "
        'name, as JSON (["orch.example.com"]); loopback names and the bound address always are',
    )
    max_upload_parts: int = Field(
        1000, ge=1, le=1_000_000, description="most parts (files and fields) of one multipart body"
    )
    body_idle_timeout_s: float = Field(
        120.0, gt=0, description="a request body that sends nothing for this long is closed (408)"
    )
    stream_heartbeat_s: float = Field(
        15.0, gt=0, le=3600,
        description="interval of /events keep-alives; open streams re-check their access as often",
    )

    pickled_code: bool = Field(
        True, description="accept Python callables sent pickled over REST (run by workers in the "
        "owner's warm context); false: only commands, entry points and job types",
    )
    context_idle_s: float = Field(
        600.0, gt=0, description="a worker ends a warm entry-point context idle this long (seconds)",
    )
    max_contexts: int = Field(
        8, ge=1, le=1000, description="most warm entry-point contexts one worker process keeps",
    )
    dashboard_outputs: bool = Field(
        False, description="with tokens in use, still send sweep results to the Dask dashboard's "
        "sweep explorer, which has no authentication (without tokens they are always sent)",
    )

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_are_names(cls, hosts: list[str]) -> list[str]:
        return [host_name(host) for host in hosts]

    @field_validator("default_owner")
    @classmethod
    def _owner_is_a_name(cls, value: str) -> str:
        return safe_name(value)  # owners name storage folders (binaries/<owner>/...)

    @field_validator("job_uid_range")
    @classmethod
    def _unprivileged_range(cls, value: tuple[int, int]) -> tuple[int, int]:
        first, last = value
        if not 1000 <= first <= last < 2**31:
            raise ValueError("must be [first, last] with 1000 <= first <= last < 2**31")
        return value

    @model_validator(mode="after")
    def _one_cluster(self) -> Settings:
        if self.scheduler and self.cluster:
            raise ValueError("give scheduler or cluster, not both")
        return self

    @property
    def can_grow(self) -> bool:
        return self.cluster_can_grow if self.cluster_can_grow is not None else bool(self.cluster)

    @property
    def storage_url(self) -> str:
        return self.storage or str((self.data_dir / "storage").resolve())

    @property
    def database_path(self) -> Path:
        return self.database or self.data_dir / "jobs.db"

    def describe(self) -> list[tuple[str, Any, str]]:
        """(environment variable, effective value, help) for `orchestrator config`; option
        values that look like credentials are masked."""
        rows = []
        for name, field in type(self).model_fields.items():
            value = getattr(self, name)
            if isinstance(value, dict):
                value = _masked(value)
            rows.append((f"ORCHESTRATOR_{name.upper()}", value, field.description or ""))
        return rows


SECRET_WORDS = ("secret", "password", "token", "key", "credential")


def _masked(options: dict[str, Any]) -> dict[str, Any]:
    return {
        name: _masked(value) if isinstance(value, dict)
        else "***" if any(word in name.lower() for word in SECRET_WORDS) else value
        for name, value in options.items()
    }


def machine_resources() -> dict[str, float]:
    """What this machine offers to the embedded cluster: CPU cores, GPU devices, memory."""
    import psutil

    resources: dict[str, float] = {
        "CPU": float(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1),
        "MEMORY": float(psutil.virtual_memory().total),
    }
    gpus = count_gpus()
    if gpus:
        resources["GPU"] = float(gpus)
    return resources


def count_gpus() -> int:
    """NVIDIA devices visible here, from the driver's /proc entries or nvidia-smi; 0 if none."""
    proc = Path("/proc/driver/nvidia/gpus")
    if proc.is_dir():
        return len(list(proc.iterdir()))
    import shutil
    import subprocess

    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
            )
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0
