"""The two-sample Mann-Whitney U test with a Hodges–Lehmann shift and its confidence interval.

Why this exists: the Kayenta-style judge must classify a metric the way Spinnaker's NetflixACAJudge does,
and that judge runs a port of R's `wilcox.test(x, y, conf.int = TRUE, correct = TRUE)` on two short
series of per-interval values (canary and baseline), then looks only at the confidence interval of the
shift. This module is that computation, two-sided, with R's semantics:

- `u` is R's W: the number of pairs (x_i, y_j) with x_i > y_j, ties counting one half (scipy's U1);
- the p-value is exact (the null distribution of W) when `exact` is true and there are no ties, else the
  normal approximation with R's tie-corrected variance and continuity correction; `exact=None` chooses as
  R does (exact below 50 values per sample and without ties);
- the shift estimate is the Hodges–Lehmann estimator, the median of all differences x_i − y_j;
- the exact interval takes order statistics of those differences (qwilcox); the asymptotic interval
  inverts the normal approximation, clamped to [min difference, max difference] as R clamps it. R finds
  that root with `uniroot` to a tolerance of 1e-4; the standardised statistic is a step function that
  jumps only at pairwise differences, so here the root is located exactly, at the difference where it
  crosses zero.

Kayenta always uses the asymptotic interval (its Scala port has no exact branch), so with a handful of
intervals a sample that lies entirely above the other gets an interval clamped to the observed
differences, whatever the p-value says.

Degenerate input never yields NaN: a sample with fewer than two finite values gives `NoData`; when every
value is the same the p-value is 1 and the interval is that single difference (R stops with an error
there; Kayenta sidesteps it by adding noise).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
from scipy.stats import norm, rankdata

MIN_VALUES = 2  # per sample; with one value there is no spread to speak of


@dataclass(frozen=True)
class NoData:
    """Not enough values to test: why, in plain words."""

    reason: str


@dataclass(frozen=True)
class MannWhitney:
    """Result of a two-sided Mann-Whitney U test of x against y (x − y is the shift)."""

    u: float  # R's W for x: pairs with x_i > y_j, ties counting one half
    p_value: float
    estimate: float  # Hodges–Lehmann: median of x_i − y_j
    lower: float  # confidence interval of the shift
    upper: float
    confidence: float  # the level achieved (an exact interval can only take certain levels)
    method: Literal["exact", "asymptotic"]
    n_x: int
    n_y: int


def mann_whitney(
    x: Iterable[float], y: Iterable[float], *, confidence: float = 0.98, exact: bool | None = None
) -> MannWhitney | NoData:
    """Two-sided Mann-Whitney U test of x against y with the Hodges–Lehmann shift and its interval.

    Non-finite values are dropped first (as R does). `exact=None` follows R's rule; `exact=True` with ties
    falls back to the normal approximation, as in R.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    xs = _finite(x)
    ys = _finite(y)
    if len(xs) < MIN_VALUES or len(ys) < MIN_VALUES:
        return NoData(f"need at least {MIN_VALUES} values per sample, got {len(xs)} and {len(ys)}")
    nx, ny = len(xs), len(ys)
    combined = np.concatenate([xs, ys])
    ranks = rankdata(combined)
    u = float(ranks[:nx].sum() - nx * (nx + 1) / 2)
    diffs = np.sort(np.subtract.outer(xs, ys).ravel())
    estimate = float(np.median(diffs))
    ties = len(np.unique(combined)) < len(combined)
    use_exact = (nx < 50 and ny < 50 and not ties) if exact is None else (exact and not ties)
    alpha = 1 - confidence
    if use_exact:
        p_value = _exact_p_value(u, nx, ny)
        lower, upper, achieved = _exact_interval(diffs, nx, ny, alpha)
        return MannWhitney(u, p_value, estimate, lower, upper, achieved, "exact", nx, ny)
    p_value = _asymptotic_p_value(u, combined, nx, ny)
    z = float(norm.isf(alpha / 2))
    lower = _asymptotic_root(xs, ys, diffs, z)
    upper = _asymptotic_root(xs, ys, diffs, -z)
    return MannWhitney(u, p_value, estimate, lower, upper, confidence, "asymptotic", nx, ny)


def _finite(values: Iterable[float]) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    finite: np.ndarray = arr[np.isfinite(arr)]
    return finite


def _tie_term(values: np.ndarray) -> float:
    """Σ (t³ − t) over groups of tied values."""
    _, counts = np.unique(values, return_counts=True)
    t = counts.astype(float)
    return float(np.sum(t**3 - t))


