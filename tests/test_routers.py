"""What a VirtualService means for canary (the pure rules every router shares), and the memory and manifest
routers: the route canary moves on the seed's own VirtualService and on bookinfo's, weights and state in one
conditional write, and writes that keep what the user had."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import memory_router

from canary.errors import RouterError, WeightConflict
from canary.model import Phase, Weights
from canary.policy import Target
from canary.routers.manifest import ManifestRouter
from canary.routers.memory import MemoryRouter, seed_objects
from canary.routers.virtualservice import (
    also_to_canary,
    fqdn,
    read_route,
    read_weights,
    route_index,
    subsets_problem,
    with_route,
    with_weights,
)
from canary.state import ANNOTATION, RolloutState, decode_state, encode_state

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "fixtures" / "istio"
WEB = Target("default", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")
REVIEWS = Target("default", "reviews", "reviews.default.svc.cluster.local", "v1", "v2")


def load(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((FIXTURES / name).read_text())
    return doc


@pytest.fixture
def seed() -> dict[str, Any]:
    """The seed's VirtualService, verbatim: header-match route first, then the unnamed 90/10 split."""
    return load("web-app-virtualservice.yaml")


@pytest.fixture
def state(tmp_path: Path) -> RolloutState:
    from canary.app import simulated_rollout
    from canary.audit import MemoryAudit
    from canary.policy import load_policy
    from canary.scenario import builtin_scenario

    policy = load_policy(ROOT / "policies" / "web-app.yaml")
    router = memory_router(policy.target)
    rollout = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit(), router=router)
    rollout.runner.open()
    made = router.read(policy.target).state
    assert made is not None
    return made


# ------------------------------------------------------------------------------------------ the route


def test_short_host_names_resolve_in_the_namespace_as_istio_resolves_them() -> None:
    assert fqdn("web-app", "default") == "web-app.default.svc.cluster.local"
    assert fqdn("web-app.default.svc.cluster.local", "other") == "web-app.default.svc.cluster.local"
    assert fqdn("web-app.default", "other") == "web-app.default", "a dotted name is taken as written"


def test_the_seeds_split_is_found_past_its_header_match_route(seed: dict[str, Any]) -> None:
    assert route_index(seed, WEB) == 1
    assert read_weights(seed, WEB) == Weights(90, 10)


def test_bookinfos_reviews_split_is_found(tmp_path: Path) -> None:
    vs = load("reviews-virtualservice.yaml")
    assert route_index(vs, REVIEWS) == 0 and read_weights(vs, REVIEWS) == Weights(90, 10)


def test_a_write_changes_the_two_weights_and_nothing_else(seed: dict[str, Any], state: RolloutState) -> None:
    before = copy.deepcopy(seed)
    after = with_route(seed, WEB, Weights(50, 50), state)
    assert seed == before, "the input is not changed"
    assert after["spec"]["http"][0] == before["spec"]["http"][0], "the header-match route is untouched"
    assert after["spec"]["hosts"] == before["spec"]["hosts"]
    assert [d["weight"] for d in after["spec"]["http"][1]["route"]] == [50, 50]
    assert [d["destination"] for d in after["spec"]["http"][1]["route"]] == [
        d["destination"] for d in before["spec"]["http"][1]["route"]
    ]
    assert decode_state(after["metadata"]["annotations"][ANNOTATION]) is not None
    restored = with_weights(after, WEB, Weights(90, 10))
    del restored["metadata"]["annotations"]
    assert restored == before


def test_retries_timeouts_mirrors_and_other_hosts_are_never_touched(seed: dict[str, Any], state: RolloutState) -> None:
    """The seed's VirtualService with Istio's documented retries, timeout and mirror fields added to its routes,
    and a route to another host."""
    vs = copy.deepcopy(seed)
    split = vs["spec"]["http"][1]
    split.update(retries={"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx"}, timeout="10s",
                 mirror={"host": "web-app", "subset": "v2"}, mirrorPercentage={"value": 5.0})  # fmt: skip
    vs["spec"]["http"].append({"route": [{"destination": {"host": "other", "subset": "v1"}, "weight": 100}]})
    after = with_route(vs, WEB, Weights(0, 100), state)
    for key in ("retries", "timeout", "mirror", "mirrorPercentage"):
        assert after["spec"]["http"][1][key] == split[key]
    assert after["spec"]["http"][2] == vs["spec"]["http"][2]


