"""A router that moves the weights of an Istio VirtualService in a Kubernetes cluster.

The one module that imports `kubernetes`. It reads the VirtualService through the API server, changes the
two destinations' weights and the rollout state annotation with the same pure rules as the other routers
(`routers/virtualservice.py`), and writes it back with one PUT carrying the resourceVersion it read: if
anyone wrote in between, the API server answers 409 and the write becomes a `WeightConflict`, so canary
never overwrites a change it has not seen, and weights and state are never written apart. Every client
error becomes one line naming the VirtualService, with the cause chained; server
trouble (5xx) is marked temporary, to tell it from a refusal that no retry will cure.
"""

from __future__ import annotations

import json
import os
from typing import Any, NoReturn, cast

import urllib3.exceptions
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from canary import secrets
from canary.deadline import DeadlineExceeded, deadline
from canary.errors import InputError, RouterError, WeightConflict
from canary.inputs import checked_secret, read_file
from canary.model import Weights
from canary.policy import Target
from canary.routers.virtualservice import (
    RouteRead,
    read_route,
    rule_namespaces,
    rules_for,
    subsets_problem,
    with_route,
)
from canary.state import RolloutState

GROUP = "networking.istio.io"
VERSIONS = ("v1", "v1beta1")  # preferred first
PLURAL = "virtualservices"
REQUEST_TIMEOUT_S = 10.0


class RouterServerError(RouterError):
    """The API server failed (5xx): worth another try later, unlike a refusal or a missing object."""

    temporary = True


class Unanswered(RouterServerError):
    """No answer came (a deadline, a connection lost after the request went out, a gateway's 504): the API
    server may still be committing a write, so a read right after it does not tell whether it was made."""

    unanswered = True


