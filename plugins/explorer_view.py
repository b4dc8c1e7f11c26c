"""The sweep explorer's drawing data, built from the table the scheduler holds
(plugins/explorer_state.py): each column as numbers, the runs drawn (at most MAX_POINTS
points and MAX_LINES parallel lines, evenly spaced: the drawing is downsampled, never the
data), their colours, the parallel axes, the histogram of an output with the mean's
confidence interval, and brushing on the parallel axes over every run.

numpy, no bokeh models: benchmarks/explorer_feed.py times it on 100,000 runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy
from bokeh.palettes import Category10, Viridis256

from orchestrator.intervals import mean_interval
from orchestrator.plots import STATUS_COLORS, downsample
from orchestrator.plugins.explorer_state import SweepTable

MAX_POINTS = 20_000
MAX_LINES = 2_000
MAX_AXES = 12
MAX_HOVER = 12  # variables and outputs shown on hover, besides index, status and job
MAX_TABLE = 1_000  # rows the table of selected runs shows
NO_VALUE = "#bbbbbb"
STATUS = "status"
TEXT_COLUMNS = frozenset(("job_id", STATUS, "status_reason", "outputs_error"))
VIRIDIS = numpy.array(Viridis256)  # the colour bar's palette too
CATEGORY = list(Category10[10])


@dataclass
class Column:
    """A column as numbers: its values, or for text the place of each value among `factors`
    (its sorted distinct values); NaN where a run has no value."""

    name: str
    values: numpy.ndarray
    factors: list[str] | None = None

    @property
    def finite(self) -> numpy.ndarray:
        return ~numpy.isnan(self.values)

    def normalised(self) -> tuple[numpy.ndarray, list[tuple[float, str]]]:
        """Values mapped to 0..1 over every run, and labelled places on that scale."""
        if self.factors is not None:
            k = len(self.factors)
            shown = self.factors if k <= 10 else [self.factors[0], self.factors[-1]]
            place = {f: (i / (k - 1) if k > 1 else 0.5) for i, f in enumerate(self.factors)}
            return (self.values / (k - 1) if k > 1 else self.values * 0 + 0.5), [(place[f], f) for f in shown]
        known = self.values[self.finite]
        if not len(known):
            return self.values, []
        low, high = float(known.min()), float(known.max())
        if high == low:
            return numpy.where(self.finite, 0.5, numpy.nan), [(0.5, f"{low:.4g}")]
        return (self.values - low) / (high - low), [(0.0, f"{low:.4g}"), (1.0, f"{high:.4g}")]


class Frame:
    """A published table's columns as numbers, each converted once (per table version)."""

    def __init__(self, table: SweepTable):
        self.table = table
        self.size = len(table.data.get("index", []))
        self._columns: dict[str, Column] = {}

    def __getitem__(self, name: str) -> Column:
        column = self._columns.get(name)
        if column is None:
            column = self._columns[name] = as_column(name, self.table.data.get(name, [None] * self.size))
        return column

    def choices(self) -> tuple[list[str], list[str], list[str]]:
        """What the drop-downs offer: x a variable, y an output, colour any of them or status."""
        table = self.table
        outputs = [*table.outputs, "duration_s"]
        return list(table.variables) or ["index"], outputs, [STATUS, *table.variables, *outputs]

    def axes(self) -> list[str]:
        """The parallel axes: variables, then outputs with a value, at most MAX_AXES."""
        outputs = [name for name in self.table.outputs if self[name].finite.any()]
        return [*self.table.variables, *outputs][:MAX_AXES]

    def hover_columns(self) -> list[str]:
        return [*self.table.variables, *self.table.outputs][:MAX_HOVER]


def as_column(name: str, values: list[Any]) -> Column:
    """Numbers (and booleans) as floats; anything else as text places."""
    try:
        return Column(name, numpy.array(values, dtype="float64"))
    except (TypeError, ValueError):
        texts = [None if v is None else str(v) for v in values]
        factors = sorted({t for t in texts if t is not None})
        place = {f: float(i) for i, f in enumerate(factors)}
        return Column(name, numpy.array([math.nan if t is None else place[t] for t in texts]), factors)


