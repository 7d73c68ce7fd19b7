"""The command line: parse, build (through app), call, and map outcomes and errors to exit codes.

Exit codes: 0 promoted / pass, 1 rolled back / fail, 2 configuration or infrastructure error, 3
inconclusive at the deadline, 4 cancelled by a signal (the weights left as they stood; `run --resume`
carries on). A user mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import dataclasses
import functools
import getpass
import inspect
import json
import logging
import math
import os
import signal
import string
import sys
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from typer._click import exceptions as usage  # the click typer carries (typer vendors its own)

from canary import __version__, secrets
from canary.alerts import alert_rules
from canary.analysis import AnalysisResult, intervals, parse_time
from canary.app import (
    audit_path_for,
    judge_for,
    manual_runner,
    open_audit,
    prometheus_analysis,
    prometheus_rollout,
    router_for,
    simulated_rollout,
)
from canary.audit import HEAD_DIGITS, AuditLog, read_records, verify_chain
from canary.controller import DEFAULT_LOCK_TIMEOUT_S, CancelFlag, RolloutResult, Runner, TickReport, recorded_until
from canary.display import Progress, elsewhere_line, summary
from canary.errors import CanaryError, Cancelled
from canary.links import reader_links
from canary.model import Decision, Phase
from canary.notices import Notice, event_of
from canary.notifier import Failure, Notifier
from canary.outputs import NotRegularFile, ReadOnlyFile, replace_file
from canary.planning import POWER as PLAN_POWER
from canary.planning import SEEDS as PLAN_SEEDS
from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, Policy, load_policy
from canary.promql import DEFAULT_REPORTER, REPORTERS, Scope, operator_queries
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord
from canary.report import elapsed, iso, judgement_dict, version_counts
from canary.routers import Router
from canary.routers.virtualservice import also_to_canary
from canary.scenario import BUILTIN_SCENARIOS, builtin_scenario, resolve_scenario
from canary.sources.prometheus import PrometheusSettings
from canary.sources.simulated import SimulatedMesh
from canary.state import RolloutState
from canary.streams import GuardedStream, problem
from canary.transition import ManualCommand

EXIT_PROMOTED, EXIT_ROLLED_BACK, EXIT_ERROR, EXIT_INCONCLUSIVE, EXIT_CANCELLED = 0, 1, 2, 3, 4
PHASE_EXIT = {
    Phase.PROMOTED: EXIT_PROMOTED,
    Phase.ROLLED_BACK: EXIT_ROLLED_BACK,
    Phase.INCONCLUSIVE: EXIT_INCONCLUSIVE,
    Phase.ABORTED: EXIT_ERROR,
    Phase.PROGRESSING: EXIT_ERROR,
    Phase.PAUSED: EXIT_ERROR,
    Phase.WAITING: EXIT_ERROR,
    Phase.CANCELLED: EXIT_CANCELLED,
}

app = typer.Typer(
    name="canary",
    help="Canary analysis for Istio: shift VirtualService weights from v1 to v2 on statistical evidence.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain usage errors (main() makes them one line)
)
audit_app = typer.Typer(help="Read and verify audit logs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(audit_app, name="audit")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"canary {__version__}")
        raise typer.Exit(0)


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", help="Print canary's version (the installed package's) and exit.", is_eager=True,
                     callback=_print_version),
    ] = False,
) -> None:  # fmt: skip
    """Options that come before the command: --version."""


class OutputFormat(StrEnum):
    text = "text"
    json = "json"


class ExportFormat(StrEnum):
    csv = "csv"
    json = "json"


Scenario = StrEnum("Scenario", {name: name for name in BUILTIN_SCENARIOS})  # type: ignore[misc]


# ------------------------------------------------------------------------------ Prometheus options

# The connection options of the Prometheus source, declared once and added to every command that reads
# Prometheus by `prometheus_options`. Secrets come from files or environment variables only, so they
# never appear in a process list or a shell history.
_PROMETHEUS_OPTIONS: list[tuple[str, Any, Any]] = [
    ("url", Annotated[str | None, typer.Option("--prometheus-url", envvar="CANARY_PROMETHEUS_URL",
                                               help="Prometheus base URL.")], None),
    ("timeout", Annotated[float, typer.Option("--prometheus-timeout", help="Seconds per query.")], 10.0),
    ("retries", Annotated[int, typer.Option("--prometheus-retries", help="Retries on connection errors and 5xx.")], 2),
    ("token_file", Annotated[str | None, typer.Option("--prometheus-token-file", help="File with a bearer token.")],
     None),
    ("token_env", Annotated[str | None, typer.Option("--prometheus-token-env", help="Env var with a bearer token.")],
     None),
    ("user", Annotated[str | None, typer.Option("--prometheus-user", help="Basic auth user.")], None),
    ("password_file", Annotated[str | None, typer.Option("--prometheus-password-file",
                                                         help="File with the password.")], None),
    ("password_env", Annotated[str | None, typer.Option("--prometheus-password-env",
                                                        help="Env var with the password.")], None),
    ("ca_file", Annotated[str | None, typer.Option("--prometheus-ca-file", help="CA bundle for TLS.")], None),
    ("insecure", Annotated[bool, typer.Option("--prometheus-insecure", help="Do not verify TLS certificates.")],
     False),
    ("header", Annotated[list[str] | None, typer.Option("--prometheus-header",
                                                        help="Extra header 'Name: value' (repeatable).")], None),
    ("pod_label", Annotated[str | None, typer.Option(
        "--prometheus-pod-label",
        help="Label naming the pod (default: pod; destination_workload with another reporter).")], None),
    ("reporter", Annotated[str, typer.Option("--prometheus-reporter", help="Istio reporter to count.")],
     "destination"),
    ("delay", Annotated[float, typer.Option("--prometheus-delay",
                                            help="Read each window this many seconds late (scrape lag).")], 0.0),
]  # fmt: skip


@dataclass(frozen=True)
class PrometheusOptions:
    """The --prometheus-* options as given."""

    values: dict[str, Any]

    @property
    def url(self) -> str | None:
        url = self.values["url"]
        return str(url) if url else None

    def settings(self) -> PrometheusSettings:
        o = self.values
        assert self.url is not None
        pod_label = o["pod_label"]
        if pod_label is None and o["reporter"] in REPORTERS and o["reporter"] != DEFAULT_REPORTER:
            pod_label = "destination_workload"
            typer.echo(
                f"canary: with --prometheus-reporter {o['reporter']} the `pod` label names the reporting proxy's pod "
                "(the caller's or the waypoint's), not the service's: counting per destination_workload, so the "
                "between-pod check is off (--prometheus-pod-label chooses another label)",
                err=True,
            )
        return PrometheusSettings.from_options(
            self.url,
            timeout_s=o["timeout"],
            retries=o["retries"],
            bearer_token_file=o["token_file"],
            bearer_token_env=o["token_env"],
            basic_auth_user=o["user"],
            basic_auth_password_file=o["password_file"],
            basic_auth_password_env=o["password_env"],
            ca_file=o["ca_file"],
            insecure=o["insecure"],
            headers=o["header"] or (),
            pod_label=pod_label or "pod",
            reporter=o["reporter"],
            delay_s=o["delay"],
        )


def prometheus_options(command: Any) -> Any:
    """Give a command the --prometheus-* options; it receives them as `prometheus: PrometheusOptions`."""
    signature = inspect.signature(command, eval_str=True)
    own = [p for p in signature.parameters.values() if p.name != "prometheus"]
    added = [
        inspect.Parameter(f"prometheus_{name}", inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
        for name, kind, default in _PROMETHEUS_OPTIONS
    ]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        values = {name: kwargs.pop(f"prometheus_{name}") for name, _, _ in _PROMETHEUS_OPTIONS}
        return command(**kwargs, prometheus=PrometheusOptions(values))

    wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # type: ignore[attr-defined]
    return wrapper


# ------------------------------------------------------------------------------ shared options


def _named(value: str | None) -> str | None:
    """An option that names something (a file, a context, an actor, a rollout) names one: `--manifest ""` (an
    unset shell variable) must not fall back to keeping the weights in memory, `--audit ""` to the policy's
    default log, nor `--actor ""` to this login."""
    if value is not None and not value.strip():
        raise typer.BadParameter("is empty; name one (or leave the option out)")
    return value


def bounded(low: float, high: float) -> dict[str, Any]:
    """A float option's range, for its help (min, max) and its parser: typer's own check lets NaN through to a
    message that says "should be less than or equal to" of a value that is no number at all."""

    def parse(value: object) -> float:
        try:
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            number = None
        if number is None or not low <= number <= high:  # NaN is in no range
            what = "not a number" if number is None or math.isnan(number) else "out of range"
            raise typer.BadParameter(f"expected a number from {low:.15g} to {high:.15g}, got {safe(value)!r} ({what})")
        return number

    return {"min": low, "max": high, "parser": parse}


Manifest = Annotated[
    str | None,
    typer.Option(help="VirtualService manifest file that holds the weights and the rollout state.", callback=_named),
]
Kubeconfig = Annotated[
    str | None,
    typer.Option(
        help="Move the VirtualService's weights in the cluster this kubeconfig file names (not with --manifest).",
        callback=_named,
    ),
]
Context = Annotated[
    str | None,
    typer.Option(help="The kubeconfig context to use (default: its current context).", callback=_named),
]
AuditFile = Annotated[str | None, typer.Option(help="Audit log file (default: the policy's).", callback=_named)]
LockTimeout = Annotated[
    float,
    typer.Option(
        help="Seconds to wait for another canary command on the same audit log to finish.", **bounded(0, 3600)
    ),
]
Seed = Annotated[int, typer.Option(help="Random seed of the simulated mesh.", min=0, max=2**32 - 1)]
MetricsPort = Annotated[
    int | None,
    typer.Option(help="Serve canary's own Prometheus metrics on this port while the rollout runs.", min=1, max=65535),
]
MetricsAddress = Annotated[str, typer.Option(help="Address the metrics server listens on (0.0.0.0: every one).")]
MetricsLinger = Annotated[
    float,
    typer.Option(
        help="Seconds the metrics stay served after the rollout ends, so Prometheus scrapes the outcome (a "
        "signal ends the wait).",
        **bounded(0, 3600),
    ),
]
Output = Annotated[OutputFormat, typer.Option(help="text or json.")]


def _fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    typer.echo(f"canary: {safe(secrets.scrub(message))}", err=True)
    return typer.Exit(code)


def _warn(message: str) -> None:
    """A reader's word on a torn last line (the records before it are shown, and the tear named) or on a
    record where the log stops verifying (the records are shown as written)."""
    typer.echo(f"canary: warning: {safe(message)}", err=True)


def safe(text: object) -> str:
    """Text from a record or a person, fit for a terminal: control and invisible formatting characters
    (a newline in a --reason, an ANSI escape, a bidi override) are shown escaped, so none can forge a line."""
    out = []
    for ch in str(text):
        if ch in "\n\t\r" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(ch.encode("unicode_escape").decode("ascii"))
        else:
            out.append(ch)
    return "".join(out)


# ------------------------------------------------------------------------------ rollouts


def _recorded_judgement(result: RolloutResult) -> DecisionRecord | None:
    """The log's last judged decision of a rollout that had ended before this command (None otherwise)."""
    from canary.auditing import latest_decision

    if not result.earlier or result.judgement is not None or not Path(result.audit_path).exists():
        return None
    return latest_decision(read_records(result.audit_path, _warn), result.rollout)


