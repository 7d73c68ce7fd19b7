"""The Kayenta-style judge: Kayenta's classification on per-interval series, the weighted score, critical
metrics, the minimum number of intervals, no data, and a whole simulated rollout."""

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
from canary.judges.kayenta import Allowed, Classification, KayentaJudge, classify
from canary.model import (
    ISTIO_LATENCY_BUCKETS_MS,
    Histogram,
    MetricWindow,
    Observation,
    Outcome,
    Ratio,
    Sample,
)
from canary.policy import (
    Analysis,
    ErrorRateMetric,
    KayentaSettings,
    LatencyMetric,
    Policy,
    QuantileTolerance,
    Target,
    load_policy,
)
from canary.scenario import builtin_scenario

TARGET = Target("default", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")
LATENCY = 0.10  # allowed relative increase of each latency quantile
ERRORS = 0.005  # allowed absolute increase of the error rate


def make_policy(*, error_weight: float = 2.0, latency_critical: bool = False, min_intervals: int = 3) -> Policy:
    return Policy(
        name="test",
        target=TARGET,
        metrics=(
            ErrorRateMetric("error-rate", max_increase=ERRORS, weight=error_weight),
            LatencyMetric(
                "latency",
                (QuantileTolerance(0.5, LATENCY), QuantileTolerance(0.99, LATENCY)),
                weight=1.0,
                critical=latency_critical,
            ),
        ),
        analysis=Analysis(judge="kayenta", kayenta=KayentaSettings(min_intervals=min_intervals)),
    )


def histogram(buckets: Mapping[float, int]) -> Histogram:
    """Requests per bucket, keyed by the bucket's upper edge (ms) on Istio's layout."""
    counts = [0] * (len(ISTIO_LATENCY_BUCKETS_MS) + 1)
    for edge, n in buckets.items():
        counts[ISTIO_LATENCY_BUCKETS_MS.index(edge)] = n
    return Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(counts))


def latency(p50_fill: int, slow: int = 0) -> Histogram:
    """1000 requests, `p50_fill` of them in the 50–100 ms bucket and the rest of the fast ones in 25–50 ms
    (so the p50 sits inside 50–100 ms at a point set by `p50_fill`); `slow` take 250–500 ms (the p99)."""
    fast = 1000 - slow
    return histogram({50: fast - p50_fill, 100: p50_fill, 500: slow} if slow else {50: fast - p50_fill, 100: p50_fill})


def window(canary: Sample | None, baseline: Sample | None) -> MetricWindow:
    return MetricWindow(
        baseline={} if baseline is None else {"web-app-v1-0": baseline},
        canary={} if canary is None else {"web-app-v2-0": canary},
    )


def observe(
    errors: tuple[Ratio | None, Ratio | None], lat: tuple[Histogram | None, Histogram | None], t: float = 0.0
) -> Observation:
    """(canary, baseline) for each metric over one interval."""
    return Observation(start=t, end=t + 60, metrics={"error-rate": window(*errors), "latency": window(*lat)})


HEALTHY = observe((Ratio(10, 1000), Ratio(10, 1000)), (latency(600), latency(600)))


def run(judge: KayentaJudge, observations: list[Observation], step: int = 0) -> list[Outcome]:
    return [judge.judge(o, step).outcome for o in observations]


def wobble(i: int) -> int:
    return (i % 3) - 1  # -1, 0, 1: a little interval-to-interval variation


# -------------------------------------------------------------------------------------- classification


def test_canary_significantly_higher_beyond_the_allowed_ratio_is_high() -> None:
    result = classify([130.0, 131.0, 132.0, 133.0, 134.0], [100.0, 101.0, 102.0, 103.0, 104.0], Allowed(relative=0.1))
    assert result.classification is Classification.HIGH
    assert result.test is not None and result.test.lower > 0


def test_canary_significantly_higher_but_within_the_allowed_ratio_passes() -> None:
    result = classify([107.0, 108.0, 109.0, 110.0, 111.0], [100.0, 101.0, 102.0, 103.0, 104.0], Allowed(relative=0.1))
    assert result.classification is Classification.PASS  # means 109 / 102: +7%, under +10%
    assert result.reason == "significantly higher, but by less than allowed"


