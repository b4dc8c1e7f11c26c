"""Designs that grow: extensions continue a design's own sequence (or record a derived seed), and
adaptive sweeps extend themselves until a statistic's interval is narrow enough."""

from __future__ import annotations

import numpy as np
import pytest

from orchestrator import Orchestrator, doe, normal, uniform
from orchestrator.design_growth import grow
from orchestrator.growth_models import Until
from orchestrator.intervals import mean_interval, quantile_interval
from orchestrator.server.sweep_growth import estimate
from tests.conftest import Server

VARIABLES = [doe.Variable(name="a", uniform={"low": 0, "high": 1}),
             doe.Variable(name="b", normal={"mean": 5, "std": 2})]


def table(kind: str, samples: int) -> list[dict]:
    return doe.build_table(VARIABLES, _design(kind, samples), None, include_nominal=False, max_runs=10**6).rows


def _design(kind: str, samples: int):
    return {"monte_carlo": doe.MonteCarlo, "sobol": doe.Sobol, "saltelli": doe.Saltelli,
            "latin_hypercube": doe.LatinHypercube}[kind](type=kind, samples=samples, seed=11)


@pytest.mark.parametrize("kind", ["monte_carlo", "sobol", "saltelli"])
def test_an_extension_is_what_a_larger_design_would_have_made(kind: str):
    whole = table(kind, 12)
    first = table(kind, 8)
    runs_per_sample = len(first) // 8
    grown = grow(VARIABLES, _design(kind, 8), 11, 8, 4, first_index=len(first), number=1)

    assert first + grown.table.rows == whole
    assert [index for index, _ in grown.table.indexed()] == list(range(len(first), len(whole)))
    assert grown.lineage["continues"] == "seed" and grown.lineage["runs"] == 4 * runs_per_sample


def test_a_latin_hypercube_grows_by_an_independent_block_with_a_recorded_seed():
    one = grow(VARIABLES, _design("latin_hypercube", 8), 11, 8, 5, first_index=8, number=1)
    again = grow(VARIABLES, _design("latin_hypercube", 8), 11, 8, 5, first_index=8, number=1)
    second = grow(VARIABLES, _design("latin_hypercube", 8), 11, 13, 5, first_index=13, number=2)

    assert one.table.rows == again.table.rows and len(one.table.rows) == 5
    assert one.lineage["seed"] != second.lineage["seed"] and one.lineage["derived_from"] == 11
    column = sorted(row["a"] for row in one.table.rows)  # a hypercube: one point per stratum
    assert [int(value * 5) for value in column] == [0, 1, 2, 3, 4]


def test_the_intervals_cover_what_they_estimate():
    rng = np.random.default_rng(3)
    values = rng.normal(10, 2, 4000)
    mean, low, high = mean_interval(values, 0.95)
    assert low < 10 < high and abs(mean - 10) < 0.1
    q, q_low, q_high = quantile_interval(values, 0.9, 0.95)
    exact = 10 + 2 * 1.2815515655446004
    assert q_low <= exact <= q_high and q_low <= q <= q_high
    until = Until(output="y", rel_ci_half_width=0.001, batch=10, max_samples=10)
    assert estimate(until, values, {}, 4000).state == "growing"
    assert estimate(until.model_copy(update={"rel_ci_half_width": 0.02}), values, {}, 4000).state == "converged"


ECHO = "printf '{\"y\": %s}' ${x} > outputs.json"


def test_extend_adds_runs_that_the_results_cover(server: Server):
    created = server.http.post("/sweeps", json={
        "command": ECHO, "variables": [{"name": "x", "uniform": {"low": 0, "high": 1}}],
        "design": {"type": "sobol", "samples": 8, "seed": 5}}).json()
    server.wait_sweep(created["id"])

    response = server.http.post(f"/sweeps/{created['id']}/extend", json={"samples": 8})
    assert response.status_code == 202, response.text
    assert response.json()["runs"] == 16 and response.json()["status"] in ("QUEUED", "RUNNING")
    done = server.wait_sweep(created["id"])
    rows = server.http.get(f"/sweeps/{created['id']}/results").json()["rows"]

    assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": 16}
    assert [row["index"] for row in rows] == list(range(16))
    assert all(row["y"] == pytest.approx(row["x"]) for row in rows)
    assert done["spec"]["design"]["samples"] == 16
    assert [(e["number"], e["samples"], e["first_index"], e["continues"]) for e in done["extensions"]] == [
        (1, 8, 8, "seed")]
    larger = server.http.post("/sweeps", json={
        "command": ECHO, "variables": [{"name": "x", "uniform": {"low": 0, "high": 1}}],
        "design": {"type": "sobol", "samples": 16, "seed": 5}, "dry_run": True}).json()
    assert [run["variables"]["x"] for run in larger["runs"]] == [row["x"] for row in rows]


