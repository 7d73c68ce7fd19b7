"""A Kayenta-style judge (Spinnaker's NetflixACAJudge), for teams migrating from Spinnaker and for the
detection benchmark.

FIXED-HORIZON, NOT ANYTIME-VALID. Kayenta's test is meant to be run once, at the end of an analysis
window. Run every interval, as pipelines do and as this judge is run here, each look is another chance of
a false alarm: its false rollback rate grows with every interval, and no setting of `confidence` bounds
the chance of ever rolling back a healthy canary. canary's own `sequential` judge exists for that reason.

What it does, per check (the error rate; each latency quantile on its own), within the current step:
- keeps one value per interval and version, as a Kayenta Prometheus query would return it: errors /
  requests of the interval, and `histogram_quantile` (linear inside the bucket) of the interval's
  summed histogram; an interval without requests gives no value (Kayenta's default `nanStrategy:
  remove`);
- once the step has `min_intervals` intervals, compares the canary's series with the baseline's by a
  two-sided Mann-Whitney U test at `confidence` (0.98 in Kayenta) and classifies it as Kayenta's
  MannWhitneyClassifier does: High when the whole confidence interval of the Hodges–Lehmann shift lies
  above `effect` × |shift| (Kayenta's tolerance, 0.25) *and* the effect size exceeds the allowed one;
  Low likewise below; Pass otherwise; NoData when a version has fewer than two values. The allowed
  effect is Kayenta's `allowedIncrease` taken from the policy: a canary mean at least (1 + maxIncrease)
  times the baseline mean for a latency quantile, and at least the baseline mean + maxIncrease for an
  error rate (the ratio (baseline + maxIncrease) / baseline, written so a baseline of zero errors is
  no special case);
- scores 100 × the weighted share of checks classified Pass (a metric's weight split evenly over its
  quantiles; NoData counts as not passing); a High or Low on a `critical` metric sets the score to 0.
  Score below `marginal` fails the canary, at or above `pass` passes the step, in between waits for
  more intervals.

Kayenta's metric direction is configurable; canary's tolerances bound only increases, so this judge
uses `direction: increase` by default (a canary significantly *better* is a Pass, not a Low); pass
`direction="either"` to reproduce Kayenta's own default, where a Low counts against the canary.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from canary.codec import clone
from canary.judges.sequential import check_labels
from canary.model import Histogram, Judgement, Observation, Outcome, Ratio, Sample, Verdict
from canary.policy import LatencyMetric, MetricSpec, Policy
from canary.stats.buckets import common_layout, interpolated_quantile, rebucket
from canary.stats.mannwhitney import MannWhitney, NoData, mann_whitney

Direction = Literal["increase", "either"]


class Classification(enum.StrEnum):
    HIGH = "High"
    LOW = "Low"
    PASS = "Pass"
    NO_DATA = "NoData"


@dataclass(frozen=True)
class Allowed:
    """The effect a check tolerates, as canary means the baseline mean allows (Kayenta's effect size)."""

    relative: float | None = None  # latency: canary mean ≥ (1 + relative) × baseline mean is High
    absolute: float | None = None  # error rate: canary mean ≥ baseline mean + absolute is High

    def high(self, baseline_mean: float) -> float:
        if self.relative is not None:
            return (1 + self.relative) * baseline_mean
        return baseline_mean + (self.absolute or 0.0)

    def low(self, baseline_mean: float) -> float:
        """The mirror image, for direction "either"."""
        if self.relative is not None:
            return baseline_mean / (1 + self.relative)
        return baseline_mean - (self.absolute or 0.0)

    def ratio(self, baseline_mean: float) -> float | None:
        """Kayenta's `allowedIncrease`: the mean ratio at which High starts (None for a zero baseline)."""
        if baseline_mean <= 0:
            return None
        return self.high(baseline_mean) / baseline_mean


@dataclass(frozen=True)
class Comparison:
    """One check's classification and the figures behind it."""

    classification: Classification
    reason: str
    test: MannWhitney | None = None
    canary_mean: float | None = None
    baseline_mean: float | None = None


def _mean(values: Sequence[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


def classify(
    canary: Sequence[float],
    baseline: Sequence[float],
    allowed: Allowed,
    *,
    confidence: float = 0.98,
    tolerance: float = 0.25,
    direction: Direction = "increase",
) -> Comparison:
    """Kayenta's MannWhitneyClassifier on two series of per-interval values."""
    c_mean, b_mean = _mean(canary), _mean(baseline)
    test = mann_whitney(canary, baseline, confidence=confidence, exact=False)  # Kayenta: asymptotic only
    if isinstance(test, NoData):
        return Comparison(Classification.NO_DATA, test.reason, None, c_mean, b_mean)
    assert c_mean is not None and b_mean is not None
    if sorted(canary) == sorted(baseline):
        return Comparison(Classification.PASS, "the canary and baseline values are identical", test, c_mean, b_mean)
    if len(set(canary) | set(baseline)) == 1:
        return Comparison(Classification.PASS, "every value is the same", test, c_mean, b_mean)
    band = tolerance * abs(test.estimate)
    if test.lower > band and c_mean >= allowed.high(b_mean):
        return Comparison(Classification.HIGH, "significantly higher, by more than allowed", test, c_mean, b_mean)
    if direction == "either" and test.upper < -band and c_mean <= allowed.low(b_mean):
        return Comparison(Classification.LOW, "significantly lower, by more than allowed", test, c_mean, b_mean)
    if test.lower > band:
        reason = "significantly higher, but by less than allowed"
    elif test.upper < -band:
        reason = "significantly lower" + (", but by less than allowed" if direction == "either" else "")
    else:
        reason = "no significant difference"
    return Comparison(Classification.PASS, reason, test, c_mean, b_mean)


# ------------------------------------------------------------------------------------ per-interval values


def interval_ratio(samples: Mapping[str, Sample]) -> float | None:
    """Events / trials over all pods, or None when nothing was counted (Prometheus gives NaN)."""
    events = sum(s.events for s in samples.values() if isinstance(s, Ratio))
    trials = sum(s.trials for s in samples.values() if isinstance(s, Ratio))
    return events / trials if trials > 0 else None


def interval_quantile(samples: Mapping[str, Sample], q: float) -> float | None:
    """histogram_quantile(q, sum by (le)) over all pods, on the edges every pod has; None without data.

    What a peer's Prometheus query returns for one interval (the Flagger-style judge uses it too).
    """
    hists = [s for s in samples.values() if isinstance(s, Histogram)]
    layout = common_layout([h.bounds for h in hists])
    if layout is None or not layout.bounds:
        return None
    total = rebucket(hists[0], layout.bounds)
    for h in hists[1:]:
        total = total + rebucket(h, layout.bounds)
    if total.total <= 0:
        return None
    value = interpolated_quantile(total, q)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class _Check:
    label: str
    metric: str
    weight: float
    critical: bool
    allowed: Allowed
    quantile: float | None = None  # None: a ratio (error rate)

    def value(self, samples: Mapping[str, Sample]) -> float | None:
        return interval_ratio(samples) if self.quantile is None else interval_quantile(samples, self.quantile)

    def fmt(self, value: float | None) -> str:
        if value is None:
            return "n/a"
        return f"{100 * value:.2f}%" if self.quantile is None else f"{value:.1f} ms"

    def fmt_shift(self, value: float) -> str:
        return f"{100 * value:+.2f} pp" if self.quantile is None else f"{value:+.1f} ms"

    def tolerance_text(self) -> str:
        if self.allowed.relative is not None:
            return f"+{100 * self.allowed.relative:g}%"
        return f"+{100 * (self.allowed.absolute or 0.0):.2f} pp"


_OUTCOME = {
    Classification.HIGH: Outcome.FAIL,
    Classification.LOW: Outcome.FAIL,
    Classification.PASS: Outcome.PASS,
    Classification.NO_DATA: Outcome.NO_DATA,
}


@dataclass
class Series:
    """One check's values per interval in the current step."""

    canary: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)


@dataclass
class KayentaState:
    """The judge's evidence between ticks: the current step's series, per check label."""

    step: int = -1
    intervals: int = 0
    series: dict[str, Series] = field(default_factory=dict)
    last_score: float | None = None  # None until a step has min_intervals intervals


class KayentaJudge:
    """Kayenta's Mann-Whitney classification and weighted score, recomputed every interval."""

    name = "kayenta"
    state_type = KayentaState

    def __init__(self, policy: Policy, *, direction: Direction = "increase") -> None:
        self.settings = policy.analysis.kayenta
        self.direction: Direction = direction
        self.checks: list[_Check] = []
        for metric in policy.metrics:
            labels = check_labels(metric)
            if isinstance(metric, LatencyMetric):
                share = metric.weight / len(metric.quantiles)
                for label, tol in zip(labels, metric.quantiles, strict=True):
                    self.checks.append(
                        _Check(
                            label,
                            metric.name,
                            share,
                            metric.critical,
                            Allowed(relative=tol.max_increase),
                            tol.quantile,
                        )
                    )
            else:
                self.checks.append(
                    _Check(
                        labels[0], metric.name, metric.weight, metric.critical, Allowed(absolute=metric.max_increase)
                    )
                )

    def refuses(self, metric: MetricSpec) -> str | None:
        return None  # every metric gives one value per interval and version

    def start(self) -> KayentaState:
        return KayentaState(series={check.label: Series() for check in self.checks})

    def judge(self, state: KayentaState, observation: Observation, step: int) -> tuple[KayentaState, Judgement]:
        st = clone(state)
        if step != st.step:
            st.step, st.intervals = step, 0
            st.series = {check.label: Series() for check in self.checks}
        st.intervals += 1
        for check in self.checks:
            window = observation.metrics.get(check.metric)
            if window is None:
                continue
            series = st.series[check.label]
            for values, samples in ((series.canary, window.canary), (series.baseline, window.baseline)):
                value = check.value(samples)
                if value is not None:
                    values.append(value)
        needed = self.settings.min_intervals
        st.last_score = None
        if st.intervals < needed:
            verdicts = tuple(self._waiting(st, check, needed) for check in self.checks)
            return st, Judgement(
                Outcome.CONTINUE, verdicts,
                f"Kayenta-style score: {st.intervals} of {needed} intervals in this step, too few to score",
            )  # fmt: skip
        comparisons = [
            classify(
                st.series[check.label].canary,
                st.series[check.label].baseline,
                check.allowed,
                confidence=self.settings.confidence,
                tolerance=self.settings.effect,
                direction=self.direction,
            )
            for check in self.checks
        ]
        verdicts = tuple(self._verdict(st, ch, cmp) for ch, cmp in zip(self.checks, comparisons, strict=True))
        return st, self._score(st, comparisons, verdicts)

    def _waiting(self, st: KayentaState, check: _Check, needed: int) -> Verdict:
        series = st.series[check.label]
        return Verdict(
            check.label, Outcome.CONTINUE,
            f"{check.label}: {st.intervals} of {needed} intervals in this step "
            f"({len(series.canary)} canary and {len(series.baseline)} baseline values)",
            {"intervals": st.intervals, "canary_values": list(series.canary),
             "baseline_values": list(series.baseline)},
        )  # fmt: skip

    def _verdict(self, st: KayentaState, check: _Check, cmp: Comparison) -> Verdict:
        series = st.series[check.label]
        figures: dict[str, object] = {
            "classification": cmp.classification.value,
            "intervals": st.intervals,
            "canary_mean": cmp.canary_mean,
            "baseline_mean": cmp.baseline_mean,
            "ratio": (
                cmp.canary_mean / cmp.baseline_mean if cmp.canary_mean is not None and cmp.baseline_mean else None
            ),
            "allowed_ratio": check.allowed.ratio(cmp.baseline_mean) if cmp.baseline_mean is not None else None,
            "weight": check.weight,
            "critical": check.critical,
            "canary_values": list(series.canary),
            "baseline_values": list(series.baseline),
        }
        head = (
            f"{check.label}: canary {check.fmt(cmp.canary_mean)} vs baseline {check.fmt(cmp.baseline_mean)} "
            f"(mean per interval, {len(series.canary)} and {len(series.baseline)} intervals)"
        )
        if cmp.test is None:
            return Verdict(
                check.label, _OUTCOME[cmp.classification],
                f"{head}: {cmp.classification.value}, {cmp.reason}", figures,
            )  # fmt: skip
        t = cmp.test
        figures.update(
            {
                "u": t.u,
                "p_value": t.p_value,
                "hl_estimate": t.estimate,
                "ci": [t.lower, t.upper],
                "confidence": t.confidence,
                "tolerance_band": self.settings.effect * abs(t.estimate),
            }
        )
        summary = (
            f"{head}; Mann-Whitney U={t.u:g}, p={t.p_value:.3g}, shift {check.fmt_shift(t.estimate)} "
            f"({100 * t.confidence:g}% CI {check.fmt_shift(t.lower)} to {check.fmt_shift(t.upper)}), "
            f"allowed {check.tolerance_text()}: {cmp.classification.value}, {cmp.reason}"
        )
        return Verdict(check.label, _OUTCOME[cmp.classification], summary, figures)

    def _score(self, st: KayentaState, comparisons: list[Comparison], verdicts: tuple[Verdict, ...]) -> Judgement:
        if all(cmp.classification is Classification.NO_DATA for cmp in comparisons):
            # Nothing to compare is neither a pass nor a failure: the step holds (Kayenta would score 0).
            return Judgement(Outcome.NO_DATA, verdicts, "Kayenta-style: no data for any metric; holding")
        total = math.fsum(c.weight for c in self.checks)
        passed = math.fsum(
            c.weight for c, cmp in zip(self.checks, comparisons, strict=True)
            if cmp.classification is Classification.PASS
        )  # fmt: skip
        score = 100 * passed / total if total > 0 else 0.0
        critical = [
            c.label for c, cmp in zip(self.checks, comparisons, strict=True)
            if c.critical and cmp.classification in (Classification.HIGH, Classification.LOW)
        ]  # fmt: skip
        if critical:
            score = 0.0
        st.last_score = score
        s = self.settings
        failing = [
            f"{cmp.classification.value} on {c.label}"
            for c, cmp in zip(self.checks, comparisons, strict=True)
            if cmp.classification is not Classification.PASS
        ]
        detail = f" ({', '.join(failing)})" if failing else ""
        if critical:
            detail += f"; critical metric failed: {', '.join(critical)}"
        head = (
            f"Kayenta-style score {score:.1f} over {st.intervals} intervals "
            f"(pass ≥ {s.pass_score:g}, marginal ≥ {s.marginal:g}){detail}"
        )
        if score < s.marginal:
            return Judgement(Outcome.FAIL, verdicts, f"{head}: fail")
        if score >= s.pass_score:
            return Judgement(Outcome.PASS, verdicts, f"{head}: pass")
        return Judgement(Outcome.CONTINUE, verdicts, f"{head}: marginal, waiting for more intervals")
