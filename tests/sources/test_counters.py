"""Counting bucket series into per-pod histograms, as `canary/sources/counters.py` does for every answer."""

from __future__ import annotations

import math

import pytest

from canary.model import Histogram, Ratio
from canary.promql import ERROR_CLASSES, format_le
from canary.sources.counters import CountError, Series, based, error_window, gapped, histogram_window

WORKLOAD = "web-app-v1"
FIVE_XX = ERROR_CLASSES["5xx"].is_error


def buckets(pod: str, edges: tuple[float, ...], before: list[int], after: list[int]) -> list[Series]:
    """One pod's bucket series (cumulative values at t=0 and t=60), labelled as Istio labels them."""
    out = []
    for edge, a, b in zip((*edges, math.inf), before, after, strict=True):
        labels = {"destination_version": "v1", "destination_workload": WORKLOAD, "pod": pod, "le": format_le(edge)}
        out.append(Series(labels, ((0.0, float(a)), (60.0, float(b)))))
    return out


def window(series: list[Series]) -> dict[str, Histogram]:
    found = histogram_window(series, baseline="v1", canary="v2", start=0.0, end=60.0, pod_label="destination_workload")
    return dict(found.baseline)


def test_a_workload_whose_replaced_pod_has_other_buckets_is_summed_on_the_edges_both_have() -> None:
    """Counted by `destination_workload`, the old pod (edges 10, 25, 50, 100) and its replacement (edges 10,
    50, 100, 250) are one group: summed per `le` they are no histogram (25 would hold fewer than 10 plus the
    new pod's 10); on their shared edges they are."""
    old = buckets("web-app-v1-aaaaa", (10, 25, 50, 100), [0, 0, 0, 0, 0], [4, 6, 9, 10, 10])
    new = buckets("web-app-v1-bbbbb", (10, 50, 100, 250), [0, 0, 0, 0, 0], [3, 5, 8, 9, 10])
    assert window(old + new) == {WORKLOAD: Histogram((10.0, 50.0, 100.0), (7, 7, 4, 2))}


def test_one_layout_per_workload_is_summed_per_bucket_as_before() -> None:
    edges = (10.0, 50.0, 100.0)
    a = buckets("web-app-v1-aaaaa", edges, [1, 1, 1, 1], [4, 6, 9, 10])
    b = buckets("web-app-v1-bbbbb", edges, [0, 0, 0, 0], [3, 5, 8, 9])
    assert window(a + b) == {WORKLOAD: Histogram(edges, (6, 4, 6, 2))}


def test_buckets_of_one_histogram_that_decrease_are_a_count_error_naming_the_pod() -> None:
    broken = buckets("web-app-v1-aaaaa", (10.0, 50.0), [0, 0, 0], [5, 3, 6])
    with pytest.raises(CountError, match=r"inconsistent buckets for v1 pod 'web-app-v1': .* must not decrease"):
        window(broken)


def counter(pod: str, code: str, samples: tuple[tuple[float, float], ...]) -> Series:
    labels = {"__name__": "istio_requests_total", "destination_version": "v2", "pod": pod, "response_code": code}
    return Series(labels, samples)


def identity(s: Series) -> frozenset[tuple[str, str]]:
    return frozenset((k, v) for k, v in s.labels.items() if k != "__name__")


def test_a_series_born_again_while_its_pod_was_scraped_counts_from_zero() -> None:
    """Envoy evicted the pod's 503 series and made it again: its old value (40, twenty minutes ago) is no base
    for the new one (45 errors since it came back), since the pod's 200 series was scraped all along."""
    ok = counter("v2-a", "200", ((-30.0, 100.0), (30.0, 400.0)))
    errors = counter("v2-a", "503", ((30.0, 45.0),))
    assert not gapped([ok, errors], 0.0)
    assert based([ok, errors], gapped([ok, errors], 0.0), {identity(errors): 40.0}, 0.0) == [ok, errors]
    found = error_window([ok, errors], baseline="v1", canary="v2", start=0.0, end=60.0, is_error=FIVE_XX)
    assert found.canary == {"v2-a": Ratio(events=45, trials=345)}


def test_a_pod_back_from_a_long_scrape_gap_counts_what_it_grew() -> None:
    """Every series of the pod is missing before the window: its last values are the base (a lower one after
    the gap is a restart, counted from zero)."""
    ok = counter("v2-a", "200", ((30.0, 460.0),))
    errors = counter("v2-a", "503", ((30.0, 5.0),))
    assert gapped([ok, errors], 0.0) == [0, 1]
    given = based([ok, errors], [0, 1], {identity(ok): 400.0, identity(errors): 40.0}, 0.0)
    found = error_window(given, baseline="v1", canary="v2", start=0.0, end=60.0, is_error=FIVE_XX)
    assert found.canary == {"v2-a": Ratio(events=5, trials=65)}
