"""`--kubeconfig`/`--context` on run, promote, rollback, status and audit verify: the weights and the rollout
state live on the VirtualService in the cluster, through the API server; every failure is one line, exit 2."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer, fixtures_with, named
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records
from canary.cli import app
from canary.model import Action, Phase
from canary.policy import Policy
from canary.records import DecisionRecord, OutcomeRecord
from canary.routers.istio import IstioRouter
from canary.scenario import builtin_scenario
from canary.state import ANNOTATION, decode_state

POLICY = str(Path(__file__).resolve().parents[2] / "policies" / "web-app.yaml")
runner = CliRunner()


def split(api: KubeApiServer) -> list[int]:
    """The seed's split: its second http route (the first is the header-match route to v2)."""
    return [d["weight"] for d in api.get("default", "web-app")["spec"]["http"][1]["route"]]


def puts(api: KubeApiServer) -> int:
    return sum(method == "PUT" for method, _, _ in api.requests)


def invoke(*args: str | Path) -> Any:
    return runner.invoke(app, [str(a) for a in args])


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {stderr!r}"
    return lines[0]


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Callable[[list[dict[str, Any]]], tuple[KubeApiServer, Path]]]:
    """`own_cluster(objects)`: a started API server holding those objects and a kubeconfig for it."""
    started: list[KubeApiServer] = []

    def start(objects: list[dict[str, Any]]) -> tuple[KubeApiServer, Path]:
        server = KubeApiServer(objects).start()
        started.append(server)
        return server, server.kubeconfig(tmp_path / f"kubeconfig-{len(started)}")

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def cancelled(kube_api: KubeApiServer, kubeconfig: Path, web_policy: Policy, tmp_path: Path) -> tuple[Path, str]:
    """A rollout started in the cluster, two ticks judged, then cancelled by a signal: (audit log, rollout id)."""
    audit = tmp_path / "a.jsonl"
    router = IstioRouter.from_kubeconfig(str(kubeconfig))
    try:
        sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
        sim.runner.open()
        for _ in range(2):
            sim.clock.sleep(web_policy.interval_s)
            sim.runner.tick()
        sim.runner.cancel_flag.set("SIGTERM")
        sim.runner.cancel()
    finally:
        router.close()
    state = decode_state(kube_api.get("default", "web-app")["metadata"]["annotations"][ANNOTATION])
    assert state.phase is Phase.CANCELLED
    return audit, state.rollout


# ------------------------------------------------------------------------------------- status and by hand


def test_status_reads_the_seeds_split_in_the_cluster(kubeconfig: Path) -> None:
    result = invoke("status", POLICY, "--kubeconfig", kubeconfig, "--output", "json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {
        "target": "default/web-app", "weights": {"baseline": 90, "canary": 10}, "v1": 90, "v2": 10, "rollout": None,
        "audit_problem": None, "canary_elsewhere": ["spec.http[0] (match) 100%"],
    }  # fmt: skip
    text = invoke("status", POLICY, "--kubeconfig", kubeconfig)
    assert text.stdout == (
        "default/web-app: v1 90%, v2 10%\n"
        "the canary also gets traffic canary does not move: spec.http[0] (match) 100%\n"
    )


