"""What an Istio VirtualService means for canary: pure functions over the manifest as a dict.

Every router (in memory, a manifest file, the Kubernetes API) finds the route, reads and writes the
weights and the rollout state through these, so the rules live in one place:
- the route canary moves is the one the policy names, or else the one http route that carries plain
  traffic (no `match`) to both the baseline and the canary subsets of the target host; more than one
  such route is refused with the candidates listed. Header-match routes, mirrors, retries, timeouts
  and other hosts are never touched: a write changes the two weights and the state annotation only;
- hosts resolve as Istio resolves them: a short name (no dot) is a service in the VirtualService's
  own namespace (`web-app` in `default` is `web-app.default.svc.cluster.local`);
- the rollout state is the `canary.dev/rollout-state` annotation, written with the weights.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from canary.codec import describe
from canary.errors import RouterError, StateError
from canary.model import Weights
from canary.policy import Target, fqdn
from canary.state import ANNOTATION, RolloutState, decode_state, encode_state

ROOT_NAMESPACE = "istio-system"  # Istio's root config namespace: its DestinationRules apply to every namespace
STATE_LIMIT = 192 * 1024  # bytes of state annotation, leaving room for the object's other annotations


def vs_name(target: Target) -> str:
    return f"VirtualService {target.namespace}/{target.virtual_service}"


def _namespace(doc: dict[str, Any], default: str) -> str:
    meta = doc.get("metadata")
    namespace = meta.get("namespace") if isinstance(meta, dict) else None
    return namespace if isinstance(namespace, str) and namespace else default


@dataclass(frozen=True)
class RouteRead:
    """One read of the route: its weights, the rollout state beside them, and the version it was read at."""

    weights: Weights
    state: RolloutState | None
    state_error: str | None  # the annotation was there but could not be decoded
    revision: str  # the resourceVersion, or a digest of the file: a write is made only if it still holds
    document: dict[str, Any]  # the VirtualService as read


def _http(vs: dict[str, Any], target: Target) -> list[Any]:
    spec = vs.get("spec")
    http = spec.get("http") if isinstance(spec, dict) else None
    if not isinstance(http, list) or not http:
        raise RouterError(f"{vs_name(target)}: spec.http has no routes")
    return http


def _subset_destinations(rule: Any, target: Target, namespace: str) -> dict[str, dict[str, Any]]:
    """The destinations of one http route that go to the target host, by subset (the first of each)."""
    out: dict[str, dict[str, Any]] = {}
    for subset, dest in _to_host(rule, target, namespace):
        out.setdefault(subset, dest)
    return out


def _to_host(rule: Any, target: Target, namespace: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(subset, destination) for each of the route's destinations that go to the target host."""
    route = rule.get("route") if isinstance(rule, dict) else None
    host = fqdn(target.host, target.namespace)
    for dest in route if isinstance(route, list) else []:
        d = dest.get("destination") if isinstance(dest, dict) else None
        if isinstance(d, dict) and isinstance(d.get("host"), str) and fqdn(d["host"], namespace) == host:
            subset = d.get("subset")
            if isinstance(subset, str):
                yield subset, dest


def _describe(index: int, rule: Any) -> str:
    name = rule.get("name") if isinstance(rule, dict) else None
    return f"spec.http[{index}]" + (f" ({name!r})" if name else "")


