"""Traffic routers: read and set the baseline/canary weights of the route canary controls."""

from __future__ import annotations

from typing import Protocol

from canary.model import Weights
from canary.policy import Target


class Router(Protocol):
    def get_weights(self, target: Target) -> Weights: ...

    def set_weights(self, target: Target, weights: Weights, *, expected: Weights | None = None) -> None:
        """Set the weights; with `expected`, only if the route still holds those (else WeightConflict)."""
        ...
