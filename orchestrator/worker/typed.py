"""Jobs of a registered job type: a command run as any other, then judged by the contract its
pinned revision declares (Seed's semantics): its mounts must exist on the worker, its file
outputs are found by pattern and its JSON outputs by key and type, and a declared exit code
fails the job with that error's name and category."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from orchestrator.jobtypes.jobio import check_json_outputs, error_for_exit, match_file_outputs
from orchestrator.jobtypes.manifest import Manifest
from orchestrator.kinds import JobKind
from orchestrator.worker.runner import TIMEOUT_REASON, CommandExecutor, Outcome, RunSpec

SEED_OUTPUTS_FILE = "seed.outputs.json"


class JobTypeExecutor(CommandExecutor):
    kind = JobKind.JOB_TYPE
    outputs_files = (SEED_OUTPUTS_FILE, *CommandExecutor.outputs_files)

    def prepare(self, spec: RunSpec, workdir: Path) -> str | None:
        for name, host_path in (spec.job_type or {}).get("mounts", {}).items():
            if not os.path.exists(host_path):
                return f"mount {name}: host path {host_path} is missing on this worker"
        return None

    def conclude(self, spec: RunSpec, outcome: Outcome) -> None:
        manifest = Manifest.model_validate((spec.job_type or {})["manifest"])
        if outcome.status == "FAILED" and outcome.exit_code and not _timed_out(outcome):
            outcome.error, outcome.reason = error_for_exit(manifest, outcome.exit_code)
            return
        if outcome.status != "COMPLETED":
            return
        declared, problem = declared_outputs(manifest, outcome.files, outcome.outputs)
        outcome.outputs = declared
        if problem is not None:
            outcome.status, outcome.reason = "FAILED", problem


def declared_outputs(
    manifest: Manifest, files: list[dict[str, Any]], values: dict[str, Any],
) -> tuple[dict[str, Any], str | None]:
    """The type's outputs by name (a file output as its path, size and sha256; a multiple
    one as a list of them; a JSON output as its value) and what is missing or wrong."""
    by_path = {entry["path"]: entry for entry in files}
    matches, file_problem = match_file_outputs(manifest, list(by_path))
    json_outputs, json_problem = check_json_outputs(manifest, values)
    declared: dict[str, Any] = dict(json_outputs)
    for spec in manifest.job.interface.outputs.files:
        found = [_file_output(by_path[path]) for path in matches.get(spec.name, [])]
        if spec.multiple:
            declared[spec.name] = found
        elif found:
            declared[spec.name] = found[0]
    problems = [p for p in (file_problem, json_problem) if p]
    return declared, "; ".join(problems) or None


def _file_output(entry: dict[str, Any]) -> dict[str, Any]:
    return {"path": entry["path"], "size": entry["size"], "sha256": entry["sha256"]}


def _timed_out(outcome: Outcome) -> bool:
    return (outcome.reason or "").startswith(TIMEOUT_REASON)
