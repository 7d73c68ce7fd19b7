"""Policy loading: the example's documented defaults, durations, and one exact line for every bad policy."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from canary.errors import PolicyError
from canary.policy import (
    Analysis,
    ErrorRateMetric,
    LatencyMetric,
    Policy,
    QuantileTolerance,
    Target,
    load_policy,
    parse_duration,
    parse_policy,
)

# A compact copy of policies/web-app.yaml with known line numbers (the error messages quote them).
BASE = """\
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata:
  name: web-app
spec:
  target:
    namespace: default
    virtualService: web-app
    host: web-app.default.svc.cluster.local
    baseline: v1
    canary: v2
  steps: [10, 50, 100]
  interval: 60s
  minRequests: 200
  maxDuration: 60m
  onDeadline: rollback
  analysis:
    judge: sequential
    alpha: 0.05
  metrics:
    - name: error-rate
      kind: error-rate
      maxIncrease: 0.005
    - name: latency
      kind: latency
      quantiles:
        - {quantile: 0.50, maxIncrease: 0.10}
        - {quantile: 0.95, maxIncrease: 0.10}
        - {quantile: 0.99, maxIncrease: 0.25}
"""
SRC = "web-app.yaml"
HEAD = "apiVersion: canary.dev/v1alpha1\nkind: CanaryPolicy\nmetadata: {name: web-app}\n"


def edited(old: str, new: str) -> str:
    """BASE with exactly one occurrence of `old` replaced (a typo in a test edit fails loudly)."""
    assert BASE.count(old) == 1, f"{old!r} occurs {BASE.count(old)} times in BASE"
    return BASE.replace(old, new)


def test_base_text_is_a_valid_policy() -> None:
    """The edits below each break exactly one thing in an otherwise valid policy."""
    assert parse_policy(BASE, SRC).name == "web-app"


def test_example_policy_has_the_documented_defaults(web_policy: Policy) -> None:
    assert web_policy.name == "web-app"
    assert web_policy.target == Target(
        namespace="default",
        virtual_service="web-app",
        host="web-app.default.svc.cluster.local",
        baseline="v1",
        canary="v2",
    )
    assert web_policy.steps == (10, 50, 100)
    assert web_policy.interval_s == 60.0
    assert web_policy.max_duration_s == 3600.0
    assert web_policy.on_deadline == "rollback"
    assert web_policy.analysis.alpha == 0.05
    error_rate, latency = web_policy.metrics
    assert error_rate == ErrorRateMetric(name="error-rate", max_increase=0.005, errors="5xx")
    assert isinstance(latency, LatencyMetric)
    assert latency.quantiles == (
        QuantileTolerance(0.50, 0.10),
        QuantileTolerance(0.95, 0.20),
        QuantileTolerance(0.99, 0.25),
    )
    assert web_policy.source_path.endswith("policies/web-app.yaml")


def test_a_minimal_policy_gets_the_defaults() -> None:
    text = (
        HEAD + "spec:\n  target: {namespace: default, virtualService: vs, host: h}\n"
        "  metrics: [{name: e, kind: error-rate, maxIncrease: 0.005}]\n"
    )
    policy = parse_policy(text, SRC)
    assert (policy.target.baseline, policy.target.canary, policy.target.route) == ("v1", "v2", None)
    assert policy.steps == (10, 50, 100)
    assert policy.interval_s == 60.0
    assert policy.min_requests == 100
    assert policy.max_duration_s == 3600.0
    assert policy.on_deadline == "rollback"
    assert policy.analysis == Analysis()
    assert policy.analysis.judge == "sequential"
    assert policy.analysis.alpha == 0.05
    assert policy.audit_path is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("1h", 3600.0),
        ("1h30m", 5400.0),
        ("1d", 86400.0),
        ("1d12h", 129600.0),
        ("2m30s", 150.0),
        ("500ms", 0.5),
        ("1m500ms", 60.5),
        ("1.5s", 1.5),
        (" 5m ", 300.0),
        (90, 90.0),
        (0.25, 0.25),
    ],
)
def test_durations_parse_to_seconds(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["abc", "", "5", "m", "5x", "-5s", "5s5m", "1h1d", "1.5.2s", True, None, [], float("nan"), float("inf"),
     "\uff16\uff10s", "\u0666\u0660s"],  # fullwidth and Arabic-Indic digits: str's \d took them for 60 s
)  # fmt: skip
def test_non_durations_are_rejected(text: object) -> None:
    assert parse_duration(text) is None


@given(st.integers(0, 99), st.integers(0, 59), st.integers(0, 59), st.integers(0, 999))
def test_any_combination_of_units_adds_up(hours: int, minutes: int, seconds: int, millis: int) -> None:
    text = f"{hours}h{minutes}m{seconds}s{millis}ms"
    assert parse_duration(text) == pytest.approx(hours * 3600 + minutes * 60 + seconds + millis / 1000)


def test_policy_durations_accept_units_and_plain_seconds() -> None:
    policy = parse_policy(edited("interval: 60s", "interval: 90").replace("maxDuration: 60m", "maxDuration: 1h30m"))
    assert (policy.interval_s, policy.max_duration_s) == (90.0, 5400.0)
    assert parse_policy(edited("interval: 60s", "interval: 500ms")).interval_s == 0.5


def test_a_deadline_may_be_given_in_days() -> None:
    assert parse_policy(edited("maxDuration: 60m", "maxDuration: 2d")).max_duration_s == 2 * 86_400


@pytest.mark.parametrize("spelling", ["5e-2", "5E-2", "5.0e-2", ".5e-1", "+5e-2"])
def test_exponents_are_numbers_as_in_yaml_1_2_and_json(spelling: str) -> None:
    """YAML 1.1's resolver reads 5e-2 as a string (it wants a dot and a signed exponent): the spelling
    the error messages themselves use (1e-06) must not be refused."""
    assert parse_policy(edited("alpha: 0.05", f"alpha: {spelling}")).analysis.alpha == pytest.approx(0.05)
    with pytest.raises(PolicyError, match="got '5e-2'"):
        parse_policy(edited("alpha: 0.05", "alpha: '5e-2'"))  # quoted: a string, as written


BAD_POLICIES = [
    pytest.param(
        "maxIncrease: 0.005",
        "maxIncrease: 1.5",
        "web-app.yaml:23: spec.metrics[0].maxIncrease: must be a positive share of requests below 1 "
        "(0.005 = +0.5 percentage points), got 1.5",
        id="rate-tolerance-no-canary-could-exceed",
    ),
    pytest.param(
        "apiVersion: canary.dev/v1alpha1",
        "apiVersion: canary.dev/v1",
        "web-app.yaml:1: apiVersion: must be canary.dev/v1alpha1, got 'canary.dev/v1'",
        id="wrong-apiVersion",
    ),
    pytest.param(
        "apiVersion: canary.dev/v1alpha1\n",
        "",
        # Missing top-level fields fall back to the document's first line (this case once hung the loader).
        "web-app.yaml:1: apiVersion: is required",
        id="missing-apiVersion",
    ),
    pytest.param(
        "kind: CanaryPolicy",
        "kind: Canary",
        "web-app.yaml:2: kind: must be CanaryPolicy, got 'Canary'",
        id="wrong-kind",
    ),
    pytest.param(
        "metadata:\n",
        "metdata:\n",
        "web-app.yaml:3: metdata: unknown field (expected one of: apiVersion, kind, metadata, spec)",
        id="top-level-typo",
    ),
    pytest.param(
        "  target:\n",
        "  targt:\n",
        "web-app.yaml:6: spec.targt: unknown field (expected one of: analysis, approvals, audit, interval, links, "
        "maxDuration, metrics, minRequests, notifications, onDeadline, steps, target, webhooks)",
        id="spec-field-typo",
    ),
    pytest.param(
        "maxIncrease: 0.005",
        "maxIncrese: 0.005",
        "web-app.yaml:23: spec.metrics[0].maxIncrese: unknown field "
        "(expected one of: critical, errors, kind, maxIncrease, name, weight)",
        id="unknown-field-maxIncrese",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[50, 10, 100]",
        "web-app.yaml:12: spec.steps: must increase strictly, got [50, 10, 100]",
        id="steps-not-increasing",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[10, 50, 50, 100]",
        "web-app.yaml:12: spec.steps: must increase strictly, got [10, 50, 50, 100]",
        id="steps-repeated",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[10, 50]",
        "web-app.yaml:12: spec.steps: must end at 100 (full promotion), got [10, 50]",
        id="steps-not-ending-at-100",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[0, 50, 100]",
        "web-app.yaml:12: spec.steps[0]: must be a whole percentage in 1..100, got 0",
        id="step-0",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[10, 150]",
        "web-app.yaml:12: spec.steps[1]: must be a whole percentage in 1..100, got 150",
        id="step-150",
    ),
    pytest.param(
        "[10, 50, 100]",
        "[]",
        "web-app.yaml:12: spec.steps: must be a non-empty list of canary weights in percent, got an empty list",
        id="steps-empty",
    ),
    pytest.param(
        "interval: 60s",
        "interval: abc",
        "web-app.yaml:13: spec.interval: must be a positive duration like 60s, 5m, 1h or 1d, got 'abc'",
        id="interval-abc",
    ),
    pytest.param(
        "interval: 60s",
        "interval: .nan",
        # YAML's .nan passed every check before (nan <= 0 is false) and made the clock sleep NaN seconds.
        "web-app.yaml:13: spec.interval: must be a positive duration like 60s, 5m, 1h or 1d, got nan",
        id="interval-nan",
    ),
    pytest.param(
        "maxDuration: 60m",
        "maxDuration: 30s",
        "web-app.yaml:15: spec.maxDuration: must be at least one interval (60s)",
        id="maxDuration-shorter-than-interval",
    ),
    pytest.param(
        "minRequests: 200",
        "minRequests: -1",
        "web-app.yaml:14: spec.minRequests: must be a whole number 0 to 1000000000000, got -1",
        id="minRequests-negative",
    ),
    pytest.param(
        "minRequests: 200",
        "minRequests: !!int many",
        # An explicit tag the value does not fit raised a bare ValueError (a traceback) before.
        "web-app.yaml:14: spec.minRequests: cannot read 'many' as !!int",
        id="explicit-tag-mismatch",
    ),
    pytest.param(
        "onDeadline: rollback",
        "onDeadline: wait",
        "web-app.yaml:16: spec.onDeadline: must be one of rollback, promote, got 'wait'",
        id="onDeadline-unknown",
    ),
    pytest.param(
        "judge: sequential",
        "judge: magic",
        "web-app.yaml:18: spec.analysis.judge: must be one of sequential, kayenta, flagger, got 'magic'",
        id="judge-unknown",
    ),
    pytest.param(
        "alpha: 0.05",
        "alpha: 0.7",
        "web-app.yaml:19: spec.analysis.alpha: must be a probability in [1e-06, 0.5), got 0.7",
        id="alpha-0.7",
    ),
    pytest.param(
        "alpha: 0.05",
        "alpha: 1.0e-310",
        "web-app.yaml:19: spec.analysis.alpha: must be a probability in [1e-06, 0.5), got 1e-310",
        id="alpha-subnormal",
    ),
    pytest.param(
        "{quantile: 0.95, maxIncrease: 0.10}",
        "{quantile: 1.5, maxIncrease: 0.10}",
        "web-app.yaml:28: spec.metrics[1].quantiles[1].quantile: must be a quantile strictly between 0 and 1, got 1.5",
        id="quantile-1.5",
    ),
    pytest.param(
        "{quantile: 0.95, maxIncrease: 0.10}",
        "{quantile: 0.50, maxIncrease: 0.10}",
        "web-app.yaml:26: spec.metrics[1].quantiles: names the same quantile twice",
        id="quantile-twice",
    ),
    pytest.param(
        "{quantile: 0.99, maxIncrease: 0.25}",
        "{quantile: 0.99}",
        "web-app.yaml:29: spec.metrics[1].quantiles[2].maxIncrease: is required",
        id="quantile-without-maxIncrease",
    ),
    pytest.param(
        "maxIncrease: 0.005",
        "maxIncrease: 5%",
        "web-app.yaml:23: spec.metrics[0].maxIncrease: must be a positive share of requests below 1 "
        "(0.005 = +0.5 percentage points), got '5%'",
        id="maxIncrease-percent-string",
    ),
    pytest.param(
        "    - name: latency\n",
        "    - name: error-rate\n",
        "web-app.yaml:24: spec.metrics[1].name: duplicate metric name 'error-rate'",
        id="duplicate-metric-names",
    ),
    pytest.param(
        "kind: latency",
        "kind: throughput",
        "web-app.yaml:25: spec.metrics[1].kind: must be one of error-rate, latency, custom, got 'throughput'",
        id="unknown-metric-kind",
    ),
    pytest.param(
        "canary: v2",
        "canary: v1",
        "web-app.yaml:11: spec.target.canary: must differ from the baseline subset ('v1')",
        id="canary-subset-equals-baseline",
    ),
    pytest.param(
        "    host: web-app.default.svc.cluster.local\n",
        "",
        "web-app.yaml:6: spec.target.host: is required",
        id="missing-target-host",
    ),
    pytest.param(
        "  interval: 60s",
        "\tinterval: 60s",
        "web-app.yaml:13: not valid YAML: found character '\\t' that cannot start any token",
        id="yaml-tab",
    ),
    pytest.param(
        "interval: 60s",
        "interval: 60s: 30s",
        "web-app.yaml:13: not valid YAML: mapping values are not allowed here",
        id="yaml-colon",
    ),
    pytest.param(
        "  interval: 60s\n",
        "  interval: 60s\n  interval: 30s\n",
        "web-app.yaml:14: spec.interval: appears twice",
        id="duplicate-key",
    ),
    pytest.param(
        "judge: sequential",
        "judge: sequential\n    kayenta: {marginal: 96, pass: 90}",
        "web-app.yaml:19: spec.analysis.kayenta.marginal: must not exceed pass (90)",
        id="kayenta-marginal-above-pass",
    ),
    pytest.param(
        BASE,
        HEAD,
        "web-app.yaml:1: spec: is required",
        id="missing-spec",
    ),
    pytest.param(
        BASE,
        HEAD + "spec: [10, 50, 100]\n",
        "web-app.yaml:4: spec: must be a mapping, got a list",
        id="non-mapping-spec",
    ),
    pytest.param(
        BASE,
        HEAD + "spec:\n  steps: [10, 100]\n",
        "web-app.yaml:4: spec.target: is required",
        id="missing-spec-target",
    ),
    pytest.param(
        BASE,
        "- apiVersion: canary.dev/v1alpha1\n",
        "web-app.yaml:1: must be a mapping, got a list",
        id="top-level-list",
    ),
    pytest.param(BASE, "", "web-app.yaml: the file is empty", id="empty-file"),
    pytest.param(BASE, "# only a comment\n", "web-app.yaml: the file is empty", id="comments-only"),
]


@pytest.mark.parametrize(("old", "new", "message"), BAD_POLICIES)
def test_bad_policy_is_one_exact_line(old: str, new: str, message: str) -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(edited(old, new), SRC)
    assert str(caught.value) == message
    assert "\n" not in str(caught.value)


def test_policy_error_carries_file_field_and_line_for_tools() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy(edited("alpha: 0.05", "alpha: 0.7"), SRC)
    assert (caught.value.path, caught.value.field, caught.value.line) == (SRC, "spec.analysis.alpha", 19)


def test_load_policy_names_the_file_it_read(write_policy: Callable[..., Path]) -> None:
    path = write_policy(edited("maxIncrease: 0.005", "maxIncrese: 0.005"), "typo.yaml")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value).startswith(f"{path}:23: spec.metrics[0].maxIncrese: unknown field")


def test_a_file_that_does_not_exist(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(PolicyError) as caught:
        load_policy(missing)
    assert str(caught.value) == f"{missing}: no such file"


def test_a_directory_instead_of_a_file(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path)
    assert str(caught.value) == f"{tmp_path}: is a directory, not a policy file"


def test_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"\xff\xfe\x00kind")
    with pytest.raises(PolicyError) as caught:
        load_policy(path)
    assert str(caught.value) == f"{path}: not a text file (byte 0 is not UTF-8)"


def test_loaded_policy_matches_parsed_text(write_policy: Callable[..., Path]) -> None:
    path = write_policy(BASE)
    loaded = load_policy(path)
    assert loaded == parse_policy(BASE, str(path))
    assert loaded.source_path == str(path)


@pytest.mark.parametrize("path", sorted(Path(__file__).resolve().parent.parent.glob("policies/*.yaml")), ids=str)
def test_every_shipped_policy_is_valid(path: Path) -> None:
    policy = load_policy(path)
    assert policy.metrics and policy.steps[-1] == 100


def test_a_self_referencing_alias_is_one_line_not_a_recursion_error() -> None:
    with pytest.raises(PolicyError, match=r"^x.yaml:1: a\[0\]: YAML aliases \(\*name\) are not supported"):
        parse_policy("a: &x [*x]\n", "x.yaml")


def test_an_alias_bomb_is_refused_at_once() -> None:
    """Billion laughs: nine levels of nine aliases would expand to 10^9 strings."""
    lines = ['a0: &a0 "lol"'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    with pytest.raises(PolicyError, match=r"YAML aliases \(\*name\) are not supported in a policy"):
        parse_policy("\n".join(lines) + "\n", "bomb.yaml")


@pytest.mark.parametrize(("field", "value", "message"), [
    ("namespace: default", "namespace: Default", "spec.target.namespace: must be a DNS-1123 label"),
    ("namespace: default", "namespace: 'de fault'", "spec.target.namespace: must be a DNS-1123 label"),
    ("virtualService: web-app", "virtualService: '../x'", "spec.target.virtualService: must be a DNS-1123 subdomain"),
    ("host: web-app.default.svc.cluster.local", 'host: "web-app\\n# evil"',
     "spec.target.host: must be one line of printable text"),
    ("host: web-app.default.svc.cluster.local", 'host: "*.default.svc"',
     "spec.target.host: must be one service's host name (a DNS-1123 subdomain such as web-app.default.svc.cluster"
     ".local; not a wildcard: Istio's metrics name the service each request reached), got '*.default.svc'"),
    ("baseline: v1", "baseline: 'v1 '", "spec.target.baseline: must be a DNS-1123 label"),
    ("name: web-app", "name: ../../etc/x", "metadata.name: must be a DNS-1123 subdomain"),
    ("interval: 60s", "interval: 90000", "spec.interval: must be 0.1s to 1d"),
])  # fmt: skip
def test_names_follow_kubernetes_and_istio_rules_and_numbers_are_bounded(field: str, value: str, message: str) -> None:
    text = BASE.replace(field, value, 1)
    assert text != BASE, field
    with pytest.raises(PolicyError, match=re.escape(message)):
        parse_policy(text, "p.yaml")


@pytest.mark.parametrize("value", ["1" + "0" * 400, ".inf", ".nan"])
def test_numbers_too_large_or_not_finite_are_refused(value: str) -> None:
    text = BASE.replace("alpha: 0.05", f"alpha: {value}")
    assert text != BASE
    with pytest.raises(PolicyError, match=r"spec.analysis.alpha: must be a probability in \[1e-06, 0.5\)"):
        parse_policy(text, "x.yaml")


@pytest.mark.parametrize(
    ("namespace", "host", "scope"),
    [
        ("default", "web-app", ("default", "web-app.default.svc.cluster.local")),
        ("routing", "web-app.default.svc.cluster.local", ("default", "web-app.default.svc.cluster.local")),
        ("routing", "web-app.shop.svc.corp.internal", ("shop", "web-app.shop.svc.corp.internal")),
        ("routing", "api.example.com", ("routing", "api.example.com")),
    ],
)
def test_the_metrics_scope_is_the_hosts_full_name_in_its_services_namespace(namespace, host, scope):
    """What Istio writes in destination_service and destination_workload_namespace, not what the route says."""
    found = Target(namespace, "web-app", host, "v1", "v2").scope
    assert (found.namespace, found.host) == scope


@pytest.mark.parametrize(("value", "read_as"), [("3:20", 200), ("2_00", 200), ("010", 8), ("0b11", 3)])
def test_a_number_only_yaml_1_1_reads_is_refused_naming_what_it_would_be(value: str, read_as: int) -> None:
    """`minRequests: 3:20` was read as 200 (base 60), `010` as 8: YAML 1.2, kubectl and a reader see other
    things. Refused in one line with the line, the field and what YAML 1.1 makes of it."""
    text = (
        (Path(__file__).parent.parent / "policies" / "web-app.yaml")
        .read_text()
        .replace("minRequests: 200 ", f"minRequests: {value} ")
    )
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    assert str(caught.value) == (f"p.yaml:16: spec.minRequests: {value!r} is a number only to YAML 1.1 "
                                 f"({read_as}); write it in plain digits")  # fmt: skip


@pytest.mark.parametrize("value", ["yes", "no", "on", "Off", "Y"])
def test_a_boolean_only_yaml_1_1_reads_is_refused(value: str) -> None:
    """`onDeadline: yes` was read as True and said "got True", which the file does not say. YAML 1.2 and a
    person read yes, on and off as words."""
    text = (Path(__file__).parent.parent / "policies" / "web-app.yaml").read_text()
    line = next(i for i, text_line in enumerate(text.splitlines(), 1) if "onDeadline:" in text_line)
    text = re.sub(r"onDeadline: \w+", f"onDeadline: {value}", text)
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml")
    if value == "Y":  # PyYAML's resolver reads y and n as text already
        assert "must be one of rollback, promote, got 'Y'" in str(caught.value)
        return
    read_as = value.lower() in ("yes", "on")
    assert str(caught.value) == (f"p.yaml:{line}: spec.onDeadline: {value!r} is a boolean only to YAML 1.1 "
                                 f"({read_as}); write true or false, or quote it as text")  # fmt: skip
    fixed = text.replace(f"onDeadline: {value}", "onDeadline: rollback")
    assert parse_policy(fixed, "p.yaml").on_deadline == "rollback"
