"""The controller's I/O order and its audit trail, on the real simulated mesh, memory router and judge."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import pytest

from canary import __version__
from canary.app import SIM_START, SimulatedRollout, simulated_rollout
from canary.audit import AuditLog, _seal, read_records, verify_chain
from canary.controller import Controller
from canary.errors import AuditError
from canary.model import Action, Judgement, Observation, Outcome, Phase, Weights
from canary.policy import Policy, Target
from canary.routers.memory import MemoryRouter
from canary.scenario import builtin_scenario


class AuditFirstRouter:
    """Wraps the real router; on every weight change it reads the audit file and checks the justifying
    record is already on disk, with the very weights being applied."""

    def __init__(self, inner: MemoryRouter, audit_path: Path) -> None:
        self.inner = inner
        self.audit_path = audit_path
        self.checked: list[tuple[int, Weights]] = []  # (records on disk at the change, weights applied)

    def get_weights(self, target: Target) -> Weights:
        return self.inner.get_weights(target)

    def set_weights(self, target: Target, weights: Weights, *, expected: Weights | None = None) -> None:
        records = list(read_records(self.audit_path)) if self.audit_path.exists() else []
        assert records, "weights changed before any audit record was written"
        last = records[-1]
        current = self.inner.get_weights(target)
        assert last["weights_after"] == {"baseline": weights.baseline, "canary": weights.canary}
        assert last["weights_before"] == {"baseline": current.baseline, "canary": current.canary}
        self.checked.append((len(records), weights))
        self.inner.set_weights(target, weights, expected=expected)


class FailingAudit:
    """An audit sink whose disk is gone."""

    path = Path("<failing>")

    def append(self, record: dict[str, Any]) -> dict[str, Any]:
        raise AuditError("disk full")


class ScriptedJudge:
    """A judge that answers from a list, then repeats the last answer."""

    name = "scripted"

    def __init__(self, *outcomes: Outcome) -> None:
        self.outcomes = list(outcomes)

    def judge(self, observation: Observation, step: int) -> Judgement:
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        return Judgement(outcome, (), f"scripted {outcome.value}")


def rollout(policy: Policy, audit_path: Path, scenario: str = "healthy", seed: int = 3) -> SimulatedRollout:
    return simulated_rollout(policy, builtin_scenario(scenario), seed=seed, audit=AuditLog(audit_path))


@pytest.mark.parametrize("scenario", ["healthy", "latency-regression"])
def test_every_weight_change_is_preceded_by_its_audit_record(
    web_policy: Policy, audit_path: Path, scenario: str
) -> None:
    sim = rollout(web_policy, audit_path, scenario)
    guard = AuditFirstRouter(sim.router, audit_path)
    sim.controller.router = guard
    result = sim.controller.run()
    assert guard.checked, "the rollout never changed the weights, so nothing was checked"
    assert [w for _, w in guard.checked] == sim.router.history
    assert guard.checked[-1][1] == result.decision.weights


def test_one_audit_record_per_tick_plus_the_start(web_policy: Policy, audit_path: Path) -> None:
    result = rollout(web_policy, audit_path).controller.run()
    records = list(read_records(audit_path))
    assert len(records) == result.ticks + 1
    assert [r["tick"] for r in records] == list(range(result.ticks + 1))
    assert records[0]["action"] == "start"
    assert {r["rollout"] for r in records} == {result.rollout}


def test_audit_record_holds_the_decision_inputs_and_outputs(web_policy: Policy, audit_path: Path) -> None:
    sim = rollout(web_policy, audit_path)
    sim.controller.run()
    records = list(read_records(audit_path))
    first_tick = records[1]
    assert first_tick["time"] == dt.datetime.fromtimestamp(SIM_START + 60, tz=dt.UTC).isoformat(timespec="seconds")
    assert first_tick["timestamp"] == SIM_START + 60
    assert first_tick["step"] == {"index": 0, "weight": 10}
    assert first_tick["weights_before"] == {"baseline": 90, "canary": 10}
    assert first_tick["weights_after"] == {"baseline": 90, "canary": 10}
    assert first_tick["actor"] == "canary-controller (simulated mesh)"
    assert first_tick["engine"] == {"name": "canary", "version": __version__}
    assert first_tick["policy"]["name"] == "web-app"
    assert first_tick["window"]["seconds"] == 60
    verdicts = first_tick["judgement"]["verdicts"]
    assert [v["metric"] for v in verdicts] == ["error-rate", "latency p50", "latency p95", "latency p99"]
    assert all(v["outcome"] in {o.value for o in Outcome} and v["summary"] and v["figures"] for v in verdicts)
    # The counts in the record are the ones the mesh actually served in that window.
    for version in ("v1", "v2"):
        served = [s for s in sim.mesh.slices if s.start >= SIM_START and s.end <= SIM_START + 60]
        requests = sum(int(s.requests[version].sum()) for s in served)
        errors = sum(int(s.errors[version].sum()) for s in served)
        counts = first_tick["counts"][version]
        assert (counts["requests"], counts["errors"]) == (requests, errors)
        assert counts["metrics"]["error-rate"] == {"events": errors, "trials": requests}
        assert counts["latency_buckets"]["+Inf"] == requests
    assert first_tick["counts"]["v2"]["pods"] == 2


def test_every_record_after_the_start_names_step_weights_counts_and_verdicts(
    web_policy: Policy, audit_path: Path
) -> None:
    rollout(web_policy, audit_path, "error-regression").controller.run()
    required = {"time", "step", "weights_before", "weights_after", "counts", "judgement", "actor", "engine"}
    for record in list(read_records(audit_path))[1:]:
        assert required <= set(record), f"tick {record['tick']} lacks {required - set(record)}"


def test_an_outside_weight_change_aborts_and_is_recorded(web_policy: Policy, audit_path: Path) -> None:
    sim = rollout(web_policy, audit_path)
    controller = sim.controller
    controller.start()
    sim.router.set_weights(web_policy.target, Weights.canary_at(30))  # someone edits the VirtualService
    report = controller.tick()
    assert report.decision.phase is Phase.ABORTED
    assert controller.state is not None and controller.state.phase is Phase.ABORTED
    assert sim.router.get_weights(web_policy.target) == Weights.canary_at(30), "canary overwrote the change"
    assert sim.router.history == [Weights.canary_at(10), Weights.canary_at(30)]
    last = list(read_records(audit_path))[-1]
    assert last["phase"] == "aborted"
    assert last["weights_before"] == {"baseline": 70, "canary": 30}
    assert last["reason"] == "weights changed outside canary: expected 90/10, found 70/30; stopping"


def test_run_stops_at_an_outside_change(web_policy: Policy, audit_path: Path) -> None:
    """The weights are re-read at every tick: a change between ticks ends the run as aborted."""
    sim = rollout(web_policy, audit_path)

    def meddle(report: Any) -> None:
        if report.tick == 2:
            sim.router.set_weights(web_policy.target, Weights.canary_at(0))

    result = sim.controller.run(meddle)
    assert result.phase is Phase.ABORTED
    assert result.ticks == 3
    assert sim.router.get_weights(web_policy.target) == Weights.canary_at(0)


def test_no_data_holds_until_the_deadline_then_the_policy_rule(web_policy: Policy, audit_path: Path) -> None:
    sim = rollout(web_policy, audit_path)
    sim.controller.judge = ScriptedJudge(Outcome.NO_DATA)
    result = sim.controller.run()
    assert result.phase is Phase.INCONCLUSIVE
    assert result.ticks == web_policy.max_duration_s / web_policy.interval_s
    assert result.decision.weights == Weights.canary_at(0)
    actions = [r["action"] for r in read_records(audit_path)]
    assert actions == ["start"] + ["hold"] * (result.ticks - 1) + ["rollback"]


def test_a_failed_audit_write_leaves_the_weights_alone(web_policy: Policy) -> None:
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=FailingAudit())
    with pytest.raises(AuditError):
        sim.controller.start()
    assert sim.router.get_weights(web_policy.target) == Weights.canary_at(0)
    assert sim.router.history == []


def test_tick_before_start_is_refused(web_policy: Policy) -> None:
    controller: Controller = simulated_rollout(
        web_policy, builtin_scenario("healthy"), seed=1, audit=FailingAudit()
    ).controller
    with pytest.raises(RuntimeError, match="start"):
        controller.tick()


# ----------------------------------------------------------------------------------------- hash chain


@pytest.fixture
def audit_log(web_policy: Policy, audit_path: Path) -> Path:
    rollout(web_policy, audit_path).controller.run()
    return audit_path


def test_the_chain_verifies_on_an_untouched_log(audit_log: Path) -> None:
    check = verify_chain(audit_log)
    assert check.ok
    assert check.records == len(audit_log.read_text().splitlines())


def test_a_second_rollout_appends_to_the_same_chain(web_policy: Policy, audit_log: Path) -> None:
    before = len(audit_log.read_text().splitlines())
    rollout(web_policy, audit_log, "error-regression").controller.run()
    check = verify_chain(audit_log)
    assert check.ok and check.records > before


def edit_line(path: Path, number: int, change: Any) -> None:
    lines = path.read_text().splitlines(keepends=True)
    record = json.loads(lines[number - 1])
    change(record)
    lines[number - 1] = json.dumps(record, sort_keys=True, separators=(",", ":")) + "\n"
    path.write_text("".join(lines))


def test_an_edited_record_breaks_the_chain_at_its_line(audit_log: Path) -> None:
    edit_line(audit_log, 3, lambda r: r["weights_after"].update(canary=100, baseline=0))
    check = verify_chain(audit_log)
    assert not check.ok
    assert check.broken_at == 3


def test_an_edited_record_with_a_recomputed_hash_breaks_the_next_line(audit_log: Path) -> None:
    """Re-sealing a forged record does not help: the next record still names the old hash."""

    def forge(record: dict[str, Any]) -> None:
        record["reason"] = "approved by hand"
        record.update(_seal(record["prev_hash"], record))

    edit_line(audit_log, 2, forge)
    assert verify_chain(audit_log).broken_at == 3


def test_a_removed_record_breaks_the_chain_at_the_gap(audit_log: Path) -> None:
    lines = audit_log.read_text().splitlines(keepends=True)
    del lines[1]
    audit_log.write_text("".join(lines))
    check = verify_chain(audit_log)
    assert check.broken_at == 2


def test_a_line_that_is_not_json_is_named(audit_log: Path) -> None:
    with audit_log.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(AuditError, match=rf"^{audit_log}:\d+: not a JSON record"):
        verify_chain(audit_log)


def test_actions_recorded_match_the_router_history(web_policy: Policy, audit_path: Path) -> None:
    sim = rollout(web_policy, audit_path)
    sim.controller.run()
    moved = [r for r in read_records(audit_path) if r["weights_after"] != r["weights_before"]]
    assert [r["weights_after"]["canary"] for r in moved] == [w.canary for w in sim.router.history]
    assert [r["action"] for r in moved] == [Action.START, Action.ADVANCE, Action.PROMOTE]


def test_late_ticks_leave_no_gap_between_windows(web_policy: Policy, audit_path: Path) -> None:
    """A tick that runs late (a slow query, a busy machine) reads from where the last window ended, so
    every request served is counted once."""
    rollout = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=4, audit=AuditLog(audit_path))
    late = rollout.clock.sleep

    def oversleep(seconds: float) -> None:
        late(seconds + 7)

    rollout.clock.sleep = oversleep  # type: ignore[method-assign]
    rollout.controller.run()
    records = [r for r in read_records(audit_path) if "counts" in r]
    assert all(r["window"]["seconds"] == web_policy.interval_s + 7 for r in records)
    counted = sum(r["counts"]["v2"].get("requests", 0) for r in records)
    assert counted == rollout.mesh.served("v2")[0]


class FlakySource:
    """The simulated mesh, failing at chosen ticks the way a metrics backend fails."""

    def __init__(self, inner: Any, failures: dict[int, Exception]) -> None:
        self.inner, self.failures, self.calls = inner, failures, 0

    def observe(self, target: Target, metrics: Any, start: float, end: float) -> Observation:
        self.calls += 1
        if self.calls in self.failures:
            raise self.failures[self.calls]
        return self.inner.observe(target, metrics, start, end)


def test_a_temporary_source_failure_holds_and_loses_no_window(web_policy: Policy, audit_path: Path) -> None:
    from canary.errors import SourceUnreachable

    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=2, audit=AuditLog(audit_path))
    sim.controller.source = FlakySource(sim.mesh, {2: SourceUnreachable("prometheus at 127.0.0.1:9 refused")})
    result = sim.controller.run()
    assert result.phase is Phase.PROMOTED
    records = list(read_records(audit_path))
    failed = records[2]
    assert failed["action"] == "hold" and "refused" in failed["error"] and failed["weights_after"]["canary"] == 10
    assert "retrying next tick" in failed["reason"]
    # The window after the failure reaches back to the last good one: every request is counted once.
    assert records[3]["window"]["seconds"] == 2 * web_policy.interval_s
    counted = sum(r["counts"]["v2"].get("requests", 0) for r in records if "counts" in r)
    assert counted == sim.mesh.served("v2")[0]


def test_a_permanent_source_failure_is_recorded_and_stops_with_the_weights_as_they_are(
    web_policy: Policy, audit_path: Path
) -> None:
    from canary.errors import BadQuery

    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=2, audit=AuditLog(audit_path))
    sim.controller.source = FlakySource(sim.mesh, {1: BadQuery("metric 'latency': parse error at char 7")})
    result = sim.controller.run()
    assert result.phase is Phase.ABORTED
    last = list(read_records(audit_path))[-1]
    assert last["phase"] == "aborted" and "parse error" in last["error"]
    assert last["weights_after"] == {"baseline": 90, "canary": 10}
    assert sim.router.get_weights(web_policy.target) == Weights(90, 10)


def test_a_change_between_read_and_write_is_not_overwritten(web_policy: Policy, audit_path: Path) -> None:
    """Compare-and-swap: a person's rollback that lands while a tick is judging wins."""
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=2, audit=AuditLog(audit_path))
    sim.controller.start()

    class Meddling:
        def observe(self, target: Target, metrics: Any, start: float, end: float) -> Observation:
            sim.router.set_weights(target, Weights(100, 0))  # someone rolls back mid-tick
            return sim.mesh.observe(target, metrics, start, end)

    sim.controller.source = Meddling()
    sim.controller.judge.judge = lambda obs, step: Judgement(Outcome.PASS, (), "judged pass")  # type: ignore[method-assign]
    report = sim.controller.tick()
    assert report.decision.phase is Phase.ABORTED
    assert sim.router.get_weights(web_policy.target) == Weights(100, 0)
    assert "weights changed outside canary" in list(read_records(audit_path))[-1]["reason"]


