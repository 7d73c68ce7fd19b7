"""Promotion, rollback and status by hand from the CLI, on weights and state kept in a manifest file: each
change recorded as intended and as applied, joined to the route's chain, its head printed and checkable."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import yaml
from helpers import decisions, tick
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records, verify_chain
from canary.cli import app
from canary.controller import Runner
from canary.model import Action, Phase, Weights
from canary.policy import load_policy
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord
from canary.routers.manifest import ManifestRouter
from canary.scenario import builtin_scenario
from canary.state import ANNOTATION

ROOT = Path(__file__).resolve().parent.parent
VS = ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml"
DR = ROOT / "fixtures" / "istio" / "web-app-destinationrule.yaml"
POLICY = str(ROOT / "policies" / "web-app.yaml")
runner = CliRunner()


@pytest.fixture
def manifest(tmp_path: Path) -> Path:
    """The seed's DestinationRule and VirtualService in one multi-document file, as a GitOps repo holds them."""
    path = tmp_path / "web-app.yaml"
    path.write_text(DR.read_text() + "---\n" + VS.read_text())
    return path


def weights(manifest: Path) -> Weights:
    return ManifestRouter(manifest).read(load_policy(POLICY).target).weights


def open_rollout(manifest: Path, audit: Path, ticks: int, policy: str = POLICY) -> Runner:
    """A healthy simulated rollout opened on the route in `manifest`, `ticks` intervals in."""
    run = simulated_rollout(load_policy(policy), builtin_scenario("healthy"), seed=1, audit=AuditLog(audit),
                            router=ManifestRouter(manifest)).runner  # fmt: skip
    run.open()
    for _ in range(ticks):
        tick(run)
    return run


def reviews_manifest(tmp_path: Path) -> Path:
    """Istio's bookinfo reviews DestinationRule and VirtualService, verbatim, in one file: another route."""
    path = tmp_path / "reviews.yaml"
    path.write_text((ROOT / "fixtures/istio/reviews-destinationrule.yaml").read_text() + "---\n"
                    + (ROOT / "fixtures/istio/reviews-virtualservice.yaml").read_text())  # fmt: skip
    return path


def test_a_manual_rollback_is_recorded_as_intended_and_applied_and_prints_the_head(
    manifest: Path, tmp_path: Path
) -> None:
    audit = tmp_path / "a.jsonl"
    result = runner.invoke(
        app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit), "--actor", "alice",
              "--reason", "pager alert"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    intent, outcome = (s.record for s in read_records(audit))
    assert isinstance(intent, DecisionRecord) and isinstance(outcome, OutcomeRecord)
    assert (intent.actor, intent.reason, intent.action, intent.writes) == (
        "alice",
        "pager alert",
        Action.ROLLBACK,
        True,
    )
    assert intent.weights_before == Weights(90, 10) and intent.weights_after == Weights(100, 0)
    assert outcome.result == "applied"
    head = list(read_records(audit))[-1].hash
    assert "canary 10% -> 0% (rollback by alice" in result.stdout and f"head {head}" in result.stdout
    assert weights(manifest) == Weights(100, 0)
    assert verify_chain(audit, head).ok
    again = runner.invoke(app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit)])
    assert again.exit_code == 0, again.output
    assert "canary stays at 0% (rollback by" in again.stdout, "a second rollback moves nothing and says so"


