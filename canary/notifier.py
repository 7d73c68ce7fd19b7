"""Delivering notifications (I/O): a background thread POSTs each notice to every webhook that wants it,
with a timeout per attempt and retries with doubling backoff. Nothing here can block or change a rollout:
the rollout only enqueues; what could not be delivered is handed back as failures for the audit log.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass

from canary import secrets
from canary.errors import CanaryError
from canary.inputs import checked_secret, read_secret
from canary.notices import Notice, payload
from canary.policy import Notification


@dataclass(frozen=True)
class Failure:
    """A notice one webhook never received, in words that hold no URL."""

    target: str
    event: str
    reason: str


def resolve_url(target: Notification) -> str:
    """The webhook's URL: from the policy, or read from its file or environment variable (then registered as
    a secret, so no message or record ever shows it)."""
    if target.url is not None:
        return target.url
    if target.url_file is not None:
        url = read_secret(target.url_file, f"notification {target.name!r} URL")
    else:
        assert target.url_env is not None
        value = os.environ.get(target.url_env)
        if value is None:
            raise CanaryError(f"notification {target.name!r}: the environment variable {target.url_env} is not set")
        url = checked_secret(value.strip(), f"the environment variable {target.url_env}")
    if not url.startswith(("http://", "https://")):
        raise CanaryError(f"notification {target.name!r}: its URL must start with http:// or https://")
    secrets.register(url)
    return url


class Notifier:
    """Send in the background; `close` waits at most `flush_s` for what is queued, then gives up on it."""

    def __init__(self, targets: tuple[Notification, ...], *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.targets = [(t, resolve_url(t)) for t in targets]  # resolved before the rollout moves anything
        self.sleep = sleep
        self.queue: queue.Queue[Notice | None] = queue.Queue()
        self.failures: list[Failure] = []
        self.sent = 0
        self._lock = threading.Lock()
        self._worker = threading.Thread(target=self._run, name="canary-notifier", daemon=True)
        self._worker.start()

    def notify(self, notice: Notice) -> None:
        self.queue.put(notice)

    def take_failures(self) -> list[Failure]:
        with self._lock:
            taken, self.failures = self.failures, []
        return taken

    def close(self, flush_s: float = 10.0) -> list[Failure]:
        """Stop after what is queued (waiting at most flush_s); the failures not taken yet, and what was
        still queued, as failures too."""
        self.queue.put(None)
        self._worker.join(timeout=flush_s)
        left = []
        while True:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left += [Failure(t.name, item.event, "not sent: the run ended first") for t, _ in self.targets
                         if item.event in t.events]  # fmt: skip
        with self._lock:
            self.failures += left
        return self.take_failures()

    def _run(self) -> None:
        while (notice := self.queue.get()) is not None:
            for target, url in self.targets:
                if notice.event in target.events:
                    problem = self._deliver(target, url, notice)
                    with self._lock:
                        if problem is None:
                            self.sent += 1
                        else:
                            self.failures.append(Failure(target.name, notice.event, problem))

    def _deliver(self, target: Notification, url: str, notice: Notice) -> str | None:
        """None when delivered (2xx); else why not, after every retry."""
        body = json.dumps(payload(notice, target.format)).encode()
        problem = "not tried"
        for attempt in range(target.retries + 1):
            if attempt:
                self.sleep(target.backoff_s * 2 ** (attempt - 1))
            request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=target.timeout_s) as answer:
                    answer.read(65536)
                    return None
            except urllib.error.HTTPError as exc:
                problem = f"answered HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = f"could not be reached ({secrets.scrub(str(reason))})"
        tries = target.retries + 1
        return f"{problem}, {tries} attempt{'s' * (tries != 1)}"
