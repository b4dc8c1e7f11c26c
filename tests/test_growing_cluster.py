"""A cluster built by a factory (`--cluster module:callable`) that grows: Dask's adaptive
LocalCluster with no worker until work waits. Also the dashboard's Jobs page it serves."""

from __future__ import annotations

import httpx
import pytest
from bokeh.client import pull_session
from bokeh.models import ColumnDataSource

from orchestrator.config import Settings
from tests.conftest import start_test_server, stop_test_server
from tests.support import wait_until

FACTORY = "examples.clusters:adaptive_local_cluster"


@pytest.fixture(scope="module")
def growing(tmp_path_factory):
    server = start_test_server(Settings(
        data_dir=tmp_path_factory.mktemp("growing"), port=0, cluster=FACTORY,
        cluster_options={"minimum": 0, "maximum": 1, "cores": 1},
    ))
    yield server
    stop_test_server(server)


def test_work_no_worker_fits_yet_waits_saying_for_what_then_runs(growing):
    cluster = growing.http.get("/cluster").json()
    assert cluster["can_grow"] is True
    job = growing.submit(command="echo grown", resources={"cores": 1})
    assert job["status"] == "QUEUED"
    assert "waiting for a worker offering 1 CPU" in job["status_reason"], job
    done = growing.wait(job["id"], timeout=90)
    assert done["status"] == "COMPLETED", done
    history = growing.http.get(f"/jobs/{job['id']}/statuses").json()
    assert [h["status"] for h in history] == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"]
    assert "the cluster can grow" in history[1]["reason"]


def test_a_waiting_jobs_reason_is_refreshed_as_workers_come(tmp_path):
    """Recorded when no worker was connected, the reason must not keep saying so after one
    joined: it says what holds now."""
    server = start_test_server(Settings(data_dir=tmp_path / "data", port=0, cluster=FACTORY,
                                        cluster_options={"minimum": 0, "maximum": 1, "cores": 1}))
    try:
        waiting = server.submit(command="true", resources={"gpus": 1})
        assert "(no worker is connected" in waiting["status_reason"], waiting
        assert server.wait(server.submit(command="true")["id"], timeout=90)["status"] == "COMPLETED"
        refreshed = wait_until(
            lambda: "the most any worker offers is 0 GPU" in (reason := server.http.get(
                f"/jobs/{waiting['id']}").json()["status_reason"]) and reason, 30, "the reason refreshed")
        assert refreshed.startswith("waiting for a worker offering") and "no worker is connected" not in refreshed
        server.http.post(f"/jobs/{waiting['id']}/stop")
    finally:
        stop_test_server(server)


def test_a_request_beyond_any_worker_waits_instead_of_being_refused(growing):
    job = growing.submit(command="true", resources={"gpus": 1})
    assert job["status"] == "QUEUED" and "1 GPU" in job["status_reason"], job
    growing.http.post(f"/jobs/{job['id']}/stop")
    assert growing.wait(job["id"], timeout=30)["status"] == "STOPPED"


def test_the_dashboard_jobs_page_shows_sweeps_live(growing):
    name = "dashboard_sweep_visible"
    created = growing.http.post("/sweeps", json={
        "name": name, "command": "echo ${x}", "variables": [{"name": "x", "values": [1, 2]}],
    })
    assert created.status_code == 201, created.text
    growing.wait_sweep(created.json()["id"], timeout=90)
    page = growing.http.get("/cluster").json()["jobs_page"]
    assert page and page.endswith("/jobs")

    def both_completed() -> dict | None:  # summaries follow changes within a second
        bars = page_source(page, "COMPLETED")  # the live chart, as a browser gets it
        rows = [i for i, label in enumerate(bars["group"]) if label.startswith(name)]
        return bars if rows and bars["COMPLETED"][rows[0]] == 2 else None

    bars = wait_until(both_completed, 15, "the sweep's bar at 2 COMPLETED", every=0.3)
    row = next(i for i, label in enumerate(bars["group"]) if label.startswith(name))
    assert bars["FAILED"][row] == 0, bars
    response = httpx.get(page, timeout=10)
    assert response.status_code == 200 and name in response.text  # counts as of loading, in HTML
    menu = httpx.get(page.replace("/jobs", "/individual-jobs"), timeout=10)
    assert menu.status_code == 200


def test_the_jobs_page_lists_running_jobs_with_worker_and_elapsed_time(growing):
    job = growing.submit(command="sleep 30", name="long_runner", resources={"cores": 1})
    running = growing.wait_for_status(job["id"], "RUNNING", timeout=60)
    page = growing.http.get("/cluster").json()["jobs_page"]
    def listed() -> dict | None:
        data = page_source(page, "elapsed")
        return data if job["id"] in data["job_id"] else None

    table = wait_until(listed, 15, "the running job listed", every=0.3)
    row = table["job_id"].index(job["id"])
    assert table["name"][row] == "long_runner"
    assert table["worker"][row] == running["worker"]
    assert table["elapsed"][row].endswith("s")
    growing.http.post(f"/jobs/{job['id']}/stop")
    assert growing.wait(job["id"], timeout=30)["status"] == "STOPPED"


def page_source(page: str, column: str) -> dict:
    """The data of the page's ColumnDataSource that has `column`, as a browser session gets it."""
    with pull_session(url=page) as session:
        sources = session.document.select({"type": ColumnDataSource})
        return dict(next(source.data for source in sources if column in source.data))
