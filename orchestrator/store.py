"""The ledger (SQLite, WAL): jobs, their status history, output manifests and binaries.

It is the truth after any crash: the engine rebuilds its view of the world from it. Every
status change and the history entry that explains it are written in one transaction.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from orchestrator.models import (
    TERMINAL_STATUSES,
    BinaryRecord,
    FileEntry,
    JobRecord,
    JobStatus,
    StatusChange,
)
from orchestrator.paths import private_file, private_folder
from orchestrator.secrets import masked

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    status TEXT NOT NULL,
    status_reason TEXT,
    spec TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    attempt INTEGER NOT NULL DEFAULT 0,
    worker_losses INTEGER NOT NULL DEFAULT 0,
    input_bytes INTEGER NOT NULL DEFAULT 0,
    storage_bytes INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    sweep_id TEXT,
    idx INTEGER,
    variables TEXT,
    created_at TEXT NOT NULL,
    submitted_at TEXT,
    started_at TEXT,
    finished_at TEXT,
    result TEXT,
    delete_when_done INTEGER NOT NULL DEFAULT 0,
    stop_requested TEXT  -- what the user wants (a stop, with its reason) beside what is
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq);
-- narrow: counts and deep-page offsets walk it instead of the 1 KB rows
CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq);
CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs(sweep_id, idx);
-- a sweep's counts, bytes and last finish read from this index alone, not from 1 KB rows
CREATE INDEX IF NOT EXISTS jobs_sweep_stats ON jobs(sweep_id, status, finished_at, storage_bytes);
DROP INDEX IF EXISTS jobs_sweep_status;
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq);
CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs(owner, status, sweep_id);
CREATE TABLE IF NOT EXISTS job_statuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS job_statuses_job ON job_statuses(job_id);
CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, path)
);
CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    owner TEXT NOT NULL,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    names TEXT NOT NULL,
    seed INTEGER,
    input_bytes INTEGER NOT NULL DEFAULT 0,
    stop_reason TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sweeps_owner ON sweeps(owner, seq);
CREATE TABLE IF NOT EXISTS tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
-- explicit `orchestrator auth enable/disable` choices, newest last; none: tokens decide
CREATE TABLE IF NOT EXISTS auth_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    required INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS binaries (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (owner, name, version)
);
CREATE TABLE IF NOT EXISTS job_shares (
    job_id TEXT NOT NULL,
    user TEXT NOT NULL,
    shared_by TEXT NOT NULL,
    shared_at TEXT NOT NULL,
    PRIMARY KEY (job_id, user)
);
CREATE INDEX IF NOT EXISTS job_shares_user ON job_shares(user, job_id);
CREATE TABLE IF NOT EXISTS secrets (
    holder TEXT PRIMARY KEY,  -- a job id, or a sweep id (shared by its runs)
    sealed BLOB NOT NULL
);
"""

# (table, column, declaration) added after the first release: see Store._add_new_columns.
ADDED_COLUMNS = [
    ("jobs", "worker_losses", "INTEGER NOT NULL DEFAULT 0"),
    ("jobs", "input_bytes", "INTEGER NOT NULL DEFAULT 0"),  # stored with the job at creation
    ("jobs", "storage_bytes", "INTEGER NOT NULL DEFAULT 0"),  # inputs + latest outputs and logs
    ("sweeps", "input_bytes", "INTEGER NOT NULL DEFAULT 0"),  # files shared by its runs
    ("jobs", "stop_requested", "TEXT"),  # a stop survives a crash before the worker reports
]

# Fields kept together as JSON: they are read with the job, never filtered on.
_SPEC_FIELDS = ("command", "binaries", "files", "env", "secret_env", "resources", "timeout_s", "retries")
INSERT_CHUNK = 10_000  # rows per write transaction when recording a sweep's runs
TERMINAL_VALUES = tuple(s.value for s in TERMINAL_STATUSES)


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


