"""Finishing what failed or stopped, over REST on the real server and cluster: an ended job
reruns as a new attempt under its id (the attempt it replaces keeps its outputs), a sweep's
failed or stopped runs rerun and a stopped sweep resumes, and a sweep is deleted whole."""

from __future__ import annotations

import pytest

from tests.support import wait_until

# fails on its first attempt (leaving first.txt), succeeds on the next
FLAKY = ("if [ -f /tmp/rerun-$JOB_ID ]; then echo second > out.txt; "
         "else touch /tmp/rerun-$JOB_ID; echo first | tee first.txt; exit 3; fi")


def history(server, job_id: str) -> list[dict]:
    return server.http.get(f"/jobs/{job_id}/statuses").json()


def test_an_ended_job_reruns_as_a_new_attempt_keeping_the_last_ones_outputs(any_server):
    server = any_server
    failed = server.wait(server.submit(command=FLAKY)["id"])
    assert failed["status"] == "FAILED" and failed["attempt"] == 1
    rerun = server.http.post(f"/jobs/{failed['id']}/rerun")
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["status"] in ("QUEUED", "RUNNING", "COMPLETED")
    done = server.wait(failed["id"])
    assert done["status"] == "COMPLETED" and done["attempt"] == 2, done
    assert server.http.get(f"/jobs/{done['id']}/files/out.txt").text == "second\n"
    statuses = [(h["status"], h["reason"]) for h in history(server, done["id"])]
    assert ("FAILED", "exit code 3") in statuses or any(s == "FAILED" for s, _ in statuses)
    assert ("QUEUED", "rerun requested by anonymous") in statuses
    storage = server.running.service.storage
    assert storage.open(f"jobs/{done['id']}/attempts/1/outputs/first.txt").read() == b"first\n"
    kept_log = storage.open(f"jobs/{done['id']}/attempts/1/logs/stdout.log").read()
    assert kept_log == b"first\n" and server.http.get(f"/jobs/{done['id']}/logs").text == ""


def test_only_an_ended_job_reruns(server):
    job = server.submit(command="sleep 60")
    server.wait_for_status(job["id"], "RUNNING")
    refused = server.http.post(f"/jobs/{job['id']}/rerun")
    assert refused.status_code == 409, refused.text
    server.http.post(f"/jobs/{job['id']}/stop")
    assert server.wait(job["id"])["status"] == "STOPPED"
    assert server.http.post("/jobs/nosuchjob0000/rerun").status_code == 404


def sweep(server, **spec) -> dict:
    created = server.http.post("/sweeps", json=spec)
    assert created.status_code == 201, created.text
    return created.json()


def test_a_stopped_sweep_resumes_and_every_rerun_run_keeps_both_attempts(server):
    started = sweep(server, command="sleep 0.5; echo ${i} > out.txt", max_parallel=1,
                    variables=[{"name": "i", "values": list(range(6))}])
    wait_until(lambda: server.http.get(f"/sweeps/{started['id']}").json()["counts"].get("COMPLETED", 0) >= 1,
               60, "a first run completed")
    stopped = server.http.post(f"/sweeps/{started['id']}/stop").json()
    stopped = server.wait_sweep(started["id"])
    assert stopped["status"] == "STOPPED" and stopped["counts"].get("STOPPED", 0) >= 1, stopped
    rerun = server.http.post(f"/sweeps/{started['id']}/rerun")
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["status"] in ("QUEUED", "RUNNING")
    done = server.wait_sweep(started["id"], timeout=120)
    assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": 6}, done
    runs = server.http.get(f"/sweeps/{started['id']}/runs").json()["results"]
    rerun_runs = [r for r in runs if r["attempt"] >= 2]
    assert rerun_runs, runs
    for run in rerun_runs:
        statuses = [(h["status"], h["reason"]) for h in history(server, run["id"])]
        assert ("STOPPED" in [s for s, _ in statuses]) and ("QUEUED", "rerun requested by anonymous") in statuses
        assert server.http.get(f"/jobs/{run['id']}/files/out.txt").text == f"{run['variables']['i']}\n"