def test_a_named_route_is_the_one_moved(seed: dict[str, Any]) -> None:
    seed["spec"]["http"][1]["name"] = "split"
    named = Target(**{**WEB.__dict__, "route": "split"})
    assert route_index(seed, named) == 1
    with pytest.raises(RouterError, match="no http route named 'primary'"):
        route_index(seed, Target(**{**WEB.__dict__, "route": "primary"}))
    header_only = Target(**{**WEB.__dict__, "route": "header"})
    seed["spec"]["http"][0]["name"] = "header"
    with pytest.raises(RouterError, match="http route 'header' has no destination with subset 'v1'"):
        route_index(seed, header_only)


def test_two_plain_splits_are_refused_with_the_candidates_listed(seed: dict[str, Any]) -> None:
    seed["spec"]["http"].append(copy.deepcopy(seed["spec"]["http"][1]) | {"name": "again"})
    with pytest.raises(RouterError) as caught:
        route_index(seed, WEB)
    assert str(caught.value) == (
        "VirtualService default/web-app: 2 http routes split 'v1' and 'v2' (spec.http[1], spec.http[2] ('again')); "
        "name the one to shift in spec.target.route"
    )


def test_a_route_to_the_baseline_alone_is_told_how_to_begin(seed: dict[str, Any]) -> None:
    """A service before its first canary: one plain route to v1, without weight (Istio's 100)."""
    seed["spec"]["http"][1]["route"] = [{"destination": {"host": "web-app", "subset": "v1"}}]
    with pytest.raises(RouterError, match=r"\(2 routes\); no route sends to subset 'v2': add it to spec.http\[1\] "
                                          r"with weight 0 \(and 'v1' with weight 100\)$"):  # fmt: skip
        route_index(seed, WEB)


def test_a_canary_subset_no_route_names_is_told_where_to_add_it(seed: dict[str, Any]) -> None:
    """The policy names v3 on the seed's route: the split holds v1 and v2, and v3 is missing, not the route."""
    v3 = dataclasses.replace(WEB, canary="v3")
    with pytest.raises(RouterError, match=r"no route sends to subset 'v3': add it to spec.http\[1\] with weight 0$"):
        route_index(seed, v3)


def test_traffic_to_the_canary_outside_the_split_is_named_route_by_route(seed: dict[str, Any]) -> None:
    """What no step and no rollback moves: a sole destination without weight (Istio's 100), a tls split, the
    `mirrors` list and the deprecated whole-number `mirrorPercent`; the split canary moves is not named."""
    v2 = {"host": "web-app", "subset": "v2"}
    seed["spec"]["http"][1] |= {"mirror": v2, "mirrorPercent": 30}
    seed["spec"]["http"].append({"name": "shadow", "match": [{"uri": {"prefix": "/s"}}],
                                 "route": [{"destination": {"host": "web-app", "subset": "v1"}}],
                                 "mirrors": [{"destination": v2, "percentage": {"value": 2.5}}]})  # fmt: skip
    seed["spec"]["tls"] = [{"match": [{"sniHosts": ["web-app"]}],
                            "route": [{"destination": {"host": "web-app", "subset": "v1"}, "weight": 75},
                                      {"destination": v2, "weight": 25}]}]  # fmt: skip
    assert also_to_canary(seed, WEB) == (
        "spec.http[0] (match) 100%", "spec.http[1] mirrors 30%", "spec.http[2] ('shadow') mirrors 2.5%",
        "spec.tls[0] (match) 25%",
    )  # fmt: skip
    assert also_to_canary(seed, dataclasses.replace(WEB, host="api.default.svc.cluster.local")) == ()


