"""The "Jobs" page of the Dask dashboard: runs per sweep by status, and the running jobs.

The scheduler may run anywhere (embedded, built by a cluster factory, or started with
`dask scheduler --preload orchestrator.plugins.dashboard` on another machine) and never reads the
orchestrator's ledger. The orchestrator sends it a summary whenever work changes (`publish`,
run on the scheduler); the page draws the last summary the scheduler holds.

Bokeh pages must be registered before the scheduler starts. Importing this module does it:
the preload does so for a scheduler started by hand, the orchestrator for schedulers it starts.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any

from bokeh.layouts import column, row
from bokeh.models import (
    ColumnDataSource,
    DataTable,
    Div,
    FactorRange,
    Legend,
    LegendItem,
    OpenURL,
    Spinner,
    TableColumn,
    TapTool,
    TextInput,
)
from bokeh.plotting import figure
from dask.utils import format_time
from distributed.dashboard.components import add_periodic_callback
from distributed.dashboard.components.scheduler import BOKEH_THEME, env
from distributed.dashboard.scheduler import applications
from distributed.diagnostics.plugin import SchedulerPlugin

from orchestrator.plugins import explorer  # noqa: F401 - registers the sweep explorer beside this page
from orchestrator.plugins.explorer_state import EXPLORER_PAGE

JOBS_PAGE = "/jobs"
MENU_PAGE = "/individual-jobs"  # pages named individual-* are listed in the "More" menu
STATUS_COLORS = {
    "QUEUED": "#bdbdbd", "RUNNING": "#3182bd", "COMPLETED": "#31a354",
    "FAILED": "#de2d26", "STOPPED": "#fd8d3c",
}
REFRESH_MS = 500
ROW_PX = 28
SWEEPS_SHOWN = 10  # the most recent sweeps shown, unless the reader asks for more
EXPLORE = EXPLORER_PAGE.lstrip("/") + "?id="  # relative: beside this page, whatever the prefix
LABELLED_ID = re.compile(r"\(([A-Za-z0-9_-]+)\)$")  # board.py labels a sweep "name (id)"


class JobsSummary(SchedulerPlugin):
    """Holds the orchestrator's latest summary on the scheduler, for the page to draw."""

    name = "orchestrator-jobs"

    def __init__(self) -> None:
        self.summary: dict[str, Any] | None = None


def publish(summary: dict[str, Any], dask_scheduler: Any = None) -> None:
    """Run on the scheduler by the orchestrator (`Client.run_on_scheduler` passes the scheduler)."""
    plugin = dask_scheduler.plugins.get(JobsSummary.name)
    if plugin is None:
        plugin = JobsSummary()
        dask_scheduler.add_plugin(plugin)
    plugin.summary = summary


