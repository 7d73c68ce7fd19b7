"""Delivering notifications (I/O): a background thread POSTs each notice to every webhook that wants it,
with a timeout per attempt and retries with doubling backoff. Nothing here can block or change a rollout:
the rollout only enqueues; what could not be delivered is handed back as failures for the audit log.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from canary.notices import Notice, payload
from canary.policy import Notification
from canary.webhooks import post_with_retries, resolve_url


@dataclass(frozen=True)
class Failure:
    """A notice one webhook never received, in words that hold no URL."""

    target: str
    event: str
    reason: str


class Notifier:
    """Send in the background; `close` waits at most `flush_s` for what is queued, then gives up on it."""

    def __init__(self, targets: tuple[Notification, ...], *, sleep: Callable[[float], None] = time.sleep) -> None:
        # resolved before the rollout moves anything
        self.targets = [(t, resolve_url(t, "notification")) for t in targets]
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
        return post_with_retries(url, payload(notice, target.format), timeout_s=target.timeout_s,
                                 retries=target.retries, backoff_s=target.backoff_s, sleep=self.sleep)  # fmt: skip
