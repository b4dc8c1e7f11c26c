"""Jobs with their status history (`jobs`, `job_statuses`), output manifests (`job_files`)
and read-only shares (`job_shares`). Every status change and the history entry that explains
it are written in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timezone
from typing import Any

from orchestrator.models import FileEntry, JobRecord, JobStatus, StatusChange
from orchestrator.server.ledger.connection import Connection, chunks, like_escape, marks, ts
from orchestrator.server.ledger.kept_counts import counts_by_status, kept_count, kept_table
from orchestrator.server.ledger.name_search import search_clause, search_page
from orchestrator.server.ledger.secrets import insert_sealed
from orchestrator.server.secrets import masked

# Fields kept together as JSON: they are read with the job, never filtered on.
_SPEC_FIELDS = ("command", "binaries", "files", "env", "secret_env", "resources", "timeout_s", "retries",
                "job_type", "inputs", "outputs", "entrypoint", "kwargs", "in_context")


@dataclass
class StatusUpdate:
    """One status change to record, with the job fields that change with it."""

    job_id: str
    status: JobStatus
    reason: str | None
    at: datetime
    only_from: Iterable[JobStatus] | None = None
    fields: dict[str, Any] = dataclass_field(default_factory=dict)
    files: list[FileEntry] | None = None  # replaces the output manifest when given
    passed: list[StatusChange] = dataclass_field(default_factory=list)  # history before it


@dataclass
class Admitted:
    """A new job to record: its row, its first history entries (change, attempt) and its
    sealed secret environment."""

    job: JobRecord
    history: list[tuple[StatusChange, int]]
    sealed: bytes | None = None


# What the ledger keeps about a job beside its own row, (table, column naming the job): a job
# is deleted with all of them.
JOB_OWNED_ROWS = (("job_files", "job_id"), ("job_statuses", "job_id"), ("job_shares", "job_id"),
                  ("secrets", "holder"))


class JobsTable(Connection):
    """Jobs and their status history."""

    def insert_job(self, job: JobRecord, history: list[StatusChange], sealed: bytes | None = None) -> None:
        """A job, and its encrypted secret environment if it has one, together."""
        with self.transaction() as db:
            insert_job_rows(db, [job], history)
            insert_sealed(db, job.id, sealed)

    def insert_admitted(self, admitted: list[Admitted]) -> None:
        """Jobs accepted together (group commit): each with its own history and secrets, in
        one transaction."""
        with self.transaction() as db:
            insert_rows(db, "jobs", _JOB_COLUMNS, [_job_row(entry.job) for entry in admitted])
            insert_history(db, [(entry.job.id, change, attempt) for entry in admitted
                                for change, attempt in entry.history])
            for entry in admitted:
                insert_sealed(db, entry.job.id, entry.sealed)

    def insert_jobs(self, jobs: list[JobRecord], history: list[StatusChange]) -> None:
        """Many jobs in one transaction, each starting with the same history."""
        with self.transaction() as db:
            insert_job_rows(db, jobs, history)

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(rows[0]) if rows else None

    def list_jobs(
        self,
        *,
        status: JobStatus | None = None,
        search: str | None = None,
        sweep_id: str | None = None,
        owner: str | None = None,
        ids: list[str] | None = None,
        statuses: list[JobStatus] | None = None,
        shared_with: str | None = None,
        offset: int = 0,
        limit: int | None = 100,
        order: str = "seq",
    ) -> tuple[int, list[JobRecord]]:
        if search and limit is not None and order == "seq" and status is None and statuses is None \
                and sweep_id is None and owner is None and ids is None and shared_with is None:
            count, seqs = search_page(self, search, offset, limit)
            rows = self.select_in("SELECT * FROM jobs WHERE seq IN ({}) ORDER BY seq", seqs)
            return count, [job_from_row(row) for row in rows]
        where, params = _job_filters(status, search, sweep_id, owner, ids, statuses, shared_with)
        table = kept_table(search=search, ids=ids, shared_with=shared_with, owner=owner, sweep_id=sweep_id)
        count = kept_count(self, table, where, params) if table else \
            self._query(f"SELECT COUNT(*) FROM jobs {where}", params)[0][0]
        ordering = {"seq": "seq", "idx": "idx, seq"}[order]
        if limit is None:
            rows = self._query(f"SELECT * FROM jobs {where} ORDER BY {ordering}", params)
        elif offset >= count:
            rows = []
        else:  # skip the offset on keys only, then read just the page's rows (deep pages stay fast)
            rows = self._query(
                f"SELECT * FROM jobs WHERE seq IN (SELECT seq FROM jobs {where} ORDER BY {ordering}"
                f" LIMIT {int(limit)} OFFSET {int(offset)}) ORDER BY {ordering}", params)
        return count, [job_from_row(row) for row in rows]

    def ping(self) -> None:
        """The ledger answers: one row, not a count of a million."""
        self._query("SELECT 1 FROM jobs LIMIT 1")

    def count_by_status(self) -> dict[str, int]:
        return counts_by_status(self)

    def count_owned(self, owner: str, statuses: Iterable[JobStatus]) -> int:
        """Jobs of `owner` in these statuses, sweep runs left out: what per-user limits count."""
        values = [JobStatus(s).value for s in statuses]
        return int(self._query(  # kept by triggers (migration 15): never a walk of the jobs
            f"SELECT COALESCE(SUM(n), 0) FROM single_counts WHERE owner = ? AND status IN ({marks(len(values))})",
            [owner, *values],
        )[0][0])

    def queued_waiting(self, prefixes: tuple[str, ...], limit: int = 1000) -> list[JobRecord]:
        """QUEUED single jobs whose reason starts with one of `prefixes` (the oldest `limit`)."""
        likes = " OR ".join("status_reason LIKE ? ESCAPE '\\'" for _ in prefixes)
        rows = self._query(f"SELECT * FROM jobs WHERE status = 'QUEUED' AND sweep_id IS NULL AND ({likes})"
                           f" ORDER BY seq LIMIT {int(limit)}", [like_escape(p) + "%" for p in prefixes])
        return [job_from_row(row) for row in rows]

    def jobs_with_status(self, statuses: Iterable[JobStatus], singles: bool = False) -> list[JobRecord]:
        """`singles`: single jobs only, not sweep runs."""
        wanted = [s.value for s in statuses]
        only = " AND sweep_id IS NULL" if singles else ""
        rows = self._query(f"SELECT * FROM jobs WHERE status IN ({marks(len(wanted))}){only} ORDER BY seq", wanted)
        return [job_from_row(row) for row in rows]

    def active_to_recover(self) -> list[JobRecord]:
        """Active jobs a start must settle: single jobs, and sweep runs that may have been sent
        (an attempt recorded) or were asked to stop. A sweep's runs never sent wait in the
        ledger for its dispatcher: a million of them are never read as records here."""
        rows = self._query("SELECT * FROM jobs WHERE status IN ('QUEUED', 'RUNNING') AND"
                           " (sweep_id IS NULL OR attempt > 0 OR stop_requested IS NOT NULL) ORDER BY seq")
        return [job_from_row(row) for row in rows]

    def record_status(
        self,
        job_id: str,
        status: JobStatus,
        reason: str | None,
        at: datetime,
        *,
        only_from: Iterable[JobStatus] | None = None,
        **fields: Any,
    ) -> bool:
        """Move a job to `status` and log why; with `only_from`, only if it is in one of those.

        Returns whether the change was made, so racing recorders (a stop and a result, say)
        cannot both win.
        """
        return self.record_statuses([StatusUpdate(job_id, status, reason, at, only_from, fields)])[0]

    def record_statuses(self, updates: list[StatusUpdate]) -> list[bool]:
        """Many status changes in one transaction (a batch of sweep runs ends together)."""
        made = []
        with self.transaction() as db:
            for update in updates:
                made.append(_apply_update(db, update))
        return made

    def update_job(self, job_id: str, **fields: Any) -> None:
        self.update_jobs([job_id], **fields)

    def update_jobs(self, job_ids: list[str], **fields: Any) -> None:
        columns = _encode_fields(fields)
        sets = ", ".join(f"{name} = ?" for name in columns)
        with self.transaction() as db:
            db.executemany(
                f"UPDATE jobs SET {sets} WHERE id = ?",
                [[*columns.values(), job_id] for job_id in job_ids],
            )

    def set_attempts(self, attempts: list[tuple[str, int, datetime]]) -> None:
        """(job id, attempt, submitted_at) for a batch being sent, in one transaction."""
        with self.transaction() as db:
            db.executemany(
                "UPDATE jobs SET attempt = ?, worker = NULL, submitted_at = ? WHERE id = ?",
                [(attempt, ts(submitted), job_id) for job_id, attempt, submitted in attempts],
            )

    def jobs_by_ids(self, job_ids: list[str]) -> list[JobRecord]:
        """These jobs (those that still exist), in the order asked."""
        by_id = {job.id: job for job in map(job_from_row, self.select_in("SELECT * FROM jobs WHERE id IN ({})", job_ids))}
        return [by_id[job_id] for job_id in job_ids if job_id in by_id]

    def job_states(self, job_ids: list[str]) -> dict[str, tuple[JobStatus, int]]:
        """Status and attempt of each job that still exists: cheaper than whole records."""
        rows = self.select_in("SELECT id, status, attempt FROM jobs WHERE id IN ({})", job_ids)
        return {row[0]: (JobStatus(row[1]), row[2]) for row in rows}

    def marked_among(self, job_ids: list[str]) -> list[str]:
        """Which of these jobs wait to be deleted once finished."""
        marked = self._query("SELECT id FROM jobs INDEXED BY jobs_to_delete WHERE delete_when_done = 1 LIMIT ?",
                             (len(job_ids) + 1,))
        if len(marked) > len(job_ids):  # more wait than ended here: look these up instead
            marked = self.select_in("SELECT id FROM jobs WHERE delete_when_done = 1 AND id IN ({})", job_ids)
        ended = set(job_ids)  # nearly always none is marked: no lookup per ended job
        return [row[0] for row in marked if row[0] in ended]

    def existing_job_ids(self, job_ids: list[str]) -> set[str]:
        """Which of these job ids have a row: storage prefixes of the others are orphans."""
        return {row[0] for row in self.select_in("SELECT id FROM jobs WHERE id IN ({})", job_ids)}

    def history(self, job_id: str) -> list[StatusChange]:
        rows = self._query(
            "SELECT status, at, reason FROM job_statuses WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [StatusChange(status=row[0], at=row[1], reason=row[2]) for row in rows]

    def delete_job(self, job_id: str) -> None:
        with self.transaction() as db:
            for table, column in (*JOB_OWNED_ROWS, ("jobs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

    def marked_for_deletion(self, job_id: str) -> bool:
        rows = self._query("SELECT delete_when_done FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def request_stops(self, job_ids: list[str], reason: str) -> None:
        """Record the wish first: a crash before the worker reports must not undo it."""
        with self.transaction() as db:
            for chunk in chunks(job_ids):
                db.execute(f"UPDATE jobs SET stop_requested = ? WHERE id IN ({marks(len(chunk))})",
                           (reason, *chunk))

    def stop_requests(self) -> dict[str, str]:
        """Active jobs a user asked to stop: job id -> the stop's reason."""
        rows = self._query("SELECT id, stop_requested FROM jobs WHERE stop_requested IS NOT NULL"
                           " AND status IN ('QUEUED', 'RUNNING')")
        return {row[0]: row[1] for row in rows}

    def jobs_to_delete(self) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs INDEXED BY jobs_to_delete WHERE delete_when_done = 1")
        return [job_from_row(row) for row in rows]


