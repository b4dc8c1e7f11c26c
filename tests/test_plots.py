"""Plots of a sweep's results (orchestrator.plots): from Python (embedded and remote), the CLI
and REST, on real sweeps run by the real cluster; and the figures' own promises (a point per
run with a value, a bounded deterministic downsample, honest titles) on tables built here."""

from __future__ import annotations

import math
import re

import numpy
import pandas
import pytest
from bokeh.models import (
    BoxAnnotation,
    CategoricalColorMapper,
    ColorBar,
    GlyphRenderer,
    LabelSet,
    LinearColorMapper,
    MultiLine,
    Span,
    Whisker,
)
from scipy import stats

from orchestrator import JobStatus, Orchestrator, ValidationFailed, linspace
from orchestrator.cli import main
from orchestrator.plots import (
    COLOR,
    MAX_LINES,
    MAX_POINTS,
    X,
    Y,
    histogram,
    parallel,
    scatter,
    sobol_bars,
    standalone_html,
)

# run i writes y = 3 i and a text output; run 2 writes no outputs, run 4 fails
COMMAND = ("if [ ${i} = 4 ]; then exit 3; fi; "
           "if [ ${i} = 2 ]; then echo '{}' > outputs.json; "
           "else echo \"{\\\"y\\\": $((${i} * 3)), \\\"parity\\\": \\\"p$((${i} % 2))\\\"}\" > outputs.json; fi")


def square(u):
    return {"y": u * u}


def source_of(figure) -> dict:
    """The data of the figure's one glyph."""
    (renderer,) = [r for r in figure.renderers if isinstance(r, GlyphRenderer)]
    return renderer.data_source.data


def colour_mapper(figure):
    (renderer,) = [r for r in figure.renderers if isinstance(r, GlyphRenderer)]
    glyph = renderer.glyph
    spec = glyph.line_color if isinstance(glyph, MultiLine) else glyph.fill_color
    return spec.transform


def ended_sweep(server) -> str:
    response = server.http.post("/sweeps", json={"name": "plots", "command": COMMAND,
                                                  "variables": [{"name": "i", "values": list(range(6))}]})
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    assert server.wait_sweep(sweep_id)["counts"] == {"COMPLETED": 5, "FAILED": 1}
    return sweep_id


def table(n: int, seed: int = 3) -> pandas.DataFrame:
    """A results table as Sweep.results() gives it, every seventh run without an output."""
    rng = numpy.random.default_rng(seed)
    angle, drag = rng.uniform(10, 80, n), rng.uniform(1e-4, 2e-3, n)
    with_value = numpy.arange(n) % 7 != 0
    return pandas.DataFrame({
        "job_id": [f"j{i}" for i in range(n)], "status": numpy.where(with_value, "COMPLETED", "FAILED"),
        "exit_code": 0, "duration_s": 0.1, "angle": angle, "drag": drag,
        "range_m": numpy.where(with_value, angle / drag / 1e3, numpy.nan),
        "status_reason": None, "outputs_error": None,
    }, index=pandas.RangeIndex(n, name="index"))


# ---- on real sweeps -------------------------------------------------------------------------


def test_remote_plot_has_a_point_per_run_with_a_value_coloured_by_numbers_or_status(server):
    sweep_id = ended_sweep(server)
    with Orchestrator.connect(server.url) as remote:
        sweep = remote.get_sweep(sweep_id)

        figure = sweep.plot(x="i", y="y", color="y")
        data = source_of(figure)
        assert list(data[X]) == [0, 1, 3, 5] and list(data[Y]) == [0, 3, 9, 15]  # not runs 2 and 4
        assert data["index"] == ["0", "1", "3", "5"] and data["status"] == ["COMPLETED"] * 4
        assert data["parity"] == ["p0", "p1", "p1", "p1"]  # hovering shows outputs too
        mapper = colour_mapper(figure)
        assert isinstance(mapper, LinearColorMapper) and (mapper.low, mapper.high) == (0, 15)
        assert [bar.title for bar in figure.select({"type": ColorBar})] == ["y"]
        assert "2 of 6 runs without a value left out" in figure.title.text

        by_status = sweep.plot(x="i", y="i", color="status")  # variables: every run has a value
        assert source_of(by_status)[COLOR] == ["COMPLETED"] * 4 + ["FAILED", "COMPLETED"]
        mapper = colour_mapper(by_status)
        assert isinstance(mapper, CategoricalColorMapper) and list(mapper.factors) == ["COMPLETED", "FAILED"]
        assert list(mapper.palette) == ["#2ca02c", "#d62728"]

        by_text = sweep.plot(x="parity", y="y")  # a text column is a categorical axis
        assert list(by_text.x_range.factors) == ["p0", "p1"]

        lines = sweep.plot_parallel()
        assert lines.title.text.startswith("parallel coordinates, coloured by y")
        data = source_of(lines)
        assert len(data["ys"]) == 6  # run 4 still has its variable: a line with gaps
        assert numpy.nanmin(numpy.array(data["ys"])) == 0 and numpy.nanmax(numpy.array(data["ys"])) == 1
        assert source_of(sweep.plot_parallel(["i", "y"], color="status"))[COLOR][4] == "FAILED"

        with pytest.raises(ValidationFailed) as info:
            sweep.plot(x="i", y="range_m", color="nope")
        assert info.value.fields == {"y": "unknown column 'range_m'", "color": "unknown column 'nope'"}


