"""canary's own judge: anytime-valid, non-inferiority, two-sided in its decisions.

Each check (an error rate, or one latency quantile) keeps two confidence sequences for the effect
"canary minus what the tolerance allows":
- the *fail* sequence accumulates over the whole rollout; the canary is rolled back when its lower bound
  clears zero, i.e. it is shown worse than tolerated;
- the *pass* sequence starts afresh at every step; the step is passed when its upper bound falls below
  zero, i.e. the canary is shown within tolerance with the traffic of this step.
Both use the normal-mixture boundary of `canary.stats.confidence`, so looking every interval costs
nothing: the chance of ever rolling back a canary within tolerance is at most α, split evenly over the
metrics and then over a latency metric's quantiles (docs/statistics.md states the method and what it
assumes).

Every interval is compared within itself (canary against the baseline over the same minute, with each
version's observed request count), so service-wide drift and an inexact traffic split cancel out.
Pod-to-pod spread, which does not shrink with more requests, is estimated from the baseline's pods and
widens both sequences by a fixed amount.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy.stats import norm

from canary.codec import clone
from canary.model import Histogram, Judgement, MetricWindow, Observation, Outcome, Ratio, Sample, Verdict
from canary.policy import LatencyMetric, MetricSpec, Policy, QuantileTolerance
from canary.stats.buckets import (
    common_layout,
    merge,
    quantile_range,
    rebucket,
    reference_edge,
    survival_at,
    survival_counts,
)
from canary.stats.confidence import Evidence, Interval, confidence_sequence, mixture_e_value
from canary.stats.pods import between_pod_variance, pod_effect_sd

TINY_EFFECT = 1e-3  # floor of the mixture's effect scale τ, in rate units
POD_SHARE = 0.25  # share of a check's α spent on the pod term


@dataclass
class Sequences:
    """The two confidence sequences of one effect (part of the judge's persisted state)."""

    rho: float
    fail: Evidence = field(default_factory=Evidence)
    step: Evidence = field(default_factory=Evidence)
    best_e: float = 1.0  # running maximum of the fail e-value: 1 / best_e is the always-valid p-value

    def add(self, estimate: float, variance: float, weight: float) -> None:
        self.fail = self.fail.add(estimate, variance, weight)
        self.step = self.step.add(estimate, variance, weight)

    def intervals(self, alpha: float, widen: float) -> tuple[Interval, Interval]:
        return (
            confidence_sequence(self.fail, self.rho, alpha, widen),
            confidence_sequence(self.step, self.rho, alpha, widen),
        )

    def e_value(self) -> float:
        self.best_e = max(self.best_e, mixture_e_value(self.fail, 0.0, self.rho, upper=True))
        return self.best_e


def _total_ratio(samples: Mapping[str, Sample]) -> Ratio:
    total = Ratio(0, 0)
    for sample in samples.values():
        if isinstance(sample, Ratio):
            total = total + sample
    return total


def _shrunk(events: int, trials: int) -> float:
    """A rate that is never exactly 0 or 1, so a variance built on it is never zero."""
    return (events + 0.5) / (trials + 1.0)


def _baseline_rate(now: tuple[int, int], so_far: tuple[int, int]) -> float:
    """The baseline's rate for a variance: the larger of this interval's and the running rate."""
    return max(_shrunk(*now), _shrunk(*so_far))


def _null_variance(allowed: float, base: float, n_canary: int, n_baseline: int) -> float:
    """Variance of one interval's difference for the least favourable canary within tolerance.

    A canary within tolerance has a rate of at most `allowed`; p(1 − p) grows up to p = ½, so its
    variance is at most that of a canary exactly at the tolerance. Under the null the true variance is
    no larger (a conservative test); a canary far worse than tolerated is judged with less variance than
    it has, which only makes its rollback faster.
    """

    def bernoulli(p: float) -> float:
        p = min(max(p, 0.0), 1.0)
        return 0.25 if p >= 0.5 else p * (1 - p)

    return bernoulli(allowed) / n_canary + bernoulli(base) / n_baseline


def _weight(n_canary: int, n_baseline: int, reference: float) -> float:
    """Weight of an interval from its request counts only: about 1 / variance at the reference rate."""
    return n_canary * n_baseline / (n_canary + n_baseline) / (reference * (1 - reference))


def _missing(label: str, baseline: int, canary: int) -> str:
    """Which version has had no requests to compare yet, in words."""
    if not baseline and not canary:
        return f"{label}: no requests to either version yet"
    who = "the baseline" if canary else "the canary"
    return f"{label}: no requests to {who} in an interval where the other had some; nothing to compare yet"


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


@dataclass
class RatioState:
    """What a ratio check carries from tick to tick: its sequences and running totals."""

    seq: Sequences
    baseline: Ratio = field(default_factory=lambda: Ratio(0, 0))
    canary: Ratio = field(default_factory=lambda: Ratio(0, 0))
    baseline_pods: dict[str, Ratio] = field(default_factory=dict)
    canary_pods: list[str] = field(default_factory=list)  # sorted: every canary pod seen with requests
    reference: float | None = None  # the rate weights are scaled by, fixed at the first data
    step_requests: tuple[int, int] = (0, 0)  # (baseline, canary) requests in the current step
    step_index: int = -1


def _seen(pods: list[str], window: Mapping[str, Sample], kind: type) -> list[str]:
    """The pods seen so far plus those of this window that served requests."""
    fresh = {
        p for p, s in window.items() if isinstance(s, kind) and (s.trials if isinstance(s, Ratio) else s.total) > 0
    }
    return sorted(set(pods) | fresh)


@dataclass
class SequentialState:
    """The judge's evidence between ticks, per check label: what a restart needs to carry on."""

    ratios: dict[str, RatioState] = field(default_factory=dict)
    quantiles: dict[str, QuantileState] = field(default_factory=dict)


class _Check:
    """One line of the judge's report: its configuration (from the policy); the evidence is passed in."""

    label: str
    alpha_cs: float  # level of each confidence sequence
    z_pod: float  # how many pod-effect standard deviations widen the sequences

    def __init__(self, label: str, alpha: float) -> None:
        self.label = label
        self.alpha = alpha
        # A union bound: three quarters of the check's α for the time-uniform sequences, a quarter for the
        # luck of the canary's pods. With homogeneous pods the pod term is zero and costs little.
        self.alpha_cs = alpha * (1 - POD_SHARE)
        self.z_pod = float(norm.isf(alpha * POD_SHARE))

    def verdict(
        self,
        head: str,
        figures: dict[str, object],
        step_requests: tuple[int, int],
        min_requests: int,
        *,
        fail: str | None,
        passed: str | None,
        open_: str,
    ) -> Verdict:
        """The decision ladder every check shares: a failure acts at once (the fail sequence is anytime-valid),
        a pass needs the step's minimum of requests, anything else keeps collecting."""
        if fail is not None:
            return Verdict(self.label, Outcome.FAIL, f"{head}: {fail}", figures)
        if min(step_requests) < min_requests:
            return Verdict(
                self.label, Outcome.CONTINUE, f"{head}; waiting for {min_requests} requests per version in this step",
                figures,
            )  # fmt: skip
        if passed is not None:
            return Verdict(self.label, Outcome.PASS, f"{head}: {passed}", figures)
        return Verdict(self.label, Outcome.CONTINUE, f"{head}: {open_}", figures)


class _RatioCheck(_Check):
    """Canary rate − baseline rate − margin, per interval; higher is worse."""

    def __init__(self, label: str, margin: float, alpha: float) -> None:
        super().__init__(label, alpha)
        self.margin = margin

    def start_in(self, state: SequentialState) -> None:
        state.ratios[self.label] = RatioState(seq=Sequences(rho=1.0 / max(self.margin, TINY_EFFECT) ** 2))

    def update_in(self, state: SequentialState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        return self.update(state.ratios[self.label], window, step, min_requests)

    def update(self, st: RatioState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        if step != st.step_index:
            st.step_index, st.step_requests, st.seq.step = step, (0, 0), Evidence()
        base, can = _total_ratio(window.baseline), _total_ratio(window.canary)
        if base.trials > 0 and can.trials > 0:
            st.baseline += base
            st.canary += can
            for pod, sample in window.baseline.items():
                if isinstance(sample, Ratio) and sample.trials > 0:
                    st.baseline_pods[pod] = st.baseline_pods.get(pod, Ratio(0, 0)) + sample
            st.canary_pods = _seen(st.canary_pods, window.canary, Ratio)
            tb = st.baseline
            if st.reference is None:
                st.reference = _shrunk(base.events + can.events, base.trials + can.trials)
            rate_b = _baseline_rate((base.events, base.trials), (tb.events, tb.trials))
            variance = _null_variance(rate_b + self.margin, rate_b, can.trials, base.trials)
            estimate = can.events / can.trials - base.events / base.trials - self.margin
            st.seq.add(estimate, variance, _weight(can.trials, base.trials, st.reference))
            st.step_requests = (st.step_requests[0] + base.trials, st.step_requests[1] + can.trials)
        tb, tc = st.baseline, st.canary
        if tb.trials == 0 or tc.trials == 0:
            return Verdict(self.label, Outcome.NO_DATA, _missing(self.label, base.trials, can.trials))
        tau2 = between_pod_variance(
            [r.events for r in st.baseline_pods.values()], [r.trials for r in st.baseline_pods.values()]
        )
        pod_sd = pod_effect_sd(tau2, len(st.canary_pods), len(st.baseline_pods))
        fail_ci, pass_ci = st.seq.intervals(self.alpha_cs, self.z_pod * pod_sd)
        rate_b, rate_c = tb.events / tb.trials, tc.events / tc.trials
        diff = st.seq.fail.estimate + self.margin
        figures: dict[str, object] = {
            "baseline": {"errors": tb.events, "requests": tb.trials, "rate": rate_b},
            "canary": {"errors": tc.events, "requests": tc.trials, "rate": rate_c},
            "difference": diff,
            "difference_cs": [fail_ci.lower + self.margin, fail_ci.upper + self.margin],
            "step_difference_cs": [pass_ci.lower + self.margin, pass_ci.upper + self.margin],
            "max_increase": self.margin,
            "e_value": st.seq.e_value(),
            "pod_sd": pod_sd,
            "confidence": 1 - self.alpha,
            "step_requests": {"baseline": st.step_requests[0], "canary": st.step_requests[1]},
        }
        figures["p_value"] = min(1.0, 1.0 / float(figures["e_value"]))  # type: ignore[arg-type]
        head = (
            f"{self.label}: canary {_pct(rate_c)} vs baseline {_pct(rate_b)} "
            f"({tc.events}/{tc.trials} vs {tb.events}/{tb.trials}), allowed +{100 * self.margin:.2f} pp"
        )
        conf = f"{100 * (1 - self.alpha):.1f}%"
        lo, hi = fail_ci.lower + self.margin, fail_ci.upper + self.margin
        return self.verdict(
            head, figures, st.step_requests, min_requests,
            fail=f"worse than tolerated, the increase is at least +{100 * lo:.2f} pp ({conf} confidence)"
            if fail_ci.lower > 0 else None,
            passed=f"within tolerance, the increase is at most +{100 * (pass_ci.upper + self.margin):.2f} pp "
            f"({conf} confidence)" if pass_ci.upper < 0 else None,
            open_=f"not yet shown either way (increase between {100 * lo:+.2f} and {100 * hi:+.2f} pp)",
        )  # fmt: skip


def _total_histogram(samples: Mapping[str, Sample], bounds: tuple[float, ...]) -> Histogram | None:
    return merge([rebucket(s, bounds) for s in samples.values() if isinstance(s, Histogram)])


def _fmt_range(r: tuple[float, float] | None) -> str:
    if r is None:
        return "unknown"
    lo, hi = r
    return f"above {lo:g} ms" if math.isinf(hi) else f"{lo:g}–{hi:g} ms"


@dataclass
class EdgeTest:
    """The sequences of one bucket edge x: canary share slower than x − baseline share slower than x/(1+m)."""

    edge: float
    seq: Sequences
    reference: float  # the baseline's share slower than x when chosen: scales the weights
    baseline_pods: dict[str, tuple[int, int]] = field(default_factory=dict)  # pod -> (slower, requests)
    canary_slower: int = 0  # canary requests slower than x, over the intervals where x was an edge
    canary_seen: int = 0


@dataclass
class QuantileState:
    """What a latency check carries from tick to tick: its edge tests and running totals."""

    tests: list[EdgeTest] = field(default_factory=list)  # chosen once from the baseline's data, then fixed
    baseline: Histogram | None = None  # running totals, on the edges every interval had
    canary: Histogram | None = None
    canary_pods: list[str] = field(default_factory=list)
    layout_note: str = ""
    step_requests: tuple[int, int] = (0, 0)
    step_index: int = -1


class _QuantileCheck(_Check):
    """Latency at quantile q may be at most (1 + m) times the baseline's.

    A canary within that tolerance has, at any edge x near its q-quantile, no larger a share of requests
    slower than x than the baseline has slower than x / (1 + m). The edge nearest the baseline's
    q-quantile decides passes and failures; the next edge above can also fail the canary, so a slow tail
    just beyond the quantile is not hidden by the bucket width (α is split between the two).
    """

    def __init__(self, label: str, tolerance: QuantileTolerance, alpha: float) -> None:
        super().__init__(label, alpha)
        self.tolerance = tolerance

    def start_in(self, state: SequentialState) -> None:
        state.quantiles[self.label] = QuantileState()

    def update_in(self, state: SequentialState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        return self.update(state.quantiles[self.label], window, step, min_requests)

    def _layout(self, st: QuantileState, window: MetricWindow) -> tuple[float, ...] | None:
        layouts = sorted(
            {s.bounds for s in (*window.baseline.values(), *window.canary.values()) if isinstance(s, Histogram)}
        )
        layout = common_layout(layouts)
        if layout is None:
            return None
        if layout.merged:
            st.layout_note = "; bucket layouts differ between series, compared on their common edges"
        return layout.bounds

    def update(self, st: QuantileState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        if step != st.step_index:
            st.step_index, st.step_requests = step, (0, 0)
            for test in st.tests:
                test.seq.step = Evidence()
        if (
            st.baseline is None
            and st.canary is None
            and not any(isinstance(s, Histogram) for s in (*window.baseline.values(), *window.canary.values()))
        ):
            return Verdict(self.label, Outcome.NO_DATA, f"{self.label}: no latency series for either version yet")
        bounds = self._layout(st, window)
        if bounds is None:
            return Verdict(self.label, Outcome.NO_DATA, f"{self.label}: the versions' latency buckets share no edge")
        base, can = _total_histogram(window.baseline, bounds), _total_histogram(window.canary, bounds)
        if base is not None and can is not None and base.total > 0 and can.total > 0:
            self._accumulate(st, window, base, can, bounds)
        tb, tc = st.baseline, st.canary
        if tb is None or tc is None:
            n_b, n_c = (h.total if h is not None else 0 for h in (base, can))
            return Verdict(self.label, Outcome.NO_DATA, _missing(self.label, n_b, n_c))
        if not st.tests:
            return Verdict(
                self.label, Outcome.CONTINUE,
                f"{self.label}: {tb.total} baseline requests so far, too few to place the "
                f"{self.tolerance.quantile:g} quantile in a bucket",
            )  # fmt: skip
        return self._verdict(st, tb, tc, min_requests)

    def _choose_edges(self, st: QuantileState, tb: Histogram, bounds: tuple[float, ...]) -> None:
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        # Place the quantile once the baseline has enough requests beyond it to tell buckets apart.
        index = reference_edge(tb, q) if tb.total * (1 - q) >= 10 else None
        if index is None:
            return
        for i in (index, index + 1)[: 2 if index + 1 < len(bounds) else 1]:
            above = survival_at(tb, bounds[i])
            allowed = survival_at(tb, bounds[i] / (1 + m))
            rho = 1.0 / max(allowed - above, TINY_EFFECT) ** 2
            st.tests.append(EdgeTest(bounds[i], Sequences(rho=rho), min(max(above, 1e-4), 1 - 1e-4)))

    def _accumulate(
        self, st: QuantileState, window: MetricWindow, base: Histogram, can: Histogram, bounds: tuple[float, ...]
    ) -> None:
        st.baseline = (merge([st.baseline, base]) or base) if st.baseline is not None else base
        st.canary = (merge([st.canary, can]) or can) if st.canary is not None else can
        tb = st.baseline
        if not st.tests:
            self._choose_edges(st, tb, bounds)
        m = self.tolerance.max_increase
        for test in st.tests:
            if test.edge not in bounds:
                continue  # the edge vanished with a layout change: no honest comparison this interval
            index = bounds.index(test.edge)
            slower_c = survival_counts(can)[index]
            allowed_b = survival_at(base, test.edge / (1 + m))
            allowed_so_far = round(survival_at(tb, test.edge / (1 + m)) * tb.total)
            rate_b = _baseline_rate((round(allowed_b * base.total), base.total), (allowed_so_far, tb.total))
            variance = _null_variance(rate_b, rate_b, can.total, base.total)
            weight = _weight(can.total, base.total, test.reference)
            test.seq.add(slower_c / can.total - allowed_b, variance, weight)
            test.canary_slower += slower_c
            test.canary_seen += can.total
            for pod, sample in window.baseline.items():
                if isinstance(sample, Histogram) and sample.total > 0:
                    h = rebucket(sample, bounds)
                    prev = test.baseline_pods.get(pod, (0, 0))
                    test.baseline_pods[pod] = (prev[0] + survival_counts(h)[index], prev[1] + h.total)
        st.canary_pods = _seen(st.canary_pods, window.canary, Histogram)
        st.step_requests = (st.step_requests[0] + base.total, st.step_requests[1] + can.total)

    def _intervals(self, st: QuantileState, test: EdgeTest, edges: int) -> tuple[Interval, Interval, float]:
        """The fail sequence at α split over the edges (pod term too), the pass sequence at the full α."""
        pods = test.baseline_pods.values()
        tau2 = between_pod_variance([a for a, _ in pods], [n for _, n in pods])
        pod_sd = pod_effect_sd(tau2, len(st.canary_pods), len(test.baseline_pods))
        z_fail = float(norm.isf(self.alpha * POD_SHARE / edges))
        fail_ci = confidence_sequence(test.seq.fail, test.seq.rho, self.alpha_cs / edges, z_fail * pod_sd)
        pass_ci = confidence_sequence(test.seq.step, test.seq.rho, self.alpha_cs, self.z_pod * pod_sd)
        return fail_ci, pass_ci, pod_sd

    def _verdict(self, st: QuantileState, tb: Histogram, tc: Histogram, min_requests: int) -> Verdict:
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        results = [(test, *self._intervals(st, test, len(st.tests))) for test in st.tests]
        main, fail_ci, pass_ci, pod_sd = results[0]  # passes are decided at the nearest edge alone
        failing = [(t, ci) for t, ci, _, _ in results if ci.lower > 0]
        shown, shown_ci = failing[0] if failing else (main, fail_ci)
        share_c = shown.canary_slower / shown.canary_seen if shown.canary_seen else survival_at(tc, shown.edge)
        share_b = survival_at(tb, shown.edge)
        allowed = survival_at(tb, shown.edge / (1 + m))
        figures: dict[str, object] = {
            "quantile": q,
            "max_increase": m,
            "edge_ms": shown.edge,
            "edges_ms": [t.edge for t in st.tests],
            "canary_share_slower": share_c,
            "baseline_share_slower": share_b,
            "allowed_share_slower": allowed,
            "excess": shown.seq.fail.estimate,
            "excess_cs": [shown_ci.lower, shown_ci.upper],
            "step_excess_cs": [pass_ci.lower, pass_ci.upper],
            "e_value": shown.seq.e_value(),
            "pod_sd": pod_sd,
            "confidence": 1 - self.alpha,
            "baseline_quantile_bucket_ms": list(quantile_range(tb, q) or ()),
            "canary_quantile_bucket_ms": list(quantile_range(tc, q) or ()),
            "requests": {"baseline": tb.total, "canary": tc.total},
            "step_requests": {"baseline": st.step_requests[0], "canary": st.step_requests[1]},
        }
        figures["p_value"] = min(1.0, 1.0 / float(figures["e_value"]))  # type: ignore[arg-type]
        head = (
            f"{self.label}: {_pct(share_c)} of canary requests slower than {shown.edge:g} ms, where "
            f"+{100 * m:.0f}% on the baseline allows {_pct(allowed)} (baseline {_pct(share_b)}); "
            f"p{100 * q:g} canary {_fmt_range(quantile_range(tc, q))}, baseline {_fmt_range(quantile_range(tb, q))}"
            f"{st.layout_note}"
        )
        conf = f"{100 * (1 - self.alpha):.1f}%"
        return self.verdict(
            head, figures, st.step_requests, min_requests,
            fail=f"slower than tolerated, by at least {100 * shown_ci.lower:.2f} pp of requests ({conf} confidence)"
            if failing else None,
            passed=f"within tolerance ({conf} confidence)" if pass_ci.upper < 0 else None,
            open_=f"not yet shown either way (excess between {100 * fail_ci.lower:+.2f} and "
            f"{100 * fail_ci.upper:+.2f} pp)",
        )  # fmt: skip


def check_labels(metric: MetricSpec) -> list[str]:
    if isinstance(metric, LatencyMetric):
        return [f"{metric.name} p{100 * t.quantile:g}" for t in metric.quantiles]
    return [metric.name]


class SequentialJudge:
    name = "sequential"
    state_type = SequentialState

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        # Bonferroni, which needs no independence: α evenly over metrics, then over a metric's quantiles.
        alpha = policy.analysis.alpha / len(policy.metrics)
        self.checks: list[tuple[str, _RatioCheck | _QuantileCheck]] = []
        for metric in policy.metrics:
            if isinstance(metric, LatencyMetric):
                share = alpha / len(metric.quantiles)
                for label, tol in zip(check_labels(metric), metric.quantiles, strict=True):
                    self.checks.append((metric.name, _QuantileCheck(label, tol, share)))
            else:
                self.checks.append((metric.name, _RatioCheck(metric.name, metric.max_increase, alpha)))

    def refuses(self, metric: MetricSpec) -> str | None:
        return None  # every metric kind is a ratio or a latency check

    def start(self) -> SequentialState:
        state = SequentialState()
        for _, check in self.checks:
            check.start_in(state)
        return state

    def judge(self, state: SequentialState, observation: Observation, step: int) -> tuple[SequentialState, Judgement]:
        new = clone(state)
        verdicts = []
        for metric_name, check in self.checks:
            window = observation.metrics.get(metric_name)
            if window is None:
                verdicts.append(Verdict(check.label, Outcome.NO_DATA, f"{check.label}: the source returned nothing"))
                continue
            verdicts.append(check.update_in(new, window, step, self.policy.min_requests))
        return new, combine(verdicts)


def combine(verdicts: list[Verdict]) -> Judgement:
    """Any failure fails; all passing passes; otherwise keep collecting evidence."""
    outcomes = [v.outcome for v in verdicts]
    failed = [v.metric for v in verdicts if v.outcome is Outcome.FAIL]
    if failed:
        return Judgement(Outcome.FAIL, tuple(verdicts), f"worse than tolerated: {', '.join(failed)}")
    if outcomes and all(o is Outcome.PASS for o in outcomes):
        return Judgement(Outcome.PASS, tuple(verdicts), "every metric shown within tolerance")
    if outcomes and all(o is Outcome.NO_DATA for o in outcomes):
        return Judgement(Outcome.NO_DATA, tuple(verdicts), "no data for either version yet")
    pending = [v.metric for v in verdicts if v.outcome is not Outcome.PASS]
    return Judgement(Outcome.CONTINUE, tuple(verdicts), f"collecting evidence: {', '.join(pending)}")