def result_json(result: RolloutResult, policy_name: str, recorded: dict[str, Any] | None = None) -> dict[str, Any]:
    """The outcome as `run --output json` prints it; `recorded`: the log's judgement of an earlier-ended one."""
    return {
        "outcome": result.phase.value,
        "exit_code": exit_code(result),
        "policy": policy_name,
        "rollout": result.rollout,
        "reason": result.decision.reason,
        "final_weights": {
            "baseline": result.decision.weights.baseline,
            "canary": result.decision.weights.canary,
        },
        "ticks": result.ticks,
        "started": iso(result.started_at),  # ISO 8601, as status gives its times
        "finished": iso(result.finished_at),
        "duration_s": result.duration_s,
        "step_seconds": list(result.step_seconds),
        "judgement": judgement_dict(result.judgement) if result.judgement else recorded,
        "audit": result.audit_path,
        "audit_head": result.audit_head,
        "stopped": result.stopped,
        "ended_before": result.earlier,  # `--resume` found it ended: nothing was run
        "release": result.release or None,
        "canary_elsewhere": list(result.elsewhere),
        "engine_version": __version__,
    }


def exit_code(result: RolloutResult) -> int:
    return EXIT_ERROR if result.stopped else PHASE_EXIT[result.phase]


NOTIFY_FLUSH_S = 10.0  # how long a run that ended waits for its last notifications
METRICS_LINGER_S = 30.0  # two scrapes at Prometheus' common 15 s interval


@dataclass(frozen=True)
class Serving:
    """Where canary's own metrics are served during a run (`--metrics-port`, `--metrics-address`)."""

    port: int
    address: str = "127.0.0.1"
    linger_s: float = 0.0  # served this long after the end, so a scrape sees how the rollout ended


@dataclass(frozen=True)
class Opening:
    """How `run` opens its rollout: `--resume`, `--restart`, `--release`."""

    resume: bool = False
    restart: bool = False
    release: str = ""


def _linger(cancel: CancelFlag, seconds: float) -> None:
    """Wait `seconds` (a signal ends the wait) with the metrics still served."""
    until = time.monotonic() + seconds
    while not cancel.is_set and (left := until - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))


