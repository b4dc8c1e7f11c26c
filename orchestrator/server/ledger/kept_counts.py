"""Counts read from `job_counts` and `sweep_tallies` (migration 11) instead of counting rows.

SQLite triggers keep both tables in the same transaction as every insert, status change and
delete of a job, whichever code path makes it, so they are right after a crash too. A listing
whose filters these tables cannot answer (a name search, ids, shares) still counts its rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from orchestrator.server.ledger.connection import Connection


@contextmanager
def counts_held(db: sqlite3.Connection) -> Iterator[None]:
    """Inside the caller's transaction: the per-row triggers that keep counts and names step
    aside (migration 13) while the body changes many runs at once and counts them itself
    (`count_runs`, `name_runs`): a trigger per row cost a fifth of stopping or creating a
    million runs."""
    db.execute("UPDATE counts_held SET held = 1")
    try:
        yield
    finally:  # a failure rolls the whole transaction back; this only guards one caught inside it
        db.execute("UPDATE counts_held SET held = 0")


def count_runs(db: sqlite3.Connection, sweep_id: str, owner: str, status: str, runs: int,
               storage_bytes: int, problems: int = 0) -> None:
    """`runs` runs of the sweep in `status` (owned by `owner`), with their bytes and output
    problems, added to the kept counts, or taken away when negative."""
    db.execute("INSERT INTO job_counts (owner, status, n) VALUES (?, ?, ?)"
               " ON CONFLICT (owner, status) DO UPDATE SET n = n + excluded.n", (owner, status, runs))
    db.execute("INSERT INTO sweep_tallies (sweep_id, status, n, problems, storage_bytes) VALUES (?, ?, ?, ?, ?)"
               " ON CONFLICT (sweep_id, status) DO UPDATE SET n = n + excluded.n, problems = problems +"
               " excluded.problems, storage_bytes = storage_bytes + excluded.storage_bytes",
               (sweep_id, status, runs, problems, storage_bytes))


def name_runs(db: sqlite3.Connection, name: str, runs: int) -> None:
    """`runs` new jobs named `name` in the name index (taken away when negative), as the
    per-row triggers would count them."""
    db.execute("INSERT INTO job_names (name, n) VALUES (lower(?), ?) ON CONFLICT (name) DO UPDATE SET n = n + excluded.n",
               (name, runs))


def kept_table(*, search: str | None, ids: list[str] | None, shared_with: str | None,
               owner: str | None, sweep_id: str | None) -> str | None:
    """The kept table that answers a listing's count, or None when its filters need the rows:
    a name, ids, shares, or an owner and a sweep at once (no table is keyed by both)."""
    if search or ids is not None or shared_with is not None or (owner is not None and sweep_id is not None):
        return None
    return "sweep_tallies" if sweep_id is not None else "job_counts"


def kept_count(ledger: Connection, table: str, where: str, params: list[Any]) -> int:
    """A listing's count from a kept table: its WHERE (on status, owner or sweep_id, the
    columns the kept tables share with `jobs`) applies there as it is."""
    return int(ledger._query(f"SELECT COALESCE(SUM(n), 0) FROM {table} {where}", params)[0][0])


def counts_by_status(ledger: Connection) -> dict[str, int]:
    """Every job by status."""
    rows = ledger._query("SELECT status, SUM(n) FROM job_counts GROUP BY status HAVING SUM(n) > 0")
    return {row[0]: row[1] for row in rows}


def sweep_tally(ledger: Connection, sweep_id: str) -> tuple[dict[str, int], int, int]:
    """A sweep's runs by status, how many completed with an output problem, and the bytes
    its runs keep in storage."""
    rows = ledger._query(
        "SELECT status, n, problems, storage_bytes FROM sweep_tallies WHERE sweep_id = ? AND n > 0",
        (sweep_id,))
    return ({row[0]: row[1] for row in rows}, sum(row[2] for row in rows),
            sum(row[3] for row in rows))
