"""The Mann-Whitney port against independent computations: scipy's mannwhitneyu, brute force over pairs
and orderings, a root search on R's own statistic, and figures R printed."""

from __future__ import annotations

import itertools
import math
import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import mannwhitneyu, norm, rankdata

from canary.stats.mannwhitney import MannWhitney, NoData, _standardised, _wilcox_counts, mann_whitney

# R's documented two-sample example (?wilcox.test); R prints W = 35, p-value = 0.2544,
# 95 percent confidence interval -0.15 0.76, difference in location 0.305.
R_X = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
R_Y = [1.15, 0.88, 0.90, 0.74, 1.21]

# Per-interval values from spinnaker/kayenta's MannWhitneySuite, test "tie out intermediate variables"
# (kayenta-mannwhitney/src/test/scala/com/netflix/kayenta/mannwhitney/MannWhitneySuite.scala), with the
# intermediate values R's wilcox.test computed on them, as recorded there. x is the experiment (canary).
R_TIES_X = [
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.6666666666666572,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    3.7037037037036811,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.5625000000000142,
    0.0,
    0.0,
    0.0,
    0.0,
    3.3333333333333428,
    0.0,
    1.7543859649122737,
    0.0,
    1.8518518518518476,
    0.0,
    0.0,
    1.8518518518518476,
    0.0,
    0.0,
    1.5151515151515156,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.7857142857142776,
    1.3333333333333286,
    0.0,
    3.1250000000000142,
    1.9607843137255117,
    1.4492753623188293,
    2.4390243902438868,
    1.6393442622950687,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.6129032258064484,
    1.9607843137255117,
    1.5873015873015817,
    0.0,
    0.0,
    2.8169014084507182,
    0.0,
    0.0,
    3.0303030303030454,
    0.0,
    0.0,
    3.3898305084745743,
    0.0,
    0.0,
    1.234567901234584,
    0.0,
    0.0,
    0.0,
    0.0,
    1.7241379310344769,
    0.0,
    0.0,
    0.0,
    0.0,
    1.6949152542372872,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.470588235294116,
    0.0,
    0.0,
    1.3698630136986196,
    3.225806451612911,
    1.7543859649122879,
    3.4482758620689538,
    0.0,
    3.3333333333333428,
    0.0,
    0.0,
    0.0,
    1.818181818181813,
    0.0,
    0.0,
    1.4285714285714448,
    0.0,
    0.0,
    1.8867924528301927,
    2.0000000000000284,
    0.0,
    0.0,
    0.0,
    2.985074626865682,
    0.0,
    0.0,
    1.6666666666666714,
    0.0,
    0.0,
    1.5625,
    1.9230769230769198,
    0.0,
    1.8518518518518619,
    0.0,
    2.7027027027027088,
    0.0,
    0.0,
    0.0,
    1.3513513513513544,
    0.0,
    1.818181818181813,
    0.0,
    1.6666666666666572,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.818181818181813,
    0.0,
    1.4285714285714164,
    0.0,
    0.0,
    4.1095890410959015,
    0.0,
    0.0,
    0.0,
    1.8518518518518619,
    0.0,
    0.0,
    1.8518518518518476,
    1.3888888888888857,
    0.0,
    0.0,
    0.0,
    0.0,
    1.8867924528301785,
    1.4285714285714164,
    0.0,
    0.0,
    1.5625,
    1.8867924528301927,
    0.0,
    0.0,
    0.0,
    0.0,
    2.040816326530603,
    1.818181818181813,
    0.0,
    0.0,
    1.6393442622950687,
    0.0,
    1.7241379310344769,
    1.5151515151515156,
    2.564102564102555,
    0.0,
    0.0,
    0.0,
    0.0,
    5.5555555555555571,
    0.0,
    0.0,
    4.0816326530612059,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    3.5714285714285836,
    0.0,
    2.040816326530603,
    3.1746031746031633,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
]
R_TIES_Y = [
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.5625000000000142,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.3888888888888857,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.5384615384615614,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.4925373134328339,
    0.0,
    0.0,
    0.0,
    1.6949152542373014,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.470588235294116,
    0.0,
    0.0,
    0.0,
    0.0,
    1.7543859649122879,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.8518518518518619,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.6393442622950687,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.7241379310344769,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.5873015873015817,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.4925373134328339,
    0.0,
    0.0,
    0.0,
    3.1249999999999858,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.4925373134328339,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    2.9850746268656536,
    0.0,
    2.5000000000000284,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    0.0,
    1.7857142857142776,
    0.0,
    0.0,
    0.0,
]

small_ints = st.lists(st.integers(0, 6).map(float), min_size=2, max_size=15)  # many ties
distinct_floats = st.lists(
    st.floats(-1e3, 1e3, allow_nan=False).map(lambda v: round(v, 3)), min_size=2, max_size=12, unique=True
)


