"""Fixtures for the Prometheus source: one real server per session, backfilled with known Istio history."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # the shared helpers live beside the test folders
    sys.path.insert(0, str(TESTS))

from istio_history import IstioHistory  # noqa: E402
from prometheus_server import PROMETHEUS, PROMTOOL, PrometheusServer  # noqa: E402

from canary.sources.prometheus import PrometheusSettings, PrometheusSource  # noqa: E402


@pytest.fixture(scope="session")
def prometheus_binary() -> None:
    """Skips the test when Debian's prometheus and promtool are missing (`make prometheus` installs them)."""
    if PROMETHEUS is None or PROMTOOL is None:
        pytest.skip("prometheus/promtool not installed (make prometheus)")


@pytest.fixture(scope="session")
def history() -> IstioHistory:
    return IstioHistory()


@pytest.fixture(scope="session")
def prometheus(prometheus_binary: None, history: IstioHistory) -> Iterator[PrometheusServer]:
    """A real Prometheus on 127.0.0.1 holding `history`, stopped at the end of the session."""
    with PrometheusServer(openmetrics=history.openmetrics()) as server:
        yield server


@pytest.fixture
def source(prometheus: PrometheusServer) -> Iterator[PrometheusSource]:
    with PrometheusSource(PrometheusSettings(prometheus.url, timeout_s=5, retries=0)) as src:
        yield src
