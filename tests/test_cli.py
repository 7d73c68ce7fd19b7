"""The CLI's contract: exit codes (0 promoted, 1 rolled back, 2 error, 3 inconclusive, 4 cancelled), one-line
errors on stderr, JSON outcomes, plain lines off a terminal; `run --resume/--restart/--lock-timeout`; the audit
head commands print and `audit verify` checks; `audit show` and `status` never let a record forge a line.

Checked in-process with typer's CliRunner and as the installed console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

import canary.display
from canary.audit import AuditLog, read_records
from canary.cli import app
from canary.controller import TickReport
from canary.model import Action, Weights
from canary.records import DecisionRecord, OutcomeRecord
from canary.report import iso

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
SEED_VS = REPO / "fixtures" / "istio" / "web-app-virtualservice.yaml"
BIN = Path(sys.executable).parent
ANSI = re.compile(r"\x1b\[")
BAD_POLICY = POLICY.read_text().replace("steps: [10, 50, 100]", "steps: [10, 50]")


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, *args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def cli(*args: str | Path, cwd: Path, program: str = "canary") -> subprocess.CompletedProcess[str]:
    """The installed console script, as a user runs it (stdout is a pipe, not a terminal)."""
    env = {k: v for k, v in os.environ.items() if k not in ("FORCE_COLOR", "CLICOLOR_FORCE")}
    return subprocess.run(
        [str(BIN / program), *map(str, args)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_error_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    assert "Traceback" not in stderr
    return lines[0]


def decisions_and_outcomes(audit: Path) -> list[tuple[DecisionRecord, OutcomeRecord]]:
    """The log as (decision, outcome) pairs, checking that every decision writes and is followed by its outcome."""
    sealed = list(read_records(audit))
    assert len(sealed) % 2 == 0, "every change is followed by exactly one outcome"
    pairs = []
    for decision, outcome in zip(sealed[0::2], sealed[1::2], strict=True):
        assert isinstance(decision.record, DecisionRecord) and decision.record.writes
        assert isinstance(outcome.record, OutcomeRecord) and outcome.record.of == decision.hash
        pairs.append((decision.record, outcome.record))
    return pairs


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """The seed's VirtualService (90/10) in a file: weights and rollout state that outlive a command."""
    path = tmp_path / "web-app-virtualservice.yaml"
    shutil.copy(SEED_VS, path)
    return path


def scenario_file(tmp_path: Path, **data: Any) -> Path:
    body = {
        "name": "from-a-file",
        "rps": 100,
        "baseline": {"error_rate": 0.01, "latency_ms": {"median": 80}},
        "canary": {"error_rate": 0.01, "latency_ms": {"median": 80}},
        "pods": {"baseline": 6, "canary": 2},
    }
    body.update(data)
    path = tmp_path / "scenario.json"
    path.write_text(json.dumps(body))
    return path


# ----------------------------------------------------------------------------------------- validate


def test_validate_accepts_the_example_policy(runner: CliRunner) -> None:
    result = invoke(runner, "validate", POLICY)
    assert result.exit_code == 0
    first, *warnings = result.stdout.splitlines()
    assert first == f"{POLICY}: valid CanaryPolicy 'web-app': steps 10% -> 50% -> 100%, metrics error-rate, latency"
    # Istio's 1–5 ms bucket is too wide for +20% at p95 and +25% at p99: said, never silently decided.
    assert [w.split(":")[1] for w in warnings] == [" latency p95 +20%", " latency p99 +25%"]
    assert all(w.startswith("warning: ") and "undecidable" in w and "1–5 ms" not in w for w in warnings)


def test_validate_warns_where_the_buckets_cannot_resolve_a_tolerance(
    runner: CliRunner, write_policy: Callable[..., Path]
) -> None:
    """p95 +10%: Istio's 100–250 ms bucket holds a p95 near 180 ms; the warning names where and what to do."""
    text = (
        Path(POLICY).read_text().replace("{quantile: 0.95, maxIncrease: 0.20}", "{quantile: 0.95, maxIncrease: 0.10}")
    )
    result = invoke(runner, "validate", write_policy(text))
    assert result.exit_code == 0
    (p95,) = [line for line in result.stdout.splitlines() if "p95" in line]
    assert "178–224 ms" in p95 and "finer buckets or a larger tolerance" in p95


