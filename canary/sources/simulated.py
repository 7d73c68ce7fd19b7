"""The embedded simulated mesh: Istio-shaped request counts for v1 and v2, on an injected clock.

Traffic follows the router's current weights. Each slice of time draws, per pod, the number of requests,
the number of 5xx responses and the latency bucket counts (Istio's default `le` buckets) exactly as the
sidecars would count them, so the judge sees the same kind of numbers Prometheus holds. Counts are drawn
per slice (Poisson, binomial, multinomial), which is exact for independent requests and fast enough for
thousands of simulated rollouts.

It is chosen explicitly (`canary demo`, `canary run --simulate`), never as a fallback for a missing
Prometheus.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr

from canary.errors import ScenarioError
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, MetricWindow, Observation, Ratio, Sample
from canary.policy import ErrorRateMetric, LatencyMetric, MetricSpec, MetricsScope, Target
from canary.routers import Router
from canary.scenario import Behaviour, Scenario

_EDGES = np.asarray(ISTIO_LATENCY_BUCKETS_MS)
_LOG_EDGES = np.log(_EDGES)


@dataclass(frozen=True)
class Slice:
    """Counts served over [start, end), per version: arrays indexed by pod."""

    start: float
    end: float
    requests: dict[str, np.ndarray]
    errors: dict[str, np.ndarray]
    buckets: dict[str, np.ndarray]  # shape (pods, len(edges) + 1), not cumulative


def bucket_probabilities(behaviour: Behaviour, scale: np.ndarray) -> np.ndarray:
    """Probability of each latency bucket for pods whose latency is multiplied by `scale`."""

    def lognormal_cdf(median: float, sigma: float) -> np.ndarray:
        z = (_LOG_EDGES[None, :] - np.log(median * scale)[:, None]) / sigma
        return np.asarray(ndtr(z))

    lat = behaviour.latency
    cdf = lognormal_cdf(lat.median_ms, lat.sigma)
    if behaviour.tail is not None and behaviour.tail.fraction > 0:
        t = behaviour.tail
        cdf = (1 - t.fraction) * cdf + t.fraction * lognormal_cdf(t.median_ms, t.sigma)
    full = np.concatenate([np.zeros((len(scale), 1)), cdf, np.ones((len(scale), 1))], axis=1)
    probs = np.clip(np.diff(full, axis=1), 0.0, 1.0)
    return np.asarray(probs / probs.sum(axis=1, keepdims=True))


class SimulatedMesh:
    """A MetricsSource whose traffic is generated from a scenario and the router's weights."""

    def __init__(
        self, scenario: Scenario, router: Router, target: Target, *, start: float, seed: int, later: bool = False
    ) -> None:
        """`later`: the mesh of a rollout resumed at `start`: the same pods, with traffic drawn afresh for
        that time, not the draws its first minutes had."""
        self.scenario = scenario
        self.router = router
        self.target = target
        self.origin = start
        self.generated_until = start
        self.rng = np.random.default_rng(seed)
        self.slices: list[Slice] = []
        pods = scenario.pods
        self.pod_names = {
            target.baseline: [f"{_workload(target, target.baseline)}-{i}" for i in range(pods.baseline)],
            target.canary: [f"{_workload(target, target.canary)}-{i}" for i in range(pods.canary)],
        }
        self.behaviour = {target.baseline: scenario.baseline, target.canary: scenario.canary}
        # Per-pod levels, drawn once: pods keep their character for the whole rollout.
        self.latency_factor = {
            v: np.exp(self.rng.normal(0.0, pods.latency_spread, len(names))) for v, names in self.pod_names.items()
        }
        self.error_factor = {
            v: np.exp(self.rng.normal(0.0, pods.error_spread, len(names))) for v, names in self.pod_names.items()
        }
        if later:
            self.rng = np.random.default_rng([seed, round(start * 1000)])

    # ------------------------------------------------------------------------------------ generation

    def advance(self, until: float, slice_s: float | None = None) -> None:
        """Serve traffic up to `until`, in slices of at most `slice_s` seconds at the current weights."""
        step = slice_s or (until - self.generated_until)
        while self.generated_until < until - 1e-9:
            end = min(self.generated_until + step, until)
            self.slices.append(self._serve(self.generated_until, end))
            self.generated_until = end

    def _serve(self, start: float, end: float) -> Slice:
        sc = self.scenario
        weights = self.router.read(self.target).weights
        elapsed = start - self.origin
        load = 1.0
        if sc.diurnal is not None:
            load = 1.0 + sc.diurnal.amplitude * math.sin(
                2 * math.pi * (elapsed + (end - start) / 2) / sc.diurnal.period_s
            )
        total = int(self.rng.poisson(sc.rps * load * (end - start)))
        share = weights.canary / 100.0
        if sc.share_jitter > 0 and 0 < share < 1:
            share = min(max(share * (1 + self.rng.uniform(-sc.share_jitter, sc.share_jitter)), 0.0), 1.0)
        canary_total = int(self.rng.binomial(total, share))
        per_version = {self.target.baseline: total - canary_total, self.target.canary: canary_total}
        requests: dict[str, np.ndarray] = {}
        errors: dict[str, np.ndarray] = {}
        buckets: dict[str, np.ndarray] = {}
        for version, n in per_version.items():
            names = self.pod_names[version]
            behaviour = self.behaviour[version]
            pod_n = self.rng.multinomial(n, np.full(len(names), 1.0 / len(names)))
            rate = behaviour.error_rate
            burst = behaviour.error_burst
            if burst is not None and burst.start_s <= elapsed < burst.start_s + burst.duration_s:
                rate = burst.error_rate
            p_err = np.clip(rate * self.error_factor[version], 0.0, 1.0)
            requests[version] = pod_n
            errors[version] = self.rng.binomial(pod_n, p_err)
            probs = bucket_probabilities(behaviour, self.latency_factor[version] * load)
            buckets[version] = self.rng.multinomial(pod_n, probs)
        return Slice(start, end, requests, errors, buckets)

    # ------------------------------------------------------------------------------------ the source

    def observe(self, scope: MetricsScope, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        if scope != self.target.scope:
            raise ScenarioError(f"the simulated mesh serves {self.target.host}, not {scope.host}")
        self.advance(end)
        chosen = [s for s in self.slices if s.start >= start - 1e-9 and s.end <= end + 1e-9]
        windows: dict[str, MetricWindow] = {}
        for metric in metrics:
            per_version: dict[str, dict[str, Sample]] = {}
            for version, names in self.pod_names.items():
                per_version[version] = self._samples(metric, version, names, chosen)
            windows[metric.name] = MetricWindow(baseline=per_version[scope.baseline], canary=per_version[scope.canary])
        return Observation(start=start, end=end, metrics=windows)

    @staticmethod
    def refuses(metric: MetricSpec) -> str | None:
        if isinstance(metric, ErrorRateMetric | LatencyMetric):
            return None
        return "the simulated mesh serves error-rate and latency metrics only (use --prometheus-url)"

    def _samples(self, metric: MetricSpec, version: str, names: list[str], chosen: list[Slice]) -> dict[str, Sample]:
        if not chosen:
            return {}
        req = sum((s.requests[version] for s in chosen), np.zeros(len(names), dtype=np.int64))
        if isinstance(metric, ErrorRateMetric):
            err = sum((s.errors[version] for s in chosen), np.zeros(len(names), dtype=np.int64))
            return {name: Ratio(int(e), int(n)) for name, e, n in zip(names, err, req, strict=True)}
        if isinstance(metric, LatencyMetric):
            counts = sum((s.buckets[version] for s in chosen), np.zeros((len(names), len(_EDGES) + 1), dtype=np.int64))
            return {
                name: Histogram(ISTIO_LATENCY_BUCKETS_MS, tuple(int(c) for c in row))
                for name, row in zip(names, counts, strict=True)
            }
        raise ScenarioError(f"metric {metric.name!r}: the simulated mesh serves error-rate and latency metrics only")

    def served(self, version: str) -> tuple[int, int]:
        """Total requests and errors served to a version so far (for checks against what a source read)."""
        req = sum(int(s.requests[version].sum()) for s in self.slices)
        err = sum(int(s.errors[version].sum()) for s in self.slices)
        return req, err


def _workload(target: Target, version: str) -> str:
    service = target.host.split(".")[0]
    return f"{service}-{version}"
