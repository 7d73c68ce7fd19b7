"""The rollout state survives every process death and every race: what the product sells.

Every command here is a real process (see resilience_helpers: forked from a server that imported canary
once, or the installed console script), killed with SIGKILL at named failpoints and at random moments,
raced against another process on the same route and log, run out of disk, denied its folder, and
cancelled by a signal. After each, the raw files are checked without canary's code: the audit log's
hash chain recomputed line by line, every change followed by exactly one outcome that tells the truth
about the route, every weight pair summing to 100, the canary's weight moving only as the rollout's own
decisions moved it, and the route's state naming the log's head.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kube_api_server import KubeApiServer
from resilience_helpers import (
    NOBODY,
    POLICY,
    STEPS,
    Canary,
    Handle,
    Launcher,
    Limits,
    Line,
    Result,
    Route,
    ScriptLauncher,
    applied,
    assert_route_agrees_with_log,
    assert_weights_sum_to_100,
    changes,
    launcher,
    log_lines,
    one_line_error,
    wait_for_line,
    weights_pair,
    world_readable_dir,
    write_manifest,
)

from canary.audit import verify_chain
from canary.records import applied_outcome, decode, seal

pytestmark = pytest.mark.slow

SEED = (90, 10)  # the seed's split: v1 90, v2 10
TICK = re.compile(r"^\[tick +(\d+)\]", re.MULTILINE)
HEAD = re.compile(r"head ([0-9a-f]{64})\)")


@pytest.fixture(scope="module")
def launch() -> Iterator[Launcher]:
    made = launcher()
    try:
        yield made
    finally:
        made.close()


def manifest_canary(launch: Launcher, folder: Path) -> Canary:
    folder.mkdir(parents=True, exist_ok=True)
    return Canary(launch, audit=folder / "audit" / "web-app.jsonl", manifest=write_manifest(folder / "web-app.yaml"))


@contextmanager
def route_in(where: str, launch: Launcher, folder: Path) -> Iterator[Canary]:
    """A fresh route with the seed's objects: a manifest file, or a VirtualService on a fresh API server."""
    if where == "manifest":
        yield manifest_canary(launch, folder)
        return
    folder.mkdir(parents=True, exist_ok=True)
    with KubeApiServer.with_fixtures() as api:
        yield Canary(launch, audit=folder / "audit" / "web-app.jsonl", api=api, folder=folder)


