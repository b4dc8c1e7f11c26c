"""Sweeps that grow: `POST /sweeps/{id}/extend` adds samples to a sampled design, and a sweep
created with `until` extends itself, a batch at a time, until the confidence interval of a
statistic of one output is narrow enough or `max_samples` is reached.

New runs copy the sweep's first run (the binaries pinned then, its files, resources and limits)
with the next rows of the design (orchestrator/design_growth.py), and go to the sweep's
dispatcher like rerun ones. The sweep's spec records every extension (its lineage) and the
adaptive state; while that state is `growing` the sweep shows RUNNING even between batches, so
nobody waiting on it sees it end before it has decided.
"""

from __future__ import annotations

import asyncio
import logging
import math
import uuid
from datetime import datetime
from typing import Any

import numpy as np

from orchestrator import doe, templating
from orchestrator.design_growth import GROWABLE, grow
from orchestrator.errors import Conflict, ValidationFailed
from orchestrator.growth_models import Until, UntilState
from orchestrator.intervals import mean_interval, quantile_interval
from orchestrator.models import JobRecord, JobStatus, StatusChange, utcnow
from orchestrator.server import typed_sweeps
from orchestrator.server.engine import ACTIVE
from orchestrator.sweep_models import SweepCreate, SweepRecord

logger = logging.getLogger(__name__)
GROWING = "growing"


