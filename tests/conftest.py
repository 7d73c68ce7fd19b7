"""Fixtures shared across the suite: the example policy, policy files in tmp_path, a tmp audit log path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from canary.policy import Policy, load_policy

REPO = Path(__file__).resolve().parents[1]
WEB_APP_POLICY = REPO / "policies" / "web-app.yaml"


@pytest.fixture(scope="session")
def web_policy() -> Policy:
    """policies/web-app.yaml, loaded once (policies are frozen, so sharing is safe)."""
    return load_policy(WEB_APP_POLICY)


@pytest.fixture
def write_policy(tmp_path: Path) -> Callable[..., Path]:
    """Write policy text to a file in tmp_path and return its path: `write_policy(text, name="policy.yaml")`."""

    def write(text: str, name: str = "policy.yaml") -> Path:
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        return path

    return write


@pytest.fixture
def audit_path(tmp_path: Path) -> Path:
    """Where a test's audit log goes: never the repository's audit/ folder."""
    return tmp_path / "audit" / "rollout.jsonl"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Path]:
    """The test Kubernetes API server holding every fixture VirtualService and DestinationRule: its kubeconfig."""
    from kube_api_server import KubeApiServer

    with KubeApiServer.with_fixtures() as api:
        yield api.kubeconfig(tmp_path / "kubeconfig")
