"""The command line: parse, build (through app), call, and map outcomes and errors to exit codes.

Exit codes: 0 promoted / pass, 1 rolled back / fail, 2 configuration or infrastructure error,
3 inconclusive at the deadline. A user mistake is one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from typing import Annotated, Any

import typer

from canary import __version__
from canary.app import open_audit, simulated_rollout
from canary.audit import read_records, verify_chain
from canary.controller import RolloutResult
from canary.display import Progress, summary
from canary.errors import CanaryError
from canary.model import Phase
from canary.policy import load_policy
from canary.report import judgement_dict
from canary.scenario import BUILTIN_SCENARIOS, builtin_scenario, resolve_scenario

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
    policy_file: str, scenario_spec: str, seed: int, audit: str | None, output: OutputFormat, title: str
) -> int:
    policy = load_policy(policy_file)
    scenario = (
        builtin_scenario(scenario_spec) if scenario_spec in BUILTIN_SCENARIOS else resolve_scenario(scenario_spec)
    )
    rollout = simulated_rollout(policy, scenario, seed=seed, audit=open_audit(policy, audit))
    if output is OutputFormat.json:
        result = rollout.controller.run()
        typer.echo(json.dumps(result_json(result, policy.name), indent=2, default=str))
    else:
        progress = Progress(title)
        result = rollout.controller.run(progress.update)
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
) -> None:
    """Run a rollout to its end (blocking): 0 promoted, 1 rolled back, 2 error, 3 inconclusive."""
    try:
        if simulate is None:
            raise CanaryError("choose a metrics source: --simulate SCENARIO (the embedded simulated mesh)")
        title = f"canary run {policy} on the simulated mesh ({simulate})"
        raise typer.Exit(_run_simulated(policy, simulate, seed, audit, output, title))
    except CanaryError as exc:
        raise _fail(str(exc)) from None


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
            typer.echo(
                f"{record.get('time')} {record.get('rollout')} tick {record.get('tick')} "
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


__all__ = ["app", "main", "summary"]
