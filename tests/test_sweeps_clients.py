"""Sweeps from Python (embedded and remote) and from the CLI, as users drive them."""

from __future__ import annotations

import json
import sys

import pandas
import pytest

from orchestrator import (
    DryRun,
    JobStatus,
    Orchestrator,
    Sweep,
    ValidationFailed,
    frange,
    linspace,
    normal,
    values,
)
from orchestrator.cli import main


def drag(u, rho, area=2.0):
    return {"drag": 0.5 * rho * u * u * area, "regime": "fast" if u > 30 else "slow"}


def fail_on_three(i):
    if i == 3:
        raise RuntimeError("three")
    return {"square": i * i}


def exit_on_two(i):
    if i == 2:
        sys.exit(3)
    return {"i": i}


@pytest.fixture
def embedded(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        yield orch


def test_callable_sweep_gets_variables_as_keywords_and_results_as_a_dataframe(embedded, capsys):
    sweep = embedded.sweep(drag, variables={"u": linspace(10, 50, 5), "rho": values(1.1, 1.2)})
    assert isinstance(sweep, Sweep) and sweep.record.runs == 10
    record = sweep.wait(timeout=60, progress=True)
    assert record.status == JobStatus.COMPLETED
    assert "10/10" in capsys.readouterr().err  # the progress bar reached the end

    table = sweep.results()
    assert isinstance(table, pandas.DataFrame) and len(table) == 10
    assert list(table.columns[:6]) == ["job_id", "status", "exit_code", "duration_s", "u", "rho"]
    for _, row in table.iterrows():
        assert row["drag"] == pytest.approx(0.5 * row["rho"] * row["u"] ** 2 * 2.0)
        assert row["regime"] == ("fast" if row["u"] > 30 else "slow")
    assert sweep.progress().progress == 1.0


def test_as_completed_yields_every_run_once_and_a_failure_is_one_run(embedded):
    sweep = embedded.sweep(fail_on_three, variables={"i": frange(0, 5, 1)})
    seen = {job.record.index: job.record.status for job in sweep.as_completed(timeout=60)}
    assert seen == {0: JobStatus.COMPLETED, 1: JobStatus.COMPLETED, 2: JobStatus.COMPLETED,
                    3: JobStatus.FAILED, 4: JobStatus.COMPLETED, 5: JobStatus.COMPLETED}
    assert sweep.refresh().status == JobStatus.FAILED
    failed = sweep.runs(status="FAILED")
    assert len(failed) == 1 and "three" in failed[0].record.status_reason


def test_a_run_calling_sys_exit_fails_alone(embedded):
    sweep = embedded.sweep(exit_on_two, variables={"i": list(range(40))}, max_failures=5)
    record = sweep.wait(timeout=60)
    assert record.counts == {"COMPLETED": 39, "FAILED": 1}


def test_sampled_design_is_reproducible_by_seed_and_dry_run_runs_nothing(embedded):
    kwargs = dict(variables={"u": linspace(10, 50, 5), "rho": normal(1.2, 0.05)},
                  design="monte_carlo", samples=20, seed=7)
    first = embedded.sweep("echo ${u} ${rho}", dry_run=True, **kwargs)
    again = embedded.sweep("echo ${u} ${rho}", dry_run=True, **kwargs)
    assert isinstance(first, DryRun) and first.count == 20 and first.seed == 7
    assert first.runs == again.runs
    assert embedded.jobs() == [] and embedded.sweeps() == []


def test_stop_from_python(embedded):
    sweep = embedded.sweep("sleep 60 # ${i}", variables={"i": list(range(4))}, max_parallel=1)
    sweep.stop()
    record = sweep.wait(timeout=30)
    assert record.status == JobStatus.STOPPED and record.counts == {"STOPPED": 4}


def test_bad_spec_raises_before_anything_runs(embedded):
    with pytest.raises(ValidationFailed) as info:
        embedded.sweep("echo ${u}", variables={"u": normal(1, -1)}, design="monte_carlo", samples=3)
    assert "variables.0.normal.std" in info.value.fields
    with pytest.raises(ValidationFailed) as info:
        embedded.sweep("echo ${nope}", variables={"u": [1, 2]})
    assert "command" in info.value.fields


def test_remote_sweep_with_files_and_cases_from_a_dataframe(server, tmp_path):
    script = tmp_path / "sim.py"
    script.write_text("import json, sys\njson.dump({'twice': 2 * float(sys.argv[1])}, open('outputs.json', 'w'))\n")
    cases = pandas.DataFrame({"x": [1.5, 2.5, 4.0]})
    with Orchestrator.connect(server.url) as remote:
        sweep = remote.sweep(f"{sys.executable} sim.py ${{x}}", cases=cases, files=[script])
        assert sweep.wait(timeout=60).status == JobStatus.COMPLETED
        table = sweep.results()
        assert table["twice"].tolist() == [3.0, 5.0, 8.0]
        assert [s.id for s in remote.sweeps()] == [sweep.id]
        assert len(list(sweep.as_completed(timeout=30))) == 3
        with pytest.raises(TypeError, match="embedded"):
            remote.sweep(drag, variables={"u": [1]})


def test_cli_sweep_spec_watch_and_results(server, capsys, tmp_path):
    (tmp_path / "sim.py").write_text(
        "import json, sys\njson.dump({'y': float(sys.argv[1]) ** 2}, open('outputs.json', 'w'))\n")
    (tmp_path / "cases.csv").write_text("x\n1\n2\n3\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "name: squares\n"
        f"command: {sys.executable} sim.py ${{x}}\n"
        "files: [sim.py]\n"
        "cases: cases.csv\n"
    )
    url = ["--url", server.url]
    assert main(["sweep", *url, str(spec), "--dry-run"]) == 0
    out = capsys.readouterr()
    assert "sim.py 3" in out.out and "3 runs (dry run" in out.err

    assert main(["sweep", *url, str(spec), "--watch", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["status"] == "COMPLETED" and record["counts"] == {"COMPLETED": 3}

    target = tmp_path / "results.csv"
    assert main(["results", *url, record["id"], "--csv", str(target)]) == 0
    capsys.readouterr()
    table = pandas.read_csv(target)
    assert table["y"].tolist() == [1.0, 4.0, 9.0]
    assert main(["sweeps", *url]) == 0
    assert record["id"] in capsys.readouterr().out

    spec.write_text("command: echo ${x}\nvariables:\n  - name: x\n    normal: {mean: 0, std: -1}\n")
    assert main(["sweep", *url, str(spec)]) == 2
    assert "variables.0.normal.std" in capsys.readouterr().err
