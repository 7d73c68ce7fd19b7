"""canary's own Prometheus metrics (`canary run --metrics-port`): filled from every tick of a real simulated
rollout, served over HTTP on 127.0.0.1 and read back with prometheus_client's own text parser."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.cli import app
from canary.controller import TickReport
from canary.engine_metrics import EngineMetrics
from canary.model import Action
from canary.policy import load_policy
from canary.scenario import builtin_scenario

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "web-app.yaml"
sys.path.insert(0, str(ROOT / "tests"))

from prometheus_server import PROMETHEUS, PrometheusServer  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_a_promoted_rollout_leaves_weight_phase_decisions_checks_and_tick_times_in_the_metrics() -> None:
    policy = load_policy(str(POLICY))
    engine = EngineMetrics(policy.name)
    reports: list[TickReport] = []

    def observe(report: TickReport) -> None:
        reports.append(report)
        engine.observe(report, report.seconds)

    result = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit()).runner.run(observe)
    port = free_port()
    stop = engine.serve(port)
    try:
        got = scrape(port)
    finally:
        stop()
    p = (("policy", "web-app"),)
    assert got[("canary_weight", p)] == 100 and got[("canary_step", p)] == 2
    assert got[("canary_phase", (("phase", "promoted"), *p))] == 1
    assert got[("canary_phase", (("phase", "progressing"), *p))] == 0
    decisions = {dict(labels)["action"]: v for (name, labels), v in got.items() if name == "canary_decisions_total"}
    assert set(decisions) == {a.value for a in Action}, "every action's series from the start, at 0"
    made = {action: v for action, v in decisions.items() if v}
    assert made == {"start": 1, "hold": len(reports) - 3, "advance": 1, "promote": 1}
    assert got[("canary_tick_duration_seconds_count", p)] == result.ticks  # every tick but the start is timed
    for check in ("error-rate", "latency p50", "latency p95", "latency p99"):
        labels = (("check", check), *p)
        assert got[("canary_check_excess_upper", labels)] < 0, f"{check} shown within tolerance"
        assert got[("canary_check_excess_lower", labels)] <= got[("canary_check_excess", labels)]
        assert got[("canary_check_e_value", labels)] < 1
    errors = {dict(labels)["kind"]: v for (name, labels), v in got.items() if name == "canary_errors_total"}
    assert errors == {"source": 0, "route": 0, "abort": 0}


def test_run_serves_metrics_and_frees_the_port_when_it_ends(tmp_path: Path) -> None:
    port = free_port()
    result = CliRunner().invoke(app, ["run", str(POLICY), "--simulate", "healthy", "--audit", str(tmp_path / "a.jsonl"),
                                      "--metrics-port", str(port), "--metrics-linger", "0",
                                      "--output", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the server is gone with the run


def test_the_outcome_stays_served_after_the_end_for_prometheus_to_scrape(tmp_path: Path) -> None:
    """The run's last decision was never scraped (the server stopped with the run): a rollback's counter never
    rose in Prometheus and the CanaryRolledBack alert could not fire. The metrics linger after the end; a
    signal ends the wait."""
    port = free_port()
    canary = Path(sys.executable).parent / "canary"
    run = subprocess.Popen([str(canary), "run", str(POLICY), "--simulate", "error-regression", "--audit",
                            str(tmp_path / "a.jsonl"), "--metrics-port", str(port), "--metrics-linger", "60",
                            "--output", "json"], stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        got: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        p = (("policy", "web-app"),)
        for _ in range(300):
            time.sleep(0.1)
            try:
                got = scrape(port)
            except OSError:
                continue
            if got.get(("canary_phase", (("phase", "rolled-back"), *p))) == 1:
                break
        assert got[("canary_decisions_total", (("action", "rollback"), *p))] == 1
        assert run.poll() is None, "still serving after the end"
        run.send_signal(signal.SIGTERM)
        out, _ = run.communicate(timeout=30)
    finally:
        run.kill()
    assert run.returncode == 1 and json.loads(out)["outcome"] == "rolled-back", "the outcome's code, not the signal's"


def test_a_port_in_use_is_one_line_and_nothing_moves(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        audit = tmp_path / "a.jsonl"
        result = CliRunner().invoke(app, ["run", str(POLICY), "--simulate", "healthy", "--audit", str(audit),
                                          "--metrics-port", str(port)])  # fmt: skip
    assert result.exit_code == 2
    assert result.output.startswith(f"canary: --metrics-port {port}: cannot listen on 127.0.0.1")
    assert len(result.output.splitlines()) == 1 and not audit.exists()


@pytest.mark.prometheus
def test_a_real_prometheus_scrapes_canarys_metrics() -> None:
    """Debian's prometheus on 127.0.0.1 scrapes the metrics server every second; its API then holds the
    rollout's weight, phase and checks as canary served them."""
    if PROMETHEUS is None:
        pytest.skip("prometheus not installed (make prometheus)")
    policy = load_policy(str(POLICY))
    engine = EngineMetrics(policy.name)
    simulated_rollout(policy, builtin_scenario("latency-regression"), seed=1, audit=MemoryAudit()).runner.run(
        lambda report: engine.observe(report, report.seconds)
    )
    port = free_port()
    stop = engine.serve(port)
    try:
        with PrometheusServer(scrape_targets=[f"127.0.0.1:{port}"]) as prometheus:
            deadline = time.monotonic() + 30
            found: dict[str, float] = {}
            while time.monotonic() < deadline and len(found) < 3:
                for query in ('canary_weight{policy="web-app"}', 'canary_phase{phase="rolled-back"}',
                              'canary_check_excess_lower{check="latency p50"}'):  # fmt: skip
                    answer = json.loads(prometheus._get(f"/api/v1/query?query={urllib.parse.quote(query)}"))
                    if answer["data"]["result"]:
                        found[query] = float(answer["data"]["result"][0]["value"][1])
                time.sleep(0.5)
    finally:
        stop()
    assert found['canary_weight{policy="web-app"}'] == 0  # rolled back: all traffic on the baseline
    assert found['canary_phase{phase="rolled-back"}'] == 1
    assert found['canary_check_excess_lower{check="latency p50"}'] > 0  # shown worse than tolerated
