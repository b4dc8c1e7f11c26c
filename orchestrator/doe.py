"""Design of experiments: variables, designs, and the run table.

A sweep's runs are the rows of a table: each row gives every variable a value. The table
comes from variables and a design (a cartesian product of discrete generators, or unit-cube
samples from scipy.stats.qmc mapped through each variable's distribution), or from explicit
cases (JSON rows or a CSV file). The same spec and seed always give the same table. The
generators themselves live in orchestrator.generators.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
import re
import secrets
import warnings
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator

from orchestrator.errors import ValidationFailed
from orchestrator.generators import (  # noqa: F401 - the Python API's helpers load from here
    MAX_LIST,
    MAX_RANGE_POINTS,
    UNIT_EPSILON,
    Choice,
    Constant,
    FixedRange,
    Integer,
    Linspace,
    Lognormal,
    Logspace,
    Loguniform,
    Normal,
    ParameterError,
    Scalar,
    Triangular,
    Uniform,
    Value,
    as_number,
    choice,
    constant,
    frange,
    integer,
    kind_of,
    linspace,
    lognormal,
    logspace,
    loguniform,
    normal,
    one_kind,
    parse_number,
    triangular,
    uniform,
    values,
)
from orchestrator.models import Request
from orchestrator.templating import VARIABLE_NAME

RESERVED_NAMES = re.compile(
    r"^(PATH|HOME|SHELL|USER|PWD|IFS|TMPDIR|LANG|LD_.*|PYTHON.*|DASK_.*|ORCHESTRATOR_.*)$"
)
DISCRETE = ("values", "linspace", "range", "logspace", "integer", "choice", "constant")
CONTINUOUS = ("uniform", "normal", "triangular", "lognormal", "loguniform")
GENERATORS = DISCRETE + CONTINUOUS
PLURAL = {"number": "numbers", "text": "text", "boolean": "booleans"}


class Variable(Request):
    """A name and exactly one generator of its values."""

    name: str = Field(..., min_length=1, max_length=64)
    values: list[Value] | None = Field(
        None, min_length=1, max_length=MAX_LIST,
        description="all numbers, all text or all booleans (numbers written as text among "
                    "numbers are read as numbers)")
    linspace: Linspace | None = None
    range: FixedRange | None = None
    logspace: Logspace | None = None
    integer: Integer | None = None
    choice: Choice | None = None
    constant: Constant | None = None
    uniform: Uniform | None = None
    normal: Normal | None = None
    triangular: Triangular | None = None
    lognormal: Lognormal | None = None
    loguniform: Loguniform | None = None
    nominal: Value | None = None

    @field_validator("values")
    @classmethod
    def _values_of_one_kind(cls, items: list[Any] | None, info: ValidationInfo) -> list[Any] | None:
        return None if items is None else one_kind(info.data.get("name", "?"), items)

    @field_validator("choice")
    @classmethod
    def _choices_of_one_kind(cls, spec: Choice | None, info: ValidationInfo) -> Choice | None:
        if spec is None:
            return None
        return spec.model_copy(update={"values": one_kind(info.data.get("name", "?"), spec.values,
                                                          "choice values")})

    @property
    def generator(self) -> str:
        return next(name for name in GENERATORS if getattr(self, name) is not None)

    @property
    def discrete(self) -> bool:
        """A finite list of points (sampling picks among them)."""
        return self.generator in DISCRETE

    @property
    def weighted(self) -> bool:
        """Points that are not equally likely: a full_factorial cannot honour that."""
        return self.choice is not None and self.choice.weights is not None

    def kind(self) -> str:
        """What the variable's column holds: numbers, text or booleans."""
        listed = self.values if self.values is not None else (
            self.choice.values if self.choice is not None else
            [self.constant.value] if self.constant is not None else None)
        return "number" if listed is None else kind_of(listed[0])

    def nominal_value(self) -> Scalar | None:
        """The nominal as a value of the column: numeric text of a numeric variable becomes
        its number; another kind than the values' is refused (ValueError)."""
        value, kind = self.nominal, self.kind()
        if value is None:
            return None
        if kind == "number" and isinstance(value, str):
            value = as_number(value)
        if kind_of(value) != kind:
            raise ValueError(f"{self.name}: nominal {self.nominal!r} is {kind_of(value)}; the "
                             f"values are {PLURAL[kind]}")
        return value

    def points(self) -> list[Scalar]:
        if self.values is not None:
            return list(self.values)
        return getattr(self, self.generator).points()

    def count(self) -> int:
        return len(self.values) if self.values is not None else getattr(self, self.generator).count()

    def point_at(self, i: int) -> Scalar:
        return self.values[i] if self.values is not None else getattr(self, self.generator).point_at(i)

    def sample(self, unit: np.ndarray) -> list[Scalar]:
        """Map unit-interval points to values: quantiles, a point picked by its weight, or an
        equally likely discrete point (picked by index, so a range of 10**12 points is never
        listed)."""
        if self.weighted:
            assert self.choice is not None
            return self.choice.pick(unit)
        if self.discrete:
            count = self.count()
            known: dict[int, Scalar] = {}
            picked = []
            for u in unit:
                index = min(int(u * count), count - 1)
                if index not in known:
                    known[index] = self.point_at(index)
                picked.append(known[index])
            return picked
        with np.errstate(all="ignore"):
            try:
                quantiles = getattr(self, self.generator).quantiles(unit)
            except OverflowError:
                quantiles = np.full(len(unit), np.inf)
        return [float(v) for v in quantiles]


