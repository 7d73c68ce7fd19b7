"""The Istio router on the real kubernetes client, over HTTP, against the local API server holding the seed's
VirtualService verbatim: which API version it speaks, what one read and one write carry, and every way the API
server can refuse or fail, each one line naming the VirtualService."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer, fixture_objects, fixtures_with, named
from kubernetes.client.exceptions import ConflictException
from prometheus_server import free_port

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.errors import RouterError, WeightConflict
from canary.model import Weights
from canary.policy import Policy, Target
from canary.routers.istio import IstioRouter, RouterServerError, api_client
from canary.scenario import builtin_scenario
from canary.state import ANNOTATION, RolloutState, decode_state

API = "/apis/networking.istio.io"
VS = "namespaces/default/virtualservices/web-app"
DRS = "namespaces/default/destinationrules"


def paths(api: KubeApiServer) -> list[tuple[str, str]]:
    return [(method, path.split("?", 1)[0]) for method, path, _ in api.requests]


def split_weights(api: KubeApiServer) -> list[int]:
    """The weights of the seed's split: its second http route (the first is the header-match route to v2)."""
    return [d["weight"] for d in api.get("default", "web-app")["spec"]["http"][1]["route"]]


def move_split(baseline: int, canary: int) -> Any:
    def change(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][1]["route"][0]["weight"] = baseline
        vs["spec"]["http"][1]["route"][1]["weight"] = canary

    return change


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


@pytest.fixture
def state(web_policy: Policy) -> RolloutState:
    """A real rollout state: the one a simulated rollout writes when it starts."""
    sim = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit())
    sim.runner.open()
    made = sim.router.read(web_policy.target).state
    assert made is not None
    return made


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[Any]:
    """Start a server holding the given objects (or versions); yields a function returning (server, router)."""
    started: list[tuple[KubeApiServer, IstioRouter]] = []

    def start(objects: list[dict[str, Any]] | None = None, **kwargs: Any) -> tuple[KubeApiServer, IstioRouter]:
        server = KubeApiServer(objects if objects is not None else fixture_objects(), **kwargs).start()
        path = server.kubeconfig(tmp_path / f"kubeconfig-{len(started)}")
        made = IstioRouter.from_kubeconfig(str(path))
        started.append((server, made))
        return server, made

    yield start
    for server, made in started:
        made.close()
        server.stop()


# ------------------------------------------------------------------------------------- reading


