"""The rollout as a pure function: (state, event) -> (state', decision, records).

Every input is an event, failures included: a tick's observation, a source that failed, a router that
could not be read, a person's promote or rollback, a signal, a crash, a write that failed. Nothing here
reads a clock, a file or a server, so every path — the deadline, a 409, a cancel during a step — is a
plain function call in the tests. The runner (`controller.py`) only reads, calls this, records, writes.

progressing(step N) --pass--> progressing(step N+1) ... --pass at the last judged step--> promoted
progressing --fail--> rolled back
progressing --deadline, no decision--> the policy's rule (rolled back as inconclusive, or promoted)
progressing --signal--> cancelled --resume--> progressing
any --a person's promote / rollback--> promoted / rolled back
progressing --weights changed by someone else, a permanent failure, a bug--> aborted
A step advances only on evidence: no data, no traffic or an inconclusive result holds the step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from canary import __version__
from canary.errors import ConflictError
from canary.judges import Judge
from canary.model import Action, Decision, Judgement, Observation, Outcome, Phase, Weights
from canary.policy import Policy
from canary.records import DecisionRecord, OutcomeRecord, PolicyRef, RouteName, Window
from canary.report import judgement_dict, observation_dict, unseen_version, version_counts
from canary.state import LastDecision, RolloutState, gate_key, policy_digest

ENGINE = f"canary {__version__}"
TIME_SLACK_S = 0.001  # a clock that adds 0.1 s intervals 300 times reaches 30 s minus float error, not 30
UNSEEN_EXPECTED = 30  # requests a version's weight was due in an interval before seeing none of them is
# evidence (a Poisson count of mean 30 is 0 with probability 1e-13), not chance at low traffic
UNSEEN_GRACE_S = 120.0  # a step's new series may wait this long for their first scrape (30 s scrapes, and
# their first sample may come a scrape later), or one interval if longer


@dataclass(frozen=True)
class Context:
    """What every transition is computed with: the policy, its judge, and who is acting."""

    policy: Policy
    judge: Judge
    actor: str
    digest: str = ""  # the policy's digest; computed when not given (give it: it is not free)
    simulated: bool = False  # a rollout started here runs on simulated time (the embedded mesh's)
    runner: str = ""  # the `canary run` acting (its id), which a rollout it starts or resumes names
    release: str = ""  # what a rollout it starts rolls out (`run --release`)

    def __post_init__(self) -> None:
        if not self.digest:
            object.__setattr__(self, "digest", policy_digest(self.policy))


# ------------------------------------------------------------------------------------------------ events


@dataclass(frozen=True)
class Start:
    now: float
    rollout: str
    weights: Weights  # as read from the route
    restart: bool = False  # --restart: abandon an open rollout, start from whatever the weights are


@dataclass(frozen=True)
class Resume:
    now: float
    weights: Weights


@dataclass(frozen=True)
class GateAnswer:
    """What a webhook gate answered when asked to let the canary move to `weight`."""

    name: str
    weight: int
    go: bool
    detail: str  # "HTTP 200", "HTTP 503", "could not be reached (...)"


@dataclass(frozen=True)
class Observed:
    now: float
    weights: Weights
    observation: Observation
    gates: tuple[GateAnswer, ...] = ()  # asked before this tick when the rollout was waiting at a gate


@dataclass(frozen=True)
class SourceFailed:
    now: float
    weights: Weights
    error: str
    temporary: bool
    gates: tuple[GateAnswer, ...] = ()


@dataclass(frozen=True)
class RouterUnavailable:
    """The route could not be read: the state is the last one this command knew."""

    now: float
    error: str
    temporary: bool


ManualCommand = Literal["promote", "rollback", "pause", "continue", "approve"]


@dataclass(frozen=True)
class Manual:
    now: float
    weights: Weights
    command: ManualCommand
    reason: str
    full: bool = False  # promote: straight to 100% (else the next step)


@dataclass(frozen=True)
class Cancel:
    now: float
    weights: Weights
    signal: str


@dataclass(frozen=True)
class Crash:
    now: float
    weights: Weights | None
    error: str


@dataclass(frozen=True)
class StateLost:
    """The route no longer holds the rollout's state and no command of canary's ended it (its annotation was
    removed or overwritten from outside, or the route was restored to an older one): the rollout ends where
    the route stands, and nothing is written (the route is left as found)."""

    now: float
    weights: Weights  # as read from the route
    why: str


Event = Start | Resume | Observed | SourceFailed | RouterUnavailable | Manual | Cancel | Crash | StateLost


@dataclass(frozen=True)
class Transition:
    state: RolloutState  # what the route holds once `records[-1]` is applied (unchanged if nothing is written)
    decision: Decision
    records: tuple[DecisionRecord, ...]  # appended in order, before the write
    judgement: Judgement | None = None

    @property
    def writes(self) -> bool:
        return bool(self.records) and self.records[-1].writes

    @property
    def stops(self) -> bool:
        """The command ends after this: the rollout ended, was cancelled, or cannot go on from here."""
        return not self.state.phase.open or self.decision.action is Action.STOP


def transition(state: RolloutState | None, event: Event, ctx: Context) -> Transition:
    match event:
        case Start():
            return _start(state, event, ctx)
        case Manual():
            return _manual(state, event, ctx)
    if state is None:
        raise ConflictError(f"no rollout on {_route(ctx)} to {type(event).__name__.lower()}")
    if not isinstance(event, Resume) and not state.phase.open:
        raise ConflictError(f"rollout {state.rollout} on {_route(ctx)} is {state.phase.value}, not progressing")
    match event:
        case Resume():
            return _resume(state, event, ctx)
        case Observed():
            return _observed(state, event, ctx)
        case SourceFailed():
            return _source_failed(state, event, ctx)
        case RouterUnavailable():
            return _router_unavailable(state, event, ctx)
        case Cancel():
            return _end(state, ctx, event.now, event.weights, Action.CANCEL, Phase.CANCELLED, _cancelled(event))
        case Crash():
            return _crash(state, event, ctx)
        case StateLost():
            return _state_lost(state, event, ctx)
    raise TypeError(f"not an event: {event!r}")


def write_failed(transition_: Transition, error: str, *, temporary: bool, now: float) -> tuple[OutcomeRecord, bool]:
    """The outcome of a write that failed, and whether the command must stop (else: retry next tick).

    The route still holds the state before the transition, so the rollout stands where it was; a temporary
    failure before the deadline is tried again (the next tick judges afresh and, for a rollback, decides it
    again), anything else stops the command with the rollout open on the route.
    """
    decision = transition_.records[-1]
    stop = not temporary or _past(now, transition_.state.deadline)
    tail = "" if stop else "; the rollout stands where it was and the next tick tries again"
    outcome = OutcomeRecord(
        time=now,
        rollout=decision.rollout,
        of="",  # filled in by the runner with the decision's hash
        result="failed",
        weights=decision.weights_before,
        reason=f"not made: {error}{tail}",
    )
    return outcome, stop


# ------------------------------------------------------------------------------------------ the events


def _start(state: RolloutState | None, event: Start, ctx: Context, *, seed: bool = False) -> Transition:
    """A new rollout (`seed`: only the state a person's first command on an untouched route begins from)."""
    policy = ctx.policy
    records: list[DecisionRecord] = []
    if state is not None and not state.phase.ended:
        if not event.restart:
            raise ConflictError(
                f"{_route(ctx)} holds rollout {state.rollout} ({state.phase.value} at {state.weights.canary}%, "
                f"tick {state.tick}): carry it on with --resume, start over with --restart, or roll it back"
            )
        abandoned = _end(
            state, ctx, event.now, event.weights, Action.ABORT, Phase.ABORTED,
            f"abandoned at {event.weights}: a new rollout was started with --restart",
        )  # fmt: skip
        records.extend(abandoned.records)
        records[-1] = dataclasses.replace(records[-1], writes=False)  # the new rollout's write replaces it
    if not seed:
        _check_start(event.weights, policy, ctx, restart=event.restart)
    first = policy.steps[0]
    phase, action = (Phase.PROMOTED, Action.PROMOTE) if first == 100 else (Phase.PROGRESSING, Action.START)
    reason = (
        ("a single step of 100%: promoted at once" if first == 100 else f"rollout started: canary at {first}%")
        + (f" (from {event.weights})" if event.weights.canary != first else "")
        + (f"; release {ctx.release}" if ctx.release else "")
    )
    new = RolloutState(
        rollout=event.rollout,
        policy=policy.name,
        policy_digest=ctx.digest,
        judge=ctx.judge.name,
        phase=phase,
        steps=policy.steps,
        step_index=0,
        weights=Weights.canary_at(first),
        started_at=event.now,
        step_started_at=event.now,
        deadline=event.now + policy.max_duration_s,
        on_deadline=policy.on_deadline,
        tick=0,
        observed_until=event.now,
        evidence=ctx.judge.start(),
        last=LastDecision(event.now, action, reason, ctx.actor, 0),
        audit_head="",
        simulated=ctx.simulated,
        runner=ctx.runner,
        release=ctx.release,
    )
    decision = Decision(action, new.weights, phase, reason)
    records.append(_record(new, ctx, event.now, event.weights, decision, tick=0))
    return Transition(new, decision, tuple(records))


def _check_start(weights: Weights, policy: Policy, ctx: Context, *, restart: bool) -> None:
    """A rollout starts with the canary at no more than its first step: never moves traffic back. A restart
    may start below the canary's weight, but never takes traffic back from a canary that has it all (the
    baseline may have been scaled away since)."""
    first = policy.steps[0]
    if weights.canary == 100 and first != 100:
        raise ConflictError(
            f"{_route(ctx)} already sends all traffic to {policy.target.canary} ({weights}): nothing to roll out "
            "(to roll it out again, `canary rollback` first)"
        )
    if weights.canary > first and not restart:
        raise ConflictError(
            f"{_route(ctx)} sends {weights.canary}% to {policy.target.canary}, more than the first step "
            f"({first}%): roll back first (canary rollback), or start anyway with --restart"
        )


def _resume(state: RolloutState, event: Resume, ctx: Context) -> Transition:
    if state.phase.ended:
        raise ConflictError(f"rollout {state.rollout} has ended ({state.phase.value}); nothing to resume")
    if state.policy_digest != ctx.digest or state.judge != ctx.judge.name:
        raise ConflictError(
            f"rollout {state.rollout} on {_route(ctx)} was started with another policy or judge "
            f"({state.policy} {state.policy_digest}, judge {state.judge}; now {ctx.digest}, judge {ctx.judge.name}): "
            "its evidence means something else now; resume with the same policy, or start over with --restart"
        )
    was = "cancelled" if state.phase is Phase.CANCELLED else "interrupted"
    reason = f"resumed at tick {state.tick} ({was}; canary at {event.weights.canary}%)"
    phase = Phase.PAUSED if state.paused_at is not None else Phase.PROGRESSING  # a pause outlives a restart
    new = dataclasses.replace(_advance(state, ctx, event.now, Action.RESUME, reason, phase=phase), runner=ctx.runner)
    decision = Decision(Action.RESUME, state.weights, phase, reason)
    return Transition(new, decision, (_record(new, ctx, event.now, event.weights, decision),))


def _observed(state: RolloutState, event: Observed, ctx: Context) -> Transition:
    if event.weights != state.weights:
        return _outside_change(state, event.weights, event.now, ctx)
    at_deadline = _past(event.now, state.deadline)
    counts = version_counts(event.observation, ctx.policy)
    unseen = _unseen(state, event.observation, counts, ctx, at_deadline=at_deadline)
    since = (state.unseen_since or event.observation.start) if unseen is not None else None
    if unseen is not None and since is not None and event.observation.end - since >= _unseen_span(ctx):
        evidence = state.evidence
        judgement = Judgement(Outcome.FAIL, (), f"{unseen} (no series for {event.observation.end - since:.0f} s)")
    else:
        evidence, judgement = ctx.judge.judge(state.evidence, event.observation, state.step_index)
        if unseen is not None and at_deadline and judgement.outcome is not Outcome.PASS:
            # the deadline's rule may promote a canary nothing showed worse, not one nothing shows at all
            judgement = Judgement(Outcome.FAIL, judgement.verdicts, f"{unseen}, at the deadline", judgement.figures)
    window = Window(state.observed_until, event.now)
    judged = dataclasses.replace(state, evidence=evidence, observed_until=event.now, unseen_since=since)
    return _decide(
        judged, judgement, ctx, event.now, event.weights,
        window=window,
        counts=counts,
        observation=observation_dict(event.observation),
        gates=event.gates,
    )  # fmt: skip


def _unseen_span(ctx: Context) -> float:
    """How long a version must go without series before that is its absence, not a late or failed scrape of
    its pods: two windows, and at least UNSEEN_GRACE_S."""
    return max(2 * ctx.policy.interval_s, UNSEEN_GRACE_S)


def _unseen(
    state: RolloutState, observation: Observation, counts: Mapping[str, Any], ctx: Context, *, at_deadline: bool
) -> str | None:
    """Why the interval shows that one version's traffic goes unmeasured (None: it does not show it): no
    series of it at all in a window read from UNSEEN_GRACE_S (or one interval) after the step began on (a
    new series may wait for its first scrape; at the deadline there is no later), while the other version
    served enough that its weight was due at least UNSEEN_EXPECTED requests."""
    grace = max(ctx.policy.interval_s, UNSEEN_GRACE_S)
    if not 0 < state.weights.canary < 100 or (observation.start < state.step_started_at + grace and not at_deadline):
        return None
    unseen = unseen_version(observation, ctx.policy, counts)
    if unseen is None:
        return None
    share = state.weights.canary if unseen.role == "canary" else state.weights.baseline
    due = unseen.other_count * share / (100 - share)
    if due < UNSEEN_EXPECTED:
        return None
    return f"{unseen.describe(ctx.policy.target.scope.host)}; about {due:.0f} were due at {state.weights}"


def _source_failed(state: RolloutState, event: SourceFailed, ctx: Context) -> Transition:
    if event.weights != state.weights:
        return _outside_change(state, event.weights, event.now, ctx)
    if not event.temporary:
        return _end(
            state, ctx, event.now, event.weights, Action.ABORT, Phase.ABORTED,
            f"metrics source failed: {event.error}; stopping, weights left at {event.weights}", error=event.error,
        )  # fmt: skip
    retry = "" if _past(event.now, state.deadline) else ", retrying next tick"  # none after the deadline
    judgement = Judgement(Outcome.NO_DATA, (), f"metrics source unavailable ({event.error}){retry}")
    return _decide(state, judgement, ctx, event.now, event.weights, error=event.error, gates=event.gates)


def _router_unavailable(state: RolloutState, event: RouterUnavailable, ctx: Context) -> Transition:
    """Nothing can be written: the record says what happened, the route keeps the state it has."""
    if not event.temporary or _past(event.now, state.deadline):
        why = "traffic router failed" if not event.temporary else "traffic router still unavailable at the deadline"
        action, reason = (
            Action.STOP,
            (
                f"{why}: {event.error}; stopping with the rollout open on the route at tick {state.tick} "
                "(`canary run --resume` carries on once it answers)"
            ),
        )
    else:
        action, reason = Action.HOLD, f"traffic router unavailable ({event.error}); retrying"
    decision = Decision(action, state.weights, state.phase, reason)
    record = _record(state, ctx, event.now, None, decision, writes=False, error=event.error)
    return Transition(state, decision, (dataclasses.replace(record, weights_after=None),))


def _pause_or_continue(state: RolloutState | None, event: Manual, ctx: Context) -> Transition:
    """A pause holds the weights and stops the deadline and the step's clock; a failure still rolls back.
    Continue restarts both clocks where they stood."""
    pause = event.command == "pause"
    wanted = Phase.PROGRESSING if pause else Phase.PAUSED
    if state is None or state.phase is not wanted:
        raise ConflictError(
            f"{_route(ctx)} {_now_is(state)}: only a {wanted.value} rollout can be "
            f"{'paused' if pause else 'continued'}{_carry_on(state)}"
        )
    if event.weights != state.weights:
        return _outside_change(state, event.weights, event.now, ctx)
    if pause:
        reason = event.reason or "paused by hand"
        new = dataclasses.replace(_advance(state, ctx, event.now, Action.PAUSE, reason, phase=Phase.PAUSED),
                                  paused_at=event.now)  # fmt: skip
        decision = Decision(Action.PAUSE, state.weights, Phase.PAUSED, f"{reason}; weights held at {state.weights}")
    else:
        assert state.paused_at is not None
        paused_for = event.now - state.paused_at
        reason = event.reason or "continued by hand"
        new = dataclasses.replace(
            _advance(state, ctx, event.now, Action.CONTINUE, reason, phase=Phase.PROGRESSING),
            paused_at=None, deadline=state.deadline + paused_for, step_started_at=state.step_started_at + paused_for,
        )  # fmt: skip
        decision = Decision(Action.CONTINUE, state.weights, Phase.PROGRESSING,
                            f"{reason} after {paused_for / 60:.0f} min paused; the deadline moves with it")  # fmt: skip
    return Transition(new, decision, (_record(new, ctx, event.now, event.weights, decision, judged=False),))


def _approve(state: RolloutState | None, event: Manual, ctx: Context) -> Transition:
    """A person approves the next step's weight; a rollout waiting for it moves there at its next tick."""
    if state is None or not state.phase.open or state.step_index + 1 >= len(state.steps):
        raise ConflictError(
            f"{_route(ctx)} {_now_is(state)}: only an open rollout with a step ahead can be approved{_carry_on(state)}"
        )
    if event.weights != state.weights:
        return _outside_change(state, event.weights, event.now, ctx)
    weight = state.steps[state.step_index + 1]
    if weight not in ctx.policy.approvals:
        asked = f"spec.approvals: {list(ctx.policy.approvals)}" if ctx.policy.approvals else "no spec.approvals"
        raise ConflictError(f"{_route(ctx)}: the policy asks no approval before {weight}% ({asked}): "
                            "nothing to approve")  # fmt: skip
    reason = event.reason or "approved by hand"
    phase = Phase.PROGRESSING if state.phase is Phase.WAITING else state.phase
    new = dataclasses.replace(_advance(state, ctx, event.now, Action.APPROVE, reason, phase=phase),
                              approved=tuple(sorted({*state.approved, weight})))  # fmt: skip
    decision = Decision(Action.APPROVE, state.weights, phase, f"{reason}: the canary may go to {weight}%")
    return Transition(new, decision, (_record(new, ctx, event.now, event.weights, decision, judged=False),))


def _promote_step(state: RolloutState | None, event: Manual, ctx: Context) -> Transition:
    """A person moves an open rollout to its next step, past any gate; the judge starts afresh there."""
    if state is None or not state.phase.open:
        raise ConflictError(
            f"{_route(ctx)} {_now_is(state)}: only an open rollout has a next step to promote to "
            f"(`--full` sends all traffic to {ctx.policy.target.canary}){_carry_on(state)}"
        )
    if event.weights != state.weights:
        return _outside_change(state, event.weights, event.now, ctx)
    step = state.step_index + 1
    weight = state.steps[step]
    last = weight == 100
    action, phase = (Action.PROMOTE, Phase.PROMOTED) if last else (Action.ADVANCE, state.phase)
    if phase is Phase.WAITING:
        phase = Phase.PROGRESSING
    reason = f"{event.reason or 'promoted a step by hand'}: canary from {state.weight}% to {weight}%"
    new = dataclasses.replace(
        _advance(state, ctx, event.now, action, reason, phase=phase),
        step_index=step,
        weights=Weights.canary_at(weight),
        step_started_at=event.now,
        step_seconds=_left(state, event.now),
        observed_until=event.now,  # the new step is judged on traffic at its weight only
        waiting_since=None,
    )
    # the pause goes on: the deadline takes the time paused so far, the new step's clock starts paused
    if state.paused_at is not None and not last:
        new = dataclasses.replace(new, paused_at=event.now, deadline=state.deadline + (event.now - state.paused_at))
    decision = Decision(action, new.weights, phase, reason)
    return Transition(new, decision, (_record(new, ctx, event.now, event.weights, decision, judged=False),))


def _now_is(state: RolloutState | None) -> str:
    if state is None:
        return "has no rollout"
    return f"is {state.phase.value}"


def _carry_on(state: RolloutState | None) -> str:
    """What a person can do with a cancelled rollout: no command runs it, and `run --resume` carries it on."""
    if state is None or state.phase is not Phase.CANCELLED:
        return ""
    return "; it was cancelled and no command runs it: `canary run … --resume` carries it on, then this can be done"


def _manual(state: RolloutState | None, event: Manual, ctx: Context) -> Transition:
    if event.command in ("pause", "continue"):
        return _pause_or_continue(state, event, ctx)
    if event.command == "approve":
        return _approve(state, event, ctx)
    if event.command == "promote" and not event.full:
        return _promote_step(state, event, ctx)
    promote = event.command == "promote"
    weights = Weights.canary_at(100 if promote else 0)
    phase = Phase.PROMOTED if promote else Phase.ROLLED_BACK
    action = Action.PROMOTE if promote else Action.ROLLBACK
    reason = event.reason or ("promoted by hand" if promote else "rolled back by hand")
    if state is None:  # no rollout ever ran on this route: the person's change starts the history
        begun = _start(None, Start(event.now, f"manual-{int(event.now * 1000):x}", event.weights), ctx, seed=True)
        state = dataclasses.replace(begun.state, evidence=None)
    steps = state.steps
    new = dataclasses.replace(
        _advance(state, ctx, event.now, action, reason, phase=phase),
        weights=weights,
        step_index=len(steps) - 1 if promote else state.step_index,
        step_seconds=_left(state, event.now),
    )
    decision = Decision(action, weights, phase, reason)
    return Transition(new, decision, (_record(new, ctx, event.now, event.weights, decision, judged=False),))


def _crash(state: RolloutState, event: Crash, ctx: Context) -> Transition:
    weights = event.weights or state.weights
    return _end(
        state, ctx, event.now, weights, Action.ABORT, Phase.ABORTED,
        f"internal error during a tick ({event.error}); stopping, weights left at {weights}", error=event.error,
    )  # fmt: skip


def _state_lost(state: RolloutState, event: StateLost, ctx: Context) -> Transition:
    ended = _end(
        state, ctx, event.now, event.weights, Action.ABORT, Phase.ABORTED,
        f"{event.why}; stopping, the route left as found at {event.weights} (nothing written)",
    )  # fmt: skip
    return dataclasses.replace(ended, records=(dataclasses.replace(ended.records[-1], writes=False),))


def _cancelled(event: Cancel) -> str:
    return f"cancelled ({event.signal}); weights left at {event.weights}, `canary run --resume` carries on"


# ------------------------------------------------------------------------------------------ the rules


@dataclass(frozen=True)
class _Gates:
    """Where a passed step stands with the gates in front of the next weight."""

    state: RolloutState  # with the webhook gates that said go remembered
    waits: tuple[str, ...]  # what it still waits for, in words
    timed_out: str | None  # why a gate's timeout rolls the canary back
    notes: tuple[str, ...]  # gates that opened this tick, in words


def _remember(state: RolloutState, answers: tuple[GateAnswer, ...]) -> tuple[RolloutState, tuple[str, ...]]:
    """The gates that said go, kept whatever this tick's judgement (a gate is not asked again)."""
    opened, notes = list(state.opened), []
    for a in answers:
        key = gate_key(a.name, a.weight)
        if a.go and key not in opened:
            opened.append(key)
            notes.append(f"gate {a.name} said go ({a.detail})")
    return dataclasses.replace(state, opened=tuple(opened)), tuple(notes)


def _gates(state: RolloutState, ctx: Context, weight: int, answers: tuple[GateAnswer, ...], now: float) -> _Gates:
    """A person's approval and every webhook gate guarding `weight`; a gate asked this tick that still says
    wait past its maxWait is settled by its onTimeout rule (roll back, or go on as if it had said go)."""
    opened, notes, waits = list(state.opened), [], []
    since = now if state.waiting_since is None else state.waiting_since
    if weight in ctx.policy.approvals and weight not in state.approved:
        waits.append("a person's approval (`canary approve`)")
    for gate in ctx.policy.gates(weight):
        key = gate_key(gate.name, weight)
        if key in opened:
            continue
        answer = next((a for a in answers if a.name == gate.name and a.weight == weight), None)
        said = f": {answer.detail}" if answer is not None else ""
        if answer is not None and now - since >= gate.max_wait_s:
            waited = f"gate {gate.name} still said wait after {(now - since) / 60:.0f} min{said}"
            if gate.on_timeout == "rollback":
                return _Gates(state, (), f"{waited}; its timeout rule rolls back", ())
            opened.append(key)
            notes.append(f"{waited}; its timeout rule goes on")
            continue
        waits.append(f"gate {gate.name}{said}")
    return _Gates(dataclasses.replace(state, opened=tuple(opened)), tuple(waits), None, tuple(notes))


def _past(now: float, deadline: float) -> bool:
    """Whether the deadline has come: to within TIME_SLACK_S, so summed intervals do not take one more."""
    return now >= deadline - TIME_SLACK_S


def _decide(
    state: RolloutState,
    judgement: Judgement,
    ctx: Context,
    now: float,
    before: Weights,
    *,
    window: Window | None = None,
    counts: Mapping[str, object] | None = None,
    observation: Mapping[str, object] | None = None,
    error: str | None = None,
    gates: tuple[GateAnswer, ...] = (),
) -> Transition:
    """The judgement applied to the steps: fail rolls back, pass advances (through its gates), the deadline
    ends, else hold. A gate never blocks a rollback."""
    tick = state.tick + 1
    step = state.step_index
    phase, action, weights = state.phase, Action.HOLD, state.weights
    passed = judgement.outcome is Outcome.PASS and state.phase is not Phase.PAUSED
    state, said_go = _remember(state, gates)
    gate = _Gates(state, (), None, ())
    if passed:
        gate = _gates(state, ctx, state.steps[step + 1], gates, now)
        state = gate.state
    opened = "".join(f"; {note}" for note in (*said_go, *gate.notes))
    if judgement.outcome is Outcome.FAIL:
        phase, action, weights = Phase.ROLLED_BACK, Action.ROLLBACK, Weights.canary_at(0)
        reason = judgement.summary
    elif gate.timed_out is not None:
        phase, action, weights = Phase.ROLLED_BACK, Action.ROLLBACK, Weights.canary_at(0)
        reason = f"{judgement.summary} at {state.weight}%; {gate.timed_out}"
    elif passed and not gate.waits and (not _past(now, state.deadline) or state.steps[step + 1] == 100):
        # at the deadline only a pass to 100% wins over its rule: a step up would be judged by no one
        phase = Phase.PROGRESSING
        step += 1
        weights = Weights.canary_at(state.steps[step])
        if state.steps[step] == 100:
            phase, action, reason = Phase.PROMOTED, Action.PROMOTE, f"{judgement.summary} at {state.weight}%{opened}"
        else:
            action = Action.ADVANCE
            reason = f"{judgement.summary} at {state.weight}%{opened}; next step {state.steps[step]}%"
    elif state.phase is Phase.PAUSED:
        reason = f"paused at {state.weight}%: {judgement.summary}; waiting for `canary continue`"
    elif _past(now, state.deadline):
        phase = Phase.INCONCLUSIVE
        if gate.waits:  # the deadline's rule may not walk past a closed gate to 100%
            action, weights = Action.ROLLBACK, Weights.canary_at(0)
            reason = (f"deadline reached while waiting ({judgement.summary}, still waiting for "
                      f"{', '.join(gate.waits)}); rolled back: no rule opens a gate")  # fmt: skip
        else:
            undecided = (
                f"deadline reached before {state.steps[step + 1]}% could be judged ({judgement.summary} at "
                f"{state.weight}%)"
                if passed
                else f"deadline reached without a decision ({judgement.summary})"
            )
            if state.on_deadline == "promote":
                action, weights, step = Action.PROMOTE, Weights.canary_at(100), len(state.steps) - 1
                reason = f"{undecided}; the policy promotes"
            else:
                action, weights = Action.ROLLBACK, Weights.canary_at(0)
                reason = f"{undecided}; the policy rolls back"
    elif gate.waits:
        phase = Phase.WAITING
        reason = (f"{judgement.summary} at {state.weight}%{opened}; waiting to go to {state.steps[step + 1]}% for "
                  f"{', '.join(gate.waits)}")  # fmt: skip
    else:
        reason = f"holding at {state.weight}%: {judgement.summary}"
    moved_step = step != state.step_index or phase.ended
    new = dataclasses.replace(
        _advance(state, ctx, now, action, reason, phase=phase, tick=tick),
        step_index=step,
        weights=weights,
        step_started_at=now if moved_step else state.step_started_at,
        step_seconds=_left(state, now) if moved_step else state.step_seconds,
        waiting_since=(state.waiting_since or now) if phase is Phase.WAITING else None,
    )
    decision = Decision(action, weights, phase, reason)
    record = _record(
        new, ctx, now, before, decision, tick=tick, window=window, counts=counts, observation=observation,
        judgement=judgement_dict(judgement), error=error,
        gates=[dataclasses.asdict(a) for a in gates] or None,
    )  # fmt: skip
    return Transition(new, decision, (record,), judgement)


def _outside_change(state: RolloutState, found: Weights, now: float, ctx: Context) -> Transition:
    return _end(
        state, ctx, now, found, Action.ABORT, Phase.ABORTED,
        f"weights changed outside canary: expected {state.weights}, found {found}; stopping, weights left as found",
    )  # fmt: skip


def _end(
    state: RolloutState,
    ctx: Context,
    now: float,
    weights: Weights,
    action: Action,
    phase: Phase,
    reason: str,
    *,
    error: str | None = None,
) -> Transition:
    """The rollout stops where it stands (weights as found), its state written with the phase."""
    new = dataclasses.replace(
        _advance(state, ctx, now, action, reason, phase=phase),
        weights=weights,
        step_seconds=_left(state, now) if phase.ended else state.step_seconds,  # a cancelled one goes on there
    )
    decision = Decision(action, weights, phase, reason)
    return Transition(new, decision, (_record(new, ctx, now, weights, decision, error=error),))


def _left(state: RolloutState, now: float) -> tuple[float, ...]:
    """The time at each step left, the current one too when the rollout leaves it now (ended mid-step)."""
    if state.phase.ended:
        return state.step_seconds
    return (*state.step_seconds, now - state.step_started_at)


def _advance(
    state: RolloutState, ctx: Context, now: float, action: Action, reason: str, *, phase: Phase, tick: int | None = None
) -> RolloutState:
    return dataclasses.replace(
        state,
        phase=phase,
        tick=state.tick if tick is None else tick,
        last=LastDecision(now, action, reason, ctx.actor, tick),
    )


def _record(
    state: RolloutState,
    ctx: Context,
    now: float,
    before: Weights | None,
    decision: Decision,
    *,
    writes: bool = True,
    tick: int | None = None,
    judged: bool = True,
    window: Window | None = None,
    counts: Mapping[str, object] | None = None,
    observation: Mapping[str, object] | None = None,
    judgement: dict[str, object] | None = None,
    error: str | None = None,
    gates: list[dict[str, object]] | None = None,
) -> DecisionRecord:
    policy = ctx.policy
    return DecisionRecord(
        time=now,
        rollout=state.rollout,
        policy=PolicyRef(policy.name, ctx.digest, policy.source_path),
        target=RouteName(policy.target.namespace, policy.target.virtual_service, policy.target.route),
        action=decision.action,
        phase=decision.phase,
        weights_before=before,
        weights_after=decision.weights,
        reason=decision.reason,
        actor=ctx.actor,
        writes=writes,
        tick=tick,
        step=state.step_index,
        judge=ctx.judge.name if judged else None,
        window=window,
        counts=dict(counts) if counts is not None else None,
        observation=dict(observation) if observation is not None else None,
        judgement=judgement,
        error=error,
        gates=gates,
        engine=ENGINE,
    )


def _route(ctx: Context) -> str:
    t = ctx.policy.target
    return f"VirtualService {t.namespace}/{t.virtual_service}"
