"""The ledger's schema as numbered migrations, counted by SQLite's `PRAGMA user_version`.

Migration 1 is the schema of the oldest ledger this version still opens: the one the tenancy
release (issue 6: per-owner binaries, sharing, secrets) wrote. Each later step is what was added
since, in order. Opening a ledger applies the steps it lacks, each in its own transaction with
the new version number, so a crash mid-way leaves a ledger at one version or the next.

Ledgers written before numbering (user_version 0) may be at any state between migration 1 and
the last unnumbered one, so every step is idempotent (IF NOT EXISTS, a column added only if it
is missing) and such a ledger simply walks all of them.

A new step goes at the end of MIGRATIONS; never edit or reorder a shipped one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Migration:
    summary: str
    statements: tuple[str, ...] = ()
    columns: tuple[tuple[str, str, str], ...] = ()  # (table, column, declaration) to add

    def apply(self, db: sqlite3.Connection) -> None:
        for statement in self.statements:
            db.execute(statement)
        for table, column, declaration in self.columns:
            present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
            if column not in present:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")


TENANCY_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS jobs (
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
    delete_when_done INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_sweep ON jobs(sweep_id, idx)",
    "CREATE INDEX IF NOT EXISTS jobs_sweep_status ON jobs(sweep_id, status)",
    "CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, seq)",
    "CREATE INDEX IF NOT EXISTS jobs_owner_status ON jobs(owner, status, sweep_id)",
    """CREATE TABLE IF NOT EXISTS job_statuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0
)""",
    "CREATE INDEX IF NOT EXISTS job_statuses_job ON job_statuses(job_id)",
    """CREATE TABLE IF NOT EXISTS job_files (
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, path)
)""",
    """CREATE TABLE IF NOT EXISTS sweeps (
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
)""",
    "CREATE INDEX IF NOT EXISTS sweeps_owner ON sweeps(owner, seq)",
    """CREATE TABLE IF NOT EXISTS tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)""",
    """CREATE TABLE IF NOT EXISTS binaries (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (owner, name, version)
)""",
    """CREATE TABLE IF NOT EXISTS job_shares (
    job_id TEXT NOT NULL,
    user TEXT NOT NULL,
    shared_by TEXT NOT NULL,
    shared_at TEXT NOT NULL,
    PRIMARY KEY (job_id, user)
)""",
    "CREATE INDEX IF NOT EXISTS job_shares_user ON job_shares(user, job_id)",
    """CREATE TABLE IF NOT EXISTS secrets (
    holder TEXT PRIMARY KEY,  -- a job id, or a sweep id (shared by its runs)
    sealed BLOB NOT NULL
)""",
)

# A run "has an output problem" when it completed with a result carrying an error.
RUN_PROBLEM = ("(CASE WHEN {r}.status = 'COMPLETED' AND json_valid({r}.result)"
            " THEN json_extract({r}.result, '$.error') IS NOT NULL ELSE 0 END)")
_ADD_JOB = ("INSERT INTO job_counts (owner, status, n) VALUES (new.owner, new.status, 1)"
            " ON CONFLICT (owner, status) DO UPDATE SET n = n + 1;")
_DROP_JOB = "UPDATE job_counts SET n = n - 1 WHERE owner = old.owner AND status = old.status;"
_ADD_RUN = ("INSERT INTO sweep_tallies (sweep_id, status, n, problems, storage_bytes)"
            f" SELECT new.sweep_id, new.status, 1, {RUN_PROBLEM.format(r='new')}, new.storage_bytes"
            " WHERE new.sweep_id IS NOT NULL ON CONFLICT (sweep_id, status) DO UPDATE SET"
            " n = n + 1, problems = problems + excluded.problems,"
            " storage_bytes = storage_bytes + excluded.storage_bytes;")
_DROP_RUN = (f"UPDATE sweep_tallies SET n = n - 1, problems = problems - {RUN_PROBLEM.format(r='old')},"
             " storage_bytes = storage_bytes - old.storage_bytes"
             " WHERE sweep_id = old.sweep_id AND status = old.status;")

KEPT_COUNTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS job_counts (
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (owner, status)
) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS sweep_tallies (
    sweep_id TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    problems INTEGER NOT NULL,
    storage_bytes INTEGER NOT NULL,
    PRIMARY KEY (sweep_id, status)
) WITHOUT ROWID""",
    f"CREATE TRIGGER IF NOT EXISTS jobs_counted_insert AFTER INSERT ON jobs BEGIN {_ADD_JOB} {_ADD_RUN} END",
    "CREATE TRIGGER IF NOT EXISTS jobs_counted_delete AFTER DELETE ON jobs BEGIN"
    f" {_DROP_JOB} {_DROP_RUN}"
    " DELETE FROM sweep_tallies WHERE sweep_id = old.sweep_id AND status = old.status AND n = 0; END",
    "CREATE TRIGGER IF NOT EXISTS jobs_counted_owner_status AFTER UPDATE OF owner, status ON jobs"
    f" WHEN old.owner IS NOT new.owner OR old.status IS NOT new.status BEGIN {_DROP_JOB} {_ADD_JOB} END",
    "CREATE TRIGGER IF NOT EXISTS jobs_counted_run AFTER UPDATE OF sweep_id, status, result, storage_bytes"
    " ON jobs WHEN old.sweep_id IS NOT NULL OR new.sweep_id IS NOT NULL"
    f" BEGIN {_DROP_RUN} {_ADD_RUN} END",
    "DELETE FROM job_counts",  # rebuilt from the rows, so the step can run again (a v0 ledger)
    "INSERT INTO job_counts (owner, status, n) SELECT owner, status, COUNT(*) FROM jobs GROUP BY owner, status",
    "DELETE FROM sweep_tallies",
    "INSERT INTO sweep_tallies (sweep_id, status, n, problems, storage_bytes)"
    f" SELECT sweep_id, status, COUNT(*), SUM({RUN_PROBLEM.format(r='jobs')}), SUM(storage_bytes) FROM jobs"
    " WHERE sweep_id IS NOT NULL GROUP BY sweep_id, status",
)