def _follow(
    runner: Runner, policy_name: str, output: OutputFormat, title: str, opening: Opening,
    metrics: Serving | None = None,
) -> int:  # fmt: skip
    """Run (or resume) a rollout to its end, showing progress (or printing the JSON outcome); the exit code.
    SIGTERM and SIGINT end the current tick cleanly and record the rollout as cancelled."""
    observers: list[Callable[[TickReport], None]] = []
    notifier = _notifier(runner, observers)  # its URLs are read (or refused) before anything else starts
    stop_serving: Callable[[], None] | None = None
    if metrics is not None:
        from canary.engine_metrics import EngineMetrics

        engine = EngineMetrics(policy_name)
        try:
            stop_serving = engine.serve(metrics.port, metrics.address)
        except OSError as exc:
            raise CanaryError(f"--metrics-port {metrics.port}: cannot listen on {metrics.address}: "
                              f"{exc.strerror or exc}") from None  # fmt: skip
        observers.append(lambda report: engine.observe(report, report.seconds))
    restore = runner.cancel_flag.install()
    try:
        if output is OutputFormat.json:
            result = _closed(runner, notifier, runner.run(_fan_out(observers), **vars(opening)))
            recorded = _recorded_judgement(result)
            doc = result_json(result, policy_name, recorded.judgement if recorded is not None else None)
            typer.echo(secrets.scrub(json.dumps(doc, indent=2, default=str)))
        else:
            progress = Progress(title)
            try:
                result = runner.run(_fan_out([progress.update, *observers]), **vars(opening))
            except BaseException:
                progress.stop()
                raise
            recorded = _recorded_judgement(result)
            verdicts = [str(v.get("summary")) for v in recorded.verdicts] if recorded is not None else []
            progress.finish(_closed(runner, notifier, result), verdicts)
        if metrics is not None:
            sys.stdout.flush()  # the outcome is out before the wait
            _linger(runner.cancel_flag, metrics.linger_s)
    finally:
        restore()
        if stop_serving is not None:
            stop_serving()
        if notifier is not None:
            notifier.close(flush_s=0)  # a run that raised: nothing more is waited for
    return exit_code(result)


def _notifier(runner: Runner, observers: list[Callable[[TickReport], None]]) -> Notifier | None:
    """The policy's webhooks told of each event; a failed delivery becomes a note in the log at the next
    tick, never a change to the rollout."""
    if not runner.policy.notifications:
        return None
    notifier = Notifier(runner.policy.notifications)
    was: list[Phase] = []  # the phase the last tick left: "waiting" is told once, when the wait begins

    def tell(report: TickReport) -> None:
        event = event_of(report.decision, was[-1] if was else None)
        was.append(report.decision.phase)
        if event is not None and runner.state is not None:
            notifier.notify(_notice(runner.policy, event, runner.state, report.decision, report.now))
        _record_failures(runner, notifier.take_failures())

    observers.append(tell)
    return notifier


def _notice(policy: Policy, event: str, state: RolloutState, decision: Decision, now: float) -> Notice:
    return Notice(event, policy.name, state.rollout, now, decision, state.step_index, policy.target.host)


def _closed(runner: Runner, notifier: Notifier | None, result: RolloutResult) -> RolloutResult:
    """The run's result once its notifications were sent (waiting a bounded time), failures recorded."""
    if notifier is None:
        return result
    head = _record_failures(runner, notifier.close(flush_s=NOTIFY_FLUSH_S))
    return dataclasses.replace(result, audit_head=head) if head else result


def _record_failures(runner: Runner, failures: list[Failure]) -> str | None:
    """One note per failed delivery; the log's head after them (None: nothing to record)."""
    if not failures:
        return None
    sealed = None
    rollout = runner.state.rollout if runner.state is not None else None
    with runner.audit.locked(runner.lock_timeout_s):
        for failure in failures:
            note = f"notification {failure.target!r} of {failure.event} not delivered: {failure.reason}"
            sealed = runner.audit.append(NoteRecord(runner.clock.now(), note, "canary-notifier", rollout))
    return sealed.hash if sealed is not None else None


def _fan_out(observers: list[Callable[[TickReport], None]]) -> Callable[[TickReport], None] | None:
    if not observers:
        return None

    def each(report: TickReport) -> None:
        for observe in observers:
            observe(report)

    return each


def _run_simulated(
    policy_file: str,
    scenario_spec: str,
    seed: int,
    audit: str | None,
    output: OutputFormat,
    title: str,
    weights: tuple[str | None, str | None, str | None] = (None, None, None),
    opening: Opening = Opening(),
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT_S,
    metrics: Serving | None = None,
) -> int:
    """`weights` is where they live: (manifest, kubeconfig, context)."""
    policy = load_policy(policy_file)
    scenario = resolve_scenario(scenario_spec)
    router = router_for(policy, *weights)
    log = open_audit(policy, audit)
    rollout = simulated_rollout(
        policy, scenario, seed=seed, audit=log, router=router,
        start=_simulated_start(router, policy, log, lock_timeout), lock_timeout_s=lock_timeout,
        resumed=opening.resume,
    )  # fmt: skip
    return _follow(rollout.runner, policy.name, output, title, opening, metrics)


def _simulated_start(router: Router, policy: Policy, audit: AuditLog, lock_timeout: float) -> float | None:
    """Simulated time goes on from the route's last decision or the log's last record, whichever is later (a
    resumed rollout from where it stood, a new one after the one before it), so the log's times never go
    backwards."""
    state = router.read(policy.target).state
    with audit.locked(lock_timeout):
        return recorded_until(state, audit.last())


