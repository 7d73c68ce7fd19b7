"""The runner: read the route, call the transition, record, write, record. Nothing else decides.

Every command that changes a route (a rollout's start and ticks, a cancel, a person's promote or
rollback) does one sequence under the audit log's lock:

    read the route (weights + state + revision) → settle a change the log left without an outcome →
    transition(state, event) → append its records (fsync) → write weights and state in one conditional
    write → append the outcome: applied, or failed with the reason.

The state written carries the hash of the "applied" outcome (fixed before the write), so after a crash
between the write and that record, the next command reads the route, sees the state, and records the
outcome exactly; if the route does not hold it, the change is recorded as not made. The runner keeps
nothing between ticks that the route does not hold: a restart reads the route and goes on, and a
person's command during a rollout is seen at the next tick.
"""

from __future__ import annotations

import dataclasses
import signal
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from canary import failpoints
from canary.audit import HISTORY_GAP, AuditSink
from canary.clock import Clock
from canary.errors import CanaryError, Cancelled, ConflictError, RouterError, SourceError, WeightConflict
from canary.judges import Judge
from canary.model import Action, Decision, Judgement, Phase, Weights
from canary.notices import hook_body
from canary.policy import Policy, Target
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord, Sealed, applied_outcome, seal
from canary.routers import Router, RouteRead
from canary.routers.virtualservice import also_to_canary, vs_name
from canary.sources import MetricsSource
from canary.state import RolloutState, policy_digest
from canary.transition import (
    Cancel,
    Context,
    Crash,
    Event,
    GateAnswer,
    Manual,
    ManualCommand,
    Observed,
    Resume,
    RouterUnavailable,
    SourceFailed,
    Start,
    StateLost,
    Transition,
    transition,
    write_failed,
)
from canary.webhooks import Hooks

DEFAULT_LOCK_TIMEOUT_S = 30.0
SIGNAL_REPEAT_S = 1.0  # a signal again within this of the first is one signal delivered twice
# A write refused because someone else wrote the route since canary read it (a label, Argo CD's sync, a status
# update) is decided again on a fresh read at once, as client-go's RetryOnConflict does, this many times: a
# rollback is not put off by an interval for an edit that had nothing to do with it.
CONFLICT_RETRIES = 3


@dataclass(frozen=True)
class TickReport:
    tick: int
    now: float
    weights_before: Weights
    decision: Decision
    judgement: Judgement | None
    step_index: int
    seconds: float | None = None  # how long the tick took (query, judge, record, write), when timed


@dataclass(frozen=True)
class RolloutResult:
    rollout: str
    phase: Phase
    decision: Decision
    ticks: int
    started_at: float
    finished_at: float
    judgement: Judgement | None
    audit_path: str
    audit_head: str
    step_seconds: tuple[float, ...]  # time spent at each step left
    stopped: bool = False  # the command stopped with the rollout still open on the route (exit 2)
    earlier: bool = False  # it had ended before this command (`run --resume` reports it; nothing ran)
    elsewhere: tuple[str, ...] = ()  # traffic to the canary the route holds besides the split canary moves
    release: str = ""  # what it rolls out (`run --release`), as its state says

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


def _other_release(route: str, state: RolloutState, release: str) -> str:
    of, carry = (
        (f"release {state.release}", "with its --release")
        if state.release
        else ("no release named", "without --release")
    )
    return (
        f"{route} holds rollout {state.rollout} of {of}, still {state.phase.value} at {state.weights.canary}%; this "
        f"is release {release}: carry that one on {carry}, start over with --restart, or roll it back"
    )


def recorded_until(state: RolloutState | None, last: Sealed | None) -> float | None:
    """The later of the route's last decision and the log's last record (None: neither holds one): where a
    rollout on simulated time stands, so nothing recorded after it goes back before it."""
    times = ([state.last.time] if state is not None else []) + ([last.record.time] if last is not None else [])
    return max(times, default=None)


@dataclass(frozen=True)
class Applied:
    """What one command did: the decision, the route's weights before it, the log's head after."""

    before: Weights | None
    decision: Decision
    state: RolloutState
    head: str
    written: bool  # the route holds the decision (False: recorded only, or the write failed)
    stop: bool
    error: str | None = None  # why the write failed
    error_unanswered: bool = False  # the write had no answer: it may still be made
    conflict: bool = False  # the write was refused because someone else wrote the route since it was read
    elsewhere: tuple[str, ...] = ()  # traffic to the canary the route holds besides the split canary moves


