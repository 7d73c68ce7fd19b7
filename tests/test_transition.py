"""The rollout as a pure function: every event, failures included, and properties over any sequence of them."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import ConflictError
from canary.model import Action, Judgement, MetricWindow, Observation, Outcome, Phase, Ratio, Weights
from canary.policy import ErrorRateMetric, MetricSpec, Policy, Target, Webhook
from canary.state import RolloutState
from canary.transition import (
    Cancel,
    Context,
    Crash,
    Event,
    GateAnswer,
    Manual,
    Observed,
    Resume,
    RouterUnavailable,
    SourceFailed,
    Start,
    Transition,
    transition,
    write_failed,
)

T0 = 1_000.0
MAX = 600.0  # deadline at T0 + MAX
TARGET = Target("default", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")
EMPTY = Observation(0.0, 0.0, {})


@dataclass(frozen=True)
class Count:
    """Evidence that is only a count of ticks judged, so a test can see what carried over."""

    ticks: int = 0
    step: int = -1


class ScriptedJudge:
    """Answers the outcome it is told for the next observation; a pure function of its inputs."""

    name = "scripted"
    state_type = Count

    def __init__(self) -> None:
        self.next = Outcome.CONTINUE

    def start(self) -> Count:
        return Count()

    def judge(self, state: Count, observation: Observation, step: int) -> tuple[Count, Judgement]:
        return Count(state.ticks + 1, step), Judgement(self.next, (), f"judged {self.next.value}")

    def refuses(self, metric: MetricSpec) -> str | None:
        return None


def policy(steps: tuple[int, ...] = (10, 50, 100), on_deadline: str = "rollback") -> Policy:
    return Policy(
        name="t", target=TARGET, metrics=(ErrorRateMetric("errors", 0.01),), steps=steps, interval_s=60,
        max_duration_s=MAX, on_deadline=on_deadline,  # type: ignore[arg-type]
    )  # fmt: skip


def context(steps: tuple[int, ...] = (10, 50, 100), on_deadline: str = "rollback") -> Context:
    return Context(policy(steps, on_deadline), ScriptedJudge(), "tester")


ALL_BASELINE = Weights(100, 0)


def started(ctx: Context, weights: Weights = ALL_BASELINE) -> RolloutState:
    return transition(None, Start(T0, "r1", weights), ctx).state


def observe(state: RolloutState, ctx: Context, outcome: Outcome, now: float = T0 + 60) -> Transition:
    assert isinstance(ctx.judge, ScriptedJudge)
    ctx.judge.next = outcome
    return transition(state, Observed(now, state.weights, EMPTY), ctx)


def at_step(index: int, ctx: Context) -> RolloutState:
    state = started(ctx)
    for _ in range(index):
        state = observe(state, ctx, Outcome.PASS).state
    assert state.step_index == index and state.phase is Phase.PROGRESSING
    return state


# ------------------------------------------------------------------------------------------------ start


def test_start_puts_the_canary_at_the_first_step_with_fresh_evidence() -> None:
    ctx = context()
    t = transition(None, Start(T0, "r1", Weights(100, 0)), ctx)
    s = t.state
    assert (s.phase, s.step_index, s.weights, s.tick) == (Phase.PROGRESSING, 0, Weights(90, 10), 0)
    assert (s.started_at, s.step_started_at, s.deadline, s.observed_until) == (T0, T0, T0 + MAX, T0)
    assert s.evidence == Count() and s.policy_digest == ctx.digest and s.judge == "scripted"
    assert t.decision.action is Action.START and t.writes
    [record] = t.records
    assert record.weights_before == Weights(100, 0) and record.weights_after == Weights(90, 10)
    assert record.writes and record.actor == "tester" and record.tick == 0


def test_a_single_step_of_100_promotes_at_once() -> None:
    t = transition(None, Start(T0, "r1", Weights(100, 0)), context(steps=(100,)))
    assert (t.state.phase, t.decision.action, t.state.weights) == (Phase.PROMOTED, Action.PROMOTE, Weights(0, 100))


@pytest.mark.parametrize(("canary", "message"), [
    (50, "sends 50% to v2, more than the first step (10%): roll back first"),
    (100, "already sends all traffic to v2"),
])  # fmt: skip
def test_a_start_never_moves_traffic_back(canary: int, message: str) -> None:
    with pytest.raises(ConflictError, match=re.escape(message)):
        transition(None, Start(T0, "r1", Weights.canary_at(canary)), context())


def test_a_restart_starts_below_a_canarys_weight_but_never_takes_all_of_it_back() -> None:
    """After a promotion the baseline may be scaled away: `--restart` at 0/100 used to send 90% back to it."""
    ctx = context()
    promoted = observe(at_step(1, ctx), ctx, Outcome.PASS).state
    assert promoted.weights == Weights(0, 100)
    refused = "already sends all traffic to v2 (0/100): nothing to roll out (to roll it out again, `canary rollback`"
    with pytest.raises(ConflictError, match=re.escape(refused)):
        transition(promoted, Start(T0 + 200, "r2", promoted.weights, restart=True), ctx)
    half = transition(None, Start(T0, "r3", Weights(50, 50), restart=True), ctx)
    assert half.state.weights == Weights(90, 10)
    untouched = transition(None, Manual(T0, Weights(0, 100), "rollback", ""), ctx)
    assert untouched.state.weights == Weights(100, 0), "a person's rollback of a route at 100% goes ahead"


def test_a_start_from_the_first_steps_weight_keeps_it() -> None:
    """The seed's route is at 90/10 already: the rollout starts there, moving nothing."""
    t = transition(None, Start(T0, "r1", Weights(90, 10)), context())
    assert t.state.weights == Weights(90, 10) and t.records[0].weights_before == Weights(90, 10)


