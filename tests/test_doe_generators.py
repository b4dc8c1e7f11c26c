"""Property tests of the generators engineers asked for (orchestrator.generators): loguniform,
logspace, integer, choice and constant; of one kind per variable (numbers stay numbers); and
of empty cells in a cases CSV. The older generators are tested in tests/test_doe.py."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from orchestrator import doe, generators
from orchestrator.errors import ValidationFailed, validation_failed
from orchestrator.sweep_models import SweepCreate

FAST = settings(max_examples=60, deadline=None)
FEW = settings(max_examples=20, deadline=None)
SAMPLED = {"monte_carlo": doe.MonteCarlo, "latin_hypercube": doe.LatinHypercube, "sobol": doe.Sobol}
seeds = st.integers(0, 2**63 - 1)
unit_points = st.lists(st.floats(0.0, 1.0), min_size=1, max_size=40).map(np.array)
exponents = st.floats(-30, 30)
words = st.from_regex(r"[a-z]{1,6}", fullmatch=True)
numbers = st.one_of(st.integers(-10**6, 10**6),
                    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False))


def sampled(kind: str, samples: int, seed: int) -> doe.Sampled:
    return SAMPLED[kind](type=kind, samples=samples, seed=seed)


def build(variables: list[doe.Variable], design: Any = None, **kwargs: Any) -> doe.RunTable:
    return doe.build_table(variables, design, None, include_nominal=kwargs.pop("include_nominal", False),
                           max_runs=kwargs.pop("max_runs", 100_000))


def fields_of(call: Any) -> dict[str, str]:
    with pytest.raises(ValidationFailed) as caught:
        call()
    return caught.value.fields


def rest_fields(spec: dict[str, Any]) -> dict[str, str]:
    """The fields a REST request's 400 names: pydantic's errors, else the run table's."""
    try:
        request = SweepCreate.model_validate({"command": "echo", **spec})
    except ValidationError as exc:
        return validation_failed(exc).fields
    return fields_of(lambda: doe.build_table(request.variables, request.design, request.cases,
                                             include_nominal=request.include_nominal_run,
                                             max_runs=1000))


# ---- loguniform --------------------------------------------------------------------------


@FAST
@given(low_exp=exponents, span=st.floats(0.01, 12), unit=unit_points)
def test_loguniform_is_uniform_in_log_space_within_its_bounds(
    low_exp: float, span: float, unit: np.ndarray
) -> None:
    """The inverse CDF: log(v) = log(low) + u (log(high) - log(low)), so every decade between
    the bounds is as likely; values never leave [low, high] and grow with u."""
    low, high = 10.0**low_exp, 10.0 ** (low_exp + span)
    assume(high > low)
    variable = doe.Variable(name="C", loguniform={"low": low, "high": high})
    values = variable.sample(unit)
    assert all(type(v) is float and low <= v <= high for v in values)
    expected = np.log(low) + unit * (np.log(high) - np.log(low))
    assert np.allclose(np.log(values), expected, rtol=1e-9, atol=1e-9)
    order = np.argsort(unit, kind="stable")
    assert np.all(np.diff(np.asarray(values)[order]) >= 0)


@FEW
@given(decades=st.integers(1, 6), per_decade=st.integers(1, 8), seed=seeds)
def test_latin_hypercube_of_a_loguniform_fills_every_decade_alike(
    decades: int, per_decade: int, seed: int
) -> None:
    """With n samples, LHS puts n / decades samples in each decade (give or take one at an
    edge, where the log's rounding may move a sample across)."""
    samples = decades * per_decade
    variable = doe.Variable(name="C", loguniform={"low": 1e-9, "high": 10.0 ** (decades - 9)})
    table = build([variable], sampled("latin_hypercube", samples, seed))
    counts = Counter(min(math.floor(math.log10(row["C"]) + 9), decades - 1) for row in table.rows)
    assert sum(counts.values()) == samples
    assert all(abs(counts[d] - per_decade) <= 1 for d in range(decades)), counts