# ---- designs ----------------------------------------------------------------------------


class FullFactorial(Request):
    type: Literal["full_factorial"]


class Sampled(Request):
    samples: int = Field(..., ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63, description="recorded when left out")

    def runs(self, dimensions: int) -> int:
        """How many runs the design makes for this many variables."""
        return self.samples


class MonteCarlo(Sampled):
    type: Literal["monte_carlo"]


class LatinHypercube(Sampled):
    type: Literal["latin_hypercube"]


class Sobol(Sampled):
    type: Literal["sobol"]


class Saltelli(Sampled):
    """Saltelli's extension of Sobol sampling (SALib): `samples` base points N make N·(2D+2)
    runs, kept in SALib's order, which the sensitivity analysis reads back to compute
    first-order and total Sobol indices."""

    type: Literal["saltelli"]
    samples: int = Field(..., ge=1, description="base points N: the sweep runs N x (2 x variables + 2)")

    def runs(self, dimensions: int) -> int:
        return self.samples * (2 * dimensions + 2)


Design = Annotated[
    FullFactorial | MonteCarlo | LatinHypercube | Sobol | Saltelli, Field(discriminator="type")
]


def unit_cube(design: Sampled, dimensions: int, seed: int) -> np.ndarray:
    """`samples` points in [0, 1)^dimensions from the design's sampler."""
    from scipy.stats import qmc

    if isinstance(design, Saltelli):
        return saltelli_cube(design.samples, dimensions, seed)
    rng = np.random.default_rng(seed)
    if isinstance(design, MonteCarlo):
        return rng.random((design.samples, dimensions))
    if isinstance(design, LatinHypercube):
        return qmc.LatinHypercube(d=dimensions, rng=rng).random(design.samples)
    with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still valid
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=dimensions, scramble=True, rng=rng).random(design.samples)


def saltelli_cube(samples: int, dimensions: int, seed: int, skip: int = 0) -> np.ndarray:
    """SALib's Saltelli matrix on the unit cube, rows in SALib's order (each base point's A,
    AB_1..AB_D, BA_1..BA_D, B): the analysis finds the blocks by run index."""
    from SALib.sample import sobol as saltelli

    problem = {"num_vars": dimensions, "names": [f"x{i}" for i in range(dimensions)],
               "bounds": [[0.0, 1.0]] * dimensions}
    with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still valid
        warnings.simplefilter("ignore", UserWarning)
        return saltelli.sample(problem, samples, calc_second_order=True, seed=seed,
                               skip_values=skip)  # `skip` base points: a grown design continues


# ---- the run table ----------------------------------------------------------------------


@dataclass
class RunTable:
    """The rows to run, with the seed that made them (None for factorial designs and cases)."""

    names: list[str]
    rows: list[dict[str, Scalar]]
    seed: int | None = None
    nominal: bool = False

    first_index: int = 0  # a design grown later numbers its new runs after the sweep's

    def indexed(self) -> list[tuple[int, dict[str, Scalar]]]:
        return list(enumerate(self.rows, start=self.first_index))


def check_variables(variables: Sequence[Variable]) -> None:
    """Names usable as placeholders and environment variables, unique, one generator each."""
    fields: dict[str, str] = {}
    seen: set[str] = set()
    for i, variable in enumerate(variables):
        where = f"variables.{i}"
        chosen = [name for name in GENERATORS if getattr(variable, name) is not None]
        if len(chosen) != 1:
            fields[where] = (
                f"{variable.name}: give exactly one generator of {', '.join(GENERATORS)}"
                + (f" (got {', '.join(chosen)})" if chosen else "")
            )
        problem = name_problem(variable.name)
        if problem:
            fields[f"{where}.name"] = problem
        elif variable.name in seen:
            fields[f"{where}.name"] = f"{variable.name} is defined twice"
        seen.add(variable.name)
        if len(chosen) == 1:
            _check_generator(variable, where, fields)
    if fields:
        raise ValidationFailed(_summary("invalid variables", fields), fields)


