"""The one place that chooses concrete parts: which source, router, judge, clock and audit log.

Everything else receives its collaborators; nothing reaches for a global client. The policy × judge ×
source combination is checked here, before anything is built that could move a weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from canary.analysis import AnalysisResult, analyze
from canary.audit import AuditLog, AuditSink
from canary.auditing import CONTROLLER, SIMULATED
from canary.clock import Clock, SimulatedClock, SystemClock
from canary.controller import DEFAULT_LOCK_TIMEOUT_S, CancelFlag, Runner
from canary.errors import PolicyError, RouterError, SourceError
from canary.judges import Judge, make_judge
from canary.policy import Policy
from canary.routers import Router
from canary.routers.manifest import ManifestRouter
from canary.routers.memory import MemoryRouter, seed_objects
from canary.scenario import Scenario
from canary.sources import MetricsSource
from canary.sources.prometheus import PrometheusSettings, PrometheusSource
from canary.sources.simulated import SimulatedMesh
from canary.webhooks import Hooks

SIM_START = 1_767_225_600.0  # 2026-01-01T00:00:00Z: simulated rollouts start here, so records are stable


def audit_path_for(policy: Policy, override: str | None) -> Path:
    if override:
        return Path(override)
    if policy.audit_path:
        return Path(policy.audit_path)
    return Path("audit") / f"{policy.name}.jsonl"


def open_audit(policy: Policy, override: str | None, actor: str = "canary") -> AuditLog:
    return AuditLog(audit_path_for(policy, override), actor=actor)


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
    vs, dr = seed_objects(policy.target)
    return MemoryRouter([vs], [dr])


def judge_for(policy: Policy, kind: str | None = None, source: MetricsSource | None = None) -> Judge:
    """The policy's judge, once the judge and the source have said they can handle every metric."""
    judge = make_judge(policy, kind)
    for i, metric in enumerate(policy.metrics):
        for part in (judge, source):
            problem = part.refuses(metric) if part is not None else None
            if problem is not None:
                raise PolicyError(policy.source_path, f"spec.metrics[{i}]", f"{metric.name!r}: {problem}")
    return judge


@dataclass
class SimulatedRollout:
    runner: Runner
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
    cancel: CancelFlag | None = None,
    start: float | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    resumed: bool = False,
) -> SimulatedRollout:
    """A rollout of `policy` on the embedded simulated mesh; an in-memory VirtualService unless given.
    Simulated time starts at `start` (a resumed rollout's last record), else at SIM_START; a `resumed`
    rollout's mesh has the same pods and draws new traffic for its later minutes."""
    policy = with_scenario(policy, scenario)
    clock = SimulatedClock(max(start or SIM_START, SIM_START))
    router = router or router_for(policy, None)
    mesh = SimulatedMesh(scenario, router, policy.target, start=clock.now(), seed=seed, later=resumed)
    runner = Runner(
        policy=policy,
        source=mesh,
        router=router,
        judge=judge_for(policy, judge, mesh),
        audit=audit,
        clock=clock,
        actor=f"{CONTROLLER} {SIMULATED}",
        lock_timeout_s=lock_timeout_s,
        cancel=cancel,
        hooks=hooks_for(policy),
        simulated=True,
    )
    return SimulatedRollout(runner, mesh, router, clock)


@dataclass
class PrometheusRollout:
    runner: Runner
    source: PrometheusSource
    router: Router


def _try_queries(source: PrometheusSource, policy: Policy, now: float) -> None:
    """Every metric's query, once, over the last interval; a refusal for good is raised, a passing failure
    (a timeout, a 503) is left to the ticks, which hold on it."""
    try:
        source.observe(policy.target.scope, policy.metrics, now - policy.interval_s, now)
    except SourceError as exc:
        if not exc.temporary:
            raise


def prometheus_rollout(
    policy: Policy,
    settings: PrometheusSettings,
    *,
    audit: AuditSink,
    router: Router | None = None,
    clock: Clock | None = None,
    judge: str | None = None,
    lock_timeout_s: float = DEFAULT_LOCK_TIMEOUT_S,
    cancel: CancelFlag | None = None,
) -> PrometheusRollout:
    """A rollout of `policy` judged on a real Prometheus; an in-memory VirtualService unless given.

    Prometheus is asked before anything else, so a wrong URL or refused credentials end the command (exit 2)
    before any weight moves, rather than holding the first step until the deadline; and every metric's query
    is run once over the last interval, so one Prometheus refuses (a template it cannot parse, a proxy that
    forbids a metric) ends it there too, not after the first step sent traffic to an unjudged canary.
    """
    router = router or router_for(policy, None)
    clock = clock or SystemClock()
    hooks = hooks_for(policy)
    source = PrometheusSource(settings)
    try:
        chosen = judge_for(policy, judge, source)
        now = clock.now()
        source.query("vector(1)", now, what="connectivity check")
        _try_queries(source, policy, now)
    except (SourceError, PolicyError):
        source.close()
        raise
    runner = Runner(
        policy=policy,
        source=source,
        router=router,
        judge=chosen,
        audit=audit,
        clock=clock,
        actor=f"canary-controller (prometheus {source.url}, {type(router).__name__})",
        lock_timeout_s=lock_timeout_s,
        cancel=cancel,
        hooks=hooks,
    )
    return PrometheusRollout(runner, source, router)


def hooks_for(policy: Policy) -> Hooks | None:
    """The policy's webhooks, their URLs read now (a missing file or variable fails before anything moves)."""
    return Hooks(policy.webhooks) if policy.webhooks else None


def manual_runner(policy: Policy, router: Router, audit: AuditSink, *, lock_timeout_s: float) -> Runner:
    """What a person's promote or rollback runs through: the same chain, no metrics source."""
    return Runner(
        policy=policy,
        source=None,
        router=router,
        judge=make_judge(policy),
        audit=audit,
        clock=SystemClock(),
        lock_timeout_s=lock_timeout_s,
        hooks=hooks_for(policy) if policy.hooks("post-rollout") else None,
    )


def prometheus_analysis(
    policy: Policy, settings: PrometheusSettings, start: float, end: float, *, judge: str | None = None
) -> AnalysisResult:
    """`canary analyze`: judge the canary over [start, end] from Prometheus, touching no weights."""
    with PrometheusSource(settings) as source:
        return analyze(policy, source, judge_for(policy, judge, source), start, end)
