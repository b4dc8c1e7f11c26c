"""Sensitivity analysis of one sweep output: per variable, Pearson and Spearman correlations,
standardised regression coefficients (with the fit's R²) and, for a `saltelli` design,
first-order and total Sobol indices with confidence intervals (SALib).

The ledger answers the runs as columns of scalars (Store.sweep_output_columns) and everything
is computed on them with numpy and scipy, so a 100,000-run sweep answers in about a second;
`sweep_analysis` reads and computes in a thread, off the event loop. The functions below take
plain columns (or a Store) and are tested without a cluster.
"""

from __future__ import annotations

import asyncio
import math
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from orchestrator.analysis_models import SweepAnalysis, VariableSensitivity
from orchestrator.errors import Conflict, NotFound, ValidationFailed

if TYPE_CHECKING:
    from orchestrator.server.ledger import Store, SweepRow

CONF_LEVEL = 0.95
RESAMPLES = 100  # bootstrap resamples behind the Sobol confidence intervals
BOOTSTRAP_SEED = 20_190_601  # fixed: the same runs always give the same intervals
SALTELLI = "saltelli"
USED = ""  # the reason code of a run that counts
NO_VALUE, NOT_NUMBER = "no value", "not a number"
UNFINISHED = {"CREATED", "QUEUED", "RUNNING"}


@dataclass
class OutputColumn:
    """One output over a sweep's runs, in index order: the runs' indexes, the output as
    floats (NaN where a run does not count) and, per run, why it does not ("" where it
    does)."""

    index: np.ndarray
    values: np.ndarray
    reasons: list[str]

    @property
    def used(self) -> np.ndarray:
        return ~np.isnan(self.values)

    def left_out(self) -> dict[str, int]:
        return dict(sorted(Counter(r for r in self.reasons if r != USED).items()))


# ---- reading the runs -------------------------------------------------------------------


@dataclass
class RunColumns:
    """A sweep's runs in index order as columns: status, one output and every variable."""

    index: np.ndarray
    statuses: list[str]
    output: list[Any]  # the output's value per run, None where it reported none
    reported: bool  # whether any run reported the output at all
    variables: dict[str, list[Any]]


def run_columns(columns: list[list[Any]], names: Sequence[str]) -> RunColumns:
    """Store.sweep_output_columns' columns in index order (JSON true and false come back from
    SQLite as 1 and 0 with their type: they become booleans again)."""
    index = np.asarray(columns[0], dtype=np.int64)
    if (np.diff(index) < 0).any():
        order = np.argsort(index, kind="stable")
        index, columns = index[order], [[column[i] for i in order] for column in columns]
    kinds, values = columns[2], columns[3]
    return RunColumns(
        index=index,
        statuses=columns[1],
        output=[value if kind not in ("true", "false") else kind == "true"
                for kind, value in zip(kinds, values, strict=True)],
        reported=any(kind is not None for kind in kinds),
        variables=dict(zip(names, columns[4:], strict=True)),
    )


def read_columns(store: Store, sweep_id: str, requested: str, names: Sequence[str]) -> tuple[str, RunColumns]:
    """The output the user means, as the runs reported it or as its results-table column
    (`outputs.<key>` where it collides with a variable or a fixed column), with its columns.
    A 409 while no run has completed; a 400 naming `output` when no run reported it."""
    columns = run_columns(store.sweep_output_columns(sweep_id, requested, names), names)
    if "COMPLETED" not in columns.statuses:
        raise Conflict("the sweep has no completed runs yet: nothing to analyse",
                       {"output": "no completed runs yet"})
    if columns.reported:
        return requested, columns
    key = requested.removeprefix("outputs.")
    if key != requested:
        aliased = run_columns(store.sweep_output_columns(sweep_id, key, names), names)
        if aliased.reported:
            return key, aliased
    known = ", ".join(store.sweep_output_keys(sweep_id)[:20]) or "none yet"
    what = "is a variable, not an output" if requested in names else "was reported by no run"
    raise ValidationFailed(f"output {requested!r} {what}; outputs: {known}",
                           {"output": f"{requested!r} {what} (outputs: {known})"})


def output_column(index: np.ndarray, statuses: Sequence[str], values: Sequence[Any]) -> OutputColumn:
    """Only COMPLETED runs with a finite number count (a boolean is not a number here)."""
    numbers = np.full(len(values), np.nan)
    reasons = []
    for i, (status, value) in enumerate(zip(statuses, values, strict=True)):
        if status != "COMPLETED":
            reasons.append("not finished" if status in UNFINISHED else status)
        elif value is None:
            reasons.append(NO_VALUE)
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            reasons.append(NOT_NUMBER)
        else:
            numbers[i] = value
            reasons.append(USED)
    return OutputColumn(index, numbers, reasons)