def name_problem(name: str) -> str | None:
    if not VARIABLE_NAME.fullmatch(name):
        return f"{name!r} is not a valid variable name (letters, digits, '_', not starting with a digit)"
    if RESERVED_NAMES.match(name):
        return f"{name} is reserved: it would replace an environment variable runs rely on"
    return None


def _check_generator(variable: Variable, where: str, fields: dict[str, str]) -> None:
    """The generator's own rules (high > low...), then the nominal's kind."""
    generator = variable.generator
    if generator != "values":
        try:
            getattr(variable, generator).check()
        except ParameterError as exc:
            key = f"{where}.{generator}" + (f".{exc.field}" if exc.field else "")
            fields[key] = f"{variable.name}: {exc}"
    try:
        variable.nominal_value()
    except ValueError as exc:
        fields[f"{where}.nominal"] = str(exc)


def build_table(
    variables: Sequence[Variable] | None,
    design: FullFactorial | Sampled | None,
    cases: list[dict[str, Any]] | None,
    *,
    include_nominal: bool,
    max_runs: int,
) -> RunTable:
    """The run table of a sweep spec; raises ValidationFailed naming what is wrong."""
    if cases is not None:
        if include_nominal:
            raise ValidationFailed(
                "include_nominal_run needs variables with nominal values, not cases",
                {"include_nominal_run": "not available with cases"},
            )
        return table_from_cases(cases, max_runs)
    if not variables:
        raise ValidationFailed("give variables (with a design) or cases",
                               {"variables": "give variables or cases"})
    check_variables(variables)
    design = design or FullFactorial(type="full_factorial")
    nominal_row = _nominal_row(variables) if include_nominal else None
    budget = max_runs - (1 if nominal_row else 0)
    if isinstance(design, FullFactorial):
        table = _factorial(variables, budget)
    else:
        table = _sampled(variables, design, budget)
    if nominal_row is not None:
        table.rows.insert(0, nominal_row)
        table.nominal = True
    return table


def _factorial(variables: Sequence[Variable], budget: int) -> RunTable:
    fields = {
        f"variables.{i}.{v.generator}": (
            f"{v.name} uses {v.generator}; full_factorial needs discrete generators "
            f"({', '.join(DISCRETE)}): use a sampled design"
        )
        for i, v in enumerate(variables) if not v.discrete
    }
    fields.update({
        f"variables.{i}.choice.weights": (
            f"{v.name}: a full_factorial runs each value once, so weights mean nothing there: "
            "leave them out, or use a sampled design"
        )
        for i, v in enumerate(variables) if v.weighted
    })
    if fields:
        raise ValidationFailed(_summary("full_factorial needs discrete variables", fields), fields)
    sizes = [v.count() for v in variables]
    total = math.prod(sizes)
    if total > budget:
        raise ValidationFailed(
            f"full_factorial makes {total} runs; the limit is {budget}",
            {"design": f"{' x '.join(map(str, sizes))} = {total} runs, more than {budget}"},
        )
    names = [v.name for v in variables]
    rows = [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(v.points() for v in variables))]
    return RunTable(names, rows)


def _sampled(variables: Sequence[Variable], design: Sampled, budget: int) -> RunTable:
    runs = design.runs(len(variables))
    if runs > budget:
        made = "" if runs == design.samples else f" ({runs} runs)"
        raise ValidationFailed(
            f"{design.samples} samples{made} is more than the limit of {budget} runs",
            {"design.samples": f"must be <= {budget}" if not made else
             f"{design.samples} samples make {runs} runs, more than {budget}"},
        )
    seed = design.seed if design.seed is not None else new_seed()
    unit = unit_cube(design, len(variables), seed)
    return RunTable([v.name for v in variables], rows_from_unit(variables, unit), seed=seed)


def rows_from_unit(variables: Sequence[Variable], unit: np.ndarray) -> list[dict[str, Scalar]]:
    """Points of the unit cube as rows of values, each column through its variable's sampler."""
    columns = [variable.sample(unit[:, j]) for j, variable in enumerate(variables)]
    too_large = {
        f"variables.{j}.{v.generator}": f"{v.name}: these parameters give values too large to represent"
        for j, (v, column) in enumerate(zip(variables, columns, strict=True))
        if not v.discrete and not all(math.isfinite(x) for x in column)
    }
    if too_large:
        raise ValidationFailed(_summary("values out of range", too_large), too_large)
    names = [v.name for v in variables]
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def _nominal_row(variables: Sequence[Variable]) -> dict[str, Scalar]:
    missing = {
        f"variables.{i}.nominal": f"{v.name} needs a nominal value for include_nominal_run"
        for i, v in enumerate(variables) if v.nominal is None
    }
    if missing:
        raise ValidationFailed(_summary("nominal values missing", missing), missing)
    return {v.name: v.nominal_value() for v in variables}


