"""Sensitivity analysis and the Parquet export end to end: the Ishigami function as a callable
sweep (embedded Python API) and as a shell sweep over REST on the real cluster, its Sobol
indices checked against the analytic values; the errors a user can meet; who may see what."""

from __future__ import annotations

import io
import json
import math
import os

import pandas
import pyarrow.parquet as pq
import pytest

from orchestrator import JobStatus, Orchestrator, uniform
from tests.support.tenants import token_holders

S1 = {"x1": 0.314, "x2": 0.442, "x3": 0.0}
ST = {"x1": 0.558, "x2": 0.442, "x3": 0.244}
MARGIN = 0.02  # besides each index's own confidence interval: the analytic values are rounded
PI = uniform(-math.pi, math.pi)
# awk starts in a millisecond where Python takes tens: 2,048 runs stay well under a minute
ISHIGAMI_SCRIPT = """\
BEGIN {
    f = sin(x1) + 7 * sin(x2) ^ 2 + 0.1 * x3 ^ 4 * sin(x1)
    printf "{\\"f\\": %.17g, \\"label\\": \\"ishigami\\"}\\n", f > "outputs.json"
}
"""


def ishigami(x1, x2, x3):
    return {"f": math.sin(x1) + 7 * math.sin(x2) ** 2 + 0.1 * x3**4 * math.sin(x1)}


def fails_until(marker: str):
    """Ishigami, except that runs with x1 > 3 fail until `marker` exists."""
    def model(x1, x2, x3):
        if x1 > 3 and not os.path.exists(marker):
            raise RuntimeError("not yet")
        return ishigami(x1, x2, x3)
    return model


def assert_analytic(table: dict[str, dict]) -> None:
    """Each first-order and total index within its confidence interval of the analytic value."""
    for name in ("x1", "x2", "x3"):
        entry = table[name]
        assert abs(entry["s1"] - S1[name]) <= entry["s1_conf"] + MARGIN, (name, entry)
        assert abs(entry["st"] - ST[name]) <= entry["st_conf"] + MARGIN, (name, entry)


