"""The value generators of sweep variables, and the Python API's helpers that write them.

A generator is either discrete (a finite list of points: `linspace`, `range`, `logspace`,
`integer`, `choice`, `constant`; a variable's plain `values` list is one too) or continuous
(a distribution sampled through its quantile function: `uniform`, `normal`, `triangular`,
`lognormal`, `loguniform`). Each checks its own parameters (`check`), naming the field at
fault. Values are numbers, text or booleans, never a mix in one variable (`one_kind`).
"""

from __future__ import annotations

import decimal
import math
import re
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BeforeValidator, Field, PrivateAttr

from orchestrator.models import Request


def _finite(value: float) -> float:
    try:
        finite = math.isfinite(value)
    except OverflowError:  # an int past the largest float
        finite = False
    if not finite:
        raise ValueError("must be a finite number")
    return value


def _not_bool(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("must be an integer, not a boolean")
    return value


Number = Annotated[int | float, AfterValidator(_finite)]
INT64 = 2**63
Integer64 = Annotated[int, BeforeValidator(_not_bool), Field(ge=-INT64, lt=INT64)]
Weight = Annotated[float, Field(ge=0, allow_inf_nan=False)]


def _plain_scalar(value: Any) -> Any:
    """A value a run can receive: finite numbers, text without NUL."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if isinstance(value, str) and "\x00" in value:
        raise ValueError("must not contain NUL")
    return value


Scalar = bool | int | float | str
Value = Annotated[bool | int | float | str, AfterValidator(_plain_scalar)]
MAX_RANGE_POINTS = 2**53  # past this, neighbouring float points are no longer distinct
MAX_LIST = 1_000_000
UNIT_EPSILON = 1e-12  # keeps unbounded quantiles finite at the cube's faces
DECIMALS = decimal.Context(prec=60)  # exact for the decimal numbers people write


class ParameterError(ValueError):
    """A generator's parameters do not fit together; `field` names the one at fault, if one."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Generator(Request):
    def check(self) -> None:
        """Raise ParameterError when the parameters, each valid, do not fit together."""


# ---- numbers, text and booleans ---------------------------------------------------------

_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)


def parse_number(text: str) -> int | float | None:
    """The number a text spells (`42`, `-1.5`, `1e-8`, `.5`), or None: `inf`, `nan`, `1_000`,
    hex and other digits than 0-9 are not numbers here."""
    text = text.strip()
    if _INTEGER.fullmatch(text):
        return int(text)
    if _NUMBER.fullmatch(text):
        value = float(text)
        return value if math.isfinite(value) else None
    return None


