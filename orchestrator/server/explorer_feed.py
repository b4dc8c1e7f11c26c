"""Feeds the dashboard's sweep explorer (plugins/explorer.py) with the results of the sweeps
someone is looking at.

The scheduler never reads the ledger (see plugins/explorer_state.py). Every INTERVAL_S the
feed asks it which sweeps an open page watches, and sends each one's rows: the whole results
table once (`full`, under a new token), then only the runs that ended since, read from the
ledger's cursor of finished runs (what `GET /sweeps/{id}/finished` reads). A sweep is read
again only when one of its runs ended (the engine says which jobs end) or every RECHECK_S,
so a page left open on a finished sweep costs nothing after its first publish.

Results are users' data and the dashboard has no authentication: rows are sent only when
the API needs no token (one-user mode) or the `dashboard_outputs` setting allows it;
otherwise the page is told why it shows nothing. Everything that reads the ledger runs in a
thread (asyncio.to_thread), never on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from orchestrator.models import JobRecord
from orchestrator.plugins.explorer_state import receive, watched_sweeps
from orchestrator.server.background import BackgroundLoop
from orchestrator.server.engine import Engine
from orchestrator.server.ledger import Store
from orchestrator.server.sweep_results import EXPLAINING_COLUMNS, RESULT_COLUMNS, results_table
from orchestrator.sweep_models import ResultsTable

logger = logging.getLogger(__name__)

INTERVAL_S = 1.0
RETRY_S = 30.0  # after the scheduler refused (e.g. started without orchestrator.plugins.dashboard)
RECHECK_S = 10.0  # a watched sweep's ledger is read this often even when no run of it ended
PAGE = 20_000  # runs per read of the finished cursor; more wait for the next round
LOAD_FACTOR = 5  # a round that took t waits LOAD_FACTOR * t before the next
REFUSED = (
    "This orchestrator requires API tokens, and the Dask dashboard has no authentication, so "
    "sweep results are not sent to it. An administrator may allow it: orchestrator serve "
    "--dashboard-outputs (ORCHESTRATOR_DASHBOARD_OUTPUTS=true)."
)


@dataclass
class Published:
    """What the scheduler holds of one sweep, as this feed sent it."""

    token: str
    cursor: int  # finished runs up to here are sent
    names: list[str]
    columns: list[str]
    job_ids: frozenset[str]
    dirty: bool = False  # a run of it ended since the last read
    read_at: float = 0.0  # time.monotonic() of the last read


class SweepRows:
    """What to send for a watched sweep (called in a thread); knows what was sent."""

    def __init__(self, store: Store, allowed: Callable[[], bool], api_url: Callable[[], str | None]):
        self.store = store
        self.allowed = allowed
        self.api_url = api_url
        self.published: dict[str, Published] = {}
        self._lock = threading.Lock()  # `ended` runs on the event loop, reads in a thread

    def ended(self, job_ids: list[str]) -> None:
        """Jobs that ended: their watched sweeps have rows to send."""
        with self._lock:
            for state in self.published.values():
                if not state.dirty and not state.job_ids.isdisjoint(job_ids):
                    state.dirty = True

    def forget_all_but(self, sweep_ids: Iterable[str]) -> None:
        """Sweeps no page watches any more: the scheduler dropped their rows too."""
        keep = set(sweep_ids)
        with self._lock:
            for sweep_id in [s for s in self.published if s not in keep]:
                del self.published[sweep_id]

    def forget(self, sweep_id: str) -> None:
        with self._lock:
            self.published.pop(sweep_id, None)

    def update(self, sweep_id: str, held: str | None) -> dict[str, Any] | None:
        """The update for a watched sweep of which the scheduler holds `held` (a token, None,
        or "refused"); None when there is nothing to send."""
        if not self.allowed():  # said only of its own sweeps: others may share the scheduler
            self.forget(sweep_id)
            if held == "refused" or self.store.get_sweep(sweep_id) is None:
                return None
            return {"sweep_id": sweep_id, "refused": REFUSED}
        state = self.published.get(sweep_id)
        if state is None or held != state.token:
            return self.full(sweep_id)
        if state.dirty or time.monotonic() - state.read_at >= RECHECK_S:
            return self.since(sweep_id, state)
        return None

    def full(self, sweep_id: str) -> dict[str, Any] | None:
        """The whole table under a new token (None for a sweep this ledger does not have: the
        scheduler may serve another orchestrator that has it)."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None:
            self.forget(sweep_id)
            return None
        read_at = time.monotonic()
        cursor = self.store.finished_cursor(sweep_id)  # first: what ends while reading is sent next
        table = results_table(sweep.names, self.store.sweep_rows(sweep_id))
        data = columns_of(table)
        state = Published(token=uuid.uuid4().hex, cursor=cursor, names=sweep.names,
                          columns=table.columns, job_ids=frozenset(data["job_id"]), read_at=read_at)
        with self._lock:
            self.published[sweep_id] = state
        return {
            "sweep_id": sweep_id, "token": state.token, "full": True, "name": sweep.name,
            "variables": sweep.names, "outputs": output_columns(table, sweep.names), "data": data,
            "api_url": self.api_url(), "published_at": time.time(), "design": design_of(sweep.spec),
        }

    def since(self, sweep_id: str, state: Published) -> dict[str, Any] | None:
        """The rows of runs that ended since the last read (a full table again when they bring
        an output column the scheduler's table lacks)."""
        state.dirty = False  # first: an end reported while reading marks it again
        state.read_at = time.monotonic()
        cursor, runs = self.store.finished_runs(sweep_id, state.cursor, PAGE)
        if len(runs) == PAGE:
            state.dirty = True  # more are waiting
        if not runs:
            return None
        latest = {run.index: run for run in runs}  # a run that ended twice (a rerun): its last end
        table = results_table(state.names, [_row(run) for run in latest.values()])
        if not set(table.columns) <= set(state.columns):
            return self.full(sweep_id)
        state.cursor = cursor
        new_ids = {run.id for run in runs} - state.job_ids
        if new_ids:  # runs added since (a sweep that grows)
            state.job_ids = state.job_ids | new_ids
        return {"sweep_id": sweep_id, "token": state.token, "data": columns_of(table),
                "published_at": time.time()}


