"""`canary report`: one rollout of a log as a self-contained page — its plots, decisions (a person's marked),
notes and verified head, every text escaped, nothing fetched — checked as text, through the CLI, and in
Debian's headless Chromium (no console error, no request beyond the file, plots that render and a screenshot
that is not blank)."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from browser import CHROMIUM, visit
from helpers import memory_router
from typer.testing import CliRunner

from canary.app import simulated_rollout
from canary.audit import AuditLog, read_records
from canary.cli import app
from canary.policy import load_policy
from canary.records import DecisionRecord, NoteRecord
from canary.report_page import check_bounds, per_version, render, rollout_view, staircase
from canary.scenario import builtin_scenario

ROOT = Path(__file__).resolve().parent.parent
POLICY = ROOT / "policies" / "web-app.yaml"
CANARY = str(Path(sys.executable).parent / "canary")
HOSTILE = '<script>alert(1)</script> & "quotes"'
LINKS = "  links: {jaeger: 'http://127.0.0.1:16686/', kiali: 'http://127.0.0.1:20001/kiali'}\n"


def linked_policy(path: Path) -> Path:
    path.write_text(POLICY.read_text().replace("  metrics:\n", f"{LINKS}  metrics:\n", 1))
    return path


@pytest.fixture
def log(tmp_path: Path) -> Path:
    """A healthy simulated rollout, a person's pause and continue with a hostile reason on the way."""
    policy, audit = load_policy(POLICY), tmp_path / "audit.jsonl"
    rollout = simulated_rollout(policy, builtin_scenario("healthy"), seed=1, audit=AuditLog(audit),
                                router=memory_router(policy.target))  # fmt: skip
    r = rollout.runner
    r.open()
    r.clock.wait(60, r.cancel_flag.event)
    r.tick()
    r.manual("pause", actor="user:alice", reason=HOSTILE)
    r.manual("continue", actor="user:alice", reason="window open")
    r.run(resume=True)
    return audit


def test_the_page_holds_the_staircase_every_check_and_decision_and_escapes_every_text(log: Path) -> None:
    view = rollout_view(read_records(log))
    assert view is not None
    assert [w for _, w in staircase(view)][::2] == [10.0, 50.0, 100.0], "the weights the route held, in order"
    page = render(view, head="abc", verified="16 records, hash chain intact")
    assert page.count("<svg") == 3 + 4  # weights, error rate, p95; error-rate and three latency quantiles
    assert "<script" not in page and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; &quot;quotes&quot;" in page
    assert page.count('<tr class="person">') == 2 and "user:alice" in page
    assert page.count("<tr>") == 1 + sum(1 for d in view.decisions if d.actor.startswith("canary-controller"))
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page
    assert "Head <code>abc</code>: 16 records, hash chain intact" in page
    est, low, high = check_bounds(view, "error-rate")
    assert est and low and high and all(lo <= e for (_, lo), (_, e) in zip(low, est, strict=True))


