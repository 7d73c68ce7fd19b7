"""Istio's PromQL as data: escaping, selectors, error classes, templates and operator queries."""

from __future__ import annotations

import math
import re

import promql_parser
import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import PolicyError
from canary.model import ISTIO_LATENCY_BUCKETS_MS
from canary.policy import CustomRatioMetric, parse_policy
from canary.promql import (
    DURATION_BUCKET,
    ERROR_CLASSES,
    REQUESTS_TOTAL,
    Scope,
    custom_raw_query,
    format_le,
    one_of,
    operator_queries,
    parse_le,
    quote,
    raw_query,
    regex_literal,
    render_template,
    selector,
    template_error,
)

SCOPE = Scope(service="web-app.default.svc.cluster.local", namespace="default", baseline="v1", canary="v2")
HOSTILE = 'x"} or vector(1) or up{a="\\\n'


def matchers(query: str) -> list[tuple[str, str, str]]:
    expr = promql_parser.parse(query)
    while not isinstance(expr, promql_parser.VectorSelector):
        expr = expr.vector_selector if isinstance(expr, promql_parser.MatrixSelector) else expr.expr
    return [(m.name, str(m.op).rsplit(".", 1)[-1], m.value) for m in expr.matchers.matchers]


@given(st.text())
def test_quoted_label_values_read_back_exactly(value: str):
    assert matchers(f"m{{a={quote(value)}}}") == [("a", "Equal", value)]


@given(st.text())
def test_regex_literal_matches_exactly_its_own_text(value: str):
    pattern = regex_literal(value)
    assert re.fullmatch(pattern, value, re.DOTALL)
    assert matchers(f"m{{a=~{quote(pattern)}}}") == [("a", "Re", pattern)]


def test_version_alternation_does_not_match_lookalikes():
    pattern = one_of(["v.1", "v2"])
    assert re.fullmatch(pattern, "v.1") and re.fullmatch(pattern, "v2")
    assert not re.fullmatch(pattern, "vx1") and not re.fullmatch(pattern, "v.1|v2")


def test_hostile_service_name_cannot_add_matchers_or_operators():
    scope = Scope(service=HOSTILE, namespace='ns"}', baseline="v1", canary="v2|.*")
    query = raw_query(REQUESTS_TOTAL, scope, 60)
    assert matchers(query) == [
        ("reporter", "Equal", "destination"),
        ("destination_service", "Equal", HOSTILE),
        ("destination_workload_namespace", "Equal", 'ns"}'),
        ("destination_version", "Re", r"v1|v2\|\.\*"),
    ]
    assert isinstance(promql_parser.parse(query), promql_parser.MatrixSelector)


def test_raw_query_covers_both_versions_in_one_range_selector():
    query = raw_query(DURATION_BUCKET, SCOPE, 359.2)
    assert query == (
        'istio_request_duration_milliseconds_bucket{reporter="destination",'
        'destination_service="web-app.default.svc.cluster.local",destination_workload_namespace="default",'
        'destination_version=~"v1|v2"}[360s]'
    )


def test_reporter_is_part_of_the_scope():
    source_view = Scope("h", "ns", "v1", "v2", reporter="source")
    assert ("reporter", "Equal", "source") in matchers(raw_query(REQUESTS_TOTAL, source_view, 60))
    assert 'destination_version="v2"' in selector(SCOPE, versions=("v2",))


def test_istio_bucket_bounds_print_as_istio_prints_them():
    printed = [format_le(b) for b in (*ISTIO_LATENCY_BUCKETS_MS, math.inf)]
    assert printed == [
        "0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000",
        "60000", "300000", "600000", "1.8e+06", "3.6e+06", "+Inf",
    ]  # fmt: skip
    assert [parse_le(text) for text in printed] == [*ISTIO_LATENCY_BUCKETS_MS, math.inf]


@pytest.mark.parametrize(
    ("value", "printed"),
    [(0.005, "0.005"), (0.0001, "0.0001"), (0.00001, "1e-05"), (123.456, "123.456"), (1e6, "1e+06"),
     (1234567.0, "1.234567e+06"), (999999.0, "999999"), (2.5, "2.5")],
)  # fmt: skip
def test_bucket_bounds_use_gos_shortest_g_format(value: float, printed: str):
    assert format_le(value) == printed


def test_parse_le_rejects_nan():
    with pytest.raises(ValueError, match="not a number"):
        parse_le("NaN")


@pytest.mark.parametrize(
    ("labels", "five", "non2", "grpc"),
    [
        ({"response_code": "200"}, False, False, False),
        ({"response_code": "204"}, False, False, False),
        ({"response_code": "404"}, False, True, False),
        ({"response_code": "503"}, True, True, False),
        ({"response_code": "0"}, False, True, False),  # connection reset before a response
        ({"response_code": "200", "grpc_response_status": "0"}, False, False, False),
        ({"response_code": "200", "grpc_response_status": "14"}, False, False, True),
        ({"response_code": "200", "grpc_response_status": ""}, False, False, False),
    ],
)
def test_error_classes_classify_series_by_labels(labels, five, non2, grpc):
    got = [ERROR_CLASSES[name].is_error(labels) for name in ("5xx", "non-2xx", "grpc")]
    assert got == [five, non2, grpc]


def test_error_class_matchers_are_valid_promql():
    for error_class in ERROR_CLASSES.values():
        assert matchers(f"{REQUESTS_TOTAL}{{{error_class.matchers}}}")