@FAST
@given(low=st.floats(-1e6, 0), high=st.floats(1e-3, 1e6))
def test_loguniform_needs_positive_bounds(low: float, high: float) -> None:
    """log(0) and logs of negatives do not exist: refused by pydantic, naming the field."""
    with pytest.raises(ValidationError) as caught:
        doe.Variable(name="C", loguniform={"low": low, "high": high})
    assert [e["loc"] for e in caught.value.errors()] == [("loguniform", "low")]


@FAST
@given(low=st.floats(1e-9, 1e6), factor=st.floats(0, 1))
def test_loguniform_needs_high_above_low(low: float, factor: float) -> None:
    variable = doe.Variable(name="C", loguniform={"low": low, "high": low * factor or low})
    fields = fields_of(lambda: doe.check_variables([variable]))
    assert list(fields) == ["variables.0.loguniform"] and "high must be greater" in fields[
        "variables.0.loguniform"]


# ---- logspace ----------------------------------------------------------------------------


@FAST
@given(first=st.integers(-30, 20), decades=st.integers(0, 15))
def test_logspace_of_decades_is_exact(first: int, decades: int) -> None:
    """{start: 1e-9, stop: 1e-6, num: 4} is 1e-9, 1e-8, 1e-7, 1e-6 exactly: no 1.0000000000000001e-08
    on a command line. Values, not exponents, like numpy.geomspace."""
    start, stop = float(f"1e{first}"), float(f"1e{first + decades}")
    points = doe.Logspace(start=start, stop=stop, num=decades + 1).points()
    assert points == [float(f"1e{k}") for k in range(first, first + decades + 1)]


@FAST
@given(start_exp=exponents, stop_exp=exponents, num=st.integers(1, 200))
def test_logspace_is_geometric_with_exact_ends(start_exp: float, stop_exp: float, num: int) -> None:
    """num floats, start and stop exactly as written, a constant ratio between neighbours,
    monotone, and inside [start, stop]."""
    start, stop = 10.0**start_exp, 10.0**stop_exp
    points = doe.Logspace(start=start, stop=stop, num=num).points()
    assert len(points) == num and all(type(p) is float for p in points)
    assert points[0] == start
    if num > 1:
        assert points[-1] == stop
        ratio = (stop / start) ** (1 / (num - 1))
        assert all(math.isclose(b / a, ratio, rel_tol=1e-12) for a, b in zip(points[:-1], points[1:], strict=True))
    lo, hi = sorted((start, stop))
    assert all(lo <= p <= hi for p in points)
    steps = np.diff(points)
    assert np.all(steps >= 0) if stop >= start else np.all(steps <= 0)


@FAST
@given(start=st.floats(-1e6, 0), stop=st.floats(1e-3, 1e6), flip=st.booleans())
def test_logspace_needs_positive_ends(start: float, stop: float, flip: bool) -> None:
    ends = {"start": stop, "stop": start} if flip else {"start": start, "stop": stop}
    with pytest.raises(ValidationError) as caught:
        doe.Variable(name="f", logspace={**ends, "num": 3})
    assert [e["loc"] for e in caught.value.errors()] == [("logspace", "stop" if flip else "start")]


def test_logspace_runs_in_a_full_factorial_and_a_sampled_design() -> None:
    """A finite list of points: every one once in a product, or picked equally in a sample."""
    variable = doe.Variable(name="f", logspace={"start": 10, "stop": 1000, "num": 3})
    assert [row["f"] for row in build([variable]).rows] == [10.0, 100.0, 1000.0]
    rows = build([variable], sampled("latin_hypercube", 300, 1)).rows
    assert Counter(row["f"] for row in rows) == {10.0: 100, 100.0: 100, 1000.0: 100}


# ---- integer -----------------------------------------------------------------------------


@FAST
@given(low=st.integers(-10**6, 10**6), width=st.integers(0, 50), unit=unit_points)
def test_integer_gives_ints_within_inclusive_bounds(low: int, width: int, unit: np.ndarray) -> None:
    """floor of a uniform over [low, high + 1), clipped: Python ints, both ends included."""
    high = low + width
    variable = doe.Variable(name="n", integer={"low": low, "high": high})
    values = variable.sample(unit)
    assert all(type(v) is int and low <= v <= high for v in values)
    assert values == [min(low + math.floor(u * (width + 1)), high) for u in unit]
    midpoints = (np.arange(width + 1) + 0.5) / (width + 1)
    assert variable.sample(midpoints) == list(range(low, high + 1))  # each value an equal share


