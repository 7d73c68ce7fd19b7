"""What Istio's metrics mean, written as PromQL: pure data and functions, no I/O.

The Prometheus source only runs the queries built here, and `canary queries` / `canary alerts` print them,
so the meaning of "a request of v2", "an error" or "p95" lives in one place. Every label value is escaped
on the way in, so a service or version name can never change the shape of a query.

Two families of queries:
- *raw-sample queries* (`raw_query`, `custom_raw_query`): one per metric, both versions together, range
  vectors evaluated at the window's end. They return the stored samples, which the source differences on the
  client into exact integer counts (see `canary.sources.counters`).
- *operator queries* (`operator_queries`): rates and quantiles for people and dashboards. `rate()` and
  `histogram_quantile()` interpolate, so canary never judges with them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import promql_parser

if TYPE_CHECKING:
    from canary.policy import MetricsScope

REQUESTS_TOTAL = "istio_requests_total"
ENGINE_PREFIX = "canary"  # canary's own metrics (canary/engine_metrics.py): canary_weight, canary_phase, ...
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"

DEFAULT_REPORTER = "destination"  # the server-side proxy: each request counted once
REPORTERS = ("destination", "source", "waypoint")  # sidecars on either side, ambient mode's waypoint proxy
_DURATION = re.compile(r"(?:[0-9]+(?:ms|s|m|h|d|w|y))+")


def check_window(text: str) -> str:
    """A PromQL duration (`5m`, `1h30m`) as given; ValueError for anything else (it is pasted into queries)."""
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(f"a window must be a Prometheus duration such as 1m, 5m or 1h30m, got {text[:40]!r}")
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800, "y": 31_536_000}
    seconds = sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|s|m|h|d|w|y)", text))
    if not 1 <= seconds <= 30 * 86_400:
        raise ValueError(f"a window must be 1s to 30d, got {text[:40]!r}")
    return text


VERSION_LABEL = "destination_version"

# Labels the custom-metric query adds so one answer can be split by version and by events/total.
PART_LABEL = "canary_part"
CUSTOM_VERSION_LABEL = "canary_version"

PLACEHOLDERS = ("service", "namespace", "version", "window")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REGEX_MATCHER = re.compile(r'(=~|!~)\s*"((?:[^"\\]|\\.)*)"')  # a regex matcher and its string's inside


# ------------------------------------------------------------------------------------------ escaping


def quote(value: str) -> str:
    """`value` as a PromQL double-quoted string literal that reads back as exactly `value`."""
    out = ['"']
    for ch in value:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\r":
            out.append("\\r")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


_RE2_META = set("\\.+*?()|[]{}^$")


def regex_literal(value: str) -> str:
    """`value` as an RE2 pattern matching exactly that text (Go's regexp.QuoteMeta)."""
    return "".join("\\" + ch if ch in _RE2_META else ch for ch in value)


def one_of(values: tuple[str, ...] | list[str]) -> str:
    """An RE2 alternation matching exactly the given values and nothing else."""
    return "|".join(regex_literal(v) for v in values)


def duration(seconds: float) -> str:
    """A PromQL duration for a whole number of seconds, rounded up: `60s`."""
    return f"{max(1, math.ceil(seconds))}s"


def format_le(bound: float) -> str:
    """A bucket bound printed the way Prometheus (Go's `FormatFloat(f, 'g', -1, 64)`) prints `le`.

    0.5 -> `0.5`, 600000 -> `600000`, 1800000 -> `1.8e+06`, inf -> `+Inf`.
    """
    if math.isinf(bound):
        return "+Inf" if bound > 0 else "-Inf"
    if bound == 0:
        return "0"
    sign = "-" if bound < 0 else ""
    shortest = Decimal(repr(abs(bound))).normalize().as_tuple()
    digits = "".join(str(d) for d in shortest.digits)
    exponent = len(digits) + int(shortest.exponent) - 1
    if exponent < -4 or exponent >= 6:  # Go switches to %e at these exponents for the shortest form
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if exponent >= 0 else '-'}{abs(exponent):02d}"
    point = exponent + 1  # digits before the decimal point
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return f"{sign}{digits}{'0' * (point - len(digits))}"
    return f"{sign}{digits[:point]}.{digits[point:]}"


def parse_le(text: str) -> float:
    """A bucket's `le` label value as a float (`+Inf` -> inf); ValueError if it is not a number."""
    value = float(text)
    if math.isnan(value):
        raise ValueError(f"bucket bound {text!r} is not a number")
    return value


