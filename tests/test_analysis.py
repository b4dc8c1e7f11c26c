"""The sensitivity analysis and the Parquet export as pure functions over columns: no cluster,
no server. The saltelli design is built by orchestrator.doe exactly as a sweep builds it."""

from __future__ import annotations

import io
import math
import uuid
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats

from orchestrator import doe
from orchestrator.errors import Conflict, NotFound, ValidationFailed
from orchestrator.models import JobRecord, JobResult, JobStatus, Resources
from orchestrator.server import analysis
from orchestrator.server.ledger import StatusUpdate, Store, SweepRow
from orchestrator.server.results_parquet import column_type, results_parquet
from orchestrator.server.sweep_results import results_table

ISHIGAMI_S1 = {"x1": 0.314, "x2": 0.442, "x3": 0.0}
ISHIGAMI_ST = {"x1": 0.558, "x2": 0.442, "x3": 0.244}
MARGIN = 0.02  # besides the confidence interval: the analytic values are rounded
PI = {"uniform": {"low": -math.pi, "high": math.pi}}


def ishigami(x1: float, x2: float, x3: float) -> float:
    return math.sin(x1) + 7 * math.sin(x2) ** 2 + 0.1 * x3**4 * math.sin(x1)


def variables(*names: str, **generators: dict) -> list[doe.Variable]:
    return [doe.Variable(name=name, **generators.get(name, PI)) for name in names]


def saltelli_table(samples: int, seed: int = 7, include_nominal: bool = False, **generators: dict) -> doe.RunTable:
    spec = variables("x1", "x2", "x3", **generators)
    if include_nominal:
        spec = [v.model_copy(update={"nominal": 0.5}) for v in spec]
    design = doe.Saltelli(type="saltelli", samples=samples, seed=seed)
    return doe.build_table(spec, design, None, include_nominal=include_nominal, max_runs=10**6)


@pytest.fixture
def store(tmp_path):
    ledger = Store(tmp_path / "jobs.db")
    yield ledger
    ledger.close()


def recorded(store: Store, table: doe.RunTable, design: dict | None, include_nominal: bool = False,
             outputs: dict[int, Any] | None = None, statuses: dict[int, str] | None = None) -> str:
    """The sweep in a real ledger with its runs ended as the engine records them: each reports
    the Ishigami function of its variables as `f` (or `y` = 2u), unless `outputs` and
    `statuses` say otherwise for some runs."""
    sweep_id = f"s{uuid.uuid4().hex[:11]}"
    now = datetime.now(timezone.utc)
    runs = [JobRecord(id=f"{sweep_id}{index:06d}", name="study", owner="me", status=JobStatus.QUEUED,
                      resources=Resources(), sweep_id=sweep_id, index=index, variables=row, created_at=now)
            for index, row in table.indexed()]
    spec: dict[str, Any] = {"include_nominal_run": include_nominal}  # without a design: cases
    if design is not None:
        spec.update(variables=[{"name": n} for n in table.names], design=design)
    store.insert_sweep(SweepRow(id=sweep_id, name="study", owner="me", kind="callable", spec=spec,
                                names=table.names, seed=table.seed, created_at=now), runs, [])
    updates = []
    for run in runs:
        row = run.variables
        status = JobStatus((statuses or {}).get(run.index, "COMPLETED"))
        default = ({"f": ishigami(row["x1"], row["x2"], row["x3"]), "label": "x"} if "x1" in row
                   else {"y": 2.0 * row["u"]})
        result = JobResult(exit_code=0, outputs=(outputs or {}).get(run.index, default))
        updates.append(StatusUpdate(run.id, status, None, now,
                                    fields={"result": result} if status == JobStatus.COMPLETED else {}))
    store.record_statuses(updates)
    return sweep_id


def by_variable(answer) -> dict[str, Any]:
    return {entry.variable: entry for entry in answer.variables}


# ---- the saltelli design ----------------------------------------------------------------


def test_saltelli_design_makes_n_times_2d_plus_2_runs_in_salib_order_reproducibly():
    table = saltelli_table(16, seed=3)
    assert len(table.rows) == 16 * (2 * 3 + 2) and table.seed == 3
    assert table.rows == saltelli_table(16, seed=3).rows
    assert table.rows != saltelli_table(16, seed=4).rows
    values = np.array([[row[n] for n in table.names] for row in table.rows])
    assert values.min() >= -math.pi and values.max() <= math.pi
    # SALib's order: in each block of 2D+2 rows, AB_j takes column j from B and the rest from A
    a, ab1, b = values[0], values[1], values[7]
    assert ab1[0] == b[0] and list(ab1[1:]) == list(a[1:])


def test_saltelli_maps_columns_through_each_distribution():
    table = saltelli_table(64, x2={"normal": {"mean": 10, "std": 2}}, x3={"values": ["a", "b"]})
    x2 = np.array([row["x2"] for row in table.rows])
    assert abs(x2.mean() - 10) < 0.5 and 1.5 < x2.std() < 2.5
    assert {row["x3"] for row in table.rows} == {"a", "b"}