def test_an_open_rollout_needs_resume_or_restart() -> None:
    ctx = context()
    state = at_step(1, ctx)
    with pytest.raises(ConflictError, match=r"holds rollout r1 .progressing at 50%.*--resume.*--restart"):
        transition(state, Start(T0 + 70, "r2", state.weights), ctx)


def test_restart_abandons_the_open_rollout_with_a_record_and_starts_over() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, Start(T0 + 70, "r2", state.weights, restart=True), ctx)
    abandon, start = t.records
    assert (abandon.rollout, abandon.action, abandon.phase, abandon.writes) == (
        "r1",
        Action.ABORT,
        Phase.ABORTED,
        False,
    )
    assert "--restart" in abandon.reason
    assert (start.rollout, start.action, start.writes) == ("r2", Action.START, True)
    assert t.state.rollout == "r2" and t.state.weights == Weights(90, 10) and t.state.evidence == Count()


@pytest.mark.parametrize("phase", [Phase.PROMOTED, Phase.ROLLED_BACK, Phase.INCONCLUSIVE, Phase.ABORTED])
def test_a_new_rollout_may_start_after_one_has_ended(phase: Phase) -> None:
    ctx = context()
    ended = dataclasses.replace(started(ctx), phase=phase, weights=Weights(100, 0))
    assert transition(ended, Start(T0, "r2", Weights(100, 0)), ctx).state.rollout == "r2"


# ------------------------------------------------------------------------------------------------ ticks


def test_pass_advances_and_the_evidence_carries_over() -> None:
    ctx = context()
    t = observe(started(ctx), ctx, Outcome.PASS)
    assert t.decision.action is Action.ADVANCE and t.state.weights == Weights(50, 50)
    assert t.state.step_index == 1 and t.state.tick == 1 and t.state.evidence == Count(1, 0)
    assert t.state.observed_until == T0 + 60 and t.state.step_started_at == T0 + 60
    assert t.state.step_seconds == (60.0,)
    assert t.records[0].window is not None and t.records[0].judgement is not None


def test_pass_at_the_last_judged_step_promotes_to_100() -> None:
    ctx = context()
    t = observe(at_step(1, ctx), ctx, Outcome.PASS)
    assert (t.state.phase, t.decision.action, t.state.weights) == (Phase.PROMOTED, Action.PROMOTE, Weights(0, 100))
    assert t.stops


@pytest.mark.parametrize("index", [0, 1])
def test_fail_rolls_back_to_0_from_any_step(index: int) -> None:
    ctx = context()
    t = observe(at_step(index, ctx), ctx, Outcome.FAIL)
    assert (t.state.phase, t.decision.action, t.state.weights) == (Phase.ROLLED_BACK, Action.ROLLBACK, Weights(100, 0))


