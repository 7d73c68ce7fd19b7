"""Benchmark: one analysis tick of the Prometheus source against a real server, for 10 metrics.

Starts Debian's prometheus on 127.0.0.1 with the backfilled Istio history of tests/istio_history.py
(web-app v1 with two pods, v2 with one; 15 s scrapes), then observes a 10-metric policy over consecutive
60 s windows, one tick per window, and prints the number of queries the server answered per tick (read
from its own prometheus_http_requests_total) and the wall time per tick.

    .venv/bin/python bench/prometheus.py [--ticks 20] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

from istio_history import IstioHistory  # noqa: E402
from prometheus_server import PrometheusServer  # noqa: E402

from canary.policy import parse_policy  # noqa: E402
from canary.sources.prometheus import PrometheusSettings, PrometheusSource  # noqa: E402

CUSTOM = """\
    - name: {name}
      kind: custom
      events: app_checkout_failures_total{{app="web-app", namespace="{{namespace}}", version="{{version}}"}}
      total: app_checkouts_total{{app="web-app", namespace="{{namespace}}", version="{{version}}"}}
      maxIncrease: 0.01
"""
POLICY = """\
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {name: bench}
spec:
  target: {namespace: default, virtualService: web-app, host: web-app.default.svc.cluster.local}
  interval: 60s
  metrics:
    - {name: errors-5xx, kind: error-rate, errors: 5xx, maxIncrease: 0.005}
    - {name: errors-non-2xx, kind: error-rate, errors: non-2xx, maxIncrease: 0.01}
    - {name: errors-grpc, kind: error-rate, errors: grpc, maxIncrease: 0.01}
    - {name: errors-5xx-critical, kind: error-rate, errors: 5xx, maxIncrease: 0.05, critical: true}
    - {name: latency, kind: latency, quantiles: [{quantile: 0.5, maxIncrease: 0.1}]}
    - {name: latency-tail, kind: latency, quantiles: [{quantile: 0.99, maxIncrease: 0.25}]}
    - {name: latency-p95, kind: latency, quantiles: [{quantile: 0.95, maxIncrease: 0.1}]}
""" + "".join(CUSTOM.format(name=f"checkout-{i}") for i in range(3))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=20, help="consecutive 60 s windows to observe")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    policy = parse_policy(POLICY, "bench-policy")
    assert len(policy.metrics) == 10
    history = IstioHistory()
    with PrometheusServer(openmetrics=history.openmetrics()) as server:
        source = PrometheusSource(PrometheusSettings(server.url, timeout_s=10, retries=0))
        source.observe(policy.target.scope, policy.metrics, history.start, history.start + 60)  # warm caches
        queries, seconds, samples = [], [], 0
        for tick in range(args.ticks):
            start = history.start + 60 * tick
            before = server.query_api_calls()
            began = time.perf_counter()
            observation = source.observe(policy.target.scope, policy.metrics, start, start + 60)
            seconds.append(time.perf_counter() - began)
            queries.append(server.query_api_calls() - before)
            samples = sum(len(window.baseline) + len(window.canary) for window in observation.metrics.values())
        source.close()
    figures = {
        "metrics": len(policy.metrics),
        "ticks": args.ticks,
        "queries_per_tick": statistics.mean(queries),
        "queries_per_tick_max": max(queries),
        "tick_ms_median": round(statistics.median(seconds) * 1000, 1),
        "tick_ms_p90": round(sorted(seconds)[int(0.9 * (len(seconds) - 1))] * 1000, 1),
        "tick_ms_max": round(max(seconds) * 1000, 1),
        "pod_samples_per_tick": samples,
        "window_s": 60,
        "lookback_s": 300,
    }
    print(
        f"Prometheus source, one tick for a policy of {figures['metrics']} metrics ({args.ticks} ticks, 60 s windows)"
    )
    print(f"  queries per tick:   {figures['queries_per_tick']:g} (max {figures['queries_per_tick_max']:g})")
    print(
        f"  wall time per tick: median {figures['tick_ms_median']} ms, p90 {figures['tick_ms_p90']} ms, "
        f"max {figures['tick_ms_max']} ms"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["queries_per_tick_max"] == figures["metrics"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
