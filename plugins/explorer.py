"""The sweep explorer: a page of the Dask dashboard per sweep (/jobs/sweep?id=SWEEP_ID, linked
from the Jobs page and from `GET /api/v1/sweeps/{id}` as `explorer`), updating live as runs end.

- a scatter of an output against a variable (drop-downs), coloured by status or any column;
  hovering a point shows the run's index, status, job, variables and outputs; selecting points
  (tap, box, lasso) lists those runs in the table, with links to the selected run's logs and
  files through the orchestrator's REST API;
- parallel coordinates of the variables and outputs: a box drawn over one or more axes
  (box select) brushes them, selecting every run inside every brush (not only those drawn);
- a histogram of the chosen output with its mean and the 95 % confidence interval of the mean;
- a table of the selected runs.

The page reads the rows the orchestrator publishes for the sweeps a page is open on
(plugins/explorer_state.py); it draws at most 20,000 points and 2,000 lines of a large sweep
(plugins/explorer_view.py). Importing this module registers the page, as
orchestrator.plugins.dashboard (which imports it) does for schedulers started by hand.
"""

from __future__ import annotations

import html
import time
from collections import Counter
from typing import Any

import numpy
from bokeh.events import Reset, SelectionGeometry
from bokeh.layouts import column, row
from bokeh.models import (
    BasicTicker,
    BoxAnnotation,
    BoxSelectTool,
    Button,
    ColorBar,
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    FixedTicker,
    HoverTool,
    HTMLTemplateFormatter,
    LabelSet,
    LinearColorMapper,
    Range1d,
    Select,
    Span,
    TableColumn,
)
from bokeh.palettes import Viridis256
from bokeh.plotting import figure
from distributed.dashboard.components import add_periodic_callback
from distributed.dashboard.components.scheduler import BOKEH_THEME, env
from distributed.dashboard.scheduler import applications

from orchestrator.plugins import explorer_view as view
from orchestrator.plugins.explorer_state import EXPLORER_PAGE, SWEEP_ID, SweepTable, state_of

REFRESH_MS = 1000  # the page marks its sweep watched and looks for new rows this often
MIN_REDRAW_S = 1.0
REDRAW_LOAD = 4  # a redraw that took t waits REDRAW_LOAD * t before the next
WAIT_NOTE_S = 5.0  # after this long without rows, the page says why they may not come
WIDTH = 1180
NUMBER = '<%- value == null ? "" : +Number(value).toPrecision(6) %>'  # a template: sorts as numbers
HINT = "Select runs in the scatter (tap, box or lasso), or draw a box over axes of the parallel plot."


