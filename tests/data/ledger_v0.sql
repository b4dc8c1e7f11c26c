-- A ledger as the code before numbered migrations wrote it (user_version 0): the CREATE
-- statements its Store executed (plus JobIdentities' job_uids), with rows, dumped by
-- sqlite3's iterdump. tests/test_ledger_migrations.py opens a copy and migrates it.
BEGIN TRANSACTION;
CREATE TABLE auth_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    required INTEGER NOT NULL,
    changed_by TEXT NOT NULL,
    changed_at TEXT NOT NULL
);
INSERT INTO "auth_changes" VALUES(1,1,'alice','2026-11-30T15:19:34.235190+00:00');
CREATE TABLE binaries (
    owner TEXT NOT NULL,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    content_type TEXT NOT NULL,
    uploaded_at TEXT NOT NULL,
    PRIMARY KEY (owner, name, version)
);
INSERT INTO "binaries" VALUES('alice','sim.py',1,100,'cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd','text/x-python','2026-11-01T12:00:00+00:00');
CREATE TABLE job_files (
    job_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    PRIMARY KEY (job_id, path)
);
INSERT INTO "job_files" VALUES('job1','out/lift.csv',12,'abababababababababababababababababababababababababababababababab');
CREATE TABLE job_shares (
    job_id TEXT NOT NULL,
    user TEXT NOT NULL,
    shared_by TEXT NOT NULL,
    shared_at TEXT NOT NULL,
    PRIMARY KEY (job_id, user)
);
INSERT INTO "job_shares" VALUES('job1','bob','alice','2026-11-30T15:19:34.234991+00:00');
CREATE TABLE job_statuses (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    status TEXT NOT NULL,
    at TEXT NOT NULL,
    reason TEXT,
    attempt INTEGER NOT NULL DEFAULT 0
);
INSERT INTO "job_statuses" VALUES(1,'job1','CREATED','2026-11-01T12:00:00+00:00',NULL,0);
INSERT INTO "job_statuses" VALUES(2,'job1','QUEUED','2026-11-01T12:00:00+00:00','queued',0);
INSERT INTO "job_statuses" VALUES(3,'job1','RUNNING','2026-11-01T12:00:00+00:00','on w1',0);
INSERT INTO "job_statuses" VALUES(4,'job1','COMPLETED','2026-11-01T12:00:00+00:00',NULL,0);
INSERT INTO "job_statuses" VALUES(5,'job2','QUEUED','2026-11-01T12:00:00+00:00','queued',0);
INSERT INTO "job_statuses" VALUES(6,'sw1-0','QUEUED','2026-11-01T12:00:00+00:00','queued',0);
INSERT INTO "job_statuses" VALUES(7,'sw1-1','QUEUED','2026-11-01T12:00:00+00:00','queued',0);
INSERT INTO "job_statuses" VALUES(8,'sw1-2','QUEUED','2026-11-01T12:00:00+00:00','queued',0);
INSERT INTO "job_statuses" VALUES(9,'sw1-0','FAILED','2026-11-01T12:00:00+00:00','exit code 1',0);
CREATE TABLE job_uids (user TEXT PRIMARY KEY, uid INTEGER NOT NULL UNIQUE);
INSERT INTO "job_uids" VALUES('alice',61000);
CREATE TABLE jobs (
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
INSERT INTO "jobs" VALUES(1,'job1','airfoil','alice','command','COMPLETED',NULL,'{"command": "python sim.py", "binaries": [], "files": [], "env": {"A": "1"}, "secret_env": {"TOKEN": "****"}, "resources": {"cores": 1.0, "gpus": 0, "memory": null}, "timeout_s": null, "retries": 0}',0,0,0,10,40,'w1',NULL,NULL,NULL,'2026-11-01T12:00:00+00:00','2026-11-01T12:00:00+00:00','2026-11-01T12:00:00+00:00','2026-11-01T12:00:00+00:00','{"exit_code":0,"outputs":{"lift":1.5},"value":null,"started_at":null,"finished_at":null,"duration_s":null,"worker":null,"error":null}',0,NULL);
INSERT INTO "jobs" VALUES(2,'job2','queued','bob','command','QUEUED',NULL,'{"command": "sleep 100", "binaries": [], "files": [], "env": {}, "secret_env": {}, "resources": {"cores": 1.0, "gpus": 0, "memory": null}, "timeout_s": null, "retries": 0}',0,0,0,0,0,NULL,NULL,NULL,NULL,'2026-11-01T12:00:00+00:00',NULL,NULL,NULL,NULL,0,'stopped by bob');
INSERT INTO "jobs" VALUES(3,'sw1-0','sweep','alice','command','FAILED','exit code 1','{"command": "echo {x}", "binaries": [], "files": [], "env": {}, "secret_env": {}, "resources": {"cores": 1.0, "gpus": 0, "memory": null}, "timeout_s": null, "retries": 0}',0,0,0,0,0,NULL,'sw1',0,'{"x": 0}','2026-11-01T12:00:00+00:00',NULL,NULL,'2026-11-01T12:00:00+00:00',NULL,0,NULL);
INSERT INTO "jobs" VALUES(4,'sw1-1','sweep','alice','command','QUEUED',NULL,'{"command": "echo {x}", "binaries": [], "files": [], "env": {}, "secret_env": {}, "resources": {"cores": 1.0, "gpus": 0, "memory": null}, "timeout_s": null, "retries": 0}',0,0,0,0,0,NULL,'sw1',1,'{"x": 1}','2026-11-01T12:00:00+00:00',NULL,NULL,NULL,NULL,0,NULL);
INSERT INTO "jobs" VALUES(5,'sw1-2','sweep','alice','command','QUEUED',NULL,'{"command": "echo {x}", "binaries": [], "files": [], "env": {}, "secret_env": {}, "resources": {"cores": 1.0, "gpus": 0, "memory": null}, "timeout_s": null, "retries": 0}',0,0,0,0,0,NULL,'sw1',2,'{"x": 2}','2026-11-01T12:00:00+00:00',NULL,NULL,NULL,NULL,0,NULL);
CREATE TABLE secrets (
    holder TEXT PRIMARY KEY,  -- a job id, or a sweep id (shared by its runs)
    sealed BLOB NOT NULL
);
INSERT INTO "secrets" VALUES('job1',X'7365616C65642D6A6F6231');
CREATE TABLE sweeps (
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
INSERT INTO "sweeps" VALUES(1,'sw1','sweep','alice','command','{"max_parallel": 2, "runtime": {"shell_template": "echo {x}"}}','["x"]',7,5,NULL,'2026-11-01T12:00:00+00:00');
CREATE TABLE tokens (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    admin INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
INSERT INTO "tokens" VALUES(1,'alice','ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff',1,'2026-11-30T15:19:34.235145+00:00',NULL);
CREATE INDEX jobs_status ON jobs(status, seq);
CREATE INDEX jobs_seq ON jobs(seq);
CREATE INDEX jobs_sweep ON jobs(sweep_id, idx);
CREATE INDEX jobs_sweep_stats ON jobs(sweep_id, status, finished_at, storage_bytes);
CREATE INDEX jobs_owner ON jobs(owner, seq);
CREATE INDEX jobs_owner_status ON jobs(owner, status, sweep_id);
CREATE INDEX job_statuses_job ON job_statuses(job_id);
CREATE INDEX sweeps_owner ON sweeps(owner, seq);
CREATE INDEX job_shares_user ON job_shares(user, job_id);
DELETE FROM "sqlite_sequence";
INSERT INTO "sqlite_sequence" VALUES('jobs',5);
INSERT INTO "sqlite_sequence" VALUES('job_statuses',9);
INSERT INTO "sqlite_sequence" VALUES('sweeps',1);
INSERT INTO "sqlite_sequence" VALUES('tokens',1);
INSERT INTO "sqlite_sequence" VALUES('auth_changes',1);
COMMIT;
