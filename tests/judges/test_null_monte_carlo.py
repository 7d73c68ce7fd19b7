"""Monte Carlo: the sequential judge's false rollbacks at the null boundary, from the definition of the null.

Each case is a canary *exactly at the tolerance* (the least favourable canary the null allows), or one within
it whose bucket counts are those of a canary twice beyond (a narrow slow path inside a bucket): latency with
another shape than the baseline's but its named quantile exactly (1 + m) times the baseline's, error rates
exactly baseline + margin with pods whose levels differ, and sparse counts; latency whose scale moves with
the load while traffic falls. Fixed seeds, 400 replications of 30 one-minute intervals each; the upper 95%
Clopper–Pearson bound of the false-rollback rate must be at most 1.5 α, and that of the share of rollouts
whose step passed at most 1.5 times the pass level (a canary at the tolerance is the least favourable one).
The cases and the simulators are the benchmarks' (bench/latency_shapes.py, bench/pod_spread.py), whose
full figures are in docs/statistics.md.
"""

from __future__ import annotations

import math
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import latency_shapes  # noqa: E402
import pod_spread  # noqa: E402
from detection import clopper_pearson  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]  # the module fixture runs every case once

ALPHA = 0.05
PASS_ALPHA = 0.2  # the policy's default passAlpha
RUNS = 400
INTERVALS = 30
LATENCY_CASES = [
    "wider-p50",
    "narrower-p95",
    "faster-median-longer-tail-p50",
    "faster-median-longer-tail-p95",
    "tail-growing-p99",
    "pods-2-vs-10-spread-p95",
    "pods-2-vs-18-spread-p50",
    "sparse-20rps-p99",
    "pods-2-vs-10-narrower-p50",
    "narrower-1000rps-p50",
    "narrower-load-falling-200rps-p50",
    "narrower-falling-traffic-100rps-p95",
    "bimodal-baseline-p99",  # the p99 on a slow path's flank, the point in a bucket with nothing beyond it
    "lomax-baseline-narrow-canary-p95",  # nearly every canary request in the point's bucket, a heavy-tailed baseline
]
# Within tolerance, with the bucket counts of a canary twice beyond it: a narrow slow path inside the bucket
# of p99's point (the least favourable canaries the buckets can show are not only those at the tolerance).
WITHIN_CASES = ["slow-path-in-bucket-within-tolerance-steady-load-p99"]


def _latency(name: str) -> tuple[str, int, int, int]:
    case = next(c for c in latency_shapes.cases() if c.name == name)
    seed = 1000 + [*LATENCY_CASES, *WITHIN_CASES].index(name)
    result = latency_shapes.run_case(replace(case, intervals=INTERVALS), RUNS, seed)
    return name, result.fails, result.runs, result.passes


def _errors(spec: tuple[str, int, float, float, float]) -> tuple[str, int, int, int]:
    """Error rates exactly at baseline + 0.5 pp for the version; each pod's rate is the version's times a
    level drawn afresh per rollout (mean 1, log-sd `spread`), traffic spread evenly over the pods."""
    name, baseline_pods, spread, rps, base_rate = spec
    case = pod_spread.PodCase(baseline_pods, 2, spread, rps, base_rate, INTERVALS)
    fails, passes, _ = pod_spread.rollouts(case, RUNS, 2000 + [c[0] for c in ERROR_CASES].index(name))
    return name, fails, RUNS, passes


ERROR_CASES = [
    ("errors-pods-2-vs-10-spread-0.3", 10, 0.3, 100.0, 0.01),
    ("errors-pods-2-vs-18-spread-0.3", 18, 0.3, 100.0, 0.01),
    ("errors-sparse-0.1%-20rps", 6, 0.0, 20.0, 0.001),
    ("errors-pods-2-vs-2-spread-0.3", 2, 0.3, 100.0, 0.01),  # 2 baseline pods: their whole dispersion
]


@pytest.fixture(scope="module")
def measured() -> dict[str, tuple[int, int, int]]:
    """Per case: false rollbacks, runs, and runs whose step passed (all of it one step)."""
    with ProcessPoolExecutor(max_workers=2) as pool:
        results = [*pool.map(_latency, LATENCY_CASES + WITHIN_CASES), *pool.map(_errors, ERROR_CASES)]
    for name, fails, runs, passes in results:
        print(f"{name}: {fails}/{runs} false rollbacks, upper 95% bound {clopper_pearson(fails, runs)[1]:.3f}; "
              f"{passes} passes, upper bound {clopper_pearson(passes, runs)[1]:.3f}")  # fmt: skip
    return {name: (fails, runs, passes) for name, fails, runs, passes in results}


@pytest.mark.parametrize("name", LATENCY_CASES + WITHIN_CASES + [c[0] for c in ERROR_CASES])
def test_a_canary_exactly_at_the_tolerance_is_rarely_rolled_back(
    measured: dict[str, tuple[int, int, int]], name: str
) -> None:
    fails, runs, _ = measured[name]
    upper = clopper_pearson(fails, runs)[1]
    assert upper <= 1.5 * ALPHA, f"{name}: {fails}/{runs} false rollbacks, upper 95% bound {upper:.3f}"


@pytest.mark.parametrize("name", LATENCY_CASES + [c[0] for c in ERROR_CASES])
def test_a_canary_exactly_at_the_tolerance_rarely_passes_its_step(
    measured: dict[str, tuple[int, int, int]], name: str
) -> None:
    """The pass level is a wrong step's chance: a canary at the tolerance is the least favourable one."""
    _, runs, passes = measured[name]
    upper = clopper_pearson(passes, runs)[1]
    assert upper <= 1.5 * PASS_ALPHA, f"{name}: {passes}/{runs} passes, upper 95% bound {upper:.3f}"


def test_the_cases_are_at_the_tolerance_by_construction() -> None:
    """The latency canaries' named quantile is (1 + m) times the baseline's, to a part in a million."""
    for name in LATENCY_CASES:
        case = next(c for c in latency_shapes.cases() if c.name == name)
        ratio = case.canary().quantile(case.q) / case.baseline.quantile(case.q)
        assert math.isclose(ratio, 1 + case.m, rel_tol=1e-6), name
