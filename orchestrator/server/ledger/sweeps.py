"""Sweeps (`sweeps`) and what is read of their runs as a group."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from orchestrator.models import TERMINAL_STATUSES, JobRecord, JobStatus, StatusChange
from orchestrator.server.ledger.connection import Connection, marks, ts
from orchestrator.server.ledger.jobs import insert_job_rows, job_from_row
from orchestrator.server.ledger.kept_counts import sweep_tally
from orchestrator.server.ledger.secrets import insert_sealed
from orchestrator.server.ledger.sweep_runs import delete_runs, insert_all, runs_to_delete

INSERT_CHUNK = 10_000  # rows per write transaction when recording a sweep's runs
READ_CHUNK = 5_000  # runs per query when reading a sweep's whole table
TERMINAL_VALUES = tuple(s.value for s in TERMINAL_STATUSES)


@dataclass
class SweepRow:
    """A sweep as the ledger keeps it; its runs are jobs with its id as their sweep_id."""

    id: str
    name: str
    owner: str
    kind: str
    spec: dict[str, Any]  # what it was created with, plus the `runtime` its dispatcher needs
    names: list[str]  # its variables, in column order
    seed: int | None
    created_at: datetime
    input_bytes: int = 0  # files shared by its runs
    stop_reason: str | None = field(default=None)  # why it was stopped; the first reason wins


class SweepsTable(Connection):
    def insert_sweep(
        self, sweep: SweepRow, runs: list[JobRecord], history: list[StatusChange],
        sealed: bytes | None = None,
    ) -> None:
        """The sweep's runs, then the sweep with its shared secrets.

        Runs go in chunks of their own transactions, so a million-run sweep never holds the
        writer for long (status changes of running work interleave). The sweep row comes
        last: until it exists the runs belong to nothing, nothing dispatches them, and a
        crash before it leaves runs that the next start removes (`drop_half_created_sweeps`).
        """
        for start in range(0, len(runs), INSERT_CHUNK):
            with self.transaction() as db:
                insert_job_rows(db, runs[start:start + INSERT_CHUNK], history)
        self._insert_sweep_row(sweep, sealed)

    def insert_sweep_rows(
        self, sweep: SweepRow, chunks: Iterable[list[tuple[Any, ...]]], history: list[StatusChange],
        sealed: bytes | None = None,
    ) -> None:
        """As insert_sweep, from chunks of rows (sweep_runs.RunRows) made while they are
        recorded: no record object per run, and only one chunk held at a time."""
        insert_all(self, chunks, history)
        self._insert_sweep_row(sweep, sealed)

    def _insert_sweep_row(self, sweep: SweepRow, sealed: bytes | None) -> None:
        """The sweep's own row, once all its runs are recorded (see insert_sweep)."""
        with self.transaction() as db:
            db.execute(
                "INSERT INTO sweeps (id, name, owner, kind, spec, names, seed, created_at, input_bytes)"
                " VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    sweep.id, sweep.name, sweep.owner, sweep.kind, json.dumps(sweep.spec),
                    json.dumps(sweep.names), sweep.seed, ts(sweep.created_at), sweep.input_bytes,
                ),
            )
            insert_sealed(db, sweep.id, sealed)

    def grow_sweep(self, sweep_id: str, runs: list[JobRecord], history: list[StatusChange],
                   spec: dict[str, Any]) -> None:
        """More runs for a sweep, and its spec saying how they were made, in one transaction
        (an extension is as large as a request may make a sweep: well under a chunk's worth
        of writer time per thousand runs)."""
        with self.transaction() as db:
            insert_job_rows(db, runs, history)
            db.execute("UPDATE sweeps SET spec = ? WHERE id = ?", (json.dumps(spec), sweep_id))

    def set_sweep_spec(self, sweep_id: str, spec: dict[str, Any]) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sweeps SET spec = ? WHERE id = ?", (json.dumps(spec), sweep_id))

    def drop_half_created_sweeps(self) -> None:
        """Runs recorded for a sweep whose own row never followed (a crash while creating it):
        the client never got an answer, so they are removed rather than run."""
        orphans = [row[0] for row in self._db.execute(
            "SELECT DISTINCT sweep_id FROM jobs WHERE sweep_id IS NOT NULL"
            " AND sweep_id NOT IN (SELECT id FROM sweeps)")]
        for sweep_id in orphans:
            while seqs := runs_to_delete(self, sweep_id, INSERT_CHUNK)[0]:  # a crash midway: the next start goes on
                delete_runs(self, sweep_id, seqs)

    def get_sweep(self, sweep_id: str) -> SweepRow | None:
        rows = self._query("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        return sweep_from_row(rows[0]) if rows else None

    def list_sweeps(
        self, owner: str | None = None, offset: int = 0, limit: int | None = 100,
        newest_first: bool = False,
    ) -> tuple[int, list[SweepRow]]:
        where, params = ("WHERE owner = ?", [owner]) if owner is not None else ("", [])
        count = self._query(f"SELECT COUNT(*) FROM sweeps {where}", params)[0][0]
        page = f" LIMIT {int(limit)} OFFSET {int(offset)}" if limit is not None else ""
        order = "seq DESC" if newest_first else "seq"
        rows = self._query(f"SELECT * FROM sweeps {where} ORDER BY {order}{page}", params)
        return count, [sweep_from_row(row) for row in rows]

    def existing_sweep_ids(self, sweep_ids: list[str]) -> set[str]:
        """Which of these sweep ids have a row."""
        return {row[0] for row in self.select_in("SELECT id FROM sweeps WHERE id IN ({})", sweep_ids)}

    def set_sweep_stop_reason(self, sweep_id: str, reason: str) -> bool:
        """Record why a sweep was stopped; the first reason wins."""
        with self.transaction() as db:
            return bool(db.execute(
                "UPDATE sweeps SET stop_reason = ? WHERE id = ? AND stop_reason IS NULL",
                (reason, sweep_id),
            ).rowcount)

    def clear_sweep_stop_reason(self, sweep_id: str) -> None:
        """A stopped sweep runs again (a rerun): it is no longer stopping."""
        with self.transaction() as db:
            db.execute("UPDATE sweeps SET stop_reason = NULL WHERE id = ?", (sweep_id,))

    def delete_sweep(self, sweep_id: str) -> None:
        """The sweep's row and sealed secrets; its runs are deleted as jobs first."""
        with self.transaction() as db:
            db.execute("DELETE FROM secrets WHERE holder = ?", (sweep_id,))
            db.execute("DELETE FROM sweeps WHERE id = ?", (sweep_id,))

    def sweep_counts(self, sweep_id: str | None) -> dict[str, int]:
        """Runs of a sweep by status; with None, the jobs outside any sweep."""
        if sweep_id is not None:
            return sweep_tally(self, sweep_id)[0]
        rows = self._query("SELECT status, COUNT(*) FROM jobs WHERE sweep_id IS NULL GROUP BY status")
        return {row[0]: row[1] for row in rows}

    def sweep_tally(self, sweep_id: str) -> tuple[dict[str, int], int]:
        """A sweep's runs by status, and how many completed with outputs that could not all be
        read (their table cells are blank for a reason), in one pass over its runs."""
        counts, problems, _ = sweep_tally(self, sweep_id)  # kept by triggers: no pass over the runs
        return counts, problems

    def sweep_storage_bytes(self, sweep_id: str) -> int:
        """What a sweep's runs keep in storage (its shared inputs are on the sweep)."""
        return sweep_tally(self, sweep_id)[2]

    def sweep_last_finish(self, sweep_id: str) -> str | None:
        """The latest finish of its runs: one index seek per status it has, not a pass over them."""
        rows = self._query(
            "SELECT MAX((SELECT MAX(finished_at) FROM jobs WHERE sweep_id = t.sweep_id AND status = t.status))"
            " FROM sweep_tallies t WHERE t.sweep_id = ? AND t.n > 0", (sweep_id,))
        return rows[0][0]

    def sweep_rows(self, sweep_id: str) -> list[tuple[int, str, str, str | None, dict[str, Any], dict[str, Any] | None]]:
        """(index, job id, status, status reason, variables, result) of every run, in index order.

        Read as plain tuples: a results table of a large sweep need not build a model per run.
        Read a chunk of runs per query: the reader's lock is held for one chunk at a time, so a
        100,000-run table read in a thread never holds up the event loop's own reads.
        """
        rows: list[sqlite3.Row] = []
        while True:
            chunk = self._query(
                "SELECT idx, id, status, status_reason, variables, result FROM jobs"
                " WHERE sweep_id = ? AND idx > ? ORDER BY idx LIMIT ?",
                (sweep_id, rows[-1][0] if rows else -1, READ_CHUNK),
            )
            rows += chunk
            if len(chunk) < READ_CHUNK:
                break
        return [
            (row[0], row[1], row[2], row[3], json.loads(row[4] or "{}"), json.loads(row[5]) if row[5] else None)
            for row in rows
        ]

    def sweep_rows_after(self, sweep_id: str, after: int, limit: int) -> list[
            tuple[int, str, str, str | None, dict[str, Any], dict[str, Any] | None]]:
        """As sweep_rows, but only the first `limit` runs with an index above `after`: one page
        of the results table, one seek into the (sweep_id, idx) index, whatever the sweep's size."""
        rows = self._query(
            "SELECT idx, id, status, status_reason, variables, result FROM jobs"
            " WHERE sweep_id = ? AND idx > ? ORDER BY idx LIMIT ?", (sweep_id, after, limit))
        return [
            (row[0], row[1], row[2], row[3], json.loads(row[4] or "{}"), json.loads(row[5]) if row[5] else None)
            for row in rows
        ]

    def sweep_output_columns(self, sweep_id: str, key: str, names: list[str]) -> list[list[Any]]:
        """Columns over every run of a sweep: indexes, statuses, the JSON type of output `key`
        (None where a run has none), its values, then each variable's values; aligned, but not
        necessarily in index order. SQLite picks the values out of each run's JSON and answers
        a chunk of runs (as sweep_rows) as one JSON array per column, so no object is built per
        run: decoding 100,000 results would make Python's collector stop every thread, the
        event loop's too, for a quarter of a second."""
        inner = "".join(f", json_extract(j.variables, ?) var{i}" for i in range(len(names)))
        arrays = "".join(f", json_group_array(var{i})" for i in range(len(names)))
        paths = [f'$."{name}"' for name in names]  # variable names are identifiers
        sql = (f"SELECT max(idx), count(*), json_group_array(idx), json_group_array(status),"
               f" json_group_array(kind), json_group_array(value){arrays} FROM ("
               f"SELECT j.idx idx, j.status status, o.type kind, o.value value{inner} FROM jobs j"
               " LEFT JOIN json_each(j.result, '$.outputs') o ON o.key = ?"
               " WHERE j.sweep_id = ? AND j.idx > ? ORDER BY j.idx LIMIT ?)")
        columns: list[list[Any]] = [[] for _ in range(4 + len(names))]
        after = -1
        while True:
            last, count, *chunk = self._query(sql, (*paths, key, sweep_id, after, READ_CHUNK))[0]
            for column, values in zip(columns, chunk, strict=True):
                column += json.loads(values)
            if count < READ_CHUNK:
                return columns
            after = last

    def sweep_output_keys(self, sweep_id: str) -> list[str]:
        """Every output key the runs of a sweep reported, sorted."""
        rows = self._query("SELECT DISTINCT o.key FROM jobs j, json_each(j.result, '$.outputs') o"
                           " WHERE j.sweep_id = ? ORDER BY o.key", (sweep_id,))
        return [row[0] for row in rows]

    def finished_runs(self, sweep_id: str, after: int, limit: int) -> tuple[int, list[JobRecord]]:
        """Runs that ended after the cursor `after`, in the order they ended, and the new cursor."""
        rows = self._query(
            "SELECT s.seq, s.job_id FROM job_statuses s JOIN jobs j ON j.id = s.job_id"
            f" WHERE s.seq > ? AND j.sweep_id = ? AND s.status IN ({marks(len(TERMINAL_VALUES))})"
            " ORDER BY s.seq LIMIT ?",
            (after, sweep_id, *TERMINAL_VALUES, limit),
        )
        if not rows:
            return after, []
        jobs = self.select_in("SELECT * FROM jobs WHERE id IN ({})", list({row[1]: None for row in rows}))
        by_id = {job.id: job for job in map(job_from_row, jobs)}
        return rows[-1][0], [by_id[row[1]] for row in rows if row[1] in by_id]

    def finished_cursor(self, sweep_id: str) -> int:
        """The sweep's finished-runs cursor now (its last status change): a run that ends later
        gets a later one, so `finished_runs(sweep_id, cursor)` returns exactly those."""
        rows = self._query("SELECT MAX(s.seq) FROM job_statuses s JOIN jobs j ON j.id = s.job_id"
                           " WHERE j.sweep_id = ?", (sweep_id,))
        return int(rows[0][0] or 0)

    def growing_sweep_ids(self) -> list[str]:
        """Adaptive sweeps that have not decided to stop growing."""
        rows = self._query("SELECT id FROM sweeps WHERE json_extract(spec, '$.until_state.state') = 'growing'")
        return [row[0] for row in rows]

    def active_sweep_ids(self) -> list[str]:
        rows = self._query(
            "SELECT DISTINCT sweep_id FROM jobs WHERE sweep_id IS NOT NULL AND status IN (?, ?)",
            (JobStatus.QUEUED.value, JobStatus.RUNNING.value),
        )
        return [row[0] for row in rows]


def sweep_from_row(row: sqlite3.Row) -> SweepRow:
    fields = dict(row)
    del fields["seq"]
    fields["spec"] = json.loads(fields["spec"])
    fields["names"] = json.loads(fields["names"])
    fields["created_at"] = datetime.fromisoformat(fields["created_at"])
    return SweepRow(**fields)
