"""Declared outputs end to end over real HTTP on the real cluster: jobs and sweeps whose
commands write logs, CSV and JSON files (no outputs.json of their own), the values read out
of them on the worker, and requests that declare them wrongly."""

from __future__ import annotations

import sys

import pytest

from tests.test_sweeps_api import create_sweep, wait_sweep

WRITES = (
    "echo 'step 1 fc = 1.5' > meas.log; echo 'step 2 fc = -2.5e-1' >> meas.log; "
    "mkdir -p results; printf 'a,lift\\n1,0.5\\n2,0.75\\n' > results/lift.csv; "
    "echo '{\"forces\": {\"drag\": 0.031, \"name\": \"wing\"}, \"runs\": [{\"t\": 3}]}' > out.json; "
    "echo '{\"fc\": 99, \"loss\": 0.25}' > outputs.json"
)
DECLARED = [
    {"name": "fc", "file": "meas.log", "regex": r"fc\s*=\s*([-+0-9.eE]+)"},
    {"name": "lift", "file": "results/lift.csv", "column": "lift", "row": -1},
    {"name": "first_lift", "file": "results/lift.csv", "column": "lift", "row": 0},
    {"name": "drag", "file": "out.json", "json_path": "forces.drag"},
    {"name": "t", "file": "out.json", "json_path": "runs.0.t"},
    {"name": "wing", "file": "out.json", "json_path": "forces.name", "type": "string"},
    {"name": "absent", "file": "none.log", "regex": "x"},
]


def test_a_job_declaring_outputs_has_them_in_its_result(server):
    job = server.submit(command=WRITES, outputs=DECLARED)
    assert [o["name"] for o in job["outputs"]] == [d["name"] for d in DECLARED]
    assert job["outputs"][0]["regex"] == DECLARED[0]["regex"] and job["outputs"][0]["type"] == "number"
    done = server.wait(job["id"])
    assert done["status"] == "COMPLETED", done
    result = server.http.get(f"/jobs/{job['id']}/result").json()
    # a declared output wins over an outputs.json key of the same name; the others stay
    assert result["outputs"] == {"fc": -0.25, "lift": 0.75, "first_lift": 0.5, "drag": 0.031, "t": 3,
                                 "wing": "wing", "loss": 0.25}
    # an optional output that has no value is left out, and why is shown
    assert result["error"] == "output absent: file none.log not found"
    again = server.http.get(f"/jobs/{job['id']}").json()
    assert again["outputs"] == job["outputs"]  # the declarations, as recorded


def test_a_required_output_missing_fails_the_run_naming_the_output_and_file(server):
    job = server.submit(command="echo 'step 1' > run.log", outputs=[
        {"name": "t_end", "file": "run.log", "regex": r"t_end = (\S+)", "required": True},
        {"name": "lift", "file": "lift.csv", "column": "lift", "required": True},
    ])
    done = server.wait(job["id"])
    assert done["status"] == "FAILED"
    assert done["status_reason"] == (r"output t_end: no match for regex 't_end = (\\S+)' in run.log; "
                                     "output lift: file lift.csv not found")
    result = server.http.get(f"/jobs/{job['id']}/result").json()
    assert result["exit_code"] == 0 and result["outputs"] == {}


def test_a_required_output_that_is_not_a_number_fails_the_run(server):
    job = server.submit(command="echo 'fc = abc' > meas.log", outputs=[
        {"name": "fc", "file": "meas.log", "regex": r"fc = (\S+)", "required": True}])
    done = server.wait(job["id"])
    assert done["status"] == "FAILED" and done["status_reason"] == "output fc: 'abc' in meas.log is not a number"


SIM = """\
import json, os, sys
x = float(sys.argv[1])
with open("sim.log", "w") as log:
    print("iteration 1 fc = 0", file=log)
    print(f"iteration 2 fc = {2 * x}", file=log)
    print(f"label: case{sys.argv[1]}", file=log)
    if x >= 0:
        print("t_end = 10", file=log)
os.makedirs("post", exist_ok=True)
with open("post/coeffs.csv", "w") as table:
    table.write("step,lift\\n1,0\\n2,%s\\n" % (x + 0.5))
json.dump({"forces": {"drag": x / 4}, "steps": [1, 2, 3]}, open("forces.json", "w"))
"""


