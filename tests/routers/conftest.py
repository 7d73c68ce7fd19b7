"""Fixtures for the Istio router: a local Kubernetes API server seeded with fixtures/istio, and a kubeconfig."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS) not in sys.path:  # the shared helpers live beside the test folders
    sys.path.insert(0, str(TESTS))

from kube_api_server import KubeApiServer  # noqa: E402

from canary.routers.istio import IstioRouter  # noqa: E402


@pytest.fixture
def kube_api() -> Iterator[KubeApiServer]:
    """A fresh API server on 127.0.0.1 holding the real web-app VirtualService, stopped after the test."""
    with KubeApiServer.with_fixtures() as server:
        yield server


@pytest.fixture
def kubeconfig(kube_api: KubeApiServer, tmp_path: Path) -> Path:
    return kube_api.kubeconfig(tmp_path / "kubeconfig")


@pytest.fixture
def router(kubeconfig: Path) -> Iterator[IstioRouter]:
    """The router on the real kubernetes client, configured from the kubeconfig file like a user's."""
    made = IstioRouter.from_kubeconfig(str(kubeconfig))
    yield made
    made.close()
