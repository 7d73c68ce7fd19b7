"""The Prometheus source reads back exactly the counts that were backfilled into a real server."""

from __future__ import annotations

import pytest
from istio_history import BOUNDS, GAP_POD, GRPC, HOST, HOSTILE_HOST, ORDERS, OTHER, REGEX_HOST, IstioHistory
from prometheus_server import PrometheusServer

from canary.model import Histogram, MetricWindow, Ratio
from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, Target
from canary.promql import ERROR_CLASSES
from canary.sources.prometheus import PrometheusSettings, PrometheusSource

pytestmark = pytest.mark.prometheus

ERRORS_5XX = ErrorRateMetric("errors", max_increase=0.01, errors="5xx")
LATENCY = LatencyMetric("latency", quantiles=())
CHECKOUT = CustomRatioMetric(
    "checkout",
    events='app_checkout_failures_total{app="web-app",namespace="{namespace}",version="{version}"}',
    total='app_checkouts_total{app="web-app",namespace="{namespace}",version="{version}"}',
    max_increase=0.01,
)


def target(host: str = HOST, baseline: str = "v1", canary: str = "v2") -> Target:
    return Target(namespace="default", virtual_service="vs", host=host, baseline=baseline, canary=canary)


def expected_ratios(history: IstioHistory, host: str, version: str, start: float, end: float, errors: str = "5xx"):
    written = history.requests(host, version, start, end, is_error=ERROR_CLASSES[errors].is_error)
    return {pod: Ratio(events=e, trials=r) for pod, (e, r) in written.items()}


def expected_histograms(history: IstioHistory, version: str, start: float, end: float) -> dict[str, Histogram]:
    bounds = tuple(float(b) for b in BOUNDS)
    return {pod: Histogram(bounds, tuple(c)) for pod, c in history.buckets(HOST, version, start, end).items()}


