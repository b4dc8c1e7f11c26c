"""Figures of a sweep's results, as bokeh models: a scatter of one column against another, the
parallel coordinates of variables and outputs, a histogram of one output with its mean's
confidence interval, and Sobol index bars; and standalone HTML pages of them that work
offline (bokeh's JavaScript inlined, never a CDN).

Every figure is built from the results table (`GET /sweeps/{id}/results`, `Sweep.results()`),
so embedded, remote, REST and CLI plots are the same. A column the table lacks raises
ValidationFailed naming the argument (`x`, `y`, `color`, `columns`, `column`), which REST
answers as a 400; while runs are still active it may be an output no run has reported yet,
so the figure says it waits for it instead. A table too long to draw is downsampled to
MAX_POINTS evenly spaced runs (the same table always gives the same points); the table itself
is never changed. pandas, numpy and bokeh are imported when a figure is built."""

from __future__ import annotations

import html
import math
import types
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

from orchestrator.errors import ValidationFailed
from orchestrator.intervals import mean_interval
from orchestrator.models import JobStatus
from orchestrator.server.sweep_results import EXPLAINING_COLUMNS, RESULT_COLUMNS
from orchestrator.sweep_models import ResultsTable

if TYPE_CHECKING:
    import numpy
    import pandas
    from bokeh.model import Model
    from bokeh.plotting import figure as Figure

Table = Union[ResultsTable, "pandas.DataFrame"]

MAX_POINTS = 20_000  # a browser draws this many points at ease
MAX_LINES = 5_000  # parallel coordinates: more lines only thicken the picture (and the page)
MAX_HOVER = 12  # variables and outputs shown on hover, beyond index and status
WIDTH, HEIGHT = 760, 460
X, Y, COLOR = "plot:x", "plot:y", "plot:color"  # source keys no results column is named
NO_VALUE = "(none)"
TERMINAL = frozenset(status.value for status in JobStatus if status.is_terminal)
FIXED = frozenset((*RESULT_COLUMNS, *EXPLAINING_COLUMNS))  # not a variable nor an output
STATUS_COLORS = {"COMPLETED": "#2ca02c", "FAILED": "#d62728", "STOPPED": "#7f7f7f",
                 "RUNNING": "#1f77b4", "QUEUED": "#ff7f0e", "CREATED": "#bcbd22"}
NUMERIC = ("integer", "floating", "mixed-integer-float", "decimal", "empty")
SOBOL_COLUMNS = ("S1", "S1_conf", "ST", "ST_conf")


# ---- figures --------------------------------------------------------------------------------


def scatter(table: Table, x: str, y: str, color: str | None = None, *,
            max_points: int = MAX_POINTS) -> Figure:
    """`y` against `x`, one point per run with both values, coloured by `color` (numbers: a
    colour bar; text such as status: a colour per value). Hovering shows the run's index,
    status, variables and outputs. Text columns give categorical axes."""
    frame = results_frame(table)
    title = f"{y} against {x}" + (f", coloured by {color}" if color else "")
    waiting = _waiting_for(frame, {"x": x, "y": y, "color": color})
    if waiting is not None:
        return _empty(title, waiting, x, y)
    present = frame[x].notna() & frame[y].notna()
    rows = downsample(frame[present], max_points)
    xs, x_factors = _axis(rows[x])
    ys, y_factors = _axis(rows[y])
    data = {X: xs, Y: ys, **_hover_data(rows, (x, y, color))}
    fig = _figure(_title(title, len(frame), int(present.sum()), len(rows)), x, y,
                  x_range=x_factors, y_range=y_factors, tooltips=_tooltips(data))
    paint = _paint(rows, color, data, fig)
    from bokeh.models import ColumnDataSource

    fig.scatter(X, Y, source=ColumnDataSource(data), size=7, alpha=0.8, **paint)
    _legend_outside(fig)
    if rows.empty:
        _say(fig, f"no run has a value of both {x} and {y} yet")
    return _inline(fig)


