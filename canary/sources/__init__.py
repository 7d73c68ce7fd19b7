"""Metrics sources: where the counts for both versions come from.

A source answers one question: for this scope (a host and its two versions) and these metrics, what were
the counts of each version, per pod, over [start, end)? It never sees the VirtualService. The simulated mesh
and Prometheus both implement it.
"""

from __future__ import annotations

from typing import Protocol

from canary.model import Observation
from canary.policy import MetricSpec, MetricsScope


class MetricsSource(Protocol):
    def observe(self, scope: MetricsScope, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        """Counts per version and pod over [start, end); a version with no series gets an empty mapping."""
        ...

    def refuses(self, metric: MetricSpec) -> str | None:
        """Why this source cannot serve the metric (None: it can); checked before any weight moves."""
        ...
