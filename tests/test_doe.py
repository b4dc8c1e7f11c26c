"""Property tests of the pure sweep modules: DOE generators, designs and cases (orchestrator.doe)
and `${name}` placeholders (orchestrator.templating).

Every property here is something a sweep relies on: the runs a spec makes (how many, which
values, reproducible from the seed), the errors that name what is wrong, and that a variable's
value can never change the shape of a shell command line. The last section holds regressions
of bugs this file found (kept as regression tests); xfail(strict=True) would mark a bug still open (reason: input,
expected, got).
"""

from __future__ import annotations

import itertools
import math
import shlex
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable
from fractions import Fraction
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator import doe, templating
from orchestrator.errors import ValidationFailed

FAST = settings(max_examples=60, deadline=None)
FEW = settings(max_examples=25, deadline=None)
SAMPLED_KINDS = ("monte_carlo", "latin_hypercube", "sobol")
DESIGN_CLASSES: dict[str, type[doe.Sampled]] = {
    "monte_carlo": doe.MonteCarlo,
    "latin_hypercube": doe.LatinHypercube,
    "sobol": doe.Sobol,
}

# ---- strategies and helpers --------------------------------------------------------------

# Lower-case names can never hit RESERVED_NAMES (all upper case), so they are always valid.
names = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
moderate = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
positive = st.floats(min_value=1e-3, max_value=1e3, allow_nan=False, allow_infinity=False)
seeds = st.integers(min_value=0, max_value=2**63 - 1)
unit_points = st.lists(
    st.floats(min_value=0.0, max_value=1.0, exclude_max=True), min_size=1, max_size=40
).map(np.array)


def sampled(kind: str, samples: int, seed: int | None = None) -> doe.Sampled:
    return DESIGN_CLASSES[kind](type=kind, samples=samples, seed=seed)


def factorial() -> doe.FullFactorial:
    return doe.FullFactorial(type="full_factorial")


def build(
    variables: list[doe.Variable],
    design: doe.FullFactorial | doe.Sampled | None = None,
    *,
    include_nominal: bool = False,
    max_runs: int = 100_000,
) -> doe.RunTable:
    return doe.build_table(variables, design, None, include_nominal=include_nominal,
                           max_runs=max_runs)


def key(value: Any) -> tuple[str, Any]:
    """Type-aware identity, so 1, 1.0 and True count as different values."""
    return (type(value).__name__, value)


@st.composite
def continuous_variables(draw: st.DrawFn, name: str | None = None) -> doe.Variable:
    """A variable with one valid continuous generator and moderate parameters."""
    name = name or draw(names)
    kind = draw(st.sampled_from(doe.CONTINUOUS))
    if kind == "uniform":
        low = draw(moderate)
        high = low + draw(positive)
        assume(high > low)
        spec: dict[str, Any] = {"low": low, "high": high}
    elif kind == "normal":
        spec = {"mean": draw(moderate), "std": draw(positive)}
    elif kind == "triangular":
        left = draw(moderate)
        right = left + draw(positive)
        assume(right > left)
        mode = left + draw(st.floats(0, 1)) * (right - left)
        spec = {"left": left, "mode": min(max(mode, left), right), "right": right}
    elif kind == "loguniform":
        low = 10.0 ** draw(st.floats(-12, 6))
        high = low * 10.0 ** draw(st.floats(0.01, 6))
        assume(high > low)
        spec = {"low": low, "high": high}
    else:
        spec = {"mean": draw(st.floats(-5, 5)), "sigma": draw(st.floats(0.01, 3))}
    return doe.Variable(name=name, **{kind: spec})


# one kind per variable: numbers (ints and floats together), text or booleans
value_lists = st.one_of(
    st.lists(st.one_of(st.integers(-100, 100), moderate), min_size=1, max_size=6, unique_by=key),
    st.lists(st.text(st.characters(blacklist_characters="\x00"), max_size=5), min_size=1,
             max_size=6, unique=True),
    st.lists(st.booleans(), min_size=1, max_size=2, unique=True),
)


@st.composite
def discrete_variables(draw: st.DrawFn, name: str | None = None) -> doe.Variable:
    """A variable with one valid discrete generator of at most 6 equally likely points."""
    name = name or draw(names)
    kind = draw(st.sampled_from(doe.DISCRETE))
    if kind in ("values", "choice"):
        values = draw(value_lists)
        return doe.Variable(name=name, **{kind: values if kind == "values" else {"values": values}})
    if kind == "constant":
        return doe.Variable(name=name, constant={"value": draw(value_lists)[0]})
    if kind == "linspace":
        spec: dict[str, Any] = {"start": draw(moderate), "stop": draw(moderate),
                                "num": draw(st.integers(1, 6))}
        return doe.Variable(name=name, linspace=spec)
    if kind == "logspace":
        spec = {"start": draw(positive), "stop": draw(positive), "num": draw(st.integers(1, 6))}
        return doe.Variable(name=name, logspace=spec)
    if kind == "integer":
        low = draw(st.integers(-100, 100))
        return doe.Variable(name=name, integer={"low": low, "high": low + draw(st.integers(0, 5))})
    start = draw(st.integers(-100, 100))
    step = draw(st.integers(1, 10)) * draw(st.sampled_from([1, -1]))
    stop = start + step * draw(st.integers(0, 5))
    return doe.Variable(name=name, range={"start": start, "stop": stop, "step": step})


@st.composite
def weighted_choices(draw: st.DrawFn, name: str | None = None) -> doe.Variable:
    """A choice with weights: discrete, but for sampled designs only."""
    values = draw(value_lists)
    weights = draw(st.lists(st.floats(0, 10), min_size=len(values), max_size=len(values))
                   .filter(any))
    return doe.Variable(name=name or draw(names), choice={"values": values, "weights": weights})