def _test(x: list[float], y: list[float], **kwargs: object) -> MannWhitney:
    result = mann_whitney(x, y, **kwargs)  # type: ignore[arg-type]
    assert isinstance(result, MannWhitney)
    return result


def _r_wdiff(x: np.ndarray, y: np.ndarray, d: float, zq: float) -> float:
    """R's wdiff, written out afresh: ranks of (x − d, y), tie-corrected sigma, continuity correction."""
    ranks = rankdata(np.concatenate([x - d, y]))
    nx, ny = len(x), len(y)
    dz = ranks[:nx].sum() - nx * (nx + 1) / 2 - nx * ny / 2
    _, ties = np.unique(ranks, return_counts=True)
    n = nx + ny
    sigma = math.sqrt(nx * ny / 12 * ((n + 1) - np.sum(ties**3 - ties) / (n * (n - 1))))
    return float((dz - np.sign(dz) * 0.5) / sigma - zq)


def _r_root(x: np.ndarray, y: np.ndarray, zq: float) -> float:
    lo, hi = float(x.min() - y.max()), float(x.max() - y.min())
    if _r_wdiff(x, y, lo, zq) <= 0:
        return lo
    if _r_wdiff(x, y, hi, zq) >= 0:
        return hi
    return float(brentq(lambda d: _r_wdiff(x, y, d, zq), lo, hi, xtol=1e-12))


# ----------------------------------------------------------------------------------------- statistic


@settings(max_examples=300, deadline=None)
@given(small_ints, small_ints)
def test_statistic_and_asymptotic_p_value_match_scipy_with_ties(x: list[float], y: list[float]) -> None:
    ours = _test(x, y, exact=False)
    ref = mannwhitneyu(x, y, alternative="two-sided", use_continuity=True, method="asymptotic")
    assert ours.method == "asymptotic"
    assert ours.u == pytest.approx(float(ref.statistic))
    expected = 1.0 if math.isnan(ref.pvalue) else float(ref.pvalue)  # scipy gives NaN when all are tied
    assert ours.p_value == pytest.approx(expected, rel=1e-9, abs=1e-12)


@settings(max_examples=200, deadline=None)
@given(distinct_floats, distinct_floats)
def test_exact_p_value_matches_scipy_without_ties(x: list[float], y: list[float]) -> None:
    if set(x) & set(y):
        return  # a tie across samples: R (and this port) would fall back to the normal approximation
    ours = _test(x, y)
    ref = mannwhitneyu(x, y, alternative="two-sided", method="exact")
    assert ours.method == "exact"
    assert ours.u == pytest.approx(float(ref.statistic))
    assert ours.p_value == pytest.approx(float(ref.pvalue), rel=1e-9)


def test_r_chooses_the_normal_approximation_when_there_are_ties_even_if_exact_is_asked() -> None:
    assert _test([1.0, 2.0, 2.0], [2.0, 3.0], exact=True).method == "asymptotic"
    assert _test([1.0, 2.0], [3.0, 4.0]).method == "exact"
    assert _test(list(range(50)), [0.5, 1.5]).method == "asymptotic"  # 50 values: R's cut-off


@pytest.mark.parametrize(("m", "n"), [(2, 2), (3, 5), (4, 4), (6, 3)])
def test_exact_null_distribution_counts_every_ordering(m: int, n: int) -> None:
    counts = [0] * (m * n + 1)
    for x_positions in itertools.combinations(range(m + n), m):
        # W = pairs (x, y) with x above y = for each x, the y's below it
        w = sum(pos - i for i, pos in enumerate(x_positions))
        counts[w] += 1
    assert list(_wilcox_counts(m, n)) == counts


@settings(max_examples=200, deadline=None)
@given(small_ints, small_ints)
def test_hodges_lehmann_estimate_is_the_median_of_pairwise_differences(x: list[float], y: list[float]) -> None:
    pairwise = [a - b for a in x for b in y]
    assert _test(x, y).estimate == pytest.approx(statistics.median(pairwise))


# --------------------------------------------------------------------------------- confidence intervals


def test_exact_test_and_interval_reproduce_r_on_its_documented_example() -> None:
    result = _test(R_X, R_Y, confidence=0.95)
    assert result.method == "exact"
    assert result.u == 35
    assert result.p_value == pytest.approx(0.2544, abs=5e-5)
    assert (result.lower, result.upper) == pytest.approx((-0.15, 0.76))
    assert result.estimate == pytest.approx(0.305)
    assert 0.95 <= result.confidence < 1  # an exact interval reaches at least the level asked for


@settings(max_examples=200, deadline=None)
@given(small_ints, small_ints, st.sampled_from([0.9, 0.95, 0.98]))
def test_asymptotic_interval_is_where_r_root_search_lands(x: list[float], y: list[float], conf: float) -> None:
    if len({a - b for a in x for b in y}) == 1:
        return  # every x − d ties with every y at the only difference: R stops with an error (see below)
    ours = _test(x, y, confidence=conf, exact=False)
    xs, ys = np.asarray(x), np.asarray(y)
    z = float(norm.isf((1 - conf) / 2))
    assert ours.lower == pytest.approx(_r_root(xs, ys, z), abs=1e-9)
    assert ours.upper == pytest.approx(_r_root(xs, ys, -z), abs=1e-9)
    assert ours.lower <= ours.estimate <= ours.upper