# -------------------------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class Scope:
    """Which Istio series belong to a target: service host, namespace, reporter, and the two versions."""

    service: str  # destination_service, the target's host
    namespace: str  # destination_workload_namespace
    baseline: str
    canary: str
    reporter: str = DEFAULT_REPORTER

    def __post_init__(self) -> None:
        if self.reporter not in REPORTERS:
            raise ValueError(f"the Istio reporter must be one of {', '.join(REPORTERS)}, got {self.reporter!r}")

    @property
    def versions(self) -> tuple[str, str]:
        return (self.baseline, self.canary)

    @classmethod
    def of(cls, target: MetricsScope, reporter: str = DEFAULT_REPORTER) -> Scope:
        """The series of a policy's metrics scope (the host's full name, its service's namespace)."""
        return cls(target.host, target.namespace, target.baseline, target.canary, reporter)


def selector(scope: Scope, *, versions: tuple[str, ...] | None = None, extra: str = "") -> str:
    """The label matchers (inside `{}`) selecting the target's series, for both versions by default."""
    chosen = scope.versions if versions is None else versions
    version = f"{VERSION_LABEL}={quote(chosen[0])}" if len(chosen) == 1 else f"{VERSION_LABEL}=~{quote(one_of(chosen))}"
    parts = [
        f"reporter={quote(scope.reporter)}",
        f"destination_service={quote(scope.service)}",
        f"destination_workload_namespace={quote(scope.namespace)}",
        version,
    ]
    if extra:
        parts.append(extra)
    return ",".join(parts)


# ----------------------------------------------------------------------------------------- error classes


@dataclass(frozen=True)
class ErrorClass:
    """One meaning of "failed request": as PromQL matchers for dashboards, as a predicate for raw series."""

    name: str
    matchers: str  # PromQL label matchers selecting the failed requests' series
    description: str
    is_error: Callable[[Mapping[str, str]], bool]


def _grpc_failed(labels: Mapping[str, str]) -> bool:
    status = labels.get("grpc_response_status", "")
    return status not in ("", "0")


ERROR_CLASSES: dict[str, ErrorClass] = {
    "5xx": ErrorClass(
        "5xx",
        'response_code=~"5.."',
        "HTTP 5xx responses",
        lambda labels: re.fullmatch(r"5..", labels.get("response_code", ""), re.DOTALL) is not None,
    ),
    "non-2xx": ErrorClass(
        "non-2xx",
        'response_code!~"2.."',
        "responses other than HTTP 2xx",
        lambda labels: re.fullmatch(r"2..", labels.get("response_code", ""), re.DOTALL) is None,
    ),
    "grpc": ErrorClass(
        "grpc",
        'grpc_response_status!="0",grpc_response_status!=""',
        "gRPC responses with a status other than OK",
        _grpc_failed,
    ),
}


# --------------------------------------------------------------------------------------- raw-sample queries


def raw_query(metric: str, scope: Scope, window_s: float) -> str:
    """Every stored sample of `metric` for both versions over the last `window_s` seconds (a range vector).

    Evaluated as an instant query at the window's end, this returns the raw samples of every series, which
    the client differences exactly; one query answers both versions.
    """
    return f"{metric}{{{selector(scope)}}}[{duration(window_s)}]"


def last_value_query(metric: str, scope: Scope, window_s: float) -> str:
    """Each series' last value within `window_s` before the evaluation time (an instant vector)."""
    return f"last_over_time({metric}{{{selector(scope)}}}[{duration(window_s)}])"


def render_template(template: str, *, service: str, namespace: str, version: str, window: str) -> str:
    """Fill a custom template's placeholders; values are escaped for use inside a double-quoted string.

    Only the four known placeholders are replaced, so PromQL's own braces (`m{a="b"}`) pass through.
    `{window}` is a duration (`60s`) and is inserted as is.
    """
    raw = {"service": service, "namespace": namespace, "version": version}

    def fill(text: str, *, regex: bool) -> str:
        def value(m: re.Match[str]) -> str:
            name = m.group(1)
            if name == "window":
                return window
            if name not in raw:
                return m.group(0)
            return _escape_in_string(regex_literal(raw[name]) if regex else raw[name])

        return _PLACEHOLDER.sub(value, text)

    # Inside a `=~` or `!~` matcher's string a value is a regular expression: escape it as one first, so a
    # host such as `web.default` matches only itself.
    out, at = [], 0
    for m in _REGEX_MATCHER.finditer(template):
        out.append(fill(template[at : m.start(2)], regex=False))
        out.append(fill(m.group(2), regex=True))
        at = m.end(2)
    out.append(fill(template[at:], regex=False))
    return "".join(out)


