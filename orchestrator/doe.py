"""Design of experiments: variables with value generators, designs, and the run table.

A sweep's runs are the rows of a table: each row gives every variable a value. The table
comes from variables and a design (a cartesian product of discrete generators, or unit-cube
samples from scipy.stats.qmc mapped through each variable's distribution), or from explicit
cases (JSON rows or a CSV file). The same spec and seed always give the same table.
"""

from __future__ import annotations

import csv
import decimal
import io
import itertools
import math
import re
import secrets
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, Field

from orchestrator.errors import ValidationFailed
from orchestrator.models import Request
from orchestrator.templating import VARIABLE_NAME


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[int | float, AfterValidator(_finite)]


def _plain_scalar(value: Any) -> Any:
    """A value a run can receive: finite numbers, text without NUL."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


Scalar = bool | int | float | str
Value = Annotated[bool | int | float | str, AfterValidator(_plain_scalar)]
RESERVED_NAMES = re.compile(
    r"^(PATH|HOME|SHELL|USER|PWD|IFS|TMPDIR|LANG|LD_.*|PYTHON.*|DASK_.*|ORCHESTRATOR_.*)$"
)
MAX_RANGE_POINTS = 2**53  # past this, neighbouring float points are no longer distinct
UNIT_EPSILON = 1e-12
DECIMALS = decimal.Context(prec=60)  # exact for the decimal numbers people write  # keeps unbounded quantiles finite at the cube's faces


# ---- generators -------------------------------------------------------------------------


class Linspace(Request):
    start: Number
    stop: Number
    num: int = Field(..., ge=1, le=MAX_RANGE_POINTS, description="number of points, both ends included")

    def count(self) -> int:
        return self.num

    def point_at(self, i: int) -> Scalar:
        """Computed in decimal from the numbers as written, so 0.1 to -0.2 passes 0.0 exactly."""
        if self._integral():
            return self.start if self.num == 1 else (
                self.start + (self.stop - self.start) * i // (self.num - 1))
        start, stop = _decimal(self.start), _decimal(self.stop)
        if i == 0 or self.num == 1:
            return float(start)
        if i == self.num - 1:
            return float(stop)
        with decimal.localcontext(DECIMALS):
            return float(start + (stop - start) * i / (self.num - 1))

    def _integral(self) -> bool:
        return isinstance(self.start, int) and isinstance(self.stop, int) and (
            self.num == 1 or (self.stop - self.start) % (self.num - 1) == 0
        )

    def points(self) -> list[Scalar]:
        return [self.point_at(i) for i in range(self.num)]


class FixedRange(Request):
    """Rescale's fixed range: start, start+step, ... up to stop (included if reached)."""

    start: Number
    stop: Number
    step: Number

    def count(self) -> int:
        """Exact for the decimal numbers as written: 0 to 9.9999999995 by 1 is 10 points."""
        if self.step == 0:
            raise ValueError("step must not be 0")
        with decimal.localcontext(DECIMALS):
            span = (_decimal(self.stop) - _decimal(self.start)) / _decimal(self.step)
        if span < 0:
            raise ValueError("step goes away from stop")
        if span >= MAX_RANGE_POINTS:
            raise ValueError(f"more than {MAX_RANGE_POINTS} points: use a larger step")
        return int(span.to_integral_value(rounding=decimal.ROUND_FLOOR)) + 1

    def point_at(self, i: int) -> Scalar:
        if all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            return self.start + self.step * i
        with decimal.localcontext(DECIMALS):
            return float(_decimal(self.start) + _decimal(self.step) * i)

    def points(self) -> list[Scalar]:
        return [self.point_at(i) for i in range(self.count())]


class Uniform(Request):
    low: Number
    high: Number

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        width = self.high - self.low
        if math.isfinite(width):
            values = self.low + unit * width
        else:  # the width overflows; the weighted form does not
            values = self.low * (1 - unit) + self.high * unit
        return np.clip(values, self.low, self.high)


class Normal(Request):
    mean: Number
    std: Number = Field(..., gt=0)

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        return stats.norm.ppf(_inside(unit), loc=self.mean, scale=self.std)


class Triangular(Request):
    left: Number
    mode: Number
    right: Number

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        width = self.right - self.left
        shape = (self.mode - self.left) / width
        return stats.triang.ppf(unit, shape, loc=self.left, scale=width)


