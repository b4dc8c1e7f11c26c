"""A sweep's runs handled as a set, so a million-run sweep costs the server no more memory than
a thousand-run one: recorded from plain row tuples (never a record object per run), read by
its dispatcher a page at a time in index order, and ended or requeued a chunk per transaction.

Every function here does one bounded piece of work (a page, a chunk): the caller runs it in a
thread and decides how many; the writer lock is held for one chunk at a time, so status
changes of running work recorded on the event loop never wait long. The kept counts
(`job_counts`, `sweep_tallies`) follow every change through the ledger's triggers, or, for a
chunk changed at once, by a few statements in its transaction (kept_counts.counts_held).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from orchestrator.models import JobRecord, JobStatus, StatusChange
from orchestrator.server.ledger.connection import Connection, marks, ts
from orchestrator.server.ledger.jobs import (
    _JOB_COLUMNS,
    JOB_OWNED_ROWS,
    _spec_json,
    insert_rows,
    job_from_row,
    type_key,
)
from orchestrator.server.ledger.kept_counts import count_runs, counts_held, name_runs
from orchestrator.server.ledger.migrations import RUN_PROBLEM

HISTORY_COLUMNS = "job_id, status, at, reason, attempt"
_NAME, _OWNER, _STATUS, _SWEEP, _STORED = (
    [column.strip() for column in _JOB_COLUMNS.split(",")].index(name)
    for name in ("name", "owner", "status", "sweep_id", "storage_bytes"))
ACTIVE_VALUES = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


class RunRows:
    """Rows of `jobs` for a sweep's runs, all made from one prototype record: only what a run
    changes (its id, index, variables and the spec fields its variables fill) is encoded per
    run, the rest once. A row is exactly what `insert_job_rows` writes for the same record."""

    def __init__(self, prototype: JobRecord):
        self._spec = json.loads(_spec_json(prototype))
        self._spec_parts: dict[tuple[str, ...], tuple[list[str], list[str]]] = {}
        self._head = (prototype.name, prototype.owner, prototype.kind, prototype.status.value,
                      prototype.status_reason)
        self._middle = (prototype.priority, prototype.attempt, prototype.worker, prototype.sweep_id)
        self._tail = (ts(prototype.created_at), ts(prototype.submitted_at), prototype.storage_bytes,
                      prototype.storage_bytes, type_key(prototype))

    def row(self, job_id: str, index: int, variables: dict[str, Any] | None, **spec: Any) -> tuple[Any, ...]:
        """One run's row; `spec`: its own values of spec fields (command, env, inputs...)."""
        names, parts = self._spec_parts.get(tuple(spec)) or self._split(tuple(spec))
        text = parts[0] + "".join(json.dumps(spec[name]) + part for name, part in zip(names, parts[1:], strict=True))
        return (job_id, *self._head, text, *self._middle, index,
                json.dumps(variables) if variables is not None else None, *self._tail)

    def _split(self, given: tuple[str, ...]) -> tuple[list[str], list[str]]:
        """The prototype's spec as JSON text cut where each field a run gives goes (in the
        order json.dumps writes them): a run's spec is these parts joined by its own values'
        JSON, exactly as json.dumps would write the whole."""
        marks = {name: f"\x00{name}\x00" for name in given}
        whole = {**self._spec, **marks}
        names = [name for name in whole if name in marks]
        text = json.dumps(whole)
        parts = []
        for name in names:
            before, _, text = text.partition(json.dumps(marks[name]))
            parts.append(before)
        parts.append(text)
        self._spec_parts[given] = (names, parts)
        return names, parts


def run_ids(ledger: Connection, count: int) -> Iterator[str]:
    """Ids for a new sweep's `count` runs, 12 hex characters as every job id: a random prefix
    under which the ledger has no id, then the run's number. A chunk of consecutive runs, and
    their history, then lands on a few pages of the ledger's id indexes rather than a page
    each: recording and stopping a million runs writes several times less (random ids made
    every stopped run's history rewrite its own index page)."""
    width = max(4, len(f"{max(count - 1, 0):x}"))
    while True:
        prefix = secrets.token_hex(6)[:12 - width]
        if not ledger._query("SELECT 1 FROM jobs WHERE id >= ? AND id < ? LIMIT 1", (prefix, prefix + "g")):
            return (f"{prefix}{number:0{width}x}" for number in range(count))


