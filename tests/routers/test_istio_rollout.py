"""Rollouts through the Istio router against the local API server, on the seed's objects verbatim and on
bookinfo's: what the route holds afterwards (the split's two weights and the state annotation, nothing else),
what the log says about every write (one decision, then exactly one outcome), and what happens when the API
server misbehaves or someone else writes: nothing announced that did not happen, nobody's change overwritten."""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import VERSIONS, KubeApiServer, fixture_objects, fixtures_with, named

from canary.app import SimulatedRollout, manual_runner, simulated_rollout
from canary.audit import AuditLog, read_records, verify_chain
from canary.controller import RolloutResult, TickReport
from canary.errors import ConflictError, RouterError
from canary.model import Action, Observation, Phase, Weights
from canary.policy import MetricSpec, Policy, Target, load_policy
from canary.records import DecisionRecord, OutcomeRecord, Record
from canary.routers.istio import IstioRouter
from canary.scenario import builtin_scenario
from canary.state import ANNOTATION, RolloutState, decode_state

REPO = Path(__file__).resolve().parents[2]


class RecordingServer(KubeApiServer):
    """The local API server, keeping the body of every PUT: what each of canary's writes carried."""

    def __init__(self, objects: list[dict[str, Any]], *, served: tuple[str, ...] = VERSIONS) -> None:
        super().__init__(objects, served=served)
        self.puts: list[dict[str, Any]] = []

    def handle(self, method: str, path: str, content_type: str | None, body: bytes) -> Any:
        if method == "PUT":
            self.puts.append(json.loads(body))
        return super().handle(method, path, content_type, body)