class Store:
    """A writer connection shared by the service's threads, serialised by a lock, and a
    reader connection, so reads see the last commit without waiting for a write."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        private_folder(self.path.parent)
        private_file(self.path)  # the ledger holds token hashes and sealed secrets
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._check_binaries_table()
        self._db.executescript(SCHEMA)
        self._add_new_columns()
        self._drop_half_created_sweeps()
        # Reads get their own connection: under WAL they see the last commit without waiting
        # for a long write (a million-run sweep being recorded) to finish.
        self._reader = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._reader.row_factory = sqlite3.Row
        self._read_lock = threading.Lock()

    def _drop_half_created_sweeps(self) -> None:
        """Runs recorded for a sweep whose own row never followed (a crash while creating it):
        the client never got an answer, so they are removed rather than run."""
        orphans = [row[0] for row in self._db.execute(
            "SELECT DISTINCT sweep_id FROM jobs WHERE sweep_id IS NOT NULL"
            " AND sweep_id NOT IN (SELECT id FROM sweeps)")]
        for sweep_id in orphans:
            with self.transaction() as db:
                db.execute("DELETE FROM job_statuses WHERE job_id IN"
                           " (SELECT id FROM jobs WHERE sweep_id = ?)", (sweep_id,))
                db.execute("DELETE FROM jobs WHERE sweep_id = ?", (sweep_id,))

    def _check_binaries_table(self) -> None:
        """Binary names became per owner (and their storage keys binaries/<owner>/...);
        a ledger from before would silently show one user's binaries to all, so refuse it."""
        columns = [row["name"] for row in self._db.execute("PRAGMA table_info(binaries)")]
        if columns and columns[0] != "owner":
            raise RuntimeError(
                f"{self.path}: its binaries table predates per-user binary names; "
                "re-upload binaries into a fresh data folder"
            )

    def _add_new_columns(self) -> None:
        """Ledgers written by an older version get the columns added since, with defaults."""
        for table, column, declaration in ADDED_COLUMNS:
            present = {row["name"] for row in self._db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")

    def close(self) -> None:
        with self._lock, self._read_lock:
            self._reader.close()
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, params: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._read_lock:
            return self._reader.execute(sql, tuple(params)).fetchall()

    # ---- jobs -------------------------------------------------------------------------

    def insert_job(self, job: JobRecord, history: list[StatusChange], sealed: bytes | None = None) -> None:
        """A job, and its encrypted secret environment if it has one, together."""
        with self.transaction() as db:
            self._insert_jobs(db, [job], history)
            _insert_sealed(db, job.id, sealed)

    def insert_jobs(self, jobs: list[JobRecord], history: list[StatusChange]) -> None:
        """Many jobs in one transaction, each starting with the same history."""
        with self.transaction() as db:
            self._insert_jobs(db, jobs, history)

    def _insert_jobs(
        self, db: sqlite3.Connection, jobs: list[JobRecord], history: list[StatusChange]
    ) -> None:
        db.executemany(
            "INSERT INTO jobs (id, name, owner, kind, status, status_reason, spec, priority,"
            " attempt, worker, sweep_id, idx, variables, created_at, submitted_at, input_bytes,"
            " storage_bytes) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [
                (
                    job.id, job.name, job.owner, job.kind, job.status.value, job.status_reason,
                    _spec_json(job), job.priority, job.attempt, job.worker, job.sweep_id,
                    job.index, _json_or_none(job.variables), _ts(job.created_at),
                    _ts(job.submitted_at), job.storage_bytes, job.storage_bytes,
                )
                for job in jobs
            ],
        )
        db.executemany(
            "INSERT INTO job_statuses (job_id, status, at, reason, attempt) VALUES (?,?,?,?,?)",
            [
                (job.id, h.status.value, h.at.isoformat(), h.reason, job.attempt)
                for job in jobs
                for h in history
            ],
        )

    def get_job(self, job_id: str) -> JobRecord | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return _job_from_row(rows[0]) if rows else None

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
        where, params = _job_filters(status, search, sweep_id, owner, ids, statuses, shared_with)
        count = self._query(f"SELECT COUNT(*) FROM jobs {where}", params)[0][0]
        ordering = {"seq": "seq", "idx": "idx, seq"}[order]
        if limit is None:
            rows = self._query(f"SELECT * FROM jobs {where} ORDER BY {ordering}", params)
        elif offset >= count:
            rows = []
        else:  # skip the offset on keys only, then read just the page's rows (deep pages stay fast)
            rows = self._query(
                f"SELECT * FROM jobs WHERE seq IN (SELECT seq FROM jobs {where} ORDER BY {ordering}"
                f" LIMIT {int(limit)} OFFSET {int(offset)}) ORDER BY {ordering}", params)
        return count, [_job_from_row(row) for row in rows]

    def ping(self) -> None:
        """The ledger answers: one row, not a count of a million."""
        self._query("SELECT 1 FROM jobs LIMIT 1")

    def count_by_status(self) -> dict[str, int]:
        rows = self._query("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {row[0]: row[1] for row in rows}

    def jobs_with_status(self, statuses: Iterable[JobStatus]) -> list[JobRecord]:
        wanted = [s.value for s in statuses]
        marks = ",".join("?" * len(wanted))
        rows = self._query(f"SELECT * FROM jobs WHERE status IN ({marks}) ORDER BY seq", wanted)
        return [_job_from_row(row) for row in rows]

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
                [(attempt, _ts(submitted), job_id) for job_id, attempt, submitted in attempts],
            )

    def job_states(self, job_ids: list[str]) -> dict[str, tuple[JobStatus, int]]:
        """Status and attempt of each job that still exists: cheaper than whole records."""
        states: dict[str, tuple[JobStatus, int]] = {}
        for chunk in _chunks(job_ids):
            marks = ",".join("?" * len(chunk))
            for row in self._query(f"SELECT id, status, attempt FROM jobs WHERE id IN ({marks})", chunk):
                states[row[0]] = (JobStatus(row[1]), row[2])
        return states

    def marked_among(self, job_ids: list[str]) -> list[str]:
        """Which of these jobs wait to be deleted once finished."""
        marked: list[str] = []
        for chunk in _chunks(job_ids):
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT id FROM jobs WHERE delete_when_done = 1 AND id IN ({marks})", chunk
            )
            marked += [row[0] for row in rows]
        return marked

    def history(self, job_id: str) -> list[StatusChange]:
        rows = self._query(
            "SELECT status, at, reason FROM job_statuses WHERE job_id = ? ORDER BY seq", (job_id,)
        )
        return [StatusChange(status=row[0], at=row[1], reason=row[2]) for row in rows]

    def delete_job(self, job_id: str) -> None:
        with self.transaction() as db:
            for table, column in (("job_files", "job_id"), ("job_statuses", "job_id"),
                                  ("job_shares", "job_id"), ("secrets", "holder"), ("jobs", "id")):
                db.execute(f"DELETE FROM {table} WHERE {column} = ?", (job_id,))

    def marked_for_deletion(self, job_id: str) -> bool:
        rows = self._query("SELECT delete_when_done FROM jobs WHERE id = ?", (job_id,))
        return bool(rows and rows[0][0])

    def request_stops(self, job_ids: list[str], reason: str) -> None:
        """Record the wish first: a crash before the worker reports must not undo it."""
        with self.transaction() as db:
            for chunk in _chunks(job_ids):
                db.execute(f"UPDATE jobs SET stop_requested = ? WHERE id IN ({','.join('?' * len(chunk))})",
                           (reason, *chunk))

    def stop_requests(self) -> dict[str, str]:
        """Active jobs a user asked to stop: job id -> the stop's reason."""
        rows = self._query("SELECT id, stop_requested FROM jobs WHERE stop_requested IS NOT NULL"
                           " AND status IN ('QUEUED', 'RUNNING')")
        return {row[0]: row[1] for row in rows}

    def jobs_to_delete(self) -> list[JobRecord]:
        rows = self._query("SELECT * FROM jobs WHERE delete_when_done = 1")
        return [_job_from_row(row) for row in rows]

    # ---- output manifests -------------------------------------------------------------

    def set_files(self, job_id: str, files: list[FileEntry]) -> None:
        with self.transaction() as db:
            _replace_files(db, job_id, files)

    def list_files(
        self, job_id: str, search: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[FileEntry]]:
        where, params = "WHERE job_id = ?", [job_id]
        if search:
            where += " AND path LIKE ? ESCAPE '\\'"
            params.append(f"%{_like_escape(search)}%")
        count = self._query(f"SELECT COUNT(*) FROM job_files {where}", params)[0][0]
        rows = self._query(
            f"SELECT path, size, sha256 FROM job_files {where} ORDER BY path LIMIT ? OFFSET ?",
            [*params, int(limit), int(offset)],
        )
        return count, [FileEntry(path=r[0], size=r[1], sha256=r[2]) for r in rows]

    def get_file(self, job_id: str, path: str) -> FileEntry | None:
        rows = self._query(
            "SELECT path, size, sha256 FROM job_files WHERE job_id = ? AND path = ?", (job_id, path)
        )
        return FileEntry(path=rows[0][0], size=rows[0][1], sha256=rows[0][2]) if rows else None

    # ---- sweeps -----------------------------------------------------------------------

    def insert_sweep(
        self, sweep: dict[str, Any], runs: list[JobRecord], history: list[StatusChange],
        sealed: bytes | None = None,
    ) -> None:
        """The sweep's runs, then the sweep with its shared secrets.

        Runs go in chunks of their own transactions, so a million-run sweep never holds the
        writer for long (status changes of running work interleave). The sweep row comes
        last: until it exists the runs belong to nothing, nothing dispatches them, and a
        crash before it leaves runs that the next start removes (`_drop_half_created_sweeps`).
        """
        for start in range(0, len(runs), INSERT_CHUNK):
            with self.transaction() as db:
                self._insert_jobs(db, runs[start:start + INSERT_CHUNK], history)
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps (id, name, owner, kind, spec, names, seed, created_at, input_bytes)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sweep["id"], sweep["name"], sweep["owner"], sweep["kind"],
                    json.dumps(sweep["spec"]), json.dumps(sweep["names"]),
                    sweep["seed"], _ts(sweep["created_at"]), sweep.get("input_bytes", 0),
                ),
            )
            _insert_sealed(db, sweep["id"], sealed)

    def get_sweep(self, sweep_id: str) -> dict[str, Any] | None:
        rows = self._query("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        return _sweep_from_row(rows[0]) if rows else None

    def list_sweeps(
        self, owner: str | None = None, offset: int = 0, limit: int | None = 100,
        newest_first: bool = False,
    ) -> tuple[int, list[dict[str, Any]]]:
        where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
        count = self._query(f"SELECT COUNT(*) FROM sweeps {where}", params)[0][0]
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        order = "seq DESC" if newest_first else "seq"
        rows = self._query(f"SELECT * FROM sweeps {where} ORDER BY {order}{page}", params)
        return count, [_sweep_from_row(row) for row in rows]

    def set_sweep_stop_reason(self, sweep_id: str, reason: str) -> bool:
        """Record why a sweep was stopped; the first reason wins."""
        with self.transaction() as db:
            return bool(db.execute(
                "UPDATE sweeps SET stop_reason = ? WHERE id = ? AND stop_reason IS NULL",
                (reason, sweep_id),
            ).rowcount)

    def sweep_counts(self, sweep_id: str | None) -> dict[str, int]:
        """Runs of a sweep by status; with None, the jobs outside any sweep."""
        where = "sweep_id = ?" if sweep_id is not None else "sweep_id IS NULL"
        params = (sweep_id,) if sweep_id is not None else ()
        rows = self._query(f"SELECT status, COUNT(*) FROM jobs WHERE {where} GROUP BY status", params)
        return {row[0]: row[1] for row in rows}

    def sweep_storage_bytes(self, sweep_id: str) -> int:
        """What a sweep's runs keep in storage (its shared inputs are on the sweep)."""
        rows = self._query("SELECT SUM(storage_bytes) FROM jobs WHERE sweep_id = ?", (sweep_id,))
        return int(rows[0][0] or 0)

    def sweep_last_finish(self, sweep_id: str) -> str | None:
        rows = self._query("SELECT MAX(finished_at) FROM jobs WHERE sweep_id = ?", (sweep_id,))
        return rows[0][0]

    def sweep_rows(self, sweep_id: str) -> list[tuple[int, str, str, dict[str, Any], dict[str, Any] | None]]:
        """(index, job id, status, variables, result) of every run, in index order.

        Read as plain tuples: a results table of a large sweep need not build a model per run.
        """
        rows = self._query(
            "SELECT idx, id, status, variables, result FROM jobs WHERE sweep_id = ? ORDER BY idx",
            (sweep_id,),
        )
        return [
            (row[0], row[1], row[2], json.loads(row[3] or "{}"), json.loads(row[4]) if row[4] else None)
            for row in rows
        ]

    def finished_runs(self, sweep_id: str, after: int, limit: int) -> tuple[int, list[JobRecord]]:
        """Runs that ended after the cursor `after`, in the order they ended, and the new cursor."""
        rows = self._query(
            "SELECT s.seq, s.job_id FROM job_statuses s JOIN jobs j ON j.id = s.job_id"
            f" WHERE s.seq > ? AND j.sweep_id = ? AND s.status IN ({','.join('?' * len(TERMINAL_VALUES))})"
            " ORDER BY s.seq LIMIT ?",
            (after, sweep_id, *TERMINAL_VALUES, limit),
        )
        if not rows:
            return after, []
        _, jobs = self.list_jobs(ids=[row[1] for row in rows], limit=None)
        by_id = {job.id: job for job in jobs}
        return rows[-1][0], [by_id[row[1]] for row in rows if row[1] in by_id]

    def active_sweep_ids(self) -> list[str]:
        rows = self._query(
            "SELECT DISTINCT sweep_id FROM jobs WHERE sweep_id IS NOT NULL AND status IN (?, ?)",
            (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
        )
        return [row[0] for row in rows]

    # ---- binaries ---------------------------------------------------------------------

    def next_binary_version(self, owner: str, name: str) -> int:
        rows = self._query("SELECT MAX(version) FROM binaries WHERE owner = ? AND name = ?", (owner, name))
        return (rows[0][0] or 0) + 1

    def insert_binary(self, binary: BinaryRecord) -> None:
        with self.transaction() as db:
            db.execute(
                "INSERT INTO binaries (owner, name, version, size, sha256, content_type, uploaded_at)"
                " VALUES (?,?,?,?,?,?,?)",
                (binary.owner, binary.name, binary.version, binary.size, binary.sha256,
                 binary.content_type, _ts(binary.uploaded_at)),
            )

    def get_binary(self, owner: str, name: str, version: int | None = None) -> BinaryRecord | None:
        if version is None:
            rows = self._query(
                "SELECT * FROM binaries WHERE owner = ? AND name = ? ORDER BY version DESC LIMIT 1",
                (owner, name),
            )
        else:
            rows = self._query(
                "SELECT * FROM binaries WHERE owner = ? AND name = ? AND version = ?",
                (owner, name, version),
            )
        return BinaryRecord(**dict(rows[0])) if rows else None

    def list_binaries(
        self, owner: str | None = None, search: str | None = None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[BinaryRecord]]:
        """The latest version of each binary name (of one owner, or of everyone)."""
        clauses, params = [], []
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if search:
            clauses.append("name LIKE ? ESCAPE '\\'")
            params.append(f"%{_like_escape(search)}%")
        where = "WHERE " + " AND ".join(clauses) if clauses else ""
        latest = (
            f"SELECT b.* FROM binaries b JOIN (SELECT owner, name, MAX(version) v FROM binaries {where}"
            " GROUP BY owner, name) m ON b.owner = m.owner AND b.name = m.name AND b.version = m.v"
        )
        count = self._query(f"SELECT COUNT(*) FROM ({latest})", params)[0][0]
        rows = self._query(f"{latest} ORDER BY b.name, b.owner LIMIT ? OFFSET ?", [*params, limit, offset])
        return count, [BinaryRecord(**dict(row)) for row in rows]

    def binary_versions(self, owner: str, name: str) -> list[BinaryRecord]:
        rows = self._query("SELECT * FROM binaries WHERE owner = ? AND name = ? ORDER BY version",
                           (owner, name))
        return [BinaryRecord(**dict(row)) for row in rows]

    def delete_binary(self, owner: str, name: str) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM binaries WHERE owner = ? AND name = ?", (owner, name))

    # ---- sharing ----------------------------------------------------------------------

    def share_job(self, job_id: str, users: list[str], shared_by: str) -> None:
        now = _ts(datetime.now(timezone.utc))
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

    # ---- secrets ----------------------------------------------------------------------

    def sealed_secrets(self, holders: list[str]) -> dict[str, bytes]:
        """The encrypted secret environment of each of these jobs (or sweeps) that has one."""
        rows = self._select_in("SELECT holder, sealed FROM secrets WHERE holder IN ({})", holders)
        return {row[0]: bytes(row[1]) for row in rows}

    def count_owned(self, owner: str, statuses: Iterable[JobStatus]) -> int:
        """Jobs of `owner` in these statuses, sweep runs left out: what per-user limits count."""
        values = [JobStatus(s).value for s in statuses]
        marks = ",".join("?" * len(values))
        return self._query(
            f"SELECT COUNT(*) FROM jobs WHERE owner = ? AND status IN ({marks}) AND sweep_id IS NULL",
            [owner, *values],
        )[0][0]

    # ---- tokens ---------------------------------------------------------------------

    def insert_token(self, user: str, digest: str, admin: bool) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO tokens (user, hash, admin, created_at) VALUES (?,?,?,?)",
                       (user, digest, int(admin), _ts(datetime.now(timezone.utc))))

    def revoke_tokens(self, user: str) -> int:
        with self.transaction() as db:
            return db.execute("UPDATE tokens SET revoked_at = ? WHERE user = ? AND revoked_at IS NULL",
                              (_ts(datetime.now(timezone.utc)), user)).rowcount

    def active_token(self, digest: str) -> dict[str, Any] | None:
        rows = self._query("SELECT user, hash, admin FROM tokens WHERE hash = ? AND revoked_at IS NULL",
                           (digest,))
        return dict(rows[0]) if rows else None

    def active_token_count(self) -> int:
        return self._query("SELECT COUNT(*) FROM tokens WHERE revoked_at IS NULL")[0][0]

    def auth_required(self) -> bool:
        """The last explicit choice, or else whether any token was ever created (revoked ones
        too: revoking the last token locks the API rather than opening it). Asked per request."""
        return bool(self._query(
            "SELECT COALESCE((SELECT required FROM auth_changes ORDER BY seq DESC LIMIT 1), "
            "EXISTS (SELECT 1 FROM tokens))"
        )[0][0])

    def record_auth_change(self, required: bool, by: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT INTO auth_changes (required, changed_by, changed_at) VALUES (?,?,?)",
                       (int(required), by, _ts(datetime.now(timezone.utc))))

    def last_auth_change(self) -> dict[str, Any] | None:
        rows = self._query("SELECT required, changed_by, changed_at FROM auth_changes ORDER BY seq DESC LIMIT 1")
        return dict(rows[0]) if rows else None

    def list_tokens(self) -> list[dict[str, Any]]:
        """Who holds tokens, never the hashes."""
        rows = self._query("SELECT seq AS id, user, admin, created_at, revoked_at FROM tokens ORDER BY seq")
        return [dict(row) for row in rows]

    # ---- garbage collection ----

    def existing_job_ids(self, job_ids: list[str]) -> set[str]:
        """Which of these job ids have a row: storage prefixes of the others are orphans."""
        return {row[0] for row in self._select_in("SELECT id FROM jobs WHERE id IN ({})", job_ids)}

    def existing_sweep_ids(self, sweep_ids: list[str]) -> set[str]:
        """Which of these sweep ids have a row."""
        return {row[0] for row in self._select_in("SELECT id FROM sweeps WHERE id IN ({})", sweep_ids)}

    def _select_in(self, sql: str, keys: list[str]) -> list[sqlite3.Row]:
        """`sql` with its `IN ({})` filled for any number of keys, a chunk per query (SQLite
        limits the parameters of one statement)."""
        rows: list[sqlite3.Row] = []
        for chunk in _chunks(keys):
            rows += self._query(sql.format(",".join("?" * len(chunk))), chunk)
        return rows

    def binary_versions_known(self) -> set[tuple[str, str, int]]:
        """(owner, name, version) of every binary in the ledger: a small table, read whole."""
        return {(row[0], row[1], row[2]) for row in self._query("SELECT owner, name, version FROM binaries")}


def _insert_sealed(db: sqlite3.Connection, holder: str, sealed: bytes | None) -> None:
    if sealed is not None:
        db.execute("INSERT INTO secrets (holder, sealed) VALUES (?, ?)", (holder, sealed))


def _ts(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _spec_json(job: JobRecord) -> str:
    spec = job.model_dump(mode="json", include=set(_SPEC_FIELDS))
    spec["secret_env"] = masked(spec["secret_env"])  # values live sealed in `secrets` only
    return json.dumps(spec)


def _json_or_none(value: Any) -> str | None:
    return json.dumps(value) if value is not None else None


def _chunks(items: list[str], size: int = 900) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _apply_update(db: sqlite3.Connection, update: StatusUpdate) -> bool:
    fields = dict(update.fields)
    attempt_bytes = fields.pop("attempt_bytes", None)  # what the attempt stored: outputs, logs
    columns = {"status": update.status.value, "status_reason": update.reason, **_encode_fields(fields)}
    sets = ", ".join(f"{name} = ?" for name in columns)
    params: list[Any] = list(columns.values())
    if attempt_bytes is not None:
        sets += ", storage_bytes = input_bytes + ?"
        params.append(attempt_bytes)
    params.append(update.job_id)
    guard = ""
    if update.only_from is not None:
        allowed = [s.value for s in update.only_from]
        guard = f" AND status IN ({','.join('?' * len(allowed))})"
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
        "INSERT INTO job_files (job_id, path, size, sha256) VALUES (?,?,?,?)",
        [(job_id, f.path, f.size, f.sha256) for f in files],
    )


def _sweep_from_row(row: sqlite3.Row) -> dict[str, Any]:
    fields = dict(row)
    fields["spec"] = json.loads(fields["spec"])
    fields["names"] = json.loads(fields["names"])
    del fields["seq"]
    return fields


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
        clauses.append(f"status IN ({','.join('?' * len(statuses))})")
        params.extend(JobStatus(s).value for s in statuses)
    if search:
        clauses.append("name LIKE ? ESCAPE '\\'")
        params.append(f"%{_like_escape(search)}%")
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
        clauses.append(f"id IN ({','.join('?' * len(ids))})" if ids else "0")
        params.extend(ids)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _job_from_row(row: sqlite3.Row) -> JobRecord:
    fields = dict(row)
    fields.update(json.loads(fields.pop("spec")))
    fields["index"] = fields.pop("idx")
    fields["variables"] = json.loads(fields["variables"]) if fields["variables"] else None
    del fields["seq"], fields["delete_when_done"], fields["input_bytes"], fields["stop_requested"]
    if fields["result"]:
        fields["result"] = json.loads(fields["result"])
    return JobRecord.model_validate(fields)