def _decisions(path: Path) -> list[tuple[Any, ...]]:
    return [(r["tick"], r["action"], r["weights_after"]["canary"], r["phase"]) for r in read_records(path)]


@pytest.mark.parametrize("crash_after", [0, 3, 12])
def test_a_restarted_controller_resumes_from_the_audit_log_as_if_never_stopped(
    web_policy: Policy, tmp_path: Path, crash_after: int
) -> None:
    """The judge's evidence is rebuilt by replaying the recorded observations: the resumed rollout takes
    exactly the decisions the uninterrupted one took (same seed, same traffic)."""
    from canary.controller import unfinished_rollout
    from canary.judges import make_judge

    whole = tmp_path / "whole.jsonl"
    simulated_rollout(web_policy, builtin_scenario("healthy"), seed=9, audit=AuditLog(whole)).controller.run()

    cut = tmp_path / "cut.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=9, audit=AuditLog(cut))
    sim.controller.start()
    for _ in range(crash_after):
        sim.clock.sleep(web_policy.interval_s)
        sim.controller.tick()
    # The process dies here; a new one finds the unfinished rollout in the audit log.
    records = unfinished_rollout(list(read_records(cut)), sim.controller.policy)
    assert records and records[0]["rollout"] == sim.controller.rollout
    fresh = Controller(
        policy=sim.controller.policy, source=sim.mesh, router=sim.router,
        judge=make_judge(sim.controller.policy), audit=AuditLog(cut), clock=sim.clock,
    )  # fmt: skip
    result = fresh.run(resume=records)
    assert result.phase is Phase.PROMOTED
    assert _decisions(cut) == _decisions(whole)
    assert verify_chain(cut).ok
    assert unfinished_rollout(list(read_records(cut)), sim.controller.policy) == []


