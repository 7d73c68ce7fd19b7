"""Latency histograms as Prometheus keeps them: counts per `le` bucket, nothing finer.

Counts are exact at bucket edges only. Where a check needs a point between two edges (the baseline's
p95, the share of requests slower than 1.2 times it), it is read off a smooth monotone curve through the
edges, exact for a lognormal (`survival_at`, `locate`): the assumption docs/statistics.md states and
measures. Reported quantile ranges are bucket ranges.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from scipy.special import ndtr, ndtri

from canary.model import Histogram


def survival_counts(hist: Histogram) -> list[int]:
    """Number of requests slower than each finite edge (le), same order as hist.bounds."""
    above = hist.total
    out = []
    for count in hist.counts[:-1]:
        above -= count
        out.append(above)
    return out


def survival_at(hist: Histogram, x: float) -> float:
    """Share of requests slower than x; between edges, read off a smooth curve through the edges.

    At an edge the share is exact. Between edges the probit of the CDF, z = Φ⁻¹(1 − S), is taken as a
    monotone cubic in log x through every edge where 0 < S < 1 (PCHIP's Fritsch–Carlson slopes, from
    the neighbouring edges only). A lognormal has z linear in log x, so it is interpolated exactly; the cubic
    also follows the curvature that gamma, Weibull and other unimodal shapes put into z (docs/statistics.md
    measures how far off it is for each). Where no request lies beyond the bucket's upper edge yet, the
    slope of z is continued from below; a bucket from 0, or one with no shape either side, is linear.
    """
    return _survival(hist, x)[0]


def _survival(hist: Histogram, x: float) -> tuple[float, bool]:
    """`survival_at` and whether it was read off a shape (an edge, the probit curve, or its slope continued);
    False where it is a straight line between the bucket's edges, which no shape supports."""
    total = hist.total
    if total <= 0:
        return math.nan, False
    return _survival_in(hist.bounds, [c / total for c in survival_counts(hist)], x)


def _survival_in(edges: tuple[float, ...], surv: list[float], x: float) -> tuple[float, bool]:
    """`_survival` from the shares beyond each edge (computed once where one curve is read many times)."""
    for i, edge in enumerate(edges):
        if x > edge:
            continue
        if x == edge:
            return surv[i], True
        lo_surv = surv[i - 1] if i > 0 else 1.0
        lo_edge = edges[i - 1] if i > 0 else 0.0
        if lo_edge <= 0:  # a bucket from 0 (or below): nothing is known about its shape
            return lo_surv + (surv[i] - lo_surv) * (x - lo_edge) / (edge - lo_edge), False
        if _probit_reads(surv, i):
            return 1 - float(ndtr(_probit_curve(edges, surv, i)(math.log(x)))), True
        if surv[i] == 0 and (continued := _slope_continued(edges, surv, i, x)) is not None:
            return continued, True
        w = math.log(x / lo_edge) / math.log(edge / lo_edge)
        return lo_surv + (surv[i] - lo_surv) * w, surv[i] == lo_surv
    return (surv[-1] if surv else 1.0), False  # beyond the last finite edge nothing finer is known


def _probit_reads(surv: list[float], i: int) -> bool:
    """Whether the probit curve reads bucket i (lower edge above 0): both its edges with 0 < S < 1."""
    return 0 < surv[i] <= surv[i - 1] < 1


