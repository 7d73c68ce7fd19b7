"""What a notification says (pure): the event a tick's decision is, and its payload in each format.

Events: start, step (a step passed or a person promoted one, the canary's weight raised), paused, continued,
waiting (a passed step begins to wait at a gate), approved, promoted, rolled-back, inconclusive (the deadline
came without evidence), cancelled, aborted. Formats: `json` (canary's own document), `slack` (an
incoming webhook's `text`), `teams` (an Office 365 connector MessageCard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canary.model import Action, Decision, Phase, Weights
from canary.policy import Policy, Webhook
from canary.report import iso
from canary.state import RolloutState

_EVENTS = {
    Action.START: "start",
    Action.ADVANCE: "step",
    Action.PAUSE: "paused",
    Action.CONTINUE: "continued",
    Action.APPROVE: "approved",
    Action.PROMOTE: "promoted",
    Action.ROLLBACK: "rolled-back",
    Action.CANCEL: "cancelled",
    Action.ABORT: "aborted",
}


@dataclass(frozen=True)
class Notice:
    event: str
    policy: str
    rollout: str
    time: float
    decision: Decision
    step: int
    host: str


def event_of(decision: Decision, was: Phase | None = None) -> str | None:
    """The event a decision is, or None (a hold tells nobody anything, but the start of a wait at a gate:
    `was` is the phase before it)."""
    if decision.phase is Phase.INCONCLUSIVE:
        return "inconclusive"
    if decision.phase is Phase.WAITING and was is not Phase.WAITING and decision.action is Action.HOLD:
        return "waiting"
    return _EVENTS.get(decision.action)


def headline(notice: Notice) -> str:
    weights = notice.decision.weights
    return (
        f"canary {notice.policy}: {notice.event} ({notice.host}, canary at {weights.canary}%): {notice.decision.reason}"
    )


def payload(notice: Notice, format: str) -> dict[str, Any]:
    if format == "slack":
        return {"text": headline(notice)}
    if format == "teams":
        color = {"promoted": "2EB886", "rolled-back": "D00000", "aborted": "D00000", "inconclusive": "FFA500"}
        return {
            "@type": "MessageCard",
            "@context": "https://schema.org/extensions",
            "summary": f"canary {notice.policy}: {notice.event}",
            "themeColor": color.get(notice.event, "0076D7"),
            "title": f"canary {notice.policy}: {notice.event}",
            "text": headline(notice),
        }
    weights = notice.decision.weights
    return {
        "event": notice.event,
        "policy": notice.policy,
        "rollout": notice.rollout,
        "host": notice.host,
        "time": iso(notice.time),
        "phase": notice.decision.phase.value,
        "action": notice.decision.action.value,
        "step": notice.step,
        "weights": {"baseline": weights.baseline, "canary": weights.canary},
        "reason": notice.decision.reason,
    }


def hook_body(policy: Policy, hook: Webhook, state: RolloutState | None, weights: Weights) -> dict[str, Any]:
    """What a pre-rollout, gate or post-rollout webhook is sent: the rollout's state (None before it starts)."""
    t = policy.target
    body: dict[str, Any] = {
        "webhook": hook.name,
        "type": hook.type,
        "policy": policy.name,
        "target": {
            "namespace": t.namespace,
            "virtualService": t.virtual_service,
            "host": t.host,
            "baseline": t.baseline,
            "canary": t.canary,
        },
        "weights": {"baseline": weights.baseline, "canary": weights.canary},
        "rollout": None,
    }
    if state is not None:
        ahead = state.steps[state.step_index + 1] if state.step_index + 1 < len(state.steps) else None
        body["rollout"] = {
            "id": state.rollout,
            "phase": state.phase.value,
            "step": state.step_index,
            "steps": list(state.steps),
            "nextWeight": ahead if hook.type == "gate" else None,
            "startedAt": iso(state.started_at),
            "waitingSince": iso(state.waiting_since) if state.waiting_since is not None else None,
            "lastDecision": {"action": state.last.action.value, "reason": state.last.reason, "actor": state.last.actor},
        }
    return body
