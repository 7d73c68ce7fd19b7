"""The CLI's contract: exit codes, one-line errors on stderr, JSON outcomes, plain lines off a terminal.

Checked in-process with typer's CliRunner and as the installed console script in a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from canary.audit import read_records
from canary.cli import app

REPO = Path(__file__).resolve().parents[1]
POLICY = REPO / "policies" / "web-app.yaml"
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
    assert result.stdout == (
        f"{POLICY}: valid CanaryPolicy 'web-app': steps 10% -> 50% -> 100%, metrics error-rate, latency\n"
    )


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
    assert len(list(read_records(audit))) == out["ticks"] + 1


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


def test_audit_show_prints_each_decision_and_its_verdicts(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    result = invoke(runner, "audit", "show", audit)
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    decisions = [line for line in lines if not line.startswith("    ")]
    assert len(decisions) == out["ticks"] + 1
    assert decisions[0] == (
        f"2026-01-01T00:00:00+00:00 {out['rollout']} tick 0 start: canary 0% -> 10% "
        "by canary-controller (simulated mesh): rollout started: canary at 10%"
    )
    assert f"tick {out['ticks']} promote: canary 50% -> 100%" in decisions[-1]
    verdicts = [line.split() for line in lines if line.startswith("    ")]
    assert {v[0] for v in verdicts} <= {"pass", "fail", "continue", "no-data"}
    assert {v[1] for v in verdicts} == {"error-rate:", "latency"}


def test_audit_show_filters_by_rollout_and_prints_json(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    assert invoke(runner, "audit", "show", audit, "--rollout", "someone-else").stdout == ""
    result = invoke(runner, "audit", "show", audit, "--rollout", out["rollout"], "--output", "json")
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records == list(read_records(audit))


def test_audit_verify_passes_then_fails_after_an_edit(
    runner: CliRunner, produced_log: tuple[Path, dict[str, Any]]
) -> None:
    audit, out = produced_log
    result = invoke(runner, "audit", "verify", audit)
    assert result.exit_code == 0
    assert result.stdout == f"{audit}: {out['ticks'] + 1} records, hash chain intact\n"
    lines = audit.read_text().splitlines(keepends=True)
    lines[2] = lines[2].replace('"action":"hold"', '"action":"advance"')
    assert lines[2] != audit.read_text().splitlines(keepends=True)[2], "the edit must change the record"
    audit.write_text("".join(lines))
    tampered = invoke(runner, "audit", "verify", audit)
    assert tampered.exit_code == 1
    assert one_error_line(tampered.stderr) == (
        f"canary: {audit}:3: the hash chain breaks here (a record was edited or removed)"
    )


def test_audit_commands_as_subprocesses(produced_log: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    audit, out = produced_log
    shown = cli("audit", "show", audit, cwd=tmp_path)
    assert shown.returncode == 0
    assert f"{out['rollout']} tick 0 start" in shown.stdout
    assert not ANSI.search(shown.stdout)
    verified = cli("audit", "verify", audit, cwd=tmp_path)
    assert (verified.returncode, verified.stdout.strip()) == (
        0,
        f"{audit}: {out['ticks'] + 1} records, hash chain intact",
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

    def broken() -> None:
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


def test_resume_is_for_real_rollouts(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--simulate", "healthy", "--resume", "--audit", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == "canary: --resume carries on a real rollout: use it with --prometheus-url"


def test_demo_outside_the_repository_says_where_the_policy_is_expected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "canary: policies/web-app.yaml: no such file (run the demo from the repository, or pass --policy FILE)"
    )


def test_resume_needs_weights_that_survive_a_restart(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", str(POLICY), "--prometheus-url", "http://127.0.0.1:9", "--resume", "--audit", str(tmp_path / "a")]
    )
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "canary: --resume needs the weights where a restart finds them: --manifest or --kubeconfig"
    )
