"""The runner's order of work and what it leaves behind, on the real simulated mesh, memory router and judge:
intent on disk before every write, one outcome after it, the state on the route, and every way a command can
stop (a crash at any line, a cancel, someone else's change, a person's command) leaving a true state."""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import decisions, judged, memory_router

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records, verify_chain
from canary.auditing import NOT_STARTED, rollouts
from canary.controller import CancelFlag, RolloutResult, Runner, TickReport
from canary.errors import AuditError, ConflictError, RouterError, SourceError, SourceUnreachable
from canary.model import Action, Observation, Phase, Weights
from canary.policy import MetricSpec, Policy, Target
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord
from canary.routers import RouteRead
from canary.routers.manifest import ManifestRouter
from canary.routers.memory import MemoryRouter
from canary.scenario import builtin_scenario
from canary.sources.simulated import SimulatedMesh
from canary.state import ANNOTATION, RolloutState

SEED_VS = Path(__file__).parent.parent / "fixtures" / "istio" / "web-app-virtualservice.yaml"


def die(weights: Weights, state: RolloutState) -> None:
    """A process killed at a router's write hook."""
    raise Died


class Died(BaseException):
    """The process stopping dead at a chosen line (a BaseException, as SIGKILL leaves no handler a chance)."""


class Wrapped:
    """The real memory router with a hook before or after each write."""

    def __init__(self, inner: MemoryRouter) -> None:
        self.inner = inner
        self.before: Any = None
        self.after: Any = None

    def read(self, target: Target, evidence: type | None = None) -> RouteRead:
        return self.inner.read(target, evidence)

    def write(self, target: Target, read: RouteRead, weights: Weights, state: RolloutState) -> None:
        if self.before:
            self.before(weights, state)
        self.inner.write(target, read, weights, state)
        if self.after:
            self.after(weights, state)

    def subsets_problem(self, target: Target) -> str | None:
        return self.inner.subsets_problem(target)


def rollout(
    policy: Policy, audit_path: Path, scenario: str = "healthy", seed: int = 3, router: Any = None
) -> tuple[Runner, SimulatedMesh, MemoryRouter]:
    memory = memory_router(policy.target)
    sim = simulated_rollout(
        policy,
        builtin_scenario(scenario),
        seed=seed,
        audit=AuditLog(audit_path),
        router=router(memory) if router else memory,
    )
    return sim.runner, sim.mesh, memory


def again(runner: Runner, audit_path: Path) -> Runner:
    """A fresh command on the same route, log, mesh and clock: what a restart is."""
    return Runner(policy=runner.policy, source=runner.source, router=runner.router, judge=runner.judge,
                  audit=AuditLog(audit_path), clock=runner.clock, actor=runner.actor)  # fmt: skip


def sealed(audit_path: Path) -> list[Any]:
    return [s.record for s in read_records(audit_path)]


# --------------------------------------------------------------------------------------- order of work


