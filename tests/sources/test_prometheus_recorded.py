"""Fast tests of the parsing and differencing code on real recorded answers (fixtures/prometheus)."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from canary.errors import BadQuery
from canary.model import ISTIO_LATENCY_BUCKETS_MS, Histogram, Ratio
from canary.promql import ERROR_CLASSES
from canary.sources.counters import (
    CountError,
    Series,
    custom_window,
    error_window,
    histogram_window,
    parse_matrix,
    window_increase,
)
from canary.sources.prometheus import PrometheusSettings, PrometheusSource

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "prometheus"


def load(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def counts(record: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    series = parse_matrix(record["response"]["data"]["result"])
    window = {"baseline": "v1", "canary": "v2", "start": record["start"], "end": record["end"]}
    if record["kind"] == "ErrorRateMetric":
        result = error_window(series, is_error=ERROR_CLASSES[record["errors"]].is_error, **window)
    elif record["kind"] == "LatencyMetric":
        result = histogram_window(series, **window)
    else:
        result = custom_window(series, **window)
    return dict(result.baseline), dict(result.canary)


def expected_ratios(rows: dict[str, list[int]]) -> dict[str, Ratio]:
    return {pod: Ratio(events=e, trials=t) for pod, (e, t) in rows.items()}


@pytest.mark.parametrize("name", ["error-rate-reset", "error-rate-gap", "custom-reset"])
def test_recorded_ratios_equal_the_counts_written(name: str):
    record = load(name)
    baseline, canary = counts(record)
    assert baseline == expected_ratios(record["expected"]["v1"])
    assert canary == expected_ratios(record["expected"]["v2"])


def test_recorded_buckets_equal_the_counts_written():
    record = load("latency-reset")
    baseline, canary = counts(record)
    bounds = tuple(float(b) for b in ISTIO_LATENCY_BUCKETS_MS)
    assert canary == {pod: Histogram(bounds, tuple(c)) for pod, c in record["expected"]["v2"].items()}
    assert baseline == {pod: Histogram(bounds, tuple(c)) for pod, c in record["expected"]["v1"].items()}


def test_recorded_reset_window_really_holds_a_counter_drop():
    record = load("error-rate-reset")
    drops = [
        s
        for s in parse_matrix(record["response"]["data"]["result"])
        if any(b < a for (_, a), (_, b) in zip(s.samples, s.samples[1:], strict=False))
    ]
    assert drops and all(s.labels["destination_version"] == "v2" for s in drops)


def test_recorded_missing_version_is_empty_not_zero():
    baseline, canary = counts(load("missing-version"))
    assert canary == {} and baseline["orders-v1-x"].trials > 0


def test_recorded_bad_query_answer_becomes_bad_query_with_the_servers_reason():
    record = load("bad-query")
    # prometheus_api_client raises with this message for any non-200 answer.
    message = f"HTTP Status Code {record['status']} ({record['body'].encode()!r})"
    source = PrometheusSource(PrometheusSettings("http://127.0.0.1:9090"))
    error = source._http_error(message, "metric 'x'")
    assert isinstance(error, BadQuery)
    assert str(error) == (
        "Prometheus at http://127.0.0.1:9090 rejected the metric 'x' query (HTTP 400): invalid parameter "
        '"query": 1:47: parse error: unexpected identifier "v2" in label matching, expected string'
    )


def test_instant_vector_answers_are_refused():
    with pytest.raises(CountError, match="expected a range vector"):
        parse_matrix([{"metric": {}, "value": [1, "2"]}])


# ---------------------------------------------------------------------------------- differencing rules


def test_reset_counts_the_value_since_restart():
    samples = [(0, 100.0), (15, 110.0), (30, 4.0), (45, 9.0)]
    assert window_increase(samples, 0, 45) == 10 + 4 + 5


def test_base_sample_is_the_last_at_or_before_start():
    samples = [(0, 10.0), (15, 20.0), (30, 35.0)]
    assert window_increase(samples, 15, 30) == 15
    assert window_increase(samples, 14.9, 30) == 25


def test_series_born_inside_the_window_counts_from_zero():
    assert window_increase([(20, 3.0), (35, 5.0)], 10, 40) == 5


def test_no_sample_in_the_window_is_no_data():
    assert window_increase([(0, 3.0), (100, 5.0)], 10, 40) is None
    assert window_increase([], 10, 40) is None


def test_nan_samples_are_skipped():
    assert window_increase([(0, 1.0), (15, float("nan")), (30, 4.0)], 0, 30) == 3
    assert window_increase([(0, 1.0), (15, float("nan"))], 0, 30) is None


def test_events_without_a_total_are_refused():
    series = [Series({"canary_version": "v2", "canary_part": "events", "pod": "p"}, ((1, 1.0), (2, 3.0)))]
    with pytest.raises(CountError, match="events but no total"):
        custom_window(series, baseline="v1", canary="v2", start=0, end=2)


@st.composite
def counter_process(draw: st.DrawFn) -> tuple[list[tuple[float, float]], list[int], set[int], list[float]]:
    """A counter scraped every 15 s: per-scrape increments, restarts, the samples it shows, window cuts."""
    increments = draw(st.lists(st.integers(0, 50), min_size=2, max_size=40))
    restarts = draw(st.sets(st.integers(1, len(increments) - 1)))
    samples, value = [], 0
    for i, inc in enumerate(increments):
        value = inc if i in restarts else value + inc
        samples.append((15.0 * i, float(value)))
    cuts = sorted(draw(st.lists(st.floats(0, 15.0 * (len(increments) - 1)), min_size=1, max_size=4)))
    return samples, increments, restarts, cuts


@given(counter_process())
def test_windows_count_every_scraped_increment_once_whatever_the_restarts(process):
    """Consecutive windows add up to the whole, which is every increment after the first scrape.

    The one loss is a restart whose new value is not below the old one: it cannot be told from growth in
    the samples (Prometheus' increase() has the same blind spot), and then the old value is missed.
    """
    samples, increments, restarts, cuts = process
    edges = [0.0, *cuts, samples[-1][0]]
    parts = [window_increase(samples, a, b) or 0.0 for a, b in itertools.pairwise(edges)]
    whole = window_increase(samples, 0.0, samples[-1][0])
    assert whole is not None and sum(parts) == whole and all(p >= 0 for p in parts)
    hidden = [i for i in restarts if samples[i][1] >= samples[i - 1][1]]
    assert whole == sum(increments[1:]) - sum(samples[i - 1][1] for i in hidden)


# ------------------------------------------------------------------- resets seen in only some series


def bucket(le: str, *values: float, code: str = "200") -> Series:
    labels = {"destination_version": "v2", "pod": "p", "response_code": code, "le": le}
    return Series(labels, tuple((15.0 * i, v) for i, v in enumerate(values)))


def test_reset_seen_in_one_bucket_resets_the_whole_histogram():
    """A restart drops the 50 ms bucket (80, 90 → 5) while +Inf rises (100, 110 → 112, all since restart)."""
    series = [bucket("50", 80, 90, 5), bucket("+Inf", 100, 110, 112)]
    window = histogram_window(series, baseline="v1", canary="v2", start=0, end=30)
    assert window.canary == {"p": Histogram((50.0,), (10 + 5, (10 + 112) - (10 + 5)))}
    assert window.canary["p"].cumulative() == {50.0: 15, math.inf: 122}


def test_a_reset_in_one_histogram_leaves_the_other_histograms_of_the_pod_alone():
    """Series of other label sets restart on their own (Envoy's stats eviction): they keep their increase."""
    series = [
        bucket("50", 80, 90, 5),
        bucket("+Inf", 100, 110, 112),
        bucket("50", 1, 2, 3, code="503"),
        bucket("+Inf", 4, 5, 7, code="503"),
    ]
    window = histogram_window(series, baseline="v1", canary="v2", start=0, end=30)
    assert window.canary["p"].cumulative() == {50.0: 15 + 2, math.inf: 122 + 3}


def test_reset_seen_in_the_events_resets_the_total_of_that_pod():
    """Events drop (10, 12 → 8) while total rises (1000, 1002 → 1005): 8 and 1005 are since the restart."""
    tags = {"canary_version": "v2", "pod": "p"}
    series = [
        Series({**tags, "canary_part": "events"}, ((0, 10.0), (15, 12.0), (30, 8.0))),
        Series({**tags, "canary_part": "total"}, ((0, 1000.0), (15, 1002.0), (30, 1005.0))),
        Series({**tags, "pod": "q", "canary_part": "total"}, ((0, 50.0), (15, 60.0), (30, 70.0))),
    ]
    window = custom_window(series, baseline="v1", canary="v2", start=0, end=30)
    assert window.canary == {"p": Ratio(events=2 + 8, trials=2 + 1005), "q": Ratio(events=0, trials=20)}


def test_a_reset_of_another_series_between_two_samples_of_this_one_counts():
    """This series missed the scrape where the other dropped: its next sample counts from zero."""
    assert window_increase([(0, 100.0), (30, 110.0)], 0, 30, resets=[15.0]) == 110
    assert window_increase([(0, 100.0), (30, 110.0)], 0, 30, resets=[0.0, 31.0]) == 10


@st.composite
def histogram_process(draw: st.DrawFn) -> tuple[list[Series], list[list[int]], set[int], list[float]]:
    """One pod's 3-bucket histogram scraped every 15 s: per-scrape hits per bucket, restarts, window cuts."""
    scrapes = draw(st.integers(2, 25))
    hits = draw(st.lists(st.lists(st.integers(0, 30), min_size=3, max_size=3), min_size=scrapes, max_size=scrapes))
    restarts = draw(st.sets(st.integers(1, scrapes - 1)))
    values, running = [], [0, 0, 0]
    for i, row in enumerate(hits):
        running = list(row) if i in restarts else [r + h for r, h in zip(running, row, strict=True)]
        values.append(list(itertools.accumulate(running)))  # cumulative over le
    series = [bucket(le, *(float(v[j]) for v in values)) for j, le in enumerate(("10", "50", "+Inf"))]
    cuts = sorted(draw(st.lists(st.floats(0, 15.0 * (scrapes - 1)), max_size=3)))
    return series, values, restarts, cuts


@given(histogram_process())
def test_histogram_windows_stay_cumulative_and_exact_when_a_restart_shows_in_any_bucket(process):
    """Consecutive windows add up to every hit after the first scrape, bucket by bucket.

    The blind spot shared with increase(): a restart after which every bucket rose is not seen at all.
    """
    series, values, restarts, cuts = process
    assume(all(any(values[i][j] < values[i - 1][j] for j in range(3)) for i in restarts))
    edges = [0.0, *cuts, series[0].samples[-1][0]]
    totals = [0, 0, 0]
    for a, b in itertools.pairwise(edges):
        for histogram in histogram_window(series, baseline="v1", canary="v2", start=a, end=b).canary.values():
            totals = [t + c for t, c in zip(totals, histogram.cumulative().values(), strict=True)]
    grown = [[v[j] - (0 if i in restarts else values[i - 1][j]) for j in range(3)] for i, v in enumerate(values)]
    assert totals == [sum(row[j] for row in grown[1:]) for j in range(3)]
