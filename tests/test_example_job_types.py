"""The job-type example the README and examples/job-types/README.md show, run as its users
would against a live multi-user server: an administrator uploads stats.py and registers
csv-stats 1.0.0 from the example's manifest; alice runs it with the curl-shaped multipart
requests (one job, a declared error, a sweep over BINS), from Python and from the CLI, under
her own unprivileged uid."""

from __future__ import annotations

import csv
import json
import math
import statistics
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from orchestrator import JobStatus, Orchestrator
from orchestrator.cli import main
from tests.conftest import REPO
from tests.support import wait_until
from tests.support.tenants import Tenants, token_holders

EXAMPLE = REPO / "examples" / "job-types"
DATA = EXAMPLE / "tensile.csv"
CONFIGURATION = {"settings": {"DECIMALS": "3"}}
OUTPUT_COLUMNS = ("count", "skipped", "mean", "std", "min", "max")
WAIT_S = 60


@pytest.fixture
def users(server) -> Iterator[Tenants]:
    """The README's two token holders on the test server: root (an admin) and alice."""
    with token_holders(server, {"root": True, "alice": False}, timeout=WAIT_S + 30) as tenants:
        yield tenants


def expected(column: str) -> dict[str, Any]:
    """What csv-stats should report for a column of the sample data, read with the csv module."""
    values, skipped = [], 0
    with open(DATA, newline="") as handle:
        for row in csv.DictReader(handle):
            try:
                value = float(row[column])
            except ValueError:
                skipped += 1
                continue
            if math.isfinite(value):
                values.append(value)
            else:
                skipped += 1
    return {"count": len(values), "skipped": skipped, "mean": statistics.mean(values),
            "std": statistics.stdev(values), "min": min(values), "max": max(values)}


def registration() -> dict[str, Any]:
    """The body the READMEs' curl sends: the example's manifest and its configuration."""
    return {"manifest": json.loads((EXAMPLE / "manifest.json").read_text()), "configuration": CONFIGURATION}


def register(admin: httpx.Client) -> dict[str, Any]:
    """`curl --data-binary @stats.py .../binaries/stats.py`, then POST /job-types."""
    uploaded = admin.post("/binaries/stats.py", content=(EXAMPLE / "stats.py").read_bytes(),
                          headers={"Content-Type": "text/x-python"})
    assert uploaded.status_code == 201, uploaded.text
    created = admin.post("/job-types", json=registration())
    assert created.status_code == 201, created.text
    assert created.headers["Location"] == "/api/v1/job-types/csv-stats/1.0.0"
    return created.json()


def run(client: httpx.Client, inputs: dict[str, Any], sync: bool = True) -> httpx.Response:
    """`curl -F job_type=csv-stats@1.0.0 -F 'inputs={...}' -F 'file[]=@tensile.csv'`."""
    params = {"sync": "true", "timeout": WAIT_S} if sync else {}
    return client.post("/jobs", params=params,
                       data={"job_type": "csv-stats@1.0.0", "inputs": json.dumps(inputs)},
                       files=[("file[]", ("tensile.csv", DATA.read_bytes(), "text/csv"))])


def declared_outputs(result: dict[str, Any]) -> dict[str, Any]:
    return {name: result["outputs"][name] for name in OUTPUT_COLUMNS}


def assert_statistics(outputs: dict[str, Any], column: str) -> None:
    want = expected(column)
    assert (outputs["count"], outputs["skipped"]) == (want["count"], want["skipped"])
    assert isinstance(outputs["count"], int) and isinstance(outputs["skipped"], int)
    for name in ("mean", "std", "min", "max"):
        assert outputs[name] == pytest.approx(want[name], rel=1e-12), name


def histogram_counts(text: str) -> list[int]:
    """The count on each bin line of histogram.txt (its first line is a comment)."""
    return [int(line.split()[2]) for line in text.splitlines() if line.startswith("[")]


# ---- the curl walk-through ---------------------------------------------------------------------