class ExplorerFeed(BackgroundLoop):
    """Runs SweepRows every INTERVAL_S for the sweeps watched on the scheduler (see the module)."""

    def __init__(self, store: Store, engine: Engine, *, allowed: Callable[[], bool],
                 api_url: Callable[[], str | None]):
        self.engine = engine
        self.rows = SweepRows(store, allowed, api_url)
        engine.on_finished.append(self.rows.ended)

    async def _run(self) -> None:
        warned = False
        while True:
            began = time.monotonic()
            try:
                await self.engine.until_online()
                await self.round()
            except Exception as exc:  # noqa: BLE001 - the page is a view: never fail the service
                if not warned:
                    logger.warning("the dashboard's sweep explorer cannot be updated: %s", exc)
                    warned = True
                await asyncio.sleep(RETRY_S)
                continue
            await asyncio.sleep(max(INTERVAL_S, LOAD_FACTOR * (time.monotonic() - began)))

    async def round(self) -> None:
        """Ask which sweeps are watched; send each what it lacks."""
        client = self.engine.client
        watched: dict[str, str | None] = await client.run_on_scheduler(watched_sweeps)
        self.rows.forget_all_but(watched)
        for sweep_id, held in watched.items():
            update = await asyncio.to_thread(self.rows.update, sweep_id, held)
            if update is not None:
                await client.run_on_scheduler(receive, update)


def design_of(spec: dict[str, Any]) -> dict[str, Any]:
    """What the page needs of the design: a saltelli design's runs give Sobol indices."""
    return {"type": (spec.get("design") or {}).get("type") if spec.get("variables") else None,
            "nominal": bool(spec.get("include_nominal_run"))}


def columns_of(table: ResultsTable) -> dict[str, list[Any]]:
    """The table as a list per column: what the scheduler keeps."""
    return {column: [row.get(column) for row in table.rows] for column in table.columns}


def output_columns(table: ResultsTable, names: list[str]) -> list[str]:
    fixed = {*RESULT_COLUMNS, *EXPLAINING_COLUMNS, *names}
    return [column for column in table.columns if column not in fixed]


def _row(run: JobRecord) -> tuple[int, str, str, str | None, dict[str, Any], dict[str, Any] | None]:
    """A finished run as the results table reads the ledger's rows (sweep_rows)."""
    result = run.result.model_dump(mode="json") if run.result is not None else None
    return (run.index if run.index is not None else -1, run.id, run.status.value, run.status_reason,
            run.variables or {}, result)
