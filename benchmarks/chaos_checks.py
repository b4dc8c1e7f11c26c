"""The chaos soak's checks: every job of a phase COMPLETED exactly once, with its value, written
by the attempt its record names; the execution ledger; leftover job processes. A sibling of
benchmarks/chaos.py, which imports it by plain module name (it runs as a script).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil
from chaos_cluster import TERMINAL, Api, Cluster

if TYPE_CHECKING:
    from chaos import Chaos, PhaseResult


# ---- checks -----------------------------------------------------------------------------


def history_text(history: list[dict]) -> str:
    return "; ".join(f"{h['at'][11:23]} {h['status']}" + (f" ({h['reason']})" if h.get("reason") else "")
                     for h in history)


def reason_group(reason: str) -> str:
    """`worker lost (tls://...), retry 1/3` -> `worker lost`; `scheduler connection lost,
    resubmitted (was RUNNING on ...)` -> `scheduler connection lost, resubmitted`."""
    text = re.sub(r"\s*\([^)]*\)", "", reason)
    text = re.sub(r",? retry \d+/\d+", "", text)
    return text.split(";")[0].strip()


def single_name(label: str, number: int) -> str:
    """A single job's unique name (the workload in chaos.py names its jobs with it)."""
    return f"{label}-job-{number:05d}"


def key_parts(key: Any) -> tuple[str, str] | None:
    """(attempt, job id) of a task key `name-<attempt>-<job id>`."""
    if not isinstance(key, str) or key.count("-") < 2:
        return None
    _, attempt, job_id = key.rsplit("-", 2)
    return attempt, job_id


@dataclass
class Checked:
    problems: list[str] = field(default_factory=list)
    requeues: Counter = field(default_factory=Counter)
    first_queued: Counter = field(default_factory=Counter)  # submissions queued with a reason
    attempts: Counter = field(default_factory=Counter)  # final attempt number -> jobs
    job_ids: set[str] = field(default_factory=set)
    executions: int = 0
    superseded_executions: int = 0


def check_phase(cluster: Cluster, result: PhaseResult, args: argparse.Namespace, ledger_lines: Counter,
                lines_by_job: dict[str, list[int]]) -> Checked:
    api = Api(cluster.url)
    checked = Checked()
    problems = checked.problems
    label = result.label
    try:
        # the sweep: each index once, COMPLETED, with its own value and the named attempt's key
        table = api.get(f"/sweeps/{result.sweep_id}/results")
        rows = table["rows"]
        runs = api.pages(f"/sweeps/{result.sweep_id}/runs")
        records = {run["id"]: run for run in runs}
        indexes = Counter(row["index"] for row in rows)
        missing = sorted(set(range(args.runs)) - set(indexes))
        if missing:
            problems.append(f"{label} sweep: {len(missing)} runs missing from the results: {missing[:20]}")
        doubled = sorted(i for i, n in indexes.items() if n > 1)
        if doubled:
            problems.append(f"{label} sweep: indexes with more than one row: {doubled[:20]}")
        if len({row["job_id"] for row in rows}) != len(rows):
            problems.append(f"{label} sweep: a job id holds more than one row")
        if len(records) != args.runs:
            problems.append(f"{label} sweep: {len(records)} run records, expected {args.runs}")
        outputs: dict[str, tuple[Any, Any]] = {}
        expected_index: dict[str, int] = {}
        for row in rows:
            job_id = row["job_id"]
            outputs[job_id] = (row.get("seen"), row.get("key"))
            expected_index[job_id] = row["index"]
            if row["status"] != "COMPLETED" or row["exit_code"] != 0:
                problems.append(f"{label} run {row['index']} ({job_id}): {row['status']}, exit code {row['exit_code']}")
            if row.get("i") != row["index"]:
                problems.append(f"{label} run {row['index']} ({job_id}): variable i = {row.get('i')}")

        # the single jobs: each name recorded once
        listed = api.pages("/jobs", search=f"{label}-job-")
        by_name: dict[str, list[dict]] = defaultdict(list)
        for job in listed:
            if job["sweep_id"] is None:
                by_name[job["name"]].append(job)
        for number in range(args.jobs):
            name = single_name(label, number)
            jobs = by_name.get(name, [])
            if not jobs:
                problems.append(f"{label} single {name}: no job of that name (lost)")
                continue
            if len(jobs) > 1:
                problems.append(f"{label} single {name}: {len(jobs)} jobs: {[j['id'] for j in jobs]} (duplicate)")
            submitted = result.singles.get(number)
            if submitted is not None and submitted not in {j["id"] for j in jobs}:
                problems.append(f"{label} single {name}: submitted as {submitted}, recorded as {[j['id'] for j in jobs]}")
            for job in jobs:
                records[job["id"]] = job
                expected_index[job["id"]] = number

        # per job: its history, its outputs (single jobs: GET /result), the attempt that ran
        def fetch(job_id: str) -> tuple[str, list[dict], dict | None, str]:
            record = records[job_id]
            history = api.get(f"/jobs/{job_id}/statuses")
            answer = api.get(f"/jobs/{job_id}/result") if record["sweep_id"] is None else None
            return job_id, history, answer, api.text(f"/jobs/{job_id}/files/outputs.json")

        with ThreadPoolExecutor(4) as pool:
            fetched = list(pool.map(fetch, list(records)))
        for job_id, history, answer, stored in fetched:
            record = records[job_id]
            checked.job_ids.add(job_id)
            what = (f"{label} {'run ' + str(record['index']) if record['sweep_id'] else 'single ' + record['name']}"
                    f" job {job_id} (attempt {record['attempt']}, worker losses {record['worker_losses']})")
            statuses = [h["status"] for h in history]
            queued = [h for h in history if h["status"] == "QUEUED"]
            for h in queued[1:]:  # the first is the submission; every later one a requeue
                checked.requeues[reason_group(h["reason"] or "(no reason)")] += 1
            if queued and queued[0].get("reason") and not queued[0]["reason"].startswith("run of sweep"):
                checked.first_queued[reason_group(queued[0]["reason"])] += 1
            checked.attempts[record["attempt"]] += 1
            bad: list[str] = []
            if record["status"] != "COMPLETED":
                bad.append(f"ended {record['status']} ({record['status_reason']})")
            if statuses.count("COMPLETED") != 1 or statuses[-1:] != ["COMPLETED"]:
                bad.append(f"COMPLETED {statuses.count('COMPLETED')} times in its history, last {statuses[-1:]}")
            if answer is not None:
                values = answer.get("outputs") or {}
                outputs[job_id] = (values.get("seen"), values.get("key"))
            seen, key = outputs.get(job_id, (None, None))
            if seen != expected_index.get(job_id):
                bad.append(f"outputs.json seen = {seen!r}, expected {expected_index.get(job_id)}")
            parts = key_parts(key)
            if parts != (str(record["attempt"]), job_id):
                bad.append(f"outputs.json key {key!r} is not the recorded attempt {record['attempt']}")
            try:  # the stored file too: no stale attempt may have overwritten it
                stored_values = json.loads(stored)
            except ValueError:
                stored_values = None
            stored_pair = ((stored_values.get("seen"), stored_values.get("key"))
                           if isinstance(stored_values, dict) else None)
            if stored_pair != (seen, key):
                bad.append(f"stored outputs.json {stored[:120]!r} is not the recorded outputs")
            ran = lines_by_job.get(job_id, [])
            checked.executions += len(ran)
            checked.superseded_executions += sum(1 for a in ran if a != record["attempt"])
            if record["attempt"] not in ran and record["status"] == "COMPLETED":
                bad.append(f"the recorded attempt {record['attempt']} never executed (ledger: {sorted(ran)})")
            twice = sorted({a for a in ran if ran.count(a) > 1})
            if twice:
                bad.append(f"attempt(s) {twice} executed more than once (ledger: {sorted(ran)})")
            if bad:
                text = f"{what}: {', '.join(bad)}\n      history: {history_text(history)}"
                if result.chaos is not None:
                    text += _attribution(result.chaos, history)
                problems.append(text)
        return checked
    finally:
        api.close()


