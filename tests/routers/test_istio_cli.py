"""`--kubeconfig`/`--context` on run, promote, rollback and status move the weights through the API server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer
from typer.testing import CliRunner

from canary.audit import read_records
from canary.cli import app

POLICY = str(Path(__file__).resolve().parents[2] / "policies" / "web-app.yaml")
runner = CliRunner()


def stored_weights(api: KubeApiServer) -> list[int]:
    return [d["weight"] for d in api.get("default", "web-app")["spec"]["http"][0]["route"]]


def test_status_reads_the_cluster(kubeconfig: Path) -> None:
    result = runner.invoke(app, ["status", POLICY, "--kubeconfig", str(kubeconfig), "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"target": "default/web-app", "v1": 100, "v2": 0}


def test_promote_then_rollback_by_hand_in_a_named_context(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    common = ["--kubeconfig", str(kubeconfig), "--context", "test", "--audit", str(audit)]
    promoted = runner.invoke(app, ["promote", POLICY, *common, "--actor", "alice"])
    assert promoted.exit_code == 0, promoted.output
    assert stored_weights(kube_api) == [0, 100]
    rolled_back = runner.invoke(app, ["rollback", POLICY, *common, "--reason", "pager alert"])
    assert rolled_back.exit_code == 0, rolled_back.output
    assert "canary 100% -> 0% (rollback" in rolled_back.stdout
    assert stored_weights(kube_api) == [100, 0]
    assert [r["action"] for r in read_records(audit)] == ["promote", "rollback"]


def test_a_simulated_run_promotes_in_the_cluster(kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path) -> None:
    args = ["run", POLICY, "--simulate", "healthy", "--kubeconfig", str(kubeconfig)]
    result = runner.invoke(app, [*args, "--audit", str(tmp_path / "a.jsonl"), "--output", "json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["final_weights"] == {"baseline": 0, "canary": 100}
    assert stored_weights(kube_api) == [0, 100]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--manifest", "vs.yaml", "--kubeconfig", "KUBECONFIG"],
            "choose where the weights live: --manifest or --kubeconfig/--context, not both",
        ),
        (["--context", "test"], "--context names a context of a kubeconfig: give --kubeconfig FILE too"),
        ([], "say where the weights live: --manifest FILE or --kubeconfig FILE"),
    ],
)
def test_where_the_weights_live_must_be_said_once(kubeconfig: Path, args: list[str], message: str) -> None:
    result = runner.invoke(app, ["status", POLICY, *(str(kubeconfig) if a == "KUBECONFIG" else a for a in args)])
    assert result.exit_code == 2
    assert result.stderr == f"canary: {message}\n"


def test_an_api_server_failure_is_one_line_and_exit_2(kube_api: KubeApiServer, kubeconfig: Path) -> None:
    kube_api.fail_next(503, "etcdserver: request timed out")
    result = runner.invoke(app, ["status", POLICY, "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 2
    assert result.stderr == (
        "canary: VirtualService default/web-app: the API server failed (503: etcdserver: request timed out), "
        "try again\n"
    )


def test_a_run_stops_when_someone_else_moves_the_weights_and_leaves_their_change(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    def someone_else(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][0]["route"][0]["weight"], vs["spec"]["http"][0]["route"][1]["weight"] = 70, 30

    kube_api.after_next_get(lambda: kube_api.edit("default", "web-app", someone_else))
    args = ["run", POLICY, "--simulate", "healthy", "--kubeconfig", str(kubeconfig), "--output", "json"]
    result = runner.invoke(app, [*args, "--audit", str(tmp_path / "a.jsonl")])
    assert result.exit_code == 2, result.output
    assert json.loads(result.stdout)["outcome"] == "aborted"
    assert "weights changed outside canary" in json.loads(result.stdout)["reason"]
    assert stored_weights(kube_api) == [70, 30]
