"""canary's own judge: anytime-valid, non-inferiority, two-sided in its decisions.

Each check (an error rate, or one latency quantile) keeps two confidence sequences for the effect
"canary minus what the tolerance allows":
- the *fail* sequence accumulates over the whole rollout; the canary is rolled back when its lower bound
  clears zero, i.e. it is shown worse than tolerated;
- the *pass* sequence starts afresh at every step; the step is passed when its upper bound falls below
  zero, i.e. the canary is shown within tolerance with the traffic of this step.
Both use the normal-mixture boundary of `canary.stats.confidence`, so looking every interval costs
nothing: the chance of ever rolling back a canary within tolerance is at most α, split evenly over the
checks (docs/statistics.md states the method and what it assumes).

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

from canary.model import Histogram, Judgement, MetricWindow, Observation, Outcome, Ratio, Sample, Verdict
from canary.policy import LatencyMetric, MetricSpec, Policy, QuantileTolerance
from canary.stats.buckets import (
    common_layout,
    quantile_range,
    rebucket,
    reference_edge,
    survival_at,
    survival_counts,
)
from canary.stats.confidence import Evidence, Interval, confidence_sequence, mixture_e_value
from canary.stats.pods import between_pod_variance, pod_effect_sd

TINY_EFFECT = 1e-3  # floor of the mixture's effect scale τ, in rate units


@dataclass
class _Sequences:
    """The two confidence sequences of one effect, and what widens them."""

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


def _binomial_variance(now: tuple[int, int], so_far: tuple[int, int]) -> float:
    """Variance of one interval's rate: the larger of this interval's and the running rate, so a burst
    is never judged with the calm variance that came before it."""
    p = max(_shrunk(*now), _shrunk(*so_far))
    return p * (1 - p) / now[1]


def _weight(n_canary: int, n_baseline: int, reference: float) -> float:
    """Weight of an interval from its request counts only: about 1 / variance at the reference rate."""
    return n_canary * n_baseline / (n_canary + n_baseline) / (reference * (1 - reference))


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


class _Check:
    """One line of the judge's report."""

    label: str
    alpha_cs: float  # level of each confidence sequence
    z_pod: float  # how many pod-effect standard deviations widen the sequences

    def __init__(self, label: str, alpha: float) -> None:
        self.label = label
        # Half of the check's α for the time-uniform sequence, half for the pod term (a union bound).
        self.alpha_cs = alpha / 2
        self.z_pod = float(norm.isf(alpha / 2))
        self.step_requests = (0, 0)
        self.step_index = -1

    def new_step(self, step: int) -> bool:
        if step != self.step_index:
            self.step_index = step
            self.step_requests = (0, 0)
            return True
        return False