# Names are indexed once each, not once per job: a sweep's runs share one name, and a trigram
# index costs tens of microseconds per row it takes. job_names holds each distinct
# ASCII-lowered name (SQLite's lower() folds ASCII only, as LIKE compares) with how many jobs
# bear it; names_search indexes the distinct names; jobs find theirs by an index on lower(name).
NAME_SEARCH_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS job_names (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    n INTEGER NOT NULL
)""",
    "CREATE VIRTUAL TABLE IF NOT EXISTS names_search USING fts5(name, tokenize='trigram case_sensitive 1')",
    "CREATE INDEX IF NOT EXISTS jobs_lower_name ON jobs (lower(name), seq)",
    "CREATE TRIGGER IF NOT EXISTS job_names_indexed AFTER INSERT ON job_names BEGIN"
    " INSERT INTO names_search (rowid, name) VALUES (new.id, new.name); END",
    "CREATE TRIGGER IF NOT EXISTS jobs_named AFTER INSERT ON jobs BEGIN"
    " INSERT INTO job_names (name, n) VALUES (lower(new.name), 1)"
    " ON CONFLICT (name) DO UPDATE SET n = n + 1; END",
    "CREATE TRIGGER IF NOT EXISTS jobs_unnamed AFTER DELETE ON jobs BEGIN"
    " UPDATE job_names SET n = n - 1 WHERE name = lower(old.name); END",
    "CREATE TRIGGER IF NOT EXISTS jobs_renamed AFTER UPDATE OF name ON jobs"
    " WHEN lower(old.name) IS NOT lower(new.name) BEGIN"
    " UPDATE job_names SET n = n - 1 WHERE name = lower(old.name);"
    " INSERT INTO job_names (name, n) VALUES (lower(new.name), 1)"
    " ON CONFLICT (name) DO UPDATE SET n = n + 1; END",
    "DELETE FROM names_search",  # rebuilt from the rows, so the step can run again
    "DELETE FROM job_names",
    "INSERT INTO job_names (name, n) SELECT lower(name), COUNT(*) FROM jobs GROUP BY lower(name)",
)

# The per-row triggers that keep counts and names step aside while `counts_held.held` is 1: a
# change of thousands of runs at once (a sweep's runs created, stopped or deleted, a chunk at a
# time) counts them by a few statements instead (kept_counts.counts_held). The flag is set and cleared inside that
# one transaction, so no other connection ever sees it set, and a crash rolls it back.
_NOT_HELD = "(SELECT held FROM counts_held) = 0"
HELD_COUNTS_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS counts_held (held INTEGER NOT NULL)",
    "DELETE FROM counts_held",
    "INSERT INTO counts_held (held) VALUES (0)",
    "DROP TRIGGER IF EXISTS jobs_counted_insert",
    "DROP TRIGGER IF EXISTS jobs_counted_delete",
    "DROP TRIGGER IF EXISTS jobs_counted_owner_status",
    "DROP TRIGGER IF EXISTS jobs_counted_run",
    "DROP TRIGGER IF EXISTS jobs_named",
    "DROP TRIGGER IF EXISTS jobs_unnamed",
    f"CREATE TRIGGER jobs_counted_insert AFTER INSERT ON jobs WHEN {_NOT_HELD}"
    f" BEGIN {_ADD_JOB} {_ADD_RUN} END",
    f"CREATE TRIGGER jobs_counted_delete AFTER DELETE ON jobs WHEN {_NOT_HELD} BEGIN"
    f" {_DROP_JOB} {_DROP_RUN}"
    " DELETE FROM sweep_tallies WHERE sweep_id = old.sweep_id AND status = old.status AND n = 0; END",
    "CREATE TRIGGER jobs_counted_owner_status AFTER UPDATE OF owner, status ON jobs"
    f" WHEN (old.owner IS NOT new.owner OR old.status IS NOT new.status) AND {_NOT_HELD}"
    f" BEGIN {_DROP_JOB} {_ADD_JOB} END",
    "CREATE TRIGGER jobs_counted_run AFTER UPDATE OF sweep_id, status, result, storage_bytes"
    f" ON jobs WHEN (old.sweep_id IS NOT NULL OR new.sweep_id IS NOT NULL) AND {_NOT_HELD}"
    f" BEGIN {_DROP_RUN} {_ADD_RUN} END",
    f"CREATE TRIGGER jobs_named AFTER INSERT ON jobs WHEN {_NOT_HELD} BEGIN"
    " INSERT INTO job_names (name, n) VALUES (lower(new.name), 1)"
    " ON CONFLICT (name) DO UPDATE SET n = n + 1; END",
    f"CREATE TRIGGER jobs_unnamed AFTER DELETE ON jobs WHEN {_NOT_HELD} BEGIN"
    " UPDATE job_names SET n = n - 1 WHERE name = lower(old.name); END",
)

# Single jobs (no sweep) by owner and status, kept by their own triggers: the per-user cap on
# queued jobs is checked on every submission, and counting a user's queued jobs walked one index
# entry per job (0.6 ms per request with 10,000 queued). Sweep runs never touch it, so the set
# changes of migration 13 need no hold here.
_ADD_SINGLE = ("INSERT INTO single_counts (owner, status, n) SELECT new.owner, new.status, 1"
               " WHERE new.sweep_id IS NULL ON CONFLICT (owner, status) DO UPDATE SET n = n + 1;")
_DROP_SINGLE = ("UPDATE single_counts SET n = n - 1 WHERE old.sweep_id IS NULL AND owner = old.owner"
                " AND status = old.status;")
SINGLE_COUNTS_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS single_counts (
    owner TEXT NOT NULL,
    status TEXT NOT NULL,
    n INTEGER NOT NULL,
    PRIMARY KEY (owner, status)
) WITHOUT ROWID""",
    f"CREATE TRIGGER IF NOT EXISTS singles_counted_insert AFTER INSERT ON jobs WHEN new.sweep_id IS NULL"
    f" BEGIN {_ADD_SINGLE} END",
    f"CREATE TRIGGER IF NOT EXISTS singles_counted_delete AFTER DELETE ON jobs WHEN old.sweep_id IS NULL"
    f" BEGIN {_DROP_SINGLE} END",
    "CREATE TRIGGER IF NOT EXISTS singles_counted_update AFTER UPDATE OF owner, status, sweep_id ON jobs"
    " WHEN (old.sweep_id IS NULL OR new.sweep_id IS NULL) AND (old.owner IS NOT new.owner"
    " OR old.status IS NOT new.status OR old.sweep_id IS NOT new.sweep_id)"
    f" BEGIN {_DROP_SINGLE} {_ADD_SINGLE} END",
    "DELETE FROM single_counts",  # rebuilt from the rows, so the step can run again
    "INSERT INTO single_counts (owner, status, n) SELECT owner, status, COUNT(*) FROM jobs"
    " WHERE sweep_id IS NULL GROUP BY owner, status",
)