def test_failed_runs_rerun_by_status_or_id(server):
    started = sweep(server, command=FLAKY, variables=[{"name": "i", "values": [1, 2, 3]}])
    first = server.wait_sweep(started["id"])
    assert first["counts"] == {"FAILED": 3}, first
    runs = server.http.get(f"/sweeps/{started['id']}/runs").json()["results"]
    one = server.http.post(f"/sweeps/{started['id']}/rerun", json={"ids": [runs[0]["id"]]})
    assert one.status_code == 202, one.text
    wait_until(lambda: server.http.get(f"/jobs/{runs[0]['id']}").json()["status"] == "COMPLETED", 60, "run 0 again")
    by_job = server.http.post(f"/jobs/{runs[1]['id']}/rerun")  # a run reruns through its sweep
    assert by_job.status_code == 202, by_job.text
    rest = server.http.post(f"/sweeps/{started['id']}/rerun", json={"status": ["FAILED"]})
    assert rest.status_code == 202, rest.text
    assert server.wait_sweep(started["id"])["counts"] == {"COMPLETED": 3}
    bad = server.http.post(f"/sweeps/{started['id']}/rerun", json={"ids": ["notarun00000"]})
    assert bad.status_code == 400 and "ids" in bad.json()["error"]["fields"]
    queued = server.http.post(f"/sweeps/{started['id']}/rerun", json={"status": ["QUEUED"]})
    assert queued.status_code == 400 and "status" in queued.json()["error"]["fields"]


@pytest.mark.parametrize("stop", [False, True])
def test_a_sweep_is_deleted_with_its_runs_and_files(server, stop):
    started = sweep(server, command="sleep 30" if stop else "echo ${i} > out.txt",
                    variables=[{"name": "i", "values": [1, 2]}])
    runs = server.http.get(f"/sweeps/{started['id']}/runs").json()["results"]
    storage = server.running.service.storage
    if stop:
        wait_until(lambda: server.http.get(f"/sweeps/{started['id']}").json()["counts"].get("RUNNING"), 60,
                   "a run RUNNING")
        refused = server.http.delete(f"/sweeps/{started['id']}")
        assert refused.status_code == 409, refused.text
        deleting = server.http.delete(f"/sweeps/{started['id']}", params={"stop": "true"})
        assert deleting.status_code == 202, deleting.text
    else:
        server.wait_sweep(started["id"])
        assert storage.exists(f"jobs/{runs[0]['id']}/outputs/out.txt")
        assert server.http.delete(f"/sweeps/{started['id']}").status_code == 204
    wait_until(lambda: server.http.get(f"/sweeps/{started['id']}").status_code == 404, 60, "the sweep gone")
    for run in runs:
        assert server.http.get(f"/jobs/{run['id']}").status_code == 404
        assert not storage.exists(f"jobs/{run['id']}/outputs/out.txt")


def test_rerun_and_delete_from_python(server):
    from orchestrator import NotFound, Orchestrator

    with Orchestrator.connect(server.url) as orch:
        job = orch.submit(FLAKY)
        assert job.wait(60).status.value == "FAILED"
        job.rerun()
        assert job.wait(60).status.value == "COMPLETED" and job.record.attempt == 2
        sweep = orch.sweep(FLAKY, variables={"i": [1, 2]})
        assert sweep.wait(timeout=60).counts == {"FAILED": 2}
        sweep.rerun(status="FAILED")
        assert sweep.wait(timeout=60).counts == {"COMPLETED": 2}
        sweep.delete()
        with pytest.raises(NotFound):
            orch.get_sweep(sweep.id)


