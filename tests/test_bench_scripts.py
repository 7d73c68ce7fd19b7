"""The statistics benchmarks' command lines, run small: they keep working, and their worker pools change
nothing but the time (each case's seed is fixed by its place in the full list, not by the process)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import latency_shapes  # noqa: E402
import pod_spread  # noqa: E402


def _rows(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and line[2:3].isdigit()]


def test_pod_spread_prints_one_row_per_layout_and_spread_whatever_the_workers(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["--runs", "15", "--pods", "3:1", "--pods", "10:2", "--spread", "0", "--spread", "0.3"]
    assert pod_spread.main([*argv, "--workers", "1"]) == 0
    alone = _rows(capsys)
    assert [row.split(" | ")[:2] for row in alone] == [["| 3 : 1", "0"], ["| 3 : 1", "0.3"], ["| 10 : 2", "0"],
                                                       ["| 10 : 2", "0.3"]]  # fmt: skip
    assert pod_spread.main([*argv, "--workers", "2"]) == 0
    assert _rows(capsys) == alone


def test_latency_shapes_writes_the_same_json_whatever_the_workers(tmp_path: Path) -> None:
    argv = ["--runs", "3", "--only", "scaled-p50", "--only", "bimodal-baseline-p99"]
    figures = []
    for workers in ("1", "2"):
        out = tmp_path / f"shapes-{workers}.json"
        assert latency_shapes.main([*argv, "--workers", workers, "--json", str(out)]) == 0
        figures.append(json.loads(out.read_text()))
    assert figures[0] == figures[1]
    assert [row["case"] for row in figures[0]] == ["scaled-p50", "bimodal-baseline-p99"]
    assert all(row["runs"] == 3 and 0 <= row["fail_rate"] <= 1 for row in figures[0])
