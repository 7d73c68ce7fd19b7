"""The rollout state machine, as a pure function: state + judgement + time -> decision and next state.

progressing(step N) --pass--> progressing(step N+1) ... --pass at the last judged step--> promoted
progressing --fail--> rolled back
progressing --deadline, no decision--> the policy's rule (rolled back as inconclusive, or promoted)
A step advances only on evidence: no data, no traffic or an inconclusive result holds the step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from canary.model import Action, Decision, Judgement, Outcome, Phase, Weights


@dataclass(frozen=True)
class RolloutState:
    steps: tuple[int, ...]
    step_index: int
    phase: Phase
    started_at: float
    step_started_at: float
    deadline: float
    on_deadline: str = "rollback"

    @property
    def weight(self) -> int:
        """The canary weight this state stands for."""
        if self.phase is Phase.ROLLED_BACK or (self.phase is Phase.INCONCLUSIVE and self.on_deadline == "rollback"):
            return 0
        return self.steps[self.step_index]

    @property
    def weights(self) -> Weights:
        return Weights.canary_at(self.weight)


def start(steps: tuple[int, ...], now: float, max_duration_s: float, on_deadline: str) -> tuple[RolloutState, Decision]:
    state = RolloutState(
        steps=steps,
        step_index=0,
        phase=Phase.PROGRESSING,
        started_at=now,
        step_started_at=now,
        deadline=now + max_duration_s,
        on_deadline=on_deadline,
    )
    if steps[0] == 100:
        done = replace(state, phase=Phase.PROMOTED)
        return done, Decision(Action.PROMOTE, done.weights, done.phase, "a single step of 100%: promoted at once")
    return state, Decision(Action.START, state.weights, state.phase, f"rollout started: canary at {steps[0]}%")


def decide(state: RolloutState, judgement: Judgement, now: float) -> tuple[RolloutState, Decision]:
    if state.phase.finished:
        return state, Decision(Action.HOLD, state.weights, state.phase, f"rollout already {state.phase.value}")
    if judgement.outcome is Outcome.FAIL:
        new = replace(state, phase=Phase.ROLLED_BACK)
        return new, Decision(Action.ROLLBACK, Weights.canary_at(0), new.phase, judgement.summary)
    if judgement.outcome is Outcome.PASS:
        nxt = state.step_index + 1
        if state.steps[nxt] == 100:
            new = replace(state, step_index=nxt, phase=Phase.PROMOTED, step_started_at=now)
            return new, Decision(
                Action.PROMOTE, new.weights, new.phase,
                f"{judgement.summary} at {state.weight}%",
            )  # fmt: skip
        new = replace(state, step_index=nxt, step_started_at=now)
        return new, Decision(
            Action.ADVANCE, new.weights, new.phase,
            f"{judgement.summary} at {state.weight}%; next step {new.weight}%",
        )  # fmt: skip
    if now >= state.deadline:
        if state.on_deadline == "promote":
            new = replace(state, phase=Phase.INCONCLUSIVE, step_index=len(state.steps) - 1)
            return new, Decision(
                Action.PROMOTE, Weights.canary_at(100), new.phase,
                f"deadline reached without a decision ({judgement.summary}); the policy promotes",
            )  # fmt: skip
        new = replace(state, phase=Phase.INCONCLUSIVE)
        return new, Decision(
            Action.ROLLBACK, Weights.canary_at(0), new.phase,
            f"deadline reached without a decision ({judgement.summary}); the policy rolls back",
        )  # fmt: skip
    return state, Decision(Action.HOLD, state.weights, state.phase, f"holding at {state.weight}%: {judgement.summary}")
