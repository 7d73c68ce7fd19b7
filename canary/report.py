"""Counts and verdicts as plain JSON-ready dicts, shared by the audit log and the CLI's JSON output."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canary.model import Histogram, Judgement, MetricWindow, Observation, Ratio, Sample, Verdict
from canary.policy import ErrorRateMetric, Policy
from canary.promql import format_le
from canary.stats.buckets import merge


def elapsed(seconds: float) -> str:
    """A duration as a person reads it: seconds under a minute, whole minutes from there."""
    return f"{seconds:.0f} s" if seconds < 59.5 else f"{seconds / 60:.0f} min"


def iso(t: float) -> str:
    """A time as ISO 8601 in UTC, seconds precision; the bare number when it has no date (NaN, ±inf, 1e20)."""
    try:
        return dt.datetime.fromtimestamp(t, tz=dt.UTC).isoformat(timespec="seconds")
    except (OverflowError, ValueError, OSError):
        return f"{t:g}"


@dataclass(frozen=True)
class Unseen:
    """A version with no series for any metric while the other version served requests (or, with custom
    metrics only, counted events' totals)."""

    version: str
    role: str  # "canary" or "baseline"
    other: str
    other_count: int
    counted: str  # what other_count counts: "requests", or a custom metric's totals

    def describe(self, host: str) -> str:
        return (
            f"no series for the {self.role} {self.version} (destination_version={self.version!r}) of {host} while "
            f"{self.other} showed {self.other_count} {self.counted}: its traffic is not measured (are its pods "
            f"labelled version: {self.version}? does it serve?)"
        )


def unseen_version(observation: Observation, policy: Policy, counts: Mapping[str, Mapping[str, Any]]) -> Unseen | None:
    """Which version, if either, the observation holds no series of at all while the other served requests
    (a mislabelled or unreachable version: no judge can compare it, and waiting does not help). `counts` are
    the observation's `version_counts`, which the caller has for its record."""
    target = policy.target
    windows = [observation.metrics.get(m.name) for m in policy.metrics]
    for role, version, other in (
        ("canary", target.canary, target.baseline),
        ("baseline", target.baseline, target.canary),
    ):
        count, counted = _served(counts[other])
        if count > 0 and not any(w is not None and getattr(w, role) for w in windows):
            return Unseen(version, role, other, count, counted)
    return None


def _served(entry: Mapping[str, Any]) -> tuple[int, str]:
    """A version's requests; for a policy of custom metrics only, the first one's total."""
    if "requests" in entry:
        return entry["requests"], "requests"
    for name, figures in entry.get("metrics", {}).items():
        if "trials" in figures:
            return figures["trials"], f"in the total of {name}"
    return 0, "requests"


def version_counts(observation: Observation, policy: Policy) -> dict[str, dict[str, Any]]:
    """Per version: each metric's counts summed over pods, plus `requests` and `errors` from the first
    error-rate metric (requests from the latency histogram when there is none) and `latency_buckets`
    from the first latency metric, cumulative, keyed by `le` as Prometheus prints it."""
    target = policy.target
    out: dict[str, dict[str, Any]] = {target.baseline: {}, target.canary: {}}
    for metric in policy.metrics:
        window = observation.metrics.get(metric.name)
        if window is None:
            continue
        for version, samples in ((target.baseline, window.baseline), (target.canary, window.canary)):
            if not samples:
                continue
            entry = out[version]
            entry["pods"] = max(entry.get("pods", 0), len(samples))
            ratios = [s for s in samples.values() if isinstance(s, Ratio)]
            merged = merge([s for s in samples.values() if isinstance(s, Histogram)])
            per_metric = entry.setdefault("metrics", {})
            if ratios:
                total = sum(ratios, Ratio(0, 0))
                per_metric[metric.name] = {"events": total.events, "trials": total.trials}
                if isinstance(metric, ErrorRateMetric) and "errors" not in entry:
                    entry["requests"], entry["errors"] = total.trials, total.events
            elif merged is not None:
                buckets = {format_le(edge): count for edge, count in merged.cumulative().items()}
                per_metric[metric.name] = {"latency_buckets": buckets}
                entry.setdefault("latency_buckets", buckets)
    for entry in out.values():
        if "requests" not in entry and "latency_buckets" in entry:
            entry["requests"] = entry["latency_buckets"]["+Inf"]
    return out


def observation_dict(observation: Observation) -> dict[str, Any]:
    """Everything a judge saw in one tick, per metric, version and pod, so an audit can re-check it."""

    def sample(s: Sample) -> dict[str, Any]:
        if isinstance(s, Ratio):
            return {"events": s.events, "trials": s.trials}
        return {"bounds": list(s.bounds), "counts": list(s.counts)}

    return {
        "start": observation.start,
        "end": observation.end,
        "metrics": {
            name: {
                "baseline": {pod: sample(s) for pod, s in window.baseline.items()},
                "canary": {pod: sample(s) for pod, s in window.canary.items()},
            }
            for name, window in observation.metrics.items()
        },
    }


def observation_from_dict(data: dict[str, Any]) -> Observation:
    """The inverse of `observation_dict`; ValueError when `data` is not one (a hand-edited record)."""
    try:
        return _observation(data)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        problem = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"not an observation canary writes: {problem}") from None


def _observation(data: dict[str, Any]) -> Observation:

    def sample(d: dict[str, Any]) -> Sample:
        if "trials" in d:
            return Ratio(int(d["events"]), int(d["trials"]))
        return Histogram(tuple(float(b) for b in d["bounds"]), tuple(int(c) for c in d["counts"]))

    return Observation(
        start=float(data["start"]),
        end=float(data["end"]),
        metrics={
            name: MetricWindow(
                baseline={pod: sample(s) for pod, s in w["baseline"].items()},
                canary={pod: sample(s) for pod, s in w["canary"].items()},
            )
            for name, w in data["metrics"].items()
        },
    )


def verdict_dict(verdict: Verdict) -> dict[str, Any]:
    return {
        "metric": verdict.metric,
        "outcome": verdict.outcome.value,
        "summary": verdict.summary,
        "figures": dict(verdict.figures),
    }


def judgement_dict(judgement: Judgement) -> dict[str, Any]:
    return {
        "outcome": judgement.outcome.value,
        "summary": judgement.summary,
        "verdicts": [verdict_dict(v) for v in judgement.verdicts],
        **({"figures": dict(judgement.figures)} if judgement.figures else {}),
    }
