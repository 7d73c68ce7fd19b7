"""canary's own judge: anytime-valid, non-inferiority, two-sided in its decisions.

Each check (an error rate, or one latency quantile) keeps two confidence sequences for the effect
"canary minus what the tolerance allows":
- the *fail* sequence accumulates over the whole rollout; the canary is rolled back when its lower bound
  clears zero, i.e. it is shown worse than tolerated. Its level is α, split evenly over the metrics and
  then over a latency metric's quantiles: the chance of ever rolling back a canary within tolerance,
  checking every interval, is at most α;
- the *pass* sequence starts afresh at every step; the step's check is passed when its upper bound falls
  below zero at the pass level (`analysis.passAlpha`, whole for each check: a pass needs every check), and
  stays passed for the rest of the step unless the canary fails.
Both use the normal-mixture boundary of `canary.stats.confidence`, so looking every interval costs nothing.

Every interval is compared within itself (canary against the baseline over the same minute, with each
version's observed request count), so service-wide drift and an inexact traffic split cancel out.
Pod-to-pod spread, which does not shrink with more requests, is estimated from the baseline's active pods
and widens both sequences by a Student t quantile (the spread is estimated from few pods).
A latency check tests the quantile the policy names: the share of canary requests slower than (1 + m)
times the baseline's q-quantile, against 1 − q (docs/statistics.md states the method and what it assumes).
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from scipy.stats import t as student_t

from canary.codec import clone
from canary.model import Histogram, Judgement, MetricWindow, Observation, Outcome, Ratio, Sample, Verdict
from canary.policy import LatencyMetric, MetricSpec, Policy, QuantileTolerance
from canary.stats.buckets import (
    block_share,
    common_layout,
    density,
    locate,
    merge,
    quantile_range,
    rebucket,
    survival_at,
)
from canary.stats.confidence import Evidence, Interval, confidence_sequence, mixture_e_value
from canary.stats.pods import between_pod_variance, pod_effect_sd

TINY_EFFECT = 1e-3  # floor of the mixture's effect scale τ, in rate units
POD_SHARE = 0.25  # share of a check's α spent on the pod term
ACTIVE_BLOCKS = 5  # a pod counts while it served requests in one of the last this many blocks
WHOLE_DISPERSION_BELOW = 3  # with fewer baseline pods, the spread is their whole dispersion, noise included
MIN_EXPECTED = 5.0  # latency: a block closes once each version expects this many requests beyond the point
INTERPOLATION_ALLOWANCE = 0.02  # latency: how far an interpolated share may be off, as a share of its bucket
LOCATE_AFTER = 50.0  # baseline requests expected beyond its q-quantile before the quantile is placed
RATIO_FAIL_SCALES = (1.0, 2.0)  # a ratio's fail mixture: its mass on excesses of the margin and twice the margin


@dataclass
class Sequences:
    """The two confidence sequences of one effect (part of the judge's persisted state)."""

    rho: float
    fail: Evidence = field(default_factory=Evidence)
    step: Evidence = field(default_factory=Evidence)
    best_e: float = 1.0  # running maximum of the fail e-process: 1 / best_e is the always-valid p-value

    def add(
        self, estimate: float, variance: float, weight: float, *, fail_allowance: float = 0.0, pass_allowance: float = 0
    ) -> None:
        """One interval's estimate; the fail sequence sees it less `fail_allowance`, the pass sequence plus
        `pass_allowance` (margins for what the estimate assumes)."""
        self.fail = self.fail.add(estimate - fail_allowance, variance, weight)
        self.step = self.step.add(estimate + pass_allowance, variance, weight)

    def e_values(self, widen: float, rhos: tuple[float, ...]) -> tuple[float, float]:
        """The fail e-process now (its mixture at the precisions `rhos`), evidence against "within tolerance"
        with the boundary moved out by the pod term (the check fails exactly when it reaches 1 / the
        sequences' α), and its running maximum."""
        now = mixture_e_value(self.fail, widen, rhos, upper=True)
        self.best_e = max(self.best_e, now)
        return now, self.best_e


@dataclass(frozen=True)
class Reading:
    """A check's sequences read at its levels: the fail interval (whole rollout, α), the step's pass interval
    (pass level), and the fail e-process with its running maximum."""

    fail: Interval
    passed: Interval
    e_value: float
    e_max: float


@dataclass
class PodCounts:
    """One pod's counts for the pod term, and the block it last served requests in."""

    events: float = 0.0  # errors, or (latency) requests slower than the baseline's quantile
    trials: int = 0
    last: int = 0


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
    baseline_pods: dict[str, PodCounts] = field(default_factory=dict)
    canary_pods: dict[str, int] = field(default_factory=dict)  # pod -> the block it last served requests in
    reference: float | None = None  # the rate weights are scaled by: the baseline's first rate + the margin
    step_requests: tuple[int, int] = (0, 0)  # (baseline, canary) requests in the current step
    step_index: int = -1
    block: int = 0  # intervals (blocks, for latency) added so far
    passed: bool = False  # shown within tolerance in this step: a pass does not flip back within it


@dataclass
class QuantileState:
    """What a latency check carries from tick to tick: the located quantile, its sequences, running totals."""

    seq: Sequences | None = None  # made once the baseline's q-quantile is located
    baseline_quantile_ms: float | None = None  # t: the baseline's q-quantile, interpolated, fixed once located
    undecidable: str = ""  # why the buckets cannot place t or (1 + m) t, when they cannot
    baseline: Histogram | None = None  # running totals, on the edges every interval had
    canary: Histogram | None = None
    block_baseline: Histogram | None = None  # the block being filled (sparse counts are pooled)
    block_canary: Histogram | None = None
    baseline_pods: dict[str, PodCounts] = field(default_factory=dict)
    canary_pods: dict[str, int] = field(default_factory=dict)
    layout_note: str = ""
    step_requests: tuple[int, int] = (0, 0)
    step_index: int = -1
    block: int = 0
    passed: bool = False


@dataclass
class SequentialState:
    """The judge's evidence between ticks, per check label: what a restart needs to carry on."""

    ratios: dict[str, RatioState] = field(default_factory=dict)
    quantiles: dict[str, QuantileState] = field(default_factory=dict)
    e_max: float = 1.0  # running maximum of the checks' combined e-process
    e_last: dict[str, float] = field(default_factory=dict)  # per check label, its fail e-process when last read


def _pod_sd(
    baseline: dict[str, PodCounts], canary: dict[str, int], block: int, canary_scale: float = 1.0, whole_below: int = 0
) -> tuple[float, int, int]:
    """The pod term's standard deviation from the pods active in the last ACTIVE_BLOCKS blocks, how many
    baseline pods estimated it and how many canary pods it covers (a pod that stopped serving no longer counts)."""
    active = [p for p in baseline.values() if block - p.last < ACTIVE_BLOCKS and p.trials > 0]
    canary_active = sum(1 for last in canary.values() if block - last < ACTIVE_BLOCKS)
    # Fewer than `whole_below` baseline pods look alike by chance too often for the noise to be taken off.
    noise = 0.0 if len(active) < whole_below else 1.0
    tau2 = between_pod_variance([p.events for p in active], [p.trials for p in active], noise=noise)
    return pod_effect_sd(tau2, canary_active, len(active), canary_scale), len(active), canary_active


def _forget_gone(baseline: dict[str, PodCounts], canary: dict[str, int], block: int) -> None:
    """Drop the pods that no longer count (none served in the last ACTIVE_BLOCKS blocks): the evidence the
    route's state carries grows with the pods serving, not with every pod a rollout's churn ever saw."""
    for pod in [pod for pod, seen in baseline.items() if block - seen.last >= ACTIVE_BLOCKS]:
        del baseline[pod]
    for pod in [pod for pod, last in canary.items() if block - last >= ACTIVE_BLOCKS]:
        del canary[pod]


class PodLimit(enum.Enum):
    """What the baseline pods serving leave the pod term short of (docs/statistics.md, Pods)."""

    UNMEASURED = "unmeasured"  # fewer than 2: no spread to measure, pods assumed alike
    WHOLE = "whole"  # bounded by their whole dispersion, noise included: valid, slower to decide
    ROUGH = "rough"  # estimated too roughly to bound the canary's pod luck (measured at or just above α)


def pod_limit(baseline_pods: int, canary_pods: int, whole_below: int = 0) -> PodLimit | None:
    """The one rule: fewer than 2 baseline pods are unmeasured; fewer than `whole_below` are bounded by their
    whole dispersion; otherwise 2 baseline pods, or 3 against one canary pod, are rough (the error-rate check
    measured above α with 2, at or just above with 3 against 1); None where the term does its part."""
    if baseline_pods < 2:
        return PodLimit.UNMEASURED
    if baseline_pods < whole_below:
        return PodLimit.WHOLE
    if baseline_pods == 2 or (baseline_pods == 3 and canary_pods <= 1):
        return PodLimit.ROUGH
    return None


def pod_caveat(baseline_pods: int, canary_pods: int, whole_below: int = 0) -> str | None:
    """`pod_limit` in a verdict's words."""
    limit = pod_limit(baseline_pods, canary_pods, whole_below)
    if limit is None:
        return None
    if limit is PodLimit.UNMEASURED:
        serving = f"{baseline_pods} baseline pod{'' if baseline_pods == 1 else 's'}"
        return f"pods assumed alike ({serving} serving, too few to measure how pods differ)"
    how = "by their whole spread" if limit is PodLimit.WHOLE else "only roughly"
    return f"only {baseline_pods} baseline pods serving: how pods differ is bounded {how}"


@functools.lru_cache(maxsize=256)
def _quantile_z(share: float, pods: int) -> float:
    """A Student t quantile with pods − 1 degrees of freedom: the spread is estimated from that many pods."""
    return float(student_t.isf(share, df=max(pods - 1, 1)))


class _Check:
    """One line of the judge's report: its configuration (from the policy); the evidence is passed in."""

    label: str
    whole_below: int = 0  # below this many baseline pods, their whole dispersion bounds how pods differ
    fail_scales: tuple[float, ...] = (1.0,)  # the fail mixture's mass: on effects these many times the scale

    def __init__(self, label: str, alpha: float, pass_alpha: float) -> None:
        self.label = label
        self.alpha = alpha
        self.pass_alpha = pass_alpha
        # A union bound: three quarters of each level for the time-uniform sequences, a quarter for the
        # luck of the canary's pods. With homogeneous pods the pod term is zero and costs little.
        self.alpha_cs = alpha * (1 - POD_SHARE)
        self.pass_cs = pass_alpha * (1 - POD_SHARE)

    def read(self, seq: Sequences, pod_sd: float, pods: int) -> Reading:
        """The fail sequence at the check's α, the step's pass sequence at its pass level, the e-process."""
        fail_widen = _quantile_z(self.alpha * POD_SHARE, pods) * pod_sd if pod_sd > 0 else 0.0
        pass_widen = _quantile_z(self.pass_alpha * POD_SHARE, pods) * pod_sd if pod_sd > 0 else 0.0
        fail_rhos = tuple(seq.rho / (k * k) for k in self.fail_scales)
        return Reading(
            confidence_sequence(seq.fail, fail_rhos, self.alpha_cs, fail_widen),
            confidence_sequence(seq.step, seq.rho, self.pass_cs, pass_widen),
            *seq.e_values(fail_widen, fail_rhos),
        )

    def e_figures(self, reading: Reading) -> dict[str, object]:
        """The e-process in the record: p_value ≤ the check's α exactly when the check has failed."""
        return {
            "e_value": reading.e_value,
            "e_max": reading.e_max,
            "p_value": min(1.0, 1.0 / ((1 - POD_SHARE) * reading.e_max)),
            "alpha": self.alpha,
        }

    def verdict(
        self,
        st: RatioState | QuantileState,
        head: str,
        figures: dict[str, object],
        min_requests: int,
        *,
        fail: str | None,
        passed: str | None,
        open_: str,
    ) -> Verdict:
        """The decision ladder every check shares: a failure acts at once (the fail sequence is anytime-valid),
        a pass needs the step's minimum of requests and then holds for the step, anything else keeps
        collecting."""
        pods, canary_pods = figures.get("baseline_pods"), figures.get("canary_pods")
        caveat = None
        if isinstance(pods, int) and isinstance(canary_pods, int):
            caveat = pod_caveat(pods, canary_pods, self.whole_below)
        if caveat is not None:
            head += f"; {caveat}"
        if fail is not None:
            return Verdict(self.label, Outcome.FAIL, f"{head}: {fail}", figures)
        if min(st.step_requests) < min_requests:
            return Verdict(
                self.label, Outcome.CONTINUE, f"{head}; waiting for {min_requests} requests per version in this step",
                figures,
            )  # fmt: skip
        if passed is not None or st.passed:
            st.passed = True
            return Verdict(self.label, Outcome.PASS, f"{head}: {passed or 'within tolerance, shown in this step'}",
                           figures)  # fmt: skip
        return Verdict(self.label, Outcome.CONTINUE, f"{head}: {open_}", figures)

    @staticmethod
    def new_step(st: RatioState | QuantileState, step: int) -> None:
        if step != st.step_index:
            st.step_index, st.step_requests, st.passed = step, (0, 0), False
            if st.seq is not None:
                st.seq.step = Evidence()


class _RatioCheck(_Check):
    """Canary rate − baseline rate − margin, per interval; higher is worse. Two baseline pods that look alike
    by chance left a canary pod's luck unguarded (docs/statistics.md, Pods): their whole dispersion bounds it.
    The fail mixture is spread over excesses of the margin's size and twice it: an error rate's regressions
    run to many times a margin of a fraction of a point, and the second half catches those a minute sooner
    (docs/statistics.md, The confidence sequence)."""

    whole_below = WHOLE_DISPERSION_BELOW
    fail_scales = RATIO_FAIL_SCALES

    def __init__(self, label: str, margin: float, alpha: float, pass_alpha: float) -> None:
        super().__init__(label, alpha, pass_alpha)
        self.margin = margin

    def start_in(self, state: SequentialState) -> None:
        state.ratios[self.label] = RatioState(seq=Sequences(rho=1.0 / max(self.margin, TINY_EFFECT) ** 2))

    def update_in(self, state: SequentialState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        return self.update(state.ratios[self.label], window, step, min_requests)

    def update(self, st: RatioState, window: MetricWindow, step: int, min_requests: int) -> Verdict:
        self.new_step(st, step)
        base, can = _total_ratio(window.baseline), _total_ratio(window.canary)
        if base.trials > 0 and can.trials > 0:
            st.block += 1
            st.baseline += base
            st.canary += can
            for pod, sample in window.baseline.items():
                if isinstance(sample, Ratio) and sample.trials > 0:
                    seen = st.baseline_pods.setdefault(pod, PodCounts())
                    seen.events, seen.trials, seen.last = (
                        seen.events + sample.events,
                        seen.trials + sample.trials,
                        st.block,
                    )
            for pod, sample in window.canary.items():
                if isinstance(sample, Ratio) and sample.trials > 0:
                    st.canary_pods[pod] = st.block
            _forget_gone(st.baseline_pods, st.canary_pods, st.block)
            tb = st.baseline
            if st.reference is None:  # the least favourable canary's rate, from the baseline alone: the
                # canary's own outcome never sets the scale its evidence is weighed on
                st.reference = min(_shrunk(base.events, base.trials) + self.margin, 0.5)
            rate_b = _baseline_rate((base.events, base.trials), (tb.events, tb.trials))
            variance = _null_variance(rate_b + self.margin, rate_b, can.trials, base.trials)
            estimate = can.events / can.trials - base.events / base.trials - self.margin
            st.seq.add(estimate, variance, _weight(can.trials, base.trials, st.reference))
            st.step_requests = (st.step_requests[0] + base.trials, st.step_requests[1] + can.trials)
        tb, tc = st.baseline, st.canary
        if tb.trials == 0 or tc.trials == 0:
            return Verdict(self.label, Outcome.NO_DATA, _missing(self.label, base.trials, can.trials))
        running = _shrunk(tb.events, tb.trials)
        pod_sd, pods, canary_pods = _pod_sd(
            st.baseline_pods, st.canary_pods, st.block, (running + self.margin) / running, self.whole_below
        )
        reading = self.read(st.seq, pod_sd, pods)
        fail_ci, pass_ci = reading.fail, reading.passed
        rate_b, rate_c = tb.events / tb.trials, tc.events / tc.trials
        figures: dict[str, object] = {
            "baseline": {"errors": tb.events, "requests": tb.trials, "rate": rate_b},
            "canary": {"errors": tc.events, "requests": tc.trials, "rate": rate_c},
            "difference": st.seq.fail.estimate + self.margin,
            "difference_cs": [fail_ci.lower + self.margin, fail_ci.upper + self.margin],
            "step_difference_cs": [pass_ci.lower + self.margin, pass_ci.upper + self.margin],
            "max_increase": self.margin,
            **self.e_figures(reading),
            "pod_sd": pod_sd,
            "baseline_pods": pods,
            "canary_pods": canary_pods,
            "confidence": 1 - self.alpha,
            "pass_confidence": 1 - self.pass_alpha,
            "step_requests": {"baseline": st.step_requests[0], "canary": st.step_requests[1]},
        }
        head = (
            f"{self.label}: canary {_pct(rate_c)} vs baseline {_pct(rate_b)} "
            f"({tc.events}/{tc.trials} vs {tb.events}/{tb.trials}), allowed +{100 * self.margin:.2f} pp"
        )
        lo, hi = fail_ci.lower + self.margin, fail_ci.upper + self.margin
        return self.verdict(
            st, head, figures, min_requests,
            fail=f"worse than tolerated, the increase is at least +{100 * lo:.2f} pp "
            f"({100 * (1 - self.alpha):.1f}% confidence)" if fail_ci.lower > 0 else None,
            passed=f"within tolerance, the increase is at most +{100 * (pass_ci.upper + self.margin):.2f} pp "
            f"({100 * (1 - self.pass_alpha):.1f}% confidence)" if pass_ci.upper < 0 else None,
            open_=f"not yet shown either way (increase between {100 * lo:+.2f} and {100 * hi:+.2f} pp)",
        )  # fmt: skip


def _total_histogram(samples: Mapping[str, Sample], bounds: tuple[float, ...]) -> Histogram | None:
    return merge([rebucket(s, bounds) for s in samples.values() if isinstance(s, Histogram)])


def _add(total: Histogram | None, more: Histogram) -> Histogram:
    return (merge([total, more]) or more) if total is not None else more


def _bucket_around(bounds: tuple[float, ...], x: float) -> tuple[float, float]:
    """The edges (lower, upper) of the bucket that holds x."""
    lower = 0.0
    for edge in bounds:
        if x <= edge:
            return lower, edge
        lower = edge
    return lower, math.inf


def _inside(hist: Histogram, x: float) -> float:
    """The share of requests in the bucket that holds x."""
    lower, upper = _bucket_around(hist.bounds, x)
    return max((survival_at(hist, lower) if lower > 0 else 1.0) - survival_at(hist, upper), 0.0)


def _kappa(canary: Histogram, baseline: Histogram, point: float, t: float, m: float) -> float:
    """How far the canary's share at the point moves per share the baseline's quantile t is off: the
    densities' ratio there (bounded, so one empty bucket cannot make it vanish or explode)."""
    return min(max(density(canary, point) * (1 + m) / max(density(baseline, t), 1e-12), 0.25), 4.0)


def _slack(canary: Histogram, baseline: Histogram, t: float, point: float, kappa: float = 1.0) -> float:
    """How far the interpolated D may be off: INTERPOLATION_ALLOWANCE of the canary's bucket at the point,
    and of the baseline's bucket at t carried to the point (docs/statistics.md states and measures it)."""
    return INTERPOLATION_ALLOWANCE * (_inside(canary, point) + kappa * _inside(baseline, t))


def place(baseline: Histogram, q: float, m: float) -> tuple[float, float] | str:
    """Where a latency check can test: the baseline's q-quantile t and the share a shift of m moves past it
    (the effect, the scale of the check's sequences); or, where the buckets cannot resolve the tolerance,
    why not, in words. Resolvable means a canary twice the tolerance beyond the baseline would stand out
    from what the interpolation may be off: the effect is at least twice the slack at t and (1 + m) t."""
    t = locate(baseline, 1 - q)
    last = baseline.bounds[-1] if baseline.bounds else 0.0
    if t is None:
        where = _fmt_range(quantile_range(baseline, q))
        return f"the baseline's p{100 * q:g} lies in the bucket {where}, which holds no shape to place it"
    if (1 + m) * t >= last:
        return (
            f"{(1 + m) * t:.0f} ms is beyond the last bucket edge ({last:g} ms): no count can show where "
            f"the canary's p{100 * q:g} lies"
        )
    effect = survival_at(baseline, t / (1 + m)) - (1 - q)
    slack = _slack(baseline, baseline, t, (1 + m) * t)
    if effect < 2 * slack:
        around = sorted({_bucket_around(baseline.bounds, t), _bucket_around(baseline.bounds, (1 + m) * t)})
        return (
            f"the buckets around the baseline's p{100 * q:g} (about {t:.0f} ms) are "
            f"{' and '.join(_fmt_range(r) for r in around)}; a shift of +{100 * m:g}% moves {_pct(effect)} of "
            f"requests, too few to tell from how far reading inside the buckets may be off ({_pct(slack)}); it "
            "needs finer buckets (sidecar.istio.io/statsHistogramBuckets) or a larger tolerance"
        )
    return t, effect


def _fmt_range(r: tuple[float, float] | None) -> str:
    if r is None:
        return "unknown"
    lo, hi = r
    return f"above {lo:g} ms" if math.isinf(hi) else f"{lo:g}–{hi:g} ms"


class _QuantileCheck(_Check):
    """The canary's q-quantile may be at most (1 + m) times the baseline's.

    That is: at the point x* = (1 + m) t, with t the baseline's q-quantile, the share of canary requests
    slower than x* is at most 1 − q. Per block of intervals the judge tests

        D = (canary share slower than x*) − (1 − q),

    with t located in the block's own baseline counts and the share read from its canary counts, both off
    the smooth curve `survival_at` draws through the bucket edges (the stated assumption); a failure must
    hold beyond the allowance for that read-off (`_slack`). Where the buckets cannot resolve the tolerance
    (`place`), the check is undecidable and ends inconclusive rather than deciding another quantile.
    """

    def __init__(self, label: str, tolerance: QuantileTolerance, alpha: float, pass_alpha: float) -> None:
        super().__init__(label, alpha, pass_alpha)
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
        self.new_step(st, step)
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
        if st.undecidable:
            return Verdict(self.label, Outcome.CONTINUE,
                           f"{self.label} +{100 * self.tolerance.max_increase:g}%: undecidable: {st.undecidable}",
                           {"decidable": False, "why": st.undecidable})  # fmt: skip
        if st.seq is None or st.baseline_quantile_ms is None:
            return Verdict(
                self.label, Outcome.CONTINUE,
                f"{self.label}: {tb.total} baseline requests so far, too few to place its "
                f"{self.tolerance.quantile:g} quantile",
            )  # fmt: skip
        return self._verdict(st, tb, tc, min_requests)

    def _locate(self, st: QuantileState, tb: Histogram) -> None:
        """Place the baseline's q-quantile t, once enough requests lie beyond it to tell buckets apart."""
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        if tb.total * (1 - q) < LOCATE_AFTER:
            return
        placed = place(tb, q, m)
        if isinstance(placed, str):
            st.undecidable = placed
            return
        st.baseline_quantile_ms, effect = placed
        st.seq = Sequences(rho=1.0 / max(effect, TINY_EFFECT) ** 2)

    def _accumulate(
        self, st: QuantileState, window: MetricWindow, base: Histogram, can: Histogram, bounds: tuple[float, ...]
    ) -> None:
        st.baseline, st.canary = _add(st.baseline, base), _add(st.canary, can)
        st.step_requests = (st.step_requests[0] + base.total, st.step_requests[1] + can.total)
        # Every interval joins a block, those before the quantile is placed too: each block locates the
        # baseline's quantile in its own counts, so placing t (for the scale and the pods) costs no data.
        st.block_baseline, st.block_canary = _add(st.block_baseline, base), _add(st.block_canary, can)
        if st.seq is None and not st.undecidable:
            self._locate(st, st.baseline)
        if st.seq is None or st.baseline_quantile_ms is None:
            return
        t = st.baseline_quantile_ms
        block = st.block + 1
        for pod, sample in window.baseline.items():
            if isinstance(sample, Histogram) and sample.total > 0:
                share = survival_at(rebucket(sample, bounds), t)
                if math.isfinite(share):
                    seen = st.baseline_pods.setdefault(pod, PodCounts())
                    seen.events, seen.trials, seen.last = (
                        seen.events + share * sample.total,
                        seen.trials + sample.total,
                        block,
                    )
        for pod, sample in window.canary.items():
            if isinstance(sample, Histogram) and sample.total > 0:
                st.canary_pods[pod] = block
        _forget_gone(st.baseline_pods, st.canary_pods, st.block)
        self._close_block(st)

    def _close_block(self, st: QuantileState) -> None:
        """Add the block once each version expects MIN_EXPECTED requests beyond the point under the null:
        the block's end depends on request counts only, never on what they show."""
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        pb, pc, t = st.block_baseline, st.block_canary, st.baseline_quantile_ms
        assert st.seq is not None and t is not None and st.baseline is not None
        if pb is None or pc is None or min(pb.total, pc.total) * (1 - q) < MIN_EXPECTED:
            return
        assert st.canary is not None
        # This block's own baseline quantile: the test is at q in every block, whatever the load did.
        t_block = locate(pb, 1 - q, st.baseline)
        if t_block is None or (1 + m) * t_block >= pb.bounds[-1]:
            return  # this block cannot place it: it keeps filling
        point = (1 + m) * t_block
        read = block_share(pc, st.canary, point, baseline=(pb, st.baseline))
        if not math.isfinite(read.share):
            return
        p = 1 - q if q > 0.5 else 0.5  # the least favourable canary sits at 1 − q beyond the point
        # The baseline's quantile is estimated too: its error moves the point, weighed by the densities.
        kappa = _kappa(st.canary, st.baseline, point, t, m)
        variance = p * (1 - p) * (1 / pc.total + kappa * kappa / pb.total)
        st.seq.add(  # where no one shape reads the bucket, the fail test sees its lowest reading, the pass its highest
            read.share - (1 - q), variance, _weight(pc.total, pb.total, 1 - q),
            fail_allowance=max(_slack(pc, pb, t_block, point, kappa), read.share - read.low),
            pass_allowance=max(read.high - read.share, 0.0),
        )  # fmt: skip
        st.block += 1
        st.block_baseline = st.block_canary = None

    def _verdict(self, st: QuantileState, tb: Histogram, tc: Histogram, min_requests: int) -> Verdict:
        q, m = self.tolerance.quantile, self.tolerance.max_increase
        assert st.seq is not None and st.baseline_quantile_ms is not None
        t = st.baseline_quantile_ms
        point = (1 + m) * t
        # A pod's latency level moves its share beyond the point by the density there: the baseline's spread
        # at t (what τ measures) reaches D through κ, and so does the canary's, whose pods share the level.
        pod_sd, pods, canary_pods = _pod_sd(st.baseline_pods, st.canary_pods, st.block)
        pod_sd *= _kappa(tc, tb, point, t, m)
        reading = self.read(st.seq, pod_sd, pods)
        fail_ci, pass_ci = reading.fail, reading.passed
        share_c, share_b = survival_at(tc, point), survival_at(tb, t)
        figures: dict[str, object] = {
            "quantile": q,
            "max_increase": m,
            "baseline_quantile_ms": t,
            "point_ms": point,
            "canary_share_slower": share_c,
            "baseline_share_slower": share_b,
            "allowed_share_slower": 1 - q,
            "excess": st.seq.fail.estimate,
            "excess_cs": [fail_ci.lower, fail_ci.upper],
            "step_excess_cs": [pass_ci.lower, pass_ci.upper],
            **self.e_figures(reading),
            "pod_sd": pod_sd,
            "baseline_pods": pods,
            "canary_pods": canary_pods,
            "blocks": st.block,
            "confidence": 1 - self.alpha,
            "pass_confidence": 1 - self.pass_alpha,
            "baseline_quantile_bucket_ms": list(quantile_range(tb, q) or ()),
            "canary_quantile_bucket_ms": list(quantile_range(tc, q) or ()),
            "requests": {"baseline": tb.total, "canary": tc.total},
            "step_requests": {"baseline": st.step_requests[0], "canary": st.step_requests[1]},
            "decidable": True,
        }
        head = (
            f"{self.label}: {_pct(share_c)} of canary requests slower than {point:.0f} ms (+{100 * m:g}% on the "
            f"baseline's p{100 * q:g}, about {t:.0f} ms), where the tolerance allows {_pct(1 - q)}; "
            f"p{100 * q:g} canary {_fmt_range(quantile_range(tc, q))}, baseline {_fmt_range(quantile_range(tb, q))}"
            f"{st.layout_note}"
        )
        return self.verdict(
            st, head, figures, min_requests,
            fail=f"slower than tolerated, by at least {100 * fail_ci.lower:.2f} pp of requests "
            f"({100 * (1 - self.alpha):.1f}% confidence)" if fail_ci.lower > 0 else None,
            passed=f"within tolerance ({100 * (1 - self.pass_alpha):.1f}% confidence)" if pass_ci.upper < 0 else None,
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
        # A rollback needs one check to fail: Bonferroni, which needs no independence, spreads α evenly over
        # metrics, then over a metric's quantiles. A pass needs every check to pass (an intersection-union
        # test): a wrong pass is a wrong pass of some one check, so each check is tested at the whole level.
        alpha = policy.analysis.alpha / len(policy.metrics)
        pass_alpha = policy.analysis.pass_alpha
        self.checks: list[tuple[str, _RatioCheck | _QuantileCheck]] = []
        for metric in policy.metrics:
            if isinstance(metric, LatencyMetric):
                k = len(metric.quantiles)
                for label, tol in zip(check_labels(metric), metric.quantiles, strict=True):
                    self.checks.append((metric.name, _QuantileCheck(label, tol, alpha / k, pass_alpha)))
            else:
                self.checks.append((metric.name, _RatioCheck(metric.name, metric.max_increase, alpha, pass_alpha)))

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
        # The checks' fail e-processes averaged with weights α_i / α (the Bonferroni shares, which sum to 1).
        # A check without evidence yet counts 1; one whose window is missing, its value when last read (the
        # e-process does not move without data; counting 1 would lift one far below 1). An average of
        # e-processes is one, so a rollback when it reaches 1 / (α (1 − POD_SHARE)) keeps the rollout's α, the
        # pod terms keeping their own shares. One check reaching its own threshold lifts the average there
        # too: never less powerful than Bonferroni, and more where several checks each hold part of the
        # evidence.
        alpha = self.policy.analysis.alpha
        combined = 0.0
        for (_, check), verdict in zip(self.checks, verdicts, strict=True):
            e = verdict.figures.get("e_value")
            new.e_last[check.label] = e if isinstance(e, float) else new.e_last.get(check.label, 1.0)
            combined += check.alpha / alpha * new.e_last[check.label]
        new.e_max = max(new.e_max, combined)
        figures = {"e_value": combined, "e_max": new.e_max, "alpha": alpha,
                   "p_value": min(1.0, 1.0 / ((1 - POD_SHARE) * new.e_max))}  # fmt: skip
        if combined * (1 - POD_SHARE) * alpha >= 1.0 and not any(v.outcome is Outcome.FAIL for v in verdicts):
            ranked = sorted(new.e_last.items(), key=lambda item: -item[1])[:3]  # what the average is made of
            named = ", ".join(f"{label} (e = {e:.3g})" for label, e in ranked)
            summary = f"worse than tolerated on the checks' evidence together (e = {combined:.3g}): {named}"
            return new, Judgement(Outcome.FAIL, tuple(verdicts), summary, figures)
        return new, combine(verdicts, figures)


def combine(verdicts: list[Verdict], figures: Mapping[str, object] | None = None) -> Judgement:
    """Any failure fails; all passing passes; otherwise keep collecting evidence."""
    figures = figures or {}
    outcomes = [v.outcome for v in verdicts]
    failed = [v.metric for v in verdicts if v.outcome is Outcome.FAIL]
    if failed:
        return Judgement(Outcome.FAIL, tuple(verdicts), f"worse than tolerated: {', '.join(failed)}", figures)
    if outcomes and all(o is Outcome.PASS for o in outcomes):
        return Judgement(Outcome.PASS, tuple(verdicts), "every metric shown within tolerance", figures)
    if outcomes and all(o is Outcome.NO_DATA for o in outcomes):
        return Judgement(Outcome.NO_DATA, tuple(verdicts), "no data for either version yet", figures)
    pending = [v.metric for v in verdicts if v.outcome is not Outcome.PASS]
    return Judgement(Outcome.CONTINUE, tuple(verdicts), f"collecting evidence: {', '.join(pending)}", figures)
