"""Exact counts over a window from raw counter samples: parsing and reset-aware differencing, no I/O.

Prometheus' `increase()` extrapolates to the window's edges and returns fractions; the statistics count
events, so the source fetches the stored samples instead and differences them here. Kept apart from the
HTTP client so recorded API answers (fixtures/prometheus) can be fed straight in by fast tests.

Rules, per series (one set of labels):
- the window is (start, end] in sample timestamps: the base is the last sample at or before `start`, and
  every sample after it up to `end` adds its increase, so consecutive windows partition the samples;
- a drop in value is a counter reset (a restarted pod): the sample after it counts its whole value, the
  requests since the restart, as `increase()` does;
- a series whose first sample falls inside the window was born there and counts from zero;
- NaN samples are skipped; a series with no sample inside the window is not data (never a zero).
Series are then summed per (version, pod).

A restart resets every series of a process, but only the series whose new value is below the old one show
it. Where counts of different series must agree, a reset seen in one series is applied to the others: to
every bucket of a histogram (the series that differ only in `le`), so its buckets stay cumulative, and to
the events and total series of a custom ratio's (version, pod), so events never exceed total. Error-rate
series are left to themselves: errors are a subset of the same series, so they cannot disagree, and a single
series can also start over alone (Envoy's stats eviction, or another pod when the pod label names the
workload), when counting the others from zero would add requests from before the window.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from canary.codec import describe
from canary.model import MAX_COUNT, Histogram, MetricWindow, Ratio, Sample
from canary.promql import CUSTOM_VERSION_LABEL, PART_LABEL, VERSION_LABEL, parse_le
from canary.stats.buckets import merge


class CountError(ValueError):
    """The samples cannot be turned into counts (malformed answer, inconsistent series)."""


@dataclass(frozen=True)
class Series:
    """One time series of a range-vector answer: its labels and (timestamp in s, value) samples."""

    labels: Mapping[str, str]
    samples: tuple[tuple[float, float], ...]


def parse_matrix(result: object) -> list[Series]:
    """The `data.result` list of a range-vector query as Series; CountError if it is not one."""
    if not isinstance(result, list):
        raise CountError(f"expected a list of series, got {type(result).__name__}")
    out: list[Series] = []
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict):
            raise CountError("expected series with a 'metric' label set")
        if "values" not in item:
            raise CountError("expected a range vector (series with 'values'), got an instant vector")
        if not isinstance(item["values"], list):
            raise CountError(f"expected a list of samples in 'values', got {describe(item['values'])}")
        labels = {str(k): str(v) for k, v in item["metric"].items()}
        out.append(Series(labels, tuple(_sample(pair) for pair in item["values"])))
    return out


def parse_vector(result: object) -> dict[frozenset[tuple[str, str]], float]:
    """The `data.result` list of an instant query as label set (without `__name__`) -> value."""
    if not isinstance(result, list):
        raise CountError(f"expected a list of series, got {type(result).__name__}")
    out: dict[frozenset[tuple[str, str]], float] = {}
    for item in result:
        if not isinstance(item, dict) or not isinstance(item.get("metric"), dict) or "value" not in item:
            raise CountError("expected an instant vector (series with a 'metric' label set and a 'value')")
        out[_identity(item["metric"])] = _sample(item["value"])[1]
    return out


def _identity(labels: Mapping[Any, Any]) -> frozenset[tuple[str, str]]:
    return frozenset((str(k), str(v)) for k, v in labels.items() if k != "__name__")


def gapped(series: Sequence[Series], start: float) -> list[int]:
    """The indices of the series that may be back from a scrape gap longer than the range read: each has
    samples after `start` and none at or before it, and neither has any series of its scrape target
    (`instance`, `pod`). One born while its pod was scraped (a first 5xx, or one Envoy evicted and made
    again) counts from zero."""
    scraped = {_scrape_target(s.labels) for s in series if any(t <= start and math.isfinite(v) for t, v in s.samples)}
    return [i for i, s in enumerate(series) if _unbased(s, start) and _scrape_target(s.labels) not in scraped]


def _scrape_target(labels: Mapping[str, str]) -> tuple[str, str]:
    return labels.get("instance", ""), labels.get("pod", "")


def _unbased(s: Series, start: float) -> bool:
    times = [t for t, v in s.samples if math.isfinite(v)]
    return bool(times) and min(times) > start


def based(
    series: Sequence[Series],
    indices: Sequence[int],
    last_values: Mapping[frozenset[tuple[str, str]], float],
    start: float,
) -> list[Series]:
    """The series, those at `indices` (`gapped`) given their last value before the window (`last_values`,
    answered at `start`) as a sample at `start`: a target back from a long gap counts what it grew, not
    everything since it was born (a lower value after the gap is a restart, counted from zero). A series with
    no last value is new."""
    out = list(series)
    for i in indices:
        last = last_values.get(_identity(series[i].labels))
        if last is not None:
            out[i] = Series(series[i].labels, ((start, last), *series[i].samples))
    return out


def _sample(pair: Any) -> tuple[float, float]:
    try:
        timestamp, value = pair
        sample = float(timestamp), float(value)
    except (TypeError, ValueError) as exc:
        raise CountError(f"malformed sample {describe(pair)}") from exc
    if sample[1] < 0:  # NaN compares false: a stale marker is skipped later, not refused
        raise CountError(f"a counter sample is negative ({sample[1]:g}); counters only grow")
    if sample[1] > MAX_COUNT or abs(sample[0]) > MAX_COUNT:  # beyond exact integers in a float: no count
        raise CountError(f"a sample is implausibly large ({sample[1]:g} at {sample[0]:g})")
    return sample


def reset_times(samples: Iterable[tuple[float, float]]) -> list[float]:
    """The timestamps at which a counter dropped (a reset), NaN and infinite samples skipped."""
    out: list[float] = []
    previous: float | None = None
    for timestamp, value in sorted(samples):
        if not math.isfinite(value):
            continue
        if previous is not None and value < previous:
            out.append(timestamp)
        previous = value
    return out


def window_increase(
    samples: Iterable[tuple[float, float]], start: float, end: float, resets: Sequence[float] = ()
) -> float | None:
    """How much a counter grew over (start, end], reset-aware; None when no sample falls in the window.

    `resets` (sorted) are reset times seen in other series of the same group: a sample whose interval since
    this series' previous sample holds one counts its whole value, as if this series had dropped there too.
    """
    previous: tuple[float, float] | None = None  # (timestamp, value)
    total = 0.0
    seen = False
    for timestamp, value in sorted(samples):
        if not math.isfinite(value):
            continue
        if timestamp > end:
            break
        if timestamp <= start:
            previous = (timestamp, value)
            continue
        seen = True
        if previous is None or value < previous[1] or _reset_between(resets, previous[0], timestamp):
            total += value  # born inside the window, or restarted: everything since zero is new
        else:
            total += value - previous[1]
        previous = (timestamp, value)
    return total if seen else None


def _reset_between(resets: Sequence[float], after: float, until: float) -> bool:
    """Whether a reset time lies in (after, until]."""
    i = bisect_right(resets, after)
    return i < len(resets) and resets[i] <= until


def _count(value: float) -> int:
    return round(value)


def _pod(labels: Mapping[str, str], pod_label: str) -> str:
    return labels.get(pod_label, "")


def _side(version: str, baseline: str, canary: str) -> str | None:
    if version == baseline:
        return "baseline"
    if version == canary:
        return "canary"
    return None


def _window(baseline: Mapping[str, Sample], canary: Mapping[str, Sample]) -> MetricWindow:
    return MetricWindow(baseline=dict(sorted(baseline.items())), canary=dict(sorted(canary.items())))


def _increases(
    series: Sequence[Series],
    version_label: str,
    baseline: str,
    canary: str,
    start: float,
    end: float,
    *,
    group: Callable[[Mapping[str, str]], Hashable] = lambda labels: None,
) -> Iterator[tuple[str, Series, float]]:
    """(side, series, its increase over (start, end]) for each series of the two versions with data there.

    A reset seen in any series of a group (same side, same `group` key) resets every series of that group at
    that time; the default puts no two series in one group.
    """
    chosen = [(side, s) for s in series if (side := _side(s.labels.get(version_label, ""), baseline, canary))]
    found: dict[tuple[str, Hashable], set[float]] = defaultdict(set)
    for side, s in chosen:
        if (key := group(s.labels)) is not None:
            found[(side, key)].update(reset_times(s.samples))
    resets = {key: sorted(times) for key, times in found.items()}
    for side, s in chosen:
        grown = window_increase(s.samples, start, end, resets.get((side, group(s.labels)), []))
        if grown is not None:
            yield side, s, grown


def _histogram_key(labels: Mapping[str, str]) -> Hashable:
    """One histogram: its buckets differ only in `le`."""
    return frozenset((k, v) for k, v in labels.items() if k != "le")


def error_window(
    series: Sequence[Series],
    *,
    baseline: str,
    canary: str,
    start: float,
    end: float,
    is_error: Callable[[Mapping[str, str]], bool],
    pod_label: str = "pod",
) -> MetricWindow:
    """Errors out of requests per version and pod, from raw `istio_requests_total` series."""
    requests: dict[tuple[str, str], float] = defaultdict(float)
    errors: dict[tuple[str, str], float] = defaultdict(float)
    for side, s, grown in _increases(series, VERSION_LABEL, baseline, canary, start, end):
        key = (side, _pod(s.labels, pod_label))
        requests[key] += grown
        if is_error(s.labels):
            errors[key] += grown
    sides: dict[str, dict[str, Sample]] = {"baseline": {}, "canary": {}}
    for (side, pod), total in requests.items():
        sides[side][pod] = Ratio(events=_count(errors.get((side, pod), 0.0)), trials=_count(total))
    return _window(sides["baseline"], sides["canary"])


def histogram_window(
    series: Sequence[Series],
    *,
    baseline: str,
    canary: str,
    start: float,
    end: float,
    pod_label: str = "pod",
) -> MetricWindow:
    """Requests per latency bucket per version and pod, from raw `..._bucket` series (every `le`).

    A reset seen in any bucket of a histogram resets all its buckets, so their counts stay cumulative. A pod's
    histograms are summed on the edges they share: under a coarser pod label (`destination_workload`) a pod
    replaced by one with other buckets is two layouts in one group.
    """
    cumulative: dict[tuple[str, str, Hashable], dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for side, s, grown in _increases(series, VERSION_LABEL, baseline, canary, start, end, group=_histogram_key):
        try:
            le = parse_le(s.labels["le"])
        except (KeyError, ValueError) as exc:
            raise CountError(f"a bucket series has no numeric 'le' label: {dict(s.labels)}") from exc
        cumulative[(side, _pod(s.labels, pod_label), _histogram_key(s.labels))][le] += grown
    found: dict[tuple[str, str], list[Histogram]] = defaultdict(list)
    for (side, pod, _), buckets in cumulative.items():
        counts = {le: _count(v) for le, v in buckets.items()}
        try:
            found[(side, pod)].append(Histogram.from_cumulative(counts))
        except ValueError as exc:
            raise CountError(f"inconsistent buckets for {_version(side, baseline, canary)} pod {pod!r}: {exc}") from exc
    sides: dict[str, dict[str, Sample]] = {"baseline": {}, "canary": {}}
    for (side, pod), histograms in found.items():
        merged = merge(histograms)
        if merged is None:
            raise CountError(f"the histograms of {_version(side, baseline, canary)} pod {pod!r} share no bucket edge")
        sides[side][pod] = merged
    return _window(sides["baseline"], sides["canary"])


def _version(side: str, baseline: str, canary: str) -> str:
    return baseline if side == "baseline" else canary


def custom_window(
    series: Sequence[Series],
    *,
    baseline: str,
    canary: str,
    start: float,
    end: float,
    pod_label: str = "pod",
) -> MetricWindow:
    """Events out of total per version and pod, from a custom ratio's tagged subquery answer.

    A reset seen in any events or total series of a (version, pod) resets all of them, so events never
    exceed total through a restart. A pod with total but no events series has zero events; events without a
    total, or more events than total, mean the two templates do not describe the same requests.
    """
    parts: dict[str, dict[tuple[str, str], float]] = {"events": defaultdict(float), "total": defaultdict(float)}
    tagged = [s for s in series if s.labels.get(PART_LABEL) in parts]
    by_pod = partial(_pod, pod_label=pod_label)
    for side, s, grown in _increases(tagged, CUSTOM_VERSION_LABEL, baseline, canary, start, end, group=by_pod):
        parts[s.labels[PART_LABEL]][(side, _pod(s.labels, pod_label))] += grown
    sides: dict[str, dict[str, Sample]] = {"baseline": {}, "canary": {}}
    for key in parts["events"]:
        if key not in parts["total"]:
            raise CountError(f"pod {key[1]!r} has events but no total; both templates must keep the same labels")
    for (side, pod), total in parts["total"].items():
        events, trials = _count(parts["events"].get((side, pod), 0.0)), _count(total)
        if events > trials:
            version = baseline if side == "baseline" else canary
            raise CountError(f"{version} pod {pod!r} has more events ({events}) than total ({trials})")
        sides[side][pod] = Ratio(events=events, trials=trials)
    return _window(sides["baseline"], sides["canary"])
