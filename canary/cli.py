"""The command line: parse, build (through app), call, and map outcomes and errors to exit codes.

Exit codes: 0 promoted / pass, 1 rolled back / fail, 2 configuration or infrastructure error,
3 inconclusive at the deadline. A user mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from canary import __version__
from canary.alerts import alert_rules
from canary.analysis import AnalysisResult, parse_time
from canary.app import (
    audit_path_for,
    open_audit,
    prometheus_analysis,
    prometheus_rollout,
    router_for,
    simulated_rollout,
)
from canary.audit import read_records, verify_chain
from canary.clock import SystemClock
from canary.controller import Controller, RolloutResult, manual_change, unfinished_rollout
from canary.display import Progress, summary
from canary.errors import CanaryError
from canary.model import Phase
from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, Policy, load_policy
from canary.promql import Scope, operator_queries
from canary.report import iso, judgement_dict, version_counts
from canary.routers import Router
from canary.scenario import BUILTIN_SCENARIOS, builtin_scenario, resolve_scenario
from canary.sources.prometheus import PrometheusSettings

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_ERROR, EXIT_INCONCLUSIVE = 0, 1, 2, 3
PHASE_EXIT = {
    Phase.PROMOTED: EXIT_PROMOTED,
    Phase.ROLLED_BACK: EXIT_ROLLED_BACK,
    Phase.INCONCLUSIVE: EXIT_INCONCLUSIVE,
    Phase.ABORTED: EXIT_ERROR,
    Phase.PROGRESSING: EXIT_ERROR,
}

app = typer.Typer(
    name="canary",
    help="Canary analysis for Istio: shift VirtualService weights from v1 to v2 on statistical evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
audit_app = typer.Typer(help="Read and verify audit logs.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


Scenario = StrEnum("Scenario", {name: name for name in BUILTIN_SCENARIOS})  # type: ignore[misc]


# Connection options of the Prometheus source, shared by `run` and `analyze`. Secrets come from files or
# environment variables only, so they never appear in a process list or a shell history.
PromUrl = Annotated[
    str | None, typer.Option("--prometheus-url", envvar="CANARY_PROMETHEUS_URL", help="Prometheus base URL.")
]
PromTimeout = Annotated[float, typer.Option("--prometheus-timeout", help="Seconds per query.")]
PromRetries = Annotated[int, typer.Option("--prometheus-retries", help="Retries on connection errors and 5xx.")]
PromTokenFile = Annotated[str | None, typer.Option("--prometheus-token-file", help="File with a bearer token.")]
PromTokenEnv = Annotated[str | None, typer.Option("--prometheus-token-env", help="Env var with a bearer token.")]
PromUser = Annotated[str | None, typer.Option("--prometheus-user", help="Basic auth user.")]
PromPasswordFile = Annotated[str | None, typer.Option("--prometheus-password-file", help="File with the password.")]
PromPasswordEnv = Annotated[str | None, typer.Option("--prometheus-password-env", help="Env var with the password.")]
PromCaFile = Annotated[str | None, typer.Option("--prometheus-ca-file", help="CA bundle for TLS.")]
PromInsecure = Annotated[bool, typer.Option("--prometheus-insecure", help="Do not verify TLS certificates.")]
PromHeader = Annotated[
    list[str] | None, typer.Option("--prometheus-header", help="Extra header 'Name: value' (repeatable).")
]
PromPodLabel = Annotated[str, typer.Option("--prometheus-pod-label", help="Label naming the pod.")]
PromReporter = Annotated[str, typer.Option("--prometheus-reporter", help="Istio reporter to count.")]
PromDelay = Annotated[
    float, typer.Option("--prometheus-delay", help="Read each window this many seconds late (scrape lag).")
]


Manifest = Annotated[
    str | None,
    typer.Option(help="VirtualService manifest file that holds the weights (default: kept in memory)."),
]
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        help="Move the VirtualService's weights in the cluster this kubeconfig file names (not with --manifest)."
    ),
]
Context = Annotated[str | None, typer.Option(help="The kubeconfig context to use (default: its current context).")]


def _prometheus_settings(url: str, params: dict[str, Any]) -> PrometheusSettings:
    """Settings from a command's `prometheus_*` parameters (pass `locals()`), named once for all commands."""
    options = {k.removeprefix("prometheus_"): v for k, v in params.items() if k.startswith("prometheus_")}
    return PrometheusSettings.from_options(
        url,
        timeout_s=options["timeout"],
        retries=options["retries"],
        bearer_token_file=options["token_file"],
        bearer_token_env=options["token_env"],
        basic_auth_user=options["user"],
        basic_auth_password_file=options["password_file"],
        basic_auth_password_env=options["password_env"],
        ca_file=options["ca_file"],
        insecure=options["insecure"],
        headers=options["header"] or (),
        pod_label=options["pod_label"],
        reporter=options["reporter"],
        delay_s=options.get("delay", 0.0),
    )


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"canary: {message}", err=True)
    return typer.Exit(code)