def line_count(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def chain_verifies(c: Canary, route: Route, head: str) -> None:
    """canary's own check, in this process (the rounds of a race are many): against the route's head and
    against a printed one. The last round of each race runs `canary audit verify` as a command too."""
    against_route = verify_chain(c.audit, route.head, route_head=True)
    assert against_route.ok, against_route.problem
    against_printed = verify_chain(c.audit, head)
    assert against_printed.ok, against_printed.problem


def applied_hash(change: Line) -> str:
    """The hash the "applied" outcome of `change` has (the head a route holding the change names)."""
    sealed = decode(change.data, f"line {change.number}")
    return seal(applied_outcome(sealed), sealed.hash).hash


# ------------------------------------------------------------------------------- history checks


def assert_history(lines: list[Line], *, ends: str) -> Counter[str]:
    """The whole log against the rollout's own rules; returns the actions of the changes made.

    - every weight pair in any record sums to 100;
    - every change was decided on what the route then held (the weights the changes made before it left):
      no change is ever unseen or lost;
    - an applied change's outcome holds its weights; a failed one's, the weights the route kept;
    - over the changes made, the canary's weight only climbs the policy's steps one at a time, by an
      advance or a promote, or drops to 0 by a rollback; a hold, start, resume or cancel leaves it;
    - the changes made are one rollout's, ending in `ends`.
    """
    assert assert_weights_sum_to_100(lines) > 0
    held, made = SEED, Counter[str]()
    for decision, outcome in changes(lines):
        assert outcome is not None, f"line {decision.number}: the last change has no outcome"
        before, after = weights_pair(decision["weights_before"]), weights_pair(decision["weights_after"])
        assert before == held, f"line {decision.number}: decided on {before}, the route held {held}"
        if outcome["result"] == "failed":
            assert weights_pair(outcome["weights"]) == held, f"line {outcome.number}: the route kept {held}"
            continue
        assert weights_pair(outcome["weights"]) == after
        assert after is not None
        action, was, now = decision["action"], held[1], after[1]
        if now == was:
            assert action in ("start", "hold", "resume", "cancel"), f"line {decision.number}: {action} moved nothing"
        elif now == 0:
            assert action == "rollback", f"line {decision.number}: canary to 0 by {action}"
        else:
            assert was in STEPS and now == STEPS[STEPS.index(was) + 1], f"line {decision.number}: {was}% -> {now}%"
            assert action in ("advance", "promote"), f"line {decision.number}: {was}% -> {now}% by {action}"
        made[action] += 1
        held = after
    rollouts = {decision["rollout"] for decision, _ in applied(lines)}
    assert len(rollouts) == 1, f"the changes made are one rollout's, got {rollouts}"
    final = applied(lines)[-1][0]
    assert final["phase"] == ends and final["action"] in ("promote", "rollback")
    return made


def assert_moves_on_the_route(history: list[Route], *, ends: str) -> None:
    """What the route held after each process, in order: weights summing to 100 (checked in Route), the
    canary only climbing the steps (or dropping to 0 at a rollback), never coming back up."""
    canary = [r.canary for r in history]
    climbed = [c for c in canary if c != 0] if ends == "rolled-back" else canary
    assert all(c in (*STEPS, 0) for c in canary), canary
    assert climbed == sorted(climbed), f"the canary's weight went back down: {canary}"
    if ends == "rolled-back":
        assert canary[-1] == 0 and 0 not in canary[: canary.index(0)], canary
        assert all(c == 0 for c in canary[canary.index(0) :]), canary


# ------------------------------------------------------------------------------- 1. SIGKILL, 20 times


@dataclass(frozen=True)
class Kill:
    point: str  # a failpoint, or "outside": SIGKILL from the test at a random moment
    n: int = 1  # the N-th pass of the failpoint; for "outside", how many records to let it append first
    final: bool = False  # N is found by a dry run: the process's last write, the rollout's final decision


@dataclass
class Pending:
    """A change a death left without its outcome, and what the next command must record for it."""

    change: str
    result: str  # "applied" when the route holds it, else "failed"
    hash: str | None  # the applied outcome's hash, which the route names as its head


class KilledRollout:
    """One rollout on a manifest, its processes killed by plan, every death's aftermath checked."""

    def __init__(self, launch: Launcher, folder: Path, scenario: str, rng: random.Random) -> None:
        self.c = manifest_canary(launch, folder)
        self.scenario, self.rng, self.folder = scenario, rng, folder
        self.history: list[Route] = []
        self.pending: Pending | None = None
        self.kills: Counter[str] = Counter()
        self.settled: Counter[str] = Counter()
        self.processes = 0

    def args(self, *, first: bool = False) -> list[str]:
        return self.c.run_args(self.scenario, *([] if first else ["--resume"]), "--output", "json")

    def dry_run_writes(self) -> tuple[int, str]:
        """How many writes the next `--resume` makes to the end, and its last decision's phase: the same
        command on copies of the manifest and the log (a resumed simulated rollout is deterministic)."""
        scratch = self.folder / f"dry-{self.processes}"
        (scratch / "audit").mkdir(parents=True)
        assert self.c.manifest is not None
        shutil.copy(self.c.manifest, scratch / "web-app.yaml")
        shutil.copy(self.c.audit, scratch / "audit" / "web-app.jsonl")
        dry = Canary(self.c.launch, audit=scratch / "audit" / "web-app.jsonl", manifest=scratch / "web-app.yaml")
        known = line_count(dry.audit)
        result = dry.call(dry.run_args(self.scenario, "--resume", "--output", "json"))
        assert result.code in (0, 1), result.err
        new = log_lines(dry.audit)[known:]
        writes = [line for line in new if line.kind == "decision" and line["writes"]]
        return len(writes), writes[-1]["phase"]

    def die(self, kill: Kill, *, first: bool = False) -> None:
        """One process, killed as planned; then the state it left is checked."""
        if kill.final:
            writes, phase = self.dry_run_writes()
            assert phase in ("promoted", "rolled-back")
            kill = Kill(kill.point, writes, final=True)
        self.processes += 1
        if kill.point == "outside":
            known = line_count(self.c.audit)
            handle = self.c.start(self.args(first=first))
            if kill.n == 0:
                time.sleep(self.rng.uniform(0.0, 0.12))  # starting: parsing, locking, reading the route
            else:
                deadline = time.monotonic() + 30
                while line_count(self.c.audit) < known + kill.n and handle.poll() is None:
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
                time.sleep(self.rng.uniform(0.0, 0.03))  # somewhere in what comes next
            handle.kill()
            code = handle.wait(30)
        else:
            result = self.c.call(self.args(first=first), failpoint=f"{kill.point}:{kill.n}")
            code = result.code
        assert code == -signal.SIGKILL, f"kill {sum(self.kills.values()) + 1} ({kill}) did not kill: exit {code}"
        self.kills[kill.point] += 1
        self.after_process()
        if kill.final:  # it died at the final decision's write: before it, after it, after its outcome
            lines = log_lines(self.c.audit)
            decision, outcome = changes(lines)[-1]
            assert decision["phase"] in ("promoted", "rolled-back"), "the final kill came at the final decision"
            assert (outcome is None) == (kill.point != "after-outcome")
            assert (self.c.route().phase == decision["phase"]) == (kill.point != "before-write")

    def after_process(self) -> None:
        """Whatever ended the process: the log is whole and chained, the route sums to 100, and a change left
        open is one the next command can settle exactly (the route holds it and names its applied outcome,
        or holds what the log's last applied change made)."""
        lines = log_lines(self.c.audit)
        route = self.c.route()
        self.history.append(route)
        if self.pending is not None:  # the change the last death left open: settled as the route said?
            index = next(i for i, line in enumerate(lines) if line.hash == self.pending.change)
            if index + 1 < len(lines):
                outcome = lines[index + 1]
                assert outcome.kind == "outcome" and outcome["result"] == self.pending.result, (
                    f"line {outcome.number}: the open change was settled as {outcome.data.get('result')}, "
                    f"the route said {self.pending.result}"
                )
                if self.pending.hash is not None:
                    assert outcome.hash == self.pending.hash
                self.settled[self.pending.result] += 1
                self.pending = None
        last = lines[-1] if lines else None
        made = applied(lines)
        if last is not None and last.kind == "decision" and last["writes"]:
            if route.head == applied_hash(last):
                assert (route.v1, route.v2) == weights_pair(last["weights_after"]) and route.phase == last["phase"]
                self.pending = Pending(last.hash, "applied", route.head)
            else:
                assert route.head == (made[-1][1].hash if made else None), "the route holds a change the log lacks"
                self.pending = Pending(last.hash, "failed", None)
        elif made:
            assert_route_agrees_with_log(route, lines)
        else:
            assert route.state is None and (route.v1, route.v2) == SEED

    def finish(self, expected: int) -> Result:
        """Restart without failpoints: the first one ends the rollout."""
        self.processes += 1
        result = self.c.call(self.args())
        self.after_process()
        assert result.code == expected, result.err
        return result

    def assert_survived(self, result: Result, *, ends: str, final_canary: int) -> Counter[str]:
        """Ended as it should, every record there, the route and the log agreeing; `--resume` again changes
        nothing."""
        lines = log_lines(self.c.audit)
        made = assert_history(lines, ends=ends)
        assert_moves_on_the_route(self.history, ends=ends)
        assert len({line["rollout"] for line in lines if line.kind == "decision"}) == 1, "one rollout throughout"
        route = self.c.route()
        _, outcome = assert_route_agrees_with_log(route, lines)
        assert route.canary == final_canary and route.phase == ends
        printed = result.json()
        assert printed["outcome"] == ends and printed["final_weights"]["canary"] == final_canary
        assert printed["audit_head"] == lines[-1].hash == outcome.hash
        assert self.c.verify().code == 0, "the log verifies against the route's head"
        assert self.c.verify(head=printed["audit_head"]).code == 0, "and against the head the last command printed"
        log, manifest = self.c.audit.read_bytes(), self.c.route_bytes()
        again = self.c.call(self.args())
        assert again.code == result.code and again.json()["audit_head"] == printed["audit_head"]
        assert self.c.audit.read_bytes() == log and self.c.route_bytes() == manifest, "an ended rollout is left be"
        return made


def healthy_plan(rng: random.Random) -> list[Kill]:
    """20 kills: the first process after its second write; 17 at failpoints and random moments, each early in
    its process so the rollout is still open after them; then the final decision's write, before and after."""
    middle = ["before-write"] * 4 + ["after-write"] * 4 + ["after-outcome"] * 5 + ["outside"] * 4
    rng.shuffle(middle)
    plan = [Kill("after-write", 2)]
    for point in middle:
        if point == "outside":
            plan.append(Kill(point, rng.choice([0, 1, 2])))
        else:
            plan.append(Kill(point, rng.choice([1, 2, 3] if point == "before-write" else [1, 2])))
    return [*plan, Kill("before-write", final=True), Kill("after-write", final=True)]


def test_a_rollout_killed_20_times_ends_promoted_with_every_record_and_weights_that_only_climbed(
    launch: Launcher, tmp_path: Path
) -> None:
    """SIGKILL at `before-write`, `after-write`, `after-outcome` (various N, the last two at the final
    decision's write) and from outside at random moments, 20 times; `--resume` after each. The rollout ends
    promoted; each death's open change is settled exactly as the route says; every weight pair sums to 100;
    the canary climbs 10 -> 50 -> 100 only by the rollout's own decisions; the log verifies against the route
    and the printed head; a further `--resume` changes no byte."""
    rollout = KilledRollout(launch, tmp_path, "healthy", random.Random(20261201))
    plan = healthy_plan(rollout.rng)
    assert len(plan) == 20
    for i, kill in enumerate(plan):
        rollout.die(kill, first=i == 0)
    result = rollout.finish(0)
    made = rollout.assert_survived(result, ends="promoted", final_canary=100)
    assert sum(rollout.kills.values()) == 20 and set(rollout.kills) == {
        "before-write",
        "after-write",
        "after-outcome",
        "outside",
    }
    assert rollout.settled["applied"] >= 4 and rollout.settled["failed"] >= 3, rollout.settled
    assert made["advance"] == 1 and made["promote"] == 1, made
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".web-app.yaml.")]  # killed mid-write
    print(f"\nkills {dict(rollout.kills)}, settled {dict(rollout.settled)}, processes {rollout.processes}, "
          f"temporary manifests left by deaths: {len(left)}")  # fmt: skip