def test_rest_page_is_standalone_html_and_unknown_columns_are_400s(server):
    sweep_id = ended_sweep(server)
    page = server.http.get(f"/sweeps/{sweep_id}/plot", params={"x": "i", "y": "y", "color": "parity"})
    assert page.status_code == 200, page.text
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    html = page.text
    assert html.lstrip().lower().startswith("<!doctype html>")
    assert 'type="application/json"' in html and "Bokeh.embed.embed_items" in html  # the document
    assert "y against i, coloured by parity" in html
    assert not re.search(r"<script[^>]+src=", html) and not re.search(r"<link[^>]+href=\"?http", html)

    for params, field in (({"x": "nope", "y": "y"}, "x"), ({"x": "i", "y": "nope"}, "y"),
                          ({"x": "i", "y": "y", "color": "nope"}, "color"), ({"x": "i"}, "y")):
        answer = server.http.get(f"/sweeps/{sweep_id}/plot", params=params)
        assert answer.status_code == 400, answer.text
        assert field in answer.json()["error"]["fields"]
    assert server.http.get("/sweeps/s0000000000a/plot", params={"x": "i", "y": "y"}).status_code == 404

    operation = server.http.get("/openapi.json").json()["paths"]["/api/v1/sweeps/{sweep_id}/plot"]["get"]
    assert "text/html" in operation["responses"]["200"]["content"]
    assert {p["name"] for p in operation["parameters"]} >= {"x", "y", "color"}


def test_cli_writes_the_page(server, tmp_path, capsys):
    sweep_id = ended_sweep(server)
    url = ["--url", server.url]
    target = tmp_path / "plot.html"
    assert main(["plot", *url, sweep_id, "--x", "i", "--y", "y", "--color", "status", "-o", str(target)]) == 0
    assert "y against i, coloured by status" in target.read_text()
    assert str(target) in capsys.readouterr().err

    lines = tmp_path / "parallel.html"
    assert main(["plot", *url, sweep_id, "--parallel", "--columns", "i,y", "-o", str(lines), "--json"]) == 0
    assert "parallel coordinates" in lines.read_text()
    capsys.readouterr()

    assert main(["plot", *url, sweep_id, "--x", "i", "--y", "nope", "-o", str(tmp_path / "no.html")]) == 2
    assert "y: unknown column 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "no.html").exists()
    with pytest.raises(SystemExit, match="--x and --y"):
        main(["plot", *url, sweep_id, "--x", "i"])


def test_a_sweep_without_results_yet_still_gets_a_page(server):
    response = server.http.post("/sweeps", json={"command": "sleep 60 # ${i}",
                                                  "variables": [{"name": "i", "values": [1, 2]}]})
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    try:
        page = server.http.get(f"/sweeps/{sweep_id}/plot", params={"x": "i", "y": "range_m"})
        assert page.status_code == 200, page.text
        assert re.search(r"no run has reported range_m yet \(0 of 2 runs ended\)", page.text)
    finally:
        server.http.post(f"/sweeps/{sweep_id}/stop")
    server.wait_sweep(sweep_id)
    # ended without it: now the column is simply unknown
    assert server.http.get(f"/sweeps/{sweep_id}/plot", params={"x": "i", "y": "range_m"}).status_code == 400


