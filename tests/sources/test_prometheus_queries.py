"""The PromQL canary prints and sends is accepted and understood by a real Prometheus."""

from __future__ import annotations

import pytest
from istio_history import HOST, IstioHistory

from canary.promql import Scope, operator_queries, quote, regex_literal
from canary.sources.prometheus import PrometheusSource

pytestmark = pytest.mark.prometheus

SCOPE = Scope(service=HOST, namespace="default", baseline="v1", canary="v2")
NASTY = ['a"b', "back\\slash", "new\nline", "tab\tand\x01control", "ünïcødé ☃", '"} or vector(1) #', ""]


@pytest.mark.parametrize("value", NASTY)
def test_quoted_values_reach_the_engine_unchanged(source: PrometheusSource, history: IstioHistory, value: str):
    result = source.query(f'label_replace(vector(1), "x", {quote(value)}, "", "")', history.end)
    assert [series["metric"].get("x", "") for series in result] == [value]


@pytest.mark.parametrize("value", [v for v in NASTY if v])
def test_regex_literals_match_only_themselves_in_the_engine(
    source: PrometheusSource, history: IstioHistory, value: str
):
    lookalike = value[:-1] + ("y" if value[-1] != "y" else "z")
    both = (
        f'label_replace(vector(1), "x", {quote(value)}, "", "") or '
        f'label_replace(vector(2), "x", {quote(lookalike)}, "", "")'
    )
    # label_replace sets `hit` only where the (anchored) regex matches the `x` label.
    marked = source.query(f'label_replace({both}, "hit", "yes", "x", {quote(regex_literal(value))})', history.end)
    assert {s["metric"]["x"]: s["metric"].get("hit") for s in marked} == {value: "yes", lookalike: None}


def test_every_operator_query_runs_and_shows_both_versions(source: PrometheusSource, history: IstioHistory):
    queries = operator_queries(SCOPE, error_classes=("5xx", "non-2xx", "grpc"), quantiles=(0.5, 0.99), window="5m")
    for query in queries:
        result = source.query(query.promql, history.end, what=query.name)
        if query.name != "outgoing dependencies":  # the history holds no traffic sent by web-app
            assert {s["metric"].get("destination_version") for s in result} == {"v1", "v2"}, query.name
