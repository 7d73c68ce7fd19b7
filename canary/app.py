"""The one place that chooses concrete parts: which source, router, judge, clock and audit sink.

Everything else receives its collaborators; nothing reaches for a global client.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from canary.analysis import AnalysisResult, analyze
from canary.audit import AuditLog, AuditSink
from canary.clock import Clock, SimulatedClock, SystemClock
from canary.controller import Controller
from canary.errors import RouterError, SourceError
from canary.judges import make_judge
from canary.policy import Policy
from canary.routers import Router
from canary.routers.manifest import ManifestRouter
from canary.routers.memory import MemoryRouter, virtual_service_for
from canary.scenario import Scenario
from canary.sources.prometheus import PrometheusSettings, PrometheusSource
from canary.sources.simulated import SimulatedMesh

SIM_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated rollouts start here, so records are stable


def audit_path_for(policy: Policy, override: str | None) -> Path:
    if override:
        return Path(override)
    if policy.audit_path:
        return Path(policy.audit_path)
    return Path("audit") / f"{policy.name}.jsonl"


def with_scenario(policy: Policy, scenario: Scenario) -> Policy:
    """The policy with the scenario's steps, interval and deadline where the scenario sets them."""
    changes: dict[str, object] = {}
    if scenario.steps is not None:
        changes["steps"] = scenario.steps
    if scenario.interval_s is not None:
        changes["interval_s"] = scenario.interval_s
    if scenario.max_duration_s is not None:
        changes["max_duration_s"] = scenario.max_duration_s
    return dataclasses.replace(policy, **changes)  # type: ignore[arg-type]


def router_for(
    policy: Policy, manifest: str | None, kubeconfig: str | None = None, context: str | None = None
) -> Router:
    """Where the weights live: a manifest file, a cluster's VirtualService (kubeconfig), else in memory."""
    if manifest and (kubeconfig or context):
        raise RouterError("choose where the weights live: --manifest or --kubeconfig/--context, not both")
    if manifest:
        return ManifestRouter(manifest)
    if kubeconfig or context:
        if not kubeconfig:
            raise RouterError("--context names a context of a kubeconfig: give --kubeconfig FILE too")
        from canary.routers.istio import IstioRouter  # here: importing kubernetes takes half a second

        return IstioRouter.from_kubeconfig(kubeconfig, context)
    return MemoryRouter([virtual_service_for(policy.target)])


@dataclass
class SimulatedRollout:
    controller: Controller
    mesh: SimulatedMesh
    router: Router
    clock: SimulatedClock


def simulated_rollout(
    policy: Policy,
    scenario: Scenario,
    *,
    seed: int,
    audit: AuditSink,
    judge: str | None = None,
    router: Router | None = None,
) -> SimulatedRollout:
    """A rollout of `policy` on the embedded simulated mesh; an in-memory VirtualService unless given."""
    policy = with_scenario(policy, scenario)
    clock = SimulatedClock(SIM_START)
    router = router or router_for(policy, None)
    mesh = SimulatedMesh(scenario, router, policy.target, start=clock.now(), seed=seed)
    controller = Controller(
        policy=policy,
        source=mesh,
        router=router,
        judge=make_judge(policy, judge),
        audit=audit,
        clock=clock,
        actor="canary-controller (simulated mesh)",
    )
    return SimulatedRollout(controller, mesh, router, clock)


def open_audit(policy: Policy, override: str | None) -> AuditLog:
    return AuditLog(audit_path_for(policy, override))


@dataclass
class PrometheusRollout:
    controller: Controller
    source: PrometheusSource
    router: Router


def prometheus_rollout(
    policy: Policy,
    settings: PrometheusSettings,
    *,
    audit: AuditSink,
    router: Router | None = None,
    clock: Clock | None = None,
    judge: str | None = None,
) -> PrometheusRollout:
    """A rollout of `policy` judged on a real Prometheus; an in-memory VirtualService unless given.

    Prometheus is asked once before anything else, so a wrong URL or refused credentials end the command
    (exit 2) before any weight moves, rather than holding the first step until the deadline.
    """
    router = router or router_for(policy, None)
    clock = clock or SystemClock()
    source = PrometheusSource(settings)
    try:
        source.query("vector(1)", clock.now(), what="connectivity check")
    except SourceError:
        source.close()
        raise
    controller = Controller(
        policy=policy,
        source=source,
        router=router,
        judge=make_judge(policy, judge),
        audit=audit,
        clock=clock,
        actor=f"canary-controller (prometheus {source.url}, {type(router).__name__})",
    )
    return PrometheusRollout(controller, source, router)


def prometheus_analysis(
    policy: Policy, settings: PrometheusSettings, start: float, end: float, *, judge: str | None = None
) -> AnalysisResult:
    """`canary analyze`: judge the canary over [start, end] from Prometheus, touching no weights."""
    with PrometheusSource(settings) as source:
        return analyze(policy, source, make_judge(policy, judge), start, end)