def route_index(vs: dict[str, Any], target: Target) -> int:
    """The index in spec.http of the route canary moves (RouterError says why there is none)."""
    http = _http(vs, target)
    namespace = _namespace(vs, target.namespace)
    both = {target.baseline, target.canary}
    if target.route is not None:
        named = [i for i, r in enumerate(http) if isinstance(r, dict) and r.get("name") == target.route]
        if not named:
            raise RouterError(f"{vs_name(target)}: no http route named {target.route!r}")
        missing = both - set(_subset_destinations(http[named[0]], target, namespace))
        if missing:
            raise RouterError(
                f"{vs_name(target)}: http route {target.route!r} has no destination with subset "
                f"{sorted(missing)[0]!r} of {target.host}"
            )
        return named[0]
    plain = [
        i for i, r in enumerate(http)
        if isinstance(r, dict) and not r.get("match") and both <= set(_subset_destinations(r, target, namespace))
    ]  # fmt: skip
    if len(plain) == 1:
        return plain[0]
    if not plain:
        lacking = [  # plain routes to the baseline that lack the canary: one of them is the split to be
            i for i, r in enumerate(http)
            if isinstance(r, dict) and not r.get("match")
            and target.baseline in (subsets := set(_subset_destinations(r, target, namespace)))
            and target.canary not in subsets
        ]  # fmt: skip
        hint = "name the route in spec.target.route"
        if len(lacking) == 1:
            route = _describe(lacking[0], http[lacking[0]])
            alone = len(_list(http[lacking[0]].get("route"))) == 1  # Istio's 100 for a sole destination
            also = f" (and {target.baseline!r} with weight 100)" if alone else ""
            hint = f"no route sends to subset {target.canary!r}: add it to {route} with weight 0{also}"
        raise RouterError(
            f"{vs_name(target)}: no http route without `match` sends traffic to both subsets {target.baseline!r} "
            f"and {target.canary!r} of {target.host} ({len(http)} route{'s' * (len(http) != 1)}); {hint}"
        )
    candidates = ", ".join(_describe(i, http[i]) for i in plain)
    raise RouterError(
        f"{vs_name(target)}: {len(plain)} http routes split {target.baseline!r} and {target.canary!r} "
        f"({candidates}); name the one to shift in spec.target.route"
    )


def _weight(dest: dict[str, Any], field: str, target: Target) -> int:
    value = dest.get("weight", 0)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise RouterError(f"{vs_name(target)}: {field}.weight must be a whole number in 0..100, got {value!r}")
    return value


def read_weights(vs: dict[str, Any], target: Target) -> Weights:
    if not isinstance(vs.get("metadata"), dict):
        raise RouterError(f"{vs_name(target)}: metadata must be a mapping, got {describe(vs.get('metadata'))}")
    index = route_index(vs, target)
    rule = _http(vs, target)[index]
    namespace = _namespace(vs, target.namespace)
    dests = _subset_destinations(rule, target, namespace)
    route = rule["route"]
    subsets = [subset for subset, _ in _to_host(rule, target, namespace)]
    for subset in (target.baseline, target.canary):
        if (count := subsets.count(subset)) > 1:
            raise RouterError(
                f"{vs_name(target)}: subset {subset} has {count} destinations in spec.http[{index}]; "
                "canary moves one weight per version: merge them"
            )
    fields = {id(d): f"spec.http[{index}].route[{j}]" for j, d in enumerate(route)}
    base, can = dests[target.baseline], dests[target.canary]
    # Istio: a single destination without weight takes 100; with several, a missing weight means 0.
    b, c = _weight(base, fields[id(base)], target), _weight(can, fields[id(can)], target)
    others = sum(
        _weight(d, fields[id(d)], target) for d in route if isinstance(d, dict) and d is not base and d is not can
    )
    if others or b + c != 100:
        raise RouterError(
            f"{vs_name(target)}: weights of {target.baseline} and {target.canary} in spec.http[{index}] sum to "
            f"{b + c}, others hold {others}; canary needs the two to sum to 100"
        )
    return Weights(baseline=b, canary=c)


def _annotations(vs: dict[str, Any], target: Target) -> dict[str, Any] | None:
    """metadata.annotations, None where there are none; anything but a mapping of strings is refused, as the
    API server refuses it: canary would otherwise overwrite it, or take a state it cannot read for none."""
    meta = vs.get("metadata")
    annotations = meta.get("annotations") if isinstance(meta, dict) else None
    if annotations is not None and not isinstance(annotations, dict):
        raise RouterError(f"{vs_name(target)}: metadata.annotations must be a mapping, got {describe(annotations)}")
    return annotations


