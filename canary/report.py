"""Counts and verdicts as plain JSON-ready dicts, shared by the audit log and the CLI's JSON output."""

from __future__ import annotations

from typing import Any

from canary.model import Histogram, Judgement, Observation, Ratio, Verdict
from canary.promql import format_le


def version_counts(observation: Observation, baseline: str, canary: str) -> dict[str, dict[str, Any]]:
    """Per version: requests and errors (from the first ratio metric), and cumulative latency buckets.

    Buckets are keyed by `le` as Prometheus prints it (`promql.format_le`): 0.5, 100, 1.234567e+06, +Inf.
    """
    out: dict[str, dict[str, Any]] = {baseline: {}, canary: {}}
    for name, window in observation.metrics.items():
        for version, samples in ((baseline, window.baseline), (canary, window.canary)):
            if not samples:
                continue
            entry = out[version]
            first = next(iter(samples.values()))
            if isinstance(first, Ratio):
                total = Ratio(sum(s.events for s in samples.values() if isinstance(s, Ratio)),
                              sum(s.trials for s in samples.values() if isinstance(s, Ratio)))  # fmt: skip
                entry.setdefault("requests", total.trials)
                entry.setdefault("errors", total.events)
                entry.setdefault("metrics", {})[name] = {"events": total.events, "trials": total.trials}
            elif isinstance(first, Histogram):
                hists = [s for s in samples.values() if isinstance(s, Histogram) and s.bounds == first.bounds]
                merged = hists[0]
                for h in hists[1:]:
                    merged = merged + h
                buckets = {format_le(edge): count for edge, count in merged.cumulative().items()}
                entry.setdefault("latency_buckets", buckets)
                entry.setdefault("requests", merged.total)
                entry.setdefault("metrics", {})[name] = {"latency_buckets": buckets}
            entry["pods"] = max(entry.get("pods", 0), len(samples))
    return out


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
    }