def test_a_regressing_rollout_killed_at_its_final_decision_ends_rolled_back_with_every_record(
    launch: Launcher, tmp_path: Path
) -> None:
    """The same on `--simulate error-regression`, shorter: killed after its first writes, from outside, and
    before and after the rollback's write is recorded. It ends rolled back (exit 1), the canary never climbed
    past what the decisions said, the log verifies, and a further `--resume` changes nothing."""
    rollout = KilledRollout(launch, tmp_path, "error-regression", random.Random(7))
    plan = [
        Kill("after-write", 2),
        Kill("outside", 1),
        Kill("before-write", 1),
        Kill("before-write", final=True),
        Kill("after-outcome", final=True),
    ]
    for i, kill in enumerate(plan):
        rollout.die(kill, first=i == 0)
    result = rollout.finish(1)
    made = rollout.assert_survived(result, ends="rolled-back", final_canary=0)
    assert made["rollback"] == 1 and made["promote"] == 0, made


# ------------------------------------------------------------------------------- 2. races


def manual_result(result: Result) -> dict[str, Any]:
    assert result.code == 0, result.err
    doc: dict[str, Any] = result.json()
    return doc


def by_actor(lines: list[Line], actor: str) -> tuple[Line, Line | None]:
    mine = [(d, o) for d, o in changes(lines) if d["actor"] == actor]
    assert len(mine) == 1, f"{actor}: one change recorded, got {len(mine)}"
    return mine[0]