def test_promote_then_rollback_by_hand_in_a_named_context_each_printing_a_head_that_verifies(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    common = ["--kubeconfig", str(kubeconfig), "--context", "test", "--audit", str(audit)]
    promoted = invoke("promote", POLICY, "--full", *common, "--actor", "alice", "--output", "json")
    assert promoted.exit_code == 0, promoted.output
    made = json.loads(promoted.stdout)
    assert made["weights_before"] == {"baseline": 90, "canary": 10}
    assert made["weights_after"] == {"baseline": 0, "canary": 100} and made["actor"] == "alice"
    assert split(kube_api) == [0, 100]
    verified = invoke("audit", "verify", audit, "--head", made["audit_head"])
    assert verified.exit_code == 0 and "hash chain intact ending at the given head" in verified.stdout
    rolled_back = invoke("rollback", POLICY, *common, "--reason", "pager alert")
    assert rolled_back.exit_code == 0, rolled_back.output
    assert "canary 100% -> 0% (rollback by " in rolled_back.stdout
    assert split(kube_api) == [100, 0]
    kinds = [(type(r).__name__, getattr(r, "action", getattr(r, "result", None))) for r in
             (s.record for s in read_records(audit))]  # fmt: skip
    assert kinds == [
        ("DecisionRecord", Action.PROMOTE),
        ("OutcomeRecord", "applied"),
        ("DecisionRecord", Action.ROLLBACK),
        ("OutcomeRecord", "applied"),
    ]
    against_route = invoke("audit", "verify", audit, "--policy", POLICY, "--kubeconfig", kubeconfig)
    assert against_route.exit_code == 0, against_route.output
    assert "4 records, hash chain intact ending at the route's head" in against_route.stdout


def test_audit_verify_against_the_clusters_route_catches_a_log_cut_short(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    for verb in (["promote", "--full"], ["rollback"]):
        assert invoke(*verb, POLICY, "--kubeconfig", kubeconfig, "--audit", audit).exit_code == 0
    audit.write_text("".join(audit.read_text().splitlines(keepends=True)[:2]))  # the rollback cut off
    cut = invoke("audit", "verify", audit, "--policy", POLICY, "--kubeconfig", kubeconfig)
    assert cut.exit_code == 1
    assert "does not lead to the head" in one_line(cut.stderr)


# ------------------------------------------------------------------------------------- run


def test_a_simulated_run_promotes_in_the_cluster_and_status_shows_the_rollout(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    result = invoke("run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit,
                    "--output", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["outcome"] == "promoted" and out["final_weights"] == {"baseline": 0, "canary": 100}
    assert split(kube_api) == [0, 100]
    status = json.loads(invoke("status", POLICY, "--kubeconfig", kubeconfig, "--output", "json").stdout)
    assert (status["v1"], status["v2"]) == (0, 100)
    assert status["rollout"]["id"] == out["rollout"] and status["rollout"]["phase"] == "promoted"
    assert status["rollout"]["audit_head"] == out["audit_head"]
    verified = invoke("audit", "verify", audit, "--policy", POLICY, "--kubeconfig", kubeconfig)
    assert verified.exit_code == 0, verified.output


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
    result = invoke("status", POLICY, *(str(kubeconfig) if a == "KUBECONFIG" else a for a in args))
    assert result.exit_code == 2
    assert result.stderr == f"canary: {message}\n"


def test_an_api_server_failure_is_one_line_and_exit_2(kube_api: KubeApiServer, kubeconfig: Path) -> None:
    kube_api.fail_next(503, "etcdserver: request timed out")
    result = invoke("status", POLICY, "--kubeconfig", kubeconfig)
    assert result.exit_code == 2
    assert result.stderr == (
        "canary: VirtualService default/web-app: the API server failed (503: etcdserver: request timed out), "
        "try again\n"
    )


def test_a_run_stops_when_someone_else_moves_the_weights_and_leaves_their_change(
    kube_api: KubeApiServer, tmp_path: Path, kubeconfig: Path
) -> None:
    """Someone moves the split to 70/30 once the rollout has started (after canary's first write)."""

    def someone_else(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][1]["route"][0]["weight"], vs["spec"]["http"][1]["route"][1]["weight"] = 70, 30

    def once_started() -> None:
        if puts(kube_api):
            kube_api.edit("default", "web-app", someone_else)
        else:
            kube_api.after_next_get(once_started)

    kube_api.after_next_get(once_started)
    audit = tmp_path / "a.jsonl"
    result = invoke("run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit,
                    "--output", "json")  # fmt: skip
    assert result.exit_code == 2, result.output
    out = json.loads(result.stdout)
    assert out["outcome"] == "aborted" and out["final_weights"] == {"baseline": 70, "canary": 30}
    assert out["reason"].startswith("weights changed outside canary: expected 90/10, found 70/30")
    assert split(kube_api) == [70, 30]


def test_a_destination_rule_without_the_canary_subset_fails_the_run_in_one_line_before_any_weight_moves(
    own_cluster: Any, tmp_path: Path
) -> None:
    def drop_v2(objects: list[dict[str, Any]]) -> None:
        rule = named(objects, "DestinationRule", "web-app")
        rule["spec"]["subsets"] = [s for s in rule["spec"]["subsets"] if s["name"] != "v2"]

    api, kubeconfig = own_cluster(fixtures_with(drop_v2))
    audit = tmp_path / "a.jsonl"
    result = invoke("run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit)
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        "canary: VirtualService default/web-app: DestinationRule default/web-app for "
        "web-app.default.svc.cluster.local has no subset 'v2' (subsets: v1)"
    )
    assert puts(api) == 0 and split(api) == [90, 10] and not audit.exists()


def test_two_match_less_splits_fail_the_run_in_one_line_listing_them(own_cluster: Any, tmp_path: Path) -> None:
    def second_split(objects: list[dict[str, Any]]) -> None:
        http = named(objects, "VirtualService", "web-app")["spec"]["http"]
        http.append({**copy.deepcopy(http[1]), "name": "legacy"})

    api, kubeconfig = own_cluster(fixtures_with(second_split))
    audit = tmp_path / "a.jsonl"
    result = invoke("run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit)
    assert result.exit_code == 2
    assert one_line(result.stderr) == (
        "canary: VirtualService default/web-app: 2 http routes split 'v1' and 'v2' (spec.http[1], "
        "spec.http[2] ('legacy')); name the one to shift in spec.target.route"
    )
    assert puts(api) == 0 and not audit.exists()


def test_run_resume_carries_on_a_cancelled_rollout_from_the_clusters_state(
    kube_api: KubeApiServer, kubeconfig: Path, cancelled: tuple[Path, str]
) -> None:
    audit, rollout = cancelled
    result = invoke("run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit,
                    "--resume", "--output", "json")  # fmt: skip
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert (out["outcome"], out["rollout"]) == ("promoted", rollout)
    actions = [r.action for r in (s.record for s in read_records(audit)) if isinstance(r, DecisionRecord)]
    assert actions.count(Action.CANCEL) == 1 and actions.count(Action.RESUME) == 1
    assert split(kube_api) == [0, 100]


def test_a_run_on_a_route_holding_an_open_rollout_needs_resume_or_restart(
    kube_api: KubeApiServer, kubeconfig: Path, cancelled: tuple[Path, str]
) -> None:
    audit, rollout = cancelled
    args = ["run", POLICY, "--simulate", "healthy", "--kubeconfig", kubeconfig, "--audit", audit]
    refused = invoke(*args)
    assert refused.exit_code == 2
    assert one_line(refused.stderr).startswith(
        f"canary: VirtualService default/web-app holds rollout {rollout} (cancelled"
    )
    assert "carry it on with --resume, start over with --restart" in refused.stderr
    restarted = invoke(*args, "--restart", "--output", "json")
    assert restarted.exit_code == 0, restarted.output
    assert json.loads(restarted.stdout)["rollout"] != rollout
    records = [s.record for s in read_records(audit)]
    abandoned = [
        r for r in records if isinstance(r, DecisionRecord) and r.rollout == rollout and r.action is Action.ABORT
    ]
    assert len(abandoned) == 1 and not abandoned[0].writes, "the new rollout's write replaces the old one's state"
    assert "--restart" in abandoned[0].reason
    assert all(r.result == "applied" for r in records if isinstance(r, OutcomeRecord))
    assert split(kube_api) == [0, 100]


def test_a_failing_exec_credential_plugin_leaves_one_line_on_stderr(kube_api: KubeApiServer, tmp_path: Path) -> None:
    """The kubernetes client logged the plugin's failure on the root logger ("ERROR:root:exec: process
    returned 1") beside canary's own line. The console script leaves canary's line alone."""
    import subprocess
    import sys

    config = tmp_path / "kubeconfig"
    kube_api.kubeconfig(config)
    plugin = "user:\n    exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: 'false'}"
    config.write_text(config.read_text().replace("user: {}", plugin))
    kube_api.fail_next(401)
    policy = Path(__file__).resolve().parents[2] / "policies" / "web-app.yaml"
    done = subprocess.run([Path(sys.executable).parent / "canary", "status", str(policy), "--kubeconfig", str(config)],
                          capture_output=True, text=True, timeout=120, env={"PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode == 2 and len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("canary: ") and "ERROR:root" not in done.stderr
