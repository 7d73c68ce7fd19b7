"""Webhook gates, pre- and post-rollout webhooks, and a person's promote by step, against the test Kubernetes
API server and local HTTP receivers on 127.0.0.1: a gate that first says no then yes lets the canary on only
after its yes, a pre-rollout webhook that says no keeps the rollout from starting, a post-rollout webhook is
told the outcome and changes nothing, and every answer is in the audit log."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import Receiver, cluster_rollout, decisions, tick
from typer.testing import CliRunner

from canary import __version__
from canary.app import router_for, simulated_rollout
from canary.audit import AuditLog, read_records, verify_chain
from canary.cli import app
from canary.controller import Runner
from canary.errors import PolicyError
from canary.model import Action, Phase
from canary.policy import load_policy, parse_policy
from canary.records import NoteRecord
from canary.scenario import builtin_scenario

ROOT = Path(__file__).resolve().parent.parent
POLICY = (ROOT / "policies" / "web-app.yaml").read_text()
CANARY = str(Path(sys.executable).parent / "canary")


def with_spec(tmp_path: Path, block: str) -> Path:
    """The shipped policy with `block` (fields of spec) after its steps."""
    path = tmp_path / "policy.yaml"
    text, n = re.subn(r"(?m)^  steps: .*\n", lambda m: m.group(0) + block, POLICY, count=1)
    assert n == 1
    path.write_text(text)
    return path


def manifest_rollout(policy: Path, manifest: Path, audit: Path) -> Runner:
    """A simulated healthy rollout whose weights live in a manifest file."""
    loaded = load_policy(str(policy))
    router = router_for(loaded, str(manifest))
    return simulated_rollout(loaded, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router).runner


def notes(audit: Path) -> list[str]:
    return [s.record.reason for s in read_records(audit) if isinstance(s.record, NoteRecord)]


def run_json(policy: Path, audit: Path, *flags: str) -> tuple[int, dict[str, object] | None, str]:
    done = CliRunner().invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(audit), *flags,
                                    "--output", "json"])  # fmt: skip
    return done.exit_code, json.loads(done.stdout) if done.stdout.strip() else None, done.stderr


def test_a_rollout_passes_an_approval_and_a_webhook_gate_that_first_says_no_then_yes(
    cluster: Path, tmp_path: Path
) -> None:
    with Receiver(first=(503, 409)) as gate:
        hook = f"    - {{name: change-board, type: gate, url: '{gate.url}/gate', steps: [100]}}\n"
        policy = with_spec(tmp_path, f"  approvals: [50]\n  webhooks:\n{hook}")
        audit = tmp_path / "audit.jsonl"
        r = cluster_rollout(policy, cluster, audit)
        r.open()
        while r.state is not None and r.state.phase is not Phase.WAITING:
            tick(r)
        assert r.state is not None and r.state.weights.canary == 10 and not gate.bodies
        r.manual("approve", actor="user:alice", reason="change board ok")
        while r.state is not None and r.state.weight != 50:
            tick(r)
        while r.state is not None and r.state.phase.open:
            tick(r)
            assert r.state is not None
            if len(gate.bodies) < 3:
                assert r.state.weights.canary == 50, "never past the gate before its yes"
        assert r.state is not None and r.state.phase is Phase.PROMOTED
        assert [path for path, _ in gate.bodies] == ["/gate"] * 3, "asked until it said yes, then never again"
    body = gate.bodies[0][1]
    rollout = body["rollout"]
    assert isinstance(rollout, dict) and body["type"] == "gate" and body["webhook"] == "change-board"
    assert (rollout["phase"], rollout["nextWeight"]) == ("waiting", 100)
    assert body["weights"] == {"baseline": 50, "canary": 50}
    answers = [d.gates for d in decisions(audit) if d.gates]
    assert [[(a["go"], a["detail"]) for a in got] for got in answers] == [
        [(False, "answered HTTP 503")], [(False, "answered HTTP 409")], [(True, "HTTP 200")]
    ]  # fmt: skip
    last = decisions(audit)[-1]
    assert last.action is Action.PROMOTE and "gate change-board said go (HTTP 200)" in last.reason
    assert verify_chain(audit, r.head).ok


def test_a_pre_rollout_webhook_that_says_no_keeps_the_rollout_from_starting(tmp_path: Path) -> None:
    with Receiver(status=500) as hook:
        policy = with_spec(tmp_path, f"  webhooks:\n    - {{name: load-test, type: pre-rollout, url: '{hook.url}', "
                                     "retries: 1, backoff: 10ms}\n")  # fmt: skip
        audit, manifest = tmp_path / "audit.jsonl", tmp_path / "vs.yaml"
        manifest.write_bytes((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_bytes())
        before = manifest.read_bytes()
        code, doc, err = run_json(policy, audit, "--manifest", str(manifest))
        assert len(hook.bodies) == 2 and hook.bodies[0][1]["rollout"] is None
    assert code == 2 and doc is not None and doc["outcome"] == "error" and manifest.read_bytes() == before
    assert err.strip() == ("canary: pre-rollout webhook 'load-test' answered HTTP 500, 2 attempts: the rollout was "
                           "not started")  # fmt: skip
    assert notes(audit) == ["pre-rollout webhook 'load-test' answered HTTP 500, 2 attempts"]
    assert not decisions(audit)


class DrippingHeaders:
    """A webhook on 127.0.0.1 that answers its status line, then one byte of a header every 0.2 s, for ever:
    no read waits long enough to time out."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/"
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.sendall(b"HTTP/1.1 200 OK\r\nX-Drip: ")
                while not self.stopping.wait(0.2):
                    try:
                        conn.sendall(b"x")
                    except OSError:
                        break

    def __enter__(self) -> DrippingHeaders:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(5)
        self.listener.close()


