"""A sweep's results read in pages: GET /sweeps/{id}/results?after=&limit= answers slices in
index order with the cursor to pass next, and Sweep.results() assembles its DataFrame from
pages (embedded and remote) exactly as the whole table reads, while iter_results() yields it
a page at a time. as_completed() reads finished runs in bounded pages too."""

from __future__ import annotations

import csv
import io
import json
import math

import pandas
import pyarrow.parquet as pq
import pytest
from pandas.testing import assert_frame_equal

from orchestrator import JobStatus, Orchestrator, ValidationFailed
from orchestrator.sweep_models import RESULTS_PAGE_MAX, ResultsTable

RUNS = 300
PAGE = 32


def outputs_of(i: int) -> dict:
    """Outputs that make paging hard: a column on a few pages only, one only on the last page
    (and named `outputs.status`: a fixed column has its name), ints becoming text mid-table,
    booleans with blanks, a float column with blanks."""
    outputs: dict = {"y": i, "mixed": i if i < 150 else f"t{i}"}
    if i % 50 == 0:
        outputs["w"] = 1.5 * i
    if i % 2 == 0:
        outputs["flag"] = True
    if i >= 280:
        outputs["late"] = "x"
    if i == RUNS - 1:
        outputs["status"] = 1
    return outputs


def compute(i: int) -> dict:
    if i == 7:
        raise RuntimeError("seven")
    return outputs_of(i)


def whole_frame(table: ResultsTable) -> pandas.DataFrame:
    """The DataFrame as Sweep.results() built it from the whole table in one answer."""
    frame = pandas.DataFrame(table.rows, columns=table.columns)
    frame["exit_code"] = frame["exit_code"].astype("Int64")
    return frame.set_index("index")


def shell_sweep(server) -> str:
    cases = [{"i": i, "out": json.dumps(outputs_of(i)), "code": 3 if i == 7 else 0} for i in range(RUNS)]
    created = server.http.post("/sweeps", json={
        "command": "printf '%s' ${out} > outputs.json; exit ${code}", "cases": cases})
    assert created.status_code == 201, created.text
    done = server.wait_sweep(created.json()["id"], timeout=300)
    assert done["counts"] == {"COMPLETED": RUNS - 1, "FAILED": 1}, done
    return done["id"]


