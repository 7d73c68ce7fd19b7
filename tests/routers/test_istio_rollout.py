"""A rollout against the API server when the API server misbehaves: nothing announced that did not happen."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kube_api_server import KubeApiServer

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records
from canary.errors import RouterError
from canary.model import Phase, Weights
from canary.policy import Policy
from canary.routers.istio import IstioRouter
from canary.scenario import builtin_scenario


def weights_in(server: KubeApiServer) -> list[int]:
    return [d["weight"] for d in server.get("default", "web-app")["spec"]["http"][0]["route"]]


def test_a_failed_write_is_recorded_as_not_made_and_retried(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    sim.controller.start()
    kube_api.fail_next(503, "etcd leader changed", method="PUT")  # the next write, the advance, fails once
    records: list[dict[str, object]] = []
    while not any(r.get("reverts") is not None for r in records):
        sim.clock.sleep(web_policy.interval_s)
        report = sim.controller.tick()
        records = list(read_records(audit))
    announced, reverted = records[-2], records[-1]
    assert announced["action"] == "advance" and announced["weights_after"]["canary"] == 50
    assert reverted["action"] == "hold" and "etcd leader changed" in reverted["error"]
    assert reverted["weights_after"]["canary"] == 10 and weights_in(kube_api) == [90, 10]
    assert report.decision.phase is Phase.PROGRESSING
    assert sim.controller.state is not None and sim.controller.state.weights == Weights(90, 10)
    # A restart here replays the log, the failed change included, and carries on from 10%.
    from canary.controller import Controller, unfinished_rollout
    from canary.judges import make_judge

    policy = sim.controller.policy
    fresh = Controller(
        policy=policy, source=sim.mesh, router=router, judge=make_judge(policy), audit=AuditLog(audit), clock=sim.clock
    )
    fresh.resume(unfinished_rollout(list(read_records(audit)), policy))
    assert fresh.state is not None and fresh.state.weights == Weights(90, 10)
    while not fresh.state.phase.finished:  # the next ticks try again and carry on
        sim.clock.sleep(web_policy.interval_s)
        fresh.tick()
    assert fresh.state.phase is Phase.PROMOTED and weights_in(kube_api) == [0, 100]


def test_an_unreadable_route_holds_without_judging(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    sim.controller.start()
    sim.clock.sleep(web_policy.interval_s)
    kube_api.fail_next(429, "too many requests, please try again later", method="GET")  # APF throttling
    report = sim.controller.tick()
    assert report.decision.phase is Phase.PROGRESSING
    last = list(read_records(audit))[-1]
    assert last["weights_unverified"] is True and "throttling" in last["error"]
    assert "observation" not in last


def test_a_refused_write_stops_the_rollout_with_a_record(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    kube_api.fail_next(403, "virtualservices is forbidden", method="PUT")
    report = sim.controller.start()
    assert report.decision.phase is Phase.ABORTED
    records = list(read_records(audit))
    assert [r["action"] for r in records] == ["start", "hold"]
    assert records[-1]["phase"] == "aborted" and "forbidden" in records[-1]["error"]
    assert weights_in(kube_api) == [100, 0]


def test_a_manual_rollback_that_fails_says_so_in_the_log(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    import pytest

    from canary.clock import SystemClock
    from canary.controller import manual_change

    router.set_weights(web_policy.target, Weights(50, 50))
    kube_api.fail_next(403, "virtualservices is forbidden", method="PUT")
    audit = AuditLog(tmp_path / "a.jsonl")
    with pytest.raises(RouterError):
        manual_change(
            policy=web_policy, router=router, audit=audit, clock=SystemClock(), promote=False, actor="bob", reason=""
        )
    records = list(read_records(audit.path))
    assert [r["action"] for r in records] == ["rollback", "hold"]
    assert records[-1]["reverts"] == "manual" and weights_in(kube_api) == [50, 50]


def test_a_write_whose_answer_is_lost_counts_as_made(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    """The API server commits, then a gateway answers 504: canary reads the route back and goes on."""
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    kube_api.fail_after_commit(504, "gateway timeout")
    report = sim.controller.start()
    assert report.decision.phase is Phase.PROGRESSING and weights_in(kube_api) == [90, 10]
    assert [r["action"] for r in read_records(audit)] == ["start"]


def test_a_conflicting_write_leaves_state_record_and_route_in_agreement(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    """Someone pauses the rollout at 95/5 between canary's read and its write: the API server refuses the
    write (409); canary stops, records what the route really holds, and stays at the step it was on."""
    from canary.model import Judgement, Outcome

    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    sim.controller.start()

    def pause(vs: dict[str, Any]) -> None:
        for dest, weight in zip(vs["spec"]["http"][0]["route"], (95, 5), strict=True):
            dest["weight"] = weight

    def judged_pass(obs: Any, step: int) -> Judgement:
        # Called after the tick's own read: the next read is the one the write is based on.
        kube_api.after_next_get(lambda: kube_api.edit("default", "web-app", pause))
        return Judgement(Outcome.PASS, (), "judged pass")

    sim.controller.judge.judge = judged_pass  # type: ignore[method-assign]
    sim.clock.sleep(web_policy.interval_s)
    report = sim.controller.tick()
    last = list(read_records(audit))[-1]
    assert report.decision.phase is Phase.ABORTED and last["phase"] == "aborted"
    assert "changed by someone else" in last["reason"]
    assert last["weights_after"] == {"baseline": 95, "canary": 5} and weights_in(kube_api) == [95, 5]
    assert sim.controller.state is not None and sim.controller.state.step_index == 0
    assert sim.controller.step_seconds == []


def test_a_wrong_api_server_address_fails_before_anything_is_recorded(web_policy: Policy, tmp_path: Path) -> None:
    """Unreachable counts as temporary during a rollout, but the first read is not retried: exit 2 at once."""
    import pytest

    closed = KubeApiServer([])
    path = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()
    router = IstioRouter.from_kubeconfig(str(path))
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    try:
        with pytest.raises(RouterError, match="unreachable"):
            sim.controller.run()
    finally:
        router.close()
    assert not audit.exists() or not audit.read_text()


def test_a_manual_rollback_whose_answer_is_lost_is_not_reported_as_failed(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    from canary.clock import SystemClock
    from canary.controller import manual_change

    router.set_weights(web_policy.target, Weights(50, 50))
    kube_api.fail_after_commit(504, "gateway timeout")
    audit = AuditLog(tmp_path / "a.jsonl")
    manual_change(
        policy=web_policy, router=router, audit=audit, clock=SystemClock(), promote=False, actor="b", reason=""
    )
    assert [r["action"] for r in read_records(audit.path)] == ["rollback"]
    assert weights_in(kube_api) == [100, 0]


def test_writes_failing_past_the_deadline_end_the_rollout(
    web_policy: Policy, kube_api: KubeApiServer, router: IstioRouter, tmp_path: Path
) -> None:
    """An API server that keeps failing writes cannot keep a rollout going forever."""
    audit = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit), router=router)
    sim.controller.start()
    for _ in range(500):
        kube_api.fail_next(503, "etcd unavailable", method="PUT")
    result = sim.controller.run(resume=list(read_records(audit)))
    assert result.phase is Phase.ABORTED
    assert result.finished_at >= sim.controller.state.deadline  # type: ignore[union-attr]
    assert weights_in(kube_api) == [90, 10]
