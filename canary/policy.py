"""CanaryPolicy: YAML shaped like a Kubernetes object, loaded into frozen dataclasses.

Every field is validated on load. A mistake becomes one `PolicyError` line naming the file, the field
path (`spec.metrics[1].maxIncrease`) and, where the YAML gives it, the line.
"""

from __future__ import annotations

import itertools
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from canary.codec import describe, join
from canary.errors import InputError, PolicyError
from canary.inputs import read_text
from canary.promql import template_error

API_VERSION = "canary.dev/v1alpha1"
KIND = "CanaryPolicy"

JudgeKind = Literal["sequential", "kayenta", "flagger"]
DeadlineRule = Literal["rollback", "promote"]
ErrorClass = Literal["5xx", "non-2xx", "grpc"]
JUDGES: tuple[JudgeKind, ...] = ("sequential", "kayenta", "flagger")
DEADLINE_RULES: tuple[DeadlineRule, ...] = ("rollback", "promote")
ERROR_CLASSES: tuple[ErrorClass, ...] = ("5xx", "non-2xx", "grpc")
CLUSTER_DOMAIN = "svc.cluster.local"


def fqdn(host: str, namespace: str) -> str:
    """Istio's reading of a host name: a short name is a service of the given namespace."""
    return host if "." in host or host == "*" else f"{host}.{namespace}.{CLUSTER_DOMAIN}"


def service_namespace(host: str, namespace: str) -> str:
    """The namespace of a Kubernetes service's host (`name.ns.svc.<domain>`, its workloads' namespace too);
    `namespace` for a short name or a host outside the cluster."""
    parts = fqdn(host, namespace).split(".")
    return parts[1] if len(parts) >= 4 and parts[2] == "svc" else namespace


def url_problem(url: str) -> str | None:
    """What keeps `url` from being an http(s) URL canary can call, in words (None: it can): the same rule for
    a URL in the policy and one read from a file or the environment when a command starts."""
    if not url.startswith(("http://", "https://")):
        return "it does not start with http:// or https://"
    if re.search(r"\s", url):
        return "it holds a space or a line break"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # out of range or not a number: ValueError
    except ValueError as exc:
        return f"it is not a valid URL ({exc})"
    if not parts.hostname:
        return "it names no host"
    if port == 0:
        return "port 0 is not a port a server listens on"
    return None


@dataclass(frozen=True)
class MetricsScope:
    """Whose traffic is measured: the metrics source's business (no VirtualService, no route)."""

    namespace: str
    host: str
    baseline: str  # destination_version label values
    canary: str


@dataclass(frozen=True)
class Target:
    """The route canary moves: the router's business. Its `scope` is what the metrics source sees."""

    namespace: str
    virtual_service: str
    host: str
    baseline: str  # subset name, also the destination_version label value
    canary: str
    route: str | None = None  # name of the http route to shift; None: the one plain split of both subsets

    @property
    def scope(self) -> MetricsScope:
        """What Istio's metrics say of this host: `destination_service` is its full name, whatever the
        VirtualService calls it, and its workloads live in the service's namespace, not the route's."""
        namespace = service_namespace(self.host, self.namespace)
        return MetricsScope(namespace, fqdn(self.host, self.namespace), self.baseline, self.canary)


@dataclass(frozen=True)
class ErrorRateMetric:
    """Share of requests that failed; regression = canary rate above baseline rate + max_increase."""

    name: str
    max_increase: float  # absolute, as a fraction (0.005 = 0.5 percentage points)
    errors: ErrorClass = "5xx"
    weight: float = 1.0  # for the Kayenta-style score
    critical: bool = False


@dataclass(frozen=True)
class QuantileTolerance:
    quantile: float  # 0 < q < 1
    max_increase: float  # relative: 0.10 = the canary's quantile may be at most 10% higher


@dataclass(frozen=True)
class LatencyMetric:
    """Request duration from the histogram buckets; regression = a named quantile too much higher."""

    name: str
    quantiles: tuple[QuantileTolerance, ...]
    weight: float = 1.0
    critical: bool = False


@dataclass(frozen=True)
class CustomRatioMetric:
    """A ratio from two PromQL templates yielding counters (events out of total), judged like an error rate.

    Templates may use the placeholders {service}, {namespace}, {version} and {window}; {version} is
    required so each version gets its own series. Regression = canary ratio above baseline + max_increase.
    """

    name: str
    events: str
    total: str
    max_increase: float  # absolute, as a fraction, like ErrorRateMetric.max_increase
    weight: float = 1.0
    critical: bool = False


MetricSpec = ErrorRateMetric | LatencyMetric | CustomRatioMetric