def test_register_validate_and_run_one_job(users: Tenants):
    root, alice = users["root"], users["alice"]
    uploaded = root.post("/binaries/stats.py", content=(EXAMPLE / "stats.py").read_bytes(),
                         headers={"Content-Type": "text/x-python"})
    assert uploaded.status_code == 201 and uploaded.json()["version"] == 1, uploaded.text

    report = root.post("/job-types/validation", json=registration())
    assert report.status_code == 200, report.text
    assert report.json() == {"is_valid": True, "errors": [], "warnings": []}
    bare = root.post("/job-types/validation", json={"manifest": registration()["manifest"]}).json()
    assert bare["is_valid"] is True and [w["name"] for w in bare["warnings"]] == ["MISSING_SETTING"]
    assert root.get("/job-types/csv-stats/1.0.0").status_code == 404  # validation saves nothing

    created = root.post("/job-types", json=registration())
    assert created.status_code == 201, created.text
    details = created.json()
    assert (details["name"], details["version"], details["revision_num"]) == ("csv-stats", "1.0.0", 1)
    assert details["manifest"]["job"]["binaries"] == ["root/stats.py@1"]  # pinned at registration
    assert alice.post("/job-types", json=registration()).status_code == 403  # only admins register
    assert [row["name"] for row in alice.get("/job-types").json()["results"]] == ["csv-stats"]

    response = run(alice, {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": "yield_mpa", "BINS": 6}})
    assert response.status_code == 201, response.text
    job = response.json()
    assert job["status"] == "COMPLETED", job
    assert job["kind"] == "job_type" and job["owner"] == "alice"
    assert job["job_type"] == {"name": "csv-stats", "version": "1.0.0", "revision": 1}
    assert job["timeout_s"] == 300 and job["resources"]["memory"] == 256 * 2**20
    assert job["env"]["DECIMALS"] == "3"

    result = alice.get(f"/jobs/{job['id']}/result").json()
    assert result["exit_code"] == 0
    assert_statistics(declared_outputs(result), "yield_mpa")
    assert result["outputs"]["SUMMARY"]["path"] == "summary.csv"
    assert result["outputs"]["HISTOGRAM"]["path"] == "histogram.txt"

    histogram = alice.get(f"/jobs/{job['id']}/files/histogram.txt").text
    counts = histogram_counts(histogram)
    assert len(counts) == 6 and sum(counts) == result["outputs"]["count"]
    summary = dict(csv.reader(alice.get(f"/jobs/{job['id']}/files/summary.csv").text.splitlines()))
    assert summary["column"] == "yield_mpa" and summary["count"] == str(result["outputs"]["count"])
    assert summary["mean"] == f"{result['outputs']['mean']:.3f}"  # DECIMALS from the configuration
    files = {f["path"] for f in alice.get(f"/jobs/{job['id']}/files").json()["results"]}
    assert files == {"summary.csv", "histogram.txt", "seed.outputs.json"}  # inputs are not outputs


def test_bins_defaults_and_bad_inputs_are_refused_naming_them(users: Tenants):
    register(users["root"])
    alice = users["alice"]
    job = run(alice, {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": "uts_mpa"}}).json()
    assert job["status"] == "COMPLETED", job
    assert job["inputs"]["json"] == {"COLUMN": "uts_mpa", "BINS": 10}
    assert len(histogram_counts(alice.get(f"/jobs/{job['id']}/files/histogram.txt").text)) == 10
    assert_statistics(job["result"]["outputs"], "uts_mpa")

    refused = run(alice, {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": "uts_mpa", "BINS": "six"}})
    assert refused.status_code == 400
    assert refused.json()["error"]["fields"] == {"inputs.json.BINS": "input BINS must be an integer, not string"}
    missing = run(alice, {"files": {"DATA": ["tensile.csv"]}})
    assert missing.status_code == 400 and "inputs.json.COLUMN" in missing.json()["error"]["fields"]


@pytest.mark.parametrize(("column", "bins", "code", "reason", "error", "message"), [
    ("hardness", 10, 3, "error 3 (data): Column not found", "column-missing",
     "column 'hardness' is not in tensile.csv (specimen, batch, yield_mpa"),
    ("specimen", 10, 4, "error 4 (data): No numeric values", "no-numeric-values",
     "column 'specimen' holds no numeric value (20 cells skipped)"),
    ("yield_mpa", 0, 5, "error 5 (data): Invalid number of bins", "invalid-bins",
     "BINS must be between 1 and 1000, not 0"),
])
def test_a_declared_error_fails_the_job_with_its_name(users: Tenants, column, bins, code, reason, error, message):
    register(users["root"])
    alice = users["alice"]
    job = run(alice, {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": column, "BINS": bins}}).json()
    assert job["status"] == "FAILED", job
    assert job["status_reason"] == reason
    assert job["result"]["exit_code"] == code and job["result"]["error"] == error
    assert message in alice.get(f"/jobs/{job['id']}/logs", params={"stream": "stderr"}).text


def test_a_sweep_over_bins(users: Tenants):
    register(users["root"])
    alice = users["alice"]
    spec = {"name": "yield-bins", "job_type": "csv-stats@1.0.0",
            "inputs": {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": "yield_mpa"}},
            "variables": [{"name": "BINS", "values": [5, 20]}]}
    created = alice.post("/sweeps", data={"spec": json.dumps(spec)},
                         files=[("file[]", ("tensile.csv", DATA.read_bytes(), "text/csv"))])
    assert created.status_code == 201, created.text
    assert created.json()["kind"] == "job_type" and created.json()["runs"] == 2
    sweep = alice.get(f"/sweeps/{created.json()['id']}", params={"wait": WAIT_S}).json()
    assert sweep["status"] == "COMPLETED" and sweep["counts"] == {"COMPLETED": 2}, sweep

    table = alice.get(f"/sweeps/{sweep['id']}/results").json()
    assert {"BINS", *OUTPUT_COLUMNS} <= set(table["columns"])
    assert "SUMMARY" not in table["columns"] and "HISTOGRAM" not in table["columns"]
    rows = sorted(table["rows"], key=lambda row: row["index"])
    assert [row["BINS"] for row in rows] == [5, 20]
    for row in rows:
        assert row["status"] == "COMPLETED"
        assert_statistics(row, "yield_mpa")
        histogram = alice.get(f"/jobs/{row['job_id']}/files/histogram.txt").text
        assert len(histogram_counts(histogram)) == row["BINS"]
    text = alice.get(f"/sweeps/{sweep['id']}/results", params={"format": "csv"}).text
    assert text.splitlines()[0].startswith("index,job_id,status,exit_code,duration_s,BINS,")


def test_pause_holds_new_jobs_until_resumed(users: Tenants):
    root, alice = users["root"], users["alice"]
    register(root)
    paused = root.patch("/job-types/csv-stats/1.0.0", json={"is_paused": True})
    assert paused.status_code == 200 and paused.json()["is_paused"] is True
    assert alice.patch("/job-types/csv-stats/1.0.0", json={"is_paused": False}).status_code == 403
    job = run(alice, {"files": {"DATA": ["tensile.csv"]}, "json": {"COLUMN": "uts_mpa"}}, sync=False).json()
    held = wait_until(lambda: (j := alice.get(f"/jobs/{job['id']}").json())["status_reason"] and j,
                      20, "the job held")
    assert held["status"] == "QUEUED" and held["status_reason"] == "job type csv-stats 1.0.0 is paused"
    resumed = root.patch("/job-types/csv-stats/1.0.0", json={"is_paused": False, "max_scheduled": 4})
    assert resumed.json()["is_paused"] is False and resumed.json()["max_scheduled"] == 4
    done = alice.get(f"/jobs/{job['id']}", params={"wait": WAIT_S}).json()
    assert done["status"] == "COMPLETED", done


# ---- the same from Python and the command line -------------------------------------------------


def test_python_api(users: Tenants, tmp_path):
    with Orchestrator.connect(users.server.url, token=users.tokens["root"]) as admin:
        admin.upload_binary("stats.py", EXAMPLE / "stats.py")
        assert admin.job_types.validate(EXAMPLE / "manifest.json", CONFIGURATION).is_valid
        assert admin.job_types.create(EXAMPLE / "manifest.json", CONFIGURATION).revision_num == 1
    with Orchestrator.connect(users.server.url, token=users.tokens["alice"]) as orch:
        job = orch.run("csv-stats@1.0.0", {"COLUMN": "uts_mpa", "BINS": 8}, files={"DATA": DATA}, wait=WAIT_S)
        assert job.record.status == JobStatus.COMPLETED, job.record.status_reason
        outputs = job.result().outputs
        assert_statistics(outputs, "uts_mpa")
        assert outputs["mean"] == pytest.approx(315.375)
        histogram = job.download("histogram.txt", tmp_path / "out").read_text()
        assert len(histogram_counts(histogram)) == 8


def test_cli(users: Tenants, capsys):
    admin = ["--url", users.server.url, "--token", users.tokens["root"]]
    alice = ["--url", users.server.url, "--token", users.tokens["alice"]]
    assert main(["upload", str(EXAMPLE / "stats.py"), *admin]) == 0
    manifest = str(EXAMPLE / "manifest.json")
    assert main(["job-type", "validate", manifest, "--setting", "DECIMALS=3", *admin]) == 0
    assert main(["job-type", "create", manifest, "--setting", "DECIMALS=3", *admin]) == 0
    assert "csv-stats@1.0.0: revision 1" in capsys.readouterr().out
    done = main(["run", "csv-stats@1.0.0", "--input", "COLUMN=elongation_pct", "--input", "BINS=5",
                 "--file", f"DATA={DATA}", "--wait", "--json", *alice])
    record = json.loads(capsys.readouterr().out)
    assert done == 0 and record["status"] == "COMPLETED", record
    assert_statistics(record["result"]["outputs"], "elongation_pct")