class SweepGrowth:
    """Extensions of the sweeps of one SweepService."""

    def __init__(self, sweeps: Any):
        self.sweeps = sweeps
        self.store = sweeps.store
        self._locks: dict[str, asyncio.Lock] = {}

    async def extend(self, sweep_id: str, samples: int, owner: str | None = None) -> SweepRecord:
        self.sweeps.get(sweep_id, owner)
        async with self._lock(sweep_id):
            sweep = self.store.get_sweep(sweep_id)
            if sweep.stop_reason:
                raise Conflict(f"sweep {sweep_id} was stopped ({sweep.stop_reason}); rerun it first")
            await self._add(sweep_id, samples)
        return self.sweeps.get(sweep_id)

    async def after_runs(self, sweep_id: str) -> None:
        """Every run dispatched so far has ended: an adaptive sweep decides to grow or stop."""
        async with self._lock(sweep_id):
            sweep = self.store.get_sweep(sweep_id)
            if sweep is None or (sweep.spec.get("until_state") or {}).get("state") != GROWING:
                return
            _, active = self.store.list_jobs(sweep_id=sweep_id, statuses=list(ACTIVE), limit=1)
            if active:
                return  # an extension or a rerun is still running: decide when it ends
            until = Until.model_validate(sweep.spec["until"])
            samples = sweep.spec["design"]["samples"]
            if sweep.stop_reason:
                state = UntilState(state="stopped", reason=f"stopped growing: {sweep.stop_reason}", samples=samples)
            else:
                state = await asyncio.to_thread(self._judge, sweep_id, sweep.spec, until, samples)
            self._save_state(sweep_id, state)
            if state.state == GROWING:
                await self._add(sweep_id, min(until.batch, until.max_samples - samples))

    async def resume(self) -> None:
        """After a restart: adaptive sweeps whose last batch ended while the server was down."""
        for sweep_id in self.store.growing_sweep_ids():
            await self.after_runs(sweep_id)

    # ---- adding runs ------------------------------------------------------------------

    async def _add(self, sweep_id: str, samples: int) -> None:
        sweep = self.store.get_sweep(sweep_id)
        spec = dict(sweep.spec)
        request = recorded_request(spec)
        design = request.design
        if not isinstance(design, doe.Sampled) or design.type not in GROWABLE or not request.variables:
            raise Conflict(f"only {', '.join(GROWABLE)} designs over variables can grow; "
                           f"this sweep's is {getattr(design, 'type', 'a table of cases')}")
        _, firsts = self.store.list_jobs(sweep_id=sweep_id, limit=1, order="idx")
        count = self.store.sweep_counts(sweep_id)
        extensions = list(spec.get("extensions", []))
        growth = await asyncio.to_thread(
            grow, request.variables, design, sweep.seed, design.samples, samples,
            _next_index(self.store, sweep_id, sum(count.values())), len(extensions) + 1)
        if growth.table.rows and len(growth.table.rows) + sum(count.values()) > self.sweeps.max_runs:
            raise ValidationFailed(f"the sweep would have more than {self.sweeps.max_runs} runs",
                                   {"samples": f"at most {self.sweeps.max_runs} runs in one sweep"})
        now = utcnow()
        reason = f"run of sweep {sweep_id} (extension {growth.lineage['number']})"
        runs = self._runs_of(firsts[0], request, growth.table, reason, now)
        spec["design"] = {**spec["design"], "samples": design.samples + samples}
        spec["extensions"] = [*extensions, {**growth.lineage, "at": now.isoformat()}]
        history = [StatusChange(status=JobStatus.CREATED, at=now),
                   StatusChange(status=JobStatus.QUEUED, at=now, reason=reason)]
        if self.store.get_sweep(sweep_id).stop_reason:
            return  # stopped while the extension was being made
        await asyncio.to_thread(self.store.grow_sweep, sweep_id, runs, history, spec)
        self.sweeps.feed(sweep_id, runs)

    def _runs_of(self, first: JobRecord, request: SweepCreate, table: doe.RunTable, reason: str,
                 now: datetime) -> list[JobRecord]:
        """New runs like the sweep's first: of its command, or of the job type revision it pinned."""
        prototype = _fresh_like(first, reason, now)
        if first.job_type is None:
            return _new_runs(prototype, request, table)
        manifest, _ = self.sweeps.job_types.revision_contract(first.job_type)
        return typed_sweeps.grown_runs(prototype, first.inputs or {}, request, manifest, table)

    # ---- adaptive stopping ------------------------------------------------------------

    def _judge(self, sweep_id: str, spec: dict[str, Any], until: Until, samples: int) -> UntilState:
        values = self._output_values(sweep_id, until.output)
        state = estimate(until, values, spec, samples)
        if state.state == GROWING and samples >= until.max_samples:
            state.state = "max_samples"
            state.reason = f"max_samples reached ({samples}); {state.reason}"
        return state

    def _output_values(self, sweep_id: str, output: str) -> np.ndarray:
        """The output of every run in index order; NaN where a run has none (not completed,
        or no number): Sobol indices need the whole Saltelli matrix in order."""
        rows = self.store.sweep_rows(sweep_id)
        values = np.full(len(rows), np.nan)
        for position, (_, _, status, _, _, result) in enumerate(rows):
            value = ((result or {}).get("outputs") or {}).get(output)
            if status == JobStatus.COMPLETED.value and isinstance(value, int | float) and not isinstance(value, bool):
                values[position] = float(value)
        return values

    def _save_state(self, sweep_id: str, state: UntilState) -> None:
        sweep = self.store.get_sweep(sweep_id)
        self.store.set_sweep_spec(sweep_id, {**sweep.spec, "until_state": state.model_dump(mode="json")})

    def _lock(self, sweep_id: str) -> asyncio.Lock:
        return self._locks.setdefault(sweep_id, asyncio.Lock())


def recorded_request(spec: dict[str, Any]) -> SweepCreate:
    """The sweep's request as recorded (what its runs were made from)."""
    fields = {name: value for name, value in spec.items() if name in SweepCreate.model_fields}
    fields.pop("secret_env", None)  # recorded masked; the runs keep the sweep's sealed values
    return SweepCreate.model_validate(fields)


def _next_index(store: Any, sweep_id: str, runs: int) -> int:
    _, last = store.list_jobs(sweep_id=sweep_id, offset=max(0, runs - 1), limit=1, order="idx")
    return (last[0].index + 1) if last and last[0].index is not None else runs


