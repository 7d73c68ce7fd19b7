"""One-shot analysis of a past or current window (`canary analyze`): judge the canary, move no weights.

For pipelines that shift traffic themselves (an Argo Rollouts Job or web metric can call it) and for
auditing a past rollout. The window is cut into the policy's intervals and fed to the judge one interval at
a time, as the controller would have, so a sequential judge keeps its guarantees; the counts are summed
over the whole window for the report.

The verdict and the judgement reported with it always agree:
- any failing interval fails the analysis, reported with the first failing judgement (a failure later in
  the window still counts: an audit must not hide it);
- otherwise the analysis passes once the judge has passed, reported with the first passing judgement: that
  is where the judge decided and the controller would have moved on, so later intervals that are only
  `continue` (a Flagger-style check failing once under its threshold, say) do not take the pass back;
- otherwise it is inconclusive (the evidence never sufficed), reported with the last judgement.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from canary.errors import CanaryError
from canary.judges import Judge
from canary.model import Histogram, Judgement, MetricWindow, Observation, Outcome, Ratio, Sample
from canary.policy import Policy, parse_duration
from canary.report import iso, unseen_version, version_counts
from canary.sources import MetricsSource

UNSEEN_MIN_COUNT = 300  # the other version's requests before a version without series is a labelling error,
# not chance: 30 due to a canary at 10% (a Poisson count of mean 30 is 0 with probability 1e-13)

EXIT_CODES = {"pass": 0, "fail": 1, "inconclusive": 3}


@dataclass(frozen=True)
class AnalysisResult:
    verdict: str  # pass, fail or inconclusive
    start: float
    end: float
    intervals: int
    judgement: Judgement | None  # the deciding one: the first failing, else the first passing, else the last
    observation: Observation  # counts summed over the whole window

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]


MAX_INTERVALS = 10_080  # a week of one-minute intervals: one query per metric each


def intervals(policy: Policy, start: float, end: float) -> int:
    """How many of the policy's intervals [start, end] holds; ValueError for an empty or too long window."""
    if not end > start:
        raise ValueError(f"the window must end after it starts ({iso(start)} .. {iso(end)})")
    count = max(1, math.ceil((end - start) / policy.interval_s - 1e-9))
    if count > MAX_INTERVALS:
        raise ValueError(
            f"the window {iso(start)} .. {iso(end)} holds {count} intervals of {policy.interval_s:g}s, more than "
            f"{MAX_INTERVALS} (one query per metric each): choose a later --start"
        )
    return count


def analyze(policy: Policy, source: MetricsSource, judge: Judge, start: float, end: float) -> AnalysisResult:
    """Observe [start, end] interval by interval, judge each, and sum the counts."""
    count = intervals(policy, start, end)
    edges = [min(start + i * policy.interval_s, end) for i in range(count)] + [end]
    observations: list[Observation] = []
    judgements: list[Judgement] = []
    evidence = judge.start()
    for a, b in itertools.pairwise(edges):
        observation = source.observe(policy.target.scope, policy.metrics, a, b)
        observations.append(observation)
        evidence, judgement = judge.judge(evidence, observation, 0)
        judgements.append(judgement)
    failed = [j for j in judgements if j.outcome is Outcome.FAIL]
    passed = [j for j in judgements if j.outcome is Outcome.PASS]
    if failed:
        verdict, deciding = "fail", failed[0]
    elif passed:
        verdict, deciding = "pass", passed[0]
    else:
        verdict, deciding = "inconclusive", judgements[-1]
    merged = merge(observations)
    if all(not w.baseline and not w.canary for w in merged.metrics.values()):
        scope = policy.target.scope
        raise CanaryError(
            f"no series for {scope.baseline} nor {scope.canary} of {scope.host} in {iso(start)} .. {iso(end)}: "
            "check spec.target, --prometheus-reporter and the window (`canary queries` prints the PromQL)"
        )
    unseen = unseen_version(merged, policy, version_counts(merged, policy))
    if unseen is not None and unseen.other_count >= UNSEEN_MIN_COUNT:
        raise CanaryError(
            f"{unseen.describe(policy.target.scope.host)}, in {iso(start)} .. {iso(end)}: check "
            f"spec.target.{unseen.role} and --prometheus-reporter (`canary queries` prints the PromQL)"
        )
    return AnalysisResult(verdict, start, end, count, deciding, merged)


def merge(observations: Sequence[Observation]) -> Observation:
    """Consecutive observations as one: per metric, version and pod, counts added up."""
    if not observations:
        raise ValueError("nothing to merge")
    names = dict.fromkeys(name for o in observations for name in o.metrics)
    merged: dict[str, MetricWindow] = {}
    for name in names:
        windows = [o.metrics[name] for o in observations if name in o.metrics]
        merged[name] = MetricWindow(
            baseline=_add([w.baseline for w in windows]), canary=_add([w.canary for w in windows])
        )
    return Observation(start=observations[0].start, end=observations[-1].end, metrics=merged)


def _add(sides: Sequence[Mapping[str, Sample]]) -> dict[str, Sample]:
    out: dict[str, Sample] = {}
    for side in sides:
        for pod, sample in side.items():
            known = out.get(pod)
            if known is None:
                out[pod] = sample
            elif isinstance(sample, Ratio) and isinstance(known, Ratio):  # noqa: SIM114 (two types for mypy)
                out[pod] = known + sample
            elif isinstance(sample, Histogram) and isinstance(known, Histogram):
                out[pod] = known + sample
            else:
                raise ValueError(f"pod {pod!r} changed its kind of sample between intervals")
    return dict(sorted(out.items()))


MAX_TIME = 253_402_300_799.0  # 9999-12-31T23:59:59Z, the last second ISO 8601 (and `iso`) can write


def parse_time(text: str, now: float) -> float:
    """`now`, unix seconds, `-30m` (relative to now) or an ISO 8601 time (UTC unless it says otherwise).

    ValueError for anything else, and for times before 1970 or after 9999 (`inf`, `nan`, `1e20`).
    """
    value = text.strip()
    t = _read_time(value, now)
    if t is None:
        raise ValueError(f"cannot read time {text!r}: use now, -30m, unix seconds or 2026-01-01T12:00:00Z")
    if not 0 <= t <= MAX_TIME:  # also false for NaN
        raise ValueError(f"time {text!r} is out of range: give a time between 1970 and 9999")
    return t


def _read_time(value: str, now: float) -> float | None:
    if value == "now":
        return now
    if value.startswith("-"):
        ago = parse_duration(value[1:])
        if ago is not None:
            return now - ago
    try:
        return float(value)
    except ValueError:
        pass
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00") if value.endswith("Z") else value)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.UTC)
    return parsed.timestamp()