def parallel(table: Table, columns: list[str] | None = None, color: str | None = None, *,
             max_points: int = MAX_LINES) -> Figure:
    """Parallel coordinates: a vertical axis per column (default: every numeric variable and
    output), each normalised to its own min..max and labelled with that real range, a line
    per run coloured by `color` (default: the last column; `status` colours by status)."""
    frame = results_frame(table)
    if columns is None:
        columns = [c for c in frame.columns if c not in FIXED and _is_numeric(frame[c]) and frame[c].notna().any()]
    elif isinstance(columns, str) or not columns:
        raise ValidationFailed("columns: give a list of column names", {"columns": "a list of column names"})
    color = color or (columns[-1] if columns else "status")
    title = f"parallel coordinates, coloured by {color}"
    waiting = _waiting_for(frame, {**{f"columns.{i}": c for i, c in enumerate(columns)}, "color": color})
    if waiting is not None or not columns:
        return _empty(title, waiting or "no numeric variables or outputs yet", "", "")
    present = frame[columns].notna().any(axis=1)
    everything, rows = frame[present], downsample(frame[present], max_points)
    scaled, ticks = _normalised(everything, rows, columns)
    data = {"xs": [list(range(len(columns)))] * len(rows), "ys": list(scaled),
            **_hover_data(rows, (*columns, color))}
    fig = _figure(_title(title, len(frame), len(everything), len(rows)), "", "",
                  tooltips=_tooltips(data))
    _parallel_axes(fig, columns, ticks)
    paint = _paint(rows, color, data, fig, line=True)
    from bokeh.models import ColumnDataSource

    alpha = max(0.05, min(0.7, 300 / max(1, len(rows))))
    fig.multi_line("xs", "ys", source=ColumnDataSource(data), line_alpha=alpha, line_width=1.5, **paint)
    _legend_outside(fig)
    if rows.empty:
        _say(fig, f"no run has a value of {', '.join(map(str, columns))} yet")
    return _inline(fig)


def histogram(table: Table, column: str, bins: int | None = None) -> Figure:
    """How one output is spread over the runs, with its mean and a 95 % confidence interval of
    the mean (Student's t) as a line and a band, also given in the title."""
    frame = results_frame(table)
    waiting = _waiting_for(frame, {"column": column})
    if waiting is not None:
        return _empty(f"histogram of {column}", waiting, column, "runs")
    if not _is_numeric(frame[column]):
        raise ValidationFailed(f"column: {column!r} holds text, not numbers", {"column": "not a number column"})
    values = _numbers(frame[column])
    values = values[~_isnan(values)]
    if not len(values):
        return _empty(f"histogram of {column}", f"no run has a value of {column} yet", column, "runs")
    import numpy
    from bokeh.models import BoxAnnotation, ColumnDataSource, Span

    mean, low, high = mean_interval(values)
    counts, edges = numpy.histogram(values, bins=bins or _bin_count(values))
    interval = f"[{low:.4g}, {high:.4g}]" if math.isfinite(low) else "(needs two runs)"
    title = f"{column}: mean {mean:.4g}, 95 % CI of the mean {interval}, n = {len(values)}"
    source = ColumnDataSource({"top": counts, "left": edges[:-1], "right": edges[1:]})
    fig = _figure(_title(title, len(frame), len(values), len(values)), column, "runs",
                  tooltips=[("from", "@left{%.4g}"), ("to", "@right{%.4g}"), ("runs", "@top")],
                  formatters={"@left": "printf", "@right": "printf"})
    fig.quad(top="top", bottom=0, left="left", right="right", source=source,
             fill_color="#4c78a8", line_color="white", fill_alpha=0.8)
    if math.isfinite(low):
        fig.add_layout(BoxAnnotation(left=low, right=high, fill_color="#d62728", fill_alpha=0.2))
    fig.add_layout(Span(location=mean, dimension="height", line_color="#d62728", line_width=2))
    return _inline(fig)


