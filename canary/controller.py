"""The controller: one tick = read weights, observe, judge, decide, write the audit record, apply.

All the deciding is done by pure code (judges, progression); this module only sequences the I/O, in an
order that never loses evidence: the audit record is on disk before the weights change, and the weights
are re-read from the router at every tick, so a change made by someone else is noticed, not overwritten.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from canary import __version__, progression
from canary.audit import AuditSink
from canary.clock import Clock
from canary.errors import CanaryError, RouterError, SourceError, WeightConflict
from canary.judges import Judge
from canary.model import Action, Decision, Judgement, Outcome, Phase, Weights
from canary.policy import Policy
from canary.progression import RolloutState
from canary.report import iso, judgement_dict, observation_dict, observation_from_dict, version_counts
from canary.routers import Router
from canary.sources import MetricsSource


@dataclass(frozen=True)
class TickReport:
    tick: int
    now: float
    weights_before: Weights
    decision: Decision
    judgement: Judgement | None
    step_index: int


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
    step_seconds: tuple[float, ...]  # time spent at each step reached

    @property
    def duration_s(self) -> float:
        return self.finished_at - self.started_at


def decision_record(
    policy: Policy,
    now: float,
    before: Weights,
    decision: Decision,
    *,
    rollout: str,
    tick: int | None,
    step: dict[str, int] | None,
    actor: str,
    judge: str | None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One audit record: who moved (or held) which weights, when and why, with the evidence in `extra`."""
    return {
        "time": iso(now),
        "timestamp": now,
        "rollout": rollout,
        "policy": {"name": policy.name, "file": policy.source_path},
        "target": f"{policy.target.namespace}/{policy.target.virtual_service}",
        "tick": tick,
        "step": step,
        "weights_before": {"baseline": before.baseline, "canary": before.canary},
        "weights_after": {"baseline": decision.weights.baseline, "canary": decision.weights.canary},
        "action": decision.action.value,
        "phase": decision.phase.value,
        "reason": decision.reason,
        "actor": actor,
        "judge": judge,
        "engine": {"name": "canary", "version": __version__},
        **(extra or {}),
    }


def manual_change(
    *, policy: Policy, router: Router, audit: AuditSink, clock: Clock, promote: bool, actor: str, reason: str
) -> tuple[Weights, Decision]:
    """A person's promotion (canary to 100%) or rollback (to 0%): recorded first, then applied.

    A controller running against the same route notices the change at its next tick and stops.
    """
    now = clock.now()
    before = router.get_weights(policy.target)
    if promote:
        decision = Decision(Action.PROMOTE, Weights.canary_at(100), Phase.PROMOTED, reason or "promoted by hand")
    else:
        decision = Decision(Action.ROLLBACK, Weights.canary_at(0), Phase.ROLLED_BACK, reason or "rolled back by hand")
    audit.append(
        decision_record(policy, now, before, decision, rollout="manual", tick=None, step=None, actor=actor, judge=None)
    )
    if decision.weights != before:
        try:
            router.set_weights(policy.target, decision.weights, expected=before)
        except RouterError as exc:
            try:
                if router.get_weights(policy.target) == decision.weights:
                    return before, decision  # the write was made; only its answer was lost
            except RouterError:
                pass
            # The record above announced a change that did not happen: say so.
            failed = Decision(Action.HOLD, before, Phase.ABORTED, f"the change to {decision.weights} failed: {exc}")
            audit.append(
                decision_record(
                    policy,
                    clock.now(),
                    before,
                    failed,
                    rollout="manual",
                    tick=None,
                    step=None,
                    actor=actor,
                    judge=None,
                    extra={"error": str(exc), "reverts": "manual"},
                )
            )
            raise
    return before, decision