def test_validate_reports_a_bad_policy_in_one_line(runner: CliRunner, write_policy: Callable[..., Path]) -> None:
    path = write_policy(BAD_POLICY)
    result = invoke(runner, "validate", path)
    assert result.exit_code == 2
    assert result.stdout == ""
    assert one_error_line(result.stderr) == (
        f"canary: {path}:14: spec.steps: must end at 100 (full promotion), got [10, 50]"
    )


def test_validate_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "validate", tmp_path / "nope.yaml")
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"canary: {tmp_path / 'nope.yaml'}: no such file"


def test_validate_as_a_subprocess(tmp_path: Path, write_policy: Callable[..., Path]) -> None:
    ok = cli("validate", POLICY, cwd=tmp_path)
    assert (ok.returncode, ok.stderr) == (0, "")
    assert "valid CanaryPolicy 'web-app'" in ok.stdout
    bad = cli("validate", write_policy(BAD_POLICY), cwd=tmp_path)
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert one_error_line(bad.stderr).endswith("spec.steps: must end at 100 (full promotion), got [10, 50]")


def test_validate_a_policy_without_apiversion_ends(tmp_path: Path, write_policy: Callable[..., Path]) -> None:
    """A missing top-level field used to send the loader into an endless loop."""
    path = write_policy(POLICY.read_text().replace("apiVersion: canary.dev/v1alpha1\n", ""))
    result = cli("validate", path, cwd=tmp_path)
    assert result.returncode == 2
    assert one_error_line(result.stderr) == f"canary: {path}:2: apiVersion: is required"


def test_kubectl_plugin_entry_point(tmp_path: Path) -> None:
    """`kubectl canary ...` runs the same CLI through the kubectl-canary script."""
    result = cli("validate", POLICY, cwd=tmp_path, program="kubectl-canary")
    assert result.returncode == 0
    assert "valid CanaryPolicy 'web-app'" in result.stdout


# ----------------------------------------------------------------------------------------- demo and run


@pytest.mark.parametrize(
    ("scenario", "code", "outcome", "canary"),
    [
        ("healthy", 0, "promoted", 100),
        ("error-regression", 1, "rolled-back", 0),
        ("latency-regression", 1, "rolled-back", 0),
    ],
)
def test_demo_json_outcomes(
    runner: CliRunner, tmp_path: Path, scenario: str, code: int, outcome: str, canary: int
) -> None:
    audit = tmp_path / "demo.jsonl"
    result = invoke(runner, "demo", "--scenario", scenario, "--policy", POLICY, "--audit", audit, "--output", "json")
    assert result.exit_code == code, result.output
    out = json.loads(result.stdout)
    assert out["outcome"] == outcome
    assert out["exit_code"] == code
    assert out["final_weights"] == {"baseline": 100 - canary, "canary": canary}
    assert out["audit"] == str(audit)
    pairs = decisions_and_outcomes(audit)
    assert len(pairs) == out["ticks"] + 1  # the start, then one decision per tick
    assert all(outcome.result == "applied" for _, outcome in pairs)
    assert out["audit_head"] == list(read_records(audit))[-1].hash
    records = [s.record for s in read_records(audit)]
    assert (out["started"], out["finished"]) == (iso(records[0].time), iso(records[-1].time)), "ISO, as status"


def test_demo_as_a_subprocess_with_the_default_policy(tmp_path: Path) -> None:
    audit = tmp_path / "demo.jsonl"
    result = cli("demo", "--output", "json", "--audit", audit, cwd=REPO)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["outcome"] == "promoted"
    assert out["final_weights"] == {"baseline": 0, "canary": 100}