@app.command()
def demo(
    scenario: Annotated[Scenario, typer.Option(help="Which built-in simulated canary to roll out.")] = "healthy",  # type: ignore[assignment]
    policy: Annotated[str, typer.Option(help="Policy file.")] = "policies/web-app.yaml",
    seed: Seed = 1,
    audit: AuditFile = None,
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
@prometheus_options
def run(
    policy: Annotated[str, typer.Argument(help="Policy file (YAML, kind CanaryPolicy).")],
    simulate: Annotated[
        str | None,
        typer.Option(help="Run on the simulated mesh: a built-in scenario name or a scenario JSON file."),
    ] = None,
    seed: Seed = 1,
    audit: AuditFile = None,
    output: Annotated[OutputFormat, typer.Option(help="text (live progress) or json.")] = OutputFormat.text,
    manifest: Manifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    resume: Annotated[
        bool,
        typer.Option(
            help="Carry on the rollout the route's state holds (after a crash or a cancel); start one "
            "if there is none; report an ended one without changing anything."
        ),
    ] = False,
    restart: Annotated[
        bool, typer.Option(help="Abandon the open rollout the route's state holds (recorded) and start a new one.")
    ] = False,
    release: Annotated[
        str | None,
        typer.Option(
            help="What this rollout rolls out (an image tag, a commit): with --resume, an ended rollout of another "
            "release is followed by a new one, and one still open is refused.",
            callback=_named,
        ),
    ] = None,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT_S,
    metrics_port: MetricsPort = None,
    metrics_address: MetricsAddress = "127.0.0.1",
    metrics_linger: MetricsLinger = METRICS_LINGER_S,
    *,
    prometheus: PrometheusOptions,
) -> None:
    """Run a rollout to its end (blocking): 0 promoted, 1 rolled back, 2 error, 3 inconclusive, 4 cancelled."""
    metrics = Serving(metrics_port, metrics_address, metrics_linger) if metrics_port is not None else None
    try:
        url = prometheus.url
        if simulate is not None and url == os.environ.get("CANARY_PROMETHEUS_URL"):
            url = None  # an explicit --simulate outranks the environment's default URL
        if simulate is not None and url:
            raise CanaryError("choose one metrics source: --simulate or --prometheus-url, not both")
        if resume and restart:
            raise CanaryError("choose --resume (carry on the open rollout) or --restart (start over), not both")
        if (resume or restart) and not (manifest or kubeconfig):
            flag = "--resume" if resume else "--restart"
            raise CanaryError(f"{flag} needs the route's state where a restart finds it: --manifest or --kubeconfig")
        weights, opening = (manifest, kubeconfig, context), Opening(resume, restart, release or "")
        if url:
            settings = PrometheusOptions({**prometheus.values, "url": url}).settings()
            raise typer.Exit(_run_prometheus(policy, settings, audit, output, weights, opening, lock_timeout, metrics))
        if simulate is None:
            raise CanaryError(
                "choose a metrics source: --prometheus-url URL, or --simulate SCENARIO (the embedded simulated mesh)"
            )
        title = f"canary run {policy} on the simulated mesh ({simulate})"
        raise typer.Exit(
            _run_simulated(policy, simulate, seed, audit, output, title, weights, opening, lock_timeout, metrics)
        )
    except Cancelled as exc:
        _error_json(output, policy, "cancelled", EXIT_CANCELLED, exc)
        raise _fail(str(exc), EXIT_CANCELLED) from None
    except CanaryError as exc:
        _error_json(output, policy, "error", EXIT_ERROR, exc)
        raise _fail(str(exc)) from None


def _error_json(output: OutputFormat, policy: str, outcome: str, code: int, exc: CanaryError) -> None:
    """With --output json, a run that ends before any rollout outcome still prints one document on stdout, so a
    pipeline's `jq -r .outcome` reads "error" (or "cancelled") and not an empty file; the line on stderr stays."""
    if output is OutputFormat.json:
        doc = {"outcome": outcome, "exit_code": code, "policy_file": policy, "error": secrets.scrub(str(exc)),
               "engine_version": __version__}  # fmt: skip
        typer.echo(json.dumps(doc, indent=2))


def _run_prometheus(
    policy_file: str,
    settings: PrometheusSettings,
    audit: str | None,
    output: OutputFormat,
    weights: tuple[str | None, str | None, str | None],
    opening: Opening,
    lock_timeout: float,
    metrics: Serving | None = None,
) -> int:
    """`weights` is where they live: (manifest, kubeconfig, context)."""
    policy = load_policy(policy_file)
    router = router_for(policy, *weights)
    rollout = prometheus_rollout(
        policy, settings, audit=open_audit(policy, audit), router=router, lock_timeout_s=lock_timeout
    )
    manifest, kubeconfig, _ = weights
    where = "weights in " + (manifest or (kubeconfig and f"the cluster of {kubeconfig}") or "memory")
    title = f"canary run {policy_file} on Prometheus at {settings.safe_url} ({where})"
    try:
        return _follow(rollout.runner, policy.name, output, title, opening, metrics)
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
@prometheus_options
def analyze(
    policy: Annotated[str, typer.Argument(help="Policy file (YAML, kind CanaryPolicy).")],
    start: Annotated[
        str | None, typer.Option(help="Window start: now, -30m, unix seconds or ISO 8601 (default: 10 intervals ago).")
    ] = None,
    end: Annotated[str, typer.Option(help="Window end: now, -5m, unix seconds or ISO 8601.")] = "now",
    output: Output = OutputFormat.text,
    *,
    prometheus: PrometheusOptions,
) -> None:
    """Judge v2 against v1 over a past or current window; no weights move. 0 pass, 1 fail, 3 inconclusive, 2 error."""
    try:
        if not prometheus.url:
            raise CanaryError("canary analyze reads Prometheus: give --prometheus-url URL")
        settings = prometheus.settings()
        loaded = load_policy(policy)
        now = time.time()
        try:
            until = parse_time(end, now)
            since = parse_time(start, now) if start is not None else until - 10 * loaded.interval_s
            intervals(loaded, since, until)  # before Prometheus is asked anything
        except ValueError as exc:
            raise CanaryError(str(exc)) from None
        if until > now:
            raise CanaryError(f"the window ends at {iso(until)}, in the future: give --end now or an earlier time")
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
            if "requests" not in counts:
                typer.echo(f"  {version}: no data")
                continue
            typer.echo(
                f"  {version}: {counts['requests']} requests, {counts.get('errors', '-')} errors, "
                f"{counts.get('pods', 0)} pod{'' if counts.get('pods', 0) == 1 else 's'}"
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
        target = loaded.target
        found = operator_queries(
            Scope.of(target.scope, reporter),
            error_classes=tuple(m.errors for m in loaded.metrics if isinstance(m, ErrorRateMetric)) or ("5xx",),
            quantiles=tuple(q.quantile for m in loaded.metrics if isinstance(m, LatencyMetric) for q in m.quantiles),
            custom=tuple((m.name, m.events, m.total) for m in loaded.metrics if isinstance(m, CustomRatioMetric)),
            window=window,
        )
    except ValueError as exc:  # the window or the reporter
        raise _fail(f"--{'window' if 'window' in str(exc) else 'reporter'}: {exc}") from None
    except CanaryError as exc:
        raise _fail(str(exc)) from None
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
    except ValueError as exc:
        raise _fail(f"--reporter: {exc}") from None
    except CanaryError as exc:
        raise _fail(str(exc)) from None


def _actor(given: str | None) -> str:
    if given is not None:
        return given  # _named refused an empty one: an unset $CI_USER must not be recorded as this login
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
    command: ManualCommand,
    policy: str,
    weights: tuple[str | None, str | None, str | None],
    audit: str | None,
    actor: str | None,
    reason: str,
    output: OutputFormat,
    lock_timeout: float,
    full: bool = False,
) -> None:
    try:
        loaded = load_policy(policy)
        who = _actor(actor)
        runner = manual_runner(
            loaded, _stored_router(loaded, *weights), open_audit(loaded, audit, who), lock_timeout_s=lock_timeout
        )
        notifier = Notifier(loaded.notifications) if loaded.notifications else None  # URLs read before any change
        try:
            applied = runner.manual(command, actor=who, reason=reason, full=full)
        except BaseException:
            if notifier is not None:
                notifier.close(flush_s=0)
            raise
        if notifier is not None:
            event = event_of(applied.decision)
            if event is not None:
                notifier.notify(_notice(loaded, event, applied.state, applied.decision, runner.clock.now()))
            head = _record_failures(runner, notifier.close(flush_s=NOTIFY_FLUSH_S))
            applied = dataclasses.replace(applied, head=head or applied.head)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    target = loaded.target
    before, after = applied.before, applied.decision.weights
    if output is OutputFormat.json:
        doc = {
            "target": f"{target.namespace}/{target.virtual_service}",
            "action": applied.decision.action.value,
            "rollout": applied.state.rollout,
            "phase": applied.state.phase.value,
            "weights_before": {"baseline": before.baseline, "canary": before.canary} if before else None,
            "weights_after": {"baseline": after.baseline, "canary": after.canary},
            "actor": who,
            "audit": str(audit_path_for(loaded, audit)),
            "audit_head": applied.head,
            "canary_elsewhere": list(applied.elsewhere),
        }
        typer.echo(json.dumps(doc))
        return
    was = f"{before.canary}%" if before else "?%"
    moved = f"canary stays at {after.canary}%" if before == after else f"canary {was} -> {after.canary}%"
    typer.echo(
        f"{target.namespace}/{target.virtual_service}: {moved} "
        f"({applied.decision.action.value} by {safe(who)}, rollout {applied.state.rollout}; recorded in "
        f"{audit_path_for(loaded, audit)}, head {applied.head})"
    )
    if applied.elsewhere:
        typer.echo(safe(elsewhere_line(applied.elsewhere)))


ManualActor = Annotated[
    str | None, typer.Option(help="Who acts, for the audit log (default: user:$USER).", callback=_named)
]
ManualReason = Annotated[str, typer.Option(help="Why, for the audit log.")]
StoredManifest = Annotated[
    str | None,
    typer.Option(help="VirtualService manifest file that holds the weights (or --kubeconfig).", callback=_named),
]


MANUAL_HELP: dict[ManualCommand, str] = {
    "rollback": "Send all traffic back to the baseline by hand; recorded before and after the weights change. A "
    "rollout running on the route ends rolled back at its next tick.",
    "pause": "Pause the route's rollout: the weights stay, no step is taken and the deadline stops until `canary "
    "continue`; a canary shown worse than tolerated is still rolled back. A running rollout sees it at its next "
    "tick.",
    "continue": "Let a paused rollout go on (not the crash `run --resume`): the deadline moves by the time it was "
    "paused.",
    "approve": "Approve the rollout's next step (a weight the policy's `approvals` gates): a rollout waiting for "
    "it moves there at its next tick; approved ahead of time, it moves on without waiting.",
}


@app.command()
def promote(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    manifest: StoredManifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    audit: AuditFile = None,
    actor: ManualActor = None,
    reason: ManualReason = "",
    full: Annotated[bool, typer.Option("--full", help="Straight to 100%, with or without a rollout.")] = False,
    output: Output = OutputFormat.text,
    lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT_S,
) -> None:
    """Move the route's open rollout to its next step by hand, past any gate (with --full: send all traffic to
    the canary); recorded before and after the weights change. A rollout running on the route judges the new
    step from its next tick (promoted to 100%, it ends)."""
    _manual("promote", policy, (manifest, kubeconfig, context), audit, actor, reason, output, lock_timeout, full)


def _manual_command(command: ManualCommand) -> None:
    """One verb a person runs on the route: the same options for each, recorded with actor and reason."""

    def verb(
        policy: Annotated[str, typer.Argument(help="Policy file.")],
        manifest: StoredManifest = None,
        kubeconfig: Kubeconfig = None,
        context: Context = None,
        audit: AuditFile = None,
        actor: ManualActor = None,
        reason: ManualReason = "",
        output: Output = OutputFormat.text,
        lock_timeout: LockTimeout = DEFAULT_LOCK_TIMEOUT_S,
    ) -> None:
        _manual(command, policy, (manifest, kubeconfig, context), audit, actor, reason, output, lock_timeout)

    verb.__doc__ = MANUAL_HELP[command]
    app.command(command)(verb)


for _command in MANUAL_HELP:
    _manual_command(_command)


@app.command()
def status(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    manifest: StoredManifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    audit: AuditFile = None,
    output: Output = OutputFormat.text,
) -> None:
    """Print the route's weights and the rollout state beside them: phase, step, time in it, and each check's
    latest evidence from the audit log, with about how long it needs to decide at the current traffic."""
    try:
        loaded = load_policy(policy)
        read = _stored_router(loaded, manifest, kubeconfig, context).read(loaded.target)
        state = read.state
        checks, judged_at = _check_outlook(loaded, audit, state) if state is not None else ([], None)
        history = _history_problem(loaded, audit, state)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if history is not None:
        _warn(history)
    target, weights = loaded.target, read.weights
    elsewhere = also_to_canary(read.document, target)
    links = reader_links(loaded, state.started_at, state.last.time) if state is not None else []
    # Time in the step by the controller's clock (its last judged tick; a person's command may come on another
    # clock, as after a simulated run); none once the rollout has ended.
    in_step = None
    if state is not None and not state.phase.ended:
        in_step = ((judged_at or state.last.time) - state.step_started_at) / 60
    if output is OutputFormat.json:
        # By subset, as the text says them; the document's own keys, set after, win over a subset so named.
        doc: dict[str, Any] = {target.baseline: weights.baseline, target.canary: weights.canary}
        doc |= {
            "target": f"{target.namespace}/{target.virtual_service}",
            "weights": {"baseline": weights.baseline, "canary": weights.canary},  # by role, as every command
            "rollout": None,
        }
        if state is not None:
            doc["rollout"] = {
                "id": state.rollout, "phase": state.phase.value, "step": state.step_index, "steps": list(state.steps),
                "tick": state.tick, "started": iso(state.started_at), "deadline": iso(state.deadline),
                "last": {"time": iso(state.last.time), "action": state.last.action.value,
                         "reason": state.last.reason, "actor": state.last.actor},
                "audit_head": state.audit_head,
                "minutes_in_step": in_step,
                "checks": checks,
                "links": {label: url for label, url in links},
            }  # fmt: skip
        if read.state_error:
            doc["state_error"] = read.state_error
        doc["audit_problem"] = history
        doc["canary_elsewhere"] = list(elsewhere)
        typer.echo(json.dumps(doc))
        if read.state_error:  # the weights are shown, but the route's rollout cannot be told: not a clean read
            raise typer.Exit(EXIT_ERROR)
        return
    typer.echo(
        f"{target.namespace}/{target.virtual_service}: {target.baseline} {weights.baseline}%, "
        f"{target.canary} {weights.canary}%"
    )
    if state is not None:
        typer.echo(
            f"rollout {state.rollout}: {state.phase.value}, step {state.step_index + 1} of {len(state.steps)} "
            f"({state.weight}%), tick {state.tick}; last: {state.last.action.value} by {safe(state.last.actor)} "
            f"at {iso(state.last.time)}: {safe(state.last.reason)}"
        )
        where = "ended" if in_step is None else f"{elapsed(in_step * 60)} in this step"
        typer.echo(f"{where}; audit head {state.audit_head}")
        for check in checks:
            soon = check["next_decision_min"]
            when = f" (a decision in about {soon:.0f} min at the current traffic)" if soon is not None else ""
            typer.echo(f"  {safe(check['outcome']):>8}  {safe(check['summary'])}{when}")
        for label, url in links:
            typer.echo(f"{label}: {safe(url)}")
    if elsewhere:  # last, after the rollout: what no step and no rollback of canary's moves
        typer.echo(safe(elsewhere_line(elsewhere)))
    if read.state_error:
        raise _fail(f"rollout state unreadable: {read.state_error}")


def _history_problem(policy: Policy, audit: str | None, state: RolloutState | None) -> str | None:
    """Why the log is not the route's history up to its head (None when it is, or the route holds none)."""
    if state is None or not state.audit_head:
        return None
    path = audit_path_for(policy, audit)
    if not Path(path).exists():
        return f"{path}: no such file: the route's history (head {state.audit_head[:HEAD_DIGITS]}) is not in it"
    check = verify_chain(path, state.audit_head, route_head=True)
    if check.ok:
        return None
    where = f" at line {check.line}" if check.line else ""
    return f"{path} does not verify against the route's head{where}: {check.problem}"


def _check_outlook(policy: Policy, audit: str | None, state: RolloutState) -> tuple[list[dict[str, Any]], float | None]:
    """Each check's latest verdict for the route's rollout, from the log (empty when the log has none), and
    when it was judged."""
    from canary.auditing import latest_decision, minutes_to_decision

    path = audit_path_for(policy, audit)
    if not Path(path).exists():
        return [], None
    record = latest_decision(read_records(path, _warn), state.rollout)
    if record is None or not record.judgement:
        return [], None
    step_min, rollout_min = (record.time - state.step_started_at) / 60, (record.time - state.started_at) / 60
    out = []
    for verdict in record.verdicts:
        figures = verdict.get("figures") or {}
        pending = verdict.get("outcome") == "continue"
        soon = minutes_to_decision(figures, step_min, rollout_min) if pending else None
        out.append({"check": verdict.get("metric"), "outcome": verdict.get("outcome"),
                    "summary": verdict.get("summary"), "next_decision_min": soon})  # fmt: skip
    return out, record.time


@app.command()
def plan(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    rps: Annotated[float, typer.Option(help="Requests per second to the service, both versions.", **bounded(0.1, 1e6))],
    error_rate: Annotated[float, typer.Option(help="The baseline's error rate (0.01 = 1%).", **bounded(0, 0.5))] = 0.01,
    latency_median: Annotated[
        float, typer.Option(help="The baseline's median latency, ms.", **bounded(0.1, 1e6))
    ] = 80.0,
    latency_sigma: Annotated[
        float, typer.Option(help="Spread of log latency (0.5: p99 = 3.2x median).", **bounded(0.05, 3.0))
    ] = 0.5,
    baseline_pods: Annotated[int, typer.Option(min=1, max=1000)] = 6,
    canary_pods: Annotated[int, typer.Option(min=1, max=1000)] = 2,
    seeds: Annotated[int, typer.Option(help="Simulated rollouts per figure.", min=1, max=200)] = PLAN_SEEDS,
    output: Output = OutputFormat.text,
) -> None:
    """Before a rollout: how long each step takes to pass at this traffic for a canary equal to the baseline,
    and the smallest regression each kind of check rolls back before the deadline (from the policy's judge)."""
    from canary.planning import Baseline
    from canary.planning import plan as make_plan

    try:
        loaded = load_policy(policy)
        judge_for(loaded)
        base = Baseline(rps, error_rate, latency_median, latency_sigma, (baseline_pods, canary_pods))
        told = (
            (lambda what: typer.echo(f"canary plan: simulating {what}...", err=True))
            if output is OutputFormat.text
            else None
        )
        found = make_plan(loaded, base, seeds=seeds, progress=told)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if output is OutputFormat.json:
        typer.echo(json.dumps({"policy": loaded.name, "rps": rps, "seeds": seeds, "power": PLAN_POWER,
                               **dataclasses.asdict(found)}))  # fmt: skip
        return
    typer.echo(f"{policy} at {rps:g} requests/s ({seeds} simulated rollouts per figure, deadline "
               f"{loaded.max_duration_s / 60:g} min):")  # fmt: skip
    for weight, minutes in zip(loaded.steps, found.step_minutes, strict=False):
        shown = (
            f"passes in {minutes:.0f} min" if minutes is not None else "not passed within the deadline in most rollouts"
        )
        typer.echo(f"  step {weight}%: {shown} for a canary equal to the baseline")
    total = f"{found.total_minutes:.0f} min" if found.total_minutes is not None else "not within the deadline"
    typer.echo(f"  promoted: {100 * found.promoted_share:.0f}% of rollouts, median {total}")
    for kind, smallest in found.smallest.items():
        typer.echo(
            f"  smallest {kind} regression rolled back before the deadline in {100 * PLAN_POWER:.0f}% of rollouts: "
            f"{smallest}"
        )
    for line in (*found.undecidable, *found.notes):
        typer.echo(f"  {line}")


@app.command()
def dashboard(
    policy: Annotated[str, typer.Argument(help="Policy file.")],
    window: Annotated[str, typer.Option(help="Rate window of the panels' queries, e.g. 1m or 5m.")] = "1m",
    reporter: Annotated[str, typer.Option(help="Istio reporter to count.")] = "destination",
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write here instead of stdout.", callback=_named)
    ] = None,
) -> None:
    """A Grafana dashboard (JSON) for the policy's rollout: v1 against v2 (request rate, error rate, latency,
    dependencies by source_app) and canary's own metrics (weight, phase, checks, decisions)."""
    from canary.dashboard import dashboard as build

    try:
        text = json.dumps(build(load_policy(policy), reporter=reporter, window=window), indent=2) + "\n"
    except ValueError as exc:  # the window or the reporter
        raise _fail(f"--{'window' if 'window' in str(exc) else 'reporter'}: {exc}") from None
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    _emit(text, out, reads=(policy,))