def kind_of(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "number" if isinstance(value, (int, float)) else "text"


def one_kind(name: str, items: list[Any], what: str = "values") -> list[Any]:
    """A variable's values as one kind: numbers, text or booleans. Numbers written as text
    among numbers (`1e-8` read by a YAML 1.1 loader) become numbers; a number among words is
    refused, naming the variable, since its column would turn to text."""
    if any(kind_of(v) == "number" for v in items):
        items = [as_number(v) if isinstance(v, str) else v for v in items]
    kinds: dict[str, Any] = {}
    for value in items:
        kinds.setdefault(kind_of(value), value)
    if len(kinds) > 1:
        shown = " and ".join(f"{kind} ({example!r})" for kind, example in kinds.items())
        raise ValueError(f"{name}: {what} mix {shown}; give every value as a number, or every "
                         "value as text (quoted)")
    return items


def as_number(text: str) -> Any:
    """The number a text spells, else the text."""
    number = parse_number(text)
    return text if number is None else number


# ---- discrete generators: a finite list of points ---------------------------------------


class Linspace(Generator):
    """`num` evenly spaced points from start to stop, both included."""

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


class FixedRange(Generator):
    """Rescale's fixed range: start, start+step, ... up to stop (included if reached)."""

    start: Number
    stop: Number
    step: Number

    def count(self) -> int:
        """Exact for the decimal numbers as written: 0 to 9.9999999995 by 1 is 10 points."""
        if self.step == 0:
            raise ParameterError("step must not be 0")
        with decimal.localcontext(DECIMALS):
            span = (_decimal(self.stop) - _decimal(self.start)) / _decimal(self.step)
        if span < 0:
            raise ParameterError("step goes away from stop")
        if span >= MAX_RANGE_POINTS:
            raise ParameterError(f"more than {MAX_RANGE_POINTS} points: use a larger step")
        return int(span.to_integral_value(rounding=decimal.ROUND_FLOOR)) + 1

    def check(self) -> None:
        self.count()

    def point_at(self, i: int) -> Scalar:
        if all(isinstance(v, int) for v in (self.start, self.stop, self.step)):
            return self.start + self.step * i
        with decimal.localcontext(DECIMALS):
            return float(_decimal(self.start) + _decimal(self.step) * i)

    def points(self) -> list[Scalar]:
        return [self.point_at(i) for i in range(self.count())]


class Logspace(Generator):
    """`num` points from start to stop (both > 0, both included) with a constant ratio, given as
    values like numpy.geomspace, not exponents: {start: 1e-9, stop: 1e-6, num: 4} is 1e-9,
    1e-8, 1e-7, 1e-6. Always floats."""

    start: Number = Field(..., gt=0)
    stop: Number = Field(..., gt=0)
    num: int = Field(..., ge=1, le=MAX_RANGE_POINTS, description="number of points, both ends included")
    _logs: tuple[decimal.Decimal, decimal.Decimal] | None = PrivateAttr(None)

    def count(self) -> int:
        return self.num

    def point_at(self, i: int) -> Scalar:
        """In decimal, so decades come out exact (1e-08, not 1.0000000000000001e-08)."""
        if i == 0 or self.num == 1:
            return float(self.start)
        if i == self.num - 1:
            return float(self.stop)
        if self._logs is None:
            with decimal.localcontext(DECIMALS):
                self._logs = (_decimal(self.start).log10(), _decimal(self.stop).log10())
        low, high = self._logs
        with decimal.localcontext(DECIMALS):
            value = float(decimal.Decimal(10) ** (low + (high - low) * i / (self.num - 1)))
        ends = sorted((float(self.start), float(self.stop)))  # rounding never leaves the range
        return min(max(value, ends[0]), ends[1])

    def points(self) -> list[Scalar]:
        return [self.point_at(i) for i in range(self.num)]


class Integer(Generator):
    """Every integer from low to high, both included, equally likely."""

    low: Integer64
    high: Integer64

    def check(self) -> None:
        if self.high < self.low:
            raise ParameterError("high must be >= low (both are included)")

    def count(self) -> int:
        return self.high - self.low + 1

    def point_at(self, i: int) -> Scalar:
        return self.low + i

    def points(self) -> list[Scalar]:
        return list(range(self.low, self.high + 1))


class Choice(Generator):
    """One of `values`; with `weights` (one per value, >= 0, not all 0) picked in proportion to
    them in a sampled design. A full_factorial runs each value once and takes no weights."""

    values: list[Value] = Field(..., min_length=1, max_length=MAX_LIST)
    weights: list[Weight] | None = Field(None, min_length=1, max_length=MAX_LIST)

    def check(self) -> None:
        if self.weights is None:
            return
        if len(self.weights) != len(self.values):
            raise ParameterError(f"{len(self.weights)} weights for {len(self.values)} values: "
                                 "give one weight per value", "weights")
        if not any(self.weights):
            raise ParameterError("at least one weight must be > 0", "weights")

    def count(self) -> int:
        return len(self.values)

    def point_at(self, i: int) -> Scalar:
        return self.values[i]

    def points(self) -> list[Scalar]:
        return list(self.values)

    def pick(self, unit: np.ndarray) -> list[Scalar]:
        """The inverse of the weights' cumulative distribution: value i owns a slice of [0, 1)
        as wide as its share; values of weight 0 own none and are never picked."""
        assert self.weights is not None
        kept = [i for i, w in enumerate(self.weights) if w > 0]
        scaled = np.array([self.weights[i] for i in kept]) / max(self.weights)  # no overflow
        edges = np.cumsum(scaled) / scaled.sum()
        edges[-1] = 1.0
        slots = np.minimum(np.searchsorted(edges, unit, side="right"), len(kept) - 1)
        return [self.values[kept[int(slot)]] for slot in slots]


class Constant(Generator):
    """The same value in every run (a fixed input shown in the table beside the others)."""

    value: Value

    def count(self) -> int:
        return 1

    def point_at(self, i: int) -> Scalar:
        return self.value

    def points(self) -> list[Scalar]:
        return [self.value]


# ---- continuous generators: quantiles of a distribution ---------------------------------


class Uniform(Generator):
    low: Number
    high: Number

    def check(self) -> None:
        if not self.high > self.low:
            raise ParameterError("high must be greater than low")

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        width = self.high - self.low
        if math.isfinite(width):
            values = self.low + unit * width
        else:  # the width overflows; the weighted form does not
            values = self.low * (1 - unit) + self.high * unit
        return np.clip(values, self.low, self.high)


class Loguniform(Generator):
    """Uniform in log space between low and high (both > 0): each decade between them is as
    likely, as for component values spanning decades (1e-9 to 1e-6 F)."""

    low: Number = Field(..., gt=0)
    high: Number = Field(..., gt=0)

    def check(self) -> None:
        if not self.high > self.low:
            raise ParameterError("high must be greater than low")

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        low, high = math.log(self.low), math.log(self.high)
        return np.clip(np.exp(low + unit * (high - low)), self.low, self.high)


class Normal(Generator):
    mean: Number
    std: Number = Field(..., gt=0)

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        return stats.norm.ppf(_inside(unit), loc=self.mean, scale=self.std)


class Triangular(Generator):
    left: Number
    mode: Number
    right: Number

    def check(self) -> None:
        if not (self.left <= self.mode <= self.right and self.left < self.right):
            raise ParameterError("needs left <= mode <= right and left < right")

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        width = self.right - self.left
        shape = (self.mode - self.left) / width
        return stats.triang.ppf(unit, shape, loc=self.left, scale=width)


class Lognormal(Generator):
    """The log of the value is normal with this mean and sigma (numpy's convention)."""

    mean: Number
    sigma: Number = Field(..., gt=0)

    def quantiles(self, unit: np.ndarray) -> np.ndarray:
        from scipy import stats

        return np.exp(stats.norm.ppf(_inside(unit), loc=self.mean, scale=self.sigma))


# ---- helpers ----------------------------------------------------------------------------


def _decimal(value: int | float) -> decimal.Decimal:
    """A number as it was written (floats by their shortest repr)."""
    return decimal.Decimal(value) if isinstance(value, int) else decimal.Decimal(repr(value))


def _inside(unit: np.ndarray) -> np.ndarray:
    return np.clip(unit, UNIT_EPSILON, 1 - UNIT_EPSILON)


# ---- generator helpers of the Python API ------------------------------------------------
# Each returns the JSON form of one generator, so `variables={"u": linspace(10, 50, 5)}`
# in Python means exactly what the same spec means over REST.


def values(*items: Scalar, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("values", list(items), nominal)


def linspace(start: float, stop: float, num: int, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("linspace", {"start": start, "stop": stop, "num": num}, nominal)


def logspace(start: float, stop: float, num: int, nominal: Scalar | None = None) -> dict[str, Any]:
    """`num` points from start to stop with a constant ratio (values, not exponents)."""
    return _generator("logspace", {"start": start, "stop": stop, "num": num}, nominal)


def frange(start: float, stop: float, step: float, nominal: Scalar | None = None) -> dict[str, Any]:
    """Rescale's fixed range: start, start + step, ... up to stop (included if reached)."""
    return _generator("range", {"start": start, "stop": stop, "step": step}, nominal)


def integer(low: int, high: int, nominal: Scalar | None = None) -> dict[str, Any]:
    """Uniform integers from low to high, both included."""
    return _generator("integer", {"low": low, "high": high}, nominal)


def choice(*items: Scalar, weights: list[float] | None = None,
           nominal: Scalar | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"values": list(items)}
    if weights is not None:
        spec["weights"] = list(weights)
    return _generator("choice", spec, nominal)


def constant(value: Scalar, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("constant", {"value": value}, nominal)


def uniform(low: float, high: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("uniform", {"low": low, "high": high}, nominal)


def loguniform(low: float, high: float, nominal: Scalar | None = None) -> dict[str, Any]:
    """Uniform in log space between low and high (both > 0)."""
    return _generator("loguniform", {"low": low, "high": high}, nominal)


def normal(mean: float, std: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("normal", {"mean": mean, "std": std}, nominal)


def triangular(left: float, mode: float, right: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("triangular", {"left": left, "mode": mode, "right": right}, nominal)


def lognormal(mean: float, sigma: float, nominal: Scalar | None = None) -> dict[str, Any]:
    return _generator("lognormal", {"mean": mean, "sigma": sigma}, nominal)


def _generator(kind: str, spec: Any, nominal: Scalar | None) -> dict[str, Any]:
    return {kind: spec, **({"nominal": nominal} if nominal is not None else {})}