NOMINALS = {"number": st.one_of(st.integers(), moderate),
            "text": st.text(st.characters(blacklist_characters="\x00"), max_size=5),
            "boolean": st.booleans()}


def unique_names(count: int) -> st.SearchStrategy[list[str]]:
    return st.lists(names, min_size=count, max_size=count, unique=True)


@st.composite
def variable_lists(
    draw: st.DrawFn, kinds: Callable[..., st.SearchStrategy[doe.Variable]], max_size: int = 3
) -> list[doe.Variable]:
    count = draw(st.integers(1, max_size))
    return [draw(kinds(name=name)) for name in draw(unique_names(count))]


@st.composite
def mixed_variables(draw: st.DrawFn, name: str | None = None) -> doe.Variable:
    return draw(st.one_of(continuous_variables(name=name), discrete_variables(name=name),
                          weighted_choices(name=name)))


def validation_fields(call: Callable[[], Any]) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        call()
    assert caught.value.fields, "ValidationFailed must name the offending fields"
    return caught.value.fields


# ---- generators --------------------------------------------------------------------------


@FAST
@given(start=st.one_of(st.integers(-10**6, 10**6), moderate),
       stop=st.one_of(st.integers(-10**6, 10**6), moderate),
       num=st.integers(1, 300))
def test_linspace_has_num_points_from_start_to_stop(start: float, stop: float, num: int) -> None:
    """`num` is the run count users ask for, and both ends are part of the sweep."""
    points = doe.Linspace(start=start, stop=stop, num=num).points()
    assert len(points) == num
    assert all(math.isfinite(p) for p in points)
    assert points[0] == start
    if num > 1:
        assert points[-1] == stop
    lo, hi = min(start, stop), max(start, stop)
    assert all(lo <= p <= hi for p in points)
    steps = np.diff(points)
    assert np.all(steps >= 0) if stop >= start else np.all(steps <= 0)


@FAST
@given(start=st.integers(-10**3, 10**3).map(lambda n: n / 8),  # exactly representable
       stop=st.integers(-10**3, 10**3).map(lambda n: n / 8),
       num=st.integers(2, 50))
def test_linspace_short_decimal_ends_are_exact(start: float, stop: float, num: int) -> None:
    """Ends a user typed come back as typed, not as start + (num - 1) * step float noise."""
    points = doe.Linspace(start=start, stop=stop, num=num).points()
    assert points[0] == start and points[-1] == stop


@FAST
@given(start=st.integers(-10**6, 10**6), step=st.integers(-10**4, 10**4),
       num=st.integers(1, 200))
def test_linspace_of_ints_with_integral_points_stays_int(start: int, step: int, num: int) -> None:
    """Integer sweeps (core counts, mesh sizes) must render as `4`, not `4.0`."""
    stop = start + step * (num - 1)
    points = doe.Linspace(start=start, stop=stop, num=num).points()
    assert points == [start + i * step for i in range(num)]
    assert all(type(p) is int for p in points)


@FAST
@given(start=st.integers(-100, 100), stop=st.integers(-100, 100), num=st.integers(2, 20))
def test_linspace_of_ints_with_fractional_points_gives_floats(
    start: int, stop: int, num: int
) -> None:
    """Int ends with a fractional step must not truncate points to ints."""
    assume((stop - start) % (num - 1) != 0)
    points = doe.Linspace(start=start, stop=stop, num=num).points()
    assert all(type(p) is float for p in points)
    expected = [start + Fraction(stop - start, num - 1) * i for i in range(num)]
    assert all(math.isclose(p, float(e), rel_tol=1e-12, abs_tol=1e-12)
               for p, e in zip(points, expected, strict=True))


@FAST
@given(start=st.integers(-10**6, 10**6), step=st.integers(1, 1000),
       direction=st.sampled_from([1, -1]), count=st.integers(1, 300),
       remainder=st.integers(0, 999))
def test_range_of_ints_count_and_points(
    start: int, step: int, direction: int, count: int, remainder: int
) -> None:
    """Range runs start, start+step, ... and includes stop only if a step lands on it."""
    remainder %= step
    step *= direction
    stop = start + step * (count - 1) + direction * remainder
    spec = doe.FixedRange(start=start, stop=stop, step=step)
    assert spec.count() == (stop - start) // step + 1 == count
    points = spec.points()
    assert points == [start + i * step for i in range(count)]
    assert all(type(p) is int for p in points)
    assert (stop in points) == (remainder == 0)


@FAST
@given(start=st.integers(-10**5, 10**5), step=st.integers(1, 10**4),
       direction=st.sampled_from([1, -1]), span=st.integers(0, 10**5))
def test_range_of_decimals_count_matches_exact_arithmetic(
    start: int, step: int, direction: int, span: int
) -> None:
    """With thousandths (0.1, 0.25, ...) the count and points are the decimal ones, despite
    binary floats: range(0, 0.3, 0.1) has 4 points even though 0.3 / 0.1 is
    2.9999999999999996, and they are 0.1, 0.2, 0.3, not 0.30000000000000004."""
    stop = start + direction * span
    step *= direction
    exact_count = math.floor(Fraction(stop - start, step)) + 1
    assume(exact_count <= 2000)
    spec = doe.FixedRange(start=start / 1000, stop=stop / 1000, step=step / 1000)
    assert spec.count() == exact_count
    points = spec.points()
    assert len(points) == exact_count
    lo, hi = sorted((start / 1000, stop / 1000))
    assert all(lo <= p <= hi for p in points), (points[0], points[-1])
    # no float noise: each point is the float nearest the exact decimal (0.3, not 0.3000...04)
    assert points == [(start + i * step) / 1000 for i in range(exact_count)]


