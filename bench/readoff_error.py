"""How far the latency read-off inside a bucket is off, with exact counts, for shapes other than a lognormal.

The judge reads the share of requests slower than a point between two bucket edges off a monotone cubic
through the edges (canary/stats/buckets.py, `survival_at`), and allows for it being off by
INTERPOLATION_ALLOWANCE of the requests in the point's bucket (docs/statistics.md, The allowance). This
script puts each shape on Istio's default buckets at 25 scales (20–600 ms: a lognormal's median, a gamma's
mean, the Weibull's and Lomax's scale parameter), reads it at 60 points from its p40 to its p99.5 with
counts so large they are exact, and reports per shape the worst error as a share of the bucket's requests
and how many points lie beyond the allowance, with the worst of those.

    python bench/readoff_error.py
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from canary.judges.sequential import INTERPOLATION_ALLOWANCE, _inside
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram
from canary.stats.buckets import survival_at

EDGES = tuple(ISTIO_LATENCY_BUCKETS_MS)
SHAPES: dict[str, Callable[[float], object]] = {
    **{f"lognormal, σ {s}": (lambda m, s=s: stats.lognorm(s, scale=m)) for s in (0.3, 0.5, 0.7, 1.0)},
    "gamma, shape 1.5": lambda m: stats.gamma(1.5, scale=m / 1.5),
    "gamma, shape 2": lambda m: stats.gamma(2, scale=m / 2),
    "gamma, shape 5": lambda m: stats.gamma(5, scale=m / 5),
    "Weibull, shape 0.8": lambda m: stats.weibull_min(0.8, scale=m),
    "Weibull, shape 1.5": lambda m: stats.weibull_min(1.5, scale=m),
    "Lomax (Pareto II), shape 3": lambda m: stats.lomax(3, scale=m),
    "shifted exponential": lambda m: stats.expon(loc=m / 2, scale=m / 2),
}


def exact_histogram(sf: Callable[[float], float], total: int = 10**12) -> Histogram:
    """Bucket counts of `total` requests whose survival function is `sf`, rounded: exact to 1e-12."""
    cdf = [0.0, *(1.0 - float(sf(e)) for e in EDGES), 1.0]
    return Histogram(EDGES, tuple(round((b - a) * total) for a, b in itertools.pairwise(cdf)))


def errors(shape: Callable[[float], object], scales: int, points: int) -> list[tuple[float, float, float]]:
    """(error as a share of the bucket's requests, the point's quantile, the scale) at every point read."""
    out = []
    for scale in np.geomspace(20, 600, scales):
        dist = shape(scale)
        hist = exact_histogram(dist.sf)  # type: ignore[attr-defined]
        for x in np.geomspace(dist.ppf(0.40), dist.ppf(0.995), points):  # type: ignore[attr-defined]
            if not EDGES[0] < x < EDGES[-1] or (mass := _inside(hist, float(x))) <= 1e-9:
                continue  # the first bucket is read linearly, and beyond the last nothing is read
            error = abs(survival_at(hist, float(x)) - float(dist.sf(x))) / mass  # type: ignore[attr-defined]
            out.append((error, float(dist.cdf(x)), float(scale)))  # type: ignore[attr-defined]
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scales", type=int, default=25)
    parser.add_argument("--points", type=int, default=60)
    args = parser.parse_args(argv)
    allowance = INTERPOLATION_ALLOWANCE
    print(f"| shape | worst error | points beyond {allowance:g} | worst of those at |")
    print("|---|---:|---:|---|")
    for name, shape in SHAPES.items():
        found = errors(shape, args.scales, args.points)
        worst = max(found)
        beyond = [e for e in found if e[0] > allowance]
        where = f"p{100 * worst[1]:.1f}, scale {worst[2]:.0f} ms" if beyond else ""
        print(f"| {name} | {worst[0]:.3f} | {len(beyond)} of {len(found)} | {where} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