@dataclass(frozen=True)
class KayentaSettings:
    confidence: float = 0.98
    effect: float = 0.25  # allowed effect, a fraction of the baseline's median
    marginal: float = 75.0
    pass_score: float = 95.0
    min_intervals: int = 3


@dataclass(frozen=True)
class FlaggerSettings:
    min_success_rate: float = 99.0  # percent
    max_p99_ms: float = 500.0
    threshold: int = 5  # failed checks before rollback


@dataclass(frozen=True)
class Analysis:
    judge: JudgeKind = "sequential"
    alpha: float = 0.05  # probability of ever rolling back a canary that is within tolerance
    pass_alpha: float = 0.2  # probability of passing a step with a canary outside tolerance (at that step)
    kayenta: KayentaSettings = field(default_factory=KayentaSettings)
    flagger: FlaggerSettings = field(default_factory=FlaggerSettings)


NOTIFY_EVENTS = (
    "start",
    "step",
    "paused",
    "continued",
    "waiting",
    "approved",
    "promoted",
    "rolled-back",
    "inconclusive",
    "cancelled",
    "aborted",
)
NOTIFY_FORMATS = ("json", "slack", "teams")


@dataclass(frozen=True)
class Notification:
    """A webhook told of a rollout's events. A URL that carries a token comes from a file or an environment
    variable (read when the rollout starts, never printed), else it may stand in the policy."""

    name: str
    format: str = "json"  # json (canary's own), slack (incoming webhook), teams (MessageCard)
    url: str | None = None
    url_file: str | None = None
    url_env: str | None = None
    events: tuple[str, ...] = NOTIFY_EVENTS
    timeout_s: float = 5.0
    retries: int = 3
    backoff_s: float = 1.0  # the wait before the first retry, doubling after each


@dataclass(frozen=True)
class Links:
    """Where `status` and the report send a reader: Jaeger's and Kiali's base URLs (None: not configured)."""

    jaeger: str | None = None
    kiali: str | None = None


WEBHOOK_TYPES = ("pre-rollout", "gate", "post-rollout")
GATE_TIMEOUT_RULES = ("rollback", "continue")
WebhookType = Literal["pre-rollout", "gate", "post-rollout"]
GateTimeoutRule = Literal["rollback", "continue"]


@dataclass(frozen=True)
class Webhook:
    """An HTTP endpoint the rollout asks (a POST of the rollout's state as JSON; 2xx means go).

    pre-rollout: before the first weight is written; no go after every retry, and the rollout does not start.
    gate: while a passed step waits to move to one of `steps`; asked each interval until it says go, for at most
    `max_wait_s`, then `on_timeout` decides (roll back, or go on as if it had said go).
    post-rollout: once the rollout has ended, whatever the outcome; an answer changes nothing.
    """

    name: str
    type: WebhookType
    url: str | None = None
    url_file: str | None = None
    url_env: str | None = None
    timeout_s: float = 10.0  # each call
    retries: int = 2  # pre- and post-rollout calls; a gate is asked again at the next interval instead
    backoff_s: float = 1.0
    steps: tuple[int, ...] = ()  # gate: the weights it guards (all steps after the first when not given)
    max_wait_s: float = 1800.0  # gate: how long it may keep saying wait
    on_timeout: GateTimeoutRule = "rollback"


@dataclass(frozen=True)
class Policy:
    name: str
    target: Target
    metrics: tuple[MetricSpec, ...]
    steps: tuple[int, ...] = (10, 50, 100)
    interval_s: float = 60.0
    min_requests: int = 100  # per version and step, before a step may be judged
    max_duration_s: float = 3600.0
    on_deadline: DeadlineRule = "rollback"
    analysis: Analysis = field(default_factory=Analysis)
    audit_path: str | None = None
    source_path: str = "<memory>"
    notifications: tuple[Notification, ...] = ()
    approvals: tuple[int, ...] = ()  # step weights the canary moves to only after `canary approve`
    webhooks: tuple[Webhook, ...] = ()
    links: Links = field(default_factory=Links)

    def gates(self, weight: int) -> tuple[Webhook, ...]:
        """The webhook gates the canary must pass to move to `weight`."""
        return tuple(w for w in self.webhooks if w.type == "gate" and weight in w.steps)

    def hooks(self, type: WebhookType) -> tuple[Webhook, ...]:
        return tuple(w for w in self.webhooks if w.type == type)


# --------------------------------------------------------------------------------------------- loading


def load_policy(path: str | Path) -> Policy:
    """Read and validate a policy file; raises PolicyError with file, field and line."""
    name = str(path)
    try:
        text = read_text(path, "policy")
    except InputError as exc:
        raise PolicyError(name, "", str(exc).removeprefix(f"{name}: ")) from None
    return parse_policy(text, name)


