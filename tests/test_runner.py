"""The task a worker runs, called in-process: an attempt replaced while it runs stores
nothing, so it can never overwrite the files of the attempt that replaced it."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import uuid

import psutil

from orchestrator.plugins.worker import job_processes, request_stop, stale_attempt
from orchestrator.storage import Storage, layout
from orchestrator.worker import runner
from orchestrator.worker.runner import run_job
from tests.support import wait_until


def _spec(tmp_path, key: str) -> dict:
    return {"job_id": uuid.uuid4().hex[:12], "key": key, "attempt": 1,
            "storage_url": str(tmp_path / "storage"),
            "command": "echo late > out.txt; echo log; sleep 30"}


def _wait_running(key: str) -> None:
    wait_until(lambda: key in job_processes().running_keys(), 20, "the command started", every=0.02)


def _run_then_stop(tmp_path, requested_by: str) -> tuple[dict, dict, Storage]:
    """Run a job in-process, and once it has written its output and a log line, stop it."""
    spec = _spec(tmp_path, f"job-1-{uuid.uuid4().hex[:8]}")
    outcome: dict = {}
    runner = threading.Thread(target=lambda: outcome.update(run_job(spec)))
    runner.start()
    _wait_running(spec["key"])
    time.sleep(0.3)  # out.txt and the log line are written by now
    request_stop(spec["key"], requested_by)
    runner.join(30)
    return spec, outcome, Storage(spec["storage_url"])


def test_a_replaced_attempt_stores_no_logs_or_outputs(tmp_path):
    spec, outcome, storage = _run_then_stop(tmp_path, stale_attempt("test"))
    assert outcome["status"] == "STOPPED" and "newer attempt" in outcome["reason"]
    assert not storage.exists(layout.output_key(spec["job_id"], "out.txt"))
    assert not storage.exists(layout.log_key(spec["job_id"], "stdout"))


def test_a_user_stop_keeps_what_the_job_wrote(tmp_path):
    spec, outcome, storage = _run_then_stop(tmp_path, "alice")
    assert outcome["status"] == "STOPPED"
    assert storage.read_range(layout.output_key(spec["job_id"], "out.txt"), 0) == b"late\n"
    assert storage.read_range(layout.log_key(spec["job_id"], "stdout"), 0) == b"log\n"


def test_a_dead_process_waiting_to_be_reaped_does_not_count_as_surviving_a_stop():
    """A stop's killed processes whose parent died first are zombies until PID 1 reaps them,
    which can take over a second: they are dead, and a stop must not report them alive."""
    holder = subprocess.Popen(  # starts `true` and never reaps it
        [sys.executable, "-c", "import subprocess, time; child = subprocess.Popen(['true']); "
         "print(child.pid, flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        zombie = psutil.Process(int(holder.stdout.readline()))
        wait_until(lambda: zombie.status() == psutil.STATUS_ZOMBIE, 10, "the child to end")
        assert not runner._still_running(zombie)
        assert runner._still_running(psutil.Process(holder.pid))
    finally:
        holder.kill()
        holder.wait()
