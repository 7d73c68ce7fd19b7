"""A small Kubernetes API server for Istio's networking resources on 127.0.0.1, to test the Istio router over HTTP.

It answers the real `kubernetes` client the way a real API server answers for custom resources at
`/apis/networking.istio.io/{version}/namespaces/{ns}/{virtualservices|destinationrules}[/{name}]`, for the
versions it is told to serve (Istio 1.22 and later serve v1alpha3, v1beta1 and v1; older ones lack v1):
discovery (`/apis/networking.istio.io/{version}`, 404 for a version not served); LIST; GET; PUT (replace, with
optimistic concurrency on `metadata.resourceVersion`: stale → 409, absent → unconditional); PATCH as
`application/merge-patch+json` (RFC 7386) or `application/json-patch+json` (RFC 6902: add, remove,
replace, test), 415 for a strategic merge patch (custom resources have no patch strategy); a new
resourceVersion on every write that changes the object (one that changes nothing stores nothing); errors
as `Status` objects shaped like the real server's. Invalid objects (no spec, a weight that is not an
integer) get 422; a name that does not match the URL gets 400, as the real server answers.

Tests reach in through `get`, `edit` (a write by someone else, bumping the resourceVersion),
`fail_next` (the next request, or the next PUT, gets an error status), `fail_after_commit` (the write is
made, the answer is an error), `garble_next` (a 200 whose body is not JSON) and `after_next_get` (run
something between a client's GET and its next request, e.g. a concurrent write). `KubeApiServer` is a
context manager that always stops the server and waits for its threads.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

GROUP = "networking.istio.io"
VERSIONS = ("v1alpha3", "v1beta1", "v1")
KINDS = {"virtualservices": "VirtualService", "destinationrules": "DestinationRule"}
RESOURCE = f"virtualservices.{GROUP}"
PATH = re.compile(
    rf"^/apis/{re.escape(GROUP)}/(?P<version>v1alpha3|v1beta1|v1)/namespaces/(?P<ns>[^/]+)/"
    r"(?P<plural>virtualservices|destinationrules)(?:/(?P<name>[^/]+))?$"
)
ANNOTATIONS_LIMIT = 256 * 1024
DISCOVERY = re.compile(rf"^/apis/{re.escape(GROUP)}/(?P<version>[^/]+)$")
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "istio"

Key = tuple[str, str, str]  # plural, namespace, name
REASONS = {400: "BadRequest", 401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 409: "Conflict",
           422: "Invalid", 500: "InternalError", 503: "ServiceUnavailable", 504: "Timeout"}  # fmt: skip


class ApiError(Exception):
    """An answer other than 2xx, raised inside a handler and sent as a Kubernetes `Status`."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body


def _not_found(name: str, plural: str = "virtualservices") -> ApiError:
    details = {"name": name, "group": GROUP, "kind": plural}
    return ApiError(404, "NotFound", f'{plural}.{GROUP} "{name}" not found', details)


def _conflict(name: str, plural: str = "virtualservices") -> ApiError:
    details = {"name": name, "group": GROUP, "kind": plural}
    message = (
        f'Operation cannot be fulfilled on {plural}.{GROUP} "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    return ApiError(409, "Conflict", message, details)


def _invalid(name: str, field: str, problem: str) -> ApiError:
    cause = {"reason": "FieldValueInvalid", "message": f"{field}: {problem}", "field": field}
    details = {"name": name, "group": GROUP, "kind": "VirtualService", "causes": [cause]}
    return ApiError(422, "Invalid", f'VirtualService.{GROUP} "{name}" is invalid: {field}: {problem}', details)


def _validate(obj: Any, name: str) -> None:
    """The checks the Istio CRD's schema makes on what canary touches: a spec, integer weights."""
    if not isinstance(obj, dict):
        raise ApiError(400, "BadRequest", "the body of the request is not a JSON object")
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        raise _invalid(name, "metadata", "Required value")
    if meta.get("name", name) != name:
        message = f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})"
        raise ApiError(400, "BadRequest", message)
    annotations = meta.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(isinstance(v, str) for v in annotations.values()):
        raise _invalid(name, "metadata.annotations", "Invalid value: annotation values must be strings")
    size = sum(len(k.encode()) + len(v.encode()) for k, v in annotations.items())
    if size > ANNOTATIONS_LIMIT:  # the real server's total limit (apimachinery ValidateAnnotations)
        raise _invalid(name, "metadata.annotations", f"Too long: must have at most {ANNOTATIONS_LIMIT} bytes")
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        raise _invalid(name, "spec", "Required value")
    http = spec.get("http", [])
    if not isinstance(http, list):
        raise _invalid(name, "spec.http", f'Invalid value: "{type(http).__name__}": must be of type array')
    for i, rule in enumerate(http):
        for j, dest in enumerate(rule.get("route", []) if isinstance(rule, dict) else []):
            weight = dest.get("weight", 0) if isinstance(dest, dict) else 0
            if not isinstance(weight, int) or isinstance(weight, bool):
                field = f"spec.http[{i}].route[{j}].weight"
                raise _invalid(name, field, f'Invalid value: "{weight!r}": {field} in body must be of type integer')