def test_embedded_sweep_plots_and_shows_inline_in_jupyter(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        sweep = orch.sweep(square, variables={"u": linspace(0, 1, 5)})
        assert sweep.wait(timeout=60).status == JobStatus.COMPLETED
        figure = sweep.plot("u", "y", color="status")
        assert list(source_of(figure)[Y]) == pytest.approx([0, 0.0625, 0.25, 0.5625, 1])
        assert len(source_of(sweep.plot_parallel())["ys"]) == 5
    inline = figure._repr_html_()  # what Jupyter shows: the standalone page, offline
    assert inline.startswith("<iframe srcdoc=") and "Bokeh.embed.embed_items" in inline


# ---- on tables built here -------------------------------------------------------------------


def test_a_hundred_thousand_runs_draw_a_bounded_deterministic_sample():
    big = table(100_000)
    figure = scatter(big, "angle", "range_m", color="drag")
    drawn = source_of(figure)
    assert len(drawn[X]) == MAX_POINTS
    with_value = big["range_m"].notna().sum()
    assert f"20,000 of {with_value:,} runs drawn" in figure.title.text
    assert f"{100_000 - with_value} of 100000 runs without a value left out" in figure.title.text
    assert source_of(scatter(big, "angle", "range_m", color="drag"))["index"] == drawn["index"]  # same points
    indexes = numpy.array(drawn["index"], dtype=int)
    assert indexes.min() < 100 and indexes.max() > 99_900  # spread over the whole sweep
    assert len(big) == 100_000 and big["range_m"].notna().sum() == with_value  # the table is untouched

    lines = parallel(big, ["angle", "drag", "range_m"])
    assert len(source_of(lines)["ys"]) == MAX_LINES
    assert len(standalone_html(figure)) < 20 * 2**20


def test_parallel_axes_are_normalised_and_labelled_with_their_real_range():
    small = table(50)
    figure = parallel(small, ["angle", "range_m"], color="status")
    ys = numpy.array(source_of(figure)["ys"])
    angle = small["angle"]
    assert ys[:, 0] == pytest.approx(((angle - angle.min()) / (angle.max() - angle.min())).to_numpy())
    (labels,) = figure.select({"type": LabelSet})
    assert f"{angle.min():.4g}" in labels.source.data["text"] and f"{angle.max():.4g}" in labels.source.data["text"]
    assert dict(figure.xaxis[0].major_label_overrides) == {0: "angle", 1: "range_m"}


def test_histogram_shows_the_mean_and_its_confidence_interval():
    small = table(200)
    values = small["range_m"].dropna().to_numpy()
    figure = histogram(small, "range_m")
    half = stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values))
    (band,) = [a for a in figure.center if isinstance(a, BoxAnnotation)]  # not the zoom tool's box
    assert (band.left, band.right) == pytest.approx((values.mean() - half, values.mean() + half))
    (mean,) = [a for a in figure.center if isinstance(a, Span)]
    assert mean.location == pytest.approx(values.mean())
    assert f"mean {values.mean():.4g}, 95 % CI of the mean [{values.mean() - half:.4g}," in figure.title.text
    assert sum(source_of(figure)["top"]) == len(values)
    with pytest.raises(ValidationFailed) as info:
        histogram(small, "status")
    assert info.value.fields == {"column": "not a number column"}


def test_sobol_bars_with_confidence_whiskers():
    analysis = pandas.DataFrame({"S1": [0.6, 0.1], "S1_conf": [0.05, 0.02], "ST": [0.7, 0.25],
                                 "ST_conf": [0.04, 0.03]}, index=["angle", "drag"])
    figure = sobol_bars(analysis)
    data = source_of(figure)
    assert list(data["x"]) == [("angle", "S1"), ("angle", "ST"), ("drag", "S1"), ("drag", "ST")]
    assert list(data["value"]) == [0.6, 0.7, 0.1, 0.25]
    assert list(data["upper"]) == pytest.approx([0.65, 0.74, 0.12, 0.28])
    assert len(figure.select({"type": Whisker})) == 1
    with pytest.raises(ValidationFailed) as info:
        sobol_bars(analysis[["S1", "ST"]])
    assert "analysis" in info.value.fields

    # as Sweep.analysis(output) gives it: lower-case columns, a variable index, the output in attrs
    lower = analysis.rename(columns=str.lower).rename_axis("variable")
    lower.attrs["output"] = "range_m"
    figure = sobol_bars(lower)
    assert list(source_of(figure)["value"]) == [0.6, 0.7, 0.1, 0.25]
    assert figure.title.text.startswith("Sobol indices of range_m")
