"""Reading an audit log afterwards: the rollouts it holds, one row per check per tick, and a replay of every
automated decision from the inputs the log recorded. Pure: records in, values out (the CLI reads the file).

A replay rebuilds the judge from a policy and feeds it, tick by tick, exactly the observation each decision
record carries (per metric, version and pod), at the step the rollout was in. With the policy the rollout
ran under, every judgement must come out as recorded — outcome, each check's verdict and its words; any
difference means the log, the engine or the policy is not what it claims. With another policy it shows
where that policy would have judged the same evidence differently. It re-judges what was observed: a policy
that would have moved the weights at other times would also have seen other traffic, which no log holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from canary.errors import AuditError
from canary.judges import Judge
from canary.model import Action, Judgement, Outcome, Phase, Weights
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord, PolicyRef, Sealed
from canary.report import judgement_dict, observation_from_dict

CONTROLLER = "canary-controller"
SIMULATED = "(simulated mesh)"  # the simulated controller's actor ends so; its records keep simulated time


def _automated(record: DecisionRecord) -> bool:
    return record.actor.startswith(CONTROLLER)


@dataclass
class RolloutSummary:
    """One rollout in a log: how it ended, how long it took, who acted besides the controller."""

    rollout: str
    policy: str
    judge: str | None
    started: float
    ended: float
    outcome: str  # the phase after its last decision the route took (a change made, or one that writes nothing)
    ticks: int
    final_weights: Weights | None  # what the route holds after its last settled change
    people: list[str] = field(default_factory=list)  # actors other than the controller, in order of first act
    changes_failed: int = 0
    changes_applied: int = 0
    unsettled: str | None = None  # the phase a last change would bring, when the log holds no outcome of it yet

    @property
    def duration_s(self) -> float:
        return self.ended - self.started


NOT_STARTED = "not-started"  # a rollout whose start never reached the route
OPEN_PHASES = frozenset(phase.value for phase in Phase if phase.open)


def rollouts(sealed: Iterable[Sealed]) -> list[RolloutSummary]:
    """The rollouts of a log in the order they started, each timed from its first record to its last. A
    person's command on a rollout running on simulated time is recorded at that time; in logs written before
    it was, such a command came on the wall clock, so a simulated rollout is timed by its controller's
    records only."""
    found: dict[str, RolloutSummary] = {}
    simulated: set[str] = set()
    timed: dict[str, bool] = {}  # per rollout: whether its last decision's clock times it
    ticks: dict[str, dict[str, int]] = {}  # per rollout, decision hash -> its tick (a failed write's removed)
    changes: dict[str, tuple[str, Weights | None]] = {}  # a change's hash -> its phase and weights, until settled
    for item in sealed:
        record = item.record
        if isinstance(record, DecisionRecord):
            summary = found.get(record.rollout)
            if summary is None:
                summary = found[record.rollout] = RolloutSummary(
                    record.rollout, record.policy.name, record.judge, record.time, record.time, record.phase.value,
                    0, record.weights_before if record.writes else record.weights_after,
                )  # fmt: skip
                if record.actor.endswith(SIMULATED):
                    simulated.add(record.rollout)
            timed[record.rollout] = record.rollout not in simulated or record.actor.endswith(SIMULATED)
            if timed[record.rollout]:
                summary.ended = record.time
            summary.judge = summary.judge or record.judge
            if record.tick is not None:
                ticks.setdefault(record.rollout, {})[item.hash] = record.tick
            if record.writes:  # a change: what it says holds once its outcome says it was made
                changes[item.hash] = (record.phase.value, record.weights_after)
                summary.unsettled = record.phase.value
            else:
                summary.outcome = record.phase.value
                summary.final_weights = record.weights_after or summary.final_weights
            if not _automated(record) and record.actor not in summary.people:
                summary.people.append(record.actor)
        elif isinstance(record, OutcomeRecord) and record.rollout in found:
            summary = found[record.rollout]
            if timed[record.rollout]:
                summary.ended = max(summary.ended, record.time)
            phase, weights = changes.pop(record.of, (summary.outcome, None))
            summary.unsettled = None
            if record.result == "failed":
                summary.changes_failed += 1
                ticks.get(record.rollout, {}).pop(record.of, None)  # the route never took that tick
            else:
                summary.changes_applied += 1
                summary.outcome, summary.final_weights = phase, weights or summary.final_weights
            summary.final_weights = record.weights or summary.final_weights  # what the route holds after it
    for summary in found.values():
        summary.ticks = max(ticks.get(summary.rollout, {}).values(), default=0)
        if summary.changes_failed and not summary.changes_applied and summary.outcome in OPEN_PHASES:
            summary.outcome = NOT_STARTED  # its start never reached the route: nothing ran
    return list(found.values())


EXPORT_COLUMNS = (
    "rollout", "tick", "time", "step", "canary_weight", "action", "actor", "check", "outcome", "estimate",
    "lower", "upper", "tolerance", "e_value", "p_value", "baseline_requests", "canary_requests", "summary",
)  # fmt: skip


def check_rows(sealed: Iterable[Sealed]) -> list[dict[str, Any]]:
    """One row per check per judged tick, the columns of EXPORT_COLUMNS (None where a check has no figure)."""
    rows = []
    for item in sealed:
        record = item.record
        if not isinstance(record, DecisionRecord):
            continue
        for verdict in record.verdicts:
            figures = verdict.get("figures") or {}
            estimate, interval, tolerance = _effect(figures)
            requests = _requests(figures)
            rows.append({
                "rollout": record.rollout, "tick": record.tick, "time": record.time, "step": record.step,
                "canary_weight": record.weights_after.canary if record.weights_after else None,
                "action": record.action.value, "actor": record.actor, "check": verdict.get("metric"),
                "outcome": verdict.get("outcome"), "estimate": estimate, "lower": interval[0], "upper": interval[1],
                "tolerance": tolerance, "e_value": figures.get("e_value"), "p_value": figures.get("p_value"),
                "baseline_requests": requests[0], "canary_requests": requests[1], "summary": verdict.get("summary"),
            })  # fmt: skip
    return rows


def _effect(figures: dict[str, Any]) -> tuple[Any, tuple[Any, Any], Any]:
    """The check's estimate, its fail interval and its tolerance, in the check's own units: a rate
    difference (error rate, custom) or an excess share of slow requests (latency)."""
    for name in ("difference", "excess"):
        if name in figures:
            cs = figures.get(f"{name}_cs")
            lower, upper = cs if isinstance(cs, list) and len(cs) == 2 else (None, None)
            return figures[name], (lower, upper), figures.get("max_increase")
    return None, (None, None), figures.get("max_increase")


def _requests(figures: dict[str, Any]) -> tuple[Any, Any]:
    if isinstance(figures.get("requests"), dict):
        return figures["requests"].get("baseline"), figures["requests"].get("canary")
    base, can = figures.get("baseline"), figures.get("canary")
    if isinstance(base, dict) and isinstance(can, dict):
        return base.get("requests"), can.get("requests")
    return None, None


@dataclass(frozen=True)
class Rejudged:
    """One automated tick judged again."""

    rollout: str
    tick: int | None
    recorded: str  # the recorded judgement's outcome
    now: str  # the replay's
    differences: tuple[str, ...]  # what differs, in words (empty: the same judgement)
    other_figures: bool = False  # the same outcomes, with other figures (bounds, e-values)


@dataclass(frozen=True)
class Replay:
    ticks: tuple[Rejudged, ...]

    @property
    def differing(self) -> tuple[Rejudged, ...]:
        return tuple(t for t in self.ticks if t.differences)


def replay(
    sealed: Iterable[Sealed],
    judge_for: Callable[[PolicyRef, str | None], Judge],
    *,
    strict: bool = True,
    source: str = "audit log",
) -> Replay:
    """Judge every automated tick of every rollout again, from its recorded observation and step. `strict`
    (the recorded policy): the verdicts' words must match too; otherwise outcomes only. An observation that
    cannot be read is an AuditError naming `source` and the line."""
    out: list[Rejudged] = []
    evidence: dict[str, Any] = {}
    judges: dict[str, Judge] = {}
    step: dict[str, int] = {}
    for item in sealed:
        record = item.record
        if isinstance(record, (OutcomeRecord, NoteRecord)):
            continue
        rollout = record.rollout
        if record.action is Action.START and rollout not in judges:
            judges[rollout] = judge_for(record.policy, record.judge)
            evidence[rollout] = judges[rollout].start()
        if rollout in judges and _automated(record) and record.observation is not None and record.judgement:
            judge = judges[rollout]
            try:
                observation = observation_from_dict(record.observation)
            except ValueError as exc:
                raise AuditError(f"{source}:{item.line}: {exc}") from None
            evidence[rollout], judgement = judge.judge(evidence[rollout], observation, step.get(rollout, 0))
            out.append(_compare(record, judgement, strict))
        if record.step is not None:
            step[rollout] = record.step
    return Replay(tuple(out))


def _compare(record: DecisionRecord, judgement: Judgement, strict: bool) -> Rejudged:
    recorded = record.judgement or {}
    now = judgement_dict(judgement)
    differences = []
    other_figures = False
    if recorded.get("outcome") != now["outcome"]:
        differences.append(f"outcome {recorded.get('outcome')} -> {now['outcome']}")
    before = {v.get("metric"): v for v in record.verdicts}
    for verdict in now["verdicts"]:
        was = before.pop(verdict["metric"], None)
        if was is None:
            differences.append(f"{verdict['metric']}: not in the record")
        elif was.get("outcome") != verdict["outcome"]:
            differences.append(f"{verdict['metric']}: {was.get('outcome')} -> {verdict['outcome']}")
        elif was.get("summary") != verdict["summary"]:
            other_figures = True
            if strict:
                differences.append(f"{verdict['metric']}: the same outcome, other figures: {verdict['summary']}")
    differences += [f"{metric}: recorded, not judged now" for metric in before]
    return Rejudged(
        record.rollout, record.tick, str(recorded.get("outcome")), now["outcome"], tuple(differences), other_figures
    )


def first(ticks: Iterable[Rejudged], outcome: str, *, recorded: bool) -> int | None:
    """The first tick whose (recorded or replayed) judgement has this outcome."""
    for t in ticks:
        if (t.recorded if recorded else t.now) == outcome:
            return t.tick
    return None


def compare_decisions(ticks: tuple[Rejudged, ...]) -> list[str]:
    """Per rollout, in words, where the replayed policy's first failure or pass differs from the record's."""
    lines = []
    for rollout in dict.fromkeys(t.rollout for t in ticks):
        mine = tuple(t for t in ticks if t.rollout == rollout)
        for outcome, word in ((Outcome.FAIL.value, "rollback"), (Outcome.PASS.value, "first pass")):
            was, now = first(mine, outcome, recorded=True), first(mine, outcome, recorded=False)
            if was == now:
                continue
            if now is None:
                lines.append(f"{rollout}: the {word} at tick {was} does not happen within the recorded ticks")
            elif was is None:
                lines.append(f"{rollout}: a {word} at tick {now}, where the record has none")
            else:
                shift = now - was
                lines.append(f"{rollout}: the {word} happens at tick {now}, {abs(shift)} tick{'s' * (abs(shift) != 1)} "
                             f"{'later' if shift > 0 else 'earlier'} than recorded ({was})")  # fmt: skip
    return lines


def latest_decision(sealed: Iterable[Sealed], rollout: str) -> DecisionRecord | None:
    """The rollout's last judged decision in the log (what `canary status` explains)."""
    last = None
    for item in sealed:
        record = item.record
        if isinstance(record, DecisionRecord) and record.rollout == rollout and record.judgement:
            last = record
    return last