# -------------------------------------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, null removes a member, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise ValueError(f"invalid JSON pointer {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def _index(container: list[Any], token: str, *, adding: bool) -> int:
    if adding and token == "-":
        return len(container)
    if not token.isdigit():
        raise ValueError(f"{token!r} is not an array index")
    index, limit = int(token), len(container) + (1 if adding else 0)
    if index >= limit:
        raise ValueError(f"index {index} out of range")
    return index


def json_patch(doc: Any, operations: Any) -> Any:
    """RFC 6902 add, remove, replace and test, all or nothing; ValueError names the operation that failed."""
    if not isinstance(operations, list):
        raise ValueError("a JSON patch is a list of operations")
    doc = copy.deepcopy(doc)
    for n, op in enumerate(operations):
        if not isinstance(op, dict) or not isinstance(op.get("path"), str):
            raise ValueError(f"operation {n}: needs an op and a path")
        kind, tokens = op.get("op"), _pointer(op["path"])
        if kind not in ("add", "remove", "replace", "test"):
            raise ValueError(f"operation {n}: unsupported op {kind!r}")
        if kind != "remove" and "value" not in op:
            raise ValueError(f"operation {n}: {kind} needs a value")
        if not tokens:
            if kind == "test":
                if doc != op["value"]:
                    raise ValueError(f"operation {n}: test failed at {op['path']!r}")
                continue
            if kind == "remove":
                raise ValueError(f"operation {n}: cannot remove the whole document")
            doc = copy.deepcopy(op["value"])
            continue
        parent: Any = doc
        try:
            for token in tokens[:-1]:
                parent = parent[_index(parent, token, adding=False)] if isinstance(parent, list) else parent[token]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"operation {n}: path {op['path']!r} does not exist") from exc
        last = tokens[-1]
        if isinstance(parent, list):
            index = _index(parent, last, adding=kind == "add")
            if kind == "add":
                parent.insert(index, copy.deepcopy(op["value"]))
            elif kind == "remove":
                del parent[index]
            elif kind == "replace":
                parent[index] = copy.deepcopy(op["value"])
            elif parent[index] != op["value"]:
                raise ValueError(f"operation {n}: test failed at {op['path']!r}")
        elif isinstance(parent, dict):
            if kind != "add" and last not in parent:
                raise ValueError(f"operation {n}: path {op['path']!r} does not exist")
            if kind in ("add", "replace"):
                parent[last] = copy.deepcopy(op["value"])
            elif kind == "remove":
                del parent[last]
            elif parent[last] != op["value"]:
                raise ValueError(f"operation {n}: test failed at {op['path']!r}")
        else:
            raise ValueError(f"operation {n}: path {op['path']!r} does not exist")
    return doc


# ---------------------------------------------------------------------------------------------- server