@pytest.mark.parametrize("outcome", [Outcome.CONTINUE, Outcome.NO_DATA])
def test_no_evidence_holds_the_step_but_the_state_moves_on(outcome: Outcome) -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = observe(state, ctx, outcome, now=T0 + 120)
    assert t.decision.action is Action.HOLD and t.state.weights == state.weights
    assert t.state.tick == state.tick + 1 and t.state.observed_until == T0 + 120 and t.writes


def serving(start: float, end: float, baseline: int, canary: int) -> Observation:
    """One interval's requests per version (0: the version has no series at all), one pod each."""
    pods = {
        "baseline": {"v1-a": Ratio(0, baseline)} if baseline else {},
        "canary": {"v2-a": Ratio(0, canary)} if canary else {},
    }
    return Observation(start, end, {"errors": MetricWindow(pods["baseline"], pods["canary"])})


def test_a_canary_without_series_while_its_weight_was_due_requests_is_rolled_back_naming_the_label() -> None:
    """From two minutes into the step (a new series may wait for its first scrape), 900 baseline requests a
    minute at 90/10 made 100 due to the canary; none shows for two windows (one could be a late or failed
    scrape), so its traffic is unmeasured: no judge is asked."""
    ctx = context()
    state = started(ctx)
    for minute in (1, 2, 3):  # windows starting 0 and 1 min into the step, then the first unseen: judged
        now = T0 + 60 * minute
        state = transition(state, Observed(now, state.weights, serving(now - 60, now, 900, 0)), ctx).state
        assert state.last.action is Action.HOLD and state.evidence == Count(minute, 0)
    assert state.unseen_since == T0 + 120
    t = transition(state, Observed(T0 + 240, state.weights, serving(T0 + 180, T0 + 240, 900, 0)), ctx)
    assert (t.state.phase, t.decision.action, t.state.weights) == (Phase.ROLLED_BACK, Action.ROLLBACK, ALL_BASELINE)
    assert t.state.evidence == Count(3, 0)
    assert t.decision.reason == (
        "no series for the canary v2 (destination_version='v2') of web-app.default.svc.cluster.local while v1 "
        "showed 900 requests: its traffic is not measured (are its pods labelled version: v2? does it serve?); "
        "about 100 were due at 90/10 (no series for 120 s)"
    )


@pytest.mark.parametrize("rule", ["promote", "rollback"])
def test_the_deadline_never_promotes_a_canary_that_shows_no_series(rule: str) -> None:
    """A rollout whose last window came before the grace and span of the absence rule (a short rollout): at
    its deadline the canary still shows no series while 100 requests were due to it. The rule may promote a
    canary nothing showed worse, not one nothing shows at all: rolled back, the reason naming the label."""
    ctx = context(on_deadline=rule)
    state = started(ctx)
    t = transition(state, Observed(T0 + MAX, state.weights, serving(T0, T0 + 60, 900, 0)), ctx)
    assert (t.state.phase, t.state.weights) == (Phase.ROLLED_BACK, ALL_BASELINE)
    assert t.decision.reason.startswith("no series for the canary v2 (destination_version='v2')")
    assert t.decision.reason.endswith("about 100 were due at 90/10, at the deadline")
    seen = transition(state, Observed(T0 + MAX, state.weights, serving(T0, T0 + 60, 900, 5)), ctx)
    assert seen.state.phase is Phase.INCONCLUSIVE, "a canary that shows, however little, follows the rule"


def test_one_window_without_the_canarys_series_is_a_late_scrape_not_its_absence() -> None:
    """A scrape of the canary's one pod that failed or landed late empties one window: the next one shows it,
    and the clock of its absence starts again."""
    ctx = context()
    state = at_step(0, ctx)
    start = state.step_started_at
    for minute, canary in ((3, 0), (4, 200), (5, 0), (6, 100)):
        now = start + 60 * minute
        t = transition(state, Observed(now, state.weights, serving(now - 60, now, 900, canary)), ctx)
        assert t.decision.action is Action.HOLD, (minute, t.decision.reason)
        state = t.state
        assert state.unseen_since == (now - 60 if canary == 0 else None)


