"""Reading and setting the canary weights on real VirtualService manifests (the seed's, and broken ones)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from canary.errors import RouterError
from canary.model import Weights
from canary.policy import Target
from canary.routers.memory import MemoryRouter, virtual_service_for
from canary.routers.virtualservice import read_weights, with_weights

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "istio" / "web-app-virtualservice.yaml"
HOST = "web-app.default.svc.cluster.local"
TARGET = Target(namespace="default", virtual_service="web-app", host=HOST, baseline="v1", canary="v2")


@pytest.fixture
def vs() -> dict[str, Any]:
    manifest = yaml.safe_load(FIXTURE.read_text())
    assert isinstance(manifest, dict)
    return manifest


def destination(subset: str, weight: int | None) -> dict[str, Any]:
    dest: dict[str, Any] = {"destination": {"host": HOST, "subset": subset}}
    if weight is not None:
        dest["weight"] = weight
    return dest


def test_reads_the_seed_manifest_as_all_baseline(vs: dict[str, Any]) -> None:
    assert read_weights(vs, TARGET) == Weights(baseline=100, canary=0)


@pytest.mark.parametrize("canary", [0, 10, 50, 100])
def test_with_weights_round_trips(vs: dict[str, Any], canary: int) -> None:
    updated = with_weights(vs, TARGET, Weights.canary_at(canary))
    assert read_weights(updated, TARGET) == Weights.canary_at(canary)
    route = updated["spec"]["http"][0]["route"]
    assert [(d["destination"]["subset"], d["weight"]) for d in route] == [("v1", 100 - canary), ("v2", canary)]


def test_with_weights_does_not_mutate_its_input(vs: dict[str, Any]) -> None:
    original = copy.deepcopy(vs)
    updated = with_weights(vs, TARGET, Weights.canary_at(50))
    assert vs == original
    assert updated is not vs
    assert updated["spec"]["http"][0]["route"] is not vs["spec"]["http"][0]["route"]


def test_with_weights_keeps_everything_else(vs: dict[str, Any]) -> None:
    updated = with_weights(vs, TARGET, Weights.canary_at(10))
    assert updated["metadata"] == vs["metadata"]
    assert updated["spec"]["hosts"] == vs["spec"]["hosts"]
    assert updated["spec"]["http"][0]["name"] == "primary"


def with_second_route(vs: dict[str, Any]) -> dict[str, Any]:
    """The seed manifest with a header-matched route first and the weighted 'primary' route second."""
    vs = copy.deepcopy(vs)
    testers = {
        "name": "testers",
        "match": [{"headers": {"x-canary": {"exact": "always"}}}],
        "route": [destination("v1", 0), destination("v2", 100)],
    }
    vs["spec"]["http"].insert(0, testers)
    return vs


def test_named_route_is_the_one_read_and_written(vs: dict[str, Any]) -> None:
    two = with_second_route(vs)
    primary = replace(TARGET, route="primary")
    assert read_weights(two, primary) == Weights.canary_at(0)
    updated = with_weights(two, primary, Weights.canary_at(10))
    assert read_weights(updated, primary) == Weights.canary_at(10)
    assert updated["spec"]["http"][0] == two["spec"]["http"][0], "the other route must not change"


def test_without_a_route_name_the_first_route_is_used(vs: dict[str, Any]) -> None:
    assert read_weights(with_second_route(vs), TARGET) == Weights.canary_at(100)


def test_an_unknown_route_name_is_an_error(vs: dict[str, Any]) -> None:
    target = replace(TARGET, route="canary")
    with pytest.raises(RouterError) as caught:
        read_weights(vs, target)
    assert str(caught.value) == "VirtualService default/web-app: no http route named 'canary'"


def test_a_missing_subset_is_an_error(vs: dict[str, Any]) -> None:
    target = replace(TARGET, canary="v3")
    with pytest.raises(RouterError) as caught:
        read_weights(vs, target)
    assert str(caught.value) == "VirtualService default/web-app: no destination with subset 'v3'"
    with pytest.raises(RouterError, match="no destination with subset 'v3'"):
        with_weights(vs, target, Weights.canary_at(10))


def test_weights_not_summing_to_100_are_an_error(vs: dict[str, Any]) -> None:
    vs["spec"]["http"][0]["route"] = [destination("v1", 80), destination("v2", 10)]
    with pytest.raises(RouterError) as caught:
        read_weights(vs, TARGET)
    assert str(caught.value) == (
        "VirtualService default/web-app: weights of v1 and v2 sum to 90, other destinations hold 0; "
        "canary needs the two to sum to 100"
    )


def test_a_third_destination_holding_traffic_is_an_error(vs: dict[str, Any]) -> None:
    vs["spec"]["http"][0]["route"] = [destination("v1", 80), destination("v2", 10), destination("v0", 10)]
    with pytest.raises(RouterError, match="sum to 90, other destinations hold 10"):
        read_weights(vs, TARGET)


def test_a_destination_without_weight_counts_as_zero(vs: dict[str, Any]) -> None:
    vs["spec"]["http"][0]["route"] = [destination("v1", 100), destination("v2", None)]
    assert read_weights(vs, TARGET) == Weights.canary_at(0)


@pytest.mark.parametrize("http", [[], None, "primary"], ids=["empty", "null", "not-a-list"])
def test_no_http_routes_is_an_error(vs: dict[str, Any], http: object) -> None:
    vs["spec"]["http"] = http
    with pytest.raises(RouterError) as caught:
        read_weights(vs, TARGET)
    assert str(caught.value) == "VirtualService default/web-app: spec.http has no routes"


def test_a_route_without_destinations_is_an_error(vs: dict[str, Any]) -> None:
    del vs["spec"]["http"][0]["route"]
    with pytest.raises(RouterError) as caught:
        read_weights(vs, TARGET)
    assert str(caught.value) == "VirtualService default/web-app: the http route has no destinations"


def test_the_memory_router_holds_the_seed_shape(vs: dict[str, Any]) -> None:
    """The simulated mesh's VirtualService is the one the seed deploys."""
    assert virtual_service_for(TARGET) == vs


def test_memory_router_sets_reads_and_records_history(vs: dict[str, Any]) -> None:
    router = MemoryRouter([vs])
    router.set_weights(TARGET, Weights.canary_at(10))
    router.set_weights(TARGET, Weights.canary_at(50))
    assert router.get_weights(TARGET) == Weights.canary_at(50)
    assert router.history == [Weights.canary_at(10), Weights.canary_at(50)]
    assert read_weights(vs, TARGET) == Weights.canary_at(0), "the manifest handed in must stay untouched"


def test_memory_router_names_a_missing_virtual_service(vs: dict[str, Any]) -> None:
    router = MemoryRouter([vs])
    other = replace(TARGET, virtual_service="shop")
    with pytest.raises(RouterError) as caught:
        router.get_weights(other)
    assert str(caught.value) == "VirtualService default/shop not found"