def sobol_bars(analysis: pandas.DataFrame, title: str | None = None) -> Figure:
    """First-order (S1) and total (ST) Sobol indices per variable, with their confidence
    intervals (S1_conf, ST_conf: half-widths) as whiskers. `analysis` has a row per variable
    (its index, or a `variable` column) and the columns S1, S1_conf, ST, ST_conf, in either
    case: `Sweep.analysis(output)`'s s1, s1_conf, st, st_conf do (its output names the title)."""
    named = {str(c).lower(): c for c in analysis.columns}
    missing = [c for c in SOBOL_COLUMNS if c.lower() not in named]
    if missing:
        raise ValidationFailed(f"analysis: missing columns {', '.join(missing)}",
                               {"analysis": f"needs the columns {', '.join(SOBOL_COLUMNS)}"})
    from bokeh.models import ColumnDataSource, FactorRange, Range1d, Whisker
    from bokeh.transform import factor_cmap

    names = analysis["variable"] if "variable" in analysis.columns else analysis.index
    factors, values, confs = [], [], []
    for name, (_, row) in zip(names, analysis.iterrows(), strict=True):
        for kind in ("S1", "ST"):
            factors.append((str(name), kind))
            values.append(_float(row[named[kind.lower()]]))
            confs.append(_float(row[named[f"{kind.lower()}_conf"]]))
    import numpy

    value, conf = numpy.array(values, dtype=float), numpy.array(confs, dtype=float)
    source = ColumnDataSource({"x": factors, "value": value, "lower": value - conf, "upper": value + conf,
                               "kind": [kind for _, kind in factors]})
    output = analysis.attrs.get("output")
    fig = _figure(title or ("Sobol indices" + (f" of {output}" if output else "") +
                            ": first-order S1 and total ST, with confidence intervals"),
                  "variable", "index", x_range=FactorRange(*factors),
                  tooltips=[("", "@x"), ("index", "@value{%.3f}"), ("interval", "@lower{%.3f} .. @upper{%.3f}")],
                  formatters={f"@{k}": "printf" for k in ("value", "lower", "upper")})
    fig.vbar(x="x", top="value", width=0.8, source=source, legend_field="kind",
             fill_color=factor_cmap("x", ["#1f77b4", "#ff7f0e"], ["S1", "ST"], start=1, end=2))
    fig.add_layout(Whisker(source=source, base="x", upper="upper", lower="lower"))
    known = numpy.concatenate([value, value + numpy.nan_to_num(conf), value - numpy.nan_to_num(conf), [0.0]])
    low, high = float(numpy.nanmin(known)), float(numpy.nanmax(known))
    pad = 0.05 * ((high - low) or 1.0)  # whiskers are not data: the range must make room for them
    fig.y_range = Range1d(low - pad if low < 0 else 0, high + pad)
    _legend_outside(fig)
    fig.xaxis.major_label_orientation = 0.8 if len(factors) > 12 else 0
    return _inline(fig)


# ---- pages ----------------------------------------------------------------------------------