def test_error_rate_is_high_only_above_baseline_plus_the_allowed_increase() -> None:
    baseline = [0.010, 0.011, 0.009, 0.010, 0.012]
    allowed = Allowed(absolute=0.005)
    assert classify([0.020, 0.021, 0.019, 0.022, 0.020], baseline, allowed).classification is Classification.HIGH
    within = classify([0.013, 0.014, 0.0135, 0.0145, 0.013], baseline, allowed)
    assert within.classification is Classification.PASS
    assert within.test is not None and within.test.lower > 0  # significant, but under +0.5 pp


def test_error_rate_against_a_baseline_of_zero_errors_uses_the_absolute_allowance() -> None:
    allowed = Allowed(absolute=0.005)
    assert classify([0.01, 0.02, 0.01, 0.015], [0.0, 0.0, 0.0, 0.0], allowed).classification is Classification.HIGH
    assert allowed.ratio(0.0) is None


def test_sparse_errors_against_a_baseline_of_zeros_pass_as_in_kayenta_issue_426() -> None:
    """The shift estimate is 0, so the tolerance band is 0 and the interval's lower end (0) is not above it."""
    result = classify([0.0, 0.0, 0.05, 0.0, 0.0, 0.08, 0.0, 0.0], [0.0] * 8, Allowed(absolute=0.005))
    assert result.classification is Classification.PASS
    assert result.test is not None and result.test.estimate == 0.0


def test_three_separated_intervals_are_high_although_the_p_value_is_above_the_level() -> None:
    """Kayenta's interval, not its p-value, decides: with 3 values per side it is clamped to the range of
    the differences, so a canary whose 3 values all exceed the baseline's by more than allowed is High."""
    result = classify([130.0, 140.0, 150.0], [100.0, 101.0, 102.0], Allowed(relative=0.1))
    assert result.classification is Classification.HIGH
    assert result.test is not None and result.test.p_value > 0.02


def test_significantly_lower_canary_passes_unless_direction_is_either() -> None:
    canary, baseline = [70.0, 71.0, 72.0, 73.0, 74.0], [100.0, 101.0, 102.0, 103.0, 104.0]
    assert classify(canary, baseline, Allowed(relative=0.1)).classification is Classification.PASS
    either = classify(canary, baseline, Allowed(relative=0.1), direction="either")
    assert either.classification is Classification.LOW


def test_identical_series_pass_and_short_series_have_no_data() -> None:
    same = classify([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], Allowed(relative=0.1))
    assert same.classification is Classification.PASS
    assert same.reason == "the canary and baseline values are identical"
    assert classify([], [1.0, 2.0], Allowed(relative=0.1)).classification is Classification.NO_DATA
    assert classify([1.0], [1.0, 2.0], Allowed(relative=0.1)).classification is Classification.NO_DATA


# ------------------------------------------------------------------------------------------ the judge


def test_fewer_than_min_intervals_in_the_step_continues_then_scores() -> None:
    judge = Running(KayentaJudge(make_policy(min_intervals=3)))
    first = judge.judge(HEALTHY, 0)
    assert first.outcome is Outcome.CONTINUE
    assert all(v.outcome is Outcome.CONTINUE for v in first.verdicts)
    assert "1 of 3 intervals" in first.summary
    assert run(judge, [HEALTHY, HEALTHY]) == [Outcome.CONTINUE, Outcome.PASS]


def test_a_new_step_starts_a_new_series() -> None:
    judge = Running(KayentaJudge(make_policy(min_intervals=3)))
    assert run(judge, [HEALTHY] * 3, step=0)[-1] is Outcome.PASS
    assert run(judge, [HEALTHY] * 3, step=1) == [Outcome.CONTINUE, Outcome.CONTINUE, Outcome.PASS]
    verdict = judge.judge(HEALTHY, 1).verdicts[0]
    assert verdict.figures["intervals"] == 4
    assert len(verdict.figures["canary_values"]) == 4  # type: ignore[arg-type]


