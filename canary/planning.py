"""`canary plan`: before a rollout, what the policy can decide at a given traffic, from the judge itself.

A team learns before deploying whether 10 req/s can show +0.5 pp in an hour. The answers come from the
same statistics that will decide the rollout: the policy's real judge on the embedded simulated mesh, fed
traffic at the given rate with the given baseline (error rate, latency, pods), seeds fixed:
- for a canary equal to the baseline, how long each step takes to pass (the median over seeds), and
  whether it promotes before the deadline;
- per check, the smallest regression that is rolled back before the deadline in at least 80% of the seeds
  (POWER, the power tests are usually planned for): errors +Δ percentage points, or latency Δ slower at
  every quantile (a scale shift), found by bisection.
With 5 seeds and "in most of them", a lucky draw once said +0.67 pp is caught at 100 req/s where 19-40%
of rollouts caught it; 20 seeds is the default.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtri

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.errors import CanaryError
from canary.judges.sequential import WHOLE_DISPERSION_BELOW, PodLimit, place, pod_limit
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, Phase
from canary.policy import ErrorRateMetric, LatencyMetric, Policy
from canary.scenario import Behaviour, Lognormal, Pods, Scenario
from canary.sources.simulated import SimulatedMesh, bucket_probabilities

POWER = 0.8  # the share of rollouts that must roll a regression back for it to count as caught
SEEDS = 20


@dataclass(frozen=True)
class Baseline:
    """What the baseline is assumed to look like."""

    rps: float
    error_rate: float = 0.01
    median_ms: float = 80.0
    sigma: float = 0.5
    pods: tuple[int, int] = (6, 2)  # baseline, canary


@dataclass(frozen=True)
class Plan:
    promoted_share: float  # of the seeds, how many promoted a canary equal to the baseline
    step_minutes: tuple[float | None, ...]  # median time to pass each step (None: not passed in most seeds)
    total_minutes: float | None
    smallest: dict[str, str]  # per check kind: the smallest regression rolled back before the deadline, in words
    smallest_increase: dict[str, float | None]  # the same as a number (error rate: absolute; latency: relative)
    undecidable: tuple[str, ...]  # latency tolerances Istio's buckets cannot resolve at this baseline, and why
    notes: tuple[str, ...] = ()  # what the figures assume that the baseline given may break


def _scenario(base: Baseline, canary: Behaviour, name: str) -> Scenario:
    baseline = Behaviour(base.error_rate, Lognormal(base.median_ms, base.sigma))
    return Scenario(name=name, rps=base.rps, baseline=baseline, canary=canary,
                    pods=Pods(baseline=base.pods[0], canary=base.pods[1]))  # fmt: skip


def plan(policy: Policy, base: Baseline, *, seeds: int = SEEDS, progress: Callable[[str], None] | None = None) -> Plan:
    policy, skipped = _simulated_part(policy)
    healthy = Behaviour(base.error_rate, Lognormal(base.median_ms, base.sigma))
    if progress:
        progress(f"{seeds} rollouts of a canary equal to the baseline")
    results = [simulated_rollout(policy, _scenario(base, healthy, "plan"), seed=s, audit=MemoryAudit()).runner.run()
               for s in range(seeds)]  # fmt: skip
    promoted = [r for r in results if r.phase is Phase.PROMOTED]
    steps = []
    for i in range(len(policy.steps) - 1):
        times = [r.step_seconds[i] / 60 for r in promoted if len(r.step_seconds) > i]
        steps.append(statistics.median(times) if len(times) * 2 > seeds else None)
    total = statistics.median([r.duration_s / 60 for r in promoted]) if len(promoted) * 2 > seeds else None
    smallest: dict[str, str] = {}
    increase: dict[str, float | None] = {}
    if any(isinstance(m, ErrorRateMetric) for m in policy.metrics):
        if progress:
            progress("the smallest error-rate regression rolled back (a bisection)")
        found = _smallest(policy, base, seeds, lambda d: dataclasses.replace(healthy, error_rate=base.error_rate + d),
                          low=0.0, high=0.5)  # fmt: skip
        smallest["error-rate"] = f"+{100 * found:.2f} pp" if found is not None else "none up to +50 pp"
        increase["error-rate"] = found
    if any(isinstance(m, LatencyMetric) for m in policy.metrics):
        if progress:
            progress("the smallest latency regression rolled back (a bisection)")
        found = _smallest(
            policy, base, seeds,
            lambda d: dataclasses.replace(healthy, latency=Lognormal(base.median_ms * (1 + d), base.sigma)),
            low=0.0, high=3.0,
        )  # fmt: skip
        smallest["latency"] = f"+{100 * found:.0f}% slower" if found is not None else "none up to 4x slower"
        increase["latency"] = found
    return Plan(
        len(promoted) / seeds,
        tuple(steps),
        total,
        smallest,
        increase,
        tuple(undecidable(policy, base.median_ms, base.sigma)),
        (*skipped, *_pod_notes(*base.pods)),
    )


def _simulated_part(policy: Policy) -> tuple[Policy, tuple[str, ...]]:
    """The policy's metrics the simulated mesh serves, each with the alpha it has in the whole policy (alpha is
    split evenly over the metrics), and a note for each it cannot plan."""
    served = tuple(m for m in policy.metrics if SimulatedMesh.refuses(m) is None)
    if len(served) == len(policy.metrics):
        return policy, ()
    if not served:
        raise CanaryError("canary plan simulates error-rate and latency metrics only, and the policy has neither")
    notes = tuple(f"{m.name}: not planned (a custom metric, which the simulated mesh does not serve); the "
                  "figures are the other metrics' at the alpha they have in the whole policy"
                  for m in policy.metrics if m not in served)  # fmt: skip
    alpha = policy.analysis.alpha * len(served) / len(policy.metrics)
    analysis = dataclasses.replace(policy.analysis, alpha=alpha)
    return dataclasses.replace(policy, metrics=served, analysis=analysis), notes


def _pod_notes(baseline_pods: int, canary_pods: int) -> tuple[str, ...]:
    """What the pods given cost the guarantee (`pod_limit`, the rule the judge's verdicts follow)."""
    limit = pod_limit(baseline_pods, canary_pods, WHOLE_DISPERSION_BELOW)
    if limit is None:
        return ()
    if limit is PodLimit.UNMEASURED:
        return ("1 baseline pod: how pods differ cannot be measured, and the checks assume pods alike",)
    if limit is PodLimit.WHOLE:
        return (f"{baseline_pods} baseline pods: the error-rate check bounds how pods differ by their whole "
                "spread, sampling noise included, and decides more slowly than with more baseline replicas; the "
                "latency checks bound it only roughly (docs/statistics.md, Pods)",)  # fmt: skip
    return (f"{baseline_pods} baseline pods against {canary_pods}: too few to bound how pods differ; where the "
            "pods' error rates differ, a canary exactly at the tolerance was rolled back at or just above the "
            "policy's alpha (docs/statistics.md, Pods): more baseline replicas restore the guarantee",)  # fmt: skip


def _expected(median_ms: float, sigma: float) -> Histogram:
    """A lognormal latency's expected counts over Istio's buckets, as from a billion requests."""
    shares = bucket_probabilities(Behaviour(0.0, Lognormal(median_ms, sigma)), np.ones(1))[0]
    return Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(round(1e9 * float(s)) for s in shares))


