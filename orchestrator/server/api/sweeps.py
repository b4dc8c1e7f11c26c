"""/sweeps: create (JSON, or multipart with files, templates and a cases CSV), dry run, list,
show with counts and progress, runs, runs finished since a cursor, results table (JSON, CSV,
Parquet), sensitivity analysis, stop."""

from __future__ import annotations

import asyncio
from typing import Literal

from pydantic import Field, Json, ValidationError

from orchestrator import plots
from orchestrator.analysis_models import SweepAnalysis
from orchestrator.errors import PayloadTooLarge, ValidationFailed, validation_failed
from orchestrator.growth_models import SweepExtend
from orchestrator.models import JobRecord, JobStatus, Page, Position, Request, WaitSeconds
from orchestrator.server import analysis, reruns
from orchestrator.server.api.base import Answer, BaseHandler, Operation, Paged, Query
from orchestrator.server.api.uploads import StreamingBodyHandler
from orchestrator.server.results_parquet import PARQUET_MEDIA_TYPE, results_parquet
from orchestrator.server.sweep_results import results_csv
from orchestrator.storage import AtomicWriter, layout
from orchestrator.sweep_models import (
    RESULTS_PAGE_MAX,
    DryRun,
    FinishedRuns,
    ResultsPage,
    SweepCreate,
    SweepRecord,
    new_sweep_id,
)

MAX_CASES_BYTES = 256 * 2**20
CASES_FIELD = "cases"


class SweepForm(Request):
    """A sweep as multipart/form-data."""

    spec: Json[SweepCreate] = Field(description="the sweep as JSON (SweepCreate)")
    files: list[bytes] = Field(default_factory=list, alias="file[]",
                               description="shared input files; each part's file name is its path")
    cases: bytes = Field(b"", description="rows as CSV (header = variable names)")


class SweepsHandler(StreamingBodyHandler):
    openapi = {
        "post": Operation(
            "Create a sweep, or with dry_run answer its rendered run table. Multipart: the spec "
            "as JSON in the 'spec' field, files in 'file[]', a cases CSV in 'cases'",
            body=SweepCreate, form=SweepForm, response=SweepRecord, status=201,
            answers=(Answer(200, DryRun, "with dry_run: the rendered run table"),),
        ),
        "get": Operation("List sweeps", query=Paged, response=Page[SweepRecord]),
    }

    async def prepare(self) -> None:
        self.sweep_id = new_sweep_id()
        self._has_cases_file = False
        await super().prepare()

    def open_part(self, field_name: str, filename: str) -> AtomicWriter:
        storage = self.service.storage
        if field_name == CASES_FIELD:
            self._has_cases_file = True
            return storage.writer(layout.sweep_cases_key(self.sweep_id))
        path = self.claim_file(field_name, filename)
        return storage.writer(layout.sweep_input_key(self.sweep_id, path))

    def upload_prefix(self) -> str:
        return layout.sweep_prefix(self.sweep_id)  # a new id: nothing else lives there yet

    async def post(self) -> None:
        await self.finish_body()
        request = await self._request()  # refused: the handler discards the upload (4xx)
        outcome = await self.service.sweeps.create_from_upload(
            request, self.principal, sweep_id=self.sweep_id, uploaded=sorted(self.file_paths))
        self.keep_upload()  # created, or a dry run whose files the service removed already
        if isinstance(outcome, DryRun):
            self.send_json(outcome)
            return
        self.set_header("Location", f"/api/v1/sweeps/{outcome.id}")
        self.send_json(outcome, 201)

    async def _request(self) -> SweepCreate:
        if self.json_body is not None:
            return self.parse_body(SweepCreate, bytes(self.json_body))
        if self.multipart is None:
            raise ValidationFailed("send JSON or multipart/form-data", {"body": "missing"})
        spec = self.multipart.fields.get("spec")
        if not spec:
            raise ValidationFailed("multipart sweeps carry their JSON in a 'spec' field", {"spec": "missing"})
        try:
            request = SweepCreate.model_validate_json(spec[-1])
        except ValidationError as exc:
            raise validation_failed(exc) from None
        if self._has_cases_file:
            key = layout.sweep_cases_key(self.sweep_id)
            if await asyncio.to_thread(self.service.storage.size, key) > MAX_CASES_BYTES:
                raise PayloadTooLarge(f"a cases CSV is limited to {MAX_CASES_BYTES} bytes")
            data = await asyncio.to_thread(self.service.storage.read_range, key, 0, None)
            try:
                request.cases_csv = data.decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationFailed("the cases CSV must be UTF-8 text", {"cases": "not UTF-8"}) from None
        return request

    async def get(self) -> None:
        query = self.query_args()
        page, size = query.page, query.page_size
        count, sweeps = self.service.sweeps.list(self.principal.scope, (page - 1) * size, size)
        self.send_page(count, sweeps, page, size)


