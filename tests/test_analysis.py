"""One-shot analysis (`canary analyze`): window cutting, verdict rules, count merging, time parsing."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from canary.analysis import analyze, merge, parse_time
from canary.cli import app
from canary.errors import CanaryError
from canary.model import Histogram, Judgement, MetricWindow, Observation, Outcome, Ratio
from canary.policy import MetricSpec, Policy, Target
from canary.report import elapsed, iso, version_counts

ROOT = Path(__file__).resolve().parent.parent


class CountingSource:
    """A fake source at our own boundary: each interval the canary pod serves 10 requests, 1 failing."""

    def __init__(self) -> None:
        self.windows: list[tuple[float, float]] = []

    def observe(self, target: Target, metrics: tuple[object, ...], start: float, end: float) -> Observation:
        self.windows.append((start, end))
        window = MetricWindow(baseline={"b-0": Ratio(0, 20)}, canary={"c-0": Ratio(1, 10)})
        return Observation(start, end, {"error-rate": window})


class ScriptedJudge:
    """Answers the outcomes it was given, in order; its evidence is the number of intervals it judged."""

    name = "scripted"
    state_type = int

    def __init__(self, outcomes: list[Outcome]) -> None:
        self.outcomes = list(outcomes)

    def start(self) -> int:
        return 0

    def judge(self, state: int, observation: Observation, step: int) -> tuple[int, Judgement]:
        outcome = self.outcomes[state]
        return state + 1, Judgement(outcome, (), f"{outcome.value} at {observation.end:g}")

    def refuses(self, metric: MetricSpec) -> str | None:
        return None


@pytest.fixture
def policy(web_policy: Policy) -> Policy:
    return dataclasses.replace(web_policy, interval_s=60.0)


def test_window_is_cut_into_policy_intervals_with_a_short_last_one(policy: Policy):
    source = CountingSource()
    result = analyze(policy, source, ScriptedJudge([Outcome.CONTINUE] * 3), 1000.0, 1150.0)
    assert source.windows == [(1000.0, 1060.0), (1060.0, 1120.0), (1120.0, 1150.0)]
    assert result.intervals == 3
    assert result.observation.metrics["error-rate"].canary == {"c-0": Ratio(3, 30)}
    assert (result.verdict, result.exit_code) == ("inconclusive", 3)


@pytest.mark.parametrize(
    ("outcomes", "verdict", "deciding"),
    [
        ([Outcome.CONTINUE, Outcome.PASS, Outcome.PASS], "pass", "pass at 1120"),
        ([Outcome.PASS, Outcome.CONTINUE, Outcome.NO_DATA], "pass", "pass at 1060"),
        ([Outcome.PASS, Outcome.FAIL, Outcome.PASS], "fail", "fail at 1120"),
        ([Outcome.NO_DATA, Outcome.NO_DATA, Outcome.CONTINUE], "inconclusive", "continue at 1180"),
    ],
)
def test_any_failure_fails_and_the_first_pass_passes(policy: Policy, outcomes, verdict, deciding):
    result = analyze(policy, CountingSource(), ScriptedJudge(outcomes), 1000.0, 1180.0)
    assert result.verdict == verdict
    assert result.judgement is not None and result.judgement.summary == deciding


@pytest.mark.parametrize("later", [Outcome.CONTINUE, Outcome.NO_DATA, Outcome.PASS])
def test_reported_judgement_agrees_with_the_verdict(policy: Policy, later: Outcome):
    result = analyze(policy, CountingSource(), ScriptedJudge([Outcome.PASS, later]), 1000.0, 1120.0)
    assert result.judgement is not None
    assert (result.verdict, result.judgement.outcome.value) == ("pass", "pass")


def test_empty_window_is_refused(policy: Policy):
    with pytest.raises(ValueError, match="must end after it starts"):
        analyze(policy, CountingSource(), ScriptedJudge([]), 10.0, 10.0)


class SilentSource:
    """A source that finds no series for either version: a wrong host, reporter or window."""

    def observe(self, target: Target, metrics: tuple[object, ...], start: float, end: float) -> Observation:
        return Observation(start, end, {"error-rate": MetricWindow({}, {}), "latency": MetricWindow({}, {})})


def test_a_window_without_a_series_for_either_version_is_an_error_not_inconclusive(policy: Policy):
    """Inconclusive (exit 3) is let through by the Argo template in docs/pipelines.md: a misconfigured
    analysis must not pass every measurement."""
    with pytest.raises(CanaryError, match=r"^no series for v1 nor v2 of web-app\.default\.svc\.cluster\.local in "):
        analyze(policy, SilentSource(), ScriptedJudge([Outcome.NO_DATA] * 2), 1000.0, 1120.0)


def test_a_window_that_ends_in_the_future_is_refused_before_prometheus_is_asked(tmp_path: Path):
    done = CliRunner().invoke(app, ["analyze", str(ROOT / "policies" / "web-app.yaml"), "--end", "2999-01-01T00:00:00Z",
                                    "--prometheus-url", "http://127.0.0.1:9"])  # fmt: skip
    assert done.exit_code == 2
    assert done.stderr.strip() == (
        "canary: the window ends at 2999-01-01T00:00:00+00:00, in the future: give --end now or an earlier time"
    )


def test_merge_adds_histograms_and_keeps_pods_seen_only_once():
    bounds = (1.0, 2.0)
    first = Observation(0, 1, {"lat": MetricWindow({"a": Histogram(bounds, (1, 2, 3))}, {})})
    second = Observation(
        1, 2, {"lat": MetricWindow({"a": Histogram(bounds, (1, 0, 0)), "b": Histogram(bounds, (0, 0, 5))}, {})}
    )
    merged = merge([first, second])
    assert (merged.start, merged.end) == (0, 2)
    assert merged.metrics["lat"].baseline == {"a": Histogram(bounds, (2, 2, 3)), "b": Histogram(bounds, (0, 0, 5))}
    assert merged.metrics["lat"].canary == {}


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("now", 1_000_000.0),
        ("-30m", 1_000_000.0 - 1800),
        ("-1h30m", 1_000_000.0 - 5400),
        ("999.5", 999.5),
        ("2026-01-01T00:00:00Z", 1_767_225_600.0),
        ("2026-01-01T01:00:00+01:00", 1_767_225_600.0),
        ("2026-01-01T00:00:00", 1_767_225_600.0),  # no zone: UTC, never the machine's local time
    ],
)
def test_times_read_as_now_relative_unix_or_iso(text: str, seconds: float):
    assert parse_time(text, now=1_000_000.0) == seconds


def test_unreadable_time_says_what_is_accepted():
    with pytest.raises(ValueError, match="use now, -30m, unix seconds or 2026-01-01T12:00:00Z"):
        parse_time("yesterday", now=0.0)


@pytest.mark.parametrize("text", ["inf", "-inf", "nan", "1e20", "-1e20", "-99999999h", "0001-01-01T00:00:00+01:00"])
def test_times_without_a_printable_date_are_refused_with_one_line(text: str):
    with pytest.raises(ValueError, match="out of range: give a time between 1970 and 9999"):
        parse_time(text, now=1_000_000.0)


def test_iso_never_raises():
    assert iso(0.0) == "1970-01-01T00:00:00+00:00"
    assert [iso(t) for t in (math.inf, math.nan, 1e20)] == ["inf", "nan", "1e+20"]


def test_counts_key_buckets_by_le_as_prometheus_prints_it(policy: Policy):
    histogram = Histogram.from_cumulative({0.5: 1, 1234567.0: 2, 1_800_000.0: 3, math.inf: 4})
    observation = Observation(0, 60, {"latency": MetricWindow({}, {"c-0": histogram})})
    counts = version_counts(observation, policy)
    assert counts["v1"] == {}
    assert counts["v2"]["latency_buckets"] == {"0.5": 1, "1.234567e+06": 2, "1.8e+06": 3, "+Inf": 4}
    assert counts["v2"]["requests"] == 4  # no error-rate series: requests from the histogram


def test_counts_sum_pods_with_different_layouts_on_their_common_edges(policy: Policy):
    full = Histogram.from_cumulative({50.0: 1, 100.0: 3, 250.0: 4, math.inf: 5})
    coarse = Histogram.from_cumulative({100.0: 2, math.inf: 6})
    errors = MetricWindow({}, {"c-0": Ratio(1, 5), "c-1": Ratio(2, 6)})
    observation = Observation(0, 60, {"latency": MetricWindow({}, {"c-0": full, "c-1": coarse}), "error-rate": errors})
    counts = version_counts(observation, policy)["v2"]
    assert counts["latency_buckets"] == {"100": 5, "+Inf": 11}
    assert (counts["requests"], counts["errors"], counts["pods"]) == (11, 3, 2)


@pytest.mark.parametrize(
    ("seconds", "words"), [(0, "0 s"), (45, "45 s"), (59.4, "59 s"), (59.6, "1 min"), (90, "2 min"), (3600, "60 min")]
)
def test_durations_under_a_minute_are_told_in_seconds(seconds: float, words: str) -> None:
    """A rollout rolled back after 40 s was "after 1 min", one of 10 s "after 0 min"."""
    assert elapsed(seconds) == words