def numeric_column(values: Sequence[Any]) -> np.ndarray | None:
    """A variable's values as floats (booleans as 0 and 1), or None if any is not a number."""
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return np.asarray(values, dtype=float)


# ---- statistics on columns --------------------------------------------------------------


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The correlation of each column of `x` (n x k) with `y`; NaN where either is constant."""
    xc, yc = x - x.mean(axis=0), y - y.mean()
    with np.errstate(all="ignore"):
        r = (xc * yc[:, None]).sum(axis=0) / np.sqrt((xc * xc).sum(axis=0) * (yc * yc).sum())
    r[(np.ptp(x, axis=0) == 0) | (np.ptp(y) == 0)] = np.nan
    return np.clip(r, -1.0, 1.0)


def spearman(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson's correlation of the ranks (ties get their mean rank)."""
    from scipy.stats import rankdata

    return pearson(rankdata(x, axis=0), rankdata(y))


def standardised_regression(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares on standardised columns: each coefficient is the change of y, in its
    standard deviations, per standard deviation of one variable, the others held. Raises
    ValueError saying why there is no fit (too few runs, a constant, collinear variables)."""
    n, k = x.shape
    if k == 0:
        raise ValueError("no numeric variable varies over the runs used")
    if n < k + 2:
        raise ValueError(f"{n} runs used; a fit of {k} variables needs at least {k + 2}")
    if np.ptp(y) == 0:
        raise ValueError("the output does not vary over the runs used")
    xs = (x - x.mean(axis=0)) / x.std(axis=0)
    ys = (y - y.mean()) / y.std()
    coefficients, _, rank, _ = np.linalg.lstsq(xs, ys, rcond=None)
    if rank < k:
        raise ValueError("the variables are collinear over the runs used")
    residual = ys - xs @ coefficients
    return coefficients, float(1.0 - (residual @ residual) / (ys @ ys))


def saltelli_block(column: OutputColumn, samples: int, dimensions: int, offset: int) -> np.ndarray:
    """The outputs of the Saltelli matrix's runs (indexes offset .. offset + N(2D+2) - 1) in
    SALib's order. Raises ValueError counting the runs that are missing and why."""
    expected = samples * (2 * dimensions + 2)
    block = np.full(expected, np.nan)
    reasons = np.full(expected, "deleted", dtype=object)
    position = column.index - offset
    inside = (position >= 0) & (position < expected)
    block[position[inside]] = column.values[inside]
    reasons[position[inside]] = np.asarray(column.reasons, dtype=object)[inside]
    missing = np.isnan(block)
    if missing.any():
        counts = Counter(reasons[missing])
        detail = ", ".join(f"{reason}: {n}" for reason, n in sorted(counts.items()))
        raise ValueError(f"Sobol indices need every run of the saltelli matrix ({expected} runs); "
                         f"{int(missing.sum())} lack a numeric output ({detail}): rerun them")
    if np.ptp(block) == 0:
        raise ValueError("the output does not vary over the saltelli runs: Sobol indices are undefined")
    return block


def sobol_indices(block: np.ndarray, dimensions: int) -> dict[str, np.ndarray]:
    """S1, S1_conf, ST and ST_conf from SALib, given the Saltelli matrix's outputs in order.

    Each base point's rows are A, AB_1..AB_D, BA_1..BA_D, B; first-order and total indices
    use only A, AB and B, so the BA rows are dropped and SALib runs without second-order
    indices: the same S1 and ST at a fraction of the cost for many variables."""
    from SALib.analyze import sobol

    step = 2 * dimensions + 2
    position = np.arange(block.size) % step
    kept = block[(position <= dimensions) | (position == step - 1)]
    problem = {"num_vars": dimensions, "names": [f"x{i}" for i in range(dimensions)],
               "bounds": [[0.0, 1.0]] * dimensions}
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        result = sobol.analyze(problem, kept, calc_second_order=False, num_resamples=RESAMPLES,
                               conf_level=CONF_LEVEL, seed=BOOTSTRAP_SEED)
    return {name: np.asarray(result[name], dtype=float) for name in ("S1", "S1_conf", "ST", "ST_conf")}


# ---- the analysis -----------------------------------------------------------------------


def analyse(sweep: SweepRow, key: str, columns: RunColumns) -> SweepAnalysis:
    """The whole answer for output `key` of a sweep (its ledger row and its runs' columns)."""
    column = output_column(columns.index, columns.statuses, columns.output)
    used = column.used
    if not used.any():
        kinds = sorted({type(v).__name__ for v in columns.output if v is not None}) or ["no values"]
        raise ValidationFailed(f"output {key!r} has no numeric value in any completed run ({', '.join(kinds)})",
                               {"output": f"{key!r} is not a number ({', '.join(kinds)})"})
    y = column.values[used]
    per_variable = {name: VariableSensitivity(variable=name) for name in sweep.names}
    numeric: dict[str, np.ndarray] = {}
    chosen = np.flatnonzero(used)
    for name, values in columns.variables.items():
        numbers = numeric_column([values[i] for i in chosen])
        if numbers is None:
            per_variable[name].note = "values that are not numbers: no correlation or regression"
        elif np.ptp(numbers) == 0:
            per_variable[name].note = "constant over the runs used: no correlation or regression"
        else:
            numeric[name] = numbers
    regression_error, r2 = _correlate(per_variable, numeric, y)
    sobol_error = _sobol(per_variable, sweep.spec, column)
    return SweepAnalysis(
        sweep_id=sweep.id, output=key, design=design_of(sweep.spec), runs=len(columns.statuses),
        runs_used=int(used.sum()), left_out=column.left_out(), r2=r2, regression_error=regression_error,
        conf_level=CONF_LEVEL, sobol_error=sobol_error, variables=list(per_variable.values()),
    )


def analyse_sweep(store: Store, sweep_id: str, output: str, owner: str | None = None) -> SweepAnalysis:
    """Read the sweep (404 unless `owner` may see it: as SweepService.results) and its runs'
    columns, and analyse them. Blocking: run it in a thread. It never counts the runs by
    status as SweepService.get does, which would hold the store for a large sweep."""
    sweep = store.get_sweep(sweep_id)
    if sweep is None or (owner is not None and sweep.owner != owner):
        raise NotFound(f"no sweep {sweep_id}")
    key, columns = read_columns(store, sweep_id, output, sweep.names)
    return analyse(sweep, key, columns)


def design_of(spec: dict[str, Any]) -> str | None:
    """The design's type as the sweep's record shows it (None for a table of cases)."""
    return (spec.get("design") or {}).get("type", "full_factorial") if spec.get("variables") else None


def _correlate(per_variable: dict[str, VariableSensitivity], numeric: dict[str, np.ndarray],
               y: np.ndarray) -> tuple[str | None, float | None]:
    """Fill correlations and regression coefficients; answer (why no fit, R²)."""
    if not numeric:
        return "no numeric variable varies over the runs used", None
    x = np.column_stack(list(numeric.values()))
    for name, p, s in zip(numeric, pearson(x, y), spearman(x, y), strict=True):
        per_variable[name].pearson, per_variable[name].spearman = _finite(p), _finite(s)
    try:
        coefficients, r2 = standardised_regression(x, y)
    except ValueError as exc:
        return str(exc), None
    for name, coefficient in zip(numeric, coefficients, strict=True):
        per_variable[name].src = _finite(coefficient)
    return None, _finite(r2)


def _sobol(per_variable: dict[str, VariableSensitivity], spec: dict[str, Any],
           column: OutputColumn) -> str | None:
    """Fill the Sobol indices of a saltelli design whose runs all count; answer why not."""
    design = spec.get("design") or {}
    if design_of(spec) != SALTELLI:
        return f"Sobol indices need the saltelli design; this sweep's is {design_of(spec) or 'a table of cases'}"
    dimensions = len(spec["variables"])
    offset = 1 if spec.get("include_nominal_run") else 0
    # a grown design appends whole base points in order: the matrix reaches its last run
    made = int(column.index.max()) - offset + 1 if column.index.size else 0
    samples = max(int(design["samples"]), -(-made // (2 * dimensions + 2)))
    try:
        block = saltelli_block(column, samples, dimensions, offset)
    except ValueError as exc:
        return str(exc)
    indices = sobol_indices(block, dimensions)
    for j, name in enumerate(per_variable):
        entry = per_variable[name]
        entry.s1, entry.s1_conf = _finite(indices["S1"][j]), _finite(indices["S1_conf"][j])
        entry.st, entry.st_conf = _finite(indices["ST"][j]), _finite(indices["ST_conf"][j])
    return None


def _finite(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


async def sweep_analysis(store: Store, sweep_id: str, output: str, owner: str | None = None) -> SweepAnalysis:
    """`analyse_sweep` in a thread, off the event loop."""
    return await asyncio.to_thread(analyse_sweep, store, sweep_id, output, owner)
