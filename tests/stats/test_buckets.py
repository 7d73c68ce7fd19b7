"""Histogram arithmetic at Prometheus' bucket resolution, checked against scipy and brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import lognorm

from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram
from canary.stats.buckets import (
    SPARSE_BEYOND,
    block_share,
    common_layout,
    interpolated_quantile,
    locate,
    quantile_range,
    rebucket,
    reference_edge,
    survival_at,
    survival_counts,
)

EDGES = ISTIO_LATENCY_BUCKETS_MS


def lognormal_histogram(median: float, sigma: float, total: int = 10**9) -> Histogram:
    cdf = lognorm.cdf(np.asarray(EDGES), s=sigma, scale=median)
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    return Histogram(EDGES, tuple(round(p * total) for p in probs))


def test_survival_counts_are_the_requests_above_each_edge() -> None:
    h = Histogram((10.0, 100.0), (5, 3, 2))
    assert survival_counts(h) == [5, 2]


def test_survival_is_exact_at_edges() -> None:
    h = Histogram((10.0, 100.0), (5, 3, 2))
    assert survival_at(h, 10.0) == pytest.approx(0.5)
    assert survival_at(h, 100.0) == pytest.approx(0.2)


@pytest.mark.parametrize("x", [60.0, 90.9, 180.0, 227.0, 400.0])
def test_survival_between_edges_is_exact_for_a_lognormal(x: float) -> None:
    h = lognormal_histogram(80, 0.5)
    assert survival_at(h, x) == pytest.approx(lognorm.sf(x, s=0.5, scale=80), rel=1e-4, abs=1e-7)


@pytest.mark.parametrize("load", [0.8, 1.0, 1.25])
def test_a_sparse_block_is_read_off_the_totals_rescaled_to_its_own_load(load: float) -> None:
    """Totals gathered at one load, a block at another: the share read is the block's, not the totals'."""
    totals = lognormal_histogram(110.0, 0.25)
    block = lognormal_histogram(110.0 * load, 0.25, total=300)  # few requests beyond 250 ms
    x = 150.0 * load
    read = block_share(block, totals, x)
    assert read.share == pytest.approx(lognorm.sf(x, s=0.25, scale=110.0 * load), abs=0.01)
    assert read.low <= read.share <= read.high


def test_a_block_is_rescaled_only_where_the_totals_curve_has_a_shape() -> None:
    """A narrow canary (lognormal, σ 0.2, median 150 ms): almost every request in 100–250 ms, a few beyond.
    The block was matched to the totals at 100 ms, whose share beyond (98%) the totals place in 50–100 ms,
    a bucket with nothing below it: a straight line there made the block look 19% slower and read 23% of
    requests beyond 204 ms where 6% lie (false rollbacks of canaries within tolerance). Matched where the
    totals have a shape, or not rescaled, it reads the truth."""

    def histogram(by_upper_edge: dict[float, int]) -> Histogram:
        counts = [0] * (len(EDGES) + 1)
        for edge, count in by_upper_edge.items():
            counts[EDGES.index(edge)] = count
        return Histogram(EDGES, tuple(counts))

    block = histogram({100: 10, 250: 596, 500: 3})
    totals = histogram({100: 53, 250: 2370, 500: 11})
    read = block_share(block, totals, 204.1)
    assert read.share == pytest.approx(lognorm.sf(204.1, s=0.2, scale=150.0), abs=0.015)


def test_a_block_with_no_shape_in_the_bucket_is_bounded_by_its_edges_not_a_straight_line() -> None:
    """All of a block's requests in 50–250 ms (none beyond, none below): no shape of its own there. The
    estimate comes off the totals; its bounds are the block's shares beyond the bucket's edges."""
    counts = [0] * (len(EDGES) + 1)
    counts[EDGES.index(100)], counts[EDGES.index(250)] = 106, 130  # the buckets 50–100 and 100–250 ms
    block = Histogram(EDGES, tuple(counts))
    totals = lognormal_histogram(140.0, 0.35)
    read = block_share(block, totals, 160.0)
    assert (read.low, read.high) == (0.0, pytest.approx(130 / 236))
    straight_line = survival_at(block, 160.0)  # what the block's own edges would have said
    assert read.share < straight_line


def test_a_block_whose_slope_steepens_beyond_its_bucket_is_read_both_ways() -> None:
    """Two modes (85% around 60 ms, 15% around 250 ms), a block at 0.7 of the totals' load with no request
    beyond 500 ms yet, where the totals expect more than 5: the block's slope continued from the fast
    mode's flank reads the slow side far too heavy. Both readings bound the test, and the truth lies
    between them."""

    def cdf(x: np.ndarray | float, load: float) -> np.ndarray:
        fast, slow = lognorm.cdf(x, s=0.3, scale=60 * load), lognorm.cdf(x, s=0.35, scale=250 * load)
        return np.asarray(0.85 * fast + 0.15 * slow)

    def histogram(total: int, load: float) -> Histogram:
        probs = np.diff(np.concatenate([[0.0], cdf(np.asarray(EDGES), load), [1.0]]))
        return Histogram(EDGES, tuple(round(p * total) for p in probs))

    block, totals = histogram(1500, 0.7), histogram(10**7, 1.0)
    assert survival_counts(block)[EDGES.index(500)] == 0
    read = block_share(block, totals, 370.0)
    truth = 1 - float(cdf(370.0, 0.7))
    assert read.high == pytest.approx(survival_at(block, 370.0))  # the slope continued
    assert read.high > 3 * truth
    assert read.low <= truth <= read.high
    assert read.low == pytest.approx(truth, abs=5e-4)  # the totals' split, not the bucket's lower bound (0)


def bimodal_histogram(total: int, scale: float) -> Histogram:
    """85% of requests around 60 ms, 15% on a slow path around 250 ms, every latency times `scale`."""
    cdf = 0.85 * lognorm.cdf(np.asarray(EDGES), s=0.3, scale=60 * scale)
    cdf += 0.15 * lognorm.cdf(np.asarray(EDGES), s=0.35, scale=250 * scale)
    return Histogram(EDGES, tuple(round(p * total) for p in np.diff(np.concatenate([[0.0], cdf, [1.0]]))))


def test_a_tail_with_no_request_beyond_its_bucket_is_also_read_off_the_baselines_shape() -> None:
    """A canary 25% slower than a bimodal baseline, with no request beyond 1000 ms in its block: its slope
    continued from 250–500 ms reads its p99 tail too heavy (the slow path's probit steepens). Where the
    running totals hold a few requests beyond (6), the fail test also reads the share beyond 1.25 × the
    baseline's p99 off the baseline's curve matched at 500 ms: the baseline's 1%, whatever the baseline's
    curve errs at its p99, since the same curve placed it. Where the totals hold fewer than SPARSE_BEYOND
    beyond the edge too, no count says where in the bucket the tail lies: the fail test sees the bucket's
    bound, nothing beyond its upper edge."""
    baseline = bimodal_histogram(10**7, 1.0)
    block, totals = bimodal_histogram(6000, 1.25), bimodal_histogram(90_000, 1.25)
    at_1000 = EDGES.index(1000)
    assert survival_counts(block)[at_1000] == 0 and survival_counts(totals)[at_1000] == 6
    t = locate(baseline, 0.01)
    assert t is not None
    alone, read = block_share(block, totals, 1.25 * t), block_share(block, totals, 1.25 * t, (baseline, baseline))
    assert alone.low > 0.0103  # the totals' split, its tail continued from 250–500 ms
    assert (read.share, read.high) == (alone.share, alone.high)  # only the fail test's reading moves
    assert read.low == pytest.approx(0.01, abs=2e-4)
    few = bimodal_histogram(60_000, 1.25)
    assert survival_counts(few)[at_1000] == 4 < SPARSE_BEYOND
    assert block_share(block, few, 1.25 * t, (baseline, baseline)).low == 0.0
    with_requests_beyond = bimodal_histogram(600, 1.25)  # at 200 ms: requests beyond 250 ms
    assert block_share(with_requests_beyond, totals, 200.0, (baseline, baseline)) == block_share(
        with_requests_beyond, totals, 200.0
    )


def test_a_slow_path_ending_inside_the_points_bucket_is_not_passed_on_the_cubic_alone() -> None:
    """A canary with 3% of its requests around 380 ms (p99's point, 1.25 × the baseline's p99, is 320 ms, in
    250–500 ms): its probit curve steepens across the bucket, the cubic reads 0.91% beyond the point where
    3.2% lie. The pass test's reading is the lower of the canary's slope from 100–250 ms continued and the
    baseline's curve matched at 250 ms, both heavier than the cubic: 1.28%, beyond the 1% a pass needs. A
    lognormal canary, read exactly by both, keeps the cubic's reading."""
    baseline = lognormal_histogram(80, 0.5, 10**7)
    slow_path = lognormal_histogram(80, 0.5, 97 * 10**5).counts
    slow_path = tuple(a + b for a, b in zip(slow_path, lognormal_histogram(380, 0.08, 3 * 10**5).counts, strict=True))
    canary = Histogram(EDGES, slow_path)
    t = locate(baseline, 0.01)
    assert t is not None
    alone, read = block_share(canary, canary, 1.25 * t), block_share(canary, canary, 1.25 * t, (baseline, baseline))
    assert alone.high < 0.01 < read.high == pytest.approx(0.0128, abs=2e-4)
    assert (read.share, read.low) == (alone.share, alone.low)  # only the pass test's reading moves
    narrower = lognormal_histogram(90, 0.4, 10**7)
    assert block_share(narrower, narrower, 1.25 * t, (baseline, baseline)) == block_share(narrower, narrower, 1.25 * t)


def test_survival_of_an_empty_histogram_is_nan_not_zero() -> None:
    assert math.isnan(survival_at(Histogram((1.0,), (0, 0)), 0.5))


def test_quantile_range_matches_numpy_on_the_raw_samples() -> None:
    rng = np.random.default_rng(3)
    samples = rng.lognormal(np.log(80), 0.5, 5000)
    counts = np.histogram(samples, bins=[0.0, *EDGES, np.inf])[0]
    h = Histogram(EDGES, tuple(int(c) for c in counts))
    for q in (0.5, 0.95, 0.99):
        value = float(np.quantile(samples, q, method="inverted_cdf"))
        lo, hi = quantile_range(h, q)  # type: ignore[misc]
        assert lo < value <= hi


def test_quantile_in_the_inf_bucket_is_reported_as_open_ended() -> None:
    h = Histogram((10.0,), (1, 9))
    assert quantile_range(h, 0.5) == (10.0, math.inf)


def test_interpolated_quantile_is_prometheus_linear_interpolation() -> None:
    h = Histogram((10.0, 20.0), (4, 4, 2))  # cumulative 4, 8, 10
    assert interpolated_quantile(h, 0.5) == pytest.approx(10 + 10 * (5 - 4) / 4)
    assert interpolated_quantile(Histogram((10.0,), (0, 5)), 0.99) == 10.0  # +Inf: highest finite bound


def test_reference_edge_is_the_one_nearest_the_quantile_in_log_odds() -> None:
    h = lognormal_histogram(80, 0.5)
    assert EDGES[reference_edge(h, 0.5)] == 100  # type: ignore[index]
    assert EDGES[reference_edge(h, 0.99)] == 250  # type: ignore[index]


def test_common_layout_and_rebucket_merge_to_shared_edges() -> None:
    a = Histogram((1.0, 5.0, 10.0), (1, 2, 3, 4))
    layout = common_layout([a.bounds, (1.0, 10.0)])
    assert layout is not None and layout.bounds == (1.0, 10.0) and layout.merged
    merged = rebucket(a, layout.bounds)
    assert merged.counts == (1, 5, 4) and merged.total == a.total
    assert common_layout([(1.0,), (2.0,)]) is None
