"""Value types that cross canary's seams: counts in, verdicts and decisions out.

Everything here is immutable and free of I/O, so sources, judges, the controller and the audit log can
pass these around without sharing state.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# Istio's default buckets for istio_request_duration_milliseconds (upper edges, ms; +Inf implied).
ISTIO_LATENCY_BUCKETS_MS: tuple[float, ...] = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000,
    300000, 600000, 1800000, 3600000,
)  # fmt: skip


@dataclass(frozen=True)
class Weights:
    """Traffic split of the VirtualService route, in percent."""

    baseline: int
    canary: int

    def __post_init__(self) -> None:
        if self.baseline < 0 or self.canary < 0 or self.baseline + self.canary != 100:
            raise ValueError(f"weights must be non-negative and sum to 100, got {self.baseline}/{self.canary}")

    @classmethod
    def canary_at(cls, percent: int) -> Weights:
        return cls(baseline=100 - percent, canary=percent)

    def __str__(self) -> str:
        return f"{self.baseline}/{self.canary}"


MAX_COUNT = 2**53  # a float holds every integer up to here exactly: a larger count is no count


@dataclass(frozen=True)
class Ratio:
    """Events out of trials over one window (errors out of requests, for example)."""

    events: int
    trials: int

    def __post_init__(self) -> None:
        if self.events < 0 or self.trials < 0 or self.events > self.trials:
            raise ValueError(f"need 0 <= events <= trials, got {self.events}/{self.trials}")
        if self.trials > MAX_COUNT:
            raise ValueError(f"{self.trials} trials: more than a count can be (2^53)")

    def __add__(self, other: Ratio) -> Ratio:
        return Ratio(self.events + other.events, self.trials + other.trials)


@dataclass(frozen=True)
class Histogram:
    """Request counts per latency bucket over one window (not cumulative).

    `bounds` are the finite upper edges, ascending; `counts` has one more entry than `bounds`, the last
    being the +Inf bucket. Prometheus stores cumulative counts; `from_cumulative` converts.
    """

    bounds: tuple[float, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.counts) != len(self.bounds) + 1:
            raise ValueError(f"{len(self.bounds)} bucket bounds need {len(self.bounds) + 1} counts")
        if not min(self.counts) >= 0:  # NaN too
            raise ValueError("bucket counts must be non-negative")
        if sum(self.counts) > MAX_COUNT:
            raise ValueError("bucket counts add to more than a count can be (2^53)")
        if not all(map(math.isfinite, self.bounds)):
            raise ValueError("bucket bounds must be finite numbers")
        if list(self.bounds) != sorted(set(self.bounds)):
            raise ValueError("bucket bounds must be strictly increasing")

    @classmethod
    def from_cumulative(cls, cumulative: Mapping[float, int]) -> Histogram:
        """From Prometheus-style `le -> cumulative count`, with `math.inf` as the +Inf key."""
        if math.inf not in cumulative:
            raise ValueError("a histogram needs its +Inf bucket")
        edges = sorted(cumulative)
        totals = [cumulative[e] for e in edges]
        if any(b < a for a, b in itertools.pairwise(totals)):
            raise ValueError("cumulative bucket counts must not decrease")
        counts = [totals[0]] + [b - a for a, b in itertools.pairwise(totals)]
        return cls(bounds=tuple(edges[:-1]), counts=tuple(counts))

    def cumulative(self) -> dict[float, int]:
        out: dict[float, int] = {}
        running = 0
        for edge, count in zip((*self.bounds, math.inf), self.counts, strict=True):
            running += count
            out[edge] = running
        return out

    @property
    def total(self) -> int:
        return sum(self.counts)

    def __add__(self, other: Histogram) -> Histogram:
        if self.bounds != other.bounds:
            raise ValueError("cannot add histograms with different bucket layouts")
        return Histogram(self.bounds, tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)))


Sample = Ratio | Histogram


@dataclass(frozen=True)
class MetricWindow:
    """One metric over one window for both versions, split by pod (pod name -> sample).

    A version with no series at all has an empty mapping: that is "no data", never zero.
    """

    baseline: Mapping[str, Sample]
    canary: Mapping[str, Sample]


@dataclass(frozen=True)
class Observation:
    """What a metrics source saw for both versions over [start, end) (seconds since the epoch)."""

    start: float
    end: float
    metrics: Mapping[str, MetricWindow]


class Outcome(enum.StrEnum):
    """A judge's verdict on one metric (or on all of them)."""

    PASS = "pass"
    FAIL = "fail"
    CONTINUE = "continue"  # not enough evidence either way yet
    NO_DATA = "no-data"


@dataclass(frozen=True)
class Verdict:
    """A judge's answer for one metric at one tick, with the figures behind it."""

    metric: str
    outcome: Outcome
    summary: str  # plain words: which metric, by how much, with what confidence
    figures: Mapping[str, object] = field(default_factory=dict)


class Phase(enum.StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"  # by a person: no step is taken until `canary continue`; a failure still rolls back
    WAITING = "waiting"  # a step passed; the next needs a person's `canary approve`; a failure still rolls back
    CANCELLED = "cancelled"  # stopped by a signal, weights left as they stood: `run --resume` carries on
    PROMOTED = "promoted"
    ROLLED_BACK = "rolled-back"
    INCONCLUSIVE = "inconclusive"  # the deadline came without evidence either way
    ABORTED = "aborted"  # stopped for good: someone else changed the weights, a permanent failure, a bug

    @property
    def ended(self) -> bool:
        """Over for good: `run --resume` reports the outcome and changes nothing."""
        return self not in (Phase.PROGRESSING, Phase.PAUSED, Phase.WAITING, Phase.CANCELLED)

    @property
    def open(self) -> bool:
        """A running rollout ticks on: progressing, or paused by a person."""
        return self in (Phase.PROGRESSING, Phase.PAUSED, Phase.WAITING)


class Action(enum.StrEnum):
    START = "start"
    HOLD = "hold"
    ADVANCE = "advance"
    PROMOTE = "promote"
    ROLLBACK = "rollback"
    CANCEL = "cancel"  # a signal ended the command; the rollout can be resumed
    RESUME = "resume"  # a command carried on an open rollout
    ABORT = "abort"  # the rollout ends where it stands
    STOP = "stop"  # the command stops, the route could not be written: the rollout stays open on it
    PAUSE = "pause"  # a person paused the rollout: weights stay, steps wait
    CONTINUE = "continue"  # a person let a paused rollout go on
    APPROVE = "approve"  # a person approved the next step's weight


@dataclass(frozen=True)
class Decision:
    """What the transition decided and why."""

    action: Action
    weights: Weights
    phase: Phase
    reason: str


@dataclass(frozen=True)
class Judgement:
    """A judge's answer for one tick: the overall outcome and one verdict per check."""

    outcome: Outcome
    verdicts: tuple[Verdict, ...]
    summary: str
    figures: Mapping[str, object] = field(default_factory=dict)  # the judge's evidence across checks, if any
