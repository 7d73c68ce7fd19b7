"""canary's sequential judge on counts with known answers, at the null boundary, and on messy data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from judging import Running

from canary.judges.sequential import ACTIVE_BLOCKS, SequentialJudge, pod_caveat
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, MetricWindow, Observation, Outcome, Ratio, Verdict
from canary.policy import Policy, parse_policy
from canary.stats.confidence import Evidence, half_width
from canary.stats.pods import between_pod_variance

POLICY = """
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {name: t}
spec:
  target: {namespace: default, virtualService: vs, host: h.default.svc.cluster.local}
  minRequests: 0
  analysis: {alpha: 0.05}
  metrics:
    - {name: errors, kind: error-rate, maxIncrease: 0.005}
"""
LATENCY_POLICY = POLICY.replace(
    "    - {name: errors, kind: error-rate, maxIncrease: 0.005}",
    "    - {name: latency, kind: latency, quantiles: [{quantile: 0.5, maxIncrease: 0.1}]}",
)


def policy(text: str = POLICY, **changes: str) -> Policy:
    for old, new in changes.items():
        text = text.replace(old, new)
    return parse_policy(text, "test.yaml")


def ratio_obs(baseline: Ratio | None, canary: Ratio | None, name: str = "errors") -> Observation:
    window = MetricWindow(
        baseline={} if baseline is None else {"b-0": baseline},
        canary={} if canary is None else {"c-0": canary},
    )
    return Observation(0.0, 60.0, {name: window})


def lognormal_counts(rng: np.random.Generator, n: int, median: float, sigma: float = 0.5) -> Histogram:
    edges = np.asarray(ISTIO_LATENCY_BUCKETS_MS)
    samples = rng.lognormal(math.log(median), sigma, n)
    counts = np.histogram(samples, bins=[0.0, *edges, np.inf])[0]
    return Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(int(c) for c in counts))


def test_one_interval_reports_the_raw_difference_and_the_closed_form_interval() -> None:
    judge = Running(SequentialJudge(policy()))
    verdict = judge.judge(ratio_obs(Ratio(10, 1000), Ratio(30, 1000)), 0).verdicts[0]
    assert verdict.figures["difference"] == pytest.approx(0.03 - 0.01)
    # Rebuild the interval by hand: the variance of a canary exactly at the tolerance (baseline's shrunk
    # rate + 0.5 pp), the weight from request counts only, scaled at that same rate (the canary's counts
    # never set it).
    pb = 10.5 / 1001
    pc = pb + 0.005
    variance = pc * (1 - pc) / 1000 + pb * (1 - pb) / 1000
    reference = pc
    weight = 1000 * 1000 / 2000 / (reference * (1 - reference))
    ev = Evidence().add(0.02 - 0.005, variance, weight)
    alpha_cs = 0.05 * 0.75  # one check: three quarters of alpha for the sequence, a quarter for the pod term
    # The fail mixture averages two: mass on excesses of the margin's size and of twice it.
    h = half_width(ev, rho=(1 / 0.005**2, 1 / 0.01**2), alpha=alpha_cs)
    lo, hi = verdict.figures["difference_cs"]  # type: ignore[misc]
    assert lo == pytest.approx(0.02 - h) and hi == pytest.approx(0.02 + h)
    # The step's pass sequence keeps the margin's one precision (it certifies an excess of −margin or less).
    h_pass = half_width(ev, rho=1 / 0.005**2, alpha=0.2 * 0.75)
    lo, hi = verdict.figures["step_difference_cs"]  # type: ignore[misc]
    assert lo == pytest.approx(0.02 - h_pass) and hi == pytest.approx(0.02 + h_pass)


def test_a_verdict_says_when_too_few_baseline_pods_serve_to_measure_how_pods_differ() -> None:
    """One baseline pod (or series without a pod label): the pod term is 0 by necessity, and the record says
    so. The error-rate check bounds 2 baseline pods' spread by their whole dispersion and says so; 3 against
    one canary pod estimate it too roughly (docs/statistics.md, Pods: measured at or just above α), and the
    record says that too; three against two, or four against one, measured within α, say nothing."""
    one = Running(SequentialJudge(policy())).judge(ratio_obs(Ratio(10, 1000), Ratio(12, 1000)), 0).verdicts[0]
    assert one.figures["baseline_pods"] == 1
    assert "pods assumed alike (1 baseline pod serving, too few to measure how pods differ)" in one.summary

    def with_pods(baseline: int, canary: int) -> Verdict:
        window = MetricWindow(
            baseline={f"b-{i}": Ratio(3 + i, 333) for i in range(baseline)},
            canary={f"c-{i}": Ratio(12 // canary, 1000 // canary) for i in range(canary)},
        )
        return Running(SequentialJudge(policy())).judge(Observation(0.0, 60.0, {"errors": window}), 0).verdicts[0]

    said = {(2, 2): "bounded by their whole spread", (3, 1): "bounded only roughly", (3, 2): None, (4, 1): None}
    for (baseline, canary), words in said.items():
        verdict = with_pods(baseline, canary)
        assert (verdict.figures["baseline_pods"], verdict.figures["canary_pods"]) == (baseline, canary)
        note = f"only {baseline} baseline pods serving: how pods differ is {words}"
        assert (note in verdict.summary) if words else ("baseline pods serving" not in verdict.summary), verdict.summary
        assert "pods assumed alike" not in verdict.summary
    # The latency checks keep the moment estimate with 2 baseline pods (measured within α): only roughly.
    assert pod_caveat(2, 1) == "only 2 baseline pods serving: how pods differ is bounded only roughly"


def test_pods_that_stopped_serving_are_forgotten_so_the_evidence_does_not_grow_with_churn() -> None:
    """A Deployment replacing its pods every interval: the judge's state (written into the route's annotation)
    keeps the pods that still count, those that served within the last ACTIVE_BLOCKS blocks, not every pod
    the rollout ever saw, which once made a rollback too large to be written."""
    rng = np.random.default_rng(3)
    judge = Running(SequentialJudge(policy(f"{POLICY}    - {{name: latency, kind: latency, quantiles: "
                                           "[{quantile: 0.5, maxIncrease: 0.1}]}\n")))  # fmt: skip
    for tick in range(40):
        windows = {
            "errors": MetricWindow(baseline={f"b-{tick}-{i}": Ratio(int(rng.poisson(10)), 1000) for i in range(3)},
                                   canary={f"c-{tick}": Ratio(int(rng.poisson(10)), 1000)}),
            "latency": MetricWindow(baseline={f"b-{tick}-{i}": lognormal_counts(rng, 3000, 80) for i in range(3)},
                                    canary={f"c-{tick}": lognormal_counts(rng, 3000, 80)}),
        }  # fmt: skip
        verdicts = judge.judge(Observation(60.0 * tick, 60.0 * (tick + 1), windows), 0).verdicts
    errors, latency = judge.state.ratios["errors"], judge.state.quantiles["latency p50"]
    assert len(errors.baseline_pods) == 3 * ACTIVE_BLOCKS and len(errors.canary_pods) == ACTIVE_BLOCKS
    # a latency block is counted before it closes: one generation more may be kept
    assert len(latency.baseline_pods) <= 3 * (ACTIVE_BLOCKS + 1) and len(latency.canary_pods) <= ACTIVE_BLOCKS + 1
    assert verdicts[0].figures["baseline_pods"] == 3 * ACTIVE_BLOCKS, "every pod kept is one that counts"


def test_two_baseline_pods_that_look_alike_still_widen_the_error_rate_check() -> None:
    """Two baseline pods with nearly equal counts: the moment estimate would be 0 and leave a canary pod's
    luck unguarded; their whole dispersion is not, so the pod term is positive."""
    window = MetricWindow(baseline={"b-0": Ratio(30, 3000), "b-1": Ratio(31, 3000)}, canary={"c-0": Ratio(9, 600)})
    verdict = Running(SequentialJudge(policy())).judge(Observation(0.0, 60.0, {"errors": window}), 0).verdicts[0]
    assert between_pod_variance([30, 31], [3000, 3000]) == 0.0
    assert verdict.figures["pod_sd"] > 0


def test_a_missing_window_keeps_the_checks_e_value_in_the_combination() -> None:
    # Counting 1 for a check whose e-process stands far below 1 would lift the average (not an e-process).
    judge = Running(SequentialJudge(policy()))
    for _ in range(5):
        before = judge.judge(ratio_obs(Ratio(100, 10_000), Ratio(100, 10_000)), 0)
    assert before.figures["e_value"] < 0.5  # type: ignore[operator]
    missing = judge.judge(Observation(0, 60, {}), 0)
    assert missing.verdicts[0].outcome is Outcome.NO_DATA
    assert missing.figures["e_value"] == pytest.approx(before.figures["e_value"])


def test_a_clear_error_regression_fails_with_the_metric_named() -> None:
    judge = Running(SequentialJudge(policy()))
    result = judge.judge(ratio_obs(Ratio(100, 10_000), Ratio(500, 10_000)), 0)
    assert result.outcome is Outcome.FAIL
    assert "errors" in result.summary and "worse than tolerated" in result.verdicts[0].summary


def test_identical_versions_pass_once_the_evidence_is_in() -> None:
    judge = Running(SequentialJudge(policy()))
    outcomes = [judge.judge(ratio_obs(Ratio(100, 10_000), Ratio(100, 10_000)), 0).outcome for _ in range(5)]
    assert outcomes[-1] is Outcome.PASS and Outcome.FAIL not in outcomes


def test_no_series_for_a_version_is_no_data_not_a_pass_or_a_failure() -> None:
    judge = Running(SequentialJudge(policy()))
    assert judge.judge(ratio_obs(Ratio(1, 100), None), 0).outcome is Outcome.NO_DATA
    assert judge.judge(ratio_obs(None, None), 0).outcome is Outcome.NO_DATA
    assert judge.judge(Observation(0, 60, {}), 0).outcome is Outcome.NO_DATA


def test_zero_traffic_for_the_canary_is_no_data() -> None:
    judge = Running(SequentialJudge(policy()))
    assert judge.judge(ratio_obs(Ratio(5, 500), Ratio(0, 0)), 0).outcome is Outcome.NO_DATA


def test_min_requests_holds_the_step() -> None:
    judge = Running(SequentialJudge(policy(**{"minRequests: 0": "minRequests: 5000"})))
    verdict = judge.judge(ratio_obs(Ratio(10, 1000), Ratio(10, 1000)), 0).verdicts[0]
    assert verdict.outcome is Outcome.CONTINUE and "waiting for 5000 requests" in verdict.summary


def test_a_new_step_must_show_its_own_evidence() -> None:
    judge = Running(SequentialJudge(policy()))
    for _ in range(5):
        last = judge.judge(ratio_obs(Ratio(100, 10_000), Ratio(100, 10_000)), 0)
    assert last.outcome is Outcome.PASS
    first_of_next = judge.judge(ratio_obs(Ratio(1, 100), Ratio(1, 100)), 1)
    assert first_of_next.outcome is Outcome.CONTINUE


def test_a_latency_shift_far_beyond_tolerance_fails_and_reports_buckets() -> None:
    rng = np.random.default_rng(1)
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    for _ in range(3):
        obs = Observation(
            0,
            60,
            {"latency": MetricWindow({"b": lognormal_counts(rng, 5000, 80)}, {"c": lognormal_counts(rng, 5000, 120)})},
        )
        result = judge.judge(obs, 0)
    assert result.outcome is Outcome.FAIL
    verdict = result.verdicts[0]
    assert verdict.figures["baseline_quantile_ms"] == pytest.approx(80, rel=0.05)
    assert verdict.figures["point_ms"] == pytest.approx(88, rel=0.05), "tested at +10% on the baseline's p50"
    assert "p50 canary 100–250 ms, baseline 50–100 ms" in verdict.summary


def test_latency_of_equal_versions_passes() -> None:
    rng = np.random.default_rng(2)
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    outcomes = []
    for _ in range(10):
        obs = Observation(
            0,
            60,
            {"latency": MetricWindow({"b": lognormal_counts(rng, 5000, 80)}, {"c": lognormal_counts(rng, 5000, 80)})},
        )
        outcomes.append(judge.judge(obs, 0).outcome)
    assert outcomes[-1] is Outcome.PASS and Outcome.FAIL not in outcomes


def test_differing_bucket_layouts_are_compared_on_common_edges_and_said_so() -> None:
    rng = np.random.default_rng(3)
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    full = lognormal_counts(rng, 5000, 80)
    coarse = Histogram.from_cumulative(
        {
            edge: count
            for edge, count in lognormal_counts(rng, 5000, 80).cumulative().items()
            if edge in (50, 100, 250, math.inf)
        }
    )
    verdict = judge.judge(Observation(0, 60, {"latency": MetricWindow({"b": full}, {"c": coarse})}), 0).verdicts[0]
    assert verdict.outcome is not Outcome.FAIL
    assert "bucket layouts differ" in verdict.summary


def test_layouts_without_a_common_edge_are_no_data() -> None:
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    obs = Observation(
        0, 60, {"latency": MetricWindow({"b": Histogram((1.0,), (1, 1))}, {"c": Histogram((2.0,), (1, 1))})}
    )
    assert judge.judge(obs, 0).outcome is Outcome.NO_DATA


def test_false_failures_at_the_tolerance_boundary_stay_below_alpha() -> None:
    """Monte Carlo, fixed seed: canary exactly +0.5 pp worse (the least favourable healthy canary),
    300 rollouts of 40 looks with a drifting baseline rate and an inexact split."""
    rng = np.random.default_rng(11)
    failures = 0
    for _ in range(300):
        judge = Running(SequentialJudge(policy()))
        for t in range(40):
            base_rate = 0.01 * (1 + 0.5 * math.sin(t / 6))  # service-wide drift
            n_c = int(rng.integers(300, 900))  # the canary's share wanders
            n_b = 6000 - n_c
            obs = ratio_obs(
                Ratio(int(rng.binomial(n_b, base_rate)), n_b), Ratio(int(rng.binomial(n_c, base_rate + 0.005)), n_c)
            )
            if judge.judge(obs, 0).outcome is Outcome.FAIL:
                failures += 1
                break
    assert failures / 300 <= 0.05


finite_or_none = st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False))


@st.composite
def ratio(draw: st.DrawFn) -> Ratio:
    trials = draw(st.integers(0, 10**6))
    return Ratio(draw(st.integers(0, trials)), trials)


full_histogram = st.lists(st.integers(0, 10**5), min_size=len(ISTIO_LATENCY_BUCKETS_MS) + 1, max_size=20).map(
    lambda counts: Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(counts))
)


@st.composite
def other_layout(draw: st.DrawFn) -> Histogram:
    """A layout that differs: some of Istio's edges missing, or a zero edge first."""
    edges = sorted(draw(st.sets(st.sampled_from((0.0, *ISTIO_LATENCY_BUCKETS_MS)), min_size=1, max_size=8)))
    counts = draw(st.lists(st.integers(0, 10**5), min_size=len(edges) + 1, max_size=len(edges) + 1))
    return Histogram(tuple(edges), tuple(counts))


