"""The API latency benchmark's ledger: records a large SQLite ledger fast (with Store's own
schema: single jobs and runs of ended sweeps, their status histories and results) and describes
one. A sibling of benchmarks/api_latency.py, which imports it by plain module name (it runs as a
script).
"""

from __future__ import annotations

import json
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from orchestrator.server.ledger import Store

OWNERS = {  # owner -> share of the single jobs and sweeps
    "alice": 0.35, "bob": 0.2, "carol": 0.12, "dave": 0.1, "erin": 0.08, "frank": 0.07,
    "grace": 0.05, "heidi": 0.03,
}
JOB_NAMES = [
    "train_resnet", "train_bert", "preprocess", "python", "bash", "sim_cfd", "render_frame",
    "export_csv", "fit_model", "eval_model", "mesh", "solve", "postprocess", "backup", "report",
    "convert", "compress", "download", "upload", "plot",
]
SWEEP_SIZES = [50_000, 20_000, 5_000, 1_000, 250]  # per million rows, cycled
SWEEP_SHARE = 0.6  # of the rows that are sweep runs
ENDED = [("COMPLETED", 0.88), ("FAILED", 0.07), ("STOPPED", 0.05)]
CREATED_SHARE = 0.01  # of single jobs, saved without submitting
HISTORY_CHUNK = 50_000


# ---- the ledger ---------------------------------------------------------------------------


@dataclass
class Ledger:
    rows: int
    history_rows: int
    sweeps: list[tuple[str, int]]  # (id, runs), largest first
    sample_ids: list[str]  # 1,000 job ids spread over the whole table


def populate(path: Path, rows: int, seed: int = 1) -> None:
    """Record `rows` ended (or CREATED) jobs in a new ledger at `path`, fast."""
    Store(path).close()  # the schema, exactly as the server creates it
    rng = random.Random(seed)
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA synchronous=OFF")
    db.execute("PRAGMA cache_size=-400000")
    plan = _plan(rows, rng)
    base = datetime.now(timezone.utc) - timedelta(days=90)
    step = 90 * 86400 / max(rows, 1)
    jobs_sql = (
        "INSERT INTO jobs (id, name, owner, kind, status, status_reason, spec, priority, attempt,"
        " worker, sweep_id, idx, variables, created_at, submitted_at, started_at, finished_at,"
        " result, input_bytes, storage_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)"
    )
    history_sql = "INSERT INTO job_statuses (job_id, status, at, reason, attempt) VALUES (?,?,?,?,?)"
    jobs: list[tuple] = []
    history: list[tuple] = []
    db.execute("BEGIN")
    for sweep in plan.sweep_rows:
        db.execute(
            "INSERT INTO sweeps (id, name, owner, kind, spec, names, seed, created_at, input_bytes)"
            " VALUES (?,?,?,?,?,?,?,?,?)", sweep,
        )
    for number, (owner, name, sweep_id, index) in enumerate(plan.jobs()):
        created = base + timedelta(seconds=number * step)
        job_id = f"{rng.getrandbits(48):012x}"
        status = "CREATED" if sweep_id is None and rng.random() < CREATED_SHARE else _ended(rng)
        job, changes = _job_row(rng, job_id, owner, name, status, sweep_id, index, created)
        jobs.append(job)
        history.extend(changes)
        if len(history) >= HISTORY_CHUNK:
            db.executemany(jobs_sql, jobs)
            db.executemany(history_sql, history)
            jobs, history = [], []
    db.executemany(jobs_sql, jobs)
    db.executemany(history_sql, history)
    db.execute("COMMIT")
    db.close()


