"""`canary dashboard`: a Grafana dashboard built as data, every query valid PromQL, the layout sound."""

from __future__ import annotations

import json
from pathlib import Path

import promql_parser
from typer.testing import CliRunner

from canary.cli import app
from canary.dashboard import dashboard
from canary.policy import load_policy
from canary.promql import Scope, dependencies_by_app, request_rate

POLICY = Path(__file__).resolve().parents[1] / "policies" / "web-app.yaml"


def test_the_dashboard_has_the_seeds_panels_and_canarys_own_with_valid_promql() -> None:
    policy = load_policy(str(POLICY))
    board = dashboard(policy, window="5m")
    rows = [p["title"] for p in board["panels"] if p["type"] == "row"]
    assert rows == ["v1 against v2 (web-app.default.svc.cluster.local)", "canary"]
    panels = [p for p in board["panels"] if p["type"] == "timeseries"]
    titles = [p["title"] for p in panels]
    assert titles[:4] == ["Request rate", "Error rate", "Latency quantiles", "Service dependencies (by source_app)"]
    assert "Canary weight" in titles and any(t.startswith("Checks: excess") for t in titles)
    scope = Scope(policy.target.host, "default", "v1", "v2")
    assert panels[0]["targets"][0]["expr"] == request_rate(scope, "5m")
    assert panels[3]["targets"][0]["expr"] == dependencies_by_app(scope, "5m")
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        for target in panel["targets"]:
            promql_parser.parse(target["expr"])  # raises on invalid PromQL
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    cells = set()
    for p in board["panels"]:
        g = p["gridPos"]
        cell = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & cell, f"{p['title']} overlaps another panel"
        cells |= cell
        assert g["x"] + g["w"] <= 24


def test_the_cli_writes_json_that_a_serializer_reads_back_and_refuses_a_bad_window(tmp_path: Path) -> None:
    out = tmp_path / "board.json"
    result = CliRunner().invoke(app, ["dashboard", str(POLICY), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["title"] == "canary: web-app"
    printed = CliRunner().invoke(app, ["dashboard", str(POLICY)])
    assert json.loads(printed.stdout) == json.loads(out.read_text())
    bad = CliRunner().invoke(app, ["dashboard", str(POLICY), "--window", "5 minutes"])
    assert bad.exit_code == 2 and bad.output.startswith("canary: --window") and len(bad.output.splitlines()) == 1