@FAST
@given(start=moderate, stop=moderate,
       step=st.one_of(st.just(0.0), st.integers(-10**6, 10**6).map(lambda n: n / 64)))
def test_range_step_must_head_towards_stop(start: float, stop: float, step: float) -> None:
    """A zero step or one going away from stop would never end: it is refused, not looped."""
    if step == 0 or (stop - start) / step < 0:
        with pytest.raises(ValueError):
            doe.FixedRange(start=start, stop=stop, step=step).count()
        fields = validation_fields(lambda: doe.check_variables(
            [doe.Variable(name="x", range={"start": start, "stop": stop, "step": step})]))
        assert "variables.0.range" in fields
    else:
        assert doe.FixedRange(start=start, stop=stop, step=step).count() >= 1


@FAST
@given(variable=continuous_variables(), unit=unit_points)
def test_continuous_sample_is_finite_within_support_and_monotone(
    variable: doe.Variable, unit: np.ndarray
) -> None:
    """One value per unit point, finite (it goes on a command line), inside the distribution's
    support, and non-decreasing in u (quantile maps keep LHS/Sobol stratification)."""
    values = variable.sample(unit)
    assert len(values) == len(unit)
    assert all(type(v) is float and math.isfinite(v) for v in values)
    spec = getattr(variable, variable.generator)
    if variable.uniform is not None:
        assert all(spec.low <= v <= spec.high for v in values)
    elif variable.triangular is not None:
        assert all(spec.left <= v <= spec.right for v in values)
    elif variable.lognormal is not None:
        assert all(v > 0 for v in values)
    order = np.argsort(unit, kind="stable")
    assert np.all(np.diff(np.asarray(values)[order]) >= 0)


@FAST
@given(mean=moderate, std=positive,
       unit=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40).map(np.array))
def test_normal_quantiles_monotone_and_finite_even_at_the_cube_faces(
    mean: float, std: float, unit: np.ndarray
) -> None:
    """u = 0 or 1 would give -inf/+inf without the epsilon clip; values must stay finite."""
    variable = doe.Variable(name="x", normal={"mean": mean, "std": std})
    values = np.asarray(variable.sample(unit))
    assert np.all(np.isfinite(values))
    assert np.all(np.diff(values[np.argsort(unit, kind="stable")]) >= 0)


@FAST
@given(variable=discrete_variables(),
       unit=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40).map(np.array))
def test_discrete_sample_only_returns_points(variable: doe.Variable, unit: np.ndarray) -> None:
    """Sampling a discrete generator must never invent a value the user did not list."""
    points = variable.points()
    allowed = {key(p) for p in points}
    values = variable.sample(unit)
    assert len(values) == len(unit)
    assert all(key(v) in allowed for v in values)


@FAST
@given(variable=discrete_variables())
def test_discrete_sample_gives_each_point_an_equal_share(variable: doe.Variable) -> None:
    """Point i owns [i/n, (i+1)/n): the midpoints of the n strata pick the points in order."""
    points = variable.points()
    n = len(points)
    midpoints = (np.arange(n) + 0.5) / n
    assert [key(v) for v in variable.sample(midpoints)] == [key(p) for p in points]


# ---- designs -----------------------------------------------------------------------------


@FAST
@given(variables=variable_lists(discrete_variables))
def test_full_factorial_is_every_combination_exactly_once(variables: list[doe.Variable]) -> None:
    """A factorial sweep that skipped or repeated a combination would bias every result."""
    table = build(variables, factorial())
    point_lists = [v.points() for v in variables]
    assert len(table.rows) == math.prod(len(p) for p in point_lists)
    assert table.names == [v.name for v in variables]
    assert all(list(row) == table.names for row in table.rows)
    got = Counter(tuple(key(row[v.name]) for v in variables) for row in table.rows)
    expected = Counter(tuple(key(x) for x in combo) for combo in itertools.product(*point_lists))
    assert got == expected
    if all(v.values is not None for v in variables):  # generated without duplicates
        assert set(got.values()) == {1}
    assert table.seed is None and table.nominal is False


@FAST
@given(variables=variable_lists(discrete_variables))
def test_design_defaults_to_full_factorial(variables: list[doe.Variable]) -> None:
    """Leaving out the design means the cartesian product, as documented."""
    assert build(variables, None).rows == build(variables, factorial()).rows


@FEW
@given(variables=variable_lists(mixed_variables), kind=st.sampled_from(SAMPLED_KINDS),
       samples=st.integers(1, 64), seed=seeds)
def test_sampled_designs_give_samples_rows_reproducibly(
    variables: list[doe.Variable], kind: str, samples: int, seed: int
) -> None:
    """`samples` is the run count, and a spec + seed is a full recipe: resubmitting it (or
    resuming after a restart) must give the very same runs."""
    first = build(variables, sampled(kind, samples, seed))
    again = build(variables, sampled(kind, samples, seed))
    assert len(first.rows) == samples
    assert first.seed == seed
    assert first.rows == again.rows
    assert all(list(row) == [v.name for v in variables] for row in first.rows)
    for variable in variables:
        column = [row[variable.name] for row in first.rows]
        if variable.discrete:
            allowed = {key(p) for p in variable.points()}
            assert all(key(v) in allowed for v in column)
        else:
            assert all(type(v) is float and math.isfinite(v) for v in column)


@FEW
@given(variables=variable_lists(continuous_variables), kind=st.sampled_from(SAMPLED_KINDS),
       samples=st.integers(2, 32), seeds_pair=st.lists(seeds, min_size=2, max_size=2, unique=True))
def test_a_different_seed_gives_different_rows(
    variables: list[doe.Variable], kind: str, samples: int, seeds_pair: list[int]
) -> None:
    """The seed must actually feed the sampler, or 'another replicate' would repeat runs."""
    one, two = (build(variables, sampled(kind, samples, s)).rows for s in seeds_pair)
    assert one != two


