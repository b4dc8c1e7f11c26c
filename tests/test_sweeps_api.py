"""Sweeps end to end over real HTTP, on the real cluster, with real processes and files."""

from __future__ import annotations

import csv
import io
import json
import sys
import time

import psutil
import pytest

from tests.support import wait_until

SIM = """\
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--a", type=float)
parser.add_argument("--b", type=float)
args = parser.parse_args()
print("a*b =", args.a * args.b)
json.dump({"product": args.a * args.b, "label": f"{args.a:g}x{args.b:g}", "table": [1, 2]},
          open("outputs.json", "w"))
"""


def create_sweep(server, expect: int = 201, files: dict[str, bytes] | None = None, **spec) -> dict:
    if files:
        parts = [("file[]", (name, data)) for name, data in files.items()]
        response = server.http.post("/sweeps", data={"spec": json.dumps(spec)}, files=parts)
    else:
        response = server.http.post("/sweeps", json=spec)
    assert response.status_code == expect, response.text
    return response.json()


def wait_sweep(server, sweep_id: str, timeout: float = 60) -> dict:
    return server.wait_sweep(sweep_id, timeout)


def wait_for_counts(server, sweep_id: str, predicate, timeout: float = 30) -> dict:
    def matched() -> dict | None:
        sweep = server.http.get(f"/sweeps/{sweep_id}").json()
        return sweep if predicate(sweep["counts"]) else None

    return wait_until(matched, timeout, f"counts of sweep {sweep_id} matching", every=0.05)


def test_factorial_sweep_results_match_what_each_run_computed(server):
    sweep = create_sweep(
        server, files={"sim.py": SIM.encode()}, name="product",
        command=f"{sys.executable} sim.py --a ${{a}} --b ${{b}}",
        variables=[{"name": "a", "values": [1, 2, 3]},
                   {"name": "b", "linspace": {"start": 0.5, "stop": 1.5, "num": 3}}],
        design={"type": "full_factorial"},
    )
    assert sweep["runs"] == 9 and sweep["variables"] == ["a", "b"]
    done = wait_sweep(server, sweep["id"])
    assert done["status"] == "COMPLETED" and done["counts"] == {"COMPLETED": 9}
    assert done["progress"] == 1.0 and done["finished_at"]

    table = server.http.get(f"/sweeps/{sweep['id']}/results").json()
    assert table["columns"] == ["index", "job_id", "status", "exit_code", "duration_s",
                                "a", "b", "label", "product",  # the list output is not a scalar
                                "status_reason", "outputs_error"]  # why a cell may be blank
    pairs = {(row["a"], row["b"]) for row in table["rows"]}
    assert pairs == {(a, b) for a in (1, 2, 3) for b in (0.5, 1.0, 1.5)}
    for row in table["rows"]:
        assert row["status"] == "COMPLETED" and row["exit_code"] == 0
        assert row["product"] == pytest.approx(row["a"] * row["b"])
        job = server.http.get(f"/jobs/{row['job_id']}").json()
        assert job["sweep_id"] == sweep["id"] and job["index"] == row["index"]
        assert job["variables"] == {"a": row["a"], "b": row["b"]}
        assert job["env"]["a"] == str(row["a"]).removesuffix(".0") or job["env"]["a"] == str(row["a"])
    log = server.http.get(f"/jobs/{table['rows'][4]['job_id']}/logs").text
    assert log.strip() == f"a*b = {table['rows'][4]['a'] * table['rows'][4]['b']}"

    csv_text = server.http.get(f"/sweeps/{sweep['id']}/results", params={"format": "csv"}).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [float(r["product"]) for r in rows] == [r["product"] for r in table["rows"]]

    runs = server.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 4}).json()
    assert runs["count"] == 9 and [r["index"] for r in runs["results"]] == [0, 1, 2, 3]
    assert runs["next"]
    listed = server.http.get("/jobs", params={"sweep_id": sweep["id"]}).json()
    assert listed["count"] == 9
    finished = server.http.get(f"/sweeps/{sweep['id']}/finished").json()
    assert len(finished["results"]) == 9 and finished["cursor"] > 0
    later = server.http.get(f"/sweeps/{sweep['id']}/finished", params={"after": finished["cursor"]}).json()
    assert later["results"] == []


