"""A rollout's state as one typed, versioned value: what the route holds beside its weights.

The state is written in the same write as the weights (an annotation on the VirtualService, guarded by
its resourceVersion; the same annotation in a manifest file, in the same atomic rename), so the two can
never disagree. Everything a command needs to carry on is here, the judge's evidence included, so a
restart reads the route and goes on; the audit log is the history, never replayed to remember where a
rollout stands. `audit_head` anchors that history: the hash of the last record the route's write
accounts for, so a log cut short, rewritten or re-hashed no longer matches its route.

One encoder and one decoder (`encode_state`, `decode_state`), with a schema version in every value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from canary.codec import DecodeError, JsonError, from_data, parse_json, to_data
from canary.errors import StateError
from canary.model import Action, Phase, Weights
from canary.policy import Policy, steps_problem
from canary.secrets import scrub_data

STATE_SCHEMA = 1
ANNOTATION = "canary.dev/rollout-state"  # where the state lives on the VirtualService


@dataclass(frozen=True)
class LastDecision:
    """The decision the state was written for, in a line."""

    time: float
    action: Action
    reason: str
    actor: str
    tick: int | None


@dataclass(frozen=True)
class RolloutState:
    rollout: str
    policy: str  # the policy's name
    policy_digest: str  # what the policy said (steps, metrics, tolerances, judge): a resumed rollout needs the same
    judge: str
    phase: Phase
    steps: tuple[int, ...]
    step_index: int
    weights: Weights  # what canary last set (or found, when it stopped without moving them)
    started_at: float
    step_started_at: float
    deadline: float
    on_deadline: str
    tick: int
    observed_until: float  # the end of the last window judged: the next one starts here, no gap
    evidence: Any  # the judge's state: its `state_type` in memory, plain data until the judge's type decodes it
    last: LastDecision
    audit_head: str  # the hash of the last audit record this write accounts for
    step_seconds: tuple[float, ...] = ()  # time spent at each step left so far
    paused_at: float | None = None  # when a person paused it (the deadline and the step's clock stop)
    approved: tuple[int, ...] = ()  # step weights a person approved (the policy's `approvals`)
    opened: tuple[str, ...] = ()  # webhook gates that said go, as "name@weight"
    waiting_since: float | None = None  # when the passed step began to wait for its gates
    simulated: bool = False  # runs on simulated time: a person's command on it is recorded at its time
    unseen_since: float | None = None  # since when a version with requests due to it has shown no series
    runner: str = ""  # the `canary run` driving it (its id): a later `run --resume` takes over, the earlier stops
    release: str = ""  # what the pipeline rolls out (`run --release`): `--resume` carries on that release only
    schema: int = STATE_SCHEMA

    @property
    def weight(self) -> int:
        return self.steps[self.step_index]

    def gate_open(self, name: str, weight: int) -> bool:
        """Whether the webhook gate `name` before `weight` has said go."""
        return gate_key(name, weight) in self.opened


def gate_key(name: str, weight: int) -> str:
    """How `opened` names a gate that said go: the gate and the weight it guards."""
    return f"{name}@{weight}"


def policy_digest(policy: Policy) -> str:
    """A short digest of what the policy decides with (not where it was read from, whom it tells, or where
    its links point)."""
    data = to_data(dataclasses.replace(policy, source_path="", audit_path=None, notifications=()))
    data.pop("links", None)
    if not data.get("webhooks"):  # a policy without webhooks keeps the digest it had before they existed
        data.pop("webhooks", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


# Fields added within schema 1, left out of the annotation at their defaults: the canary before them reads
# such a state (it refuses, in one line, a field it does not know). `runner` is set on every rollout a
# `canary run` starts or resumes, so that canary cannot carry on one this version ran; the reverse holds.
OPTIONAL_FIELDS: dict[str, object] = {"simulated": False, "unseen_since": None, "runner": "", "release": ""}


def encode_state(state: RolloutState) -> str:
    """The state as compact JSON, the form it takes in the annotation."""
    data = to_data(state)
    for name, default in OPTIONAL_FIELDS.items():
        if data.get(name) == default:
            del data[name]
    return json.dumps(scrub_data(data), separators=(",", ":"), sort_keys=False, allow_nan=False)


def decode_state(text: str, evidence_type: type | None = None) -> RolloutState:
    """The state from its annotation; the judge's evidence too when its type is given.

    Raises StateError naming the field that does not fit (a hand edit, a newer canary's schema).
    """
    try:
        data = parse_json(text)
    except JsonError as exc:
        raise StateError(exc.message) from None
    if not isinstance(data, dict):
        raise StateError("not a JSON object")
    schema = data.get("schema")
    if schema != STATE_SCHEMA:
        raise StateError(f"schema {schema!r}, this canary reads schema {STATE_SCHEMA} (written by another version?)")
    try:
        state: RolloutState = from_data(RolloutState, data)
        if evidence_type is not None and state.evidence is not None:
            state = dataclasses.replace(state, evidence=from_data(evidence_type, state.evidence, "evidence"))
    except DecodeError as exc:
        raise StateError(str(exc)) from None
    problem = _impossible(state)
    if problem is not None:
        raise StateError(problem)
    return state


def _impossible(state: RolloutState) -> str | None:
    """What no canary writes: a field that decodes but cannot be (a hand edit of the annotation)."""
    steps = list(state.steps)
    problem = steps_problem(steps)
    if problem is not None:
        return f"steps{problem[0]}: {problem[1]}"
    if not 0 <= state.step_index < len(steps):
        return f"step_index: {state.step_index} is not a step of {steps}"
    if state.tick < 0:
        return f"tick: {state.tick} is negative"
    times = {"started_at": state.started_at, "step_started_at": state.step_started_at, "deadline": state.deadline,
             "observed_until": state.observed_until, "last.time": state.last.time, "paused_at": state.paused_at,
             "waiting_since": state.waiting_since}  # fmt: skip
    for name, value in times.items():
        if value is not None and not (math.isfinite(value) and value >= 0):
            return f"{name}: {value} is not a time"
    if any(not (math.isfinite(s) and s >= 0) for s in state.step_seconds):
        return f"step_seconds: {list(state.step_seconds)} holds a time that cannot be spent"
    if not set(state.approved) <= set(steps):
        return f"approved: {list(state.approved)} names a weight that is not a step of {steps}"
    return None