def test_error_counts_per_version_and_pod_equal_what_was_written(source, history):
    window = source.observe(target().scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert window.baseline == expected_ratios(history, HOST, "v1", history.start, history.end)
    assert window.canary == expected_ratios(history, HOST, "v2", history.start, history.end)
    assert set(window.baseline) == {"web-app-v1-aaaaa", "web-app-v1-bbbbb"}
    assert all(isinstance(r.events, int) and isinstance(r.trials, int) for r in window.baseline.values())


def test_latency_bucket_counts_per_version_and_pod_equal_what_was_written(source, history):
    window = source.observe(target().scope, (LATENCY,), history.start, history.end).metrics["latency"]
    assert window.baseline == expected_histograms(history, "v1", history.start, history.end)
    assert window.canary == expected_histograms(history, "v2", history.start, history.end)
    assert len(window.canary["web-app-v2-ccccc"].counts) == 20  # every le, +Inf included


@pytest.mark.parametrize("errors", ["non-2xx", "5xx"])
def test_error_class_decides_which_response_codes_count_as_events(source, history, errors):
    metric = ErrorRateMetric("errors", max_increase=0.01, errors=errors)
    window = source.observe(target().scope, (metric,), history.start, history.end).metrics["errors"]
    assert window.canary == expected_ratios(history, HOST, "v2", history.start, history.end, errors)


def test_grpc_failures_are_statuses_other_than_ok(source, history):
    metric = ErrorRateMetric("grpc", max_increase=0.01, errors="grpc")
    window = source.observe(target(GRPC).scope, (metric,), history.start, history.end).metrics["grpc"]
    expected = expected_ratios(history, GRPC, "v2", history.start, history.end, "grpc")
    assert window.canary == expected
    assert 0 < expected["grpc-v2-x"].events < expected["grpc-v2-x"].trials


def test_counter_reset_counts_neither_negative_nor_doubled(source, history):
    """The v2 pod restarts at minute 20; a window around the restart still counts exactly what was served."""
    restart = history.times[history.reset_index]
    start, end = restart - 60, restart + 60
    window = source.observe(target().scope, (ERRORS_5XX, LATENCY), start, end).metrics
    expected = expected_ratios(history, HOST, "v2", start, end)
    assert window["errors"].canary == expected
    assert window["latency"].canary == expected_histograms(history, "v2", start, end)
    # The raw counter really dropped, so naive end-minus-start differencing would go negative.
    track = next(
        t for t in history.counters if t.labels["pod"] == "web-app-v2-ccccc" and t.labels["response_code"] == "200"
    )
    values = dict(track.samples())
    assert values[end] - values[start] < 0 < expected["web-app-v2-ccccc"].trials


def test_windows_across_the_reset_add_up_to_the_whole(source, history):
    start, middle, end = history.start, history.times[history.reset_index] + 7, history.end
    whole = source.observe(target().scope, (ERRORS_5XX,), start, end).metrics["errors"].canary
    first = source.observe(target().scope, (ERRORS_5XX,), start, middle).metrics["errors"].canary
    second = source.observe(target().scope, (ERRORS_5XX,), middle, end).metrics["errors"].canary
    pod = "web-app-v2-ccccc"
    assert first[pod] + second[pod] == whole[pod]


def test_scrape_gap_inside_the_window_loses_no_requests(source, history):
    """v1 pod b was not scraped for 3 minutes: the sample after the gap carries the missed requests."""
    start, end = history.t0 + 840, history.t0 + 1140  # the gap covers 900..1065
    window = source.observe(target().scope, (ERRORS_5XX,), start, end).metrics["errors"]
    assert window.baseline == expected_ratios(history, HOST, "v1", start, end)
    assert window.baseline["web-app-v1-bbbbb"].trials > 0


def test_window_inside_a_gap_is_no_data_for_that_pod(source, history):
    start, end = history.t0 + 920, history.t0 + 1040
    window = source.observe(target().scope, (ERRORS_5XX,), start, end).metrics["errors"]
    assert "web-app-v1-bbbbb" not in window.baseline
    assert window.baseline == expected_ratios(history, HOST, "v1", start, end)


def test_series_born_inside_the_window_counts_from_zero(source, history):
    """v2's first 500 appears at minute 22: its first sample's value is requests, not a baseline."""
    start, end = history.t0 + 1260, history.t0 + 1500
    window = source.observe(target().scope, (ERRORS_5XX,), start, end).metrics["errors"]
    expected = expected_ratios(history, HOST, "v2", start, end)
    assert window.canary == expected
    five_hundreds = history.requests(HOST, "v2", start, end, is_error=lambda labels: labels["response_code"] == "500")[
        "web-app-v2-ccccc"
    ][0]
    assert five_hundreds > 0


def test_windows_off_scrape_timestamps_still_count_whole_requests(source, history):
    start, end = history.start + 7.25, history.end - 3.5
    window = source.observe(target().scope, (ERRORS_5XX, LATENCY), start, end).metrics
    assert window["errors"].baseline == expected_ratios(history, HOST, "v1", start, end)
    assert window["latency"].canary == expected_histograms(history, "v2", start, end)


def test_missing_version_is_an_empty_mapping_not_zero(source, history):
    window = source.observe(target(ORDERS).scope, (ERRORS_5XX, LATENCY), history.start, history.end).metrics
    assert window["errors"].canary == {}
    assert window["latency"].canary == {}
    assert window["errors"].baseline["orders-v1-x"].trials > 0


def test_window_before_any_data_is_no_data_for_both_versions(source, history):
    window = source.observe(target().scope, (ERRORS_5XX,), history.t0 - 7200, history.t0 - 3600).metrics["errors"]
    assert window == MetricWindow(baseline={}, canary={})


def test_other_reporters_services_and_namespaces_are_not_counted(source, history):
    window = source.observe(target().scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert "web-app-v2-staging" not in window.canary
    assert "other-v1-x" not in window.baseline
    other = source.observe(target(OTHER).scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert set(other.baseline) == {"other-v1-x"}


@pytest.mark.parametrize(
    ("namespace", "host"),
    [("default", "web-app"), ("routing", HOST)],
    ids=["a short host, as the seed's VirtualService names it", "the route in another namespace than the service"],
)
def test_the_series_are_the_hosts_full_name_in_its_services_namespace(source, history, namespace, host):
    """Istio labels `destination_service` with the full name and `destination_workload_namespace` with the
    workloads' namespace, whatever the VirtualService calls the host and wherever it lives."""
    moved = Target(namespace=namespace, virtual_service="vs", host=host, baseline="v1", canary="v2")
    assert moved.scope == target().scope
    window = source.observe(moved.scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert window.canary == expected_ratios(history, HOST, "v2", history.start, history.end) != {}


def test_custom_ratio_counts_events_out_of_total_per_pod(source, history):
    window = source.observe(target().scope, (CHECKOUT,), history.start, history.end).metrics["checkout"]
    for version, side in (("v1", window.baseline), ("v2", window.canary)):
        written = history.app_ratio(version, history.start, history.end)
        assert side == {pod: Ratio(e, t) for pod, (e, t) in written.items()}


def test_custom_ratio_is_exact_across_the_counter_reset(source, history):
    restart = history.times[history.reset_index]
    start, end = restart - 45, restart + 45
    window = source.observe(target().scope, (CHECKOUT,), start, end).metrics["checkout"]
    written = history.app_ratio("v2", start, end)
    assert window.canary == {pod: Ratio(e, t) for pod, (e, t) in written.items()}


def test_hostile_service_name_selects_only_its_own_series(source, history):
    window = source.observe(target(HOSTILE_HOST).scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert window.baseline == expected_ratios(history, HOSTILE_HOST, "v1", history.start, history.end)
    assert set(window.canary) == {"evil-v2"}


def test_regex_metacharacters_in_versions_match_literally(source, history):
    """Baseline `v.1` must not pick up the series of version `vx1`."""
    window = source.observe(target(REGEX_HOST, "v.1", "v2"), (ERRORS_5XX,), history.start, history.end)
    errors = window.metrics["errors"]
    assert set(errors.baseline) == {"regex-v.1"}
    assert errors.baseline == expected_ratios(history, REGEX_HOST, "v.1", history.start, history.end)


@pytest.mark.parametrize(
    ("minutes", "extra"),
    [((25, 30), 0), ((10, 30), 1)],
    ids=["every series read before", "series appearing inside the window"],
)
def test_one_query_per_metric_per_tick_covers_both_versions(
    prometheus: PrometheusServer, history, web_policy, minutes, extra
):
    """Plus one, for the error-rate metric alone, when a pod's series appear inside the window (the second
    v2 pod, back from its 8-minute scrape gap): their last values before it. v2's first 500, born while its
    pod was scraped, needs none."""
    metrics = (*web_policy.metrics, CHECKOUT)
    start, end = (history.t0 + 60 * m for m in minutes)
    with PrometheusSource(PrometheusSettings(prometheus.url)) as src:
        before = prometheus.query_api_calls()
        observation = src.observe(web_policy.target, metrics, start, end)
        after = prometheus.query_api_calls()
    assert after - before == len(metrics) + extra == 3 + extra
    assert all(w.baseline and w.canary for w in observation.metrics.values())


def test_a_pod_back_from_a_scrape_gap_longer_than_the_lookback_counts_what_it_grew(source, history):
    """The second v2 pod's last samples before the standard window are 315 s before it, past the 300 s
    lookback: read alone, everything it served since it was born would count as requests of this window."""
    window = source.observe(target().scope, (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    expected = expected_ratios(history, HOST, "v2", history.start, history.end)
    assert window.canary == expected and expected[GAP_POD].trials > 0


def test_pod_label_can_be_renamed(prometheus: PrometheusServer, history):
    settings = PrometheusSettings(prometheus.url, pod_label="destination_workload")
    with PrometheusSource(settings) as src:
        window = src.observe(target(), (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    merged = expected_ratios(history, HOST, "v1", history.start, history.end).values()
    assert window.baseline == {"web-app-v1": sum(merged, Ratio(0, 0))}


def test_reporter_setting_selects_the_client_side_view(prometheus: PrometheusServer, history):
    settings = PrometheusSettings(prometheus.url, reporter="source")
    with PrometheusSource(settings) as src:
        window = src.observe(target(), (ERRORS_5XX,), history.start, history.end).metrics["errors"]
    assert set(window.baseline) == {"web-app-v1-aaaaa"}
    assert window.canary == {}


def test_observation_carries_the_window(source, history):
    observation = source.observe(target().scope, (ERRORS_5XX,), history.start, history.end)
    assert (observation.start, observation.end) == (history.start, history.end)