@pytest.mark.parametrize(("where", "rounds"), [("manifest", 20), ("cluster", 5)])
def test_a_promote_and_a_rollback_at_the_same_instant_are_made_one_after_the_other(
    launch: Launcher, tmp_path: Path, where: str, rounds: int
) -> None:
    """Two people's commands released by one barrier on one route and log: both are made, in sequence (the
    later decided on the weights the earlier left); the route holds exactly what the one recorded last set,
    with its head; each printed head is its own applied outcome; the log verifies against the route."""
    rng = random.Random(f"race-a-{where}")
    order: Counter[str] = Counter()
    for i in range(rounds):
        with route_in(where, launch, tmp_path / f"round-{i}") as c:
            barrier = time.time() + 0.05
            lead = [0.0, rng.uniform(0.0, 0.004)]
            rng.shuffle(lead)
            promote = c.start(c.manual_args("promote", "--full", "--actor", "user:alice", "--reason", f"round {i}"),
                              limits=Limits(start_at=barrier + lead[0]))  # fmt: skip
            rollback = c.start(c.manual_args("rollback", "--actor", "user:bob", "--reason", f"round {i}"),
                               limits=Limits(start_at=barrier + lead[1]))  # fmt: skip
            done = {"user:alice": promote, "user:bob": rollback}
            printed = {actor: manual_result(Result(h.wait(60), h.stdout(), h.stderr())) for actor, h in done.items()}
            lines = log_lines(c.audit)
            assert len(changes(lines)) == 2 and all(line.kind != "note" for line in lines)
            mine = {actor: by_actor(lines, actor) for actor in done}
            (first, first_out), (later, later_out) = sorted(mine.values(), key=lambda pair: pair[0].number)
            assert first_out is not None and later_out is not None
            assert first_out["result"] == later_out["result"] == "applied", "both changes were made"
            assert later["weights_before"] == first["weights_after"], "the later one saw the earlier one's change"
            assert first["weights_before"] == {"baseline": SEED[0], "canary": SEED[1]}
            for actor, (decision, outcome) in mine.items():
                assert outcome is not None and printed[actor]["audit_head"] == outcome.hash
                assert printed[actor]["weights_after"] == decision["weights_after"]
                assert printed[actor]["weights_before"] == decision["weights_before"]
            route = c.route()
            assert_route_agrees_with_log(route, lines)
            assert route.head == later_out.hash == lines[-1].hash
            assert weights_pair(later["weights_after"]) == (route.v1, route.v2)
            assert route.phase == later["phase"] == ("promoted" if later["actor"] == "user:alice" else "rolled-back")
            chain_verifies(c, route, later_out.hash)
            if i == rounds - 1:
                assert c.verify().code == 0 and c.verify(head=later_out.hash).code == 0
            order[f"{later['action']} last"] += 1
    print(f"\n{where}: {dict(order)}")


def test_restarts_killed_before_and_after_their_write_record_each_abandon_once_and_in_time_order(
    launch: Launcher, tmp_path: Path
) -> None:
    """A run killed mid-rollout; a `--restart` killed before its write, another after it; a last `--restart`
    runs to the end. Each abandon is recorded once, against the rollout the route held, and the log's times
    never go backwards (a simulated `--restart` used to start its clock at the simulated epoch again, before
    the records of the rollout it abandoned)."""
    c = manifest_canary(launch, tmp_path)
    for flags, failpoint in (((), "after-outcome:3"), (("--restart",), "before-write:1"),
                             (("--restart",), "after-write:1")):  # fmt: skip
        assert c.call(c.run_args("healthy", *flags), failpoint=failpoint).code == -signal.SIGKILL
    result = c.call(c.run_args("healthy", "--restart", "--output", "json"))
    assert result.code == 0, result.err
    lines = log_lines(c.audit)  # the chain, every change's outcome, and the times in order
    starts = [d for d, _ in changes(lines) if d["action"] == "start"]
    assert len(starts) == 4
    made = {d["rollout"] for d, o in changes(lines) if d["action"] == "start" and o and o["result"] == "applied"}
    assert made == {starts[0]["rollout"], starts[2]["rollout"], starts[3]["rollout"]}, "the second never started"
    abandons = [line for line in lines if line.kind == "decision" and line["action"] == "abort"]
    assert [a["rollout"] for a in abandons] == [starts[0]["rollout"], starts[0]["rollout"], starts[2]["rollout"]]
    assert result.json()["rollout"] == starts[3]["rollout"] and result.json()["outcome"] == "promoted"
    assert_route_agrees_with_log(c.route(), lines)
    assert c.verify().code == 0


def test_a_persons_commands_after_a_run_killed_before_its_write_keep_the_rollouts_simulated_time(
    launch: Launcher, tmp_path: Path
) -> None:
    """A simulated run killed between recording a decision and writing it; a person pauses and continues on
    the wall clock, and the pause settles the open decision as not made. That outcome was stamped with the
    wall clock, the person's commands then followed it there, and the resumed run ended inconclusive after
    "491015 min". At the rollout's time, it is promoted within its deadline."""
    c = manifest_canary(launch, tmp_path)
    assert c.call(c.run_args("healthy"), failpoint="before-write:3").code == -signal.SIGKILL
    for verb in ("pause", "continue"):
        assert c.call(c.manual_args(verb)).code == 0
    result = c.call(c.run_args("healthy", "--resume", "--output", "json"))
    assert result.code == 0, result.err
    assert result.json()["outcome"] == "promoted" and result.json()["duration_s"] < 3600
    lines = log_lines(c.audit)  # the times in order
    assert [o["result"] for _, o in changes(lines) if o is not None].count("failed") == 1
    assert_route_agrees_with_log(c.route(), lines)
    assert c.verify().code == 0