class WaitQuery(Query):
    wait: WaitSeconds | None = Field(None, description="seconds to wait for every run to end first")


class RunsQuery(Paged):
    status: JobStatus | None = Field(None, description="only runs with this status")


class FinishedQuery(Query):
    after: Position = Field(0, description="cursor from the last answer (0 at first)")
    limit: int = Field(1000, ge=1, le=1000)


class ResultsQuery(Query):
    format: Literal["json", "csv", "parquet"] = Field(
        "json", description="parquet: typed columns (numbers stay numbers, blanks are nulls)")
    after: Position | None = Field(None, description="a page: runs with a higher index only "
                                   "(the last page's `next`); absent: from the first run")
    limit: int | None = Field(None, ge=1, le=RESULTS_PAGE_MAX, description=(
        f"a page of at most this many runs (default {RESULTS_PAGE_MAX:,} with `after`); without "
        "`after` and `limit`, the whole table"))


class DeleteQuery(Query):
    stop: bool = Field(False, description="stop an active sweep, then delete it once its runs have ended")


class SweepHandler(BaseHandler):
    openapi = {
        "get": Operation("Show a sweep: status, counts per status, progress", query=WaitQuery,
                         response=SweepRecord),
        "delete": Operation("Delete a sweep with its runs and files (409 while runs are active, "
                            "unless stop=true: 202, deleted once stopped)", query=DeleteQuery, status=204,
                            answers=(Answer(202, SweepRecord, "stopping; deleted once every run ended"),)),
    }

    async def delete(self, sweep_id: str) -> None:
        deleted = await reruns.delete_sweep(self.service, sweep_id, self.query_args().stop, self.user,
                                            self.principal.scope)
        if deleted:
            self.set_status(204)
            self.finish()
        else:
            self.send_json(self.service.sweeps.get(sweep_id), 202)

    async def get(self, sweep_id: str) -> None:
        wait = self.query_args().wait
        if wait:
            self.send_json(await self.service.sweeps.wait(sweep_id, wait, self.principal.scope))
        else:
            self.send_json(self.service.sweeps.get(sweep_id, self.principal.scope))


class SweepRunsHandler(BaseHandler):
    openapi = {"get": Operation("A sweep's runs in index order", query=RunsQuery,
                                response=Page[JobRecord])}

    async def get(self, sweep_id: str) -> None:
        query = self.query_args()
        page, size = query.page, query.page_size
        count, runs = self.service.sweeps.runs(
            sweep_id, query.status, (page - 1) * size, size, self.principal.scope
        )
        self.send_page(count, runs, page, size)


class SweepFinishedHandler(BaseHandler):
    openapi = {"get": Operation(
        "Runs that finished after a cursor, in the order they finished (for as_completed)",
        query=FinishedQuery, response=FinishedRuns,
    )}

    async def get(self, sweep_id: str) -> None:
        query = self.query_args()
        self.send_json(self.service.sweeps.finished(sweep_id, query.after, query.limit, self.principal.scope))