def _probit_curve(edges: tuple[float, ...], surv: list[float], i: int) -> Callable[[float], float]:
    """z as a function of log x inside bucket (edges[i-1], edges[i]], both edges with 0 < S < 1: the Hermite
    cubic with Fritsch–Carlson slopes from the neighbouring edges that have a shape (0 < S < 1) too."""

    def point(k: int) -> tuple[float, float] | None:
        if 0 <= k < len(edges) and edges[k] > 0 and 0 < surv[k] < 1:
            return math.log(edges[k]), float(ndtri(1 - surv[k]))
        return None

    a, b = point(i - 1), point(i)
    assert a is not None and b is not None
    h = b[0] - a[0]
    secant = (b[1] - a[1]) / h

    def slope(mid: tuple[float, float], other: tuple[float, float] | None, toward_b: bool) -> float:
        if other is None:
            return secant  # no shape beyond: the secant, as the straight line would have
        h_other = abs(mid[0] - other[0])
        d_other = (mid[1] - other[1]) / (mid[0] - other[0])
        if d_other * secant <= 0:
            return 0.0
        w1, w2 = (2 * h + h_other, h + 2 * h_other) if toward_b else (2 * h_other + h, h_other + 2 * h)
        first, second = (d_other, secant) if toward_b else (secant, d_other)
        return (w1 + w2) / (w1 / first + w2 / second)

    da, db = slope(a, point(i - 2), True), slope(b, point(i + 1), False)

    def z(u: float) -> float:
        t = (u - a[0]) / h
        h00, h10, h01, h11 = 2 * t**3 - 3 * t**2 + 1, t**3 - 2 * t**2 + t, -2 * t**3 + 3 * t**2, t**3 - t**2
        return h00 * a[1] + h10 * h * da + h01 * b[1] + h11 * h * db

    return z


SPARSE_BEYOND = 5.0  # below this many requests expected beyond a bucket, its shape comes from the totals
BEND = 1.1  # in the running totals, a tail read less than 10% heavier than the curve is noise, not a bend


@dataclass(frozen=True)
class BlockShare:
    """A block's share of requests slower than x: the reading, and the range the reading leaves open, which
    the fail test sees at its lowest and the pass test at its highest. The range is the reading itself
    where a shape is behind it; the block's own shares beyond the edges of x's bucket where none is; and
    both readings where two shapes read the bucket differently (the block's slope continued and the totals)."""

    share: float
    low: float
    high: float


def block_share(
    hist: Histogram, shape: Histogram, x: float, baseline: tuple[Histogram, Histogram] | None = None
) -> BlockShare:
    """`survival_at` for one block's requests, where its own edges may say little of the shape inside x's
    bucket: fewer than SPARSE_BEYOND expected beyond the bucket's upper edge (judged from `shape`, the
    running totals, never from the block's counts), or no shape either side of the bucket in the block.
    There the block's share beyond the bucket's lower edge is split as `shape` splits the bucket, `shape`
    rescaled in latency to the block (`_totals_split`): the load may have moved every latency since the
    totals began, not their shape, and the estimate stays linear in the block's few counts. It counts as
    shaped only where the block has a shape there of its own: the totals of a load that moved are wider
    than any one block, so where they alone give the shape, only the bucket's bounds are sure.

    A block with no request beyond the upper edge yet, where the totals expect several, continues its slope
    from below; a slope that steepens beyond (two modes sharing the buckets) is then read too slow. There
    the totals' split, wider than the block where the load moved, is the second reading, and the range
    spans both: neither reading alone moves a test.

    With `baseline` (the baseline's block and running totals, whose curve placed x), two more readings:
    - a block with no request beyond the upper edge has the baseline's reading as its lowest
      (`_baseline_reading`): its own readings continue a slope from below, and a tail that steepens beyond
      (a slow path of its own) is read too heavy. Where the running totals too hold fewer than SPARSE_BEYOND
      requests beyond that edge, no count says where inside the bucket the tail lies (a narrow slow path
      below x has the counts of one beyond it): the lowest is the bucket's bound, nothing beyond x;
    - a block whose curve steepens across x's bucket (a slow path ending inside it, where no edge shows
      whether its requests lie below x or beyond) has as its highest the lower of two readings that agree
      the tail is heavier than the curve says: its slope from the bucket below continued, and the baseline's
      reading, where the running totals bend so too (`_bends`). A tail that bends as its own slope below
      does (a lognormal), or as the baseline's does (the baseline reshaped), keeps the curve's reading."""
    read = _block_share(hist, shape, x)
    i = _bucket_index(hist.bounds, x)
    if baseline is None or i is None or hist.total <= 0:
        return read
    block, totals = baseline
    surv = [c / hist.total for c in survival_counts(hist)]
    nothing_beyond = surv[i] == 0
    continued = _slope_continued(hist.bounds, surv, i, x)
    heavier = continued is not None and continued > read.high and _bends(shape, totals, x)
    if nothing_beyond and survival_counts(shape)[i] < SPARSE_BEYOND:
        read = BlockShare(read.share, 0.0, read.high)  # the bucket's bound: nothing beyond, in block or totals
    if not (nothing_beyond or heavier) or (matched := _baseline_reading(hist, block, totals, x)) is None:
        return read
    low = min(read.low, matched) if nothing_beyond else read.low
    high = max(read.high, min(matched, continued)) if heavier and continued is not None else read.high
    return BlockShare(read.share, low, high)