def insert_run_rows(db: sqlite3.Connection, rows: list[tuple[Any, ...]], history: list[StatusChange]) -> None:
    """Rows made by RunRows, each run starting with the same history, in the caller's transaction."""
    with counts_held(db):
        insert_rows(db, "jobs", _JOB_COLUMNS, rows)
        _count_new(db, rows)
    changes = [(h.status.value, h.at.isoformat(), h.reason) for h in history]
    insert_rows(db, "job_statuses", HISTORY_COLUMNS,
                [(row[0], status, at, reason, row[8]) for row in rows for status, at, reason in changes])


def _count_new(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """New runs in the kept counts and the name index, a statement per kind of row (a chunk of
    one sweep's runs is one kind) rather than a trigger per row."""
    counted: dict[tuple[str, str, str], list[int]] = {}
    named: Counter[str] = Counter()
    for row in rows:
        tally = counted.setdefault((row[_SWEEP], row[_OWNER], row[_STATUS]), [0, 0])
        tally[0] += 1
        tally[1] += row[_STORED]
        named[row[_NAME]] += 1
    for (sweep_id, owner, status), (runs, stored) in counted.items():
        count_runs(db, sweep_id, owner, status, runs, stored)
    for name, runs in named.items():
        name_runs(db, name, runs)


def queued_page(ledger: Connection, sweep_id: str, after: int, limit: int) -> list[JobRecord]:
    """The sweep's QUEUED runs past index `after`, in index order, `limit` at most: the walk
    of the (sweep_id, idx) index starts at `after`, so a page costs its own rows only while
    the runs past the cursor are mostly still queued (as they are for a dispatcher)."""
    rows = ledger._query(
        "SELECT * FROM jobs INDEXED BY jobs_sweep WHERE sweep_id = ? AND idx > ? AND status = ?"
        " ORDER BY idx LIMIT ?", (sweep_id, after, JobStatus.QUEUED.value, int(limit)))
    return [job_from_row(row) for row in rows]


def queued_count(ledger: Connection, sweep_id: str) -> int:
    """The sweep's QUEUED runs, from its kept tally (no pass over its runs)."""
    rows = ledger._query("SELECT n FROM sweep_tallies WHERE sweep_id = ? AND status = ?",
                         (sweep_id, JobStatus.QUEUED.value))
    return int(rows[0][0]) if rows else 0


def run_identity(ledger: Connection, sweep_id: str) -> tuple[str, str | None] | None:
    """The name and job type key (`name@version`) the sweep's runs share, from its first run."""
    rows = ledger._query("SELECT name, job_type FROM jobs INDEXED BY jobs_sweep WHERE sweep_id = ?"
                         " ORDER BY idx LIMIT 1", (sweep_id,))
    return (rows[0][0], rows[0][1]) if rows else None


def end_queued(
    ledger: Connection, sweep_id: str, status: JobStatus, reason: str, at: datetime,
    keep: list[str], limit: int, while_stopping: bool = False,
) -> list[str]:
    """End up to `limit` QUEUED runs of the sweep (`status`: STOPPED or FAILED), with their
    history, in one transaction; `keep`: run ids left alone (those a batch in flight holds);
    `while_stopping`: only while the sweep has a stop reason (a rerun clears it). Answers the
    ids of the runs ended: none left when it is empty.

    The chunk's runs are picked once into a temporary table of the writer's connection, then
    changed and given their history by set statements: no Python object per run."""
    when = at.isoformat()
    spared = " AND id NOT IN (SELECT value FROM json_each(?))" if keep else ""
    with ledger.transaction() as db:
        sweep = db.execute("SELECT owner, stop_reason FROM sweeps WHERE id = ?", (sweep_id,)).fetchone()
        if sweep is None or (while_stopping and sweep[1] is None):
            return []
        _scratch(db, "ending_runs", "storage_bytes INTEGER")
        # from the index on (sweep_id, status, finished_at, storage_bytes) alone: no row read
        db.execute(f"INSERT INTO temp.ending_runs SELECT seq, storage_bytes FROM jobs WHERE sweep_id = ?"
                   f" AND status = ?{spared} LIMIT ?",
                   (sweep_id, JobStatus.QUEUED.value, *([json.dumps(keep)] if keep else []), int(limit)))
        runs, stored = db.execute("SELECT COUNT(*), COALESCE(SUM(storage_bytes), 0) FROM temp.ending_runs").fetchone()
        with counts_held(db):
            db.execute("UPDATE jobs SET status = ?, status_reason = ?, finished_at = ?, stop_requested = NULL"
                       " WHERE seq IN (SELECT seq FROM temp.ending_runs)", (status.value, reason, when))
            count_runs(db, sweep_id, sweep[0], JobStatus.QUEUED.value, -runs, -stored)
            count_runs(db, sweep_id, sweep[0], status.value, runs, stored)
        db.execute(f"INSERT INTO job_statuses ({HISTORY_COLUMNS}) SELECT id, ?, ?, ?, attempt FROM jobs"
                   " WHERE seq IN (SELECT seq FROM temp.ending_runs) ORDER BY seq", (status.value, when, reason))
        # one row, not a row per run: each row fetched takes the GIL back from the event loop
        ids = db.execute("SELECT group_concat(id) FROM jobs WHERE seq IN (SELECT seq FROM temp.ending_runs)"
                         ).fetchone()[0]
    return ids.split(",") if ids else []


def sent_active(ledger: Connection, sweep_id: str, after: int, span: int) -> list[JobRecord]:
    """Active runs of the sweep with index in (after, after + span] that may have been sent
    to Dask (RUNNING, or QUEUED with an attempt recorded): what a restart requeues. A window
    of indexes per query, so no query walks the whole sweep."""
    rows = ledger._query(
        "SELECT * FROM jobs INDEXED BY jobs_sweep WHERE sweep_id = ? AND idx > ? AND idx <= ?"
        " AND status IN (?, ?) AND (attempt > 0 OR status = ?) ORDER BY idx",
        (sweep_id, after, after + span, *ACTIVE_VALUES, JobStatus.RUNNING.value))
    return [job_from_row(row) for row in rows]


def last_index(ledger: Connection, sweep_id: str) -> int:
    """The sweep's highest run index (-1 without runs)."""
    rows = ledger._query("SELECT MAX(idx) FROM jobs WHERE sweep_id = ?", (sweep_id,))
    return int(rows[0][0]) if rows and rows[0][0] is not None else -1


def requeue_ended(
    ledger: Connection, sweep_id: str, statuses: list[str], reason: str, at: datetime, after: int, limit: int,
) -> tuple[list[str], int | None]:
    """Up to `limit` runs of the sweep in these ended `statuses`, with index past `after`, QUEUED
    again as new attempts as `decisions.rerun` makes one (its attempt counted up, its start,
    end, worker and result cleared), with history, in one transaction, counted as a set.
    Answers their ids and the last index looked at (None: none left). Runs are looked at in
    index order past `after`, so a run that ends again meanwhile is not queued twice."""
    when = at.isoformat()
    with ledger.transaction() as db:
        _scratch(db, "rerun_runs", "idx INTEGER")
        db.execute(f"INSERT INTO temp.rerun_runs SELECT seq, idx FROM jobs INDEXED BY jobs_sweep WHERE sweep_id = ?"
                   f" AND idx > ? AND status IN ({marks(len(statuses))}) ORDER BY idx LIMIT ?",
                   (sweep_id, after, *statuses, int(limit)))
        last = db.execute("SELECT MAX(idx) FROM temp.rerun_runs").fetchone()[0]
        rows = "FROM jobs WHERE seq IN (SELECT seq FROM temp.rerun_runs)"
        counted = _tally(db, rows)
        with counts_held(db):
            db.execute("UPDATE jobs SET status = ?, status_reason = ?, attempt = attempt + 1, worker = NULL,"
                       " started_at = NULL, finished_at = NULL, result = NULL, worker_losses = 0,"
                       " submitted_at = COALESCE(submitted_at, ?) WHERE seq IN (SELECT seq FROM temp.rerun_runs)",
                       (JobStatus.QUEUED.value, reason, when))
            for owner, status, runs, problems, stored in counted:
                count_runs(db, sweep_id, owner, status, -runs, -stored, -problems)
                count_runs(db, sweep_id, owner, JobStatus.QUEUED.value, runs, stored)
        db.execute(f"INSERT INTO job_statuses ({HISTORY_COLUMNS}) SELECT id, ?, ?, ?, attempt {rows} ORDER BY seq",
                   (JobStatus.QUEUED.value, when, reason))
        ids = db.execute(f"SELECT group_concat(id) {rows}").fetchone()[0]
    return (ids.split(",") if ids else []), last


def sent_attempts(
    ledger: Connection, sweep_id: str, statuses: list[str], after: int, span: int,
) -> list[tuple[str, int]]:
    """(id, attempt) of the sweep's runs in `statuses` with index in (after, after + span] that
    ran at least once: only their attempts have outputs and logs to keep before a rerun."""
    rows = ledger._query(
        f"SELECT id, attempt FROM jobs INDEXED BY jobs_sweep WHERE sweep_id = ? AND idx > ? AND idx <= ?"
        f" AND status IN ({marks(len(statuses))}) AND attempt > 0 ORDER BY idx",
        (sweep_id, after, after + span, *statuses))
    return [(row[0], row[1]) for row in rows]


def runs_to_delete(ledger: Connection, sweep_id: str, limit: int) -> tuple[list[int], list[str]]:
    """The ledger keys (seq) of up to `limit` runs of the sweep (the first by index), and the
    ids of those of them that were ever sent or keep bytes: only they can have stored files."""
    rows = ledger._query("SELECT seq, id, attempt > 0 OR storage_bytes > 0 FROM jobs INDEXED BY jobs_sweep"
                         " WHERE sweep_id = ? ORDER BY idx LIMIT ?", (sweep_id, int(limit)))
    return [row[0] for row in rows], [row[1] for row in rows if row[2]]


def delete_runs(ledger: Connection, sweep_id: str, seqs: list[int]) -> None:
    """These runs of the sweep (by seq, from runs_to_delete) with their history, files, shares
    and secrets, in one transaction; their counts and names are taken away as a set, not a
    trigger per row."""
    with ledger.transaction() as db:
        _scratch(db, "deleting_runs", "id TEXT NOT NULL")
        # CROSS JOIN: the given keys drive the lookup, never a walk of the sweep's other runs
        db.execute("INSERT INTO temp.deleting_runs SELECT jobs.seq, jobs.id FROM json_each(?) AS given"
                   " CROSS JOIN jobs ON jobs.seq = given.value WHERE jobs.sweep_id = ?", (json.dumps(seqs), sweep_id))
        rows = "FROM jobs WHERE seq IN (SELECT seq FROM temp.deleting_runs)"
        counted = _tally(db, rows)
        named = db.execute(f"SELECT name, COUNT(*) {rows} GROUP BY lower(name)").fetchall()
        with counts_held(db):
            for table, column in JOB_OWNED_ROWS:
                db.execute(f"DELETE FROM {table} WHERE {column} IN (SELECT id FROM temp.deleting_runs)")
            db.execute(f"DELETE {rows}")
            for owner, status, runs, problems, stored in counted:
                count_runs(db, sweep_id, owner, status, -runs, -stored, -problems)
            for name, runs in named:
                name_runs(db, name, -runs)
        db.execute("DELETE FROM sweep_tallies WHERE sweep_id = ? AND n = 0", (sweep_id,))


def _scratch(db: sqlite3.Connection, table: str, columns: str) -> None:
    """An empty temporary table of the writer's connection, keyed by `seq`, for a chunk's runs
    (picked once, then changed by set statements)."""
    db.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} (seq INTEGER PRIMARY KEY, {columns})")
    db.execute(f"DELETE FROM temp.{table}")


def _tally(db: sqlite3.Connection, rows: str) -> list[tuple[str, str, int, int, int]]:
    """(owner, status, runs, output problems, bytes) of the runs `rows` (a FROM ... WHERE)
    names, as they are now: what a set change moves in the kept counts."""
    return db.execute(f"SELECT owner, status, COUNT(*), SUM({RUN_PROBLEM.format(r='jobs')}),"
                      f" SUM(storage_bytes) {rows} GROUP BY owner, status").fetchall()


def insert_all(ledger: Connection, chunks: Iterable[list[tuple[Any, ...]]], history: list[StatusChange]) -> None:
    """Chunks of RunRows rows, a transaction each."""
    for rows in chunks:
        with ledger.transaction() as db:
            insert_run_rows(db, rows, history)