def test_a_sweep_has_a_column_per_declared_output_with_each_runs_values(server):
    sweep = create_sweep(
        server, files={"sim.py": SIM.encode()}, command=f"{sys.executable} sim.py ${{x}}",
        variables=[{"name": "x", "values": [1, 2.5, -3]}],
        outputs=[
            {"name": "fc", "file": "sim.log", "regex": r"fc = (\S+)"},
            {"name": "label", "file": "sim.log", "regex": r"^label: (\S+)$", "type": "string"},
            {"name": "lift", "file": "post/coeffs.csv", "column": "lift"},
            {"name": "drag", "file": "forces.json", "json_path": "forces.drag"},
            {"name": "steps", "file": "forces.json", "json_path": "steps.-1"},
            {"name": "t_end", "file": "sim.log", "regex": r"t_end = (\d+)", "required": True},
        ],
    )
    assert [o["name"] for o in sweep["spec"]["outputs"]] == ["fc", "label", "lift", "drag", "steps", "t_end"]
    done = wait_sweep(server, sweep["id"])
    assert done["status"] == "FAILED" and done["counts"] == {"COMPLETED": 2, "FAILED": 1}

    table = server.http.get(f"/sweeps/{sweep['id']}/results").json()
    assert table["columns"] == ["index", "job_id", "status", "exit_code", "duration_s", "x",
                                "drag", "fc", "label", "lift", "steps", "t_end", "status_reason", "outputs_error"]
    by_x = {row["x"]: row for row in table["rows"]}
    for x in (1, 2.5, -3):
        row = by_x[x]
        assert row["fc"] == pytest.approx(2 * x) and row["lift"] == pytest.approx(x + 0.5)
        assert row["drag"] == pytest.approx(x / 4) and row["steps"] == 3
        assert row["label"] == f"case{x:g}"
    assert by_x[1]["t_end"] == 10 and by_x[2.5]["t_end"] == 10
    assert by_x[-3]["status"] == "FAILED" and by_x[-3]["t_end"] is None and by_x[-3]["exit_code"] == 0
    failed = server.http.get(f"/jobs/{by_x[-3]['job_id']}").json()
    assert failed["status_reason"] == r"output t_end: no match for regex 't_end = (\\d+)' in sim.log"
    assert [o["name"] for o in failed["outputs"]] == ["fc", "label", "lift", "drag", "steps", "t_end"]


@pytest.mark.parametrize(("outputs", "field", "message"), [
    ([{"name": "a", "file": "x.csv", "regex": "a", "column": "b"}], "outputs.0.column", "only one of"),
    ([{"name": "a", "file": "x.json", "column": "b", "json_path": "c"}], "outputs.0.json_path", "only one of"),
    ([{"name": "a", "file": "x.log"}], "outputs.0.json_path", "give one of regex, column"),
    ([{"name": "a", "file": "x.log", "regex": "(unclosed"}], "outputs.0.regex", "not a valid regular expression"),
    ([{"name": "a", "file": "x.log", "regex": "(a)=(b)"}], "outputs.0.regex", "capture groups"),
    ([{"name": "a", "file": "../etc/passwd", "regex": "x"}], "outputs.0.file", "'..'"),
    ([{"name": "a", "file": "/etc/passwd", "regex": "x"}], "outputs.0.file", "relative"),
    ([{"name": "a", "file": "x.log", "regex": "x", "row": 1}], "outputs.0.row", "only a CSV column"),
    ([{"name": "a-b", "file": "x.log", "regex": "x"}], "outputs.0.name", "pattern"),
    ([{"name": "a", "file": "x.log", "regex": "x", "type": "int"}], "outputs.0.type", ""),
    ([{"name": "a", "file": "x.log", "regex": "x", "typo": 1}], "outputs.0.typo", ""),
    ([{"name": "a", "file": "x.log", "regex": "x"}, {"name": "a", "file": "y.log", "regex": "y"}],
     "outputs", "'a' is declared twice"),
    ([{"name": f"o{i}", "file": "x.log", "regex": "x"} for i in range(101)], "outputs", "100"),
])
@pytest.mark.parametrize("route", ["/jobs", "/sweeps"])
def test_bad_declarations_are_refused_naming_the_field(server, route, outputs, field, message):
    body = {"command": "true", "outputs": outputs}
    if route == "/sweeps":
        body["cases"] = [{"x": 1}]
    response = server.http.post(route, json=body)
    assert response.status_code == 400, response.text
    fields = response.json()["error"]["fields"]
    assert field in fields and message in fields[field], fields
    assert server.http.get(route).json()["count"] == 0


def test_declared_outputs_from_python(server):
    from orchestrator import Orchestrator

    with Orchestrator.connect(server.url) as orch:
        job = orch.submit("echo 'fc = 1.5e3' > meas.log", outputs=[
            {"name": "fc", "file": "meas.log", "regex": r"fc\s*=\s*([-+0-9.eE]+)", "required": True}])
        assert job.result(timeout=60).outputs["fc"] == 1500.0
        sweep = orch.sweep("echo '{\"x\": ${i}}' > out.json", variables={"i": [1, 2]},
                           outputs=[{"name": "x", "file": "out.json", "json_path": "x"}])
        sweep.wait(timeout=60)
        assert sorted(sweep.results()["x"]) == [1, 2]