def _emit(
    text: str, out: str | None, *, reads: tuple[str | None, ...] = (), printable: bool = True, html: bool = False
) -> bool:
    """Print a generated document, or write it to `out` (a one-line error if it cannot be); True if written.

    `out` may not be one of the files the command read (`reads`): `-o` naming the audit log or the policy
    would replace the input with the output. The document replaces `out` whole (canary.outputs): a killed
    command leaves the old file or the new one, a link is followed, and a FIFO, a device or a directory is
    refused. `printable`: the command prints the document when -o is left out (said when -o names stdout).
    `html`: the document is a page, which replaces no file but a page (-o naming a policy by mistake)."""
    if out is None:
        typer.echo(text, nl=False)
        return False
    hint = "; leave out -o to print it" if printable else ""
    if out == "-":  # no command reads "-" as stdout: a file named "-" would be a surprise
        raise _fail(f"-o -: canary writes to a file, not to stdout{hint or '; name a file'}")
    target = Path(out)
    for read in filter(None, reads):
        if _same_file(target, Path(read)):
            raise _fail(f"{out}: is an input of this command ({read}); name another file with -o")
    if html and not _page_or_nothing(target):
        raise _fail(f"{out}: exists and is not an HTML page; canary replaces only a page with a page: name another "
                    "file with -o, or remove it first")  # fmt: skip
    try:
        replace_file(target, text.encode("utf-8"))
    except NotRegularFile as exc:
        raise _fail(f"{exc}{hint if exc.kind != 'a directory' else ''}") from None
    except ReadOnlyFile as exc:
        raise _fail(str(exc)) from None
    except OSError as exc:
        raise _fail(f"{out}: cannot write: {exc.strerror or exc}") from None
    return True