class _RatioCheck(_Check):
    """Canary rate − baseline rate − margin, per interval; higher is worse."""

    def __init__(self, label: str, margin: float, alpha: float) -> None:
        super().__init__(label, alpha)
        self.margin = margin
        self.seq = _Sequences(rho=1.0 / max(margin, TINY_EFFECT) ** 2)
        self.total = {"baseline": Ratio(0, 0), "canary": Ratio(0, 0)}
        self.baseline_pods: dict[str, Ratio] = {}
        self.canary_pods: set[str] = set()
        self.reference: float | None = None  # the rate weights are scaled by, fixed at the first data

    def update(self, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        if self.new_step(step):
            self.seq.step = Evidence()
        base, can = _total_ratio(window.baseline), _total_ratio(window.canary)
        if base.trials > 0 and can.trials > 0:
            self.total["baseline"] += base
            self.total["canary"] += can
            for pod, sample in window.baseline.items():
                if isinstance(sample, Ratio) and sample.trials > 0:
                    self.baseline_pods[pod] = self.baseline_pods.get(pod, Ratio(0, 0)) + sample
            self.canary_pods |= {p for p, s in window.canary.items() if isinstance(s, Ratio) and s.trials > 0}
            tb, tc = self.total["baseline"], self.total["canary"]
            if self.reference is None:
                self.reference = _shrunk(base.events + can.events, base.trials + can.trials)
            variance = _binomial_variance((can.events, can.trials), (tc.events, tc.trials)) + _binomial_variance(
                (base.events, base.trials), (tb.events, tb.trials)
            )
            estimate = can.events / can.trials - base.events / base.trials - self.margin
            self.seq.add(estimate, variance, _weight(can.trials, base.trials, self.reference))
            self.step_requests = (self.step_requests[0] + base.trials, self.step_requests[1] + can.trials)
        tb, tc = self.total["baseline"], self.total["canary"]
        if tb.trials == 0 or tc.trials == 0:
            return Verdict(self.label, Outcome.NO_DATA, f"{self.label}: no requests seen yet for both versions")
        tau2 = between_pod_variance(
            [r.events for r in self.baseline_pods.values()], [r.trials for r in self.baseline_pods.values()]
        )
        pod_sd = pod_effect_sd(tau2, len(self.canary_pods), len(self.baseline_pods))
        fail_ci, pass_ci = self.seq.intervals(self.alpha_cs, self.z_pod * pod_sd)
        rate_b, rate_c = tb.events / tb.trials, tc.events / tc.trials
        diff = self.seq.fail.estimate + self.margin
        figures: dict[str, object] = {
            "baseline": {"errors": tb.events, "requests": tb.trials, "rate": rate_b},
            "canary": {"errors": tc.events, "requests": tc.trials, "rate": rate_c},
            "difference": diff,
            "difference_cs": [fail_ci.lower + self.margin, fail_ci.upper + self.margin],
            "step_difference_cs": [pass_ci.lower + self.margin, pass_ci.upper + self.margin],
            "max_increase": self.margin,
            "e_value": self.seq.e_value(),
            "pod_sd": pod_sd,
            "confidence": 1 - 2 * self.alpha_cs,
            "step_requests": {"baseline": self.step_requests[0], "canary": self.step_requests[1]},
        }
        figures["p_value"] = min(1.0, 1.0 / float(figures["e_value"]))  # type: ignore[arg-type]
        head = (
            f"{self.label}: canary {_pct(rate_c)} vs baseline {_pct(rate_b)} "
            f"({tc.events}/{tc.trials} vs {tb.events}/{tb.trials}), allowed +{100 * self.margin:.2f} pp"
        )
        conf = f"{100 * (1 - 2 * self.alpha_cs):.1f}%"
        lo, hi = fail_ci.lower + self.margin, fail_ci.upper + self.margin
        if min(self.step_requests) < min_requests:
            return Verdict(
                self.label, Outcome.CONTINUE,
                f"{head}; waiting for {min_requests} requests per version in this step", figures,
            )  # fmt: skip
        if fail_ci.lower > 0:
            return Verdict(
                self.label, Outcome.FAIL,
                f"{head}: worse than tolerated, the increase is at least +{100 * lo:.2f} pp ({conf} confidence)",
                figures,
            )  # fmt: skip
        if pass_ci.upper < 0:
            return Verdict(
                self.label, Outcome.PASS,
                f"{head}: within tolerance, the increase is at most +{100 * (pass_ci.upper + self.margin):.2f} pp "
                f"({conf} confidence)", figures,
            )  # fmt: skip
        return Verdict(
            self.label, Outcome.CONTINUE,
            f"{head}: not yet shown either way (increase between {100 * lo:+.2f} and {100 * hi:+.2f} pp)", figures,
        )  # fmt: skip


def _total_histogram(samples: Mapping[str, Sample], bounds: tuple[float, ...]) -> Histogram | None:
    hists = [rebucket(s, bounds) for s in samples.values() if isinstance(s, Histogram)]
    if not hists:
        return None
    total = hists[0]
    for h in hists[1:]:
        total = total + h
    return total


def _fmt_range(r: tuple[float, float] | None) -> str:
    if r is None:
        return "unknown"
    lo, hi = r
    return f"above {lo:g} ms" if math.isinf(hi) else f"{lo:g}–{hi:g} ms"


class _QuantileCheck(_Check):
    """Share of canary requests slower than a bucket edge x, against the baseline's share slower than
    x / (1 + m): a canary whose q-quantile is at most (1 + m) times the baseline's has no more."""

    def __init__(self, label: str, tolerance: QuantileTolerance, alpha: float) -> None:
        super().__init__(label, alpha)
        self.tolerance = tolerance
        self.edge: float | None = None  # chosen once, from the baseline's data, then fixed
        self.seq: _Sequences | None = None
        self.bounds: tuple[float, ...] | None = None
        self.total: dict[str, Histogram] = {}
        self.baseline_pods: dict[str, tuple[int, int]] = {}  # pod -> (slower than edge, requests)
        self.canary_pods: set[str] = set()
        self.layout_note = ""
        self.reference = 0.5  # the baseline's share slower than the edge when it was chosen

    def _layout(self, window: MetricWindow) -> tuple[float, ...] | None:
        layouts = sorted(
            {s.bounds for s in (*window.baseline.values(), *window.canary.values()) if isinstance(s, Histogram)}
        )
        if self.bounds is not None:
            layouts.append(self.bounds)
        layout = common_layout(layouts)
        if layout is None:
            return None
        if layout.merged:
            self.layout_note = "; bucket layouts differ between series, compared on their common edges"
        return layout.bounds

    def update(self, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        if self.new_step(step) and self.seq is not None:
            self.seq.step = Evidence()
        bounds = self._layout(window)
        if bounds is None:
            return Verdict(self.label, Outcome.NO_DATA, f"{self.label}: the versions' latency buckets share no edge")
        if bounds != self.bounds:
            self.bounds = bounds
            self.total = {k: rebucket(h, bounds) for k, h in self.total.items()}
        base, can = _total_histogram(window.baseline, bounds), _total_histogram(window.canary, bounds)
        if base is not None and can is not None and base.total > 0 and can.total > 0:
            self._accumulate(window, base, can, bounds)
        tb, tc = self.total.get("baseline"), self.total.get("canary")
        if tb is None or tc is None:
            return Verdict(self.label, Outcome.NO_DATA, f"{self.label}: no requests seen yet for both versions")
        if self.seq is None or self.edge is None:
            return Verdict(
                self.label, Outcome.CONTINUE,
                f"{self.label}: {tb.total} baseline requests so far, too few to place the "
                f"{self.tolerance.quantile:g} quantile in a bucket",
            )  # fmt: skip
        return self._verdict(tb, tc, min_requests)

    def _accumulate(self, window: MetricWindow, base: Histogram, can: Histogram, bounds: tuple[float, ...]) -> None:
        self.total["baseline"] = self.total["baseline"] + base if "baseline" in self.total else base
        self.total["canary"] = self.total["canary"] + can if "canary" in self.total else can
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        if self.edge is None:
            # Place the quantile once the baseline has enough requests beyond it to tell buckets apart.
            tb = self.total["baseline"]
            if tb.total * (1 - q) < 10:
                return
            index = reference_edge(tb, q)
            if index is None:
                return
            self.edge = bounds[index]
            above = survival_at(tb, self.edge)
            allowed = survival_at(tb, self.edge / (1 + m))
            self.reference = min(max(above, 1e-4), 1 - 1e-4)
            self.seq = _Sequences(rho=1.0 / max(allowed - above, TINY_EFFECT) ** 2)
        assert self.seq is not None and self.edge is not None
        if self.edge not in bounds:
            return  # the chosen edge vanished with a layout change: no honest comparison this interval
        index = bounds.index(self.edge)
        slower_c = survival_counts(can)[index]
        allowed_b = survival_at(base, self.edge / (1 + m))
        tb, tc = self.total["baseline"], self.total["canary"]
        allowed_so_far = round(survival_at(tb, self.edge / (1 + m)) * tb.total)
        variance = _binomial_variance((slower_c, can.total), (survival_counts(tc)[index], tc.total)) + (
            _binomial_variance((round(allowed_b * base.total), base.total), (allowed_so_far, tb.total))
        )
        self.seq.add(slower_c / can.total - allowed_b, variance, _weight(can.total, base.total, self.reference))
        for pod, sample in window.baseline.items():
            if isinstance(sample, Histogram) and sample.total > 0:
                h = rebucket(sample, bounds)
                prev = self.baseline_pods.get(pod, (0, 0))
                self.baseline_pods[pod] = (prev[0] + survival_counts(h)[index], prev[1] + h.total)
        self.canary_pods |= {p for p, s in window.canary.items() if isinstance(s, Histogram) and s.total > 0}
        self.step_requests = (self.step_requests[0] + base.total, self.step_requests[1] + can.total)

    def _verdict(self, tb: Histogram, tc: Histogram, min_requests: int) -> Verdict:
        assert self.seq is not None and self.edge is not None and self.bounds is not None
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        index = self.bounds.index(self.edge) if self.edge in self.bounds else None
        tau2 = between_pod_variance(
            [a for a, _ in self.baseline_pods.values()], [n for _, n in self.baseline_pods.values()]
        )
        pod_sd = pod_effect_sd(tau2, len(self.canary_pods), len(self.baseline_pods))
        fail_ci, pass_ci = self.seq.intervals(self.alpha_cs, self.z_pod * pod_sd)
        share_c = survival_counts(tc)[index] / tc.total if index is not None else math.nan
        share_b = survival_at(tb, self.edge)
        allowed = survival_at(tb, self.edge / (1 + m))
        figures: dict[str, object] = {
            "quantile": q,
            "max_increase": m,
            "edge_ms": self.edge,
            "canary_share_slower": share_c,
            "baseline_share_slower": share_b,
            "allowed_share_slower": allowed,
            "excess": self.seq.fail.estimate,
            "excess_cs": [fail_ci.lower, fail_ci.upper],
            "step_excess_cs": [pass_ci.lower, pass_ci.upper],
            "e_value": self.seq.e_value(),
            "pod_sd": pod_sd,
            "confidence": 1 - 2 * self.alpha_cs,
            "baseline_quantile_bucket_ms": list(quantile_range(tb, q) or ()),
            "canary_quantile_bucket_ms": list(quantile_range(tc, q) or ()),
            "requests": {"baseline": tb.total, "canary": tc.total},
            "step_requests": {"baseline": self.step_requests[0], "canary": self.step_requests[1]},
        }
        figures["p_value"] = min(1.0, 1.0 / float(figures["e_value"]))  # type: ignore[arg-type]
        head = (
            f"{self.label}: {_pct(share_c)} of canary requests slower than {self.edge:g} ms, where "
            f"+{100 * m:.0f}% on the baseline allows {_pct(allowed)} (baseline {_pct(share_b)}); "
            f"p{100 * q:g} canary {_fmt_range(quantile_range(tc, q))}, baseline {_fmt_range(quantile_range(tb, q))}"
            f"{self.layout_note}"
        )
        conf = f"{100 * (1 - 2 * self.alpha_cs):.1f}%"
        if min(self.step_requests) < min_requests:
            return Verdict(
                self.label, Outcome.CONTINUE,
                f"{head}; waiting for {min_requests} requests per version in this step", figures,
            )  # fmt: skip
        if fail_ci.lower > 0:
            return Verdict(
                self.label, Outcome.FAIL,
                f"{head}: slower than tolerated, by at least {100 * fail_ci.lower:.2f} pp of requests ({conf} "
                "confidence)", figures,
            )  # fmt: skip
        if pass_ci.upper < 0:
            return Verdict(self.label, Outcome.PASS, f"{head}: within tolerance ({conf} confidence)", figures)
        return Verdict(
            self.label, Outcome.CONTINUE,
            f"{head}: not yet shown either way (excess between {100 * fail_ci.lower:+.2f} and "
            f"{100 * fail_ci.upper:+.2f} pp)", figures,
        )  # fmt: skip


def check_labels(metric: MetricSpec) -> list[str]:
    if isinstance(metric, LatencyMetric):
        return [f"{metric.name} p{100 * t.quantile:g}" for t in metric.quantiles]
    return [metric.name]


class SequentialJudge:
    name = "sequential"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        count = sum(len(check_labels(m)) for m in policy.metrics)
        alpha = policy.analysis.alpha / count  # Bonferroni over checks: no independence needed
        self.checks: list[tuple[str, _RatioCheck | _QuantileCheck]] = []
        for metric in policy.metrics:
            if isinstance(metric, LatencyMetric):
                for label, tol in zip(check_labels(metric), metric.quantiles, strict=True):
                    self.checks.append((metric.name, _QuantileCheck(label, tol, alpha)))
            else:
                self.checks.append((metric.name, _RatioCheck(metric.name, metric.max_increase, alpha)))

    def judge(self, observation: Observation, step: int) -> Judgement:
        verdicts = []
        for metric_name, check in self.checks:
            window = observation.metrics.get(metric_name)
            if window is None:
                verdicts.append(Verdict(check.label, Outcome.NO_DATA, f"{check.label}: the source returned nothing"))
                continue
            verdicts.append(check.update(window, step, self.policy.min_requests))
        return combine(verdicts)


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