def test_saltelli_run_limit_counts_runs_not_samples():
    design = doe.Saltelli(type="saltelli", samples=100, seed=1)
    with pytest.raises(ValidationFailed) as info:
        doe.build_table(variables("x1", "x2", "x3"), design, None, include_nominal=False, max_runs=799)
    assert "800 runs" in info.value.fields["design.samples"]
    assert len(doe.build_table(variables("x1", "x2", "x3"), design, None, include_nominal=False,
                               max_runs=800).rows) == 800


# ---- statistics on columns --------------------------------------------------------------


def test_correlations_match_scipy_and_are_nan_for_a_constant():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(500, 3))
    x[:, 2] = 4.0
    y = 3 * x[:, 0] + np.exp(x[:, 1]) + rng.normal(size=500)
    p, s = analysis.pearson(x, y), analysis.spearman(x, y)
    for j in range(2):
        assert p[j] == pytest.approx(stats.pearsonr(x[:, j], y).statistic, abs=1e-12)
        assert s[j] == pytest.approx(stats.spearmanr(x[:, j], y).statistic, abs=1e-12)
    assert np.isnan(p[2]) and np.isnan(s[2])


def test_standardised_regression_recovers_a_linear_model():
    rng = np.random.default_rng(2)
    x = rng.uniform(0, [1, 10], size=(2000, 2))
    y = 2 * x[:, 0] - 0.3 * x[:, 1]
    coefficients, r2 = analysis.standardised_regression(x, y)
    expected = np.array([2, -0.3]) * x.std(axis=0) / y.std()
    assert coefficients == pytest.approx(expected, abs=1e-9) and r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 4"):
        analysis.standardised_regression(x[:3], y[:3])
    with pytest.raises(ValueError, match="collinear"):
        analysis.standardised_regression(np.column_stack([x[:, 0], 2 * x[:, 0]]), y)


# ---- the analysis of a sweep --------------------------------------------------------------


def test_ishigami_sobol_indices_match_the_analytic_values(store):
    table = saltelli_table(1024, seed=11)
    sweep = recorded(store, table, {"type": "saltelli", "samples": 1024, "seed": 11})
    answer = analysis.analyse_sweep(store, sweep, "f")
    assert answer.sobol_error is None and answer.runs_used == answer.runs == 8192
    assert answer.left_out == {} and answer.conf_level == 0.95
    found = by_variable(answer)
    for name in table.names:
        entry = found[name]
        assert abs(entry.s1 - ISHIGAMI_S1[name]) <= entry.s1_conf + MARGIN, (name, entry)
        assert abs(entry.st - ISHIGAMI_ST[name]) <= entry.st_conf + MARGIN, (name, entry)
    # x2 enters through sin² (no linear trend), x1 through sin (a strong one)
    assert found["x1"].pearson > 0.3 and abs(found["x2"].pearson) < 0.1
    assert found["x1"].src == pytest.approx(found["x1"].pearson, abs=0.05)
    assert 0 < answer.r2 < 0.3 and answer.regression_error is None


def test_a_missing_run_of_the_matrix_leaves_correlations_and_explains_the_indices(store):
    table = saltelli_table(32)
    design = {"type": "saltelli", "samples": 32}
    sweep = recorded(store, table, design, outputs={5: {"f": "diverged"}, 9: {}, 10: {"f": True}},
                     statuses={3: "FAILED", 4: "QUEUED"})
    answer = analysis.analyse_sweep(store, sweep, "f")
    assert answer.runs_used == 256 - 5
    assert answer.left_out == {"FAILED": 1, "no value": 1, "not a number": 2, "not finished": 1}
    assert "5 lack a numeric output" in answer.sobol_error and "FAILED: 1" in answer.sobol_error
    assert all(entry.s1 is None and entry.st is None for entry in answer.variables)
    assert all(entry.pearson is not None for entry in answer.variables)
    # runs deleted from the ledger count as missing too
    whole = recorded(store, table, design)
    for index in range(248, 256):
        store.delete_job(f"{whole}{index:06d}")
    answer = analysis.analyse_sweep(store, whole, "f")
    assert "deleted: 8" in answer.sobol_error and answer.runs == answer.runs_used == 248


def test_a_grown_saltelli_design_and_a_nominal_run_shift_nothing(store):
    table = saltelli_table(64, include_nominal=True)
    assert table.rows[0] == {"x1": 0.5, "x2": 0.5, "x3": 0.5}
    # the recorded design says 32 base points; the runs hold 64 (an extension appended them)
    answer = analysis.analyse_sweep(store, recorded(store, table, {"type": "saltelli", "samples": 32}, True), "f")
    assert answer.sobol_error is None and answer.runs_used == 64 * 8 + 1
    plain = saltelli_table(64)
    same = analysis.analyse_sweep(store, recorded(store, plain, {"type": "saltelli", "samples": 64}), "f")
    assert [(v.s1, v.st) for v in answer.variables] == [(v.s1, v.st) for v in same.variables]


