"""Simulated-mesh scenarios: how each version behaves, as data.

The schema is the detection benchmark's (docs/benchmarks.md), so a scenario written for the benchmark
runs in `canary run --simulate FILE` and in the demo unchanged. Parsing is strict: an unknown or
malformed field is a one-line ScenarioError naming the scenario and the field.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from canary.codec import JsonError, parse_json
from canary.errors import InputError, ScenarioError
from canary.inputs import read_text

Expectation = Literal["promote", "rollback"]
MAX_SECONDS = 30 * 86400  # a month of simulated time at the most
MAX_RPS = 1e6  # far beyond any one service, and well inside what the simulator's draws can hold


@dataclass(frozen=True)
class Lognormal:
    median_ms: float
    sigma: float


@dataclass(frozen=True)
class Tail:
    """A second, slow mode mixed in for a fraction of requests."""

    fraction: float
    median_ms: float
    sigma: float


@dataclass(frozen=True)
class ErrorBurst:
    start_s: float  # from the start of the rollout
    duration_s: float
    error_rate: float


@dataclass(frozen=True)
class Behaviour:
    error_rate: float
    latency: Lognormal
    tail: Tail | None = None
    error_burst: ErrorBurst | None = None


@dataclass(frozen=True)
class Pods:
    baseline: int = 3
    canary: int = 1
    latency_spread: float = 0.0  # sd of a per-pod multiplicative latency factor
    error_spread: float = 0.0  # sd of a per-pod multiplicative error-rate factor


@dataclass(frozen=True)
class Diurnal:
    amplitude: float
    period_s: float


@dataclass(frozen=True)
class Scenario:
    name: str
    rps: float
    baseline: Behaviour
    canary: Behaviour
    expect: Expectation = "promote"
    policy: str | None = None
    steps: tuple[int, ...] | None = None
    interval_s: float | None = None
    max_duration_s: float | None = None
    pods: Pods = field(default_factory=Pods)
    share_jitter: float = 0.0
    diurnal: Diurnal | None = None


class _Fields:
    def __init__(self, scenario: str, path: str, data: object, allowed: set[str]) -> None:
        if not isinstance(data, dict):
            raise ScenarioError(f"scenario {scenario!r}: {path or 'scenario'} must be an object")
        unknown = sorted(set(data) - allowed)
        if unknown:
            raise ScenarioError(f"scenario {scenario!r}: unknown field {_join(path, unknown[0])}")
        self.scenario, self.path, self.data = scenario, path, data

    def number(
        self, key: str, default: float | None = None, *, low: float = 0.0, high: float = math.inf, whole: bool = False
    ) -> float:
        value = self.data.get(key, default)
        if value is None:
            raise ScenarioError(f"scenario {self.scenario!r}: {_join(self.path, key)} is required")
        if whole and not (isinstance(value, int) and not isinstance(value, bool)):
            raise ScenarioError(
                f"scenario {self.scenario!r}: {_join(self.path, key)} must be a whole number, got {value!r}"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or not low <= value <= high
        ):
            raise ScenarioError(
                f"scenario {self.scenario!r}: {_join(self.path, key)} must be a number in [{low:g}, {high:g}], "
                f"got {value!r}"
            )
        return float(value)

    def sub(self, key: str, allowed: set[str]) -> _Fields | None:
        if self.data.get(key) is None:
            return None
        return _Fields(self.scenario, _join(self.path, key), self.data[key], allowed)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _behaviour(name: str, path: str, data: object) -> Behaviour:
    f = _Fields(name, path, data, {"error_rate", "latency_ms", "tail", "error_burst"})
    lat = f.sub("latency_ms", {"median", "sigma"})
    if lat is None:
        raise ScenarioError(f"scenario {name!r}: {path}.latency_ms is required")
    tail = f.sub("tail", {"fraction", "median", "sigma"})
    burst = f.sub("error_burst", {"start_s", "duration_s", "error_rate"})
    return Behaviour(
        error_rate=f.number("error_rate", 0.0, high=1.0),
        latency=Lognormal(lat.number("median", low=1e-3), lat.number("sigma", 0.5, low=0.01, high=5)),
        tail=None
        if tail is None
        else Tail(
            tail.number("fraction", high=1.0),
            tail.number("median", low=1e-3),
            tail.number("sigma", 0.3, low=0.01, high=5),
        ),
        error_burst=None
        if burst is None
        else ErrorBurst(burst.number("start_s"), burst.number("duration_s"), burst.number("error_rate", high=1.0)),
    )


def parse_scenario(data: object) -> Scenario:
    name = data.get("name") if isinstance(data, dict) else None
    if not isinstance(name, str) or not name:
        raise ScenarioError("every scenario needs a non-empty string 'name'")
    f = _Fields(
        name,
        "",
        data,
        {"name", "expect", "policy", "rps", "steps", "interval_s", "max_duration_s", "baseline", "canary", "pods",
         "share_jitter", "diurnal", "description"},
    )  # fmt: skip
    raw: dict[str, Any] = f.data
    expect = raw.get("expect", "promote")
    if expect not in ("promote", "rollback"):
        raise ScenarioError(f"scenario {name!r}: expect must be promote or rollback, got {expect!r}")
    if raw.get("policy") is not None and not isinstance(raw["policy"], str):
        raise ScenarioError(f"scenario {name!r}: policy must be a file path, got {raw['policy']!r}")
    steps = raw.get("steps")
    if steps is not None and (
        not isinstance(steps, list)
        or not steps
        or any(isinstance(s, bool) or not isinstance(s, int) or not 0 < s <= 100 for s in steps)
        or steps != sorted(set(steps))
        or steps[-1] != 100
    ):
        raise ScenarioError(f"scenario {name!r}: steps must be increasing whole percentages ending at 100")
    pods = f.sub("pods", {"baseline", "canary", "latency_spread", "error_spread"})
    diurnal = f.sub("diurnal", {"amplitude", "period_s"})
    if "baseline" not in raw or "canary" not in raw:
        raise ScenarioError(f"scenario {name!r}: baseline and canary are required")
    return Scenario(
        name=name,
        expect=expect,
        policy=raw.get("policy"),
        rps=f.number("rps", low=0.0, high=MAX_RPS),
        steps=tuple(steps) if steps is not None else None,
        interval_s=f.number("interval_s", low=1.0, high=MAX_SECONDS) if "interval_s" in raw else None,
        max_duration_s=f.number("max_duration_s", low=1.0, high=MAX_SECONDS) if "max_duration_s" in raw else None,
        baseline=_behaviour(name, "baseline", raw["baseline"]),
        canary=_behaviour(name, "canary", raw["canary"]),
        pods=Pods()
        if pods is None
        else Pods(
            baseline=int(pods.number("baseline", 3, low=1, high=10_000, whole=True)),
            canary=int(pods.number("canary", 1, low=1, high=10_000, whole=True)),
            latency_spread=pods.number("latency_spread", 0.0, high=2.0),
            error_spread=pods.number("error_spread", 0.0, high=2.0),
        ),
        share_jitter=f.number("share_jitter", 0.0, high=1.0),
        diurnal=None
        if diurnal is None
        else Diurnal(diurnal.number("amplitude", high=0.95), diurnal.number("period_s", low=1.0)),
    )


def load_scenarios(path: str | Path) -> list[Scenario]:
    """A benchmark file ({"scenarios": [...]}) or a single scenario object."""
    try:
        data = parse_json(read_text(path, "scenario"))
    except InputError as exc:
        raise ScenarioError(str(exc)) from None
    except JsonError as exc:
        raise ScenarioError(f"{path}{'' if exc.line is None else f':{exc.line}'}: {exc.message}") from None
    items = data.get("scenarios", [data]) if isinstance(data, dict) else None
    if not isinstance(items, list) or not items:
        raise ScenarioError(f'{path}: expected a scenario object or {{"scenarios": [...]}}')
    try:
        return [parse_scenario(item) for item in items]
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


BUILTIN_SCENARIOS = ("healthy", "error-regression", "latency-regression")


@functools.cache
def builtin_scenario(name: str) -> Scenario:
    """The demo's scenarios, shipped as JSON inside the package (read once per process)."""
    if name not in BUILTIN_SCENARIOS:
        raise ScenarioError(f"unknown scenario {name!r} (built in: {', '.join(BUILTIN_SCENARIOS)})")
    source = resources.files("canary").joinpath("scenarios", f"{name}.json")
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ScenarioError(f"{source}: cannot read the built-in scenario: {exc.strerror or exc}") from None
    return parse_scenario(parse_json(text))


def resolve_scenario(spec: str) -> Scenario:
    """A built-in scenario name or the path of a JSON file holding exactly one scenario."""
    if spec in BUILTIN_SCENARIOS:
        return builtin_scenario(spec)
    if not Path(spec).exists():
        raise ScenarioError(f"{spec}: neither a built-in scenario ({', '.join(BUILTIN_SCENARIOS)}) nor a file")
    scenarios = load_scenarios(spec)
    if len(scenarios) != 1:
        raise ScenarioError(f"{spec}: holds {len(scenarios)} scenarios; --simulate takes a file with one")
    return scenarios[0]
