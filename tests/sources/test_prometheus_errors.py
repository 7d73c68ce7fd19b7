"""Failures reach the controller as canary's typed errors, with one clear line and no secrets.

Unreachable, slow and misbehaving servers are real HTTP servers on 127.0.0.1 (a closed port, a local
server that sleeps or answers 503), and bad queries and credentials go to the real Prometheus.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from istio_history import HOST, IstioHistory
from prometheus_server import PrometheusServer, free_port

from canary.errors import BadQuery, SourceError, SourceTimeout, SourceUnreachable
from canary.policy import CustomRatioMetric, ErrorRateMetric, Target
from canary.sources.prometheus import PrometheusSettings, PrometheusSource

TARGET = Target(namespace="default", virtual_service="vs", host=HOST, baseline="v1", canary="v2")
ERRORS = (ErrorRateMetric("errors", max_increase=0.01),)
EMPTY_ANSWER = {"status": "success", "data": {"resultType": "matrix", "result": []}}
SECRET = "s3cr3t-token-value"
PASSWORD = "canary-test-password"
# bcrypt (cost 4) of PASSWORD, for Prometheus' web config.
PASSWORD_HASH = "$2b$04$JAIgLUpia5vGe/EkCtUcMeG9JZspQm99L5LEMzQ0jlN9I4wYlbVMC"


@dataclass
class Local:
    """A local HTTP server answering every request the same way, recording what it received."""

    status: int = 200
    body: object = field(default_factory=lambda: EMPTY_ANSWER)
    delay_s: float = 0.0
    requests: list[dict[str, str]] = field(default_factory=list)
    url: str = ""


@contextmanager
def local_server(spec: Local) -> Iterator[Local]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            spec.requests.append({k.lower(): v for k, v in self.headers.items()} | {":path": self.path})
            time.sleep(spec.delay_s)
            payload = json.dumps(spec.body).encode()
            try:
                self.send_response(spec.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up first

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    spec.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield spec
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def observe(url: str, **settings: object) -> None:
    with PrometheusSource(PrometheusSettings(url, **settings)) as src:  # type: ignore[arg-type]
        src.observe(TARGET.scope, ERRORS, 1_000.0, 1_060.0)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# ------------------------------------------------------------------------------------------ transport


def test_closed_port_is_unreachable_with_a_clear_message():
    port = free_port()
    started = time.monotonic()
    with pytest.raises(SourceUnreachable) as caught:
        observe(f"http://127.0.0.1:{port}", retries=1, backoff_s=0.01)
    message = one_line(caught.value)
    assert f"cannot reach Prometheus at http://127.0.0.1:{port}" in message
    assert "Connection refused" in message and "2 tries" in message
    assert caught.value.temporary and caught.value.__cause__ is not None
    assert time.monotonic() - started < 3


def test_slow_server_is_a_timeout_and_is_not_retried():
    with local_server(Local(delay_s=1.5)) as slow:
        started = time.monotonic()
        with pytest.raises(SourceTimeout) as caught:
            observe(slow.url, timeout_s=0.3, retries=3, backoff_s=0.01)
        elapsed = time.monotonic() - started
    assert "did not answer the metric 'errors' query within 0.3 s" in one_line(caught.value)
    assert caught.value.temporary
    assert len(slow.requests) == 1 and elapsed < 1.2


def test_server_errors_are_retried_then_reported_as_unreachable():
    body = {"status": "error", "errorType": "unavailable", "error": "ingester down"}
    with local_server(Local(status=503, body=body)) as failing, pytest.raises(SourceUnreachable) as caught:
        observe(failing.url, retries=2, backoff_s=0.01)
    assert len(failing.requests) == 3
    assert "failed the metric 'errors' query after 3 tries (HTTP 503): ingester down" in one_line(caught.value)


def test_client_errors_are_not_retried():
    body = {"status": "error", "errorType": "bad_data", "error": "parse error"}
    with local_server(Local(status=400, body=body)) as rejecting, pytest.raises(BadQuery):
        observe(rejecting.url, retries=3, backoff_s=0.01)
    assert len(rejecting.requests) == 1


def test_server_side_timeout_is_a_timeout():
    body = {"status": "error", "errorType": "timeout", "error": "query timed out in expression evaluation"}
    busy = Local(status=503, body=body)
    with local_server(busy), pytest.raises(SourceTimeout, match="gave up on the metric 'errors' query"):
        observe(busy.url, retries=0)


def test_an_answer_that_is_not_prometheus_json_is_a_source_error():
    wrong = Local(body="<html>")  # JSON, but not the API's shape
    with local_server(wrong), pytest.raises(SourceError, match=r"without data\.result"):
        observe(wrong.url)


def test_wrong_path_is_reported_as_no_query_api():
    nothing = Local(status=404, body={"error": "not found"})
    with local_server(nothing), pytest.raises(SourceError, match=r"no Prometheus query API at .* \(HTTP 404\)"):
        observe(nothing.url + "/not-prometheus")


# ------------------------------------------------------------------------------------------ bad query


@pytest.mark.prometheus
def test_bad_custom_template_is_a_bad_query_with_the_servers_reason(source, history: IstioHistory):
    broken = CustomRatioMetric("broken", events="rate(x{v={version}})", total='y{v="{version}"}', max_increase=0.1)
    with pytest.raises(BadQuery) as caught:
        source.observe(TARGET.scope, (broken,), history.start, history.end)
    message = one_line(caught.value)
    assert "rejected the metric 'broken' query (HTTP 400)" in message and "parse error" in message
    assert not caught.value.temporary


@pytest.mark.prometheus
def test_templates_that_disagree_on_labels_are_reported(source, history: IstioHistory):
    mismatched = CustomRatioMetric(
        "mismatch",
        events='app_checkout_failures_total{version="{version}"}',
        total='sum by (version) (app_checkouts_total{version="{version}"})',
        max_increase=0.1,
    )
    with pytest.raises(SourceError, match="has events but no total"):
        source.observe(TARGET.scope, (mismatched,), history.start, history.end)


# -------------------------------------------------------------------------------------- credentials


def test_bearer_token_and_tenant_header_are_sent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    token_file = tmp_path / "token"
    token_file.write_text(SECRET + "\n")
    with local_server(Local()) as capture:
        settings = PrometheusSettings.from_options(
            capture.url, bearer_token_file=str(token_file), headers=["X-Scope-OrgID: tenant-1"]
        )
        with PrometheusSource(settings) as src:
            src.observe(TARGET.scope, ERRORS, 1_000.0, 1_060.0)
    sent = capture.requests[0]
    assert sent["authorization"] == f"Bearer {SECRET}"
    assert sent["x-scope-orgid"] == "tenant-1"
    assert SECRET not in repr(settings) and SECRET not in repr(src)


def test_token_from_environment_is_sent(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CANARY_TEST_TOKEN", SECRET)
    with local_server(Local()) as capture:
        observe(capture.url, bearer_token_env="CANARY_TEST_TOKEN")
    assert capture.requests[0]["authorization"] == f"Bearer {SECRET}"


def test_missing_secret_sources_are_clear_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("CANARY_NO_SUCH_TOKEN", raising=False)
    with pytest.raises(SourceError, match=r"environment variable CANARY_NO_SUCH_TOKEN .* is not set"):
        PrometheusSource(PrometheusSettings("http://127.0.0.1:9", bearer_token_env="CANARY_NO_SUCH_TOKEN"))
    with pytest.raises(SourceError, match=r"the Prometheus password: .*nope: no such file"):
        PrometheusSource(
            PrometheusSettings(
                "http://127.0.0.1:9", basic_auth_user="u", basic_auth_password_file=str(tmp_path / "nope")
            )
        )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "127.0.0.1:9090"}, "must look like http://host:9090"),
        ({"url": "http://user:pw@127.0.0.1:9090"}, "not the URL"),
        ({"url": "http://x", "timeout_s": 0}, "more than 0 and at most 3600 seconds"),
        ({"url": "http://x", "bearer_token_file": "a", "bearer_token_env": "B"}, "not both"),
        ({"url": "http://x", "basic_auth_user": "u"}, "needs both a user and a password"),
        ({"url": "http://x", "headers": (("X-Bad\nHeader", "v"),)}, "invalid HTTP header name"),
        ({"url": "http://x", "headers": (("X-Ok", "a\r\nInjected: 1"),)}, "must be one line"),
        ({"url": "http://[::1"}, "cannot be parsed"),
        ({"url": "http://user:pw@[::1:9090"}, "cannot be parsed"),
        ({"url": "http://x:99999"}, "cannot be parsed"),
        ({"url": "http://x", "delay_s": math.nan}, "must be 0 to 3600 seconds"),
        ({"url": "http://x", "delay_s": math.inf}, "must be 0 to 3600 seconds"),
        ({"url": "http://x", "backoff_s": math.nan}, "must be 0 to 3600 seconds"),
        ({"url": "http://x", "lookback_s": -1.0}, "must be 0 to 3600 seconds"),
    ],
)
def test_invalid_settings_are_rejected_with_one_line(kwargs, message):
    with pytest.raises(SourceError, match=message) as caught:
        PrometheusSettings(**kwargs)
    assert "pw" not in str(caught.value)


@pytest.mark.parametrize(
    ("header", "shown"),
    [
        ("Authorization Bearer s3cr3t", "(starting 'Authorization'; the rest is not shown)"),
        ("Authorization Bearer s3cr3t==", "(starting 'Authorization'; the rest is not shown)"),  # split at '='
        ("s3cr3t", "must look like 'Name: value'"),
        (" s3cr3t", "must look like 'Name: value'"),
    ],
)
def test_a_malformed_header_never_shows_its_value(header: str, shown: str):
    with pytest.raises(SourceError) as caught:
        PrometheusSettings.from_options("http://x", headers=[header])
    assert shown in str(caught.value) and "s3cr3t" not in str(caught.value)


def test_header_options_must_have_a_name_and_value():
    with pytest.raises(SourceError, match="must look like 'Name: value'"):
        PrometheusSettings.from_options("http://x", headers=["no-separator"])
    settings = PrometheusSettings.from_options("http://x/", headers=["X-Scope-OrgID=t1"], insecure=True)
    assert settings.headers == (("X-Scope-OrgID", "t1"),) and not settings.verify
    assert (
        repr(settings)
        == "PrometheusSettings(url='http://x', timeout_s=10.0, retries=2, verify=False, headers=[X-Scope-OrgID])"
    )


@pytest.mark.prometheus
@pytest.mark.usefixtures("prometheus_binary")
def test_basic_auth_against_a_real_protected_prometheus(tmp_path: Path, history: IstioHistory):
    web = f"basic_auth_users:\n  canary: {PASSWORD_HASH}\n"
    password_file = tmp_path / "password"
    password_file.write_text(PASSWORD)
    with PrometheusServer(web_config=web, scheme="http") as server:
        good = PrometheusSettings(server.url, basic_auth_user="canary", basic_auth_password_file=str(password_file))
        with PrometheusSource(good) as src:
            window = src.observe(TARGET.scope, ERRORS, history.start, history.end).metrics["errors"]
        assert window.baseline == {} and window.canary == {}  # an empty server answers: no data
        password_file.write_text("wrong-" + PASSWORD)
        with pytest.raises(SourceError, match=r"refused the credentials \(HTTP 401\)") as caught:
            PrometheusSource(good).observe(TARGET.scope, ERRORS, history.start, history.end)
    assert PASSWORD not in str(caught.value) and PASSWORD not in repr(good)


@pytest.mark.prometheus
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
@pytest.mark.usefixtures("prometheus_binary")
def test_tls_with_a_ca_bundle_verifies_and_without_it_fails_clearly(tmp_path: Path, history: IstioHistory):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    web = f"tls_server_config:\n  cert_file: {cert}\n  key_file: {key}\n"
    with PrometheusServer(web_config=web, scheme="https") as server:
        with PrometheusSource(PrometheusSettings(server.url, ca_file=str(cert))) as src:
            assert src.observe(TARGET.scope, ERRORS, history.start, history.end).metrics["errors"].canary == {}
        with pytest.raises(SourceError, match=r"TLS with Prometheus at https://127.0.0.1:.* failed") as caught:
            observe(server.url)
        assert "certificate verify failed" in one_line(caught.value)
        with pytest.warns(Warning):  # urllib3 warns about unverified HTTPS, and it works
            observe(server.url, verify=False)
