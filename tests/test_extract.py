"""Declared outputs read from a run's files (orchestrator/worker/extract.py), on real files in
a tmp folder: regex, CSV and JSON sources, types, required and optional outputs, and the
safety rules (no link followed, owner checked, size bounded)."""

from __future__ import annotations

import json
import os

import pytest

from orchestrator.worker import extract
from orchestrator.worker.extract import MAX_FILE_BYTES, merge, read_declared
from orchestrator.worker.extract import extract as extract_values

LOG = """\
step 1 fc = 1.5 t = 0.1
step 2 fc = 2.25 t = 0.2
note: something
step 3 fc = -3.0e-2 t = 0.3
final count 42
"""
CSV = "a, lift ,label\n1,0.5,x\n2,0.75,y\n\n3,1.25,z\n"
JSON = {"forces": {"drag": 0.031, "lift": 7, "name": "wing", "ok": True, "none": None},
        "runs": [{"t": 1.5}, {"t": 2}, {"t": "3.5"}], "big": 1e308}


def out(name: str, file: str, **source) -> dict:
    return {"name": name, "file": file, "row": None, "type": "number", "required": False,
            "regex": None, "column": None, "json_path": None, **source}


@pytest.fixture
def workdir(tmp_path):
    folder = tmp_path / "work"
    (folder / "results").mkdir(parents=True)
    (folder / "run.log").write_text(LOG)
    (folder / "results" / "lift.csv").write_text(CSV)
    (folder / "out.json").write_text(json.dumps(JSON))
    return folder


def values(workdir, *declared, owner_uid=None) -> dict:
    found = read_declared(workdir, list(declared), owner_uid)
    assert not found.failures and not found.problems, (found.failures, found.problems)
    return found.values


def problems(workdir, *declared) -> list[str]:
    found = read_declared(workdir, list(declared), None)
    return found.failures + found.problems


# ---- regex -----------------------------------------------------------------------------


def test_the_last_match_of_a_regex_wins_and_its_group_is_the_value(workdir):
    assert values(workdir, out("fc", "run.log", regex=r"fc\s*=\s*([-+0-9.eE]+)"),
                  out("t", "run.log", regex=r"t = (\S+)$")) == {"fc": -0.03, "t": 0.3}


def test_a_regex_without_a_group_gives_its_whole_match(workdir):
    assert values(workdir, out("count", "run.log", regex=r"\d+$", type="number"),
                  out("note", "run.log", regex=r"^note: \w+", type="string")) == {
        "count": 42, "note": "note: something"}


def test_an_integer_stays_an_integer_and_other_numbers_are_floats(workdir):
    found = values(workdir, out("n", "run.log", regex=r"count (\d+)"),
                   out("step", "run.log", regex=r"^step (\d+)"),
                   out("x", "run.log", regex=r"fc = (2\.25)"))
    assert found == {"n": 42, "step": 3, "x": 2.25}
    assert isinstance(found["n"], int) and isinstance(found["x"], float)


def test_a_regex_with_no_match_names_the_output_the_regex_and_the_file(workdir):
    assert problems(workdir, out("t_end", "run.log", regex=r"t_end = (\S+)")) == [
        r"output t_end: no match for regex 't_end = (\\S+)' in run.log"]


def test_text_that_is_not_a_number_is_refused_as_a_number_but_kept_as_a_string(workdir):
    assert problems(workdir, out("fc", "run.log", regex=r"note: (\w+)")) == [
        "output fc: 'something' in run.log is not a number"]
    assert values(workdir, out("fc", "run.log", regex=r"note: (\w+)", type="string")) == {"fc": "something"}


@pytest.mark.parametrize("text", ["nan", "inf", "-Infinity", "1e999", "1_000", "0x10", "1,5", ""])
def test_nan_infinities_and_odd_numbers_are_refused(workdir, text):
    (workdir / "v.txt").write_text(f"v={text}\n")
    found = read_declared(workdir, [out("v", "v.txt", regex=r"v=(.*)$")], None)
    assert found.values == {} and len(found.problems) == 1
    assert found.problems[0].startswith("output v: ") and "in v.txt is not a" in found.problems[0]


def test_a_regex_group_that_took_no_part_gives_no_value(workdir):
    assert "took no part" in problems(workdir, out("x", "run.log", regex=r"final (?:count|(size)) "))[0]


# ---- CSV ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("row", "expected"), [(-1, 1.25), (0, 0.5), (1, 0.75), (2, 1.25), (-3, 0.5)])
def test_a_csv_column_by_header_name_and_row(workdir, row, expected):
    assert values(workdir, out("lift", "results/lift.csv", column="lift", row=row)) == {"lift": expected}