def result_json(result: RolloutResult, policy_name: str) -> dict[str, Any]:
    return {
        "outcome": result.phase.value,
        "exit_code": PHASE_EXIT[result.phase],
        "policy": policy_name,
        "rollout": result.rollout,
        "reason": result.decision.reason,
        "final_weights": {
            "baseline": result.decision.weights.baseline,
            "canary": result.decision.weights.canary,
        },
        "ticks": result.ticks,
        "duration_s": result.duration_s,
        "step_seconds": list(result.step_seconds),
        "judgement": judgement_dict(result.judgement) if result.judgement else None,
        "audit": result.audit_path,
        "engine_version": __version__,
    }


def _run_simulated(
    policy_file: str,
    scenario_spec: str,
    seed: int,
    audit: str | None,
    output: OutputFormat,
    title: str,
    manifest: str | None = None,
    kubeconfig: str | None = None,
    context: str | None = None,
) -> int:
    policy = load_policy(policy_file)
    scenario = resolve_scenario(scenario_spec)
    router = router_for(policy, manifest, kubeconfig, context)
    rollout = simulated_rollout(policy, scenario, seed=seed, audit=open_audit(policy, audit), router=router)
    return _follow(rollout.controller, policy.name, output, title)


def _follow(
    controller: Controller, policy_name: str, output: OutputFormat, title: str, resume: Sequence[dict[str, Any]] = ()
) -> int:
    """Run (or resume) a rollout to its end, showing progress (or printing the JSON outcome); the exit code."""
    if output is OutputFormat.json:
        result = controller.run(resume=resume)
        typer.echo(json.dumps(result_json(result, policy_name), indent=2, default=str))
    else:
        progress = Progress(title)
        result = controller.run(progress.update, resume=resume)
        progress.finish(result)
    return PHASE_EXIT[result.phase]


@app.command()
def demo(
    scenario: Annotated[Scenario, typer.Option(help="Which built-in simulated canary to roll out.")] = "healthy",  # type: ignore[assignment]
    policy: Annotated[str, typer.Option(help="Policy file.")] = "policies/web-app.yaml",
    seed: Annotated[int, typer.Option(help="Random seed of the simulated mesh.")] = 1,
    audit: Annotated[str | None, typer.Option(help="Audit log file (default: the policy's).")] = None,
    output: Annotated[OutputFormat, typer.Option(help="text (live progress) or json.")] = OutputFormat.text,
) -> None:
    """Roll out a simulated canary end to end on the embedded mesh (no cluster, no Prometheus)."""
    try:
        if not Path(policy).exists():
            raise CanaryError(f"{policy}: no such file (run the demo from the repository, or pass --policy FILE)")
        described = builtin_scenario(str(scenario.value))
        title = f"canary demo: scenario {described.name!r} on the simulated mesh ({described.rps:g} requests/s)"
        raise typer.Exit(_run_simulated(policy, str(scenario.value), seed, audit, output, title))
    except CanaryError as exc:
        raise _fail(str(exc)) from None