def _bends(shape: Histogram, baseline_totals: Histogram, x: float) -> bool:
    """Whether the running totals' curve steepens across x's bucket beyond what their slope below and the
    baseline's curve allow: both those readings at least BEND times the curve's. A block's readings are
    noisy; the totals decide that the bend is there, the block how heavy its tail is."""
    i = _bucket_index(shape.bounds, x)
    if i is None or shape.total <= 0:
        return False
    continued = _slope_continued(shape.bounds, [c / shape.total for c in survival_counts(shape)], i, x)
    curve = _block_share(shape, shape, x).high
    if continued is None or not continued > BEND * curve:
        return False
    matched = _baseline_reading(shape, baseline_totals, baseline_totals, x)
    return matched is not None and matched > BEND * curve


def _block_share(hist: Histogram, shape: Histogram, x: float) -> BlockShare:
    """`block_share` from the block's counts and its totals alone."""
    i = _bucket_index(hist.bounds, x)
    if i is None or hist.total <= 0:
        share = survival_at(hist, x)
        return BlockShare(share, share, share)
    beyond = survival_counts(hist)
    lowest, highest = beyond[i] / hist.total, beyond[i - 1] / hist.total
    own = _own_shape(hist, i)
    split = _totals_split(hist, shape, i, own and beyond[i] > 0)
    if split is None:
        read, shaped = _survival(hist, x)
        return BlockShare(read, read, read) if shaped else BlockShare(read, lowest, highest)
    scale, given = split
    part, split_shaped = _survival(shape, x / scale)
    share = min(highest * part / given if given > 0 else highest, highest)
    if not (split_shaped and own):
        return BlockShare(share, lowest, highest)
    if beyond[i] > 0 or _sparse(hist, shape, i):
        return BlockShare(share, share, share)
    read = survival_at(hist, x)  # the block's own slope continued (`own`: a shape), and the totals' split
    return BlockShare(read, min(read, share), max(read, share))


def _baseline_reading(hist: Histogram, reference: Histogram, reference_shape: Histogram, x: float) -> float | None:
    """`hist`'s share beyond x read off the reference's curve (`_block_share` with `reference_shape`),
    rescaled in latency to match `hist`'s share beyond the lower edge of x's bucket; None where nothing
    matches. The reference (the baseline, whose curve placed x) reads exactly a histogram that is it
    rescaled, one with a heavier tail below the truth and one with a lighter tail above it."""
    i = _bucket_index(hist.bounds, x)
    if i is None or hist.total <= 0:
        return None
    below = survival_counts(hist)[i - 1] / hist.total
    if not 0 < below < 1:
        return None
    u = locate(reference, below, reference_shape)
    if u is None:
        return None
    share = _block_share(reference, reference_shape, u * x / hist.bounds[i - 1]).share
    return share if math.isfinite(share) else None


