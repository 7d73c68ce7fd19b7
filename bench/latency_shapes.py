"""Latency checks against canaries of another shape: false rollbacks at the tolerance, and power beyond it.

Each case names a baseline latency distribution (a lognormal or a mixture of them), a canary distribution
*exactly at the tolerance of one named quantile* (solved numerically: Q_c(q) = (1 + m) Q_b(q)) or a given
factor beyond it, pods with their own levels, traffic and the canary's share. Every run feeds the real
`SequentialJudge` (a one-quantile policy at α = 0.05) one interval after another, as Prometheus would,
with per-pod bucket counts over Istio's edges, and records whether and when it failed or passed.

    python bench/latency_shapes.py --runs 400 --workers 2 --json bench/results-shapes.json
    python bench/latency_shapes.py --runs 100 --only wider-p95
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.optimize import brentq
from scipy.special import gammainc, ndtr

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection import clopper_pearson

from canary.judges.sequential import SequentialJudge
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, MetricWindow, Observation, Outcome
from canary.policy import parse_policy

EDGES = np.asarray(ISTIO_LATENCY_BUCKETS_MS)
POLICY = """
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {{name: shapes}}
spec:
  target: {{namespace: default, virtualService: web, host: web.default.svc.cluster.local}}
  minRequests: 0
  analysis: {{alpha: 0.05}}
  metrics:
    - {{name: latency, kind: latency, quantiles: [{{quantile: {q}, maxIncrease: {m}}}]}}
