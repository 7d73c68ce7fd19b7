"""A Grafana dashboard for a rollout (`canary dashboard POLICY`), built as data and serialized as JSON.

The seed's panels for v1 against v2 — request rate, error rate, P95 latency (and every quantile the
policy judges), service dependencies by `source_app` — from the same PromQL `canary queries` prints, then
canary's own panels from the metrics `canary run --metrics-port` serves: weight, phase, each check's excess
over its tolerance with the fail bounds closing on zero, the e-values, decisions, tick time and errors.
The data source is a dashboard variable, so the file imports into any Grafana with a Prometheus.
"""

from __future__ import annotations

from typing import Any

from canary.policy import ErrorRateMetric, LatencyMetric, Policy
from canary.promql import (
    DEFAULT_REPORTER,
    ENGINE_PREFIX,
    Scope,
    check_window,
    dependencies_by_app,
    error_rate,
    latency_quantile,
    quote,
    request_rate,
)

DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
VARIABLE = {"name": "datasource", "label": "Prometheus", "type": "datasource", "query": "prometheus"}
WIDTH, HEIGHT = 12, 8


def dashboard(policy: Policy, *, reporter: str = DEFAULT_REPORTER, window: str = "1m") -> dict[str, Any]:
    check_window(window)
    target = policy.target
    scope = Scope.of(target.scope, reporter)
    versions = "{{destination_version}}"
    classes = tuple(dict.fromkeys(m.errors for m in policy.metrics if isinstance(m, ErrorRateMetric))) or ("5xx",)
    quantiles = sorted(
        {0.95} | {q.quantile for m in policy.metrics if isinstance(m, LatencyMetric) for q in m.quantiles}
    )
    of = f"policy={quote(policy.name)}"
    mesh = [
        _panel("Request rate", "reqps", [(request_rate(scope, window), versions)]),
        _panel("Error rate", "percentunit", [(error_rate(scope, c, window), f"{versions} {c}") for c in classes]),
        _panel("P95 latency" if quantiles == [0.95] else "Latency quantiles", "ms",
               [(latency_quantile(scope, q, window), f"{versions} p{100 * q:g}") for q in quantiles]),
        _panel("Service dependencies (by source_app)", "reqps",
               [(dependencies_by_app(scope, window), "{{source_app}} -> " + versions)]),
    ]  # fmt: skip
    engine = [
        _panel("Canary weight", "percent", [(f"{ENGINE_PREFIX}_weight{{{of}}}", "canary weight")]),
        _panel("Phase", "none", [(f"{ENGINE_PREFIX}_phase{{{of}}} == 1", "{{phase}}")]),
        _panel("Checks: excess over tolerance with its fail bounds (above 0 is worse)", "percentunit", [
            (f"{ENGINE_PREFIX}_check_excess{{{of}}}", "{{check}}"),
            (f"{ENGINE_PREFIX}_check_excess_lower{{{of}}}", "{{check}} lower bound"),
            (f"{ENGINE_PREFIX}_check_excess_upper{{{of}}}", "{{check}} upper bound"),
        ]),
        _panel("Checks: fail e-values (a check fails at 1 / its share of alpha)", "none",
               [(f"{ENGINE_PREFIX}_check_e_value{{{of}}}", "{{check}}")], log=True),
        _panel("Decisions", "none",
               [(f"sum by (action) (increase({ENGINE_PREFIX}_decisions_total{{{of}}}[{window}]))", "{{action}}")]),
        _panel("Tick time and errors", "s", [
            (f"histogram_quantile(0.95, sum by (le) (rate({ENGINE_PREFIX}_tick_duration_seconds_bucket{{{of}}}"
             f"[{window}])))", "p95 tick time"),
            (f"sum by (kind) (increase({ENGINE_PREFIX}_errors_total{{{of}}}[{window}]))", "errors: {{kind}}"),
        ]),
    ]  # fmt: skip
    panels: list[dict[str, Any]] = []
    for title, group in ((f"{target.baseline} against {target.canary} ({target.host})", mesh), ("canary", engine)):
        y = max((p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels), default=0)
        panels.append({"type": "row", "title": title, "collapsed": False, "panels": [],
                       "gridPos": {"h": 1, "w": 2 * WIDTH, "x": 0, "y": y}})  # fmt: skip
        for i, panel in enumerate(group):
            panel["gridPos"] = {"h": HEIGHT, "w": WIDTH, "x": WIDTH * (i % 2), "y": y + 1 + HEIGHT * (i // 2)}
            panels.append(panel)
    for number, panel in enumerate(panels, start=1):
        panel["id"] = number
    return {
        "title": f"canary: {policy.name}",
        "uid": f"canary-{policy.name}"[:40],
        "tags": ["canary", "istio"],
        "schemaVersion": 39,
        "editable": True,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {"list": [VARIABLE]},
        "annotations": {"list": []},
        "panels": panels,
    }


def _panel(title: str, unit: str, queries: list[tuple[str, str]], *, log: bool = False) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": unit}
    if log:
        defaults["custom"] = {"scaleDistribution": {"type": "log", "log": 10}}
    return {
        "type": "timeseries",
        "title": title,
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (expr, legend) in enumerate(queries)
        ],
    }
