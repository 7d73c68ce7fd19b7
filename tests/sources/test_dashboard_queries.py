"""The dashboard's v1-against-v2 panels run on a real Prometheus holding Istio history and show both versions."""

from __future__ import annotations

from pathlib import Path

import pytest
from istio_history import IstioHistory

from canary.dashboard import dashboard
from canary.policy import load_policy
from canary.sources.prometheus import PrometheusSource

pytestmark = pytest.mark.prometheus
POLICY = Path(__file__).resolve().parents[2] / "policies" / "web-app.yaml"


def test_every_mesh_panel_query_runs_and_shows_both_versions(source: PrometheusSource, history: IstioHistory) -> None:
    board = dashboard(load_policy(str(POLICY)), window="5m")
    mesh = [p for p in board["panels"] if p["type"] == "timeseries" and "canary_" not in p["targets"][0]["expr"]]
    assert [p["title"] for p in mesh] == [
        "Request rate", "Error rate", "Latency quantiles", "Service dependencies (by source_app)",
    ]  # fmt: skip
    for panel in mesh:
        for target in panel["targets"]:
            result = source.query(target["expr"], history.end, what=panel["title"])
            assert {s["metric"].get("destination_version") for s in result} == {"v1", "v2"}, panel["title"]
