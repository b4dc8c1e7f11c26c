"""Python applications over REST: entry points of uploaded wheels run in warm contexts on the
real cluster's worker processes, with sync results, stop, crashes, fan-out through
orchestrator.get_client(), and callables pickled by a remote client."""

from __future__ import annotations

import json

import psutil
import pytest

from orchestrator import Orchestrator
from orchestrator.cli import main
from orchestrator.errors import JobFailed
from tests.conftest import Server
from tests.support import wait_until
from tests.support.wheels import wordcount_wheel


def upload(server: Server, name: str, data: bytes) -> dict:
    response = server.http.post(f"/binaries/{name}", content=data,
                                headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 201, response.text
    return response.json()


def call(server: Server, entrypoint: str, kwargs: dict | None = None, binaries: list[str] | None = None,
         **extra) -> dict:
    body = {"entrypoint": entrypoint, "binaries": binaries or ["wordcount"], **extra}
    if kwargs is not None:
        body["kwargs"] = kwargs
    response = server.http.post("/jobs", params={"sync": "true", "timeout": 120}, json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.fixture
def app(server: Server) -> Server:
    upload(server, "wordcount", wordcount_wheel(1))
    return server


def test_an_entry_point_of_an_uploaded_wheel_answers_in_the_same_request(app: Server):
    job = call(app, "wordcount.jobs:count_words", {"text": "a b c a"})

    assert job["status"] == "COMPLETED", job
    assert job["kind"] == "entrypoint" and job["entrypoint"] == "wordcount.jobs:count_words"
    assert job["name"] == "count_words" and job["binaries"] == ["wordcount@1"]
    assert job["result"]["value"] == {"words": 4, "distinct": 3}
    assert job["result"]["outputs"] == {"words": 4, "distinct": 3}  # a dict of scalars: result columns
    assert app.http.get(f"/jobs/{job['id']}/logs").text == "counting 4 words\n"
    files = [f["path"] for f in app.http.get(f"/jobs/{job['id']}/files").json()["results"]]
    assert files == ["counts.json"]
    assert app.http.get(f"/jobs/{job['id']}/files/counts.json").json() == {"a": 2, "b": 1, "c": 1}


def test_the_second_job_of_an_application_finds_it_imported(app: Server):
    first = call(app, "wordcount.jobs:context_info")["result"]["value"]
    second = call(app, "wordcount.jobs:context_info")["result"]["value"]

    assert second["imported_at"] == first["imported_at"] and second["pid"] == first["pid"]

    def listed() -> list[dict] | None:
        workers = app.http.get("/cluster").json()["workers"]
        contexts = [c for w in workers for c in w["contexts"] if c["pid"] == first["pid"]]
        return contexts if contexts and contexts[0]["jobs_run"] >= 2 else None

    (context,) = wait_until(listed, 30, "the warm context in GET /cluster")
    assert context["artifacts"] == ["wordcount@1"] and context["owner"] == "anonymous"
    assert context["artifact"] == "wordcount" and context["version"] == 1
    assert context["busy"] is False and context["idle_since"] is not None


def test_a_new_binary_version_is_imported_fresh_and_the_old_one_stays_pinned(app: Server):
    old = call(app, "wordcount.jobs:context_info")["result"]["value"]
    upload(app, "wordcount", wordcount_wheel(2))

    new = call(app, "wordcount.jobs:context_info")["result"]["value"]
    pinned = call(app, "wordcount.jobs:context_info", binaries=["wordcount@1"])["result"]["value"]

    assert old["version"] == 1 and new["version"] == 2 and pinned["version"] == 1
    assert new["pid"] != old["pid"] and pinned["pid"] == old["pid"]


def test_stop_ends_an_endless_function_and_the_next_job_gets_a_fresh_context(app: Server):
    before = call(app, "wordcount.jobs:context_info")["result"]["value"]
    job = app.http.post("/jobs", json={"entrypoint": "wordcount.jobs:spin", "binaries": ["wordcount"]}).json()
    app.wait_for_status(job["id"], "RUNNING")
    wait_until(lambda: "spinning" in app.http.get(f"/jobs/{job['id']}/logs").text, 30, "spin's log")

    assert app.http.post(f"/jobs/{job['id']}/stop").status_code == 202
    stopped = app.wait(job["id"], timeout=30)  # how fast: benchmarks/entrypoint_latency.py's stop line

    assert stopped["status"] == "STOPPED", stopped
    assert stopped["status_reason"].startswith("stop requested by")
    after = call(app, "wordcount.jobs:context_info")["result"]["value"]
    assert after["pid"] != before["pid"] or after["imported_at"] != before["imported_at"]


def test_a_function_that_ends_its_process_fails_only_its_job(app: Server):
    crashed = call(app, "wordcount.jobs:crash", {"code": 3})
    after = call(app, "wordcount.jobs:count_words", {"text": "still here"})

    assert crashed["status"] == "FAILED"
    assert crashed["status_reason"] == "the entry point's process exited with code 3"
    assert after["status"] == "COMPLETED" and after["result"]["value"]["words"] == 2


def test_a_crash_or_running_out_of_memory_fails_only_its_job_and_replaces_the_context(app: Server):
    before = call(app, "wordcount.jobs:context_info")["result"]["value"]["pid"]
    crashed = call(app, "wordcount.jobs:segfault")
    after_crash = call(app, "wordcount.jobs:context_info")["result"]["value"]["pid"]
    exhausted = call(app, "wordcount.jobs:exhaust")
    after_memory = call(app, "wordcount.jobs:context_info")["result"]["value"]["pid"]

    assert crashed["status"] == "FAILED"
    assert crashed["status_reason"] == "the entry point's process was killed by signal SIGSEGV"
    assert exhausted["status"] == "FAILED" and exhausted["status_reason"].startswith("MemoryError")
    assert len({before, after_crash, after_memory}) == 3  # each a fresh context


def test_the_timeout_ends_the_function(app: Server):
    job = call(app, "wordcount.jobs:spin", timeout_s=1)

    assert job["status"] == "FAILED" and job["status_reason"] == "timeout after 1 s"


def test_what_the_worker_cannot_call_fails_with_the_reason(app: Server):
    missing_module = call(app, "wordcount.nothere:f")
    missing_function = call(app, "wordcount.jobs:nothere")
    bad_arguments = call(app, "wordcount.jobs:count_words", {"txt": "a"})
    not_json = call(app, "wordcount.jobs:not_json")

    assert "cannot import 'wordcount.nothere'" in missing_module["status_reason"]
    assert "module 'wordcount.jobs' has no 'nothere'" in missing_function["status_reason"]
    assert "unexpected keyword argument 'txt'" in bad_arguments["status_reason"]
    assert "Traceback" in app.http.get(f"/jobs/{bad_arguments['id']}/logs", params={"stream": "stderr"}).text
    assert not_json["status_reason"].startswith("the return value is not JSON")
    assert all(j["status"] == "FAILED" for j in (missing_module, missing_function, bad_arguments, not_json))


@pytest.mark.parametrize(("body", "field"), [
    ({"entrypoint": "wordcount.jobs"}, "entrypoint"),
    ({"entrypoint": "wordcount jobs:f"}, "entrypoint"),
    ({"entrypoint": "wordcount.jobs:count_words", "kwargs": ["a"]}, "kwargs"),
    ({"entrypoint": "wordcount.jobs:count_words", "command": "true"}, "entrypoint"),
    ({"command": "true", "kwargs": {"a": 1}}, "kwargs"),
    ({"entrypoint": "wordcount.jobs:count_words", "binaries": ["https://example.com/w.whl"]}, "binaries.0"),
    ({"entrypoint": "wordcount.jobs:count_words", "binaries": ["nosuchbinary"]}, "binaries.0"),
    ({"pickled": "not base64!"}, "pickled"),
])
def test_bad_entry_point_requests_get_a_400_naming_the_field(app: Server, body: dict, field: str):
    response = app.http.post("/jobs", json=body)

    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert field in error["fields"], error


def test_a_single_module_binary_is_importable_by_its_name(app: Server):
    upload(app, "greet.py", b"def hello(name):\n    return f'hello {name}'\n")

    job = call(app, "greet:hello", {"name": "ada"}, binaries=["greet.py"])

    assert job["result"]["value"] == "hello ada"


def test_a_job_fans_out_across_the_cluster_with_get_client(app: Server):
    job = call(app, "wordcount.jobs:fan_out", {"n": 100})

    assert job["status"] == "COMPLETED", job
    assert job["result"]["value"] == sum(x * x for x in range(100))


def test_stopping_a_job_cancels_the_tasks_it_started(app: Server, dask_cluster):
    job = app.http.post("/jobs", json={"entrypoint": "wordcount.jobs:fan_out_slowly", "kwargs": {"n": 100},
                                       "binaries": ["wordcount"]}).json()
    path = f"/jobs/{job['id']}"

    def fanned_out_or_ended() -> bool:
        return "fanned out" in app.http.get(f"{path}/logs").text or app.http.get(path).json()["status"] in (
            "COMPLETED", "FAILED", "STOPPED")

    try:  # within pytest's own timeout, so that a failure says where the job was
        wait_until(fanned_out_or_ended, 90, "fan-out")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the job: {app.http.get(path).json()}") from None
    assert "fanned out" in app.http.get(f"{path}/logs").text, (
        app.http.get(path).json(), app.http.get(f"{path}/logs", params={"stream": "stderr"}).text)
    prefix = f"fan_out_slowly-1-{job['id']}/"

    with dask_cluster.client() as client:
        def tasks_of_job(dask_scheduler, prefix=prefix) -> int:
            return sum(1 for key in dask_scheduler.tasks if str(key).startswith(prefix))

        wait_until(lambda: client.run_on_scheduler(tasks_of_job) >= 50, 30, "the job's tasks on the scheduler")
        app.http.post(f"/jobs/{job['id']}/stop")
        assert app.wait(job["id"], timeout=30)["status"] == "STOPPED"
        wait_until(lambda: client.run_on_scheduler(tasks_of_job) == 0, 30, "the job's tasks forgotten")


def test_a_remote_client_runs_callables_and_entry_points(app: Server):
    def add(x, y=0):
        return x + y

    def pair(x):
        return {x, x + 1}  # not JSON: comes back pickled

    with Orchestrator.connect(app.url) as orch:
        assert orch.submit(add, 2, y=3).result(timeout=60) == 5
        assert orch.submit(pair, 7).result(timeout=60) == {7, 8}
        job = orch.submit("wordcount.jobs:count_words", binaries=["wordcount"], kwargs={"text": "a b"})
        assert job.result(timeout=60) == {"words": 2, "distinct": 2}
        with pytest.raises(JobFailed):
            orch.submit("wordcount.jobs:crash", binaries=["wordcount"], kwargs={"code": 4}).result(timeout=60)
        sweep = orch.sweep("wordcount.jobs:count_words", binaries=["wordcount"], cases=[{"text": "a b"}, {"text": "c"}])
        assert sweep.wait(timeout=60).status.value == "COMPLETED"
        assert list(sweep.results()["words"]) == [2, 1]
    record = app.http.get("/jobs", params={"search": "add"}).json()["results"][0]
    assert record["kind"] == "callable" and record["in_context"] is True


def test_a_server_can_refuse_pickled_code(make_server):
    server = make_server(pickled_code=False)

    response = server.http.post("/jobs", json={"pickled": "gASVBQAAAAAAAACMAWGULg=="})

    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "pickled_code_disabled"
    assert server.http.get("/jobs").json()["count"] == 0


def test_a_sweep_of_an_entry_point_gets_result_columns(app: Server):
    response = app.http.post("/sweeps", json={
        "entrypoint": "wordcount.jobs:count_words", "binaries": ["wordcount"],
        "cases": [{"text": "a"}, {"text": "a b"}, {"text": "a b b"}]})
    assert response.status_code == 201, response.text

    sweep = app.wait_sweep(response.json()["id"])
    rows = app.http.get(f"/sweeps/{sweep['id']}/results").json()["rows"]

    assert sweep["status"] == "COMPLETED", sweep
    assert [(row["text"], row["words"], row["distinct"]) for row in rows] == [("a", 1, 1), ("a b", 2, 2), ("a b b", 3, 2)]


ENTRY_TYPE = {"seedVersion": "1.0.0", "job": {
    "name": "word-count", "jobVersion": "1.0.0", "packageVersion": "1.0.0", "title": "Word count",
    "binaries": ["wordcount"],
    "interface": {
        "entrypoint": "wordcount.jobs:count_file",
        "inputs": {"files": [{"name": "document"}],
                   "json": [{"name": "min-length", "type": "integer", "required": False}]},
        "outputs": {"json": [{"name": "words", "type": "integer"}]},
    },
}}


def test_a_job_type_can_declare_an_entry_point(app: Server):
    created = app.http.post("/job-types", json={"manifest": ENTRY_TYPE})
    assert created.status_code == 201, created.text
    both = {**ENTRY_TYPE["job"], "jobVersion": "2.0.0",
            "interface": {**ENTRY_TYPE["job"]["interface"], "command": "true"}}
    refused = app.http.post("/job-types", json={"manifest": {**ENTRY_TYPE, "job": both}})
    assert refused.status_code == 400 and "COMMAND_AND_ENTRYPOINT" in refused.text

    job = app.http.post("/jobs", params={"sync": "true", "timeout": 60}, data={
        "job_type": "word-count@1.0.0", "inputs": '{"files": {"document": ["doc.txt"]}, "json": {"min-length": 2}}',
    }, files=[("file[]", ("doc.txt", b"a bb ccc dd e", "text/plain"))]).json()

    assert job["status"] == "COMPLETED", job
    assert job["result"]["outputs"] == {"words": 3} and job["result"]["value"] == {"words": 3}

    sweep = app.http.post("/sweeps", data={"spec": json.dumps({
        "job_type": "word-count@1.0.0",
        "inputs": {"files": {"document": ["doc.txt"]}, "json": {"min-length": "${m}"}},
        "cases": [{"m": 1}, {"m": 3}]})},
        files=[("file[]", ("doc.txt", b"a bb ccc dd e", "text/plain"))])
    assert sweep.status_code == 201, sweep.text
    done = app.wait_sweep(sweep.json()["id"])
    rows = app.http.get(f"/sweeps/{done['id']}/results").json()["rows"]
    assert done["status"] == "COMPLETED" and [row["words"] for row in rows] == [5, 1]


def test_the_cli_submits_an_entry_point(app: Server, capsys):
    code = main(["submit", "--url", app.url, "--entrypoint", "wordcount.jobs:count_words", "-b", "wordcount",
                 "--kwargs", '{"text": "a b"}', "--wait", "--json"])
    job = json.loads(capsys.readouterr().out)

    assert code == 0 and job["result"]["value"] == {"words": 2, "distinct": 2}
    with pytest.raises(SystemExit, match="--kwargs: must be a JSON object"):
        main(["submit", "--url", app.url, "--entrypoint", "wordcount.jobs:count_words", "--kwargs", "[1]"])


def test_the_embedded_api_runs_entry_points_too(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        orch.upload_binary("wordcount", wordcount_wheel(1))
        job = orch.submit("wordcount.jobs:count_words", binaries=["wordcount"], kwargs={"text": "x y z"})

        assert job.result(timeout=60) == {"words": 3, "distinct": 3}


def test_idle_contexts_are_ended(make_server):
    server = make_server(context_idle_s=1)
    upload(server, "wordcount", wordcount_wheel(1))
    pid = call(server, "wordcount.jobs:context_info")["result"]["value"]["pid"]

    def listed() -> bool:
        workers = server.http.get("/cluster").json()["workers"]
        return any(c["pid"] == pid for w in workers for c in w["contexts"])

    wait_until(lambda: not listed() and not psutil.pid_exists(pid), 30, "the idle context ended")
