"""The Prometheus metrics source: Istio's standard metrics for baseline and canary from a real server.

The one module that talks to `prometheus_api_client`. It runs one range-vector query per metric (both
versions together) evaluated at the window's end, hands the raw samples to `canary.sources.counters` for
exact, reset-aware differencing, and turns every library or HTTP failure into canary's own errors
(unreachable, timeout, bad query) with one clear line and the cause chained. Credentials are read here,
sent as headers, and never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import ast
import json
import logging
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests
from prometheus_api_client import PrometheusConnect
from prometheus_api_client.exceptions import PrometheusApiClientException
from urllib3.exceptions import ReadTimeoutError
from urllib3.util.retry import Retry

from canary import secrets
from canary.deadline import DeadlineExceeded, deadline
from canary.errors import BadQuery, InputError, SourceError, SourceTimeout, SourceUnreachable
from canary.inputs import checked_secret, read_file, read_secret
from canary.model import MetricWindow, Observation
from canary.policy import CustomRatioMetric, ErrorRateMetric, LatencyMetric, MetricSpec, MetricsScope
from canary.promql import (
    DURATION_BUCKET,
    ERROR_CLASSES,
    REPORTERS,
    REQUESTS_TOTAL,
    Scope,
    custom_raw_query,
    last_value_query,
    raw_query,
)
from canary.sources.counters import (
    CountError,
    Series,
    based,
    custom_window,
    error_window,
    gapped,
    histogram_window,
    parse_matrix,
    parse_vector,
)

log = logging.getLogger(__name__)

RETRY_STATUSES = (500, 502, 503, 504)
MAX_TIMEOUT_S = 3600.0  # a query, a delay, a lookback: an hour at the most
MAX_RETRIES = 10
LAST_VALUE_LOOKBACK_S = 3600.0  # a series silent for longer before the window counts as new there
MAX_SUBQUERY_POINTS = 11_000  # per series, Prometheus' own limit for range queries
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_SENSITIVE = re.compile(r"auth|token|secret|key|cookie|pass", re.IGNORECASE)  # header names whose values hide
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")


@dataclass(frozen=True, repr=False)
class PrometheusSettings:
    """How to reach Prometheus (or Thanos, Mimir, Cortex, VictoriaMetrics) and how Istio labels series.

    Secrets are named, never held: a token or password comes from a file or an environment variable and is
    read when the source is built.
    """

    url: str
    timeout_s: float = 10.0
    retries: int = 2  # extra tries after a connection error or a 5xx; 4xx is never retried
    backoff_s: float = 0.5  # urllib3 backoff factor: sleeps 0, 2×, 4× … this between tries
    bearer_token_file: str | None = None
    bearer_token_env: str | None = None
    basic_auth_user: str | None = None
    basic_auth_password_file: str | None = None
    basic_auth_password_env: str | None = None
    ca_file: str | None = None
    verify: bool = True
    headers: tuple[tuple[str, str], ...] = ()  # extra headers, e.g. ("X-Scope-OrgID", "tenant-1")
    pod_label: str = "pod"
    reporter: str = "destination"
    lookback_s: float = 300.0  # how far before the window to look for each series' base sample
    delay_s: float = 0.0  # read each window this much in the past, so its last scrapes have landed

    def __post_init__(self) -> None:
        try:
            parts = urlsplit(self.url)
            parts.port  # noqa: B018 (parsed lazily: raises on a port that is not a number in range)
        except ValueError:  # an unclosed '[', a bad port; the URL itself may hold credentials, so not shown
            raise SourceError("Prometheus URL must look like http://host:9090; this one cannot be parsed") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise SourceError(f"Prometheus URL must look like http://host:9090, got {self.safe_url!r}")
        if parts.username or parts.password:
            raise SourceError("put Prometheus credentials in a token or password file or env var, not the URL")
        if not (0 < self.timeout_s <= MAX_TIMEOUT_S):
            raise SourceError(
                f"--prometheus-timeout must be more than 0 and at most {MAX_TIMEOUT_S:g} seconds, "
                f"got {self.timeout_s!r}"
            )
        if not 0 <= self.retries <= MAX_RETRIES:
            raise SourceError(f"--prometheus-retries must be 0 to {MAX_RETRIES}, got {self.retries!r}")
        if not 0 <= self.delay_s <= MAX_TIMEOUT_S:
            raise SourceError(f"--prometheus-delay must be 0 to {MAX_TIMEOUT_S:g} seconds, got {self.delay_s!r}")
        if not all(0 <= x <= MAX_TIMEOUT_S for x in (self.backoff_s, self.lookback_s)):
            raise SourceError(f"Prometheus backoff and lookback must be 0 to {MAX_TIMEOUT_S:g} seconds")
        if self.bearer_token_file and self.bearer_token_env:
            raise SourceError("give the Prometheus bearer token as a file or an env var, not both")
        if self.basic_auth_password_file and self.basic_auth_password_env:
            raise SourceError("give the Prometheus password as a file or an env var, not both")
        has_password = bool(self.basic_auth_password_file or self.basic_auth_password_env)
        if has_password != bool(self.basic_auth_user):
            raise SourceError("Prometheus basic auth needs both a user and a password file or env var")
        if has_password and (self.bearer_token_file or self.bearer_token_env):
            raise SourceError("use either a bearer token or basic auth for Prometheus, not both")
        for name, value in self.headers:
            if not _HEADER_NAME.match(name):
                raise SourceError(f"invalid HTTP header name{_header_hint(name)}")
            if any(c in value for c in "\r\n\0"):
                raise SourceError(f"the value of header {name} must be one line")
        if not _LABEL_NAME.fullmatch(self.pod_label):
            raise SourceError(f"--prometheus-pod-label must be a Prometheus label name, got {self.pod_label!r}")
        if self.reporter not in REPORTERS:
            raise SourceError(f"--prometheus-reporter must be one of {', '.join(REPORTERS)}, got {self.reporter!r}")

    @property
    def safe_url(self) -> str:
        """The URL without any user:password part, for messages."""
        parts = urlsplit(self.url)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunsplit((parts.scheme, netloc, parts.path, "", "")).rstrip("/")

    def __repr__(self) -> str:
        shown = [f"url={self.safe_url!r}", f"timeout_s={self.timeout_s!r}", f"retries={self.retries!r}"]
        for key in ("bearer_token_file", "bearer_token_env", "basic_auth_user", "basic_auth_password_file",
                    "basic_auth_password_env", "ca_file"):  # fmt: skip
            if getattr(self, key):
                shown.append(f"{key}={getattr(self, key)!r}")
        if not self.verify:
            shown.append("verify=False")
        if self.headers:
            shown.append(f"headers=[{', '.join(name for name, _ in self.headers)}]")  # names only
        return f"PrometheusSettings({', '.join(shown)})"

    @classmethod
    def from_options(
        cls,
        url: str,
        *,
        timeout_s: float = 10.0,
        retries: int = 2,
        backoff_s: float = 0.5,
        bearer_token_file: str | None = None,
        bearer_token_env: str | None = None,
        basic_auth_user: str | None = None,
        basic_auth_password_file: str | None = None,
        basic_auth_password_env: str | None = None,
        ca_file: str | None = None,
        insecure: bool = False,
        headers: Sequence[str] = (),
        pod_label: str = "pod",
        reporter: str = "destination",
        delay_s: float = 0.0,
    ) -> PrometheusSettings:
        """From command-line values; each header as `Name: value` (or `Name=value`)."""
        pairs: list[tuple[str, str]] = []
        for text in headers:
            name, sep, value = text.partition(":")
            if not sep:
                name, sep, value = text.partition("=")
            if not sep or not name.strip():
                raise SourceError(f"a header must look like 'Name: value'{_header_hint(text)}")
            pairs.append((name.strip(), value.strip()))
        return cls(
            url=url.strip(),
            timeout_s=timeout_s,
            retries=retries,
            backoff_s=backoff_s,
            bearer_token_file=bearer_token_file or None,
            bearer_token_env=bearer_token_env or None,
            basic_auth_user=basic_auth_user or None,
            basic_auth_password_file=basic_auth_password_file or None,
            basic_auth_password_env=basic_auth_password_env or None,
            ca_file=ca_file or None,
            verify=not insecure,
            headers=tuple(pairs),
            pod_label=pod_label,
            reporter=reporter,
            delay_s=delay_s,
        )


def _header_hint(text: str) -> str:
    """Which header a message is about, never its value: the first word, if a header name and more follows.

    `Authorization Bearer s3cr3t` -> ` (starting 'Authorization'; …)`; a lone word may be the secret itself.
    """
    words = text.split(maxsplit=1)
    if len(words) < 2 or not _HEADER_NAME.match(words[0]):
        return ""
    return f" (starting {words[0]!r}; the rest is not shown)"


def make_retry(retries: int, backoff_s: float) -> Retry:
    """Retry connection failures and 5xx answers only; never 4xx, a read timeout or a TLS failure.

    `read=False` makes urllib3 re-raise read errors (a timeout) at once: a slow query would only get slower.
    """
    return Retry(
        total=retries,
        connect=retries,
        read=False,
        status=retries,
        other=0,
        redirect=0,
        status_forcelist=RETRY_STATUSES,
        backoff_factor=backoff_s,
        raise_on_status=False,
        raise_on_redirect=False,
    )


def _read_secret(path: str | None, env: str | None, what: str) -> str | None:
    """A token or password from its file (one trailing newline trimmed) or environment variable; an
    unprintable byte is an error naming where it came from, never the value."""
    try:
        if path:
            return read_secret(path, f"Prometheus {what}")
        if env:
            where = f"the environment variable {env} (Prometheus {what})"
            if not os.environ.get(env, "").strip():
                raise SourceError(f"{where} is not set")
            return checked_secret(os.environ[env].strip(), where)
    except InputError as exc:
        raise SourceError(f"the Prometheus {what}: {exc}") from None
    return None


MAX_ANSWER_BYTES = 256 * 1024 * 1024  # far above a tick's answer; a server streaming without end is cut here


class AnswerTooLarge(requests.exceptions.RequestException):
    """The server's answer grew past MAX_ANSWER_BYTES."""


