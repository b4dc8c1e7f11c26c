"""Crash and restart with real processes: `orchestrator serve` killed with SIGKILL loses nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator

import httpx

from tests.conftest import free_port, kill_session, serve_subprocess, wait_until_serving
from tests.support import wait_until


def test_kill_9_and_restart_keeps_every_job_and_resubmits_active_ones(tmp_path):
    data_dir, port, url, api = _place(tmp_path)
    with serving(data_dir, port, url) as server:
        done = api.post("/jobs", params={"sync": "true"}, json={"command": "echo kept > out.txt"}).json()
        assert done["status"] == "COMPLETED"
        blocker = api.post("/jobs", json={"command": "sleep 600", "resources": {"cores": 2}}).json()
        queued = [api.post("/jobs", json={"command": "echo again", "resources": {"cores": 2}}).json()
                  for _ in range(2)]
        saved = api.post("/jobs", json={"command": "true", "submit": False}).json()
        _wait_status(api, blocker["id"], "RUNNING")
        kill_9(server)

    with serving(data_dir, port, url) as server, contextlib.closing(api):
        assert api.get("/jobs").json()["count"] == 5
        kept = api.get(f"/jobs/{done['id']}").json()
        assert kept["status"] == "COMPLETED"
        assert api.get(f"/jobs/{done['id']}/files/out.txt").content == b"kept\n"
        assert [h["status"] for h in api.get(f"/jobs/{done['id']}/statuses").json()] == [
            "CREATED", "QUEUED", "RUNNING", "COMPLETED"]
        assert api.get(f"/jobs/{saved['id']}").json()["status"] == "CREATED"
        history = api.get(f"/jobs/{blocker['id']}/statuses").json()
        assert history[-1]["status"] in ("QUEUED", "RUNNING")
        reasons = [h["reason"] or "" for h in history]
        assert any(r.startswith("resubmitted after orchestrator restart (was RUNNING on tls://")
                   for r in reasons), reasons
        api.post(f"/jobs/{blocker['id']}/stop")
        for job in queued:
            finished = api.get(f"/jobs/{job['id']}", params={"wait": 60}).json()
            assert finished["status"] == "COMPLETED", finished
            assert api.get(f"/jobs/{job['id']}/logs").text == "again\n"
            assert any("resubmitted after orchestrator restart" in (h["reason"] or "")
                       for h in api.get(f"/jobs/{job['id']}/statuses").json())
        assert api.get(f"/jobs/{blocker['id']}", params={"wait": 10}).json()["status"] == "STOPPED"
        stop_cleanly(server)


@contextlib.contextmanager
def serving(data_dir, port: int, url: str, *extra: str) -> Iterator[subprocess.Popen]:
    """`orchestrator serve` on the data folder (with `extra` flags), answering; everything it
    started dies after."""
    server = serve_subprocess(data_dir, port, *extra)
    try:
        wait_until_serving(url, server)
        yield server
    finally:
        kill_session(server)


def kill_9(server: subprocess.Popen) -> None:
    os.kill(server.pid, signal.SIGKILL)
    server.wait(timeout=10)


def stop_cleanly(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGTERM)
    assert server.wait(timeout=60) == 0


def _place(tmp_path) -> tuple:
    """A data folder, a free port, its URL and an API client for one server's lifetimes."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    return data_dir, port, url, httpx.Client(base_url=url + "/api/v1", timeout=60)


def _wait_status(api: httpx.Client, job_id: str, status: str) -> None:
    wait_until(lambda: api.get(f"/jobs/{job_id}").json()["status"] == status, 30, f"{job_id} {status}")


def test_kill_9_mid_sweep_and_restart_finishes_every_run_once(tmp_path):
    data_dir, port, url, api = _place(tmp_path)
    with serving(data_dir, port, url) as server:
        sweep = api.post("/sweeps", json={
            "command": "sleep 0.2; echo '{\"twice\": '$((${i} * 2))'}' > outputs.json",
            "variables": [{"name": "i", "range": {"start": 0, "stop": 29, "step": 1}}],
            "max_parallel": 2,
        }).json()
        _wait_counts(api, sweep["id"], lambda c: c.get("COMPLETED", 0) >= 4)
        kill_9(server)

    with serving(data_dir, port, url) as server, contextlib.closing(api):
        done = api.get(f"/sweeps/{sweep['id']}", params={"wait": 120}, timeout=180).json()
        assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": 30}, done
        rows = api.get(f"/sweeps/{sweep['id']}/results").json()["rows"]
        assert [r["index"] for r in rows] == list(range(30))  # no lost run, no duplicate row
        assert all(r["twice"] == 2 * r["i"] for r in rows)
        resumed = [r for r in rows if any(
            "resubmitted after orchestrator restart" in (h["reason"] or "")
            for h in api.get(f"/jobs/{r['job_id']}/statuses").json())]
        assert resumed, "the history of resumed runs says what happened"
        stop_cleanly(server)


def _wait_counts(api: httpx.Client, sweep_id: str, predicate) -> None:
    wait_until(lambda: predicate(api.get(f"/sweeps/{sweep_id}").json()["counts"]), 60, "the sweep that far")


def _processes_of(job_id: str) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if proc.environ().get("JOB_ID") == job_id:
                found.append(proc.pid)
    return found


def test_a_stop_survives_a_crash_right_after_it_is_accepted(tmp_path):
    """The stop is a wish kept in the ledger: the restarted server ends the job STOPPED, never
    runs its command again, and ends the process its previous life left (the job ignores
    SIGTERM and runs in its own session, so it outlives the killed embedded worker)."""
    import time

    data_dir, port, url, api = _place(tmp_path)
    runs = tmp_path / "runs.txt"
    command = f"trap '' TERM; echo run >> {runs}; while true; do sleep 0.2; done"
    with serving(data_dir, port, url) as server:
        job = api.post("/jobs", json={"command": command}).json()
        _wait_status(api, job["id"], "RUNNING")
        assert api.post(f"/jobs/{job['id']}/stop").status_code == 202
        accepted = time.monotonic()
        kill_session(server)  # the whole process group, embedded cluster included, at once
        if time.monotonic() - accepted < 1.5:  # within the runner's 2 s grace before SIGKILL
            assert _processes_of(job["id"]), "the job outlived its killed worker, as it can"

    with serving(data_dir, port, url) as server, contextlib.closing(api):
        done = api.get(f"/jobs/{job['id']}", params={"wait": 60}, timeout=90).json()
        assert done["status"] == "STOPPED" and done["status_reason"].startswith("stop requested"), done
        wait_until(lambda: not _processes_of(job["id"]), 20, "the previous life's job process ended")
        time.sleep(1)  # a resubmitted attempt would have written its line by now
        assert runs.read_text() == "run\n"
        stop_cleanly(server)
