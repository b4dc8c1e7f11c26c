"""Counts read from `job_counts` and `sweep_tallies` (migration 11) instead of counting rows.

SQLite triggers keep both tables in the same transaction as every insert, status change and
delete of a job, whichever code path makes it, so they are right after a crash too. A listing
whose filters these tables cannot answer (a name search, ids, shares) still counts its rows.
"""

from __future__ import annotations

from typing import Any

from orchestrator.models import JobStatus
from orchestrator.server.ledger.connection import Connection, marks


def kept_job_count(
    ledger: Connection, *, owner: str | None, sweep_id: str | None, statuses: list[str] | None,
) -> int | None:
    """Jobs of `owner` (or all), of one sweep (or any), in `statuses` (or any): None when
    both an owner and a sweep are asked for (no kept table is keyed by both)."""
    clauses: list[str] = []
    params: list[Any] = []
    if sweep_id is not None and owner is not None:
        return None
    if sweep_id is not None:
        table = "sweep_tallies"
        clauses.append("sweep_id = ?")
        params.append(sweep_id)
    else:
        table = "job_counts"
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
    if statuses is not None:
        clauses.append(f"status IN ({marks(len(statuses))})" if statuses else "0")
        params.extend(statuses)
    where = "WHERE " + " AND ".join(clauses) if clauses else ""
    return int(ledger._query(f"SELECT COALESCE(SUM(n), 0) FROM {table} {where}", params)[0][0])


def status_values(status: JobStatus | None, statuses: list[JobStatus] | None) -> list[str] | None:
    """The statuses a listing keeps: both filters at once keep what they share."""
    wanted = None if statuses is None else {JobStatus(s).value for s in statuses}
    if status is not None:
        one = {JobStatus(status).value}
        wanted = one if wanted is None else wanted & one
    return None if wanted is None else sorted(wanted)


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