class Lognormal(Request):
    """The log of the value is normal with this mean and sigma (numpy's convention)."""

    mean: Number
    sigma: Number = Field(..., gt=0)

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        return np.exp(stats.norm.ppf(_inside(unit), loc=self.mean, scale=self.sigma))


DISCRETE = ("values", "linspace", "range")
CONTINUOUS = ("uniform", "normal", "triangular", "lognormal")
GENERATORS = DISCRETE + CONTINUOUS


class Variable(Request):
    """A name and exactly one generator of its values."""

    name: str = Field(..., min_length=1, max_length=64)
    values: list[Value] | None = Field(None, min_length=1, max_length=1_000_000)
    linspace: Linspace | None = None
    range: FixedRange | None = None
    uniform: Uniform | None = None
    normal: Normal | None = None
    triangular: Triangular | None = None
    lognormal: Lognormal | None = None
    nominal: Value | None = None

    @property
    def generator(self) -> str:
        return next(name for name in GENERATORS if getattr(self, name) is not None)

    @property
    def discrete(self) -> bool:
        return self.generator in DISCRETE

    def points(self) -> list[Scalar]:
        if self.values is not None:
            return list(self.values)
        return getattr(self, self.generator).points()

    def count(self) -> int:
        return len(self.values) if self.values is not None else getattr(self, self.generator).count()

    def point_at(self, i: int) -> Scalar:
        return self.values[i] if self.values is not None else getattr(self, self.generator).point_at(i)

    def sample(self, unit: np.ndarray) -> list[Scalar]:
        """Map unit-interval points to values: quantiles, or an equally likely discrete point
        (picked by index, so a range of 10**12 points is never listed)."""
        if self.discrete:
            count = self.count()
            return [self.point_at(min(int(u * count), count - 1)) for u in unit]
        with np.errstate(all="ignore"):
            try:
                values = getattr(self, self.generator).quantiles(unit)
            except OverflowError:
                values = np.full(len(unit), np.inf)
        return [float(v) for v in values]


# ---- designs ----------------------------------------------------------------------------


class FullFactorial(Request):
    type: Literal["full_factorial"]


class Sampled(Request):
    samples: int = Field(..., ge=1)
    seed: int | None = Field(None, ge=0, lt=2**63, description="recorded when left out")


class MonteCarlo(Sampled):
    type: Literal["monte_carlo"]


class LatinHypercube(Sampled):
    type: Literal["latin_hypercube"]


class Sobol(Sampled):
    type: Literal["sobol"]


Design = Annotated[
    FullFactorial | MonteCarlo | LatinHypercube | Sobol, Field(discriminator="type")
]


def unit_cube(design: Sampled, dimensions: int, seed: int) -> np.ndarray:
    """`samples` points in [0, 1)^dimensions from the design's sampler."""
    from scipy.stats import qmc

    rng = np.random.default_rng(seed)
    if isinstance(design, MonteCarlo):
        return rng.random((design.samples, dimensions))
    if isinstance(design, LatinHypercube):
        return qmc.LatinHypercube(d=dimensions, rng=rng).random(design.samples)
    with warnings.catch_warnings():  # Sobol prefers powers of two; any count is still valid
        warnings.simplefilter("ignore", UserWarning)
        return qmc.Sobol(d=dimensions, scramble=True, rng=rng).random(design.samples)


# ---- the run table ----------------------------------------------------------------------


