"""The sweep explorer of the Dask dashboard (plugins/explorer.py).

The feed (orchestrator/server/explorer_feed.py) sends the scheduler the rows of the sweeps a
page watches, first in full and then the runs that ended since, and only when results may be
shown (no tokens, or `dashboard_outputs`); the page, in a real headless Chromium, draws a
point per run and follows its drop-downs and selections; the drawing of a 100,000-run sweep
is downsampled while brushing and the histogram use every run.
"""

from __future__ import annotations

import json
import math
import shutil
from typing import Any

import numpy
import pytest
from scipy import stats

from orchestrator.config import Settings
from orchestrator.plugins import explorer_view as view
from orchestrator.plugins.dashboard import shown_groups
from orchestrator.plugins.explorer_state import SweepTable, held_table, watch
from orchestrator.server.explorer_feed import REFUSED
from tests.conftest import REPO, free_port, start_test_server, stop_test_server
from tests.support import wait_until
from tests.support.tenants import token_holders
from tests.test_cluster import real_cluster

# y = i * i and z = i % 3 as outputs.json (shell arithmetic: jobs of token holders may run as
# other uids, which cannot read this Python)
SIMULATE = 'echo "{\\"y\\": $((${i} * ${i})), \\"z\\": $((${i} % 3))}" > outputs.json'
ARTIFACTS = REPO / "test-artifacts"


@pytest.fixture(scope="module")
def scheduler(dask_cluster):
    """A client of the session cluster's scheduler, for what a page does there."""
    with dask_cluster.client() as client:
        yield client


def held(scheduler, sweep_id: str) -> dict[str, Any] | None:
    """What the scheduler holds of a sweep, keeping it watched as an open page does."""
    scheduler.run_on_scheduler(watch, sweep_id)
    return scheduler.run_on_scheduler(held_table, sweep_id)


def create_sweep(http, command: str = SIMULATE, count: int = 6, **extra) -> dict:
    response = http.post("/sweeps", json={
        "name": "squares", "command": command,
        "variables": [{"name": "i", "range": {"start": 1, "stop": count, "step": 1}}], **extra})
    assert response.status_code == 201, response.text
    return response.json()


# ---- the feed ---------------------------------------------------------------------------------


def test_a_watched_sweep_is_sent_in_full_then_by_the_runs_that_end(server, scheduler):
    sweep = create_sweep(server.http)
    assert sweep["explorer"] is None  # the session cluster serves no dashboard
    unwatched = create_sweep(server.http, count=2)
    server.wait_sweep(unwatched["id"])
    server.wait_sweep(sweep["id"])

    def completed(table: dict | None, runs: int) -> dict | None:
        if table is None or "y" not in table["data"]:
            return None
        return table if table["data"]["status"].count("COMPLETED") == runs else None

    first = wait_until(lambda: completed(held(scheduler, sweep["id"]), 6), 60, "the whole table on the scheduler")
    assert first["variables"] == ["i"] and first["outputs"] == ["y", "z"]
    assert sorted(first["data"]["index"]) == list(range(6))
    assert first["api_url"] == server.running.service.api_url
    runs = server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"]
    again = [run["id"] for run in runs if run["index"] in (1, 4)]  # these end again: sent as updates
    assert server.http.post(f"/sweeps/{sweep['id']}/rerun", json={"ids": again}).status_code == 202
    server.wait_sweep(sweep["id"])
    results = server.http.get(f"/sweeps/{sweep['id']}/results").json()["rows"]

    def updated() -> dict | None:
        table = completed(held(scheduler, sweep["id"]), 6)
        return table if table is not None and table["version"] > first["version"] else None

    last = wait_until(updated, 30, "the rerun runs' rows on the scheduler")
    assert last["token"] == first["token"]  # updates, not a new table
    by_index = {index: row for row, index in enumerate(last["data"]["index"])}
    for expected in results:
        row = by_index[expected["index"]]
        assert {c: last["data"][c][row] for c in ("job_id", "status", "i", "y", "z")} == \
               {c: expected[c] for c in ("job_id", "status", "i", "y", "z")}
    assert held(scheduler, unwatched["id"]) is None  # nobody looked at it: never sent


