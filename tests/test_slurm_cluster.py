"""A real single-node Slurm (tests/support/slurm.py), used directly and through dask-jobqueue:
the Dask workers are Slurm batch jobs that connect back to a scheduler in this process."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from dask_jobqueue import SLURMCluster
from distributed import Client

from tests.support import wait_until
from tests.support.slurm import MARKER_VAR, SlurmInfo, outer_slurm_vars, slurm_cluster

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[SlurmInfo]:
    with slurm_cluster(tmp_path) as info:
        # dask-jobqueue calls sbatch/scancel with this process's environment
        for var in outer_slurm_vars(dict(os.environ)):
            monkeypatch.delenv(var)
        monkeypatch.setenv("SLURM_CONF", info.env["SLURM_CONF"])
        monkeypatch.setenv(MARKER_VAR, info.env[MARKER_VAR])
        yield info


def where_am_i() -> dict:
    """Runs on a Slurm-started worker; pickled by reference, so the job must import this module."""
    return {"cwd": os.getcwd(), "job": os.environ.get("SLURM_JOB_ID"),
            "python": sys.executable}


def test_sbatch_job_runs_and_completes(slurm: SlurmInfo) -> None:
    output = slurm.sbatch_wait("hostname; echo job=$SLURM_JOB_ID", timeout=60)

    assert slurm.node in output.splitlines()[0]
    assert "job=" in output
    assert slurm.squeue_ids() == []


def test_node_is_idle_with_the_machines_cpus(slurm: SlurmInfo) -> None:
    out = slurm.run("sinfo", "--noheader", "--format=%P %t %c %m").stdout.split()

    assert out == [f"{slurm.partition}*", "idle", str(slurm.cpus), str(slurm.memory_mb)]


def test_dask_jobqueue_worker_runs_a_task_and_leaves_no_job(slurm: SlurmInfo,
                                                            tmp_path: Path) -> None:
    logs = tmp_path / "worker-logs"
    logs.mkdir()
    cluster = SLURMCluster(
        cores=1, processes=1, memory="1GiB", queue=slurm.partition, walltime="00:10:00",
        python=sys.executable,
        # workers reach the scheduler over loopback; no dashboard port to collide on
        scheduler_options={"host": "127.0.0.1", "dashboard_address": ":0"},
        local_directory=str(tmp_path / "worker-space"),
        log_directory=str(logs),
        # the job's cwd is the repo root: `python -m` puts it on sys.path, so `tests` imports
        job_extra_directives=[f"--chdir={REPO}"],
        death_timeout=30,
    )
    try:
        assert f"#SBATCH -p {slurm.partition}" in cluster.job_script()
        with Client(cluster, timeout=30) as client:
            cluster.scale(1)
            client.wait_for_workers(1, timeout=60)

            assert client.submit(lambda: 1 + 1, pure=False).result(timeout=60) == 2
            seen = client.submit(where_am_i, pure=False).result(timeout=60)
            assert seen["cwd"] == str(REPO)
            assert seen["job"] in slurm.squeue_ids()
            assert seen["python"] == sys.executable
    finally:
        cluster.close(timeout=30)

    wait_until(lambda: slurm.squeue_ids() == [], 30, "squeue empty after cluster.close()")