class Controller:
    def __init__(
        self,
        *,
        policy: Policy,
        source: MetricsSource,
        router: Router,
        judge: Judge,
        audit: AuditSink,
        clock: Clock,
        actor: str = "canary-controller",
        rollout_id: str | None = None,
    ) -> None:
        self.policy = policy
        self.source = source
        self.router = router
        self.judge = judge
        self.audit = audit
        self.clock = clock
        self.actor = actor
        self.rollout = rollout_id or uuid.uuid4().hex[:12]
        self.state: RolloutState | None = None
        self.ticks = 0
        self.step_seconds: list[float] = []
        self.last_judgement: Judgement | None = None
        self.observed_until: float | None = None  # end of the last window read: windows never leave gaps

    def _record(self, now: float, before: Weights, decision: Decision, extra: dict[str, Any]) -> None:
        assert self.state is not None
        step = {"index": self.state.step_index, "weight": self.state.weight}
        self.audit.append(
            decision_record(
                self.policy,
                now,
                before,
                decision,
                rollout=self.rollout,
                tick=self.ticks,
                step=step,
                actor=self.actor,
                judge=self.judge.name,
                extra=extra,
            )
        )

    def _apply(self, now: float, before: Weights, decision: Decision, previous: RolloutState | None) -> Decision:
        """Move the weights if the decision says so, unless someone moved them since we read them.

        If the router fails, the record just written announced a change that did not happen: a second
        record says so and the rollout stands where it was (`previous`), to try again at the next tick
        when the failure is temporary, or to stop when it is not.
        """
        if decision.weights == before:
            return decision
        try:
            self.router.set_weights(self.policy.target, decision.weights, expected=before)
        except RouterError as exc:
            current = self._current()
            if current == decision.weights:  # the write was made; only its answer was lost
                return decision
            extra = {"error": str(exc), "reverts": self.ticks}
            if previous is not None:
                self.state = previous
            if isinstance(exc, WeightConflict):
                reason = f"{exc}; the change to {decision.weights} was not made"
                return self._abort(now, current or before, reason, extra)
            if previous is None or not exc.temporary or now >= previous.deadline:
                return self._abort(now, before, f"the change to {decision.weights} failed: {exc}", extra)
            held = Decision(
                Action.HOLD, before, previous.phase, f"the change to {decision.weights} failed ({exc}); retrying"
            )
            self._record(now, before, held, extra)
            return held
        return decision

    def _current(self) -> Weights | None:
        """The route's weights now, or None when they cannot be read either."""
        try:
            return self.router.get_weights(self.policy.target)
        except RouterError:
            return None

    def _router_unavailable(self, now: float, exc: RouterError) -> TickReport:
        """The weights could not be read: hold without judging (the window waits for the next tick), or stop
        when the failure is permanent or the deadline has come."""
        assert self.state is not None
        assumed = self.state.weights
        unverified = {"error": str(exc), "weights_unverified": True}
        if not exc.temporary or now >= self.state.deadline:
            why = "traffic router failed" if not exc.temporary else "traffic router still unavailable at the deadline"
            decision = self._abort(now, assumed, f"{why}: {exc}", unverified)
            return TickReport(self.ticks, now, assumed, decision, None, self.state.step_index)
        decision = Decision(Action.HOLD, assumed, self.state.phase, f"traffic router unavailable ({exc}); retrying")
        self._record(now, assumed, decision, unverified)
        return TickReport(self.ticks, now, assumed, decision, None, self.state.step_index)

    def _abort(self, now: float, weights: Weights, reason: str, extra: dict[str, Any] | None = None) -> Decision:
        """Stop the rollout, weights left as they are, with a record saying why."""
        assert self.state is not None
        decision = Decision(Action.HOLD, weights, Phase.ABORTED, f"{reason}; stopping")
        self.state = replace(self.state, phase=Phase.ABORTED)
        self._record(now, weights, decision, extra or {})
        return decision

    def _source_failed(self, now: float, before: Weights, exc: SourceError) -> TickReport:
        """A temporary failure holds the step (the next window starts where the last good one ended); a
        permanent one (a rejected query, refused credentials) stops the rollout after recording it."""
        assert self.state is not None
        if not exc.temporary:
            decision = self._abort(now, before, f"metrics source failed: {exc}", {"error": str(exc)})
            return TickReport(self.ticks, now, before, decision, None, self.state.step_index)
        judgement = Judgement(Outcome.NO_DATA, (), f"metrics source unavailable ({exc}), retrying next tick")
        step_before = self.state.step_index
        state, decision = progression.decide(self.state, judgement, now)
        self._record(now, before, decision, {"error": str(exc), "judgement": judgement_dict(judgement)})
        previous, self.state = self.state, state
        decision = self._apply(now, before, decision, previous)
        return TickReport(self.ticks, now, before, decision, judgement, step_before)

    def start(self) -> TickReport:
        now = self.clock.now()
        before = self.router.get_weights(self.policy.target)
        state, decision = progression.start(self.policy.steps, now, self.policy.max_duration_s, self.policy.on_deadline)
        self.observed_until = now
        self.state = state
        self._record(now, before, decision, {})
        decision = self._apply(now, before, decision, None)
        return TickReport(0, now, before, decision, None, state.step_index)

    def tick(self) -> TickReport:
        if self.state is None:
            raise RuntimeError("start() the rollout before ticking it")
        self.ticks += 1
        now = self.clock.now()
        try:
            before = self.router.get_weights(self.policy.target)
        except WeightConflict:
            raise
        except RouterError as exc:
            return self._router_unavailable(now, exc)
        if before != self.state.weights:
            reason = f"weights changed outside canary: expected {self.state.weights}, found {before}"
            return TickReport(self.ticks, now, before, self._abort(now, before, reason), None, self.state.step_index)
        # From where the last window ended: a tick that runs late must not drop what happened meanwhile.
        start = self.observed_until if self.observed_until is not None else now - self.policy.interval_s
        try:
            observation = self.source.observe(self.policy.target, self.policy.metrics, start, now)
        except SourceError as exc:
            return self._source_failed(now, before, exc)
        self.observed_until = now
        judgement = self.judge.judge(observation, self.state.step_index)
        self.last_judgement = judgement
        step_before = self.state.step_index
        state, decision = progression.decide(self.state, judgement, now)
        extra = {
            "window": {"start": iso(start), "end": iso(now), "seconds": now - start},
            "counts": version_counts(observation, self.policy),
            "observation": observation_dict(observation),  # what the judge saw, so a restart can replay it
            "judgement": judgement_dict(judgement),
        }
        self._record(now, before, decision, extra)  # on disk before the weights move
        previous, self.state = self.state, state
        applied = self._apply(now, before, decision, previous)
        if applied is decision and (state.step_index != step_before or state.phase.finished):
            self.step_seconds.append(now - previous.step_started_at)
        decision = applied
        return TickReport(self.ticks, now, before, decision, judgement, step_before)

    def resume(self, records: Sequence[dict[str, Any]]) -> TickReport:
        """Carry on a rollout after a restart, from its audit records.

        The judge is fed the recorded observations again, in order, and the state machine replays its
        decisions; each must come out as recorded (else the policy or the engine changed and the evidence
        no longer means the same, so nothing is resumed). The next tick re-reads the weights as always,
        so a change made while canary was down stops the rollout.
        """
        first, last = records[0], records[-1]
        if first.get("action") != Action.START.value or last.get("phase") != Phase.PROGRESSING.value:
            raise CanaryError(f"rollout {first.get('rollout')} cannot be resumed: it has no start or has finished")
        self.rollout = str(first["rollout"])
        self.state, _ = progression.start(
            self.policy.steps, float(first["timestamp"]), self.policy.max_duration_s, self.policy.on_deadline
        )
        self.observed_until = float(first["timestamp"])
        previous = self.state
        for record in records[1:]:
            now = float(record["timestamp"])
            self.ticks = int(record["tick"])
            if "reverts" in record:  # a weight change that failed: the rollout stood where it was
                self.state = previous
                continue
            if record.get("weights_unverified"):  # the router could not be read: nothing was judged
                continue
            if "observation" in record:
                judgement = self.judge.judge(observation_from_dict(record["observation"]), self.state.step_index)
                self.observed_until = now
            else:  # a tick whose source failed: nothing was judged
                judgement = Judgement(Outcome.NO_DATA, (), "metrics source unavailable")
            state, decision = progression.decide(self.state, judgement, now)
            recorded = (record.get("action"), record.get("weights_after", {}).get("canary"))
            if recorded != (decision.action.value, decision.weights.canary):
                raise CanaryError(
                    f"rollout {self.rollout} cannot be resumed: at tick {record.get('tick')} the audit log says "
                    f"{recorded[0]} to {recorded[1]}%, replaying it gives {decision.action.value} to "
                    f"{decision.weights.canary}% (the policy or the engine changed)"
                )
            if state.step_index != self.state.step_index:
                self.step_seconds.append(now - self.state.step_started_at)
            previous = self.state
            self.state, self.last_judgement = state, judgement
        announced, was = Weights(**last["weights_after"]), Weights(**last["weights_before"])
        if "reverts" not in last and announced != was and self._current() == was:
            # canary stopped between the record and the write: the change announced was never made.
            self.state = previous
            now = self.clock.now()
            decision = Decision(
                Action.HOLD,
                was,
                previous.phase,
                f"the change to {announced} recorded at tick {self.ticks} was never made",
            )
            self._record(now, was, decision, {"reverts": self.ticks})
            return TickReport(self.ticks, now, was, decision, self.last_judgement, self.state.step_index)
        decision = Decision(Action.HOLD, announced, self.state.phase, f"resumed at tick {self.ticks}")
        return TickReport(
            self.ticks, float(last["timestamp"]), announced, decision, self.last_judgement, self.state.step_index
        )

    def run(
        self, on_tick: Callable[[TickReport], None] | None = None, *, resume: Sequence[dict[str, Any]] = ()
    ) -> RolloutResult:
        """Start (or, given an unfinished rollout's audit records, resume) and tick until the end."""
        report = self.resume(resume) if resume else self.start()
        started = float(resume[0]["timestamp"]) if resume else report.now
        if on_tick:
            on_tick(report)
        assert self.state is not None
        while not self.state.phase.finished:
            self.clock.sleep(self.policy.interval_s)
            report = self.tick()
            if on_tick:
                on_tick(report)
        return RolloutResult(
            rollout=self.rollout,
            phase=self.state.phase,
            decision=report.decision,
            ticks=self.ticks,
            started_at=started,
            finished_at=report.now,
            judgement=self.last_judgement,
            audit_path=str(self.audit.path),
            step_seconds=tuple(self.step_seconds),
        )


def unfinished_rollout(records: Sequence[dict[str, Any]], policy: Policy) -> list[dict[str, Any]]:
    """The records of the policy's last rollout in an audit log, if it has not finished; else none."""
    ids = [r.get("rollout") for r in records if (r.get("policy") or {}).get("name") == policy.name]
    ids = [i for i in ids if i != "manual"]
    if not ids:
        return []
    last = [r for r in records if r.get("rollout") == ids[-1]]
    return last if last[-1].get("phase") == Phase.PROGRESSING.value else []
