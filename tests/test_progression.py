"""The rollout state machine as a pure function: every transition, and properties over any outcome sequence."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary import progression
from canary.model import Action, Judgement, Outcome, Phase, Weights
from canary.progression import RolloutState

STEPS = (10, 50, 100)
T0 = 1_000.0
MAX = 600.0  # deadline at T0 + MAX


def judged(outcome: Outcome) -> Judgement:
    return Judgement(outcome, (), f"judged {outcome.value}")


def started(steps: tuple[int, ...] = STEPS, on_deadline: str = "rollback") -> RolloutState:
    state, _ = progression.start(steps, T0, MAX, on_deadline)
    return state


def at_step(index: int, on_deadline: str = "rollback") -> RolloutState:
    state = started(on_deadline=on_deadline)
    for _ in range(index):
        state, _ = progression.decide(state, judged(Outcome.PASS), T0 + 1)
    assert state.step_index == index and state.phase is Phase.PROGRESSING
    return state


def test_start_puts_the_canary_at_the_first_step() -> None:
    state, decision = progression.start(STEPS, T0, MAX, "rollback")
    assert (state.phase, state.step_index, state.weight) == (Phase.PROGRESSING, 0, 10)
    assert (state.started_at, state.step_started_at, state.deadline) == (T0, T0, T0 + MAX)
    assert decision.action is Action.START
    assert decision.weights == Weights(baseline=90, canary=10)
    assert decision.reason == "rollout started: canary at 10%"


def test_a_single_step_of_100_promotes_at_once() -> None:
    state, decision = progression.start((100,), T0, MAX, "rollback")
    assert state.phase is Phase.PROMOTED
    assert decision.action is Action.PROMOTE
    assert decision.weights == Weights(baseline=0, canary=100)


def test_pass_advances_to_the_next_step() -> None:
    state, decision = progression.decide(started(), judged(Outcome.PASS), T0 + 60)
    assert (state.phase, state.step_index, state.step_started_at) == (Phase.PROGRESSING, 1, T0 + 60)
    assert decision.action is Action.ADVANCE
    assert decision.weights == Weights(baseline=50, canary=50)
    assert decision.reason == "judged pass at 10%; next step 50%"


def test_pass_at_the_last_judged_step_promotes_to_100() -> None:
    state, decision = progression.decide(at_step(1), judged(Outcome.PASS), T0 + 120)
    assert state.phase is Phase.PROMOTED
    assert state.weight == 100
    assert decision.action is Action.PROMOTE
    assert decision.weights == Weights(baseline=0, canary=100)
    assert decision.reason == "judged pass at 50%"


@pytest.mark.parametrize("index", [0, 1])
def test_fail_rolls_back_to_0_from_any_step(index: int) -> None:
    state, decision = progression.decide(at_step(index), judged(Outcome.FAIL), T0 + 60)
    assert state.phase is Phase.ROLLED_BACK
    assert state.weight == 0
    assert decision.action is Action.ROLLBACK
    assert decision.weights == Weights(baseline=100, canary=0)
    assert decision.reason == "judged fail"


@pytest.mark.parametrize("outcome", [Outcome.CONTINUE, Outcome.NO_DATA])
@pytest.mark.parametrize("index", [0, 1])
def test_continue_and_no_data_hold_the_step(outcome: Outcome, index: int) -> None:
    """No data is neither a pass nor a failure: the step and its clock stay as they were."""
    before = at_step(index)
    state, decision = progression.decide(before, judged(outcome), T0 + 60)
    assert state == before
    assert decision.action is Action.HOLD
    assert decision.phase is Phase.PROGRESSING
    assert decision.weights == before.weights


@pytest.mark.parametrize("outcome", [Outcome.CONTINUE, Outcome.NO_DATA])
def test_deadline_without_decision_rolls_back_as_inconclusive(outcome: Outcome) -> None:
    state, decision = progression.decide(at_step(1), judged(outcome), T0 + MAX)
    assert state.phase is Phase.INCONCLUSIVE
    assert state.weight == 0
    assert decision.action is Action.ROLLBACK
    assert decision.weights == Weights(baseline=100, canary=0)
    assert decision.reason == f"deadline reached without a decision (judged {outcome.value}); the policy rolls back"


def test_deadline_with_on_deadline_promote_goes_to_100() -> None:
    state, decision = progression.decide(at_step(0, "promote"), judged(Outcome.NO_DATA), T0 + MAX + 1)
    assert state.phase is Phase.INCONCLUSIVE
    assert state.weight == 100
    assert decision.action is Action.PROMOTE
    assert decision.weights == Weights(baseline=0, canary=100)


def test_just_before_the_deadline_still_holds() -> None:
    state, decision = progression.decide(started(), judged(Outcome.CONTINUE), T0 + MAX - 0.001)
    assert state.phase is Phase.PROGRESSING
    assert decision.action is Action.HOLD


@pytest.mark.parametrize(
    ("outcome", "phase", "canary"), [(Outcome.PASS, Phase.PROGRESSING, 50), (Outcome.FAIL, Phase.ROLLED_BACK, 0)]
)
def test_evidence_at_the_deadline_wins_over_the_deadline_rule(outcome: Outcome, phase: Phase, canary: int) -> None:
    state, decision = progression.decide(started(), judged(outcome), T0 + MAX + 1)
    assert state.phase is phase
    assert decision.weights.canary == canary


def finished(phase: Phase) -> RolloutState:
    if phase is Phase.ROLLED_BACK:
        return progression.decide(started(), judged(Outcome.FAIL), T0 + 1)[0]
    if phase is Phase.PROMOTED:
        return progression.decide(at_step(1), judged(Outcome.PASS), T0 + 1)[0]
    return progression.decide(started(), judged(Outcome.NO_DATA), T0 + MAX)[0]


@pytest.mark.parametrize("phase", [Phase.ROLLED_BACK, Phase.PROMOTED, Phase.INCONCLUSIVE])
@pytest.mark.parametrize("outcome", list(Outcome))
def test_decide_after_finished_is_a_no_op(phase: Phase, outcome: Outcome) -> None:
    done = finished(phase)
    assert done.phase is phase
    state, decision = progression.decide(done, judged(outcome), T0 + 10 * MAX)
    assert state == done
    assert decision.action is Action.HOLD
    assert decision.weights == done.weights
    assert decision.reason == f"rollout already {phase.value}"


steps_strategy = st.lists(st.integers(1, 99), unique=True, max_size=5).map(lambda xs: (*sorted(xs), 100))
outcomes_strategy = st.lists(st.tuples(st.sampled_from(list(Outcome)), st.floats(0, 300)), max_size=30)


@given(steps_strategy, st.sampled_from(["rollback", "promote"]), outcomes_strategy)
def test_weights_only_take_step_values_and_never_fall_except_to_zero(
    steps: tuple[int, ...], on_deadline: str, outcomes: list[tuple[Outcome, float]]
) -> None:
    state, decision = progression.start(steps, T0, MAX, on_deadline)
    allowed = {*steps, 0}
    weight = decision.weights.canary
    assert weight in allowed
    now = T0
    for outcome, wait in outcomes:
        now += wait
        was_finished = state.phase.finished
        previous_state = state
        state, decision = progression.decide(state, judged(outcome), now)
        new = decision.weights.canary
        assert new in allowed
        assert new >= weight or new == 0, f"weight fell from {weight} to {new}"
        assert decision.weights == state.weights, "the decision and the state must agree on the weights"
        if was_finished:
            assert state == previous_state and new == weight, "a finished rollout must stay finished"
        elif outcome in (Outcome.CONTINUE, Outcome.NO_DATA) and now < previous_state.deadline:
            assert new == weight, "no evidence must not move the weights before the deadline"
        if new == 100 and weight != 100:
            assert outcome is Outcome.PASS or (on_deadline == "promote" and now >= previous_state.deadline)
        weight = new