@dataclass
class RunTable:
    """The rows to run, with the seed that made them (None for factorial designs and cases)."""

    names: list[str]
    rows: list[dict[str, Scalar]]
    seed: int | None = None
    nominal: bool = False

    def indexed(self) -> list[tuple[int, dict[str, Scalar]]]:
        return list(enumerate(self.rows))


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
    generator = variable.generator
    spec = getattr(variable, generator)
    try:
        if generator == "range":
            spec.count()
        elif generator == "uniform" and not spec.high > spec.low:
            raise ValueError("high must be greater than low")
        elif generator == "triangular" and not (spec.left <= spec.mode <= spec.right and spec.left < spec.right):
            raise ValueError("needs left <= mode <= right and left < right")
    except ValueError as exc:
        fields[f"{where}.{generator}"] = f"{variable.name}: {exc}"


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
            "(values, linspace or range): use a sampled design"
        )
        for i, v in enumerate(variables) if not v.discrete
    }
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
    if design.samples > budget:
        raise ValidationFailed(
            f"{design.samples} samples is more than the limit of {budget} runs",
            {"design.samples": f"must be <= {budget}"},
        )
    seed = design.seed if design.seed is not None else new_seed()
    unit = unit_cube(design, len(variables), seed)
    columns = [variable.sample(unit[:, j]) for j, variable in enumerate(variables)]
    too_large = {
        f"variables.{j}.{v.generator}": f"{v.name}: these parameters give values too large to represent"
        for j, (v, column) in enumerate(zip(variables, columns, strict=True))
        if not v.discrete and not all(math.isfinite(x) for x in column)
    }
    if too_large:
        raise ValidationFailed(_summary("values out of range", too_large), too_large)
    names = [v.name for v in variables]
    rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
    return RunTable(names, rows, seed=seed)


def _nominal_row(variables: Sequence[Variable]) -> dict[str, Scalar]:
    missing = {
        f"variables.{i}.nominal": f"{v.name} needs a nominal value for include_nominal_run"
        for i, v in enumerate(variables) if v.nominal is None
    }
    if missing:
        raise ValidationFailed(_summary("nominal values missing", missing), missing)
    return {v.name: v.nominal for v in variables}


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


def parse_cases_csv(text: str, max_runs: int, field: str = "cases_csv") -> list[dict[str, Scalar]]:
    """Rescale's parameter file: a header of variable names, then one row per run."""
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
            rows.append({name: parse_cell(cell) for name, cell in zip(header, cells, strict=True)})
            if len(rows) > max_runs:
                raise ValidationFailed(f"more than {max_runs} cases",
                                       {field: f"at most {max_runs} rows"})
    except csv.Error as exc:
        raise ValidationFailed(f"the cases CSV is malformed: {exc}", {field: str(exc)}) from None
    if not rows:
        raise ValidationFailed("the cases CSV has no rows", {field: "no rows under the header"})
    return rows


_INT = re.compile(r"^[+-]?\d+$")


def parse_cell(cell: str) -> Scalar:
    """Numbers become numbers; anything else stays text."""
    text = cell.strip()
    if _INT.match(text):
        return int(text)
    try:
        value = float(text)
    except ValueError:
        return cell
    return value if math.isfinite(value) else cell


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


def _decimal(value: int | float) -> decimal.Decimal:
    """A number as it was written (floats by their shortest repr)."""
    return decimal.Decimal(value) if isinstance(value, int) else decimal.Decimal(repr(value))


def _inside(unit: np.ndarray) -> np.ndarray:
    return np.clip(unit, UNIT_EPSILON, 1 - UNIT_EPSILON)


def _summary(title: str, fields: dict[str, str]) -> str:
    return f"{title}: " + "; ".join(f"{k}: {v}" for k, v in list(fields.items())[:5])


# ---- generator helpers of the Python API ------------------------------------------------
# Each returns the JSON form of one generator, so `variables={"u": linspace(10, 50, 5)}`
# in Python means exactly what the same spec means over REST.


def values(*items: Scalar, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("values", list(items), nominal)


def linspace(start: float, stop: float, num: int, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("linspace", {"start": start, "stop": stop, "num": num}, nominal)


def frange(start: float, stop: float, step: float, nominal: Scalar | None = None) -> dict[str, Any]:
    """Rescale's fixed range: start, start + step, ... up to stop (included if reached)."""
    return _generator("range", {"start": start, "stop": stop, "step": step}, nominal)


def uniform(low: float, high: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("uniform", {"low": low, "high": high}, nominal)


def normal(mean: float, std: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("normal", {"mean": mean, "std": std}, nominal)


def triangular(left: float, mode: float, right: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("triangular", {"left": left, "mode": mode, "right": right}, nominal)


def lognormal(mean: float, sigma: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("lognormal", {"mean": mean, "sigma": sigma}, nominal)


def _generator(kind: str, spec: Any, nominal: Scalar | None) -> dict[str, Any]:
    return {kind: spec, **({"nominal": nominal} if nominal is not None else {})}