def read_route(
    vs: dict[str, Any], target: Target, revision: str, evidence: type | None, where: str | None = None
) -> RouteRead:
    """Weights and state of the route. A state that cannot be decoded is reported, not raised: a person's
    rollback must still work on a route whose annotation was damaged."""
    weights = read_weights(vs, target)
    value = (_annotations(vs, target) or {}).get(ANNOTATION)
    state, problem = None, None
    if value is not None:
        try:
            if not isinstance(value, str):  # Kubernetes annotations are strings
                raise StateError(f"must be a string of JSON, got {describe(value)}")
            state = decode_state(value, evidence)
        except StateError as exc:
            problem = f"{where or vs_name(target)}: annotation {ANNOTATION}: {exc}"
    return RouteRead(weights, state, problem, revision, vs)


def with_weights(vs: dict[str, Any], target: Target, weights: Weights) -> dict[str, Any]:
    """A copy of the manifest with the two destinations' weights set; nothing else changes."""
    out = copy.deepcopy(vs)
    index = route_index(out, target)
    dests = _subset_destinations(_http(out, target)[index], target, _namespace(out, target.namespace))
    dests[target.baseline]["weight"] = weights.baseline
    dests[target.canary]["weight"] = weights.canary
    return out


def with_state(vs: dict[str, Any], state: RolloutState) -> dict[str, Any]:
    """A copy of the manifest with the rollout state annotation set. An ended rollout's state goes without
    the judge's evidence where that would not fit: nothing judges it again, and a rollback must be made."""
    text = encode_state(state)
    if len(text) > STATE_LIMIT and state.phase.ended:
        text = encode_state(dataclasses.replace(state, evidence=None))
    if len(text) > STATE_LIMIT:
        raise RouterError(
            f"the rollout state is {len(text) // 1024} KiB, more than canary writes into an annotation "
            f"({STATE_LIMIT // 1024} KiB; Kubernetes allows 256 KiB for all of an object's annotations): "
            "the judge's per-pod evidence grows with the number of pods"
        )
    out = copy.deepcopy(vs)
    meta = out.get("metadata")
    if not isinstance(meta, dict):
        meta = out["metadata"] = {}
    annotations = meta.get("annotations")
    if not isinstance(annotations, dict):  # none yet (`annotations:` empty): read_route refuses anything else
        annotations = meta["annotations"] = {}
    annotations[ANNOTATION] = text
    return out


def with_route(vs: dict[str, Any], target: Target, weights: Weights, state: RolloutState) -> dict[str, Any]:
    """What one write makes of the manifest: the weights and the state, together."""
    return with_state(with_weights(vs, target, weights), state)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def also_to_canary(vs: dict[str, Any], target: Target) -> tuple[str, ...]:
    """The traffic the VirtualService sends the canary's subset besides the route canary moves, which a
    rollback leaves where it is: other http routes (a header match for testers, a second split), tcp and tls
    routes, and mirrors (their answers are dropped, their load is not). Each as "spec.http[0] (match) 100%"."""
    spec = vs.get("spec")
    if not isinstance(spec, dict):
        return ()
    namespace = _namespace(vs, target.namespace)
    try:
        moved: int | None = route_index(vs, target)
    except RouterError:
        moved = None
    out: list[str] = []
    for kind in ("http", "tcp", "tls"):
        for i, rule in enumerate(_list(spec.get(kind))):
            if not isinstance(rule, dict):
                continue
            where = f"spec.{kind}[{i}]" + (f" ({rule['name']!r})" if isinstance(rule.get("name"), str) else "")
            share = _canary_share(rule, target, namespace)
            if share and not (kind == "http" and i == moved):
                out.append(f"{where}{' (match)' if rule.get('match') else ''} {share}%")
            if kind == "http" and (mirrored := _mirrored(rule, target, namespace)):
                out.append(f"{where} mirrors {mirrored:g}%")
    return tuple(out)