def _page_or_nothing(path: Path) -> bool:
    """Whether `path` holds no regular file (replace_file refuses a FIFO or a device, which is never opened
    here), an empty one, or an HTML page."""
    try:
        if not path.is_file():
            return True
        with path.open("rb") as f:
            start = f.read(512).lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    except OSError:
        return True  # replace_file says what is wrong with it
    return not start or start.startswith((b"<!doctype html", b"<html"))


def _same_file(a: Path, b: Path) -> bool:
    """Whether two names reach one file (through links, `..` or another spelling of the path)."""
    try:
        return a.samefile(b)
    except OSError:  # one of them does not exist (yet): compare what the names resolve to
        return a.resolve() == b.resolve()


@app.command()
def validate(
    policy: Annotated[str, typer.Argument(help="Policy file to check.")], output: Output = OutputFormat.text
) -> None:
    """Check a policy, and that its judge can judge every metric; one line naming file, field and line on
    the first mistake (exit 2, with --output json too). Warns where the buckets cannot resolve a latency
    tolerance."""
    try:
        loaded = load_policy(policy)
        judge_for(loaded)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    warnings: list[str] = []
    if loaded.analysis.judge == "sequential":
        from canary.planning import undecidable_ranges

        warnings = list(undecidable_ranges(loaded))
    simulated = [m.name for m in loaded.metrics if SimulatedMesh.refuses(m)]
    notes = (
        [f"{', '.join(simulated)} needs Prometheus; the simulated mesh (--simulate) cannot serve it"]
        if simulated
        else []
    )
    if output is OutputFormat.json:
        typer.echo(json.dumps({"policy": loaded.name, "file": policy, "valid": True, "steps": list(loaded.steps),
                               "metrics": [m.name for m in loaded.metrics], "judge": loaded.analysis.judge,
                               "warnings": warnings, "notes": notes}))  # fmt: skip
        return
    metrics = ", ".join(m.name for m in loaded.metrics)
    steps = " -> ".join(f"{s}%" for s in loaded.steps)
    typer.echo(f"{policy}: valid CanaryPolicy {loaded.name!r}: steps {steps}, metrics {metrics}")
    for line in warnings:
        typer.echo(f"warning: {line}")
    for line in notes:
        typer.echo(f"note: {line}")