class SweepExplorer:
    """The page's parts; `update` (every REFRESH_MS) keeps the sweep watched and redraws
    when the scheduler holds newer rows."""

    def __init__(self, scheduler: Any, sweep_id: str | None):
        self.scheduler = scheduler
        self.sweep_id = sweep_id
        self.opened = time.monotonic()
        self.drawn: tuple[str, int] | None = None  # (token, version) of the rows drawn
        self.frame: view.Frame | None = None
        self.axes: list[str] = []
        self.brushes: dict[str, tuple[float, float]] = {}  # axis -> low, high on its 0..1 scale
        self.selected = numpy.array([], dtype=int)
        self.listed = numpy.array([], dtype=int)  # the rows the table shows
        self._quiet = False  # set while the page itself changes widgets and selections
        self._next_draw = 0.0
        self._counts = ""
        self._titles: list[str] = []
        self.heading = Div(name="explorer-heading", width=WIDTH)
        self.x = Select(title="x: variable", name="explorer-x", width=260)
        self.y = Select(title="y: output", name="explorer-y", width=260)
        self.color = Select(title="colour by", name="explorer-color", width=260)
        for select in (self.x, self.y, self.color):
            select.on_change("value", self._on_choice)
        self._scatter()
        self._histogram()
        self._parallel()
        self._sobol()
        self.rows = ColumnDataSource({}, name="explorer-rows")
        self.rows.selected.on_change("indices", self._on_row_picked)
        self.table = DataTable(source=self.rows, columns=[], width=WIDTH, height=300,
                               index_position=None, name="explorer-table")
        self.links = Div(text=HINT, name="explorer-links", width=WIDTH - 180)
        self.clear = Button(label="Clear selection", width=160, name="explorer-clear")
        self.clear.on_click(self.clear_selection)
        self.root = column(
            self.heading, row(self.x, self.y, self.color),
            row(self.scatter_figure, self.histogram_figure), self.parallel_figure, self.sobol_figure,
            row(self.clear, self.links), self.table,
        )
        self.update()

    # ---- parts ----------------------------------------------------------------------------

    def _scatter(self) -> None:
        self.points = ColumnDataSource({"x": [], "y": [], "fill": [], "row": []}, name="explorer-points")
        fig = figure(width=660, height=440, tools="pan,wheel_zoom,box_select,lasso_select,tap,reset,save",
                     toolbar_location="above", output_backend="webgl", name="explorer-scatter")
        drawn = fig.scatter("x", "y", source=self.points, size=6, fill_color="fill", line_color=None,
                            fill_alpha=0.8, selection_fill_alpha=1.0, nonselection_fill_alpha=0.12)
        self.hover = HoverTool(renderers=[drawn], tooltips=[("run", "@index")])
        fig.add_tools(self.hover)
        self.color_bar = ColorBar(color_mapper=LinearColorMapper(palette=Viridis256, low=0, high=1),
                                  visible=False, width=10)
        fig.add_layout(self.color_bar, "right")
        fig.xaxis.name, fig.yaxis.name = "explorer-x-axis", "explorer-y-axis"
        self.points.selected.on_change("indices", self._on_points_selected)
        self.scatter_figure = fig

    def _histogram(self) -> None:
        self.bins = ColumnDataSource({"left": [], "right": [], "top": []}, name="explorer-histogram")
        fig = figure(width=WIDTH - 680, height=440, tools="pan,wheel_zoom,reset,save",
                     toolbar_location="above", y_axis_label="runs", name="explorer-histogram-figure")
        fig.quad(left="left", right="right", top="top", bottom=0, source=self.bins,
                 fill_color="#4c78a8", line_color="white", fill_alpha=0.85)
        self.mean = Span(location=0, dimension="height", line_color="#d62728", line_width=2, visible=False)
        self.interval = BoxAnnotation(left=0, right=0, fill_color="#d62728", fill_alpha=0.2, visible=False)
        fig.add_layout(self.mean)
        fig.add_layout(self.interval)
        self.histogram_figure = fig

    def _sobol(self) -> None:
        """Bars of the chosen output's Sobol indices; shown for saltelli designs only."""
        self.indices = ColumnDataSource({"x": [], "value": [], "low": [], "high": [], "fill": []},
                                        name="explorer-sobol")
        fig = figure(width=WIDTH, height=260, x_range=FactorRange(), tools="save", toolbar_location="above",
                     y_axis_label="Sobol index", name="explorer-sobol-figure", visible=False)
        fig.vbar(x="x", top="value", width=0.8, source=self.indices, fill_color="fill", line_color=None)
        fig.segment(x0="x", x1="x", y0="low", y1="high", source=self.indices, line_color="#333333", line_width=2)
        self.sobol_figure = fig

    def _parallel(self) -> None:
        self.lines = ColumnDataSource({"xs": [], "ys": [], "line": [], "row": []}, name="explorer-lines")
        self.ticks = ColumnDataSource({"x": [], "y": [], "text": []})
        self.anchors = ColumnDataSource({"x": [], "y": []})  # what box select hits: the axes' ends
        self.brush_boxes = ColumnDataSource({"left": [], "right": [], "bottom": [], "top": []})
        fig = figure(width=WIDTH, height=360, tools="reset,save", toolbar_location="above",
                     x_range=Range1d(-0.4, 0.4), y_range=Range1d(-0.08, 1.08), name="explorer-parallel",
                     title="Parallel coordinates: draw a box over axes to brush them")
        fig.multi_line("xs", "ys", source=self.lines, line_color="line", line_alpha=0.35, line_width=1.2,
                       selection_line_alpha=0.9, nonselection_line_alpha=0.04)
        fig.segment(x0="x", x1="x", y0=0, y1=1, source=self.anchors, line_color="#444444")
        anchors = fig.scatter("x", "y", source=self.anchors, size=1, alpha=0)
        fig.quad(left="left", right="right", bottom="bottom", top="top", source=self.brush_boxes,
                 fill_color="#ffbf00", fill_alpha=0.25, line_color="#b38600")
        fig.add_layout(LabelSet(x="x", y="y", text="text", source=self.ticks, x_offset=4, text_font_size="9pt",
                                background_fill_color="white", background_fill_alpha=0.7))
        fig.add_tools(BoxSelectTool(renderers=[anchors]))
        fig.yaxis.visible = False
        fig.xgrid.visible = fig.ygrid.visible = False
        fig.xaxis.ticker = FixedTicker(ticks=[])
        fig.on_event(SelectionGeometry, self._on_brush)
        fig.on_event(Reset, lambda event: self.clear_selection())
        self.parallel_figure = fig

    # ---- updates ---------------------------------------------------------------------------

    def update(self) -> None:
        if self.sweep_id is None:
            self.heading.text = ("<p>Open a sweep's explorer from the Jobs page, or as "
                                 "<code>jobs/sweep?id=SWEEP_ID</code>.</p>")
            return
        state = state_of(self.scheduler)
        if not state.watch(self.sweep_id):
            self.heading.text = "<p>Too many sweeps are being explored at once: try again shortly.</p>"
            return
        refused = state.refused.get(self.sweep_id)
        table = state.tables.get(self.sweep_id)
        if refused is not None or table is None:
            self.heading.text = f"<p>{html.escape(refused or self._waiting())}</p>"
            return
        if (table.token, table.version) != self.drawn and time.monotonic() >= self._next_draw:
            began = time.monotonic()
            self.redraw(table)
            self._next_draw = time.monotonic() + max(MIN_REDRAW_S, REDRAW_LOAD * (time.monotonic() - began))
        self.heading.text = self._counts + (
            f"<p style='color: #666'>rows last changed {max(0.0, time.time() - table.published_at):.0f} s ago</p>")

    def _waiting(self) -> str:
        text = f"Waiting for the results of sweep {self.sweep_id}..."
        if time.monotonic() - self.opened > WAIT_NOTE_S:
            text += (" The orchestrator sends them within seconds of this page opening. If nothing "
                     "comes, no orchestrator using this scheduler has that sweep, or it does not run here.")
        return text

    def redraw(self, table: SweepTable) -> None:
        """Everything from newer rows; choices and the selection are kept where they still apply."""
        self.frame = frame = view.Frame(table)
        self.drawn = (table.token, table.version)
        xs, ys, colors = frame.choices()
        self._quiet = True
        try:
            for select, options in ((self.x, xs), (self.y, ys), (self.color, colors)):
                select.options = options
                if select.value not in options:
                    select.value = options[0]
        finally:
            self._quiet = False
        self.axes = frame.axes()
        self.brushes = {axis: box for axis, box in self.brushes.items() if axis in self.axes}
        if self.brushes:
            self.selected = view.brushed(frame, self.brushes)
        self.draw()
        if self._titles != table.columns:  # SlickGrid writes titles as HTML: names are users' text
            self._titles = list(table.columns)
            self.table.columns = [TableColumn(field=f"c{i}", title=html.escape(name), **self._format(frame, name))
                                  for i, name in enumerate(table.columns)]
        self._counts = _counts(self.sweep_id, table, len(self.points.data["row"]), len(self.lines.data["row"]), frame.size)

    @staticmethod
    def _format(frame: view.Frame, name: str) -> dict[str, Any]:
        """Numbers shown to 6 significant digits (and still sorted as numbers)."""
        if name in view.TEXT_COLUMNS or frame[name].factors is not None:
            return {}
        return {"formatter": HTMLTemplateFormatter(template=NUMBER)}  # a model per page: never shared

    def draw(self) -> None:
        """The figures for the chosen columns."""
        frame = self.frame
        if frame is None:
            return
        x, y, color = self.x.value, self.y.value, self.color.value
        data = view.scatter(frame, x, y, color)
        self.points.data = data
        fig = self.scatter_figure
        fig.xaxis.axis_label, fig.yaxis.axis_label = x, y
        for axis, name in ((fig.xaxis, x), (fig.yaxis, y)):
            factors = frame[name].factors
            axis.ticker = FixedTicker(ticks=list(range(len(factors)))) if factors else BasicTicker()
            axis.major_label_overrides = {i: f for i, f in enumerate(factors or [])}
        fig.title.text = f"{y} against {x}, coloured by {color}"
        self._hover(frame)
        span = view.color_range(frame, color)
        self.color_bar.visible = span is not None
        if span is not None:
            self.color_bar.color_mapper.update(low=span[0], high=span[1])
            self.color_bar.title = color
        self._draw_histogram(frame, y)
        self._draw_sobol(frame, y)
        self._draw_parallel(frame, color)
        self._show_selection()

    def _hover(self, frame: view.Frame) -> None:
        tips = [("run", "@index"), ("status", "@status"), ("job", "@job_id")]
        formats = {}
        for i, name in enumerate(frame.hover_columns()):
            key = f"@{{h{i}}}"
            numeric = frame[name].factors is None
            tips.append((name, f"{key}{{%.6g}}" if numeric else key))
            if numeric:
                formats[key] = "printf"
        self.hover.update(tooltips=tips, formatters=formats)

    def _draw_histogram(self, frame: view.Frame, name: str) -> None:
        spread = view.histogram(frame, name)
        fig = self.histogram_figure
        fig.xaxis.axis_label = name
        if spread is None:
            self.bins.data = {"left": [], "right": [], "top": []}
            self.mean.visible = self.interval.visible = False
            fig.title.text = f"{name}: no run has a number yet"
            return
        self.bins.data = {"left": spread.edges[:-1], "right": spread.edges[1:], "top": spread.counts}
        self.mean.update(location=spread.mean, visible=True)
        known = numpy.isfinite(spread.low)
        self.interval.update(left=spread.low if known else 0, right=spread.high if known else 0, visible=bool(known))
        fig.title.text = spread.describe()

    def _draw_sobol(self, frame: view.Frame, name: str) -> None:
        found = view.sobol(frame, name)
        fig = self.sobol_figure
        fig.visible = found is not None
        if not isinstance(found, view.SobolBars):
            self.indices.data = {"x": [], "value": [], "low": [], "high": [], "fill": []}
            fig.title.text = found or ""
            return
        bars = [((v, kind), value, half, fill) for v, s1, c1, st, ct in zip(
                    found.variables, found.s1, found.s1_conf, found.st, found.st_conf, strict=True)
                for kind, value, half, fill in (("S1", s1, c1, "#4c78a8"), ("ST", st, ct, "#f58518"))]
        fig.x_range.factors = [bar[0] for bar in bars]
        self.indices.data = {"x": [b[0] for b in bars], "value": [b[1] for b in bars],
                             "low": [b[1] - b[2] for b in bars], "high": [b[1] + b[2] for b in bars],
                             "fill": [b[3] for b in bars]}
        fig.title.text = f"Sobol indices of {name}: first-order (S1) and total (ST), 95 % intervals"

    def _draw_parallel(self, frame: view.Frame, color: str) -> None:
        data, ticks = view.parallel(frame, self.axes, color)
        self.lines.data = data
        places = list(range(len(self.axes)))
        fig = self.parallel_figure
        fig.x_range.update(start=-0.4, end=max(0.4, len(places) - 0.6))
        fig.xaxis.ticker = FixedTicker(ticks=places)
        fig.xaxis.major_label_overrides = {i: name for i, name in enumerate(self.axes)}
        self.anchors.data = {"x": places + places, "y": [0.0] * len(places) + [1.0] * len(places)}
        labels = [(i, y, text) for i, axis in enumerate(ticks) for y, text in axis]
        self.ticks.data = {"x": [p[0] for p in labels], "y": [p[1] for p in labels], "text": [p[2] for p in labels]}
        self._draw_brushes()

    def _draw_brushes(self) -> None:
        places = [self.axes.index(axis) for axis in self.brushes]
        boxes = list(self.brushes.values())
        self.brush_boxes.data = {"left": [p - 0.15 for p in places], "right": [p + 0.15 for p in places],
                                 "bottom": [b[0] for b in boxes], "top": [b[1] for b in boxes]}

    # ---- selection -------------------------------------------------------------------------

    def _on_choice(self, attr: str, old: Any, new: Any) -> None:
        if not self._quiet:
            self.draw()

    def _on_points_selected(self, attr: str, old: list[int], new: list[int]) -> None:
        if self._quiet or self.frame is None:
            return
        self.brushes = {}
        self._draw_brushes()
        self.selected = numpy.asarray(self.points.data["row"])[new] if new else numpy.array([], dtype=int)
        self._show_selection()

    def _on_brush(self, event: SelectionGeometry) -> None:
        """A box drawn on the parallel plot: a brush on every axis it spans."""
        geometry = event.geometry or {}
        if not event.final or geometry.get("type") != "rect" or self.frame is None:
            return
        x0, x1 = sorted((geometry["x0"], geometry["x1"]))
        y0, y1 = sorted((geometry["y0"], geometry["y1"]))
        spanned = [axis for place, axis in enumerate(self.axes) if x0 <= place <= x1]
        if spanned:
            self.brush({**self.brushes, **{axis: (max(0.0, y0), min(1.0, y1)) for axis in spanned}})

    def brush(self, brushes: dict[str, tuple[float, float]]) -> None:
        """Select every run inside every brush (axis -> low, high on its 0..1 scale)."""
        self.brushes = dict(brushes)
        self.selected = view.brushed(self.frame, self.brushes)
        self._draw_brushes()
        self._show_selection()

    def clear_selection(self) -> None:
        self.brushes = {}
        self.selected = numpy.array([], dtype=int)
        self._draw_brushes()
        self._show_selection()

    def _show_selection(self) -> None:
        """The selected runs highlighted in both plots and listed in the table."""
        selected = self.selected
        self._quiet = True
        try:
            for source in (self.points, self.lines):
                drawn = numpy.asarray(source.data["row"], dtype=int)
                source.selected.indices = numpy.flatnonzero(numpy.isin(drawn, selected)).tolist() \
                    if len(selected) else []
            self.anchors.selected.indices = []
        finally:
            self._quiet = False
        if self.frame is None:
            return
        self.listed = selected[:view.MAX_TABLE]
        self.rows.data = view.table_rows(self.frame, self.listed)
        self.rows.selected.indices = []
        if not len(selected):
            self.links.text = HINT
            return
        more = f" (the table lists the first {view.MAX_TABLE:,})" if len(selected) > view.MAX_TABLE else ""
        self.links.text = f"<b>{len(selected):,} runs selected</b>{more}. " + self._links(int(selected[0]))

    def _on_row_picked(self, attr: str, old: list[int], new: list[int]) -> None:
        if new and not self._quiet and self.frame is not None and new[0] < len(self.listed):
            self.links.text = self._links(int(self.listed[new[0]]))

    def _links(self, row_number: int) -> str:
        """Links to a run's logs and files through the orchestrator's REST API."""
        table = self.frame.table
        job_id = str(table.data["job_id"][row_number])
        index = table.data["index"][row_number]
        who = f"Run {html.escape(str(index))} (job {html.escape(job_id)})"
        if not table.api_url:
            return f"{who}: its logs and files are at /api/v1/jobs/{html.escape(job_id)}/... on the orchestrator."
        base = html.escape(f"{table.api_url}/api/v1/jobs/{job_id}", quote=True)
        links = [("logs", "/logs"), ("stderr", "/logs?stream=stderr"), ("files", "/files"),
                 ("result", "/result"), ("history", "/statuses")]
        return f"{who}: " + " &middot; ".join(
            f'<a href="{base}{path}" target="_blank" rel="noopener">{label}</a>' for label, path in links)


