"""The simulated mesh served as Istio's metrics over HTTP, for a real Prometheus to scrape live.

A background thread serves the mesh's traffic in 0.1 s slices as wall-clock time passes (at the router's
weights of that moment, as sidecars follow the VirtualService), and every scrape exposes the cumulative
counts the way Istio's sidecars do: `istio_requests_total` per pod and response code, and
`istio_request_duration_milliseconds` buckets with Istio's `le` labels. It also logs what each scrape
showed, so a test can tell what the mesh had served by any moment.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

from canary.model import ISTIO_LATENCY_BUCKETS_MS
from canary.promql import format_le
from canary.sources.simulated import SimulatedMesh

LABELS = [
    "reporter",
    "destination_service",
    "destination_version",
    "destination_workload",
    "destination_workload_namespace",
    "response_code",
    "pod",
]


@dataclass
class Shown:
    """What one scrape showed: when it was collected and the cumulative requests and errors per version."""

    at: float
    requests: dict[str, int]
    errors: dict[str, int]


@dataclass(eq=False)  # registered in a set by prometheus_client: hash by identity
class MeshExporter:
    mesh: SimulatedMesh
    log: list[Shown] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.lock = threading.Lock()
        self.registry = CollectorRegistry()
        self.registry.register(self)  # type: ignore[arg-type]
        self.server: object | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve_traffic, name="mesh-traffic", daemon=True)

    def _serve_traffic(self) -> None:
        while not self.stopping.wait(0.05):
            with self.lock:
                self.mesh.advance(time.time(), slice_s=0.1)

    def collect(self) -> Iterator[Metric]:
        with self.lock:
            now = time.time()
            self.mesh.advance(now, slice_s=0.1)
            yield from self._families(now)

    def _families(self, now: float) -> Iterator[Metric]:
        target = self.mesh.target
        requests = CounterMetricFamily("istio_requests", "Requests (simulated mesh).", labels=LABELS)
        duration = HistogramMetricFamily(
            "istio_request_duration_milliseconds", "Request duration (simulated mesh).", labels=LABELS
        )
        shown = Shown(now, {}, {})
        for version, pods in self.mesh.pod_names.items():
            req = sum((s.requests[version] for s in self.mesh.slices), np.zeros(len(pods), dtype=np.int64))
            err = sum((s.errors[version] for s in self.mesh.slices), np.zeros(len(pods), dtype=np.int64))
            buckets = sum(
                (s.buckets[version] for s in self.mesh.slices),
                np.zeros((len(pods), len(ISTIO_LATENCY_BUCKETS_MS) + 1), dtype=np.int64),
            )
            shown.requests[version], shown.errors[version] = int(req.sum()), int(err.sum())
            for i, pod in enumerate(pods):
                common = [
                    "destination",
                    target.host,
                    version,
                    f"{target.host.split('.')[0]}-{version}",
                    target.namespace,
                ]
                requests.add_metric([*common, "200", pod], float(req[i] - err[i]))
                requests.add_metric([*common, "503", pod], float(err[i]))
                cumulative = np.cumsum(buckets[i])
                edges = (*ISTIO_LATENCY_BUCKETS_MS, math.inf)
                duration.add_metric(
                    [*common, "200", pod],
                    [(format_le(e), float(c)) for e, c in zip(edges, cumulative, strict=True)],
                    sum_value=float(req[i]) * 80.0,
                )
        self.log.append(shown)
        yield requests
        yield duration

    def served_between(self, after: float, until: float, version: str) -> tuple[int, int]:
        """Requests and errors the scrapes showed between the last scrape at or before `after` and `until`."""

        def at(t: float) -> Shown | None:
            index = bisect.bisect_right([s.at for s in self.log], t) - 1
            return self.log[index] if index >= 0 else None

        first, last = at(after), at(until)
        if last is None:
            return 0, 0
        base_req = first.requests[version] if first else 0
        base_err = first.errors[version] if first else 0
        return last.requests[version] - base_req, last.errors[version] - base_err

    def start(self) -> str:
        self.thread.start()
        server, _ = start_http_server(0, addr="127.0.0.1", registry=self.registry)
        self.server = server
        return f"127.0.0.1:{server.server_port}"

    def shares_since(self, since: float) -> list[float]:
        """The canary's share of the requests of each slice served after `since`."""
        with self.lock:
            slices = [s for s in self.mesh.slices if s.start >= since]
        target = self.mesh.target
        out = []
        for piece in slices:
            canary, baseline = int(piece.requests[target.canary].sum()), int(piece.requests[target.baseline].sum())
            out.append(canary / max(1, canary + baseline))
        return out

    def stop(self) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        if self.server is not None:
            self.server.shutdown()  # type: ignore[attr-defined]
            self.server.server_close()  # type: ignore[attr-defined]
            self.server = None
