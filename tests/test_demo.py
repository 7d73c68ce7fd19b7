"""The demo's promise over several seeds: a healthy canary goes 10 -> 50 -> 100, a regression is rolled back
with the regressed metric named in the evidence."""

from __future__ import annotations

import pytest

from canary.app import SimulatedRollout, simulated_rollout
from canary.audit import MemoryAudit
from canary.controller import RolloutResult
from canary.model import Action, Outcome, Phase, Weights
from canary.policy import Policy
from canary.records import DecisionRecord
from canary.scenario import builtin_scenario

SEEDS = range(1, 6)


def decided(audit: MemoryAudit) -> list[DecisionRecord]:
    return [s.record for s in audit.records if isinstance(s.record, DecisionRecord)]


def demo(policy: Policy, scenario: str, seed: int) -> tuple[SimulatedRollout, MemoryAudit, RolloutResult]:
    audit = MemoryAudit()
    sim = simulated_rollout(policy, builtin_scenario(scenario), seed=seed, audit=audit)
    return sim, audit, sim.runner.run()


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_canary_is_promoted_through_every_step(web_policy: Policy, seed: int) -> None:
    sim, audit, result = demo(web_policy, "healthy", seed)
    assert result.phase is Phase.PROMOTED
    assert sim.router.history == [Weights.canary_at(10), Weights.canary_at(50), Weights.canary_at(100)]
    moved = [r.weights_after.canary for r in decided(audit) if r.weights_after != r.weights_before]
    assert moved == [10, 50, 100]
    assert result.judgement is not None
    assert {v.outcome for v in result.judgement.verdicts} == {Outcome.PASS}
    assert result.duration_s <= web_policy.max_duration_s


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(
    ("scenario", "metric"), [("error-regression", "error-rate"), ("latency-regression", "latency")]
)
def test_regressed_canary_is_rolled_back_naming_the_metric(
    web_policy: Policy, seed: int, scenario: str, metric: str
) -> None:
    sim, audit, result = demo(web_policy, scenario, seed)
    assert result.phase is Phase.ROLLED_BACK
    assert sim.router.history[-1] == Weights.canary_at(0)
    assert all(w.canary in (10, 50, 0) for w in sim.router.history), "a regression must never reach 100%"
    assert result.judgement is not None
    failed = [v for v in result.judgement.verdicts if v.outcome is Outcome.FAIL]
    assert failed, "the final judgement must carry the failing verdict"
    assert any(v.metric.startswith(metric) for v in failed), [v.metric for v in failed]
    for verdict in failed:
        assert verdict.summary.startswith(f"{verdict.metric}: ")
        assert verdict.figures, "a verdict must carry the figures behind it"
        assert verdict.metric in result.decision.reason
    last = decided(audit)[-1]
    assert last.action is Action.ROLLBACK and last.judgement is not None
    assert any(v["outcome"] == "fail" and v["metric"].startswith(metric) for v in last.judgement["verdicts"])