class JobsBoard:
    """The page's parts; `update` redraws them from the scheduler's summary."""

    def __init__(self, scheduler: Any):
        self.scheduler = scheduler
        self.heading = Div(sizing_mode="stretch_width")
        self.filter = TextInput(title="Filter sweeps", placeholder="name or id", width=260, name="jobs-filter")
        self.shown = Spinner(title="Most recent sweeps shown", low=1, step=1, value=SWEEPS_SHOWN, width=200,
                             name="jobs-shown")
        for widget, attr in ((self.filter, "value_input"), (self.shown, "value")):
            widget.on_change(attr, lambda attr, old, new: self.update())
        self.bars = ColumnDataSource({"group": [], "sweep_id": [], **{status: [] for status in STATUS_COLORS}})
        self.chart = figure(
            title="Runs by status", y_range=FactorRange(), height=120, sizing_mode="stretch_width",
            tools="hover", tooltips="@group: $name $data_value", toolbar_location=None, name="jobs-chart",
        )
        stacked = self.chart.hbar_stack(
            list(STATUS_COLORS), y="group", height=0.8, source=self.bars, color=list(STATUS_COLORS.values()),
        )
        items = [LegendItem(label=status, renderers=[bars]) for status, bars in zip(STATUS_COLORS, stacked, strict=True)]
        legend = Legend(items=items, orientation="horizontal", name="jobs-legend")
        self.chart.add_layout(legend, "above")  # outside the plot area: it never covers a bar
        self.chart.add_tools(TapTool(callback=OpenURL(url=EXPLORE + "@sweep_id", same_tab=True)))
        self.explore = Div(sizing_mode="stretch_width", name="jobs-explore")
        self.running = ColumnDataSource({"job_id": [], "name": [], "group": [], "worker": [], "elapsed": []})
        self.table = DataTable(
            source=self.running, sizing_mode="stretch_width", height=300, index_position=None,
            columns=[TableColumn(field="job_id", title="job"), TableColumn(field="name", title="name"),
                     TableColumn(field="group", title="sweep"), TableColumn(field="worker", title="worker"),
                     TableColumn(field="elapsed", title="running for")],
        )
        self.root = column(self.heading, row(self.filter, self.shown), self.chart, self.explore, self.table,
                           sizing_mode="stretch_width")
        self.update()

    def summary(self) -> dict[str, Any] | None:
        plugin = self.scheduler.plugins.get(JobsSummary.name)
        return plugin.summary if plugin is not None else None

    def update(self) -> None:
        summary = self.summary()
        if summary is None:
            self.heading.text = "<p>No orchestrator has reported to this scheduler yet.</p>"
            return
        groups = shown_groups(summary["groups"], self.shown.value or SWEEPS_SHOWN, self.filter.value_input)[::-1]
        self.chart.y_range.factors = [group["label"] for group in groups]  # newest at the top
        self.chart.height = 120 + ROW_PX * len(groups)
        ids = [sweep_id_of(group) for group in groups]
        self.explore.text = "Explore: " + " &middot; ".join(
            f'<a href="{EXPLORE}{sweep_id}">{html.escape(group["label"])}</a>'
            for group, sweep_id in zip(groups, ids, strict=True) if sweep_id) if any(ids) else ""
        self.bars.data = {
            "group": [group["label"] for group in groups], "sweep_id": [sweep_id or "" for sweep_id in ids],
            **{status: [group["counts"].get(status, 0) for group in groups] for status in STATUS_COLORS},
        }
        now = time.time()
        jobs = summary["running"]
        self.running.data = {
            "job_id": [job["job_id"] for job in jobs], "name": [job["name"] for job in jobs],
            "group": [job["group"] for job in jobs], "worker": [job["worker"] or "" for job in jobs],
            "elapsed": [format_time(max(now - job["started_at"], 0)) if job["started_at"] else ""
                        for job in jobs],
        }
        totals = summary["totals"]
        self.heading.text = (
            f"<p><b>{totals.get('RUNNING', 0)} running, {totals.get('QUEUED', 0)} queued</b>, "
            f"{totals.get('COMPLETED', 0)} completed, {totals.get('FAILED', 0)} failed "
            f"(as of {html.escape(format_time(max(now - summary['published_at'], 0)))} ago)</p>"
        )


def sweep_id_of(group: dict[str, Any]) -> str | None:
    """The sweep a row of the summary counts (None for the single jobs)."""
    found = group.get("sweep_id") or LABELLED_ID.search(group["label"])
    return found if isinstance(found, str) or found is None else found.group(1)


def shown_groups(groups: list[dict[str, Any]], most: int, text: str | None) -> list[dict[str, Any]]:
    """The `most` most recent sweeps whose label holds `text` (any case), oldest first, and
    the single jobs unless a filter is given. `groups` are oldest first, as published."""
    text = (text or "").strip().lower()
    sweeps = [group for group in groups if sweep_id_of(group) and text in group["label"].lower()]
    others = [group for group in groups if not sweep_id_of(group)] if not text else []
    return sweeps[max(0, len(sweeps) - int(most)):] + others


# The live page, plus the counts as of its loading in plain HTML, for readers without script.
PAGE_TEMPLATE = env.from_string("""{% extends "simple.html" %}
{% block content %}{{ super() }}
<noscript><table class="orchestrator-jobs">
<tr><th>sweep</th>{% for status in statuses %}<th>{{ status }}</th>{% endfor %}</tr>
{% for group in groups %}<tr><td>{{ group.label | e }}</td>
{% for status in statuses %}<td>{{ group.counts.get(status, 0) }}</td>{% endfor %}</tr>
{% endfor %}</table></noscript>
{% endblock %}""")


def jobs_doc(scheduler: Any, extra: dict[str, Any], doc: Any) -> None:
    board = JobsBoard(scheduler)
    doc.title = "Dask: Jobs"
    add_periodic_callback(doc, board, REFRESH_MS)
    doc.add_root(board.root)
    doc.template = PAGE_TEMPLATE
    doc.template_variables.update(extra)
    summary = board.summary() or {}
    doc.template_variables.update(statuses=list(STATUS_COLORS), groups=summary.get("groups", []))
    doc.theme = BOKEH_THEME


applications.setdefault(JOBS_PAGE, jobs_doc)
applications.setdefault(MENU_PAGE, jobs_doc)