def api_client(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client from a kubeconfig file (and context), or in-cluster config when none is given in a pod."""
    try:
        # No transparent retries: a PUT resent after a lost answer would meet its own write as a conflict.
        # The controller retries at the next tick, after reading what the route holds.
        configuration = client.Configuration()
        configuration.retries = False
        if kubeconfig is not None:
            read_file(kubeconfig, "kubeconfig")  # a regular file of sane size, before the client parses it
            with deadline(REQUEST_TIMEOUT_S):  # an `exec` credential plugin runs here, and may wait for a login
                made = cast(client.ApiClient, config.new_client_from_config(  # type: ignore[no-untyped-call]
                    config_file=kubeconfig, context=context, persist_config=False, client_configuration=configuration
                ))  # fmt: skip
            _clean_credentials(made.configuration, f"kubeconfig {kubeconfig}")
            return made
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            if context is not None:
                raise RouterError("--context needs a kubeconfig; in-cluster config has no contexts")
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            _clean_credentials(configuration, "the in-cluster service account")
            return client.ApiClient(configuration)
    except InputError as exc:
        raise RouterError(f"kubeconfig {exc}") from None
    except DeadlineExceeded:
        raise RouterError(
            f"kubeconfig {kubeconfig}: no credentials within {REQUEST_TIMEOUT_S:g} s (an `exec` plugin that waits "
            "for a login, or hangs?)"
        ) from None
    except (ConfigException, OSError, ValueError, TypeError, AttributeError, KeyError, yaml.YAMLError) as exc:
        where = f"kubeconfig {kubeconfig}" if kubeconfig is not None else "in-cluster config"
        raise RouterError(f"{where}: cannot configure a Kubernetes client: {_one_line(str(exc))}") from exc
    raise RouterError("no Kubernetes configuration: give a kubeconfig file, or run in a pod (KUBERNETES_SERVICE_HOST)")


def _clean_credentials(configuration: client.Configuration, where: str) -> None:
    """A bearer token as a header can carry it: one trailing newline trimmed (a `token: |` block leaves one),
    anything else unprintable refused by name; every token is registered so no message ever shows it. The
    kubeconfig loader reloads tokens before each request (they may expire): its hook is kept, and cleaned after."""
    _clean_keys(configuration, where)
    first: Any = getattr(configuration, "refresh_api_key_hook", None)
    if first is None:
        return
    hooks = [first]

    def refresh(conf: client.Configuration) -> None:
        hooks[0](conf)  # the loader's hook sets the token again, and itself as the hook
        hooks[0] = conf.refresh_api_key_hook if conf.refresh_api_key_hook is not refresh else hooks[0]
        conf.refresh_api_key_hook = refresh  # type: ignore[assignment]
        _clean_keys(conf, where)

    configuration.refresh_api_key_hook = refresh  # type: ignore[assignment]


def _clean_keys(configuration: client.Configuration, where: str) -> None:
    keys = getattr(configuration, "api_key", None) or {}
    for name, value in list(keys.items()):
        if not isinstance(value, str):
            continue
        scheme, _, token = value.partition(" ") if value.startswith("Bearer ") else ("", "", value)
        token = token.removesuffix("\n").removesuffix("\r")
        secrets.register(token)
        checked_secret(token, f"the bearer token of {where}")
        keys[name] = f"{scheme} {token}" if scheme else token
    password = getattr(configuration, "password", None)
    if isinstance(password, str):
        secrets.register(password)


class IstioRouter:
    """The VirtualService through the API server, at networking.istio.io/v1 where the server serves it
    (Istio 1.22 and later), else v1beta1; asked once, at the first call."""

    def __init__(self, api: client.ApiClient, *, version: str | None = None) -> None:
        self.api = api
        self._version = version
        self._objects = client.CustomObjectsApi(api)

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None, context: str | None = None) -> IstioRouter:
        return cls(api_client(kubeconfig, context))

    def close(self) -> None:
        self.api.close()  # type: ignore[no-untyped-call]

    def version(self, target: Target) -> str:
        if self._version is None:
            for candidate in VERSIONS:
                try:
                    found = self._call(
                        target, "discover the Istio API of", self._objects.get_api_resources, GROUP, candidate,
                        instead={404: _NotServed},
                    )  # fmt: skip
                except _NotServed:
                    continue
                if not isinstance(found, dict) or found.get("groupVersion") != f"{GROUP}/{candidate}":
                    raise RouterServerError(
                        f"VirtualService {_name(target)}: the API server's discovery answer for {GROUP}/{candidate} "
                        "is not an APIResourceList"
                    )
                self._version = candidate
                break
            else:
                raise RouterError(
                    f"VirtualService {_name(target)}: the API server serves no {GROUP} "
                    f"({' or '.join(VERSIONS)}): is Istio installed?"
                )
        return self._version

    def read(self, target: Target, evidence: type | None = None) -> RouteRead:
        vs = self._object(target, "read", self._objects.get_namespaced_custom_object, target.virtual_service)
        meta = vs.get("metadata")
        revision = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if not isinstance(revision, str) or not revision:
            raise RouterError(f"VirtualService {_name(target)}: the API server sent no metadata.resourceVersion")
        return read_route(vs, target, revision, evidence)

    def write(self, target: Target, read: RouteRead, weights: Weights, state: RolloutState) -> None:
        # The object as read keeps its metadata.resourceVersion: the PUT is conditional, a 409 if anyone wrote.
        updated = with_route(read.document, target, weights, state)
        answer = self._object(
            target, "write", self._objects.replace_namespaced_custom_object, target.virtual_service, updated
        )
        if not isinstance(answer.get("metadata"), dict):
            raise RouterServerError(
                f"VirtualService {_name(target)}: the API server's answer to the write has no metadata; "
                "whether the write was made is read back"
            )

    def subsets_problem(self, target: Target) -> str | None:
        """Both subsets in the DestinationRule Istio applies to the host, looked for where Istio looks, namespace
        by namespace until one holds a rule for it; None also when listing one is not allowed (a service
        account may lack `list destinationrules` there: canary cannot know, and does not block on it)."""
        items: list[Any] = []
        for namespace in rule_namespaces(target):
            try:
                found = self._call(
                    target, f"list the DestinationRules of namespace {namespace} for",
                    self._objects.list_namespaced_custom_object,
                    GROUP, self.version(target), namespace, "destinationrules",
                    instead={401: _Refused, 403: _Refused, 404: _Refused},
                )  # fmt: skip
            except _Refused:
                return None
            listed = found.get("items") if isinstance(found, dict) else None
            items += listed if isinstance(listed, list) else []
            if rules_for(items, target):  # the nearest namespace with a rule for the host decides
                break
        return subsets_problem(items, target)

    def _object(self, target: Target, doing: str, call: Any, *args: Any) -> dict[str, Any]:
        """A VirtualService call (get or replace) whose answer must be an object."""
        found = self._call(target, doing, call, GROUP, self.version(target), target.namespace, PLURAL, *args)
        if not isinstance(found, dict):
            raise RouterServerError(
                f"VirtualService {_name(target)}: the API server answered {type(found).__name__}, not an object"
            )
        return cast(dict[str, Any], found)

    @staticmethod
    def _call(
        target: Target, doing: str, call: Any, *args: Any, instead: dict[int, type[Exception]] | None = None
    ) -> Any:
        """One API call with canary's error vocabulary: every failure is one line naming the VirtualService.
        `instead` maps a status the caller handles itself to the exception it catches."""
        try:
            with deadline(REQUEST_TIMEOUT_S):
                answer = call(*args, _request_timeout=REQUEST_TIMEOUT_S, _preload_content=False)
                return _bounded_json(answer)
        except _TooLarge:
            raise RouterServerError(
                f"VirtualService {_name(target)}: the API server's answer when asked to {doing} it is over "
                f"{MAX_ANSWER_BYTES // (1024 * 1024)} MiB; not read"
            ) from None
        except DeadlineExceeded:
            raise Unanswered(
                f"VirtualService {_name(target)}: the API server did not finish answering within "
                f"{REQUEST_TIMEOUT_S:g} s when asked to {doing} it"
            ) from None
        except ApiException as exc:
            if instead and exc.status in instead:
                raise instead[exc.status] from exc
            _raise_for(exc, target, doing)
        except urllib3.exceptions.HTTPError as exc:
            raise _unreachable(exc, target) from exc
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # a 200 that is no API answer
            settled = "; whether the write was made is read back" if doing == "write" else ""
            raise RouterServerError(
                f"VirtualService {_name(target)}: the API server's answer when asked to {doing} it is not valid "
                f"JSON ({_one_line(str(exc))[:80]}){settled}"
            ) from exc
        except (ValueError, TypeError) as exc:  # the client refused to build the request, or to read the answer
            raise RouterError(
                f"VirtualService {_name(target)}: cannot {doing} it: {secrets.scrub(_one_line(str(exc)))[:200]}"
            ) from exc


MAX_ANSWER_BYTES = 32 * 1024 * 1024  # a VirtualService or a list of DestinationRules is kilobytes


class _TooLarge(Exception):
    """The answer grew past MAX_ANSWER_BYTES (decompressed)."""


def _bounded_json(answer: Any) -> Any:
    """The body of a raw answer, read in chunks and decoded as JSON; never more than MAX_ANSWER_BYTES."""
    chunks, size = [], 0
    try:
        while chunk := answer.read(64 * 1024):
            size += len(chunk)
            if size > MAX_ANSWER_BYTES:
                raise _TooLarge
            chunks.append(chunk)
    finally:
        answer.release_conn()
    data = b"".join(chunks)
    return json.loads(data) if data.strip() else None


class _NotServed(Exception):
    """This API version is not served (discovery answered 404)."""


class _Refused(Exception):
    """Listing is not allowed or not served: the preflight cannot know."""


def _name(target: Target) -> str:
    return f"{target.namespace}/{target.virtual_service}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _status_message(exc: ApiException) -> str:
    """The message of the Status the API server sent, else the HTTP reason."""
    try:
        status = json.loads(exc.body or "")
    except (TypeError, ValueError):
        status = None
    message = status.get("message") if isinstance(status, dict) else None
    return _one_line(str(message or exc.reason or "no message"))


def _raise_for(exc: ApiException, target: Target, doing: str) -> NoReturn:
    name, code, message = _name(target), exc.status, _status_message(exc)
    if code == 404:
        raise RouterError(
            f"VirtualService {name} not found (deleted? or the name, the namespace or Istio's CRD not as the policy "
            "says)"
        ) from exc
    if code == 409:
        raise WeightConflict(f"VirtualService {name}: changed by someone else between canary's read and write") from exc
    if code in (401, 403):
        raise RouterError(f"VirtualService {name}: the API server refused our credentials ({code}: {message})") from exc
    if code == 422:
        raise RouterError(f"VirtualService {name}: the API server rejected the change: {message}") from exc
    if code == 429:  # API Priority and Fairness throttling: come back later
        raise RouterServerError(f"VirtualService {name}: the API server is throttling requests ({message})") from exc
    if code == 504:  # a gateway gave up waiting: the API server behind it may still commit
        raise Unanswered(f"VirtualService {name}: no answer from the API server in time (504: {message})") from exc
    if isinstance(code, int) and code >= 500:
        raise RouterServerError(f"VirtualService {name}: the API server failed ({code}: {message}), try again") from exc
    raise RouterError(f"VirtualService {name}: cannot {doing} it ({code}: {message})") from exc


def _unreachable(exc: urllib3.exceptions.HTTPError, target: Target) -> RouterError:
    """Temporary: an API server restarting (an upgrade, a failover) must hold a rollout, not end it. A
    wrong address still fails at once, because the controller's first read is not retried."""
    reason = getattr(exc, "reason", None) or exc
    never_sent = isinstance(exc, urllib3.exceptions.NewConnectionError) or isinstance(
        reason, urllib3.exceptions.NewConnectionError
    )
    error = RouterServerError if never_sent else Unanswered  # lost on the way: a write may have gone out
    return error(f"VirtualService {_name(target)}: the API server is unreachable: {_one_line(str(reason))}")