class JobFilesTable(Connection):
    """Output manifests and read-only shares of jobs."""

    def set_files(self, job_id: str, files: list[FileEntry]) -> None:
        with self.transaction() as db:
            _replace_files(db, job_id, files)

    def list_files(
        self, job_id: str, search: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[FileEntry]]:
        where, params = "WHERE job_id = ?", [job_id]
        if search:
            where += " AND path LIKE ? ESCAPE '\\'"
            params.append(f"%{like_escape(search)}%")
        count = self._query(f"SELECT COUNT(*) FROM job_files {where}", params)[0][0]
        rows = self._query(
            f"SELECT path, size, sha256, kind FROM job_files {where} ORDER BY path LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return count, [FileEntry(path=r[0], size=r[1], sha256=r[2], kind=r[3]) for r in rows]

    def get_file(self, job_id: str, path: str) -> FileEntry | None:
        rows = self._query(
            "SELECT path, size, sha256, kind FROM job_files WHERE job_id = ? AND path = ?", (job_id, path)
        )
        return FileEntry(path=rows[0][0], size=rows[0][1], sha256=rows[0][2], kind=rows[0][3]) if rows else None

    def share_job(self, job_id: str, users: list[str], shared_by: str) -> None:
        now = ts(datetime.now(timezone.utc))
        with self.transaction() as db:
            db.executemany(
                "INSERT OR IGNORE INTO job_shares (job_id, user, shared_by, shared_at) VALUES (?,?,?,?)",
                [(job_id, user, shared_by, now) for user in users],
            )

    def unshare_job(self, job_id: str, users: list[str]) -> None:
        with self.transaction() as db:
            db.executemany("DELETE FROM job_shares WHERE job_id = ? AND user = ?",
                           [(job_id, user) for user in users])

    def job_shared_with(self, job_id: str) -> list[str]:
        rows = self._query("SELECT user FROM job_shares WHERE job_id = ? ORDER BY user", (job_id,))
        return [row[0] for row in rows]

    def is_shared_with(self, job_id: str, user: str) -> bool:
        return bool(self._query("SELECT 1 FROM job_shares WHERE job_id = ? AND user = ?", (job_id, user)))


ROWS_PER_INSERT = 500  # rows of one multi-row INSERT (18 values each: well inside SQLite's 32,766)
_JOB_COLUMNS = ("id, name, owner, kind, status, status_reason, spec, priority, attempt, worker, sweep_id, idx,"
                " variables, created_at, submitted_at, input_bytes, storage_bytes, job_type")


def insert_job_rows(db: sqlite3.Connection, jobs: list[JobRecord], history: list[StatusChange]) -> None:
    """Jobs, each starting with the same history, inside the caller's transaction.

    Many rows per INSERT statement: every statement execution on `jobs` runs its triggers (the
    kept counts and the name index) inside a statement journal, which costs as much per
    execution as the row itself; a row per execution (executemany) made a sweep's runs 4x
    slower to record."""
    insert_rows(db, "jobs", _JOB_COLUMNS, [_job_row(job) for job in jobs])
    insert_history(db, [(job.id, change, job.attempt) for job in jobs for change in history])


def insert_history(db: sqlite3.Connection, entries: list[tuple[str, StatusChange, int]]) -> None:
    """(job id, change, attempt) rows of the status history, inside the caller's transaction."""
    insert_rows(db, "job_statuses", "job_id, status, at, reason, attempt", [
        (job_id, change.status.value, change.at.isoformat(), change.reason, attempt)
        for job_id, change, attempt in entries
    ])


def _job_row(job: JobRecord) -> tuple[Any, ...]:
    return (
        job.id, job.name, job.owner, job.kind, job.status.value, job.status_reason,
        _spec_json(job), job.priority, job.attempt, job.worker, job.sweep_id,
        job.index, _json_or_none(job.variables), ts(job.created_at),
        ts(job.submitted_at), job.storage_bytes, job.storage_bytes, type_key(job),
    )


def insert_rows(db: sqlite3.Connection, table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """`rows` into `table`, ROWS_PER_INSERT to a statement."""
    for start in range(0, len(rows), ROWS_PER_INSERT):
        chunk = rows[start:start + ROWS_PER_INSERT]
        values = ",".join(["(" + ",".join("?" * len(chunk[0])) + ")"] * len(chunk))
        db.execute(f"INSERT INTO {table} ({columns}) VALUES {values}", [value for row in chunk for value in row])


def type_key(job: JobRecord) -> str | None:
    """`name@version` of the job's type: the jobs table's job_type column."""
    return f"{job.job_type.name}@{job.job_type.version}" if job.job_type else None


def job_from_row(row: sqlite3.Row) -> JobRecord:
    fields = dict(row)
    fields.pop("job_type")  # the column is for finding; the spec holds the pinned revision
    fields.update(json.loads(fields.pop("spec")))
    fields["index"] = fields.pop("idx")
    fields["variables"] = json.loads(fields["variables"]) if fields["variables"] else None
    del fields["seq"], fields["delete_when_done"], fields["input_bytes"], fields["stop_requested"]
    if fields["result"]:
        fields["result"] = json.loads(fields["result"])
    return JobRecord.model_validate(fields)


def _spec_json(job: JobRecord) -> str:
    spec = job.model_dump(mode="json", include=set(_SPEC_FIELDS))
    spec["secret_env"] = masked(spec["secret_env"])  # values live sealed in `secrets` only
    return json.dumps(spec)


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _apply_update(db: sqlite3.Connection, update: StatusUpdate) -> bool:
    fields = dict(update.fields)
    attempt_bytes = fields.pop("attempt_bytes", None)  # what the attempt stored: outputs, logs
    columns = {"status": update.status.value, "status_reason": update.reason, **_encode_fields(fields)}
    if update.status.is_terminal:
        columns["stop_requested"] = None  # settled: a rerun of the job is not stopped by it again
    sets = ", ".join(f"{name} = ?" for name in columns)
    params: list[Any] = list(columns.values())
    if attempt_bytes is not None:
        sets += ", storage_bytes = input_bytes + ?"
        params.append(attempt_bytes)
    params.append(update.job_id)
    guard = ""
    if update.only_from is not None:
        allowed = [s.value for s in update.only_from]
        guard = f" AND status IN ({marks(len(allowed))})"
        params += allowed
    row = db.execute(f"UPDATE jobs SET {sets} WHERE id = ?{guard} RETURNING attempt", params).fetchone()
    if row is None:
        return False
    rows = [(h.status.value, h.at.isoformat(), h.reason) for h in update.passed]
    rows.append((update.status.value, update.at.isoformat(), update.reason))
    db.executemany(
        "INSERT INTO job_statuses (job_id, status, at, reason, attempt) VALUES (?,?,?,?,?)",
        [(update.job_id, status, at, reason, row[0]) for status, at, reason in rows],
    )
    if update.files:
        _replace_files(db, update.job_id, update.files)
    elif update.files is not None:
        db.execute("DELETE FROM job_files WHERE job_id = ?", (update.job_id,))
    return True


def _replace_files(db: sqlite3.Connection, job_id: str, files: list[FileEntry]) -> None:
    db.execute("DELETE FROM job_files WHERE job_id = ?", (job_id,))
    db.executemany(
        "INSERT OR REPLACE INTO job_files (job_id, path, size, sha256, kind) VALUES (?,?,?,?,?)",
        [(job_id, f.path, f.size, f.sha256, f.kind) for f in files],  # an output replaces an input
    )


def _encode_fields(fields: dict[str, Any]) -> dict[str, Any]:
    encoded: dict[str, Any] = {}
    for name, value in fields.items():
        if name == "result":
            encoded[name] = value.model_dump_json() if value is not None else None
        elif name == "status":
            encoded[name] = value.value
        elif name == "delete_when_done":
            encoded[name] = int(value)
        elif isinstance(value, datetime):
            encoded[name] = value.isoformat()
        else:
            encoded[name] = value
    return encoded


def _job_filters(
    status: JobStatus | None,
    search: str | None,
    sweep_id: str | None,
    owner: str | None,
    ids: list[str] | None,
    statuses: list[JobStatus] | None = None,
    shared_with: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if status is not None:
        clauses.append("status = ?")
        params.append(JobStatus(status).value)
    if statuses is not None:
        clauses.append(f"status IN ({marks(len(statuses))})")
        params.extend(JobStatus(s).value for s in statuses)
    if search:
        clause, values = search_clause(search)
        clauses.append(clause)
        params.extend(values)
    if sweep_id is not None:
        clauses.append("sweep_id = ?")
        params.append(sweep_id)
    if owner is not None:
        clauses.append("owner = ?")
        params.append(owner)
    if shared_with is not None:
        clauses.append("id IN (SELECT job_id FROM job_shares WHERE user = ?)")
        params.append(shared_with)
    if ids is not None:
        clauses.append(f"id IN ({marks(len(ids))})" if ids else "0")
        params.extend(ids)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params
