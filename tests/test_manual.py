"""Weights in a manifest file: the router, and promotion, rollback and status by hand from the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records, verify_chain
from canary.cli import app
from canary.errors import RouterError
from canary.model import Phase, Weights
from canary.policy import Policy
from canary.routers.manifest import ManifestRouter
from canary.scenario import builtin_scenario

ROOT = Path(__file__).resolve().parent.parent
VS = ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml"
DR = ROOT / "fixtures" / "istio" / "web-app-destinationrule.yaml"
POLICY = str(ROOT / "policies" / "web-app.yaml")
runner = CliRunner()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """The seed's DestinationRule and VirtualService in one multi-document file, as a GitOps repo holds them."""
    path = tmp_path / "web-app.yaml"
    path.write_text(DR.read_text() + "---\n" + VS.read_text())
    return path


def test_reads_and_writes_only_the_named_virtual_service(manifest: Path, web_policy: Policy) -> None:
    router = ManifestRouter(manifest)
    assert router.get_weights(web_policy.target) == Weights(100, 0)
    router.set_weights(web_policy.target, Weights(90, 10))
    docs = list(yaml.safe_load_all(manifest.read_text()))
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService"]
    assert docs[0] == yaml.safe_load(DR.read_text())
    assert [r["weight"] for r in docs[1]["spec"]["http"][0]["route"]] == [90, 10]
    assert ManifestRouter(manifest).get_weights(web_policy.target) == Weights(90, 10)


def test_a_write_leaves_no_temporary_file_behind(manifest: Path, web_policy: Policy) -> None:
    ManifestRouter(manifest).set_weights(web_policy.target, Weights(50, 50))
    assert sorted(p.name for p in manifest.parent.iterdir()) == [manifest.name]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("kind: [", ":1: not valid YAML"),
        ("kind: Service\nmetadata: {name: web-app}\n", "no VirtualService default/web-app in the file"),
    ],
)
def test_bad_manifests_are_router_errors(tmp_path: Path, web_policy: Policy, content: str | None, message: str) -> None:
    path = tmp_path / "vs.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RouterError, match=message):
        ManifestRouter(path).get_weights(web_policy.target)


def test_a_simulated_rollout_moves_the_weights_in_the_file(manifest: Path, web_policy: Policy, tmp_path: Path) -> None:
    rollout = simulated_rollout(
        web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(tmp_path / "a.jsonl"),
        router=ManifestRouter(manifest),
    )  # fmt: skip
    result = rollout.controller.run()
    assert result.phase is Phase.PROMOTED
    assert ManifestRouter(manifest).get_weights(web_policy.target) == Weights(0, 100)


def test_manual_rollback_is_recorded_and_names_the_actor(manifest: Path, web_policy: Policy, tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    ManifestRouter(manifest).set_weights(web_policy.target, Weights(50, 50))
    result = runner.invoke(
        app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit), "--actor", "alice",
              "--reason", "pager alert"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "canary 50% -> 0% (rollback" in result.stdout
    (record,) = read_records(audit)
    assert record["actor"] == "alice" and record["reason"] == "pager alert" and record["action"] == "rollback"
    assert record["weights_before"] == {"baseline": 50, "canary": 50}
    assert record["weights_after"] == {"baseline": 100, "canary": 0}
    assert verify_chain(audit).ok
    status = runner.invoke(app, ["status", POLICY, "--manifest", str(manifest), "--output", "json"])
    assert json.loads(status.stdout) == {"target": "default/web-app", "v1": 100, "v2": 0}


def test_manual_promotion_sends_all_traffic_to_the_canary(manifest: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["promote", POLICY, "--manifest", str(manifest), "--audit", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["status", POLICY, "--manifest", str(manifest)])
    assert status.stdout.strip() == "default/web-app: v1 0%, v2 100%"


def test_a_controller_notices_a_manual_rollback_and_stops(manifest: Path, web_policy: Policy, tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    rollout = simulated_rollout(
        web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=ManifestRouter(manifest)
    )
    rollout.controller.start()
    runner.invoke(app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit)])
    report = rollout.controller.tick()
    assert report.decision.phase is Phase.ABORTED
    assert "weights changed outside canary" in report.decision.reason
    assert [r["action"] for r in read_records(audit)] == ["start", "rollback", "hold"]


def test_manual_verbs_on_a_missing_manifest_fail_with_one_line(tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    result = runner.invoke(app, ["rollback", POLICY, "--manifest", str(tmp_path / "nope.yaml"), "--audit", str(audit)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"canary: {tmp_path / 'nope.yaml'}: no such file"
    assert not audit.exists() or not list(read_records(audit))  # nothing recorded for a change that did not happen


def test_run_with_a_manifest_leaves_the_promoted_weights_in_it(manifest: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.yaml"
    shutil.copy(manifest, copy)
    result = runner.invoke(
        app, ["run", POLICY, "--simulate", "healthy", "--manifest", str(copy), "--audit", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 0, result.output
    assert "v2 100%" in runner.invoke(app, ["status", POLICY, "--manifest", str(copy)]).stdout
