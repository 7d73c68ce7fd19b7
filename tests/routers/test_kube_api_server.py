"""The local API server keeps Kubernetes semantics, checked with the real client: if it drifts, the router tests lie."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer
from kubernetes import client, config
from kubernetes.client.exceptions import (
    ApiException,
    ConflictException,
    NotFoundException,
    UnprocessableEntityException,
)

ARGS = ("networking.istio.io", "v1beta1", "default", "virtualservices")


@pytest.fixture
def objects(kubeconfig: Path) -> Iterator[client.CustomObjectsApi]:
    api = config.new_client_from_config(config_file=str(kubeconfig), persist_config=False)
    yield client.CustomObjectsApi(api)
    api.close()


def weights(vs: Any) -> list[int | None]:
    """The seed's weighted split is its second http route (the first is the header-match route)."""
    return [d.get("weight") for d in vs["spec"]["http"][1]["route"]]


def status(exc: ApiException) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(exc.body or "")
    return body


def test_merge_patch_merges_objects_and_null_removes(objects: client.CustomObjectsApi, kube_api: KubeApiServer) -> None:
    version = kube_api.get("default", "web-app")["metadata"]["resourceVersion"]
    patched = objects.patch_namespaced_custom_object(
        *ARGS, "web-app", {"metadata": {"labels": {"team": "web"}}, "spec": {"hosts": None}}
    )
    assert patched["metadata"]["labels"] == {"team": "web"}
    assert "hosts" not in patched["spec"] and weights(patched) == [90, 10]  # lists and siblings untouched
    assert patched["metadata"]["resourceVersion"] != version
    assert kube_api.requests[-1][2] == "application/merge-patch+json"


def test_json_patch_applies_in_order_and_a_failed_test_changes_nothing(
    objects: client.CustomObjectsApi, kube_api: KubeApiServer
) -> None:
    route = "/spec/http/1/route"
    ok = [
        {"op": "test", "path": f"{route}/0/weight", "value": 90},
        {"op": "replace", "path": f"{route}/0/weight", "value": 80},
        {"op": "replace", "path": f"{route}/1/weight", "value": 20},
        {"op": "add", "path": "/metadata/labels", "value": {"canary": "yes"}},
        {"op": "remove", "path": "/metadata/labels/canary"},
    ]
    patched = objects.patch_namespaced_custom_object(*ARGS, "web-app", ok, _content_type="application/json-patch+json")
    assert weights(patched) == [80, 20] and patched["metadata"]["labels"] == {}
    before = kube_api.get("default", "web-app")
    stale = [
        {"op": "replace", "path": f"{route}/1/weight", "value": 0},
        {"op": "test", "path": f"{route}/0/weight", "value": 90},
    ]
    with pytest.raises(UnprocessableEntityException) as caught:
        objects.patch_namespaced_custom_object(*ARGS, "web-app", stale, _content_type="application/json-patch+json")
    assert status(caught.value)["reason"] == "Invalid" and "test failed" in status(caught.value)["message"]
    assert kube_api.get("default", "web-app") == before


def test_strategic_merge_patch_is_unsupported_for_custom_resources(objects: client.CustomObjectsApi) -> None:
    with pytest.raises(ApiException) as caught:
        objects.patch_namespaced_custom_object(
            *ARGS, "web-app", {"spec": {}}, _content_type="application/strategic-merge-patch+json"
        )
    assert caught.value.status == 415 and status(caught.value)["reason"] == "UnsupportedMediaType"


def test_a_stale_resource_version_is_a_409_status(objects: client.CustomObjectsApi, kube_api: KubeApiServer) -> None:
    vs = objects.get_namespaced_custom_object(*ARGS, "web-app")
    vs["spec"]["http"][1]["route"][1]["weight"] = 20
    objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)
    with pytest.raises(ConflictException) as caught:
        objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)  # the same, now stale, version
    assert status(caught.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'Operation cannot be fulfilled on virtualservices.networking.istio.io "web-app": the object has '
        "been modified; please apply your changes to the latest version and try again",
        "reason": "Conflict",
        "code": 409,
        "details": {"name": "web-app", "group": "networking.istio.io", "kind": "virtualservices"},
    }