histogram = st.one_of(full_histogram, full_histogram, other_layout())


def _all_numbers_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isnan(value)
    if isinstance(value, dict):
        return all(_all_numbers_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_all_numbers_finite(v) for v in value)
    return True


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.sampled_from(["b0", "b1"]), ratio(), max_size=2),
            st.dictionaries(st.sampled_from(["c0", "c1"]), ratio(), max_size=2),
            st.dictionaries(st.sampled_from(["b0", "b1"]), histogram, max_size=2),
            st.dictionaries(st.sampled_from(["c0", "c1"]), histogram, max_size=2),
            st.integers(0, 2),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_any_non_negative_counts_give_a_verdict_without_nan(ticks: list) -> None:  # type: ignore[type-arg]
    text = POLICY.replace(
        "    - {name: errors, kind: error-rate, maxIncrease: 0.005}",
        "    - {name: errors, kind: error-rate, maxIncrease: 0.005}\n"
        "    - {name: latency, kind: latency, quantiles: [{quantile: 0.5, maxIncrease: 0.1}, "
        "{quantile: 0.99, maxIncrease: 0.25}]}",
    )
    judge = Running(SequentialJudge(policy(text)))
    for rb, rc, hb, hc, step in ticks:
        obs = Observation(0, 60, {"errors": MetricWindow(rb, rc), "latency": MetricWindow(hb, hc)})
        result = judge.judge(obs, step)
        assert result.outcome in set(Outcome)
        for verdict in result.verdicts:
            assert _all_numbers_finite(dict(verdict.figures)), verdict
            assert "nan" not in verdict.summary.lower()