class KubeApiServer:
    """Istio networking objects served over HTTP on 127.0.0.1 at a free port; `with KubeApiServer(objs) as api:`."""

    def __init__(self, objects: Iterable[dict[str, Any]], *, served: tuple[str, ...] = VERSIONS) -> None:
        self._lock = threading.Lock()
        self._versions = itertools.count(1000)
        self.served = served
        self._store: dict[Key, dict[str, Any]] = {}
        plurals = {kind: plural for plural, kind in KINDS.items()}
        for obj in objects:
            meta = obj["metadata"]
            stored = copy.deepcopy(obj)
            stored["metadata"] = {
                **meta,
                "namespace": meta.get("namespace", "default"),
                "uid": str(uuid.uuid4()),
                "generation": 1,
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "resourceVersion": str(next(self._versions)),
            }
            self._store[(plurals[obj["kind"]], stored["metadata"]["namespace"], meta["name"])] = stored
        self._failures: list[tuple[str | None, ApiError]] = []
        self._failures_after_commit: list[tuple[str | None, ApiError | bytes]] = []
        self._after_get: list[Callable[[], None]] = []
        self._garbled_reads: list[bytes] = []
        self._slow_writes: list[float] = []
        self.requests: list[tuple[str, str, str | None]] = []  # method, path, content type
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread: threading.Thread | None = None

    @classmethod
    def with_fixtures(cls, *, served: tuple[str, ...] = VERSIONS) -> KubeApiServer:
        """Seeded with every VirtualService and DestinationRule in fixtures/istio, as `kubectl apply` would
        (the real manifests canary is tested on)."""
        return cls(fixture_objects(), served=served)

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path, *, context: str = "test") -> Path:
        """Write a kubeconfig pointing at this server (plain HTTP, no credentials) and return its path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "local", "cluster": {"server": self.url}}],
            "users": [{"name": "nobody", "user": {}}],
            "contexts": [{"name": context, "context": {"cluster": "local", "user": "nobody"}}],
            "current-context": context,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        return path

    def start(self) -> KubeApiServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="kube-api-server", daemon=True
        )  # a short poll interval: stopping waits at most this long
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join()
            self._thread = None
        self._httpd.server_close()  # joins the request threads (one request per connection: HTTP/1.0)

    def __enter__(self) -> KubeApiServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- test hooks

    def get(self, namespace: str, name: str, plural: str = "virtualservices") -> dict[str, Any]:
        with self._lock:
            return copy.deepcopy(self._store[(plural, namespace, name)])

    def edit(self, namespace: str, name: str, change: Callable[[dict[str, Any]], None]) -> None:
        """A write by another client: `change` edits the stored object in place; the resourceVersion moves."""
        with self._lock:
            obj = copy.deepcopy(self._store[("virtualservices", namespace, name)])
            change(obj)
            self._commit(("virtualservices", namespace, name), obj)

    def fail_next(self, code: int, message: str = "", *, method: str | None = None) -> None:
        """The next request (of `method`, when given) gets `code` as a Status, e.g. 503, or a webhook's 422."""
        reason = REASONS.get(code) or HTTPStatus(code).phrase.replace(" ", "")
        with self._lock:
            self._failures.append((method, ApiError(code, reason, message or HTTPStatus(code).description)))

    def fail_after_commit(self, code: int, message: str = "", *, method: str | None = "PUT") -> None:
        """The next write (of `method`) is made, then answered with `code`: a gateway timing out on its way back."""
        reason = REASONS.get(code) or HTTPStatus(code).phrase.replace(" ", "")
        with self._lock:
            self._failures_after_commit.append(
                (method, ApiError(code, reason, message or HTTPStatus(code).description))
            )

    def garble_next(self, body: bytes = b"<html>upstream reset</html>", *, method: str | None = "PUT") -> None:
        """The next request of `method` is answered 200 with a body that is not JSON: a write is made first,
        a GET (discovery included) reads nothing."""
        with self._lock:
            if method == "GET":
                self._garbled_reads.append(body)
            else:
                self._failures_after_commit.append((method, body))

    def commit_late(self, seconds: float) -> None:
        """The next PUT is committed `seconds` after it came (a slow etcd), reads served meanwhile see the object
        as it was; a client that gave up waiting has no answer, the write is made all the same."""
        with self._lock:
            self._slow_writes.append(seconds)

    def after_next_get(self, action: Callable[[], None]) -> None:
        """Run `action` once the next successful GET has read the object, before the client gets the answer."""
        with self._lock:
            self._after_get.append(action)

    # --- semantics

    def _commit(self, key: Key, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a validated object under a new resourceVersion (caller holds the lock)."""
        old = self._store[key]
        meta = obj["metadata"]
        for field in ("name", "namespace", "uid", "creationTimestamp"):  # server-owned, kept as stored
            meta[field] = old["metadata"][field]
        obj["apiVersion"] = old.get("apiVersion")  # stored at one version, served at whichever is asked for
        generation = old["metadata"]["generation"]
        meta["generation"] = generation + 1 if obj.get("spec") != old.get("spec") else generation
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if obj == old:  # as the real server: a write that changes nothing stores nothing, the version stays
            return copy.deepcopy(old)
        meta["resourceVersion"] = str(next(self._versions))
        self._store[key] = obj
        return copy.deepcopy(obj)

    def _lookup(self, key: Key) -> dict[str, Any]:
        if key not in self._store:
            raise _not_found(key[2], key[0])
        return self._store[key]

    def handle(
        self, method: str, path: str, content_type: str | None, body: bytes
    ) -> tuple[int, dict[str, Any] | bytes]:
        with self._lock:
            wait = self._slow_writes.pop(0) if method == "PUT" and self._slow_writes else 0.0
        time.sleep(wait)  # outside the lock: other requests are answered meanwhile
        with self._lock:
            self.requests.append((method, path, content_type))
            for i, (only, failure) in enumerate(self._failures):
                if only in (None, method):
                    del self._failures[i]
                    return failure.code, failure.status()
            if method == "GET" and self._garbled_reads:
                return 200, self._garbled_reads.pop(0)
            bare = path.split("?", 1)[0]
            discovery = DISCOVERY.match(bare)
            if discovery is not None and method == "GET":
                return 200, self._discovery(discovery["version"])
            match = PATH.match(bare)
            if match is None or match["version"] not in self.served:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            version, plural = match["version"], match["plural"]
            if match["name"] is None:
                if method != "GET":
                    raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {plural}")
                return 200, self._list(version, plural, match["ns"])
            key = (plural, match["ns"], match["name"])
            if method == "GET":
                return 200, self._as(version, copy.deepcopy(self._lookup(key)))
            if method not in ("PUT", "PATCH"):
                raise ApiError(405, "MethodNotAllowed", f"the server does not allow this method on {plural}")
            current = self._lookup(key)
            wanted = self._patched(current, content_type, _decode(body)) if method == "PATCH" else _decode(body)
            _validate(wanted, key[2])
            wanted.setdefault("metadata", {})
            sent_version = wanted["metadata"].get("resourceVersion")
            if method == "PUT" and not sent_version:  # custom resources allow no unconditional update
                raise ApiError(
                    422, "Invalid",
                    f'{plural}.{GROUP} "{key[2]}" is invalid: metadata.resourceVersion: Invalid value: 0x0: '
                    "must be specified for an update",
                )  # fmt: skip
            if sent_version and sent_version != current["metadata"]["resourceVersion"]:
                raise _conflict(key[2], plural)
            stored = self._commit(key, wanted)
            for i, (only, failure) in enumerate(self._failures_after_commit):
                if only in (None, method):
                    del self._failures_after_commit[i]
                    if isinstance(failure, bytes):
                        return 200, failure  # the write is made; the answer is garbage
                    return failure.code, failure.status()  # the write is made; the answer says otherwise
            return 200, self._as(version, stored)

    def _discovery(self, version: str) -> dict[str, Any]:
        if version not in self.served:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        resources = [
            {"name": plural, "singularName": kind.lower(), "namespaced": True, "kind": kind,
             "verbs": ["delete", "deletecollection", "get", "list", "patch", "create", "update", "watch"]}
            for plural, kind in KINDS.items()
        ]  # fmt: skip
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": f"{GROUP}/{version}",
                "resources": resources}  # fmt: skip

    def _list(self, version: str, plural: str, namespace: str) -> dict[str, Any]:
        items = [self._as(version, copy.deepcopy(o)) for (p, ns, _), o in sorted(self._store.items()) if
                 p == plural and ns == namespace]  # fmt: skip
        return {"apiVersion": f"{GROUP}/{version}", "kind": f"{KINDS[plural]}List",
                "metadata": {"resourceVersion": str(next(self._versions))}, "items": items}  # fmt: skip

    def _patched(self, current: dict[str, Any], content_type: str | None, patch: Any) -> Any:
        kind = (content_type or "").split(";", 1)[0].strip()
        base = copy.deepcopy(current)
        del base["metadata"]["resourceVersion"]  # a patch is unconditional unless it names a version itself
        if kind == MERGE_PATCH:
            return merge_patch(base, patch)
        if kind == JSON_PATCH:
            try:
                return json_patch(base, patch)
            except ValueError as exc:
                raise ApiError(
                    422, "Invalid", f"the server rejected our request due to an error in our request: {exc}"
                ) from None
        raise ApiError(
            415,
            "UnsupportedMediaType",
            f"the body of the request was in an unknown format - accepted media types include: "
            f"{JSON_PATCH}, {MERGE_PATCH}, application/apply-patch+yaml",
        )

    @staticmethod
    def _as(version: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj["apiVersion"] = f"{GROUP}/{version}"  # served at whichever version was asked for
        return obj

    def run_after_get(self) -> None:
        with self._lock:
            actions, self._after_get = self._after_get[:1], self._after_get[1:]
        for action in actions:
            action()


def fixture_objects() -> list[dict[str, Any]]:
    """Every VirtualService and DestinationRule in fixtures/istio, verbatim."""
    docs = [d for p in sorted(FIXTURES.glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    return [d for d in docs if isinstance(d, dict) and d.get("kind") in KINDS.values()]


def fixtures_with(change: Callable[[list[dict[str, Any]]], None]) -> list[dict[str, Any]]:
    """fixtures/istio as the server loads them, with one test-specific change made to a copy."""
    objects = copy.deepcopy(fixture_objects())
    change(objects)
    return objects


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    """The object of that kind and name among `objects` (to change it in a `fixtures_with` function)."""
    return next(o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name)


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ApiError(400, "BadRequest", f"the body of the request is not valid JSON: {exc}") from None


def _handler_for(api: KubeApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            try:
                code, doc = api.handle(self.command, self.path, self.headers.get("Content-Type"), body)
            except ApiError as exc:
                code, doc = exc.code, exc.status()
            if self.command == "GET" and code == 200:
                api.run_after_get()  # before the answer leaves, so the client's next request sees the change
            data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()

        do_GET = do_PUT = do_PATCH = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read `api.requests` instead
            pass

    return Handler