def standalone_html(model: Model, title: str = "sweep plot") -> str:
    """A complete HTML page holding `model`, bokeh's JavaScript inlined: it opens offline."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    return file_html(model, INLINE, title)


def save_html(model: Model, path: str | Path, title: str = "sweep plot") -> Path:
    """Write `model` as a standalone page (see standalone_html)."""
    path = Path(path)
    path.write_text(standalone_html(model, title), encoding="utf-8")
    return path


# ---- the table ------------------------------------------------------------------------------


def results_frame(table: Table) -> pandas.DataFrame:
    """The results as a DataFrame with the run index as a column (so `index` may be plotted
    too); a DataFrame from `Sweep.results()` (indexed by run) is read, not modified."""
    import pandas

    if isinstance(table, ResultsTable):
        return pandas.DataFrame(table.rows, columns=table.columns)
    if "index" in table.columns:
        return table.reset_index(drop=True)
    return table.rename_axis("index").reset_index()


def downsample(frame: pandas.DataFrame, limit: int = MAX_POINTS) -> pandas.DataFrame:
    """At most `limit` rows, evenly spaced in table order: deterministic, and a sample that
    covers the whole sweep rather than its first runs."""
    if len(frame) <= limit:
        return frame
    import numpy

    return frame.iloc[numpy.linspace(0, len(frame) - 1, limit).round().astype(int)]


def _waiting_for(frame: pandas.DataFrame, wanted: dict[str, str | None]) -> str | None:
    """Why the figure must stay empty for now, or None. A column the table lacks is an error
    naming its argument, unless runs are still active: an output is a column only once a
    run reported it."""
    unknown = {field: name for field, name in wanted.items() if name is not None and name not in frame.columns}
    active = frame.empty or ("status" in frame.columns and not set(frame["status"].dropna()) <= TERMINAL)
    if unknown and not active:
        known = ", ".join(map(str, frame.columns))
        raise ValidationFailed(
            f"{', '.join(unknown)}: no such column in the results table (columns: {known})",
            {field: f"unknown column {name!r}" for field, name in unknown.items()})
    if frame.empty:
        return "no runs yet"
    if unknown:
        ended = int(frame["status"].isin(TERMINAL).sum())
        names = ", ".join(unknown.values())
        return f"no run has reported {names} yet ({ended} of {len(frame)} runs ended)"
    return None


def _is_numeric(series: pandas.Series) -> bool:
    from pandas.api.types import infer_dtype

    return infer_dtype(series, skipna=True) in NUMERIC


def _numbers(series: pandas.Series) -> numpy.ndarray:
    import numpy
    import pandas

    return pandas.to_numeric(series, errors="coerce").to_numpy(dtype="float64", na_value=numpy.nan)


def _texts(series: pandas.Series) -> list[str]:
    """Each value as text, NO_VALUE where there is none."""
    return [NO_VALUE if missing else str(value) for value, missing in zip(series, series.isna(), strict=True)]


def _isnan(values: numpy.ndarray) -> numpy.ndarray:
    import numpy

    return numpy.isnan(values)


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _axis(series: pandas.Series) -> tuple[Any, list[str] | None]:
    """A column's positions on an axis: numbers, or text with its sorted factors."""
    if _is_numeric(series):
        return _numbers(series), None
    texts = _texts(series)
    return texts, sorted(set(texts))


def _normalised(everything: pandas.DataFrame, rows: pandas.DataFrame,
                columns: list[str]) -> tuple[numpy.ndarray, list[list[tuple[float, str]]]]:
    """Each drawn row's columns mapped to 0..1 by each column's own range over every run with
    a value (text: its sorted values, evenly spaced), and each axis's labelled positions."""
    import numpy

    scaled = numpy.full((len(rows), len(columns)), numpy.nan)
    ticks = []
    for i, column in enumerate(columns):
        if _is_numeric(everything[column]):
            values = _numbers(everything[column])
            low, high = (numpy.nanmin(values), numpy.nanmax(values)) if (~numpy.isnan(values)).any() else (0, 0)
            span = high - low
            scaled[:, i] = (_numbers(rows[column]) - low) / span if span else 0.5
            ticks.append([(0.0 if span else 0.5, f"{low:.4g}"), (1.0, f"{high:.4g}")][: 2 if span else 1])
            continue
        factors = sorted(set(everything[column].dropna().map(str)))
        place = {f: (k / (len(factors) - 1) if len(factors) > 1 else 0.5) for k, f in enumerate(factors)}
        scaled[:, i] = [numpy.nan if missing else place.get(str(v), numpy.nan)
                        for v, missing in zip(rows[column], rows[column].isna(), strict=True)]
        shown = factors if len(factors) <= 10 else [factors[0], factors[-1]]
        ticks.append([(place[f], f) for f in shown])
    return scaled, ticks