def test_a_pod_with_another_bucket_layout_never_puts_nan_in_a_verdict_and_decisions_go_on() -> None:
    """A sidecar upgrade mid-rollout: one canary pod exports without the 100 and 250 ms buckets."""
    rng = np.random.default_rng(5)
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    coarse_edges = tuple(e for e in ISTIO_LATENCY_BUCKETS_MS if e not in (100, 250))
    outcomes = []
    for tick in range(12):
        canary = {"c0": lognormal_counts(rng, 3000, 120)}
        if tick >= 2:
            full = lognormal_counts(rng, 3000, 120).cumulative()
            canary["c1"] = Histogram.from_cumulative({e: n for e, n in full.items() if e not in (100, 250)})
            assert canary["c1"].bounds == coarse_edges
        obs = Observation(0, 60, {"latency": MetricWindow({"b": lognormal_counts(rng, 6000, 80)}, canary)})
        verdict = judge.judge(obs, 0).verdicts[0]
        assert "nan" not in verdict.summary.lower() and _all_numbers_finite(dict(verdict.figures))
        outcomes.append(verdict.outcome)
    assert outcomes[-1] is Outcome.FAIL  # +50% is still caught, on the intervals where the edge exists


def test_a_bucket_edge_at_zero_does_not_crash() -> None:
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    bounds = (0.0, 50.0, 100.0, 250.0)
    obs = Observation(
        0,
        60,
        {
            "latency": MetricWindow(
                {"b": Histogram(bounds, (0, 400, 300, 200, 100))}, {"c": Histogram(bounds, (0, 40, 30, 20, 10))}
            )
        },
    )
    assert judge.judge(obs, 0).outcome in {Outcome.CONTINUE, Outcome.PASS, Outcome.FAIL}


