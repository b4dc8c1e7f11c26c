"""What the sweep explorer (plugins/explorer.py) holds on the scheduler: the sweeps a page is
open on, and the result rows the orchestrator published for them.

As for the Jobs page, the scheduler never reads the ledger. An open explorer page marks its
sweep as watched here, with the time, at every refresh; the orchestrator's feed
(orchestrator/server/explorer_feed.py) asks every second which sweeps are watched
(`watched_sweeps`) and sends each one's rows (`receive`): the whole table once, then the runs
that ended since. A sweep no page refreshed for WATCH_TTL_S is forgotten with its rows, so the
scheduler holds results only while someone looks at them.

Everything here is plain data (a dict of column lists per sweep) and runs on the scheduler's
event loop, which the dashboard's pages share: no locks.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

EXPLORER_PAGE = "/jobs/sweep"  # beside the Jobs page: ?id=SWEEP_ID
WATCH_TTL_S = 30.0
MAX_WATCHED = 64  # sweeps watched at once; a page for one more waits for a slot
SWEEP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def explorer_url(dashboard_link: str | None, sweep_id: str) -> str | None:
    """The explorer page of a sweep, beside the dashboard's status page; None without a dashboard."""
    if not dashboard_link:
        return None
    return f"{dashboard_link.rsplit('/', 1)[0]}{EXPLORER_PAGE}?id={sweep_id}"


@dataclass
class SweepTable:
    """One sweep's results as published: a list per column, a row per run (see
    orchestrator.server.sweep_results for the columns)."""

    token: str  # names one full publish; later updates carry it too
    name: str
    variables: list[str]
    outputs: list[str]
    columns: list[str]
    data: dict[str, list[Any]]
    api_url: str | None
    published_at: float
    version: int = 0  # grows with every change, so a page redraws only when it changed
    design: dict[str, Any] = field(default_factory=dict)  # {"type", "nominal"}: Sobol bars for saltelli
    rows: dict[int, int] = field(default_factory=dict)  # run index -> row

    def __post_init__(self) -> None:
        self.rows = {index: row for row, index in enumerate(self.data.get("index", []))}

    def merge(self, data: dict[str, list[Any]], published_at: float) -> None:
        """Rows of runs that changed: each replaces its run's row (or adds one)."""
        new = [column for column in data if column not in self.data]
        for column in new:  # a column this table lacks: blank for the rows it has
            self.data[column] = [None] * len(self.rows)
            self.columns.append(column)
        for i, index in enumerate(data.get("index", [])):
            row = self.rows.get(index)
            if row is None:
                row = self.rows[index] = len(self.rows)
                for values in self.data.values():
                    values.append(None)
            for column, values in data.items():
                self.data[column][row] = values[i]
        self.published_at = published_at
        self.version += 1


class ExplorerState(SchedulerPlugin):
    """The explorer's state on the scheduler (see the module)."""

    name = "orchestrator-explorer"

    def __init__(self) -> None:
        self.watched: dict[str, float] = {}  # sweep id -> time a page last refreshed
        self.tables: dict[str, SweepTable] = {}
        self.refused: dict[str, str] = {}  # sweep id -> why the orchestrator sends no rows

    def watch(self, sweep_id: str, now: float | None = None) -> bool:
        """A page is open on the sweep (again). False when too many sweeps are watched."""
        now = time.time() if now is None else now
        self.expire(now)
        if sweep_id not in self.watched and len(self.watched) >= MAX_WATCHED:
            return False
        self.watched[sweep_id] = now
        return True

    def expire(self, now: float | None = None) -> None:
        """Forget the sweeps no page refreshed for WATCH_TTL_S, and their rows."""
        now = time.time() if now is None else now
        for sweep_id in [s for s, seen in self.watched.items() if now - seen > WATCH_TTL_S]:
            del self.watched[sweep_id]
            self.tables.pop(sweep_id, None)
            self.refused.pop(sweep_id, None)


def state_of(scheduler: Any) -> ExplorerState:
    """The scheduler's ExplorerState, added on first use."""
    state = scheduler.plugins.get(ExplorerState.name)
    if state is None:
        state = ExplorerState()
        scheduler.add_plugin(state)
    return state


def watched_sweeps(dask_scheduler: Any = None) -> dict[str, str | None]:
    """Run on the scheduler by the feed: each watched sweep and the token of the rows held for
    it (None: none yet, or held from another publish), so the feed knows what to send."""
    state = state_of(dask_scheduler)
    state.expire()
    held = {sweep_id: table.token for sweep_id, table in state.tables.items()}
    return {sweep_id: held.get(sweep_id, "refused" if sweep_id in state.refused else None)
            for sweep_id in state.watched}


def receive(update: dict[str, Any], dask_scheduler: Any = None) -> None:
    """Run on the scheduler by the feed: a sweep's whole table (`full`), the rows of runs
    that ended since (same token), or why nothing is shown (`refused`)."""
    state = state_of(dask_scheduler)
    sweep_id = update["sweep_id"]
    if sweep_id not in state.watched:
        return  # nobody looks any more
    if "refused" in update:
        state.tables.pop(sweep_id, None)
        state.refused[sweep_id] = update["refused"]
        return
    state.refused.pop(sweep_id, None)
    held = state.tables.get(sweep_id)
    if update.get("full"):
        version = held.version + 1 if held is not None else 0
        state.tables[sweep_id] = SweepTable(
            token=update["token"], name=update["name"], variables=update["variables"],
            outputs=update["outputs"], columns=list(update["data"]), data=update["data"],
            api_url=update.get("api_url"), published_at=update["published_at"], version=version,
            design=update.get("design") or {},
        )
    elif held is not None and held.token == update["token"]:
        held.merge(update["data"], update["published_at"])


def watch(sweep_id: str, dask_scheduler: Any = None) -> bool:
    """Run on the scheduler: mark a sweep watched, as an open page does (tools and tests)."""
    return state_of(dask_scheduler).watch(sweep_id)


def held_table(sweep_id: str, dask_scheduler: Any = None) -> dict[str, Any] | None:
    """Run on the scheduler: what it holds of a sweep, as plain data (tools and tests)."""
    state = state_of(dask_scheduler)
    if sweep_id in state.refused:
        return {"refused": state.refused[sweep_id]}
    table = state.tables.get(sweep_id)
    if table is None:
        return None
    return {"name": table.name, "variables": table.variables, "outputs": table.outputs,
            "data": table.data, "api_url": table.api_url, "version": table.version, "token": table.token}
