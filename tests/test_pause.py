"""Pause and continue by hand, against the test Kubernetes API server holding the seed's VirtualService: a
running rollout holds its weights while paused (even with every check passing), its deadline stops, a
failure still rolls it back, and `continue` lets it go on to promotion. Each command is recorded."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from helpers import cluster_rollout, tick
from typer.testing import CliRunner

from canary.audit import read_records, verify_chain
from canary.cli import app
from canary.controller import Runner
from canary.model import Action, Phase
from canary.records import DecisionRecord

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "web-app.yaml"
runner = CliRunner()


def rollout(kubeconfig: Path, audit: Path, scenario: str) -> Runner:
    return cluster_rollout(POLICY, kubeconfig, audit, scenario)


def by_hand(r: Runner, verb: str) -> None:
    """A person's command on the same route and log, on the rollout's (simulated) clock."""
    r.manual(verb, actor="user:alice", reason=f"{verb} for the release window")  # type: ignore[arg-type]


def person(verb: str, kubeconfig: Path, audit: Path, *more: str) -> dict[str, object]:
    result = runner.invoke(app, [verb, str(POLICY), "--kubeconfig", str(kubeconfig), "--audit", str(audit),
                                 "--actor", "user:alice", "--reason", f"{verb} for the release window",
                                 "--output", "json", *more])  # fmt: skip
    assert result.exit_code == 0, result.output
    doc: dict[str, object] = json.loads(result.stdout)
    return doc


def test_a_paused_rollout_holds_its_weights_and_deadline_then_continues_to_promotion(
    cluster: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "audit.jsonl"
    r = rollout(cluster, audit, "healthy")
    r.open()
    tick(r)
    by_hand(r, "pause")
    state = r.router.read(r.target, r.judge.state_type).state
    assert state is not None and state.phase is Phase.PAUSED and state.weights.canary == 10
    deadline = state.deadline
    for _ in range(12):  # long enough for every check to pass: still no step while paused
        tick(r)
        assert r.state is not None and r.state.phase is Phase.PAUSED and r.state.weights.canary == 10
    assert "waiting for `canary continue`" in r.state.last.reason
    by_hand(r, "continue")
    state = r.router.read(r.target, r.judge.state_type).state
    assert state is not None and state.phase is Phase.PROGRESSING
    assert state.deadline == deadline + 12 * 60, "the deadline moved by the time paused"
    while r.state is not None and r.state.phase.open:
        tick(r)
    assert r.state is not None and r.state.phase is Phase.PROMOTED
    decisions = [s.record for s in read_records(audit) if isinstance(s.record, DecisionRecord)]
    people = [(d.action, d.actor) for d in decisions if d.actor == "user:alice"]
    assert people == [(Action.PAUSE, "user:alice"), (Action.CONTINUE, "user:alice")]
    assert verify_chain(audit, r.state.audit_head).ok


def test_a_paused_canary_shown_worse_is_still_rolled_back(cluster: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    r = rollout(cluster, audit, "error-regression")
    r.open()
    by_hand(r, "pause")
    while r.state is not None and r.state.phase.open:
        tick(r)
    assert r.state is not None and r.state.phase is Phase.ROLLED_BACK
    assert r.router.read(r.target, r.judge.state_type).weights.canary == 0


def test_pause_and_continue_refuse_what_they_cannot_do_in_one_line(cluster: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    for verb, why in (("pause", "only a progressing rollout can be paused"),
                      ("continue", "only a paused rollout can be continued")):  # fmt: skip
        result = runner.invoke(app, [verb, str(POLICY), "--kubeconfig", str(cluster), "--audit", str(audit)])
        assert result.exit_code == 2 and why in result.output and len(result.output.splitlines()) == 1
    r = rollout(cluster, audit, "healthy")
    r.open()
    paused = person("pause", cluster, audit)
    assert paused["action"] == "pause" and paused["phase"] == "paused"
    assert paused["weights_after"] == {"baseline": 90, "canary": 10}
    again = runner.invoke(app, ["pause", str(POLICY), "--kubeconfig", str(cluster), "--audit", str(audit)])
    assert again.exit_code == 2 and "is paused" in again.output


def test_pause_as_a_user_runs_it(cluster: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    rollout(cluster, audit, "healthy").open()
    canary = Path(sys.executable).parent / "canary"
    done = subprocess.run([str(canary), "pause", str(POLICY), "--kubeconfig", str(cluster), "--audit", str(audit)],
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "canary stays at 10% (pause by" in done.stdout
    status = subprocess.run([str(canary), "status", str(POLICY), "--kubeconfig", str(cluster), "--audit", str(audit)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert ": paused, step 1 of 3 (10%)" in status.stdout


def test_a_simulated_run_resumed_on_a_paused_rollout_stops_at_once_with_it_paused(
    cluster: Path, tmp_path: Path
) -> None:
    """On a simulated clock no `canary continue` can come between two ticks: the run stops (exit 2) and says
    why, rather than holding forever; the rollout stays paused on the route and continues later."""
    audit = tmp_path / "audit.jsonl"
    r = rollout(cluster, audit, "healthy")
    r.open()
    person("pause", cluster, audit)
    args = ["run", str(POLICY), "--simulate", "healthy", "--kubeconfig", str(cluster), "--audit", str(audit),
            "--resume"]  # fmt: skip
    stopped = runner.invoke(app, [*args, "--output", "json"])
    doc = json.loads(stopped.stdout)
    assert stopped.exit_code == 2 and doc["stopped"] and doc["outcome"] == "paused"
    assert "paused on a simulated clock" in str(doc["reason"])
    person("continue", cluster, audit)
    carried = json.loads(runner.invoke(app, [*args, "--output", "json"]).stdout)
    # the person's commands happened at the rollout's simulated time, not months later on the wall clock: the
    # deadline is where it was, and the healthy canary is promoted
    assert not carried["stopped"] and carried["outcome"] == "promoted" and carried["rollout"] == doc["rollout"]
    assert carried["duration_s"] < 3600
    times = [s.record.time for s in read_records(audit)]
    assert times == sorted(times)


def test_a_persons_step_promote_during_a_simulated_run_happens_at_its_time_and_the_run_goes_on(
    cluster: Path, tmp_path: Path
) -> None:
    """`canary promote` runs on the wall clock; the rollout on simulated time. Recorded at the wall clock's
    time, the step's window began years after the run's clock and the run held forever ("this clock is … s
    behind"), and the rollout's duration was months. At the rollout's time, the run judges the new step."""
    audit = tmp_path / "audit.jsonl"
    r = rollout(cluster, audit, "healthy")
    r.open()
    tick(r)
    stepped = person("promote", cluster, audit)
    assert stepped["weights_after"] == {"baseline": 50, "canary": 50}
    for _ in range(int(r.policy.max_duration_s // r.policy.interval_s) + 1):  # a run that holds ends here
        if r.state is None or not r.state.phase.open:
            break
        tick(r)
        assert "behind" not in r.state.last.reason
    assert r.state is not None and r.state.phase is Phase.PROMOTED
    assert r.state.last.time - r.state.started_at < r.policy.max_duration_s
    times = [s.record.time for s in read_records(audit)]
    assert times == sorted(times)
    listed = json.loads(runner.invoke(app, ["audit", "list", str(audit), "--output", "json"]).stdout)
    assert [row["duration_s"] < r.policy.max_duration_s for row in listed] == [True]