@FEW
@given(low=st.integers(-100, 100), width=st.integers(0, 30), seed=seeds)
def test_latin_hypercube_of_integers_takes_each_value_once(low: int, width: int, seed: int) -> None:
    """As many samples as integers: the strata make each integer come up exactly once."""
    variable = doe.Variable(name="n", integer={"low": low, "high": low + width})
    rows = build([variable], sampled("latin_hypercube", width + 1, seed)).rows
    assert sorted(row["n"] for row in rows) == list(range(low, low + width + 1))
    assert [row["n"] for row in build([variable]).rows] == list(range(low, low + width + 1))


@FAST
@given(low=st.integers(-2**63, 2**63 - 1), high=st.integers(-2**63, 2**63 - 1), seed=seeds)
def test_integer_over_the_whole_int64_range(low: int, high: int, seed: int) -> None:
    """Seeds and hashes span 64 bits: no overflow, no float on a command line."""
    variable = doe.Variable(name="n", integer={"low": low, "high": high})
    if high < low:
        assert list(fields_of(lambda: doe.check_variables([variable]))) == ["variables.0.integer"]
        return
    rows = build([variable], sampled("monte_carlo", 8, seed)).rows
    assert all(type(row["n"]) is int and low <= row["n"] <= high for row in rows)


@pytest.mark.parametrize("bad", [True, 2**63, -(2**63) - 1, 1.5, "x"])
def test_integer_bounds_are_int64_integers(bad: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        doe.Variable(name="n", integer={"low": bad, "high": 10})
    assert caught.value.errors()[0]["loc"] == ("integer", "low")


# ---- choice ------------------------------------------------------------------------------


@FAST
@given(values=st.lists(words, min_size=1, max_size=6, unique=True), data=st.data(),
       unit=unit_points)
def test_choice_picks_only_given_values_never_a_zero_weight(
    values: list[str], data: st.DataObject, unit: np.ndarray
) -> None:
    """Whatever the weights and unit points (0 and 1 included), a value of weight 0 is never
    picked and nothing else is invented."""
    weights = data.draw(st.lists(st.one_of(st.just(0.0), st.floats(0, 1e300)),
                                 min_size=len(values), max_size=len(values)).filter(any))
    variable = doe.Variable(name="m", choice={"values": values, "weights": weights})
    allowed = {v for v, w in zip(values, weights, strict=True) if w > 0}
    assert set(variable.sample(unit)) <= allowed


@FEW
@given(weights=st.lists(st.integers(0, 6), min_size=1, max_size=5).filter(any), seed=seeds)
def test_latin_hypercube_of_a_weighted_choice_matches_the_weights_exactly(
    weights: list[int], seed: int
) -> None:
    """With as many samples as the weights add up to, each of the n strata holds one sample,
    so value i comes up exactly weights[i] times."""
    values = [f"v{i}" for i in range(len(weights))]
    variable = doe.Variable(name="m", choice={"values": values, "weights": weights})
    rows = build([variable], sampled("latin_hypercube", sum(weights), seed)).rows
    counts = Counter(row["m"] for row in rows)
    assert {v: counts[v] for v in values} == dict(zip(values, weights, strict=True))


@pytest.mark.parametrize("kind", sorted(SAMPLED))
def test_a_weighted_choice_follows_its_weights_statistically(kind: str) -> None:
    """20,000 samples with a fixed seed: each share within 0.02 of its weight's."""
    weights = [0.6, 0.3, 0.1, 0.0]
    variable = doe.Variable(name="m", choice={"values": [1, 2, 3, 4], "weights": weights})
    rows = build([variable], sampled(kind, 20_000, 7)).rows
    counts = Counter(row["m"] for row in rows)
    assert counts[4] == 0
    for value, weight in zip([1, 2, 3], weights, strict=False):
        assert abs(counts[value] / 20_000 - weight) < 0.02, counts


@FAST
@given(values=st.lists(numbers, min_size=1, max_size=6), seed=seeds)
def test_choice_without_weights_is_values(values: list[Any], seed: int) -> None:
    """Equally likely: the same rows as a `values` list, in a product and in a sample."""
    as_choice = doe.Variable(name="m", choice={"values": values})
    as_values = doe.Variable(name="m", values=values)
    assert build([as_choice]).rows == build([as_values]).rows
    design = sampled("monte_carlo", 16, seed)
    assert build([as_choice], design).rows == build([as_values], design).rows


@pytest.mark.parametrize(("choice", "field"), [
    ({"values": [1, 2], "weights": [1]}, "variables.0.choice.weights"),
    ({"values": [1, 2], "weights": [0, 0]}, "variables.0.choice.weights"),
    ({"values": [1, 2], "weights": [1, -1]}, "variables.0.choice.weights.1"),
    ({"values": [1, 2], "weights": [1, float("inf")]}, "variables.0.choice.weights.1"),
    ({"values": []}, "variables.0.choice.values"),
    ({"values": [1, "one"]}, "variables.0.choice"),
], ids=["length", "all-zero", "negative", "infinite", "no-values", "mixed-kinds"])
def test_bad_choices_name_their_field(choice: dict[str, Any], field: str) -> None:
    fields = rest_fields({"variables": [{"name": "m", "choice": choice}],
                          "design": {"type": "monte_carlo", "samples": 4}})
    assert list(fields) == [field]


def test_weights_have_no_meaning_in_a_full_factorial() -> None:
    """A product runs each value once: weights there are refused, not silently ignored."""
    variables = [doe.Variable(name="a", values=[1, 2]),
                 doe.Variable(name="m", choice={"values": [1, 2], "weights": [3, 1]})]
    fields = fields_of(lambda: build(variables))
    assert list(fields) == ["variables.1.choice.weights"]
    assert "sampled design" in fields["variables.1.choice.weights"]


# ---- constant ----------------------------------------------------------------------------


@FAST
@given(value=st.one_of(numbers, words, st.booleans()), kind=st.sampled_from(sorted(SAMPLED)),
       seed=seeds)
def test_constant_is_the_same_value_in_every_run(value: Any, kind: str, seed: int) -> None:
    variables = [doe.Variable(name="k", constant={"value": value}),
                 doe.Variable(name="x", uniform={"low": 0, "high": 1})]
    for table in (build(variables[:1]), build(variables, sampled(kind, 12, seed))):
        assert all(row["k"] == value and type(row["k"]) is type(value) for row in table.rows)


# ---- every generator: determinism and the design it fits --------------------------------

NEW = {
    "loguniform": {"low": 1e-9, "high": 1e-6},
    "logspace": {"start": 1e-9, "stop": 1e-6, "num": 4},
    "integer": {"low": 1, "high": 8},
    "choice": {"values": ["a", "b", "c"], "weights": [1, 2, 3]},
    "constant": {"value": 3.3},
}


@FEW
@given(kind=st.sampled_from(sorted(SAMPLED)), seed=seeds, samples=st.integers(1, 64))
def test_new_generators_are_deterministic_under_a_seed(kind: str, seed: int, samples: int) -> None:
    variables = [doe.Variable(name=f"v_{g}", **{g: spec}) for g, spec in NEW.items()]
    first = build(variables, sampled(kind, samples, seed))
    assert first.rows == build(variables, sampled(kind, samples, seed)).rows
    assert first.seed == seed and len(first.rows) == samples


@pytest.mark.parametrize("generator", sorted(NEW))
def test_which_design_each_new_generator_fits(generator: str) -> None:
    """Sampled designs take every generator; a full_factorial takes finite, equally likely
    lists (logspace, integer, constant, choice without weights) and names the others."""
    variable = doe.Variable(name="v", **{generator: NEW[generator]})
    assert len(build([variable], sampled("sobol", 8, 3)).rows) == 8
    if generator == "loguniform":
        assert list(fields_of(lambda: build([variable]))) == ["variables.0.loguniform"]
    elif generator == "choice":
        assert list(fields_of(lambda: build([variable]))) == ["variables.0.choice.weights"]
    else:
        assert build([variable]).rows


@pytest.mark.parametrize("variable", [
    {"name": "x", "loguniform": {"low": 5e-324, "high": 1.7976931348623157e308}},
    {"name": "x", "logspace": {"start": 5e-324, "stop": 1.7976931348623157e308, "num": 2**53}},
    {"name": "x", "integer": {"low": -(2**63), "high": 2**63 - 1}},
    {"name": "x", "choice": {"values": [1, 2], "weights": [1.7976931348623157e308] * 2}},
], ids=["loguniform", "logspace", "integer", "choice"])
def test_extreme_parameters_give_finite_values(variable: dict[str, Any]) -> None:
    """No OverflowError (a 500), nan or inf at the far ends of what validation takes."""
    with np.errstate(all="ignore"):
        rows = build([doe.Variable(**variable)], sampled("monte_carlo", 64, 1)).rows
    assert all(math.isfinite(row["x"]) for row in rows)


def test_python_api_helpers_write_the_rest_spec() -> None:
    assert generators.loguniform(1e-9, 1e-6) == {"loguniform": {"low": 1e-9, "high": 1e-6}}
    assert generators.logspace(1, 100, 3, nominal=10) == {
        "logspace": {"start": 1, "stop": 100, "num": 3}, "nominal": 10}
    assert generators.integer(1, 8) == {"integer": {"low": 1, "high": 8}}
    assert generators.choice("a", "b", weights=[1, 3]) == {
        "choice": {"values": ["a", "b"], "weights": [1, 3]}}
    assert generators.choice(1, 2) == {"choice": {"values": [1, 2]}}
    assert generators.constant("x") == {"constant": {"value": "x"}}
    for helper in ("loguniform", "logspace", "integer", "choice", "constant"):
        assert getattr(doe, helper) is getattr(generators, helper)


# ---- one kind per variable: numbers stay numbers -----------------------------------------


@FAST
@given(items=st.lists(numbers, min_size=2, max_size=8), data=st.data())
def test_numbers_written_as_text_among_numbers_become_those_numbers(
    items: list[Any], data: st.DataObject
) -> None:
    """A YAML 1.1 loader leaves `1e-8` as text: among numbers it is read back as the very
    number (an int stays an int), so `df.R * df.C` multiplies."""
    as_text = data.draw(st.lists(st.integers(0, len(items) - 1), min_size=1, unique=True))
    assume(len(as_text) < len(items))
    written = [repr(v) if i in as_text else v for i, v in enumerate(items)]
    variable = doe.Variable(name="C", values=written)
    assert [(type(v), v) for v in variable.values] == [(type(v), v) for v in items]


@FAST
@given(items=st.lists(numbers, min_size=1, max_size=6), word=words, at=st.integers(0, 6),
       choice=st.booleans())
def test_numbers_and_text_in_one_variable_are_refused_naming_it(
    items: list[Any], word: str, at: int, choice: bool
) -> None:
    """A column of numbers with a word in it would turn to text in every results table: a
    400 naming the variable, never a silent string."""
    mixed = [*items[:at], word, *items[at:]]
    spec = {"choice": {"values": mixed}} if choice else {"values": mixed}
    fields = rest_fields({"variables": [{"name": "x", "values": [1]}, {"name": "C", **spec}]})
    key = "variables.1.choice" if choice else "variables.1.values"
    assert list(fields) == [key]
    assert fields[key].startswith("C: ") and repr(word) in fields[key]


@FAST
@given(items=st.lists(words, min_size=1, max_size=6))
def test_text_values_stay_text_even_when_they_look_like_numbers(items: list[str]) -> None:
    """All text is the writer's choice (zero-padded ids such as '007'): kept as written."""
    padded = [f"00{i}" for i in range(len(items))]
    for listed in (items, padded):
        assert doe.Variable(name="case", values=listed).values == listed


@pytest.mark.parametrize(("variable", "row"), [
    ({"linspace": {"start": 1, "stop": 2, "num": 2}, "nominal": "1.5"}, 1.5),
    ({"values": [1e-8, 1e-7], "nominal": "1e-8"}, 1e-8),
    ({"values": ["low", "high"], "nominal": "low"}, "low"),
    ({"constant": {"value": True}, "nominal": False}, False),
])
def test_a_nominal_is_a_value_of_its_column(variable: dict[str, Any], row: Any) -> None:
    table = build([doe.Variable(name="C", **variable)], include_nominal=True)
    assert table.rows[0] == {"C": row} and type(table.rows[0]["C"]) is type(row)


@pytest.mark.parametrize("variable", [
    {"linspace": {"start": 1, "stop": 2, "num": 2}, "nominal": "baseline"},
    {"values": ["low", "high"], "nominal": 3},
    {"uniform": {"low": 0, "high": 1}, "nominal": True},
])
def test_a_nominal_of_another_kind_is_refused(variable: dict[str, Any]) -> None:
    fields = rest_fields({"variables": [{"name": "C", **variable}],
                          "design": {"type": "monte_carlo", "samples": 2}})
    assert list(fields) == ["variables.0.nominal"] and fields["variables.0.nominal"].startswith("C: ")


@FAST
@given(value=st.floats(allow_nan=False, allow_infinity=False))
def test_parse_number_reads_back_every_float(value: float) -> None:
    assert generators.parse_number(repr(value)) == value
    assert generators.parse_number(f" {value!r} ") == value


@FAST
@given(value=st.integers())
def test_parse_number_keeps_ints(value: int) -> None:
    parsed = generators.parse_number(str(value))
    assert parsed == value and type(parsed) is int


@pytest.mark.parametrize("text", ["", " ", "abc", "1_000", "0x10", "inf", "nan", "1e999", "١٢",
                                  "1.2.3", "e5", "--1", "1e", "."])
def test_parse_number_refuses_what_is_not_plainly_a_number(text: str) -> None:
    assert generators.parse_number(text) is None


# ---- empty cells in a cases CSV ----------------------------------------------------------


@FAST
@given(columns=st.lists(st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True), min_size=1,
                        max_size=4, unique=True),
       rows=st.integers(1, 6), data=st.data(), blank=st.sampled_from(["", " ", "\t", "  "]))