def undecidable(policy: Policy, median_ms: float, sigma: float) -> list[str]:
    """The latency checks the buckets cannot resolve for a lognormal baseline of that median and spread:
    the judge's own test (`place`) on the baseline's expected counts."""
    baseline = _expected(median_ms, sigma)
    out = []
    for metric in policy.metrics:
        if isinstance(metric, LatencyMetric):
            for tol in metric.quantiles:
                placed = place(baseline, tol.quantile, tol.max_increase)
                if isinstance(placed, str):
                    out.append(
                        f"{metric.name} p{100 * tol.quantile:g} +{100 * tol.max_increase:g}%: undecidable: {placed}"
                    )
    return out


def undecidable_ranges(policy: Policy, sigma: float = 0.5) -> list[str]:
    """For `canary validate`, knowing nothing of the service: per latency tolerance, where on Istio's
    buckets the baseline's quantile may lie for the tolerance to be undecidable (a lognormal of that
    spread, its quantile moved from 1 ms to 10 s)."""
    out = []
    grid = [10 ** (k / 40) for k in range(161)]  # 1 ms .. 10 s, 40 points per decade
    for metric in policy.metrics:
        if not isinstance(metric, LatencyMetric):
            continue
        for tol in metric.quantiles:
            z = float(ndtri(tol.quantile))
            bad = [x for x in grid if isinstance(place(_expected(x / math.exp(sigma * z), sigma), tol.quantile,
                                                       tol.max_increase), str)]  # fmt: skip
            if bad:
                out.append(
                    f"{metric.name} p{100 * tol.quantile:g} +{100 * tol.max_increase:g}%: undecidable with Istio's "
                    f"buckets where the baseline's p{100 * tol.quantile:g} lies at {_ranges(bad, grid)} (a lognormal "
                    f"latency, spread {sigma:g}); such a check ends inconclusive: use finer buckets or a larger "
                    "tolerance (`canary plan` shows it for a given baseline)"
                )
    return out


def _ranges(points: list[float], grid: list[float]) -> str:
    """Grid points as merged ranges, '150–250 ms, 1500–2500 ms'."""
    step = grid[1] / grid[0]
    spans: list[list[float]] = []
    for x in points:
        if spans and x / spans[-1][1] < step * 1.001:
            spans[-1][1] = x
        else:
            spans.append([x, x])
    return ", ".join(f"{_ms(a)}–{_ms(b)} ms" if a != b else f"{_ms(a)} ms" for a, b in spans)


def _ms(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


def _caught(policy: Policy, base: Baseline, seeds: int, canary: Behaviour) -> bool:
    """Rolled back before the deadline in at least POWER of the seeds."""
    scenario = dataclasses.replace(_scenario(base, canary, "plan-regression"), expect="rollback")
    rolled = sum(
        simulated_rollout(policy, scenario, seed=100 + s, audit=MemoryAudit()).runner.run().phase is Phase.ROLLED_BACK
        for s in range(seeds)
    )
    return rolled >= math.ceil(POWER * seeds - 1e-9)


def _smallest(
    policy: Policy, base: Baseline, seeds: int, regress: Callable[[float], Behaviour], *, low: float, high: float
) -> float | None:
    """Bisection (6 rounds, on a log scale above low) for the smallest regression caught (`_caught`)."""
    if not _caught(policy, base, seeds, regress(high)):
        return None
    lo, hi = low, high
    for _ in range(6):
        mid = math.sqrt(max(lo, high / 1000) * hi)
        if _caught(policy, base, seeds, regress(mid)):
            hi = mid
        else:
            lo = mid
    return hi
