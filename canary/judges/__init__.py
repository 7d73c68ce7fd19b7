"""Judges turn one interval's counts into verdicts. Each keeps its evidence between ticks.

`judge(observation, step)` is called once per analysis interval with that interval's counts and the index
of the current step in `policy.steps`; a judge resets whatever must be shown afresh at each step.
`sequential` is canary's own anytime-valid judge; `kayenta` and `flagger` reproduce peers' judges for
teams migrating from them and for the detection benchmark.
"""

from __future__ import annotations

from typing import Protocol

from canary.model import Judgement, Observation
from canary.policy import Policy


class Judge(Protocol):
    name: str

    def judge(self, observation: Observation, step: int) -> Judgement: ...


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
    raise ValueError(f"unknown judge {chosen!r} (expected sequential, kayenta or flagger)")