class CancelFlag:
    """Set by SIGTERM/SIGINT: the current tick ends cleanly, then the rollout is recorded as cancelled."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.signal = ""

    def set(self, name: str) -> None:
        self.signal = self.signal or name
        self.event.set()

    @property
    def is_set(self) -> bool:
        return self.event.is_set()

    def install(self) -> Callable[[], None]:
        """Catch SIGTERM and SIGINT until the returned function restores the previous handlers. A signal
        again within SIGNAL_REPEAT_S of the first is the same one delivered twice (GNU `timeout` signals the
        command and then its process group) and is ignored; a later one is left to the previous handler
        (the process ends at once, which the state survives)."""
        previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        first: list[float] = []

        def handler(signum: int, frame: object) -> None:
            if not first:
                first.append(time.monotonic())
                self.set(signal.Signals(signum).name)
                return
            if time.monotonic() - first[0] < SIGNAL_REPEAT_S:
                return
            for s, h in previous.items():
                signal.signal(s, h)
            signal.raise_signal(signum)

        for s in previous:
            signal.signal(s, handler)

        def restore() -> None:
            for s, h in previous.items():
                signal.signal(s, h)

        return restore


class Runner:
    def __init__(
        self,
        *,
        policy: Policy,
        source: MetricsSource | None,
        router: Router,
        judge: Judge,
        audit: AuditSink,
        clock: Clock,
        actor: str = "canary-controller",
        lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
        cancel: CancelFlag | None = None,
        hooks: Hooks | None = None,
        simulated: bool = False,
    ) -> None:
        self.policy = policy
        self.hooks = hooks  # the policy's webhooks (none asked when None: a gate then waits to its timeout)
        # True on the simulated mesh's clock: its rollouts run on simulated time, which the state says so a
        # person's command on the route is recorded at the rollout's time, not the wall clock's; and no person
        # can `canary continue` between two ticks, so a paused rollout stops the command (it stays paused on
        # the route) instead of holding forever
        self.simulated = simulated
        self.source = source
        self.router = router
        self.judge = judge
        self.audit = audit
        self.clock = clock
        self.actor = actor
        self.lock_timeout_s = lock_timeout_s
        self.cancel_flag = cancel or CancelFlag()
        self.digest = policy_digest(policy)
        self.runner = uuid.uuid4().hex[:12]  # this command, as the rollouts it starts or resumes name it
        self.release = ""  # what this command rolls out (`run --release`), given to `open`
        self.document: dict[str, Any] | None = None  # the VirtualService as this command last read it
        self.state: RolloutState | None = None  # the last state this command read or wrote
        self.head = ""
        self.last_judgement: Judgement | None = None
        self.last_decision: Decision | None = None  # this command's last, for a result it stops with
        self.ended: RolloutState | None = None  # the rollout this command's own write ended (post-rollout hooks)

    @property
    def target(self) -> Target:
        return self.policy.target

    @property
    def elsewhere(self) -> tuple[str, ...]:
        """The traffic to the canary, in the route last read, outside the split canary moves (read off once, for
        a result: not at every tick)."""
        return also_to_canary(self.document, self.target) if self.document is not None else ()

    def _ctx(self, actor: str | None = None) -> Context:
        return Context(
            self.policy, self.judge, actor or self.actor, self.digest, self.simulated, self.runner, self.release
        )

    # ------------------------------------------------------------------------------- one locked step

    def _read(self) -> RouteRead:
        """The route as it stands, with a change the log left open settled from what the route holds."""
        if (other := self.audit.other_route(self.target.namespace, self.target.virtual_service)) is not None:
            raise ConflictError(
                f"{self.audit.path} holds the records of another route ({other}): each route needs a log of its "
                f"own (spec.audit, or --audit), so {vs_name(self.target)}'s history is not mixed with another's"
            )
        read = self.router.read(self.target, self.judge.state_type)
        self.document = read.document
        last = self.audit.open_change()
        if last is not None and isinstance(last.record, DecisionRecord) and self._ours(last):
            applied = seal(applied_outcome(last), last.hash)
            if read.state is not None and read.state.audit_head == applied.hash:
                self.audit.append_sealed(applied)  # exactly the record the route's state names
            else:
                self.audit.append(
                    OutcomeRecord(
                        time=self._route_time(read.state if read.state_error is None else None),
                        rollout=last.record.rollout,
                        of=last.hash,
                        result="failed",
                        weights=read.weights,
                        reason=f"not made: the route does not hold it (it holds {read.weights}); found by the next "
                        "command (the one that recorded it stopped, or could not read the route back)",
                    )
                )
        return read

    def _ours(self, sealed: Sealed) -> bool:
        record = sealed.record
        t = self.target
        return isinstance(record, DecisionRecord) and (record.target.namespace, record.target.virtual_service) == (
            t.namespace,
            t.virtual_service,
        )

    def _anchored(self, read: RouteRead) -> str | None:
        """Why the log is not this route's history (None when it is): the route's head is not in it, or
        changes the log says were applied came after it (the route is older than its log)."""
        state = read.state
        if state is None or not state.audit_head or state.audit_head == self.audit.head:
            return None
        changes = self.audit.changes_after(state.audit_head)
        if changes == 0:
            return None  # changes after it failed and never reached the route
        if changes is None:
            return (
                f"{self.audit.path} does not hold the head the route's state was written with "
                f"({state.audit_head[:16]}, rollout {state.rollout}): the log was cut short or replaced, or is "
                "another route's"
            )
        return (
            f"the route is older than {self.audit.path}: {changes} change{'s' * (changes != 1)} the log records as "
            f"applied came after the head the route holds ({state.audit_head[:16]}, rollout {state.rollout}; a "
            "restored or reverted manifest?), so its state is not the rollout's"
        )

    def _note_gap(self, now: float, problem: str, doing: str, actor: str) -> None:
        """On record that the log is not the route's history and `doing` goes ahead: it never verifies again."""
        self.audit.append(NoteRecord(now, f"{problem}; {doing} goes ahead", actor, details={HISTORY_GAP: True}))

    def _commit(self, read: RouteRead | None, t: Transition) -> Applied:
        """Append the transition's records; if it writes, write the route and record the outcome."""
        sealed: Sealed | None = None
        for record in t.records:
            sealed = self.audit.append(record)
        self.last_judgement = t.judgement or self.last_judgement
        if read is None or sealed is None or not t.writes:
            self.head = self.audit.head
            before = read.weights if read is not None else None
            return Applied(
                before, t.decision, read.state if read and read.state else t.state, self.head, False, t.stops
            )
        applied = seal(applied_outcome(sealed), sealed.hash)
        state = dataclasses.replace(t.state, audit_head=applied.hash)
        failpoints.point("before-write")
        try:
            self.router.write(self.target, read, state.weights, state)
        except RouterError as exc:
            made = self._holds(applied.hash)
            if made is not True:
                outcome, stop = write_failed(t, str(exc), temporary=exc.temporary, now=self._route_time(t.state))
                if made is False and not exc.unanswered:
                    self.audit.append(dataclasses.replace(outcome, of=sealed.hash))
                # else nobody can tell yet (the route cannot be read back, or the write had no answer and may
                # still land): the change stays open, and the next command that reads the route records what
                # it finds there
                self.head = self.audit.head
                return Applied(
                    read.weights, t.decision, read.state or state, self.head, False, stop, str(exc), exc.unanswered,
                    conflict=isinstance(exc, WeightConflict),
                )  # fmt: skip
        failpoints.point("after-write")
        self.audit.append_sealed(applied)
        failpoints.point("after-outcome")
        self.head, self.state = applied.hash, state
        was = read.state
        if state.phase.ended and (was is None or was.rollout != state.rollout or was.phase.open):
            self.ended = state
        return Applied(read.weights, t.decision, state, self.head, True, t.stops)

    def _holds(self, head: str) -> bool | None:
        """After a write that failed: did it land all the same (an answer lost on its way back)? None when the
        route cannot be read back either."""
        try:
            again = self.router.read(self.target)
        except RouterError:
            return None
        return again.state is not None and again.state.audit_head == head

    # ------------------------------------------------------------------------------- commands

    def manual(self, command: ManualCommand, *, actor: str, reason: str, full: bool = False) -> Applied:
        """A person's promote (the next step, or 100% with `full`), rollback (to 0%), pause, continue or
        approve: joins the route's chain; a rollout running on the route sees it at its next tick."""
        with self.audit.locked(self.lock_timeout_s):
            for attempt in range(CONFLICT_RETRIES + 1):  # read again after someone else's write came between
                read = self._read()
                state = read.state if read.state_error is None else None
                now = self._route_time(state)
                if read.state_error and not attempt:
                    self.audit.append(NoteRecord(now, f"{read.state_error}; {command} goes ahead", actor))
                if (gap := self._anchored(read)) and not attempt:
                    self._note_gap(now, gap, command, actor)
                event = Manual(now, read.weights, command, reason, full)
                applied = self._commit(read, transition(state, event, self._ctx(actor)))
                if applied.written or not applied.conflict:
                    break
        if not applied.written:
            if applied.error_unanswered:
                raise RouterError(
                    f"the {command} may not have been made ({applied.error}); the next command reads the route "
                    f"and records whether it was, in {self.audit.path}"
                )
            raise RouterError(f"the {command} was not made ({applied.error}); recorded in {self.audit.path}")
        if self.ended is not None:  # a person's promote or rollback ended the rollout: they tell
            applied = dataclasses.replace(applied, head=self._post_rollout(self.ended) or applied.head)
        return dataclasses.replace(applied, elsewhere=self.elsewhere)

    def open(self, *, resume: bool = False, restart: bool = False, release: str = "") -> TickReport | RolloutResult:
        """Start a rollout, or carry on the open one (`resume`), or abandon it for a new one (`restart`).
        An ended rollout with `resume` is reported as it stands; nothing changes. With a `release`, `resume`
        concerns that release's rollout only: another's that ended is followed by a new rollout, another's
        still open is refused. A rollout that would start first asks the policy's pre-rollout webhooks,
        outside the log's lock (they may take a while), then is decided again under it."""
        self.release = release
        asked = not (self.policy.hooks("pre-rollout") and self.hooks is not None)
        while True:
            now = self.clock.now()
            with self.audit.locked(self.lock_timeout_s):
                read = self._read()
                state = read.state
                if read.state_error is not None and not restart:
                    raise ConflictError(f"{read.state_error}; start over with --restart, or roll back")
                problem = self._anchored(read)
                if problem is not None and not restart:
                    raise ConflictError(f"{problem}; give --audit the route's log, or start over with --restart")
                same = not release or (state is not None and state.release == release)
                if resume and state is not None and state.phase.ended and state.policy == self.policy.name and same:
                    self.state, self.head = state, self.audit.head
                    return dataclasses.replace(self._result(state, stopped=False), earlier=True)
                event: Event
                if resume and state is not None and not state.phase.ended:
                    if not same:
                        raise ConflictError(_other_release(vs_name(self.target), state, release))
                    event = Resume(now, read.weights)
                else:
                    if self.cancel_flag.is_set:  # while the lock or the pre-rollout webhooks were awaited
                        name = self.cancel_flag.signal
                        raise Cancelled(f"cancelled ({name}) before the rollout started: nothing was changed")
                    if read.state_error is not None:
                        state = None
                    subsets = self.router.subsets_problem(self.target)
                    if subsets is not None:
                        raise ConflictError(f"{vs_name(self.target)}: {subsets}")
                    event = Start(now, uuid.uuid4().hex[:12], read.weights, restart=restart)
                t = transition(state, event, self._ctx())  # a refusal raises here, before any hook is asked
                if asked or not isinstance(event, Start):
                    if problem is not None:  # a --restart on a log without the route's history
                        self._note_gap(now, problem, "--restart", self.actor)
                    applied = self._commit(read, t)
                    break
            self._pre_rollout(read.weights)
            asked = True
        if not applied.written:
            raise RouterError(f"the rollout was not started ({applied.error}); recorded in {self.audit.path}")
        return self._report(applied)

    def _route_time(self, state: RolloutState | None) -> float:
        """When this command's records on the route happen: now, or on a rollout running on simulated time,
        that rollout's time (its last record's), so a person's command (or the outcome it settles after a
        crash) jumps neither the rollout's deadline nor the log's order to the wall clock's."""
        if state is None or not state.simulated:
            return self.clock.now()
        until = recorded_until(state, self.audit.last())
        assert until is not None  # the state holds a last decision
        return until

    def _note(self, text: str, rollout: str | None) -> str:
        """A note by the webhooks in the log, after whatever the log left open is settled; the new head."""
        with self.audit.locked(self.lock_timeout_s):
            self._read()
            return self.audit.append(NoteRecord(self.clock.now(), text, "canary-webhooks", rollout)).hash

    def _pre_rollout(self, weights: Weights) -> None:
        """Each pre-rollout webhook must say go before a new rollout writes anything; every answer is noted."""
        assert self.hooks is not None
        for hook in self.policy.hooks("pre-rollout"):
            problem = self.hooks.call(hook, hook_body(self.policy, hook, None, weights))
            self._note(f"pre-rollout webhook {hook.name!r} {'said go' if problem is None else problem}", None)
            if problem is not None:
                raise CanaryError(f"pre-rollout webhook {hook.name!r} {problem}: the rollout was not started")

    def _post_rollout(self, state: RolloutState) -> str | None:
        """Each post-rollout webhook told how the rollout ended (by the command whose change ended it); the
        answers are noted and change nothing. The log's head after the notes (None: no webhook)."""
        hooks = self.policy.hooks("post-rollout")
        if not hooks or self.hooks is None:
            return None
        head = None
        for hook in hooks:
            problem = self.hooks.call(hook, hook_body(self.policy, hook, state, state.weights))
            said = "said go" if problem is None else f"{problem} (the rollout's outcome stands)"
            head = self._note(f"post-rollout webhook {hook.name!r} {said}", state.rollout)
        return head

    def _ask_gates(self, state: RolloutState) -> tuple[GateAnswer, ...]:
        """While a passed step waits (since `waiting_since`, approved by a person or not), each webhook gate
        before the next weight that has not said go yet."""
        if state.waiting_since is None or self.hooks is None or state.step_index + 1 >= len(state.steps):
            return ()
        weight = state.steps[state.step_index + 1]
        return tuple(
            self.hooks.ask(gate, weight, hook_body(self.policy, gate, state, state.weights))
            for gate in self.policy.gates(weight)
            if not state.gate_open(gate.name, weight)
        )

    def tick(self) -> TickReport | RolloutResult:
        """One analysis interval. Returns the result instead when someone else ended the rollout."""
        assert self.state is not None, "open() the rollout before ticking it"
        now = self.clock.now()
        try:
            pre = self.router.read(self.target, self.judge.state_type)
        except RouterError as exc:
            return self._unavailable(RouterUnavailable(now, str(exc), exc.temporary))
        try:
            return self._tick(now, pre)
        except RouterError as exc:  # the route could not be read again under the lock: on record, as above
            return self._unavailable(RouterUnavailable(now, str(exc), exc.temporary))

    def _tick(self, now: float, pre: RouteRead) -> TickReport | RolloutResult:
        """`tick` once the route was read: judge the window and commit what follows under the lock."""
        if not self._running(pre):  # ended or replaced: settle under the lock what that command left open
            with self.audit.locked(self.lock_timeout_s):
                ended = self._taken_over(self._read())
            if ended is not None:
                return ended
        assert pre.state is not None
        if now <= pre.state.observed_until:  # this host's clock is behind the window last judged (another host's)
            behind = pre.state.observed_until - now
            return self._report_hold(pre, f"this clock is {behind:.0f} s behind the window the rollout last judged; "
                                          "waiting for it (nothing judged, nothing moved)")  # fmt: skip
        gates = self._ask_gates(pre.state)
        event: Event
        try:
            assert self.source is not None
            observation = self.source.observe(self.target.scope, self.policy.metrics, pre.state.observed_until, now)
            event = Observed(now, pre.weights, observation, gates)
        except SourceError as exc:
            event = SourceFailed(now, pre.weights, str(exc), exc.temporary, gates)
        with self.audit.locked(self.lock_timeout_s):
            read = self._read()
            if (ended := self._taken_over(read)) is not None:
                return ended
            assert read.state is not None
            if read.state.observed_until != pre.state.observed_until:
                return self._report_hold(read)  # another command judged this window: judge the next one
            for attempt in range(CONFLICT_RETRIES + 1):
                if attempt:  # someone else wrote the route between the read and the write: read it again
                    read = self._read()
                    if (ended := self._taken_over(read)) is not None:
                        return ended
                    assert read.state is not None
                if isinstance(event, Observed | SourceFailed):
                    event = dataclasses.replace(event, weights=read.weights)
                applied = self._commit(read, transition(read.state, event, self._ctx()))
                if applied.written or not applied.conflict:
                    break
        return self._report(applied)

    def _running(self, read: RouteRead) -> bool:
        """The route still holds this command's rollout, open."""
        assert self.state is not None
        state = read.state
        return state is not None and state.rollout == self.state.rollout and state.phase.open

    def _taken_over(self, read: RouteRead) -> RolloutResult | None:
        """The rollout was ended or replaced by someone else (a person's promote or rollback, a --restart):
        this command ends with what the route now says. A route that lost the rollout's state with no
        command of canary's to say so ends the rollout as aborted, recorded, the route left as found."""
        assert self.state is not None
        state = read.state
        if self._running(read):
            assert state is not None
            if state.runner and state.runner != self.runner:  # a later `run --resume` took the rollout over
                self.state, self.head = state, state.audit_head
                self.last_decision = Decision(
                    Action.STOP, state.weights, state.phase,
                    f"another `canary run --resume` carries rollout {state.rollout} on ({state.last.reason}): "
                    "this one stops, the rollout open on the route",
                )  # fmt: skip
                return self._result(state, stopped=True)
            if (problem := self._anchored(read)) is None:
                return None
            return self._lose(
                read, f"{vs_name(self.target)} holds an older state of rollout {state.rollout}: {problem}"
            )
        if state is not None and state.rollout == self.state.rollout:
            self.state, self.head = state, state.audit_head
            return self._result(state, stopped=False)
        lost = self._lost(read)
        if lost is None:  # a --restart replaced it, and recorded this rollout's end: nothing more to write
            assert state is not None
            ended = dataclasses.replace(self.state, phase=Phase.ABORTED)
            self.last_decision = Decision(
                Action.ABORT, read.weights, Phase.ABORTED,
                f"{vs_name(self.target)} no longer holds rollout {self.state.rollout} (a --restart replaced it "
                f"with {state.rollout} and recorded its end); stopping",
            )  # fmt: skip
            return self._result(ended, stopped=True)
        return self._lose(read, lost)

    def _lose(self, read: RouteRead, why: str) -> RolloutResult:
        """The route no longer holds this rollout's state, and no command of canary's said so: the rollout ends
        aborted, recorded, the route left as found."""
        assert self.state is not None
        t = transition(self.state, StateLost(self.clock.now(), read.weights, why), self._ctx())
        self._commit(read, t)
        self.state = self.ended = t.state
        return self._result(t.state, stopped=False)

    def _lost(self, read: RouteRead) -> str | None:
        """Why the route no longer holds this rollout when no command of canary's replaced it (None: one did)."""
        assert self.state is not None
        lost = f"{vs_name(self.target)} no longer holds rollout {self.state.rollout}"
        if read.state_error is not None:
            return f"{lost}: {read.state_error}"
        if read.state is None:
            return f"{lost}: its state annotation was removed outside canary"
        problem = self._anchored(read)
        return f"{lost}: it holds rollout {read.state.rollout} again, and {problem}" if problem else None

    def cancel(self) -> TickReport | RolloutResult:
        """Record that a signal ended the command; the weights stay as they stand."""
        assert self.state is not None
        now = self.clock.now()
        name = self.cancel_flag.signal or "a signal"
        try:
            with self.audit.locked(self.lock_timeout_s):
                read = self._read()
                if (ended := self._taken_over(read)) is not None:
                    return ended
                applied = self._commit(read, transition(read.state, Cancel(now, read.weights, name), self._ctx()))
        except RouterError as exc:
            return self._unavailable(RouterUnavailable(now, f"cancelled ({name}), {exc}", False))
        return self._report(applied)

    def _unavailable(self, event: RouterUnavailable) -> TickReport:
        """The route cannot be read: record it against the last state this command knew; write nothing.
        While a change waits for its outcome (its write's answer was lost) nothing is appended after it: the
        outcome sealed before the write must still be able to follow it once the route can be read."""
        assert self.state is not None
        t = transition(self.state, event, self._ctx())
        with self.audit.locked(self.lock_timeout_s):
            if self.audit.open_change() is None:
                return self._report(self._commit(None, t))
        return self._report(Applied(None, t.decision, self.state, self.head, False, t.stops))

    def crashed(self, exc: BaseException) -> None:
        """An unexpected error during a tick: end the rollout with a record saying so (best effort)."""
        if self.state is None or not self.state.phase.open:
            return
        error = f"{type(exc).__name__}: {exc}"
        try:
            with self.audit.locked(self.lock_timeout_s):
                read = self._read()
                if read.state is None or read.state.rollout != self.state.rollout or read.state.phase.ended:
                    return
                self._commit(read, transition(read.state, Crash(self.clock.now(), read.weights, error), self._ctx()))
        except Exception:
            return

    def run(
        self,
        on_tick: Callable[[TickReport], None] | None = None,
        *,
        resume: bool = False,
        restart: bool = False,
        release: str = "",
    ) -> RolloutResult:
        """Start (or resume) and tick until the rollout ends, is cancelled, or cannot go on; a rollout this
        command's own change ended is told to the post-rollout webhooks (one a person ended, they tell)."""
        opened = self.open(resume=resume, restart=restart, release=release)
        if isinstance(opened, RolloutResult):
            return opened  # it had ended before this command
        result = self._ticks(opened, on_tick)
        if self.ended is not None and self.ended.rollout == result.rollout:
            head = self._post_rollout(self.ended)
            result = dataclasses.replace(result, audit_head=head or result.audit_head)
        return result

    def _ticks(self, opened: TickReport, on_tick: Callable[[TickReport], None] | None) -> RolloutResult:
        report = opened
        if on_tick:
            on_tick(report)
        try:
            while self.state is not None and self.state.phase.open:
                if report.decision.action is Action.STOP:
                    return self._result(self.state, stopped=True)
                if self.state.phase is Phase.PAUSED and self.simulated:
                    self.last_decision = Decision(
                        Action.STOP, self.state.weights, Phase.PAUSED,
                        f"{self.state.last.reason}; paused on a simulated clock, which no `canary continue` can "
                        "reach between two ticks: stopping with the rollout paused on the route",
                    )  # fmt: skip
                    return self._result(self.state, stopped=True)
                if self._sleep(self.policy.interval_s):
                    cancelled = self.cancel()
                    if isinstance(cancelled, RolloutResult):
                        return cancelled
                    if on_tick:
                        on_tick(cancelled)
                    return self._result(self.state, stopped=cancelled.decision.phase is not Phase.CANCELLED)
                began = time.monotonic()
                ticked = self.tick()
                if isinstance(ticked, RolloutResult):
                    return ticked
                report = dataclasses.replace(ticked, seconds=time.monotonic() - began)
                if on_tick:
                    on_tick(report)
        except CanaryError:
            raise
        except Exception as exc:
            self.crashed(exc)
            raise
        assert self.state is not None
        return self._result(self.state, stopped=report.decision.action is Action.STOP)

    def _sleep(self, seconds: float) -> bool:
        """Wait for the next tick; True when a signal asked to stop."""
        return self.cancel_flag.is_set or self.clock.wait(seconds, self.cancel_flag.event)

    # ------------------------------------------------------------------------------- reports

    def _report(self, applied: Applied) -> TickReport:
        self.state = applied.state
        before = applied.before if applied.before is not None else applied.state.weights
        decision = applied.decision
        if not applied.written and applied.stop and decision.action is not Action.STOP:
            why = f"{decision.reason} (not made{f': {applied.error}' if applied.error else ''}; stopping)"
            decision = Decision(Action.STOP, before, applied.state.phase, why)
        elif not applied.written and decision.weights != before:
            made = "no answer: the next tick reads whether it was made" if applied.error_unanswered else "not made"
            decision = Decision(Action.HOLD, before, applied.state.phase, f"{decision.reason} ({made}; retrying)")
        self.last_decision = decision
        return TickReport(
            applied.state.tick, self.clock.now(), before, decision, self.last_judgement, applied.state.step_index
        )

    def _report_hold(self, read: RouteRead, why: str = "another command judged this interval") -> TickReport:
        assert read.state is not None
        self.state = read.state
        decision = Decision(Action.HOLD, read.weights, read.state.phase, why)
        return TickReport(read.state.tick, self.clock.now(), read.weights, decision, None, read.state.step_index)

    def _result(self, state: RolloutState, *, stopped: bool) -> RolloutResult:
        last = state.last
        decision = Decision(last.action, state.weights, state.phase, last.reason)
        if stopped and self.last_decision is not None:
            decision = self.last_decision  # why this command stopped, which the route's state cannot say
        return RolloutResult(
            rollout=state.rollout,
            phase=state.phase,
            decision=decision,
            ticks=state.tick,
            started_at=state.started_at,
            finished_at=max(last.time, self.clock.now()) if stopped else last.time,  # stopped: when this command did
            judgement=self.last_judgement,
            audit_path=str(self.audit.path),
            audit_head=self.head or state.audit_head,
            step_seconds=state.step_seconds,
            stopped=stopped,
            release=state.release,
            elsewhere=self.elsewhere,
        )