def _sigma(nx: int, ny: int, tie_term: float) -> float:
    n = nx + ny
    variance = (nx * ny / 12) * ((n + 1) - tie_term / (n * (n - 1)))
    return math.sqrt(max(variance, 0.0))


def _asymptotic_p_value(u: float, combined: np.ndarray, nx: int, ny: int) -> float:
    sigma = _sigma(nx, ny, _tie_term(combined))
    if sigma == 0:
        return 1.0  # every value tied: no evidence of any difference
    dz = u - nx * ny / 2
    z = (dz - math.copysign(0.5, dz) * (dz != 0)) / sigma
    return float(min(1.0, 2 * norm.sf(abs(z))))


def _standardised(xs: np.ndarray, ys: np.ndarray, shift: float, zq: float) -> float | None:
    """R's `wdiff`: the continuity-corrected statistic of (x − shift) against y, minus zq."""
    combined = np.concatenate([xs - shift, ys])
    ranks = rankdata(combined)
    nx, ny = len(xs), len(ys)
    dz = float(ranks[:nx].sum()) - nx * (nx + 1) / 2 - nx * ny / 2
    sigma = _sigma(nx, ny, _tie_term(combined))
    if sigma == 0:
        return None
    return (dz - math.copysign(0.5, dz) * (dz != 0)) / sigma - zq


def _asymptotic_root(xs: np.ndarray, ys: np.ndarray, diffs: np.ndarray, zq: float) -> float:
    """The shift at which the standardised statistic crosses zq, clamped to the range of differences."""
    lo, hi = float(diffs[0]), float(diffs[-1])
    at_lo = _standardised(xs, ys, lo, zq)
    at_hi = _standardised(xs, ys, hi, zq)
    if at_lo is None or at_lo <= 0:
        return lo
    if at_hi is None or at_hi >= 0:
        return hi
    # Between two adjacent distinct differences no x − d ties with a y, so the variance carries only the
    # ties within each sample, and the count of pairs with x_i − d > y_j is fixed: the statistic is a
    # non-increasing step function, evaluated here on every open interval at once.
    nx, ny = len(xs), len(ys)
    sigma = _sigma(nx, ny, _tie_term(xs) + _tie_term(ys))
    points = np.unique(diffs)
    above = len(diffs) - np.searchsorted(diffs, points[:-1], side="right")  # pairs above each gap
    dz = above - nx * ny / 2
    values = (dz - np.sign(dz) * 0.5) / sigma - zq
    crossed = np.nonzero(values <= 0)[0]
    return float(points[crossed[0]]) if len(crossed) else hi


@lru_cache(maxsize=128)
def _wilcox_counts(m: int, n: int) -> tuple[int, ...]:
    """Number of orderings of m x's and n y's giving each W = 0..m·n (R's cwilcox, all at once).

    The generating function is the Gaussian binomial ∏_{i=1..m} (1 − q^(n+i)) / (1 − q^i); exact integers.
    """
    size = m * n + 1
    coef = [0] * size
    coef[0] = 1
    for i in range(1, m + 1):
        shift = n + i
        for k in range(size - 1, shift - 1, -1):
            coef[k] -= coef[k - shift]
        for k in range(i, size):
            coef[k] += coef[k - i]
    return tuple(coef)


def _cdf(m: int, n: int) -> list[float]:
    """P(W ≤ k) for k = 0..m·n (R's pwilcox)."""
    counts = _wilcox_counts(m, n)
    total = math.comb(m + n, n)
    running = 0
    out = []
    for c in counts:
        running += c
        out.append(running / total)
    return out


def _exact_p_value(u: float, nx: int, ny: int) -> float:
    cdf = _cdf(nx, ny)
    w = round(u)
    # P(W ≥ w) = P(W ≤ m·n − w) by symmetry: no subtraction from 1, so small tails keep their digits.
    tail = cdf[nx * ny - w] if w > nx * ny / 2 else cdf[w]
    return float(min(1.0, 2 * tail))


def _exact_interval(diffs: np.ndarray, nx: int, ny: int, alpha: float) -> tuple[float, float, float]:
    """R's exact two-sided interval: order statistics qu and m·n − qu + 1 of the sorted differences."""
    cdf = _cdf(nx, ny)
    qu = next(k for k, p in enumerate(cdf) if p >= alpha / 2)  # qwilcox(alpha / 2)
    qu = max(qu, 1)
    ql = nx * ny - qu
    achieved_alpha = min(1.0, 2 * cdf[qu - 1])
    return float(diffs[qu - 1]), float(diffs[ql]), 1.0 - achieved_alpha
