"""Known Istio metric history to backfill into a real Prometheus, with the exact counts it holds.

Each series is written from per-scrape increments, so the expected count over any window is the sum of the
increments its samples in the window carry, whatever resets, gaps and new series the data contains (after a
scrape gap, the first sample carries the requests served during the gap). The expectations
are computed here from the written data and labels, independently of canary's differencing code.

Contents (scrape every 15 s over 40 minutes, ending well in the past):
- `web-app.default.svc.cluster.local`: v1 pods a and b, v2 pod c; codes 200/404/503 (v2 also 500, a series
  born mid-window); two callers; a duplicate `reporter="source"` view that must be ignored; a counter reset
  on v2 (pod restart) and a 3-minute scrape gap on v1 pod b, both inside the standard window, and a second
  v2 pod whose scrapes failed for 8 minutes across the window's start, longer than the source's lookback; latency
  histograms with Istio's default buckets; app-level counters for a custom ratio metric.
- `orders.default.svc.cluster.local`: v1 only (the canary has no data).
- `grpc.default.svc.cluster.local`: gRPC statuses 0 and 14.
- hostile names: a host full of quotes, braces and backslashes, and versions `v.1` beside `vx1`.
- decoys the selectors must exclude: another service, and web-app in namespace `staging`.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from prometheus_server import OpenMetrics

from canary.model import ISTIO_LATENCY_BUCKETS_MS

STEP_S = 15
POINTS = 161  # 40 minutes
HOST = "web-app.default.svc.cluster.local"
ORDERS = "orders.default.svc.cluster.local"
GRPC = "grpc.default.svc.cluster.local"
OTHER = "other.default.svc.cluster.local"
REGEX_HOST = "regex.default.svc.cluster.local"
HOSTILE_HOST = 'evil"}) or vector(1) or up{a="\\x\n.default.svc.cluster.local'
PODS = {"v1": ("web-app-v1-aaaaa", "web-app-v1-bbbbb"), "v2": ("web-app-v2-ccccc",)}
GAP_POD = "web-app-v2-ddddd"  # counters only, with a scrape gap longer than the lookback
BOUNDS = ISTIO_LATENCY_BUCKETS_MS


def default_t0() -> int:
    """A start three hours back on a whole hour: old enough to be history, young enough to be kept."""
    return (int(time.time()) // 3600) * 3600 - 3 * 3600


@dataclass
class CounterTrack:
    name: str  # without _total
    labels: dict[str, str]
    times: list[int]
    increments: list[int]
    resets: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()
    first: int = 0  # index of the first sample: the series is born there, counting from zero

    def samples(self) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        value = 0
        for i, (t, inc) in enumerate(zip(self.times, self.increments, strict=True)):
            if i < self.first:
                continue
            value = inc if i in self.resets else value + inc
            if i not in self.missing:
                out.append((t, value))
        return out

    def expected(self, start: float, end: float) -> int | None:
        """Requests shown by the samples in (start, end]; None when the series has no sample there.

        A sample carries the requests since the previous written sample, so requests served during a
        scrape gap belong to the first sample after it.
        """
        shown = _shown(self.times, self.missing, self.first, start, end)
        if not shown:
            return None
        return sum(self.increments[i] for i in shown)


def _shown(times: list[int], missing: frozenset[int], first: int, start: float, end: float) -> list[int]:
    """Indices of the scrapes whose requests the samples in (start, end] carry."""
    out: list[int] = []
    pending: list[int] = []
    for i, t in enumerate(times):
        if i < first or t > end:
            continue
        pending.append(i)
        if i in missing:
            continue
        if t > start:
            out.extend(pending)
        pending = []
    return out


@dataclass
class HistogramTrack:
    name: str
    labels: dict[str, str]
    times: list[int]
    increments: list[list[int]]  # per scrape, per bucket (not cumulative), +Inf last
    resets: frozenset[int] = frozenset()
    missing: frozenset[int] = frozenset()

    def samples(self) -> list[tuple[int, list[float], float]]:
        out: list[tuple[int, list[float], float]] = []
        per_bucket = [0] * (len(BOUNDS) + 1)
        for i, (t, inc) in enumerate(zip(self.times, self.increments, strict=True)):
            per_bucket = list(inc) if i in self.resets else [a + b for a, b in zip(per_bucket, inc, strict=True)]
            if i not in self.missing:
                cumulative = [float(sum(per_bucket[: k + 1])) for k in range(len(per_bucket))]
                out.append((t, cumulative, float(sum(per_bucket) * 7)))
        return out

    def expected(self, start: float, end: float) -> list[int]:
        inside = _shown(self.times, self.missing, 0, start, end)
        return [sum(self.increments[i][k] for i in inside) for k in range(len(BOUNDS) + 1)]


@dataclass
class IstioHistory:
    t0: int = field(default_factory=default_t0)
    seed: int = 4
    counters: list[CounterTrack] = field(default_factory=list)
    histograms: list[HistogramTrack] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.times = [self.t0 + i * STEP_S for i in range(POINTS)]
        self._build()

    # The standard analysis window: minutes 10 to 30, on scrape timestamps.
    @property
    def start(self) -> int:
        return self.t0 + 600

    @property
    def end(self) -> int:
        return self.t0 + 1800

    @property
    def reset_index(self) -> int:
        return 80  # minute 20

    def _istio(self, host: str, version: str, pod: str, **extra: str) -> dict[str, str]:
        namespace = extra.pop("namespace", "default")
        labels = {
            "reporter": "destination",
            "source_workload": "frontend",
            "destination_service": host,
            "destination_version": version,
            "destination_workload": f"{host.split('.')[0]}-{version}",
            "destination_workload_namespace": namespace,
            "response_code": "200",
            "pod": pod,
        }
        labels.update(extra)
        return labels

    def _counter(self, labels: dict[str, str], high: int, **kwargs: object) -> None:
        increments = [self.rng.randint(0, high) for _ in self.times]
        self.counters.append(
            CounterTrack("istio_requests", labels, self.times, increments, **kwargs)  # type: ignore[arg-type]
        )

    def _histogram(self, labels: dict[str, str], shift: int, **kwargs: object) -> None:
        increments = []
        for _ in self.times:
            row = [0] * (len(BOUNDS) + 1)
            for _ in range(self.rng.randint(0, 12)):
                row[min(len(row) - 1, max(0, int(self.rng.gauss(6 + shift, 1.5))))] += 1
            increments.append(row)
        self.histograms.append(
            HistogramTrack("istio_request_duration_milliseconds", labels, self.times, increments, **kwargs)  # type: ignore[arg-type]
        )

    def _build(self) -> None:
        gap = frozenset(range(60, 72))  # minutes 15 to 17:45, scrapes failed for v1 pod b
        reset = frozenset({self.reset_index})
        for version, pods in PODS.items():
            for pod in pods:
                quirks: dict[str, object] = {}
                if pod.endswith("bbbbb"):
                    quirks = {"missing": gap}
                if version == "v2":
                    quirks = {"resets": reset}
                for source in ("frontend", "batch"):
                    for code, high in (("200", 20), ("404", 2), ("503", 2)):
                        self._counter(
                            self._istio(HOST, version, pod, response_code=code, source_workload=source), high, **quirks
                        )
                self._histogram(self._istio(HOST, version, pod), 1 if version == "v2" else 0, **quirks)
                self._app_counters(version, pod, quirks)
        # v2 starts answering 500 at minute 22: a series born inside the window.
        pod = PODS["v2"][0]
        self._counter(self._istio(HOST, "v2", pod, response_code="500"), 3, first=88)
        # A second v2 pod whose scrapes failed for 8 minutes (minutes 5 to 12.75), across the standard window's
        # start: its last samples before the window are older than the source's lookback.
        for code, high in (("200", 6), ("503", 1)):
            labels = self._istio(HOST, "v2", GAP_POD, response_code=code)
            self._counter(labels, high, missing=frozenset(range(20, 52)))
        # The client-side view of the same requests: counted by reporter="source", must be ignored.
        self._counter(self._istio(HOST, "v1", PODS["v1"][0], reporter="source"), 50)
        # Decoys: another service, and web-app's namesake in another namespace.
        self._counter(self._istio(OTHER, "v1", "other-v1-x"), 50)
        self._counter(self._istio(HOST, "v2", "web-app-v2-staging", namespace="staging"), 50)
        # Only the baseline exists for orders.
        self._counter(self._istio(ORDERS, "v1", "orders-v1-x"), 10)
        self._histogram(self._istio(ORDERS, "v1", "orders-v1-x"), 0)
        # gRPC: status 0 is OK, 14 (unavailable) is a failure.
        for version in ("v1", "v2"):
            for status, high in (("0", 20), ("14", 2)):
                labels = self._istio(GRPC, version, f"grpc-{version}-x", grpc_response_status=status)
                self._counter(labels, high)
        # Regex metacharacters in versions: v.1 must not match vx1.
        for version in ("v.1", "vx1", "v2"):
            self._counter(self._istio(REGEX_HOST, version, f"regex-{version}"), 10)
        for version in ("v1", "v2"):
            self._counter(self._istio(HOSTILE_HOST, version, f"evil-{version}"), 10)

    def _app_counters(self, version: str, pod: str, quirks: dict[str, object]) -> None:
        """Application counters for a custom ratio (checkout failures out of checkouts)."""
        labels = {"app": "web-app", "namespace": "default", "version": version, "pod": pod}
        total = [self.rng.randint(0, 10) for _ in self.times]
        failed = [self.rng.randint(0, t) // 3 for t in total]
        self.counters.append(CounterTrack("app_checkouts", dict(labels), self.times, total, **quirks))  # type: ignore[arg-type]
        self.counters.append(CounterTrack("app_checkout_failures", dict(labels), self.times, failed, **quirks))  # type: ignore[arg-type]

    # ------------------------------------------------------------------------------------------- output

    def openmetrics(self) -> str:
        om = OpenMetrics()
        for track in self.counters:
            om.counter(track.name, track.labels, track.samples())
        for hist in self.histograms:
            om.histogram(hist.name, hist.labels, BOUNDS, hist.samples())
        return om.render()

    # -------------------------------------------------------------------------------------- expectations

    def requests(
        self,
        host: str,
        version: str,
        start: float,
        end: float,
        *,
        is_error: Callable[[Mapping[str, str]], bool],
        name: str = "istio_requests",
    ) -> dict[str, tuple[int, int]]:
        """pod -> (errors, requests) over (start, end] as written, reporter=destination, namespace default."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for track in self.counters:
            labels = track.labels
            if (
                track.name != name
                or labels["destination_service"] != host
                or labels["destination_version"] != version
                or labels["reporter"] != "destination"
                or labels["destination_workload_namespace"] != "default"
            ):
                continue
            count = track.expected(start, end)
            if count is None:
                continue
            out[labels["pod"]][1] += count
            if is_error(labels):
                out[labels["pod"]][0] += count
        return {pod: (e, r) for pod, (e, r) in out.items()}

    def buckets(self, host: str, version: str, start: float, end: float) -> dict[str, list[int]]:
        """pod -> requests per bucket (not cumulative, +Inf last) over (start, end] as written."""
        out: dict[str, list[int]] = {}
        for hist in self.histograms:
            labels = hist.labels
            if labels["destination_service"] == host and labels["destination_version"] == version:
                counts = hist.expected(start, end)
                prev = out.get(labels["pod"], [0] * len(counts))
                out[labels["pod"]] = [a + b for a, b in zip(prev, counts, strict=True)]
        return out

    def app_ratio(self, version: str, start: float, end: float) -> dict[str, tuple[int, int]]:
        """pod -> (checkout failures, checkouts) over (start, end] as written."""
        out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        for track in self.counters:
            if track.labels.get("app") == "web-app" and track.labels["version"] == version:
                count = track.expected(start, end) or 0
                out[track.labels["pod"]][0 if track.name == "app_checkout_failures" else 1] += count
        return {pod: (e, t) for pod, (e, t) in out.items()}