def new_seed() -> int:
    return secrets.randbits(63)


# ---- cases ------------------------------------------------------------------------------


def table_from_cases(cases: list[dict[str, Any]], max_runs: int) -> RunTable:
    """Explicit rows: all with the same variables, each a valid name with a scalar value."""
    if not cases:
        raise ValidationFailed("cases is empty", {"cases": "give at least one row"})
    if len(cases) > max_runs:
        raise ValidationFailed(f"{len(cases)} cases is more than the limit of {max_runs} runs",
                               {"cases": f"at most {max_runs} rows"})
    names = list(cases[0])
    fields = {f"cases.0.{name}": problem for name in names if (problem := name_problem(name))}
    if not names:
        fields["cases.0"] = "a row needs at least one variable"
    expected = set(names)
    for i, row in enumerate(cases):
        if set(row) != expected:
            extra, lacking = sorted(set(row) - expected), sorted(expected - set(row))
            detail = "; ".join(filter(None, [
                f"unknown {', '.join(extra)}" if extra else "",
                f"missing {', '.join(lacking)}" if lacking else "",
            ]))
            fields[f"cases.{i}"] = f"row {i} has other variables than row 0: {detail}"
        for name, value in row.items():
            if not isinstance(value, (bool, int, float, str)) or (
                isinstance(value, float) and not math.isfinite(value)
            ) or (isinstance(value, str) and "\x00" in value):
                fields[f"cases.{i}.{name}"] = "must be a finite number, a string without NUL or a boolean"
        if len(fields) >= 20:
            break
    if fields:
        raise ValidationFailed(_summary("invalid cases", fields), fields)
    return RunTable(names, [dict(row) for row in cases])


BLANK = " \t"  # a cell of only these is empty (a quoted "\r" is a value)


def parse_cases_csv(text: str, max_runs: int, field: str = "cases_csv",
                    optional: Collection[str] = ()) -> list[dict[str, Scalar]]:
    """Rescale's parameter file: a header of variable names, then one row per run. An empty
    cell (or one of spaces) is refused, naming its line and column, unless its column is
    `optional` (then it is "")."""
    reader = csv.reader(io.StringIO(text.lstrip("\ufeff")))
    try:
        header = next(reader)
    except StopIteration:
        raise ValidationFailed("the cases CSV is empty", {field: "empty"}) from None
    except csv.Error as exc:
        raise ValidationFailed(f"the cases CSV is malformed: {exc}", {field: str(exc)}) from None
    header = [name.strip() for name in header]
    fields: dict[str, str] = {}
    for column, name in enumerate(header):
        problem = "empty column name" if not name else name_problem(name)
        if problem:
            fields[f"{field}.header.{column + 1}"] = problem
        elif header.index(name) != column:
            fields[f"{field}.header.{column + 1}"] = f"column {name} appears twice"
    if fields:
        raise ValidationFailed(_summary("bad CSV header", fields), fields)
    rows: list[dict[str, Scalar]] = []
    empty: dict[str, str] = {}
    try:
        for cells in reader:
            line_number = reader.line_num
            if not cells or all(not c.strip() for c in cells):
                continue
            if len(cells) != len(header):
                raise ValidationFailed(
                    f"CSV line {line_number} has {len(cells)} fields; the header has {len(header)}",
                    {f"{field}.line.{line_number}": f"{len(cells)} fields, expected {len(header)}"},
                )
            for name, cell in zip(header, cells, strict=True):
                if not cell.strip(BLANK) and name not in optional and len(empty) < 20:
                    empty[f"{field}.line.{line_number}.{name}"] = (
                        f"line {line_number}, column {name} is empty (run {len(rows)})")
            rows.append({name: parse_cell(cell) if cell.strip(BLANK) else ""
                         for name, cell in zip(header, cells, strict=True)})
            if len(rows) > max_runs:
                raise ValidationFailed(f"more than {max_runs} cases",
                                       {field: f"at most {max_runs} rows"})
    except csv.Error as exc:
        raise ValidationFailed(f"the cases CSV is malformed: {exc}", {field: str(exc)}) from None
    if empty:
        raise ValidationFailed("the cases CSV has empty cells: " + "; ".join(list(empty.values())[:5]),
                               empty)
    if not rows:
        raise ValidationFailed("the cases CSV has no rows", {field: "no rows under the header"})
    return rows


def parse_cell(cell: str) -> Scalar:
    """Numbers become numbers (see parse_number); anything else stays text."""
    return as_number(cell)


def cases_to_csv(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # \r\n rows, so a \r inside a value gets quoted
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in names])
    return buffer.getvalue()


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


# ---- helpers ----------------------------------------------------------------------------


def _summary(title: str, fields: dict[str, str]) -> str:
    return f"{title}: " + "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])
