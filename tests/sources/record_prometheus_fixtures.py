"""Capture real Prometheus API answers into fixtures/prometheus/ for the fast unit tests.

Run from the repository root:  .venv/bin/python tests/sources/record_prometheus_fixtures.py

It backfills `IstioHistory` into a fresh Prometheus on 127.0.0.1, asks the exact queries the source asks
(`PrometheusSource.queries`), and stores each HTTP answer verbatim under "response", next to the query,
the window and the counts that were written (computed from the history, not from canary's code).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import requests

TESTS = Path(__file__).resolve().parents[1]
REPO = TESTS.parent
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(REPO))

from istio_history import HOST, ORDERS, IstioHistory  # noqa: E402
from prometheus_server import PROMETHEUS, PrometheusServer  # noqa: E402

from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, Target  # noqa: E402
from canary.promql import ERROR_CLASSES  # noqa: E402
from canary.sources.prometheus import PrometheusSettings, PrometheusSource  # noqa: E402

OUT = REPO / "fixtures" / "prometheus"
CHECKOUT = CustomRatioMetric(
    "checkout",
    events='app_checkout_failures_total{app="web-app",namespace="{namespace}",version="{version}"}',
    total='app_checkouts_total{app="web-app",namespace="{namespace}",version="{version}"}',
    max_increase=0.01,
)


def target(host: str) -> Target:
    return Target(namespace="default", virtual_service="vs", host=host, baseline="v1", canary="v2")


def main() -> None:
    history = IstioHistory()
    version = subprocess.run([str(PROMETHEUS), "--version"], capture_output=True, text=True, check=True)
    captured_with = (version.stdout or version.stderr).splitlines()[0]
    restart = history.times[history.reset_index]
    around_reset = (restart - 180, restart + 180)  # also holds the v2 500 series' birth at +120 s
    gap = (history.t0 + 840, history.t0 + 1140)
    cases = [
        ("error-rate-reset", HOST, ErrorRateMetric("errors", 0.01), around_reset),
        ("error-rate-gap", HOST, ErrorRateMetric("errors", 0.01, errors="non-2xx"), gap),
        ("latency-reset", HOST, LatencyMetric("latency", ()), around_reset),
        ("custom-reset", HOST, CHECKOUT, around_reset),
        ("missing-version", ORDERS, ErrorRateMetric("errors", 0.01), around_reset),
    ]
    OUT.mkdir(parents=True, exist_ok=True)
    with PrometheusServer(openmetrics=history.openmetrics()) as server:
        source = PrometheusSource(PrometheusSettings(server.url))
        for name, host, metric, (start, end) in cases:
            query = source.queries(target(host).scope, (metric,), start, end)[metric.name]
            answer = requests.get(f"{server.url}/api/v1/query", params={"query": query, "time": end}, timeout=10)
            answer.raise_for_status()
            record = {
                "captured_with": captured_with,
                "how": "tests/sources/record_prometheus_fixtures.py against a backfilled IstioHistory",
                "metric": metric.name,
                "kind": type(metric).__name__,
                "errors": getattr(metric, "errors", None),
                "target": {"host": host, "baseline": "v1", "canary": "v2"},
                "query": query,
                "start": start,
                "end": end,
                "expected": expected(history, host, metric, start, end),
                "response": answer.json(),
            }
            (OUT / f"{name}.json").write_text(_dump(record))
        bad = "rate(istio_requests_total{destination_version=v2})"
        answer = requests.get(f"{server.url}/api/v1/query", params={"query": bad}, timeout=10)
        record = {"captured_with": captured_with, "query": bad, "status": answer.status_code, "body": answer.text}
        (OUT / "bad-query.json").write_text(_dump(record))
    print(f"wrote {len(cases) + 1} fixtures to {OUT}")


def _dump(record: dict[str, object]) -> str:
    """Indented JSON with each [timestamp, "value"] sample and each expectation row on one line."""
    text = json.dumps(record, indent=1)
    text = re.sub(r'\[\s+([0-9.]+),\s+"([^"]*)"\s+\]', r'[\1, "\2"]', text)
    text = re.sub(r"\[\s+((?:\d+,\s+)*\d+)\s+\]", lambda m: "[" + re.sub(r",\s+", ", ", m.group(1)) + "]", text)
    return text + "\n"


def expected(history: IstioHistory, host: str, metric: object, start: float, end: float) -> dict[str, object]:
    out: dict[str, object] = {}
    for version in ("v1", "v2"):
        if isinstance(metric, ErrorRateMetric):
            is_error = ERROR_CLASSES[metric.errors].is_error
            out[version] = history.requests(host, version, start, end, is_error=is_error)
        elif isinstance(metric, LatencyMetric):
            out[version] = history.buckets(host, version, start, end)
        else:
            out[version] = history.app_ratio(version, start, end)
    return out


if __name__ == "__main__":
    main()