def test_demo_text_off_a_terminal_is_plain_lines(tmp_path: Path) -> None:
    result = cli(
        "demo", "--scenario", "latency-regression", "--policy", POLICY, "--audit", tmp_path / "a.jsonl", cwd=tmp_path
    )
    assert result.returncode == 1
    assert not ANSI.search(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    assert lines[0] == "canary demo: scenario 'latency-regression' on the simulated mesh (100 requests/s)"
    assert lines[1].startswith("[tick   0] canary   0% ->  10%  start")
    assert any(line.startswith("ROLLED BACK after ") for line in lines)
    assert any(line.startswith("  - latency p") for line in lines), "the summary lists per-metric evidence"


def test_demo_text_through_clirunner_has_no_escape_codes(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "demo", "--policy", POLICY, "--audit", tmp_path / "a.jsonl")
    assert result.exit_code == 0
    assert not ANSI.search(result.output)
    assert "PROMOTED after" in result.stdout
    assert sum(line.startswith("[tick") for line in result.stdout.splitlines()) >= 3


def test_run_with_a_builtin_scenario(runner: CliRunner, tmp_path: Path) -> None:
    audit = tmp_path / "run.jsonl"
    result = invoke(runner, "run", POLICY, "--simulate", "healthy", "--audit", audit, "--output", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["outcome"] == "promoted"
    assert audit.exists()


def test_run_without_a_source_says_how_to_choose_one(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "run", POLICY, "--audit", tmp_path / "run.jsonl")
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert line.startswith("canary: choose a metrics source: ")
    assert "--simulate SCENARIO" in line
    assert not (tmp_path / "run.jsonl").exists()


def test_run_with_a_scenario_file_as_a_subprocess(tmp_path: Path) -> None:
    path = scenario_file(tmp_path)
    result = cli("run", POLICY, "--simulate", path, "--audit", tmp_path / "run.jsonl", "--output", "json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["outcome"] == "promoted"


def test_run_with_no_traffic_is_inconclusive_at_the_deadline(runner: CliRunner, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, rps=0, max_duration_s=300)
    result = invoke(runner, "run", POLICY, "--simulate", path, "--audit", tmp_path / "a.jsonl", "--output", "json")
    assert result.exit_code == 3
    out = json.loads(result.stdout)
    assert out["outcome"] == "inconclusive"
    assert out["final_weights"] == {"baseline": 100, "canary": 0}
    assert out["ticks"] == 5


def test_run_with_a_bad_scenario_file(runner: CliRunner, tmp_path: Path) -> None:
    path = scenario_file(tmp_path, rsp=10)
    result = invoke(runner, "run", POLICY, "--simulate", path, "--audit", tmp_path / "a.jsonl")
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"canary: {path}: scenario 'from-a-file': unknown field rsp"


def test_run_with_a_misspelt_scenario_name(runner: CliRunner, tmp_path: Path) -> None:
    result = invoke(runner, "run", POLICY, "--simulate", "helthy", "--audit", tmp_path / "a.jsonl")
    assert result.exit_code == 2
    assert "helthy" in one_error_line(result.stderr)


def test_run_with_a_bad_policy(runner: CliRunner, write_policy: Callable[..., Path], tmp_path: Path) -> None:
    path = write_policy(BAD_POLICY)
    result = invoke(runner, "run", path, "--simulate", "healthy", "--audit", tmp_path / "a.jsonl")
    assert result.exit_code == 2
    assert one_error_line(result.stderr).startswith(f"canary: {path}:14: spec.steps")


# ----------------------------------------------------------------------------------------- audit


@pytest.fixture
def produced_log(runner: CliRunner, tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    audit = tmp_path / "audit.jsonl"
    result = invoke(runner, "run", POLICY, "--simulate", "healthy", "--audit", audit, "--output", "json")
    assert result.exit_code == 0
    return audit, json.loads(result.stdout)


def test_audit_show_prints_each_decision_its_verdicts_and_its_outcome(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    result = invoke(runner, "audit", "show", audit)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    decisions = [line for line in lines if not line.startswith("    ")]
    outcomes = [line for line in lines if line.startswith("    applied: ")]
    assert len(decisions) == len(outcomes) == out["ticks"] + 1
    assert decisions[0] == (
        f"2026-01-01T00:00:00+00:00 {out['rollout']} tick 0 start: canary 0% -> 10% "
        "by canary-controller (simulated mesh): rollout started: canary at 10% (from 100/0)"
    )
    assert lines[1] == "    applied: the route holds 90/10"
    assert f"tick {out['ticks']} promote: canary 50% -> 100%" in decisions[-1]
    assert lines[-1] == "    applied: the route holds 0/100"
    verdicts = [line.split() for line in lines if line.startswith("    ") and not line.startswith("    applied: ")]
    assert {v[0] for v in verdicts} <= {"pass", "fail", "continue", "no-data"}
    assert {v[1] for v in verdicts} == {"error-rate:", "latency"}


def test_audit_show_filters_by_rollout_and_prints_json(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    for output in ("text", "json"):  # as `canary report --rollout` does: exit 2, not an empty answer
        other = invoke(runner, "audit", "show", audit, "--rollout", "someone-else", "--output", output)
        assert (other.exit_code, other.stdout) == (2, "")
        assert one_error_line(other.stderr) == f"canary: {audit}: no rollout someone-else"
    result = invoke(runner, "audit", "show", audit, "--rollout", out["rollout"], "--output", "json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records == [json.loads(line) for line in audit.read_text().splitlines()]  # the lines as stored
    assert [r["kind"] for r in records[:2]] == ["decision", "outcome"]


def test_audit_verify_passes_then_fails_after_an_edit(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    records = 2 * (out["ticks"] + 1)
    result = invoke(runner, "audit", "verify", audit)
    assert result.exit_code == 0
    assert result.stdout == f"{audit}: {records} records, hash chain intact, head {out['audit_head']}\n"
    lines = audit.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"action":"hold"', '"action":"advance"')  # the first tick's decision
    assert lines[2] != audit.read_text().splitlines(keepends=True)[2], "the edit must change the record"
    audit.write_text("".join(lines))
    tampered = invoke(runner, "audit", "verify", audit)
    assert tampered.exit_code == 1
    assert one_error_line(tampered.stderr) == (
        f"canary: {audit}:3: the hash chain breaks here (a record was edited, removed or moved)"
    )


def test_audit_verify_with_the_head_a_run_printed(runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]) -> None:
    """The head a command prints is where the log must end: a log cut short, or added to, no longer does."""
    audit, out = produced_log
    ok = invoke(runner, "audit", "verify", audit, "--head", out["audit_head"])
    assert ok.exit_code == 0 and "hash chain intact ending at the given head" in ok.stdout
    earlier = list(read_records(audit))[-3].hash
    extended = invoke(runner, "audit", "verify", audit, "--head", earlier)
    assert extended.exit_code == 1
    assert one_error_line(extended.stderr) == (
        f"canary: {audit}: 2 records follow the head {earlier[:16]} (appended after it)"
    )
    audit.write_text("".join(audit.read_text().splitlines(keepends=True)[:-2]))
    cut = invoke(runner, "audit", "verify", audit, "--head", out["audit_head"])
    assert cut.exit_code == 1
    assert one_error_line(cut.stderr) == (
        f"canary: {audit}: does not lead to the head {out['audit_head'][:16]}: cut short, or re-hashed after an edit"
    )


def test_audit_verify_takes_the_head_as_canary_prints_it(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    """The first 16 digits (what canary's messages show), in either case, name the head as the whole hash does."""
    audit, out = produced_log
    for given in (out["audit_head"][:16], out["audit_head"][:40].upper()):
        ok = invoke(runner, "audit", "verify", audit, "--head", given)
        assert ok.exit_code == 0 and "hash chain intact ending at the given head" in ok.stdout, ok.stderr
    earlier = list(read_records(audit))[-3].hash[:16]
    extended = invoke(runner, "audit", "verify", audit, "--head", earlier)
    assert extended.exit_code == 1 and f"2 records follow the head {earlier}" in extended.stderr


@pytest.mark.parametrize("given", ["abc", "HEAD15", "0123456789abcdeg", "ff" * 33, "", " HEAD"])
def test_audit_verify_refuses_a_head_that_is_not_one_as_a_usage_error(
    given: str, produced_log: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Too short, not hex, too long, empty: exit 2 and one line saying what a head is, never exit 1 ("does not
    verify") for what is a typo."""
    audit, out = produced_log
    head = given.replace("HEAD15", out["audit_head"][:15]).replace("HEAD", out["audit_head"])
    result = cli("audit", "verify", audit, "--head", head, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert "--head" in one_error_line(result.stderr) and "16 to 64 hex digits" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--head", "HEAD", "--manifest", "MANIFEST", "--policy", "POLICY"],
         "check against --head HASH or against the route's head, not both"),
        (["--manifest", "MANIFEST"], "the route's head is read from the policy's route: give --policy FILE too"),
        (["--policy", "POLICY", "--manifest", "MANIFEST"],
         "the route holds no rollout state: no head to check against"),
    ],
)  # fmt: skip
def test_audit_verify_against_a_route_needs_its_policy_and_its_state(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]], manifest: Path, args: list[str], message: str
) -> None:
    audit, out = produced_log
    given = {"HEAD": out["audit_head"], "MANIFEST": str(manifest), "POLICY": str(POLICY)}
    result = invoke(runner, "audit", "verify", audit, *(given.get(a, a) for a in args))
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == f"canary: {message}"


def test_version_prints_the_installed_package_version(tmp_path: Path) -> None:
    result = cli("--version", cwd=tmp_path)
    assert (result.returncode, result.stdout, result.stderr) == (0, f"canary {version('canary')}\n", "")


def test_audit_commands_as_subprocesses(produced_log: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    audit, out = produced_log
    shown = cli("audit", "show", audit, cwd=tmp_path)
    assert shown.returncode == 0
    assert f"{out['rollout']} tick 0 start" in shown.stdout
    assert not ANSI.search(shown.stdout)
    verified = cli("audit", "verify", audit, cwd=tmp_path)
    assert (verified.returncode, verified.stdout.strip()) == (
        0,
        f"{audit}: {2 * (out['ticks'] + 1)} records, hash chain intact, head {out['audit_head']}",
    )


def test_audit_on_a_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    for command in ("show", "verify"):
        result = invoke(runner, "audit", command, missing)
        assert result.exit_code == 2
        assert one_error_line(result.stderr) == f"canary: {missing}: no such file"


def test_an_unexpected_exception_exits_2_never_1(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 1 means "rolled back" to a pipeline: a bug must never look like one."""
    import canary.cli

    def broken(**kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(canary.cli, "app", broken)
    with pytest.raises(SystemExit) as caught:
        canary.cli.main()
    assert caught.value.code == 2
    assert capsys.readouterr().err.strip() == "canary: internal error: RuntimeError: boom"


def test_simulate_outranks_the_environment_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARY_PROMETHEUS_URL", "http://127.0.0.1:9")
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--simulate", "latency-regression", "--audit", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 1, result.output


@pytest.mark.parametrize("flag", ["--resume", "--restart"])
def test_resume_and_restart_need_the_routes_state_where_a_restart_finds_it(tmp_path: Path, flag: str) -> None:
    """In memory, a command's route dies with it: there is nothing to resume or restart."""
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--simulate", "healthy", flag, "--audit", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"canary: {flag} needs the route's state where a restart finds it: --manifest or --kubeconfig"
    )


def test_resume_and_restart_together_are_refused(tmp_path: Path, manifest: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--simulate", "healthy", "--resume", "--restart", "--manifest", str(manifest),
              "--audit", str(tmp_path / "a.jsonl")],
    )  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "canary: choose --resume (carry on the open rollout) or --restart (start over), not both"
    )
    assert manifest.read_bytes() == SEED_VS.read_bytes()


def test_demo_outside_the_repository_says_where_the_policy_is_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "canary: policies/web-app.yaml: no such file (run the demo from the repository, or pass --policy FILE)"
    )


def test_resume_on_prometheus_needs_the_routes_state_too(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--prometheus-url", "http://127.0.0.1:9", "--resume", "--audit", str(tmp_path / "a")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "canary: --resume needs the route's state where a restart finds it: --manifest or --kubeconfig"
    )


# ----------------------------------------------------------------------------------------- rollouts that outlive a run


def sigterm_after(monkeypatch: pytest.MonkeyPatch, ticks: int) -> None:
    """Send this process SIGTERM once the run has shown `ticks` progress lines, as a pod's shutdown would."""
    shown: list[TickReport] = []
    update = canary.display.Progress.update

    def update_then_signal(self: canary.display.Progress, report: TickReport) -> None:
        update(self, report)
        shown.append(report)
        if len(shown) == ticks:
            assert callable(signal.getsignal(signal.SIGTERM)), "the run must catch SIGTERM before it is sent"
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(canary.display.Progress, "update", update_then_signal)


def test_a_signal_cancels_the_run_with_exit_4_and_run_resume_carries_it_on(
    runner: CliRunner, tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = tmp_path / "a.jsonl"
    args = ["run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", audit]
    sigterm_after(monkeypatch, 3)
    cancelled = invoke(runner, *args)
    monkeypatch.undo()
    assert cancelled.exit_code == 4, cancelled.output
    assert any(line.startswith("CANCELLED after ") for line in cancelled.stdout.splitlines())
    last, outcome = decisions_and_outcomes(audit)[-1]
    assert last.action is Action.CANCEL and "SIGTERM" in last.reason and outcome.result == "applied"
    status = invoke(runner, "status", POLICY, "--manifest", manifest).stdout.splitlines()
    assert status[0] == "default/web-app: v1 90%, v2 10%"
    assert status[1].startswith(f"rollout {last.rollout}: cancelled, step 1 of 3 (10%), tick 2; last: cancel by ")
    resumed = invoke(runner, *args, "--resume", "--output", "json")
    assert resumed.exit_code == 0, resumed.output
    out = json.loads(resumed.stdout)
    assert (out["outcome"], out["rollout"]) == ("promoted", last.rollout)
    actions = [d.action for d, _ in decisions_and_outcomes(audit)]
    assert actions.count(Action.START) == 1 and actions.count(Action.RESUME) == 1


def test_run_resume_on_an_ended_rollout_reports_it_and_changes_nothing(
    runner: CliRunner, tmp_path: Path, manifest: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    args = ["run", POLICY, "--simulate", "latency-regression", "--manifest", manifest, "--audit", audit]
    first = invoke(runner, *args, "--output", "json")
    assert first.exit_code == 1, first.output
    held, logged = manifest.read_bytes(), audit.read_bytes()
    again = invoke(runner, *args, "--resume", "--output", "json")
    assert again.exit_code == 1, "the exit code says how the rollout ended"
    assert json.loads(again.stdout)["rollout"] == json.loads(first.stdout)["rollout"]
    assert json.loads(again.stdout)["outcome"] == "rolled-back"
    assert (manifest.read_bytes(), audit.read_bytes()) == (held, logged)
    doc = json.loads(again.stdout)
    assert doc["ended_before"] and not json.loads(first.stdout)["ended_before"], "it says nothing was run"
    assert doc["judgement"] == json.loads(first.stdout)["judgement"], "which check said so, from the log"
    text = invoke(runner, *args, "--resume")
    assert "had ended before this command: nothing was run" in text.stdout
    assert any(line.startswith("  - latency p50: ") for line in text.stdout.splitlines()), text.stdout


def test_a_new_release_after_a_rollback_starts_its_own_rollout_with_resume(
    runner: CliRunner, tmp_path: Path, manifest: Path
) -> None:
    """A pipeline re-runs `run --resume` for every job: after a rollback, the next release's job repeated the
    old outcome and rolled nothing out. With --release, `--resume` carries on (or reports) that release's
    rollout only; the same release re-run still reports its outcome."""
    audit = tmp_path / "a.jsonl"
    args = ["run", POLICY, "--manifest", manifest, "--audit", audit, "--resume", "--output", "json"]
    bad = invoke(runner, *args, "--simulate", "latency-regression", "--release", "v2.0.1")
    assert bad.exit_code == 1, bad.output
    assert json.loads(bad.stdout)["release"] == "v2.0.1"
    same = invoke(runner, *args, "--simulate", "healthy", "--release", "v2.0.1")
    assert same.exit_code == 1 and json.loads(same.stdout)["ended_before"]
    fixed = invoke(runner, *args, "--simulate", "healthy", "--release", "v2.0.2")
    assert fixed.exit_code == 0, fixed.output
    doc = json.loads(fixed.stdout)
    assert doc["rollout"] != json.loads(bad.stdout)["rollout"] and not doc["ended_before"]
    assert doc["release"] == "v2.0.2" and doc["outcome"] == "promoted"
    starts = [d for d, _ in decisions_and_outcomes(audit) if d.action is Action.START]
    assert all(r.reason.endswith(f"; release {v}") for r, v in zip(starts, ("v2.0.1", "v2.0.2"), strict=True))


def test_a_run_on_an_open_rollout_is_refused_and_restart_abandons_it_for_a_new_one(
    runner: CliRunner, tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    audit = tmp_path / "a.jsonl"
    args = ["run", POLICY, "--simulate", "healthy", "--manifest", manifest, "--audit", audit]
    sigterm_after(monkeypatch, 2)
    assert invoke(runner, *args).exit_code == 4
    monkeypatch.undo()
    old = decisions_and_outcomes(audit)[0][0].rollout
    refused = invoke(runner, *args)
    assert refused.exit_code == 2
    assert one_error_line(refused.stderr).startswith(f"canary: VirtualService default/web-app holds rollout {old} ")
    restarted = invoke(runner, *args, "--restart", "--output", "json")
    assert restarted.exit_code == 0, restarted.output
    new = json.loads(restarted.stdout)["rollout"]
    assert new != old
    records = [s.record for s in read_records(audit)]
    abandon = next(r for r in records if isinstance(r, DecisionRecord) and r.action is Action.ABORT)
    assert abandon.rollout == old and not abandon.writes and "--restart" in abandon.reason
    assert verify_chain_ok(runner, audit, manifest)


def verify_chain_ok(runner: CliRunner, audit: Path, manifest: Path) -> bool:
    result = invoke(runner, "audit", "verify", audit, "--policy", POLICY, "--manifest", manifest)
    return bool(result.exit_code == 0 and "ending at the route's head" in result.stdout)


class InstantWaits:
    """canary.audit's clock while a test holds the lock: each look at the clock is a second later and sleeps
    return at once, so waiting out a lock timeout costs nothing (the timeout logic itself is unchanged)."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        self.now += 1.0
        return self.now

    def sleep(self, seconds: float) -> None:
        pass

    def time(self) -> float:
        return 1_767_225_600.0


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["rollback", POLICY], id="rollback"),
        pytest.param(
            ["run", POLICY, "--simulate", "healthy"],
            id="run-simulate",
        ),
    ],
)
def test_a_second_command_on_the_same_log_waits_its_lock_timeout_then_fails_in_one_line(
    runner: CliRunner, tmp_path: Path, manifest: Path, monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    import canary.audit

    audit = tmp_path / "a.jsonl"
    holder = AuditLog(audit)
    with holder.locked(5):  # another canary command, mid-step
        monkeypatch.setattr(canary.audit, "time", InstantWaits())
        result = invoke(runner, *command, "--manifest", manifest, "--audit", audit, "--lock-timeout", "0")
        monkeypatch.undo()
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == (
        f"canary: {audit}: another canary command holds its lock ({holder.lock_path}); waited 0s (--lock-timeout)"
    )
    assert manifest.read_bytes() == SEED_VS.read_bytes() and not audit.exists()


# ----------------------------------------------------------------------------------------- by hand


@pytest.mark.parametrize(("verb", "after"), [("promote", Weights(0, 100)), ("rollback", Weights(100, 0))])
def test_promote_and_rollback_print_the_audit_head_as_json(
    runner: CliRunner, tmp_path: Path, manifest: Path, verb: str, after: Weights
) -> None:
    audit = tmp_path / "a.jsonl"
    full = ["--full"] if verb == "promote" else []
    result = invoke(runner, verb, POLICY, *full, "--manifest", manifest, "--audit", audit, "--actor", "alice",
                    "--reason", "pager alert", "--output", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["action"] == verb and doc["actor"] == "alice" and doc["target"] == "default/web-app"
    assert doc["weights_before"] == {"baseline": 90, "canary": 10}
    assert doc["weights_after"] == {"baseline": after.baseline, "canary": after.canary}
    ((decision, outcome),) = decisions_and_outcomes(audit)
    assert (decision.actor, decision.reason, outcome.result) == ("alice", "pager alert", "applied")
    assert doc["audit_head"] == list(read_records(audit))[-1].hash and doc["audit"] == str(audit)
    verified = invoke(runner, "audit", "verify", audit, "--head", doc["audit_head"])
    assert verified.exit_code == 0, verified.output


def test_audit_show_and_status_escape_control_characters_from_a_record(
    runner: CliRunner, tmp_path: Path, manifest: Path
) -> None:
    """A --reason with a newline, an ANSI escape or a bidi override cannot forge a line or repaint the terminal."""
    audit = tmp_path / "a.jsonl"
    reason = "pager\n2026-01-01T00:00:00+00:00 forged promote: canary 0% -> 100%\x1b[2J\u202e"
    done = invoke(runner, "rollback", POLICY, "--manifest", manifest, "--audit", audit, "--actor", "eve\rmallory",
                  "--reason", reason)  # fmt: skip
    assert done.exit_code == 0, done.output
    assert "\r" not in done.stdout and "eve\\rmallory" in done.stdout
    shown = invoke(runner, "audit", "show", audit)
    assert shown.exit_code == 0
    lines = shown.stdout.splitlines()
    assert len(lines) == 2 and lines[1].startswith("    applied: ")
    assert lines[0].endswith(
        "by eve\\rmallory: pager\\n2026-01-01T00:00:00+00:00 forged promote: canary 0% -> 100%\\x1b[2J\\u202e"
    )
    status = invoke(runner, "status", POLICY, "--manifest", manifest).stdout
    assert "\x1b" not in status and "\u202e" not in status and "\r" not in status
    assert len(status.splitlines()) == 4  # weights, rollout, audit head, the seed's header route: the reason adds none


def test_validate_and_audit_verify_answer_in_json_for_a_pipeline(runner: CliRunner, tmp_path: Path) -> None:
    checked = invoke(runner, "validate", POLICY, "--output", "json")
    assert checked.exit_code == 0, checked.output
    doc = json.loads(checked.stdout)
    assert (doc["policy"], doc["valid"], doc["steps"], doc["metrics"]) == ("web-app", True, [10, 50, 100],
                                                                           ["error-rate", "latency"])  # fmt: skip
    assert doc["warnings"] and all("undecidable" in w for w in doc["warnings"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(POLICY.read_text().replace("steps: [10, 50, 100]", "steps: [10, 5, 100]", 1))
    refused = cli("validate", bad, "--output", "json", cwd=tmp_path)
    assert refused.returncode == 2 and refused.stdout == "" and len(refused.stderr.splitlines()) == 1
    audit = tmp_path / "a.jsonl"
    assert invoke(runner, "demo", "--audit", audit, "--output", "json").exit_code == 0
    ok = json.loads(cli("audit", "verify", audit, "--output", "json", cwd=tmp_path).stdout)
    assert ok["ok"] and ok["records"] == len(list(read_records(audit))) and ok["problem"] is None
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text("".join([*lines[:3], lines[4], lines[3], *lines[5:]]))  # two records swapped
    broken = cli("audit", "verify", audit, "--output", "json", cwd=tmp_path)
    doc = json.loads(broken.stdout)
    assert broken.returncode == 1 and not doc["ok"] and doc["line"] == 4 and doc["problem"]


def test_a_run_that_fails_before_any_outcome_still_prints_one_json_document(tmp_path: Path) -> None:
    """A pipeline's `jq -r .outcome result.json` read an empty file after a configuration error; it reads
    "error", and the one line on stderr stays."""
    missing = tmp_path / "nope.yaml"
    done = cli("run", missing, "--simulate", "healthy", "--output", "json", cwd=tmp_path)
    assert done.returncode == 2
    doc = json.loads(done.stdout)
    assert (doc["outcome"], doc["exit_code"], doc["policy_file"]) == ("error", 2, str(missing))
    assert one_error_line(done.stderr) == f"canary: {doc['error']}"
