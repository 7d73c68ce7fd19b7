"""Latency histograms as Prometheus keeps them: counts per `le` bucket, nothing finer.

Decisions are made only at bucket edges, where counts are exact. Where the tolerance needs the
baseline's distribution between two edges (the share of requests slower than edge / 1.1, say), the
survival function is interpolated log-log linearly inside that bucket, as if the bucket held a small
Pareto piece; this follows both the body and the tail of latency distributions far better than the
linear interpolation `histogram_quantile` uses. Reported quantiles are bucket ranges, never a point
inside a bucket.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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
    """Share of requests slower than x, interpolated log-log inside the bucket that holds x."""
    total = hist.total
    if total <= 0:
        return math.nan
    edges = hist.bounds
    surv = [c / total for c in survival_counts(hist)]
    if x <= 0:
        return 1.0
    for i, edge in enumerate(edges):
        if x == edge:
            return surv[i]
        if x < edge:
            lo_edge = edges[i - 1] if i > 0 else 0.0
            lo_surv = surv[i - 1] if i > 0 else 1.0
            hi_surv = surv[i]
            if lo_edge <= 0:  # first bucket: linear from (0, 1)
                return lo_surv + (hi_surv - lo_surv) * x / edge
            w = math.log(x / lo_edge) / math.log(edge / lo_edge)
            if lo_surv <= 0 or hi_surv <= 0:
                return lo_surv + (hi_surv - lo_surv) * w
            return math.exp(math.log(lo_surv) + (math.log(hi_surv) - math.log(lo_surv)) * w)
    return surv[-1] if surv else 1.0  # beyond the last finite edge nothing finer is known


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
    if not layouts:
        return None
    first = layouts[0]
    common = set(first)
    for other in layouts[1:]:
        common &= set(other)
    if not common:
        return None
    bounds = tuple(sorted(common))
    return Layout(bounds, merged=any(layout != first for layout in layouts[1:]))


def rebucket(hist: Histogram, bounds: tuple[float, ...]) -> Histogram:
    """Merge adjacent buckets so the histogram has only `bounds` (a subset of its own edges)."""
    if hist.bounds == bounds:
        return hist
    cumulative = hist.cumulative()
    kept = {edge: cumulative[edge] for edge in (*bounds, math.inf)}
    return Histogram.from_cumulative(kept)