Cluster = Callable[..., tuple[RecordingServer, IstioRouter]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """`cluster(objects=None, served=...)`: a started API server (fixtures/istio unless given) and a router on it
    through a kubeconfig file; each stopped after the test."""
    made: list[tuple[RecordingServer, IstioRouter]] = []

    def start(objects: list[dict[str, Any]] | None = None, **kwargs: Any) -> tuple[RecordingServer, IstioRouter]:
        server = RecordingServer(objects if objects is not None else fixture_objects(), **kwargs).start()
        router = IstioRouter.from_kubeconfig(str(server.kubeconfig(tmp_path / f"kubeconfig-{len(made)}")))
        made.append((server, router))
        return server, router

    yield start
    for server, router in made:
        router.close()
        server.stop()


def rollout(policy: Policy, router: IstioRouter, audit: Path, scenario: str = "healthy") -> SimulatedRollout:
    return simulated_rollout(policy, builtin_scenario(scenario), seed=1, audit=AuditLog(audit), router=router)


def records(audit: Path) -> list[Record]:
    return [s.record for s in read_records(audit)]


def outcome_at(audit: Path, index: int = -1) -> OutcomeRecord:
    record = records(audit)[index]
    assert isinstance(record, OutcomeRecord), f"expected an outcome, got {record}"
    return record


def last_two(audit: Path) -> tuple[Record, Record]:
    *_, decision, outcome = records(audit)
    return decision, outcome


def split(api: KubeApiServer, name: str = "web-app", index: int = 1) -> list[int]:
    """The weights of the route canary moves: the seed's second http route (the first is its header match)."""
    return [d["weight"] for d in api.get("default", name)["spec"]["http"][index]["route"]]


def annotation(api: KubeApiServer, name: str = "web-app") -> str | None:
    value = (api.get("default", name)["metadata"].get("annotations") or {}).get(ANNOTATION)
    return value if isinstance(value, str) else None


def route_state(api: KubeApiServer, name: str = "web-app") -> RolloutState:
    text = annotation(api, name)
    assert text is not None, "the route holds no rollout state"
    return decode_state(text)


def puts(api: KubeApiServer) -> int:
    return sum(method == "PUT" for method, _, _ in api.requests)


def without_canarys_part(vs: dict[str, Any], split_index: int) -> str:
    """The VirtualService as JSON, minus what a rollout may change: the split's weights, the state annotation,
    and the server's resourceVersion and generation."""
    out = copy.deepcopy(vs)
    meta = out["metadata"]
    del meta["resourceVersion"], meta["generation"]
    annotations = meta.get("annotations") or {}
    annotations.pop(ANNOTATION, None)
    if not annotations:
        meta.pop("annotations", None)
    for dest in out["spec"]["http"][split_index]["route"]:
        dest.pop("weight", None)
    return json.dumps(out)


def finish(sim: SimulatedRollout) -> TickReport | RolloutResult:
    """Tick (on simulated time) until the rollout ends or the command stops."""
    out: TickReport | RolloutResult | None = None
    while sim.runner.state is not None and sim.runner.state.phase is Phase.PROGRESSING:
        sim.clock.sleep(sim.runner.policy.interval_s)
        out = sim.runner.tick()
        if isinstance(out, RolloutResult) or out.decision.action is Action.STOP:
            break
    assert out is not None
    return out


class AfterTheNextRead:
    """The simulated mesh; once a tick has observed, `action` runs right after canary's next read of the route,
    the read its write is based on (a `kubectl edit` racing the tick, an API server going away mid-write)."""

    def __init__(self, mesh: Any, api: KubeApiServer, action: Callable[[], None]) -> None:
        self.mesh, self.api, self.action = mesh, api, action
        self.done = False

    def observe(self, target: Target, metrics: tuple[MetricSpec, ...], start: float, end: float) -> Observation:
        observation: Observation = self.mesh.observe(target, metrics, start, end)
        if not self.done:
            self.done = True
            self.api.after_next_get(self.action)
        return observation


def someone_else(api: KubeApiServer, change: Callable[[dict[str, Any]], None]) -> Callable[[], None]:
    return lambda: api.edit("default", "web-app", change)


def move_split(baseline: int, canary: int) -> Callable[[dict[str, Any]], None]:
    def change(vs: dict[str, Any]) -> None:
        vs["spec"]["http"][1]["route"][0]["weight"] = baseline
        vs["spec"]["http"][1]["route"][1]["weight"] = canary

    return change


# ------------------------------------------------------------------------------- the seed's objects, verbatim


@pytest.mark.parametrize(
    ("scenario", "phase", "weights"),
    [
        ("healthy", Phase.PROMOTED, [0, 100]),
        ("latency-regression", Phase.ROLLED_BACK, [100, 0]),
        ("error-regression", Phase.ROLLED_BACK, [100, 0]),
    ],
)
def test_a_rollout_on_the_seeds_objects_changes_only_the_splits_two_weights_and_the_annotation(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, scenario: str, phase: Phase, weights: list[int]
) -> None:
    """policies/web-app.yaml names no route: canary finds the unnamed split (http[1]) past the header-match route
    by itself. Afterwards the header-match route, the hosts and the DestinationRule are as they were."""
    api, router = cluster()
    vs_before = api.get("default", "web-app")
    dr_before = api.get("default", "web-app", "destinationrules")
    result = rollout(web_policy, router, tmp_path / "a.jsonl", scenario).runner.run()
    assert result.phase is phase
    vs_after = api.get("default", "web-app")
    assert split(api) == weights
    assert json.dumps(vs_after["spec"]["http"][0]) == json.dumps(vs_before["spec"]["http"][0])
    assert vs_after["spec"]["hosts"] == vs_before["spec"]["hosts"] == ["web-app"]
    assert without_canarys_part(vs_after, 1) == without_canarys_part(vs_before, 1)
    assert json.dumps(api.get("default", "web-app", "destinationrules")) == json.dumps(dr_before)
    assert route_state(api).phase is phase and route_state(api).rollout == result.rollout


def test_every_write_is_one_put_of_weights_and_state_after_its_decision_and_before_its_one_outcome(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    rollout(web_policy, router, audit).runner.run()
    sealed = list(read_records(audit))
    decisions, outcomes = sealed[0::2], sealed[1::2]
    assert len(decisions) == len(outcomes) == len(api.puts) > len(web_policy.steps)
    for decision, outcome, body in zip(decisions, outcomes, api.puts, strict=True):
        assert isinstance(decision.record, DecisionRecord) and decision.record.writes
        assert isinstance(outcome.record, OutcomeRecord)
        assert (outcome.record.of, outcome.record.result) == (decision.hash, "applied")
        carried = decode_state(body["metadata"]["annotations"][ANNOTATION])
        body_weights = [d["weight"] for d in body["spec"]["http"][1]["route"]]
        assert body_weights == [carried.weights.baseline, carried.weights.canary]
        assert carried.weights == decision.record.weights_after == outcome.record.weights
        assert carried.audit_head == outcome.hash  # the state names the outcome that records it
        assert body["metadata"]["resourceVersion"]  # conditional: a PUT at the revision read
    assert route_state(api).audit_head == sealed[-1].hash
    assert verify_chain(audit, sealed[-1].hash, route_head=True).ok


def test_bookinfos_reviews_split_rolls_out_and_nothing_else_in_the_namespace_changes(
    cluster: Cluster, write_policy: Callable[..., Path], tmp_path: Path
) -> None:
    """Istio's bookinfo `reviews` (90/10 v1/v2, a DestinationRule with v1, v2 and v3), with a policy of the same
    metrics as policies/web-app.yaml targeting it."""
    text = (REPO / "policies" / "web-app.yaml").read_text().replace("web-app", "reviews")
    policy = load_policy(write_policy(text, "reviews.yaml"))
    target = policy.target
    assert (target.namespace, target.virtual_service, target.host) == (
        "default",
        "reviews",
        "reviews.default.svc.cluster.local",
    )
    assert (target.baseline, target.canary, target.route) == ("v1", "v2", None)
    api, router = cluster()
    before = {(plural, name): api.get("default", name, plural) for plural in ("virtualservices", "destinationrules")
              for name in ("reviews", "web-app")}  # fmt: skip
    result = rollout(policy, router, tmp_path / "a.jsonl").runner.run()
    assert result.phase is Phase.PROMOTED
    assert split(api, "reviews", 0) == [0, 100]
    reviews_before = before[("virtualservices", "reviews")]
    assert without_canarys_part(api.get("default", "reviews"), 0) == without_canarys_part(reviews_before, 0)
    assert route_state(api, "reviews").phase is Phase.PROMOTED
    assert api.get("default", "web-app") == before[("virtualservices", "web-app")]  # another VirtualService
    for name in ("reviews", "web-app"):
        assert api.get("default", name, "destinationrules") == before[("destinationrules", name)]


def test_retries_timeouts_and_mirrors_on_the_seeds_routes_are_kept(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """The seed's VirtualService with fields canary must carry through untouched, added here (not in the seed):
    a timeout and retries on the header-match route; retries, a timeout, a mirror, header rewrites and a fault
    on the split; gateways and exportTo on the spec."""

    def dressed(objects: list[dict[str, Any]]) -> None:
        vs = named(objects, "VirtualService", "web-app")
        spec = vs["spec"]
        spec["gateways"] = ["mesh"]
        spec["exportTo"] = ["."]
        spec["http"][0]["timeout"] = "5s"
        spec["http"][0]["retries"] = {"attempts": 2, "perTryTimeout": "1s"}
        spec["http"][1].update(
            {
                "retries": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"},
                "timeout": "10s",
                "mirror": {"host": "web-app", "subset": "v1"},
                "mirrorPercentage": {"value": 5.0},
                "headers": {"response": {"set": {"x-served-by": "mesh"}}},
                "fault": {"delay": {"percentage": {"value": 0.1}, "fixedDelay": "5ms"}},
            }
        )
        spec["http"][1]["route"][1]["headers"] = {"request": {"add": {"x-canary": "yes"}}}

    api, router = cluster(fixtures_with(dressed))
    before = api.get("default", "web-app")
    assert rollout(web_policy, router, tmp_path / "a.jsonl").runner.run().phase is Phase.PROMOTED
    after = api.get("default", "web-app")
    assert split(api) == [0, 100]
    assert without_canarys_part(after, 1) == without_canarys_part(before, 1)
    assert after["spec"]["http"][1]["mirror"] == {"host": "web-app", "subset": "v1"}
    assert after["spec"]["http"][1]["route"][1]["headers"] == {"request": {"add": {"x-canary": "yes"}}}


def test_only_v1beta1_served_the_whole_rollout_speaks_v1beta1(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster(served=("v1alpha3", "v1beta1"))
    assert rollout(web_policy, router, tmp_path / "a.jsonl").runner.run().phase is Phase.PROMOTED
    used = {path.split("?", 1)[0] for _, path, _ in api.requests}
    assert used == {
        "/apis/networking.istio.io/v1",  # asked for once, 404
        "/apis/networking.istio.io/v1beta1",
        "/apis/networking.istio.io/v1beta1/namespaces/default/virtualservices/web-app",
        "/apis/networking.istio.io/v1beta1/namespaces/default/destinationrules",
    }
    assert api.get("default", "web-app")["apiVersion"] == "networking.istio.io/v1alpha3"  # stored as applied
    assert split(api) == [0, 100]


def test_a_fresh_command_carries_on_from_what_the_route_holds(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """A restart keeps nothing but the route and the log: a new router, log handle and runner resume the rollout."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    first = rollout(web_policy, router, audit)
    first.runner.open()
    for _ in range(3):
        first.clock.sleep(web_policy.interval_s)
        first.runner.tick()
    left = route_state(api)
    fresh_router = IstioRouter.from_kubeconfig(str(api.kubeconfig(tmp_path / "restarted")))
    try:
        second = simulated_rollout(web_policy, builtin_scenario("healthy"), seed=2, audit=AuditLog(audit),
                                   router=fresh_router, start=left.last.time)  # fmt: skip
        result = second.runner.run(resume=True)
    finally:
        fresh_router.close()
    assert result.phase is Phase.PROMOTED and result.rollout == left.rollout
    resumed = [r for r in records(audit) if isinstance(r, DecisionRecord) and r.action is Action.RESUME]
    assert len(resumed) == 1 and resumed[0].reason.startswith(f"resumed at tick {left.tick} (interrupted")
    assert split(api) == [0, 100]


# ------------------------------------------------------------------------------- writes that fail or get lost


def test_a_failed_write_is_recorded_as_failed_leaves_the_route_as_it_was_and_is_retried(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    held, version = annotation(api), api.get("default", "web-app")["metadata"]["resourceVersion"]
    api.fail_next(503, "etcdserver: leader changed", method="PUT")
    sim.clock.sleep(web_policy.interval_s)
    report = sim.runner.tick()
    decision, outcome = last_two(audit)
    assert isinstance(decision, DecisionRecord) and decision.writes and decision.tick == 1
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "failed"
    assert "etcdserver: leader changed" in outcome.reason and "the next tick tries again" in outcome.reason
    assert outcome.weights == Weights(90, 10)
    assert annotation(api) == held, "the route still holds the state before the failed write"
    assert api.get("default", "web-app")["metadata"]["resourceVersion"] == version
    assert isinstance(report, TickReport) and report.decision.phase is Phase.PROGRESSING
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()
    assert outcome_at(audit).result == "applied"
    assert finish(sim).decision.phase is Phase.PROMOTED
    assert split(api) == [0, 100]


def test_a_write_refused_at_the_start_is_recorded_as_failed_and_nothing_moves(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    api.fail_next(403, "virtualservices.networking.istio.io is forbidden", method="PUT")
    with pytest.raises(RouterError, match=r"^the rollout was not started \(.*403: .*forbidden\)\); recorded in "):
        rollout(web_policy, router, audit).runner.open()
    decision, outcome = records(audit)
    assert isinstance(decision, DecisionRecord) and decision.action is Action.START and decision.writes
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "failed" and "403" in outcome.reason
    assert "tries again" not in outcome.reason  # a refusal is not retried
    assert split(api) == [90, 10] and annotation(api) is None


# Two ways the answer to a write that was made gets lost: a gateway timing out, a proxy's garbage page.
LOST_ANSWERS = [
    pytest.param(lambda api: api.fail_after_commit(504, "gateway timeout"), id="504-after-commit"),
    pytest.param(lambda api: api.garble_next(), id="200-not-json"),
]


@pytest.mark.parametrize("lose", LOST_ANSWERS)
def test_a_lost_answer_to_the_starting_write_counts_as_applied(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, lose: Callable[[KubeApiServer], None]
) -> None:
    """The API server commits, then the answer is lost: the runner reads the route back, finds the state its
    write carried (`audit_head`), and records the outcome as applied."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    lose(api)
    report = rollout(web_policy, router, audit).runner.open()
    assert isinstance(report, TickReport) and report.decision.action is Action.START
    sealed = list(read_records(audit))
    assert [type(s.record) for s in sealed] == [DecisionRecord, OutcomeRecord]
    assert outcome_at(audit, 1).result == "applied"
    assert route_state(api).audit_head == sealed[1].hash
    assert [m for m, _, _ in api.requests][-2:] == ["PUT", "GET"]  # the write, then the read back


@pytest.mark.parametrize("lose", LOST_ANSWERS)
def test_a_lost_answer_to_a_write_during_the_rollout_counts_as_applied_and_it_goes_on(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, lose: Callable[[KubeApiServer], None]
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    seen: list[TickReport] = []

    def on_tick(report: TickReport) -> None:
        seen.append(report)
        if len(seen) == 1:  # after the start: the first tick's write loses its answer
            lose(api)

    result = rollout(web_policy, router, audit).runner.run(on_tick)
    assert result.phase is Phase.PROMOTED
    outcomes = [r for r in records(audit) if isinstance(r, OutcomeRecord)]
    assert [o.result for o in outcomes] == ["applied"] * len(outcomes)
    assert all(r.action is not Action.ABORT for r in records(audit) if isinstance(r, DecisionRecord))
    assert split(api) == [0, 100]


@pytest.mark.parametrize("made", [True, False], ids=["made", "not-made"])
@pytest.mark.parametrize("unreadable_ticks", [0, 1])
def test_a_write_whose_read_back_fails_too_is_settled_later_from_what_the_route_holds(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, made: bool, unreadable_ticks: int
) -> None:
    """The API server goes away mid-write: neither its answer nor a read back tells whether the write was made.
    No outcome is guessed and nothing is appended after the open change (its outcome was sealed to follow it);
    the first tick that can read the route records the one true outcome, right after the change."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()

    def outage() -> None:
        if made:
            api.fail_after_commit(503, "etcdserver: request timed out")
        else:
            api.fail_next(503, "etcdserver: request timed out", method="PUT")
        for _ in range(1 + unreadable_ticks):  # the read back, then each following tick's first read
            api.fail_next(503, "etcdserver: request timed out", method="GET")

    sim.runner.source = AfterTheNextRead(sim.mesh, api, outage)
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()
    change = list(read_records(audit))[-1]
    assert isinstance(change.record, DecisionRecord) and change.record.writes and change.record.tick == 1
    assert split(api) == [90, 10] and (route_state(api).tick == 1) is made
    sim.runner.source = sim.mesh
    for _ in range(unreadable_ticks):
        sim.clock.sleep(web_policy.interval_s)
        report = sim.runner.tick()
        assert isinstance(report, TickReport) and report.decision.action is Action.HOLD
        assert list(read_records(audit))[-1] == change, "nothing is appended after a change awaiting its outcome"
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()
    sealed = list(read_records(audit))
    after = sealed[sealed.index(change) + 1 :]
    outcomes = [s.record for s in after if isinstance(s.record, OutcomeRecord) and s.record.of == change.hash]
    assert len(outcomes) == 1 and after[0].record == outcomes[0]
    assert outcomes[0].result == ("applied" if made else "failed")
    assert verify_chain(audit, route_state(api).audit_head, route_head=True).ok


def test_a_write_without_an_answer_that_lands_after_the_read_back_is_settled_as_made(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A slow etcd: canary gives up on its PUT and reads the route back before the API server commits it. The
    old state read back is no proof the write was not made (it was recorded as failed, and the next tick
    aborted the rollout, calling the log cut short): the change stays open, the next tick finds it made."""
    monkeypatch.setattr("canary.routers.istio.REQUEST_TIMEOUT_S", 0.5)
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    api.commit_late(1.5)
    sim.clock.sleep(web_policy.interval_s)
    report = sim.runner.tick()
    assert isinstance(report, TickReport) and report.decision.phase is Phase.PROGRESSING
    change = list(read_records(audit))[-1]
    assert isinstance(change.record, DecisionRecord) and change.record.writes, "no outcome guessed"
    for _ in range(50):  # the API server commits it a second later
        if route_state(api).tick == 1:
            break
        time.sleep(0.1)
    assert route_state(api).audit_head != change.hash and route_state(api).tick == 1
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()
    after = [s.record for s in read_records(audit)]
    settled = after[after.index(change.record) + 1]
    assert isinstance(settled, OutcomeRecord) and settled.of == change.hash and settled.result == "applied"
    assert finish(sim).decision.phase is Phase.PROMOTED
    assert verify_chain(audit, route_state(api).audit_head, route_head=True).ok


def test_writes_failing_until_the_deadline_stop_the_command_with_the_rollout_open(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """An API server that keeps failing writes cannot keep a rollout going forever: at the deadline the command
    stops (exit 2), the route still holding the last state that was written, for `run --resume` later."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"

    def on_tick(report: TickReport) -> None:
        if report.tick == 0 and report.decision.action is Action.START:
            for _ in range(200):
                api.fail_next(503, "etcdserver: request timed out", method="PUT")

    result = rollout(web_policy, router, audit).runner.run(on_tick)
    assert result.stopped and result.phase is Phase.PROGRESSING
    state = route_state(api)
    assert state.phase is Phase.PROGRESSING and state.tick == 0 and state.weights == Weights(90, 10)
    assert split(api) == [90, 10]
    decision, outcome = last_two(audit)
    assert isinstance(decision, DecisionRecord) and decision.time >= state.deadline
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "failed"
    assert "request timed out" in outcome.reason and "tries again" not in outcome.reason
    assert verify_chain(audit, state.audit_head, route_head=True).ok  # the failed changes changed nothing


# ------------------------------------------------------------------------------- someone else's writes


def test_someone_elses_write_between_canarys_read_and_write_is_never_overwritten(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """Someone pauses the rollout at 95/5 between the tick's read and its write: the API server answers 409, the
    write is recorded as failed, and the tick reads the route again at once, finds weights it did not set and
    aborts, leaving them."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    sim.runner.source = AfterTheNextRead(sim.mesh, api, someone_else(api, move_split(95, 5)))
    sim.clock.sleep(web_policy.interval_s)
    report = sim.runner.tick()
    failed = records(audit)[-3]
    assert isinstance(failed, OutcomeRecord) and failed.result == "failed"
    assert "changed by someone else between canary's read and write" in failed.reason
    assert isinstance(report, TickReport) and report.decision.phase is Phase.ABORTED
    decision, outcome = last_two(audit)
    assert isinstance(decision, DecisionRecord) and decision.action is Action.ABORT
    assert decision.weights_before == decision.weights_after == Weights(95, 5)
    assert decision.reason.startswith("weights changed outside canary: expected 90/10, found 95/5")
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "applied"
    assert split(api) == [95, 5]
    assert route_state(api).phase is Phase.ABORTED and route_state(api).weights == Weights(95, 5)


def test_a_conflict_over_something_else_is_retried_and_keeps_the_other_writers_change(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """A label added between canary's read and write: a 409 all the same, the write is recorded as failed and
    decided again at once on a fresh read, then made on top of the label (it waited for the next tick, which
    put a rollback off by an interval); the rollout goes on."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    label = someone_else(api, lambda vs: vs["metadata"].update(labels={"team": "web"}))
    sim.runner.source = AfterTheNextRead(sim.mesh, api, label)
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()
    first, failed, again, made = records(audit)[-4:]
    assert isinstance(failed, OutcomeRecord) and failed.result == "failed"
    assert "changed by someone else" in failed.reason
    assert isinstance(first, DecisionRecord) and isinstance(again, DecisionRecord) and first.tick == again.tick == 1
    assert isinstance(made, OutcomeRecord) and made.result == "applied" and route_state(api).tick == 1
    sim.runner.source = sim.mesh
    assert finish(sim).decision.phase is Phase.PROMOTED
    assert split(api) == [0, 100]
    assert api.get("default", "web-app")["metadata"]["labels"] == {"team": "web"}


def test_weights_moved_outside_canary_between_ticks_abort_the_rollout_and_stay_as_found(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    api.edit("default", "web-app", move_split(70, 30))
    sim.clock.sleep(web_policy.interval_s)
    report = sim.runner.tick()
    assert isinstance(report, TickReport)
    assert (report.decision.action, report.decision.phase) == (Action.ABORT, Phase.ABORTED)
    assert split(api) == [70, 30]
    assert route_state(api).phase is Phase.ABORTED and route_state(api).weights == Weights(70, 30)


# ------------------------------------------------------------------------------- a person's commands


def test_a_persons_rollback_during_the_rollout_ends_it_at_its_next_tick(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    started = route_state(api).rollout
    for _ in range(2):
        sim.clock.sleep(web_policy.interval_s)
        sim.runner.tick()
    person = IstioRouter.from_kubeconfig(str(api.kubeconfig(tmp_path / "alice")))  # her own client
    try:
        applied = manual_runner(web_policy, person, AuditLog(audit), lock_timeout_s=5).manual(
            "rollback", actor="user:alice", reason="pager alert"
        )
    finally:
        person.close()
    assert applied.written and split(api) == [100, 0]
    writes = puts(api)
    sim.clock.sleep(web_policy.interval_s)
    ended = sim.runner.tick()
    assert isinstance(ended, RolloutResult)
    assert (ended.phase, ended.rollout) == (Phase.ROLLED_BACK, started)
    assert ended.decision.reason == "pager alert"
    assert puts(api) == writes, "the rollout wrote nothing after the person's rollback"
    decision, outcome = last_two(audit)
    assert isinstance(decision, DecisionRecord) and (decision.actor, decision.action) == ("user:alice", Action.ROLLBACK)
    assert decision.rollout == ended.rollout, "the person's change joins the rollout"
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "applied"
    assert verify_chain(audit, route_state(api).audit_head, route_head=True).ok


def test_the_result_of_a_rollout_a_person_ended_names_the_logs_head(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """`canary run` prints the result's audit_head for `canary audit verify --head`: it must be the log's end."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    person = IstioRouter.from_kubeconfig(str(api.kubeconfig(tmp_path / "alice")))
    try:
        applied = manual_runner(web_policy, person, AuditLog(audit), lock_timeout_s=5).manual(
            "rollback", actor="user:alice", reason="pager alert"
        )
    finally:
        person.close()
    sim.clock.sleep(web_policy.interval_s)
    ended = sim.runner.tick()
    assert isinstance(ended, RolloutResult) and ended.phase is Phase.ROLLED_BACK
    assert ended.audit_head == applied.head == route_state(api).audit_head
    assert verify_chain(audit, ended.audit_head).ok


def test_a_persons_rollback_refused_by_the_server_is_recorded_as_failed(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    api.fail_next(403, "virtualservices.networking.istio.io is forbidden", method="PUT")
    with pytest.raises(RouterError, match=r"^the rollback was not made \(.*403: .*forbidden\)\); recorded in "):
        manual_runner(web_policy, router, AuditLog(audit), lock_timeout_s=5).manual("rollback", actor="bob", reason="")
    decision, outcome = records(audit)
    assert isinstance(decision, DecisionRecord) and (decision.action, decision.actor) == (Action.ROLLBACK, "bob")
    assert decision.weights_before == Weights(90, 10) and decision.weights_after == Weights(100, 0)
    assert isinstance(outcome, OutcomeRecord) and outcome.result == "failed" and "forbidden" in outcome.reason
    assert split(api) == [90, 10] and annotation(api) is None


def test_a_persons_rollback_is_made_after_an_unrelated_write_came_between_its_read_and_write(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    """A labeler (or Argo CD, or a status write) moves the resourceVersion between the rollback's read and its
    PUT: the 409 refused an emergency rollback outright (exit 2, weights unchanged); it is decided again on a
    fresh read and made, the label kept."""
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    label = someone_else(api, lambda vs: vs["metadata"].update(labels={"team": "web"}))
    api.after_next_get(lambda: api.after_next_get(label))  # the API discovery's GET, then the route's
    applied = manual_runner(web_policy, router, AuditLog(audit), lock_timeout_s=5).manual(
        "rollback", actor="bob", reason="pager"
    )
    assert applied.written and split(api) == [100, 0]
    assert api.get("default", "web-app")["metadata"]["labels"] == {"team": "web"}
    assert [r.result for r in records(audit) if isinstance(r, OutcomeRecord)] == ["failed", "applied"]
    assert verify_chain(audit, route_state(api).audit_head, route_head=True).ok


def test_a_persons_rollback_whose_answer_is_lost_counts_as_made(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    api.fail_after_commit(504, "gateway timeout")
    applied = manual_runner(web_policy, router, AuditLog(audit), lock_timeout_s=5).manual(
        "rollback", actor="bob", reason="x"
    )
    assert applied.written
    assert [type(r) for r in records(audit)] == [DecisionRecord, OutcomeRecord]
    assert outcome_at(audit, 1).result == "applied"
    assert split(api) == [100, 0]
    assert verify_chain(audit, applied.head).ok and route_state(api).audit_head == applied.head


def test_a_persons_rollback_without_an_answer_may_have_been_made_and_the_next_command_says(
    cluster: Cluster, web_policy: Policy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("canary.routers.istio.REQUEST_TIMEOUT_S", 0.5)
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    api.commit_late(1.5)
    person = manual_runner(web_policy, router, AuditLog(audit), lock_timeout_s=5)
    with pytest.raises(RouterError, match=r"^the rollback may not have been made \(.*within 0.5 s.*\); the next "
                                          "command reads the route and records whether it was"):  # fmt: skip
        person.manual("rollback", actor="bob", reason="")
    assert [type(r) for r in records(audit)] == [DecisionRecord], "no outcome guessed"
    for _ in range(50):
        if split(api) == [100, 0]:
            break
        time.sleep(0.1)
    manual_runner(web_policy, router, AuditLog(audit), lock_timeout_s=5).manual("rollback", actor="bob", reason="")
    assert [type(r) for r in records(audit)][:2] == [DecisionRecord, OutcomeRecord]
    assert outcome_at(audit, 1).result == "applied", "the first rollback was made after all"
    assert split(api) == [100, 0]


# ------------------------------------------------------------------------------- reads that fail, and preflight


def test_an_unreadable_route_holds_without_judging_or_writing(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    api, router = cluster()
    audit = tmp_path / "a.jsonl"
    sim = rollout(web_policy, router, audit)
    sim.runner.open()
    held, writes = annotation(api), puts(api)
    sim.clock.sleep(web_policy.interval_s)
    api.fail_next(429, "too many requests, please try again later", method="GET")  # API Priority and Fairness
    report = sim.runner.tick()
    assert isinstance(report, TickReport)
    assert (report.decision.action, report.decision.phase) == (Action.HOLD, Phase.PROGRESSING)
    last = records(audit)[-1]
    assert isinstance(last, DecisionRecord) and not last.writes
    assert last.weights_before is None and last.weights_after is None
    assert last.error is not None and "throttling" in last.error
    assert (last.counts, last.observation, last.judgement) == (None, None, None)
    assert (annotation(api), puts(api)) == (held, writes)
    sim.clock.sleep(web_policy.interval_s)
    sim.runner.tick()  # it answers again: the next tick judges and writes
    assert outcome_at(audit).result == "applied"


def test_a_wrong_api_server_address_fails_before_anything_is_recorded(web_policy: Policy, tmp_path: Path) -> None:
    """Unreachable counts as temporary during a rollout, but the first read is not retried: the command ends."""
    closed = KubeApiServer([])
    path = closed.kubeconfig(tmp_path / "kubeconfig")
    closed.stop()
    router = IstioRouter.from_kubeconfig(str(path))
    audit = tmp_path / "a.jsonl"
    try:
        with pytest.raises(RouterError, match="unreachable"):
            rollout(web_policy, router, audit).runner.run()
    finally:
        router.close()
    assert not audit.exists()


def test_a_destination_rule_without_the_canary_subset_stops_the_start_before_any_weight_moves(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    def drop_v2(objects: list[dict[str, Any]]) -> None:
        rule = named(objects, "DestinationRule", "web-app")
        rule["spec"]["subsets"] = [s for s in rule["spec"]["subsets"] if s["name"] != "v2"]

    api, router = cluster(fixtures_with(drop_v2))
    audit = tmp_path / "a.jsonl"
    with pytest.raises(ConflictError) as caught:
        rollout(web_policy, router, audit).runner.open()
    assert str(caught.value) == (
        "VirtualService default/web-app: DestinationRule default/web-app for web-app.default.svc.cluster.local "
        "has no subset 'v2' (subsets: v1)"
    )
    assert puts(api) == 0 and split(api) == [90, 10] and not audit.exists()


def test_two_match_less_splits_are_refused_before_anything_is_recorded(
    cluster: Cluster, web_policy: Policy, tmp_path: Path
) -> None:
    def second_split(objects: list[dict[str, Any]]) -> None:
        http = named(objects, "VirtualService", "web-app")["spec"]["http"]
        http.append(copy.deepcopy(http[1]))

    api, router = cluster(fixtures_with(second_split))
    audit = tmp_path / "a.jsonl"
    with pytest.raises(RouterError) as caught:
        rollout(web_policy, router, audit).runner.open()
    assert str(caught.value) == (
        "VirtualService default/web-app: 2 http routes split 'v1' and 'v2' (spec.http[1], spec.http[2]); "
        "name the one to shift in spec.target.route"
    )
    assert puts(api) == 0 and not audit.exists()