def test_other_designs_get_correlations_and_say_why_there_are_no_indices(store):
    spec = variables("x1", "x2", "x3")
    table = doe.build_table(spec, doe.LatinHypercube(type="latin_hypercube", samples=200, seed=1), None,
                            include_nominal=False, max_runs=1000)
    answer = analysis.analyse_sweep(store, recorded(store, table, {"type": "latin_hypercube", "samples": 200}), "f")
    assert "saltelli" in answer.sobol_error and "latin_hypercube" in answer.sobol_error
    assert by_variable(answer)["x1"].pearson > 0.3
    answer = analysis.analyse_sweep(store, recorded(store, table, None), "f")
    assert "cases" in answer.sobol_error


def test_text_boolean_and_constant_variables(store):
    table = doe.RunTable(["u", "mode", "on", "k"], [{"u": float(i), "mode": "ab"[i % 2], "on": i % 3 == 0, "k": 3}
                                                    for i in range(20)])
    answer = analysis.analyse_sweep(store, recorded(store, table, None), "y")
    found = by_variable(answer)
    assert found["u"].pearson == pytest.approx(1.0) and found["u"].src == pytest.approx(1.0)
    assert "not numbers" in found["mode"].note and found["mode"].pearson is None
    assert found["on"].pearson is not None  # booleans count as 0 and 1
    assert "constant" in found["k"].note and found["k"].spearman is None


def test_bad_outputs_are_refused_naming_output(store):
    table = saltelli_table(4)
    design = {"type": "saltelli", "samples": 4}
    waiting = recorded(store, table, design, statuses=dict.fromkeys(range(32), "QUEUED"))
    with pytest.raises(Conflict) as info:
        analysis.analyse_sweep(store, waiting, "f")
    assert info.value.status == 409 and "output" in info.value.fields
    sweep = recorded(store, table, design)
    for output, problem in (("nope", "reported by no run (outputs: f, label)"), ("x1", "is a variable"),
                            ("label", "not a number (str)"), ("outputs.nope", "reported by no run")):
        with pytest.raises(ValidationFailed) as info:
            analysis.analyse_sweep(store, sweep, output)
        assert problem in info.value.fields["output"], info.value.fields
    # the results table's name of an output renamed for a collision works too
    assert analysis.analyse_sweep(store, sweep, "outputs.f").output == "f"
    # a sweep is seen by its owner (or by everyone: owner None), as its results are
    assert analysis.analyse_sweep(store, sweep, "f", owner="me").runs_used == 32
    for sweep_id, owner in ((sweep, "someone"), ("snope", None)):
        with pytest.raises(NotFound):
            analysis.analyse_sweep(store, sweep_id, "f", owner)


def test_columns_come_in_index_order_with_json_booleans_restored():
    columns = analysis.run_columns([[2, 0, 1], ["COMPLETED", "FAILED", "COMPLETED"], ["true", None, "real"],
                                    [1, None, 0.5], [20, 0, 10]], ["u"])
    assert columns.index.tolist() == [0, 1, 2] and columns.statuses == ["FAILED", "COMPLETED", "COMPLETED"]
    assert columns.output == [None, 0.5, True] and columns.variables == {"u": [0, 10, 20]}
    assert columns.reported


# ---- Parquet ------------------------------------------------------------------------------


def test_parquet_keeps_numbers_text_booleans_and_blanks_typed():
    runs = [(0, "a", "COMPLETED", None, {"n": 1, "x": 0.5, "mode": "a", "on": True},
             {"exit_code": 0, "duration_s": 0.25, "outputs": {"f": 1.5, "count": 3, "tag": "ok", "mixed": 1}}),
            (1, "b", "FAILED", "exit code 3", {"n": 2, "x": 1, "mode": "b", "on": False},
             {"exit_code": 3, "duration_s": 1.0, "outputs": {"mixed": "two"}}),
            (2, "c", "QUEUED", None, {"n": 3, "x": 2.5, "mode": "c", "on": True}, None)]
    table = results_table(["n", "x", "mode", "on"], runs)
    read = pq.read_table(io.BytesIO(results_parquet(table)))
    types = {field.name: str(field.type) for field in read.schema}
    assert read.column_names == table.columns
    assert types == {"index": "int64", "job_id": "string", "status": "string", "exit_code": "int64",
                     "duration_s": "double", "n": "int64", "x": "double", "mode": "string", "on": "bool",
                     "count": "int64", "f": "double", "mixed": "string", "tag": "string",
                     "status_reason": "string", "outputs_error": "string"}
    assert read.to_pylist() == [{**row, "mixed": None if row["mixed"] is None else str(row["mixed"])}
                                for row in table.rows]
    assert column_type([None, None]) == "null" and column_type([2**70, 1]) == "double"
