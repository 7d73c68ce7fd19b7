"""Traffic routers: read and write the route canary controls, its weights and rollout state together.

A read returns the weights, the state beside them and the revision they were read at; a write sets
both, and only if the route is still at that revision (else `WeightConflict`): nobody's change is ever
overwritten unseen. `subsets_problem` is the preflight's question: do both subsets exist in a
DestinationRule for the host (None when they do, or when the router cannot know)?
"""

from __future__ import annotations

from typing import Protocol

from canary.model import Weights
from canary.policy import Target
from canary.routers.virtualservice import RouteRead
from canary.state import RolloutState


class Router(Protocol):
    def read(self, target: Target, evidence: type | None = None) -> RouteRead: ...

    def write(self, target: Target, read: RouteRead, weights: Weights, state: RolloutState) -> None: ...

    def subsets_problem(self, target: Target) -> str | None: ...


__all__ = ["RouteRead", "Router"]
