"""How fast any test of a named latency quantile can catch a slower canary: a ceiling for a scenario.

A latency check that holds α for canaries of any shape at the tolerance tests one thing: the share of
canary requests slower than (1 + m) times the baseline's q-quantile, against 1 − q (docs/statistics.md).
This script asks how fast an idealised judge of that null could roll a scenario's canary back: told the
baseline's exact q-quantile and every canary request's exact latency (no buckets to read inside, no
baseline quantile to estimate, no pods), judging each minute's counts beyond the exact point. Two judges:
- `sprt`: Wald's sequential probability ratio test told the canary's true share beyond the point, against
  the null's boundary share 1 − q (the fastest anytime-valid test of the share: it knows the alternative);
- `mixture`: the judge's own one-sided normal-mixture boundary (canary/stats/confidence.py) on the same exact
  counts, its scale set as the judge sets it (what not knowing the alternative costs).
Each at the check's level (the policy's α split over its metrics and a metric's quantiles, as the judge
splits it) and at the whole α (what that split costs). No real judge of the named quantile beats the first
row, so where it needs more than twice the boundary oracle's time, issue 8's 2× target asks for more than
a test of the named quantile at its share of α can give; the oracle is told the canary's whole latency
distribution and the one it is tested against, on every bucket, at the whole α.

The traffic follows the simulated mesh: Poisson requests at the scenario's rate, the canary's share at the
first step's weight, latencies lognormal (the scenario's median and σ).

    python bench/quantile_ceiling.py --scenario latency+20%-50rps
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence

import numpy as np
from scipy.stats import norm

from canary.policy import LatencyMetric, load_policy
from canary.scenario import load_scenarios
from canary.stats.confidence import Evidence, half_width


def minutes_to_fail(
    *, per_minute: float, share_c: float, boundary: float, effect: float, alpha: float, judge: str,
    minutes: int, runs: int, seed: int,
) -> np.ndarray:  # fmt: skip
    """For each rollout, the minute the judge rolls it back (inf if it does not within `minutes`)."""
    rng = np.random.default_rng(seed)
    n = rng.poisson(per_minute, (runs, minutes))
    k = rng.binomial(n, share_c)
    out = np.full(runs, math.inf)
    if judge == "sprt":
        llr = np.cumsum(k * math.log(share_c / boundary) + (n - k) * math.log((1 - share_c) / (1 - boundary)), axis=1)
        hit = llr >= math.log(1 / alpha)
        first = hit.argmax(axis=1)
        out[hit.any(axis=1)] = first[hit.any(axis=1)] + 1
        return out
    p = boundary if boundary < 0.5 else 0.5  # as the judge: the least favourable canary at 1 − q
    rho = 1.0 / effect**2
    for r in range(runs):
        evidence = Evidence()
        for minute in range(minutes):
            if n[r, minute] == 0:
                continue
            variance = p * (1 - p) / n[r, minute]
            evidence = evidence.add(k[r, minute] / n[r, minute] - boundary, variance, 1.0 / variance)
            if evidence.estimate - half_width(evidence, rho, alpha) > 0:
                out[r] = minute + 1
                break
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="bench/scenarios/default.json")
    parser.add_argument("--scenario", required=True, help="a scenario whose canary is slower (lognormal)")
    parser.add_argument("--policy", default="policies/web-app.yaml")
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--within", type=float, default=2.0, help="minutes: twice the boundary oracle's median")
    args = parser.parse_args(argv)
    policy = load_policy(args.policy)
    scenario = next(s for s in load_scenarios(args.scenarios) if s.name == args.scenario)
    metrics = [m for m in policy.metrics if isinstance(m, LatencyMetric)]
    if not metrics:
        raise SystemExit(f"{args.policy}: no latency metric")
    base, can = scenario.baseline.latency, scenario.canary.latency
    per_minute = scenario.rps * 60 * policy.steps[0] / 100
    minutes = int(policy.max_duration_s // 60)
    print(f"{scenario.name}: {per_minute:.0f} canary requests a minute; {args.runs} rollouts of {minutes} min each")
    within = f"by {args.within:g} min"
    print(f"{'check':<14}{'share beyond':>14}{'judge':>9}{'level':>14}{'detected':>10}{'median':>9}{within:>12}")
    for metric in metrics:
        for tolerance in metric.quantiles:
            q, m = tolerance.quantile, tolerance.max_increase
            point = (1 + m) * base.median_ms * math.exp(base.sigma * norm.ppf(q))
            share_c = float(norm.sf(math.log(point / can.median_ms) / can.sigma))
            boundary = 1 - q
            if share_c <= boundary:
                print(f"{metric.name} p{100 * q:g}: within tolerance ({100 * share_c:.2f}% beyond)")
                continue
            effect = float(norm.sf(norm.ppf(q) - math.log(1 + m) / base.sigma)) - boundary
            check_alpha = policy.analysis.alpha / len(policy.metrics) / len(metric.quantiles)
            for judge in ("sprt", "mixture"):
                for label, alpha in (("check", check_alpha), ("whole", policy.analysis.alpha)):
                    t = minutes_to_fail(
                        per_minute=per_minute, share_c=share_c, boundary=boundary, effect=effect, alpha=alpha,
                        judge=judge, minutes=minutes, runs=args.runs, seed=args.seed,
                    )  # fmt: skip
                    detected = np.isfinite(t).mean()
                    median = float(np.median(t))
                    print(
                        f"{metric.name + f' p{100 * q:g}':<14}{100 * share_c:>13.1f}%{judge:>9}"
                        f"{label + f' {alpha:.4f}':>14}{100 * detected:>9.1f}%"
                        f"{(f'{median:.0f} min' if math.isfinite(median) else '-'):>9}"
                        f"{100 * (t <= args.within).mean():>11.1f}%"
                    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