def test_templates_are_rendered_per_run_and_shown_by_dry_run(server):
    template = b"velocity ${u};\nname ${label};\nliteral $${u} and $HOME\n"
    spec = dict(
        command="cat 0/U > copy.txt", cases=[{"u": 10, "label": "low"}, {"u": 20.5, "label": "high"}],
        templates=[{"source": "U.tmpl", "target": "0/U"}],
    )
    preview = create_sweep(server, expect=200, files={"U.tmpl": template}, dry_run=True, **spec)
    assert preview["count"] == 2 and preview["variables"] == ["u", "label"]
    assert preview["runs"][1]["templates"]["0/U"] == "velocity 20.5;\nname high;\nliteral ${u} and $HOME\n"
    assert server.http.get("/sweeps").json()["count"] == 0  # a dry run records nothing

    sweep = create_sweep(server, files={"U.tmpl": template}, **spec)
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    for run in server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"]:
        copied = server.http.get(f"/jobs/{run['id']}/files/copy.txt").text
        assert copied == preview["runs"][run["index"]]["templates"]["0/U"]
        assert "U.tmpl" not in run["files"]  # the template source is not staged as a file


def test_dry_run_renders_commands_records_seed_and_is_reproducible(server):
    spec = dict(
        command="echo ${u} ${rho}",
        variables=[{"name": "u", "linspace": {"start": 10, "stop": 50, "num": 5}, "nominal": 30},
                   {"name": "rho", "normal": {"mean": 1.2, "std": 0.05}, "nominal": 1.2}],
        design={"type": "latin_hypercube", "samples": 20}, include_nominal_run=True, dry_run=True,
    )
    first = create_sweep(server, expect=200, **spec)
    assert first["count"] == 21 and isinstance(first["seed"], int)
    assert first["runs"][0]["variables"] == {"u": 30, "rho": 1.2}
    assert first["runs"][0]["command"] == "echo 30 1.2"
    spec["design"]["seed"] = first["seed"]
    again = create_sweep(server, expect=200, **spec)
    assert again["runs"] == first["runs"]
    assert server.http.get("/jobs").json()["count"] == 0

    spec["dry_run"] = False
    sweep = create_sweep(server, **spec)
    assert sweep["seed"] == first["seed"] and sweep["spec"]["design"]["seed"] == first["seed"]
    runs = server.http.get(f"/sweeps/{sweep['id']}/runs", params={"page_size": 100}).json()["results"]
    assert [r["variables"] for r in runs] == [r["variables"] for r in first["runs"]]
    assert [r["command"] for r in runs] == [r["command"] for r in first["runs"]]
    wait_sweep(server, sweep["id"])


def test_a_failing_run_fails_alone_and_the_sweep_reports_it(server):
    sweep = create_sweep(server, command="test ${x} -ne 2", variables=[{"name": "x", "values": [1, 2, 3]}])
    done = wait_sweep(server, sweep["id"])
    assert done["status"] == "FAILED" and done["counts"] == {"COMPLETED": 2, "FAILED": 1}
    rows = server.http.get(f"/sweeps/{sweep['id']}/results").json()["rows"]
    assert [(r["x"], r["status"], r["exit_code"]) for r in rows] == [
        (1, "COMPLETED", 0), (2, "FAILED", 1), (3, "COMPLETED", 0)]


def test_failed_runs_are_retried_inside_the_sweep(server, tmp_path):
    marker = tmp_path / "attempted"
    sweep = create_sweep(
        server, retries=1, variables=[{"name": "x", "values": [1]}],
        command=f"if [ -e {marker} ]; then echo ok; else touch {marker}; echo first >&2; exit 3; fi",
    )
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    run = server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"][0]
    assert run["attempt"] == 2
    assert server.http.get(f"/jobs/{run['id']}/logs", params={"stream": "stderr"}).text == ""
    reasons = [s["reason"] or "" for s in server.http.get(f"/jobs/{run['id']}/statuses").json()]
    assert any("exit code 3, retry 1/1" in r for r in reasons)