class _CappedSession(requests.Session):
    """A session that reads each answer in chunks and stops past MAX_ANSWER_BYTES: memory stays bounded."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["stream"] = True
        response = super().send(request, **kwargs)
        chunks, size = [], 0
        try:
            for chunk in response.iter_content(64 * 1024):
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise AnswerTooLarge(f"the answer is over {MAX_ANSWER_BYTES // (1024 * 1024)} MiB")
                chunks.append(chunk)
        finally:
            response.close()
        response._content = b"".join(chunks)
        response._content_consumed = True
        return response


class PrometheusSource:
    """A MetricsSource reading Istio's metrics from Prometheus: one query per metric per tick."""

    def __init__(self, settings: PrometheusSettings, client: PrometheusConnect | None = None) -> None:
        self.settings = settings
        self.url = settings.safe_url
        self._client = client if client is not None else self._connect(settings)

    def __repr__(self) -> str:
        return f"PrometheusSource({self.settings!r})"

    @staticmethod
    def _connect(settings: PrometheusSettings) -> PrometheusConnect:
        headers = dict(settings.headers)
        token = _read_secret(settings.bearer_token_file, settings.bearer_token_env, "bearer token")
        password = _read_secret(settings.basic_auth_password_file, settings.basic_auth_password_env, "password")
        sensitive = [value for name, value in settings.headers if _SENSITIVE.search(name)]
        for secret in (token, password, *sensitive):
            secrets.register(secret)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        auth = (settings.basic_auth_user, password) if password is not None else None
        if settings.ca_file:
            try:
                read_file(settings.ca_file, "CA bundle")  # there, a regular file, not huge: ssl reads it later
            except InputError as exc:
                raise SourceError(f"--prometheus-ca-file {exc}") from None
        session = _CappedSession()
        session.verify = settings.ca_file if settings.ca_file and settings.verify else settings.verify
        return PrometheusConnect(
            url=settings.safe_url,
            headers=headers or None,
            retry=make_retry(settings.retries, settings.backoff_s),
            auth=auth,
            session=session,
            timeout=settings.timeout_s,
        )

    def close(self) -> None:
        self._client._session.close()

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ observe

    def scope(self, scope: MetricsScope) -> Scope:
        return Scope.of(scope, self.settings.reporter)

    def queries(self, scope: MetricsScope, metrics: tuple[MetricSpec, ...], start: float, end: float) -> dict[str, str]:
        """The one raw-sample query each metric needs for the window (start, end], evaluated at `end`."""
        promql_scope = self.scope(scope)
        range_s = math.ceil(end - start) + self.settings.lookback_s
        out: dict[str, str] = {}
        for metric in metrics:
            if isinstance(metric, ErrorRateMetric):
                out[metric.name] = raw_query(REQUESTS_TOTAL, promql_scope, range_s)
            elif isinstance(metric, LatencyMetric):
                out[metric.name] = raw_query(DURATION_BUCKET, promql_scope, range_s)
            elif isinstance(metric, CustomRatioMetric):
                step = max(1, math.ceil(range_s / MAX_SUBQUERY_POINTS))
                out[metric.name] = custom_raw_query(
                    metric.events, metric.total, promql_scope, interval_s=end - start, range_s=range_s, step_s=step
                )
            else:
                raise SourceError(f"metric {metric.name!r}: the Prometheus source cannot read its kind")
        return out

    def refuses(self, metric: MetricSpec) -> str | None:
        return None  # every metric kind has its queries (docs/prometheus.md)

    def observe(self, scope: MetricsScope, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        """Exact counts per version and pod over (start, end]; one query per metric, both versions at once.

        With `delay_s` set, the window read is (start - delay, end - delay], and the observation says so.
        """
        if not end > start:
            raise SourceError(f"the analysis window must end after it starts (start={start}, end={end})")
        start, end = start - self.settings.delay_s, end - self.settings.delay_s
        queries = self.queries(scope, metrics, start, end)
        out: dict[str, MetricWindow] = {}
        for metric in metrics:
            result = self.query(queries[metric.name], end, what=f"metric {metric.name!r}")
            try:
                series = self._based(scope, metric, parse_matrix(result), start)
                out[metric.name] = _counter(metric)(
                    series,
                    baseline=scope.baseline,
                    canary=scope.canary,
                    start=start,
                    end=end,
                    pod_label=self.settings.pod_label,
                )
            except CountError as exc:
                raise SourceError(f"metric {metric.name!r} from Prometheus at {self.url}: {exc}") from exc
        return Observation(start=start, end=end, metrics=out)

    def _based(self, scope: MetricsScope, metric: MetricSpec, series: list[Series], start: float) -> list[Series]:
        """The series, those without a sample before the window given their last value before it: one more
        query, only on a tick where a counter's series appears inside the window (a new one, or one back
        from a scrape gap longer than the lookback, whose whole value would otherwise count as new)."""
        name = _COUNTERS.get(type(metric))
        if name is None or not (indices := gapped(series, start)):
            return series
        query = last_value_query(name, self.scope(scope), LAST_VALUE_LOOKBACK_S)
        result = self.query(query, start, what=f"metric {metric.name!r} (last values before the window)")
        return based(series, indices, parse_vector(result), start)

    # ------------------------------------------------------------------------------------------- query

    def query(self, promql: str, at: float, *, what: str = "query") -> list[Any]:
        """Run one instant query at time `at`; canary's errors for every failure."""
        params = {"time": f"{at:.3f}", "timeout": f"{self.settings.timeout_s:g}"}
        log.debug("prometheus query for %s at %.3f: %s", what, at, promql)
        try:
            with deadline(self.settings.timeout_s):
                result = self._client.custom_query(promql, params=params)
        except DeadlineExceeded:
            self._client._session.close()  # the interrupted connection is not reused
            raise SourceTimeout(
                f"Prometheus at {self.url} did not answer the {what} query within {self.settings.timeout_s:g} s "
                "(--prometheus-timeout bounds the whole query: connecting, every read, every retry)"
            ) from None
        except PrometheusApiClientException as exc:
            raise self._http_error(str(exc), what) from exc
        except requests.exceptions.JSONDecodeError as exc:  # also a RequestException, but no transport error
            raise self._not_json(what) from exc
        except requests.exceptions.RequestException as exc:
            raise self._transport_error(exc, what) from exc
        except ValueError as exc:  # a 200 answer that is not JSON: not a Prometheus API
            raise self._not_json(what) from exc
        except (KeyError, TypeError) as exc:
            raise SourceError(f"{self.url} answered the {what} query without data.result") from exc
        except RecursionError:
            raise SourceError(f"{self.url} answered the {what} query with JSON nested too deeply") from None
        if not isinstance(result, list):
            raise SourceError(f"{self.url} answered the {what} query with a malformed result")
        return result

    def _not_json(self, what: str) -> SourceError:
        return SourceError(f"{self.url} answered the {what} query with something other than JSON")

    def _transport_error(self, exc: requests.exceptions.RequestException, what: str) -> SourceError:
        timeout = f"{self.settings.timeout_s:g} s"
        if isinstance(exc, requests.exceptions.SSLError):
            return SourceError(f"TLS with Prometheus at {self.url} failed for {what}: {_reason(exc)}")
        if isinstance(exc, requests.exceptions.ConnectTimeout):
            return SourceUnreachable(f"Prometheus at {self.url} did not accept a connection within {timeout}")
        if isinstance(exc, requests.exceptions.ReadTimeout) or _caused_by(exc, ReadTimeoutError):
            return SourceTimeout(f"Prometheus at {self.url} did not answer the {what} query within {timeout}")
        if isinstance(exc, requests.exceptions.ConnectionError):
            tries = self.settings.retries + 1
            return SourceUnreachable(
                f"cannot reach Prometheus at {self.url} ({tries} tr{'y' if tries == 1 else 'ies'}): {_reason(exc)}"
            )
        return SourceError(f"request to Prometheus at {self.url} for {what} failed: {_reason(exc)}")

    def _http_error(self, message: str, what: str) -> SourceError:
        status, error_type, error = _parse_http_error(secrets.scrub(message))  # a server may echo our token
        detail = f": {error}" if error else ""
        if error_type == "timeout" or status == 504:
            return SourceTimeout(f"Prometheus at {self.url} gave up on the {what} query (HTTP {status}){detail}")
        if status in (400, 422) or error_type in ("bad_data", "execution"):
            return BadQuery(f"Prometheus at {self.url} rejected the {what} query (HTTP {status}){detail}")
        if status in (401, 403):
            return SourceError(f"Prometheus at {self.url} refused the credentials (HTTP {status})")
        if status == 404:
            return SourceError(f"no Prometheus query API at {self.url} (HTTP 404)")
        if status is not None and status >= 500:
            return SourceUnreachable(
                f"Prometheus at {self.url} failed the {what} query after {self.settings.retries + 1} "
                f"tr{'y' if self.settings.retries == 0 else 'ies'} (HTTP {status}){detail}"
            )
        return SourceError(f"Prometheus at {self.url} answered the {what} query with HTTP {status}{detail}")


_COUNTERS: dict[type, str] = {ErrorRateMetric: REQUESTS_TOTAL, LatencyMetric: DURATION_BUCKET}


def _counter(metric: MetricSpec) -> Callable[..., MetricWindow]:
    """The `counters` function turning a metric's raw series into counts (a kind `queries` accepted)."""
    if isinstance(metric, ErrorRateMetric):
        return partial(error_window, is_error=ERROR_CLASSES[metric.errors].is_error)
    if isinstance(metric, LatencyMetric):
        return histogram_window
    return custom_window


def _parse_http_error(message: str) -> tuple[int | None, str | None, str | None]:
    """Status, errorType and error from prometheus_api_client's `HTTP Status Code N (b'…')` message."""
    match = re.match(r"HTTP Status Code (\d+) \((.*)\)\s*$", message, re.DOTALL)
    if not match:
        return None, None, None
    status = int(match.group(1))
    try:
        body = ast.literal_eval(match.group(2))
        data = json.loads(body.decode("utf-8", "replace") if isinstance(body, bytes) else body)
    except (ValueError, SyntaxError, TypeError):
        return status, None, None
    if not isinstance(data, dict):
        return status, None, None
    error = data.get("error")
    text = " ".join(str(error).split())[:300] if error else None
    error_type = data.get("errorType")
    return status, str(error_type) if error_type else None, text


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception, the urllib3 errors it wraps and their causes, outermost first."""
    seen: list[BaseException] = []
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if current in seen:
            continue
        seen.append(current)
        stack.extend(a for a in getattr(current, "args", ()) if isinstance(a, BaseException))
        for attr in ("reason", "__cause__", "__context__"):
            inner = getattr(current, attr, None)
            if isinstance(inner, BaseException):
                stack.append(inner)
    return seen


def _caused_by(exc: BaseException, kind: type[BaseException]) -> bool:
    return any(isinstance(e, kind) for e in _chain(exc))


def _reason(exc: BaseException) -> str:
    """The innermost human reason: 'Connection refused', 'Name or service not known', …"""
    for inner in reversed(_chain(exc)):
        if isinstance(inner, OSError) and inner.strerror:
            return str(inner.strerror)
    for inner in reversed(_chain(exc)):
        if "SSL" in type(inner).__name__ or "certificate" in str(inner).lower():
            text = str(inner)
            found = re.search(r"certificate verify failed[^)'\"]*|wrong version number|[A-Z_]+:[^)'\"]*", text)
            return found.group(0) if found else text[:200]
    return type(exc).__name__
