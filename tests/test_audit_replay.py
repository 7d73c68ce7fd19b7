"""`canary audit list`, `audit export` and `audit replay`: what a log holds, one row per check per tick, and
every automated judgement recomputed from the inputs the log recorded."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from canary.auditing import EXPORT_COLUMNS
from canary.cli import app

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "web-app.yaml"
VS = ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml"
DR = ROOT / "fixtures" / "istio" / "web-app-destinationrule.yaml"
runner = CliRunner()


def run(*args: str | Path) -> Result:
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A log with three rollouts: a promoted one, a rolled-back one, and a person's rollback on a manifest."""
    audit = tmp_path / "audit.jsonl"
    assert run("run", POLICY, "--simulate", "healthy", "--audit", audit).exit_code == 0
    assert run("run", POLICY, "--simulate", "latency-regression", "--audit", audit).exit_code == 1
    manifest = tmp_path / "web-app.yaml"
    manifest.write_text(DR.read_text() + "---\n" + VS.read_text())
    manual = run("rollback", POLICY, "--manifest", manifest, "--audit", audit, "--actor", "user:alice",
                 "--reason", "pager")  # fmt: skip
    assert manual.exit_code == 0, manual.output
    return audit


def ticks(log: Path) -> int:
    """The automated, judged ticks the log holds (a decision with a tick and a judgement)."""
    records = [json.loads(line) for line in log.read_text().splitlines()]
    return sum(1 for r in records if r.get("kind") == "decision" and r.get("tick") and r.get("judgement"))


def test_list_names_each_rollout_its_outcome_duration_and_who_acted(log: Path) -> None:
    result = run("audit", "list", log)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    assert re.search(r"web-app: promoted after (\d+) min \(\1 ticks, 100% canary\)$", lines[0]), lines[0]
    assert re.search(r"web-app: rolled-back after (\d+) min \(\1 ticks, 0% canary\)$", lines[1]), lines[1]
    assert "rolled-back" in lines[2] and "by hand: user:alice" in lines[2]
    doc = json.loads(run("audit", "list", log, "--output", "json").stdout)
    assert [r["outcome"] for r in doc] == ["promoted", "rolled-back", "rolled-back"]
    assert doc[2]["people"] == ["user:alice"] and doc[0]["people"] == []
    assert doc[0]["duration_s"] == 60.0 * doc[0]["ticks"] and doc[0]["final_weights"] == {"baseline": 0, "canary": 100}
    started, ended = (datetime.fromisoformat(doc[0][k]) for k in ("started", "ended"))  # ISO 8601, as run's
    assert (ended - started).total_seconds() == doc[0]["duration_s"]


def test_export_has_one_row_per_check_per_judged_tick_as_csv_and_json(log: Path, tmp_path: Path) -> None:
    result = run("audit", "export", log)
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == EXPORT_COLUMNS
    checks = {"error-rate", "latency p50", "latency p95", "latency p99"}
    assert len(rows) == ticks(log) * len(checks) and {r["check"] for r in rows} == checks
    failed = [r for r in rows if r["outcome"] == "fail"]
    assert [(r["check"], r["action"]) for r in failed] == [("latency p50", "rollback")]
    assert float(failed[0]["lower"]) > 0 and float(failed[0]["p_value"]) <= 0.05 / 6
    out = tmp_path / "rows.json"
    assert run("audit", "export", log, "--format", "json", "-o", out).exit_code == 0
    as_json = json.loads(out.read_text())
    assert len(as_json) == len(rows) and as_json[0]["check"] == rows[0]["check"]


def test_replay_with_the_recorded_policy_reproduces_every_judgement(log: Path) -> None:
    result = run("audit", "replay", log)
    assert result.exit_code == 0, result.output
    expected = f"{log}: {ticks(log)} automated judgements replayed with the recorded policies: 0 differ"
    assert result.stdout.startswith(expected)


def test_replay_reports_a_judgement_the_recorded_inputs_do_not_give_and_exits_1(log: Path, tmp_path: Path) -> None:
    """Change one recorded count (the chain would catch it too; replay checks the meaning, not the bytes)."""
    lines = log.read_text().splitlines()
    at = next(i for i, line in enumerate(lines) if '"action":"rollback"' in line and '"tick":' in line)
    record = json.loads(lines[at])
    record["judgement"]["outcome"] = "continue"
    lines[at] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    tampered = tmp_path / "tampered.jsonl"
    tampered.write_text("\n".join(lines) + "\n")
    result = run("audit", "replay", tampered)
    assert result.exit_code == 1
    assert "1 differ" in result.stdout and f"tick {record['tick']}: outcome continue -> fail" in result.stdout