@FEW
@given(variables=variable_lists(mixed_variables), kind=st.sampled_from(SAMPLED_KINDS),
       samples=st.integers(1, 32))
def test_a_seed_left_out_is_recorded_and_reproduces_the_table(
    variables: list[doe.Variable], kind: str, samples: int
) -> None:
    """Without a seed the table is random, but the seed used is kept so it can be rebuilt."""
    table = build(variables, sampled(kind, samples))
    assert table.seed is not None and 0 <= table.seed < 2**63
    assert build(variables, sampled(kind, samples, table.seed)).rows == table.rows


@FEW
@given(samples=st.integers(1, 200), dimensions=st.integers(1, 4), seed=seeds)
def test_latin_hypercube_puts_one_sample_in_each_stratum(
    samples: int, dimensions: int, seed: int
) -> None:
    """The point of LHS: for n samples, each of the n equal slices of every variable's range
    holds exactly one sample."""
    variables = [doe.Variable(name=f"x{j}", uniform={"low": 0, "high": 1})
                 for j in range(dimensions)]
    table = build(variables, sampled("latin_hypercube", samples, seed))
    for variable in variables:
        strata = sorted(math.floor(row[variable.name] * samples) for row in table.rows)
        assert strata == list(range(samples))


@FEW
@given(variables=variable_lists(mixed_variables), kind=st.sampled_from(("full_factorial",)
                                                                        + SAMPLED_KINDS),
       samples=st.integers(1, 16), seed=seeds, data=st.data())
def test_include_nominal_adds_the_nominal_row_first(
    variables: list[doe.Variable], kind: str, samples: int, seed: int, data: st.DataObject
) -> None:
    """The nominal (baseline) run is run 0 and is one extra run, the rest unchanged."""
    if kind == "full_factorial":
        assume(all(v.discrete and not v.weighted for v in variables))
        design: doe.FullFactorial | doe.Sampled = factorial()
    else:
        design = sampled(kind, samples, seed)
    nominals = [data.draw(NOMINALS[v.kind()]) for v in variables]  # of the values' kind
    with_nominal = [v.model_copy(update={"nominal": n})
                    for v, n in zip(variables, nominals, strict=True)]
    plain = build(variables, design)
    table = build(with_nominal, design, include_nominal=True)
    assert table.nominal is True
    assert table.rows[0] == {v.name: n for v, n in zip(variables, nominals, strict=True)}
    assert table.rows[1:] == plain.rows
    assert len(table.rows) == len(plain.rows) + 1


def test_include_nominal_without_nominal_values_names_the_variable() -> None:
    """A baseline run needs a baseline value for every variable; the missing one is named."""
    variables = [doe.Variable(name="a", values=[1, 2], nominal=1),
                 doe.Variable(name="b", values=[3, 4])]
    fields = validation_fields(lambda: build(variables, include_nominal=True))
    assert list(fields) == ["variables.1.nominal"]


@FAST
@given(sizes=st.lists(st.integers(1, 8), min_size=1, max_size=4), max_runs=st.integers(1, 600),
       include_nominal=st.booleans())
def test_full_factorial_limit(sizes: list[int], max_runs: int, include_nominal: bool) -> None:
    """The run limit protects the cluster: a product over it is refused, naming the design,
    and the nominal run counts against the limit too."""
    variables = [doe.Variable(name=f"v{i}", values=list(range(n)), nominal=0)
                 for i, n in enumerate(sizes)]
    total = math.prod(sizes) + include_nominal
    if total > max_runs:
        fields = validation_fields(
            lambda: build(variables, factorial(), include_nominal=include_nominal,
                          max_runs=max_runs))
        assert "design" in fields
    else:
        table = build(variables, factorial(), include_nominal=include_nominal,
                      max_runs=max_runs)
        assert len(table.rows) == total


@FAST
@given(kind=st.sampled_from(SAMPLED_KINDS), samples=st.integers(1, 300),
       max_runs=st.integers(1, 300), include_nominal=st.booleans())
def test_sampled_limit(kind: str, samples: int, max_runs: int, include_nominal: bool) -> None:
    """`samples` (plus the nominal run) over the limit is refused as design.samples."""
    variables = [doe.Variable(name="x", uniform={"low": 0, "high": 1}, nominal=0.5)]
    total = samples + include_nominal

    def call() -> doe.RunTable:
        return build(variables, sampled(kind, samples, 7), include_nominal=include_nominal,
                     max_runs=max_runs)

    if total > max_runs:
        assert "design.samples" in validation_fields(call)
    else:
        assert len(call().rows) == total


@FAST
@given(variables=variable_lists(mixed_variables, max_size=4))
def test_full_factorial_with_continuous_variables_names_each_of_them(
    variables: list[doe.Variable],
) -> None:
    """A continuous generator has no finite point list, and a weighted choice's weights would
    mean nothing in a product; each offender is named by index."""
    offenders = [i for i, v in enumerate(variables) if not v.discrete or v.weighted]
    assume(offenders)
    fields = validation_fields(lambda: build(variables, factorial()))
    for i, variable in enumerate(variables):
        named = [f for f in fields if f.startswith(f"variables.{i}.")]
        if variable.weighted:
            assert named == [f"variables.{i}.choice.weights"]
        elif i in offenders:
            assert named == [f"variables.{i}.{variable.generator}"]
        else:
            assert not named


# ---- validation --------------------------------------------------------------------------


