"""`canary status`: the route's rollout with each check's latest evidence from the log and about how long it
needs to decide at the current traffic."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import tick
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import AuditLog
from canary.cli import app
from canary.policy import load_policy
from canary.routers.manifest import ManifestRouter
from canary.scenario import builtin_scenario

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "web-app.yaml"
VS = ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml"
DR = ROOT / "fixtures" / "istio" / "web-app-destinationrule.yaml"


def test_an_open_rollout_shows_each_checks_evidence_and_the_time_to_its_decision(tmp_path: Path) -> None:
    manifest, audit = tmp_path / "web-app.yaml", tmp_path / "audit.jsonl"
    manifest.write_text(DR.read_text() + "---\n" + VS.read_text())
    policy = load_policy(str(POLICY))
    runner = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit),
                               router=ManifestRouter(manifest)).runner  # fmt: skip
    runner.open()
    for _ in range(2):  # two minutes in: some checks are still collecting
        tick(runner)
    args = ["status", str(POLICY), "--manifest", str(manifest), "--audit", str(audit)]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0, text.output
    lines = text.stdout.splitlines()
    assert lines[1].startswith("rollout ") and ": progressing, step 1 of 3 (10%), tick 2" in lines[1]
    assert lines[2].startswith("2 min in this step; audit head ")
    checks, last = lines[3:-1], lines[-1]
    assert [c.split()[1] for c in checks] == ["error-rate:", "latency", "latency", "latency"]
    # the seed's header-match route sends testers to v2: no step and no rollback of canary's moves it
    assert last == "the canary also gets traffic canary does not move: spec.http[0] (match) 100%"
    doc = json.loads(CliRunner().invoke(app, [*args, "--output", "json"]).stdout)
    rollout = doc["rollout"]
    assert rollout["phase"] == "progressing" and rollout["minutes_in_step"] == 2.0
    assert doc["weights"] == {"baseline": 90, "canary": 10} and (doc["v1"], doc["v2"]) == (90, 10)
    assert doc["canary_elsewhere"] == ["spec.http[0] (match) 100%"]
    assert rollout["steps"][rollout["step"]] == 10, "step indexes steps from 0; the text counts from 1"
    pending = [c for c in rollout["checks"] if c["outcome"] == "continue"]
    assert pending, "two minutes at 10% do not decide every check"
    assert all(c["next_decision_min"] is None or 0 <= c["next_decision_min"] < 600 for c in pending)
    assert any(c["next_decision_min"] for c in pending), "an estimate for a check that is on its way"
    error_rate = next(c for c in rollout["checks"] if c["check"] == "error-rate")
    assert any(error_rate["summary"] in line and "a decision in about" in line for line in checks) == (
        error_rate["next_decision_min"] is not None
    )


def test_status_without_a_log_shows_the_state_alone(tmp_path: Path) -> None:
    manifest = tmp_path / "web-app.yaml"
    manifest.write_text(DR.read_text() + "---\n" + VS.read_text())
    result = CliRunner().invoke(app, ["status", str(POLICY), "--manifest", str(manifest), "--audit",
                                      str(tmp_path / "none.jsonl"), "--output", "json"])  # fmt: skip
    assert result.exit_code == 0 and json.loads(result.stdout)["rollout"] is None


def test_a_persons_command_after_a_simulated_run_leaves_its_times_true(tmp_path: Path) -> None:
    """A simulated rollout runs on simulated time (2026-01-01); a person's rollback after it happens at that
    rollout's time, not the wall clock's: `audit list` times the rollout as the run did, and `status` of the
    ended rollout gives no minutes in a step (they were 484,724 across the two clocks)."""
    manifest, audit = tmp_path / "web-app.yaml", tmp_path / "audit.jsonl"
    manifest.write_text(DR.read_text() + "---\n" + VS.read_text())
    common = ["--manifest", str(manifest), "--audit", str(audit)]
    ran = CliRunner().invoke(app, ["run", str(POLICY), "--simulate", "healthy", *common, "--output", "json"])
    assert ran.exit_code == 0, ran.output
    minutes = json.loads(ran.stdout)["duration_s"] / 60
    assert CliRunner().invoke(app, ["rollback", str(POLICY), *common]).exit_code == 0
    listed = CliRunner().invoke(app, ["audit", "list", str(audit)])
    assert listed.exit_code == 0 and f"rolled-back after {minutes:.0f} min" in listed.stdout, listed.stdout
    assert "user:" in listed.stdout, "the person who acted is named"
    status = CliRunner().invoke(app, ["status", str(POLICY), *common])
    assert status.stdout.splitlines()[2].startswith("ended; audit head "), status.stdout
    doc = json.loads(CliRunner().invoke(app, ["status", str(POLICY), *common, "--output", "json"]).stdout)
    assert doc["rollout"]["minutes_in_step"] is None


def test_subsets_named_as_the_documents_keys_do_not_replace_them(tmp_path: Path) -> None:
    """`weights`, `target` and `rollout` are the document's; a subset so named is given by role only."""
    rename = {"v1": "weights", "v2": "rollout"}
    manifest, policy = tmp_path / "web-app.yaml", tmp_path / "policy.yaml"
    text = DR.read_text() + "---\n" + VS.read_text()
    for old, new in rename.items():
        text = text.replace(f"name: {old}", f"name: {new}").replace(f"subset: {old}", f"subset: {new}")
    manifest.write_text(text)
    named = POLICY.read_text().replace("baseline: v1", "baseline: weights")
    policy.write_text(named.replace("canary: v2", "canary: rollout"))
    result = CliRunner().invoke(app, ["status", str(policy), "--manifest", str(manifest), "--audit",
                                      str(tmp_path / "none.jsonl"), "--output", "json"])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["weights"] == {"baseline": 90, "canary": 10} and doc["rollout"] is None
    assert doc["target"] == "default/web-app"


def test_status_says_when_the_log_is_not_the_routes_history(tmp_path: Path) -> None:
    """A log deleted, emptied or cut short: status printed the route's head and exited 0 without a word."""
    manifest, audit = tmp_path / "web-app.yaml", tmp_path / "audit.jsonl"
    manifest.write_text(DR.read_text() + "---\n" + VS.read_text())
    runner = simulated_rollout(load_policy(str(POLICY)), builtin_scenario("healthy"), seed=1, audit=AuditLog(audit),
                               router=ManifestRouter(manifest)).runner  # fmt: skip
    runner.open()
    for _ in range(3):
        tick(runner)
    args = ["status", str(POLICY), "--manifest", str(manifest), "--audit", str(audit), "--output", "json"]
    whole = CliRunner().invoke(app, args)
    assert whole.exit_code == 0 and json.loads(whole.stdout)["audit_problem"] is None and not whole.stderr
    audit.write_bytes(b"".join(audit.read_bytes().splitlines(keepends=True)[:3]))
    cut = CliRunner().invoke(app, args)
    assert cut.exit_code == 0, cut.output
    problem = json.loads(cut.stdout)["audit_problem"]
    assert "does not verify against the route's head" in problem and "cut short" in problem
    assert cut.stderr.startswith("canary: warning: ") and len(cut.stderr.splitlines()) == 1
    audit.unlink()
    gone = CliRunner().invoke(app, args)
    assert gone.exit_code == 0 and "no such file" in json.loads(gone.stdout)["audit_problem"]