def test_report_through_the_cli_and_as_a_subprocess(log: Path, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    done = CliRunner().invoke(app, ["report", str(log), "-o", str(out), "--output", "json"])
    assert done.exit_code == 0, done.output
    doc = json.loads(done.stdout)
    assert doc == {"rollout": doc["rollout"], "out": str(out), "head": list(read_records(log))[-1].hash,
                   "verified": True}  # fmt: skip
    assert "hash chain intact" in out.read_text()
    linked = linked_policy(tmp_path / "links.yaml")
    text = subprocess.run([CANARY, "report", str(log), "-o", str(out), "--policy", str(linked)], capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert text.returncode == 0 and text.stdout.startswith(f"{out}: rollout {doc['rollout']} of web-app (promoted)")
    page = out.read_text()
    assert 'href="http://127.0.0.1:16686/search?service=web-app.default&amp;tags=' in page
    assert "istio.canonical_revision" in page and 'href="http://127.0.0.1:20001/kiali/console/graph/' in page
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused = subprocess.run([CANARY, "report", str(empty), "-o", str(out)], capture_output=True, text=True,
                             timeout=60, check=False)  # fmt: skip
    assert refused.returncode == 2 and refused.stderr == f"canary: {empty}: holds no rollout\n"


def test_a_report_replaces_a_page_and_nothing_else(log: Path, tmp_path: Path) -> None:
    """`-o policies/web-app.yaml` (the policy the log names, not an input of the command) was replaced by the
    page; a file that is not a page is refused, a page (the last report) replaced."""
    policy = tmp_path / "web-app.yaml"
    policy.write_text(Path(POLICY).read_text())
    refused = CliRunner().invoke(app, ["report", str(log), "-o", str(policy)])
    assert refused.exit_code == 2
    assert refused.stderr == (f"canary: {policy}: exists and is not an HTML page; canary replaces only a page with "
                              "a page: name another file with -o, or remove it first\n")  # fmt: skip
    assert policy.read_text() == Path(POLICY).read_text()
    page = tmp_path / "report.html"
    page.write_text("<!DOCTYPE html>\n<html>an older report</html>\n")
    assert CliRunner().invoke(app, ["report", str(log), "-o", str(page)]).exit_code == 0
    assert "hash chain intact" in page.read_text()


@pytest.mark.slow
def test_the_report_loads_in_headless_chromium_without_errors_and_its_plots_render(log: Path, tmp_path: Path) -> None:
    from PIL import Image

    assert CHROMIUM.exists(), "make test installs Debian's chromium (make chromium)"
    out = tmp_path / "report.html"
    assert CliRunner().invoke(app, ["report", str(log), "-o", str(out)]).exit_code == 0
    seen = visit(out)
    assert seen.errors == [] and [c for c in seen.console if c[0] in ("error", "warning")] == []
    assert seen.requests == [out.resolve().as_uri()], "nothing fetched but the page itself"
    assert len(seen.svg_boxes) == 7 and all(w >= 600 and h >= 200 for w, h in seen.svg_boxes)
    image = Image.open(io.BytesIO(seen.screenshot)).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20) or []
    non_white = sum(n for n, rgb in colours if rgb != (255, 255, 255)) / (image.width * image.height)
    assert image.height > 1500 and len(colours) > 50 and non_white > 0.03, (image.size, len(colours), non_white)
    reds = sum(n for n, (r, g, b) in colours if r > 180 and g < 90 and b < 90)
    assert reds > 500, "the canary's lines are drawn"


def test_status_links_to_jaeger_and_kiali_when_the_policy_names_them(tmp_path: Path) -> None:
    linked, manifest, audit = linked_policy(tmp_path / "links.yaml"), tmp_path / "vs.yaml", tmp_path / "audit.jsonl"
    manifest.write_bytes((ROOT / "fixtures" / "istio" / "web-app-virtualservice.yaml").read_bytes())
    where = ["--manifest", str(manifest), "--audit", str(audit)]
    assert CliRunner().invoke(app, ["rollback", str(linked), *where]).exit_code == 0
    shown = CliRunner().invoke(app, ["status", str(linked), *where])
    assert shown.exit_code == 0, shown.output
    lines = shown.stdout.splitlines()
    assert lines[-3].startswith("traces of v2 in Jaeger: http://127.0.0.1:16686/search?service=web-app.default&")
    assert lines[-2].startswith("the service graph in Kiali: http://127.0.0.1:20001/kiali/console/graph/namespaces/")
    assert lines[-1].startswith("the canary also gets traffic canary does not move: "), "the seed's header route"
    doc = json.loads(CliRunner().invoke(app, ["status", str(linked), *where, "--output", "json"]).stdout)
    assert sorted(doc["rollout"]["links"]) == ["the service graph in Kiali", "traces of v2 in Jaeger"]


def test_a_link_that_is_not_an_http_url_is_refused_naming_the_field() -> None:
    from canary.errors import PolicyError
    from canary.policy import parse_policy

    text = POLICY.read_text().replace("  metrics:\n", "  links: {kiali: 'javascript:alert(1)'}\n  metrics:\n", 1)
    with pytest.raises(PolicyError, match=r"spec\.links\.kiali: must be an http:// or https:// URL"):
        parse_policy(text, "p.yaml")


def test_roles_come_from_what_the_judge_saw_and_notes_go_with_their_rollout(tmp_path: Path) -> None:
    """A canary subset that sorts before the baseline's (v10 < v9) is still drawn as the canary; a note of no
    rollout (a pre-rollout webhook's) belongs to the rollout it came before; an edited verdict is skipped."""
    base = load_policy(POLICY)
    policy = dataclasses.replace(base, target=dataclasses.replace(base.target, baseline="v9", canary="v10"))
    audit = tmp_path / "audit.jsonl"
    log = AuditLog(audit)
    for scenario in ("healthy", "error-regression"):
        with log.locked(5):
            log.append(NoteRecord(0.0, f"before {scenario}", "canary-webhooks"))
        simulated_rollout(policy, builtin_scenario(scenario), seed=1, audit=log,
                          router=memory_router(policy.target)).runner.run()  # fmt: skip
    records = list(read_records(audit))
    first = rollout_view(records, next(s.record.rollout for s in records if isinstance(s.record, DecisionRecord)))
    last = rollout_view(records)
    assert first is not None and last is not None
    assert [n.reason for n in first.notes] == ["before healthy"] and [n.reason for n in last.notes] == [
        "before error-regression"]  # fmt: skip
    canary_rate = [y for _, y in per_version(last, "canary", "errors")]
    baseline_rate = [y for _, y in per_version(last, "baseline", "errors")]
    assert canary_rate and canary_rate[-1] > baseline_rate[-1], "the regressed version is the canary"
    edited = dataclasses.replace(last.decisions[-1], judgement={"verdicts": ["?", {"metric": "x", "figures": 3}]})
    last.decisions[-1] = edited
    assert "<svg" in render(last, head="h", verified="edited")