@FAST
@given(bad=st.floats(max_value=0, allow_nan=False, allow_infinity=False))
def test_non_positive_spread_is_refused(bad: float) -> None:
    """std/sigma <= 0 is no distribution at all (scipy would answer NaN)."""
    with pytest.raises(ValidationError):
        doe.Variable(name="x", normal={"mean": 0, "std": bad})
    with pytest.raises(ValidationError):
        doe.Variable(name="x", lognormal={"mean": 0, "sigma": bad})


@FAST
@given(num=st.integers(max_value=0))
def test_linspace_needs_a_point(num: int) -> None:
    with pytest.raises(ValidationError):
        doe.Linspace(start=0, stop=1, num=num)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize(
    "generator", ["linspace.start", "range.step", "uniform.low", "normal.mean", "lognormal.mean",
                  "triangular.mode"])
def test_non_finite_parameters_are_refused(generator: str, bad: float) -> None:
    """NaN or infinity in a parameter would reach command lines as 'nan' or 'inf'."""
    valid = {"linspace": {"start": 0, "stop": 1, "num": 2},
             "range": {"start": 0, "stop": 1, "step": 1},
             "uniform": {"low": 0, "high": 1}, "normal": {"mean": 0, "std": 1},
             "lognormal": {"mean": 0, "sigma": 1},
             "triangular": {"left": 0, "mode": 0.5, "right": 1}}
    kind, field = generator.split(".")
    spec = {**valid[kind], field: bad}
    with pytest.raises(ValidationError):
        doe.Variable(name="x", **{kind: spec})


@FAST
@given(low=moderate, high=moderate)
def test_uniform_needs_high_above_low(low: float, high: float) -> None:
    variables = [doe.Variable(name="x", uniform={"low": low, "high": high})]
    if high > low:
        doe.check_variables(variables)
    else:
        assert "variables.0.uniform" in validation_fields(lambda: doe.check_variables(variables))


@FAST
@given(left=moderate, mode=moderate, right=moderate)
def test_triangular_needs_ordered_corners(left: float, mode: float, right: float) -> None:
    variables = [doe.Variable(name="x", triangular={"left": left, "mode": mode, "right": right})]
    if left <= mode <= right and left < right:
        doe.check_variables(variables)
    else:
        fields = validation_fields(lambda: doe.check_variables(variables))
        assert "variables.0.triangular" in fields


@FAST
@given(variables=variable_lists(mixed_variables, max_size=4), data=st.data())
def test_duplicate_names_are_refused_at_the_second_use(
    variables: list[doe.Variable], data: st.DataObject
) -> None:
    """Two variables with one name would make `${name}` ambiguous."""
    assume(len(variables) >= 2)
    first, second = sorted(data.draw(st.lists(st.integers(0, len(variables) - 1), min_size=2,
                                              max_size=2, unique=True)))
    renamed = list(variables)
    renamed[second] = variables[second].model_copy(update={"name": variables[first].name})
    fields = validation_fields(lambda: build(renamed, sampled("monte_carlo", 2, 1)))
    assert f"variables.{second}.name" in fields
    assert f"variables.{first}.name" not in fields


@pytest.mark.parametrize("name", ["PATH", "HOME", "SHELL", "USER", "PWD", "IFS", "TMPDIR", "LANG",
                                  "LD_PRELOAD", "PYTHONPATH", "DASK_CONFIG", "ORCHESTRATOR_X"])
def test_reserved_names_are_refused(name: str) -> None:
    """A variable called PATH would replace the run's PATH environment variable."""
    variables = [doe.Variable(name="ok", values=[1]), doe.Variable(name=name, values=[1])]
    assert "variables.1.name" in validation_fields(lambda: build(variables))


@FAST
@given(name=st.text(min_size=1, max_size=64))
def test_names_must_be_identifiers(name: str) -> None:
    """Only identifiers work both as `${name}` and as environment variable names."""
    variables = [doe.Variable(name=name, values=[1])]
    if templating.VARIABLE_NAME.match(name) and not doe.RESERVED_NAMES.match(name):
        build(variables)
    else:
        assert "variables.0.name" in validation_fields(lambda: build(variables))


def test_a_variable_needs_exactly_one_generator() -> None:
    none = doe.Variable(name="a")
    two = doe.Variable(name="b", values=[1], uniform={"low": 0, "high": 1})
    fields = validation_fields(lambda: build([none, two]))
    assert {"variables.0", "variables.1"} <= set(fields)


# ---- cases and CSV -----------------------------------------------------------------------


def is_number(text: str) -> bool:
    """What a CSV reader could take for a number (Python's float() is the widest reading)."""
    try:
        float(text.strip())
    except ValueError:
        return False
    return True


csv_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1, max_size=12,
).filter(lambda s: bool(s.strip()) and not is_number(s))
csv_cells = st.one_of(st.integers(), st.floats(allow_nan=False, allow_infinity=False), csv_text)


@st.composite
def csv_tables(draw: st.DrawFn, cells: st.SearchStrategy[Any] = csv_cells
               ) -> tuple[list[str], list[dict[str, Any]]]:
    columns = draw(unique_names(draw(st.integers(1, 4))))
    rows = draw(st.lists(st.fixed_dictionaries({c: cells for c in columns}),
                         min_size=1, max_size=8))
    return columns, rows


@FAST
@given(table=csv_tables())
def test_csv_round_trip(table: tuple[list[str], list[dict[str, Any]]]) -> None:
    """A results/cases CSV written by us must read back as the same rows, with ints, floats
    and text keeping their types (a run's `${x}` renders differently for 1 and 1.0)."""
    columns, rows = table
    parsed = doe.parse_cases_csv(doe.cases_to_csv(columns, rows), max_runs=100)
    assert [{c: key(r[c]) for c in columns} for r in parsed] == \
        [{c: key(r[c]) for c in columns} for r in rows]