def test_a_split_of_another_host_does_not_count(seed: dict[str, Any]) -> None:
    other = Target("default", "web-app", "api.default.svc.cluster.local", "v1", "v2")
    with pytest.raises(RouterError, match="no http route without `match` sends traffic to both subsets"):
        route_index(seed, other)
    elsewhere = Target("prod", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")
    seed["metadata"]["namespace"] = "prod"  # `web-app` now means web-app.prod
    with pytest.raises(RouterError, match="no http route without `match`"):
        route_index(seed, elsewhere)


@pytest.mark.parametrize(("change", "message"), [
    (lambda r: r[1].update(weight=20), "sum to 110"),
    (lambda r: r.append({"destination": {"host": "web-app", "subset": "v3"}, "weight": 5}), "others hold 5"),
    (lambda r: r[0].update(weight=None), r"spec.http\[1\].route\[0\].weight must be a whole number in 0..100, got No"),
    (lambda r: r[0].update(weight="90"), r"route\[0\].weight must be a whole number"),
    (lambda r: r[1].update(weight=True), r"route\[1\].weight must be a whole number"),
])  # fmt: skip
def test_weights_canary_cannot_read_are_one_clear_error(seed: dict[str, Any], change: Any, message: str) -> None:
    change(seed["spec"]["http"][1]["route"])
    with pytest.raises(RouterError, match=message):
        read_weights(seed, WEB)


def test_a_destination_without_weight_counts_as_zero(seed: dict[str, Any]) -> None:
    route = seed["spec"]["http"][1]["route"]
    del route[1]["weight"]
    route[0]["weight"] = 100
    assert read_weights(seed, WEB) == Weights(100, 0)


@pytest.mark.parametrize("http", [None, [], "x"])
def test_no_http_routes_is_an_error(seed: dict[str, Any], http: object) -> None:
    seed["spec"]["http"] = http
    with pytest.raises(RouterError, match=r"spec\.http has no routes"):
        read_weights(seed, WEB)


def test_a_rollout_ending_is_written_without_its_evidence_where_that_would_not_fit(
    seed: dict[str, Any], state: RolloutState, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The judge's evidence grows with the pods serving: a rollback must still be written (nothing judges an
    ended rollout again), while an open rollout's state is never cut (a command carries it on)."""
    size = len(encode_state(state))
    monkeypatch.setattr("canary.routers.virtualservice.STATE_LIMIT", size - 1)
    with pytest.raises(RouterError, match=r"the rollout state is \d+ KiB, more than canary writes into an annotation"):
        with_route(seed, WEB, Weights(50, 50), state)
    ended = dataclasses.replace(state, phase=Phase.ROLLED_BACK, weights=Weights(100, 0))
    written = read_route(with_route(seed, WEB, Weights(100, 0), ended), WEB, "1", None)
    assert written.weights == Weights(100, 0) and written.state is not None
    assert written.state.phase is Phase.ROLLED_BACK and written.state.evidence is None
    assert written.state == dataclasses.replace(ended, evidence=None), "all but the evidence"


def test_a_damaged_state_annotation_is_reported_not_raised(seed: dict[str, Any]) -> None:
    seed["metadata"]["annotations"] = {ANNOTATION: "{not json"}
    read = read_route(seed, WEB, "1", None)
    assert read.state is None and read.weights == Weights(90, 10)
    assert read.state_error is not None and read.state_error.startswith(
        f"VirtualService default/web-app: annotation {ANNOTATION}: not valid JSON"
    )


@pytest.mark.parametrize("value", [{"rollout": "abc"}, 5, [1], True], ids=["mapping", "number", "list", "bool"])
def test_a_state_annotation_that_is_not_a_string_is_reported_not_taken_for_none(
    seed: dict[str, Any], value: object
) -> None:
    """Kubernetes annotations are strings: anything else was read as no rollout, and the next run overwrote it."""
    seed["metadata"]["annotations"] = {ANNOTATION: value}
    read = read_route(seed, WEB, "1", None)
    assert read.state is None and read.weights == Weights(90, 10)
    assert read.state_error is not None and read.state_error.startswith(
        f"VirtualService default/web-app: annotation {ANNOTATION}: must be a string of JSON, got "
    )


def test_annotations_that_are_not_a_mapping_are_refused_not_replaced(seed: dict[str, Any]) -> None:
    seed["metadata"]["annotations"] = ["team: web"]
    with pytest.raises(
        RouterError, match=r"^VirtualService default/web-app: metadata\.annotations must be a mapping, got a list$"
    ):
        read_route(seed, WEB, "1", None)


def test_a_manifest_number_of_thousands_of_digits_is_one_line_naming_its_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text(_SEED_VS.replace("weight: 90", "weight: 1" + "0" * 5000))  # was "internal error: ValueError"
    line = _SEED_VS[: _SEED_VS.index("weight: 90")].count("\n") + 1
    with pytest.raises(RouterError) as caught:
        ManifestRouter(path).read(WEB)
    assert str(caught.value) == f"{path}:{line}: a number of thousands of digits"


def test_a_version_with_two_destinations_in_the_route_is_named(seed: dict[str, Any]) -> None:
    """v1 40 + v1 50 + v2 10 used to read as "sum to 50, others hold 50", as if the second v1 were another."""
    route = seed["spec"]["http"][1]["route"]
    route[0]["weight"] = 40
    route.append({"destination": {"host": "web-app.default.svc.cluster.local", "subset": "v1"}, "weight": 50})
    with pytest.raises(RouterError, match=r"subset v1 has 2 destinations in spec\.http\[1\]; .* merge them$"):
        read_weights(seed, WEB)


def test_a_character_yaml_does_not_allow_is_named_with_its_line(tmp_path: Path) -> None:
    """The reader's error has a position, no mark: it used to reach the message as a second line."""
    path = tmp_path / "m.yaml"
    at = _SEED_VS.index("spec:")
    path.write_text(f"{_SEED_VS[:at]}\x00{_SEED_VS[at:]}")
    with pytest.raises(RouterError) as caught:
        ManifestRouter(path).read(WEB)
    line = _SEED_VS[:at].count("\n") + 1
    assert str(caught.value) == f"{path}:{line}: not valid YAML: #x0000 is not allowed there"


def test_the_nearest_namespaces_destination_rule_decides_as_in_istio() -> None:
    """Istio takes the host's rule from the route's namespace first, then the service's, then the root's,
    and does not merge them: v1 in one and v2 in the other is a rule without v2."""
    routing = dataclasses.replace(WEB, namespace="routing")
    near, far = load("web-app-destinationrule.yaml"), load("web-app-destinationrule.yaml")
    near["metadata"]["namespace"], near["spec"]["host"] = "routing", "web-app.default.svc.cluster.local"
    near["spec"]["subsets"] = near["spec"]["subsets"][:1]
    far["metadata"]["namespace"], far["spec"]["subsets"] = "default", far["spec"]["subsets"][1:]
    assert subsets_problem([far, near], routing) == (
        "DestinationRule routing/web-app for web-app.default.svc.cluster.local has no subset 'v2' (subsets: v1)"
    )
    own = load("web-app-destinationrule.yaml")
    own["metadata"]["namespace"] = "default"
    assert subsets_problem([own], routing) is None, "the service's own rule, with both"


def test_destination_rules_must_hold_both_subsets() -> None:
    rule = load("web-app-destinationrule.yaml")
    assert subsets_problem([rule], WEB) is None
    assert subsets_problem([load("reviews-destinationrule.yaml")], REVIEWS) is None
    assert subsets_problem([], WEB) == (
        "no DestinationRule for web-app.default.svc.cluster.local in namespace default or istio-system: "
        "Istio cannot route to its subsets"
    )
    rule["spec"]["subsets"] = rule["spec"]["subsets"][:1]
    assert subsets_problem([rule], WEB) == (
        "DestinationRule default/web-app for web-app.default.svc.cluster.local has no subset 'v2' (subsets: v1)"
    )


# ------------------------------------------------------------------------------------------ memory router


def test_the_memory_router_writes_only_at_the_revision_it_read(state: RolloutState) -> None:
    router = memory_router(WEB)
    first = router.read(WEB)
    router.write(WEB, first, Weights(90, 10), state)
    assert router.read(WEB).weights == Weights(90, 10) and router.read(WEB).state == state
    with pytest.raises(WeightConflict):
        router.write(WEB, first, Weights(50, 50), state)  # stale: someone wrote since
    assert router.history == [Weights(90, 10)]
    assert ANNOTATION in router.manifest(WEB)["metadata"]["annotations"]


def test_the_memory_router_holds_the_seeds_shape_and_its_destination_rule() -> None:
    vs, dr = seed_objects(WEB)
    assert vs["spec"]["http"][0]["match"] and route_index(vs, WEB) == 1
    assert MemoryRouter([vs], [dr]).subsets_problem(WEB) is None
    with pytest.raises(RouterError, match="VirtualService default/other not found"):
        MemoryRouter([vs]).read(Target("default", "other", "x", "v1", "v2"))


# ------------------------------------------------------------------------------------------ manifest router


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """The seed's DestinationRule and VirtualService in one multi-document file, as a GitOps repo holds them."""
    path = tmp_path / "web-app.yaml"
    path.write_text(
        (FIXTURES / "web-app-destinationrule.yaml").read_text()
        + "---\n"
        + (FIXTURES / "web-app-virtualservice.yaml").read_text()
    )
    return path


def test_the_manifest_router_writes_weights_and_state_together(manifest: Path, state: RolloutState) -> None:
    router = ManifestRouter(manifest)
    read = router.read(WEB)
    assert read.weights == Weights(90, 10) and read.state is None
    router.write(WEB, read, Weights(50, 50), state)
    docs = list(yaml.safe_load_all(manifest.read_text()))
    assert [d["kind"] for d in docs] == ["DestinationRule", "VirtualService"]
    assert docs[0] == load("web-app-destinationrule.yaml")
    again = ManifestRouter(manifest).read(WEB)
    assert again.weights == Weights(50, 50) and again.state == decode_state(
        docs[1]["metadata"]["annotations"][ANNOTATION]
    )
    assert sorted(p.name for p in manifest.parent.iterdir()) == [manifest.name], "no temporary file left"


def test_the_manifest_router_refuses_to_write_over_a_change_it_has_not_read(
    manifest: Path, state: RolloutState
) -> None:
    router = ManifestRouter(manifest)
    read = router.read(WEB)
    manifest.write_text(manifest.read_text().replace("weight: 90", "weight: 80").replace("weight: 10", "weight: 20"))
    with pytest.raises(WeightConflict):
        router.write(WEB, read, Weights(50, 50), state)
    assert router.read(WEB).weights == Weights(80, 20)


def test_a_write_keeps_the_files_mode_and_follows_a_symlink(manifest: Path, state: RolloutState) -> None:
    os.chmod(manifest, 0o664)
    link = manifest.with_name("link.yaml")
    link.symlink_to(manifest.name)
    router = ManifestRouter(link)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert link.is_symlink() and ManifestRouter(manifest).read(WEB).weights == Weights(50, 50)
    assert stat.S_IMODE(manifest.stat().st_mode) == 0o664


def test_a_read_only_manifest_is_refused_not_replaced(manifest: Path, state: RolloutState) -> None:
    os.chmod(manifest, 0o444)
    router = ManifestRouter(manifest)
    with pytest.raises(RouterError, match="the file is read-only; canary does not replace it"):
        router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert router.read(WEB).weights == Weights(90, 10)


def test_the_manifest_router_checks_destination_rules_when_the_file_has_them(manifest: Path, tmp_path: Path) -> None:
    assert ManifestRouter(manifest).subsets_problem(WEB) is None
    alone = tmp_path / "vs.yaml"
    alone.write_text((FIXTURES / "web-app-virtualservice.yaml").read_text())
    assert ManifestRouter(alone).subsets_problem(WEB) is None, "a GitOps repository may keep them elsewhere"


@pytest.mark.parametrize(("content", "message"), [
    (None, "no such file"),
    ("kind: [", ":1: not valid YAML"),
    ("kind: Service\nmetadata: {name: web-app}\n", "no VirtualService default/web-app in the file"),
    (b"\xff\xfe", "not a text file"),
])  # fmt: skip
def test_bad_manifests_are_router_errors(tmp_path: Path, content: str | bytes | None, message: str) -> None:
    path = tmp_path / "m.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(RouterError, match=message):
        ManifestRouter(path).read(WEB)


def test_a_virtualservice_without_a_namespace_is_the_one_of_the_namespace_it_is_applied_to(tmp_path: Path) -> None:
    """GitOps repositories leave the namespace to `kubectl apply -n`, kustomize or Argo CD's destination."""
    vs = yaml.safe_load((FIXTURES / "web-app-virtualservice.yaml").read_text())
    vs["metadata"].pop("namespace", None)
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump(vs))
    prod = dataclasses.replace(WEB, namespace="prod", host="web-app.prod.svc.cluster.local")
    assert ManifestRouter(path).read(prod).weights == Weights(90, 10)
    other = dataclasses.replace(WEB, virtual_service="api")
    with pytest.raises(RouterError, match="no VirtualService default/api in the file"):
        ManifestRouter(path).read(other)