def test_with_tokens_results_reach_the_dashboard_only_when_allowed(make_server, scheduler):
    for allowed in (False, True):
        server = make_server(dashboard_outputs=allowed)
        with token_holders(server, {"root": True}) as tenants:
            sweep = create_sweep(tenants["root"], count=2)
            done = tenants["root"].get(f"/sweeps/{sweep['id']}", params={"wait": 60}, timeout=90).json()
            assert done["status"] == "COMPLETED", done
            table = wait_until(lambda: held(scheduler, sweep["id"]), 30, "the feed's answer")  # noqa: B023
            if allowed:
                assert sorted(table["data"]["y"]) == [1.0, 4.0]
            else:
                assert table == {"refused": REFUSED}


# ---- the drawing's data -----------------------------------------------------------------------


def big_table(runs: int = 100_000) -> SweepTable:
    rng = numpy.random.default_rng(7)
    x = rng.uniform(0, 1, runs)
    y = numpy.where(numpy.arange(runs) % 10 == 0, numpy.nan, 3 * x + rng.normal(0, 0.1, runs))
    data = {
        "index": list(range(runs)), "job_id": [f"j{i}" for i in range(runs)],
        "status": ["FAILED" if i % 10 == 0 else "COMPLETED" for i in range(runs)],
        "exit_code": [0] * runs, "duration_s": [0.5] * runs, "x": x.tolist(),
        "mode": ["fast" if i % 3 else "slow" for i in range(runs)],
        "y": [None if math.isnan(v) else v for v in y.tolist()], "status_reason": [None] * runs,
        "outputs_error": [None] * runs,
    }
    return SweepTable(token="t", name="big", variables=["x", "mode"], outputs=["y"], columns=list(data),
                      data=data, api_url=None, published_at=0.0)


def test_a_large_sweep_is_drawn_downsampled_but_brushed_and_summed_over_every_run():
    table = big_table()
    frame = view.Frame(table)
    points = view.scatter(frame, "x", "y", "status")
    assert len(points["x"]) == view.MAX_POINTS and not numpy.isnan(points["y"]).any()
    assert set(points["fill"]) == {view.STATUS_COLORS["COMPLETED"]}  # failed runs have no y
    lines, ticks = view.parallel(frame, frame.axes(), "y")
    assert len(lines["ys"]) == view.MAX_LINES and frame.axes() == ["x", "mode", "y"]
    assert [text for _, text in ticks[1]] == ["fast", "slow"]
    x = numpy.array(table.data["x"])
    low, high = x.min(), x.max()
    inside = view.brushed(frame, {"x": (0.25, 0.5)})
    expected = numpy.flatnonzero(((x - low) / (high - low) >= 0.25) & ((x - low) / (high - low) <= 0.5))
    assert len(inside) > view.MAX_POINTS and numpy.array_equal(inside, expected)
    spread = view.histogram(frame, "y")
    y = numpy.array([v for v in table.data["y"] if v is not None])
    half = stats.t.ppf(0.975, len(y) - 1) * y.std(ddof=1) / math.sqrt(len(y))
    assert spread.n == len(y) == 90_000 and spread.counts.sum() == len(y)
    assert spread.mean == pytest.approx(y.mean()) and spread.high - spread.mean == pytest.approx(half)
    assert view.histogram(frame, "mode") is None  # text has no histogram
    rows = view.table_rows(frame, inside)
    assert len(rows["c0"]) == view.MAX_TABLE and rows["c0"][:2] == inside[:2].tolist()


