"""An in-memory router holding real VirtualService and DestinationRule manifests: the simulated mesh's split.

It follows the same rules as the other routers (`virtualservice.py`) and the same conditional writes
(a revision that moves on every write). The rollout state is kept as the value itself rather than
re-encoded on every tick, so thousands of simulated rollouts stay fast; `manifest()` shows the
VirtualService as a cluster would hold it, annotation included.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from canary.errors import RouterError, WeightConflict
from canary.model import Weights
from canary.policy import Target
from canary.routers.virtualservice import RouteRead, read_weights, subsets_problem, vs_name, with_state, with_weights
from canary.state import RolloutState

Key = tuple[str, str]


def _key(doc: dict[str, Any]) -> Key:
    meta = doc.get("metadata", {})
    return meta.get("namespace", "default"), meta["name"]


class MemoryRouter:
    def __init__(
        self, virtual_services: list[dict[str, Any]], destination_rules: list[dict[str, Any]] | None = None
    ) -> None:
        self._store: dict[Key, dict[str, Any]] = {_key(vs): copy.deepcopy(vs) for vs in virtual_services}
        self._states: dict[Key, RolloutState] = {}
        self._revisions: dict[Key, str] = {}
        self._counter = itertools.count(1)
        self.destination_rules = [copy.deepcopy(dr) for dr in destination_rules or []]
        self.history: list[Weights] = []  # every weight change, in order
        for key in self._store:
            self._revisions[key] = str(next(self._counter))

    def _document(self, target: Target) -> dict[str, Any]:
        key = (target.namespace, target.virtual_service)
        if key not in self._store:
            raise RouterError(f"{vs_name(target)} not found")
        return self._store[key]

    def manifest(self, target: Target) -> dict[str, Any]:
        """The VirtualService as it stands, with the state annotation a cluster would hold."""
        doc = self._document(target)
        state = self._states.get((target.namespace, target.virtual_service))
        return with_state(doc, state) if state else copy.deepcopy(doc)

    def read(self, target: Target, evidence: type | None = None) -> RouteRead:
        key = (target.namespace, target.virtual_service)
        doc = self._document(target)
        return RouteRead(read_weights(doc, target), self._states.get(key), None, self._revisions[key], doc)

    def write(self, target: Target, read: RouteRead, weights: Weights, state: RolloutState) -> None:
        key = (target.namespace, target.virtual_service)
        if self._revisions.get(key) != read.revision:
            raise WeightConflict(f"{vs_name(target)}: changed by someone else between canary's read and write")
        updated = with_weights(self._document(target), target, weights)
        self._store[key] = updated
        self._states[key] = state
        self._revisions[key] = str(next(self._counter))
        if weights != read.weights:
            self.history.append(weights)

    def edit(self, target: Target, weights: Weights) -> None:
        """Someone else moves the weights (a kubectl edit): the revision moves, the state stays."""
        key = (target.namespace, target.virtual_service)
        self._store[key] = with_weights(self._document(target), target, weights)
        self._revisions[key] = str(next(self._counter))

    def subsets_problem(self, target: Target) -> str | None:
        return subsets_problem(self.destination_rules, target)


def seed_objects(target: Target, canary_weight: int = 0) -> tuple[dict[str, Any], dict[str, Any]]:
    """A VirtualService and DestinationRule shaped like the seed's: a header-match route to the canary first,
    then the unnamed weighted split, short host names; and the DestinationRule with both subsets."""
    service = target.host.split(".")[0]
    if target.host != f"{service}.{target.namespace}.svc.cluster.local":
        service = target.host  # a short name would resolve to another host
    vs = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": target.virtual_service, "namespace": target.namespace},
        "spec": {
            "hosts": [service],
            "http": [
                {
                    "match": [{"headers": {"canary": {"exact": "true"}}}],
                    "route": [{"destination": {"host": service, "subset": target.canary}}],
                },
                {
                    "route": [
                        {"destination": {"host": service, "subset": target.baseline}, "weight": 100 - canary_weight},
                        {"destination": {"host": service, "subset": target.canary}, "weight": canary_weight},
                    ]
                },
            ],
        },
    }
    if target.route is not None:
        vs["spec"]["http"][1]["name"] = target.route  # type: ignore[index]
    dr = {
        "apiVersion": "networking.istio.io/v1",
        "kind": "DestinationRule",
        "metadata": {"name": target.virtual_service, "namespace": target.namespace},
        "spec": {
            "host": service,
            "subsets": [
                {"name": target.baseline, "labels": {"version": target.baseline}},
                {"name": target.canary, "labels": {"version": target.canary}},
            ],
        },
    }
    return vs, dr