def test_a_virtualservice_inside_a_list_is_named_where_it_is(tmp_path: Path) -> None:
    """`kubectl get vs -o json > m.json` writes a `kind: List`: canary says it found the object there."""
    vs = yaml.safe_load((FIXTURES / "web-app-virtualservice.yaml").read_text())
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": [vs], "metadata": {}}, indent=4))
    with pytest.raises(RouterError, match=r"m\.json: the VirtualService default/web-app is an item of the List in "
                                          "document 1: .* give it a document of its own"):  # fmt: skip
        ManifestRouter(path).read(WEB)


def test_a_write_rewrites_only_the_virtualservice_and_keeps_the_rest_of_the_file_as_written(
    tmp_path: Path, state: RolloutState
) -> None:
    """A GitOps commit of canary's change holds the weights and the state, nothing else: the file's header
    comments, the DestinationRule (its comments and quoting) and the comments before the VirtualService
    stay byte for byte."""
    path = tmp_path / "m.yaml"
    head = "# web-app routing, owned by the platform team\n---\n"
    rule = (FIXTURES / "web-app-destinationrule.yaml").read_text() + "# trafficPolicy comes later\n"
    vs = (FIXTURES / "web-app-virtualservice.yaml").read_text()
    path.write_text(f"{head}{rule}---\n{vs}")
    router = ManifestRouter(path)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    text = path.read_text()
    assert text.startswith(f"{head}{rule}---\n"), "everything before the VirtualService kept"
    comments = vs[: vs.index("apiVersion")]
    assert text[len(f"{head}{rule}---\n") :].startswith(comments)
    after = router.read(WEB)
    assert after.weights == Weights(50, 50) and after.state is not None and after.state.rollout == state.rollout
    assert yaml.safe_load_all(text) is not None and len(list(yaml.safe_load_all(text))) == 2