class SweepResultsHandler(BaseHandler):
    openapi = {"get": Operation(
        "One row per run: index, job id, status, exit code, variables, scalar outputs; with `after` "
        "or `limit`, one page in index order (`next` in the JSON and a Link header say what follows)",
        query=ResultsQuery, response=ResultsPage, also_as={"text/csv": str, PARQUET_MEDIA_TYPE: bytes},
    )}

    async def get(self, sweep_id: str) -> None:
        query = self.query_args()
        fmt, limit = query.format, query.limit
        if limit is None and query.after is not None:
            limit = RESULTS_PAGE_MAX
        table = await asyncio.to_thread(self.service.sweeps.results, sweep_id, self.principal.scope,
                                        query.after, limit)
        if table.next is not None:
            self.set_header("Link", f'</api/v1/sweeps/{sweep_id}/results?format={fmt}&after={table.next}'
                                    f'&limit={limit}>; rel="next"')
        if fmt == "json":
            self.send_json(table)
            return
        if fmt == "parquet":
            data = await asyncio.to_thread(results_parquet, table)
            self.set_header("Content-Type", PARQUET_MEDIA_TYPE)
            self.set_header("Content-Disposition", f'attachment; filename="{sweep_id}-results.parquet"')
            self.finish(data)
            return
        self.set_header("Content-Type", "text/csv; charset=utf-8")
        self.set_header("Content-Disposition", f'attachment; filename="{sweep_id}-results.csv"')
        self.finish(results_csv(table))


class SweepRerunHandler(BaseHandler):
    openapi = {"post": Operation("Run a sweep's ended runs again as new attempts (by status, default "
                                 "FAILED and STOPPED, or by id); a stopped sweep resumes",
                                 body=reruns.SweepRerun, body_required=False, response=SweepRecord, status=202)}

    async def post(self, sweep_id: str) -> None:
        request = self.parse_body(reruns.SweepRerun) if self.json_body else reruns.SweepRerun()
        self.send_json(await reruns.rerun_sweep(self.service, sweep_id, request, self.user, self.principal.scope),
                       202)


class SweepExtendHandler(BaseHandler):
    openapi = {"post": Operation(
        "Add samples to a monte_carlo, latin_hypercube, sobol or saltelli sweep (Sobol and Saltelli "
        "continue their sequence; every extension's lineage is recorded); a finished sweep runs again",
        body=SweepExtend, response=SweepRecord, status=202)}

    async def post(self, sweep_id: str) -> None:
        request = self.parse_body(SweepExtend)
        self.send_json(await self.service.sweeps.growth.extend(sweep_id, request.samples, self.principal.scope), 202)


class SweepStopHandler(BaseHandler):
    openapi = {"post": Operation("Stop a sweep's queued and running runs", response=SweepRecord,
                                 status=202)}

    async def post(self, sweep_id: str) -> None:
        self.send_json(await self.service.sweeps.stop(sweep_id, self.user, self.principal.scope), 202)


class PlotQuery(Query):
    x: str = Field(description="the results column on the x axis")
    y: str = Field(description="the results column on the y axis")
    color: str | None = Field(None, description="the column that colours the points: numbers get a "
                                                "colour bar, text (such as status) a colour per value")


class SweepPlotHandler(BaseHandler):
    openapi = {"get": Operation(
        "A standalone HTML page (bokeh, works offline) plotting one column of the results table "
        "against another; an unknown column is a 400 naming x, y or color",
        query=PlotQuery, raw_response="text/html",
    )}

    async def get(self, sweep_id: str) -> None:
        query = self.query_args()
        table = await asyncio.to_thread(self.service.sweeps.results, sweep_id, self.principal.scope)

        def page() -> str:
            figure = plots.scatter(table, query.x, query.y, query.color)
            return plots.standalone_html(figure, f"sweep {sweep_id}: {query.y} against {query.x}")

        html = await asyncio.to_thread(page)  # a large sweep's figure takes a moment to build
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(html)


class AnalysisQuery(Query):
    output: str = Field(..., min_length=1, max_length=1024,
                        description="the output to analyse, as the runs report it (outputs.json key)")


class SweepAnalysisHandler(BaseHandler):
    openapi = {"get": Operation(
        "Sensitivity of one output to each variable: Pearson and Spearman correlations, "
        "standardised regression coefficients with R², and for a saltelli design first-order and "
        "total Sobol indices with confidence intervals (409 while no run has completed)",
        query=AnalysisQuery, response=SweepAnalysis,
    )}

    async def get(self, sweep_id: str) -> None:
        output = self.query_args().output
        self.send_json(await analysis.sweep_analysis(self.service.store, sweep_id, output, self.principal.scope))