def sample(present: numpy.ndarray, limit: int) -> numpy.ndarray:
    """Rows to draw among those `present`: at most `limit`, evenly spaced in run order."""
    import pandas

    return downsample(pandas.Series(numpy.flatnonzero(present)), limit).to_numpy()


def color_range(frame: Frame, color: str) -> tuple[float, float] | None:
    """The range a number column's colours span (the colour bar's); None for status or text."""
    if color == STATUS or frame[color].factors is not None:
        return None
    column = frame[color]
    known = column.values[column.finite]
    return (float(known.min()), float(known.max())) if len(known) else (0.0, 1.0)


def paint(frame: Frame, color: str, rows: numpy.ndarray) -> list[str]:
    """Each drawn row's colour by `color`: status colours, a category colour per text value,
    or viridis over a number's range."""
    if color == STATUS:
        statuses = numpy.array(frame.table.data["status"], dtype=object)[rows]
        return [STATUS_COLORS.get(s, NO_VALUE) for s in statuses]
    values = frame[color].values[rows]
    span = color_range(frame, color)
    if span is None:
        palette = numpy.array([*CATEGORY, NO_VALUE])
        places = numpy.where(numpy.isnan(values), len(CATEGORY), numpy.nan_to_num(values) % len(CATEGORY))
        return palette[places.astype(int)].tolist()
    low, high = span
    scaled = (values - low) / (high - low) if high > low else numpy.where(numpy.isnan(values), numpy.nan, 0.5)
    places = numpy.round(numpy.nan_to_num(scaled, nan=-1) * (len(VIRIDIS) - 1)).astype(int)
    return numpy.where(places < 0, NO_VALUE, VIRIDIS[places.clip(0, len(VIRIDIS) - 1)]).tolist()


def scatter(frame: Frame, x: str, y: str, color: str, limit: int = MAX_POINTS) -> dict[str, Any]:
    """The scatter's source: a point per drawn run with both values, its colour and what
    hovering shows (`h0`, `h1`... for hover_columns, in order)."""
    xs, ys = frame[x], frame[y]
    rows = sample(xs.finite & ys.finite, limit)
    data = points_of(frame, rows)
    data.update(x=xs.values[rows], y=ys.values[rows], fill=paint(frame, color, rows))
    return data


def points_of(frame: Frame, rows: numpy.ndarray) -> dict[str, Any]:
    """Who the drawn rows are: row, index, job, status and the hover columns' values."""
    table = frame.table
    data: dict[str, Any] = {"row": rows, "index": frame["index"].values[rows]}
    for name in ("job_id", STATUS):
        data[name] = numpy.array(table.data[name], dtype=object)[rows].tolist()
    for i, name in enumerate(frame.hover_columns()):
        column = frame[name]
        data[f"h{i}"] = column.values[rows] if column.factors is None else [
            column.factors[int(v)] if v == v else "" for v in column.values[rows]]
    return data


def parallel(frame: Frame, axes: list[str], color: str, limit: int = MAX_LINES
             ) -> tuple[dict[str, Any], list[list[tuple[float, str]]]]:
    """The parallel plot's lines (xs, ys on 0..1 per axis, colour, row) and each axis's
    labelled places. Runs with a value on every axis are drawn; until some have, those with any."""
    scaled, ticks = [], []
    for name in axes:
        values, labels = frame[name].normalised()
        scaled.append(values)
        ticks.append(labels)
    if not axes:
        return {"xs": [], "ys": [], "line": [], "row": []}, []
    matrix = numpy.vstack(scaled).T  # a row per run, a column per axis
    present = ~numpy.isnan(matrix)
    every = present.all(axis=1)
    rows = sample(every if every.any() else present.any(axis=1), limit)
    place = numpy.arange(len(axes), dtype="float64")
    data = {"xs": [place] * len(rows), "ys": list(matrix[rows]), "line": paint(frame, color, rows),
            "row": rows}
    return data, ticks