def test_a_csv_cell_as_a_string_and_an_integer(workdir):
    assert values(workdir, out("label", "results/lift.csv", column="label", type="string"),
                  out("a", "results/lift.csv", column="a", row=0)) == {"label": "z", "a": 1}


def test_a_missing_column_lists_the_columns_there_are(workdir):
    assert problems(workdir, out("drag", "results/lift.csv", column="drag")) == [
        "output drag: results/lift.csv has no column 'drag' (columns: a, lift, label)"]


def test_a_row_past_the_end_and_an_empty_cell_are_reported(workdir):
    (workdir / "short.csv").write_text("a,b\n1,\n2\n")
    assert problems(workdir, out("x", "results/lift.csv", column="a", row=3),
                    out("y", "results/lift.csv", column="a", row=-4),
                    out("b0", "short.csv", column="b", row=0),
                    out("b1", "short.csv", column="b", row=1)) == [
        "output x: results/lift.csv has 3 data row(s); there is no row 3",
        "output y: results/lift.csv has 3 data row(s); there is no row -4",
        "output b0: row 0 of short.csv has no value in column 'b'",
        "output b1: row 1 of short.csv has no value in column 'b'",
    ]


def test_an_empty_csv_file_is_reported(workdir):
    (workdir / "empty.csv").write_text("\n\n")
    assert problems(workdir, out("x", "empty.csv", column="a")) == ["output x: empty.csv is empty"]


# ---- JSON --------------------------------------------------------------------------------


def test_json_paths_through_objects_and_lists(workdir):
    assert values(
        workdir, out("drag", "out.json", json_path="forces.drag"), out("lift", "out.json", json_path="forces.lift"),
        out("t0", "out.json", json_path="runs.0.t"), out("t_last", "out.json", json_path="runs.-2.t"),
        out("t_text", "out.json", json_path="runs.2.t"), out("big", "out.json", json_path="big"),
    ) == {"drag": 0.031, "lift": 7, "t0": 1.5, "t_last": 2, "t_text": 3.5, "big": 1e308}


def test_json_values_as_strings(workdir):
    assert values(
        workdir, out("name", "out.json", json_path="forces.name", type="string"),
        out("lift", "out.json", json_path="forces.lift", type="string"),
        out("ok", "out.json", json_path="forces.ok", type="string"),
    ) == {"name": "wing", "lift": "7", "ok": "true"}


def test_a_json_path_not_found_and_values_of_the_wrong_kind(workdir):
    assert problems(
        workdir, out("drag", "out.json", json_path="forces.dreg"), out("t", "out.json", json_path="runs.3.t"),
        out("k", "out.json", json_path="runs.x"), out("ok", "out.json", json_path="forces.ok"),
        out("f", "out.json", json_path="forces"), out("n", "out.json", json_path="forces.none"),
        out("s", "out.json", json_path="runs", type="string"),
    ) == [
        "output drag: 'forces.dreg' not found in out.json (no 'dreg' under 'forces')",
        "output t: 'runs.3.t' not found in out.json (no '3' under 'runs')",
        "output k: 'runs.x' not found in out.json (no 'x' under 'runs')",
        "output ok: 'forces.ok' in out.json is a boolean, not a number",
        "output f: 'forces' in out.json is an object, not a number",
        "output n: 'forces.none' in out.json is null, not a number",
        "output s: 'runs' in out.json is a list, not a string",
    ]


