"""The CLI defects of the sweep issue: `orchestrator sweep` says how many runs it queued, and
`orchestrator config` takes --url like every other command and says what it shows."""

from __future__ import annotations

import json
import re

from orchestrator.cli import main


def test_sweep_prints_the_number_of_runs_queued(server, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("command: echo ${R} ${C}\n"
                    "variables:\n"
                    "  - {name: R, values: [1e3, 2.2e3]}\n"
                    "  - {name: C, values: [1e-8, 1e-7, 4.7e-7]}\n")
    assert main(["sweep", "--url", server.url, str(spec)]) == 0
    captured = capsys.readouterr()
    assert re.fullmatch(r"sweep s[0-9a-f]{11}: 6 runs queued\n", captured.err), captured.err
    assert "bound method" not in captured.err + captured.out
    sweep_id = captured.err.split()[1].rstrip(":")
    assert server.wait_sweep(sweep_id, 60)["status"] == "COMPLETED"


def test_a_yaml_sweep_dry_run_shows_numbers(server, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("command: echo ${C}\nvariables:\n  - {name: C, values: [1e-8, 1e-7]}\n")
    assert main(["sweep", "--url", server.url, str(spec), "--dry-run", "--json"]) == 0
    preview = json.loads(capsys.readouterr().out)
    assert [run["variables"]["C"] for run in preview["runs"]] == [1e-8, 1e-7]
    assert [run["command"] for run in preview["runs"]] == ["echo 1e-08", "echo 1e-07"]


def test_a_mixed_column_is_an_error_naming_the_variable(server, capsys, tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text("command: echo ${C}\nvariables:\n  - {name: C, values: [1e-8, auto]}\n")
    assert main(["sweep", "--url", server.url, str(spec)]) == 2
    err = capsys.readouterr().err
    assert "variables.0.values: C: values mix number (1e-08) and text ('auto')" in err


def test_config_accepts_url_and_token_and_says_what_it_shows(capsys, monkeypatch):
    monkeypatch.setenv("ORCHESTRATOR_PORT", "9123")
    assert main(["config", "--url", "http://example.org:8080", "--token", "t", "--json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["ORCHESTRATOR_PORT"] == 9123
    assert "settings a server started from this shell would use" in captured.err
    assert "not those of the server at http://example.org:8080" in captured.err
    assert main(["config", "--json"]) == 0
    assert capsys.readouterr().err == ""  # no note unless --url or --token was given