@pytest.mark.parametrize(
    "baseline",
    [(1, 1, 98, 0, 0, 0, 0, 0, 0), (1, 0, 49, 0, 0, 0, 0, 0, 50)],
    ids=["tail-continued-from-a-zero-edge", "curve-through-a-zero-edge"],
)
def test_a_zero_edge_two_buckets_below_the_quantile_gives_a_finite_verdict(baseline: tuple[int, ...]) -> None:
    """Found by hypothesis: an le="0" edge was taken into log space as a neighbour of the quantile's bucket."""
    bounds = (0.0, 0.5, 1, 5, 10, 25, 50, 100)
    judge = Running(SequentialJudge(policy(LATENCY_POLICY)))
    window = MetricWindow({"b0": Histogram(bounds, baseline)}, {"c0": Histogram((0.0, 0.5, 1), (0, 0, 0, 1))})
    result = judge.judge(Observation(0, 60, {"latency": window}), 0)
    assert result.outcome in set(Outcome)
    assert all(_all_numbers_finite(dict(v.figures)) for v in result.verdicts)


def test_a_clear_failure_rolls_back_before_min_requests_is_reached() -> None:
    """minRequests gates passes only: the fail sequence is valid at any sample size."""
    judge = Running(SequentialJudge(policy(**{"minRequests: 0": "minRequests: 100000"})))
    result = judge.judge(ratio_obs(Ratio(100, 10_000), Ratio(5_000, 10_000)), 0)
    assert result.outcome is Outcome.FAIL


