"""Audit records as typed values: one encoder, one decoder, and the hash chain that links them.

Three kinds, each with a schema version on disk:
- a *decision*: who or what decided which weights, when, on what evidence and why. One that changes the
  route (`writes`) is an intent: it is on disk before the write and is followed by exactly one outcome;
- an *outcome*: whether that write was applied, or failed and why;
- a *note*: something the log itself must say (a torn last line set aside, a log that does not match its
  route).

Each line is the record's JSON with `prev_hash` (the previous line's `hash`) and `hash` = SHA-256 of the
previous hash and the canonical JSON of the rest. The outcome of a successful write is known before the
write is made (`applied_outcome`), so the route's state can carry its hash: the route then anchors the
log, and a log cut short or re-hashed no longer leads to the head the route holds.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

from canary.codec import DecodeError, from_data, to_data
from canary.errors import AuditError
from canary.model import Action, Phase, Weights
from canary.secrets import scrub_data

RECORD_SCHEMA = 1
GENESIS = "0" * 64


@dataclass(frozen=True)
class PolicyRef:
    name: str
    digest: str
    file: str


@dataclass(frozen=True)
class RouteName:
    namespace: str
    virtual_service: str
    route: str | None = None  # the http route's name, if the policy names one

    def __str__(self) -> str:
        return f"{self.namespace}/{self.virtual_service}" + (f" route {self.route}" if self.route else "")


@dataclass(frozen=True)
class Window:
    start: float
    end: float


@dataclass(frozen=True)
class DecisionRecord:
    time: float
    rollout: str
    policy: PolicyRef
    target: RouteName
    action: Action
    phase: Phase  # the rollout's phase after this decision
    weights_before: Weights | None  # None: the route could not be read
    weights_after: Weights | None
    reason: str
    actor: str
    writes: bool  # the route is written for this decision: an outcome record follows
    tick: int | None = None  # the controller's tick; None for a manual command or a tick that judged nothing
    step: int | None = None  # index in the policy's steps after the decision
    judge: str | None = None
    window: Window | None = None
    counts: dict[str, Any] | None = None  # per version, summed over pods (what a person reads)
    observation: dict[str, Any] | None = None  # per metric, version and pod (what the judge saw)
    judgement: dict[str, Any] | None = None
    error: str | None = None
    gates: list[dict[str, Any]] | None = None  # what each webhook gate asked before this tick answered
    engine: str = ""
    kind: Literal["decision"] = "decision"

    @property
    def verdicts(self) -> list[dict[str, Any]]:
        """Each check's verdict in the judgement, as recorded; an edited record's odd entries are left out and
        its `figures`, when not a mapping, read as none."""
        verdicts = (self.judgement or {}).get("verdicts")
        if not isinstance(verdicts, list):
            return []
        return [
            v if isinstance(v.get("figures", {}), dict) else {**v, "figures": {}}
            for v in verdicts
            if isinstance(v, dict)
        ]


@dataclass(frozen=True)
class OutcomeRecord:
    time: float
    rollout: str
    of: str  # the hash of the decision whose write this is the outcome of
    result: Literal["applied", "failed"]
    weights: Weights | None  # what the route holds afterwards (None: unknown)
    reason: str
    kind: Literal["outcome"] = "outcome"


@dataclass(frozen=True)
class NoteRecord:
    time: float
    reason: str
    actor: str
    rollout: str | None = None
    details: dict[str, Any] | None = None
    kind: Literal["note"] = "note"


Record = DecisionRecord | OutcomeRecord | NoteRecord
KINDS: dict[str, type[DecisionRecord] | type[OutcomeRecord] | type[NoteRecord]] = {
    "decision": DecisionRecord,
    "outcome": OutcomeRecord,
    "note": NoteRecord,
}


@dataclass(frozen=True)
class Sealed:
    """A record as it stands in the log: its body, chained."""

    record: Record
    prev_hash: str
    hash: str
    line: int | None = None  # 1-based line in the file it was read from

    def encode(self) -> bytes:
        """The whole line, newline included: what one append writes."""
        return (json.dumps(_with_chain(self.record, self.prev_hash, self.hash), **_CANONICAL) + "\n").encode()


_CANONICAL: dict[str, Any] = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": True, "allow_nan": False}


def _body(record: Record, prev_hash: str) -> dict[str, Any]:
    body: dict[str, Any] = scrub_data(to_data(record))  # no known secret is ever sealed into the log
    body["schema"] = RECORD_SCHEMA
    body["prev_hash"] = prev_hash
    return body


def _with_chain(record: Record, prev_hash: str, digest: str) -> dict[str, Any]:
    body = _body(record, prev_hash)
    body["hash"] = digest
    return body


def digest(prev_hash: str, body: dict[str, Any]) -> str:
    canonical = json.dumps({k: v for k, v in body.items() if k != "hash"}, **_CANONICAL)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def seal(record: Record, prev_hash: str) -> Sealed:
    return Sealed(record, prev_hash, digest(prev_hash, _body(record, prev_hash)))


def applied_outcome(decision: Sealed) -> OutcomeRecord:
    """The outcome a successful write of `decision` records: fixed before the write, so its hash can go
    into the state the write carries (and a restart that finds that state knows the write was made)."""
    record = decision.record
    assert isinstance(record, DecisionRecord) and record.writes
    return OutcomeRecord(
        time=record.time,
        rollout=record.rollout,
        of=decision.hash,
        result="applied",
        weights=record.weights_after,
        reason=f"the route holds {record.weights_after}" if record.weights_after else "the route's state is written",
    )


def decode(data: Any, where: str) -> Sealed:
    """A record from one parsed line; AuditError names the line and the field that does not fit."""
    if not isinstance(data, dict):
        raise AuditError(f"{where}: not a JSON object")
    schema = data.get("schema")
    if schema != RECORD_SCHEMA:
        raise AuditError(f"{where}: record schema {schema!r}, this canary reads schema {RECORD_SCHEMA}")
    kind = KINDS.get(str(data.get("kind")))
    if kind is None:
        raise AuditError(f"{where}: unknown record kind {data.get('kind')!r}")
    prev, digest_ = data.get("prev_hash"), data.get("hash")
    if not isinstance(prev, str) or not isinstance(digest_, str):
        raise AuditError(f"{where}: no prev_hash and hash")
    fields = {k: v for k, v in data.items() if k not in ("schema", "prev_hash", "hash")}
    try:
        record = from_data(kind, fields)
    except DecodeError as exc:
        raise AuditError(f"{where}: {exc}") from None
    return Sealed(record, prev, digest_)


def chain_holds(data: dict[str, Any], prev_hash: str) -> bool:
    """The line's own hash checks out and it follows `prev_hash`."""
    return data.get("prev_hash") == prev_hash and digest(prev_hash, data) == data.get("hash")