def slow_p99(i: int) -> Observation:
    """Error rate and p50 equal; the canary's p99 in the 250–500 ms bucket, the baseline's below 100 ms."""
    return observe(
        (Ratio(10 + wobble(i), 1000), Ratio(10, 1000)),
        (latency(600 + wobble(i), slow=30 + i), latency(600, slow=0)),
    )


def test_score_is_the_weighted_share_of_passing_checks() -> None:
    """Weights: error rate 2, latency 1 split over p50 and p99 (0.5 each): a High p99 leaves 2.5 / 3."""
    judge = Running(KayentaJudge(make_policy(error_weight=2.0)))
    judgements = [judge.judge(slow_p99(i), 0) for i in range(4)]
    last = judgements[-1]
    classes = {v.metric: v.figures["classification"] for v in last.verdicts}
    assert classes == {"error-rate": "Pass", "latency p50": "Pass", "latency p99": "High"}
    assert "score 83.3" in last.summary
    assert judge.state.last_score == pytest.approx(100 * 2.5 / 3)
    assert last.outcome is Outcome.CONTINUE  # marginal (75) ≤ 83.3 < pass (95)


def test_score_below_marginal_fails() -> None:
    judge = Running(KayentaJudge(make_policy(error_weight=1.0)))  # a High error rate leaves latency's 1 of 2
    observations = [
        observe((Ratio(40 + wobble(i), 1000), Ratio(10, 1000)), (latency(600 + wobble(i)), latency(600)))
        for i in range(4)
    ]
    last = [judge.judge(o, 0) for o in observations][-1]
    assert "score 50.0" in last.summary
    assert last.outcome is Outcome.FAIL
    error_verdict = last.verdicts[0]
    assert error_verdict.outcome is Outcome.FAIL
    assert error_verdict.figures["classification"] == "High"


def test_high_on_a_critical_metric_sets_the_score_to_zero() -> None:
    judge = Running(KayentaJudge(make_policy(error_weight=2.0, latency_critical=True)))
    last = [judge.judge(slow_p99(i), 0) for i in range(4)][-1]
    assert "score 0.0" in last.summary
    assert "critical metric failed: latency p99" in last.summary
    assert last.outcome is Outcome.FAIL


def test_no_data_counts_as_not_passing() -> None:
    """No canary latency at all: both quantile checks are NoData, leaving the error rate's 2 of 3."""
    judge = Running(KayentaJudge(make_policy(error_weight=2.0)))
    no_latency = observe((Ratio(10, 1000), Ratio(10, 1000)), (None, latency(600)))
    last = [judge.judge(no_latency, 0) for _ in range(3)][-1]
    assert [v.outcome for v in last.verdicts] == [Outcome.PASS, Outcome.NO_DATA, Outcome.NO_DATA]
    assert "score 66.7" in last.summary
    assert last.outcome is Outcome.FAIL


def test_no_data_for_every_metric_holds_rather_than_rolling_back() -> None:
    """Kayenta itself would score 0 and fail; canary holds the step, as for every judge."""
    judge = Running(KayentaJudge(make_policy()))
    empty = Observation(0, 60, {})
    last = [judge.judge(empty, 0) for _ in range(4)][-1]
    assert last.outcome is Outcome.NO_DATA


def test_a_metric_missing_from_the_observation_is_no_data() -> None:
    judge = Running(KayentaJudge(make_policy()))
    only_errors = Observation(0, 60, {"error-rate": window(Ratio(10, 1000), Ratio(10, 1000))})
    last = [judge.judge(only_errors, 0) for _ in range(3)][-1]
    assert [v.figures["classification"] for v in last.verdicts] == ["Pass", "NoData", "NoData"]


def test_intervals_without_requests_give_no_value_rather_than_zero() -> None:
    judge = Running(KayentaJudge(make_policy()))
    empty = observe((Ratio(0, 0), Ratio(0, 0)), (histogram({}), histogram({})))
    judge.judge(HEALTHY, 0)
    judge.judge(empty, 0)
    last = judge.judge(HEALTHY, 0)
    assert last.verdicts[0].figures["canary_values"] == [0.01, 0.01]
    assert last.verdicts[1].figures["baseline_values"] == pytest.approx([58.33, 58.33], abs=0.01)