def _latency_rollouts(quantile: float, tolerance: float, scale: float, runs: int) -> float:
    """Share of `runs` rollouts of 40 looks that fail, canary `scale` times slower, service load swinging."""
    from canary.scenario import Behaviour, Lognormal
    from canary.sources.simulated import bucket_probabilities

    text = LATENCY_POLICY.replace(
        "quantiles: [{quantile: 0.5, maxIncrease: 0.1}]",
        f"quantiles: [{{quantile: {quantile}, maxIncrease: {tolerance}}}]",
    )
    rng = np.random.default_rng(21)
    base, slow = Behaviour(0.0, Lognormal(80, 0.5)), Behaviour(0.0, Lognormal(80 * scale, 0.5))
    failures = 0
    for _ in range(runs):
        judge = Running(SequentialJudge(policy(text)))
        for t in range(40):
            load = np.array([1 + 0.3 * math.sin(t / 5)])
            p_b, p_c = bucket_probabilities(base, load)[0], bucket_probabilities(slow, load)[0]
            b = Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(int(x) for x in rng.multinomial(5400, p_b)))
            c = Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(int(x) for x in rng.multinomial(600, p_c)))
            if (
                judge.judge(Observation(0, 60, {"latency": MetricWindow({"b": b}, {"c": c})}), 0).outcome
                is Outcome.FAIL
            ):
                failures += 1
                break
    return failures / runs