@pytest.mark.parametrize(("where", "rounds"), [("manifest", 20), ("cluster", 4)])
def test_a_persons_rollback_during_a_run_ends_it_and_the_route_its_state_and_the_log_agree(
    launch: Launcher, tmp_path: Path, promoted_at: int, where: str, rounds: int
) -> None:
    """`canary rollback` at a random tick of a running `canary run` on one route and log: the rollback is
    made; the run ends rolled back (exit 1) if it had not ended, or promoted (exit 0) if it had, and wrote
    nothing after the rollback; the head it prints is the log's end when it ends with the rollback (its own
    last record when it ended first); the route holds 100/0 with phase rolled-back and the rollback's head; the
    rollback decided on the weights the run's last change left; the log verifies."""
    rng = random.Random(f"race-b-{where}")
    seen: Counter[str] = Counter()
    for i in range(rounds):
        with route_in(where, launch, tmp_path / f"round-{i}") as c:
            run = c.start(c.run_args("healthy"))
            tick = rng.randrange(promoted_at + 1 if where == "manifest" else 6)  # after promoted_at, it has ended
            assert wait_for_line(run, f"[tick {tick:>3}]", 60), run.stderr()
            time.sleep(rng.uniform(0.0, 0.05))
            rollback = c.start(c.manual_args("rollback", "--actor", "user:alice", "--reason", f"pager {i}"))
            person = manual_result(Result(rollback.wait(60), rollback.stdout(), rollback.stderr()))
            code = run.wait(60)
            lines = log_lines(c.audit)
            decision, outcome = by_actor(lines, "user:alice")
            assert outcome is not None and outcome["result"] == "applied"
            assert (decision.number, outcome.number) == (len(lines) - 1, len(lines)), "the run wrote nothing after"
            assert person["audit_head"] == outcome.hash
            runs = [d for d, o in changes(lines) if d["actor"] != "user:alice"]
            ran_out = runs[-1]["phase"] == "promoted"
            assert code == (0 if ran_out else 1), f"run exit {code}, its last decision {runs[-1]['action']}"
            summary = run.stdout()
            assert ("PROMOTED after" if ran_out else "ROLLED BACK after") in summary, summary
            printed = HEAD.search(summary)
            assert printed is not None, summary
            # the head the run printed: its own last record if it ended first, else the log's end (the rollback's)
            if ran_out:
                assert lines[-3]["of"] == runs[-1].hash and printed.group(1) == lines[-3].hash
            else:
                assert printed.group(1) == outcome.hash
            assert all(d["rollout"] == decision["rollout"] for d in runs), "the person's change joins the rollout"
            made_by_run = [d for d, o in applied(lines) if d["actor"] != "user:alice"]
            assert decision["weights_before"] == made_by_run[-1]["weights_after"], "decided on what the run left"
            route = c.route()
            assert_route_agrees_with_log(route, lines)
            assert (route.v1, route.v2, route.phase, route.head) == (100, 0, "rolled-back", outcome.hash)
            assert_history(lines, ends="rolled-back")
            chain_verifies(c, route, outcome.hash)
            if i == rounds - 1:
                assert c.verify().code == 0 and c.verify(head=outcome.hash).code == 0
            seen["run ended first" if ran_out else f"run saw it at {made_by_run[-1]['weights_after']['canary']}%"] += 1
    print(f"\n{where}: {dict(seen)}")


def test_a_persons_failed_write_on_a_simulated_rollout_keeps_its_time_and_the_resumed_run_is_promoted(
    launch: Launcher, tmp_path: Path
) -> None:
    """A person's promote on a simulated run's route fails its write (503): the failure was stamped with the
    wall clock, and the resumed run then ended inconclusive, "deadline reached" after 491,134 min. Stamped at
    the rollout's time, the resumed run is promoted within its deadline and the log's times stay in order."""
    with route_in("cluster", launch, tmp_path) as c:
        assert c.call(c.run_args("healthy"), failpoint="after-outcome:3").code == -signal.SIGKILL
        c.api.fail_next(503, method="PUT")
        refused = c.call(c.manual_args("promote"))
        assert refused.code == 2, refused.err
        lines = log_lines(c.audit)
        assert lines[-1].kind == "outcome" and lines[-1]["result"] == "failed"
        times = [line["time"] for line in lines]
        assert times == sorted(times) and times[-1] - times[0] < 3600, "the failure is at the rollout's time"
        result = c.call(c.run_args("healthy", "--resume", "--output", "json"))
        assert result.code == 0, result.err
        assert result.json()["outcome"] == "promoted" and result.json()["duration_s"] < 3600
        lines = log_lines(c.audit)
        assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)
        assert_route_agrees_with_log(c.route(), lines)


def test_a_rollback_goes_ahead_when_a_line_that_is_no_record_lies_before_the_routes_head(
    launch: Launcher, tmp_path: Path
) -> None:
    """A line a tool put in the log, and a failed write after the route's head (so the log is searched for
    it): the rollback was refused ("audit.jsonl:3: not a JSON record"), weights left at 90/10. It goes ahead,
    a note says where the log stops verifying, and the route and the log agree."""
    with route_in("cluster", launch, tmp_path) as c:
        assert c.call(c.run_args("healthy"), failpoint="after-outcome:3").code == -signal.SIGKILL
        c.api.fail_next(503, method="PUT")
        assert c.call(c.manual_args("promote")).code == 2
        raw = c.audit.read_bytes().split(b"\n")
        c.audit.write_bytes(b"\n".join([*raw[:2], b"# synced by a backup tool", *raw[2:]]))
        done = manual_result(c.call(c.manual_args("rollback")))
        route = c.route()
        assert (route.v1, route.v2, route.phase, route.head) == (100, 0, "rolled-back", done["audit_head"])
        records = [json.loads(line) for line in c.audit.read_bytes().splitlines() if line.startswith(b"{")]
        assert records[-1]["hash"] == done["audit_head"] and records[-1]["result"] == "applied"
        assert any("does not verify at line 3" in r.get("reason", "") for r in records if r["kind"] == "note")


