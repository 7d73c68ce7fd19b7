"""Hostile fakes for tests/test_hostile.py: a Prometheus and a Kubernetes API server that misbehave on purpose,
and a launcher that runs canary commands as real processes under a memory limit.

- `HostilePrometheus`: `/api/v1/query` on 127.0.0.1. By default it answers like a healthy Prometheus (a vector
  for `vector(1)`, raw Istio counter and bucket samples for canary's range-vector queries); `misbehave(reply)`
  makes it answer every query (or, with `metrics_only=True`, every query but the connectivity check) with a
  hostile `Reply`: a status and body of any bytes, a slow `Drip`, a `Huge` body streamed in chunks, a
  `Redirect` to itself. `answer_with(fn)` lets a test compute each answer (hypothesis).
- `HostileKubeApi`: tests/kube_api_server.py's `KubeApiServer` (the real semantics), with the same hostile
  replies for the requests a predicate picks (`misbehave(reply, when=VS_GET)`).
- `MemoryLimitedLauncher`: tests/resilience_helpers.py's fork server (canary imported once, one fork per
  command), whose children also get RLIMIT_AS (and RLIMIT_CPU) before canary runs, so an input that makes
  canary grow without bound ends in a MemoryError instead of eating the machine, and a hang is killed.

Every server binds 127.0.0.1 only, and `stop()` (or leaving the `with` block) ends every connection it holds,
drips and huge bodies included.
"""

from __future__ import annotations

import json
import os
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from kube_api_server import ApiError, KubeApiServer  # noqa: E402

MIB = 1024 * 1024
RLIMIT_AS_BYTES = 2 * 1024 * MIB  # what a canary command may map: far above its ~0.4 GiB, far below "unbounded"
RLIMIT_ENV = "HOSTILE_RLIMIT_AS"
CPU_ENV = "HOSTILE_RLIMIT_CPU"


# ---------------------------------------------------------------------------------------------- replies