@pytest.mark.parametrize(
    ("at", "baseline", "canary", "action"),
    [
        (0, 200, 0, Action.HOLD),  # 22 due at 90/10: seeing none is chance at this traffic
        (0, 900, 3, Action.HOLD),  # some canary series: the judge decides
        (1, 0, 40, Action.ROLLBACK),  # the baseline unseen at 50/50 while 40 were due to it
        (1, 0, 20, Action.HOLD),
    ],
)
def test_only_a_version_with_no_series_and_enough_requests_due_ends_the_rollout(
    at: int, baseline: int, canary: int, action: Action
) -> None:
    ctx = context()
    state = at_step(at, ctx)
    ctx.judge.next = Outcome.CONTINUE  # type: ignore[attr-defined]
    for now in (state.step_started_at + 180, state.step_started_at + 240):  # two windows without its series
        t = transition(state, Observed(now, state.weights, serving(now - 60, now, baseline, canary)), ctx)
        state = t.state
    assert t.decision.action is action
    if action is Action.ROLLBACK:
        assert t.decision.reason.startswith("no series for the baseline v1 (destination_version='v1')")


@pytest.mark.parametrize(("rule", "phase", "weights"), [
    ("rollback", Phase.INCONCLUSIVE, Weights(100, 0)),
    ("promote", Phase.INCONCLUSIVE, Weights(0, 100)),
])  # fmt: skip
def test_the_deadline_applies_the_policys_rule(rule: str, phase: Phase, weights: Weights) -> None:
    ctx = context(on_deadline=rule)
    t = observe(started(ctx), ctx, Outcome.CONTINUE, now=T0 + MAX)
    assert (t.state.phase, t.state.weights) == (phase, weights) and "deadline" in t.decision.reason
    assert observe(started(ctx), ctx, Outcome.CONTINUE, now=T0 + MAX - 1).state.phase is Phase.PROGRESSING


def test_a_deadline_reached_by_summed_intervals_is_reached() -> None:
    """300 intervals of 0.1 s add up to 30 s less float error: the deadline rule applies, not one more tick."""
    ctx = context()
    now = T0
    for _ in range(int(MAX * 10)):
        now += 0.1
    assert now < T0 + MAX
    t = observe(started(ctx), ctx, Outcome.CONTINUE, now=now)
    assert (t.state.phase, t.state.weights) == (Phase.INCONCLUSIVE, Weights(100, 0))


def test_evidence_at_the_deadline_wins_over_the_deadline_rule() -> None:
    ctx = context()
    assert observe(at_step(1, ctx), ctx, Outcome.PASS, now=T0 + MAX + 5).state.phase is Phase.PROMOTED


@pytest.mark.parametrize(("rule", "weights"), [("rollback", Weights(100, 0)), ("promote", Weights(0, 100))])
def test_a_pass_at_the_deadline_below_the_last_step_follows_the_deadline_rule(rule: str, weights: Weights) -> None:
    """A step up at the deadline would be judged by no one: it used to move 10% -> 50% for one interval, and
    the next tick rolled it back."""
    ctx = context(on_deadline=rule)
    t = observe(started(ctx), ctx, Outcome.PASS, now=T0 + MAX)
    assert (t.state.phase, t.state.weights) == (Phase.INCONCLUSIVE, weights)
    assert t.decision.reason.startswith("deadline reached before 50% could be judged (")
    early = observe(started(ctx), ctx, Outcome.PASS, now=T0 + MAX - 1)
    assert (early.state.phase, early.state.weights) == (Phase.PROGRESSING, Weights(50, 50))


def test_weights_changed_by_someone_else_abort_and_are_left_as_found() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, Observed(T0 + 120, Weights(70, 30), EMPTY), ctx)
    assert (t.state.phase, t.state.weights, t.decision.action) == (Phase.ABORTED, Weights(70, 30), Action.ABORT)
    assert "expected 50/50, found 70/30" in t.decision.reason and t.writes
    assert t.state.evidence == state.evidence, "nothing was judged"


@pytest.mark.parametrize(
    "event",
    [
        Observed(T0 + 120, Weights(70, 30), EMPTY),
        SourceFailed(T0 + 120, Weights(50, 50), "bad query", temporary=False),
        Manual(T0 + 120, Weights(50, 50), "rollback", "by hand"),
        Manual(T0 + 120, Weights(50, 50), "promote", "by hand", full=True),
    ],
    ids=["outside change", "source failure", "rollback by hand", "promote --full"],
)
def test_a_rollout_that_ends_mid_step_counts_that_steps_time(event: Event) -> None:
    """The first step took 60 s, the second ends 60 s in: both are counted, the second once."""
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, event, ctx)
    assert t.state.phase.ended and t.state.step_seconds == (60.0, 60.0)
    after = transition(t.state, Manual(T0 + 300, t.state.weights, "rollback", "again"), ctx)
    assert after.state.step_seconds == (60.0, 60.0), "an ended rollout's steps are not counted again"


