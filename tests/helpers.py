"""Small helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from canary.app import router_for, simulated_rollout
from canary.audit import AuditLog, read_records
from canary.controller import Runner
from canary.policy import Target, load_policy
from canary.records import DecisionRecord
from canary.routers.memory import MemoryRouter, seed_objects
from canary.scenario import builtin_scenario


def memory_router(target: Target, canary_weight: int = 0) -> MemoryRouter:
    """An in-memory route shaped like the seed's (header-match route first, then the split), at a weight."""
    vs, dr = seed_objects(target, canary_weight)
    return MemoryRouter([vs], [dr])


def decisions(path: Path) -> list[DecisionRecord]:
    """The decision records of an audit log, in order."""
    return [s.record for s in read_records(path) if isinstance(s.record, DecisionRecord)]


def judged(path: Path) -> list[DecisionRecord]:
    """The decisions that judged an observation (the ticks with counts)."""
    return [r for r in decisions(path) if r.counts is not None]


def cluster_rollout(policy: Path, kubeconfig: Path, audit: Path, scenario: str = "healthy") -> Runner:
    """A simulated rollout whose weights live in the cluster the kubeconfig names (the test API server)."""
    loaded = load_policy(str(policy))
    router = router_for(loaded, None, str(kubeconfig), None)
    return simulated_rollout(loaded, builtin_scenario(scenario), seed=1, audit=AuditLog(audit), router=router).runner


def tick(r: Runner) -> None:
    """One interval later on the rollout's (simulated) clock, one tick."""
    r.clock.wait(r.policy.interval_s, r.cancel_flag.event)
    r.tick()


class Receiver:
    """A webhook on 127.0.0.1 that records every POST and answers with `status` (the first POSTs with
    `first`, in order, when given: a gate that says no, then yes), after `on_post` has run."""

    def __init__(
        self, status: int = 200, first: tuple[int, ...] = (), on_post: Callable[[], None] | None = None
    ) -> None:
        self.bodies: list[tuple[str, dict[str, object]]] = []
        self.status = status
        self.first = list(first)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                outer.bodies.append((self.path, json.loads(self.rfile.read(length))))
                if on_post is not None:
                    on_post()  # before the answer: what happens while the caller waits for it
                self.send_response(outer.first.pop(0) if outer.first else outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