def _attribution(chaos: Chaos, history: list[dict]) -> str:
    """The chaos events that preceded each requeue and the end of the job."""
    notes = []
    for h in history:
        if (h["status"] == "QUEUED" and h.get("reason")) or h["status"] in TERMINAL:
            at = datetime.fromisoformat(h["at"].replace("Z", "+00:00"))
            before = chaos.preceding(at)
            if before:
                notes.append(f"{h['status']} at {h['at'][11:23]} after: {before}")
    return ("\n      preceded by: " + " | ".join(notes)) if notes else ""


def read_ledger(ledger: Path) -> tuple[Counter, dict[str, list[int]]]:
    """Every executed attempt's key (each run appends it once it has slept)."""
    lines: Counter[str] = Counter()
    by_job: dict[str, list[int]] = defaultdict(list)
    if ledger.exists():
        for line in ledger.read_text().splitlines():
            key = line.strip()
            parts = key_parts(key)
            if parts is None:
                continue
            lines[key] += 1
            with contextlib.suppress(ValueError):
                by_job[parts[1]].append(int(parts[0]))
    return lines, by_job


def job_processes(job_ids: set[str]) -> list[tuple[int, str]]:
    """Processes (pid, what) whose environment marks them as a process of one of our jobs."""
    found = []
    for proc in psutil.process_iter(["pid", "name"]):
        with contextlib.suppress(psutil.Error):
            env = proc.environ()
            job_id = env.get("JOB_ID")
            key = env.get("JOB_TASK_KEY")
            key_job = (key_parts(key) or (None, None))[1]
            if job_id in job_ids or key_job in job_ids:
                found.append((proc.info["pid"], f"pid {proc.info['pid']} {proc.info['name']} "
                                                f"JOB_ID={job_id} JOB_TASK_KEY={key}"))
    return found


def leftovers(job_ids: set[str], grace_s: float = 5.0) -> list[str]:
    """Job processes still alive `grace_s` after the last look found any (a job process whose
    worker was killed lives on briefly: it sleeps at most 0.2 s). Killed after being noted."""
    deadline = time.monotonic() + grace_s
    found = job_processes(job_ids)
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = job_processes(job_ids)
    for pid, _ in found:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    return [what for _, what in found]