"""


@dataclass(frozen=True)
class Mixture:
    """Latency as a mixture: (weight, scale ms, shape[, family]) parts. A lognormal (the default family) has
    its median as scale and sigma as shape; "gamma" and "weibull" take scipy's scale and shape, "lomax"
    (Pareto II, a heavy tail: survival (1 + x / scale)^-shape) its scale and tail index."""

    parts: tuple[tuple[float, float, float] | tuple[float, float, float, str], ...]

    def cdf(self, x: np.ndarray | float, scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        out = np.zeros_like(x)
        for w, size, shape, *family in self.parts:
            kind = family[0] if family else "lognormal"
            if kind == "lognormal":
                out = out + w * ndtr((np.log(x) - math.log(size * scale)) / shape)
            elif kind == "gamma":
                out = out + w * gammainc(shape, x / (size * scale))
            elif kind == "lomax":
                out = out + w * (1 - (1 + x / (size * scale)) ** -shape)
            else:  # weibull
                out = out + w * (1 - np.exp(-((x / (size * scale)) ** shape)))
        return out

    def quantile(self, q: float) -> float:
        return float(brentq(lambda x: float(self.cdf(x)) - q, 1e-6, 1e9, xtol=1e-9))

    def scaled(self, factor: float) -> Mixture:
        return Mixture(tuple((w, size * factor, shape, *family) for w, size, shape, *family in self.parts))

    def bucket_probabilities(self, scale: float) -> np.ndarray:
        cdf = self.cdf(EDGES, scale)
        full = np.concatenate([[0.0], cdf, [1.0]])
        return np.clip(np.diff(full), 0.0, 1.0)


def at_quantile(shape: Mixture, target_ms: float, q: float) -> Mixture:
    """`shape` rescaled so that its q-quantile is `target_ms`."""
    return shape.scaled(target_ms / shape.quantile(q))


@dataclass(frozen=True)
class Case:
    name: str
    baseline: Mixture
    canary_shape: Mixture  # rescaled so that its q-quantile sits at factor × (1 + m) × the baseline's
    q: float
    m: float
    factor: float = 1.0  # 1.0: exactly at the tolerance (a null case); above 1: beyond it
    rps: float = 100.0
    share: float = 0.1
    pods: tuple[int, int] = (10, 2)  # baseline, canary
    pod_spread: float = 0.0  # sd of log latency between pods
    intervals: int = 60
    load_swing: float = 0.3  # service-wide latency drift, the same for both versions
    traffic_fall: float = 0.0  # the request rate falls linearly by this share over the intervals
    load_trend: tuple[float, float] | None = None  # the latency's scale from first to last interval (no swing)

    def canary(self) -> Mixture:
        return at_quantile(self.canary_shape, self.factor * (1 + self.m) * self.baseline.quantile(self.q), self.q)


@dataclass
class Result:
    name: str
    runs: int
    fails: int = 0
    passes: int = 0
    fail_minutes: list[int] = field(default_factory=list)
    pass_minutes: list[int] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        low, high = clopper_pearson(self.fails, self.runs)
        return {
            "case": self.name,
            "runs": self.runs,
            "fail_rate": self.fails / self.runs,
            "fail_ci95": [low, high],
            "pass_rate": self.passes / self.runs,
            "median_fail_min": float(np.median(self.fail_minutes)) if self.fail_minutes else None,
            "median_pass_min": float(np.median(self.pass_minutes)) if self.pass_minutes else None,
        }


def run_case(case: Case, runs: int, seed: int) -> Result:
    rng = np.random.default_rng(seed)
    policy = parse_policy(POLICY.format(q=case.q, m=case.m), "shapes.yaml")
    judge = SequentialJudge(policy)
    canary = case.canary()
    result = Result(case.name, runs)
    for _ in range(runs):
        levels = [np.exp(rng.normal(0.0, case.pod_spread, k)) for k in case.pods]
        state = judge.start()
        passed = False
        for minute in range(1, case.intervals + 1):
            load = 1.0 + case.load_swing * math.sin(minute / 5)
            if case.load_trend is not None:
                first, last = case.load_trend
                load = first + (last - first) * (minute - 1) / max(case.intervals - 1, 1)
            windows = []
            for version, (shape, share, pod_levels) in enumerate(
                ((case.baseline, 1 - case.share, levels[0]), (canary, case.share, levels[1]))
            ):
                rps = case.rps * (1 - case.traffic_fall * (minute - 1) / case.intervals)
                n = rng.poisson(rps * 60 * share)
                per_pod = rng.multinomial(n, np.full(len(pod_levels), 1 / len(pod_levels)))
                samples = {}
                for i, (count, level) in enumerate(zip(per_pod, pod_levels, strict=True)):
                    probs = shape.bucket_probabilities(load * level)
                    counts = rng.multinomial(count, probs / probs.sum())
                    samples[f"v{version}-{i}"] = Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(int(c) for c in counts))
                windows.append(samples)
            observation = Observation(0.0, 60.0, {"latency": MetricWindow(windows[0], windows[1])})
            state, judgement = judge.judge(state, observation, 0)
            if judgement.outcome is Outcome.FAIL:
                result.fails += 1
                result.fail_minutes.append(minute)
                break
            if judgement.outcome is Outcome.PASS and not passed:
                passed = True
                result.passes += 1
                result.pass_minutes.append(minute)
    return result


LN = Mixture(((1.0, 80.0, 0.5),))


def cases() -> list[Case]:
    """Null cases (canary exactly at the tolerance, shape changed) for each named quantile, then power."""
    wide, narrow = Mixture(((1.0, 80.0, 0.6),)), Mixture(((1.0, 80.0, 0.4),))
    narrower = Mixture(((1.0, 80.0, 0.25),))  # denser at the point: pod levels move its share the more (κ > 1)
    bimodal = Mixture(((0.85, 60.0, 0.3), (0.15, 250.0, 0.35)))
    heavy = Mixture(((0.97, 80.0, 0.45), (0.03, 400.0, 0.8)))
    heavy_wider = Mixture(((0.97, 80.0, 0.5), (0.03, 400.0, 0.9)))
    fast_long = Mixture(((0.9, 60.0, 0.35), (0.1, 200.0, 0.7)))
    gamma, weibull = Mixture(((1.0, 40.0, 2.0, "gamma"),)), Mixture(((1.0, 90.0, 1.5, "weibull"),))
    growing = Mixture(((0.98, 80.0, 0.5), (0.02, 240.0, 0.6)))  # a slow path of 2% the baseline lacks
    out: list[Case] = []
    for q, m in ((0.5, 0.1), (0.95, 0.2), (0.99, 0.25)):  # the shipped policy's tolerances
        tag = f"p{100 * q:g}"
        out += [
            Case(f"scaled-{tag}", LN, LN, q, m),
            Case(f"wider-{tag}", LN, wide, q, m),
            Case(f"narrower-{tag}", LN, narrow, q, m),
            Case(f"faster-median-longer-tail-{tag}", LN, fast_long, q, m),
            Case(f"bimodal-baseline-{tag}", bimodal, bimodal.scaled(1.0), q, m),
            Case(f"heavy-tail-baseline-wider-canary-{tag}", heavy, heavy_wider, q, m),
            Case(f"pods-2-vs-10-spread-{tag}", LN, wide, q, m, pods=(10, 2), pod_spread=0.05),
            Case(f"pods-2-vs-18-spread-{tag}", LN, wide, q, m, pods=(18, 2), pod_spread=0.05),
            Case(f"pods-2-vs-10-narrower-{tag}", LN, narrower, q, m, rps=1000, pods=(10, 2), pod_spread=0.1),
            # the latency drifts with the load while traffic falls: the totals' scale is not the block's
            Case(f"narrower-falling-traffic-{tag}", LN, narrower, q, m, rps=1000, traffic_fall=0.9),
            Case(f"narrower-falling-traffic-100rps-{tag}", LN, narrower, q, m, traffic_fall=0.9),
            Case(f"narrower-1000rps-{tag}", LN, narrower, q, m, rps=1000),
            Case(f"narrower-load-falling-200rps-{tag}", LN, narrower, q, m, rps=200, load_trend=(1.3, 0.7)),
            Case(f"sparse-20rps-{tag}", LN, wide, q, m, rps=20),
            Case(f"gamma-baseline-wider-canary-{tag}", gamma, Mixture(((1.0, 60.0, 1.5, "gamma"),)), q, m),
            Case(f"weibull-baseline-lognormal-canary-{tag}", weibull, LN, q, m),
            Case(f"tail-growing-{tag}", LN, growing, q, m),
        ]
        out += [
            Case(f"twice-beyond-scaled-{tag}", LN, LN, q, m, factor=(1 + 2 * m) / (1 + m)),
            Case(f"twice-beyond-wider-{tag}", LN, wide, q, m, factor=(1 + 2 * m) / (1 + m)),
        ]
    # Added later, after every case above (a case's seed is its place in this list): a narrow slow path of 3%
    # inside the bucket of p99's point, whose requests the buckets cannot place (docs/statistics.md).
    slow_path = Mixture(((0.97, 80.0, 0.5), (0.03, 380.0, 0.08)))
    for swing, rps, tag in ((0.3, 100.0, "p99"), (0.0, 1000.0, "steady-load-1000rps-p99")):
        out += [
            Case(f"slow-path-in-bucket-{tag}", LN, slow_path, 0.99, 0.25, rps=rps, load_swing=swing),
            Case(f"twice-beyond-slow-path-in-bucket-{tag}", LN, slow_path, 0.99, 0.25, 1.2, rps, load_swing=swing),
        ]
    # Its twin: the slow path around 290 ms, within tolerance (p99 +17%), with the same bucket counts to within
    # 0.005 percentage points at a steady load. Not rescaled: `factor` puts its p99 where it is.
    twin = Mixture(((0.97, 80.0, 0.5), (0.03, 290.0, 0.05)))
    within = twin.quantile(0.99) / (1.25 * LN.quantile(0.99))
    out.append(Case("slow-path-in-bucket-within-tolerance-steady-load-p99", LN, twin, 0.99, 0.25, within, load_swing=0))
    # Added later still: at 1,000 req/s the pass test resolves what the read-off is off by (docs/statistics.md):
    # shapes whose p95 point lies inside the 500-1000 ms bucket, at the tolerance and just beyond it.
    far = {"gamma-5": Mixture(((1.0, 60.0, 5.0, "gamma"),)), "weibull-1.5": Mixture(((1.0, 300.0, 1.5, "weibull"),))}
    for name, shape in far.items():
        for factor, tag in ((1.0, ""), (1.02, "-2%-beyond"), (1.05, "-5%-beyond")):
            out.append(Case(f"{name}-1000rps{tag}-p95", shape, shape, 0.95, 0.2, factor, 1000.0, load_swing=0.0))
    # Found by an outside audit: a heavy-tailed baseline and a narrow canary, nearly all of it in the bucket
    # of p95's point, which a block matched to its totals on a straight line read far too slow.
    lomax, narrow_canary = Mixture(((1.0, 50.0, 2.0, "lomax"),)), Mixture(((1.0, 150.0, 0.2),))
    out.append(Case("lomax-baseline-narrow-canary-p95", lomax, narrow_canary, 0.95, 0.2, load_swing=0.0))
    return out


def _summary(job: tuple[Case, int, int]) -> dict[str, object]:
    return run_case(*job).summary()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--only", action="append", default=[])
    parser.add_argument("--json", dest="json_out")
    parser.add_argument("--workers", type=int, default=1, help="processes (the same seeds, the same figures)")
    args = parser.parse_args(argv)
    started = time.time()
    jobs = [
        (case, args.runs, args.seed + i) for i, case in enumerate(cases()) if not args.only or case.name in args.only
    ]
    out = []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for summary in pool.map(_summary, jobs):
            out.append(summary)
            print(json.dumps(summary), flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(out, indent=2))
    print(f"{len(out)} cases x {args.runs} runs in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
