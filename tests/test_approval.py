"""A gated rollout against the test Kubernetes API server: the policy's `approvals` make the canary wait at
a passed step until a person runs `canary approve`; a failure still rolls it back; approving ahead of time
lets it go on without waiting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import cluster_rollout, tick
from typer.testing import CliRunner

from canary.audit import read_records
from canary.cli import app
from canary.errors import PolicyError
from canary.model import Action, Phase
from canary.policy import parse_policy
from canary.records import DecisionRecord

ROOT = Path(__file__).resolve().parent.parent
POLICY = (ROOT / "policies" / "web-app.yaml").read_text()


@pytest.fixture
def gated(tmp_path: Path) -> Path:
    path = tmp_path / "gated.yaml"
    path.write_text(POLICY.replace("  steps: [10, 50, 100]", "  steps: [10, 50, 100]\n  approvals: [50]", 1))
    return path


rollout = cluster_rollout


def test_a_passed_step_waits_for_approval_and_goes_on_once_approved(gated: Path, cluster: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    r = rollout(gated, cluster, audit)
    r.open()
    for _ in range(15):
        tick(r)
        assert r.state is not None and r.state.weights.canary == 10, "never past the gate without approval"
    assert r.state.phase is Phase.WAITING and "waiting to go to 50% for a person's approval" in r.state.last.reason
    r.manual("approve", actor="user:alice", reason="change board ok")
    while r.state is not None and r.state.phase.open:
        tick(r)
    assert r.state is not None and r.state.phase is Phase.PROMOTED
    decisions = [s.record for s in read_records(audit) if isinstance(s.record, DecisionRecord)]
    approvals = [d for d in decisions if d.action is Action.APPROVE]
    assert [(d.actor, d.reason) for d in approvals] == [("user:alice", "change board ok: the canary may go to 50%")]
    moved = [d.weights_after.canary for d in decisions if d.weights_after and d.action is Action.ADVANCE]
    assert moved == [50]


def test_a_gate_never_blocks_a_rollback(gated: Path, cluster: Path, tmp_path: Path) -> None:
    r = rollout(gated, cluster, tmp_path / "audit.jsonl", "error-regression")
    r.open()
    while r.state is not None and r.state.phase.open:
        tick(r)
    assert r.state is not None and r.state.phase is Phase.ROLLED_BACK


def test_approve_from_the_cli_ahead_of_time_and_as_a_subprocess(gated: Path, cluster: Path, tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    r = rollout(gated, cluster, audit)
    r.open()
    args = [str(gated), "--kubeconfig", str(cluster), "--audit", str(audit), "--actor", "user:bob"]
    done = CliRunner().invoke(app, ["approve", *args, "--output", "json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc["action"] == "approve" and doc["phase"] == "progressing" and doc["weights_after"]["canary"] == 10
    while r.state is not None and r.state.phase.open:
        tick(r)
        assert r.state is None or r.state.phase is not Phase.WAITING, "approved ahead: no wait"
    assert r.state is not None and r.state.phase is Phase.PROMOTED
    again = subprocess.run([str(Path(sys.executable).parent / "canary"), "approve", *args], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert again.returncode == 2 and "only an open rollout with a step ahead can be approved" in again.stderr
    assert len(again.stderr.splitlines()) == 1


@pytest.mark.parametrize(("bad", "message"), [
    ("[10]", "spec.approvals[0]: must be a step weight after the first (50, 100), got 10 (a rollout starts there)"),
    ("[75]", "spec.approvals[0]: must be a step weight after the first (50, 100), got 75"),
    ("[50, true]", "spec.approvals[1]: must be a step weight after the first (50, 100), got True"),
    ("[100, 50, 100]", "spec.approvals[2]: 100 is listed twice"),
    ("fifty", "spec.approvals: must be a list of step weights after the first (50, 100), got 'fifty'"),
])  # fmt: skip
def test_approvals_must_name_later_steps_each_named_by_its_place(bad: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY.replace("  steps: [10, 50, 100]", f"  steps: [10, 50, 100]\n  approvals: {bad}"), "p")
    assert str(caught.value) == f"p:15: {message}"


def test_approving_a_step_the_policy_asks_no_approval_for_is_refused_and_not_recorded(
    cluster: Path, tmp_path: Path
) -> None:
    """The shipped policy names no approvals: an approve would be recorded as a decision that changes
    nothing, so it is refused in one line, exit 2."""
    policy, audit = ROOT / "policies" / "web-app.yaml", tmp_path / "audit.jsonl"
    r = rollout(policy, cluster, audit)
    r.open()
    before = audit.read_bytes()
    done = CliRunner().invoke(app, ["approve", str(policy), "--kubeconfig", str(cluster), "--audit", str(audit)])
    assert done.exit_code == 2
    assert done.stderr.strip().endswith(
        "the policy asks no approval before 50% (no spec.approvals): nothing to approve"
    )
    assert audit.read_bytes() == before
