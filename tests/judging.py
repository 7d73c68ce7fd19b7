"""A judge with its evidence held between calls, for tests that feed it one interval after another."""

from __future__ import annotations

from typing import Any

from canary.judges import Judge
from canary.model import Judgement, Observation


class Running:
    """`Running(judge).judge(observation, step)`: the pure judge, its evidence carried from call to call."""

    def __init__(self, judge: Judge) -> None:
        self.inner = judge
        self.state: Any = judge.start()

    def judge(self, observation: Observation, step: int) -> Judgement:
        self.state, judgement = self.inner.judge(self.state, observation, step)
        return judgement

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)
