"""Spec files as engineers write them (orchestrator.client.sweeps.load_spec_file): YAML is read
as YAML 1.2, so numbers written as numbers are numbers, and the server answers a column of
numbers and text, or an empty cell in a cases CSV, with a 400 naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.client.sweeps import load_spec_file, read_yaml, validated
from orchestrator.errors import ValidationFailed

FAST = settings(max_examples=80, deadline=None)


@pytest.mark.parametrize(("text", "value"), [
    ("1e-8", 1e-8), ("1E-8", 1e-8), ("-1e3", -1000.0), ("+2.5e+3", 2500.0), ("1.0e8", 1e8),
    (".5", 0.5), ("5.", 5.0), ("4.7e-9", 4.7e-9), ("12", 12), ("-3", -3), ("010", 10),
    ("0o17", 15), ("0x1F", 31), ("true", True), ("False", False), ("~", None), ("null", None),
    (".inf", float("inf")), ("-.Inf", float("-inf")),
    # YAML 1.1 readings that YAML 1.2 drops: these stay as written
    ("yes", "yes"), ("off", "off"), ("1_000", "1_000"), ("1:20", "1:20"),
    ("2024-01-01", "2024-01-01"), ("'1e-8'", "1e-8"), ("0b101", "0b101"),
])
def test_yaml_scalars_are_read_as_yaml_1_2(text: str, value: Any) -> None:
    assert read_yaml(f"v: {text}") == {"v": value}
    assert type(read_yaml(f"v: {text}")["v"]) is type(value)


@FAST
@given(mantissa=st.integers(1, 9999), exponent=st.integers(-300, 300), dot=st.booleans(),
       sign=st.sampled_from(["", "-", "+"]))
def test_numbers_in_exponent_notation_are_floats(
    mantissa: int, exponent: int, dot: bool, sign: str
) -> None:
    """PyYAML's YAML 1.1 reads `1e-8` (no dot) and `1.0e8` (no exponent sign) as text."""
    written = f"{sign}{mantissa}{'.0' if dot else ''}e{exponent}"
    loaded = read_yaml(f"values: [{written}]")["values"][0]
    assert type(loaded) is float and loaded == float(written)


@FAST
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_any_float_python_writes_reads_back(value: float) -> None:
    assert read_yaml(f"v: {value!r}") == {"v": value}


def test_the_default_pyyaml_loader_is_left_alone() -> None:
    """Others in the process still get PyYAML's own reading."""
    read_yaml("v: 1e-8")
    assert yaml.safe_load("v: 1e-8") == {"v": "1e-8"}


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def test_a_yaml_spec_of_component_values_gives_numbers(tmp_path: Path) -> None:
    """The issue's spec: C was text and `df.R * df.C` gave '1e-81e-8...'."""
    spec, uploads = load_spec_file(write(tmp_path, "spec.yaml", (
        "command: echo ${R} ${C}\n"
        "variables:\n"
        "  - {name: R, values: [1e3, 2.2e3]}\n"
        "  - {name: C, values: [1e-8, 1e-7], nominal: 1e-8}\n"
        "  - {name: f, logspace: {start: 1e-9, stop: 1e-6, num: 4}}\n")))
    assert uploads == {}
    request = validated(spec)
    assert request.variables[0].values == [1000.0, 2200.0]
    assert request.variables[1].values == [1e-8, 1e-7] and request.variables[1].nominal == 1e-8
    assert request.variables[2].points() == [1e-9, 1e-8, 1e-7, 1e-6]


def test_a_mixed_column_in_a_yaml_spec_is_refused_naming_the_variable(tmp_path: Path) -> None:
    spec, _ = load_spec_file(write(tmp_path, "spec.yaml", (
        "command: echo ${C}\nvariables:\n  - {name: C, values: [1e-8, 1e-7, auto]}\n")))
    with pytest.raises(ValidationFailed) as caught:
        validated(spec)
    assert list(caught.value.fields) == ["variables.0.values"]
    assert caught.value.fields["variables.0.values"].startswith("C: values mix number")


