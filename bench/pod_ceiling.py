"""The most any error-rate test can detect when the canary's pods are a random draw: a ceiling for a scenario.

A test that keeps false rollbacks at most α for canaries at the tolerance whose few pods are a random draw
of pod levels (the null docs/statistics.md states) must allow for the luck of those pods. This script asks
what an idealised judge could then detect: one look only, at a fixed minute (no price for looking every
interval), told the true between-pod spread τ (no price for estimating it from the baseline's pods), the
whole check's level on one normal test of the difference with the pod variance added. No real judge can
beat it, so where it falls short of a target, the target asks for more than the null allows. (It is
generous: its normal approximation rolls back more than its level of canaries at the tolerance, the last
column; a valid test would need a higher bar still.)

The traffic follows the simulated mesh (canary/sources/simulated.py): Poisson requests at the scenario's
rate, the canary's share at the first step's weight, each pod's error rate the version's times its own
lognormal level exp(N(0, error_spread)), drawn once per rollout.

    python bench/pod_ceiling.py --scenario errors-2.5x-pods-2-vs-18-50rps
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scenarios", default="bench/scenarios/default.json")
    parser.add_argument("--scenario", required=True, help="a scenario name with pods and an error_spread")
    parser.add_argument("--policy", default="policies/web-app.yaml")
    parser.add_argument("--runs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=1)
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
    at_tolerance = scenario.baseline.error_rate + metric.max_increase
    cases = (
        (scenario.canary.error_rate, check_level),
        (scenario.canary.error_rate, alpha),
        (at_tolerance, check_level),
    )
    print(f"| minute of the one look | detected at the check's level ({check_level:g}) | detected at the rollout's "
          f"α ({alpha:g}) | a canary at the tolerance rolled back, at the check's level |")  # fmt: skip
    print("| ---: | ---: | ---: | ---: |")
    for minutes in (10, 30, policy.max_duration_s / 60):
        row = [
            ceiling(
                rps=scenario.rps,
                share=policy.steps[0] / 100,
                minutes=minutes,
                rate_b=scenario.baseline.error_rate,
                rate_c=rate_c,
                margin=metric.max_increase,
                spread=scenario.pods.error_spread,
                pods_b=scenario.pods.baseline,
                pods_c=scenario.pods.canary,
                level=level,
                runs=args.runs,
                seed=args.seed,
            )
            for rate_c, level in cases
        ]
        print(f"| {minutes:g} | " + " | ".join(f"{100 * r:.1f}%" for r in row) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