def test_a_cancelled_rollout_counts_its_step_once_when_resumed_and_says_how_to_carry_it_on() -> None:
    ctx = context()
    state = at_step(1, ctx)
    cancelled = transition(state, Cancel(T0 + 90, state.weights, "SIGTERM"), ctx).state
    assert cancelled.step_seconds == (60.0,)
    for command in ("pause", "promote", "approve"):
        with pytest.raises(ConflictError, match=r"is cancelled: .*; it was cancelled and no command runs it: "
                           r"`canary run … --resume` carries it on"):  # fmt: skip
            transition(cancelled, Manual(T0 + 100, cancelled.weights, command, ""), ctx)  # type: ignore[arg-type]
    resumed = transition(cancelled, Resume(T0 + 120, cancelled.weights), ctx).state
    ctx.judge.next = Outcome.PASS  # type: ignore[attr-defined]
    promoted = transition(resumed, Observed(T0 + 180, resumed.weights, EMPTY), ctx).state
    assert promoted.phase is Phase.PROMOTED and promoted.step_seconds == (60.0, 120.0)


def test_a_temporary_source_failure_holds_without_moving_the_window() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, SourceFailed(T0 + 120, state.weights, "timeout", temporary=True), ctx)
    assert t.decision.action is Action.HOLD and t.state.observed_until == state.observed_until
    assert t.state.tick == state.tick + 1 and t.records[0].error == "timeout"


def test_a_source_still_down_at_the_deadline_does_not_promise_another_try() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, SourceFailed(state.deadline, state.weights, "Connection refused", temporary=True), ctx)
    assert t.state.phase is Phase.INCONCLUSIVE
    assert "metrics source unavailable (Connection refused)" in t.decision.reason
    assert "retrying next tick" not in t.decision.reason, t.decision.reason


def test_a_permanent_source_failure_aborts_with_the_weights_as_they_are() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, SourceFailed(T0 + 120, state.weights, "bad query", temporary=False), ctx)
    assert (t.state.phase, t.state.weights) == (Phase.ABORTED, Weights(50, 50)) and t.writes


@pytest.mark.parametrize(("temporary", "now", "action"), [
    (True, T0 + 60, Action.HOLD),
    (True, T0 + MAX, Action.STOP),
    (False, T0 + 60, Action.STOP),
])  # fmt: skip
def test_an_unreadable_route_writes_nothing(temporary: bool, now: float, action: Action) -> None:
    ctx = context()
    state = started(ctx)
    t = transition(state, RouterUnavailable(now, "503", temporary), ctx)
    assert t.decision.action is action and not t.writes and t.state == state
    assert t.records[0].weights_before is None and t.records[0].weights_after is None
    assert t.stops == (action is Action.STOP)


# ------------------------------------------------------------------------------------------ people, signals


@pytest.mark.parametrize(("command", "phase", "weights"), [
    ("promote", Phase.PROMOTED, Weights(0, 100)),
    ("rollback", Phase.ROLLED_BACK, Weights(100, 0)),
])  # fmt: skip
def test_a_manual_command_ends_the_open_rollout_in_its_chain(command: Any, phase: Phase, weights: Weights) -> None:
    ctx = context()
    state = at_step(1, ctx)
    person = dataclasses.replace(ctx, actor="user:ana")
    t = transition(state, Manual(T0 + 90, state.weights, command, "looks bad", full=True), person)
    assert (t.state.rollout, t.state.phase, t.state.weights) == ("r1", phase, weights)
    record = t.records[0]
    assert (record.actor, record.reason, record.judge, record.tick) == ("user:ana", "looks bad", None, None)
    assert t.state.last.actor == "user:ana" and t.writes


def test_a_manual_command_on_a_route_canary_never_touched_starts_its_history() -> None:
    t = transition(None, Manual(T0, Weights(90, 10), "rollback", ""), context())
    assert t.state.phase is Phase.ROLLED_BACK and t.state.weights == Weights(100, 0)
    assert t.state.rollout.startswith("manual-") and t.state.evidence is None
    assert t.records[0].reason == "rolled back by hand" and t.records[0].weights_before == Weights(90, 10)


