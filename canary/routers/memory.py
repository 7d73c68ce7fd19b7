"""An in-memory router holding real VirtualService manifests: the simulated mesh's traffic split."""

from __future__ import annotations

from typing import Any

from canary.errors import RouterError
from canary.model import Weights
from canary.policy import Target
from canary.routers.virtualservice import check_expected, read_weights, with_weights


class MemoryRouter:
    def __init__(self, virtual_services: list[dict[str, Any]]) -> None:
        self._store: dict[tuple[str, str], dict[str, Any]] = {}
        for vs in virtual_services:
            meta = vs.get("metadata", {})
            self._store[(meta.get("namespace", "default"), meta["name"])] = vs
        self.history: list[Weights] = []  # every weight change, in order

    def manifest(self, target: Target) -> dict[str, Any]:
        key = (target.namespace, target.virtual_service)
        if key not in self._store:
            raise RouterError(f"VirtualService {key[0]}/{key[1]} not found")
        return self._store[key]

    def get_weights(self, target: Target) -> Weights:
        return read_weights(self.manifest(target), target)

    def set_weights(self, target: Target, weights: Weights, *, expected: Weights | None = None) -> None:
        check_expected(self.manifest(target), target, expected)
        updated = with_weights(self.manifest(target), target, weights)
        self._store[(target.namespace, target.virtual_service)] = updated
        self.history.append(weights)


def virtual_service_for(target: Target, canary_weight: int = 0) -> dict[str, Any]:
    """The VirtualService manifest Istio users write for a two-subset split (the seed's shape)."""
    return {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": target.virtual_service, "namespace": target.namespace},
        "spec": {
            "hosts": [target.host],
            "http": [
                {
                    "name": target.route or "primary",
                    "route": [
                        {
                            "destination": {"host": target.host, "subset": target.baseline},
                            "weight": 100 - canary_weight,
                        },
                        {
                            "destination": {"host": target.host, "subset": target.canary},
                            "weight": canary_weight,
                        },
                    ],
                }
            ],
        },
    }