@FAST
@given(table=csv_tables(), max_runs=st.integers(1, 8))
def test_csv_row_limit(table: tuple[list[str], list[dict[str, Any]]], max_runs: int) -> None:
    columns, rows = table
    text = doe.cases_to_csv(columns, rows)
    if len(rows) > max_runs:
        assert "cases_csv" in validation_fields(lambda: doe.parse_cases_csv(text, max_runs))
    else:
        assert len(doe.parse_cases_csv(text, max_runs)) == len(rows)


@FAST
@given(table=csv_tables(cells=st.one_of(st.integers(), st.from_regex(r"[a-z]{1,5}",
                                                                     fullmatch=True))),
       data=st.data())
def test_ragged_csv_rows_name_their_line(
    table: tuple[list[str], list[dict[str, Any]]], data: st.DataObject
) -> None:
    """A row with too many or too few fields is reported by its line in the file."""
    columns, rows = table
    lines = doe.cases_to_csv(columns, rows).splitlines()
    bad = data.draw(st.integers(1, len(lines) - 1))
    cells = lines[bad].split(",")
    width = data.draw(st.integers(1, len(columns) + 3).filter(lambda w: w != len(columns)))
    lines[bad] = ",".join((cells * 4)[:width])
    fields = validation_fields(lambda: doe.parse_cases_csv("\n".join(lines) + "\n", 100))
    assert list(fields) == [f"cases_csv.line.{bad + 1}"]


@FAST
@given(columns=unique_names(4), column=st.integers(0, 3),
       bad=st.sampled_from(["", "   ", "1x", "a-b", "a b", "PATH", "LD_PRELOAD", "dup"]))
def test_bad_csv_header_names_the_column(columns: list[str], column: int, bad: str) -> None:
    """Header cells become variable names: empty, duplicate, invalid or reserved ones are
    named by their 1-based column."""
    header = list(columns)
    if bad == "dup":
        assume(column > 0)
        header[column] = header[0]
    else:
        header[column] = bad
    text = ",".join(header) + "\n" + ",".join("1" for _ in header) + "\n"
    fields = validation_fields(lambda: doe.parse_cases_csv(text, 10))
    assert list(fields) == [f"cases_csv.header.{column + 1}"]


@FAST
@given(table=csv_tables(), data=st.data())
def test_cases_rows_must_share_their_variables(
    table: tuple[list[str], list[dict[str, Any]]], data: st.DataObject
) -> None:
    """Every run needs a value for every variable: a row with other keys is named."""
    columns, rows = table
    assert doe.table_from_cases(rows, 100).rows == rows
    assume(len(rows) >= 2)
    bad = data.draw(st.integers(1, len(rows) - 1))
    changed = dict(rows[bad])
    if data.draw(st.booleans()) or len(columns) == 1:
        changed["zz_extra"] = 1
    else:
        del changed[columns[-1]]
    broken = [*rows[:bad], changed, *rows[bad + 1:]]
    fields = validation_fields(lambda: doe.table_from_cases(broken, 100))
    assert list(fields) == [f"cases.{bad}"]


# ---- templating --------------------------------------------------------------------------

NASTY = ["; rm -rf /", "$(touch pwned)", "`id`", "'", '"', "a b", "x\ny", "${HOME}", "$HOME",
         "\\", "' ; echo '", "*", "~", "--flag", "", " ", "&&", "|", ">out", "#c", "\t"]
values = st.one_of(st.text(), st.sampled_from(NASTY),
                   st.lists(st.sampled_from(NASTY)).map("".join),
                   st.integers(), st.floats(), st.booleans())


@FAST
@given(variables=st.lists(values, min_size=1, max_size=4))
def test_each_value_is_exactly_one_shell_word(variables: list[Any]) -> None:
    """The shell-injection guarantee: however nasty a value, the shell sees it as one word,
    equal to the value's text, and the words around it are unchanged."""
    names_ = [f"v{i}" for i in range(len(variables))]
    mapping = dict(zip(names_, variables, strict=True))
    command = "prog --fixed " + " ".join("${" + n + "}" for n in names_) + " end"
    words = shlex.split(templating.render_command(command, mapping))
    assert words == ["prog", "--fixed", *(templating.format_value(v) for v in variables), "end"]


@FAST
@given(value=values, prefix=st.from_regex(r"[A-Za-z0-9_=./-]{0,6}", fullmatch=True),
       suffix=st.from_regex(r"[A-Za-z0-9_=./-]{0,6}", fullmatch=True))
def test_a_value_inside_a_word_stays_in_that_word(value: Any, prefix: str, suffix: str) -> None:
    """`--x=${x}.dat` must stay one argument whatever x holds."""
    rendered = templating.render_command(f"prog {prefix}${{x}}{suffix}", {"x": value})
    assert shlex.split(rendered) == ["prog", prefix + templating.format_value(value) + suffix]


@FAST
@given(arguments=st.lists(st.sampled_from(["${a}", "x${a}", "${b}${a}", "plain", "$${a}"]),
                          min_size=1, max_size=5), a=values, b=values)
def test_argument_lists_get_raw_values(arguments: list[str], a: Any, b: Any) -> None:
    """An argument list goes to exec without a shell: values must not be quoted there."""
    fa, fb = templating.format_value(a), templating.format_value(b)
    expected = {"${a}": fa, "x${a}": "x" + fa, "${b}${a}": fb + fa, "plain": "plain",
                "$${a}": "${a}"}
    assert templating.render_command(arguments, {"a": a, "b": b}) == \
        [expected[arg] for arg in arguments]


@FAST
@given(name=st.text(alphabet=st.characters(blacklist_characters="{}"), max_size=10),
       known=st.dictionaries(names, values, max_size=3))