@audit_app.command("show")
def audit_show(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    rollout: Annotated[str | None, typer.Option(help="Only this rollout id.", callback=_named)] = None,
    output: Annotated[OutputFormat, typer.Option(help="text or json (one record per line).")] = OutputFormat.text,
) -> None:
    """Print an audit log: when, who, what moved, why, and whether the change was made."""
    try:
        shown = 0
        for sealed in read_records(file, _warn):
            record = sealed.record
            if rollout and getattr(record, "rollout", None) != rollout:
                continue
            shown += 1
            if output is OutputFormat.json:
                typer.echo(sealed.encode().decode().rstrip("\n"))
                continue
            for line in _show(record):
                typer.echo(line)
        if rollout and not shown:
            raise _no_rollout(file, rollout)
    except CanaryError as exc:
        raise _fail(str(exc)) from None


def _no_rollout(file: str, rollout: str | None) -> CanaryError:
    """A log that holds no record of the rollout asked for (or none at all): exit 2, not an empty answer a
    pipeline would read as "nothing happened"."""
    return CanaryError(f"{file}: " + (f"no rollout {rollout}" if rollout else "holds no rollout"))


def _show(record: DecisionRecord | OutcomeRecord | NoteRecord) -> list[str]:
    """A record in plain lines; every value from the record is made safe for a terminal."""
    if isinstance(record, OutcomeRecord):
        return [f"    {record.result}: {safe(record.reason)}"]
    if isinstance(record, NoteRecord):
        return [f"{iso(record.time)} note by {safe(record.actor)}: {safe(record.reason)}"]
    before = f"{record.weights_before.canary}%" if record.weights_before else "?"
    after = f"{record.weights_after.canary}%" if record.weights_after else "?"
    tick = f" tick {record.tick}" if record.tick is not None else ""
    lines = [
        f"{iso(record.time)} {safe(record.rollout)}{tick} {record.action.value}: canary {before} -> {after} "
        f"by {safe(record.actor)}: {safe(record.reason)}"
    ]
    for verdict in record.verdicts:
        lines.append(f"    {safe(verdict.get('outcome')):>8}  {safe(verdict.get('summary'))}")
    return lines


@audit_app.command("list")
def audit_list(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    output: Output = OutputFormat.text,
) -> None:
    """The rollouts in a log: outcome, duration, ticks, final weights, and who acted besides the controller."""
    from canary.auditing import rollouts

    try:
        found = rollouts(read_records(file, _warn))
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if output is OutputFormat.json:
        # ISO 8601 times, as run, status and report give theirs
        listed = [
            {**dataclasses.asdict(r), "started": iso(r.started), "ended": iso(r.ended), "duration_s": r.duration_s}
            for r in found
        ]
        typer.echo(json.dumps(listed))
        return
    for r in found:
        weights = f"{r.final_weights.canary}% canary" if r.final_weights else "weights unknown"
        people = f", by hand: {', '.join(safe(p) for p in r.people)}" if r.people else ""
        failed = f", {r.changes_failed} change(s) failed" if r.changes_failed else ""
        unsettled = f", a change to {r.unsettled} not yet settled" if r.unsettled else ""
        took = f"{r.outcome} after {elapsed(r.duration_s)} ({r.ticks} ticks, {weights}{people}{failed}{unsettled})"
        typer.echo(f"{safe(r.rollout)} {iso(r.started)} {safe(r.policy)}: {took}")


@app.command()
def report(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    out: Annotated[str, typer.Option("--out", "-o", help="The HTML file to write.", callback=_named)] = "report.html",
    rollout: Annotated[
        str | None, typer.Option(help="Which rollout (default: the log's last).", callback=_named)
    ] = None,
    policy: Annotated[str | None, typer.Option(help="Policy whose spec.links add Jaeger and Kiali links.")] = None,
    output: Output = OutputFormat.text,
) -> None:
    """One rollout as a self-contained HTML page: the weight staircase, v1 against v2 error rate and latency
    per tick, each check's bound closing on its tolerance, every decision with its reason and actor, and the
    chain's head (verified). Inline SVG; nothing is fetched when it is viewed."""
    from canary.report_page import render, rollout_view

    try:
        view = rollout_view(read_records(file, _warn), rollout)
        if view is None:
            raise _no_rollout(file, rollout)
        check = verify_chain(file)
        links = reader_links(load_policy(policy), view.start, view.decisions[-1].time) if policy else []
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    verified = f"{check.records} records, hash chain intact" if check.ok else f"does NOT verify: {check.problem}"
    page = secrets.scrub(render(view, head=check.head, verified=verified, links=links))
    _emit(page, out, reads=(file, policy), printable=False, html=True)
    if output is OutputFormat.json:
        typer.echo(json.dumps({"rollout": view.rollout, "out": out, "head": check.head, "verified": check.ok}))
    else:
        typer.echo(f"{out}: rollout {view.rollout} of {safe(view.policy)} ({view.decisions[-1].phase.value}), "
                   f"head {check.head}")  # fmt: skip


@audit_app.command("export")
def audit_export(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    format: Annotated[ExportFormat, typer.Option("--format", help="csv or json.")] = ExportFormat.csv,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Write here instead of stdout.", callback=_named)
    ] = None,
) -> None:
    """One row per check per judged tick (estimate, interval, tolerance, e-value, p-value, requests,
    verdict), for spreadsheets and BI tools."""
    import csv
    import io

    from canary.auditing import EXPORT_COLUMNS, check_rows

    try:
        rows = check_rows(read_records(file, _warn))
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if format is ExportFormat.json:
        text = json.dumps(rows) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=EXPORT_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    if _emit(text, out, reads=(file,)):
        typer.echo(f"{out}: {len(rows)} rows", err=True)


