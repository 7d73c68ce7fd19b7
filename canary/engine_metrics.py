"""canary's own Prometheus metrics while a rollout runs (`canary run --metrics-port`).

One registry per rollout (never the process-wide default), filled from each tick's report, served over
HTTP by prometheus_client. The names, for dashboards and alert rules (`canary dashboard`, `canary alerts`):

    canary_weight{policy}                          the canary's weight after the last decision, percent
    canary_step{policy}                            the step index
    canary_phase{policy, phase}                    1 for the rollout's phase, 0 for the others
    canary_decisions_total{policy, action}         decisions by action (start, hold, advance, promote, rollback, ...)
    canary_check_excess{policy, check}             each check's estimate less its tolerance (> 0: worse than allowed)
    canary_check_excess_lower / _upper{...}        the fail confidence sequence's bounds on it
    canary_check_e_value{policy, check}            the check's fail e-process now
    canary_errors_total{policy, kind}              ticks that could not judge or write: source, route, abort
    canary_tick_duration_seconds{policy}           one tick: query, judge, record, write
"""

from __future__ import annotations

import math
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from canary.auditing import excess
from canary.controller import TickReport
from canary.model import Action, Outcome, Phase
from canary.promql import ENGINE_PREFIX as PREFIX


class EngineMetrics:
    def __init__(self, policy: str) -> None:
        self.policy = policy
        self.registry = CollectorRegistry(auto_describe=True)
        r, by_policy = self.registry, ["policy"]
        self.weight = Gauge(f"{PREFIX}_weight", "The canary's weight after the last decision (percent).", by_policy,
                            registry=r)  # fmt: skip
        self.step = Gauge(f"{PREFIX}_step", "The rollout's step index.", by_policy, registry=r)
        self.phase = Gauge(f"{PREFIX}_phase", "1 for the rollout's phase, 0 for the others.", ["policy", "phase"],
                           registry=r)  # fmt: skip
        self.decisions = Counter(f"{PREFIX}_decisions", "Decisions by action.", ["policy", "action"], registry=r)
        check = ["policy", "check"]
        self.excess = Gauge(f"{PREFIX}_check_excess", "A check's estimate less its tolerance (> 0: worse).", check,
                            registry=r)  # fmt: skip
        self.lower = Gauge(f"{PREFIX}_check_excess_lower", "Lower fail bound on the excess.", check, registry=r)
        self.upper = Gauge(f"{PREFIX}_check_excess_upper", "Upper fail bound on the excess.", check, registry=r)
        self.e_value = Gauge(f"{PREFIX}_check_e_value", "A check's fail e-process now.", check, registry=r)
        self.errors = Counter(f"{PREFIX}_errors", "Ticks that could not judge or write, by kind.", ["policy", "kind"],
                              registry=r)  # fmt: skip
        self.tick = Histogram(f"{PREFIX}_tick_duration_seconds", "One tick: query, judge, record, write.", by_policy,
                              registry=r, buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))  # fmt: skip
        # Every series from the first scrape, at 0: `increase()` sees a counter's first step only from a
        # value scraped before it (an alert on one rollback would otherwise never fire).
        for phase in Phase:
            self.phase.labels(policy, phase.value).set(0)
        for action in Action:
            self.decisions.labels(policy, action.value)
        for kind in ERROR_KINDS:
            self.errors.labels(policy, kind)

    def observe(self, report: TickReport, seconds: float | None = None) -> None:
        """One tick's report (and how long the tick took, when timed)."""
        p, decision = self.policy, report.decision
        self.weight.labels(p).set(decision.weights.canary)
        self.step.labels(p).set(report.step_index)
        for phase in Phase:
            self.phase.labels(p, phase.value).set(1 if phase is decision.phase else 0)
        self.decisions.labels(p, decision.action.value).inc()
        kind = _error_kind(report)
        if kind:
            self.errors.labels(p, kind).inc()
        if seconds is not None:
            self.tick.labels(p).observe(seconds)
        for verdict in report.judgement.verdicts if report.judgement else ():
            found = excess(dict(verdict.figures))
            if found is None:
                continue
            for gauge, x in ((self.excess, found.estimate), (self.lower, found.lower), (self.upper, found.upper)):
                gauge.labels(p, verdict.metric).set(x if math.isfinite(x) else math.copysign(1e300, x))
            e = verdict.figures.get("e_value")
            if isinstance(e, float):
                self.e_value.labels(p, verdict.metric).set(e)

    def serve(self, port: int, address: str = "127.0.0.1") -> Callable[[], None]:
        """Serve /metrics; the function returned stops the server."""
        server, thread = start_http_server(port, addr=address, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


ERROR_KINDS = ("source", "route", "abort")


def _error_kind(report: TickReport) -> str | None:
    action = report.decision.action
    if action is Action.ABORT:
        return "abort"
    if action is Action.STOP:
        return "route"
    judgement = report.judgement
    if judgement is not None and judgement.outcome is Outcome.NO_DATA and "source unavailable" in judgement.summary:
        return "source"
    return None