def test_verdicts_carry_the_test_figures_and_a_plain_summary() -> None:
    judge = Running(KayentaJudge(make_policy()))
    last = [judge.judge(slow_p99(i), 0) for i in range(4)][-1]
    p99 = last.verdicts[2]
    for key in ("u", "p_value", "hl_estimate", "ci", "confidence", "canary_mean", "baseline_mean", "ratio"):
        assert key in p99.figures
    assert p99.figures["confidence"] == 0.98
    assert p99.summary.startswith("latency p99: canary ")
    assert "Mann-Whitney U=" in p99.summary and "allowed +10%" in p99.summary and "High" in p99.summary


def test_histograms_with_different_layouts_are_merged_to_common_edges() -> None:
    coarse_edges = tuple(e for e in ISTIO_LATENCY_BUCKETS_MS if e != 50)
    coarse = Histogram(coarse_edges, tuple([0] * 6 + [1000] + [0] * 12))  # all in 25–100 ms
    fine = latency(600)
    obs = Observation(
        0, 60,
        {"error-rate": window(Ratio(1, 100), Ratio(1, 100)),
         "latency": MetricWindow(baseline={"a": fine, "b": coarse}, canary={"c": fine})},
    )  # fmt: skip
    judge = Running(KayentaJudge(make_policy()))
    verdict = judge.judge(obs, 0).verdicts[1]
    assert len(verdict.figures["baseline_values"]) == 1  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- properties


def _finite_everywhere(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, Mapping):
        return all(_finite_everywhere(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_finite_everywhere(v) for v in value)
    return True


@st.composite
def ratios(draw: st.DrawFn) -> Ratio:
    trials = draw(st.integers(0, 10_000))
    return Ratio(draw(st.integers(0, trials)), trials)


BUCKETS = len(ISTIO_LATENCY_BUCKETS_MS) + 1
histograms = st.lists(st.just(0) | st.integers(0, 2_000), min_size=BUCKETS, max_size=BUCKETS).map(
    lambda counts: Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(counts))
)


def pods_of(samples: st.SearchStrategy[Sample]) -> st.SearchStrategy[dict[str, Sample]]:
    return st.dictionaries(st.sampled_from(["p0", "p1"]), samples, max_size=2)


def interval(
    canary: dict[str, Sample], baseline: dict[str, Sample], lat_c: dict[str, Sample], lat_b: dict[str, Sample]
) -> Observation:
    return Observation(0, 60, {"error-rate": MetricWindow(baseline, canary), "latency": MetricWindow(lat_b, lat_c)})


intervals = st.builds(interval, pods_of(ratios()), pods_of(ratios()), pods_of(histograms), pods_of(histograms))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(intervals, st.integers(0, 1)), min_size=1, max_size=6))
def test_never_crashes_or_returns_nan_on_arbitrary_counts(ticks: list[tuple[Observation, int]]) -> None:
    judge = Running(KayentaJudge(make_policy(min_intervals=2)))
    for observation, step in sorted(ticks, key=lambda t: t[1]):
        judgement = judge.judge(observation, step)
        assert judgement.outcome in (Outcome.PASS, Outcome.FAIL, Outcome.CONTINUE, Outcome.NO_DATA)
        assert "nan" not in judgement.summary.lower()
        for verdict in judgement.verdicts:
            assert _finite_everywhere(dict(verdict.figures)), verdict
            assert "nan" not in verdict.summary.lower()


# ------------------------------------------------------------------------------------- a whole rollout


def test_make_judge_runs_a_whole_simulated_rollout_to_a_finished_phase() -> None:
    policy = load_policy(Path(__file__).parents[2] / "policies" / "web-app.yaml")
    assert isinstance(make_judge(policy, "kayenta"), KayentaJudge)
    rollout = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit(), judge="kayenta")
    assert rollout.runner.judge.name == "kayenta"
    result = rollout.runner.run()
    assert result.phase.ended
    assert result.judgement is not None