def test_a_rollback_names_the_traffic_to_the_canary_it_leaves_where_it_is(tmp_path: Path) -> None:
    """The seed's VirtualService with an `/api/` route split 90/10 too, a mirror to v2 on the default route and a
    tcp split: the rollback moves the one split canary owns; it said "10% -> 0%" and nothing of the rest, which
    still sent v2 traffic."""
    vs = yaml.safe_load(VS.read_text())
    api = {"name": "api", "match": [{"uri": {"prefix": "/api/"}}],
           "route": [{"destination": {"host": "web-app", "subset": "v1"}, "weight": 90},
                     {"destination": {"host": "web-app", "subset": "v2"}, "weight": 10}]}  # fmt: skip
    vs["spec"]["http"].insert(1, api)
    vs["spec"]["http"][2] |= {"mirror": {"host": "web-app", "subset": "v2"}, "mirrorPercentage": {"value": 5.0}}
    vs["spec"]["tcp"] = [{"route": copy.deepcopy(api["route"])}]
    path = tmp_path / "web-app.yaml"
    path.write_text(DR.read_text() + "---\n" + yaml.safe_dump(vs, sort_keys=False))
    audit = tmp_path / "a.jsonl"
    args = ["rollback", POLICY, "--manifest", str(path), "--audit", str(audit)]
    done = runner.invoke(app, args)
    assert done.exit_code == 0, done.output
    assert "canary 10% -> 0%" in done.stdout
    assert done.stdout.splitlines()[-1] == (
        "the canary also gets traffic canary does not move: spec.http[0] (match) 100%, spec.http[1] ('api') "
        "(match) 10%, spec.http[2] mirrors 5%, spec.tcp[0] 10%"
    )
    again = json.loads(runner.invoke(app, [*args, "--output", "json"]).stdout)
    assert again["canary_elsewhere"] == ["spec.http[0] (match) 100%", "spec.http[1] ('api') (match) 10%",
                                         "spec.http[2] mirrors 5%", "spec.tcp[0] 10%"]  # fmt: skip
    moved = yaml.safe_load_all(path.read_text())
    assert [d for d in moved][1]["spec"]["http"][1]["route"][1]["weight"] == 10, "only canary's split moved"


def test_status_shows_the_weights_and_the_rollout_state(manifest: Path, tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    done = runner.invoke(app, ["promote", "--full", POLICY, "--manifest", str(manifest), "--audit", str(audit),
                               "--output", "json"])  # fmt: skip
    assert done.exit_code == 0, done.output
    made = json.loads(done.stdout)
    assert made["weights_after"] == {"baseline": 0, "canary": 100} and made["phase"] == "promoted"
    status = runner.invoke(app, ["status", POLICY, "--manifest", str(manifest), "--output", "json"])
    doc = json.loads(status.stdout)
    assert (doc["v1"], doc["v2"]) == (0, 100)
    assert doc["rollout"]["phase"] == "promoted" and doc["rollout"]["audit_head"] == made["audit_head"]
    text = runner.invoke(app, ["status", POLICY, "--manifest", str(manifest)]).stdout.splitlines()
    assert text[0] == "default/web-app: v1 0%, v2 100%"
    assert text[1].startswith(f"rollout {made['rollout']}: promoted")
    assert text[2].endswith(f"audit head {made['audit_head']}")


def test_verify_checks_the_log_against_the_head_the_route_holds(manifest: Path, tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    for verb in (["promote", "--full"], ["rollback"]):
        assert runner.invoke(app, [*verb, POLICY, "--manifest", str(manifest), "--audit", str(audit)]).exit_code == 0
    ok = runner.invoke(app, ["audit", "verify", str(audit), "--policy", POLICY, "--manifest", str(manifest)])
    assert ok.exit_code == 0 and "4 records, hash chain intact ending at the route's head" in ok.stdout
    lines = audit.read_text().splitlines(keepends=True)
    audit.write_text("".join(lines[:2]))  # the last change cut off
    cut = runner.invoke(app, ["audit", "verify", str(audit), "--policy", POLICY, "--manifest", str(manifest)])
    assert cut.exit_code == 1 and "does not lead to the head" in cut.stderr


def test_a_run_sees_a_persons_rollback_and_ends_rolled_back(manifest: Path, tmp_path: Path) -> None:
    from canary.app import simulated_rollout
    from canary.audit import AuditLog
    from canary.policy import load_policy
    from canary.scenario import builtin_scenario

    audit = tmp_path / "a.jsonl"
    policy = load_policy(POLICY)
    sim = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit),
                            router=ManifestRouter(manifest))  # fmt: skip
    sim.runner.open()
    assert runner.invoke(app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit)]).exit_code == 0
    sim.clock.sleep(60)
    ended = sim.runner.tick()
    assert getattr(ended, "phase", None) is Phase.ROLLED_BACK
    assert [r.action for r in decisions(audit)] == [Action.START, Action.ROLLBACK]
    assert decisions(audit)[1].rollout == decisions(audit)[0].rollout, "the person's change joins the rollout"


