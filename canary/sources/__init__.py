"""Metrics sources: where the counts for both versions come from.

A source answers one question: for this policy's target and metrics, what were the counts of each
version, per pod, over [start, end)? The simulated mesh and Prometheus both implement it.
"""

from __future__ import annotations

from typing import Protocol

from canary.model import Observation
from canary.policy import MetricSpec, Target


class MetricsSource(Protocol):
    def observe(self, target: Target, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        """Counts per version and pod over [start, end); a version with no series gets an empty mapping."""
        ...

    def refuses(self, metric: MetricSpec) -> str | None:
        """Why this source cannot serve the metric (None: it can); checked before any weight moves."""
        ...