def test_escaped_placeholder_renders_literally(name: str, known: dict[str, Any]) -> None:
    """`$${name}` writes `${name}` for the shell (or file) to see, known variable or not."""
    text = "a $${" + name + "} b"
    assert templating.render(text, known) == "a ${" + name + "} b"
    assert templating.render_command(text, known) == "a ${" + name + "} b"
    assert templating.placeholders(text) == []


@FAST
@given(text=st.text(alphabet=st.sampled_from("$HOMEPATHx_1 ;'\"\n$$()"), max_size=40),
       known=st.dictionaries(names, values, max_size=3))
def test_shell_dollars_without_braces_pass_through(text: str, known: dict[str, Any]) -> None:
    """`$HOME`, `$$`, `$(cmd)` are the shell's business: only `${...}` is ours."""
    assert templating.render(text, known) == text
    assert templating.render_command(text, known) == text


@FAST
@given(known=st.dictionaries(names, values, max_size=3), unknown=names)
def test_unknown_placeholder_raises(known: dict[str, Any], unknown: str) -> None:
    """A typo in `${name}` must fail the sweep up front, not run with an empty value."""
    assume(unknown not in known)
    text = " ".join("${" + n + "}" for n in known) + " ${" + unknown + "}"
    with pytest.raises(templating.PlaceholderError) as caught:
        templating.render_command(text, known)
    assert caught.value.names == [unknown]
    with pytest.raises(templating.PlaceholderError) as caught:
        templating.check_placeholders([text], known)
    assert caught.value.names == [unknown]
    templating.check_placeholders([text], [*known, unknown])


@settings(max_examples=200, deadline=None)
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_format_value_of_floats_round_trips(value: float) -> None:
    """The value a run sees on its command line is exactly the value in the run table."""
    text = templating.format_value(value)
    assert float(text) == value
    if value.is_integer() and abs(value) < 1e16:
        assert text == str(int(value))  # `4`, not `4.0`


@FAST
@given(value=st.one_of(st.integers(), st.booleans(), st.text(), st.none()))
def test_format_value_of_other_scalars(value: Any) -> None:
    """Booleans are written the way JSON and most tools spell them; None is empty."""
    if isinstance(value, bool):
        expected = "true" if value else "false"
    elif value is None:
        expected = ""
    else:
        expected = str(value)
    assert templating.format_value(value) == expected


# ---- regressions of bugs found by this file, and robustness ------------------------------

quote_free = st.from_regex(r"[A-Za-z0-9 =./-]{0,6}", fullmatch=True)


@FAST
@given(value=values, quote=st.sampled_from(['"', "'"]), prefix=quote_free, suffix=quote_free)
def test_placeholder_inside_quotes_is_still_one_safe_word(
    value: Any, quote: str, prefix: str, suffix: str
) -> None:
    """Writing "${name}" is a shell habit: the value must still be exactly one word with the
    quoted text around it (it used to come out as '"\'$(id)\'"', running $(id))."""
    template = f"prog {quote}{prefix}${{v}}{suffix}{quote} end"
    words = shlex.split(templating.render_command(template, {"v": value}))
    assert words == ["prog", prefix + templating.format_value(value) + suffix, "end"]


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("template", ["printf '%s|' ${v}", "printf '%s|' \"${v}\"",
                                      "printf '%s|' '${v}'", "printf '%s|' \"<${v}>\""])
def test_a_real_shell_sees_each_value_as_one_literal_word(template: str) -> None:
    """The injection guarantee checked with /bin/sh itself, not only shlex: nothing runs, and
    printf gets the value verbatim as one argument."""
    expected_prefix, expected_suffix = ("<", ">") if "<" in template else ("", "")
    script = "\n".join(templating.render_command(template, {"v": value}) + "; echo"
                       for value in NASTY if value != "x\ny")
    out = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=10,
                         check=True).stdout
    assert out.split("|\n")[:-1] == [expected_prefix + value + expected_suffix
                                      for value in NASTY if value != "x\ny"]


any_float = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def any_variable(draw: st.DrawFn, name: str = "x") -> doe.Variable:
    """Any numeric generator with any finite parameters pydantic accepts (extremes included)."""
    kind = draw(st.sampled_from([g for g in doe.GENERATORS if g not in ("values", "choice", "constant")]))
    if kind in ("linspace", "logspace"):
        spec: dict[str, Any] = {"start": draw(any_float), "stop": draw(any_float),
                                "num": draw(st.integers(1, 2**53))}
    elif kind == "range":
        spec = {"start": draw(any_float), "stop": draw(any_float), "step": draw(any_float)}
    elif kind in ("uniform", "loguniform"):
        spec = {"low": draw(any_float), "high": draw(any_float)}
    elif kind == "integer":
        spec = {"low": draw(st.integers(-2**64, 2**64)), "high": draw(st.integers(-2**64, 2**64))}
    elif kind == "normal":
        spec = {"mean": draw(any_float), "std": draw(any_float)}
    elif kind == "lognormal":
        spec = {"mean": draw(any_float), "sigma": draw(any_float)}
    else:
        spec = {"left": draw(any_float), "mode": draw(any_float), "right": draw(any_float)}
    try:
        return doe.Variable(name=name, **{kind: spec})
    except ValidationError:
        assume(False)
        raise


@FAST
@given(variable=any_variable(), kind=st.sampled_from(("full_factorial", "monte_carlo")),
       seed=seeds)