def test_cancel_records_and_leaves_the_weights_and_resume_carries_on() -> None:
    ctx = context()
    state = at_step(1, ctx)
    t = transition(state, Cancel(T0 + 90, state.weights, "SIGTERM"), ctx)
    assert (t.state.phase, t.state.weights, t.decision.action) == (Phase.CANCELLED, Weights(50, 50), Action.CANCEL)
    assert "SIGTERM" in t.decision.reason and t.stops and t.writes
    resumed = transition(t.state, Resume(T0 + 300, t.state.weights), ctx)
    assert resumed.state.phase is Phase.PROGRESSING and resumed.state.evidence == state.evidence
    assert resumed.decision.action is Action.RESUME and resumed.state.step_index == 1


def test_resume_refuses_another_policy_and_an_ended_rollout() -> None:
    ctx = context()
    state = at_step(1, ctx)
    other = context(steps=(5, 100))
    with pytest.raises(ConflictError, match="started with another policy or judge"):
        transition(state, Resume(T0 + 90, state.weights), other)
    done = observe(state, ctx, Outcome.PASS).state
    with pytest.raises(ConflictError, match=r"has ended .promoted.; nothing to resume"):
        transition(done, Resume(T0 + 200, done.weights), ctx)


def test_a_crash_aborts_with_the_error_in_the_record() -> None:
    ctx = context()
    t = transition(at_step(1, ctx), Crash(T0 + 90, Weights(50, 50), "ZeroDivisionError: x"), ctx)
    assert t.state.phase is Phase.ABORTED and t.records[0].error == "ZeroDivisionError: x"


@pytest.mark.parametrize("event", [
    Observed(T0 + 60, Weights(0, 100), EMPTY),
    Cancel(T0 + 60, Weights(0, 100), "SIGINT"),
    SourceFailed(T0 + 60, Weights(0, 100), "x", True),
])  # fmt: skip
def test_an_ended_rollout_takes_no_more_ticks(event: Event) -> None:
    ctx = context()
    done = observe(at_step(1, ctx), ctx, Outcome.PASS).state
    with pytest.raises(ConflictError, match="is promoted, not progressing"):
        transition(done, event, ctx)


@pytest.mark.parametrize(("temporary", "now", "stop"), [(True, T0 + 60, False), (False, T0 + 60, True),
                                                        (True, T0 + MAX, True)])  # fmt: skip
def test_a_failed_write_is_an_outcome_and_stops_only_when_no_retry_can_help(
    temporary: bool, now: float, stop: bool
) -> None:
    ctx = context()
    t = observe(started(ctx), ctx, Outcome.PASS)
    outcome, stops = write_failed(t, "503 etcd", temporary=temporary, now=now)
    assert outcome.result == "failed" and "not made: 503 etcd" in outcome.reason and stops is stop
    assert outcome.weights == Weights(90, 10), "the route still holds what it held"


def test_the_input_state_is_never_changed() -> None:
    ctx = context()
    state = at_step(1, ctx)
    copy = dataclasses.replace(state)
    for outcome in Outcome:
        observe(state, ctx, outcome)
    assert state == copy


# ------------------------------------------------------------------------------------------- properties

steps_strategy = st.lists(st.integers(1, 99), unique=True, max_size=5).map(lambda xs: (*sorted(xs), 100))
events_strategy = st.lists(
    st.tuples(st.sampled_from([*Outcome, "source-down", "router-down", "cancel-resume"]), st.floats(0, 300)),
    max_size=30,
)


@given(steps_strategy, st.sampled_from(["rollback", "promote"]), events_strategy)
def test_weights_take_step_values_only_and_never_fall_except_to_zero(
    steps: tuple[int, ...], on_deadline: str, events: list[tuple[Any, float]]
) -> None:
    ctx = context(steps, on_deadline)
    state = started(ctx)
    allowed = {*steps, 0}
    weight, now = state.weights.canary, T0
    for kind, wait in events:
        if state.phase.ended:
            break
        now += wait
        before = state
        if kind == "source-down":
            t = transition(state, SourceFailed(now, state.weights, "x", True), ctx)
        elif kind == "router-down":
            t = transition(state, RouterUnavailable(now, "x", True), ctx)
        elif kind == "cancel-resume":
            cancelled = transition(state, Cancel(now, state.weights, "SIGTERM"), ctx).state
            t = transition(cancelled, Resume(now, cancelled.weights), ctx)
        else:
            t = observe(state, ctx, kind, now)
        state = t.state
        new = state.weights.canary
        assert new in allowed and (new >= weight or new == 0), f"weight fell from {weight} to {new}"
        assert t.decision.weights == state.weights or not t.writes
        quiet = kind in (Outcome.CONTINUE, Outcome.NO_DATA, "source-down", "router-down", "cancel-resume")
        if quiet and now < before.deadline:
            assert new == weight, "no evidence must not move the weights before the deadline"
        if new == 100 and weight != 100:
            assert kind is Outcome.PASS or (on_deadline == "promote" and now >= before.deadline)
        weight = new


