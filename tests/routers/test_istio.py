"""The Istio router on the real kubernetes client, over HTTP, against the local API server."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer
from kubernetes.client.exceptions import ConflictException
from prometheus_server import free_port

from canary.app import simulated_rollout
from canary.audit import MemoryAudit
from canary.errors import RouterError, WeightConflict
from canary.model import Phase, Weights
from canary.policy import Policy
from canary.routers.istio import IstioRouter, RouterServerError, api_client
from canary.scenario import builtin_scenario

VS_PATH = "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/web-app"


def stored_weights(api: KubeApiServer) -> list[int]:
    return [d["weight"] for d in api.get("default", "web-app")["spec"]["http"][0]["route"]]


def set_stored(api: KubeApiServer, baseline: int, canary: int) -> None:
    def change(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][0]["route"][0]["weight"] = baseline
        vs["spec"]["http"][0]["route"][1]["weight"] = canary

    api.edit("default", "web-app", change)


def test_reads_the_weights_of_the_real_manifest(router: IstioRouter, web_policy: Policy) -> None:
    assert router.get_weights(web_policy.target) == Weights(100, 0)


def test_set_weights_puts_the_object_back_with_the_resource_version_it_read(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    before = kube_api.get("default", "web-app")
    router.set_weights(web_policy.target, Weights(90, 10), expected=Weights(100, 0))
    after = kube_api.get("default", "web-app")
    assert stored_weights(kube_api) == [90, 10]
    assert int(after["metadata"]["resourceVersion"]) > int(before["metadata"]["resourceVersion"])
    assert after["spec"]["hosts"] == before["spec"]["hosts"]  # the rest of the manifest is untouched
    assert [(m, p) for m, p, _ in kube_api.requests] == [("GET", VS_PATH), ("PUT", VS_PATH)]
    assert router.get_weights(web_policy.target) == Weights(90, 10)


def test_the_v1_api_version_reaches_the_same_object(
    kubeconfig: Path, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    router = IstioRouter(api_client(str(kubeconfig)), version="v1")
    try:
        router.set_weights(web_policy.target, Weights(75, 25))
    finally:
        router.close()
    assert stored_weights(kube_api) == [75, 25]
    assert kube_api.requests[-1][1] == VS_PATH.replace("v1beta1", "v1")


def test_a_write_between_read_and_put_is_a_conflict_and_the_other_writers_weights_stay(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    kube_api.after_next_get(lambda: set_stored(kube_api, 50, 50))
    with pytest.raises(WeightConflict, match=r"^VirtualService default/web-app: changed by someone else") as caught:
        router.set_weights(web_policy.target, Weights(90, 10), expected=Weights(100, 0))
    assert isinstance(caught.value.__cause__, ConflictException)  # the API server's 409, not our own check
    assert caught.value.temporary
    assert stored_weights(kube_api) == [50, 50]


def test_weights_changed_before_the_read_are_refused_without_a_write(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    set_stored(kube_api, 50, 50)
    with pytest.raises(WeightConflict, match="expected"):
        router.set_weights(web_policy.target, Weights(90, 10), expected=Weights(100, 0))
    assert [m for m, _, _ in kube_api.requests] == ["GET"]
    assert stored_weights(kube_api) == [50, 50]


def one_line(exc: BaseException) -> str:
    message = str(exc)
    assert "\n" not in message
    return message


def test_a_missing_virtual_service_is_not_found(router: IstioRouter, web_policy: Policy) -> None:
    target = dataclasses.replace(web_policy.target, virtual_service="nope")
    with pytest.raises(RouterError) as caught:
        router.get_weights(target)
    assert one_line(caught.value).startswith("VirtualService default/nope not found")
    assert not caught.value.temporary


def test_a_rejected_write_is_a_router_error_with_the_servers_message(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    message = 'VirtualService.networking.istio.io "web-app" is invalid: spec.http[0].route: weights must sum to 100'
    kube_api.fail_next(422, message, method="PUT")
    with pytest.raises(RouterError) as caught:
        router.set_weights(web_policy.target, Weights(90, 10))
    assert one_line(caught.value) == f"VirtualService default/web-app: the API server rejected the change: {message}"
    assert type(caught.value) is RouterError and not caught.value.temporary
    assert stored_weights(kube_api) == [100, 0]


def test_a_server_error_is_temporary(router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy) -> None:
    kube_api.fail_next(503, "etcdserver: leader changed")
    with pytest.raises(RouterServerError) as caught:
        router.get_weights(web_policy.target)
    assert one_line(caught.value) == (
        "VirtualService default/web-app: the API server failed (503: etcdserver: leader changed), try again"
    )
    assert caught.value.temporary
    assert router.get_weights(web_policy.target) == Weights(100, 0)  # the next tick reads again


@pytest.mark.parametrize("code", [401, 403])
def test_refused_credentials_are_a_router_error(
    router: IstioRouter, kube_api: KubeApiServer, web_policy: Policy, code: int
) -> None:
    kube_api.fail_next(code, "Unauthorized")
    with pytest.raises(RouterError, match=f"refused our credentials \\({code}: Unauthorized\\)$") as caught:
        router.get_weights(web_policy.target)
    assert not caught.value.temporary


def test_an_unreachable_server_is_a_router_error(tmp_path: Path, web_policy: Policy) -> None:
    closed = KubeApiServer([])  # its port is written to the kubeconfig, then the socket closes unused
    path = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()
    router = IstioRouter.from_kubeconfig(str(path))
    try:
        with pytest.raises(RouterError) as caught:
            router.set_weights(web_policy.target, Weights(90, 10))
    finally:
        router.close()
    message = one_line(caught.value)
    assert message.startswith("VirtualService default/web-app: the API server is unreachable: ")
    assert "Connection refused" in message
    assert caught.value.temporary  # a restarting API server holds a rollout rather than ending it


def test_a_simulated_rollout_promotes_and_leaves_all_traffic_on_the_canary(
    kubeconfig: Path, kube_api: KubeApiServer, web_policy: Policy
) -> None:
    router = IstioRouter.from_kubeconfig(str(kubeconfig))
    try:
        rollout = simulated_rollout(
            web_policy, builtin_scenario("healthy"), seed=1, audit=MemoryAudit(), router=router
        )  # fmt: skip
        result = rollout.controller.run()
    finally:
        router.close()
    assert result.phase is Phase.PROMOTED
    assert stored_weights(kube_api) == [0, 100]
    assert sum(m == "PUT" for m, _, _ in kube_api.requests) >= len(web_policy.steps)


# ------------------------------------------------------------------------------------- configuration


def test_the_kubeconfig_context_is_chosen_by_name(kube_api: KubeApiServer, tmp_path: Path, web_policy: Policy) -> None:
    path = kube_api.kubeconfig(tmp_path / "kubeconfig", context="staging")
    router = IstioRouter.from_kubeconfig(str(path), context="staging")
    try:
        assert router.get_weights(web_policy.target) == Weights(100, 0)
    finally:
        router.close()
    with pytest.raises(RouterError, match=f"^kubeconfig {path}: cannot configure a Kubernetes client: .*prod"):
        api_client(str(path), "prod")


def test_a_missing_kubeconfig_is_a_router_error(tmp_path: Path) -> None:
    missing = tmp_path / "none"
    with pytest.raises(RouterError, match=f"^kubeconfig {missing}: cannot configure a Kubernetes client"):
        api_client(str(missing))


def test_without_kubeconfig_outside_a_cluster_the_error_says_what_to_give(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(RouterError, match=r"^no Kubernetes configuration: give a kubeconfig file"):
        api_client()


def test_in_cluster_config_without_a_service_account_is_a_router_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(free_port()))
    with pytest.raises(RouterError, match=r"^in-cluster config: cannot configure a Kubernetes client"):
        api_client()
