"""The embedded simulated mesh: traffic follows the router, counts look like Istio's, and seeds reproduce."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import pytest
from helpers import memory_router
from judging import Running
from scipy import stats

from canary.errors import ScenarioError
from canary.judges.sequential import SequentialJudge
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, Observation, Outcome, Ratio, Weights
from canary.policy import (
    CustomRatioMetric,
    ErrorRateMetric,
    LatencyMetric,
    Policy,
    QuantileTolerance,
    Target,
    parse_policy,
)
from canary.routers.memory import MemoryRouter
from canary.scenario import Scenario, parse_scenario
from canary.sources.simulated import SimulatedMesh, Slice, bucket_probabilities

T0 = 1_767_225_600.0
TARGET = Target(
    namespace="default", virtual_service="web-app", host="web-app.default.svc.cluster.local", baseline="v1", canary="v2"
)
ERRORS = ErrorRateMetric(name="error-rate", max_increase=0.005)
LATENCY = LatencyMetric(name="latency", quantiles=(QuantileTolerance(0.5, 0.1),))
METRICS = (ERRORS, LATENCY)


def scenario(**changes: Any) -> Scenario:
    data: dict[str, Any] = {
        "name": "test",
        "rps": 200,
        "baseline": {"error_rate": 0.02, "latency_ms": {"median": 80, "sigma": 0.5}},
        "canary": {"error_rate": 0.05, "latency_ms": {"median": 120, "sigma": 0.5}},
        "pods": {"baseline": 3, "canary": 2},
    }
    data.update(changes)
    return parse_scenario(data)


def mesh(canary_weight: int, seed: int = 1, **changes: Any) -> tuple[SimulatedMesh, MemoryRouter]:
    router = memory_router(TARGET, canary_weight)
    return SimulatedMesh(scenario(**changes), router, TARGET, start=T0, seed=seed), router


def canary_share(sim: SimulatedMesh, since: float = T0) -> float:
    chosen = [s for s in sim.slices if s.start >= since]
    canary = sum(int(s.requests["v2"].sum()) for s in chosen)
    total = canary + sum(int(s.requests["v1"].sum()) for s in chosen)
    return canary / total


def ratios(observation: Observation, version: str) -> dict[str, Ratio]:
    window = observation.metrics["error-rate"]
    samples = window.baseline if version == "v1" else window.canary
    out = {pod: sample for pod, sample in samples.items() if isinstance(sample, Ratio)}
    assert len(out) == len(samples)
    return out


def histograms(observation: Observation, version: str) -> dict[str, Histogram]:
    window = observation.metrics["latency"]
    samples = window.baseline if version == "v1" else window.canary
    out = {pod: sample for pod, sample in samples.items() if isinstance(sample, Histogram)}
    assert len(out) == len(samples)
    return out


def canary_error_rate(chosen: list[Slice]) -> float:
    return sum(int(s.errors["v2"].sum()) for s in chosen) / sum(int(s.requests["v2"].sum()) for s in chosen)


def judge_policy() -> Policy:
    text = """
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {name: t}
spec:
  target: {namespace: default, virtualService: web-app, host: web-app.default.svc.cluster.local}
  metrics:
    - {name: error-rate, kind: error-rate, maxIncrease: 0.005}
    - {name: latency, kind: latency, quantiles: [{quantile: 0.5, maxIncrease: 0.1}]}
