"""Prometheus alerting rules for a rollout, derived from its policy (`canary alerts POLICY`).

canary judges every interval on its own, but a team also wants its usual alerting to notice a bad canary
(for instance while canary is stopped). The rules compare the canary with the baseline using the policy's
own tolerances: HighErrorRate when the canary's error rate exceeds the baseline's by more than
`maxIncrease`, HighLatency when a canary quantile exceeds the baseline's by more than its relative
`maxIncrease`. They are display-grade (rates and interpolated quantiles), not canary's evidence.
"""

from __future__ import annotations

import json

import yaml

from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, Policy
from canary.promql import (
    DEFAULT_REPORTER,
    DURATION_BUCKET,
    ENGINE_PREFIX,
    ERROR_CLASSES,
    PLACEHOLDERS,
    REQUESTS_TOTAL,
    Scope,
    duration,
    quote,
    render_template,
    selector,
)


def _for(seconds: float) -> str:
    """An alert's `for:` duration in Prometheus' notation (`1m`, `90s`)."""
    whole = max(1, round(seconds))
    return f"{whole // 60}m" if whole % 60 == 0 else f"{whole}s"


def alert_rules(policy: Policy, *, reporter: str = DEFAULT_REPORTER, window: str = "5m") -> str:
    """Rules YAML (one group) for the policy's canary; `promtool check rules` accepts it."""
    target = policy.target
    scope = Scope.of(target.scope, reporter)
    canary, baseline = (target.canary,), (target.baseline,)
    hold = _for(policy.interval_s)
    common = {
        "canary_policy": policy.name,
        "destination_service": scope.service,
        "destination_version": target.canary,
    }
    rules: list[dict[str, object]] = []
    for metric in policy.metrics:
        severity = "critical" if metric.critical else "warning"
        if isinstance(metric, ErrorRateMetric):
            errors = ERROR_CLASSES[metric.errors].matchers

            def rate(versions: tuple[str, ...], extra: str = "") -> str:
                return f"sum(rate({REQUESTS_TOTAL}{{{selector(scope, versions=versions, extra=extra)}}}[{window}]))"

            canary_rate = f"(({rate(canary, errors)} or vector(0)) / {rate(canary)})"
            baseline_rate = f"(({rate(baseline, errors)} or vector(0)) / {rate(baseline)})"
            rules.append(
                {
                    "alert": "HighErrorRate",
                    "expr": f"{canary_rate}\n> {baseline_rate} + {metric.max_increase:g}\n",
                    "for": hold,
                    "labels": {**common, "severity": severity, "metric": metric.name},
                    "annotations": {
                        "summary": f"{target.canary} of {target.host} fails more often than {target.baseline}",
                        "description": (
                            f"The {metric.errors} error rate of {target.canary} is more than "
                            f"{metric.max_increase * 100:g} percentage points above {target.baseline} "
                            f"(policy {policy.name}, metric {metric.name}); "
                            "canary rate {{ $value | humanizePercentage }}."
                        ),
                    },
                }
            )
        elif isinstance(metric, LatencyMetric):
            for tolerance in metric.quantiles:

                def quantile(versions: tuple[str, ...], q: float = tolerance.quantile) -> str:
                    buckets = f"{DURATION_BUCKET}{{{selector(scope, versions=versions)}}}"
                    return f"histogram_quantile({q:g}, sum by (le) (rate({buckets}[{window}])))"

                percent = f"{tolerance.quantile * 100:g}"
                rules.append(
                    {
                        "alert": "HighLatency",
                        "expr": f"{quantile(canary)}\n> {1 + tolerance.max_increase:g} * {quantile(baseline)}\n",
                        "for": hold,
                        "labels": {
                            **common,
                            "severity": severity,
                            "metric": metric.name,
                            "quantile": f"{tolerance.quantile:g}",
                        },
                        "annotations": {
                            "summary": (
                                f"{target.canary} of {target.host} is slower than {target.baseline} at p{percent}"
                            ),
                            "description": (
                                f"p{percent} request duration of {target.canary} is more than "
                                f"{tolerance.max_increase * 100:g}% above {target.baseline} "
                                f"(policy {policy.name}, metric {metric.name}); "
                                f"canary p{percent} {{{{ $value | humanize }}}} ms."
                            ),
                        },
                    }
                )
        elif isinstance(metric, CustomRatioMetric):

            def ratio(version: str, m: CustomRatioMetric = metric) -> str:
                events, total = (
                    render_template(t, service=target.host, namespace=target.namespace, version=version, window=window)
                    for t in (m.events, m.total)
                )
                return f"(sum(increase(({events})[{window}:])) / sum(increase(({total})[{window}:])))"

            rules.append(
                {
                    "alert": "HighErrorRate",
                    "expr": f"{ratio(target.canary)}\n> {ratio(target.baseline)} + {metric.max_increase:g}\n",
                    "for": hold,
                    "labels": {**common, "severity": severity, "metric": metric.name},
                    "annotations": {
                        "summary": f"{target.canary} of {target.host}: {metric.name} above {target.baseline}",
                        "description": (
                            f"The {metric.name} ratio of {target.canary} exceeds {target.baseline} by more than "
                            f"{metric.max_increase:g} (policy {policy.name})."
                        ),
                    },
                }
            )
    group = {"name": f"canary-{policy.name}", "interval": duration(min(policy.interval_s, 60)), "rules": rules}
    engine = {"name": f"canary-{policy.name}-engine", "interval": duration(min(policy.interval_s, 60)),
              "rules": engine_rules(policy)}  # fmt: skip
    # The comment names only what the policy's own rules made safe, each shown as a JSON string, so no value
    # can end the comment line; everything else is in the serialized document below it.
    names = ", ".join(json.dumps(v) for v in (policy.name, target.canary, target.baseline, target.host))
    header = (
        f"# Alerting rules generated by `canary alerts` for policy, canary, baseline and host {names};\n"
        f"# placeholders {', '.join('{' + p + '}' for p in PLACEHOLDERS)} already filled in.\n"
    )
    document = {"groups": [group, engine]}
    return header + yaml.dump(document, Dumper=_BlockDumper, sort_keys=False, allow_unicode=True, width=1000)