@audit_app.command("replay")
def audit_replay(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    policy: Annotated[
        str | None, typer.Option(help="Judge with this policy instead of the one each rollout recorded.")
    ] = None,
    output: Output = OutputFormat.text,
) -> None:
    """Recompute every automated judgement from the inputs the log recorded. With the recorded policy every
    one must come out the same (exit 1 on any difference); with --policy, where that policy would differ."""
    from canary.auditing import compare_decisions, replay
    from canary.judges import make_judge
    from canary.records import PolicyRef
    from canary.state import policy_digest

    other = None

    def judge_for(ref: PolicyRef, kind: str | None) -> Any:
        if other is not None:
            return make_judge(other)
        if not Path(ref.file).exists():
            where = "" if Path(ref.file).is_absolute() else f" from {Path.cwd()} (the path is the run's, relative)"
            raise CanaryError(f"{ref.file}: the policy the rollout recorded is not there{where}: replay in the "
                              "folder the rollout ran in, or judge with a policy given by --policy")  # fmt: skip
        loaded = load_policy(ref.file)
        if policy_digest(loaded) != ref.digest:
            raise CanaryError(
                f"{ref.file}: not the policy the rollout ran under (digest {policy_digest(loaded)}, recorded "
                f"{ref.digest}); give the recorded policy with --policy to compare"
            )
        return make_judge(loaded, kind)

    try:
        if policy is not None:
            other = load_policy(policy)
        result = replay(read_records(file, _warn), judge_for, strict=other is None, source=file)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    differing = result.differing
    lines = compare_decisions(result.ticks) if other is not None else []
    if output is OutputFormat.json:
        typer.echo(json.dumps({"ticks": len(result.ticks), "differing": [dataclasses.asdict(t) for t in differing],
                               "decisions": lines, "other_figures": sum(1 for t in result.ticks if t.other_figures),
                               "policy": policy}))  # fmt: skip
    else:
        against = f"with {policy}" if policy else "with the recorded policies"
        typer.echo(f"{file}: {len(result.ticks)} automated judgements replayed {against}: "
                   f"{len(differing)} differ")  # fmt: skip
        for t in differing:
            typer.echo(f"  {safe(t.rollout)} tick {t.tick}: {'; '.join(safe(d) for d in t.differences)}")
        for line in lines:
            typer.echo(f"  {safe(line)}")
        if other is not None and not lines:
            bounds = sum(1 for t in result.ticks if t.other_figures)
            typer.echo(f"  every rollback and pass at the same tick; {bounds} judgements with other bounds")
    if differing and other is None:
        raise typer.Exit(1)


def _head_digits(value: str | None) -> str | None:
    """A head as canary prints it: the whole SHA-256 or its first HEAD_DIGITS digits or more (one record's)."""
    if value is None:
        return None
    if not (HEAD_DIGITS <= len(value) <= 64 and all(ch in string.hexdigits for ch in value)):
        shown = value if len(value) <= 70 else f"{value[:64]}... ({len(value)} characters)"
        raise typer.BadParameter(
            f"expected the head a command printed: {HEAD_DIGITS} to 64 hex digits (0-9, a-f), got {shown!r}"
        )
    return value.lower()


@audit_app.command("verify")
def audit_verify(
    file: Annotated[str, typer.Argument(help="Audit log (JSON lines).")],
    head: Annotated[
        str | None,
        typer.Option(
            help=f"The head hash a command printed (all 64 hex digits, or the first {HEAD_DIGITS} or more): the log "
            "must end there.",
            callback=_head_digits,
        ),
    ] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="Policy naming the route whose state holds the head (with --manifest/--kubeconfig)."),
    ] = None,
    manifest: Manifest = None,
    kubeconfig: Kubeconfig = None,
    context: Context = None,
    output: Output = OutputFormat.text,
) -> None:
    """Check the hash chain and that every change has its outcome; with --head, or the route's head
    (--policy with --manifest or --kubeconfig), that the log is not cut short, extended or re-hashed."""
    try:
        route_head = None
        if policy is not None and not (manifest or kubeconfig or context):
            raise CanaryError("--policy checks against the route's head: give --manifest FILE or --kubeconfig FILE")
        if manifest or kubeconfig or context:
            if head is not None:
                raise CanaryError("check against --head HASH or against the route's head, not both")
            if policy is None:
                raise CanaryError("the route's head is read from the policy's route: give --policy FILE too")
            loaded = load_policy(policy)
            read = router_for(loaded, manifest, kubeconfig, context).read(loaded.target)
            if read.state is None:
                raise CanaryError(f"{read.state_error or 'the route holds no rollout state'}: no head to check against")
            route_head = read.state.audit_head
        check = verify_chain(file, head or route_head, route_head=route_head is not None)
    except CanaryError as exc:
        raise _fail(str(exc)) from None
    if output is OutputFormat.json:
        against_what = "route" if route_head else ("given" if head else None)
        typer.echo(json.dumps({"file": file, "ok": check.ok, "records": check.records, "head": check.head,
                               "problem": check.problem, "line": check.line, "note": check.note,
                               "against": against_what}))  # fmt: skip
        if not check.ok:
            raise typer.Exit(1)
        return
    if not check.ok:
        where = f"{file}:{check.line}" if check.line else file
        raise _fail(f"{where}: {check.problem}", 1)
    against = " ending at the route's head" if route_head else (" ending at the given head" if head else "")
    note = f" ({check.note})" if check.note else ""
    typer.echo(f"{file}: {check.records} records, hash chain intact{against}, head {check.head}{note}")


def main() -> None:
    # A full disk or a file size limit must fail a write (and be recorded or reported), not kill the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    # The kubernetes client logs an `exec` plugin's failure on the root logger, which then prints to stderr
    # beside canary's one line; what it means reaches the user as canary's own error (the server's 401).
    logging.getLogger().addHandler(logging.NullHandler())
    if not isinstance(sys.stdout, GuardedStream):
        sys.stdout, sys.stderr = GuardedStream(sys.stdout, "output"), GuardedStream(sys.stderr, "error")
    code = _run_app()
    out = sys.stdout
    out.flush()
    if isinstance(out, GuardedStream) and (lost := problem(out)) is not None:
        print(f"canary: {lost}", file=sys.stderr)
        code = code or EXIT_ERROR  # exit 0 promises the output was delivered
    sys.stderr.flush()
    sys.exit(code)


def _run_app() -> int:
    """The command's exit code; a mistake in its use or a bug is one line on standard error, never a traceback."""
    try:
        code = app(standalone_mode=False)
    except usage.NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_ERROR
    except usage.UsageError as exc:  # a mistyped flag or value: one line, not a usage screen
        command = exc.ctx.command_path if exc.ctx is not None else "canary"
        print(f"canary: {safe(exc.format_message())} (see {command} --help)", file=sys.stderr)
        return EXIT_ERROR
    except usage.ClickException as exc:
        print(f"canary: {safe(exc.format_message())}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: one line and exit 2, never "rolled back" (1)
        print(f"canary: internal error: {type(exc).__name__}: {safe(exc)}", file=sys.stderr)
        return EXIT_ERROR
    return code if isinstance(code, int) else 0


__all__ = ["app", "main", "summary"]