def _counts(sweep_id: str, table: SweepTable, points: int, lines: int, runs: int) -> str:
    """The page's heading: the sweep, its runs by status, and how much of it is drawn."""
    counts = Counter(table.data.get("status", []))
    parts = " ".join(f"<span style='color: {view.STATUS_COLORS.get(status, view.NO_VALUE)}'>&#9679;</span> "
                     f"{count:,} {html.escape(str(status))}" for status, count in sorted(counts.items()))
    drawn = f" &middot; {points:,} points and {lines:,} lines drawn" if runs > min(points, lines) else ""
    return (f"<h3 style='margin: 4px 0'>Sweep {html.escape(table.name)} ({html.escape(sweep_id)})</h3>"
            f"<p>{runs:,} runs: {parts}{drawn}</p>")


# Dask's page template loads its styles and links its menu relative to the page: beneath
# /jobs/ they need the dashboard's root as the document's base.
PAGE_TEMPLATE = env.from_string("""{% extends "simple.html" %}
{% block extra_resources %}<base href="{{ root }}" />
<link rel="stylesheet" href="{{ root }}statics/css/base.css" />{{ super() }}{% endblock %}""")


def explorer_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    request = doc.session_context.request if doc.session_context is not None else None
    given = (request.arguments.get("id") or [b""])[0] if request is not None else b""
    sweep_id = given.decode("utf-8", "replace") if isinstance(given, bytes) else str(given)
    page = SweepExplorer(scheduler, sweep_id if SWEEP_ID.fullmatch(sweep_id) else None)
    doc.title = f"Dask: sweep {page.sweep_id or ''}"
    add_periodic_callback(doc, page, REFRESH_MS)
    doc.add_root(page.root)
    doc.template = PAGE_TEMPLATE
    doc.template_variables.update(extra, root=_root(extra.get("prefix")))
    doc.theme = BOKEH_THEME


def _root(prefix: str | None) -> str:
    """The dashboard's root path ("/", or "/PREFIX/"); Dask's `prefix` may read "//"."""
    inner = (prefix or "").strip("/")
    return f"/{inner}/" if inner else "/"


applications.setdefault(EXPLORER_PAGE, explorer_doc)
