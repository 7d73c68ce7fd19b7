"""The detection benchmark's harness, run small: canary's guarantee and power on the engine's real path.

The full figures (250 replications of 20 scenarios for four judges) are in docs/benchmarks.md; this keeps
the harness working and catches a judge change that would break the headline claims.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import detection  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, object]]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    names = ["healthy-100rps", "pods-10%-100rps", "share-drift-100rps", "errors+2pp-100rps", "slow-tail-only-100rps"]
    argv = ["--scenarios", str(ROOT / "bench/scenarios/default.json"), "--judge", "canary", "--replications", "40"]
    argv += ["--seed", "101", "--json", str(out), "--workers", "1"]
    for name in names:
        argv += ["--only", name]
    assert detection.main(argv) == 0
    doc = json.loads(out.read_text())
    return {r["scenario"]: r for r in doc["results"]}


def test_outcome_rates_sum_to_one(results: dict[str, dict[str, float]]) -> None:
    for r in results.values():
        assert r["promote_rate"] + r["rollback_rate"] + r["inconclusive_rate"] == pytest.approx(1.0)


def test_healthy_canaries_are_not_rolled_back(results: dict[str, dict[str, float]]) -> None:
    """0 of 2,500 in the full benchmark; here at most 1 of 120 allowed for chance."""
    healthy = [results[n] for n in ("healthy-100rps", "pods-10%-100rps", "share-drift-100rps")]
    assert sum(r["rollbacks"] for r in healthy) <= 1
    assert results["healthy-100rps"]["promote_rate"] >= 0.9


def test_regressions_twice_the_tolerance_are_caught(results: dict[str, dict[str, float]]) -> None:
    for name in ("errors+2pp-100rps", "slow-tail-only-100rps"):
        assert results[name]["rollback_rate"] >= 0.95, name


def test_the_median_wait_counts_a_rollout_never_promoted_as_never(results: dict[str, dict[str, object]]) -> None:
    """Over every rollout, not only the promoted ones; where half are not promoted there is no median."""
    pods = results["pods-10%-100rps"]
    promoted, median_all = float(pods["promote_rate"]), pods["median_promote_all_s"]  # type: ignore[arg-type]
    if promoted <= 0.5:
        assert median_all is None
    else:
        assert isinstance(median_all, float) and median_all >= float(pods["median_promote_s"])  # type: ignore[arg-type]
    assert detection._median_counting_never([60.0, 120.0, 180.0], 4) == 150.0
    assert detection._median_counting_never([60.0], 4) is None
    assert detection._median_counting_never([], 0) is None