def test_replay_with_another_policy_says_where_its_decisions_differ(log: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose.yaml"
    loose.write_text(
        POLICY.read_text().replace("{quantile: 0.50, maxIncrease: 0.10}", "{quantile: 0.50, maxIncrease: 0.60}")
    )
    result = run("audit", "replay", log, "--policy", loose, "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["ticks"] == ticks(log) and doc["differing"]
    assert any("does not happen within the recorded ticks" in line for line in doc["decisions"])


def test_replay_refuses_a_policy_file_that_changed_since_in_one_line(tmp_path: Path) -> None:
    policy = tmp_path / "web-app.yaml"
    policy.write_text(POLICY.read_text())
    audit = tmp_path / "a.jsonl"
    assert run("run", policy, "--simulate", "healthy", "--audit", audit).exit_code == 0
    policy.write_text(POLICY.read_text().replace("alpha: 0.05 ", "alpha: 0.01 "))
    result = run("audit", "replay", audit)
    assert result.exit_code == 2
    assert "not the policy the rollout ran under" in result.output and len(result.output.splitlines()) == 1


def test_replay_from_another_folder_says_the_recorded_policy_path_is_the_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The log records the policy's path as the run gave it: relative to the folder the run was in."""
    (tmp_path / "policies").mkdir()
    shutil.copy(POLICY, tmp_path / "policies" / "web-app.yaml")
    monkeypatch.chdir(tmp_path)
    assert run("run", "policies/web-app.yaml", "--simulate", "healthy", "--audit", "a.jsonl").exit_code == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    result = run("audit", "replay", tmp_path / "a.jsonl")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"canary: policies/web-app.yaml: the policy the rollout recorded is not there from {elsewhere} (the path "
        "is the run's, relative): replay in the folder the rollout ran in, or judge with a policy given by --policy"
    )
    given = run("audit", "replay", tmp_path / "a.jsonl", "--policy", tmp_path / "policies" / "web-app.yaml")
    assert given.exit_code == 0, given.output


def test_the_verbs_as_a_user_runs_them(log: Path) -> None:
    canary = Path(sys.executable).parent / "canary"
    for verb, code in (("list", 0), ("export", 0), ("replay", 0)):
        done = subprocess.run([str(canary), "audit", verb, str(log)], capture_output=True, text=True, timeout=60,
                              check=False)  # fmt: skip
        assert done.returncode == code, done.stderr
        assert done.stdout and not done.stderr
    missing = subprocess.run([str(canary), "audit", "list", str(log.parent / "none.jsonl")], capture_output=True,
                             text=True, timeout=60, check=False)  # fmt: skip
    assert missing.returncode == 2 and len(missing.stderr.splitlines()) == 1 and "Traceback" not in missing.stderr


def test_the_demos_log_replays_exactly_and_another_alpha_reports_how_it_differs(tmp_path: Path) -> None:
    """What `make demo` writes (both scenarios, into the policy's audit/web-app.jsonl) is reproduced
    judgement by judgement; under α = 0.0001 every decision falls at the same tick with other bounds."""
    shutil.copytree(ROOT / "policies", tmp_path / "policies")
    canary = Path(sys.executable).parent / "canary"
    for scenario, code in (("healthy", 0), ("latency-regression", 1)):
        done = subprocess.run([str(canary), "demo", "--scenario", scenario], cwd=tmp_path, capture_output=True,
                              text=True, timeout=120, check=False)  # fmt: skip
        assert done.returncode == code, done.stderr
    log = tmp_path / "audit" / "web-app.jsonl"
    exact = subprocess.run([str(canary), "audit", "replay", str(log), "--output", "json"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert exact.returncode == 0, exact.stderr
    assert json.loads(exact.stdout)["differing"] == [] and json.loads(exact.stdout)["ticks"] == ticks(log)
    strict = tmp_path / "strict.yaml"
    strict.write_text(POLICY.read_text().replace("alpha: 0.05 ", "alpha: 0.0001 "))
    other = subprocess.run([str(canary), "audit", "replay", str(log), "--policy", str(strict)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert other.returncode == 0, other.stderr
    lines = other.stdout.splitlines()
    assert lines[-1].startswith("  every rollback and pass at the same tick; ") and "with other bounds" in lines[-1]
    assert int(lines[-1].split("; ")[1].split()[0]) > 0