def test_a_manifest_holding_the_virtualservice_twice_is_refused_untouched(tmp_path: Path, state: RolloutState) -> None:
    """kubectl applies the last copy: moving the first would be undone on the cluster by the second."""
    path = tmp_path / "m.yaml"
    vs = (FIXTURES / "web-app-virtualservice.yaml").read_text()
    path.write_text(f"{vs}\n---\n{vs}")
    before = path.read_bytes()
    with pytest.raises(RouterError, match=r"m\.yaml: documents 1, 2 are all the VirtualService default/web-app: keep"):
        ManifestRouter(path).read(WEB)
    assert path.read_bytes() == before


def test_a_temporary_file_a_killed_write_left_is_removed_by_the_next_write(manifest: Path, state: RolloutState) -> None:
    stale = manifest.with_name(f".{manifest.name}.canary-abc123")
    stale.write_text("half a manifest")
    router = ManifestRouter(manifest)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert sorted(p.name for p in manifest.parent.iterdir()) == [manifest.name]


def test_yaml_aliases_in_a_manifest_are_refused_with_their_line(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text((FIXTURES / "web-app-virtualservice.yaml").read_text() + "x: &a [1]\ny: [*a, *a]\n")
    with pytest.raises(RouterError, match=r"m\.yaml:\d+: YAML aliases \(\*name\) are not supported in a manifest"):
        ManifestRouter(path).read(WEB)


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p.mkdir(), "is a directory, not a manifest file"),
    (lambda p: os.mkfifo(p), "is a FIFO, not a manifest file"),
    (lambda p: p.write_bytes(b"#" * (9 * 1024 * 1024)), "9.0 MiB, more than a manifest file may be (8.0 MiB)"),
])  # fmt: skip
def test_a_manifest_that_is_not_a_regular_file_of_sane_size_is_one_line(
    tmp_path: Path, make: Any, message: str
) -> None:
    path = tmp_path / "m.yaml"
    make(path)
    with pytest.raises(RouterError, match=re.escape(message)):
        ManifestRouter(path).read(WEB)
    with pytest.raises(RouterError, match="is a device, not a manifest file"):
        ManifestRouter("/dev/zero").read(WEB)


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may give a file to another owner")
def test_a_write_keeps_the_files_owner(manifest: Path, state: RolloutState) -> None:
    os.chown(manifest, 65534, 65534)
    router = ManifestRouter(manifest)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert (manifest.stat().st_uid, manifest.stat().st_gid) == (65534, 65534)