def test_resuming_refuses_a_log_the_policy_no_longer_explains(web_policy: Policy, tmp_path: Path) -> None:
    import dataclasses

    from canary.judges import make_judge

    path = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=9, audit=AuditLog(path))
    sim.controller.start()
    while sim.controller.state is not None and sim.controller.state.step_index == 0:
        sim.clock.sleep(web_policy.interval_s)
        sim.controller.tick()
    records = list(read_records(path))
    assert records[-1]["action"] == "advance"
    stricter = dataclasses.replace(sim.controller.policy, min_requests=10**9)
    fresh = Controller(
        policy=stricter, source=sim.mesh, router=sim.router, judge=make_judge(stricter), audit=AuditLog(path),
        clock=sim.clock,
    )  # fmt: skip
    from canary.errors import CanaryError

    with pytest.raises(CanaryError, match=r"cannot be resumed: at tick \d+ the audit log says advance to 50%"):
        fresh.resume(records)


def test_unfinished_rollout_picks_the_policys_last_rollout_only_while_it_progresses(web_policy: Policy) -> None:
    from canary.controller import unfinished_rollout

    def rec(rollout: str, phase: str, name: str = "web-app") -> dict[str, Any]:
        return {"rollout": rollout, "phase": phase, "policy": {"name": name}}

    done = [rec("a", "progressing"), rec("a", "promoted")]
    running = [rec("b", "progressing"), rec("b", "progressing")]
    other = [rec("c", "progressing", name="checkout")]
    manual = [rec("manual", "rolled-back")]
    assert unfinished_rollout(done + running + other + manual, web_policy) == running
    assert unfinished_rollout(running + done, web_policy) == []
    assert unfinished_rollout(other, web_policy) == []