def test_json_nan_and_bad_json_are_refused(workdir):
    (workdir / "nan.json").write_text('{"x": NaN}')
    (workdir / "bad.json").write_text('{"x": ')
    (workdir / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    found = problems(workdir, out("x", "nan.json", json_path="x"), out("y", "bad.json", json_path="x"),
                     out("z", "deep.json", json_path="0"))
    assert found[0] == "output x: 'x' in nan.json is nan, not a finite number"
    assert found[1].startswith("output y: bad.json is not valid JSON: JSONDecodeError")
    assert found[2].startswith("output z: deep.json is not valid JSON: RecursionError")


# ---- required, optional, and the run's outcome ------------------------------------------


def test_required_failures_and_optional_problems_are_kept_apart(workdir):
    found = read_declared(workdir, [
        out("fc", "run.log", regex=r"fc = (\S+)", required=True),
        out("t_end", "run.log", regex=r"t_end = (\S+)", required=True),
        out("x", "missing.log", regex="x", required=True),
        out("opt", "out.json", json_path="nope"),
    ], None)
    assert found.values == {"fc": -0.03}
    assert found.failures == [r"output t_end: no match for regex 't_end = (\\S+)' in run.log",
                              "output x: file missing.log not found"]
    assert found.problems == ["output opt: 'nope' not found in out.json (no 'nope')"]
    assert found.failure == "; ".join(found.failures)
    assert extract_values(workdir, [out("x", "missing.log", regex="x", required=True)], None) == (
        {}, "output x: file missing.log not found")
    assert extract_values(workdir, [out("x", "missing.log", regex="x")], None) == ({}, None)


def test_merge_declared_outputs_win_and_problems_go_to_the_error(workdir):
    found = read_declared(workdir, [out("fc", "run.log", regex=r"fc = (\S+)"),
                                    out("gone", "out.json", json_path="gone"),
                                    out("t_end", "run.log", regex="t_end", required=True)], None)
    merged, error, failure = merge({"fc": 1, "gone": "kept", "other": 2}, "outputs.json problem", found, True)
    assert merged == {"fc": -0.03, "gone": "kept", "other": 2}
    assert error == "outputs.json problem; output gone: 'gone' not found in out.json (no 'gone')"
    assert failure == "output t_end: no match for regex 't_end' in run.log"
    # a run that did not complete keeps its reason; the required output's problem is in the error
    merged, error, failure = merge({}, None, found, False)
    assert failure is None and merged == {"fc": -0.03}
    assert error == ("output t_end: no match for regex 't_end' in run.log; "
                     "output gone: 'gone' not found in out.json (no 'gone')")


def test_each_file_is_read_once(workdir, monkeypatch):
    opened = []
    real = extract._open
    monkeypatch.setattr(extract, "_open", lambda w, p, u: opened.append(p) or real(w, p, u))
    values(workdir, out("a", "run.log", regex="fc = (\\S+)"), out("b", "run.log", regex="t = (\\S+)"),
           out("c", "out.json", json_path="forces.drag"), out("d", "out.json", json_path="runs.0.t"),
           out("e", "results/lift.csv", column="a"), out("f", "results/lift.csv", column="lift"))
    assert opened == ["run.log", "out.json", "results/lift.csv"]


# ---- safety ------------------------------------------------------------------------------


def test_a_symlink_pointing_outside_is_not_followed(workdir, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password = 1234\n")
    (workdir / "link.log").symlink_to(secret)
    (workdir / "linked").symlink_to(tmp_path)
    assert problems(workdir, out("p", "link.log", regex=r"password = (\d+)"),
                    out("q", "linked/secret.txt", regex=r"password = (\d+)")) == [
        "output p: link.log is a symbolic link, which is not followed",
        "output q: linked (of linked/secret.txt) is not a folder; links are not followed",
    ]


def test_only_regular_files_owned_by_the_job_are_read(workdir):
    os.mkfifo(workdir / "pipe")
    (workdir / "folder.log").mkdir()
    assert problems(workdir, out("p", "pipe", regex="x"), out("f", "folder.log", regex="x"),
                    out("m", "results/none/x.csv", column="a")) == [
        "output p: pipe is not a regular file", "output f: folder.log is not a regular file",
        "output m: file results/none/x.csv not found"]
    found = read_declared(workdir, [out("fc", "run.log", regex=r"fc = (\S+)")], os.getuid() + 1)
    assert found.problems == ["output fc: run.log is not owned by the job's user"]
    assert values(workdir, out("fc", "run.log", regex=r"fc = (\S+)"), owner_uid=os.getuid()) == {"fc": -0.03}


def test_a_huge_file_is_bounded(workdir):
    with open(workdir / "huge.log", "w") as log:
        log.write("value = 1\n")
        chunk = "x" * 1023 + "\n"
        for _ in range(MAX_FILE_BYTES // len(chunk) + 10):
            log.write(chunk)
        log.write("value = 2\n")
    with open(workdir / "huge.csv", "w") as table:
        table.write("a\n" + "1\n" * (MAX_FILE_BYTES // 2 + 1))
    # a regex searches the file's end (a log's last value), CSV and JSON are refused whole
    assert values(workdir, out("v", "huge.log", regex=r"value = (\d+)")) == {"v": 2}
    assert problems(workdir, out("first", "huge.log", regex=r"^value = 1$"),
                    out("a", "huge.csv", column="a")) == [
        "output first: no match for regex '^value = 1$' in the last 64 MiB of huge.log",
        "output a: huge.csv is larger than 64 MiB",
    ]


def test_long_strings_are_refused_and_messages_are_bounded(workdir):
    (workdir / "long.txt").write_text("v=" + "y" * 10_000 + "\n")
    assert problems(workdir, out("v", "long.txt", regex="v=(.*)", type="string")) == [
        "output v: the value found is longer than 8192 characters"]
    found = problems(workdir, out("v", "long.txt", regex="v=(.*)"))
    assert len(found[0]) < 200 and found[0].endswith("...' in long.txt is not a number")
