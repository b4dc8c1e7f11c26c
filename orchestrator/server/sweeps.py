"""Sweeps as users see them: a job template run once per row of a run table.

A sweep is recorded with all its runs (one job each, QUEUED) before it is answered: the runs
are made as ledger rows a chunk at a time while earlier chunks are recorded (never a record
object per run), each chunk its own short transaction, and the sweep's own row last, so a
crash midway leaves runs of no sweep, which the next start removes: never half a sweep. Its
dispatcher then reads the queued runs from the ledger a batch at a time and feeds them to
Dask; a stop ends the queued runs as a set (run_sets). Status, progress and the results table
are always computed from the runs themselves, so they are right while the sweep runs, after
a restart, and after single runs are stopped or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

from orchestrator import doe, templating
from orchestrator.declared_outputs import as_run_fields
from orchestrator.errors import NotFound, ValidationFailed
from orchestrator.models import (
    JobKind,
    JobRecord,
    JobStatus,
    StatusChange,
    utcnow,
)
from orchestrator.plugins.explorer_state import explorer_url
from orchestrator.server import run_sets, typed_sweeps
from orchestrator.server.auth import Principal
from orchestrator.server.binaries import BinaryRef, BinaryService, artifacts, binary_input
from orchestrator.server.decisions import RESTARTED
from orchestrator.server.dispatch import SweepDispatcher
from orchestrator.server.engine import Engine
from orchestrator.server.job_types import JobTypeService
from orchestrator.server.jobs import default_name, refuse_url_artifacts
from orchestrator.server.ledger import Store, SweepRow, sweep_runs
from orchestrator.server.made_ahead import made_ahead
from orchestrator.server.secrets import Sealer, masked
from orchestrator.server.sweep_growth import SweepGrowth
from orchestrator.server.sweep_results import results_page, results_table
from orchestrator.storage import Storage, layout
from orchestrator.sweep_models import (
    DryRun,
    FinishedRuns,
    ResultsPage,
    RunPreview,
    SweepCreate,
    SweepRecord,
)
from orchestrator.worker.runner import StagedInput

MAX_TEMPLATE_BYTES = 4 * 2**20
WAIT_POLL_S = 0.5
MAX_TABLE_CELLS = 20_000_000  # values in one run table (samples x variables)
MAX_PREVIEW_BYTES = 64 * 2**20  # rendered text a dry run may answer
RUN_CHUNK = 2_000  # runs made and recorded per transaction when a sweep is created


class SweepService:
    def __init__(
        self, store: Store, storage: Storage, engine: Engine, binaries: BinaryService,
        sealer: Sealer, max_runs: int, job_types: JobTypeService,
    ):
        self.sealer = sealer
        self.store = store
        self.storage = storage
        self.engine = engine
        self.binaries = binaries
        self.max_runs = max_runs
        self.job_types = job_types
        self._dispatchers: dict[str, SweepDispatcher] = {}
        self.dashboard_link: str | None = None  # the Dask dashboard's, for each sweep's explorer link
        self.growth = SweepGrowth(self)  # extensions and adaptive stopping

    # ---- creating ---------------------------------------------------------------------

    async def create_from_upload(
        self, request: SweepCreate, creator: Principal, *, sweep_id: str, uploaded: list[str] | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> SweepRecord | DryRun:
        """`create` for a sweep whose files were stored under its new id first: they go again
        when it is refused, and after a dry run (nothing will ever read them)."""
        try:
            outcome = await self.create(request, creator, sweep_id=sweep_id, uploaded=uploaded, kind=kind)
        except BaseException:
            await asyncio.to_thread(self.storage.delete_prefix, layout.sweep_prefix(sweep_id))
            raise
        if isinstance(outcome, DryRun):
            await asyncio.to_thread(self.storage.delete_prefix, layout.sweep_prefix(sweep_id))
        return outcome

    async def create(
        self,
        request: SweepCreate,
        creator: Principal,
        *,
        sweep_id: str,
        uploaded: list[str] | None = None,
        kind: JobKind = JobKind.COMMAND,
    ) -> SweepRecord | DryRun:
        """Plan the sweep; a dry run answers the rendered table, otherwise every run is queued.

        Files (and a callable) are already stored under the sweep's id.
        """
        kind = JobKind.JOB_TYPE if request.job_type is not None else kind
        if request.entrypoint is not None:
            kind = JobKind.ENTRYPOINT
            refuse_url_artifacts(request.binaries)
        if kind == JobKind.COMMAND and request.command is None:
            raise ValidationFailed("a sweep needs a command, an entrypoint or a job_type", {"command": "required"})
        owner = creator.user
        table = await asyncio.to_thread(_run_table, request, self.max_runs)
        staged = self._staged_files(request, uploaded or [])
        templates = await asyncio.to_thread(self._template_texts, request, sweep_id, uploaded or [], creator)
        _check_placeholders(request, table.names, templates)
        typed = None if kind != JobKind.JOB_TYPE else await asyncio.to_thread(
            typed_sweeps.plan, request, creator, sweep_id, table, uploaded or [], self.job_types, self.binaries)
        if request.dry_run:
            _check_preview_size(request, table, templates)
            return await asyncio.to_thread(_preview, request, table, templates)
        await self.engine.check_may_run(creator)
        waiting = await self.engine.placement(typed.runs[0].resources if typed else request.resources)
        queued_reason = f"run of sweep {sweep_id}" + (f"; {waiting}" if waiting else "")
        if typed:
            first = typed.queued(queued_reason)[0]
        else:  # every run is this record with its own id, index, variables, command and env
            first = await asyncio.to_thread(self._prototype, request, creator, sweep_id, kind, staged, queued_reason)
        spec = self._recorded_spec(request, table, first, staged, templates, sweep_id, kind)
        if request.until is not None:
            spec["until_state"] = {"state": "growing", "samples": request.design.samples}
        if typed:
            spec.update(runtime=typed.runtime, configuration=typed.shown_configuration,
                        resources=first.resources.model_dump(mode="json"), timeout_s=first.timeout_s)
        sweep = SweepRow(
            id=sweep_id, name=first.name, owner=owner, kind=kind,
            names=table.names, seed=table.seed, created_at=first.created_at,
            input_bytes=await asyncio.to_thread(self.storage.prefix_bytes, layout.sweep_prefix(sweep_id)),
            spec=spec,
        )
        history = [StatusChange(status=JobStatus.CREATED, at=first.created_at),
                   StatusChange(status=JobStatus.QUEUED, at=first.created_at, reason=queued_reason)]
        sealed = self.sealer.seal(typed.secrets if typed else request.secret_env)
        if typed:
            await asyncio.to_thread(self.store.insert_sweep, sweep, typed.runs, history, sealed)
        else:  # made while recorded, a chunk at a time, in a thread: the 201 follows the last commit
            ids = await asyncio.to_thread(sweep_runs.run_ids, self.store, len(table.rows))
            rows = made_ahead(_run_rows(request, first, table, ids), name=f"sweep-{sweep_id}-rows")
            await asyncio.to_thread(self.store.insert_sweep_rows, sweep, rows, history, sealed)
        self._dispatch(sweep_id, failed=0)
        return self.get(sweep_id)

    def _staged_files(self, request: SweepCreate, uploaded: list[str]) -> list[str]:
        template_sources = {t.source for t in request.templates}
        if request.files is None:
            return sorted(p for p in uploaded if p not in template_sources)
        missing = [name for name in request.files if name not in uploaded]
        if missing:
            raise ValidationFailed(
                f"files not uploaded with the sweep: {', '.join(missing)}",
                {f"files.{request.files.index(name)}": f"{name} was not uploaded" for name in missing},
            )
        return sorted(set(request.files))

    def _template_texts(
        self, request: SweepCreate, sweep_id: str, uploaded: list[str], creator: Principal
    ) -> dict[str, tuple[str, str]]:
        """target -> (storage key, text) of each template, read now to check it."""
        texts: dict[str, tuple[str, str]] = {}
        for i, template in enumerate(request.templates):
            where = f"templates.{i}.source"
            if template.source in uploaded:
                key = layout.sweep_input_key(sweep_id, template.source)
            elif "://" in template.source:
                raise ValidationFailed("a template is an uploaded file or a binary, not a URL",
                                       {where: "upload it with the sweep or as a binary"})
            else:
                try:
                    ref = self.binaries.pin([template.source], creator.user, creator.admin)[0]
                except (NotFound, ValidationFailed, ValueError) as exc:
                    raise ValidationFailed(
                        f"template {template.source!r} is neither an uploaded file nor a binary",
                        {where: str(exc)},
                    ) from None
                key = BinaryRef.parse(ref, creator.user).key
            if self.storage.size(key) > MAX_TEMPLATE_BYTES:
                raise ValidationFailed("template too large", {where: f"at most {MAX_TEMPLATE_BYTES} bytes"})
            try:
                text = self.storage.read_range(key, 0, MAX_TEMPLATE_BYTES).decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationFailed("templates must be UTF-8 text", {where: "not UTF-8 text"}) from None
            if template.target in texts:
                raise ValidationFailed("two templates write one target", {f"templates.{i}.target": "duplicate"})
            texts[template.target] = (key, text)
        return texts

    def _prototype(
        self, request: SweepCreate, creator: Principal, sweep_id: str, kind: str, staged: list[str],
        queued_reason: str,
    ) -> JobRecord:
        """What every run of a sweep shares (see _run_rows)."""
        return JobRecord(
            id="-", name=request.name or default_name(request.command, request.entrypoint), owner=creator.user,
            kind=kind, status=JobStatus.QUEUED, status_reason=queued_reason,
            entrypoint=request.entrypoint, kwargs=request.kwargs,
            binaries=self.binaries.pin(request.binaries, creator.user, creator.admin), files=staged,
            secret_env=masked(request.secret_env), resources=request.resources,
            timeout_s=request.timeout_s, retries=request.retries, priority=request.priority,
            sweep_id=sweep_id, created_at=utcnow(), outputs=request.outputs,
        )

    def _recorded_spec(
        self, request: SweepCreate, table: doe.RunTable, first: JobRecord, staged: list[str],
        templates: dict[str, tuple[str, str]], sweep_id: str, kind: str,
    ) -> dict[str, Any]:
        """The request as given (seed filled in), and what every run's task needs."""
        spec = request.model_dump(mode="json", exclude={"cases", "cases_csv", "dry_run"}, exclude_none=True)
        spec["secret_env"] = masked(request.secret_env)
        if request.design is not None and table.seed is not None:
            spec["design"]["seed"] = table.seed
        python = first.entrypoint is not None  # its binaries go on a warm context's path, not staged
        inputs = [] if python else [binary_input(ref, first.owner) for ref in first.binaries]
        inputs += [StagedInput(path=p, key=layout.sweep_input_key(sweep_id, p)) for p in staged]
        inputs += [StagedInput(path=target, key=key, template=True)
                   for target, (key, _) in templates.items()]
        spec["runtime"] = {
            # a shell line runs with references to the exported variables, never pasted values
            "shell_template": request.command if isinstance(request.command, str) else None,
            "inputs": [vars(item) for item in inputs],
            "timeout_s": request.timeout_s,
            "gpus": request.resources.gpus,
            "callable_key": layout.sweep_callable_key(sweep_id) if kind == JobKind.CALLABLE else None,
            "declared_outputs": as_run_fields(request.outputs),  # read from each run's files
            "entrypoint": first.entrypoint,
            "kwargs": first.kwargs,
            "artifacts": artifacts(first.binaries, first.owner) if python else [],
        }
        return spec

    # ---- running ----------------------------------------------------------------------

    def _dispatch(self, sweep_id: str, failed: int) -> None:
        """A dispatcher for the sweep's QUEUED runs, which it reads from the ledger."""
        sweep = self.store.get_sweep(sweep_id)
        assert sweep is not None  # its runs are dispatched only once its row is recorded
        spec = sweep.spec
        dispatcher = SweepDispatcher(
            self.engine, sweep_id, spec["runtime"],
            max_parallel=spec.get("max_parallel"), max_failures=spec.get("max_failures"),
            failed=failed, on_limit=self._failure_limit_reached,
        )
        self._dispatchers[sweep_id] = dispatcher

        def done() -> None:  # a rerun may have started the sweep's next dispatcher already
            if self._dispatchers.get(sweep_id) is dispatcher:
                del self._dispatchers[sweep_id]
            if "until" in spec:
                self.engine.background(self.growth.after_runs(sweep_id))

        dispatcher.start(on_done=done)

    def feed(self, sweep_id: str, runs: list[JobRecord] | None = None) -> None:
        """Runs QUEUED again (a rerun) go to the sweep's dispatcher, or to a new one; None: a
        set queued again in the ledger, which the dispatcher reads again from the start."""
        dispatcher = self._dispatchers.get(sweep_id)
        fed = dispatcher is not None and (dispatcher.add(runs) if runs is not None else dispatcher.rewind())
        if not fed:
            self._dispatch_queued(sweep_id)

    def _dispatch_queued(self, sweep_id: str) -> None:
        """A new dispatcher, counting the failures the sweep has had against its max_failures."""
        self._dispatch(sweep_id, self.store.sweep_counts(sweep_id).get(JobStatus.FAILED.value, 0))

    async def _failure_limit_reached(self, sweep_id: str, failed: int, limit: int) -> None:
        reason = f"max_failures reached ({failed} failed runs, limit {limit})"
        await self._stop(sweep_id, reason, "sweep max_failures")

    async def resume(self) -> None:
        """After a restart: feed what each unfinished sweep still has to run."""
        for sweep_id in self.store.active_sweep_ids():
            sweep = self.store.get_sweep(sweep_id)
            if sweep is None:
                continue
            if sweep.stop_reason:
                await self._stop_undispatched(sweep_id, sweep.stop_reason, "the orchestrator")
                continue
            await self.engine.requeue(sweep_id, RESTARTED)  # the runs that were sent, as a set
            self._dispatch_queued(sweep_id)
        await self.growth.resume()

    async def stop(self, sweep_id: str, requested_by: str, owner: str | None = None) -> SweepRecord:
        """Stop what is queued or running; a sweep that has ended stays as it ended."""
        if self.get(sweep_id, owner).status.is_terminal:
            return self.get(sweep_id)
        await self._stop(sweep_id, f"stop requested by {requested_by}", requested_by)
        return self.get(sweep_id)

    async def _stop(self, sweep_id: str, reason: str, requested_by: str) -> None:
        self.store.set_sweep_stop_reason(sweep_id, reason)
        dispatcher = self._dispatchers.get(sweep_id)
        if dispatcher is not None:
            await dispatcher.stop(reason, requested_by)
            return
        await self._stop_undispatched(sweep_id, reason, requested_by)

    async def _stop_undispatched(self, sweep_id: str, reason: str, requested_by: str) -> None:
        """A sweep no dispatcher feeds: the runs that may have been sent are stopped through
        the workers, then every QUEUED run by its record alone, as a set."""
        async for runs in run_sets.sent_runs(self.store, sweep_id):
            await self.engine.stop_many(runs, requested_by, reason)
        await self.engine.stop_unsent(sweep_id, reason)

    async def close(self) -> None:
        for dispatcher in list(self._dispatchers.values()):
            await dispatcher.cancel()

    async def wait(self, sweep_id: str, timeout: float | None, owner: str | None = None) -> SweepRecord:
        """The sweep once all its runs have ended, or as it is when the timeout runs out."""
        record = self.get(sweep_id, owner)
        deadline = None if timeout is None else time.monotonic() + timeout
        while not record.status.is_terminal:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            dispatcher = self._dispatchers.get(sweep_id)
            if dispatcher is not None:  # its end is the sweep's end: wake at once
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(asyncio.shield(dispatcher.done.wait()), left)
            else:  # runs stopped by hand as they finish: look again shortly
                await asyncio.sleep(WAIT_POLL_S if left is None else min(WAIT_POLL_S, left))
            record = self.get(sweep_id)
        return record

    # ---- reading ----------------------------------------------------------------------

    def get(self, sweep_id: str, owner: str | None = None) -> SweepRecord:
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None or (owner is not None and sweep.owner != owner):
            raise NotFound(f"no sweep {sweep_id}")
        return self._record(sweep)

    def list(self, owner: str | None, offset: int, limit: int) -> tuple[int, list[SweepRecord]]:
        count, sweeps = self.store.list_sweeps(owner, offset, limit)
        return count, [self._record(sweep) for sweep in sweeps]

    def _record(self, sweep: SweepRow) -> SweepRecord:
        counts, output_problems = self.store.sweep_tally(sweep.id)
        total = sum(counts.values())
        done = counts.get(JobStatus.COMPLETED.value, 0) + counts.get(JobStatus.FAILED.value, 0)
        status, reason = _sweep_status(counts, sweep.stop_reason)
        spec = {k: v for k, v in sweep.spec.items() if k not in ("runtime", "extensions", "until_state")}
        until = sweep.spec.get("until_state")
        if until is not None and status.is_terminal and not sweep.stop_reason:
            status, reason = (JobStatus.RUNNING, "growing: " + (until.get("reason") or "deciding")) \
                if until["state"] == "growing" else (status, until.get("reason") or reason)
        design = spec.get("design", {}).get("type") if spec.get("variables") else None
        return SweepRecord(
            id=sweep.id, name=sweep.name, owner=sweep.owner, kind=sweep.kind,
            status=status, status_reason=reason, runs=total, counts=counts,
            progress=round(done / total, 6) if total else 1.0, variables=sweep.names,
            output_problems=output_problems,
            design=design or ("full_factorial" if spec.get("variables") else None),
            seed=sweep.seed, max_parallel=spec.get("max_parallel"),
            storage_bytes=sweep.input_bytes + self.store.sweep_storage_bytes(sweep.id),
            max_failures=spec.get("max_failures"), created_at=sweep.created_at,
            finished_at=self.store.sweep_last_finish(sweep.id) if status.is_terminal else None,
            spec=spec, extensions=sweep.spec.get("extensions", []), until=until,
            explorer=explorer_url(self.dashboard_link, sweep.id),
        )

    def runs(self, sweep_id: str, status: JobStatus | None, offset: int, limit: int,
             owner: str | None = None) -> tuple[int, list[JobRecord]]:
        self.get(sweep_id, owner)
        return self.store.list_jobs(sweep_id=sweep_id, status=status, offset=offset, limit=limit,
                                    order="idx")

    def finished(self, sweep_id: str, after: int, limit: int, owner: str | None = None) -> FinishedRuns:
        self.get(sweep_id, owner)
        cursor, runs = self.store.finished_runs(sweep_id, after, limit)
        return FinishedRuns(cursor=cursor, results=runs)

    def results(self, sweep_id: str, owner: str | None = None, after: int | None = None,
                limit: int | None = None) -> ResultsPage:
        """One row per run: its variables and scalar outputs; unfinished runs have blanks.
        With `limit`, only the next `limit` runs above index `after` (a page, read by index)."""
        sweep = self.store.get_sweep(sweep_id)
        if sweep is None or (owner is not None and sweep.owner != owner):
            raise NotFound(f"no sweep {sweep_id}")
        if limit is None:
            return results_table(sweep.names, self.store.sweep_rows(sweep_id))
        rows = self.store.sweep_rows_after(sweep_id, -1 if after is None else after, limit + 1)
        return results_page(sweep.names, rows, limit)