def _commented_vs() -> str:
    """The seed's VirtualService with comments inside it and a quoted host, as a team's repository holds it."""
    vs = (FIXTURES / "web-app-virtualservice.yaml").read_text()
    vs = vs.replace("metadata:\n", "metadata:  # owned by the web team\n")
    vs = vs.replace(
        "  - route:\n", "  # the split canary moves; the header route above sends testers to v2\n  - route:\n"
    )
    vs = vs.replace("      weight: 90\n", "      weight: 90  # baseline\n")
    return vs.replace("        host: web-app\n        subset: v1", '        host: "web-app"\n        subset: v1')


def test_a_write_edits_only_the_weights_and_the_state_line_inside_the_virtualservice(
    tmp_path: Path, state: RolloutState
) -> None:
    """A GitOps diff of canary's change: the two weights and one state line; every comment and quote inside
    the VirtualService stays, and so does the header-match route."""
    path = tmp_path / "m.yaml"
    before = _commented_vs()
    path.write_text(before)
    router = ManifestRouter(path)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    after = path.read_text()
    removed = [line for line in before.splitlines() if line not in after.splitlines()]
    added = [line for line in after.splitlines() if line not in before.splitlines()]
    assert removed == ["      weight: 90  # baseline", "      weight: 10"]
    assert added[:1] == ["  annotations:"] and added[1].startswith(f"    {ANNOTATION}: ")
    assert added[2:] == ["      weight: 50  # baseline", "      weight: 50"]
    read = router.read(WEB)
    assert read.weights == Weights(50, 50) and read.state is not None and read.state.rollout == state.rollout
    # The next write finds the annotation and rewrites that line only.
    router.write(WEB, router.read(WEB), Weights(0, 100), state)
    again = path.read_text()
    assert len(again.splitlines()) == len(after.splitlines())
    changed = [(a, b) for a, b in zip(after.splitlines(), again.splitlines(), strict=True) if a != b]
    assert [b for _, b in changed] == ["      weight: 0  # baseline", "      weight: 100"]
    assert "# the split canary moves" in again and '"web-app"' in again


