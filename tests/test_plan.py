"""`canary plan`: what a policy can decide at a given traffic, from the judge itself, in process and as a user
runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from canary.cli import app
from canary.planning import Baseline, _simulated_part, plan, undecidable
from canary.policy import load_policy, parse_policy

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
P95_10 = POLICY.read_text().replace("{quantile: 0.95, maxIncrease: 0.20}", "{quantile: 0.95, maxIncrease: 0.10}")


def test_plan_prints_step_times_the_smallest_regressions_and_exits_0() -> None:
    result = CliRunner().invoke(app, ["plan", str(POLICY), "--rps", "100", "--seeds", "2"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{POLICY} at 100 requests/s (2 simulated rollouts per figure, deadline 60 min)")
    assert [line.split(":")[0].strip() for line in lines[1:3]] == ["step 10%", "step 50%"]
    assert any(line.strip().startswith("promoted: 100% of rollouts") for line in lines)
    assert any("smallest error-rate regression" in line and "pp" in line for line in lines)
    assert any("smallest latency regression" in line and "% slower" in line for line in lines)
    assert not any("undecidable" in line for line in lines), "the shipped tolerances are decidable at 80 ms"


def test_plan_at_too_little_traffic_says_the_steps_are_not_passed() -> None:
    """At 0.1 requests/s no step passes before the deadline: each step's line says so in one sentence."""
    result = CliRunner().invoke(app, ["plan", str(POLICY), "--rps", "0.1", "--seeds", "1"])
    assert result.exit_code == 0, result.output
    steps = [line.strip() for line in result.stdout.splitlines() if line.strip().startswith("step ")]
    assert steps == [
        f"step {w}%: not passed within the deadline in most rollouts for a canary equal to the baseline"
        for w in (10, 50)
    ]


def test_plan_as_json_from_the_console_script(tmp_path: Path) -> None:
    run = subprocess.run(
        [str(Path(sys.executable).parent / "canary"), "plan", str(POLICY), "--rps", "50", "--seeds", "2",
         "--output", "json"],
        capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert set(doc) == {"policy", "rps", "seeds", "power", "promoted_share", "step_minutes", "total_minutes",
                        "smallest", "smallest_increase", "undecidable", "notes"}  # fmt: skip
    assert (doc["policy"], doc["rps"], doc["seeds"], doc["power"]) == ("web-app", 50, 2, 0.8)
    assert f"+{100 * doc['smallest_increase']['error-rate']:.2f} pp" == doc["smallest"]["error-rate"], "one figure"
    assert doc["promoted_share"] == 1.0 and len(doc["step_minutes"]) == 2
    assert set(doc["smallest"]) == {"error-rate", "latency"} and doc["undecidable"] == []
    assert doc["notes"] == [], "6 baseline pods (the default) bound how pods differ"


def test_plan_warns_where_few_baseline_pods_bound_pod_luck_only_roughly() -> None:
    """3 baseline pods against 1 canary pod: measured at or just above α where pods differ; 2 baseline pods:
    slower, their whole spread bounding how pods differ (docs/statistics.md, Pods); 3 against 2 and 4
    against 1 held, and plan says nothing of them."""
    args = ["plan", str(POLICY), "--rps", "100", "--seeds", "1", "--baseline-pods", "3", "--canary-pods", "1"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    (note,) = [line.strip() for line in result.stdout.splitlines() if "baseline pods against" in line]
    assert note.startswith("3 baseline pods against 1: too few to bound how pods differ")
    assert "docs/statistics.md, Pods" in note
    policy = load_policy(str(POLICY))
    assert (
        plan(policy, Baseline(100.0, pods=(2, 2)), seeds=1)
        .notes[0]
        .startswith("2 baseline pods: the error-rate check bounds how pods differ by their whole spread")
    )
    for pods in ((3, 2), (4, 1)):
        assert plan(policy, Baseline(100.0, pods=pods), seeds=1).notes == (), pods


def test_less_traffic_means_a_larger_smallest_regression() -> None:
    """The same statistics that decide a rollout: at 10 req/s +0.5 pp cannot be shown within the hour."""
    policy = load_policy(str(POLICY))
    low, high = plan(policy, Baseline(10.0), seeds=2), plan(policy, Baseline(200.0), seeds=2)
    low_pp, high_pp = (float(p.smallest["error-rate"].split()[0].lstrip("+")) for p in (low, high))
    assert low_pp > 0.5 and low_pp > high_pp


def test_a_tolerance_the_buckets_cannot_resolve_is_named_by_plan(tmp_path: Path) -> None:
    path = tmp_path / "p95-10.yaml"
    path.write_text(P95_10)
    (line,) = undecidable(parse_policy(P95_10, str(path)), 80.0, 0.5)
    assert line.startswith("latency p95 +10%: undecidable: the buckets around the baseline's p95 (about 182 ms)")
    result = CliRunner().invoke(app, ["plan", str(path), "--rps", "100", "--seeds", "1"])
    assert result.exit_code == 0 and "latency p95 +10%: undecidable" in result.stdout


def test_plan_refuses_a_bad_policy_and_bad_traffic_in_one_line(tmp_path: Path) -> None:
    missing = CliRunner().invoke(app, ["plan", str(tmp_path / "none.yaml"), "--rps", "10"])
    assert missing.exit_code == 2 and "none.yaml" in missing.output and "Traceback" not in missing.output
    zero = CliRunner().invoke(app, ["plan", str(POLICY), "--rps", "0"])
    assert zero.exit_code == 2 and "--rps" in zero.output


def test_a_custom_metric_is_named_as_not_planned_and_the_others_keep_their_share_of_alpha() -> None:
    """policies/web-app-tcp.yaml adds a custom TCP metric the simulated mesh does not serve: plan figures
    the error-rate and latency checks, each at the alpha it has among three metrics, and says so."""
    policy = load_policy(str(REPO / "policies" / "web-app-tcp.yaml"))
    custom = [m.name for m in policy.metrics if m.name not in ("error-rate", "latency")]
    found = plan(policy, Baseline(100.0), seeds=1)
    assert found.promoted_share == 1.0 and set(found.smallest) == {"error-rate", "latency"}
    (note,) = [n for n in found.notes if n.startswith(f"{custom[0]}: not planned")]
    assert "at the alpha they have in the whole policy" in note
    planned, _ = _simulated_part(policy)
    assert [m.name for m in planned.metrics] == ["error-rate", "latency"]
    assert planned.analysis.alpha / 2 == pytest.approx(policy.analysis.alpha / 3)