# ------------------------------------------------------------------------------- 3. disks and files


def test_a_torn_last_line_is_set_aside_with_a_note_and_a_rollback_goes_ahead(launch: Launcher, tmp_path: Path) -> None:
    """Half a JSON line at the log's end (a crash mid-append): `canary rollback` works; the torn bytes are
    in LOG.torn, a note says where they were, the log before them is untouched, and the log verifies."""
    c = manifest_canary(launch, tmp_path)
    assert c.call(c.run_args("healthy", "--output", "json"), failpoint="after-outcome:3").code == -signal.SIGKILL
    whole = c.audit.read_bytes()
    torn = b'{"kind":"decision","rollout":"' + b"x" * 40 + b'","time":17672256'
    with c.audit.open("ab") as fh:
        fh.write(torn)
    done = manual_result(c.call(c.manual_args("rollback")))
    assert c.audit.with_name(c.audit.name + ".torn").read_bytes() == torn + b"\n"
    after = c.audit.read_bytes()
    assert after.startswith(whole), "the whole lines before the torn one are kept byte for byte"
    lines = log_lines(c.audit)
    note, decision, outcome = lines[-3:]
    assert note.kind == "note" and "torn" in note["reason"]
    assert note["details"]["offset"] == len(whole) and note["details"]["bytes"] == len(torn)
    assert decision["action"] == "rollback" and outcome["result"] == "applied"
    assert_route_agrees_with_log(c.route(), lines)
    assert c.verify().code == 0 and c.verify(head=done["audit_head"]).code == 0