@dataclass(frozen=True)
class Reply:
    """One plain answer: status, body (bytes as is; anything else as JSON) and headers."""

    status: int = 200
    body: Any = b""
    headers: Mapping[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})

    def data(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


@dataclass(frozen=True)
class Drip:
    """A 200 whose body (with its true Content-Length) comes one byte every `interval_s`."""

    body: bytes
    interval_s: float = 1.0


@dataclass(frozen=True)
class Huge:
    """A 200 declaring `size` bytes of JSON and streaming them as fast as the client reads: a valid answer
    whose one string value is enormous, so a client that reads it all holds it all."""

    size: int = 1024 * MIB
    chunk: int = MIB


@dataclass(frozen=True)
class Redirect:
    """302 to the very same URL, forever."""

    status: int = 302


Hostile = Reply | Drip | Huge | Redirect
Predicate = Callable[[str, str], bool]  # (method, path with query) -> whether the hostile reply applies


def garbage_reply(status: int = 200) -> Reply:
    body = b"\x00\xff<html><body>502 upstream \x1b[31mreset\x1b[0m</body>\n"
    return Reply(status, body, {"Content-Type": "text/html"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # stop() ends the handlers itself (the stop event), then joins them


class _HostileHttp:
    """The machinery both fakes share: a threaded server on 127.0.0.1, hostile replies, a clean stop."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._handlers: set[threading.Thread] = set()
        self._handlers_lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- sending

    def send_hostile(self, handler: BaseHTTPRequestHandler, reply: Hostile) -> None:
        """Write `reply` to the client; a client that hung up ends it quietly."""
        try:
            if isinstance(reply, Reply):
                self._send(handler, reply.status, reply.data(), reply.headers)
            elif isinstance(reply, Redirect):
                handler.send_response(reply.status)
                handler.send_header("Location", handler.path)
                handler.send_header("Content-Length", "0")
                handler.end_headers()
            elif isinstance(reply, Drip):
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(len(reply.body)))
                handler.end_headers()
                handler.wfile.flush()
                for i in range(len(reply.body)):
                    handler.wfile.write(reply.body[i : i + 1])
                    handler.wfile.flush()
                    if self.stopping.wait(reply.interval_s):
                        return
            elif isinstance(reply, Huge):
                head = b'{"status":"success","data":{"resultType":"matrix","result":[]},"padding":"'
                tail = b'"}'
                handler.send_response(200)
                handler.send_header("Content-Type", "application/json")
                handler.send_header("Content-Length", str(reply.size))
                handler.end_headers()
                handler.wfile.write(head)
                left = reply.size - len(head) - len(tail)
                block = b"A" * reply.chunk
                while left > 0 and not self.stopping.is_set():
                    piece = block if left >= len(block) else block[:left]
                    handler.wfile.write(piece)
                    left -= len(piece)
                handler.wfile.write(tail)
                handler.wfile.flush()
        except OSError:
            pass  # the client gave up (which is what a bounded client does)

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: Mapping[str, str]) -> None:
        handler.send_response(status)
        for name, value in headers.items():
            handler.send_header(name, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
        handler.wfile.flush()

    # --- lifecycle

    def _serve_thread(self, httpd: ThreadingHTTPServer) -> None:
        self.stopping.clear()
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, name=type(self).__name__, daemon=True
        )
        self._thread.start()

    def track(self) -> Callable[[], None]:
        """Register the calling handler thread; returns the function that unregisters it."""
        me = threading.current_thread()
        with self._handlers_lock:
            self._handlers.add(me)

        def done() -> None:
            with self._handlers_lock:
                self._handlers.discard(me)

        return done

    def _stop_httpd(self, httpd: ThreadingHTTPServer) -> None:
        self.stopping.set()
        if self._thread is not None:
            httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        httpd.server_close()
        with self._handlers_lock:
            handlers = list(self._handlers)
        for thread in handlers:  # each sees `stopping` within a drip interval, or fails its next write
            thread.join(timeout=10)


# ------------------------------------------------------------------------------------------- Prometheus

VERSIONS = {"v1": ("web-app-v1-aaaaa", "web-app-v1-bbbbb"), "v2": ("web-app-v2-ccccc",)}
BOUNDS = ("5", "10", "25", "50", "100", "250", "500", "1000", "+Inf")
_RANGE = re.compile(r"\[(\d+)s(?::\d+s)?\]")


def healthy_answer(query: str, at: float) -> dict[str, Any]:
    """What a healthy Prometheus holding steady Istio traffic for web-app v1/v2 answers canary's query."""
    if query.strip() == "vector(1)":
        return {"status": "success", "data": {"resultType": "vector", "result": [{"metric": {}, "value": [at, "1"]}]}}
    found = _RANGE.search(query)
    span = float(found.group(1)) if found else 300.0
    times = [at - span + 15 * i for i in range(int(span // 15) + 1)]
    result: list[dict[str, Any]] = []
    version_label = "destination_version"
    for version, pods in VERSIONS.items():
        for pod in pods:
            base = {"destination_service": "web-app.default.svc.cluster.local", version_label: version, "pod": pod,
                    "reporter": "destination", "destination_workload_namespace": "default"}  # fmt: skip
            if "istio_request_duration_milliseconds_bucket" in query:
                for k, le in enumerate(BOUNDS):
                    share = min(1.0, (k + 1) / (len(BOUNDS) - 1))
                    values = [[t, str(int((t - times[0]) * 10 * share) + 1000)] for t in times]
                    result.append({"metric": {**base, "le": le}, "values": values})
            else:
                for code, rate in (("200", 10.0), ("503", 0.01)):
                    values = [[t, str(int((t - times[0]) * rate) + 500)] for t in times]
                    result.append({"metric": {**base, "response_code": code}, "values": values})
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def matrix(result: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "matrix", "result": result}}


def series(version: str, values: Any, *, pod: str | None = None, **labels: str) -> dict[str, Any]:
    """One raw istio_requests_total series of `version` (values as given: any shape, any type)."""
    metric = {"destination_service": "web-app.default.svc.cluster.local", "destination_version": version,
              "pod": pod or VERSIONS.get(version, ("pod-x",))[0], "reporter": "destination",
              "response_code": "200", **labels}  # fmt: skip
    return {"metric": metric, "values": values}


Answer = Callable[[str, float], Hostile]


class HostilePrometheus(_HostileHttp):
    """A fake Prometheus on 127.0.0.1; `with HostilePrometheus() as prom:` and `prom.url`."""

    def __init__(self) -> None:
        super().__init__()
        self._answer: Answer | None = None
        self.metrics_only = False
        self.requests: list[tuple[str, str, dict[str, str]]] = []  # method, query, headers (lower-case names)
        self._httpd = _Server(("127.0.0.1", 0), self._handler())

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def misbehave(self, reply: Hostile, *, metrics_only: bool = False) -> HostilePrometheus:
        """Answer every query with `reply` (with `metrics_only`, all but the `vector(1)` connectivity check)."""
        return self.answer_with(lambda query, at: reply, metrics_only=metrics_only)

    def answer_with(self, answer: Answer | None, *, metrics_only: bool = False) -> HostilePrometheus:
        self._answer, self.metrics_only = answer, metrics_only
        return self

    def reply_for(self, query: str, at: float) -> Hostile:
        if self._answer is None or (self.metrics_only and query.strip() == "vector(1)"):
            return Reply(200, healthy_answer(query, at))
        return self._answer(query, at)

    def start(self) -> HostilePrometheus:
        self._serve_thread(self._httpd)
        return self

    def stop(self) -> None:
        self._stop_httpd(self._httpd)

    def __enter__(self) -> HostilePrometheus:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                done = fake.track()
                try:
                    parts = urlsplit(self.path)
                    params = {k: v[-1] for k, v in parse_qs(parts.query).items()}
                    if self.command == "POST":
                        length = int(self.headers.get("Content-Length") or 0)
                        body = self.rfile.read(length).decode("utf-8", "replace") if length else ""
                        params.update({k: v[-1] for k, v in parse_qs(body).items()})
                    query = params.get("query", "")
                    fake.requests.append((self.command, query, {k.lower(): v for k, v in self.headers.items()}))
                    try:
                        at = float(params.get("time", time.time()))
                    except ValueError:
                        at = time.time()
                    if not parts.path.endswith("/api/v1/query"):
                        fake.send_hostile(self, Reply(404, b"404 page not found\n", {"Content-Type": "text/plain"}))
                        return
                    fake.send_hostile(self, fake.reply_for(query, at))
                finally:
                    done()

            do_GET = do_POST = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# ------------------------------------------------------------------------------------------- Kubernetes


def VS_GET(method: str, path: str) -> bool:
    """The GET of a VirtualService (not discovery, not the DestinationRule list)."""
    return method == "GET" and "/virtualservices/" in path


def DISCOVERY(method: str, path: str) -> bool:
    return method == "GET" and re.search(r"/apis/networking\.istio\.io/v[^/]+$", path.split("?")[0]) is not None


def ANY(method: str, path: str) -> bool:
    return True


class HostileKubeApi(KubeApiServer, _HostileHttp):
    """KubeApiServer's semantics, with hostile replies for the requests `when` picks."""

    def __init__(self, objects: Sequence[dict[str, Any]], **kwargs: Any) -> None:
        KubeApiServer.__init__(self, objects, **kwargs)
        _HostileHttp.__init__(self)
        self._httpd.server_close()  # the parent's server: replaced by one whose handler can misbehave
        self._httpd = _Server(("127.0.0.1", 0), self._hostile_handler())
        self._rules: list[tuple[Predicate, Hostile, int | None]] = []  # predicate, reply, times left (None: always)
        self.authorizations: list[str] = []

    @classmethod
    def with_fixtures(cls, **kwargs: Any) -> HostileKubeApi:  # type: ignore[override]
        from kube_api_server import fixture_objects

        return cls(fixture_objects(), **kwargs)

    def misbehave(self, reply: Hostile, *, when: Predicate = VS_GET, times: int | None = None) -> HostileKubeApi:
        with self._lock:
            self._rules.append((when, reply, times))
        return self

    def serve_object(self, obj: Any, *, when: Predicate = VS_GET) -> HostileKubeApi:
        """Answer the matching GETs 200 with this JSON value instead of the stored object (a wrong shape)."""
        return self.misbehave(Reply(200, obj), when=when)

    def _rule_for(self, method: str, path: str) -> Hostile | None:
        with self._lock:
            for i, (when, reply, times) in enumerate(self._rules):
                if when(method, path):
                    if times is not None:
                        if times <= 1:
                            del self._rules[i]
                        else:
                            self._rules[i] = (when, reply, times - 1)
                    return reply
        return None

    def start(self) -> HostileKubeApi:
        self._serve_thread(self._httpd)
        return self

    def stop(self) -> None:
        self._stop_httpd(self._httpd)

    def __enter__(self) -> HostileKubeApi:
        return self.start()

    def _hostile_handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                done = api.track()
                try:
                    length = int(self.headers.get("Content-Length") or 0)
                    body = self.rfile.read(length) if length else b""
                    api.authorizations.append(self.headers.get("Authorization", ""))
                    hostile = api._rule_for(self.command, self.path)
                    if hostile is not None:
                        with api._lock:
                            api.requests.append((self.command, self.path, self.headers.get("Content-Type")))
                        api.send_hostile(self, hostile)
                        return
                    try:
                        code, doc = api.handle(self.command, self.path, self.headers.get("Content-Type"), body)
                    except ApiError as exc:
                        code, doc = exc.code, exc.status()
                    if self.command == "GET" and code == 200:
                        api.run_after_get()
                    data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
                    api.send_hostile(self, Reply(code, data))
                finally:
                    done()

            do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


# ----------------------------------------------------------------------------------- launching commands


@dataclass(frozen=True)
class Ran:
    code: int | None  # None: killed at the time limit (a hang)
    out: str
    err: str
    seconds: float

    @property
    def hung(self) -> bool:
        return self.code is None


class MemoryLimitedLauncher:
    """Real canary processes forked from a server that imported canary once, each under RLIMIT_AS."""

    def __init__(self) -> None:
        from resilience_helpers import REPO, ForkServer, base_env

        class _Forks(ForkServer):
            def __init__(self) -> None:  # the same server, started through this module (which adds the limits)
                import tempfile

                self.dir = Path(tempfile.mkdtemp(prefix="canary-hostile-fork-"))
                self.socket_path = self.dir / "socket"
                self._handles = []
                self.process = subprocess.Popen(
                    [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.socket_path)],
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, cwd=REPO, env=base_env(),
                )  # fmt: skip
                assert self.process.stdout is not None
                ready = self.process.stdout.readline()
                if ready.strip() != b"ready":
                    self.process.kill()
                    self.process.wait(10)
                    raise RuntimeError(f"the fork server did not start: {ready!r}")

        self._env = base_env
        self._forks = _Forks()

    def run(
        self,
        argv: Sequence[str | Path],
        *,
        cwd: Path,
        timeout_s: float,
        env: Mapping[str, str] | None = None,
        memory: int = RLIMIT_AS_BYTES,
    ) -> Ran:
        extra = {RLIMIT_ENV: str(memory), CPU_ENV: str(int(timeout_s) + 30), **(env or {})}
        started = time.monotonic()
        handle = self._forks.start([str(a) for a in argv], env=self._env(**extra), cwd=cwd)
        try:
            code: int | None = handle.wait(timeout_s)
        except subprocess.TimeoutExpired:
            code = None
        return Ran(code, handle.stdout(), handle.stderr(), time.monotonic() - started)

    def close(self) -> None:
        self._forks.close()


def _serve_with_limits(path: str) -> None:
    """resilience_helpers' fork server, whose commands also get the address-space and CPU limits."""
    import resilience_helpers as helpers

    plain = helpers._limit

    def limit(limits: Any) -> None:
        memory, cpu = os.environ.get(RLIMIT_ENV), os.environ.get(CPU_ENV)
        if memory:
            resource.setrlimit(resource.RLIMIT_AS, (int(memory), int(memory)))
        if cpu:
            resource.setrlimit(resource.RLIMIT_CPU, (int(cpu), int(cpu)))
        plain(limits)

    helpers._limit = limit
    helpers._serve(path)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--serve":
    _serve_with_limits(sys.argv[2])
