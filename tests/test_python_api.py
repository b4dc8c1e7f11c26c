"""The Python API: the same calls embedded (no server) and over REST."""

from __future__ import annotations

import pytest

from orchestrator import JobFailed, JobStatus, NotFound, Orchestrator, ValidationFailed


def add(x, y=1):
    return {"sum": x + y}


def make_set(n):
    return set(range(n))


def explode():
    raise ValueError("boom")


@pytest.fixture
def embedded(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        yield orch


def test_embedded_runs_callables_and_returns_their_values(embedded):
    assert embedded.submit(add, 2, y=5).result(timeout=60) == {"sum": 7}
    assert embedded.submit(make_set, 3).result(timeout=60) == {0, 1, 2}
    with pytest.raises(JobFailed, match="ValueError: boom"):
        embedded.submit(explode).result(timeout=60)


def test_embedded_command_job_with_files(embedded, tmp_path):
    source = tmp_path / "input.txt"
    source.write_text("payload")
    job = embedded.submit("cat input.txt > copy.txt; echo done", files=[source], name="copier")
    result = job.result(timeout=60)
    assert result.exit_code == 0
    assert job.logs() == "done\n"
    assert [f.path for f in job.files()] == ["copy.txt"]
    assert job.download("copy.txt", tmp_path / "out").read_text() == "payload"
    assert [j.id for j in embedded.jobs(status="COMPLETED")] == [job.id]


def test_embedded_closing_leaves_an_external_cluster_running(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "e", **dask_cluster.settings) as orch:
        orch.submit("true").result(timeout=60)
    with dask_cluster.client(timeout=10) as client:
        assert client.submit(lambda: 42).result(timeout=30) == 42


def test_remote_api_matches_embedded(server, tmp_path):
    with Orchestrator.connect(server.url) as orch:
        source = tmp_path / "sim.sh"
        source.write_text("echo '{\"score\": 9}' > outputs.json; echo ran")
        record = orch.upload_binary("sim.sh", source)
        assert record.version == 1
        job = orch.submit("sh sim.sh", binaries=["sim.sh"], resources={"cores": 1})
        result = job.result(timeout=60)
        assert result.outputs == {"score": 9}
        assert job.logs() == "ran\n"
        assert "".join(job.follow()) == "ran\n"
        assert [s.status for s in job.statuses()][-1] == JobStatus.COMPLETED
        failing = orch.submit("exit 4")
        with pytest.raises(JobFailed, match="exit code 4"):
            failing.result(timeout=60)
        with pytest.raises(ValidationFailed) as bad:
            orch.submit("true", resources={"gpus": 8})
        assert "resources.gpus" in bad.value.fields
        with pytest.raises(ValidationFailed):
            orch.submit("true", resources={"cores": -1})
        with pytest.raises(NotFound):
            orch.job("missing")
        assert orch.submit(add, 1, 2).result(timeout=60) == {"sum": 3}  # pickled here, run in a warm context there


def test_remote_stop_and_timeout_wait(server):
    with Orchestrator.connect(server.url) as orch:
        job = orch.submit("sleep 600")
        with pytest.raises(TimeoutError):
            job.result(timeout=0.5)
        job.stop()
        assert job.wait(timeout=10).status == JobStatus.STOPPED


def test_callables_of_any_name_make_valid_job_names():
    from orchestrator.client.facade import _callable_name

    def _private() -> None: ...

    assert _callable_name(_private, None) == "private"
    assert _callable_name(lambda: 0, None) == "lambda"
    assert _callable_name(_private, "given") == "given"
