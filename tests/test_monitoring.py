"""Live monitoring over real HTTP: the /events stream, /metrics, and task keys the Dask
dashboard groups by name; settings that choose the cluster."""

from __future__ import annotations

import json
import re
import string
import subprocess
import sys
import threading
from datetime import datetime, timezone

import httpx
import pytest
from dask.utils import key_split
from hypothesis import assume, given
from hypothesis import strategies as st

from orchestrator import Orchestrator
from orchestrator.models import JobRecord
from orchestrator.server.engine import batch_key, key_name, task_key
from tests.conftest import REPO


def collect_events(url: str, params: dict, until, out: list, ready: threading.Event) -> None:
    """Read the SSE stream until `until(event)` is true."""
    with httpx.stream("GET", f"{url}/api/v1/events", params=params, timeout=httpx.Timeout(60, read=60)) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        for line in response.iter_lines():
            if line.startswith(": stream open"):
                ready.set()
            if line.startswith("data: "):
                event = json.loads(line[6:])
                out.append(event)
                if until(event):
                    return


def test_events_deliver_a_jobs_changes_in_order(server):
    events: list[dict] = []
    ready = threading.Event()
    done = lambda e: e.get("status") == "COMPLETED" and e.get("name") == "watched"  # noqa: E731
    reader = threading.Thread(target=collect_events, args=(server.url, {}, done, events, ready))
    reader.start()
    assert ready.wait(10)
    job = server.submit(command="echo hi", name="watched")
    reader.join(60)
    mine = [e["status"] for e in events if e["job_id"] == job["id"]]
    assert mine == ["QUEUED", "RUNNING", "COMPLETED"]
    assert all(e["event"] == "status" and e["at"] for e in events)


def test_events_filtered_by_sweep(server):
    sweep = server.http.post("/sweeps", json={"command": "sleep 0.5; echo ${i}", "max_parallel": 1,
                                              "variables": [{"name": "i", "values": [1, 2, 3]}]}).json()
    server.submit(command="true", name="not-in-the-sweep")
    events: list[dict] = []
    finished = lambda e: sum(x["status"] == "COMPLETED" for x in events) == 3 or e["status"] == "FAILED"  # noqa: E731
    collect_events(server.url, {"sweep_id": sweep["id"]}, finished, events, threading.Event())
    assert {e["sweep_id"] for e in events} == {sweep["id"]}
    last_run = [e["status"] for e in events if e["index"] == 2]
    assert last_run == ["RUNNING", "COMPLETED"]


def test_python_api_events_remote(server):
    """Subscribed when events() returns: even a job submitted before the first next() is
    seen from its first change."""
    with Orchestrator.connect(server.url) as remote, remote.events() as stream:
        job = server.submit(command="true", name="py-watched")
        assert _statuses_until_done(stream, job["id"]) == ["QUEUED", "RUNNING", "COMPLETED"]


def test_python_api_events_embedded(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path, **dask_cluster.settings) as orch, orch.events() as stream:
        job = orch.submit("true")
        assert _statuses_until_done(stream, job.id) == ["QUEUED", "RUNNING", "COMPLETED"]


def _statuses_until_done(stream, job_id: str) -> list[str]:
    statuses = []
    for event in stream:
        if event["job_id"] == job_id:
            statuses.append(event["status"])
            if event["status"] == "COMPLETED":
                return statuses
    raise AssertionError(f"the stream ended before the job did: {statuses}")


def test_metrics_in_prometheus_text(server):
    server.wait(server.submit(command="true")["id"])
    server.wait(server.submit(command="exit 3")["id"])
    response = server.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert 'orchestrator_jobs{status="COMPLETED"} 1.0' in text
    assert 'orchestrator_jobs{status="FAILED"} 1.0' in text
    assert "orchestrator_queue_length 0.0" in text
    assert 'orchestrator_run_duration_seconds_count{status="COMPLETED"} 1.0' in text
    assert 'orchestrator_worker_resource_declared{resource="CPU"' in text
    assert 'orchestrator_worker_resource_free{resource="CPU"' in text


def test_cli_watch_prints_changes_as_they_happen(server):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    watcher = subprocess.Popen(
        [sys.executable, "-m", "orchestrator.cli", "watch", "--url", server.url, "--json"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        job = None
        statuses = []
        deadline_job = threading.Timer(60, watcher.kill)
        deadline_job.start()
        import time

        deadline = time.monotonic() + 60
        while job is None:  # the stream is open once the server counts a subscriber
            assert time.monotonic() < deadline and watcher.poll() is None, "watch never connected"
            if server.running.service.events._subscriptions:
                job = server.submit(command="true", name="cli-watched")
            time.sleep(0.05)
        for line in watcher.stdout:
            event = json.loads(line)
            if event.get("job_id") == job["id"]:
                statuses.append(event["status"])
                if event["status"] == "COMPLETED":
                    break
        deadline_job.cancel()
        assert statuses == ["QUEUED", "RUNNING", "COMPLETED"]
    finally:
        watcher.kill()
        watcher.wait(10)


@given(st.text(alphabet=string.ascii_letters + string.digits + " _-.:/<>", min_size=0, max_size=40),
       st.integers(1, 10_000))
def test_dashboard_groups_every_task_by_its_job_or_sweep_name(name, number):
    """The stock dashboard groups tasks by dask.utils.key_split: it must give the name back,
    whatever the name and however the random id that follows it happens to look."""
    expected = key_name(name, "job")
    assume(not re.fullmatch(r"[a-f0-9]{32}", expected))  # key_split calls such keys "data"
    for job_id in ("abcdefabcdef", "0123456789ab", "deadbeef"):
        job = JobRecord(id=job_id, name=name, owner="o", status="QUEUED", resources={},
                        created_at=datetime.now(timezone.utc), attempt=number)
        assert key_split(task_key(job)) == expected
        assert key_split(batch_key(name, number, "s" + job_id[:11])) == key_name(name, "sweep")


def test_serve_refuses_two_clusters_and_an_unloadable_factory(tmp_path):
    both = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--scheduler", "tcp://127.0.0.1:1",
         "--cluster", "examples.clusters:adaptive_local_cluster", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert both.returncode == 2 and "give scheduler or cluster, not both" in both.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "serve", "--cluster", "no_such_module:make",
         "--data-dir", str(tmp_path), "--port", "0"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )
    assert missing.returncode == 2
    assert "cluster factory 'no_such_module:make' cannot be loaded" in missing.stderr


@pytest.mark.parametrize("dashboard", [False, True], ids=["no-dashboard", "dashboard"])
def test_cluster_reports_the_dashboard_the_scheduler_really_serves(make_server, dashboard):
    """An external scheduler without a dashboard has none: not Dask's default :8787 link."""
    from tests.conftest import free_port, kill_session

    port, dashboard_port = free_port(), free_port()
    served = ["--dashboard-address", f"127.0.0.1:{dashboard_port}"] if dashboard else ["--no-dashboard"]
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", str(port),
         *served], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        server = make_server(scheduler=f"tcp://127.0.0.1:{port}", tls_ca_file=None, tls_cert=None, tls_key=None)
        reported = server.http.get("/cluster").json()
        if dashboard:
            assert reported["dashboard_link"] == f"http://127.0.0.1:{dashboard_port}/status", reported
            assert httpx.get(reported["dashboard_link"], timeout=30).status_code == 200
        else:
            assert reported["dashboard_link"] is None and reported["jobs_page"] is None, reported
    finally:
        kill_session(scheduler)