def test_an_empty_cell_names_its_line_and_column(
    columns: list[str], rows: int, data: st.DataObject, blank: str
) -> None:
    """`1,,3` would give a run an empty value silently: a 400 naming line and column, unless
    the column is declared optional."""
    row = data.draw(st.integers(0, rows - 1))
    column = data.draw(st.sampled_from(columns))
    lines = [",".join(columns)] + [
        ",".join(blank if (r == row and c == column) else str(r) for c in columns)
        for r in range(rows)]
    text = "\n".join(lines) + "\n"
    assume(len(columns) > 1 or blank.strip(" \t"))  # a one-column blank line is skipped
    fields = fields_of(lambda: doe.parse_cases_csv(text, 100))
    assert fields == {f"cases_csv.line.{row + 2}.{column}":
                      f"line {row + 2}, column {column} is empty (run {row})"}
    parsed = doe.parse_cases_csv(text, 100, optional=[column])
    assert parsed[row][column] == ""
    assert all(parsed[r][c] == r for r in range(rows) for c in columns if (r, c) != (row, column))


def test_empty_cells_are_all_named_at_once() -> None:
    text = "R,C,L\n1,,3\n,5,\n7,8,9\n"
    with pytest.raises(ValidationFailed) as caught:
        doe.parse_cases_csv(text, 10)
    assert list(caught.value.fields) == ["cases_csv.line.2.C", "cases_csv.line.3.R",
                                         "cases_csv.line.3.L"]
    assert "line 2, column C is empty (run 0)" in caught.value.message


def test_a_quoted_carriage_return_is_a_value_not_an_empty_cell() -> None:
    assert doe.parse_cases_csv('x,y\n"\r",1\n', 10) == [{"x": "\r", "y": 1}]


@pytest.mark.parametrize("generator", [
    {"linspace": {"start": 10**400, "stop": 1, "num": 2}},
    {"logspace": {"start": 1, "stop": 10**400, "num": 2}},
    {"loguniform": {"low": 10**400, "high": 1}},
])
def test_an_int_past_the_largest_float_is_a_validation_error(generator: dict[str, Any]) -> None:
    """Regression: math.isfinite(10**400) raised OverflowError, a 500 over REST."""
    with pytest.raises(ValidationError, match="must be a finite number"):
        doe.Variable(name="x", **generator)
