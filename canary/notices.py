"""What a notification says (pure): the event a tick's decision is, and its payload in each format.

Events: start, step (a step passed, the canary's weight raised), promoted, rolled-back, inconclusive (the
deadline came without evidence), cancelled, aborted. Formats: `json` (canary's own document), `slack` (an
incoming webhook's `text`), `teams` (an Office 365 connector MessageCard).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from canary.model import Action, Decision, Phase
from canary.report import iso

_EVENTS = {
    Action.START: "start",
    Action.ADVANCE: "step",
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


def event_of(decision: Decision) -> str | None:
    """The event a decision is, or None (a hold tells nobody anything)."""
    if decision.phase is Phase.INCONCLUSIVE:
        return "inconclusive"
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
