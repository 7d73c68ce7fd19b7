"""Notifications: a local HTTP receiver gets one POST per event in each format; with the receiver down, or
answering 500, the rollout's outcome and timing are unchanged, each failure is a note in the log, and no
output or record shows a URL read from a file or the environment."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import Receiver
from typer.testing import CliRunner

from canary.audit import read_records
from canary.cli import app
from canary.errors import PolicyError
from canary.policy import parse_policy
from canary.records import NoteRecord

ROOT = Path(__file__).resolve().parent.parent
POLICY = (ROOT / "policies" / "web-app.yaml").read_text()
runner = CliRunner()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


def policy_with(tmp_path: Path, block: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY.replace("  metrics:\n", f"  notifications:\n{block}  metrics:\n", 1))
    return path


def run(policy: Path, audit: Path, scenario: str = "healthy", env: dict[str, str] | None = None) -> dict[str, object]:
    result = runner.invoke(app, ["run", str(policy), "--simulate", scenario, "--audit", str(audit), "--output", "json"],
                           env=env)  # fmt: skip
    doc: dict[str, object] = json.loads(result.stdout)
    doc["exit"] = result.exit_code
    return doc


def test_each_event_reaches_the_receiver_in_each_format(tmp_path: Path, receiver: Receiver) -> None:
    policy = policy_with(tmp_path, (
        f"    - {{name: own, format: json, url: '{receiver.url}/own'}}\n"
        f"    - {{name: slack, format: slack, url: '{receiver.url}/slack', events: [promoted, rolled-back]}}\n"
        f"    - {{name: teams, format: teams, url: '{receiver.url}/teams'}}\n"
    ))  # fmt: skip
    doc = run(policy, tmp_path / "a.jsonl")
    assert doc["exit"] == 0 and doc["outcome"] == "promoted"
    own = [body for path, body in receiver.bodies if path == "/own"]
    assert [b["event"] for b in own] == ["start", "step", "promoted"]
    assert own[-1]["weights"] == {"baseline": 0, "canary": 100} and own[-1]["rollout"] == doc["rollout"]
    assert own[1]["step"] == 1 and own[1]["weights"] == {"baseline": 50, "canary": 50}
    (slack,) = [body for path, body in receiver.bodies if path == "/slack"]
    assert str(slack["text"]).startswith("canary web-app: promoted (web-app.default.svc.cluster.local, canary at 100%)")
    teams = [body for path, body in receiver.bodies if path == "/teams"]
    assert [t["@type"] for t in teams] == ["MessageCard"] * 3 and teams[-1]["themeColor"] == "2EB886"
    assert not [r for r in read_records(tmp_path / "a.jsonl") if isinstance(r.record, NoteRecord)]


def test_a_rollback_is_told_too(tmp_path: Path, receiver: Receiver) -> None:
    policy = policy_with(tmp_path, f"    - {{name: own, url: '{receiver.url}'}}\n")
    assert run(policy, tmp_path / "a.jsonl", "latency-regression")["exit"] == 1
    assert [b["event"] for _, b in receiver.bodies] == ["start", "rolled-back"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("down", ["refused", "HTTP 500"])
def test_a_receiver_down_changes_nothing_and_every_failure_is_recorded(tmp_path: Path, down: str) -> None:
    baseline = runner.invoke(app, ["run", str(ROOT / "policies" / "web-app.yaml"), "--simulate", "healthy", "--audit",
                                   str(tmp_path / "plain.jsonl"), "--output", "json"])  # fmt: skip
    expected = json.loads(baseline.stdout)
    with Receiver(status=500) as failing:
        url = failing.url if down == "HTTP 500" else f"http://127.0.0.1:{_free_port()}"
        secret_url = f"{url}/hooks/T0KEN-s3cr3t"
        (tmp_path / "url").write_text(secret_url + "\n")
        policy = policy_with(tmp_path, "    - {name: team, urlFile: url, retries: 1, backoff: 10ms, timeout: 2s}\n")
        audit = tmp_path / "a.jsonl"
        result = runner.invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(audit), "--output",
                                     "json"], catch_exceptions=False)  # fmt: skip
    doc = json.loads(result.stdout)
    assert result.exit_code == 0
    for key in ("outcome", "final_weights", "ticks", "duration_s", "step_seconds"):
        assert doc[key] == expected[key], key
    notes = [s.record for s in read_records(audit) if isinstance(s.record, NoteRecord)]
    assert [n.reason.split(" not delivered")[0] for n in notes] == [
        f"notification 'team' of {e}" for e in ("start", "step", "promoted")
    ]
    assert all(("HTTP 500" in n.reason) == (down == "HTTP 500") and "2 attempts" in n.reason for n in notes)
    assert doc["audit_head"] == list(read_records(audit))[-1].hash, "the printed head accounts for the notes"
    everything = result.output + audit.read_text()
    assert "T0KEN-s3cr3t" not in everything


def test_a_url_from_the_environment_and_bad_notification_blocks(tmp_path: Path, receiver: Receiver) -> None:
    policy = policy_with(tmp_path, "    - {name: ops, format: slack, urlEnv: CANARY_TEST_HOOK}\n")
    doc = run(policy, tmp_path / "a.jsonl", env={"CANARY_TEST_HOOK": receiver.url + "/x"})
    assert doc["exit"] == 0 and len(receiver.bodies) == 3
    missing = runner.invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(tmp_path / "b.jsonl")],
                            env={"CANARY_TEST_HOOK": None})  # fmt: skip
    assert missing.exit_code == 2 and "CANARY_TEST_HOOK is not set" in missing.output
    assert not (tmp_path / "b.jsonl").exists(), "refused before anything moved"
    for block, field in (
        ("    - {name: a}\n", "needs exactly one of url, urlFile, urlEnv"),
        ("    - {name: a, url: 'ftp://x'}\n", "spec.notifications[0].url: must be an http"),
        ("    - {name: a, url: 'http://x', events: [deploy]}\n", "spec.notifications[0].events"),
        ("    - {name: a, url: 'http://x', format: email}\n", "spec.notifications[0].format"),
    ):
        with pytest.raises(PolicyError, match=re.escape(field)):
            parse_policy(policy_with(tmp_path, block).read_text(), "p.yaml")


def test_notifications_from_the_console_script(tmp_path: Path, receiver: Receiver) -> None:
    policy = policy_with(tmp_path, "    - {name: own, urlEnv: HOOK}\n")
    done = subprocess.run(
        [str(Path(sys.executable).parent / "canary"), "run", str(policy), "--simulate", "healthy", "--audit",
         str(tmp_path / "a.jsonl")],
        env={**os.environ, "HOOK": receiver.url}, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert [b["event"] for _, b in receiver.bodies] == ["start", "step", "promoted"]
    assert receiver.url not in done.stdout + done.stderr