def _canary_share(rule: dict[str, Any], target: Target, namespace: str) -> int:
    """The percentage of a route's traffic that goes to the canary's subset (Istio: a sole destination
    without weight takes 100)."""
    route = _list(rule.get("route"))
    share = 0
    for subset, dest in _to_host(rule, target, namespace):
        if subset != target.canary:
            continue
        weight = dest.get("weight")
        if weight is None and len(route) == 1:
            share += 100
        elif isinstance(weight, int) and not isinstance(weight, bool):
            share += weight
    return share


def _mirrored(rule: dict[str, Any], target: Target, namespace: str) -> float:
    """The percentage of a route's traffic mirrored to the canary's subset (`mirror` or `mirrors`)."""
    host = fqdn(target.host, target.namespace)

    def to_canary(dest: Any) -> bool:
        return (
            isinstance(dest, dict) and dest.get("subset") == target.canary and isinstance(dest.get("host"), str)
            and fqdn(dest["host"], namespace) == host
        )  # fmt: skip

    def percent(number: Any) -> float:  # all of it where none is given
        return float(number) if isinstance(number, int | float) and not isinstance(number, bool) else 100.0

    def value(percentage: Any) -> Any:  # Istio's Percent: {value: 2.5}
        return percentage.get("value") if isinstance(percentage, dict) else None

    # `mirrorPercent` (deprecated: a whole percentage) where `mirrorPercentage` is absent
    mirrored = value(rule["mirrorPercentage"]) if "mirrorPercentage" in rule else rule.get("mirrorPercent")
    total = percent(mirrored) if to_canary(rule.get("mirror")) else 0.0
    for mirror in _list(rule.get("mirrors")):
        if isinstance(mirror, dict) and to_canary(mirror.get("destination")):
            total += percent(value(mirror.get("percentage")))
    return total


def rule_namespaces(target: Target) -> tuple[str, ...]:
    """Where Istio looks for the host's DestinationRule: the route's namespace, the service's, the root's."""
    return tuple(dict.fromkeys((target.namespace, target.scope.namespace, ROOT_NAMESPACE)))


def rules_for(rules: Iterable[Any], target: Target) -> list[dict[str, Any]]:
    """The DestinationRules Istio applies to the target host: those of the first namespace, in the order of
    `rule_namespaces`, that holds any for it (Istio takes the nearest; it does not merge across namespaces)."""
    host = fqdn(target.host, target.namespace)
    found = [
        r for r in rules
        if isinstance(r, dict) and isinstance(r.get("spec"), dict) and isinstance(r["spec"].get("host"), str)
        and fqdn(r["spec"]["host"], _namespace(r, target.namespace)) == host
    ]  # fmt: skip
    for namespace in rule_namespaces(target):
        nearest = [r for r in found if _namespace(r, target.namespace) == namespace]
        if nearest:
            return nearest
    return []


def subsets_problem(rules: Iterable[Any], target: Target) -> str | None:
    """Why the DestinationRules given do not define both subsets for the target host (None: they do)."""
    host = fqdn(target.host, target.namespace)
    found = rules_for(rules, target)
    if not found:
        where = rule_namespaces(target)
        return f"no DestinationRule for {host} in namespace {' or '.join(where)}: Istio cannot route to its subsets"
    names = {
        s["name"]
        for r in found
        for s in _list(r["spec"].get("subsets"))
        if isinstance(s, dict) and isinstance(s.get("name"), str)
    }
    missing = [s for s in (target.baseline, target.canary) if s not in names]
    if missing:
        meta = found[0].get("metadata")
        rule = meta.get("name", "?") if isinstance(meta, dict) else "?"
        have = ", ".join(sorted(str(n) for n in names if n)) or "none"
        at = _namespace(found[0], target.namespace)
        return f"DestinationRule {at}/{rule} for {host} has no subset {missing[0]!r} (subsets: {have})"
    return None
