"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from canary.audit import read_records
from canary.policy import Target
from canary.records import DecisionRecord
from canary.routers.memory import MemoryRouter, seed_objects


def memory_router(target: Target, canary_weight: int = 0) -> MemoryRouter:
    """An in-memory route shaped like the seed's (header-match route first, then the split), at a weight."""
    vs, dr = seed_objects(target, canary_weight)
    return MemoryRouter([vs], [dr])


def decisions(path: Path) -> list[DecisionRecord]:
    """The decision records of an audit log, in order."""
    return [s.record for s in read_records(path) if isinstance(s.record, DecisionRecord)]


def judged(path: Path) -> list[DecisionRecord]:
    """The decisions that judged an observation (the ticks with counts)."""
    return [r for r in decisions(path) if r.counts is not None]