def test_reads_the_seeds_split_past_its_header_match_route_at_v1(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    """The seed's VirtualService verbatim (short hosts, header-match route first, unnamed 90/10 split), asked at
    networking.istio.io/v1, which the server serves: the split's weights, no state yet, the resourceVersion."""
    read = router.read(web_policy.target)
    assert read.weights == Weights(90, 10)
    assert (read.state, read.state_error) == (None, None)
    assert read.revision == kube_api.get("default", "web-app")["metadata"]["resourceVersion"]
    assert paths(kube_api) == [("GET", f"{API}/v1"), ("GET", f"{API}/v1/{VS}")]


def test_v1beta1_is_used_when_the_server_serves_no_v1(own_server: Any, web_policy: Policy) -> None:
    """An Istio older than 1.22 serves v1alpha3 and v1beta1 only: the router asks for v1, then speaks v1beta1."""
    server, router = own_server(served=("v1alpha3", "v1beta1"))
    assert router.read(web_policy.target).weights == Weights(90, 10)
    assert router.subsets_problem(web_policy.target) is None
    assert paths(server) == [
        ("GET", f"{API}/v1"),
        ("GET", f"{API}/v1beta1"),
        ("GET", f"{API}/v1beta1/{VS}"),
        ("GET", f"{API}/v1beta1/{DRS}"),
    ]


def test_a_version_given_is_used_without_asking(kubeconfig: Path, kube_api: KubeApiServer, web_policy: Policy) -> None:
    router = IstioRouter(api_client(str(kubeconfig)), version="v1beta1")
    try:
        assert router.read(web_policy.target).weights == Weights(90, 10)
    finally:
        router.close()
    assert paths(kube_api) == [("GET", f"{API}/v1beta1/{VS}")]


def test_a_server_without_istios_v1_or_v1beta1_is_a_router_error(own_server: Any, web_policy: Policy) -> None:
    _, router = own_server(served=("v1alpha3",))
    with pytest.raises(RouterError) as caught:
        router.read(web_policy.target)
    assert one_line(caught.value) == (
        "VirtualService default/web-app: the API server serves no networking.istio.io (v1 or v1beta1): "
        "is Istio installed?"
    )


def test_a_damaged_state_annotation_is_reported_not_raised(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    """A person's rollback must still work on a route whose annotation was hand-edited: the read says why."""
    kube_api.edit(
        "default", "web-app", lambda vs: vs["metadata"].setdefault("annotations", {}).update({ANNOTATION: "{x"})
    )
    read = router.read(web_policy.target)
    assert read.state is None and read.weights == Weights(90, 10)
    assert read.state_error is not None
    assert read.state_error.startswith(f"VirtualService default/web-app: annotation {ANNOTATION}: not valid JSON")


def test_two_match_less_routes_splitting_both_subsets_are_refused_with_the_candidates(
    own_server: Any, web_policy: Policy
) -> None:
    """Without `route` in the policy, canary moves the one plain split; with two it will not guess."""

    def second_split(objects: list[dict[str, Any]]) -> None:
        http = named(objects, "VirtualService", "web-app")["spec"]["http"]
        http.append({**copy.deepcopy(http[1]), "name": "legacy"})

    _, router = own_server(fixtures_with(second_split))
    with pytest.raises(RouterError) as caught:
        router.read(web_policy.target)
    assert one_line(caught.value) == (
        "VirtualService default/web-app: 2 http routes split 'v1' and 'v2' (spec.http[1], spec.http[2] ('legacy')); "
        "name the one to shift in spec.target.route"
    )


# ------------------------------------------------------------------------------------- writing


def test_a_write_puts_weights_and_state_back_in_one_put_at_the_revision_read(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, state: RolloutState
) -> None:
    before = kube_api.get("default", "web-app")
    read = router.read(web_policy.target)
    moved = dataclasses.replace(state, weights=Weights(50, 50))
    router.write(web_policy.target, read, Weights(50, 50), moved)
    after = kube_api.get("default", "web-app")
    assert [m for m, _ in paths(kube_api)] == ["GET", "GET", "PUT"]  # discovery, the read, one write
    assert paths(kube_api)[-1] == ("PUT", f"{API}/v1/{VS}")
    assert split_weights(kube_api) == [50, 50]
    assert decode_state(after["metadata"]["annotations"][ANNOTATION]).weights == Weights(50, 50)
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["spec"]["hosts"] == before["spec"]["hosts"]
    assert json.dumps(after["spec"]["http"][0]) == json.dumps(before["spec"]["http"][0])  # header-match route
    again = router.read(web_policy.target, type(state.evidence))
    assert again.weights == Weights(50, 50) and again.state == moved


def test_a_write_on_a_stale_read_is_the_servers_409_and_the_other_writers_change_stays(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, state: RolloutState
) -> None:
    read = router.read(web_policy.target)
    kube_api.edit("default", "web-app", move_split(70, 30))  # someone else, after canary's read
    with pytest.raises(WeightConflict) as caught:
        router.write(web_policy.target, read, Weights(90, 10), state)
    assert (
        one_line(caught.value)
        == "VirtualService default/web-app: changed by someone else between canary's read and write"
    )
    assert isinstance(caught.value.__cause__, ConflictException)  # the API server's 409, not a check of our own
    assert caught.value.temporary
    assert split_weights(kube_api) == [70, 30]
    assert ANNOTATION not in (kube_api.get("default", "web-app")["metadata"].get("annotations") or {})


def test_a_rejected_write_is_a_router_error_with_the_servers_message(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, state: RolloutState
) -> None:
    message = 'VirtualService.networking.istio.io "web-app" is invalid: admission webhook denied the request'
    read = router.read(web_policy.target)
    kube_api.fail_next(422, message, method="PUT")
    with pytest.raises(RouterError) as caught:
        router.write(web_policy.target, read, Weights(50, 50), state)
    assert one_line(caught.value) == f"VirtualService default/web-app: the API server rejected the change: {message}"
    assert type(caught.value) is RouterError and not caught.value.temporary
    assert split_weights(kube_api) == [90, 10]


def test_a_write_answered_with_a_server_error_after_it_was_made_is_temporary(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, state: RolloutState
) -> None:
    """The router cannot know the write was made; it says the server failed. The runner reads back (see
    test_istio_rollout) to learn the truth."""
    read = router.read(web_policy.target)
    kube_api.fail_after_commit(504, "gateway timeout")
    with pytest.raises(RouterServerError) as caught:
        router.write(web_policy.target, read, Weights(50, 50), state)
    assert caught.value.temporary
    assert split_weights(kube_api) == [50, 50]


def test_a_write_answered_200_with_a_body_that_is_not_json_is_a_temporary_router_error(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, state: RolloutState
) -> None:
    """A proxy resetting the answer: the write was made, the answer is garbage; the router must say so as a
    RouterServerError ("whether the write was made is read back"), not leak a decoding error."""
    read = router.read(web_policy.target)
    kube_api.garble_next()
    with pytest.raises(RouterServerError) as caught:
        router.write(web_policy.target, read, Weights(50, 50), state)
    assert "whether the write was made is read back" in one_line(caught.value)
    assert split_weights(kube_api) == [50, 50]


def test_a_read_answered_200_with_a_body_that_is_not_json_says_which_call_and_no_write(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    """An HTML page where discovery's JSON should be, then where the VirtualService should be: each error
    names the call it answered, and no read is said to have been a write."""
    kube_api.garble_next(method="GET")
    with pytest.raises(RouterServerError) as caught:
        router.read(web_policy.target)
    assert one_line(caught.value).startswith(
        "VirtualService default/web-app: the API server's answer when asked to discover the Istio API of it is "
        "not valid JSON ("
    )
    assert "write" not in one_line(caught.value)
    assert router.read(web_policy.target).weights == Weights(90, 10)  # the API found, then
    kube_api.garble_next(method="GET")
    with pytest.raises(RouterServerError) as caught:
        router.read(web_policy.target)
    message = one_line(caught.value)
    assert "when asked to read it is not valid JSON (" in message and "write" not in message


# ------------------------------------------------------------------------------------- the preflight


def test_the_seeds_destination_rule_defines_both_subsets(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    assert router.subsets_problem(web_policy.target) is None
    assert paths(kube_api)[-1] == ("GET", f"{API}/v1/{DRS}")


def test_a_destination_rule_without_the_canary_subset_is_named(own_server: Any, web_policy: Policy) -> None:
    def drop_v2(objects: list[dict[str, Any]]) -> None:
        rule = named(objects, "DestinationRule", "web-app")
        rule["spec"]["subsets"] = [s for s in rule["spec"]["subsets"] if s["name"] != "v2"]

    _, router = own_server(fixtures_with(drop_v2))
    assert router.subsets_problem(web_policy.target) == (
        "DestinationRule default/web-app for web-app.default.svc.cluster.local has no subset 'v2' (subsets: v1)"
    )


def test_no_destination_rule_for_the_host_is_named(own_server: Any, web_policy: Policy) -> None:
    def drop_rule(objects: list[dict[str, Any]]) -> None:
        objects.remove(named(objects, "DestinationRule", "web-app"))

    server, router = own_server(fixtures_with(drop_rule))
    assert router.subsets_problem(web_policy.target) == (
        "no DestinationRule for web-app.default.svc.cluster.local in namespace default or istio-system: "
        "Istio cannot route to its subsets"
    )
    assert paths(server)[-2:] == [
        ("GET", f"{API}/v1/{DRS}"),
        ("GET", f"{API}/v1/namespaces/istio-system/destinationrules"),
    ]


def in_namespace(kind: str, namespace: str) -> Any:
    """A fixtures_with change: the seed's object of that kind moved, as it is, to another namespace."""

    def move(objects: list[dict[str, Any]]) -> None:
        named(objects, kind, "web-app")["metadata"]["namespace"] = namespace

    return move


@pytest.mark.parametrize("namespace", ["default", "istio-system"], ids=["the service's", "Istio's root"])
def test_a_destination_rule_where_istio_looks_beyond_the_routes_namespace_is_found(
    own_server: Any, web_policy: Policy, namespace: str
) -> None:
    """The VirtualService in namespace `routing` naming the service by its full name; the seed's DestinationRule
    in the service's namespace (its short host read there) or in Istio's root namespace (there by its full name:
    a short one would name a service of istio-system): Istio applies both, so the preflight passes."""

    def move(objects: list[dict[str, Any]]) -> None:
        in_namespace("VirtualService", "routing")(objects)
        for route in named(objects, "VirtualService", "web-app")["spec"]["http"]:
            for destination in route["route"]:
                destination["destination"]["host"] = "web-app.default.svc.cluster.local"
        in_namespace("DestinationRule", namespace)(objects)
        if namespace == "istio-system":
            named(objects, "DestinationRule", "web-app")["spec"]["host"] = "web-app.default.svc.cluster.local"

    server, router = own_server(fixtures_with(move))
    target = dataclasses.replace(web_policy.target, namespace="routing")
    assert router.read(target).weights == Weights(90, 10)
    assert router.subsets_problem(target) is None
    searched = [p for m, p in paths(server) if p.endswith("/destinationrules")]
    assert searched[-1] == f"{API}/v1/namespaces/{namespace}/destinationrules"


@pytest.mark.parametrize("namespace", ["staging", "istio-system"], ids=["elsewhere", "root, short host"])
def test_a_destination_rule_that_is_not_for_the_host_where_it_lives_does_not_count(
    own_server: Any, web_policy: Policy, namespace: str
) -> None:
    _, router = own_server(fixtures_with(in_namespace("DestinationRule", namespace)))
    assert router.subsets_problem(web_policy.target) == (
        "no DestinationRule for web-app.default.svc.cluster.local in namespace default or istio-system: "
        "Istio cannot route to its subsets"
    )


# ------------------------------------------------------------------------------------- refusals and failures


def test_a_missing_virtual_service_is_not_found(router: IstioRouter, web_policy: Policy) -> None:
    target = dataclasses.replace(web_policy.target, virtual_service="nope")
    with pytest.raises(RouterError) as caught:
        router.read(target)
    assert one_line(caught.value).startswith("VirtualService default/nope not found")
    assert not caught.value.temporary


def test_a_server_error_is_temporary(router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy) -> None:
    router.version(web_policy.target)  # discovery done: the next request is the read
    kube_api.fail_next(503, "etcdserver: leader changed")
    with pytest.raises(RouterServerError) as caught:
        router.read(web_policy.target)
    assert one_line(caught.value) == (
        "VirtualService default/web-app: the API server failed (503: etcdserver: leader changed), try again"
    )
    assert caught.value.temporary
    assert router.read(web_policy.target).weights == Weights(90, 10)  # the next tick reads again


def test_throttling_is_temporary(router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy) -> None:
    router.version(web_policy.target)
    kube_api.fail_next(429, "too many requests, please try again later")
    with pytest.raises(RouterServerError, match="throttling requests") as caught:
        router.read(web_policy.target)
    assert caught.value.temporary


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_are_a_permanent_router_error(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, code: int
) -> None:
    kube_api.fail_next(code, "Unauthorized")
    with pytest.raises(RouterError, match=f"refused our credentials \\({code}: Unauthorized\\)$") as caught:
        router.read(web_policy.target)
    assert not caught.value.temporary


def test_an_unreachable_server_is_a_temporary_router_error(tmp_path: Path, web_policy: Policy) -> None:
    closed = KubeApiServer([])  # its port is written to the kubeconfig, then the socket closes unused
    path = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()
    router = IstioRouter.from_kubeconfig(str(path))
    try:
        with pytest.raises(RouterError) as caught:
            router.read(web_policy.target)
    finally:
        router.close()
    message = one_line(caught.value)
    assert message.startswith("VirtualService default/web-app: the API server is unreachable: ")
    assert "Connection refused" in message
    assert caught.value.temporary  # a restarting API server holds a rollout rather than ending it


# ------------------------------------------------------------------------------------- configuration


def test_the_kubeconfig_context_is_chosen_by_name(kube_api: KubeApiServer, tmp_path: Path, web_policy: Policy) -> None:
    path = kube_api.kubeconfig(tmp_path / "kubeconfig", context="staging")
    router = IstioRouter.from_kubeconfig(str(path), context="staging")
    try:
        assert router.read(web_policy.target).weights == Weights(90, 10)
    finally:
        router.close()
    with pytest.raises(RouterError, match=f"^kubeconfig {path}: cannot configure a Kubernetes client: .*prod"):
        api_client(str(path), "prod")


def test_a_missing_kubeconfig_is_a_router_error(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with pytest.raises(RouterError, match=f"^kubeconfig {missing}: no such file$"):
        api_client(str(missing))


def test_a_kubeconfig_token_block_with_its_newline_works_and_is_never_shown(
    tmp_path: Path, kube_api: KubeApiServer
) -> None:
    """`token: |` leaves a trailing newline: trimmed, so the header is valid; an inner newline is refused by
    name; neither the token nor any part of it appears in a message."""
    secret = "s3cr3t-TOKEN-4f9a"
    config = tmp_path / "kubeconfig"
    kube_api.kubeconfig(config)
    text = config.read_text().replace("user: {}", f"user:\n    token: |\n      {secret}")
    config.write_text(text)
    router = IstioRouter.from_kubeconfig(str(config))
    try:
        assert router.read(Target("default", "web-app", "web-app.default.svc.cluster.local", "v1", "v2")).weights
    finally:
        router.close()
    config.write_text(text.replace(secret, f"{secret}\n      more"))
    with pytest.raises(RouterError) as caught:
        api_client(str(config))
    assert "holds a line break" in str(caught.value) and secret not in str(caught.value)


def test_an_exec_credential_plugin_that_never_answers_is_cut_off(
    tmp_path: Path, kube_api: KubeApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An SSO `exec` plugin waiting for a login ran outside every deadline and hung each command; it is cut
    off like a request, in one line (the request deadline, shortened here)."""
    monkeypatch.setattr("canary.routers.istio.REQUEST_TIMEOUT_S", 0.5)
    config = tmp_path / "kubeconfig"
    kube_api.kubeconfig(config)
    plugin = "user:\n    exec: {apiVersion: client.authentication.k8s.io/v1beta1, command: sleep, args: ['3']}"
    config.write_text(config.read_text().replace("user: {}", plugin))
    with pytest.raises(RouterError, match=f"^kubeconfig {config}: no credentials within 0.5 s"):
        api_client(str(config))


def test_without_kubeconfig_outside_a_cluster_the_error_says_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RouterError, match=r"^no Kubernetes configuration: give a kubeconfig file"):
        api_client()


def test_in_cluster_config_without_a_service_account_is_a_router_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(free_port()))
    with pytest.raises(RouterError, match=r"^in-cluster config: cannot configure a Kubernetes client"):
        api_client()


def test_in_cluster_config_has_no_contexts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    with pytest.raises(RouterError, match=r"^--context needs a kubeconfig; in-cluster config has no contexts$"):
        api_client(None, "prod")
