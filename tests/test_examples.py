"""The sweep example the README shows, run as a user would: CLI spec, curl-shaped
multipart request, and the Python script against a live server."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas

from orchestrator.cli import main
from tests.conftest import REPO

EXAMPLE = REPO / "examples" / "projectile"


def test_cli_runs_the_example_spec(server, capsys, tmp_path):
    url = ["--url", server.url]
    assert main(["sweep", *url, str(EXAMPLE / "spec.yaml"), "--dry-run", "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert preview["count"] == 41  # 5 speeds x 4 angles x 2 drags + the nominal run
    assert preview["runs"][0]["variables"] == {"speed": 30, "angle": 45, "drag": 0.0013}
    assert preview["runs"][0]["templates"]["params/drag.cfg"].splitlines()[1] == "drag = 0.0013"

    assert main(["sweep", *url, str(EXAMPLE / "spec.yaml"), "--watch", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["counts"] == {"COMPLETED": 41}
    target = tmp_path / "results.csv"
    assert main(["results", *url, record["id"], "--csv", str(target)]) == 0
    table = pandas.read_csv(target).set_index("index")
    assert (table["range_m"] > 0).all() and (table["flight_s"] > 0).all()
    # less drag flies further, everything else equal
    low = table[(table.speed == 50) & (table.angle == 45) & (table.drag == 0.0005)].range_m.item()
    high = table[(table.speed == 50) & (table.angle == 45) & (table.drag == 0.0013)].range_m.item()
    assert low > high
    run = server.http.get(f"/jobs/{table.loc[1, 'job_id']}/files").json()["results"]
    assert {f["path"] for f in run if f["kind"] == "output"} == {"trajectory.csv", "outputs.json"}
    assert {f["path"] for f in run if f["kind"] == "input"} == {"params/drag.cfg"}  # as the run saw it
    rendered = server.http.get(f"/jobs/{table.loc[1, 'job_id']}/files/params/drag.cfg").text
    assert rendered.splitlines()[1] == f"drag = {table.loc[1, 'drag']}"


def test_readme_multipart_dry_run(server):
    spec = {
        "name": "projectile", "command": "python simulate.py --speed ${speed} --angle ${angle}",
        "files": ["simulate.py"], "templates": [{"source": "drag.cfg.tmpl", "target": "params/drag.cfg"}],
        "variables": [{"name": "speed", "linspace": {"start": 10, "stop": 50, "num": 5}},
                      {"name": "angle", "uniform": {"low": 10, "high": 80}},
                      {"name": "drag", "normal": {"mean": 0.0013, "std": 0.0002}}],
        "design": {"type": "latin_hypercube", "samples": 40, "seed": 7},
        "max_parallel": 8, "max_failures": 5, "dry_run": True,
    }
    files = [("file[]", (name, (EXAMPLE / name).read_bytes())) for name in ("simulate.py", "drag.cfg.tmpl")]
    response = server.http.post("/sweeps", data={"spec": json.dumps(spec)}, files=files)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 40 and body["seed"] == 7
    assert all(10 <= run["variables"]["angle"] <= 80 for run in body["runs"])


def test_python_example_script_against_a_server(server, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "sweep.py"), server.url], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "longest flight" in done.stdout
    assert Path(tmp_path / "range_vs_angle.html").stat().st_size > 1000


def test_the_beam_study_reads_its_outputs_from_the_files_its_solver_writes(server, capsys, tmp_path):
    """examples/beam: declared outputs (a regex in a log, a CSV cell, a JSON path) instead of
    outputs.json, over generators engineers use (loguniform, choice); the numbers are checked
    against beam theory."""
    url = ["--url", server.url]
    assert main(["sweep", *url, str(REPO / "examples" / "beam" / "spec.yaml"), "--watch", "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["counts"] == {"COMPLETED": 12} and record["output_problems"] == 0, record
    target = tmp_path / "results.csv"
    assert main(["results", *url, record["id"], "--csv", str(target)]) == 0
    table = pandas.read_csv(target)
    inertia = 0.05 * 0.10**3 / 12
    for row in table.itertuples():
        assert 100 <= row.load <= 10000 and row.modulus in (70e9, 200e9)
        tip = row.load * row.length**3 / (3 * row.modulus * inertia)
        mid = row.load * (row.length / 2) ** 2 * (3 * row.length - row.length / 2) / (6 * row.modulus * inertia)
        assert abs(row.tip_m - tip) <= 1e-6 * tip and abs(row.mid_m - mid) <= 1e-6 * mid
        assert abs(row.stress_Pa - row.load * row.length * 0.05 / inertia) <= 1e-6 * row.stress_Pa


def test_the_python_app_fans_its_samples_out_across_the_cluster(server, tmp_path):
    """examples/python-app: an entry point whose job uses the cluster through get_client(); its
    Monte Carlo probability of failure agrees with the integral it estimates."""
    from scipy import integrate, stats

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "python-app" / "run.py"), server.url, "--samples", "2000000"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "design stress: {'stress_mpa': 200.0}" in done.stdout
    assert "failures in 2000000 samples over 20 tasks" in done.stdout
    job = server.http.get("/jobs", params={"search": "failure_probability"}).json()["results"][0]
    result = job["result"]["value"]
    sigma = math.sqrt(math.log(1 + 0.08**2))
    strength = stats.lognorm(s=sigma, scale=355.0 * math.exp(-sigma**2 / 2))
    load = stats.norm(80e3, 0.15 * 80e3)
    exact, _ = integrate.quad(lambda s: strength.pdf(s) * load.sf(s * 400.0), 0, 2000, points=[355.0], limit=200)
    assert result["ci95_low"] <= exact <= result["ci95_high"], (result, exact)