def parse_policy(text: str, source: str = "<string>") -> Policy:
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except RecursionError:
        raise PolicyError(source, "", TOO_DEEP) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyError(source, "", f"not valid YAML: {problem}", line) from None
    if node is None:
        raise PolicyError(source, "", "the file is empty")
    lines: dict[str, int] = {}
    try:
        data = _plain(node, "", lines)
    except _NodeError as bad:
        raise PolicyError(source, bad.path, bad.message, bad.line) from None
    except RecursionError:
        raise PolicyError(source, "", TOO_DEEP) from None
    return _Reader(source, lines).policy(data)


TOO_DEEP = "nested too deeply to be a policy"
_YAML12_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+")
_YAML12_BOOL = re.compile(r"true|True|TRUE|false|False|FALSE")  # YAML 1.2 core schema's booleans
_YAML12_NUMBER = {  # what YAML 1.1's resolver reads as a number that YAML 1.2's core schema does too
    "tag:yaml.org,2002:int": re.compile(r"[-+]?(0|[1-9][0-9]*)|0x[0-9a-fA-F]+"),
    "tag:yaml.org,2002:float": re.compile(
        r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
    ),
}


def _plain(node: yaml.Node, path: str, lines: dict[str, int], seen: set[int] | None = None) -> Any:
    """A composed YAML node as plain Python, recording the line of every field path.

    A node met twice is an alias (`*name`): refused, so an alias bomb cannot expand into billions of values.
    """
    seen = set() if seen is None else seen
    if id(node) in seen:
        raise _NodeError(path, node.start_mark.line + 1, "YAML aliases (*name) are not supported in a policy")
    seen.add(id(node))
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise _NodeError(
                    path, key_node.start_mark.line + 1, "a key must be a plain name, not a list or mapping"
                )
            key = str(key_node.value)
            key = key if len(key) <= 64 else key[:61] + "..."  # a path in an error is never a whole file
            child = f"{path}.{key}" if path else key
            if key in out:
                raise _NodeError(child, key_node.start_mark.line + 1, "appears twice")
            out[key] = _plain(value_node, child, lines, seen)
            lines[child] = key_node.start_mark.line + 1  # a field's line is its key's, not its block value's
        return out
    if isinstance(node, yaml.SequenceNode):
        return [_plain(item, f"{path}[{i}]", lines, seen) for i, item in enumerate(node.value)]
    plain = isinstance(node, yaml.ScalarNode) and node.style is None
    if plain and node.tag == "tag:yaml.org,2002:str" and _YAML12_FLOAT.fullmatch(node.value):
        return float(node.value)  # 1e-6: a number in YAML 1.2 and JSON, a string to YAML 1.1's resolver
    try:
        value = yaml.SafeLoader("").construct_object(node, deep=True)
    except (yaml.YAMLError, ValueError, TypeError, AttributeError):  # an explicit tag the value does not fit
        tag = str(node.tag).replace("tag:yaml.org,2002:", "!!")
        raise _NodeError(path, node.start_mark.line + 1, f"cannot read {describe(node.value)} as {tag}") from None
    if plain and node.tag == "tag:yaml.org,2002:bool" and not _YAML12_BOOL.fullmatch(node.value):
        # yes, no, on, off: booleans to YAML 1.1 only; to YAML 1.2 and a person, words
        raise _NodeError(
            path,
            node.start_mark.line + 1,
            f"{describe(node.value)} is a boolean only to YAML 1.1 ({value}); write true or false, or quote it as text",
        )
    if plain and (number := _YAML12_NUMBER.get(node.tag)) is not None and not number.fullmatch(node.value):
        # 3:20 (base 60), 2_00, 010 (octal), 0b11: numbers to YAML 1.1 that YAML 1.2, kubectl and a person
        # read otherwise, or as text
        raise _NodeError(
            path,
            node.start_mark.line + 1,
            f"{describe(node.value)} is a number only to YAML 1.1 ({value}); write it in plain digits",
        )
    return value