def test_rerun_and_delete_from_the_cli(server):
    import json
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args, "--url", server.url],
                              capture_output=True, text=True, timeout=120)

    job = server.wait(server.submit(command=FLAKY)["id"])
    done = cli("rerun", job["id"], "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["attempt"] == 2
    assert server.wait(job["id"])["status"] == "COMPLETED"
    started = sweep(server, command=FLAKY, variables=[{"name": "i", "values": [1, 2]}])
    server.wait_sweep(started["id"])
    assert cli("rerun", started["id"], "--status", "FAILED").returncode == 0
    assert server.wait_sweep(started["id"])["counts"] == {"COMPLETED": 2}
    deleted = cli("sweeps", "--delete", started["id"])
    assert deleted.returncode == 0 and "deleted" in deleted.stdout, deleted.stderr
    assert server.http.get(f"/sweeps/{started['id']}").status_code == 404


def test_a_sweep_is_deleted_a_chunk_of_runs_at_a_time_with_everything_kept_about_them(server, monkeypatch):
    """Runs go a chunk per transaction, their counts and names taken away as a set: nothing
    of them is left in the ledger or storage, and every kept count equals a recount."""
    from orchestrator.server import run_sets
    from tests.support.ledger import assert_kept_counts_true

    monkeypatch.setattr(run_sets, "CHUNK", 3)
    before = server.http.get("/jobs", params={"page_size": 1}).json()["count"]
    done = sweep(server, command="echo ${i} > out.txt; test ${i} -lt 6",
                 variables=[{"name": "i", "values": list(range(8))}], name="Chunked_Delete")
    server.wait_sweep(done["id"])
    runs = server.http.get(f"/sweeps/{done['id']}/runs", params={"page_size": 20}).json()["results"]
    assert {run["status"] for run in runs} == {"COMPLETED", "FAILED"}
    storage, store = server.running.service.storage, server.running.service.store
    assert all(storage.exists(f"jobs/{run['id']}/outputs/out.txt") for run in runs)
    assert server.http.delete(f"/sweeps/{done['id']}").status_code == 204
    assert server.http.get(f"/sweeps/{done['id']}").status_code == 404
    assert server.http.get("/jobs", params={"page_size": 1}).json()["count"] == before
    assert server.http.get("/jobs", params={"search": "chunked_delete"}).json()["count"] == 0
    ids = [run["id"] for run in runs]
    for run_id in ids:
        assert server.http.get(f"/jobs/{run_id}").status_code == 404
        assert not storage.exists(f"jobs/{run_id}")
    marks = ",".join("?" * len(ids))
    for table, column in (("job_statuses", "job_id"), ("job_files", "job_id")):
        assert store._query(f"SELECT COUNT(*) FROM {table} WHERE {column} IN ({marks})", ids)[0][0] == 0
    assert store._query("SELECT COUNT(*) FROM sweep_tallies WHERE sweep_id = ?", (done["id"],))[0][0] == 0
    assert_kept_counts_true(store.path)


def test_runs_rerun_by_status_are_queued_again_as_a_set_a_chunk_at_a_time(server, monkeypatch):
    """A rerun by status never makes a record per run: runs are queued again a chunk per
    transaction and the kept attempts found a window of indexes at a time, and still each
    run keeps its last attempt's outputs, says why it queued again, and runs once more."""
    from orchestrator.server import run_sets
    from tests.support.ledger import assert_kept_counts_true

    monkeypatch.setattr(run_sets, "CHUNK", 2)
    monkeypatch.setattr(run_sets, "SPAN", 3)
    started = sweep(server, command=FLAKY, variables=[{"name": "i", "values": list(range(7))}])
    assert server.wait_sweep(started["id"])["counts"] == {"FAILED": 7}
    rerun = server.http.post(f"/sweeps/{started['id']}/rerun", json={"status": ["FAILED"]})
    assert rerun.status_code == 202, rerun.text
    assert rerun.json()["counts"].get("FAILED", 0) == 0, rerun.json()
    assert server.wait_sweep(started["id"])["counts"] == {"COMPLETED": 7}
    storage = server.running.service.storage
    for run in server.http.get(f"/sweeps/{started['id']}/runs").json()["results"]:
        assert run["attempt"] > 1 and run["finished_at"] is not None, run
        assert storage.open(f"jobs/{run['id']}/attempts/1/outputs/first.txt").read() == b"first\n"
        assert server.http.get(f"/jobs/{run['id']}/files/out.txt").text == "second\n"
        statuses = [(h["status"], h["reason"], h.get("attempt")) for h in history(server, run["id"])]
        assert ("QUEUED", "rerun requested by anonymous") in [(s, r) for s, r, _ in statuses], statuses
    assert_kept_counts_true(server.running.service.store.path)