def ishigami_table(samples: int, drop: int | None = None) -> SweepTable:
    """A saltelli design's table whose output is the Ishigami function (run `drop` missing)."""
    from orchestrator.doe import saltelli_cube

    x = -math.pi + 2 * math.pi * saltelli_cube(samples, 3, seed=5)
    f = numpy.sin(x[:, 0]) + 7 * numpy.sin(x[:, 1]) ** 2 + 0.1 * x[:, 2] ** 4 * numpy.sin(x[:, 0])
    runs = len(f)
    data = {"index": list(range(runs)), "job_id": [f"j{i}" for i in range(runs)],
            "status": ["COMPLETED" if i != drop else "FAILED" for i in range(runs)],
            **{f"x{j + 1}": x[:, j].tolist() for j in range(3)},
            "f": [None if i == drop else float(v) for i, v in enumerate(f)]}
    return SweepTable(token="t", name="ishigami", variables=["x1", "x2", "x3"], outputs=["f"],
                      columns=list(data), data=data, api_url=None, published_at=0.0,
                      design={"type": "saltelli", "nominal": False})


def test_the_sobol_bars_of_a_saltelli_sweep():
    bars = view.sobol(view.Frame(ishigami_table(1024)), "f")
    for found, exact in zip(bars.s1, (0.314, 0.442, 0.0), strict=True):
        assert abs(found - exact) < 0.05
    for found, exact in zip(bars.st, (0.558, 0.442, 0.244), strict=True):
        assert abs(found - exact) < 0.05
    waiting = view.sobol(view.Frame(ishigami_table(64, drop=17)), "f")
    assert waiting == "Sobol indices of f: waiting for 1 runs of the saltelli matrix to give a number"
    assert view.sobol(view.Frame(big_table(100)), "y") is None  # not a saltelli design: no bars


def test_a_table_takes_the_rows_of_runs_that_ended():
    table = big_table(4)
    table.merge({"index": [2, 7], "status": ["COMPLETED", "COMPLETED"], "y": [5.0, 6.0]}, 1.0)
    assert table.data["y"][2] == 5.0 and table.data["index"][4] == 7 and table.data["y"][4] == 6.0
    assert table.data["x"][4] is None and table.version == 1 and len(set(map(len, table.data.values()))) == 1


def test_the_jobs_page_shows_the_most_recent_sweeps_that_match_the_filter():
    groups = [{"label": f"run{i} (s{i:011d})", "counts": {}} for i in range(15)]
    groups.append({"label": "single jobs", "counts": {}})
    shown = shown_groups(groups, 10, "")
    assert [g["label"] for g in shown] == [g["label"] for g in groups[5:]]
    assert [g["label"] for g in shown_groups(groups, 10, "RUN1")] == \
           [f"run{i} (s{i:011d})" for i in (1, 10, 11, 12, 13, 14)]
    assert shown_groups(groups, 2, "s00000000003") == [groups[3]]


# ---- the page, in a browser -------------------------------------------------------------------


def chromium() -> Any:
    """A headless Chromium driven by selenium (Debian's chromium and chromium-driver, installed
    by .ci/system-packages.sh); the test skips, saying why, where there is none."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("no chromium and chromedriver: run .ci/system-packages.sh as root to install them")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,1300"):
        options.add_argument(argument)
    return webdriver.Chrome(service=webdriver.ChromeService(driver), options=options)


def in_page(browser: Any, name: str, expression: str) -> Any:
    """`expression` of the page's bokeh model named `name` (`m`), or None before it exists."""
    found = f"Bokeh.documents[0].get_model_by_name({json.dumps(name)})"
    return browser.execute_script(
        "try { const m = " + found + "; return m == null ? null : " + expression + " } catch (error) { return null }")