def describe(path: Path) -> Ledger:
    """What the benchmark needs to know of a ledger: sizes, sweeps, job ids to ask for."""
    db = sqlite3.connect(path)
    try:
        rows = db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
        history = db.execute("SELECT COUNT(*) FROM job_statuses").fetchone()[0]
        sweeps = db.execute(
            "SELECT sweep_id, COUNT(*) n FROM jobs WHERE sweep_id IS NOT NULL GROUP BY sweep_id"
            " ORDER BY n DESC"
        ).fetchall()
        every = max(rows // 1000, 1)
        samples = [r[0] for r in db.execute("SELECT id FROM jobs WHERE seq % ? = 0", (every,))]
    finally:
        db.close()
    return Ledger(rows, history, [(s, n) for s, n in sweeps], samples)


@dataclass
class _Plan:
    rows: int
    order: list[tuple[str, str, str | None, int]]  # (owner, name, sweep id, runs) in time order
    sweeps: list[tuple[str, str, int]] = field(default_factory=list)
    sweep_rows: list[tuple] = field(default_factory=list)

    def jobs(self) -> Iterator[tuple[str, str, str | None, int | None]]:
        """(owner, name, sweep id, index) of every row, in creation order: single jobs
        between sweeps, each sweep's runs together (as a sweep records them)."""
        for owner, name, sweep_id, runs in self.order:
            if sweep_id is None:
                yield owner, name, None, None
            else:
                for index in range(runs):
                    yield owner, name, sweep_id, index


def _plan(rows: int, rng: random.Random) -> _Plan:
    owners, weights = list(OWNERS), list(OWNERS.values())
    scale = rows / 1_000_000
    sizes = [max(10, int(size * scale)) for size in SWEEP_SIZES]
    budget = int(rows * SWEEP_SHARE)
    sweeps: list[tuple[str, str, int]] = []
    sweep_names: dict[str, str] = {}
    position = 0
    while budget > 0:
        runs = min(sizes[position % len(sizes)], budget)
        sweep_id = f"s{rng.getrandbits(44):011x}"
        sweeps.append((sweep_id, rng.choices(owners, weights)[0], runs))
        sweep_names[sweep_id] = f"{rng.choice(JOB_NAMES)}_sweep"
        budget -= runs
        position += 1
    singles = rows - sum(runs for _, _, runs in sweeps)
    # sweeps start at random points among the single jobs
    starts = sorted(rng.randrange(singles + 1) for _ in sweeps)
    order: list[tuple[str, str, str | None, int]] = []
    next_sweep = 0
    for single in range(singles + 1):
        while next_sweep < len(sweeps) and starts[next_sweep] == single:
            sweep_id, owner, runs = sweeps[next_sweep]
            order.append((owner, sweep_names[sweep_id], sweep_id, runs))
            next_sweep += 1
        if single < singles:
            order.append((rng.choices(owners, weights)[0], rng.choice(JOB_NAMES), None, 1))
    plan = _Plan(rows, order, sweeps)
    created = datetime.now(timezone.utc) - timedelta(days=90)
    for sweep_id, owner, _ in sweeps:
        spec = {"name": sweep_names[sweep_id], "command": "python sim.py --x ${x} --y ${y}",
                "variables": [{"name": "x", "linspace": {"start": 0, "stop": 1, "num": 10}},
                              {"name": "y", "values": [1, 2, 3]}],
                "design": {"type": "latin_hypercube", "samples": 10, "seed": 7},
                "runtime": {"shell_template": "python sim.py --x ${x} --y ${y}", "inputs": [],
                            "timeout_s": None, "gpus": 0, "callable_key": None}}
        plan.sweep_rows.append((sweep_id, sweep_names[sweep_id], owner, "command", json.dumps(spec),
                                json.dumps(["x", "y"]), 7, created.isoformat(), 0))
    return plan


def _ended(rng: random.Random) -> str:
    pick = rng.random()
    for status, share in ENDED:
        if pick < share:
            return status
        pick -= share
    return ENDED[0][0]


def _job_row(
    rng: random.Random, job_id: str, owner: str, name: str, status: str,
    sweep_id: str | None, index: int | None, created: datetime,
) -> tuple[tuple, list[tuple]]:
    """One jobs row as Store writes it, and its status history."""
    at = created.isoformat()
    if sweep_id is not None:
        x, y = round(rng.random(), 6), rng.choice([1, 2, 3])
        variables = json.dumps({"x": x, "y": y})
        command = f"python sim.py --x {x} --y {y}"
        env = {"x": str(x), "y": str(y)}
    else:
        variables, command, env = None, f"{name} --input data/{rng.randrange(10**6)}.bin", {}
    spec = json.dumps({"command": command, "binaries": [], "files": [], "env": env,
                       "resources": {"cores": 1.0, "gpus": 0, "memory": None},
                       "timeout_s": None, "retries": 0})
    if status == "CREATED":
        return ((job_id, name, owner, "command", status, None, spec, 0, 0, None, sweep_id, index,
                 variables, at, None, None, None, None, 0, 0),
                [(job_id, "CREATED", at, None, 0)])
    queued = created + timedelta(milliseconds=rng.randrange(5, 500))
    begun = queued + timedelta(milliseconds=rng.randrange(5, 2000))
    duration = rng.expovariate(1 / 30)
    finished = begun + timedelta(seconds=duration)
    worker = f"tcp://127.0.0.1:{40000 + rng.randrange(8)}"
    exit_code = {"COMPLETED": 0, "FAILED": 1, "STOPPED": -15}[status]
    reason = {"COMPLETED": "exit code 0", "FAILED": "exit code 1",
              "STOPPED": f"stop requested by {owner}"}[status]
    result = json.dumps({"exit_code": exit_code, "outputs": {"loss": round(rng.random(), 6)},
                         "value": None, "started_at": begun.isoformat(),
                         "finished_at": finished.isoformat(), "duration_s": round(duration, 3),
                         "worker": worker, "error": None})
    queued_reason = f"run of sweep {sweep_id}" if sweep_id else None
    row = (job_id, name, owner, "command", status, reason, spec, 0, 1, worker, sweep_id, index,
           variables, at, queued.isoformat(), begun.isoformat(), finished.isoformat(), result,
           0, 2048)
    history = [(job_id, "CREATED", at, None, 0), (job_id, "QUEUED", queued.isoformat(), queued_reason, 1),
               (job_id, "RUNNING", begun.isoformat(), f"on {worker}", 1),
               (job_id, status, finished.isoformat(), reason, 1)]
    return row, history