def _escape_in_string(value: str) -> str:
    return quote(value)[1:-1]


def custom_raw_query(events: str, total: str, scope: Scope, *, interval_s: float, range_s: float, step_s: int) -> str:
    """One query for a custom ratio: both templates for both versions, as a subquery of raw values.

    Each rendered template is tagged with `canary_part` (events or total) and `canary_version`, the four
    are joined with `or`, and the result is sampled every `step_s` seconds over the last `range_s` seconds,
    so the client can difference the counters as it does raw samples. `{window}` is the analysis interval.
    """
    window = duration(interval_s)
    parts: list[str] = []
    for version in scope.versions:
        for part, template in (("events", events), ("total", total)):
            rendered = render_template(
                template, service=scope.service, namespace=scope.namespace, version=version, window=window
            )
            tagged = f'label_replace(({rendered}),"{PART_LABEL}","{part}","","")'
            parts.append(f'label_replace({tagged},"{CUSTOM_VERSION_LABEL}",{quote(version)},"","")')
    return f"({' or '.join(parts)})[{duration(range_s)}:{step_s}s]"


_STRING_LITERAL = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`')


def template_error(template: str) -> str | None:
    """Why a custom template is not usable, in one line; None when it is fine.

    The template must use only the known placeholders, must mention `{version}` (so each version gets its
    own series), and, filled with sample values, must parse as PromQL yielding an instant vector.
    """
    if not isinstance(template, str) or not template.strip():
        return "must be a non-empty PromQL template"
    unknown = sorted({m.group(1) for m in _PLACEHOLDER.finditer(template)} - set(PLACEHOLDERS))
    if unknown:
        known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
        return f"unknown placeholder {{{unknown[0]}}} (expected one of {known})"
    if "{version}" not in template:
        return "must use the {version} placeholder, so baseline and canary get their own series"
    rendered = render_template(
        template, service="web.default.svc.cluster.local", namespace="default", version="v1", window="60s"
    )
    if "#" in _STRING_LITERAL.sub("", rendered):
        return "holds a PromQL comment ('#'), which would swallow what canary writes after the template; remove it"
    try:
        expr = promql_parser.parse(rendered)
        kind = _value_type(expr)
    except ValueError as exc:
        return f"not valid PromQL: {exc}"
    except RecursionError:
        return "nested too deeply to check"
    if kind != "vector":
        return f"must yield an instant vector of counters, but yields a {kind}"
    return None


def _value_type(expr: object) -> str:
    """The PromQL value type an expression evaluates to: vector, matrix, scalar or string."""
    if isinstance(expr, promql_parser.VectorSelector | promql_parser.AggregateExpr):
        return "vector"
    if isinstance(expr, promql_parser.MatrixSelector | promql_parser.SubqueryExpr):
        return "range vector"
    if isinstance(expr, promql_parser.NumberLiteral):
        return "scalar"
    if isinstance(expr, promql_parser.StringLiteral):
        return "string"
    if isinstance(expr, promql_parser.ParenExpr | promql_parser.UnaryExpr):
        return _value_type(expr.expr)
    if isinstance(expr, promql_parser.Call):
        return {"Vector": "vector", "Matrix": "range vector", "Scalar": "scalar", "String": "string"}.get(
            str(expr.func.return_type).rsplit(".", 1)[-1], "vector"
        )
    if isinstance(expr, promql_parser.BinaryExpr):
        sides = {_value_type(expr.lhs), _value_type(expr.rhs)}
        return "vector" if "vector" in sides else "scalar"
    return "vector"


# ---------------------------------------------------------------------------------------- operator queries


@dataclass(frozen=True)
class OperatorQuery:
    """A query for people: what it shows and the exact PromQL to paste into Prometheus or Grafana."""

    name: str
    description: str
    promql: str


def request_rate(scope: Scope, window: str = "1m") -> str:
    return f"sum by ({VERSION_LABEL}) (rate({REQUESTS_TOTAL}{{{selector(scope)}}}[{window}]))"


def error_rate(scope: Scope, error_class: str, window: str = "1m") -> str:
    errors = ERROR_CLASSES[error_class].matchers
    failed = f"sum by ({VERSION_LABEL}) (rate({REQUESTS_TOTAL}{{{selector(scope, extra=errors)}}}[{window}]))"
    return f"({failed} or {request_rate(scope, window)} * 0)\n  / {request_rate(scope, window)}"


def success_rate(scope: Scope, error_class: str = "5xx", window: str = "1m") -> str:
    return f"1 - (\n  {error_rate(scope, error_class, window)}\n)"


def latency_quantile(scope: Scope, quantile: float, window: str = "1m") -> str:
    buckets = f"sum by ({VERSION_LABEL}, le) (rate({DURATION_BUCKET}{{{selector(scope)}}}[{window}]))"
    return f"histogram_quantile({quantile:g}, {buckets})"


def incoming_dependencies(scope: Scope, window: str = "1m") -> str:
    """Who calls the target, per calling workload and version called."""
    by = f"source_workload, source_workload_namespace, {VERSION_LABEL}"
    return f"sum by ({by}) (rate({REQUESTS_TOTAL}{{{selector(scope)}}}[{window}]))"


def dependencies_by_app(scope: Scope, window: str = "1m") -> str:
    """Who calls the target, per calling app (the seed's service graph query) and version called."""
    return f"sum by (source_app, {VERSION_LABEL}) (rate({REQUESTS_TOTAL}{{{selector(scope)}}}[{window}]))"


def outgoing_dependencies(scope: Scope, window: str = "1m") -> str:
    """What the target's versions call, as reported by their own sidecars (reporter="source").

    The calling workload is matched by its canonical service name, taken as the host's first label
    (`web-app` for `web-app.default.svc.cluster.local`), and by `source_version`.
    """
    app = scope.service.split(".", 1)[0]
    matchers = ",".join(
        [
            'reporter="source"',
            f"source_canonical_service={quote(app)}",
            f"source_workload_namespace={quote(scope.namespace)}",
            f"source_version=~{quote(one_of(scope.versions))}",
        ]
    )
    by = "source_version, destination_service, response_code"
    return f"sum by ({by}) (rate({REQUESTS_TOTAL}{{{matchers}}}[{window}]))"


def operator_queries(
    scope: Scope,
    *,
    error_classes: tuple[str, ...] = ("5xx",),
    quantiles: tuple[float, ...] = (0.95,),
    custom: tuple[tuple[str, str, str], ...] = (),
    window: str = "1m",
) -> list[OperatorQuery]:
    """The queries `canary queries` prints: rates, error and success rates, quantiles, dependencies.

    `custom` holds (name, events template, total template) triples; each is shown per version as a
    ratio of increases over `window`.
    """
    check_window(window)
    queries = [OperatorQuery("request rate", "requests per second, per version", request_rate(scope, window))]
    for name in dict.fromkeys(error_classes):
        what = ERROR_CLASSES[name].description
        queries.append(
            OperatorQuery(f"error rate ({name})", f"share of {what}, per version", error_rate(scope, name, window))
        )
        queries.append(
            OperatorQuery(
                f"success rate ({name})",
                f"share of requests without {what}, per version",
                success_rate(scope, name, window),
            )
        )
    for q in sorted(set(quantiles) | {0.95}):
        queries.append(
            OperatorQuery(
                f"p{_percent(q)} latency",
                f"{_percent(q)}th percentile of request duration in ms, per version (interpolated inside a bucket)",
                latency_quantile(scope, q, window),
            )
        )
    queries.append(
        OperatorQuery(
            "incoming dependencies", "who calls the service, requests per second", incoming_dependencies(scope, window)
        )
    )
    queries.append(
        OperatorQuery(
            "outgoing dependencies",
            "what each version calls, requests per second",
            outgoing_dependencies(scope, window),
        )
    )
    for name, events, total in custom:
        for version in scope.versions:
            rendered = [
                render_template(t, service=scope.service, namespace=scope.namespace, version=version, window=window)
                for t in (events, total)
            ]
            queries.append(
                OperatorQuery(
                    f"{name} ({version})",
                    f"custom ratio events/total over {window}, {version}",
                    f"sum(increase(({rendered[0]})[{window}:])) / sum(increase(({rendered[1]})[{window}:]))",
                )
            )
    return queries


def _percent(q: float) -> str:
    return f"{q * 100:g}"