def test_stop_mid_sweep_stops_running_and_queued_runs(server):
    sweep = create_sweep(
        server, command="sleep 60 # ${i}", max_parallel=2,
        variables=[{"name": "i", "range": {"start": 1, "stop": 6, "step": 1}}],
    )
    wait_for_counts(server, sweep["id"], lambda c: c.get("RUNNING") == 2)
    table = server.http.get(f"/sweeps/{sweep['id']}/results").json()
    assert sorted(r["status"] for r in table["rows"]) == ["QUEUED"] * 4 + ["RUNNING"] * 2
    assert all(r["exit_code"] is None for r in table["rows"])  # correct while running

    started = time.monotonic()
    response = server.http.post(f"/sweeps/{sweep['id']}/stop")
    assert response.status_code == 202
    done = wait_sweep(server, sweep["id"], timeout=30)
    assert time.monotonic() - started < 15
    assert done["status"] == "STOPPED" and done["counts"] == {"STOPPED": 6}
    assert done["status_reason"].startswith("stop requested by")
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if "sleep 60 # " in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []


def test_max_failures_stops_the_rest(server):
    sweep = create_sweep(
        server, command="exit 1 # ${i}", max_parallel=1, max_failures=2,
        variables=[{"name": "i", "range": {"start": 0, "stop": 7, "step": 1}}],
    )
    done = wait_sweep(server, sweep["id"])
    assert done["status"] == "STOPPED"
    assert done["counts"]["FAILED"] >= 2 and done["counts"]["FAILED"] + done["counts"]["STOPPED"] == 8
    assert "max_failures" in done["status_reason"]


def test_a_malicious_value_is_one_argument_never_shell_code(server, tmp_path):
    canary = tmp_path / "pwned"
    evil = [f"1; touch {canary}", f"$(touch {canary})", f"`touch {canary}`", "a'b\"c", "x\ny"]
    sweep = create_sweep(server, command="printf '%s|' ${v} > out.txt",
                         cases=[{"v": value} for value in evil])
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    assert not canary.exists()
    for run in server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"]:
        out = server.http.get(f"/jobs/{run['id']}/files/out.txt").text
        assert out == evil[run["index"]] + "|"