@dataclass(frozen=True)
class Excess:
    """A check's estimate and bounds less its tolerance, so above 0 is worse than allowed whatever the check's
    units: the fail sequence's bounds, and the step's pass bound (NaN where the check has none)."""

    estimate: float
    lower: float
    upper: float
    pass_upper: float


def excess(figures: dict[str, Any]) -> Excess | None:
    """A ratio check reports its difference (less the tolerance here), a latency check its excess share,
    already relative to the tolerance; None for a check with no estimate yet."""
    est, (low, high), tolerance = _effect(figures)
    if not isinstance(est, float):
        return None
    shift = float(tolerance or 0.0) if "difference" in figures else 0.0
    passing = figures.get("step_difference_cs") or figures.get("step_excess_cs")
    if not isinstance(passing, list | tuple) or len(passing) != 2:
        passing = (None, None)

    def less(x: Any) -> float:
        return float(x) - shift if x is not None else math.nan

    return Excess(est - shift, less(low), less(high), less(passing[1]))


def minutes_to_decision(figures: dict[str, Any], step_minutes: float, rollout_minutes: float) -> float | None:
    """About how long until a check decides at the current traffic, if its estimate holds: a bound shrinks
    about as 1 / sqrt(requests), so the requests needed grow as (half-width / distance)². The fail sequence
    spans the rollout, the pass sequence the step. None when there is no estimate to extrapolate."""
    found = excess(figures)
    if found is None or math.isnan(found.lower) or math.isnan(found.pass_upper):
        return None
    est, lower, upper = found.estimate, found.lower, found.pass_upper
    if est > 0 and lower < 0 < rollout_minutes:
        factor, spent = ((est - lower) / est) ** 2, rollout_minutes
    elif est < 0 < upper and step_minutes > 0:
        factor, spent = ((upper - est) / -est) ** 2, step_minutes
    else:
        return None
    return max(factor - 1.0, 0.0) * spent if math.isfinite(factor) and math.isfinite(spent) else None