@app.command()
def run(
    policy: Annotated[str, typer.Argument(help="Policy file (YAML, kind CanaryPolicy).")],
    simulate: Annotated[
        str | None,
        typer.Option(help="Run on the simulated mesh: a built-in scenario name or a scenario JSON file."),
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed of the simulated mesh.")] = 1,
    audit: Annotated[str | None, typer.Option(help="Audit log file (default: the policy's).")] = None,
    output: Annotated[OutputFormat, typer.Option(help="text (live progress) or json.")] = OutputFormat.text,
    manifest: Manifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    resume: Annotated[
        bool, typer.Option(help="Carry on this policy's unfinished rollout from the audit log, if there is one.")
    ] = False,
    prometheus_url: PromUrl = None,
    prometheus_timeout: PromTimeout = 10.0,
    prometheus_retries: PromRetries = 2,
    prometheus_token_file: PromTokenFile = None,
    prometheus_token_env: PromTokenEnv = None,
    prometheus_user: PromUser = None,
    prometheus_password_file: PromPasswordFile = None,
    prometheus_password_env: PromPasswordEnv = None,
    prometheus_ca_file: PromCaFile = None,
    prometheus_insecure: PromInsecure = False,
    prometheus_header: PromHeader = None,
    prometheus_pod_label: PromPodLabel = "pod",
    prometheus_reporter: PromReporter = "destination",
    prometheus_delay: PromDelay = 0.0,
) -> None:
    """Run a rollout to its end (blocking): 0 promoted, 1 rolled back, 2 error, 3 inconclusive."""
    try:
        if simulate is not None and prometheus_url == os.environ.get("CANARY_PROMETHEUS_URL"):
            prometheus_url = None  # an explicit --simulate outranks the environment's default URL
        if simulate is not None and prometheus_url:
            raise CanaryError("choose one metrics source: --simulate or --prometheus-url, not both")
        if prometheus_url:
            settings = _prometheus_settings(prometheus_url, locals())
            weights = (manifest, kubeconfig, context)
            if resume and not (manifest or kubeconfig):
                raise CanaryError("--resume needs the weights where a restart finds them: --manifest or --kubeconfig")
            raise typer.Exit(_run_prometheus(policy, settings, audit, output, weights, resume))
        if simulate is None:
            raise CanaryError(
                "choose a metrics source: --prometheus-url URL, or --simulate SCENARIO (the embedded simulated mesh)"
            )
        if resume:
            raise CanaryError("--resume carries on a real rollout: use it with --prometheus-url")
        title = f"canary run {policy} on the simulated mesh ({simulate})"
        raise typer.Exit(_run_simulated(policy, simulate, seed, audit, output, title, manifest, kubeconfig, context))
    except CanaryError as exc:
        raise _fail(str(exc)) from None


def _run_prometheus(
    policy_file: str,
    settings: PrometheusSettings,
    audit: str | None,
    output: OutputFormat,
    weights: tuple[str | None, str | None, str | None],
    resume: bool,
) -> int:
    """`weights` is where they live: (manifest, kubeconfig, context)."""
    policy = load_policy(policy_file)
    router = router_for(policy, *weights)
    audit_log = open_audit(policy, audit)
    records = (
        unfinished_rollout(list(read_records(audit_log.path)), policy) if resume and audit_log.path.exists() else []
    )
    rollout = prometheus_rollout(policy, settings, audit=audit_log, router=router)
    manifest, kubeconfig, _ = weights
    where = "weights in " + (manifest or (kubeconfig and f"the cluster of {kubeconfig}") or "memory")
    title = f"canary run {policy_file} on Prometheus at {settings.safe_url} ({where})"
    if records:
        title += f", resuming rollout {records[0]['rollout']} at tick {records[-1]['tick']}"
    try:
        return _follow(rollout.controller, policy.name, output, title, records)
    finally:
        rollout.source.close()


def analysis_json(result: AnalysisResult, policy: Policy, settings: PrometheusSettings) -> dict[str, Any]:
    target = policy.target
    return {
        "outcome": result.verdict,
        "exit_code": result.exit_code,
        "policy": policy.name,
        "target": {"host": target.host, "baseline": target.baseline, "canary": target.canary},
        "window": {
            "start": iso(result.start),
            "end": iso(result.end),
            "start_timestamp": result.start,
            "end_timestamp": result.end,
            "intervals": result.intervals,
            "interval_s": policy.interval_s,
        },
        "counts": version_counts(result.observation, policy),
        "judgement": judgement_dict(result.judgement) if result.judgement else None,
        "source": {"kind": "prometheus", "url": settings.safe_url},
        "engine_version": __version__,
    }


@app.command()
def analyze(
    policy: Annotated[str, typer.Argument(help="Policy file (YAML, kind CanaryPolicy).")],
    start: Annotated[
        str | None, typer.Option(help="Window start: now, -30m, unix seconds or ISO 8601 (default: 10 intervals ago).")
    ] = None,
    end: Annotated[str, typer.Option(help="Window end: now, -5m, unix seconds or ISO 8601.")] = "now",
    output: Annotated[OutputFormat, typer.Option(help="text or json.")] = OutputFormat.text,
    prometheus_url: PromUrl = None,
    prometheus_timeout: PromTimeout = 10.0,
    prometheus_retries: PromRetries = 2,
    prometheus_token_file: PromTokenFile = None,
    prometheus_token_env: PromTokenEnv = None,
    prometheus_user: PromUser = None,
    prometheus_password_file: PromPasswordFile = None,
    prometheus_password_env: PromPasswordEnv = None,
    prometheus_ca_file: PromCaFile = None,
    prometheus_insecure: PromInsecure = False,
    prometheus_header: PromHeader = None,
    prometheus_pod_label: PromPodLabel = "pod",
    prometheus_reporter: PromReporter = "destination",
) -> None:
    """Judge v2 against v1 over a past or current window; no weights move. 0 pass, 1 fail, 3 inconclusive, 2 error."""
    try:
        if not prometheus_url:
            raise CanaryError("canary analyze reads Prometheus: give --prometheus-url URL")
        settings = _prometheus_settings(prometheus_url, locals())
        loaded = load_policy(policy)
        now = time.time()
        try:
            until = parse_time(end, now)
            since = parse_time(start, now) if start is not None else until - 10 * loaded.interval_s
            if not until > since:
                raise ValueError(f"the window must end after it starts ({iso(since)} .. {iso(until)})")
        except ValueError as exc:
            raise CanaryError(str(exc)) from None
        result = prometheus_analysis(loaded, settings, since, until)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if output is OutputFormat.json:
        typer.echo(json.dumps(analysis_json(result, loaded, settings), indent=2, default=str))
    else:
        typer.echo(
            f"canary analyze {policy}: {loaded.target.canary} against {loaded.target.baseline} of "
            f"{loaded.target.host}, {iso(since)} .. {iso(until)} ({result.intervals} intervals)"
        )
        for version, counts in version_counts(result.observation, loaded).items():
            typer.echo(
                f"  {version}: {counts.get('requests', 'no data')} requests, {counts.get('errors', '-')} errors, "
                f"{counts.get('pods', 0)} pods"
            )
        if result.judgement is not None:
            for verdict in result.judgement.verdicts:
                typer.echo(f"  {verdict.outcome.value:>8}  {verdict.summary}")
        typer.echo(f"outcome: {result.verdict}")
    raise typer.Exit(result.exit_code)


@app.command()
def queries(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    window: Annotated[str, typer.Option(help="Rate window of the queries, e.g. 1m or 5m.")] = "1m",
    reporter: Annotated[str, typer.Option(help="Istio reporter to count.")] = "destination",
    output: Annotated[OutputFormat, typer.Option(help="text or json.")] = OutputFormat.text,
) -> None:
    """Print the PromQL behind each metric (rates, error and success rates, quantiles, dependencies)."""
    try:
        loaded = load_policy(policy)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    target = loaded.target
    scope = Scope(target.host, target.namespace, target.baseline, target.canary, reporter)
    found = operator_queries(
        scope,
        error_classes=tuple(m.errors for m in loaded.metrics if isinstance(m, ErrorRateMetric)) or ("5xx",),
        quantiles=tuple(q.quantile for m in loaded.metrics if isinstance(m, LatencyMetric) for q in m.quantiles),
        custom=tuple((m.name, m.events, m.total) for m in loaded.metrics if isinstance(m, CustomRatioMetric)),
        window=window,
    )
    if output is OutputFormat.json:
        typer.echo(
            json.dumps([{"name": q.name, "description": q.description, "promql": q.promql} for q in found], indent=2)
        )
        return
    for query in found:
        typer.echo(f"# {query.name}: {query.description}\n{query.promql}\n")


@app.command()
def alerts(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    reporter: Annotated[str, typer.Option(help="Istio reporter to count.")] = "destination",
) -> None:
    """Print Prometheus alerting rules (HighErrorRate, HighLatency) for the canary, from the policy."""
    try:
        typer.echo(alert_rules(load_policy(policy), reporter=reporter), nl=False)
    except CanaryError as exc:
        raise _fail(str(exc)) from None


def _actor(given: str | None) -> str:
    if given:
        return given
    try:
        return f"user:{getpass.getuser()}"
    except (KeyError, OSError):
        return "user:unknown"


def _stored_router(policy: Policy, manifest: str | None, kubeconfig: str | None, context: str | None) -> Router:
    """The router of a command that acts on weights someone keeps: in memory there would be nothing to see."""
    if not (manifest or kubeconfig or context):
        raise CanaryError("say where the weights live: --manifest FILE or --kubeconfig FILE")
    return router_for(policy, manifest, kubeconfig, context)


def _manual(
    policy: str,
    weights: tuple[str | None, str | None, str | None],
    audit: str | None,
    actor: str | None,
    reason: str,
    promote: bool,
) -> None:
    try:
        loaded = load_policy(policy)
        before, decision = manual_change(
            policy=loaded,
            router=_stored_router(loaded, *weights),
            audit=open_audit(loaded, audit),
            clock=SystemClock(),
            promote=promote,
            actor=_actor(actor),
            reason=reason,
        )
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    typer.echo(
        f"{loaded.target.namespace}/{loaded.target.virtual_service}: canary {before.canary}% -> "
        f"{decision.weights.canary}% ({decision.action.value}, recorded in {audit_path_for(loaded, audit)})"
    )


ManualActor = Annotated[str | None, typer.Option(help="Who acts, for the audit log (default: user:$USER).")]
ManualReason = Annotated[str, typer.Option(help="Why, for the audit log.")]
StoredManifest = Annotated[
    str | None, typer.Option(help="VirtualService manifest file that holds the weights (or --kubeconfig).")
]


@app.command()
def promote(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    manifest: StoredManifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    audit: Annotated[str | None, typer.Option(help="Audit log file (default: the policy's).")] = None,
    actor: ManualActor = None,
    reason: ManualReason = "",
) -> None:
    """Send all traffic to the canary by hand; the audit record is written before the weights change."""
    _manual(policy, (manifest, kubeconfig, context), audit, actor, reason, promote=True)


@app.command()
def rollback(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    manifest: StoredManifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    audit: Annotated[str | None, typer.Option(help="Audit log file (default: the policy's).")] = None,
    actor: ManualActor = None,
    reason: ManualReason = "",
) -> None:
    """Send all traffic back to the baseline by hand; recorded before the weights change."""
    _manual(policy, (manifest, kubeconfig, context), audit, actor, reason, promote=False)


@app.command()
def status(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    manifest: StoredManifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    output: Annotated[OutputFormat, typer.Option(help="text or json.")] = OutputFormat.text,
) -> None:
    """Print the current baseline/canary weights of the policy's route."""
    try:
        loaded = load_policy(policy)
        weights = _stored_router(loaded, manifest, kubeconfig, context).get_weights(loaded.target)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    target = loaded.target
    if output is OutputFormat.json:
        doc = {"target": f"{target.namespace}/{target.virtual_service}", target.baseline: weights.baseline,
               target.canary: weights.canary}  # fmt: skip
        typer.echo(json.dumps(doc))
    else:
        typer.echo(
            f"{target.namespace}/{target.virtual_service}: {target.baseline} {weights.baseline}%, "
            f"{target.canary} {weights.canary}%"
        )


@app.command()
def validate(policy: Annotated[str, typer.Argument(help="Policy file to check.")]) -> None:
    """Check a policy file; prints one line naming file, field and line on the first mistake."""
    try:
        loaded = load_policy(policy)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    metrics = ", ".join(m.name for m in loaded.metrics)
    steps = " -> ".join(f"{s}%" for s in loaded.steps)
    typer.echo(f"{policy}: valid CanaryPolicy {loaded.name!r}: steps {steps}, metrics {metrics}")


@audit_app.command("show")
def audit_show(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    rollout: Annotated[str | None, typer.Option(help="Only this rollout id.")] = None,
    output: Annotated[OutputFormat, typer.Option(help="text or json (one record per line).")] = OutputFormat.text,
) -> None:
    """Print the decisions of an audit log: when, who, what moved, and why."""
    try:
        for record in read_records(file):
            if rollout and record.get("rollout") != rollout:
                continue
            if output is OutputFormat.json:
                typer.echo(json.dumps(record, sort_keys=True))
                continue
            before, after = record.get("weights_before", {}), record.get("weights_after", {})
            tick = f" tick {record['tick']}" if record.get("tick") is not None else ""
            typer.echo(
                f"{record.get('time')} {record.get('rollout')}{tick} "
                f"{record.get('action')}: canary {before.get('canary')}% -> {after.get('canary')}% "
                f"by {record.get('actor')}: {record.get('reason')}"
            )
            for verdict in (record.get("judgement") or {}).get("verdicts", []):
                typer.echo(f"    {verdict.get('outcome'):>8}  {verdict.get('summary')}")
    except CanaryError as exc:
        raise _fail(str(exc)) from None


@audit_app.command("verify")
def audit_verify(file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")]) -> None:
    """Check the hash chain: exit 0 when no record was removed or edited."""
    try:
        check = verify_chain(file)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if not check.ok:
        raise _fail(f"{file}:{check.broken_at}: the hash chain breaks here (a record was edited or removed)", 1)
    typer.echo(f"{file}: {check.records} records, hash chain intact")


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # a bug or an unforeseen input: one line and exit 2, never "rolled back" (1)
        print(f"canary: internal error: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


__all__ = ["app", "main", "summary"]