MIGRATIONS: tuple[Migration, ...] = (
    # 1
    Migration(
        "the tenancy release's schema (per-owner binaries, shares, secrets); the columns "
        "earlier releases added with ALTER TABLE (jobs.worker_losses, jobs.input_bytes, "
        "jobs.storage_bytes, sweeps.input_bytes) are part of it",
        TENANCY_SCHEMA,
        columns=(  # a ledger at this state always has them; kept so a v0 one surely does
            ("jobs", "worker_losses", "INTEGER NOT NULL DEFAULT 0"),
            ("jobs", "input_bytes", "INTEGER NOT NULL DEFAULT 0"),
            ("jobs", "storage_bytes", "INTEGER NOT NULL DEFAULT 0"),
            ("sweeps", "input_bytes", "INTEGER NOT NULL DEFAULT 0"),
        ),
    ),
    # 2
    Migration(
        "a sweep's counts, bytes and last finish read from one covering index, which "
        "replaces jobs_sweep_status",
        (
            "CREATE INDEX IF NOT EXISTS jobs_sweep_stats"
            " ON jobs(sweep_id, status, finished_at, storage_bytes)",
            "DROP INDEX IF EXISTS jobs_sweep_status",
        ),
    ),
    # 3
    Migration(
        "a narrow index on jobs.seq: counts and deep-page offsets walk it, not the 1 KB rows",
        ("CREATE INDEX IF NOT EXISTS jobs_seq ON jobs(seq)",),
    ),
    # 4
    Migration(
        "job_uids: each user's OS uid for their jobs, handed out once (multi-user isolation)",
        ("CREATE TABLE IF NOT EXISTS job_uids (user TEXT PRIMARY KEY, uid INTEGER NOT NULL UNIQUE)",),
    ),
    # 5
    Migration(
        "auth_changes: explicit `orchestrator auth enable/disable` choices, newest last",
        (
            """CREATE TABLE IF NOT EXISTS auth_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    required INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL
)""",
        ),
    ),
    # 6
    Migration(
        "jobs.stop_requested: a user's stop (its reason) survives a crash before the worker reports",
        columns=(("jobs", "stop_requested", "TEXT"),),
    ),
    # 7
    Migration(
        "job types: registered, versioned applications, their manifest revisions, and the "
        "type (name@version) of each job",
        (
            """CREATE TABLE IF NOT EXISTS job_types (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    tags TEXT NOT NULL,
    icon_code TEXT,
    maintainer TEXT,
    revision_num INTEGER NOT NULL,
    configuration TEXT NOT NULL,
    is_active INTEGER NOT NULL DEFAULT 1,
    is_paused INTEGER NOT NULL DEFAULT 0,
    max_scheduled INTEGER,
    created_by TEXT NOT NULL,
    created TEXT NOT NULL,
    last_modified TEXT NOT NULL,
    paused TEXT,
    deprecated TEXT,
    PRIMARY KEY (name, version)
)""",
            """CREATE TABLE IF NOT EXISTS job_type_revisions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    revision_num INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (name, version, revision_num)
)""",
        ),
        columns=(("jobs", "job_type", "TEXT"),),
    ),
    # 8
    Migration(
        "jobs_by_type: the jobs of a type, found without a scan (pausing, limits, deleting a type)",
        ("CREATE INDEX IF NOT EXISTS jobs_by_type ON jobs (job_type) WHERE job_type IS NOT NULL",),
    ),
    # 9
    Migration(
        "batch_jobs: the batch-system jobs of the cluster's workers, cancelled at the next start "
        "if this run ends without closing them",
        ("""CREATE TABLE IF NOT EXISTS batch_jobs (
    job_id TEXT PRIMARY KEY,
    cancel_command TEXT NOT NULL,
    submitted_at TEXT NOT NULL
)""",),
    ),
    # 10
    Migration(
        "job_files.kind: a run's files are its outputs, and the inputs it ran with as staged",
        columns=(("job_files", "kind", "TEXT NOT NULL DEFAULT 'output'"),),
    ),
    # 11
    Migration(
        "job_counts and sweep_tallies: jobs by owner and status, and each sweep's runs by status "
        "(with output problems and storage bytes), kept by triggers in the same transaction as "
        "every change, so listings never count a million rows",
        KEPT_COUNTS_SCHEMA,
    ),
    # 12
    Migration(
        "job_names and names_search: each distinct ASCII-lowered job name once, in an FTS5 trigram "
        "index, and jobs by lower(name): a name search (LIKE '%text%') without scanning the jobs",
        NAME_SEARCH_SCHEMA,
    ),
    # 13
    Migration(
        "counts_held: the triggers keeping counts and names step aside while a change of many "
        "runs at once counts them itself, in the same transaction",
        HELD_COUNTS_SCHEMA,
    ),
    # 14
    Migration(
        "jobs_to_delete: the few jobs waiting to be deleted once they end, found without looking "
        "up every job that ends (a stop of a million runs asked it of each)",
        ("CREATE INDEX IF NOT EXISTS jobs_to_delete ON jobs (id) WHERE delete_when_done = 1",),
    ),
    # 15
    Migration(
        "single_counts: single jobs by owner and status, kept by triggers, so the per-user cap on "
        "queued jobs is checked without counting them",
        SINGLE_COUNTS_SCHEMA,
    ),
)
LATEST = len(MIGRATIONS)


def user_version(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def migrate(db: sqlite3.Connection, path: Path) -> None:
    """Bring the ledger (a connection in autocommit mode) up to LATEST, a step per transaction."""
    refuse_pre_tenancy_binaries(db, path)
    if user_version(db) > LATEST:
        raise RuntimeError(
            f"{path}: this ledger is at schema version {user_version(db)}, newer than this "
            f"orchestrator knows ({LATEST}); run the version that wrote it"
        )
    for number, step in enumerate(MIGRATIONS, start=1):
        if user_version(db) >= number:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            if user_version(db) < number:  # read inside the transaction: another opener may be first
                step.apply(db)
                db.execute(f"PRAGMA user_version = {number}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")


def refuse_pre_tenancy_binaries(db: sqlite3.Connection, path: Path) -> None:
    """Binary names became per owner (and their storage keys binaries/<owner>/...);
    a ledger from before would silently show one user's binaries to all, so refuse it."""
    columns = [row[1] for row in db.execute("PRAGMA table_info(binaries)")]
    if columns and columns[0] != "owner":
        raise RuntimeError(
            f"{path}: its binaries table predates per-user binary names; "
            "re-upload binaries into a fresh data folder"
        )