# Kubernetes' own rules (apimachinery's IsDNS1123Label / IsDNS1123Subdomain), which Istio applies to subsets;
# a host is a subdomain, optionally with Istio's `*.` wildcard prefix; a route name is one printable word.
_NAME_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "label": (re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?"),
              "a DNS-1123 label (lowercase letters, digits and '-', at most 63, starting and ending alphanumeric)"),
    "subdomain": (re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"),
                  "a DNS-1123 subdomain (lowercase letters, digits, '-' and '.', at most 253)"),
    "host": (re.compile(r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"),
             "one service's host name (a DNS-1123 subdomain such as web-app.default.svc.cluster.local; not a "
             "wildcard: Istio's metrics name the service each request reached)"),
    "route": (re.compile(r"[A-Za-z0-9._:-]{1,253}"), "a route name of letters, digits, '.', '_', ':' and '-'"),
    "env": (re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}"), "an environment variable name (letters, digits and '_')"),
}  # fmt: skip
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")  # and lone surrogates
MIN_INTERVAL_S, MAX_INTERVAL_S, MAX_DURATION_S = 0.1, 86_400.0, 30 * 86_400.0
MAX_COUNT = 10**12
MAX_WEIGHT = 1e6  # a metric's share of the Kayenta-style score: relative, so a million to one is plenty
WEIGHT_RANGE = "a positive number at most 1e+06"
# A level below a millionth needs more evidence than a rollout of hours can gather (a healthy canary would
# never pass) and, far below it, underflows the bounds' arithmetic; 0.5 and above is no test at all.
LEVEL_RANGE = "a probability in [1e-06, 0.5)"


def _level(value: float) -> bool:
    return 1e-6 <= value < 0.5


def _span(seconds: float) -> str:
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


class _NodeError(Exception):
    def __init__(self, path: str, line: int, message: str) -> None:
        self.path, self.line, self.message = path, line, message


_DURATION = re.compile(  # ASCII digits only: str's \d takes ６０ and ٦٠ too
    r"^(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+(?:\.\d+)?)ms)?$",
    re.ASCII,
)


def parse_duration(value: object) -> float | None:
    """'90s', '5m', '1h30m', '1d', '500ms' or a number of seconds -> seconds; None if it is not a duration."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            return None
        return seconds if math.isfinite(seconds) else None  # YAML's .nan / .inf are not durations
    if not isinstance(value, str) or not value.strip():
        return None
    match = _DURATION.match(value.strip())
    if not match or not any(match.groups()):
        return None
    days, hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
    total = days * 86_400 + hours * 3600 + minutes * 60 + seconds + millis / 1000
    return total if math.isfinite(total) else None


def steps_problem(value: object) -> tuple[str, str] | None:
    """Why `value` is not a rollout's steps, the one rule the policy reader and the state decoder share: the
    field's suffix ("" or "[i]") and what is wrong; None where it is a rising list of weights ending at 100."""
    if not isinstance(value, list | tuple) or not value:
        got = "an empty list" if not value and isinstance(value, list | tuple) else describe(value)
        return "", f"must be a non-empty list of canary weights in percent, got {got}"
    for i, step in enumerate(value):
        if isinstance(step, bool) or not isinstance(step, int) or not 0 < step <= 100:
            return f"[{i}]", f"must be a whole percentage in 1..100, got {describe(step)}"
    if any(b <= a for a, b in itertools.pairwise(value)):
        return "", f"must increase strictly, got {list(value)}"
    if value[-1] != 100:
        return "", f"must end at 100 (full promotion), got {list(value)}"
    return None