@pytest.mark.parametrize(("quantile", "tolerance"), [(0.5, 0.1), (0.95, 0.2), (0.99, 0.25)])
def test_latency_at_the_tolerance_boundary_fails_less_than_alpha_and_twice_beyond_it_fails(
    quantile: float, tolerance: float
) -> None:
    """Monte Carlo, fixed seed. Exactly (1 + m) times slower is the least favourable canary within
    tolerance: at most α = 0.05 may fail (1.5-2% measured). At twice the tolerance nearly all must."""
    assert _latency_rollouts(quantile, tolerance, 1 + tolerance, runs=200) <= 0.05
    assert _latency_rollouts(quantile, tolerance, 1 + 2 * tolerance, runs=40) >= 0.95


def test_a_tolerance_the_buckets_cannot_resolve_is_inconclusive_with_the_reason_never_a_decision() -> None:
    """p95 +10% on a baseline p95 of about 180 ms: Istio's 100–250 ms bucket cannot tell a 10% shift from how
    the shape inside it may differ, so the check neither fails a canary far beyond it nor passes an equal one."""
    text = LATENCY_POLICY.replace("quantile: 0.5, maxIncrease: 0.1", "quantile: 0.95, maxIncrease: 0.1")
    rng = np.random.default_rng(5)
    for scale in (1.0, 1.5):
        judge = Running(SequentialJudge(policy(text)))
        for _ in range(30):
            b, c = lognormal_counts(rng, 5400, 80), lognormal_counts(rng, 600, 80 * scale)
            result = judge.judge(Observation(0, 60, {"latency": MetricWindow({"b": b}, {"c": c})}), 0)
            assert result.outcome is Outcome.CONTINUE
        verdict = result.verdicts[0]
        assert verdict.figures["decidable"] is False
        assert "undecidable" in verdict.summary and "100–250 ms" in verdict.summary