"""
    return parse_policy(text, "t.yaml")


def test_traffic_follows_the_router_weights_as_they_change() -> None:
    sim, router = mesh(canary_weight=20)
    sim.advance(T0 + 600, slice_s=1)
    assert canary_share(sim) == pytest.approx(0.20, abs=0.01)
    router.edit(TARGET, Weights.canary_at(50))
    sim.advance(T0 + 1200, slice_s=1)
    assert canary_share(sim, since=T0 + 600) == pytest.approx(0.50, abs=0.01)


@pytest.mark.parametrize(("weight", "empty"), [(0, "v2"), (100, "v1")])
def test_a_version_at_weight_zero_gets_no_requests(weight: int, empty: str) -> None:
    sim, _ = mesh(canary_weight=weight)
    sim.advance(T0 + 120, slice_s=10)
    assert all(int(s.requests[empty].sum()) == 0 for s in sim.slices)
    assert sim.served(empty) == (0, 0)


def test_requests_arrive_at_the_scenario_rate() -> None:
    sim, _ = mesh(canary_weight=10)
    sim.advance(T0 + 600, slice_s=60)
    total = sum(sim.served(v)[0] for v in ("v1", "v2"))
    assert total == pytest.approx(200 * 600, rel=0.02)  # Poisson sd is 0.3% here


def test_counts_are_per_pod_with_istio_workload_pod_names() -> None:
    sim, _ = mesh(canary_weight=50)
    observation = sim.observe(TARGET.scope, METRICS, T0, T0 + 600)
    baseline, canary = ratios(observation, "v1"), ratios(observation, "v2")
    assert list(baseline) == ["web-app-v1-0", "web-app-v1-1", "web-app-v1-2"]
    assert list(canary) == ["web-app-v2-0", "web-app-v2-1"]
    assert list(histograms(observation, "v1")) == list(baseline)
    for version, pods in (("v1", baseline), ("v2", canary)):
        requests, errors = sim.served(version)
        assert sum(r.trials for r in pods.values()) == requests
        assert sum(r.events for r in pods.values()) == errors
        mean = requests / len(pods)
        assert all(abs(r.trials - mean) < 0.05 * mean for r in pods.values()), "pods share a version's traffic"


def test_error_rates_follow_the_scenario() -> None:
    sim, _ = mesh(canary_weight=50)
    sim.advance(T0 + 1200, slice_s=60)
    for version, rate in (("v1", 0.02), ("v2", 0.05)):
        requests, errors = sim.served(version)
        assert errors / requests == pytest.approx(rate, abs=0.004)


def test_latency_histograms_use_istio_default_buckets_and_total_the_requests() -> None:
    sim, _ = mesh(canary_weight=50)
    observation = sim.observe(TARGET.scope, METRICS, T0, T0 + 300)
    for version in ("v1", "v2"):
        pods = ratios(observation, version)
        for pod, histogram in histograms(observation, version).items():
            assert histogram.bounds == ISTIO_LATENCY_BUCKETS_MS
            assert len(histogram.counts) == len(ISTIO_LATENCY_BUCKETS_MS) + 1
            assert histogram.total == pods[pod].trials
            assert histogram.cumulative()[math.inf] == pods[pod].trials


@pytest.mark.parametrize(("version", "median"), [("v1", 80.0), ("v2", 120.0)])
def test_latency_buckets_match_the_lognormal_cdf(version: str, median: float) -> None:
    """Checked against scipy's lognormal directly: the share of requests at or below 100 ms and 250 ms."""
    sim, _ = mesh(canary_weight=50)
    observation = sim.observe(TARGET.scope, METRICS, T0, T0 + 1200)
    merged = sum(histograms(observation, version).values(), Histogram(ISTIO_LATENCY_BUCKETS_MS, (0,) * 20))
    cumulative = merged.cumulative()
    for edge in (100, 250):
        expected = stats.lognorm.cdf(edge, s=0.5, scale=median)
        assert cumulative[edge] / merged.total == pytest.approx(expected, abs=0.01)


def test_bucket_probabilities_are_lognormal_bucket_masses() -> None:
    behaviour = scenario().baseline
    probs = bucket_probabilities(behaviour, np.array([1.0, 2.0]))
    edges = np.array([0.0, *ISTIO_LATENCY_BUCKETS_MS, np.inf])
    for row, scale in zip(probs, (1.0, 2.0), strict=True):
        expected = np.diff(stats.lognorm.cdf(edges, s=0.5, scale=80 * scale))
        np.testing.assert_allclose(row, expected, atol=1e-12)
        assert row.sum() == pytest.approx(1.0)


def test_a_slow_tail_is_mixed_in_by_its_fraction() -> None:
    behaviour = scenario(
        canary={"latency_ms": {"median": 80, "sigma": 0.5}, "tail": {"fraction": 0.1, "median": 2000, "sigma": 0.3}}
    ).canary
    probs = bucket_probabilities(behaviour, np.array([1.0]))[0]
    edges = np.array([0.0, *ISTIO_LATENCY_BUCKETS_MS, np.inf])
    expected = 0.9 * np.diff(stats.lognorm.cdf(edges, s=0.5, scale=80)) + 0.1 * np.diff(
        stats.lognorm.cdf(edges, s=0.3, scale=2000)
    )
    np.testing.assert_allclose(probs, expected, atol=1e-12)