def test_a_webhook_that_drips_its_answer_is_cut_off_at_its_timeout(tmp_path: Path) -> None:
    """Each read got a byte within the socket timeout, so `run` waited 13 minutes and more, and a SIGTERM could
    not end it. The webhook's timeout bounds the whole call: the rollout is not started, nothing written."""
    with DrippingHeaders() as hook:
        policy = with_spec(tmp_path, f"  webhooks:\n    - {{name: load-test, type: pre-rollout, url: '{hook.url}', "
                                     "timeout: 1s, retries: 0}\n")  # fmt: skip
        audit, manifest = tmp_path / "audit.jsonl", tmp_path / "vs.yaml"
        manifest.write_bytes((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_bytes())
        before = manifest.read_bytes()
        began = time.monotonic()
        code, doc, err = run_json(policy, audit, "--manifest", str(manifest))
        took = time.monotonic() - began
    assert code == 2 and doc is not None and doc["outcome"] == "error" and manifest.read_bytes() == before
    assert err.strip() == ("canary: pre-rollout webhook 'load-test' did not finish answering within its timeout "
                           "(1 s), 1 attempt: the rollout was not started")  # fmt: skip
    assert took < 30, f"{took:.0f} s"
    assert not decisions(audit)


def test_a_signal_while_the_pre_rollout_webhook_answers_cancels_before_anything_is_written(tmp_path: Path) -> None:
    """SIGTERM arrives while the webhook is asked: its go is noted, then the run ends with exit 4 (a cancel)
    and the route as it was: no rollout was started."""
    with Receiver(on_post=lambda: os.kill(os.getpid(), signal.SIGTERM)) as pre:
        policy = with_spec(tmp_path, f"  webhooks:\n    - {{name: load-test, type: pre-rollout, url: '{pre.url}'}}\n")
        manifest = tmp_path / "vs.yaml"
        manifest.write_text((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_text())
        before = manifest.read_bytes()
        audit = tmp_path / "audit.jsonl"
        code, doc, err = run_json(policy, audit, "--manifest", str(manifest))
    assert code == 4 and doc == {
        "outcome": "cancelled", "exit_code": 4, "policy_file": str(policy),
        "error": "cancelled (SIGTERM) before the rollout started: nothing was changed", "engine_version": __version__,
    }  # fmt: skip
    assert err.strip() == "canary: cancelled (SIGTERM) before the rollout started: nothing was changed"
    assert manifest.read_bytes() == before and not decisions(audit)
    assert notes(audit) == ["pre-rollout webhook 'load-test' said go"]


def test_pre_and_post_rollout_webhooks_are_told_and_noted_and_a_post_rollout_no_changes_nothing(tmp_path: Path) -> None:
    with Receiver() as pre, Receiver(status=503) as post:
        policy = with_spec(tmp_path, (
            f"  webhooks:\n    - {{name: load-test, type: pre-rollout, url: '{pre.url}'}}\n"
            f"    - {{name: ticket, type: post-rollout, url: '{post.url}', retries: 0}}\n"
        ))  # fmt: skip
        audit = tmp_path / "audit.jsonl"
        code, doc, _ = run_json(policy, audit)
    assert code == 0 and doc is not None and doc["outcome"] == "promoted"
    told = post.bodies[0][1]["rollout"]
    assert isinstance(told, dict) and told["phase"] == "promoted" and told["id"] == doc["rollout"]
    assert notes(audit) == [
        "pre-rollout webhook 'load-test' said go",
        "post-rollout webhook 'ticket' answered HTTP 503, 1 attempt (the rollout's outcome stands)",
    ]
    assert doc["audit_head"] == list(read_records(audit))[-1].hash


@pytest.mark.parametrize(("block", "message"), [
    ("    - {name: g, type: gate, url: 'http://x/', steps: [10]}\n",
     "spec.webhooks[0].steps[0]: must be a step weight after the first (50, 100), got 10 (a rollout starts there)"),
    ("    - {name: g, type: pre-rollout, url: 'http://x/', onTimeout: continue}\n",
     "spec.webhooks[0].onTimeout: applies to a gate only, not to a pre-rollout webhook"),
    ("    - {name: g, type: gate, url: 'http://x/', onTimeout: promote}\n",
     "spec.webhooks[0].onTimeout: must be one of rollback, continue, got 'promote'"),
    ("    - {name: g, url: 'http://x/'}\n", "spec.webhooks[0].type: is required"),
    ("    - {name: g, type: gate, url: 'ftp://x/'}\n", "spec.webhooks[0].url: must be an http:// or https:// URL"),
    # urllib used to take these at the call, mid-rollout: a ValueError after the weights had moved, and a port
    # of 99999 reaching 34463
    ("    - {name: g, type: gate, url: 'http://[::1/'}\n",
     "spec.webhooks[0].url: must be an http:// or https:// URL: it is not a valid URL (Invalid IPv6 URL)"),
    ("    - {name: g, type: gate, url: 'http://127.0.0.1:99999/hook'}\n",
     "spec.webhooks[0].url: must be an http:// or https:// URL: it is not a valid URL (Port out of range 0-65535)"),
    ("    - {name: g, type: post-rollout, url: 'http:///hook'}\n",
     "spec.webhooks[0].url: must be an http:// or https:// URL: it names no host"),
])  # fmt: skip
def test_a_bad_webhook_is_one_line_naming_the_field(tmp_path: Path, block: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(with_spec(tmp_path, f"  webhooks:\n{block}").read_text(), "p.yaml")
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_promote_moves_one_step_and_full_goes_to_100_through_the_cli_and_as_a_subprocess(
    cluster: Path, tmp_path: Path
) -> None:
    policy, audit = ROOT / "policies" / "web-app.yaml", tmp_path / "audit.jsonl"
    r = cluster_rollout(policy, cluster, audit)
    r.open()
    args = [str(policy), "--kubeconfig", str(cluster), "--audit", str(audit), "--actor", "user:bob"]
    done = CliRunner().invoke(app, ["promote", *args, "--reason", "load test ok", "--output", "json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert (doc["action"], doc["phase"], doc["weights_before"]["canary"], doc["weights_after"]["canary"]) == (
        "advance", "progressing", 10, 50)  # fmt: skip
    tick(r)
    assert r.state is not None and r.state.weight == 50 and r.state.phase.open, "the running rollout judges 50%"
    full = subprocess.run([CANARY, "promote", "--full", *args, "--output", "json"], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert full.returncode == 0, full.stderr
    assert json.loads(full.stdout)["weights_after"] == {"baseline": 0, "canary": 100}
    again = subprocess.run([CANARY, "promote", *args], capture_output=True, text=True, timeout=60, check=False)
    assert again.returncode == 2 and len(again.stderr.splitlines()) == 1
    assert "only an open rollout has a next step to promote to (`--full` sends all traffic to v2)" in again.stderr
    tick(r)
    assert r.state is not None and r.state.phase is Phase.PROMOTED
    assert verify_chain(audit, json.loads(full.stdout)["audit_head"]).ok


def test_a_persons_commands_and_the_start_of_a_wait_are_notified(cluster: Path, tmp_path: Path) -> None:
    with Receiver() as receiver:
        policy = with_spec(tmp_path, f"  approvals: [50]\n  notifications:\n    - {{name: own, url: {receiver.url}}}\n")
        audit = tmp_path / "audit.jsonl"
        args = [str(policy), "--kubeconfig", str(cluster), "--audit", str(audit), "--actor", "user:carol"]
        r = cluster_rollout(policy, cluster, audit)
        r.open()
        for verb in ("pause", "continue"):
            done = CliRunner().invoke(app, [verb, *args, "--output", "json"])
            assert done.exit_code == 0, done.output
        approved = subprocess.run([CANARY, "approve", *args], capture_output=True, text=True, timeout=60, check=False)
        assert approved.returncode == 0, approved.stderr
        events = [body["event"] for _, body in receiver.bodies]
    assert events == ["paused", "continued", "approved"]
    assert all(body["reason"] for _, body in receiver.bodies)


def test_a_run_tells_once_when_a_passed_step_begins_to_wait(tmp_path: Path) -> None:
    with Receiver() as receiver:
        policy = with_spec(tmp_path, f"  approvals: [50]\n  notifications:\n    - {{name: own, url: {receiver.url}}}\n")
        policy.write_text(policy.read_text().replace("maxDuration: 60m", "maxDuration: 20m"))
        code, doc, _ = run_json(policy, tmp_path / "audit.jsonl")
        events = [body["event"] for _, body in receiver.bodies]
    assert code == 3 and doc is not None and doc["outcome"] == "inconclusive"
    assert events == ["start", "waiting", "inconclusive"]


def test_pre_rollout_webhooks_are_asked_only_for_a_rollout_that_will_start(tmp_path: Path) -> None:
    """Not on --resume of a cancelled rollout, not for a run refused (the route already all canary), and
    after a command killed between its write and its outcome the note goes after the settled outcome."""
    with Receiver() as hook:
        policy = with_spec(tmp_path, f"  webhooks:\n    - {{name: load-test, type: pre-rollout, url: '{hook.url}'}}\n")
        audit, manifest = tmp_path / "audit.jsonl", tmp_path / "vs.yaml"
        manifest.write_bytes((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_bytes())
        where = ["--manifest", str(manifest), "--audit", str(audit)]
        assert CliRunner().invoke(app, ["promote", "--full", str(policy), *where]).exit_code == 0
        lines = audit.read_text().splitlines(keepends=True)
        audit.write_text("".join(lines[:-1]))  # killed after the write, before its outcome was appended
        code, _, err = run_json(policy, audit, *where)
        assert code == 2 and "nothing to roll out" in err and not hook.bodies, "refused before any hook"
        assert verify_chain(audit).ok and notes(audit) == [], "the open change settled, nothing else added"
        assert CliRunner().invoke(app, ["rollback", str(policy), *where]).exit_code == 0
        audit.write_text("".join(audit.read_text().splitlines(keepends=True)[:-1]))  # killed again, so
        r = manifest_rollout(policy, manifest, audit)
        r.open()  # the hook's note must follow the outcome this command settles
        assert len(hook.bodies) == 1 and verify_chain(audit).ok
        assert notes(audit) == ["pre-rollout webhook 'load-test' said go"]
        r.cancel_flag.set("SIGTERM")
        assert r.run(resume=True).phase is Phase.CANCELLED
        code, doc, _ = run_json(policy, audit, *where, "--resume")
        assert code == 0 and doc is not None and doc["outcome"] == "promoted" and len(hook.bodies) == 1
    assert verify_chain(audit).ok


def test_a_post_rollout_webhook_is_told_once_by_the_command_that_ended_the_rollout(tmp_path: Path) -> None:
    with Receiver() as hook:
        policy = with_spec(tmp_path, f"  webhooks:\n    - {{name: ticket, type: post-rollout, url: '{hook.url}'}}\n")
        audit, manifest = tmp_path / "audit.jsonl", tmp_path / "vs.yaml"
        manifest.write_bytes((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_bytes())
        r = manifest_rollout(policy, manifest, audit)
        r.open()
        tick(r)
        rolled = CliRunner().invoke(app, ["rollback", str(policy), "--manifest", str(manifest), "--audit", str(audit),
                                          "--actor", "user:dan", "--output", "json"])  # fmt: skip
        assert rolled.exit_code == 0, rolled.output
        assert [body["rollout"]["phase"] for _, body in hook.bodies] == ["rolled-back"]  # type: ignore[index]
        assert json.loads(rolled.stdout)["audit_head"] == list(read_records(audit))[-1].hash
        tick(r)  # the run sees the person's rollback: it ended no rollout itself and tells nobody
        assert r.state is not None and r.state.phase is Phase.ROLLED_BACK and r.ended is None
        assert len(hook.bodies) == 1
    assert notes(audit) == ["post-rollout webhook 'ticket' said go"]


def test_a_webhook_url_read_from_the_environment_is_never_printed_or_recorded(tmp_path: Path) -> None:
    with Receiver(status=403) as hook:
        secret_url = f"{hook.url}/hooks/T0KEN-s3cr3t"
        policy = with_spec(tmp_path, "  webhooks:\n    - {name: load-test, type: pre-rollout, urlEnv: LOAD_TEST_URL, "
                                     "retries: 0}\n")  # fmt: skip
        audit = tmp_path / "audit.jsonl"
        done = CliRunner().invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(audit)],
                                  env={"LOAD_TEST_URL": secret_url})  # fmt: skip
        assert [path for path, _ in hook.bodies] == ["/hooks/T0KEN-s3cr3t"]
    assert done.exit_code == 2 and "answered HTTP 403" in done.stderr
    assert "T0KEN" not in done.output and "T0KEN" not in audit.read_text()
    missing = CliRunner().invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(audit)], env={})
    assert missing.exit_code == 2
    assert missing.stderr == "canary: webhook 'load-test': the environment variable LOAD_TEST_URL is not set\n"
    broken = f"{hook.url.rsplit(':', 1)[0]}:99999/T0KEN-s3cr3t"  # a port out of range
    bad = CliRunner().invoke(app, ["run", str(policy), "--simulate", "healthy", "--audit", str(tmp_path / "b.jsonl")],
                             env={"LOAD_TEST_URL": broken})  # fmt: skip
    assert bad.exit_code == 2 and not (tmp_path / "b.jsonl").exists(), "refused before anything moved"
    assert bad.stderr.startswith("canary: webhook 'load-test': its URL must be an http:// or https:// URL: ")
    assert "T0KEN" not in bad.stderr