def _slope_continued(edges: tuple[float, ...], surv: list[float], i: int, x: float) -> float | None:
    """The share beyond x inside bucket i with the probit slope of the bucket below continued from bucket i's
    lower edge; None where the two edges below give no slope (a share of 0 or 1, or a bucket from 0)."""
    if i < 2 or edges[i - 2] <= 0 or not 0 < surv[i - 1] < surv[i - 2] < 1:
        return None
    below, at = float(ndtri(1 - surv[i - 2])), float(ndtri(1 - surv[i - 1]))
    slope = (at - below) / math.log(edges[i - 1] / edges[i - 2])
    return max(1 - float(ndtr(at + slope * math.log(x / edges[i - 1]))), 0.0)


def _own_shape(hist: Histogram, i: int) -> bool:
    """Whether the histogram's own edges give bucket i a shape (the same for every x inside it)."""
    return _survival(hist, math.sqrt(hist.bounds[i - 1] * hist.bounds[i]))[1]


def _bucket_index(edges: tuple[float, ...], x: float) -> int | None:
    """The bucket (lower edge, upper edge] that holds x strictly inside, with a lower edge above 0."""
    i = next((k for k, edge in enumerate(edges) if x <= edge), None)
    return None if i is None or i == 0 or x == edges[i] or edges[i - 1] <= 0 else i


def _sparse(hist: Histogram, shape: Histogram, i: int) -> bool:
    """Whether the block expects fewer than SPARSE_BEYOND requests beyond bucket i, judged from `shape`."""
    return hist.total * survival_at(shape, hist.bounds[i]) < SPARSE_BEYOND


def _totals_split(hist: Histogram, shape: Histogram, i: int, own: bool) -> tuple[float, float] | None:
    """Where `block_share` splits bucket i as the totals split it: how much slower the block is than the
    totals (r, matched at the block's best-filled edge, its share beyond nearest one half: e / x where the
    totals hold that share beyond x; 1 where nothing matches) and the totals' share beyond the bucket's
    lower edge so rescaled. None where the block's own counts are read: enough requests expected beyond
    the bucket, and a shape of their own there (`own`)."""
    edges = hist.bounds
    if hist.total <= 0 or (own and not _sparse(hist, shape, i)):
        return None
    inside = [(e, c / hist.total) for e, c in zip(edges, survival_counts(hist), strict=True) if 0 < c < hist.total]
    scale = 1.0
    for edge, share in sorted(inside, key=lambda item: abs(item[1] - 0.5)):
        matched = locate(shape, share)
        if matched is not None and _survival(shape, matched)[1]:  # where the totals' curve has a shape
            scale = edge / matched
            break
    return scale, survival_at(shape, edges[i - 1] / scale)


def density(hist: Histogram, x: float) -> float:
    """The interpolated density of latency at x (share per ms), from `survival_at` around x."""
    lo, hi = survival_at(hist, x / 1.02), survival_at(hist, x * 1.02)
    return max(lo - hi, 0.0) / (x * (1.02 - 1 / 1.02))


def locate(hist: Histogram, share_above: float, shape: Histogram | None = None) -> float | None:
    """The latency x with `survival_at(hist, x) == share_above` (its inverse, by bisection in log x), or
    that of `block_share` with that shape.

    None where the buckets cannot place it: in the first bucket (from 0, no shape known) or beyond the last
    finite edge (the +Inf bucket), or with no requests.
    """
    total = hist.total
    if total <= 0 or not 0 < share_above < 1:
        return None
    surv = [c / total for c in survival_counts(hist)]
    lo_edge = 0.0
    for i, (edge, hi_surv) in enumerate(zip(hist.bounds, surv, strict=True)):
        if hi_surv <= share_above:
            if lo_edge <= 0:
                return None
            split = _totals_split(hist, shape, i, _own_shape(hist, i)) if shape is not None else None
            if shape is not None and split is not None and split[1] > 0:  # block_share's split, solved for x
                scale, given = split
                found = locate(shape, share_above * given / surv[i - 1])
                return found * scale if found is not None else None
            lo, hi = math.log(lo_edge), math.log(edge)
            slower = _slower_than(hist.bounds, surv, i, share_above)
            for _ in range(50):
                mid = (lo + hi) / 2
                if slower(mid):
                    lo = mid
                else:
                    hi = mid
            return math.exp((lo + hi) / 2)
        lo_edge = edge
    return None