def test_manual_verbs_on_a_missing_manifest_fail_with_one_line_and_record_nothing(tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    result = runner.invoke(app, ["rollback", POLICY, "--manifest", str(tmp_path / "nope.yaml"), "--audit", str(audit)])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"canary: {tmp_path / 'nope.yaml'}: no such file"
    assert not audit.exists() or not list(read_records(audit))


def test_a_rollback_still_works_on_a_damaged_state_annotation(manifest: Path, tmp_path: Path) -> None:
    audit = tmp_path / "a.jsonl"
    manifest.write_text(manifest.read_text().replace("  name: web-app\nspec:\n  hosts:", f"  name: web-app\n"
                        f"  annotations:\n    {ANNOTATION}: '{{broken'\nspec:\n  hosts:"))  # fmt: skip
    assert "annotations" in manifest.read_text()
    result = runner.invoke(app, ["rollback", POLICY, "--manifest", str(manifest), "--audit", str(audit)])
    assert result.exit_code == 0, result.output
    assert weights(manifest) == Weights(100, 0)
    note = next(s.record for s in read_records(audit) if isinstance(s.record, NoteRecord))
    assert "not valid JSON" in note.reason and "rollback goes ahead" in note.reason


def test_run_with_a_manifest_leaves_the_promoted_weights_and_state_in_it(manifest: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.yaml"
    shutil.copy(manifest, copy)
    result = runner.invoke(
        app, ["run", POLICY, "--simulate", "healthy", "--manifest", str(copy), "--audit", str(tmp_path / "a.jsonl")]
    )
    assert result.exit_code == 0, result.output
    status = runner.invoke(app, ["status", POLICY, "--manifest", str(copy)]).stdout
    assert "v2 100%" in status and ": promoted" in status
    again = runner.invoke(app, ["run", POLICY, "--simulate", "healthy", "--manifest", str(copy), "--resume",
                                "--audit", str(tmp_path / "a.jsonl"), "--output", "json"])  # fmt: skip
    assert again.exit_code == 0 and json.loads(again.stdout)["outcome"] == "promoted"
    fresh = runner.invoke(app, ["run", POLICY, "--simulate", "healthy", "--manifest", str(copy),
                                "--audit", str(tmp_path / "a.jsonl")])  # fmt: skip
    assert fresh.exit_code == 2 and "already sends all traffic to v2" in fresh.stderr


@pytest.mark.parametrize("damage", ["cut short", "deleted"])
def test_a_log_that_lost_the_routes_history_never_verifies_again(manifest: Path, tmp_path: Path, damage: str) -> None:
    """A person's command goes ahead on a log cut short or deleted, with a note saying so. The next verify
    used to pass ("hash chain intact ending at the route's head"): the command had healed the log. It fails,
    naming the note's line, however many records follow."""
    audit = tmp_path / "a.jsonl"
    open_rollout(manifest, audit, ticks=3)
    assert len(audit.read_bytes().splitlines()) > 4
    if damage == "cut short":
        audit.write_bytes(b"".join(audit.read_bytes().splitlines(keepends=True)[:4]))
    else:
        audit.unlink()
    verify = ["audit", "verify", str(audit), "--policy", POLICY, "--manifest", str(manifest)]
    assert runner.invoke(app, verify).exit_code == (1 if damage == "cut short" else 2)
    for verb in ("pause", "continue"):
        done = runner.invoke(app, [verb, POLICY, "--manifest", str(manifest), "--audit", str(audit)])
        assert done.exit_code == 0, done.output
    checked = runner.invoke(app, verify)
    assert checked.exit_code == 1, checked.output
    notes = [s for s in read_records(audit) if isinstance(s.record, NoteRecord)]
    (gap,) = notes
    assert f":{gap.line}:" in checked.output or f"line {gap.line}" in checked.output, checked.output
    assert "history only from here on" in checked.output


def test_a_log_that_holds_another_routes_records_is_refused_before_anything_moves(
    manifest: Path, tmp_path: Path
) -> None:
    """Two policies with one `spec.audit`: the second route's changes came between the first's change and its
    outcome, the first's resume was refused as "older than the log", and verify failed for good. Each route
    needs a log of its own: a command on another route's log is refused in one line, nothing written."""
    audit = tmp_path / "shared.jsonl"
    open_rollout(manifest, audit, ticks=1)
    reviews = reviews_manifest(tmp_path)
    log, route = audit.read_bytes(), reviews.read_bytes()
    policy = str(ROOT / "policies" / "reviews.yaml")
    for args in (["rollback", policy], ["run", policy, "--simulate", "healthy"]):
        refused = runner.invoke(app, [*args, "--manifest", str(reviews), "--audit", str(audit)])
        assert refused.exit_code == 2, refused.output
        (line,) = refused.stderr.strip().splitlines()
        assert "holds the records of another route (default/web-app, from line 1)" in line, line
        assert audit.read_bytes() == log and reviews.read_bytes() == route
    own = runner.invoke(app, ["rollback", policy, "--manifest", str(reviews), "--audit", str(tmp_path / "r.jsonl")])
    assert own.exit_code == 0, own.output


@pytest.mark.parametrize("indent", [2, None])
def test_a_json_manifest_stays_json(tmp_path: Path, indent: int | None) -> None:
    """The in-place edit wrote YAML flow style into a JSON file (`annotations: {canary.dev/…: '…'}`), which
    kubectl and Argo CD, reading it as JSON, refuse. A file that is one JSON object is written as JSON."""
    import yaml

    path, audit = tmp_path / "vs.json", tmp_path / "a.jsonl"
    path.write_text(json.dumps(yaml.safe_load(VS.read_text()), indent=indent) + "\n")
    done = runner.invoke(app, ["rollback", POLICY, "--manifest", str(path), "--audit", str(audit)])
    assert done.exit_code == 0, done.output
    written = path.read_text()
    doc = json.loads(written)
    assert doc["metadata"]["name"] == "web-app" and ANNOTATION in doc["metadata"]["annotations"]
    assert weights(path) == Weights(100, 0) and written.endswith("}\n")
    assert ("\n  " in written) == (indent == 2)


def test_a_resumed_simulated_run_draws_new_traffic_for_its_own_minutes(manifest: Path, tmp_path: Path) -> None:
    """The resumed run's mesh began its draws again from the seed: its first ticks had, to the request, the
    counts of the rollout's first ticks, judged again as new evidence. The same pods, new traffic."""
    audit = tmp_path / "a.jsonl"
    open_rollout(manifest, audit, ticks=2)
    resumed = runner.invoke(app, ["run", POLICY, "--simulate", "healthy", "--seed", "1", "--manifest",
                                  str(manifest), "--audit", str(audit), "--resume"])  # fmt: skip
    assert resumed.exit_code == 0, resumed.output
    counts = [json.dumps(d.counts, sort_keys=True) for d in decisions(audit) if d.counts]
    assert len(counts) > 4 and len(set(counts)) == len(counts), "no window's counts repeated"


def test_two_routes_that_both_began_on_an_empty_log_cannot_both_append_to_it(manifest: Path, tmp_path: Path) -> None:
    """The check read the log once per command: a command that first saw it empty went on appending after
    another route's records came (two runs started together, 4 times in 4). It looks again at every lock."""
    from canary.errors import ConflictError

    audit = tmp_path / "shared.jsonl"
    reviews = reviews_manifest(tmp_path)
    later = simulated_rollout(load_policy(str(ROOT / "policies" / "reviews.yaml")), builtin_scenario("healthy"),
                              seed=1, audit=AuditLog(audit), router=ManifestRouter(reviews)).runner  # fmt: skip
    with later.audit.locked(5):
        pass  # its first look: the log is empty
    open_rollout(manifest, audit, ticks=0)
    log, route = audit.read_bytes(), reviews.read_bytes()
    with pytest.raises(ConflictError, match=r"holds the records of another route \(default/web-app, from line 1\)"):
        later.open()
    assert audit.read_bytes() == log and reviews.read_bytes() == route