@pytest.mark.parametrize(
    "shape",
    [
        pytest.param(lambda vs: vs.replace("      weight: 10\n", "      weight: !!int '10'\n"), id="tagged-weight"),
        pytest.param(
            lambda vs: vs.replace(
                "metadata:  # owned by the web team\n  name: web-app\n", "metadata: {name: web-app}\n"
            ),
            id="flow",
        ),
        pytest.param(
            lambda vs: vs.replace("  name: web-app\n", "  name: web-app\n  annotations: {}\n"),
            id="empty-flow-annotations",
        ),
        pytest.param(lambda vs: vs.replace("      weight: 10\n", ""), id="weight-missing"),
    ],
)
def test_a_virtualservice_the_text_edit_cannot_handle_is_written_whole_and_right(
    shape: Any, tmp_path: Path, state: RolloutState
) -> None:
    """Texts the value-by-value edit may or may not handle (a tag on a weight, flow-style metadata, a missing
    weight): in place or written whole, the file holds exactly the weights and state written, and the
    comments before the document."""
    path = tmp_path / "m.yaml"
    text = shape(_commented_vs())
    assert text != _commented_vs()
    path.write_text(text)
    router = ManifestRouter(path)
    read = router.read(WEB) if "weight: 10" in text or "'10'" in text else None
    if read is None:  # a missing weight reads as 0 beside 90: not a route canary moves
        with pytest.raises(RouterError, match="sum to 90"):
            router.read(WEB)
        return
    router.write(WEB, read, Weights(50, 50), state)
    after = router.read(WEB)
    assert after.weights == Weights(50, 50) and after.state is not None and after.state.rollout == state.rollout
    assert path.read_text().startswith(text[: text.index("apiVersion")])


@pytest.mark.parametrize(
    ("old", "new", "kept"),
    [
        ("      weight: 10\n", "      weight: &canary 10\n", "weight: &canary 50"),
        ("      weight: 10\n", "      weight: !!int '10'\n", "weight: !!int 50"),
        ("  name: web-app\n", "  name: web-app\n  annotations: &notes\n", "annotations: &notes"),
    ],
    ids=["anchor", "tag", "anchored-empty-annotations"],
)
def test_an_in_place_edit_keeps_a_values_anchor_and_tag(
    old: str, new: str, kept: str, tmp_path: Path, state: RolloutState
) -> None:
    """The edit replaces a value's text, not its properties: an unused anchor or a tag stays as written."""
    text = _commented_vs().replace(old, new, 1)
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert kept in out and "# baseline" in out, "edited in place"


def test_new_annotations_go_above_the_comment_about_the_first_key(tmp_path: Path, state: RolloutState) -> None:
    """A comment above metadata's first key is about that key: the annotations canary adds go above it."""
    text = _commented_vs().replace("  name: web-app\n", "  # the service's name\n  name: web-app\n", 1)
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert "  # the service's name\n  name: web-app\n" in out
    assert out.index("  annotations:\n") < out.index("# the service's name")


def test_an_in_place_edit_that_does_not_read_back_as_meant_is_not_written(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: RolloutState
) -> None:
    """The edit is a way of writing, not the truth: a text that loads as anything but the route meant is
    dropped for the document written whole."""
    import canary.routers.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "edit_values", lambda text, *_: text.replace("weight: 10", "weight: 11"))
    path = tmp_path / "m.yaml"
    path.write_text(_commented_vs())
    router = ManifestRouter(path)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert router.read(WEB).weights == Weights(50, 50)
    assert "# baseline" not in path.read_text(), "written whole"


def _write_50_50(path: Path, data: bytes, state: RolloutState) -> bytes:
    path.write_bytes(data)
    router = ManifestRouter(path)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert router.read(WEB).weights == Weights(50, 50)
    return path.read_bytes()


_SEED_VS = (FIXTURES / "web-app-virtualservice.yaml").read_text()
_VS = _SEED_VS[_SEED_VS.index("apiVersion") :]
_DR = (FIXTURES / "web-app-destinationrule.yaml").read_text()