@pytest.fixture
def embedded(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        yield orch


@pytest.mark.timeout(300)
def test_callable_ishigami_saltelli_sweep_gives_the_analytic_sobol_indices(embedded):
    sweep = embedded.sweep(ishigami, variables={"x1": PI, "x2": PI, "x3": PI},
                           design="saltelli", samples=1024, seed=11)
    assert sweep.record.runs == 1024 * 8 and sweep.record.design == "saltelli"
    assert sweep.wait(timeout=240).status == JobStatus.COMPLETED
    frame = sweep.analysis("f")
    assert isinstance(frame, pandas.DataFrame) and list(frame.index) == ["x1", "x2", "x3"]
    assert {"pearson", "spearman", "src", "s1", "s1_conf", "st", "st_conf"} <= set(frame.columns)
    assert_analytic(frame.to_dict(orient="index"))
    assert frame.attrs["runs_used"] == 8192 and frame.attrs["sobol_error"] is None
    assert frame.attrs["left_out"] == {} and 0 < frame.attrs["r2"] < 1
    assert frame.loc["x1", "pearson"] > 0.3 and abs(frame.loc["x2", "pearson"]) < 0.1


@pytest.mark.timeout(300)
def test_failed_runs_leave_correlations_and_explain_the_indices_until_rerun(embedded, tmp_path):
    marker = tmp_path / "ready"
    sweep = embedded.sweep(fails_until(str(marker)), variables={"x1": PI, "x2": PI, "x3": PI},
                           design="saltelli", samples=64, seed=5)
    record = sweep.wait(timeout=120)
    failed = record.counts["FAILED"]
    assert failed > 0 and record.counts["COMPLETED"] == 512 - failed
    frame = sweep.analysis("f")
    assert frame.attrs["runs_used"] == 512 - failed and frame.attrs["left_out"] == {"FAILED": failed}
    assert f"{failed} lack a numeric output (FAILED: {failed})" in frame.attrs["sobol_error"]
    assert frame["s1"].isna().all() and frame["pearson"].notna().all()

    marker.touch()
    sweep.rerun(status="FAILED")
    assert sweep.wait(timeout=120).status == JobStatus.COMPLETED
    frame = sweep.analysis("f")
    assert frame.attrs["sobol_error"] is None and frame["s1"].notna().all()


@pytest.mark.timeout(300)
def test_shell_ishigami_sweep_over_rest_with_analysis_and_parquet(server):
    spec = {"name": "ishigami", "command": 'awk -v x1="${x1}" -v x2="${x2}" -v x3="${x3}" -f ishigami.awk',
            "variables": [{"name": n, "uniform": {"low": -math.pi, "high": math.pi}} for n in ("x1", "x2", "x3")],
            "design": {"type": "saltelli", "samples": 256, "seed": 3}}
    created = server.http.post("/sweeps", data={"spec": json.dumps(spec)},
                               files=[("file[]", ("ishigami.awk", ISHIGAMI_SCRIPT.encode()))])
    assert created.status_code == 201, created.text
    sweep = created.json()
    assert sweep["runs"] == 2048 and sweep["spec"]["design"] == {"type": "saltelli", "samples": 256, "seed": 3}
    assert server.wait_sweep(sweep["id"], timeout=240)["counts"] == {"COMPLETED": 2048}

    response = server.http.get(f"/sweeps/{sweep['id']}/analysis", params={"output": "f"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["output"], answer["design"], answer["runs"], answer["runs_used"]) == ("f", "saltelli", 2048, 2048)
    assert answer["sobol_error"] is None and answer["conf_level"] == 0.95
    assert_analytic({entry["variable"]: entry for entry in answer["variables"]})

    with Orchestrator.connect(server.url) as remote:  # the same answer as a DataFrame
        frame = remote.get_sweep(sweep["id"]).analysis("f")
    assert frame.loc["x2", "s1"] == pytest.approx(answer["variables"][1]["s1"])
    assert frame.attrs["runs_used"] == 2048

    # the results as Parquet: the JSON table's values, with typed columns
    table = server.http.get(f"/sweeps/{sweep['id']}/results").json()
    response = server.http.get(f"/sweeps/{sweep['id']}/results", params={"format": "parquet"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    assert f'{sweep["id"]}-results.parquet' in response.headers["content-disposition"]
    parquet = pq.read_table(io.BytesIO(response.content))
    types = {field.name: str(field.type) for field in parquet.schema}
    assert parquet.column_names == table["columns"]
    assert types == {"index": "int64", "job_id": "string", "status": "string", "exit_code": "int64",
                     "duration_s": "double", "x1": "double", "x2": "double", "x3": "double",
                     "f": "double", "label": "string", "status_reason": "string", "outputs_error": "string"}
    assert parquet.to_pylist() == table["rows"]
    csv = server.http.get(f"/sweeps/{sweep['id']}/results", params={"format": "csv"})
    assert csv.headers["content-type"].startswith("text/csv") and csv.text.count("\n") == 2049


def test_analysis_errors_name_output_and_never_500(server):
    cases = {"command": "printf '{\"y\": %s, \"label\": \"t\"}' ${u} > outputs.json",
             "cases": [{"u": 1}, {"u": 2}, {"u": 4}, {"u": 5}]}
    sweep = server.http.post("/sweeps", json=cases).json()
    server.wait_sweep(sweep["id"])
    path = f"/sweeps/{sweep['id']}/analysis"
    answer = server.http.get(path, params={"output": "y"}).json()
    assert answer["variables"][0]["pearson"] == pytest.approx(1.0) and answer["design"] is None
    assert "saltelli" in answer["sobol_error"] and answer["runs_used"] == 4
    for params, why in (({}, "output"), ({"output": "nope"}, "reported by no run"),
                        ({"output": "label"}, "not a number"), ({"output": "u"}, "is a variable"),
                        ({"output": "$.y' \"; --\x01"}, "reported by no run"), ({"output": "y" * 1025}, "1024")):
        response = server.http.get(path, params=params)
        assert response.status_code == 400, response.text
        assert why in json.dumps(response.json()["error"]["fields"]["output"]) or why == "output"
    assert server.http.get("/sweeps/snope/analysis", params={"output": "y"}).status_code == 404
    assert server.http.get(f"/sweeps/{sweep['id']}/results", params={"format": "xls"}).status_code == 400

    waiting = server.http.post("/sweeps", json={"command": "sleep 60 # ${i}", "cases": [{"i": 1}, {"i": 2}],
                                                "max_parallel": 1}).json()
    server.http.post(f"/sweeps/{waiting['id']}/stop")
    server.wait_sweep(waiting["id"])
    response = server.http.get(f"/sweeps/{waiting['id']}/analysis", params={"output": "y"})
    assert response.status_code == 409 and "no completed runs" in response.json()["error"]["message"]


def test_a_sweep_is_analysed_and_exported_only_for_who_may_see_it(server):
    with token_holders(server, {"alice": False, "bob": False}) as tenants:
        sweep = tenants["alice"].post("/sweeps", json={
            "command": "echo '{\"y\": '${u}'}' > outputs.json", "cases": [{"u": 1}, {"u": 2}, {"u": 3}]}).json()
        tenants["alice"].get(f"/sweeps/{sweep['id']}", params={"wait": 60}, timeout=90)
        mine = tenants["alice"].get(f"/sweeps/{sweep['id']}/analysis", params={"output": "y"})
        assert mine.status_code == 200 and mine.json()["runs_used"] == 3
        for path, params in (("analysis", {"output": "y"}), ("results", {"format": "parquet"})):
            response = tenants["bob"].get(f"/sweeps/{sweep['id']}/{path}", params=params)
            assert response.status_code == 404, response.text
        assert server.http.get(f"/sweeps/{sweep['id']}/analysis", params={"output": "y"}).status_code == 401


def test_the_openapi_document_describes_the_analysis_and_parquet(server):
    paths = server.http.get("/openapi.json").json()["paths"]
    analysis = paths["/api/v1/sweeps/{sweep_id}/analysis"]["get"]
    assert [p["name"] for p in analysis["parameters"]] == ["sweep_id", "output"]
    results = paths["/api/v1/sweeps/{sweep_id}/results"]["get"]["responses"]["200"]["content"]
    assert "application/vnd.apache.parquet" in results
