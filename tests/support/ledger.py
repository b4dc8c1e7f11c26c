"""Checks of the ledger's kept state against its rows, shared by the tests of every set change."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def assert_kept_counts_true(path: Path) -> None:
    """The kept tables equal a count of the rows."""
    db = sqlite3.connect(path)
    try:
        kept = set(db.execute("SELECT owner, status, n FROM job_counts WHERE n > 0"))
        counted = set(db.execute("SELECT owner, status, COUNT(*) FROM jobs GROUP BY owner, status"))
        assert kept == counted
        assert db.execute("SELECT COUNT(*) FROM job_counts WHERE n < 0").fetchone()[0] == 0
        kept = set(db.execute("SELECT sweep_id, status, n, problems, storage_bytes FROM sweep_tallies"
                              " WHERE n > 0 OR problems != 0 OR storage_bytes != 0"))
        counted = set(db.execute(
            "SELECT sweep_id, status, COUNT(*), SUM(status = 'COMPLETED' AND json_extract(result, '$.error')"
            " IS NOT NULL), SUM(storage_bytes) FROM jobs WHERE sweep_id IS NOT NULL GROUP BY sweep_id, status"))
        assert kept == counted
        singles = set(db.execute("SELECT owner, status, n FROM single_counts WHERE n > 0"))
        assert singles == set(db.execute(
            "SELECT owner, status, COUNT(*) FROM jobs WHERE sweep_id IS NULL GROUP BY owner, status"))
        assert db.execute("SELECT COUNT(*) FROM single_counts WHERE n < 0").fetchone()[0] == 0
        named = set(db.execute("SELECT name, n FROM job_names WHERE n > 0"))
        assert named == set(db.execute("SELECT lower(name), COUNT(*) FROM jobs GROUP BY lower(name)"))
        indexed = set(db.execute("SELECT rowid, name FROM names_search"))
        assert indexed == set(db.execute("SELECT id, name FROM job_names"))
    finally:
        db.close()
