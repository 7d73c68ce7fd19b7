"""The whole loop on live data: a real Prometheus scrapes the simulated mesh each second, canary rolls out.

The mesh follows the in-memory router's weights, so the canary's share grows as canary advances; every
count canary writes to the audit log must be what the mesh served in that window, within one scrape.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import judged, memory_router
from mesh_exporter import MeshExporter
from prometheus_server import PrometheusServer
from typer.testing import CliRunner

from canary.app import prometheus_rollout
from canary.audit import AuditLog
from canary.cli import app
from canary.model import Phase
from canary.policy import Policy, load_policy
from canary.records import DecisionRecord
from canary.scenario import builtin_scenario
from canary.sources.prometheus import PrometheusSettings
from canary.sources.simulated import SimulatedMesh

pytestmark = pytest.mark.prometheus
REPO = Path(__file__).resolve().parents[2]
POLICY_FILE = REPO / "policies" / "web-app.yaml"
DELAY_S = 1.5  # read each window 1.5 scrapes late, so its last scrape has landed


@dataclass
class Live:
    exporter: MeshExporter
    server: PrometheusServer
    policy: Policy


@pytest.fixture(scope="module")
def live(prometheus_binary: None) -> Iterator[Live]:
    """The simulated mesh at 60,000 requests/s, scraped each second by a real Prometheus (first scrape ~5 s)."""
    policy = dataclasses.replace(load_policy(POLICY_FILE), interval_s=1.5, max_duration_s=60.0)
    scenario = dataclasses.replace(builtin_scenario("healthy"), rps=60_000)
    router = memory_router(policy.target, canary_weight=50)
    exporter = MeshExporter(SimulatedMesh(scenario, router, policy.target, start=time.time(), seed=3))
    target = exporter.start()
    try:
        with PrometheusServer(scrape_targets=[target], scrape_interval="1s") as server:
            deadline = time.monotonic() + 20
            while len(exporter.log) < 2:
                assert time.monotonic() < deadline, "Prometheus never scraped the simulated mesh"
                time.sleep(0.05)
            yield Live(exporter, server, policy)
    finally:
        exporter.stop()


def check_counts_against_the_mesh(records: list[DecisionRecord], exporter: MeshExporter) -> None:
    """Each tick's counts are what the mesh served in the (delayed) window, within one scrape."""
    seen = 0
    for record in records:
        assert record.window is not None and record.counts is not None
        end = record.time - DELAY_S
        start = end - (record.window.end - record.window.start)
        for version in ("v1", "v2"):
            counts = record.counts[version]
            if not counts:
                continue  # no scrape in this window: no data, never zero
            # A scrape's samples are stamped when it starts and collected a moment later: bracket by 0.4 s,
            # well within one scrape interval.
            low = exporter.served_between(start + 0.4, end - 0.4, version)
            high = exporter.served_between(start - 0.4, end + 0.4, version)
            assert low[0] <= counts["requests"] <= high[0], (version, record.tick, low, counts, high)
            assert low[1] <= counts["errors"] <= high[1], (version, record.tick, low, counts, high)
            assert counts["latency_buckets"]["+Inf"] == counts["requests"]
            seen += 1
    assert seen >= len(records)  # most windows hold scrapes of both versions


def test_rollout_on_live_prometheus_promotes_and_audits_what_the_mesh_served(live: Live, tmp_path: Path):
    """The mesh follows the controller's router, as the sidecars follow the VirtualService."""
    router = memory_router(live.policy.target)
    live.exporter.mesh.router = router
    started = time.time()
    settings = PrometheusSettings(live.server.url, timeout_s=5, retries=1, delay_s=DELAY_S)
    audit_path = tmp_path / "audit.jsonl"
    rollout = prometheus_rollout(live.policy, settings, audit=AuditLog(audit_path), router=router)
    result = rollout.runner.run()
    rollout.source.close()

    assert result.phase is Phase.PROMOTED, result.decision.reason
    records = judged(audit_path)
    assert len(records) == result.ticks >= 2
    check_counts_against_the_mesh(records, live.exporter)
    shares = live.exporter.shares_since(started)
    assert min(shares) < 0.2 and max(shares) > 0.3, shares  # the mesh followed the router from 10% past 50%
    assert router.read(live.policy.target).weights.canary == 100


def test_canary_run_with_prometheus_url_promotes_and_writes_the_audit_log(live: Live, tmp_path: Path):
    """`canary run POLICY --prometheus-url URL` end to end (here the mesh keeps a fixed 50/50 split)."""
    live.exporter.mesh.router = memory_router(live.policy.target, canary_weight=50)
    policy = tmp_path / "web-app.yaml"
    policy.write_text(
        POLICY_FILE.read_text()
        .replace("interval: 60s", "interval: 1.5s")
        .replace("maxDuration: 60m", "maxDuration: 60s")
    )
    audit = tmp_path / "audit.jsonl"
    result = CliRunner().invoke(
        app,
        ["run", str(policy), "--prometheus-url", live.server.url, "--prometheus-delay", str(DELAY_S),
         "--audit", str(audit), "--output", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    outcome = json.loads(result.output)
    assert outcome["outcome"] == "promoted" and outcome["final_weights"] == {"baseline": 0, "canary": 100}
    records = judged(audit)
    assert records and records[0].actor.startswith(f"canary-controller (prometheus {live.server.url}")
    check_counts_against_the_mesh(records, live.exporter)