def test_a_put_without_resource_version_is_refused_and_a_no_op_keeps_the_version(
    objects: client.CustomObjectsApi, kube_api: KubeApiServer
) -> None:
    """Custom resources allow no unconditional update, as on a real API server."""
    vs = objects.get_namespaced_custom_object(*ARGS, "web-app")
    same = objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)
    assert same["metadata"]["resourceVersion"] == vs["metadata"]["resourceVersion"]
    del vs["metadata"]["resourceVersion"]
    vs["spec"]["http"][1]["route"][1]["weight"] = 5
    with pytest.raises(ApiException) as caught:
        objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)
    assert caught.value.status == 422 and "must be specified for an update" in caught.value.body
    assert weights(kube_api.get("default", "web-app")) == [90, 10]


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        (
            lambda vs: vs.pop("spec"),
            422,
            'VirtualService.networking.istio.io "web-app" is invalid: spec: Required value',
        ),
        (lambda vs: vs["spec"]["http"][0]["route"][0].update(weight="90"), 422, "must be of type integer"),
        (lambda vs: vs["metadata"].update(name="other"), 400, "does not match the name on the URL (web-app)"),
    ],
)
def test_invalid_objects_are_refused_and_nothing_is_stored(
    objects: client.CustomObjectsApi, kube_api: KubeApiServer, change: Any, code: int, message: str
) -> None:
    before = kube_api.get("default", "web-app")
    vs = objects.get_namespaced_custom_object(*ARGS, "web-app")
    change(vs)
    with pytest.raises(ApiException) as caught:
        objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)
    assert caught.value.status == code and message in status(caught.value)["message"]
    assert kube_api.get("default", "web-app") == before


def test_missing_objects_are_404_for_get_put_and_patch(objects: client.CustomObjectsApi) -> None:
    for call in (
        lambda: objects.get_namespaced_custom_object(*ARGS, "nope"),
        lambda: objects.replace_namespaced_custom_object(*ARGS, "nope", {"metadata": {"name": "nope"}, "spec": {}}),
        lambda: objects.patch_namespaced_custom_object(*ARGS, "nope", {"spec": {}}),
    ):
        with pytest.raises(NotFoundException) as caught:
            call()
        assert status(caught.value)["message"] == 'virtualservices.networking.istio.io "nope" not found'


def test_discovery_lists_and_serves_only_the_versions_it_is_told(kubeconfig: Path, tmp_path: Path) -> None:
    """An Istio before 1.22 serves no networking.istio.io/v1: discovery and every path under it are 404."""
    with KubeApiServer.with_fixtures(served=("v1alpha3", "v1beta1")) as old:
        api = config.new_client_from_config(config_file=str(old.kubeconfig(tmp_path / "old")), persist_config=False)
        try:
            objects = client.CustomObjectsApi(api)
            assert objects.get_api_resources("networking.istio.io", "v1beta1").group_version == (
                "networking.istio.io/v1beta1"
            )
            with pytest.raises(NotFoundException):
                objects.get_api_resources("networking.istio.io", "v1")
            with pytest.raises(NotFoundException):
                objects.get_namespaced_custom_object(
                    "networking.istio.io", "v1", "default", "virtualservices", "web-app"
                )
            rules = objects.list_namespaced_custom_object(
                "networking.istio.io", "v1beta1", "default", "destinationrules"
            )
            assert rules["kind"] == "DestinationRuleList"
            assert sorted(r["metadata"]["name"] for r in rules["items"]) == ["reviews", "web-app"]
        finally:
            api.close()


def test_annotations_over_the_real_size_limit_are_refused(objects: client.CustomObjectsApi) -> None:
    vs = objects.get_namespaced_custom_object(*ARGS, "web-app")
    vs["metadata"]["annotations"] = {"example.com/big": "x" * (256 * 1024)}
    with pytest.raises(UnprocessableEntityException) as caught:
        objects.replace_namespaced_custom_object(*ARGS, "web-app", vs)
    assert "must have at most 262144 bytes" in status(caught.value)["message"]