def _run_rows(
    request: SweepCreate, prototype: JobRecord, table: doe.RunTable, ids: Iterator[str],
) -> Iterator[list[tuple[Any, ...]]]:
    """The ledger rows of a sweep's runs, RUN_CHUNK at a time, made as they are recorded."""
    rows = sweep_runs.RunRows(prototype)
    chunk: list[tuple[Any, ...]] = []
    indexed = enumerate(table.rows, start=table.first_index)  # as table.indexed(), with no list of a million
    for (index, row), job_id in zip(indexed, ids, strict=True):
        env = {**{name: templating.render(value, row) for name, value in request.env.items()},
               **templating.environment(row)}
        command = templating.render_command(request.command, row) if request.command else None
        chunk.append(rows.row(job_id, index, row, command=command, env=env))
        if len(chunk) == RUN_CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _run_table(request: SweepCreate, max_runs: int) -> doe.RunTable:
    cases = request.cases
    if request.cases_csv is not None:
        if cases is not None:
            raise ValidationFailed("give cases or cases_csv, not both", {"cases_csv": "conflicts with cases"})
        cases = doe.parse_cases_csv(request.cases_csv, max_runs, optional=request.optional_columns or ())
    if cases is not None and (request.variables or request.design):
        raise ValidationFailed("cases replace variables and design; give one or the other",
                               {"cases": "conflicts with variables/design"})
    design = request.design
    if isinstance(design, doe.Sampled) and request.variables:
        runs = design.runs(len(request.variables))  # a saltelli design makes more runs than samples
        cells = runs * len(request.variables)
        if cells > MAX_TABLE_CELLS:
            raise ValidationFailed(
                f"{runs} runs x {len(request.variables)} variables is more than "
                f"{MAX_TABLE_CELLS} values", {"design.samples": "too many for this many variables"})
    return doe.build_table(request.variables, design, cases,
                           include_nominal=request.include_nominal_run, max_runs=max_runs)