def test_a_torn_outcome_after_a_write_is_set_aside_and_the_change_still_settled_as_made(
    launch: Launcher, tmp_path: Path
) -> None:
    """A crash mid-append of the very outcome a write left open (the route holds the change): the torn half
    is set aside with a note, the change is still recorded as applied, the rollback follows, all verifies."""
    c = manifest_canary(launch, tmp_path)
    assert c.call(c.run_args("healthy", "--output", "json"), failpoint="after-write:3").code == -signal.SIGKILL
    open_change = log_lines(c.audit)[-1]
    assert open_change.kind == "decision" and c.route().head == applied_hash(open_change)
    sealed = decode(open_change.data, "open change")
    line = seal(applied_outcome(sealed), sealed.hash).encode()
    with c.audit.open("ab") as fh:
        fh.write(line[: len(line) // 2])
    manual_result(c.call(c.manual_args("rollback")))
    lines = log_lines(c.audit)
    index = next(i for i, x in enumerate(lines) if x.hash == open_change.hash)
    settled = lines[index + 1]  # sealed to follow the change: the head the route holds
    assert settled.kind == "outcome" and settled["of"] == open_change.hash and settled["result"] == "applied"
    assert settled.hash == applied_hash(open_change)
    assert any(x.kind == "note" and "torn" in x["reason"] for x in lines[index:])
    assert c.audit.with_name(c.audit.name + ".torn").read_bytes() == line[: len(line) // 2] + b"\n"
    assert_history(lines, ends="rolled-back")
    assert_route_agrees_with_log(c.route(), lines)
    assert c.verify().code == 0


def torn_after_three_ticks(c: Canary) -> tuple[int, bytes]:
    """An open rollout whose log then gets half a line: (the size of its whole lines, the torn bytes)."""
    assert c.call(c.run_args("healthy", "--output", "json"), failpoint="after-outcome:3").code == -signal.SIGKILL
    whole, torn = c.audit.stat().st_size, b'{"kind":"decision","rollout":"' + b"t" * 50
    with c.audit.open("ab") as fh:
        fh.write(torn)
    return whole, torn


def torn_notes(lines: list[Line], torn: bytes) -> list[Line]:
    return [x for x in lines if x.kind == "note" and (x["details"] or {}).get("bytes") == len(torn)]


def test_a_command_that_fails_before_writing_leaves_the_torn_line_for_the_next_one(
    launch: Launcher, tmp_path: Path
) -> None:
    """`canary run` without --resume on an open rollout is refused (exit 2) before it writes anything: the log
    is left byte for byte as it was, tear included (never cut without a note); the next command that writes
    sets the tear aside and notes it."""
    c = manifest_canary(launch, tmp_path)
    whole, torn = torn_after_three_ticks(c)
    before = c.audit.read_bytes()
    refused = c.call(c.run_args("healthy", "--output", "json"))
    assert refused.code == 2 and "--resume" in one_line_error(refused)
    assert c.audit.read_bytes() == before and not c.audit.with_name(c.audit.name + ".torn").exists()
    done = manual_result(c.call(c.manual_args("rollback")))
    lines = log_lines(c.audit)
    assert lines[-1].hash == done["audit_head"] and torn_notes(lines, torn)
    assert c.audit.with_name(c.audit.name + ".torn").read_bytes() == torn + b"\n"
    assert c.audit.read_bytes()[:whole] == before[:whole], "every whole line before the tear is kept"


def test_a_death_right_after_a_torn_line_was_copied_aside_still_leaves_a_note(launch: Launcher, tmp_path: Path) -> None:
    """SIGKILL the rollback as soon as the torn line is copied to LOG.torn (a large extra document in the
    manifest makes the command slow to get there and past it); whatever the moment, the log holds the torn
    bytes or a note for them, and the next rollback works and leaves the note."""
    c = manifest_canary(launch, tmp_path)
    _, torn = torn_after_three_ticks(c)
    assert c.manifest is not None
    with c.manifest.open("a") as fh:  # a ConfigMap beside the VirtualService: the file is slow to parse
        fh.write("---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\ndata:\n")
        fh.writelines(f"  k{i}: {'x' * 60}\n" for i in range(3000))
    side = c.audit.with_name(c.audit.name + ".torn")
    rollback = c.start(c.manual_args("rollback"))
    deadline = time.monotonic() + 30
    while not side.exists() and rollback.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.0002)
    rollback.kill()
    rollback.wait(30)
    data = c.audit.read_bytes()
    assert data.endswith(torn) or torn_notes(log_lines(c.audit), torn), "the tear is in the log, or noted"
    done = manual_result(c.call(c.manual_args("rollback")))
    lines = log_lines(c.audit)
    assert lines[-1].hash == done["audit_head"]
    assert torn_notes(lines, torn), "a note says the torn line was set aside"
    assert torn + b"\n" in side.read_bytes()


@pytest.fixture(scope="module")
def promoted_at(launch: Launcher, tmp_path_factory: pytest.TempPathFactory) -> int:
    """The tick at which an uninterrupted `--simulate healthy` run (deterministic) promotes."""
    c = manifest_canary(launch, tmp_path_factory.mktemp("promoted-at"))
    result = c.call(c.run_args("healthy"))
    assert result.code == 0, result.err
    return max(int(n) for n in TICK.findall(result.out))


@pytest.fixture(scope="module")
def reference_lines(launch: Launcher, tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    """The log lines of an uninterrupted healthy run (simulated, deterministic: the same sizes every time)."""
    c = manifest_canary(launch, tmp_path_factory.mktemp("reference"))
    assert c.call(c.run_args("healthy", "--output", "json")).code == 0
    return c.audit.read_bytes().splitlines(keepends=True)


@pytest.mark.parametrize("cut", ["decision", "outcome", "manifest"])
def test_a_full_disk_mid_run_fails_with_one_line_claims_no_change_not_made_and_a_rollback_works_after(
    launch: Launcher, tmp_path: Path, reference_lines: list[bytes], cut: str
) -> None:
    """RLIMIT_FSIZE cuts the log in the middle of tick 5's decision (nothing was written) or of its outcome
    (the route was written), or refuses the manifest's first write (the start): exit 2 with one line, no
    partial line, no record claiming a change the route does not hold, the route's head in the log or
    resolvable from its last change; without the limit a rollback works and the log verifies."""
    c = manifest_canary(launch, tmp_path)
    if cut == "manifest":  # the log's first lines fit, the manifest with its first state (about 2 KB) does not
        line, limit = 1, len(reference_lines[0]) + 1024
        assert limit < 2000 and len(c.route_bytes()) < limit
    else:
        line = 10 if cut == "decision" else 11  # 0-based: start, outcome, then a decision and an outcome a tick
        assert (b'"kind":"decision"' in reference_lines[line]) == (cut == "decision")
        limit = sum(len(x) for x in reference_lines[:line]) + len(reference_lines[line]) // 2
    seed = c.route_bytes()
    result = c.call(c.run_args("healthy", "--output", "json"), limits=Limits(fsize=limit))
    assert result.code == 2 and one_line_error(result)
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary file left"
    lines = log_lines(c.audit)
    route = c.route()
    if cut == "manifest":
        assert c.route_bytes() == seed and route.state is None
        assert [x.kind for x in lines] == ["decision", "outcome"] and lines[1]["result"] == "failed"
        assert weights_pair(lines[1]["weights"]) == SEED
    else:
        assert str(c.audit) in result.err
        assert c.audit.stat().st_size == sum(len(x) for x in reference_lines[:line]), "the cut line was taken back"
    if cut == "outcome":
        assert lines[-1].kind == "decision" and lines[-1]["writes"]
        assert route.head == applied_hash(lines[-1]), "the route holds the change whose outcome the disk refused"
        assert (route.v1, route.v2) == weights_pair(lines[-1]["weights_after"])
        assert c.verify().code == 1, "until the next command records the outcome the route names"
    elif cut == "decision":
        assert lines[-1].kind == "outcome"
        assert_route_agrees_with_log(route, lines)
        assert c.verify().code == 0
    done = manual_result(c.call(c.manual_args("rollback")))
    lines = log_lines(c.audit)
    assert_history(lines, ends="rolled-back")
    assert_route_agrees_with_log(c.route(), lines)
    assert c.verify().code == 0 and c.verify(head=done["audit_head"]).code == 0


def can_become_nobody(launch: Launcher) -> str | None:
    """Why the test cannot run canary as nobody here (None: it can)."""
    if os.geteuid() != 0:
        return "needs root to start a process as nobody"
    interpreter = os.path.realpath(sys.executable)
    pid = os.fork()
    if pid == 0:
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if os.geteuid() != NOBODY:
                os._exit(1)
            os._exit(0 if os.access(interpreter, os.X_OK) else 2)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code == 1:
        return "this sandbox does not let root become nobody"
    if code == 2 and isinstance(launch, ScriptLauncher):  # a forked command has its interpreter already
        return f"nobody cannot execute the console script's interpreter {interpreter} (under a 0700 folder)"
    return None


@pytest.mark.parametrize("when", ["at the start", "mid-rollout"])
def test_a_read_only_manifest_folder_fails_the_run_records_the_change_as_failed_and_a_rollback_works_after(
    launch: Launcher, when: str
) -> None:
    """As nobody, with the manifest's folder mode 0555 (no temporary file can be made beside it): the run
    fails with exit 2 and one line, its change recorded as failed and the manifest untouched; after chmod
    0755 a rollback (as nobody too) works and the log verifies."""
    why = can_become_nobody(launch)
    if why is not None:
        pytest.skip(why)
    nobody = Limits(user=NOBODY)
    with world_readable_dir("canary-readonly-") as root:
        routes, logs = root / "routes", root / "audit"
        routes.mkdir()
        logs.mkdir()
        policy = root / "web-app-policy.yaml"  # nobody may not read a checkout under a 0700 folder
        policy.write_bytes(POLICY.read_bytes())
        c = Canary(launch, audit=logs / "web-app.jsonl", manifest=write_manifest(routes / "web-app.yaml"),
                   policy=policy, cwd=root)  # fmt: skip
        for path in (routes, logs, routes / "web-app.yaml"):
            os.chown(path, NOBODY, NOBODY)
        if when == "mid-rollout":
            killed = c.call(c.run_args("healthy", "--output", "json"), failpoint="after-outcome:3", limits=nobody)
            assert killed.code == -signal.SIGKILL
        known, manifest = line_count(c.audit), c.route_bytes()
        held = (c.route().v1, c.route().v2)
        os.chmod(routes, 0o555)
        try:
            flags = ("--resume",) if when == "mid-rollout" else ()
            result = c.call(c.run_args("healthy", *flags, "--output", "json"), limits=nobody)
        finally:
            os.chmod(routes, 0o755)
        assert result.code == 2, result.err
        one_line_error(result)
        assert c.route_bytes() == manifest and sorted(p.name for p in routes.iterdir()) == ["web-app.yaml"]
        lines = log_lines(c.audit)
        new = lines[known:]
        assert [x.kind for x in new] == ["decision", "outcome"] and new[1]["result"] == "failed"
        assert weights_pair(new[1]["weights"]) == held
        if known:
            assert_route_agrees_with_log(c.route(), lines)
        else:
            assert c.route().state is None
        done = manual_result(c.call(c.manual_args("rollback"), limits=nobody))
        lines = log_lines(c.audit)
        assert_history(lines, ends="rolled-back")
        assert_route_agrees_with_log(c.route(), lines)
        assert c.verify().code == 0 and c.verify(head=done["audit_head"]).code == 0


# ------------------------------------------------------------------------------- 4. signals


def cancelled_at_first_tick(c: Canary, signum: int, *, resume: bool) -> Handle | None:
    """Start a run, send `signum` right after its first tick line; None if it finished first."""
    run = c.start(c.run_args("healthy", *(["--resume"] if resume else [])))
    assert wait_for_line(run, "[tick", 60), run.stderr()
    run.signal(signum)
    code = run.wait(60)
    return None if code == 0 else run


def test_sigterm_and_sigint_cancel_a_run_with_the_weights_as_they_stood_and_resume_carries_on(
    launch: Launcher, tmp_path: Path
) -> None:
    """SIGTERM right after the first tick line: exit 4, the last decision a cancel that moved nothing, the
    route's phase "cancelled"; a `--resume` cancelled the same way by SIGINT; a last `--resume` ends
    promoted, and the log verifies."""
    c = manifest_canary(launch, tmp_path)
    for signum, resume in ((signal.SIGTERM, False), (signal.SIGINT, True)):
        before = applied(log_lines(c.audit)) if c.audit.exists() else []
        run = cancelled_at_first_tick(c, signum, resume=resume)
        if run is None:
            pytest.skip(f"the run finished before {signal.Signals(signum).name} reached it")
        assert run.wait(1) == 4, run.stderr()
        assert "CANCELLED after" in run.stdout()
        lines = log_lines(c.audit)
        decision, outcome = applied(lines)[-1]
        assert (decision.number, outcome.number) == (len(lines) - 1, len(lines))
        assert decision["action"] == "cancel" and decision["phase"] == "cancelled"
        assert decision["weights_before"] == decision["weights_after"], "a cancel moves no weight"
        assert len(applied(lines)) > len(before) + 1, "the run made changes before the cancel"
        route = c.route()
        assert route.phase == "cancelled" and (route.v1, route.v2) == weights_pair(decision["weights_after"])
        assert_route_agrees_with_log(route, lines)
    result = c.call(c.run_args("healthy", "--resume", "--output", "json"))
    assert result.code == 0, result.err
    lines = log_lines(c.audit)
    actions = [d["action"] for d, _ in applied(lines)]
    assert actions.count("cancel") == 2 and actions.count("resume") == 2 and actions[-1] == "promote"
    assert_history(lines, ends="promoted")
    assert c.verify().code == 0 and c.verify(head=result.json()["audit_head"]).code == 0


# ------------------------------------------------------------------------------- the console script


def test_the_console_script_dies_at_a_failpoint_and_its_write_is_settled_as_made(
    launch: Launcher, tmp_path: Path
) -> None:
    """The installed console script itself (not a forked command): CANARY_FAILPOINT kills it after a write;
    the next `--resume` records that write as applied and the rollout ends promoted; the log verifies."""
    script = ScriptLauncher()
    try:
        c = manifest_canary(script, tmp_path)
        assert c.call(c.run_args("healthy", "--output", "json"), failpoint="after-write:4").code == -signal.SIGKILL
    finally:
        script.close()
    open_change = log_lines(c.audit)[-1]
    assert open_change.kind == "decision" and c.route().head == applied_hash(open_change)
    c.launch = launch
    result = c.call(c.run_args("healthy", "--resume", "--output", "json"))
    assert result.code == 0, result.err
    lines = log_lines(c.audit)
    assert lines[open_change.number]["of"] == open_change.hash
    assert lines[open_change.number].hash == applied_hash(open_change)
    assert_history(lines, ends="promoted")
    assert c.verify(head=result.json()["audit_head"]).code == 0