def _hover_data(rows: pandas.DataFrame, wanted: tuple[str | None, ...]) -> dict[str, list[str]]:
    """Text of what hovering shows: index, status, then the plotted columns and the other
    variables and outputs (up to MAX_HOVER). Numbers are formatted here, blanks are empty."""
    columns = [c for c in ("index", "status") if c in rows.columns]
    for column in [*wanted, *(c for c in rows.columns if c not in FIXED)]:
        if column is not None and column not in columns and len(columns) < MAX_HOVER + 2 and \
                not set("{}") & set(str(column)):
            columns.append(column)
    return {str(c): _labels(rows[c]) for c in columns}


def _labels(series: pandas.Series) -> list[str]:
    if not _is_numeric(series):
        return ["" if text == NO_VALUE else text for text in _texts(series)]
    return ["" if v != v else (str(int(v)) if v.is_integer() and abs(v) < 1e15 else f"{v:.6g}")
            for v in _numbers(series).tolist()]


def _tooltips(data: dict[str, Any]) -> list[tuple[str, str]]:
    return [(key, f"@{{{key}}}") for key in data if key not in (X, Y, COLOR, "xs", "ys")]


# ---- drawing --------------------------------------------------------------------------------


def _figure(title: str, x_label: str, y_label: str, *, x_range: Any = None, y_range: Any = None,
            tooltips: list[tuple[str, str]] | None = None, formatters: dict[str, str] | None = None) -> Figure:
    from bokeh.models import HoverTool
    from bokeh.plotting import figure

    ranges = {k: v for k, v in (("x_range", x_range), ("y_range", y_range)) if v is not None}
    fig = figure(title=title, x_axis_label=x_label, y_axis_label=y_label, width=WIDTH, height=HEIGHT,
                 tools="pan,wheel_zoom,box_zoom,reset,save", toolbar_location="right", **ranges)
    if tooltips:
        fig.add_tools(HoverTool(tooltips=tooltips, formatters=formatters or {}))
    fig.title.text_font_size = "12pt"
    return fig


def _title(base: str, runs: int, with_value: int, drawn: int) -> str:
    notes = []
    if with_value < runs:
        notes.append(f"{runs - with_value} of {runs} runs without a value left out")
    if drawn < with_value:
        notes.append(f"{drawn:,} of {with_value:,} runs drawn (evenly spaced)")
    return base + (f"\n{'; '.join(notes)}" if notes else "")  # a second line: titles are not wrapped


def _paint(rows: pandas.DataFrame, color: str | None, data: dict[str, Any], fig: Figure,
           line: bool = False) -> dict[str, Any]:
    """The glyph's colour keywords for `color`, with its colour bar or legend on `fig`; the
    colour values go into `data`."""
    key = "line_color" if line else "color"
    if color is None:
        return {key: "#1f77b4"}
    from bokeh.models import CategoricalColorMapper, ColorBar, LinearColorMapper

    series = rows[color]
    if _is_numeric(series):
        values = _numbers(series)
        known = values[~_isnan(values)]
        low, high = (float(known.min()), float(known.max())) if len(known) else (0.0, 1.0)
        mapper = LinearColorMapper(palette="Viridis256", low=low, high=high, nan_color="#bbbbbb")
        fig.add_layout(ColorBar(color_mapper=mapper, title=color), "right")
        data[COLOR] = values
        return {key: {"field": COLOR, "transform": mapper}}
    data[COLOR] = _texts(series)
    factors = _ordered_factors(data[COLOR], color)
    mapper = CategoricalColorMapper(factors=factors, palette=_palette(factors, color), nan_color="#bbbbbb")
    legend = {"legend_field": COLOR} if 0 < len(factors) <= 20 else {}
    return {key: {"field": COLOR, "transform": mapper}, **legend}