def page_shows(browser: Any, name: str, expression: str, wanted: Any, what: str) -> None:
    wait_until(lambda: in_page(browser, name, expression) == wanted, 60, what, every=0.2)


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):
    """A server with an embedded cluster that serves the dashboard (and knows its own API URL,
    the base of the page's links to logs and files)."""
    server = start_test_server(Settings(data_dir=tmp_path_factory.mktemp("explorer") / "d", port=0,
                                        dashboard_address="127.0.0.1:0"))
    assert server.running.service.api_url == server.url
    yield server
    stop_test_server(server)


def test_the_explorer_page_draws_every_run_and_follows_its_controls(dashboard_server, tmp_path):
    browser = chromium()
    server = dashboard_server
    try:
        created = server.http.post("/sweeps", json={
            "name": "squares", "command": SIMULATE,
            "variables": [{"name": "i", "range": {"start": 1, "stop": 20, "step": 1}},
                          {"name": "k", "values": ["a", "b"]}]})
        assert created.status_code == 201, created.text
        sweep = server.wait_sweep(created.json()["id"], timeout=120)
        dashboard = server.running.service.dashboard_link.rsplit("/", 1)[0]
        assert sweep["explorer"] == f"{dashboard}/jobs/sweep?id={sweep['id']}"
        browser.get(sweep["explorer"])
        page_shows(browser, "explorer-points", "m.data.x.length", 40, "a point per run")
        assert in_page(browser, "explorer-x-axis", "m.axis_label") == "i"
        assert sorted(in_page(browser, "explorer-points", "Array.from(m.data.y)")) == \
               sorted(float(i * i) for i in range(1, 21) for _ in "ab")
        assert in_page(browser, "explorer-histogram", "m.data.top.reduce((a, b) => a + b, 0)") == 40
        in_page(browser, "explorer-x", "m.value = 'k'")
        page_shows(browser, "explorer-x-axis", "m.axis_label", "k", "the x axis following the drop-down")
        page_shows(browser, "explorer-points", "Array.from(m.data.x).every(x => x == 0 || x == 1)", True,
                   "k's two values on the x axis")
        in_page(browser, "explorer-points", "m.selected.indices = [0, 1, 2]")  # as a box select does
        page_shows(browser, "explorer-rows", "m.data.c0.length", 3, "the selected runs in the table")
        links = in_page(browser, "explorer-links", "m.text")
        assert f"{server.url}/api/v1/jobs/" in links and "/logs" in links and "/files" in links
        brush = "{type: 'rect', sx0: 0, sx1: 1, sy0: 0, sy1: 1, x0: -0.2, x1: 0.2, y0: -0.05, y1: 0.5}"
        in_page(browser, "explorer-parallel",  # what a box drawn over axis i (1..20), lower half, sends
                f"m.trigger_event(new (Bokeh.require('core/bokeh_events').SelectionGeometry)({brush}, true))")
        page_shows(browser, "explorer-rows", "m.data.c0.length", 20, "the runs with i <= 10 (both k) listed")
        assert sorted(in_page(browser, "explorer-rows", "Array.from(m.data.c5)")) == sorted([*range(1, 11)] * 2)
        ARTIFACTS.mkdir(exist_ok=True)
        browser.save_screenshot(str(tmp_path / "explorer.png"))
        shutil.copy(tmp_path / "explorer.png", ARTIFACTS / "explorer.png")

        browser.get(f"{dashboard}/jobs")
        page_shows(browser, "jobs-chart", "m.above.some(a => a.name == 'jobs-legend')", True,
                   "the legend above the bars, outside the plot area")
        page_shows(browser, "jobs-explore", f"m.text.includes('jobs/sweep?id={sweep['id']}')", True,
                   "a link to the explorer")
        in_page(browser, "jobs-filter", "m.value_input = 'no such sweep'")
        page_shows(browser, "jobs-chart", "m.y_range.factors.length", 0, "the filter hiding the sweep")
        browser.save_screenshot(str(tmp_path / "jobs.png"))
    finally:
        browser.quit()