def test_resume_after_a_crash_between_the_record_and_the_write(web_policy: Policy, tmp_path: Path) -> None:
    """The last record announced 10% -> 50% but the process died before writing it: the resumed rollout
    says so in a record and carries on from 10%, instead of blaming someone else for the weights."""
    from canary.controller import unfinished_rollout
    from canary.judges import make_judge

    path = tmp_path / "a.jsonl"
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=9, audit=AuditLog(path))
    sim.controller.start()
    while sim.controller.state is not None and sim.controller.state.step_index == 0:
        sim.clock.sleep(web_policy.interval_s)
        sim.controller.tick()
    sim.router.set_weights(web_policy.target, Weights(90, 10))  # the write that never happened
    policy = sim.controller.policy
    fresh = Controller(
        policy=policy, source=sim.mesh, router=sim.router, judge=make_judge(policy), audit=AuditLog(path),
        clock=sim.clock,
    )  # fmt: skip
    report = fresh.resume(unfinished_rollout(list(read_records(path)), policy))
    last = list(read_records(path))[-1]
    assert last["reverts"] == last["tick"] and "was never made" in last["reason"]
    assert report.decision.weights == Weights(90, 10) and fresh.state is not None and fresh.state.step_index == 0
    while not fresh.state.phase.finished:
        sim.clock.sleep(web_policy.interval_s)
        fresh.tick()
    assert fresh.state.phase is Phase.PROMOTED