# ------------------------------------------------------------------------------------------ gates


def gated(rule: str = "rollback", max_wait_s: float = 300.0, approvals: tuple[int, ...] = ()) -> Context:
    gate = Webhook("board", "gate", url="http://127.0.0.1:9/", steps=(50,), max_wait_s=max_wait_s,
                   on_timeout=rule)  # type: ignore[arg-type]  # fmt: skip
    return Context(dataclasses.replace(policy(), webhooks=(gate,), approvals=approvals), ScriptedJudge(), "tester")


def answered(state: RolloutState, ctx: Context, outcome: Outcome, now: float, *answers: GateAnswer) -> Transition:
    assert isinstance(ctx.judge, ScriptedJudge)
    ctx.judge.next = outcome
    return transition(state, Observed(now, state.weights, EMPTY, answers), ctx)


NO, YES = GateAnswer("board", 50, False, "answered HTTP 503"), GateAnswer("board", 50, True, "HTTP 200")


def test_a_passed_step_waits_at_a_webhook_gate_until_it_says_go() -> None:
    ctx = gated()
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    assert waiting.state.phase is Phase.WAITING and waiting.state.weights == Weights(90, 10)
    assert waiting.state.waiting_since == T0 + 60 and "waiting to go to 50% for gate board" in waiting.decision.reason
    still = answered(waiting.state, ctx, Outcome.PASS, T0 + 120, NO)
    assert still.state.phase is Phase.WAITING and "gate board: answered HTTP 503" in still.decision.reason
    assert still.records[0].gates == [dataclasses.asdict(NO)] and still.state.waiting_since == T0 + 60
    gone = answered(still.state, ctx, Outcome.PASS, T0 + 180, YES)
    assert (gone.decision.action, gone.state.weights, gone.state.phase) == (Action.ADVANCE, Weights(50, 50),
                                                                             Phase.PROGRESSING)  # fmt: skip
    assert "gate board said go (HTTP 200)" in gone.decision.reason and gone.state.waiting_since is None
    assert gone.state.opened == ("board@50",)


def test_a_gate_never_blocks_a_rollback() -> None:
    ctx = gated()
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    failed = answered(waiting.state, ctx, Outcome.FAIL, T0 + 120, NO)
    assert (failed.state.phase, failed.state.weights) == (Phase.ROLLED_BACK, Weights(100, 0))


@pytest.mark.parametrize(("rule", "phase", "weights"), [
    ("rollback", Phase.ROLLED_BACK, Weights(100, 0)),
    ("continue", Phase.PROGRESSING, Weights(50, 50)),
])  # fmt: skip
def test_a_gate_saying_wait_past_its_max_wait_is_settled_by_its_rule(rule: str, phase: Phase, weights: Weights) -> None:
    ctx = gated(rule, max_wait_s=120)
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    before = answered(waiting.state, ctx, Outcome.PASS, T0 + 120, NO)
    assert before.state.phase is Phase.WAITING
    settled = answered(before.state, ctx, Outcome.PASS, T0 + 180, NO)
    assert (settled.state.phase, settled.state.weights) == (phase, weights)
    assert "still said wait after 2 min: answered HTTP 503" in settled.decision.reason
    assert f"its timeout rule {'rolls back' if rule == 'rollback' else 'goes on'}" in settled.decision.reason


def test_the_deadline_while_waiting_follows_the_policys_deadline_rule_and_never_opens_the_gate() -> None:
    ctx = gated(max_wait_s=10 * MAX)
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    ended = answered(waiting.state, ctx, Outcome.PASS, T0 + MAX, NO)
    assert (ended.state.phase, ended.state.weights) == (Phase.INCONCLUSIVE, Weights(100, 0))
    assert "still waiting for gate board" in ended.decision.reason