def test_what_cannot_grow_is_refused(server: Server):
    cases = server.http.post("/sweeps", json={"command": "true", "cases": [{"x": 1}]}).json()
    sampled = server.http.post("/sweeps", json={
        "command": "true", "variables": [{"name": "x", "uniform": {"low": 0, "high": 1}}],
        "design": {"type": "monte_carlo", "samples": 2}}).json()

    assert server.http.post(f"/sweeps/{cases['id']}/extend", json={"samples": 2}).status_code == 409
    bad = server.http.post(f"/sweeps/{sampled['id']}/extend", json={"samples": 0})
    assert bad.status_code == 400 and "samples" in bad.json()["error"]["fields"]
    assert server.http.post("/sweeps/nosuchsweep/extend", json={"samples": 2}).status_code == 404
    refused = server.http.post("/sweeps", json={
        "command": "true", "cases": [{"x": 1}],
        "until": {"output": "y", "rel_ci_half_width": 0.1, "batch": 2, "max_samples": 4}})
    assert refused.status_code == 400 and "until" in refused.text


def adaptive_sweep(server: Server, generator: dict, design: dict, until: dict) -> dict:
    """An adaptive sweep of one variable x whose output y is x, run to its end."""
    response = server.http.post("/sweeps", json={
        "command": ECHO, "variables": [{"name": "x", **generator}], "design": {**design, "seed": 2},
        "until": {"output": "y", **until}})
    assert response.status_code == 201, response.text
    return server.wait_sweep(response.json()["id"], timeout=180)


def test_an_adaptive_sweep_grows_until_the_mean_is_known_well_enough(server: Server):
    done = adaptive_sweep(server, {"normal": {"mean": 10, "std": 1}}, {"type": "monte_carlo", "samples": 40}, {
        "statistic": "mean", "rel_ci_half_width": 0.02, "confidence": 0.95, "batch": 40, "max_samples": 2000})

    assert done["status"] == "COMPLETED", done
    assert done["until"]["state"] == "converged" and done["status_reason"].startswith("converged: mean of y")
    assert done["until"]["rel_half_width"] <= 0.02 and done["runs"] == done["until"]["samples"] > 40
    assert done["until"]["ci_low"] < 10 < done["until"]["ci_high"]
    assert len(done["extensions"]) == done["runs"] // 40 - 1


def test_an_adaptive_sweep_stops_at_max_samples_and_says_so(server: Server):
    done = adaptive_sweep(server, {"uniform": {"low": 1, "high": 2}}, {"type": "latin_hypercube", "samples": 10}, {
        "statistic": "quantile", "quantile": 0.9, "rel_ci_half_width": 0.0001, "batch": 10, "max_samples": 30})

    assert done["runs"] == 30 and done["until"]["state"] == "max_samples"
    assert done["status_reason"].startswith("max_samples reached (30)")


def test_the_python_api_grows_a_sweep_and_shows_the_interval(tmp_path, dask_cluster):
    def model(x):
        return {"y": x}

    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        sweep = orch.sweep(model, variables={"x": normal(5, 1)}, design="monte_carlo", samples=50, seed=4,
                           until={"output": "y", "rel_ci_half_width": 0.03, "batch": 50, "max_samples": 1000})
        record = sweep.wait(timeout=120, progress=True)
        assert record.until.state == "converged" and record.until.rel_half_width <= 0.03
        extended = orch.sweep(model, variables={"x": uniform(0, 1)}, design="sobol", samples=4, seed=1)
        extended.wait(timeout=60)
        assert extended.extend(4).runs == 8
        assert len(extended.wait(timeout=60).extensions) == 1 and len(extended.results()) == 8


def test_an_adaptive_saltelli_sweep_grows_until_each_first_order_index_is_known(tmp_path, dask_cluster):
    def ishigami(x1, x2, x3):
        import math

        return {"f": math.sin(x1) + 7 * math.sin(x2) ** 2 + 0.1 * x3**4 * math.sin(x1)}

    pi = 3.141592653589793
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        sweep = orch.sweep(ishigami, variables={name: uniform(-pi, pi) for name in ("x1", "x2", "x3")},
                           design="saltelli", samples=64, seed=3,
                           until={"output": "f", "statistic": "sobol", "rel_ci_half_width": 0.1,
                                  "batch": 64, "max_samples": 2048})
        record = sweep.wait(timeout=300)

    assert record.until.state == "converged", record.until
    assert max(hi - lo for lo, hi in zip(record.until.ci_low, record.until.ci_high, strict=True)) / 2 <= 0.1
    assert record.runs == record.until.samples * 8 and record.until.samples > 64
    for estimate_, exact in zip(record.until.estimate, (0.314, 0.442, 0.0), strict=True):
        assert abs(estimate_ - exact) < 0.15