def test_cases_from_an_uploaded_csv(server):
    csv_body = b"u,name\n1,one\n2.5,two\n"
    response = server.http.post(
        "/sweeps", data={"spec": json.dumps({"command": "echo ${u} ${name}"})},
        files=[("cases", ("cases.csv", csv_body))],
    )
    assert response.status_code == 201, response.text
    sweep = response.json()
    done = wait_sweep(server, sweep["id"])
    assert done["counts"] == {"COMPLETED": 2}
    rows = server.http.get(f"/sweeps/{sweep['id']}/results").json()["rows"]
    assert [(r["u"], r["name"]) for r in rows] == [(1, "one"), (2.5, "two")]


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"variables": [{"name": "u", "gaussian": {"mean": 1}}]}, "variables.0.gaussian"),
        ({"variables": [{"name": "u", "normal": {"mean": 1, "std": -1}}],
          "design": {"type": "monte_carlo", "samples": 5}}, "variables.0.normal.std"),
        ({"variables": [{"name": "u", "linspace": {"start": 0, "stop": 1, "num": 0}}]},
         "variables.0.linspace.num"),
        ({"variables": [{"name": "u", "uniform": {"low": 0, "high": 1}}],
          "design": {"type": "monte_carlo", "samples": 5000}}, "design.samples"),
        ({"variables": [{"name": "u", "uniform": {"low": 0, "high": 1}}],
          "design": {"type": "full_factorial"}}, "variables.0.uniform"),
        ({"variables": [{"name": "u", "values": list(range(100))},
                        {"name": "w", "values": list(range(100))}]}, "design"),
        ({"cases_csv": "u,v\n1,2\n3\n"}, "cases_csv.line.3"),
        ({"cases_csv": "u,,u\n1,2,3\n"}, "cases_csv.header.2"),
        ({"cases": [{"u": 1}, {"u": 2, "zz": 3}]}, "cases.1"),
        ({"command": "echo ${nope}", "cases": [{"u": 1}]}, "command"),
        ({"variables": [{"name": "PATH", "values": [1]}]}, "variables.0.name"),
        ({"variables": [{"name": "u", "range": {"start": 0, "stop": 1, "step": 0}}]}, "variables.0.range"),
        ({"variables": [{"name": "u", "values": [1]}], "design": {"type": "taguchi"}}, "design"),
        ({"cases": [{"u": 1}], "include_nominal_run": True}, "include_nominal_run"),
        ({"variables": [{"name": "u", "values": [1]}], "include_nominal_run": True}, "variables.0.nominal"),
        ({"cases": [{"u": 1}], "files": ["missing.py"]}, "files.0"),
        ({"cases": [{"u": 1}], "templates": [{"source": "nope.tmpl", "target": "x"}]},
         "templates.0.source"),
        ({"cases": [{"u": 1}], "templates": [{"source": "x", "target": "../escape"}]},
         "templates.0.target"),
    ],
)
def test_bad_specs_get_a_400_naming_the_problem(make_server, spec, field):
    server = make_server(max_sweep_runs=1000)
    body = {"command": "echo ${u}", **spec}
    response = server.http.post("/sweeps", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert any(key.startswith(field) for key in error["fields"]), error
    assert server.http.get("/jobs").json()["count"] == 0


def test_unknown_sweep_is_404(server):
    for path in ("", "/runs", "/results", "/finished"):
        response = server.http.get(f"/sweeps/nope{path}")
        assert response.status_code == 404, path
    assert server.http.post("/sweeps/nope/stop").status_code == 404
    assert server.http.get("/sweeps/x/results", params={"format": "xml"}).status_code in (400, 404)


def test_template_from_a_binary_and_variables_in_the_environment(server):
    upload = server.http.post("/binaries/settings.tmpl", content=b"speed=${u}\n",
                              headers={"Content-Type": "text/plain"})
    assert upload.status_code == 201, upload.text
    sweep = create_sweep(server, command='echo "$u" > env.txt; cat conf/settings > copy.txt',
                         variables=[{"name": "u", "values": [7, 8.5]}],
                         templates=[{"source": "settings.tmpl", "target": "conf/settings"}])
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    for run in server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"]:
        value = run["variables"]["u"]
        text = "7" if value == 7 else "8.5"
        assert server.http.get(f"/jobs/{run['id']}/files/env.txt").text == f"{text}\n"
        assert server.http.get(f"/jobs/{run['id']}/files/copy.txt").text == f"speed={text}\n"


@pytest.mark.parametrize("command", [
    "# don't forget the quote\nprintf '%s|' ${v} > out.txt",
    "cat > out.txt <<EOF\n${v}|\nEOF",
    "printf '%s|' \"$(printf '%s' ${v})\" > out.txt; echo \"`echo ${v}`\" > other.txt",
    "printf '%s|' '${v}' > out.txt",
])
def test_no_quoting_context_lets_a_value_run_as_code(server, tmp_path, command):
    canary = tmp_path / "pwned"
    evil = f"1; touch {canary}; echo '$(touch {canary})' \"`touch {canary}`\""
    sweep = create_sweep(server, command=command, cases=[{"v": evil}])
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    assert not canary.exists()
    run = server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"][0]
    out = server.http.get(f"/jobs/{run['id']}/files/out.txt").text
    if "$(" not in command:  # nested substitutions may split words, but never execute
        assert out.rstrip("\n") == evil + "|"


def test_numbers_work_in_shell_arithmetic(server):
    sweep = create_sweep(server, command="echo $((${i} * 3)) ${label} > out.txt",
                         cases=[{"i": 2, "label": "two words"}, {"i": -4, "label": "x"}])
    assert wait_sweep(server, sweep["id"])["status"] == "COMPLETED"
    runs = server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"]
    outs = [server.http.get(f"/jobs/{r['id']}/files/out.txt").text for r in runs]
    assert outs == ["6 two words\n", "-12 x\n"]


def test_stopping_a_fast_sweep_never_orphans_finished_work(server):
    sweep = create_sweep(server, command="echo ${i} > out.txt", max_parallel=2,
                         variables=[{"name": "i", "range": {"start": 0, "stop": 2999, "step": 1}}])
    wait_for_counts(server, sweep["id"], lambda c: c.get("COMPLETED", 0) >= 50)
    server.http.post(f"/sweeps/{sweep['id']}/stop")
    done = wait_sweep(server, sweep["id"])
    assert done["status"] == "STOPPED" and set(done["counts"]) <= {"COMPLETED", "STOPPED", "FAILED"}
    storage = server.settings.data_dir / "storage" / "jobs"
    for row in server.http.get(f"/sweeps/{sweep['id']}/results").json()["rows"]:
        stored = (storage / row["job_id"] / "outputs" / "out.txt").exists()
        listed = server.http.get(f"/jobs/{row['job_id']}/files").json()["count"] == 1
        assert stored == listed, row  # whatever a run left is in its record, nothing orphaned
        if row["status"] == "COMPLETED":
            assert listed, row


def test_an_unrecordable_output_fails_nothing_else(server):
    deep = "[" * 300 + "]" * 300
    sweep = create_sweep(server, command=f"echo '{{\"x\": {deep}, \"ok\": ${{i}}}}' > outputs.json",
                         variables=[{"name": "i", "values": [1, 2, 3]}], max_parallel=1)
    done = wait_sweep(server, sweep["id"])
    assert done["counts"] == {"COMPLETED": 3}
    run = server.http.get(f"/sweeps/{sweep['id']}/runs").json()["results"][0]
    assert run["result"]["outputs"] == {} and "nested deeper" in run["result"]["error"]


def test_a_dry_run_that_would_answer_too_much_is_refused(server):
    template = b"${u}" + b"x" * 2**20
    response = server.http.post(
        "/sweeps", files=[("file[]", ("big.tmpl", template))],
        data={"spec": json.dumps({"command": "true", "dry_run": True,
                                  "variables": [{"name": "u", "range": {"start": 1, "stop": 100, "step": 1}}],
                                  "templates": [{"source": "big.tmpl", "target": "big.txt"}]})},
    )
    assert response.status_code == 400, response.text
    assert "dry_run" in response.json()["error"]["fields"]


def test_the_results_table_explains_its_blank_cells(server):
    """A completed run whose outputs.json is invalid shows why its cells are blank, the sweep
    counts such runs, a stopped sweep's progress is what ran to an end, and the DataFrame's
    exit code stays an integer."""
    from orchestrator import Orchestrator

    created = server.http.post("/sweeps", json={
        "command": "if [ ${i} = 2 ]; then echo '{broken' > outputs.json; "
                   "else echo '{\"y\": ${i}}' > outputs.json; fi",
        "variables": [{"name": "i", "values": [1, 2, 3]}]})
    assert created.status_code == 201, created.text
    done = server.wait_sweep(created.json()["id"])
    assert done["counts"] == {"COMPLETED": 3} and done["output_problems"] == 1, done
    rows = {row["i"]: row for row in server.http.get(f"/sweeps/{done['id']}/results").json()["rows"]}
    assert rows[2]["y"] is None and "outputs.json is not valid JSON" in rows[2]["outputs_error"]
    assert rows[1]["y"] == 1 and rows[1]["outputs_error"] is None
    with Orchestrator.connect(server.url) as orch:
        assert str(orch.get_sweep(done["id"]).results()["exit_code"].dtype) == "Int64"
    stopped = server.http.post("/sweeps", json={"command": "sleep 30", "max_parallel": 1,
                                                "variables": [{"name": "i", "values": [1, 2, 3, 4]}]}).json()
    server.http.post(f"/sweeps/{stopped['id']}/stop")
    record = server.wait_sweep(stopped["id"])
    assert record["status"] == "STOPPED" and record["progress"] == 0.0, record


def test_running_counts_only_runs_that_run_now(server):
    """Runs batched several to a Dask task report their ends as they happen: with
    max_parallel=1 the sweep never shows more than one run RUNNING."""
    import time as clock

    created = server.http.post("/sweeps", json={
        "command": "sleep 0.15", "max_parallel": 1, "variables": [{"name": "i", "values": list(range(14))}]})
    assert created.status_code == 201, created.text
    sweep_id, most = created.json()["id"], 0
    deadline = clock.monotonic() + 60
    while clock.monotonic() < deadline:
        record = server.http.get(f"/sweeps/{sweep_id}").json()
        most = max(most, record["counts"].get("RUNNING", 0))
        if record["status"] == "COMPLETED":
            break
        clock.sleep(0.02)
    assert record["status"] == "COMPLETED" and record["counts"] == {"COMPLETED": 14}, record
    assert 1 <= most <= 1, most
    runs = server.http.get(f"/sweeps/{sweep_id}/runs", params={"page_size": 100}).json()["results"]
    for run in runs:
        statuses = [h["status"] for h in server.http.get(f"/jobs/{run['id']}/statuses").json()]
        assert statuses == ["CREATED", "QUEUED", "RUNNING", "COMPLETED"], statuses
