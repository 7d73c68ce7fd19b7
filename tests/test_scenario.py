"""Simulated-mesh scenarios are data: strict parsing that names the scenario and the field, and the built-ins."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from canary.errors import ScenarioError
from canary.scenario import (
    BUILTIN_SCENARIOS,
    Behaviour,
    Lognormal,
    Pods,
    builtin_scenario,
    load_scenarios,
    parse_scenario,
    resolve_scenario,
)

GOOD: dict[str, Any] = {
    "name": "slow-v2",
    "rps": 50,
    "baseline": {"error_rate": 0.01, "latency_ms": {"median": 80}},
    "canary": {"error_rate": 0.01, "latency_ms": {"median": 120, "sigma": 0.4}},
}


def scenario_with(**changes: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    data.update(changes)
    return data


def test_a_minimal_scenario_parses_with_defaults() -> None:
    scenario = parse_scenario(GOOD)
    assert scenario.name == "slow-v2"
    assert scenario.rps == 50.0
    assert scenario.expect == "promote"
    assert scenario.baseline == Behaviour(error_rate=0.01, latency=Lognormal(median_ms=80.0, sigma=0.5))
    assert scenario.canary.latency == Lognormal(median_ms=120.0, sigma=0.4)
    assert scenario.pods == Pods(baseline=3, canary=1)
    assert (scenario.steps, scenario.interval_s, scenario.max_duration_s) == (None, None, None)


def test_optional_fields_parse() -> None:
    scenario = parse_scenario(
        scenario_with(
            expect="rollback",
            steps=[25, 100],
            interval_s=30,
            max_duration_s=900,
            pods={"baseline": 4, "canary": 2, "latency_spread": 0.1},
            share_jitter=0.05,
            diurnal={"amplitude": 0.3, "period_s": 3600},
        )
    )
    assert (scenario.expect, scenario.steps, scenario.interval_s, scenario.max_duration_s) == (
        "rollback",
        (25, 100),
        30.0,
        900.0,
    )
    assert scenario.pods == Pods(baseline=4, canary=2, latency_spread=0.1)
    assert scenario.diurnal is not None and scenario.diurnal.period_s == 3600.0


def without(path: str) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node[key]
    del node[last]
    return data


def nested(path: str, value: Any) -> dict[str, Any]:
    data = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(scenario_with(rsp=10), "scenario 'slow-v2': unknown field rsp", id="unknown-field"),
        pytest.param(
            nested("baseline.latency_ms.mean", 80),
            "scenario 'slow-v2': unknown field baseline.latency_ms.mean",
            id="unknown-nested-field",
        ),
        pytest.param(
            nested("canary.errors", 0.1), "scenario 'slow-v2': unknown field canary.errors", id="unknown-behaviour"
        ),
        pytest.param(
            without("canary.latency_ms"), "scenario 'slow-v2': canary.latency_ms is required", id="missing-latency"
        ),
        pytest.param(
            scenario_with(rps=1e20), "scenario 'slow-v2': rps must be a number in [0, 1e+06], got 1e+20", id="huge-rps"
        ),
        pytest.param(without("rps"), "scenario 'slow-v2': rps is required", id="missing-rps"),
        pytest.param(
            nested("pods.baseline", 2.5),
            "scenario 'slow-v2': pods.baseline must be a whole number, got 2.5",
            id="half-pod",
        ),
        pytest.param(
            scenario_with(policy=5), "scenario 'slow-v2': policy must be a file path, got 5", id="policy-number"
        ),
        pytest.param(
            scenario_with(expect="maybe"),
            "scenario 'slow-v2': expect must be promote or rollback, got 'maybe'",
            id="bad-expect",
        ),
        pytest.param(
            scenario_with(rps=-1), "scenario 'slow-v2': rps must be a number in [0, 1e+06], got -1", id="negative-rps"
        ),
        pytest.param(
            scenario_with(rps="10"), "scenario 'slow-v2': rps must be a number in [0, 1e+06], got '10'", id="string-rps"
        ),
        pytest.param(
            nested("baseline.error_rate", 1.5),
            "scenario 'slow-v2': baseline.error_rate must be a number in [0, 1], got 1.5",
            id="error-rate-above-1",
        ),
        pytest.param(
            nested("canary.latency_ms.median", 0),
            "scenario 'slow-v2': canary.latency_ms.median must be a number in [0.001, inf], got 0",
            id="zero-median",
        ),
        pytest.param(
            nested("canary.latency_ms.sigma", 0),  # every request at the median: no p50 to decide, and 1/0
            "scenario 'slow-v2': canary.latency_ms.sigma must be a number in [0.01, 5], got 0",
            id="zero-sigma",
        ),
        pytest.param(
            nested("pods.canary", 0),
            "scenario 'slow-v2': pods.canary must be a number in [1, 10000], got 0",
            id="no-pods",
        ),
        pytest.param(
            scenario_with(steps=[50, 10, 100]),
            "scenario 'slow-v2': steps must be increasing whole percentages ending at 100",
            id="bad-steps",
        ),
        pytest.param(without("baseline"), "scenario 'slow-v2': baseline and canary are required", id="no-baseline"),
        pytest.param(scenario_with(baseline=[1]), "scenario 'slow-v2': baseline must be an object", id="list-baseline"),
        pytest.param(without("name"), "every scenario needs a non-empty string 'name'", id="no-name"),
        pytest.param([GOOD], "every scenario needs a non-empty string 'name'", id="not-an-object"),
    ],
)
def test_bad_scenario_names_scenario_and_field(data: Any, message: str) -> None:
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(data)
    assert str(caught.value) == message


def write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_a_file_may_hold_one_scenario_or_a_list(tmp_path: Path) -> None:
    one = write_json(tmp_path / "one.json", GOOD)
    many = write_json(tmp_path / "many.json", {"scenarios": [GOOD, scenario_with(name="other")]})
    assert [s.name for s in load_scenarios(one)] == ["slow-v2"]
    assert [s.name for s in load_scenarios(many)] == ["slow-v2", "other"]
    assert resolve_scenario(str(one)).name == "slow-v2"


def test_a_file_error_is_prefixed_with_the_file(tmp_path: Path) -> None:
    path = write_json(tmp_path / "bad.json", {"scenarios": [GOOD, scenario_with(name="b", rsp=1)]})
    with pytest.raises(ScenarioError) as caught:
        load_scenarios(path)
    assert str(caught.value) == f"{path}: scenario 'b': unknown field rsp"


def test_invalid_json_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "rps": ,\n}\n')
    with pytest.raises(ScenarioError) as caught:
        load_scenarios(path)
    assert str(caught.value) == f"{path}:3: not valid JSON: Expecting value"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"name": "x", "rps": 1' + "0" * 5000 + "}", "a number of thousands of digits"),  # was "internal error"
        ('{"name": "x", "rps": 100, "rps": 5}', "the key 'rps' appears twice in one object"),  # 5 used to win
        ('{"name": "x", "rps": NaN}', "NaN is not JSON"),
    ],
    ids=["huge-number", "duplicate-key", "nan"],
)
def test_json_a_reader_must_not_guess_at_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "s.json"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenarios(path)
    assert str(caught.value) == f"{path}: {message}"


def test_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError) as caught:
        resolve_scenario(str(tmp_path / "nope.json"))
    builtins = "healthy, error-regression, latency-regression"
    assert str(caught.value) == f"{tmp_path / 'nope.json'}: neither a built-in scenario ({builtins}) nor a file"


def test_a_misspelt_builtin_name_lists_the_builtins() -> None:
    with pytest.raises(ScenarioError, match=r"^helthy: neither a built-in scenario \(healthy, "):
        resolve_scenario("helthy")


@pytest.mark.parametrize("data", [[], {"scenarios": []}, 42])
def test_a_file_without_scenarios(tmp_path: Path, data: Any) -> None:
    path = write_json(tmp_path / "empty.json", data)
    with pytest.raises(ScenarioError) as caught:
        load_scenarios(path)
    assert str(caught.value) == f'{path}: expected a scenario object or {{"scenarios": [...]}}'


def test_simulate_takes_a_file_with_exactly_one_scenario(tmp_path: Path) -> None:
    path = write_json(tmp_path / "two.json", {"scenarios": [GOOD, scenario_with(name="other")]})
    with pytest.raises(ScenarioError) as caught:
        resolve_scenario(str(path))
    assert str(caught.value) == f"{path}: holds 2 scenarios; --simulate takes a file with one"


@pytest.mark.parametrize(
    ("name", "expect"), [("healthy", "promote"), ("error-regression", "rollback"), ("latency-regression", "rollback")]
)
def test_builtin_scenarios_ship_with_the_package(name: str, expect: str) -> None:
    scenario = builtin_scenario(name)
    assert scenario.name == name
    assert scenario.expect == expect
    assert resolve_scenario(name) == scenario


def test_builtin_regressions_differ_from_baseline_only_where_named() -> None:
    healthy, errors, latency = (builtin_scenario(n) for n in BUILTIN_SCENARIOS)
    assert healthy.canary == healthy.baseline
    assert errors.canary.error_rate > errors.baseline.error_rate
    assert errors.canary.latency == errors.baseline.latency
    assert latency.canary.latency.median_ms > latency.baseline.latency.median_ms
    assert latency.canary.error_rate == latency.baseline.error_rate


def test_an_unknown_builtin_lists_the_known_ones() -> None:
    with pytest.raises(ScenarioError) as caught:
        builtin_scenario("chaos")
    assert str(caught.value) == "unknown scenario 'chaos' (built in: healthy, error-regression, latency-regression)"


def test_a_scenario_file_an_editor_saved_with_a_byte_order_mark_loads(tmp_path: Path) -> None:
    """Policies and manifests with a BOM were read; a scenario was refused ("Unexpected UTF-8 BOM")."""
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert [s.name for s in load_scenarios(path)] == ["slow-v2"]