def test_the_explorer_page_shows_the_sobol_indices_of_a_saltelli_sweep(dashboard_server):
    browser = chromium()
    server = dashboard_server
    try:
        created = server.http.post("/sweeps", json={
            "name": "linear", "command": "awk -v a=${a} -v b=${b} 'BEGIN { printf \"{\\\"y\\\": %f}\", 3 * a + b }' > outputs.json",
            "variables": [{"name": "a", "uniform": {"low": 0, "high": 1}},
                          {"name": "b", "uniform": {"low": 0, "high": 1}}],
            "design": {"type": "saltelli", "samples": 16, "seed": 3}})
        assert created.status_code == 201, created.text
        sweep = server.wait_sweep(created.json()["id"], timeout=120)
        assert sweep["counts"] == {"COMPLETED": 96}, sweep
        browser.get(sweep["explorer"])
        page_shows(browser, "explorer-sobol", "m.data.value.length", 4, "S1 and ST of a and b")
        first, _, second, _ = in_page(browser, "explorer-sobol", "Array.from(m.data.value)")
        assert first > 0.5 > second  # y = 3a + b: a carries 9/10 of the variance (16 samples: noisy)
        assert in_page(browser, "explorer-sobol-figure", "m.visible") is True
    finally:
        browser.quit()


def test_the_explorer_page_follows_runs_as_they_end(dashboard_server, tmp_path):
    browser = chromium()
    gate = tmp_path / "gate"  # runs past the second wait for it
    command = f"if [ ${{i}} -gt 2 ]; then while [ ! -e {gate} ]; do sleep 0.05; done; fi; {SIMULATE}"
    try:
        sweep = create_sweep(dashboard_server.http, command, count=5)
        browser.get(sweep["explorer"])
        page_shows(browser, "explorer-points", "m.data.x.length", 2, "the two runs that ended")
        gate.touch()
        page_shows(browser, "explorer-points", "m.data.x.length", 5, "every run, once they ended")
        page_shows(browser, "explorer-heading", "m.text.includes('5 COMPLETED')", True, "the counts")
    finally:
        gate.touch()
        browser.quit()


def test_the_explorer_page_says_why_it_shows_nothing(dashboard_server):
    browser = chromium()
    try:
        dashboard = dashboard_server.running.service.dashboard_link.rsplit("/", 1)[0]
        browser.get(f"{dashboard}/jobs/sweep?id=snosuchsweep0")
        page_shows(browser, "explorer-heading", "m.text.includes('Waiting for the results')", True,
                   "the page waiting for rows")
        browser.get(f"{dashboard}/jobs/sweep")
        page_shows(browser, "explorer-heading", "m.text.includes('jobs/sweep?id=SWEEP_ID')", True,
                   "the page asking for a sweep")
    finally:
        browser.quit()


def test_the_explorer_of_a_scheduler_started_by_hand(tls_files, tmp_path):
    """`dask scheduler --preload orchestrator.plugins.dashboard` serves the page too."""
    browser = chromium()
    flags = ["--dashboard-address", f"127.0.0.1:{free_port()}", "--preload", "orchestrator.plugins.dashboard"]
    try:
        with real_cluster({"worker": ["--cores", "2"]}, tls_files, scheduler_flags=flags) as (address, _, _):
            server = start_test_server(Settings(data_dir=tmp_path / "d", port=0, scheduler=address,
                                                **tls_files.settings))
            try:
                sweep = server.wait_sweep(create_sweep(server.http, count=5)["id"])
                assert sweep["explorer"].endswith(f"/jobs/sweep?id={sweep['id']}")
                browser.get(sweep["explorer"])
                page_shows(browser, "explorer-points", "m.data.x.length", 5, "a point per run")
                page_shows(browser, "explorer-histogram-figure", "m.title.text.startsWith('mean 11, ')", True,
                           "the mean of 1, 4, 9, 16 and 25")
            finally:
                stop_test_server(server)
    finally:
        browser.quit()