def test_pages_follow_the_cursor_to_the_end_and_match_the_whole_table(server):
    sweep_id = shell_sweep(server)
    path = f"/sweeps/{sweep_id}/results"
    whole = server.http.get(path).json()
    assert whole["next"] is None and len(whole["rows"]) == RUNS
    assert whole["outputs"]["outputs.status"] == "status" and whole["outputs"]["y"] == "y"

    rows, after, answers = [], None, 0
    while True:
        params = {"limit": PAGE, **({"after": after} if after is not None else {})}
        response = server.http.get(path, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        answers += 1
        indexes = [row["index"] for row in page["rows"]]
        assert indexes == list(range(0 if after is None else after + 1, indexes[-1] + 1))
        assert len(indexes) == PAGE or page["next"] is None
        for row in page["rows"]:  # a page names the outputs its own runs report
            assert set(row) == set(page["columns"])
            rows.append({**{c: None for c in whole["columns"]},
                         **{whole_name(whole, page, c): v for c, v in row.items()}})
        if page["next"] is None:
            assert "link" not in response.headers
            break
        assert page["next"] == indexes[-1]
        assert f"after={page['next']}&limit={PAGE}" in response.headers["link"]
        after = page["next"]
    assert answers == math.ceil(RUNS / PAGE)
    assert rows == whole["rows"]

    late = server.http.get(path, params={"after": 280, "limit": PAGE}).json()
    assert [r["index"] for r in late["rows"]] == list(range(281, RUNS)) and late["next"] is None
    assert "late" in late["columns"] and "outputs.status" in late["columns"]
    early = server.http.get(path, params={"limit": PAGE}).json()
    assert "late" not in early["columns"] and "outputs.status" not in early["columns"]
    exact = server.http.get(path, params={"limit": RUNS}).json()  # no empty page after the last
    assert len(exact["rows"]) == RUNS and exact["next"] is None
    one_short = server.http.get(path, params={"limit": RUNS - 1}).json()
    assert one_short["next"] == RUNS - 2
    assert [r["index"] for r in server.http.get(path, params={"after": RUNS - 2}).json()["rows"]] == [RUNS - 1]
    rest = server.http.get(path, params={"after": 9}).json()  # after alone: a default-sized page
    assert len(rest["rows"]) == RUNS - 10 and rest["next"] is None
    beyond = server.http.get(path, params={"after": 10**6}).json()
    assert beyond["rows"] == [] and beyond["next"] is None


def whole_name(whole: dict, page: dict, column: str) -> str:
    """The whole table's name of a page's column (the same but where naming depends on keys
    other pages report)."""
    key = page["outputs"].get(column)
    if key is None:
        return column
    return next(c for c, k in whole["outputs"].items() if k == key)


def test_pages_as_csv_and_parquet_and_bad_cursors_are_400s_naming_the_field(server):
    sweep_id = shell_sweep(server)
    path = f"/sweeps/{sweep_id}/results"
    text = server.http.get(path, params={"format": "csv", "after": 99, "limit": 10})
    assert text.status_code == 200 and "after=109&limit=10" in text.headers["link"]
    assert [int(r["index"]) for r in csv.DictReader(io.StringIO(text.text))] == list(range(100, 110))
    parquet = server.http.get(path, params={"format": "parquet", "limit": 5})
    assert pq.read_table(io.BytesIO(parquet.content)).column("index").to_pylist() == [0, 1, 2, 3, 4]

    for params, field in (({"after": -1}, "after"), ({"after": "x"}, "after"), ({"limit": 0}, "limit"),
                          ({"limit": RESULTS_PAGE_MAX + 1}, "limit"), ({"limit": "ten"}, "limit"),
                          ({"after": 2**70}, "after")):
        response = server.http.get(path, params=params)
        assert response.status_code == 400, (params, response.text)
        assert field in response.json()["error"]["fields"], response.text
    assert server.http.get("/sweeps/snope/results", params={"limit": 5}).status_code == 404

    with Orchestrator.connect(server.url) as remote:
        sweep = remote.get_sweep(sweep_id)
        paged = sweep.results(page_size=PAGE)
        assert_frame_equal(paged, whole_frame(remote._backend.sweep_results(sweep_id)), check_index_type=True)
        assert_frame_equal(sweep.results(), paged)  # the default: one page of 10,000
        assert str(paged["exit_code"].dtype) == "Int64" and paged.loc[7, "exit_code"] == 3
        assert paged.loc[RUNS - 1, "outputs.status"] == 1 and math.isnan(paged.loc[0, "outputs.status"])
        assert paged.loc[10, "mixed"] == 10 and paged.loc[200, "mixed"] == "t200"
        assert_pages(list(sweep.iter_results(page_size=100)), paged, 100)
        with pytest.raises(ValidationFailed) as info:
            sweep.results(page_size=0)
        assert "page_size" in info.value.fields


def assert_pages(frames: list[pandas.DataFrame], whole: pandas.DataFrame, size: int) -> None:
    """iter_results' frames: consecutive pages of `size` rows whose cells are results()'s."""
    assert [len(f) for f in frames] == [min(size, RUNS - start) for start in range(0, RUNS, size)]
    assert list(pandas.concat([f.index.to_series() for f in frames])) == list(whole.index)
    for frame in frames:
        assert {"job_id", "status", "exit_code", "i", "y"} <= set(frame.columns)
        for column in frame.columns:
            assert frame[column].astype(object).equals(whole.loc[frame.index, column].astype(object)), column


@pytest.fixture
def embedded(tmp_path, dask_cluster):
    with Orchestrator(data_dir=tmp_path / "embedded", **dask_cluster.settings) as orch:
        yield orch


def test_embedded_results_from_pages_equal_the_whole_read(embedded):
    sweep = embedded.sweep(compute, variables={"i": list(range(RUNS))})
    assert sweep.wait(timeout=120).counts == {"COMPLETED": RUNS - 1, "FAILED": 1}
    paged = sweep.results(page_size=PAGE)
    assert_frame_equal(paged, whole_frame(embedded._backend.sweep_results(sweep.id)), check_index_type=True)
    assert len(paged) == RUNS and paged.loc[7, "status"] == "FAILED"
    assert paged["y"].dtype == "float64" and paged.loc[299, "late"] == "x"  # y: blank for run 7
    assert_pages(list(sweep.iter_results(page_size=PAGE)), paged, PAGE)
    page = embedded._backend.sweep_results_page(sweep.id, 31, PAGE)
    assert [row["index"] for row in page.rows] == list(range(32, 64)) and page.next == 63


def test_as_completed_reads_bounded_pages_and_yields_each_run_once(embedded, server):
    sweep = embedded.sweep(compute, variables={"i": list(range(1100))})  # more than one page
    seen = [job.record.index for job in sweep.as_completed(timeout=120)]
    assert sorted(seen) == list(range(1100))
    page = embedded._backend.sweep_finished(sweep.id, 0)
    assert len(page.results) == 1000 and page.cursor > 0
    assert len(embedded._backend.sweep_finished(sweep.id, page.cursor).results) == 100

    too_many = server.http.get("/sweeps/snope/finished", params={"limit": 1001})
    assert too_many.status_code == 400 and "limit" in too_many.json()["error"]["fields"]
    with Orchestrator.connect(server.url) as remote:
        shell = remote.sweep("true", variables={"i": list(range(20))})
        finished = list(shell.as_completed(timeout=120))
        assert sorted(job.record.index for job in finished) == list(range(20))
        assert all(job.record.status == JobStatus.COMPLETED for job in finished)