@settings(max_examples=100, deadline=None)
@given(distinct_floats, distinct_floats)
def test_asymptotic_interval_matches_root_search_without_ties(x: list[float], y: list[float]) -> None:
    ours = _test(x, y, exact=False)
    xs, ys = np.asarray(x), np.asarray(y)
    z = float(norm.isf(0.01))
    assert ours.lower == pytest.approx(_r_root(xs, ys, z), abs=1e-9)
    assert ours.upper == pytest.approx(_r_root(xs, ys, -z), abs=1e-9)


def test_statistic_reproduces_r_intermediate_values_on_heavily_tied_data() -> None:
    """Figures R computed inside wilcox.test on 210 vs 210 mostly-zero values (recorded in Kayenta's suite)."""
    x, y = np.asarray(R_TIES_X), np.asarray(R_TIES_Y)
    mumin, mumax = float(x.min() - y.max()), float(x.max() - y.min())
    assert (mumin, mumax) == pytest.approx((-3.124999999999986, 5.555555555555557))
    z = 1.9599639845400536
    assert _standardised(x, y, mumin, z) == pytest.approx(17.090968923762254, abs=1e-6)
    assert _standardised(x, y, mumax, z) == pytest.approx(-20.997687930433106, abs=1e-6)
    assert _standardised(x, y, mumin, -z) == pytest.approx(21.01089689284236, abs=1e-6)
    assert _standardised(x, y, mumax, -z) == pytest.approx(-17.077759961353, abs=1e-6)
    result = _test(R_TIES_X, R_TIES_Y, confidence=0.95, exact=False)
    # R's uniroot stops within 1e-4 of the jump (it printed 3.5e-5, 2.0e-5 and 2.6e-5); the jump is at 0.
    assert (result.lower, result.upper, result.estimate) == (0.0, 0.0, 0.0)
    assert result.p_value < 1e-8


# ------------------------------------------------------------------------------------ degenerate samples


@pytest.mark.parametrize(
    ("x", "y"),
    [([], [1.0, 2.0]), ([1.0, 2.0], []), ([1.0], [1.0, 2.0]), ([1.0, 2.0], [3.0]), ([math.nan, 1.0], [1.0, 2.0])],
)
def test_fewer_than_two_finite_values_is_no_data(x: list[float], y: list[float]) -> None:
    result = mann_whitney(x, y)
    assert isinstance(result, NoData)
    assert "at least 2" in result.reason


def test_every_value_tied_gives_p_one_and_a_zero_shift_not_nan() -> None:
    result = _test([3.0, 3.0, 3.0], [3.0, 3.0])
    assert (result.p_value, result.estimate, result.lower, result.upper) == (1.0, 0.0, 0.0, 0.0)


def test_equal_samples_show_no_shift() -> None:
    result = _test([1.0, 5.0, 2.0, 8.0], [8.0, 2.0, 5.0, 1.0], exact=False)
    assert result.p_value == 1.0
    assert result.estimate == 0.0
    assert result.lower < 0 < result.upper


def test_two_constant_samples_have_the_single_difference_as_interval() -> None:
    result = _test([0.02, 0.02, 0.02], [0.01, 0.01, 0.01], exact=False)
    assert (result.lower, result.estimate, result.upper) == pytest.approx((0.01, 0.01, 0.01))
    assert 0 < result.p_value < 1


def test_small_separated_samples_get_an_interval_clamped_to_the_differences_whatever_the_p_value() -> None:
    """R's (and Kayenta's) asymptotic interval: with 3 vs 3 values it cannot exclude much, so it is
    clamped to [min, max] of the differences, which lies above zero although p > 0.02."""
    result = _test([10.0, 11.0, 12.0], [1.0, 2.0, 3.0], confidence=0.98, exact=False)
    assert result.p_value > 0.02
    assert (result.lower, result.upper) == (7.0, 11.0)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(0, 1e6, allow_nan=False), max_size=8),
    st.lists(st.floats(0, 1e6, allow_nan=False), max_size=8),
)
def test_never_nan_on_arbitrary_non_negative_values(x: list[float], y: list[float]) -> None:
    result = mann_whitney(x, y)
    if isinstance(result, NoData):
        assert min(len(x), len(y)) < 2
        return
    figures = (result.u, result.p_value, result.estimate, result.lower, result.upper, result.confidence)
    assert all(math.isfinite(v) for v in figures)
    assert 0 <= result.p_value <= 1
    assert result.lower <= result.upper


def test_confidence_outside_zero_one_is_refused() -> None:
    with pytest.raises(ValueError, match="confidence"):
        mann_whitney([1.0, 2.0], [3.0, 4.0], confidence=1.0)
