"""orchestrator.clusters without a batch system: what a Slurm worker job is told (its shape,
the worker plugin, retiring before the walltime, GPUs asked of Slurm), and the ledger of
batch jobs that a restarted orchestrator cancels. tests/test_slurm.py runs them for real."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from orchestrator import clusters
from orchestrator.server.batch_jobs import cancel_leftovers, record
from orchestrator.server.ledger import Store


def test_a_slurm_worker_job_declares_its_shape_loads_the_plugin_and_retires_before_its_walltime(tmp_path):
    tls = tmp_path / "tls"
    cluster = clusters.slurm(cores=2, memory="2GiB", gpus=1, walltime="01:00:00", maximum=1,
                             scheduler_host="127.0.0.1", shared_temp_directory=str(tls))
    try:
        script = cluster.job_script()
        assert "--resources CPU=2,MEMORY=2147483648,GPU=1" in script
        assert "--preload orchestrator.plugins.worker" in script
        assert "--lifetime 3300s --lifetime-stagger 30s" in script  # an hour less 5 minutes
        assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -t 01:00:00" in script
        assert cluster.worker_shape == {"CPU": 2.0, "MEMORY": 2.0 * 2**30, "GPU": 1.0}
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")  # certificates, always
        assert stat.S_IMODE(tls.stat().st_mode) == 0o700  # the workers' key: the orchestrator's only
        assert cluster.batch_jobs.cancel_command == "scancel"
    finally:
        cluster.close()


@pytest.mark.parametrize(("walltime", "seconds"), [
    ("04:00:00", 14400), ("1-00:00:00", 86400), ("30:00", 1800), ("45", 2700), ("2-12:30:15", 217815),
])
def test_walltimes_in_slurms_forms(walltime, seconds):
    assert clusters._walltime_seconds(walltime) == seconds


def test_a_short_walltime_retires_a_tenth_early():
    assert clusters._lifetime_args("00:10:00", None, None) == ["--lifetime", "540s", "--lifetime-stagger", "30s"]
    assert clusters._lifetime_args(None, "8s", "0s") == ["--lifetime", "8s", "--lifetime-stagger", "0s"]
    assert clusters._lifetime_args(None, None, None) == []


def test_batch_jobs_left_by_a_killed_run_are_cancelled_at_the_next_start(tmp_path: Path, caplog):
    store = Store(tmp_path / "jobs.db")
    jobs = clusters.BatchJobs(cancel_command=f"sh -c 'touch {tmp_path}/cancelled-$0'")  # $0: the job id
    jobs.submitted("101")  # submitted while the factory built the cluster, before the ledger
    record(store, jobs)
    jobs.submitted("102")
    jobs.submitted("103")
    jobs.closed("103")  # closed cleanly: nothing to cancel
    store.close()  # ... and the orchestrator is killed

    again = Store(tmp_path / "jobs.db")
    assert sorted(cancel_leftovers(again)) == ["101", "102"]
    assert sorted(p.name for p in tmp_path.glob("cancelled-*")) == ["cancelled-101", "cancelled-102"]
    assert "cancelled 2 batch jobs left by the orchestrator's previous run: " in caplog.text
    assert again.batch_jobs() == [] and cancel_leftovers(again) == []


def test_the_network_interface_is_the_workers_and_batch_system_names_are_factories(tmp_path):
    from orchestrator.server.cluster import load_factory

    cluster = clusters.slurm(cores=1, memory="1GiB", interface="lo", shared_temp_directory=str(tmp_path / "tls"))
    try:
        assert "--interface lo" in cluster.job_script()  # workers listen and advertise there
        assert cluster.scheduler_address.startswith("tls://127.0.0.1:")  # and so does the scheduler
    finally:
        cluster.close()
    assert load_factory("slurm") is clusters.slurm and load_factory("htcondor") is clusters.htcondor