def _ordered_factors(texts: list[str], column: str) -> list[str]:
    found = set(texts)
    if column == "status":
        order = [s.value for s in JobStatus]
        return sorted(found, key=lambda s: (order.index(s) if s in order else len(order), s))
    return sorted(found)


def _palette(factors: list[str], column: str) -> list[str]:
    from bokeh.palettes import Category10, Category20

    base = list(Category10[10] if len(factors) <= 10 else Category20[20])
    colors = [base[i % len(base)] for i in range(len(factors))]
    if column == "status":
        colors = [STATUS_COLORS.get(f, c) for f, c in zip(factors, colors, strict=True)]
    return [("#bbbbbb" if f == NO_VALUE else c) for f, c in zip(factors, colors, strict=True)] or ["#1f77b4"]


def _parallel_axes(fig: Figure, columns: list[str], ticks: list[list[tuple[float, str]]]) -> None:
    """A vertical line per column, its name below it, and its real values where they fall."""
    from bokeh.models import ColumnDataSource, FixedTicker, LabelSet, Range1d, Span

    fig.x_range = Range1d(-0.35, len(columns) - 0.35)  # room for the last axis's labels
    fig.y_range = Range1d(-0.1, 1.1)
    fig.xaxis.ticker = FixedTicker(ticks=list(range(len(columns))))
    fig.xaxis.major_label_overrides = {i: str(c) for i, c in enumerate(columns)}
    fig.yaxis.visible = False
    fig.ygrid.visible = False
    fig.xgrid.visible = False
    labels: dict[str, list[Any]] = {"x": [], "y": [], "text": [], "baseline": []}
    for i, axis in enumerate(ticks):
        fig.add_layout(Span(location=i, dimension="height", line_color="#444444", line_width=1))
        for y, text in axis:  # the minimum just below its axis, the maximum just above
            labels["x"].append(i)
            labels["y"].append(y)
            labels["text"].append(text)
            labels["baseline"].append("top" if y == 0 else "bottom" if y == 1 else "middle")
    fig.add_layout(LabelSet(x="x", y="y", text="text", source=ColumnDataSource(labels), x_offset=4,
                            text_baseline="baseline", text_font_size="9pt",
                            background_fill_color="white", background_fill_alpha=0.7))


def _legend_outside(fig: Figure) -> None:
    """The legend beside the plot, where it hides no point or label."""
    for legend in list(fig.legend):
        fig.center = [m for m in fig.center if m is not legend]
        fig.add_layout(legend, "right")


def _empty(title: str, message: str, x_label: str, y_label: str) -> Figure:
    """A figure with nothing to draw yet, saying why."""
    fig = _figure(f"{title}: {message}", x_label, y_label)
    fig.scatter([], [])  # a renderer, so bokeh does not warn about an empty plot
    _say(fig, message)
    return _inline(fig)


def _say(fig: Figure, message: str) -> None:
    from bokeh.models import Label

    fig.add_layout(Label(x=WIDTH / 2 - 60, y=HEIGHT / 2 - 60, x_units="screen", y_units="screen",
                         text=message, text_align="center", text_color="#666666", text_font_size="13pt"))


def _bin_count(values: numpy.ndarray) -> int:
    return max(1, min(60, int(math.ceil(math.sqrt(len(values))))))


def _inline(fig: Figure) -> Figure:
    """Show as itself in Jupyter: the standalone page in an iframe, so it needs neither
    `output_notebook()` nor a network (bokeh's own repr is a table of properties)."""

    def repr_html(model: Figure) -> str:
        page = html.escape(standalone_html(model), quote=True)
        return (f'<iframe srcdoc="{page}" style="width: {WIDTH + 60}px; height: {HEIGHT + 60}px; '
                f'border: none"></iframe>')

    fig._repr_html_ = types.MethodType(repr_html, fig)
    return fig