class _Reader:
    """Walks the plain data with the field path in hand, so every error can say where it is."""

    def __init__(self, source: str, lines: Mapping[str, int]) -> None:
        self.source = source
        self.lines = lines

    def fail(self, path: str, message: str) -> PolicyError:
        probe = path
        while probe and probe not in self.lines:
            shorter = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", probe)
            probe = shorter if shorter != probe else ""  # a top-level field: the document's line
        return PolicyError(self.source, path, message, self.lines.get(probe))

    def mapping(self, value: object, path: str, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            # describe never echoes a file; a whole document that is one short string (a token file given as
            # the policy) is not echoed either
            got = "a string" if path == "" and isinstance(value, str) else describe(value)
            raise self.fail(path, f"must be a mapping, got {got}")
        unknown = sorted(set(value) - allowed)
        if unknown:
            hint = ", ".join(sorted(allowed))
            raise self.fail(join(path, str(unknown[0])), f"unknown field (expected one of: {hint})")
        return value

    def required(self, data: Mapping[str, Any], path: str, key: str) -> Any:
        if key not in data or data[key] is None:
            raise self.fail(join(path, key), "is required")
        return data[key]

    def string(
        self, data: Mapping[str, Any], path: str, key: str, default: str | None = None, *, lines: bool = False
    ) -> str:
        value = data.get(key, default) if default is not None else self.required(data, path, key)
        if not isinstance(value, str) or not value.strip():
            raise self.fail(join(path, key), f"must be a non-empty string, got {describe(value)}")
        if _UNPRINTABLE.search(value.replace("\n", "").replace("\t", "") if lines else value):
            what = "printable text" if lines else "one line of printable text"
            raise self.fail(join(path, key), f"must be {what} (no control characters)")
        return value

    def name(self, data: Mapping[str, Any], path: str, key: str, rule: str, default: str | None = None) -> str:
        """A name Kubernetes or Istio will check by the same rule (`label`, `subdomain` or `host`)."""
        value = self.string(data, path, key, default)
        pattern, words = _NAME_RULES[rule]
        if not pattern.fullmatch(value):
            raise self.fail(join(path, key), f"must be {words}, got {describe(value)}")
        return value

    def number(
        self,
        data: Mapping[str, Any],
        path: str,
        key: str,
        default: float,
        check: Callable[[float], bool],
        expect: str,
    ) -> float:
        value = data.get(key, default)
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(number)
            or not check(number)
        ):
            raise self.fail(join(path, key), f"must be {expect}, got {describe(value)}")
        return number

    def integer(
        self, data: Mapping[str, Any], path: str, key: str, default: int, minimum: int, maximum: int = 1_000_000
    ) -> int:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not minimum <= value <= maximum:
            raise self.fail(join(path, key), f"must be a whole number {minimum} to {maximum}, got {describe(value)}")
        return value

    def duration(self, data: Mapping[str, Any], path: str, key: str, default: float, low: float, high: float) -> float:
        value = data.get(key, default)
        seconds = parse_duration(value)
        if seconds is None or seconds <= 0:
            expect = "a positive duration like 60s, 5m, 1h or 1d"
            raise self.fail(join(path, key), f"must be {expect}, got {describe(value)}")
        if not low <= seconds <= high:
            raise self.fail(join(path, key), f"must be {_span(low)} to {_span(high)}, got {describe(value)}")
        return seconds

    def choice(self, data: Mapping[str, Any], path: str, key: str, default: str, options: tuple[str, ...]) -> str:
        value = data.get(key, default)
        if value not in options:
            raise self.fail(join(path, key), f"must be one of {', '.join(options)}, got {value!r}")
        return str(value)

    # ------------------------------------------------------------------------------------- sections

    def policy(self, data: object) -> Policy:
        top = self.mapping(data, "", {"apiVersion", "kind", "metadata", "spec"})
        self.required(top, "", "apiVersion")
        self.required(top, "", "kind")
        if top.get("apiVersion") != API_VERSION:
            raise self.fail("apiVersion", f"must be {API_VERSION}, got {describe(top.get('apiVersion'))}")
        if top.get("kind") != KIND:
            raise self.fail("kind", f"must be {KIND}, got {top.get('kind')!r}")
        meta = self.mapping(self.required(top, "", "metadata"), "metadata", {"name", "namespace", "labels"})
        name = self.name(meta, "metadata", "name", "subdomain")  # also the default audit file's name
        spec = self.mapping(
            self.required(top, "", "spec"),
            "spec",
            {"target", "steps", "interval", "minRequests", "maxDuration", "onDeadline", "analysis", "metrics",
             "audit", "notifications", "approvals", "webhooks", "links"},
        )  # fmt: skip
        steps = self.steps(spec.get("steps", [10, 50, 100]))
        interval = self.duration(spec, "spec", "interval", 60, MIN_INTERVAL_S, MAX_INTERVAL_S)
        max_duration = self.duration(spec, "spec", "maxDuration", 3600, MIN_INTERVAL_S, MAX_DURATION_S)
        if max_duration < interval:
            raise self.fail("spec.maxDuration", f"must be at least one interval ({interval:g}s)")
        audit = spec.get("audit")
        if audit is not None and (not isinstance(audit, str) or not audit.strip() or _UNPRINTABLE.search(audit)):
            raise self.fail("spec.audit", f"must be a file path on one line, got {describe(audit)}")
        return Policy(
            name=name,
            target=self.target(self.required(spec, "spec", "target")),
            metrics=self.metrics(self.required(spec, "spec", "metrics")),
            steps=steps,
            interval_s=interval,
            min_requests=self.integer(spec, "spec", "minRequests", 100, 0, MAX_COUNT),
            max_duration_s=max_duration,
            on_deadline=self.choice(spec, "spec", "onDeadline", "rollback", DEADLINE_RULES),  # type: ignore[arg-type]
            analysis=self.analysis(spec.get("analysis", {})),
            audit_path=audit,
            source_path=self.source,
            notifications=self.notifications(spec.get("notifications", [])),
            approvals=self.approvals(spec.get("approvals", []), steps),
            webhooks=self.webhooks(spec.get("webhooks", []), steps),
            links=self.links(spec.get("links", {})),
        )

    def links(self, value: object) -> Links:
        data = self.mapping(value, "spec.links", {"jaeger", "kiali"})
        found: dict[str, str] = {}
        for key in ("jaeger", "kiali"):
            if key in data:
                url = self.string(data, "spec.links", key)
                problem = url_problem(url) or (
                    "holds a quote or an angle bracket" if re.search("[\"'<>]", url) else None
                )
                if problem is not None:
                    raise self.fail(join("spec.links", key), f"must be an http:// or https:// URL: {problem}")
                found[key] = url.rstrip("/")
        return Links(**found)

    def approvals(self, value: object, steps: tuple[int, ...]) -> tuple[int, ...]:
        """Step weights that wait for a person's `canary approve` (never the first: a rollout starts there)."""
        return self.later_steps(value, "spec.approvals", steps, empty=True)

    def later_steps(self, value: object, path: str, steps: tuple[int, ...], *, empty: bool) -> tuple[int, ...]:
        """A list of the policy's step weights after the first (the weights something can stand in front of)."""
        later = ", ".join(str(w) for w in steps[1:]) or "none: the policy has one step"
        if not isinstance(value, list) or (not value and not empty):
            raise self.fail(path, f"must be a list of step weights after the first ({later}), got {describe(value)}")
        for i, v in enumerate(value):
            if isinstance(v, bool) or v not in steps[1:]:
                first = " (a rollout starts there)" if v == steps[0] and not isinstance(v, bool) else ""
                raise self.fail(f"{path}[{i}]", f"must be a step weight after the first ({later}), got "
                                f"{describe(v)}{first}")  # fmt: skip
            if v in value[:i]:
                raise self.fail(f"{path}[{i}]", f"{v} is listed twice")
        return tuple(sorted(value))

    def named_items(
        self, value: object, path: str, keys: set[str], kind: str
    ) -> Iterator[tuple[str, dict[str, Any], str]]:
        """Each entry of a list of mappings with a unique `name`: where it is, its keys, its name."""
        if not isinstance(value, list):
            raise self.fail(path, f"must be a list, got {describe(value)}")
        seen: set[str] = set()
        for i, item in enumerate(value):
            at = f"{path}[{i}]"
            data = self.mapping(item, at, keys | {"name"})
            name = self.name(data, at, "name", "label")
            if name in seen:
                raise self.fail(join(at, "name"), f"duplicate {kind} name {name!r}")
            seen.add(name)
            yield at, data, name

    def relative(self, path: str) -> str:
        """A file the policy names, relative to the policy file's folder (as Prometheus reads its config)."""
        if os.path.isabs(path) or self.source.startswith("<"):
            return path
        return os.path.join(os.path.dirname(self.source), path)

    def notifications(self, value: object) -> tuple[Notification, ...]:
        keys = {"format", "url", "urlFile", "urlEnv", "events", "timeout", "retries", "backoff"}
        out: list[Notification] = []
        for at, data, name in self.named_items(value, "spec.notifications", keys, "notification"):
            url, url_file, url_env = self.url_source(data, at)
            events = data.get("events", list(NOTIFY_EVENTS))
            if not isinstance(events, list) or not events or any(e not in NOTIFY_EVENTS for e in events):
                raise self.fail(join(at, "events"), f"must be a list of: {', '.join(NOTIFY_EVENTS)}")
            out.append(Notification(
                name=name,
                format=self.choice(data, at, "format", "json", NOTIFY_FORMATS),
                url=url,
                url_file=url_file,
                url_env=url_env,
                events=tuple(dict.fromkeys(events)),
                timeout_s=self.duration(data, at, "timeout", 5, 0.1, 60),
                retries=self.integer(data, at, "retries", 3, 0, 10),
                backoff_s=self.duration(data, at, "backoff", 1, 0.01, 60),
            ))  # fmt: skip
        return tuple(out)

    def url_source(self, data: Mapping[str, Any], at: str) -> tuple[str | None, str | None, str | None]:
        """Exactly one of url, urlFile (relative to the policy's folder), urlEnv."""
        given = [k for k in ("url", "urlFile", "urlEnv") if k in data]
        if len(given) != 1:
            raise self.fail(at, "needs exactly one of url, urlFile, urlEnv (a URL with a token: urlFile or urlEnv)")
        url = self.string(data, at, "url") if "url" in data else None
        if url is not None and (problem := url_problem(url)) is not None:
            raise self.fail(join(at, "url"), f"must be an http:// or https:// URL: {problem}")
        url_file = self.relative(self.string(data, at, "urlFile")) if "urlFile" in data else None
        url_env = self.name(data, at, "urlEnv", "env") if "urlEnv" in data else None
        return url, url_file, url_env

    def webhooks(self, value: object, steps: tuple[int, ...]) -> tuple[Webhook, ...]:
        keys = {"type", "url", "urlFile", "urlEnv", "timeout", "retries", "backoff", "steps", "maxWait", "onTimeout"}
        out: list[Webhook] = []
        for at, data, name in self.named_items(value, "spec.webhooks", keys, "webhook"):
            self.required(data, at, "type")
            kind = self.choice(data, at, "type", "gate", WEBHOOK_TYPES)
            if kind != "gate":
                for key in ("steps", "maxWait", "onTimeout"):
                    if key in data:
                        raise self.fail(join(at, key), f"applies to a gate only, not to a {kind} webhook")
            guarded = (
                self.later_steps(data.get("steps", list(steps[1:])), join(at, "steps"), steps, empty=False)
                if kind == "gate"
                else ()
            )
            url, url_file, url_env = self.url_source(data, at)
            out.append(Webhook(
                name=name,
                type=kind,  # type: ignore[arg-type]
                url=url,
                url_file=url_file,
                url_env=url_env,
                timeout_s=self.duration(data, at, "timeout", 10, 0.1, 300),
                retries=self.integer(data, at, "retries", 2, 0, 10),
                backoff_s=self.duration(data, at, "backoff", 1, 0.01, 60),
                steps=guarded,
                max_wait_s=self.duration(data, at, "maxWait", 1800, 1, MAX_DURATION_S),
                on_timeout=self.choice(data, at, "onTimeout", "rollback", GATE_TIMEOUT_RULES),  # type: ignore[arg-type]
            ))  # fmt: skip
        return tuple(out)

    def target(self, value: object) -> Target:
        path = "spec.target"
        data = self.mapping(value, path, {"namespace", "virtualService", "host", "baseline", "canary", "route"})
        target = Target(
            namespace=self.name(data, path, "namespace", "label"),
            virtual_service=self.name(data, path, "virtualService", "subdomain"),
            host=self.name(data, path, "host", "host"),
            baseline=self.name(data, path, "baseline", "label", "v1"),
            canary=self.name(data, path, "canary", "label", "v2"),
            route=self.name(data, path, "route", "route") if "route" in data else None,
        )
        if target.baseline == target.canary:
            raise self.fail(f"{path}.canary", f"must differ from the baseline subset ({target.baseline!r})")
        return target

    def steps(self, value: object) -> tuple[int, ...]:
        problem = steps_problem(value)
        if problem is not None:
            raise self.fail(f"spec.steps{problem[0]}", problem[1])
        assert isinstance(value, list)
        return tuple(value)

    def analysis(self, value: object) -> Analysis:
        path = "spec.analysis"
        data = self.mapping(value, path, {"judge", "alpha", "passAlpha", "kayenta", "flagger"})
        alpha = self.number(data, path, "alpha", 0.05, _level, LEVEL_RANGE)
        pass_alpha = self.number(data, path, "passAlpha", 0.2, _level, LEVEL_RANGE)
        kp = f"{path}.kayenta"
        kay = self.mapping(data.get("kayenta", {}), kp, {"confidence", "effect", "marginal", "pass", "minIntervals"})
        kayenta = KayentaSettings(
            confidence=self.number(kay, kp, "confidence", 0.98, lambda c: 0.5 <= c < 1, "a probability in [0.5, 1)"),
            effect=self.number(kay, kp, "effect", 0.25, lambda e: e >= 0, "a non-negative fraction"),
            marginal=self.number(kay, kp, "marginal", 75, lambda s: 0 <= s <= 100, "a score in 0..100"),
            pass_score=self.number(kay, kp, "pass", 95, lambda s: 0 <= s <= 100, "a score in 0..100"),
            min_intervals=self.integer(kay, kp, "minIntervals", 3, 2),
        )
        if kayenta.marginal > kayenta.pass_score:
            raise self.fail(f"{kp}.marginal", f"must not exceed pass ({kayenta.pass_score:g})")
        fp = f"{path}.flagger"
        flg = self.mapping(data.get("flagger", {}), fp, {"minSuccessRate", "maxP99", "threshold"})
        given = flg.get("maxP99", "500ms")
        max_p99 = parse_duration(given) if isinstance(given, str) else None  # a bare 500: Flagger's ms or seconds?
        if max_p99 is None or max_p99 <= 0:
            raise self.fail(
                f"{fp}.maxP99", f"must be a positive duration with its unit, like 500ms, got {describe(given)}"
            )
        flagger = FlaggerSettings(
            min_success_rate=self.number(flg, fp, "minSuccessRate", 99, lambda s: 0 < s <= 100, "a percentage"),
            max_p99_ms=max_p99 * 1000,
            threshold=self.integer(flg, fp, "threshold", 5, 1),
        )
        return Analysis(
            judge=self.choice(data, path, "judge", "sequential", JUDGES),  # type: ignore[arg-type]
            alpha=alpha,
            pass_alpha=pass_alpha,
            kayenta=kayenta,
            flagger=flagger,
        )

    def metrics(self, value: object) -> tuple[MetricSpec, ...]:
        path = "spec.metrics"
        if not isinstance(value, list) or not value:
            got = "an empty list" if value == [] else describe(value)
            raise self.fail(path, f"must be a non-empty list of metrics, got {got}")
        metrics = [self.metric(item, f"{path}[{i}]") for i, item in enumerate(value)]
        seen: set[str] = set()
        for i, metric in enumerate(metrics):
            if metric.name in seen:
                raise self.fail(f"{path}[{i}].name", f"duplicate metric name {metric.name!r}")
            seen.add(metric.name)
        return tuple(metrics)

    def metric(self, value: object, path: str) -> MetricSpec:
        common = {"name", "kind", "weight", "critical"}
        if not isinstance(value, dict):
            raise self.fail(path, f"must be a mapping, got {describe(value)}")
        kind = self.required(value, path, "kind")
        if kind == "error-rate":
            data = self.mapping(value, path, common | {"errors", "maxIncrease"})
            return ErrorRateMetric(
                name=self.string(data, path, "name"),
                errors=self.choice(data, path, "errors", "5xx", ERROR_CLASSES),  # type: ignore[arg-type]
                max_increase=self.rate_increase(data, path),
                weight=self.number(data, path, "weight", 1.0, lambda w: 0 < w <= MAX_WEIGHT, WEIGHT_RANGE),
                critical=self.flag(data, path, "critical"),
            )
        if kind == "latency":
            data = self.mapping(value, path, common | {"quantiles"})
            raw = self.required(data, path, "quantiles")
            qpath = f"{path}.quantiles"
            if not isinstance(raw, list) or not raw:
                raise self.fail(qpath, f"must be a non-empty list of {{quantile, maxIncrease}}, got {describe(raw)}")
            quantiles = tuple(self.quantile(item, f"{qpath}[{i}]") for i, item in enumerate(raw))
            if len({q.quantile for q in quantiles}) != len(quantiles):
                raise self.fail(qpath, "names the same quantile twice")
            return LatencyMetric(
                name=self.string(data, path, "name"),
                quantiles=quantiles,
                weight=self.number(data, path, "weight", 1.0, lambda w: 0 < w <= MAX_WEIGHT, WEIGHT_RANGE),
                critical=self.flag(data, path, "critical"),
            )
        if kind == "custom":
            data = self.mapping(value, path, common | {"events", "total", "maxIncrease"})
            return CustomRatioMetric(
                name=self.string(data, path, "name"),
                events=self.template(data, path, "events"),
                total=self.template(data, path, "total"),
                max_increase=self.rate_increase(data, path),
                weight=self.number(data, path, "weight", 1.0, lambda w: 0 < w <= MAX_WEIGHT, WEIGHT_RANGE),
                critical=self.flag(data, path, "critical"),
            )
        raise self.fail(f"{path}.kind", f"must be one of error-rate, latency, custom, got {kind!r}")

    def template(self, data: Mapping[str, Any], path: str, key: str) -> str:
        text = self.string(data, path, key, lines=True)  # a PromQL template may span lines
        problem = template_error(text)
        if problem is not None:
            raise self.fail(join(path, key), problem)
        return text

    def quantile(self, value: object, path: str) -> QuantileTolerance:
        data = self.mapping(value, path, {"quantile", "maxIncrease"})
        self.required(data, path, "quantile")
        q = self.number(data, path, "quantile", 0.5, lambda x: 0 < x < 1, "a quantile strictly between 0 and 1")
        return QuantileTolerance(quantile=q, max_increase=self.fraction(data, path))

    def fraction(self, data: Mapping[str, Any], path: str) -> float:
        self.required(data, path, "maxIncrease")
        return self.number(data, path, "maxIncrease", 0.0, lambda x: 0 < x < 10, "a positive fraction (0.1 = 10%)")

    def rate_increase(self, data: Mapping[str, Any], path: str) -> float:
        """A rate's tolerance is absolute: at 1 or more no canary could ever exceed it."""
        self.required(data, path, "maxIncrease")
        expect = "a positive share of requests below 1 (0.005 = +0.5 percentage points)"
        return self.number(data, path, "maxIncrease", 0.0, lambda x: 0 < x < 1, expect)

    def flag(self, data: Mapping[str, Any], path: str, key: str) -> bool:
        value = data.get(key, False)
        if not isinstance(value, bool):
            raise self.fail(join(path, key), f"must be true or false, got {describe(value)}")
        return value