def _sweep_status(counts: dict[str, int], stop_reason: str | None) -> tuple[JobStatus, str | None]:
    if counts.get(JobStatus.RUNNING.value):
        return JobStatus.RUNNING, stop_reason and f"stopping: {stop_reason}"
    if counts.get(JobStatus.QUEUED.value):
        return JobStatus.QUEUED, stop_reason and f"stopping: {stop_reason}"
    if stop_reason:
        return JobStatus.STOPPED, stop_reason
    failed, stopped = counts.get(JobStatus.FAILED.value, 0), counts.get(JobStatus.STOPPED.value, 0)
    if failed:
        return JobStatus.FAILED, f"{failed} run(s) failed"
    if stopped:
        return JobStatus.STOPPED, f"{stopped} run(s) stopped"
    return JobStatus.COMPLETED, None


def _check_placeholders(request: SweepCreate, names: list[str], templates: dict[str, tuple[str, str]]) -> None:
    """Every `${name}` must be a variable: a typo is a 400, not a run with a literal `${u}`."""
    command = request.command
    places: dict[str, list[str]] = {}
    if command is not None:
        places["command"] = [command] if isinstance(command, str) else list(command)
    for name, value in request.env.items():
        places[f"env.{name}"] = [value]
    for index, (_, text) in enumerate(templates.values()):
        places[f"templates.{index}"] = [text]
    fields = {}
    for where, texts in places.items():
        try:
            templating.check_placeholders(texts, names)
        except templating.PlaceholderError as exc:
            fields[where] = str(exc)
    if fields:
        raise ValidationFailed(
            "placeholders without a variable: " + "; ".join(f"{k}: {v}" for k, v in fields.items()),
            fields,
        )


def _check_preview_size(request: SweepCreate, table: doe.RunTable, templates: dict[str, tuple[str, str]]) -> None:
    """A dry run answers every run's rendered text: refuse one that would be enormous."""
    per_run = len(str(request.command or "")) + sum(len(text) for _, text in templates.values()) + 64
    if per_run * len(table.rows) > MAX_PREVIEW_BYTES:
        raise ValidationFailed(
            f"the dry run would answer about {per_run * len(table.rows) // 2**20} MiB of rendered text",
            {"dry_run": f"at most {MAX_PREVIEW_BYTES // 2**20} MiB: try fewer runs or smaller templates"},
        )


def _preview(request: SweepCreate, table: doe.RunTable, templates: dict[str, tuple[str, str]]) -> DryRun:
    runs = [
        RunPreview(
            index=index, variables=row,
            command=templating.render_command(request.command, row) if request.command else None,
            templates={target: templating.render(text, row) for target, (_, text) in templates.items()},
        )
        for index, row in table.indexed()
    ]
    return DryRun(count=len(runs), variables=table.names, seed=table.seed, runs=runs)
