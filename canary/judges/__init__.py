"""Judges turn one interval's counts into verdicts, carrying their evidence from tick to tick as a value.

`judge(state, observation, step)` is pure: it returns the new evidence and the judgement and leaves its
input untouched, so the evidence can live in the rollout state on the route and a restart carries on
from it (no replay). `state_type` is the evidence's dataclass, for the codec that persists it. `step` is
the index of the current step in `policy.steps`; a judge resets whatever must be shown afresh at each step.
`refuses(metric)` says why a judge cannot judge a metric (checked before any weight moves).
`sequential` is canary's own anytime-valid judge; `kayenta` and `flagger` reproduce peers' judges for
teams migrating from them and for the detection benchmark.
"""

from __future__ import annotations

from typing import Any, Protocol

from canary.model import Judgement, Observation
from canary.policy import JUDGES, MetricSpec, Policy


class Judge(Protocol):
    name: str

    @property
    def state_type(self) -> type: ...

    def start(self) -> Any: ...

    def judge(self, state: Any, observation: Observation, step: int) -> tuple[Any, Judgement]: ...

    def refuses(self, metric: MetricSpec) -> str | None: ...


def make_judge(policy: Policy, kind: str | None = None) -> Judge:
    """The judge the policy names (or `kind`, for the benchmark's side-by-side runs)."""
    chosen = kind or policy.analysis.judge
    if chosen == "sequential":
        from canary.judges.sequential import SequentialJudge

        return SequentialJudge(policy)
    if chosen == "kayenta":
        from canary.judges.kayenta import KayentaJudge

        return KayentaJudge(policy)
    if chosen == "flagger":
        from canary.judges.flagger import FlaggerJudge

        return FlaggerJudge(policy)
    raise ValueError(f"unknown judge {chosen!r} (expected {', '.join(JUDGES)})")
