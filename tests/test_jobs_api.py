"""Jobs over real HTTP on a real cluster: create, lifecycle, logs, outputs, stop, delete."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import psutil

from tests.support import wait_until


def test_sync_job_reports_result_outputs_and_history(server):
    script = "echo hello; echo oops >&2; echo '{\"loss\": 0.25, \"tag\": \"a\"}' > outputs.json"
    response = server.http.post("/jobs", params={"sync": "true", "timeout": 60},
                                json={"name": "sim", "command": script})
    assert response.status_code == 201
    assert response.headers["Location"].endswith(response.json()["id"])
    job = response.json()
    assert job["status"] == "COMPLETED"
    assert job["worker"].startswith("tls://127.0.0.1")
    assert job["attempt"] == 1
    result = server.http.get(f"/jobs/{job['id']}/result").json()
    assert result["exit_code"] == 0
    assert result["outputs"] == {"loss": 0.25, "tag": "a"}
    assert result["duration_s"] >= 0
    history = server.http.get(f"/jobs/{job['id']}/statuses").json()
    assert [h["status"] for h in history] == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"]
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "hello\n"
    assert server.http.get(f"/jobs/{job['id']}/logs", params={"stream": "stderr"}).text == "oops\n"


def test_sync_wait_that_runs_out_answers_202(server):
    response = server.http.post("/jobs", params={"sync": "true", "timeout": 0.5},
                                json={"command": "sleep 5"})
    assert response.status_code == 202
    assert response.json()["status"] in ("QUEUED", "RUNNING")
    server.http.post(f"/jobs/{response.json()['id']}/stop")  # no sleeper left on the shared cluster


def test_failed_job_records_exit_code_and_retries(server):
    job = server.submit(command="exit 3", retries=2)
    job = server.wait(job["id"])
    assert job["status"] == "FAILED"
    assert job["status_reason"] == "exit code 3"
    assert job["attempt"] == 3
    reasons = [(h["status"], h["reason"]) for h in server.http.get(f"/jobs/{job['id']}/statuses").json()]
    assert ("QUEUED", "exit code 3, retry 1/2") in reasons
    assert ("QUEUED", "exit code 3, retry 2/2") in reasons
    assert reasons[-1] == ("FAILED", "exit code 3")


def test_timeout_fails_the_job_with_its_reason(server):
    job = server.wait(server.submit(command="sleep 30", timeout_s=0.5)["id"])
    assert job["status"] == "FAILED"
    assert job["status_reason"].startswith("timeout after 0.5 s")


def test_argument_list_runs_without_a_shell(server):
    job = server.wait(server.submit(command=["echo", "$HOME; rm -rf /"])["id"])
    assert job["status"] == "COMPLETED"
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "$HOME; rm -rf /\n"


def test_env_is_passed_to_the_command(server):
    job = server.wait(server.submit(command="echo $GREETING", env={"GREETING": "hi there"})["id"])
    assert server.http.get(f"/jobs/{job['id']}/logs").text == "hi there\n"


def test_outputs_are_listed_searched_and_downloaded_with_range(server):
    script = "mkdir -p res/sub; printf 0123456789 > res/a.txt; echo b > res/sub/b.dat; echo c > c.log"
    job = server.wait(server.submit(command=script)["id"])
    listing = server.http.get(f"/jobs/{job['id']}/files").json()
    assert [f["path"] for f in listing["results"]] == ["c.log", "res/a.txt", "res/sub/b.dat"]
    entry = listing["results"][1]
    assert entry["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
    assert entry["size"] == 10
    search = server.http.get(f"/jobs/{job['id']}/files", params={"search": "sub"}).json()
    assert [f["path"] for f in search["results"]] == ["res/sub/b.dat"]
    page = server.http.get(f"/jobs/{job['id']}/files", params={"page_size": 2}).json()
    assert page["count"] == 3 and len(page["results"]) == 2 and page["next"]
    whole = server.http.get(f"/jobs/{job['id']}/files/res/a.txt")
    assert whole.content == b"0123456789"
    assert whole.headers["X-Checksum-Sha256"] == entry["sha256"]
    part = server.http.get(f"/jobs/{job['id']}/files/res/a.txt", headers={"Range": "bytes=2-4"})
    assert part.status_code == 206
    assert part.content == b"234"
    assert part.headers["Content-Range"] == "bytes 2-4/10"
    assert server.http.get(f"/jobs/{job['id']}/files/nope.txt").status_code == 404


def test_multipart_files_are_staged_and_not_returned_as_outputs(server):
    files = [("file[]", ("inputs/data.csv", b"x,y\n1,2\n")), ("file[]", ("run.sh", b"cat inputs/data.csv > copy.csv"))]
    data = {"command": "sh run.sh", "name": "with-files", "env": json.dumps({"A": "1"})}
    response = server.http.post("/jobs", data=data, files=files)
    assert response.status_code == 201, response.text
    job = server.wait(response.json()["id"])
    assert job["status"] == "COMPLETED"
    assert job["files"] == ["inputs/data.csv", "run.sh"]
    outputs = server.http.get(f"/jobs/{job['id']}/files").json()["results"]
    assert [f["path"] for f in outputs] == ["copy.csv"]
    assert server.http.get(f"/jobs/{job['id']}/files/copy.csv").content == b"x,y\n1,2\n"


def test_logs_can_be_tailed_by_offset_while_running(server):
    job = server.submit(command="echo first; sleep 2; echo second")
    server.wait_for_status(job["id"], "RUNNING")

    def first_line_logged() -> httpx.Response | None:
        response = server.http.get(f"/jobs/{job['id']}/logs")
        return response if "first" in response.text else None

    response = wait_until(first_line_logged, 10, "the first line logged")
    assert response.text == "first\n"
    offset = int(response.headers["X-Log-Offset"])
    server.wait(job["id"])
    rest = server.http.get(f"/jobs/{job['id']}/logs", params={"offset": offset})
    assert rest.text == "second\n"


def test_follow_delivers_every_line_in_order(server):
    job = server.submit(command="seq 1 100000")
    with server.http.stream("GET", f"/jobs/{job['id']}/logs", params={"follow": "true"}) as response:
        text = "".join(response.iter_text())
    lines = text.splitlines()
    assert len(lines) == 100000
    assert lines == [str(i) for i in range(1, 100001)]


def test_stop_kills_the_whole_process_tree(server):
    job = server.submit(command="sleep 600 & sleep 600")
    server.wait_for_status(job["id"], "RUNNING")
    time.sleep(0.3)  # let the shell start both sleeps
    started = time.monotonic()
    response = server.http.post(f"/jobs/{job['id']}/stop")
    assert response.status_code == 202
    job = server.wait(job["id"], timeout=10)
    assert time.monotonic() - started < 5
    assert job["status"] == "STOPPED"
    assert job["status_reason"] == "stop requested by anonymous"
    assert not _processes_with_marker(job["id"])


def test_stop_finds_processes_that_left_the_process_group(server):
    job = server.submit(command="setsid sleep 600 & sleep 600")
    server.wait_for_status(job["id"], "RUNNING")
    time.sleep(0.3)
    server.http.post(f"/jobs/{job['id']}/stop")
    job = server.wait(job["id"], timeout=10)
    assert job["status"] == "STOPPED"
    assert not _processes_with_marker(job["id"])


def test_stop_of_a_queued_job_means_it_never_runs(server):
    blockers = [server.submit(command="sleep 600", resources={"cores": 2}) for _ in range(1)]
    queued = server.submit(command="touch ran.txt")
    assert server.http.get(f"/jobs/{queued['id']}").json()["status"] == "QUEUED"
    assert server.http.post(f"/jobs/{queued['id']}/stop").status_code == 202
    job = server.wait(queued["id"], timeout=10)
    assert job["status"] == "STOPPED"
    for blocker in blockers:
        server.http.post(f"/jobs/{blocker['id']}/stop")
        server.wait(blocker["id"], timeout=10)
    assert server.http.get(f"/jobs/{queued['id']}/files").json()["count"] == 0
    statuses = [h["status"] for h in server.http.get(f"/jobs/{queued['id']}/statuses").json()]
    assert "RUNNING" not in statuses


def test_job_saved_with_submit_false_waits_for_submit(server):
    response = server.http.post("/jobs", json={"command": "true", "submit": False})
    job = response.json()
    assert job["status"] == "CREATED"
    assert server.http.post(f"/jobs/{job['id']}/submit").status_code == 202
    assert server.wait(job["id"])["status"] == "COMPLETED"
    assert server.http.post(f"/jobs/{job['id']}/submit").status_code == 409


def test_patch_edits_name_and_priority_until_running(server):
    job = server.http.post("/jobs", json={"command": "true", "submit": False}).json()
    patched = server.http.patch(f"/jobs/{job['id']}", json={"name": "renamed", "priority": 5})
    assert patched.status_code == 200
    assert patched.json()["name"] == "renamed" and patched.json()["priority"] == 5
    server.http.post(f"/jobs/{job['id']}/submit")
    server.wait(job["id"])
    late = server.http.patch(f"/jobs/{job['id']}", json={"name": "again"})
    assert late.status_code == 409


def test_delete_refuses_running_jobs_and_removes_finished_ones(server):
    running = server.submit(command="sleep 600")
    server.wait_for_status(running["id"], "RUNNING")
    refused = server.http.delete(f"/jobs/{running['id']}")
    assert refused.status_code == 409
    assert refused.json()["error"]["code"] == "conflict"
    accepted = server.http.delete(f"/jobs/{running['id']}", params={"stop": "true"})
    assert accepted.status_code == 202
    wait_until(lambda: server.http.get(f"/jobs/{running['id']}").status_code == 404, 10,
               "the job deleted after stopping")
    done = server.wait(server.submit(command="echo x > out.txt")["id"])
    storage = server.running.service.storage
    assert storage.exists(f"jobs/{done['id']}/outputs/out.txt")
    assert server.http.delete(f"/jobs/{done['id']}").status_code == 204
    assert server.http.get(f"/jobs/{done['id']}").status_code == 404
    assert not storage.exists(f"jobs/{done['id']}")


def test_list_paginates_and_filters(server):
    ids = [server.submit(command="true", name=f"alpha-{i}")["id"] for i in range(3)]
    failing = server.submit(command="false", name="beta")["id"]
    for job_id in [*ids, failing]:
        server.wait(job_id)
    page1 = server.http.get("/jobs", params={"page_size": 2}).json()
    assert page1["count"] == 4 and len(page1["results"]) == 2
    assert page1["previous"] is None and "page=2" in page1["next"]
    page2 = server.http.get(page1["next"]).json()
    assert [j["id"] for j in page1["results"] + page2["results"]] == [*ids, failing]
    assert page2["next"] is None
    failed = server.http.get("/jobs", params={"status": "FAILED"}).json()
    assert [j["id"] for j in failed["results"]] == [failing]
    alphas = server.http.get("/jobs", params={"search": "alpha"}).json()
    assert alphas["count"] == 3


def test_bulk_stop_and_delete_by_filter(server):
    sleepers = [server.submit(command="sleep 600", name="sleeper")["id"] for _ in range(3)]
    response = server.http.post("/jobs/stop", json={"ids": sleepers})
    assert response.status_code == 202
    assert sorted(response.json()["stopping"]) == sorted(sleepers)
    for job_id in sleepers:
        assert server.wait(job_id, timeout=10)["status"] == "STOPPED"
    deleted = server.http.request("DELETE", "/jobs", params={"status": "STOPPED"})
    assert deleted.status_code == 200
    assert sorted(deleted.json()["deleted"]) == sorted(sleepers)
    assert server.http.get("/jobs", params={"status": "STOPPED"}).json()["count"] == 0
    unfiltered = server.http.request("DELETE", "/jobs")
    assert unfiltered.status_code == 400


def test_cluster_lists_workers_with_resources(server):
    cluster = server.http.get("/cluster").json()
    assert len(cluster["workers"]) == 1
    assert cluster["workers"][0]["declared"]["CPU"] == 2


def test_impossible_resources_are_refused_naming_the_resource(server):
    response = server.http.post("/jobs", json={"command": "true", "resources": {"gpus": 1}})
    assert response.status_code == 400
    assert "resources.gpus" in response.json()["error"]["fields"]


def _processes_with_marker(job_id: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        try:
            if proc.environ().get("ORCHESTRATOR_JOB_ID") == job_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_openapi_document_lists_every_route(server):
    spec = server.http.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    for path in ["/api/v1/jobs", "/api/v1/jobs/{job_id}", "/api/v1/jobs/{job_id}/logs",
                 "/api/v1/binaries/{name}", "/api/v1/jobs/{job_id}/files/{path}",
                 "/api/v1/sweeps", "/api/v1/sweeps/{sweep_id}", "/api/v1/sweeps/{sweep_id}/runs",
                 "/api/v1/sweeps/{sweep_id}/results", "/api/v1/sweeps/{sweep_id}/stop",
                 "/api/v1/sweeps/{sweep_id}/finished"]:
        assert path in spec["paths"], path
    assert {"JobCreate", "SweepCreate", "SweepRecord"} <= set(spec["components"]["schemas"])