def engine_rules(policy: Policy) -> list[dict[str, object]]:
    """Rules on canary's own metrics (`canary run --metrics-port`): a rollout stuck in a step for half its
    deadline, a rollback, ticks that could not judge or write."""
    of = f"policy={quote(policy.name)}"
    labels = {"canary_policy": policy.name}
    stuck_for = _for(max(policy.max_duration_s / 2, policy.interval_s))
    return [
        {
            "alert": "CanaryRolloutStuck",
            "expr": f'{ENGINE_PREFIX}_phase{{{of},phase="progressing"}} == 1\n'
            f"and on (policy) changes({ENGINE_PREFIX}_step{{{of}}}[5m]) == 0\n",
            "for": stuck_for,
            "labels": {**labels, "severity": "warning"},
            "annotations": {
                "summary": f"canary rollout {policy.name} has stayed in one step for {stuck_for}",
                "description": "No step change for half the rollout's deadline: traffic too low to decide, or "
                "an undecidable check (see `canary plan` and `canary status`).",
            },
        },
        {
            "alert": "CanaryRolledBack",
            "expr": f'increase({ENGINE_PREFIX}_decisions_total{{{of},action="rollback"}}[5m]) > 0\n',
            "labels": {**labels, "severity": "critical"},
            "annotations": {
                "summary": f"canary rolled {policy.name} back to the baseline",
                "description": "The canary was shown worse than tolerated (or rolled back by hand); the audit "
                "log says which check and why.",
            },
        },
        {
            "alert": "CanaryErrors",
            "expr": f"sum by (policy, kind) (increase({ENGINE_PREFIX}_errors_total{{{of}}}[5m])) > 0\n",
            "labels": {**labels, "severity": "warning"},
            "annotations": {
                "summary": f"canary could not judge or write for {policy.name}",
                "description": "Ticks failed to read the metrics source or write the route (kind {{ $labels.kind }}).",
            },
        },
    ]


class _BlockDumper(yaml.SafeDumper):
    """Writes multi-line strings (the expressions) as literal blocks, readable in a rules file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_BlockDumper.add_representer(str, _str)
