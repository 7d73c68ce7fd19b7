"""What an Istio VirtualService means for canary: pure functions over the manifest as a dict.

Both routers (in-memory and the Kubernetes one) read and write weights through these, so the rules for
finding the route and its two destinations live in one place.
"""

from __future__ import annotations

import copy
from typing import Any

from canary.errors import RouterError, WeightConflict
from canary.model import Weights
from canary.policy import Target


def _route(vs: dict[str, Any], target: Target) -> list[dict[str, Any]]:
    name = f"{target.namespace}/{target.virtual_service}"
    http = vs.get("spec", {}).get("http")
    if not isinstance(http, list) or not http:
        raise RouterError(f"VirtualService {name}: spec.http has no routes")
    if target.route is None:
        chosen = http[0]
    else:
        named = [r for r in http if isinstance(r, dict) and r.get("name") == target.route]
        if not named:
            raise RouterError(f"VirtualService {name}: no http route named {target.route!r}")
        chosen = named[0]
    route = chosen.get("route") if isinstance(chosen, dict) else None
    if not isinstance(route, list):
        raise RouterError(f"VirtualService {name}: the http route has no destinations")
    return route


def _destination(route: list[dict[str, Any]], target: Target, subset: str) -> dict[str, Any]:
    for dest in route:
        d = dest.get("destination", {}) if isinstance(dest, dict) else {}
        if d.get("subset") == subset:
            return dest
    raise RouterError(
        f"VirtualService {target.namespace}/{target.virtual_service}: no destination with subset {subset!r}"
    )


def read_weights(vs: dict[str, Any], target: Target) -> Weights:
    route = _route(vs, target)
    base = _destination(route, target, target.baseline)
    can = _destination(route, target, target.canary)
    # Istio: a single destination without weight takes 100; with several, a missing weight means 0.
    b, c = int(base.get("weight", 0)), int(can.get("weight", 0))
    others = sum(int(d.get("weight", 0)) for d in route if d is not base and d is not can)
    if others or b + c != 100:
        raise RouterError(
            f"VirtualService {target.namespace}/{target.virtual_service}: weights of {target.baseline} and "
            f"{target.canary} sum to {b + c}, other destinations hold {others}; canary needs the two to sum to 100"
        )
    return Weights(baseline=b, canary=c)


def with_weights(vs: dict[str, Any], target: Target, weights: Weights) -> dict[str, Any]:
    """A copy of the manifest with the two destinations' weights set."""
    out = copy.deepcopy(vs)
    route = _route(out, target)
    _destination(route, target, target.baseline)["weight"] = weights.baseline
    _destination(route, target, target.canary)["weight"] = weights.canary
    return out


def check_expected(vs: dict[str, Any], target: Target, expected: Weights | None) -> None:
    """Compare-and-swap: refuse to write over weights someone changed since they were read."""
    if expected is None:
        return
    current = read_weights(vs, target)
    if current != expected:
        raise WeightConflict(
            f"VirtualService {target.namespace}/{target.virtual_service}: weights changed outside canary "
            f"(expected {expected}, found {current})"
        )