def test_an_approval_and_a_gate_on_one_step_both_must_open() -> None:
    ctx = gated(approvals=(50,))
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    said_go = answered(waiting.state, ctx, Outcome.PASS, T0 + 120, YES)
    assert said_go.state.phase is Phase.WAITING and "a person's approval" in said_go.decision.reason
    assert "gate board" not in said_go.decision.reason.split("waiting to go")[1], "the gate's go is remembered"
    approved = transition(said_go.state, Manual(T0 + 130, said_go.state.weights, "approve", "ok"), ctx)
    gone = answered(approved.state, ctx, Outcome.PASS, T0 + 180)
    assert gone.state.weights == Weights(50, 50)


# ------------------------------------------------------------------------------------------ promote a step


def test_a_persons_promote_moves_an_open_rollout_one_step_past_its_gates_and_full_goes_to_100() -> None:
    ctx = gated()
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    step = transition(waiting.state, Manual(T0 + 70, waiting.state.weights, "promote", "load test fine"), ctx)
    assert (step.decision.action, step.state.phase, step.state.weights) == (Action.ADVANCE, Phase.PROGRESSING,
                                                                             Weights(50, 50))  # fmt: skip
    assert step.state.step_index == 1 and step.state.step_started_at == T0 + 70 and step.writes
    assert step.decision.reason == "load test fine: canary from 10% to 50%"
    last = transition(step.state, Manual(T0 + 80, step.state.weights, "promote", ""), ctx)
    assert (last.decision.action, last.state.phase, last.state.weights) == (Action.PROMOTE, Phase.PROMOTED,
                                                                             Weights(0, 100))  # fmt: skip
    with pytest.raises(ConflictError, match=r"only an open rollout has a next step.*--full"):
        transition(last.state, Manual(T0 + 90, last.state.weights, "promote", ""), ctx)
    with pytest.raises(ConflictError, match="has no rollout"):
        transition(None, Manual(T0, Weights(90, 10), "promote", ""), ctx)
    full = transition(None, Manual(T0, Weights(90, 10), "promote", "", full=True), ctx)
    assert full.state.phase is Phase.PROMOTED and full.state.weights == Weights(0, 100)


def test_the_deadline_never_promotes_past_a_closed_gate_even_when_the_policy_promotes() -> None:
    ctx = gated(max_wait_s=10 * MAX)
    ctx = dataclasses.replace(ctx, policy=dataclasses.replace(ctx.policy, on_deadline="promote"))
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    ended = answered(waiting.state, ctx, Outcome.PASS, T0 + MAX, NO)
    assert (ended.state.phase, ended.state.weights) == (Phase.INCONCLUSIVE, Weights(100, 0))
    assert "no rule opens a gate" in ended.decision.reason


def test_a_gate_times_out_only_on_a_tick_it_was_asked_and_a_go_counts_whatever_the_judgement() -> None:
    ctx = gated(max_wait_s=120)
    waiting = answered(started(ctx), ctx, Outcome.PASS, T0 + 60)
    unasked = answered(waiting.state, ctx, Outcome.PASS, T0 + 400)  # long past maxWait, but not asked
    assert unasked.state.phase is Phase.WAITING and unasked.state.weights == Weights(90, 10)
    held = answered(unasked.state, ctx, Outcome.CONTINUE, T0 + 460, YES)
    assert held.state.opened == ("board@50",) and held.state.weights == Weights(90, 10)
    gone = answered(held.state, ctx, Outcome.PASS, T0 + 520)
    assert gone.state.weights == Weights(50, 50), "the go was remembered"


def test_a_step_promote_judges_the_new_step_from_its_own_traffic_and_keeps_a_pause() -> None:
    ctx = context()
    state = started(ctx)
    paused = transition(state, Manual(T0 + 30, state.weights, "pause", ""), ctx).state
    stepped = transition(paused, Manual(T0 + 90, paused.weights, "promote", ""), ctx).state
    assert stepped.observed_until == T0 + 90 and stepped.step_started_at == T0 + 90
    assert stepped.phase is Phase.PAUSED and stepped.paused_at == T0 + 90
    going = transition(stepped, Manual(T0 + 150, stepped.weights, "continue", ""), ctx).state
    assert going.step_started_at == T0 + 150 and going.deadline == paused.deadline + 120, "paused 120 s in all"