def _slower_than(edges: tuple[float, ...], surv: list[float], i: int, share: float) -> Callable[[float], bool]:
    """Whether more than `share` is slower than exp(u) in bucket i (lower edge > 0): solved in z where the
    probit curve reads the bucket, where it is a cubic."""
    if _probit_reads(surv, i):
        curve, z = _probit_curve(edges, surv, i), float(ndtri(1 - share))
        return lambda u: curve(u) < z
    return lambda u: _survival_in(edges, surv, math.exp(u))[0] > share


def quantile_range(hist: Histogram, q: float) -> tuple[float, float] | None:
    """The bucket [lower edge, upper edge] that holds the q-quantile; None with no requests."""
    total = hist.total
    if total <= 0:
        return None
    rank = q * total
    running = 0
    lower = 0.0
    for edge, count in zip((*hist.bounds, math.inf), hist.counts, strict=True):
        running += count
        if running >= rank and count > 0:
            return (lower, edge)
        lower = edge
    return (lower, math.inf)


def interpolated_quantile(hist: Histogram, q: float) -> float:
    """What Prometheus' histogram_quantile returns (linear inside the bucket); for peers' judges only."""
    total = hist.total
    if total <= 0:
        return math.nan
    rank = q * total
    running = 0
    lower = 0.0
    for i, (edge, count) in enumerate(zip(hist.bounds, hist.counts, strict=False)):
        if running + count >= rank and count > 0:
            return lower + (edge - lower) * (rank - running) / count
        running += count
        lower = edge
        if i == len(hist.bounds) - 1:
            break
    return hist.bounds[-1] if hist.bounds else math.nan  # in +Inf: the highest finite bound, as Prometheus


def reference_edge(hist: Histogram, q: float) -> int | None:
    """Index of the edge whose share of slower requests is closest to 1 − q (on the log-odds scale).

    That edge is where a shift of the q-quantile moves the most requests across a bucket boundary.
    """
    total = hist.total
    if total <= 0:
        return None
    target = math.log((1 - q) / q)
    best: tuple[float, int] | None = None
    for i, above in enumerate(survival_counts(hist)):
        if 0 < above < total:
            s = above / total
            distance = abs(math.log(s / (1 - s)) - target)
            if best is None or distance < best[0]:
                best = (distance, i)
    return None if best is None else best[1]


@dataclass(frozen=True)
class Layout:
    """Whether two versions' bucket layouts can be compared, and on which edges."""

    bounds: tuple[float, ...]
    merged: bool  # true when the layouts differed and were reduced to their common edges


def common_layout(layouts: Sequence[tuple[float, ...]]) -> Layout | None:
    """The edges every layout has; None when they share none."""
    distinct = list(dict.fromkeys(layouts))  # a thousand pods share one or two layouts
    if not distinct:
        return None
    common = set(distinct[0])
    for other in distinct[1:]:
        common &= set(other)
    if not common:
        return None
    return Layout(tuple(sorted(common)), merged=len(distinct) > 1)


def merge(histograms: Sequence[Histogram]) -> Histogram | None:
    """The sum of histograms on the edges they all share; None when there are none or no shared edge."""
    layout = common_layout([h.bounds for h in histograms])
    if layout is None:
        return None
    columns = zip(*(rebucket(h, layout.bounds).counts for h in histograms), strict=True)
    return Histogram(layout.bounds, tuple(sum(column) for column in columns))


def rebucket(hist: Histogram, bounds: tuple[float, ...]) -> Histogram:
    """Merge adjacent buckets so the histogram has only `bounds` (a subset of its own edges)."""
    if hist.bounds == bounds:
        return hist
    cumulative = hist.cumulative()
    kept = {edge: cumulative[edge] for edge in (*bounds, math.inf)}
    return Histogram.from_cumulative(kept)
