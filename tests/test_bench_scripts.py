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
import pod_ceiling  # noqa: E402
import pod_spread  # noqa: E402
import quantile_ceiling  # noqa: E402
import readoff_error  # noqa: E402


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


def test_the_quantile_ceilings_mixture_judge_holds_its_level_at_the_boundary() -> None:
    """The idealised judge is only a ceiling if it is a valid test: a canary whose share beyond the point is
    exactly the boundary's is rolled back in at most α of 400 hour-long rollouts (it is about 1%)."""
    minutes = quantile_ceiling.minutes_to_fail(
        per_minute=300, share_c=0.5, boundary=0.5, effect=0.0757, alpha=0.05, judge="mixture", minutes=60,
        runs=400, seed=3,
    )  # fmt: skip
    assert (minutes < float("inf")).mean() <= 0.05


def test_the_quantile_ceiling_judges_the_checks_a_shift_moves_past_their_tolerance(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert quantile_ceiling.main(["--scenario", "latency+20%-50rps", "--runs", "40"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("latency p50 ")]
    assert [(row[3], row[4]) for row in rows] == [("sprt", "check"), ("sprt", "whole"), ("mixture", "check"),
                                                  ("mixture", "whole")]  # fmt: skip
    assert "latency p95: within tolerance" in out and "latency p99: within tolerance" in out


def test_the_readoff_measurement_reads_a_lognormal_exactly_and_a_sharp_start_badly() -> None:
    """The read-off is exact for a lognormal (the curve's assumption) and far off for a shifted exponential at
    its sharp start, as docs/statistics.md's table says; the exact histogram holds the shape at every edge."""
    shape = readoff_error.SHAPES["lognormal, σ 0.5"]
    hist = readoff_error.exact_histogram(shape(80.0).sf)  # type: ignore[attr-defined]
    assert abs(hist.counts[6] / hist.total - (shape(80.0).cdf(100) - shape(80.0).cdf(50))) < 1e-9  # type: ignore[attr-defined]
    assert max(e for e, _, _ in readoff_error.errors(shape, scales=5, points=10)) < 0.002
    sharp = readoff_error.errors(readoff_error.SHAPES["shifted exponential"], scales=5, points=10)
    assert max(e for e, _, _ in sharp) > readoff_error.INTERPOLATION_ALLOWANCE


def test_the_spread_unknown_bound_is_the_level_against_the_null_itself_and_high_against_a_clear_regression() -> None:
    """The Neyman–Pearson bound is a valid test at each spread: against a canary exactly at the tolerance with
    alike pods (the null at τ* = 0 itself) it detects no more than its level; a tenfold excess nearly always."""
    common = dict(rps=50.0, share=0.1, minutes=30.0, rate_b=0.01, margin=0.005, spread=0.0, pods_b=3, pods_c=1,
                  level=0.025, runs=20_000, seed=2, taus=(0.0, 0.1, 0.3))  # fmt: skip
    at_null, _ = pod_ceiling.spread_unknown_ceiling(**common, rate_c=0.015)  # type: ignore[arg-type]
    clear, _ = pod_ceiling.spread_unknown_ceiling(**common, rate_c=0.06)  # type: ignore[arg-type]
    assert at_null <= 0.035
    assert clear > 0.99
