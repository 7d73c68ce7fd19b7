"""The Flagger-style judge: canary-only thresholds each interval, failed checks counted over the rollout,
no data as a failure, and a whole simulated rollout."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from judging import Running

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.judges import make_judge
from canary.judges.flagger import FlaggerJudge, success_rate
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, MetricWindow, Observation, Outcome, Ratio
from canary.policy import (
    Analysis,
    CustomRatioMetric,
    ErrorRateMetric,
    FlaggerSettings,
    LatencyMetric,
    Policy,
    QuantileTolerance,
    Target,
    load_policy,
)
from canary.scenario import builtin_scenario

TARGET = Target("default", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")


def make_policy(threshold: int = 5) -> Policy:
    return Policy(
        name="test",
        target=TARGET,
        metrics=(
            ErrorRateMetric("error-rate", max_increase=0.005),
            LatencyMetric("latency", (QuantileTolerance(0.5, 0.1),)),
        ),
        analysis=Analysis(judge="flagger", flagger=FlaggerSettings(threshold=threshold)),
    )


def histogram(buckets: Mapping[float, int]) -> Histogram:
    """Requests per bucket, keyed by the bucket's upper edge (ms) on Istio's layout."""
    counts = [0] * (len(ISTIO_LATENCY_BUCKETS_MS) + 1)
    for edge, n in buckets.items():
        counts[ISTIO_LATENCY_BUCKETS_MS.index(edge)] = n
    return Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(counts))


FAST = histogram({100: 1000})  # p99 = 50 + 50 × 0.99 = 99.5 ms
SLOW = histogram({100: 900, 1000: 100})  # p99 in 500–1000 ms: 500 + 500 × 0.9 = 950 ms


def observe(
    canary_errors: Ratio | None,
    canary_latency: Histogram | None,
    baseline_errors: Ratio | None = None,
    baseline_latency: Histogram | None = None,
) -> Observation:
    def pods(sample: Ratio | Histogram | None) -> dict[str, Ratio | Histogram]:
        return {} if sample is None else {"pod-0": sample}

    return Observation(
        0,
        60,
        {
            "error-rate": MetricWindow(baseline=pods(baseline_errors), canary=pods(canary_errors)),
            "latency": MetricWindow(baseline=pods(baseline_latency), canary=pods(canary_latency)),
        },
    )


GOOD = observe(Ratio(5, 1000), FAST)  # 99.5% success, p99 99.5 ms
ERRORS = observe(Ratio(20, 1000), FAST)  # 98% success
SLOW_P99 = observe(Ratio(0, 1000), SLOW)
BOTH_BAD = observe(Ratio(20, 1000), SLOW)
NO_TRAFFIC = observe(None, None)


def outcomes(judge: FlaggerJudge, observations: list[Observation], step: int = 0) -> list[Outcome]:
    return [judge.judge(o, step).outcome for o in observations]


def test_an_interval_where_every_check_passes_advances() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    judgement = judge.judge(GOOD, 0)
    assert judgement.outcome is Outcome.PASS
    assert [v.metric for v in judgement.verdicts] == ["error-rate success rate", "latency p99"]
    assert judgement.verdicts[0].figures["success_rate"] == pytest.approx(99.5)
    assert judgement.verdicts[1].figures["p99_ms"] == pytest.approx(99.5)
    assert judge.state.failed_checks == 0


def test_success_rate_below_the_minimum_is_a_failed_check() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    judgement = judge.judge(ERRORS, 0)
    assert judgement.outcome is Outcome.CONTINUE
    assert judgement.verdicts[0].outcome is Outcome.FAIL
    assert "98.00% below the minimum 99%" in judgement.verdicts[0].summary
    assert judge.state.failed_checks == 1


def test_success_rate_exactly_at_the_minimum_passes() -> None:
    assert success_rate({"p": Ratio(10, 1000)}) == 99.0
    assert Running(FlaggerJudge(make_policy())).judge(observe(Ratio(10, 1000), FAST), 0).outcome is Outcome.PASS


def test_p99_above_the_maximum_is_a_failed_check() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    judgement = judge.judge(SLOW_P99, 0)
    assert judgement.verdicts[1].outcome is Outcome.FAIL
    assert judgement.verdicts[1].figures["p99_ms"] == pytest.approx(950.0)
    assert judge.state.failed_checks == 1


def test_no_data_counts_as_a_failed_check() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    judgement = judge.judge(NO_TRAFFIC, 0)
    assert [v.outcome for v in judgement.verdicts] == [Outcome.NO_DATA, Outcome.NO_DATA]
    assert "counts as a failed check" in judgement.verdicts[0].summary
    assert judge.state.failed_checks == 1
    assert judge.judge(observe(Ratio(0, 0), histogram({})), 0).outcome is Outcome.CONTINUE
    assert judge.state.failed_checks == 2


def test_an_interval_counts_once_however_many_checks_fail() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    judge.judge(BOTH_BAD, 0)
    assert judge.state.failed_checks == 1


def test_rolls_back_when_failed_checks_reach_the_threshold() -> None:
    judge = Running(FlaggerJudge(make_policy(threshold=5)))
    assert outcomes(judge, [ERRORS] * 4) == [Outcome.CONTINUE] * 4
    fifth = judge.judge(ERRORS, 0)
    assert fifth.outcome is Outcome.FAIL
    assert fifth.summary.startswith("Flagger-style checks: 5 of 5 failed checks, threshold reached")


def test_failed_checks_accumulate_over_passing_intervals_and_steps() -> None:
    judge = Running(FlaggerJudge(make_policy(threshold=3)))
    assert outcomes(judge, [ERRORS, GOOD], step=0) == [Outcome.CONTINUE, Outcome.PASS]
    assert outcomes(judge, [SLOW_P99, GOOD], step=1) == [Outcome.CONTINUE, Outcome.PASS]
    assert outcomes(judge, [NO_TRAFFIC], step=2) == [Outcome.FAIL]


def test_the_baseline_is_never_looked_at() -> None:
    judge = Running(FlaggerJudge(make_policy()))
    # The canary is far worse than a perfect baseline, yet under the fixed thresholds: it passes.
    worse = observe(Ratio(9, 1000), histogram({250: 1000}), Ratio(0, 1000), histogram({10: 1000}))
    assert judge.judge(worse, 0).outcome is Outcome.PASS
    # The canary is exactly as good as a baseline that is itself over the thresholds: it fails.
    same = observe(Ratio(20, 1000), SLOW, Ratio(20, 1000), SLOW)
    assert judge.judge(same, 0).outcome is Outcome.CONTINUE
    assert judge.state.failed_checks == 1


def test_metrics_without_a_flagger_check_are_refused_not_skipped() -> None:
    """A custom metric has no Flagger built-in check: the judge says so, so validate and run refuse the policy
    instead of judging part of it."""
    policy = make_policy()
    judge = FlaggerJudge(policy)
    assert judge.checks
    assert all(judge.refuses(m) is None for m in policy.metrics)
    custom = CustomRatioMetric("tcp", 'events{version="{version}"}', 'total{version="{version}"}', 0.01)
    assert judge.refuses(custom) == "the flagger judge has built-in checks for error-rate and latency metrics only"


@st.composite
def ratios(draw: st.DrawFn) -> Ratio:
    trials = draw(st.integers(0, 10_000))
    return Ratio(draw(st.integers(0, trials)), trials)


BUCKETS = len(ISTIO_LATENCY_BUCKETS_MS) + 1
histograms = st.lists(st.just(0) | st.integers(0, 2_000), min_size=BUCKETS, max_size=BUCKETS).map(
    lambda counts: Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(counts))
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(["p0", "p1"]), ratios(), max_size=2),
            st.dictionaries(st.sampled_from(["p0", "p1"]), histograms, max_size=2),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_never_crashes_or_returns_nan_on_arbitrary_counts(
    ticks: list[tuple[dict[str, Ratio], dict[str, Histogram]]],
) -> None:
    judge = Running(FlaggerJudge(make_policy(threshold=3)))
    for errors, latency in ticks:
        observation = Observation(
            0, 60, {"error-rate": MetricWindow({}, dict(errors)), "latency": MetricWindow({}, dict(latency))}
        )
        judgement = judge.judge(observation, 0)
        assert judgement.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.CONTINUE)
        for verdict in judgement.verdicts:
            values = [v for v in verdict.figures.values() if isinstance(v, float)]
            assert all(math.isfinite(v) for v in values)
            assert "nan" not in verdict.summary.lower()
    assert judge.state.failed_checks <= len(ticks)


def test_make_judge_runs_a_whole_simulated_rollout_to_a_finished_phase() -> None:
    policy = load_policy(Path(__file__).parents[2] / "policies" / "web-app.yaml")
    assert isinstance(make_judge(policy, "flagger"), FlaggerJudge)
    rollout = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit(), judge="flagger")
    assert rollout.runner.judge.name == "flagger"
    result = rollout.runner.run()
    assert result.phase.ended
    assert result.judgement is not None