@pytest.mark.parametrize("text", [_SEED_VS, f"{_DR}---\n{_VS}"], ids=["header-comment", "two-documents"])
def test_a_file_that_begins_with_a_byte_order_mark_keeps_it_and_every_document(
    text: str, tmp_path: Path, state: RolloutState
) -> None:
    """libyaml counts the mark into its positions and the pure-Python parser does not: a span one character
    short once ate the newline before `apiVersion` (into the header comment) or joined `---` to the next
    document."""
    out = _write_50_50(tmp_path / "m.yaml", f"\ufeff{text}".encode(), state).decode("utf-8")
    assert out.startswith("\ufeff") and "---apiVersion" not in out
    documents = list(yaml.safe_load_all(out.removeprefix("\ufeff")))
    assert all(d["apiVersion"] == "networking.istio.io/v1alpha3" for d in documents)


def test_a_file_with_crlf_line_endings_keeps_them_in_the_lines_canary_adds(tmp_path: Path, state: RolloutState) -> None:
    out = _write_50_50(tmp_path / "m.yaml", _commented_vs().replace("\n", "\r\n").encode(), state)
    assert b"\n" not in out.replace(b"\r\n", b"") and b"# baseline" in out


@pytest.mark.parametrize(
    "annotations",
    ["  annotations:\n", "  annotations: ~\n", "  annotations: {}\n", "  annotations: {team: web}\n"],
    ids=["empty", "null", "empty-flow", "flow"],
)
def test_an_empty_or_flow_annotations_mapping_is_filled_in_place(
    annotations: str, tmp_path: Path, state: RolloutState
) -> None:
    """A template's `annotations:` with nothing after it, `~`, `{}` or a flow mapping: the state goes into
    it, and the comments and quoting elsewhere in the document stay."""
    text = _commented_vs().replace("  name: web-app\n", f"  name: web-app  # owned by web\n{annotations}")
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert "# owned by web" in out and "# baseline" in out and 'exact: "true"' in out
    assert ("team: web" in out) == ("team" in annotations)


def test_a_state_annotation_written_as_a_block_scalar_keeps_the_lines_after_it(
    tmp_path: Path, state: RolloutState
) -> None:
    """A block scalar's span takes in the line breaks after it: the edit keeps them, so the comment below is
    not glued onto the new value's line."""
    old = encode_state(dataclasses.replace(state, tick=state.tick + 1))
    block = f"  annotations:\n    {ANNOTATION}: |\n      {old}\n\n# about spec\n"
    text = _commented_vs().replace("  name: web-app\n", f"  name: web-app\n{block}")
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert "\n\n# about spec\n" in out and "# baseline" in out


def test_the_whole_document_fallback_keeps_the_comments_after_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: RolloutState
) -> None:
    """Where the document is written whole, its span ends at its last value: a comment between it and the next
    `---` stays (a block mapping's end is marked only at the next token)."""
    import canary.routers.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "edit_values", lambda *_: None)
    text = f"{_VS}\n# the rule below\n---\n{_DR}"
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert "\n# the rule below\n---\n" in out and out.endswith(_DR)


def test_writing_the_same_weights_and_state_again_leaves_the_file_as_it_is(tmp_path: Path, state: RolloutState) -> None:
    path = tmp_path / "m.yaml"
    first = _write_50_50(path, _commented_vs().replace("\n", "\r\n").encode(), state)
    router = ManifestRouter(path)
    router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert path.read_bytes() == first


def test_a_whole_document_write_that_would_not_load_as_meant_writes_nothing(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, state: RolloutState
) -> None:
    import canary.routers.manifest as manifest_module

    monkeypatch.setattr(manifest_module, "edit_values", lambda *_: None)
    monkeypatch.setattr(manifest_module.yaml, "dump", lambda *_, **__: "kind: Something\n")
    path = tmp_path / "m.yaml"
    path.write_text(_SEED_VS)
    router = ManifestRouter(path)
    with pytest.raises(RouterError, match=r"m\.yaml: canary cannot write the VirtualService .*nothing was written"):
        router.write(WEB, router.read(WEB), Weights(50, 50), state)
    assert path.read_text() == _SEED_VS


def test_a_four_space_manifest_gets_the_annotation_at_its_own_indentation(tmp_path: Path, state: RolloutState) -> None:
    vs = yaml.safe_load(_SEED_VS)
    text = "# indented by four\n" + yaml.safe_dump(vs, indent=4, sort_keys=False)
    assert "\n    name: web-app\n" in text
    out = _write_50_50(tmp_path / "m.yaml", text.encode(), state).decode()
    assert "\n    annotations:\n        canary.dev/rollout-state: " in out and out.startswith("# indented by four\n")
