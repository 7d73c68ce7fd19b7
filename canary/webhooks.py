"""Calling webhooks (I/O): a POST of JSON, 2xx meaning yes, with the URL read from the policy, a file or the
environment and never shown. Used by the notifier and by the policy's pre-rollout, gate and post-rollout
webhooks (`Hooks`), whose answers the runner turns into events: nothing here decides anything.
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

from canary import secrets
from canary.deadline import DeadlineExceeded, deadline
from canary.errors import CanaryError
from canary.inputs import checked_secret, read_secret
from canary.policy import Notification, Webhook, url_problem
from canary.transition import GateAnswer

ANSWER_LIMIT = 65536  # what is read of an answer's body (it is not used; reading lets the server finish)


def resolve_url(endpoint: Notification | Webhook, what: str) -> str:
    """The endpoint's URL: from the policy, or read from its file or environment variable (then registered
    as a secret, so no message or record ever shows it)."""
    if endpoint.url is not None:
        return endpoint.url
    if endpoint.url_file is not None:
        url = read_secret(endpoint.url_file, f"{what} {endpoint.name!r} URL")
    else:
        assert endpoint.url_env is not None
        value = os.environ.get(endpoint.url_env)
        if value is None:
            raise CanaryError(f"{what} {endpoint.name!r}: the environment variable {endpoint.url_env} is not set")
        url = checked_secret(value.strip(), f"the environment variable {endpoint.url_env}")
    secrets.register(url)
    if (problem := url_problem(url)) is not None:  # said without the URL, which may hold a token
        raise CanaryError(f"{what} {endpoint.name!r}: its URL must be an http:// or https:// URL: {problem}")
    return url


def post(url: str, body: Mapping[str, Any], timeout_s: float) -> tuple[bool, str]:
    """One POST: (True, "HTTP 2xx") when answered 2xx, else (False, what happened, without the URL)."""
    data = json.dumps(body, default=str).encode()
    try:
        request = urllib.request.Request(url, data, {"Content-Type": "application/json"}, method="POST")
        with deadline(timeout_s), urllib.request.urlopen(request, timeout=timeout_s) as answer:  # a drip too
            answer.read(ANSWER_LIMIT)
            return True, f"HTTP {answer.status}"
    except DeadlineExceeded:
        return False, f"did not finish answering within its timeout ({timeout_s:g} s)"
    except urllib.error.HTTPError as exc:
        return False, f"answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"could not be reached ({secrets.scrub(str(reason))})"


def post_with_retries(
    url: str, body: Mapping[str, Any], *, timeout_s: float, retries: int, backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:  # fmt: skip
    """None when answered 2xx; else why not, after every retry (the backoff doubling after each)."""
    problem = "not tried"
    for attempt in range(retries + 1):
        if attempt:
            sleep(backoff_s * 2 ** (attempt - 1))
        ok, problem = post(url, body, timeout_s)
        if ok:
            return None
    tries = retries + 1
    return f"{problem}, {tries} attempt{'s' * (tries != 1)}"


class Hooks:
    """The policy's webhooks with their URLs resolved (when the command starts, before anything moves)."""

    def __init__(self, webhooks: tuple[Webhook, ...], *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.urls = {hook.name: resolve_url(hook, "webhook") for hook in webhooks}
        self.sleep = sleep

    def call(self, hook: Webhook, body: Mapping[str, Any]) -> str | None:
        """A pre- or post-rollout webhook, with its retries: None when it said go, else why not."""
        return post_with_retries(self.urls[hook.name], body, timeout_s=hook.timeout_s, retries=hook.retries,
                                 backoff_s=hook.backoff_s, sleep=self.sleep)  # fmt: skip

    def ask(self, gate: Webhook, weight: int, body: Mapping[str, Any]) -> GateAnswer:
        """A gate, asked once (a no is asked again at the next interval)."""
        go, detail = post(self.urls[gate.name], body, gate.timeout_s)
        return GateAnswer(gate.name, weight, go, detail)