def test_any_spec_gives_finite_rows_or_a_validation_error(
    variable: doe.Variable, kind: str, seed: int
) -> None:
    """Whatever finite numbers a user sends, the answer is a table of finite values or a 400
    naming the variable, never a 500 (OverflowError, numpy 'array is too big', a huge
    allocation) and never 'inf'/'nan' on a command line."""
    design = factorial() if kind == "full_factorial" else sampled(kind, 4, seed)
    try:
        with np.errstate(all="ignore"):
            table = build([variable], design, max_runs=100)
    except ValidationFailed as exc:
        assert exc.fields
        return
    column = [row["x"] for row in table.rows]
    assert all(math.isfinite(v) for v in column)
    spec = getattr(variable, variable.generator)
    if variable.discrete:
        ends = (spec.low, spec.high) if variable.integer else (spec.start, spec.stop)
        lo, hi = sorted(ends)
        assert all(lo <= v <= hi for v in column)
    elif variable.loguniform:
        assert all(spec.low <= v <= spec.high for v in column)


@pytest.mark.parametrize("variable", [
    {"name": "x", "lognormal": {"mean": 1000, "sigma": 1}},
    {"name": "x", "uniform": {"low": -1e308, "high": 1e308}},
    {"name": "x", "triangular": {"left": -1e308, "mode": 0, "right": 1e308}},
    {"name": "x", "range": {"start": 0, "stop": 1, "step": 1e-320}},
    {"name": "x", "range": {"start": 0, "stop": 2**62, "step": 1}},
], ids=["lognormal-exp-overflow", "uniform-width-overflow", "triangular-width-overflow",
        "subnormal-step", "range-of-2**62-points"])
def test_extreme_parameters_give_finite_values_or_a_validation_error(
    variable: dict[str, Any],
) -> None:
    """Regression: these used to raise OverflowError/ValueError (a 500), sample nan/inf, or
    list every point of the range before picking 4."""
    try:
        with np.errstate(all="ignore"):
            table = build([doe.Variable(**variable)], sampled("monte_carlo", 4, 1))
    except ValidationFailed as exc:
        assert list(exc.fields) == [f"variables.0.{next(k for k in variable if k != 'name')}"]
        return
    assert all(math.isfinite(row["x"]) for row in table.rows), table.rows


def test_linspace_with_an_astronomical_num() -> None:
    """A num past 2**53 is refused at validation (a 400), never an overflow (a 500)."""
    with pytest.raises(ValidationError):
        doe.Variable(name="x", linspace={"start": 0, "stop": 1, "num": 10**400})


@pytest.mark.parametrize("spec", [
    doe.FixedRange(start=2**100, stop=2**100 + 2, step=1),
    doe.Linspace(start=2**100, stop=2**100 + 2, num=3),
], ids=["range", "linspace"])
def test_big_int_points_are_exact(spec: doe.FixedRange | doe.Linspace) -> None:
    assert spec.points() == [2**100, 2**100 + 1, 2**100 + 2]


def test_range_of_ints_past_int64() -> None:
    """Regression: start + step * np.arange(n) overflowed int64 (OverflowError, a 500)."""
    spec = doe.FixedRange(start=2**70, stop=2**70 + 2, step=1)
    assert spec.points() == [2**70, 2**70 + 1, 2**70 + 2]


def test_csv_round_trip_of_a_carriage_return() -> None:
    """Regression: with lineterminator='\\n' a value 'a\\rb' was written unquoted and the CSV
    could not be read back."""
    rows = [{"x": "a\rb", "y": 1}, {"x": "\r", "y": 2}, {"x": "c\r\nd", "y": 3}]
    assert doe.parse_cases_csv(doe.cases_to_csv(["x", "y"], rows), 10) == rows


def test_range_never_passes_stop() -> None:
    """Regression: an absolute 1e-9 tolerance made range(0, 9.9999999995, 1) end at 10.0."""
    spec = doe.FixedRange(start=0, stop=9.9999999995, step=1)
    assert spec.points() == list(range(10)) or spec.points() == [float(i) for i in range(10)]


def test_ragged_row_line_number_after_a_multi_line_cell() -> None:
    """Regression: records were counted, not lines, so a quoted cell spanning two lines put
    every later line number off by one."""
    text = 'x,y\n"a\nb",1\n1,2,3\n'
    assert list(validation_fields(lambda: doe.parse_cases_csv(text, 10))) == ["cases_csv.line.4"]


def test_linspace_keeps_17_digit_ends() -> None:
    """Regression: rounding to 15 significant digits moved ends typed with 17 (0.1 + 0.2),
    the last one past stop."""
    points = doe.Linspace(start=0.30000000000000004, stop=1000.9011198761873, num=2).points()
    assert points == [0.30000000000000004, 1000.9011198761873]


@pytest.mark.parametrize(("spec", "expected"), [
    (doe.FixedRange(start=-0.3, stop=0.3, step=0.1), [-0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3]),
    (doe.Linspace(start=0.1, stop=-0.2, num=4), [0.1, 0.0, -0.1, -0.2]),
    (doe.FixedRange(start=0.059, stop=0.002, step=-0.001),
     [round(0.059 - i / 1000, 3) for i in range(58)]),
], ids=["range-through-zero", "linspace-through-zero", "range-down-to-small"])
def test_decimal_points_have_no_noise(
    spec: doe.FixedRange | doe.Linspace, expected: list[float]
) -> None:
    """Regression: 15-digit rounding left 5.55e-17 for 0.0 and 0.00199999999999999 for 0.002,
    and those reached command lines as written."""
    assert spec.points() == expected


@pytest.mark.parametrize(("low", "high", "unit"), [
    (0.7, 0.9, [0.0, 5.637851296924623e-17, 0.5]),
    (273.9233746429086, 273.9233752833312, [0.00014104861333541496, 0.00014111939599115164]),
], ids=["below-low", "not-monotone"])
def test_uniform_quantiles_bounded_and_monotone_to_the_last_bit(
    low: float, high: float, unit: list[float]
) -> None:
    values = doe.Variable(name="x", uniform={"low": low, "high": high}).sample(np.array(unit))
    assert all(low <= v <= high for v in values), values
    assert values == sorted(values), values