def brushed(frame: Frame, brushes: dict[str, tuple[float, float]]) -> numpy.ndarray:
    """Every run (not only those drawn) inside each brush: axis -> (low, high) on its 0..1 scale."""
    inside = numpy.ones(frame.size, dtype=bool)
    for axis, (low, high) in brushes.items():
        values = frame[axis].normalised()[0]
        inside &= (values >= low) & (values <= high)
    return numpy.flatnonzero(inside)


@dataclass
class Histogram:
    column: str
    counts: numpy.ndarray
    edges: numpy.ndarray
    n: int
    mean: float
    low: float  # the 95 % confidence interval of the mean (NaN below two values)
    high: float

    def describe(self) -> str:
        interval = f"[{self.low:.4g}, {self.high:.4g}]" if math.isfinite(self.low) else "(needs two runs)"
        return f"mean {self.mean:.4g}, 95 % CI of the mean {interval}, n = {self.n:,}"


def histogram(frame: Frame, column: str) -> Histogram | None:
    """How `column` is spread over every run with a value; None without any, or for text."""
    values = frame[column]
    if values.factors is not None or not values.finite.any():
        return None
    known = values.values[values.finite]
    mean, low, high = mean_interval(known)
    bins = max(1, min(60, int(math.ceil(math.sqrt(len(known))))))
    counts, edges = numpy.histogram(known, bins=bins)
    return Histogram(column, counts, edges, len(known), mean, low, high)


def table_rows(frame: Frame, rows: numpy.ndarray, limit: int = MAX_TABLE) -> dict[str, list[Any]]:
    """The selected runs' rows as the table shows them (the first `limit`)."""
    shown = rows[:limit]
    return {f"c{i}": [_cell(values[r]) for r in shown]
            for i, values in enumerate(frame.table.data[c] for c in frame.table.columns)}


def _cell(value: Any) -> Any:
    return "" if value is None else value


@dataclass
class SobolBars:
    """First-order and total Sobol indices of one output, with their interval half-widths."""

    variables: list[str]
    s1: list[float]
    s1_conf: list[float]
    st: list[float]
    st_conf: list[float]


def sobol(frame: Frame, output: str) -> SobolBars | str | None:
    """The output's Sobol indices when the sweep is a saltelli design whose runs all have a
    number (the matrix is read by run index); why not, as text; None for other designs."""
    table = frame.table
    if table.design.get("type") != "saltelli" or output not in table.data:
        return None
    from orchestrator.server.analysis import sobol_indices

    dimensions = len(table.variables)
    step = 2 * dimensions + 2
    index = frame["index"].values - (1 if table.design.get("nominal") else 0)
    values = frame[output].values if frame[output].factors is None else index * numpy.nan
    done = frame[STATUS].factors
    completed = frame[STATUS].values == (done.index("COMPLETED") if done and "COMPLETED" in done else -1)
    keep = index >= 0
    runs = int(index[keep].max()) + 1 if keep.any() else 0
    block = numpy.full(runs - runs % step, numpy.nan)
    inside = keep & (index < len(block)) & completed
    block[index[inside].astype(int)] = values[inside]
    if not len(block) or numpy.isnan(block).any():
        waiting = int(numpy.isnan(block).sum()) if len(block) else step
        return f"Sobol indices of {output}: waiting for {waiting} runs of the saltelli matrix to give a number"
    if numpy.ptp(block) == 0:
        return f"Sobol indices of {output}: it does not vary"
    found = sobol_indices(block, dimensions)
    as_list = {name: [float(v) for v in found[name]] for name in ("S1", "S1_conf", "ST", "ST_conf")}
    return SobolBars(list(table.variables), as_list["S1"], as_list["S1_conf"], as_list["ST"], as_list["ST_conf"])
