"""The most any error-rate test can detect when the canary's pods are a random draw: a ceiling for a scenario.

A test that keeps false rollbacks at most α for canaries at the tolerance whose few pods are a random draw
of pod levels (the null docs/statistics.md states) must allow for the luck of those pods. This script asks
what an idealised judge could then detect: one look only, at a fixed minute (no price for looking every
interval), told the true between-pod spread τ (no price for estimating it from the baseline's pods), the
whole check's level on one normal test of the difference with the pod variance added. No real judge can
beat it, so where it falls short of a target, the target asks for more than the null allows. (It is
generous: its normal approximation rolls back more than its level of canaries at the tolerance, the last
column; a valid test would need a higher bar still.)

With `--spread-unknown` it asks the same of a test that is not told τ and must hold its level whatever τ
is: for each τ* on a grid, the Neyman–Pearson test of "the canary at the tolerance, pods spread τ*"
against the scenario itself (both told the baseline's rate, the pods' counts seen at one look) is the most
powerful there is at the check's level; a test valid for every τ is one of the tests valid at τ*, so none
detects more than the least of them. Where that least is above a target, the target is not ruled out by
this bound (a sequential test pays more; this says nothing about how much).

The traffic follows the simulated mesh (canary/sources/simulated.py): Poisson requests at the scenario's
rate, the canary's share at the first step's weight, each pod's error rate the version's times its own
lognormal level exp(N(0, error_spread)), drawn once per rollout.

    python bench/pod_ceiling.py --scenario errors-2.5x-pods-2-vs-18-50rps
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
from scipy.special import gammaln
from scipy.stats import norm

from canary.policy import ErrorRateMetric, load_policy
from canary.scenario import load_scenarios


def ceiling(
    *, rps: float, share: float, minutes: float, rate_b: float, rate_c: float, margin: float,
    spread: float, pods_b: int, pods_c: int, level: float, runs: int, seed: int,
) -> float:  # fmt: skip
    """The share of rollouts the idealised one-look, known-τ test calls worse than tolerated."""
    rng = np.random.default_rng(seed)
    seconds = 60.0 * minutes
    n_c = rng.poisson(rps * share * seconds, runs)
    n_b = rng.poisson(rps * (1 - share) * seconds, runs)
    level_c = np.exp(rng.normal(0.0, spread, (runs, pods_c))).mean(axis=1)
    level_b = np.exp(rng.normal(0.0, spread, (runs, pods_b))).mean(axis=1)
    errors_c = rng.binomial(n_c, np.minimum(rate_c * level_c, 1.0))
    errors_b = rng.binomial(n_b, np.minimum(rate_b * level_b, 1.0))
    excess = errors_c / n_c - errors_b / n_b - margin
    # The null's least favourable canary sits at the tolerance: its pods spread (rate_b + margin) / rate_b
    # times as much as the baseline's.
    scale = (rate_b + margin) / rate_b
    pod_var = (rate_b * spread) ** 2 * (scale**2 / pods_c + 1.0 / pods_b)
    noise_var = (rate_b + margin) * (1 - rate_b - margin) / n_c + rate_b * (1 - rate_b) / n_b
    return float((excess > norm.isf(level) * np.sqrt(noise_var + pod_var)).mean())


_NODES, _WEIGHTS = np.polynomial.hermite_e.hermegauss(60)
_WEIGHTS = _WEIGHTS / _WEIGHTS.sum()


def _log_likelihood(errors: np.ndarray, expected: float, spread: float) -> np.ndarray:
    """log P(errors) of one pod expecting `expected` errors at level 1, its level exp(N(0, spread)) averaged
    out (Gauss–Hermite); Poisson counts."""
    lam = expected * np.exp(spread * _NODES)[None, :]
    terms = errors[:, None] * np.log(lam) - lam - gammaln(errors[:, None] + 1)
    top = terms.max(axis=1, keepdims=True)
    return top[:, 0] + np.log((np.exp(terms - top) * _WEIGHTS).sum(axis=1))


def spread_unknown_ceiling(
    *, rps: float, share: float, minutes: float, rate_b: float, rate_c: float, margin: float,
    spread: float, pods_b: int, pods_c: int, level: float, runs: int, seed: int, taus: Sequence[float],
) -> tuple[float, float]:  # fmt: skip
    """The least over τ* in `taus` of the Neyman–Pearson power at one look, and the τ* that gives it."""
    rng = np.random.default_rng(seed)
    seconds = 60.0 * minutes
    base = [rps * (1 - share) * seconds / pods_b * rate_b] * pods_b  # expected errors per pod at level 1
    null_c = [rps * share * seconds / pods_c * (rate_b + margin)] * pods_c
    alt_c = [rps * share * seconds / pods_c * rate_c] * pods_c

    def draw(canary: list[float], tau: float) -> list[np.ndarray]:
        return [rng.poisson(mu * np.exp(rng.normal(0.0, tau, runs))) for mu in [*base, *canary]]

    def statistic(counts: list[np.ndarray], tau: float) -> np.ndarray:
        pairs = zip(counts, [*base, *alt_c], [*base, *null_c], strict=True)
        return sum(_log_likelihood(e, a, spread) - _log_likelihood(e, n, tau) for e, a, n in pairs)  # type: ignore[return-value]

    alternative = draw(alt_c, spread)
    powers = []
    for tau in taus:
        bar = np.quantile(statistic(draw(null_c, tau), tau), 1 - level)
        powers.append((float((statistic(alternative, tau) > bar).mean()), tau))
    return min(powers)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="bench/scenarios/default.json")
    parser.add_argument("--scenario", required=True, help="a scenario name with pods and an error_spread")
    parser.add_argument("--policy", default="policies/web-app.yaml")
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--spread-unknown", action="store_true", help="the bound for a test not told the spread")
    args = parser.parse_args(argv)
    scenario = next(s for s in load_scenarios(args.scenarios) if s.name == args.scenario)
    policy = load_policy(args.policy)
    metric = next(m for m in policy.metrics if isinstance(m, ErrorRateMetric))
    alpha = policy.analysis.alpha
    check_level = alpha / len(policy.metrics)  # the error-rate check's Bonferroni share
    print(
        f"{scenario.name}: {scenario.rps:g} req/s, canary at {policy.steps[0]}%, {scenario.pods.canary} canary "
        f"pods against {scenario.pods.baseline}, pod spread {scenario.pods.error_spread:g}, error rates "
        f"{scenario.baseline.error_rate:g} / {scenario.canary.error_rate:g}, tolerance +{metric.max_increase:g}"
    )
    minutes_grid = (10, 30, policy.max_duration_s / 60)
    common = dict(
        rps=scenario.rps, share=policy.steps[0] / 100, rate_b=scenario.baseline.error_rate,
        margin=metric.max_increase, spread=scenario.pods.error_spread, pods_b=scenario.pods.baseline,
        pods_c=scenario.pods.canary, runs=args.runs, seed=args.seed,
    )  # fmt: skip
    if args.spread_unknown:
        taus = (0.0, *np.geomspace(0.02, 1.0, 12))
        print(f"| minute of the one look | at most detected, at the check's level ({check_level:g}) | the least "
              f"favourable τ* | at most detected, at the rollout's α ({alpha:g}) |")  # fmt: skip
        print("| ---: | ---: | ---: | ---: |")
        for minutes in minutes_grid:
            at_check = spread_unknown_ceiling(
                **common, minutes=minutes, rate_c=scenario.canary.error_rate, level=check_level, taus=taus
            )
            at_alpha = spread_unknown_ceiling(
                **common, minutes=minutes, rate_c=scenario.canary.error_rate, level=alpha, taus=taus
            )
            print(f"| {minutes:g} | {100 * at_check[0]:.1f}% | {at_check[1]:.3g} | {100 * at_alpha[0]:.1f}% |")
        return 0
    at_tolerance = scenario.baseline.error_rate + metric.max_increase
    cases = (
        (scenario.canary.error_rate, check_level),
        (scenario.canary.error_rate, alpha),
        (at_tolerance, check_level),
    )
    print(f"| minute of the one look | detected at the check's level ({check_level:g}) | detected at the rollout's "
          f"α ({alpha:g}) | a canary at the tolerance rolled back, at the check's level |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: |")
    for minutes in minutes_grid:
        row = [ceiling(**common, minutes=minutes, rate_c=rate_c, level=level) for rate_c, level in cases]
        print(f"| {minutes:g} | " + " | ".join(f"{100 * r:.1f}%" for r in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