@pytest.mark.parametrize("scenario", ["healthy", "latency-regression"])
def test_every_write_follows_its_intent_on_disk_and_precedes_its_outcome(
    web_policy: Policy, audit_path: Path, scenario: str
) -> None:
    seen: list[tuple[Weights, int]] = []

    def check(weights: Weights, state: RolloutState) -> None:
        last = sealed(audit_path)[-1]
        assert isinstance(last, DecisionRecord) and last.writes, "the write came before its intent was on disk"
        assert last.weights_after == weights == state.weights
        seen.append((weights, len(sealed(audit_path))))

    runner, _, memory = rollout(web_policy, audit_path, scenario, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.router.before = check
    result = runner.run()
    assert seen and result.phase in (Phase.PROMOTED, Phase.ROLLED_BACK)
    records = sealed(audit_path)
    assert [type(r) for r in records] == [DecisionRecord, OutcomeRecord] * (result.ticks + 1)
    assert all(isinstance(o, OutcomeRecord) and o.result == "applied" for o in records[1::2])
    changes = [w for i, (w, _) in enumerate(seen) if i == 0 or w != seen[i - 1][0]]
    assert changes == memory.history, "every weight the route took was written after its intent"
    assert verify_chain(audit_path, result.audit_head).ok


def test_the_route_holds_the_state_and_the_head_of_the_log(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path)
    result = runner.run()
    state = memory.read(web_policy.target).state
    assert state is not None and state.phase is Phase.PROMOTED and state.rollout == result.rollout
    assert state.audit_head == result.audit_head == list(read_records(audit_path))[-1].hash
    assert state.tick == result.ticks and state.weights == Weights(0, 100)


def test_a_decision_record_holds_the_inputs_and_outputs(web_policy: Policy, audit_path: Path) -> None:
    runner, _, _ = rollout(web_policy, audit_path)
    result = runner.run()
    start, *ticks = decisions(audit_path)
    assert start.action is Action.START and start.weights_after == Weights(90, 10) and start.tick == 0
    for n, record in enumerate(ticks, start=1):
        assert record.tick == n and record.window is not None and record.judge == "sequential"
        assert record.counts is not None and set(record.counts) == {"v1", "v2"}
        assert record.observation is not None and record.judgement is not None
        assert record.policy.name == "web-app" and record.policy.digest == runner.digest
        assert record.actor == "canary-controller (simulated mesh)" and record.engine.startswith("canary ")
    assert ticks[-1].action is Action.PROMOTE and len(ticks) == result.ticks


def test_windows_follow_each_other_without_a_gap_even_when_a_tick_runs_late(
    web_policy: Policy, audit_path: Path
) -> None:
    runner, _, _ = rollout(web_policy, audit_path)
    opened = runner.open()
    assert isinstance(opened, TickReport)
    for late in (60, 95, 60, 200):
        runner.clock.sleep(late)
        runner.tick()
    windows = [r.window for r in judged(audit_path)]
    assert len(windows) == 4
    for a, b in itertools.pairwise(windows):
        assert a is not None and b is not None and b.start == a.end
    assert windows[-1] is not None and windows[-1].end - windows[-1].start == 200


# --------------------------------------------------------------------------------------- failures


def test_someone_elses_weight_change_aborts_the_rollout_and_stays(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path)
    runner.open()
    memory.edit(web_policy.target, Weights(70, 30))
    runner.clock.sleep(60)
    report = runner.tick()
    assert isinstance(report, TickReport) and report.decision.phase is Phase.ABORTED
    assert memory.read(web_policy.target).weights == Weights(70, 30)
    last = decisions(audit_path)[-1]
    assert last.action is Action.ABORT and "expected 90/10, found 70/30" in last.reason
    state = memory.read(web_policy.target).state
    assert state is not None and state.phase is Phase.ABORTED


def test_a_temporary_source_failure_holds_and_loses_no_window(web_policy: Policy, audit_path: Path) -> None:
    runner, mesh, _ = rollout(web_policy, audit_path)
    runner.open()
    real = mesh.observe
    calls = {"n": 0}

    def flaky(target: Target, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        calls["n"] += 1
        if calls["n"] == 2:
            raise SourceUnreachable("connection refused")
        return real(target, metrics, start, end)

    mesh.observe = flaky  # type: ignore[method-assign]
    for _ in range(3):
        runner.clock.sleep(60)
        runner.tick()
    records = decisions(audit_path)
    assert records[2].error == "connection refused" and records[2].action is Action.HOLD and records[2].window is None
    assert records[3].window is not None and records[1].window is not None
    assert records[3].window.start == records[1].window.end, "the window after the failure covers what it missed"


def test_a_permanent_source_failure_stops_with_the_weights_as_they_are(web_policy: Policy, audit_path: Path) -> None:
    runner, mesh, memory = rollout(web_policy, audit_path)

    def rejected(*args: object) -> Observation:
        raise SourceError("bad query: parse error")

    mesh.observe = rejected  # type: ignore[method-assign]
    result = runner.run()
    assert result.phase is Phase.ABORTED and memory.read(web_policy.target).weights == Weights(90, 10)
    assert "metrics source failed: bad query" in decisions(audit_path)[-1].reason


def test_an_unexpected_error_during_a_tick_ends_the_rollout_with_a_record(web_policy: Policy, audit_path: Path) -> None:
    runner, mesh, memory = rollout(web_policy, audit_path)

    def broken(*args: object) -> Observation:
        raise ZeroDivisionError("a bug")

    mesh.observe = broken  # type: ignore[method-assign]
    with pytest.raises(ZeroDivisionError):
        runner.run()
    last = decisions(audit_path)[-1]
    assert last.action is Action.ABORT and last.error == "ZeroDivisionError: a bug"
    state = memory.read(web_policy.target).state
    assert state is not None and state.phase is Phase.ABORTED and state.weights == Weights(90, 10)


def test_an_audit_log_that_cannot_be_written_moves_no_weight(web_policy: Policy, tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    runner, _, memory = rollout(web_policy, folder / "a.jsonl")

    class Full(AuditLog):
        def append(self, record: Any) -> Any:
            raise AuditError("disk full")

    runner.audit = Full(folder / "a.jsonl")
    with pytest.raises(AuditError, match="disk full"):
        runner.run()
    assert memory.history == [] and memory.read(web_policy.target).state is None


def test_a_failed_write_is_recorded_as_not_made_and_retried(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()
    failures = {"left": 1}

    def once(weights: Weights, state: RolloutState) -> None:
        if failures["left"]:
            failures["left"] -= 1
            raise RouterError("503 etcd leader changed") from None

    runner.router.before = once
    runner.clock.sleep(60)
    report = runner.tick()
    assert isinstance(report, TickReport) and report.decision.phase is Phase.PROGRESSING
    outcome = sealed(audit_path)[-1]
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "failed" and "503" in outcome.reason
    state = memory.read(web_policy.target).state
    assert state is not None and state.tick == 0, "the route still holds the state before the failed write"
    while isinstance(report, TickReport) and report.decision.phase is Phase.PROGRESSING:
        runner.clock.sleep(60)
        report = runner.tick()
    assert isinstance(report, TickReport) and report.decision.phase is Phase.PROMOTED
    assert verify_chain(audit_path, runner.head).ok


def test_a_tick_whose_write_failed_is_not_counted_by_audit_list(web_policy: Policy, audit_path: Path) -> None:
    """The route never took the failed tick: `audit list` counts the ticks the route holds, as run and status
    do (it said one more)."""
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()
    for _ in range(2):
        runner.clock.sleep(60)
        runner.tick()

    def always(weights: Weights, state: RolloutState) -> None:
        raise RouterError("403 the service account may no longer update virtualservices")

    runner.router.before = always
    with contextlib.suppress(RouterError):
        for _ in range(3):
            runner.clock.sleep(60)
            runner.tick()
    held = memory.read(web_policy.target).state
    assert held is not None and held.tick == 2
    last = sealed(audit_path)[-1]
    assert isinstance(last, OutcomeRecord) and last.result == "failed"
    (listed,) = rollouts(read_records(audit_path))
    assert listed.ticks == held.tick == 2


def test_audit_list_shows_how_a_rollout_stands_not_a_change_that_failed_or_is_not_settled(
    web_policy: Policy, audit_path: Path
) -> None:
    """A person's rollback whose write failed was listed as "rolled-back (0% canary)" while the route held
    the rollout at 10%; a change recorded with no outcome yet was listed as made. The list shows the phase
    and weights of the last change the route took, and names one not yet settled."""
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()

    def refuse(weights: Weights, state: RolloutState) -> None:
        raise RouterError("422 admission webhook denied the request")

    runner.router.before = refuse
    with pytest.raises(RouterError, match="the rollback was not made"):
        again(runner, audit_path).manual("rollback", actor="user:alice", reason="pager")
    (listed,) = rollouts(read_records(audit_path))
    assert (listed.outcome, listed.final_weights, listed.unsettled) == ("progressing", Weights(90, 10), None)
    assert memory.read(web_policy.target).weights == Weights(90, 10)

    class Died(BaseException):
        pass

    def die(weights: Weights, state: RolloutState) -> None:
        raise Died

    runner.router.before = die
    with pytest.raises(Died):
        again(runner, audit_path).manual("rollback", actor="user:alice", reason="pager")
    (listed,) = rollouts(read_records(audit_path))
    assert (listed.outcome, listed.final_weights, listed.unsettled) == ("progressing", Weights(90, 10), "rolled-back")
    runner.router.before = None
    again(runner, audit_path).manual("rollback", actor="user:alice", reason="pager")
    (listed,) = rollouts(read_records(audit_path))
    assert (listed.outcome, listed.final_weights, listed.unsettled) == ("rolled-back", Weights(100, 0), None)


def test_a_change_made_between_read_and_write_is_never_overwritten(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()
    runner.router.before = lambda w, s: memory.edit(web_policy.target, Weights(60, 40))
    runner.clock.sleep(60)
    runner.tick()
    assert memory.read(web_policy.target).weights == Weights(60, 40)
    outcome = sealed(audit_path)[-1]
    assert (
        isinstance(outcome, OutcomeRecord)
        and outcome.result == "failed"
        and "changed by someone else" in outcome.reason
    )


# --------------------------------------------------------------------------------------- restarts


def test_a_restarted_command_carries_on_from_the_routes_state_as_if_never_stopped(
    web_policy: Policy, tmp_path: Path
) -> None:
    """The judge's evidence is in the state: a restart reads it from the route, replays nothing, and takes the
    same decisions as a rollout that never stopped."""
    whole, _, _ = rollout(web_policy, tmp_path / "whole.jsonl")
    expected = whole.run()
    cut, _, _ = rollout(web_policy, tmp_path / "cut.jsonl")
    cut.open()
    for _ in range(4):
        cut.clock.sleep(60)
        cut.tick()
    result = again(cut, tmp_path / "cut.jsonl").run(resume=True)
    assert (result.phase, result.ticks, result.rollout) == (expected.phase, expected.ticks, cut.state.rollout)  # type: ignore[union-attr]
    actions = [(r.action, r.weights_after) for r in decisions(tmp_path / "cut.jsonl") if r.action is not Action.RESUME]
    assert actions == [(r.action, r.weights_after) for r in decisions(tmp_path / "whole.jsonl")]
    assert verify_chain(tmp_path / "cut.jsonl", result.audit_head).ok


def test_resume_of_an_ended_rollout_reports_it_and_changes_nothing(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path)
    done = runner.run()
    size, before = audit_path.stat().st_size, memory.read(web_policy.target)
    result = again(runner, audit_path).run(resume=True)
    assert (result.phase, result.rollout) == (Phase.PROMOTED, done.rollout)
    assert audit_path.stat().st_size == size and memory.read(web_policy.target).revision == before.revision


def test_resume_with_another_release_refuses_an_open_rollout_and_follows_an_ended_one(
    web_policy: Policy, audit_path: Path
) -> None:
    runner, _, memory = rollout(web_policy, audit_path, "error-regression")
    runner.open(release="a1")
    runner.clock.sleep(60)
    runner.tick()
    before = memory.read(web_policy.target)
    with pytest.raises(ConflictError, match=r"holds rollout \w+ of release a1, still progressing at 10%; this is "
                                            "release b2: carry that one on with its --release, start over with "
                                            "--restart, or roll it back"):  # fmt: skip
        again(runner, audit_path).open(resume=True, release="b2")
    assert memory.read(web_policy.target).revision == before.revision
    carried = again(runner, audit_path).run(resume=True, release="a1")
    assert carried.rollout == runner.state.rollout and carried.release == "a1"  # type: ignore[union-attr]
    assert not carried.earlier
    reported = again(runner, audit_path).run(resume=True, release="a1")
    assert reported.earlier and reported.rollout == carried.rollout
    new = again(runner, audit_path).open(resume=True, release="b2")
    assert isinstance(new, TickReport) and new.decision.action is Action.START
    with pytest.raises(ConflictError, match=r"of release b2, still progressing at 10%; this is release c3: carry "
                                            "that one on with its --release"):  # fmt: skip
        again(runner, audit_path).open(resume=True, release="c3")


def test_a_rollout_started_without_a_release_is_carried_on_without_one(web_policy: Policy, audit_path: Path) -> None:
    runner, _, _ = rollout(web_policy, audit_path)
    runner.open()
    with pytest.raises(ConflictError, match=r"of no release named, still progressing at 10%; this is release a1: "
                                            "carry that one on without --release"):  # fmt: skip
        again(runner, audit_path).open(resume=True, release="a1")
    carried = again(runner, audit_path).open(resume=True)
    assert isinstance(carried, TickReport) and carried.decision.action is Action.RESUME


def test_an_open_rollout_is_not_restarted_by_accident(web_policy: Policy, audit_path: Path) -> None:
    runner, _, _ = rollout(web_policy, audit_path)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    with pytest.raises(ConflictError, match=r"--resume.*--restart"):
        again(runner, audit_path).open()
    fresh = again(runner, audit_path).open(restart=True)
    assert isinstance(fresh, TickReport) and fresh.decision.action is Action.START
    abandon = decisions(audit_path)[-2]
    assert abandon.rollout == runner.state.rollout and abandon.action is Action.ABORT  # type: ignore[union-attr]


def test_a_death_between_the_intent_and_its_write_is_resolved_as_not_made(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()
    for _ in range(30):
        runner.clock.sleep(60)
        report = runner.tick()
        if isinstance(report, TickReport) and report.decision.action is Action.ADVANCE:
            break

    runner.router.before = die
    runner.clock.sleep(60)
    with pytest.raises(Died):
        runner.tick()
    assert isinstance(sealed(audit_path)[-1], DecisionRecord), "the intent is the last record"
    held = memory.read(web_policy.target)
    resumed = again(runner, audit_path)
    resumed.router = memory
    resumed.run(resume=True)
    records = sealed(audit_path)
    lost = next(i for i, r in enumerate(records) if isinstance(r, OutcomeRecord) and r.result == "failed")
    assert "not made: the route does not hold it" in records[lost].reason
    assert records[lost].weights == held.weights
    assert verify_chain(audit_path).ok


def test_a_death_between_the_write_and_its_outcome_is_resolved_as_made(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()

    runner.router.after = die
    runner.clock.sleep(60)
    with pytest.raises(Died):
        runner.tick()
    state = memory.read(web_policy.target).state
    assert state is not None and state.tick == 1
    assert not verify_chain(audit_path, state.audit_head, route_head=True).ok, "the outcome is not on disk yet"
    resumed = again(runner, audit_path)
    resumed.router = memory
    result = resumed.run(resume=True)
    outcome = sealed(audit_path)[3]
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "applied"
    assert verify_chain(audit_path, result.audit_head).ok


def test_a_log_that_is_not_the_routes_history_is_refused(web_policy: Policy, tmp_path: Path) -> None:
    runner, _, _ = rollout(web_policy, tmp_path / "a.jsonl")
    runner.open()
    other = again(runner, tmp_path / "b.jsonl")
    with pytest.raises(ConflictError, match="does not hold the head the route's state was written with"):
        other.open(resume=True)
    assert not (tmp_path / "b.jsonl").exists() or not list(read_records(tmp_path / "b.jsonl"))


@pytest.mark.parametrize("scenario", ["healthy", "error-regression"])
def test_a_route_restored_to_an_older_state_does_not_bring_an_ended_rollout_back(
    web_policy: Policy, audit_path: Path, scenario: str
) -> None:
    """A `git revert` or a GitOps sync puts back the manifest as it stood at tick 1, after the rollout ended:
    its head is in the log, but changes the log records as applied came after it. `--resume` used to run the
    ended rollout again (a rolled-back canary promoted under the same id); now it is refused, and a person's
    rollback still goes ahead, with a note of why the route was not the rollout's."""
    runner, _, memory = rollout(web_policy, audit_path, scenario)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    key = (web_policy.target.namespace, web_policy.target.virtual_service)
    old = memory.read(web_policy.target)
    result = runner.run(resume=True)
    assert result.phase.ended
    memory._states[key] = old.state  # type: ignore[assignment]  # the older manifest, annotation and all
    memory.edit(web_policy.target, old.weights)
    with pytest.raises(ConflictError, match=r"^the route is older than .*: \d+ changes? the log records as applied"):
        again(runner, audit_path).open(resume=True)
    person = again(runner, audit_path)
    applied = person.manual("rollback", actor="user:ana", reason="restored by mistake")
    assert applied.written and memory.read(web_policy.target).weights == Weights(100, 0)
    notes = [r.reason for r in sealed(audit_path) if isinstance(r, NoteRecord)]
    assert any(n.startswith("the route is older than") and n.endswith("; rollback goes ahead") for n in notes)


def test_a_run_ended_by_a_persons_rollback_that_died_before_its_outcome_records_it(
    web_policy: Policy, audit_path: Path
) -> None:
    """The person's command wrote the route and died before recording the outcome; the run's next tick is the
    next command on the route. It used to end on its unlocked read, leaving the change open and printing a
    head the log did not hold."""
    runner, _, memory = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()

    runner.router.after = die
    with pytest.raises(Died):
        again(runner, audit_path).manual("rollback", actor="user:ana", reason="paged")
    runner.router.after = None
    assert memory.read(web_policy.target).weights == Weights(100, 0)
    runner.clock.sleep(60)
    ended = runner.tick()
    assert isinstance(ended, RolloutResult) and ended.phase is Phase.ROLLED_BACK
    last = sealed(audit_path)[-1]
    assert isinstance(last, OutcomeRecord) and last.result == "applied"
    assert ended.audit_head == list(read_records(audit_path))[-1].hash
    assert verify_chain(audit_path, ended.audit_head).ok


class Behind:
    """A host whose clock is `lag` seconds behind the one that judged the last window."""

    def __init__(self, clock: Any, lag: float) -> None:
        self.clock, self.lag = clock, lag

    def now(self) -> float:
        return float(self.clock.now()) - self.lag

    def sleep(self, seconds: float) -> None:
        self.clock.sleep(seconds)


def test_a_resume_on_a_host_whose_clock_is_behind_holds_until_it_catches_up(
    web_policy: Policy, audit_path: Path
) -> None:
    """It used to ask the source for a window ending before it starts, and end the rollout for good as a
    source failure."""
    runner, _, memory = rollout(web_policy, audit_path)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    late = again(runner, audit_path)
    late.clock = Behind(runner.clock, 30)
    late.open(resume=True)
    held = late.tick()
    assert isinstance(held, TickReport) and held.decision.action is Action.HOLD
    assert "behind the window the rollout last judged" in held.decision.reason
    state = memory.read(web_policy.target).state
    assert state is not None and state.phase is Phase.PROGRESSING and state.tick == 1
    late.clock.sleep(60)
    assert late.tick().decision.action is not Action.ABORT  # type: ignore[union-attr]
    assert verify_chain(audit_path).ok


def test_a_rollout_whose_start_never_reached_the_route_is_listed_as_not_started(
    web_policy: Policy, audit_path: Path
) -> None:
    """Killed before its first write: `audit list` used to show it progressing forever."""
    runner, _, _ = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)

    runner.router.before = die
    with pytest.raises(Died):
        runner.open()
    runner.router.before = None
    result = again(runner, audit_path).run()
    first, second = rollouts(read_records(audit_path))
    assert (first.outcome, first.changes_failed, first.changes_applied) == (NOT_STARTED, 1, 0)
    assert first.final_weights == Weights(100, 0), "what the route held"
    assert (second.rollout, second.outcome) == (result.rollout, "promoted")


def seed_manifest(tmp_path: Path) -> Path:
    """The seed's VirtualService (90/10) in a file, as `--manifest` keeps it."""
    path = tmp_path / "web-app-virtualservice.yaml"
    shutil.copy(SEED_VS, path)
    return path


def manifest_rollout(policy: Policy, tmp_path: Path) -> tuple[Runner, Path, Path]:
    """A rollout on the seed's VirtualService in a manifest, one tick in: the runner, the manifest, the log."""
    path = seed_manifest(tmp_path)
    audit_path = tmp_path / "audit.jsonl"
    runner, _, _ = rollout(policy, audit_path, router=lambda _: ManifestRouter(str(path)))
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    return runner, path, audit_path


def without_state(text: str) -> str:
    """The manifest a GitOps sync puts back: the state annotation gone, the weights as git has them."""
    doc = yaml.safe_load(text)
    doc["metadata"]["annotations"].pop(ANNOTATION)
    return yaml.safe_dump(doc)


def garbled_state(text: str) -> str:
    """The state annotation overwritten by hand with something canary cannot read."""
    doc = yaml.safe_load(text)
    doc["metadata"]["annotations"][ANNOTATION] = '{"rollout": "x"'
    return yaml.safe_dump(doc)


@pytest.mark.parametrize(("edit", "why"), [
    (without_state, "its state annotation was removed outside canary"),
    (garbled_state, f"annotation {ANNOTATION}"),
])  # fmt: skip
def test_a_route_that_loses_the_rollouts_state_mid_run_ends_it_aborted_with_a_record(
    web_policy: Policy, tmp_path: Path, edit: Any, why: str
) -> None:
    """A sync or a hand edit takes the state off the route while the rollout runs. The run used to stop with
    one line and no record, and `audit list` showed the rollout progressing for ever. Now the rollout ends
    aborted, recorded, and the route is left as found: nothing is written back over the person's change."""
    runner, path, audit_path = manifest_rollout(web_policy, tmp_path)
    path.write_text(edit(path.read_text()))
    edited = path.read_bytes()
    runner.clock.sleep(60)
    ended = runner.tick()
    assert isinstance(ended, RolloutResult) and ended.phase is Phase.ABORTED
    assert why in ended.decision.reason and "nothing written" in ended.decision.reason
    assert path.read_bytes() == edited, "the route is left as found"
    last = decisions(audit_path)[-1]
    assert (last.action, last.phase, last.writes) == (Action.ABORT, Phase.ABORTED, False)
    assert last.rollout == ended.rollout and last.weights_after == Weights(90, 10)
    (listed,) = rollouts(read_records(audit_path))
    assert (listed.rollout, listed.outcome) == (ended.rollout, Phase.ABORTED.value)
    assert ended.audit_head == list(read_records(audit_path))[-1].hash
    assert verify_chain(audit_path).ok


def test_an_older_state_of_the_rollout_put_back_mid_run_ends_it_aborted_with_a_record(
    web_policy: Policy, tmp_path: Path
) -> None:
    """A GitOps sync puts back the manifest as it was two ticks ago, state annotation included. The run
    used to carry on from that state: ticks 2, 3, 4 again, a window judged twice, and nothing on record.
    The route's head is older than changes the log holds as applied: the rollout ends aborted, recorded."""
    runner, path, audit_path = manifest_rollout(web_policy, tmp_path)
    older = path.read_bytes()
    for _ in range(2):
        runner.clock.sleep(60)
        runner.tick()
    assert runner.state is not None and runner.state.tick == 3
    path.write_bytes(older)
    runner.clock.sleep(60)
    ended = runner.tick()
    assert isinstance(ended, RolloutResult) and ended.phase is Phase.ABORTED, ended
    assert "holds an older state of rollout" in ended.decision.reason and "nothing written" in ended.decision.reason
    assert path.read_bytes() == older, "the route is left as found"
    ticks = [d.tick for d in decisions(audit_path) if d.action is not Action.ABORT]
    assert ticks == sorted(ticks), "no tick judged twice"
    assert decisions(audit_path)[-1].phase is Phase.ABORTED


def test_a_later_resume_takes_the_rollout_over_and_the_earlier_run_stops(web_policy: Policy, audit_path: Path) -> None:
    """Two `run --resume` on one route (two queued pipeline jobs): both used to drive the rollout, the second
    judging windows the first had judged. The later one carries it on; the earlier stops at its next tick
    with the rollout open, and writes nothing more."""
    runner, _, _ = rollout(web_policy, audit_path)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    later = again(runner, audit_path)
    later.open(resume=True)
    written = audit_path.read_bytes()
    runner.clock.sleep(60)
    stopped = runner.tick()
    assert isinstance(stopped, RolloutResult) and stopped.stopped and stopped.phase is Phase.PROGRESSING
    assert "another `canary run --resume` carries rollout" in stopped.decision.reason
    assert stopped.duration_s == 120, "timed to when it stopped, not to the route's last change (its start)"
    assert audit_path.read_bytes() == written, "the earlier run wrote nothing more"
    later.clock.sleep(60)
    assert isinstance(later.tick(), TickReport), "the later one goes on"


def test_a_rollout_a_restart_replaced_is_not_recorded_twice(web_policy: Policy, audit_path: Path) -> None:
    """The --restart recorded the old rollout's end; the old run's next tick stops without a second one."""
    runner, _, _ = rollout(web_policy, audit_path)
    runner.open()
    again(runner, audit_path).open(restart=True)
    runner.clock.sleep(60)
    stopped = runner.tick()
    assert isinstance(stopped, RolloutResult) and stopped.stopped and stopped.phase is Phase.ABORTED
    assert re.search(r"no longer holds rollout \w+ \(a --restart replaced it with \w+ and recorded its end\); "
                     "stopping", stopped.decision.reason), stopped.decision.reason  # fmt: skip
    ends = [r for r in decisions(audit_path) if r.action is Action.ABORT]
    assert [r.rollout for r in ends] == [runner.state.rollout]  # type: ignore[union-attr]


def test_a_torn_last_line_is_set_aside_and_the_rollout_goes_on(web_policy: Policy, audit_path: Path) -> None:
    runner, _, _ = rollout(web_policy, audit_path)
    runner.open()
    with audit_path.open("ab") as fh:
        fh.write(b'{"schema":1,"kind":"decision","tim')
    result = again(runner, audit_path).run(resume=True)
    assert result.phase is Phase.PROMOTED
    notes = [r for r in sealed(audit_path) if isinstance(r, NoteRecord)]
    assert len(notes) == 1 and "torn last line" in notes[0].reason
    assert verify_chain(audit_path, result.audit_head).ok


# --------------------------------------------------------------------------------------- people and signals


@pytest.mark.parametrize(("command", "phase", "weights"), [
    ("rollback", Phase.ROLLED_BACK, Weights(100, 0)),
    ("promote", Phase.PROMOTED, Weights(0, 100)),
])  # fmt: skip
def test_a_persons_command_during_a_rollout_joins_the_chain_and_ends_it(
    web_policy: Policy, audit_path: Path, command: Any, phase: Phase, weights: Weights
) -> None:
    runner, _, memory = rollout(web_policy, audit_path)
    runner.open()
    person = again(runner, audit_path)
    applied = person.manual(command, actor="user:ana", reason="paged", full=True)
    assert applied.written and memory.read(web_policy.target).weights == weights
    runner.clock.sleep(60)
    ended = runner.tick()
    assert isinstance(ended, RolloutResult) and ended.phase is phase
    assert "paged" in ended.decision.reason
    manual = decisions(audit_path)[-1]
    assert (manual.actor, manual.rollout, manual.action.value) == ("user:ana", runner.state.rollout, command)  # type: ignore[union-attr]
    assert verify_chain(audit_path, applied.head).ok


def test_a_cancel_is_recorded_leaves_the_weights_and_can_be_resumed(web_policy: Policy, audit_path: Path) -> None:
    runner, _, memory = rollout(web_policy, audit_path)
    runner.open()
    runner.clock.sleep(60)
    runner.tick()
    runner.cancel_flag.set("SIGTERM")
    result = runner.run(resume=True)
    assert result.phase is Phase.CANCELLED and memory.read(web_policy.target).weights == Weights(90, 10)
    last = decisions(audit_path)[-1]
    assert last.action is Action.CANCEL and "SIGTERM" in last.reason
    carried = again(runner, audit_path).run(resume=True)
    assert carried.phase is Phase.PROMOTED and carried.rollout == result.rollout
    assert verify_chain(audit_path, carried.audit_head).ok


def test_one_signal_delivered_twice_cancels_once_and_a_later_one_goes_to_the_previous_handler(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """GNU `timeout` signals the command, then its process group: the second SIGTERM came to the previous
    handler and ended the run with 143, nothing recorded, about half the time. A repeat within a second is
    the same signal; one after that still ends the process at once (here: the previous handler is told)."""
    told: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: told.append(signum))
    flag = CancelFlag()
    restore = flag.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
        assert flag.is_set and flag.signal == "SIGTERM" and told == []
        monkeypatch.setattr("canary.controller.SIGNAL_REPEAT_S", 0.0)
        os.kill(os.getpid(), signal.SIGTERM)
        assert told == [signal.SIGTERM]
    finally:
        restore()
        signal.signal(signal.SIGTERM, previous)


def test_a_route_refused_on_the_read_under_the_lock_stops_the_run_on_record(
    web_policy: Policy, audit_path: Path
) -> None:
    """The tick's first read answered, the one under the lock was refused (401): the run stopped with exit 2
    and the log said nothing, so `audit list` showed the rollout progressing at tick 0. It stops on record."""
    runner, _, memory = rollout(web_policy, audit_path)
    runner.open()
    reads = {"left": 1}

    class RefusedAfterOne:
        def read(self, target: Target, evidence: type | None = None) -> RouteRead:
            if reads["left"] <= 0:
                raise RouterError("VirtualService default/web-app: the API server refused our credentials (401)")
            reads["left"] -= 1
            return memory.read(target, evidence)

        def __getattr__(self, name: str) -> Any:
            return getattr(memory, name)

    runner.router = RefusedAfterOne()  # type: ignore[assignment]
    runner.clock.sleep(60)
    report = runner.tick()
    assert isinstance(report, TickReport) and report.decision.action is Action.STOP, report
    last = decisions(audit_path)[-1]
    assert last.action is Action.STOP and "401" in last.reason and not last.writes


def test_a_write_refused_for_good_says_why_in_the_decision_the_run_stops_with(
    web_policy: Policy, audit_path: Path
) -> None:
    """The run stopped with "holding at 10%: … (not made; stopping)": the refusal itself was only in the log."""
    runner, _, _ = rollout(web_policy, audit_path, router=Wrapped)
    assert isinstance(runner.router, Wrapped)
    runner.open()

    def refuse(weights: Weights, state: RolloutState) -> None:
        raise RouterError("403 the service account may no longer update virtualservices")

    runner.router.before = refuse
    runner.clock.sleep(60)
    report = runner.tick()
    assert isinstance(report, TickReport) and report.decision.action is Action.STOP
    assert "(not made: 403 the service account may no longer update virtualservices; stopping)" in (
        report.decision.reason
    )