def test_an_error_burst_raises_the_rate_only_while_it_lasts() -> None:
    burst = {"start_s": 120, "duration_s": 60, "error_rate": 0.5}
    sim, _ = mesh(canary_weight=50, canary={"error_rate": 0.01, "latency_ms": {"median": 80}, "error_burst": burst})
    sim.advance(T0 + 300, slice_s=10)
    during = [s for s in sim.slices if T0 + 120 <= s.start < T0 + 180]
    after = [s for s in sim.slices if s.start >= T0 + 180]
    assert canary_error_rate(during) == pytest.approx(0.5, abs=0.05)
    assert canary_error_rate(after) < 0.05


def test_no_traffic_to_the_canary_gives_all_zero_samples_and_no_data() -> None:
    sim, _ = mesh(canary_weight=0)
    observation = sim.observe(TARGET.scope, METRICS, T0, T0 + 60)
    assert set(ratios(observation, "v2").values()) == {Ratio(0, 0)}
    assert all(h.total == 0 for h in histograms(observation, "v2").values())
    judgement = Running(SequentialJudge(judge_policy())).judge(observation, 0)
    assert judgement.outcome is Outcome.NO_DATA
    assert {v.outcome for v in judgement.verdicts} == {Outcome.NO_DATA}


def test_an_empty_window_gives_empty_samples_and_no_data() -> None:
    sim, _ = mesh(canary_weight=10)
    observation = sim.observe(TARGET.scope, METRICS, T0, T0)
    for window in observation.metrics.values():
        assert (dict(window.baseline), dict(window.canary)) == ({}, {})
    assert Running(SequentialJudge(judge_policy())).judge(observation, 0).outcome is Outcome.NO_DATA


def test_a_silent_mesh_serves_nothing() -> None:
    sim, _ = mesh(canary_weight=50, rps=0)
    sim.advance(T0 + 600, slice_s=60)
    assert sim.served("v1") == sim.served("v2") == (0, 0)


def test_the_same_seed_gives_identical_counts() -> None:
    first, _ = mesh(canary_weight=10, seed=7)
    second, _ = mesh(canary_weight=10, seed=7)
    assert first.observe(TARGET.scope, METRICS, T0, T0 + 300) == second.observe(TARGET.scope, METRICS, T0, T0 + 300)
    other, _ = mesh(canary_weight=10, seed=8)
    assert other.observe(TARGET.scope, METRICS, T0, T0 + 300) != first.observe(TARGET.scope, METRICS, T0, T0 + 300)


def test_observe_only_counts_slices_inside_the_window() -> None:
    sim, _ = mesh(canary_weight=50)
    sim.observe(TARGET.scope, METRICS, T0, T0 + 60)
    second = sim.observe(TARGET.scope, METRICS, T0 + 60, T0 + 120)
    in_window = [s for s in sim.slices if s.start >= T0 + 60]
    assert sum(r.trials for r in ratios(second, "v1").values()) == sum(int(s.requests["v1"].sum()) for s in in_window)


def test_another_service_is_refused() -> None:
    sim, _ = mesh(canary_weight=10)
    other = replace(TARGET, virtual_service="shop", host="shop.default.svc.cluster.local")
    with pytest.raises(ScenarioError) as caught:
        sim.observe(other.scope, METRICS, T0, T0 + 60)
    assert (
        str(caught.value)
        == "the simulated mesh serves web-app.default.svc.cluster.local, not shop.default.svc.cluster.local"
    )


def test_custom_metrics_are_refused_with_the_metric_named() -> None:
    sim, _ = mesh(canary_weight=10)
    custom = CustomRatioMetric(name="checkouts", events="e", total="t", max_increase=0.01)
    with pytest.raises(ScenarioError) as caught:
        sim.observe(TARGET.scope, (custom,), T0, T0 + 60)
    assert str(caught.value) == "metric 'checkouts': the simulated mesh serves error-rate and latency metrics only"