def test_a_json_spec_and_relative_files(tmp_path: Path) -> None:
    write(tmp_path, "sim.py", "print(1)\n")
    write(tmp_path, "cases.csv", "x\n1\n2\n")
    write(tmp_path, "t.tmpl", "x=${x}\n")
    path = write(tmp_path, "spec.json", json.dumps({
        "command": "python sim.py ${x}", "files": ["sim.py"], "cases": "cases.csv",
        "templates": [{"source": "t.tmpl", "target": "t.txt"}, {"target": "no-source"}]}))
    spec, uploads = load_spec_file(path)
    assert spec["files"] == ["sim.py"] and spec["cases_csv"] == "x\n1\n2\n" and "cases" not in spec
    assert uploads == {"sim.py": tmp_path / "sim.py", "t.tmpl": tmp_path / "t.tmpl"}


@pytest.mark.parametrize(("name", "text", "says"), [
    ("spec.yaml", "command: [unclosed\n", "not valid YAML"),
    ("spec.yaml", "v: !!int abc\n", "not valid YAML"),
    ("spec.yaml", "v: !!python/object:os.system echo\n", "not valid YAML"),
    ("spec.json", "{nope", "not valid JSON"),
    ("spec.yaml", "- a list\n", "a mapping of fields"),
])
def test_unreadable_spec_files_say_which_file(tmp_path: Path, name: str, text: str, says: str) -> None:
    """A ValueError the CLI prints as `error: ...`, never a traceback."""
    path = write(tmp_path, name, text)
    with pytest.raises(ValueError, match=says) as caught:
        load_spec_file(path)
    assert str(path) in str(caught.value)


# ---- over REST ---------------------------------------------------------------------------


def post(server: Any, spec: dict[str, Any]) -> Any:
    return server.http.post("/sweeps", json={"command": "echo ${C}", "dry_run": True, **spec})


def test_rest_refuses_numbers_and_text_in_one_variable(server: Any) -> None:
    response = post(server, {"variables": [{"name": "C", "values": [1e-8, "1e-7", "auto"]}]})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert list(error["fields"]) == ["variables.0.values"]
    assert "C: values mix number (1e-08) and text ('auto')" in error["message"]


def test_rest_reads_numeric_text_among_numbers_as_numbers(server: Any) -> None:
    response = post(server, {"variables": [{"name": "C", "values": [1e-8, "1e-7"]},
                                           {"name": "n", "integer": {"low": 1, "high": 2}}]})
    assert response.status_code == 200, response.text
    assert [run["variables"] for run in response.json()["runs"]] == [
        {"C": 1e-8, "n": 1}, {"C": 1e-8, "n": 2}, {"C": 1e-7, "n": 1}, {"C": 1e-7, "n": 2}]


def test_rest_names_an_empty_cell_of_a_cases_csv(server: Any) -> None:
    """As JSON text and as the multipart `cases` file."""
    csv_text = "R,C\n1000,1e-8\n2200,\n"
    response = post(server, {"cases_csv": csv_text})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["fields"] == {
        "cases_csv.line.3.C": "line 3, column C is empty (run 1)"}
    multipart = server.http.post("/sweeps", data={"spec": json.dumps({"command": "echo ${C}"})},
                                 files=[("cases", ("cases.csv", csv_text.encode()))])
    assert multipart.status_code == 400, multipart.text
    assert "line 3, column C is empty" in multipart.json()["error"]["message"]


def test_rest_generators_of_the_issue_in_one_sampled_design(server: Any) -> None:
    response = post(server, {
        "command": "echo ${R} ${C} ${n} ${m} ${k}",
        "variables": [{"name": "R", "loguniform": {"low": 1e2, "high": 1e5}},
                      {"name": "C", "logspace": {"start": 1e-9, "stop": 1e-6, "num": 4}},
                      {"name": "n", "integer": {"low": 1, "high": 8}},
                      {"name": "m", "choice": {"values": ["fr4", "rogers"], "weights": [3, 1]}},
                      {"name": "k", "constant": {"value": 0.5}}],
        "design": {"type": "latin_hypercube", "samples": 40, "seed": 7}})
    assert response.status_code == 200, response.text
    rows = [run["variables"] for run in response.json()["runs"]]
    assert len(rows) == 40
    assert all(1e2 <= r["R"] <= 1e5 and r["C"] in (1e-9, 1e-8, 1e-7, 1e-6) and r["k"] == 0.5
               and isinstance(r["n"], int) and 1 <= r["n"] <= 8 and r["m"] in ("fr4", "rogers")
               for r in rows)
    assert sum(r["m"] == "fr4" for r in rows) == 30  # LHS: the weights exactly