# ------------------------------------------------------------------------------------------- templates


def test_render_fills_placeholders_escaped_and_leaves_promql_braces_alone():
    template = 'sum by (pod) (m{svc="{service}",ns="{namespace}",v="{version}"}) + rate(n{v="{version}"}[{window}])'
    rendered = render_template(template, service='a"b', namespace="ns", version="v\\2", window="60s")
    assert rendered == 'sum by (pod) (m{svc="a\\"b",ns="ns",v="v\\\\2"}) + rate(n{v="v\\\\2"}[60s])'
    assert promql_parser.parse(rendered)


@pytest.mark.parametrize(
    ("template", "problem"),
    [
        ('app_failures_total{version="{version}"}', None),
        ('sum by (pod) (app_failures_total{service="{service}",version="{version}"})', None),
        ('increase(app_failures_total{version="{version}"}[{window}])', None),
        ('app_failures_total{version="{verison}"}', "unknown placeholder {verison}"),
        ('app_failures_total{service="{service}"}', "must use the {version} placeholder"),
        ('sum(app_failures_total{version="{version}"}', "not valid PromQL"),
        ('rate(app_failures_total{version="{version}"})', "not valid PromQL: expected type matrix"),
        ('app_failures_total{version="{version}"}[5m]', "yields a range vector"),
        ('scalar(app_failures_total{version="{version}"})', "yields a scalar"),
        ("", "must be a non-empty PromQL template"),
        ('app_failures_total{version="{version}"} # failures of {version}', "holds a PromQL comment ('#')"),
        ('app_failures_total{version="{version}", route="/a#b"}', None),
        ("(" * 1000 + 'app_failures_total{version="{version}"}' + ")" * 1000, "nested too deeply to check"),
        ("-" * 3000 + 'app_failures_total{version="{version}"}', "nested too deeply to check"),
    ],
)
def test_template_error_explains_what_is_wrong(template: str, problem: str | None):
    error = template_error(template)
    if problem is None:
        assert error is None
    else:
        assert error is not None and problem in error and "\n" not in error


def test_custom_query_is_one_subquery_tagging_both_parts_of_both_versions():
    query = custom_raw_query(
        'bad_total{v="{version}"}', 'all_total{v="{version}"}', SCOPE, interval_s=60, range_s=360, step_s=1
    )
    expr = promql_parser.parse(query)
    assert isinstance(expr, promql_parser.SubqueryExpr)
    assert query.endswith(")[360s:1s]")
    for text in ('bad_total{v="v1"}', 'bad_total{v="v2"}', 'all_total{v="v1"}', 'all_total{v="v2"}'):
        assert text in query
    assert query.count("label_replace") == 8


# ----------------------------------------------------------------------------------- operator queries


def test_operator_queries_are_valid_promql_naming_the_service():
    queries = operator_queries(
        SCOPE,
        error_classes=("5xx", "grpc"),
        quantiles=(0.5, 0.99),
        custom=(("c", 'a{v="{version}"}', 'b{v="{version}"}'),),
    )
    names = [q.name for q in queries]
    assert names[:6] == [
        "request rate", "error rate (5xx)", "success rate (5xx)", "error rate (grpc)", "success rate (grpc)",
        "p50 latency",
    ]  # fmt: skip
    assert {"p95 latency", "p99 latency", "incoming dependencies", "outgoing dependencies", "c (v1)", "c (v2)"} <= set(
        names
    )
    for query in queries:
        promql_parser.parse(query.promql)
        assert query.description
    assert "histogram_quantile(0.95, sum by (destination_version, le)" in queries[6].promql


# ----------------------------------------------------------------------------- custom metrics in a policy

POLICY = """\
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {name: shop}
spec:
  target: {namespace: shop, virtualService: shop, host: shop.shop.svc.cluster.local}
  metrics:
    - name: checkouts
      kind: custom
      events: sum by (pod) (app_checkout_failures_total{namespace="{namespace}", version="{version}"})
      total: sum by (pod) (app_checkouts_total{namespace="{namespace}", version="{version}"})
      maxIncrease: 0.01
      critical: true
"""


def test_custom_metric_loads_from_a_policy():
    (metric,) = parse_policy(POLICY, "shop.yaml").metrics
    assert metric == CustomRatioMetric(
        name="checkouts",
        events='sum by (pod) (app_checkout_failures_total{namespace="{namespace}", version="{version}"})',
        total='sum by (pod) (app_checkouts_total{namespace="{namespace}", version="{version}"})',
        max_increase=0.01,
        critical=True,
    )


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("app_checkouts_total{", "app_checkouts_total{{", "shop.yaml:10: spec.metrics[0].total: not valid PromQL"),
        ('version="{version}"})\n      maxIncrease', 'ver="{vers}"})\n      maxIncrease',
         "shop.yaml:10: spec.metrics[0].total: unknown placeholder {vers}"),
        ("      maxIncrease: 0.01\n", "", "shop.yaml:7: spec.metrics[0].maxIncrease: is required"),
        ("      events:", "      evnts:", "spec.metrics[0].evnts: unknown field"),
        ("kind: custom", "kind: costum", "must be one of error-rate, latency, custom, got 'costum'"),
    ],
)  # fmt: skip
def test_bad_custom_metrics_fail_at_load_with_file_field_and_line(old: str, new: str, message: str):
    with pytest.raises(PolicyError) as caught:
        parse_policy(POLICY.replace(old, new, 1), "shop.yaml")
    assert message in str(caught.value)
