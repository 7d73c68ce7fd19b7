"""A Flagger-style judge: Flagger's built-in Istio checks with its documented defaults, for teams migrating
from Flagger and for the detection benchmark.

It looks at the canary only and NEVER compares it with the baseline: a regression that stays under the
fixed thresholds passes, and a canary on a service that is noisy, slow or low on traffic as a whole fails
even when it is exactly as good as the baseline.

Each interval, as Flagger's analysis loop does:
- `request-success-rate`: the canary's share of non-error requests over the interval, in percent, must be
  at least `min_success_rate` (99 by default), for each error-rate metric of the policy;
- `request-duration`: the canary's p99 over the interval — `histogram_quantile(0.99, …)` of the summed
  histogram, linear inside the bucket, in ms — must be at most `max_p99_ms` (500 by default), for each
  latency metric of the policy;
- a check with no data (no canary series or requests, so Prometheus returns nothing) fails, as in Flagger;
- an interval with any failed check adds one to the failed-check count (Flagger stops at the first failing
  metric and counts one per analysis run); the count is never reset within a rollout, and reaching
  `threshold` (5) rolls the canary back;
- an interval in which every check passes advances the canary one step, as Flagger's step weights do.
Metrics of other kinds have no Flagger built-in check: a policy naming one is refused (`refuses`, checked by
`canary validate` and before a rollout moves any weight) rather than judged on part of its metrics.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from canary.judges.kayenta import interval_quantile
from canary.model import Judgement, Observation, Outcome, Ratio, Sample, Verdict
from canary.policy import ErrorRateMetric, LatencyMetric, MetricSpec, Policy

P99 = 0.99


def success_rate(samples: Mapping[str, Sample]) -> float | None:
    """Percent of non-error requests over all pods; None without requests."""
    errors = sum(s.events for s in samples.values() if isinstance(s, Ratio))
    requests = sum(s.trials for s in samples.values() if isinstance(s, Ratio))
    return 100.0 * (requests - errors) / requests if requests > 0 else None


@dataclass(frozen=True)
class _Check:
    label: str
    metric: str
    kind: str  # "request-success-rate" or "request-duration"


@dataclass
class FlaggerState:
    failed_checks: int = 0  # intervals with a failed check, over the whole rollout


class FlaggerJudge:
    """Fixed canary-only thresholds each interval; rollback after `threshold` failed intervals."""

    name = "flagger"
    state_type = FlaggerState

    def __init__(self, policy: Policy) -> None:
        self.settings = policy.analysis.flagger
        self.checks: list[_Check] = []
        for metric in policy.metrics:
            if isinstance(metric, ErrorRateMetric):
                self.checks.append(_Check(f"{metric.name} success rate", metric.name, "request-success-rate"))
            elif isinstance(metric, LatencyMetric):
                self.checks.append(_Check(f"{metric.name} p99", metric.name, "request-duration"))

    def refuses(self, metric: MetricSpec) -> str | None:
        if isinstance(metric, ErrorRateMetric | LatencyMetric):
            return None
        return "the flagger judge has built-in checks for error-rate and latency metrics only"

    def start(self) -> FlaggerState:
        return FlaggerState()

    def judge(self, state: FlaggerState, observation: Observation, step: int) -> tuple[FlaggerState, Judgement]:
        verdicts = tuple(self._check(check, observation) for check in self.checks)
        interval_failed = any(v.outcome is not Outcome.PASS for v in verdicts)
        failed = state.failed_checks + (1 if interval_failed else 0)
        new = FlaggerState(failed_checks=failed)
        s = self.settings
        count = f"{failed} of {s.threshold} failed checks"
        failing = [v.metric for v in verdicts if v.outcome is not Outcome.PASS]
        if failed >= s.threshold:
            return new, Judgement(
                Outcome.FAIL, verdicts, f"Flagger-style checks: {count}, threshold reached ({', '.join(failing)})"
            )
        if not interval_failed:
            return new, Judgement(Outcome.PASS, verdicts, f"Flagger-style checks all passed this interval ({count})")
        return new, Judgement(
            Outcome.CONTINUE, verdicts, f"Flagger-style checks failed: {', '.join(failing)} ({count})"
        )

    def _check(self, check: _Check, observation: Observation) -> Verdict:
        window = observation.metrics.get(check.metric)
        s = self.settings
        if check.kind == "request-success-rate":
            value = success_rate(window.canary) if window is not None else None
            figures: dict[str, object] = {"check": check.kind, "success_rate": value, "min": s.min_success_rate}
            if value is None:
                return self._no_data(check, figures)
            if value >= s.min_success_rate:
                return Verdict(
                    check.label, Outcome.PASS,
                    f"{check.label}: canary {value:.2f}% ≥ {s.min_success_rate:g}%", figures,
                )  # fmt: skip
            return Verdict(
                check.label, Outcome.FAIL,
                f"{check.label}: canary {value:.2f}% below the minimum {s.min_success_rate:g}% "
                "(the baseline is not looked at)", figures,
            )  # fmt: skip
        value = interval_quantile(window.canary, P99) if window is not None else None
        figures = {"check": check.kind, "p99_ms": value, "max_ms": s.max_p99_ms}
        if value is None:
            return self._no_data(check, figures)
        if value <= s.max_p99_ms:
            return Verdict(
                check.label, Outcome.PASS, f"{check.label}: canary {value:.1f} ms ≤ {s.max_p99_ms:g} ms", figures
            )
        return Verdict(
            check.label, Outcome.FAIL,
            f"{check.label}: canary {value:.1f} ms above the maximum {s.max_p99_ms:g} ms "
            "(the baseline is not looked at)", figures,
        )  # fmt: skip

    def _no_data(self, check: _Check, figures: dict[str, object]) -> Verdict:
        return Verdict(
            check.label, Outcome.NO_DATA,
            f"{check.label}: no canary value in this interval (no series or no requests for it), which counts as a "
            "failed check (as in Flagger)",
            figures,
        )  # fmt: skip
