"""`canary alerts` emits rules that promtool accepts and that fire for a bad canary only."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from canary.alerts import alert_rules
from canary.errors import PolicyError
from canary.policy import Policy, load_policy, parse_policy

REPO = Path(__file__).resolve().parents[1]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (make prometheus)")
HOST = "web-app.default.svc.cluster.local"
SELECT = f'reporter="destination",destination_service="{HOST}",destination_workload_namespace="default"'


@pytest.fixture
def policy() -> Policy:
    return load_policy(REPO / "policies" / "web-app.yaml")


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False)


def promtool_test(
    tmp_path: Path, rules: str, input_series: list[dict[str, str]], alert_rule_test: list[dict[str, object]]
) -> subprocess.CompletedProcess[str]:
    """`promtool test rules` of these rules on one test of 1 min intervals."""
    (tmp_path / "rules.yml").write_text(rules)
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [{"interval": "1m", "input_series": input_series, "alert_rule_test": alert_rule_test}],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests, sort_keys=False))
    return promtool("test", "rules", "test.yml", cwd=tmp_path)


def rules_of(text: str) -> list[dict[str, object]]:
    return yaml.safe_load(text)["groups"][0]["rules"]


def test_thresholds_come_from_the_policy(policy: Policy):
    rules = rules_of(alert_rules(policy))
    assert [r["alert"] for r in rules] == ["HighErrorRate", "HighLatency", "HighLatency", "HighLatency"]
    assert str(rules[0]["expr"]).rstrip().endswith("+ 0.005")
    assert "> 1.25 * histogram_quantile(0.99," in str(rules[3]["expr"])
    assert all(r["labels"]["destination_version"] == "v2" for r in rules)  # type: ignore[index]
    assert all(r["for"] == "1m" for r in rules)


@pytest.mark.prometheus
@needs_promtool
def test_rules_for_the_example_policy_pass_promtool_check(policy: Policy, tmp_path: Path):
    (tmp_path / "rules.yml").write_text(alert_rules(policy))
    run = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "SUCCESS: 7 rules found" in run.stdout  # 4 on the versions, 3 on canary's own metrics


@pytest.mark.prometheus
@needs_promtool
def test_rules_with_custom_metrics_and_hostile_names_pass_promtool_check(tmp_path: Path):
    text = (REPO / "policies" / "web-app.yaml").read_text()
    hostile_host = text.replace(f"host: {HOST}", "host: 'we\"b}{app\\\\.svc'")
    with pytest.raises(PolicyError, match=r"spec\.target\.host: must be one service's host name"):
        parse_policy(hostile_host, "hostile.yaml")  # never reaches a rule: Kubernetes' own rules refuse it
    text = text.replace("interval: 60s", "interval: 90s")
    text = text.replace("kind: latency", "kind: latency\n      critical: true")
    text += (
        "    - name: 'che\"ck}{outs\\\\'\n"
        "      kind: custom\n"
        '      events: app_checkout_failures_total{service="{service}", version="{version}"}\n'
        '      total: app_checkouts_total{service="{service}", version="{version}"}\n'
        "      maxIncrease: 0.02\n"
    )
    policy = parse_policy(text, "hostile.yaml")
    (tmp_path / "rules.yml").write_text(alert_rules(policy))
    run = promtool("check", "rules", "rules.yml", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "SUCCESS: 8 rules found" in run.stdout
    rules = rules_of((tmp_path / "rules.yml").read_text())
    assert rules[1]["labels"]["severity"] == "critical" and rules[1]["for"] == "90s"  # type: ignore[index]


def _series(version: str, code: str, per_minute: int) -> dict[str, str]:
    labels = f'{SELECT},destination_version="{version}",response_code="{code}"'
    return {"series": f"istio_requests_total{{{labels}}}", "values": f"0+{per_minute}x30"}


def _buckets(version: str, per_minute: dict[str, int]) -> list[dict[str, str]]:
    out, running = [], 0
    for le, count in per_minute.items():
        running += count
        labels = f'{SELECT},destination_version="{version}",le="{le}"'
        out.append({"series": f"istio_request_duration_milliseconds_bucket{{{labels}}}", "values": f"0+{running}x30"})
    return out


def _alert_labels(policy: Policy, metric: str, **extra: str) -> dict[str, str]:
    return {
        "canary_policy": policy.name,
        "destination_service": HOST,
        "destination_version": "v2",
        "severity": "warning",
        "metric": metric,
        **extra,
    }


@pytest.mark.prometheus
@needs_promtool
def test_alerts_fire_for_a_failing_slow_canary_and_not_for_the_baseline(policy: Policy, tmp_path: Path):
    """promtool test rules: v2 fails 10% of requests and is slower; v1 is healthy."""
    fast = {"10": 50, "25": 40, "50": 10, "100": 0, "+Inf": 0}
    slow = {"10": 0, "25": 10, "50": 40, "100": 50, "+Inf": 0}
    series = [
        _series("v1", "200", 100),
        _series("v2", "200", 90),
        _series("v2", "503", 10),
        *_buckets("v1", fast),
        *_buckets("v2", slow),
    ]
    expected = [
        {"eval_time": "1m", "alertname": "HighErrorRate", "exp_alerts": []},  # pending: `for: 1m`
        {
            "eval_time": "15m",
            "alertname": "HighErrorRate",
            "exp_alerts": [
                {
                    "exp_labels": _alert_labels(policy, "error-rate"),
                    "exp_annotations": {
                        "summary": f"v2 of {HOST} fails more often than v1",
                        "description": "The 5xx error rate of v2 is more than 0.5 percentage points "
                        "above v1 (policy web-app, metric error-rate); canary rate 10%.",
                    },
                }
            ],
        },
        {
            "eval_time": "15m",
            "alertname": "HighLatency",
            "exp_alerts": [
                {
                    "exp_labels": _alert_labels(policy, "latency", quantile=q),
                    "exp_annotations": {
                        "summary": f"v2 of {HOST} is slower than v1 at p{p}",
                        "description": f"p{p} request duration of v2 is more than {tol}% above v1 "
                        f"(policy web-app, metric latency); canary p{p} {value} ms.",
                    },
                }
                for q, p, tol, value in (("0.5", "50", "10", "50"), ("0.95", "95", "20", "95"),
                                         ("0.99", "99", "25", "99"))
            ],
        },
    ]  # fmt: skip
    run = promtool_test(tmp_path, alert_rules(policy), series, expected)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout


@pytest.mark.prometheus
@needs_promtool
def test_no_alert_for_a_canary_within_tolerance(policy: Policy, tmp_path: Path):
    same = {"10": 50, "25": 40, "50": 10, "100": 0, "+Inf": 0}
    series = [
        _series("v1", "200", 1000),
        _series("v1", "503", 2),
        _series("v2", "200", 1000),
        _series("v2", "503", 5),  # +0.3 points: within +0.5
        *_buckets("v1", same),
        *_buckets("v2", same),
    ]
    expected = [{"eval_time": "15m", "alertname": name, "exp_alerts": []} for name in ("HighErrorRate", "HighLatency")]
    run = promtool_test(tmp_path, alert_rules(policy), series, expected)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.prometheus
@needs_promtool
def test_the_engine_rules_fire_for_a_rollback_and_a_rollout_stuck_in_a_step(policy: Policy, tmp_path: Path):
    """canary's own series as `canary run --metrics-port` serves them: a rollback counted at minute 10; a
    rollout in progress whose step never changes fires after half its 60 min deadline, not before."""
    text = alert_rules(policy)
    notes = {r["alert"]: r["annotations"] for r in yaml.safe_load(text)["groups"][1]["rules"]}
    of = 'policy="web-app"'
    series = [
        {"series": f'canary_decisions_total{{{of},action="rollback"}}', "values": "0x9 1x30"},
        {"series": f'canary_phase{{{of},phase="progressing"}}', "values": "1x60"},
        {"series": f"canary_step{{{of}}}", "values": "0x60"},
    ]
    expected = [
        {"eval_time": "12m", "alertname": "CanaryRolledBack",
         "exp_alerts": [{"exp_labels": {"canary_policy": "web-app", "severity": "critical",
                                        "policy": "web-app", "action": "rollback"},
                         "exp_annotations": notes["CanaryRolledBack"]}]},
        {"eval_time": "25m", "alertname": "CanaryRolloutStuck", "exp_alerts": []},
        {"eval_time": "40m", "alertname": "CanaryRolloutStuck",
         "exp_alerts": [{"exp_labels": {"canary_policy": "web-app", "severity": "warning",
                                        "policy": "web-app", "phase": "progressing"},
                         "exp_annotations": notes["CanaryRolloutStuck"]}]},
        {"eval_time": "40m", "alertname": "CanaryErrors", "exp_alerts": []},
    ]  # fmt: skip
    run = promtool_test(tmp_path, text, series, expected)
    assert run.returncode == 0, run.stdout + run.stderr