def _fresh_like(first: JobRecord, reason: str, now: datetime) -> JobRecord:
    """The sweep's first run as it was defined (pinned binaries, files, limits, job type), with
    nothing of what happened to it: what a grown run starts from."""
    return first.model_copy(update={
        "status": JobStatus.QUEUED, "status_reason": reason, "created_at": now, "attempt": 0,
        "worker": None, "worker_losses": 0, "storage_bytes": 0, "submitted_at": None,
        "started_at": None, "finished_at": None, "result": None})


def _new_runs(prototype: JobRecord, request: SweepCreate, table: doe.RunTable) -> list[JobRecord]:
    """Command runs like `prototype` with the new rows: their command and environment rendered."""
    runs = []
    for index, row in table.indexed():
        env = {**{name: templating.render(value, row) for name, value in request.env.items()},
               **templating.environment(row)}
        command = templating.render_command(request.command, row) if request.command else None
        runs.append(prototype.model_copy(update={
            "id": uuid.uuid4().hex[:12], "index": index, "variables": row, "env": env, "command": command}))
    return runs


# ---- the statistics ------------------------------------------------------------------------


def estimate(until: Until, values: np.ndarray, spec: dict[str, Any], samples: int) -> UntilState:
    """The statistic's estimate and interval now, and whether that is narrow enough."""
    if until.statistic == "sobol":
        return _sobol_state(until, values, spec, samples)
    done = values[~np.isnan(values)]
    if len(done) < 2:
        return UntilState(state=GROWING, reason=f"{len(done)} completed runs with {until.output}: too few",
                          samples=samples, runs_used=len(done))
    if until.statistic == "mean":
        value, low, high = mean_interval(done, until.confidence)
        name = "mean"
    else:
        value, low, high = quantile_interval(done, until.quantile or 0.5, until.confidence)
        name = f"quantile {until.quantile:g}"
    half = (high - low) / 2
    relative = half / abs(value) if value else math.inf
    narrow = relative <= until.rel_ci_half_width
    reason = (f"{name} of {until.output} = {value:.6g}, {until.confidence:.0%} interval [{low:.6g}, {high:.6g}] "
              f"(half-width {relative:.3%} of it, target {until.rel_ci_half_width:.3%}) from {len(done)} runs")
    return UntilState(state="converged" if narrow else GROWING, reason=("converged: " if narrow else "") + reason,
                      samples=samples, runs_used=len(done), estimate=value, ci_low=low, ci_high=high,
                      rel_half_width=relative if math.isfinite(relative) else None)


def _sobol_state(until: Until, values: np.ndarray, spec: dict[str, Any], samples: int) -> UntilState:
    """Each first-order index with its bootstrap interval (orchestrator/server/analysis.py)."""
    from orchestrator.server.analysis import sobol_indices

    names = [variable["name"] for variable in spec.get("variables") or []]
    matrix = values[1:] if spec.get("include_nominal_run") else values
    missing = int(np.count_nonzero(np.isnan(matrix)))
    if missing or len(matrix) != samples * (2 * len(names) + 2):
        return UntilState(state="failed", samples=samples, reason=(
            f"Sobol indices need every run of the saltelli matrix; {missing} lack {until.output}: rerun them, "
            "then extend the sweep by hand"))
    indices = sobol_indices(matrix, len(names))
    first, halves = [float(v) for v in indices["S1"]], [float(v) for v in indices["S1_conf"]]
    widest = max(halves)
    narrow = widest <= until.rel_ci_half_width
    shown = ", ".join(f"{n} {s:.3f} ± {h:.3f}" for n, s, h in zip(names, first, halves, strict=True))
    reason = (f"first-order Sobol indices of {until.output}: {shown} (widest half-width {widest:.4f}, target "
              f"{until.rel_ci_half_width:g}) from {samples} base samples")
    return UntilState(state="converged" if narrow else GROWING, reason=("converged: " if narrow else "") + reason,
                      samples=samples, runs_used=len(matrix), estimate=first,
                      ci_low=[s - h for s, h in zip(first, halves, strict=True)],
                      ci_high=[s + h for s, h in zip(first, halves, strict=True)], rel_half_width=widest)
