"""`canary report`: one rollout of an audit log as a self-contained HTML page (pure: records in, text out).

The page holds the weight staircase over time, v1 against v2 error rate and latency per tick, each check's
confidence bound closing on its tolerance, every decision with its reason and actor (a person's in bold),
the notes, and the chain's head. Plots are inline SVG built as elements (xml.etree), every text escaped;
nothing is fetched when the page is viewed (no script, no external style, font or image).
"""

from __future__ import annotations

import html
import math
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from canary.auditing import CONTROLLER, excess
from canary.model import Histogram
from canary.records import DecisionRecord, NoteRecord, OutcomeRecord, Sealed
from canary.report import elapsed, iso
from canary.stats.buckets import interpolated_quantile

BASELINE_COLOUR, CANARY_COLOUR, BOUND_COLOUR = "#1f77b4", "#d62728", "#7f7f7f"
WIDTH, HEIGHT, PAD = 640, 240, 44


@dataclass
class RolloutView:
    """What the page shows of one rollout, gathered from its records in order."""

    rollout: str
    policy: str = ""
    target: str = ""
    decisions: list[DecisionRecord] = field(default_factory=list)
    outcomes: list[OutcomeRecord] = field(default_factory=list)
    notes: list[NoteRecord] = field(default_factory=list)

    @property
    def start(self) -> float:
        return self.decisions[0].time if self.decisions else 0.0


def rollout_view(sealed: Iterable[Sealed], rollout: str | None = None) -> RolloutView | None:
    """The records of `rollout` (the log's last rollout when None); None when the log has no such rollout."""
    items = list(sealed)
    if rollout is None:
        ids = [s.record.rollout for s in items if isinstance(s.record, DecisionRecord)]
        if not ids:
            return None
        rollout = ids[-1]
    view = RolloutView(rollout)
    before: list[NoteRecord] = []  # notes of no rollout (a pre-rollout webhook's) belong to the next decision's
    for item in items:
        record = item.record
        if isinstance(record, DecisionRecord):
            if record.rollout == rollout:
                view.decisions.append(record)
                view.notes += before
                view.policy = record.policy.name
                view.target = f"{record.target.namespace}/{record.target.virtual_service}"
            before = []
        elif isinstance(record, OutcomeRecord) and record.rollout == rollout:
            view.outcomes.append(record)
        elif isinstance(record, NoteRecord):
            if record.rollout == rollout:
                view.notes.append(record)
            elif record.rollout is None:
                before.append(record)
    return view if view.decisions else None


# ------------------------------------------------------------------------------------------------ series


Series = list[tuple[float, float]]  # (minutes since the start, value)


def staircase(view: RolloutView) -> Series:
    """The canary's weight as the route held it: each applied outcome, held until the next."""
    points: Series = []
    for outcome in view.outcomes:
        if outcome.result == "applied" and outcome.weights is not None:
            t = (outcome.time - view.start) / 60
            if points and points[-1][1] == outcome.weights.canary:
                continue  # a write that kept the weight (a pause, an approval)
            if points:
                points.append((t, points[-1][1]))
            points.append((t, float(outcome.weights.canary)))
    end = (view.decisions[-1].time - view.start) / 60
    if points and end > points[-1][0]:
        points.append((end, points[-1][1]))
    return points


def per_version(view: RolloutView, role: str, measure: str) -> Series:
    """Per judged tick, for `role` (baseline or canary, as the judge saw them): the first error-rate metric's
    rate (%), or the first latency metric's p95 (ms, interpolated in the buckets), summed over pods."""
    out: Series = []
    for d in view.decisions:
        metrics = (d.observation or {}).get("metrics")
        if not isinstance(metrics, dict):
            continue
        pods: list[dict[str, Any]] = [m[role] for m in metrics.values() if isinstance(m, dict)
                                      and isinstance(m.get(role), dict)]  # fmt: skip
        samples = [s for p in pods for s in p.values() if isinstance(s, dict)]
        value = _error_rate(samples) if measure == "errors" else _p95(samples)
        if value is not None:
            out.append(((d.time - view.start) / 60, value))
    return out


def _error_rate(samples: list[dict[str, Any]]) -> float | None:
    ratios = [s for s in samples if "trials" in s]
    try:
        trials, events = sum(float(s["trials"]) for s in ratios), sum(float(s["events"]) for s in ratios)
    except (TypeError, ValueError, KeyError):
        return None
    return 100 * events / trials if trials > 0 else None


def _p95(samples: list[dict[str, Any]]) -> float | None:
    try:
        hists = [Histogram(tuple(s["bounds"]), tuple(s["counts"])) for s in samples if "bounds" in s]
        first = [h for h in hists if h.bounds == hists[0].bounds] if hists else []
        total = first[0] if first else None
        for h in first[1:]:
            total = total + h if total is not None else h
    except (TypeError, ValueError, KeyError):
        return None
    if total is None or total.total <= 0:
        return None
    value = interpolated_quantile(total, 0.95)
    return value if math.isfinite(value) else None


def check_names(view: RolloutView) -> list[str]:
    names: dict[str, None] = {}
    for d in view.decisions:
        for verdict in d.verdicts:
            names.setdefault(str(verdict.get("metric")), None)
    return list(names)


def check_bounds(view: RolloutView, name: str) -> tuple[Series, Series, Series]:
    """A check's estimate, its fail sequence's lower bound and its step's pass bound, less the tolerance, per
    judged tick (points of %): above 0 is worse than tolerated; the check fails when the lower bound rises
    above 0, and its step may pass when the pass bound falls below 0."""
    est: Series = []
    low: Series = []
    high: Series = []
    for d in view.decisions:
        for verdict in d.verdicts:
            figures = verdict.get("figures")
            if verdict.get("metric") != name or not isinstance(figures, dict):
                continue
            try:
                found = excess(figures)
            except (TypeError, ValueError, IndexError):
                found = None  # a hand-edited record: its figures are left out, the page still drawn
            if found is None:
                continue
            t = (d.time - view.start) / 60
            est.append((t, 100 * found.estimate))
            if math.isfinite(found.lower):
                low.append((t, 100 * found.lower))
            if math.isfinite(found.pass_upper):
                high.append((t, 100 * found.pass_upper))
    return est, low, high


# ------------------------------------------------------------------------------------------------ plots


@dataclass(frozen=True)
class Line:
    label: str
    points: Series
    colour: str
    dashed: bool = False


def plot(
    title: str, unit: str, lines: Sequence[Line], *, zero_line: str | None = None,
    y_range: tuple[float, float] | None = None, x_range: tuple[float, float] | None = None,
) -> ET.Element:  # fmt: skip
    """A line chart as an <svg> element: its title, axes with a few ticks, one polyline per series, a legend."""
    svg = ET.Element("svg", {"xmlns": "http://www.w3.org/2000/svg", "viewBox": f"0 0 {WIDTH} {HEIGHT}",
                             "width": str(WIDTH), "height": str(HEIGHT), "role": "img"})  # fmt: skip
    ET.SubElement(svg, "title").text = title
    xs = [x for line in lines for x, _ in line.points] or [0.0, 1.0]
    ys = [y for line in lines for _, y in line.points] or [0.0, 1.0]
    if zero_line is not None:
        ys.append(0.0)
    x0, x1 = x_range or (min(xs), max(xs))
    if x1 <= x0:
        x1 = x0 + 1
    y0, y1 = y_range or (min(ys), max(ys))
    if y1 - y0 < 1e-9:
        y0, y1 = y0 - 1, y1 + 1
    if y_range is None:
        y0, y1 = y0 - 0.05 * (y1 - y0), y1 + 0.05 * (y1 - y0)

    def sx(x: float) -> float:
        return PAD + (x - x0) / (x1 - x0) * (WIDTH - 2 * PAD)

    def sy(y: float) -> float:
        return HEIGHT - PAD + (y - y0) / (y1 - y0) * (2 * PAD - HEIGHT)

    ET.SubElement(svg, "rect", {"width": str(WIDTH), "height": str(HEIGHT), "fill": "#fff"})
    axis = {"stroke": "#444", "stroke-width": "1"}
    ET.SubElement(svg, "line", {"x1": str(PAD), "y1": str(HEIGHT - PAD), "x2": str(WIDTH - PAD),
                                "y2": str(HEIGHT - PAD), **axis})  # fmt: skip
    ET.SubElement(svg, "line", {"x1": str(PAD), "y1": str(PAD), "x2": str(PAD), "y2": str(HEIGHT - PAD), **axis})
    for i in range(5):
        yv = y0 + (y1 - y0) * i / 4
        text = ET.SubElement(svg, "text", {"x": str(PAD - 4), "y": f"{sy(yv) + 4:.1f}", "text-anchor": "end",
                                           "font-size": "10"})  # fmt: skip
        text.text = f"{yv:.3g}"
        xv = x0 + (x1 - x0) * i / 4
        label = ET.SubElement(svg, "text", {"x": f"{sx(xv):.1f}", "y": str(HEIGHT - PAD + 14), "text-anchor": "middle",
                                            "font-size": "10"})  # fmt: skip
        label.text = f"{xv:.3g}"
    ET.SubElement(svg, "text", {"x": str(WIDTH / 2), "y": str(HEIGHT - 6), "text-anchor": "middle",
                                "font-size": "11"}).text = "minutes since the rollout started"  # fmt: skip
    ET.SubElement(svg, "text", {"x": "4", "y": "14", "font-size": "13", "font-weight": "bold"}).text = title
    ET.SubElement(svg, "text", {"x": "4", "y": "30", "font-size": "11"}).text = unit
    if zero_line is not None and y0 <= 0 <= y1:
        ET.SubElement(svg, "line", {"x1": str(PAD), "x2": str(WIDTH - PAD), "y1": f"{sy(0):.1f}",
                                    "y2": f"{sy(0):.1f}", "stroke": "#2ca02c", "stroke-dasharray": "6 3"})  # fmt: skip
        ET.SubElement(svg, "text", {"x": str(WIDTH - PAD), "y": f"{sy(0) - 4:.1f}", "text-anchor": "end",
                                    "font-size": "10", "fill": "#2ca02c"}).text = zero_line  # fmt: skip
    for i, line in enumerate(lines):
        if line.points:
            attrs = {"points": " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line.points), "fill": "none",
                     "stroke": line.colour, "stroke-width": "2"}  # fmt: skip
            if line.dashed:
                attrs["stroke-dasharray"] = "4 3"
            ET.SubElement(svg, "polyline", attrs)
            for x, y in line.points if len(line.points) < 60 else ():  # a marker per tick (one tick: no line)
                ET.SubElement(svg, "circle", {"cx": f"{sx(x):.1f}", "cy": f"{sy(y):.1f}", "r": "2.5",
                                              "fill": line.colour})  # fmt: skip
        legend = ET.SubElement(svg, "text", {"x": str(WIDTH - PAD - 130 * (len(lines) - i)), "y": "30",
                                             "font-size": "11", "fill": line.colour})  # fmt: skip
        legend.text = f"— {line.label}"
    return svg


# ------------------------------------------------------------------------------------------------ page


STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 70em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; font-size: 0.85em; }
td, th { border-bottom: 1px solid #ddd; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
tr.person td { font-weight: bold; background: #fff6e0; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
code { font-size: 0.85em; word-break: break-all; }
"""


def render(view: RolloutView, *, head: str, verified: str, links: Sequence[tuple[str, str]] = ()) -> str:
    """The page: `head` is the log's last hash, `verified` what checking the chain said, in words, `links`
    (label, URL) pairs to Jaeger and Kiali."""
    last = view.decisions[-1]
    target = html.escape(view.target)
    span = (0.0, max((last.time - view.start) / 60, 1.0))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>canary report: {html.escape(view.policy)} rollout {html.escape(view.rollout)}</title>",
        f"<style>{STYLE}</style></head><body>",
        f"<h1>canary: {html.escape(view.policy)} on {target}, rollout {html.escape(view.rollout)}</h1>",
        "<p>",
        f"Outcome <b>{html.escape(last.phase.value)}</b> after "
        f"{elapsed(last.time - view.start)}; started {html.escape(iso(view.start))}, last decision "
        f"{html.escape(iso(last.time))}: {html.escape(last.reason)}",
        "</p>",
        _links(links),
        "<h2>Weights</h2>",
        _svg(plot("the canary's weight", "canary %", [Line("canary weight", staircase(view), CANARY_COLOUR)],
                  y_range=(0, 100), x_range=span)),
        "<h2>Baseline against canary, per tick</h2><div class=plots>",
        _svg(plot("error rate per tick", "errors %", [
            Line("baseline", per_version(view, "baseline", "errors"), BASELINE_COLOUR),
            Line("canary", per_version(view, "canary", "errors"), CANARY_COLOUR),
        ], x_range=span)),
        _svg(plot("latency p95 per tick (interpolated in the buckets)", "p95 ms", [
            Line("baseline", per_version(view, "baseline", "p95"), BASELINE_COLOUR),
            Line("canary", per_version(view, "canary", "p95"), CANARY_COLOUR),
        ], x_range=span)),
        "</div>",
        "<h2>Each check: the canary's excess over its tolerance, and the bounds closing on it</h2>",
        "<p>Above the tolerance line the canary is worse than allowed. The check fails, and the canary is rolled "
        "back, once the fail sequence's lower bound (confidence 1 − its share of α, valid at every look) rises "
        "above it; the step may pass once the pass bound (at the pass level) falls below it.</p>",
        "<div class=plots>",
    ]  # fmt: skip
    for name in check_names(view):
        est, low, high = check_bounds(view, name)
        parts.append(_svg(plot(name, "excess, points of %", [
            Line("estimate", est, CANARY_COLOUR), Line("fail lower bound", low, BOUND_COLOUR, True),
            Line("pass bound", high, BASELINE_COLOUR, True),
        ], zero_line="tolerance", x_range=span)))  # fmt: skip
    parts += ["</div>", "<h2>Decisions</h2>", _decisions(view)]
    if view.notes:
        parts += ["<h2>Notes</h2><ul>"]
        parts += [f"<li>{html.escape(iso(n.time))} {html.escape(n.actor)}: {html.escape(n.reason)}</li>"
                  for n in view.notes]  # fmt: skip
        parts.append("</ul>")
    parts += [
        "<h2>Audit chain</h2>",
        f"<p>Head <code>{html.escape(head)}</code>: {html.escape(verified)}</p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _svg(element: ET.Element) -> str:
    return ET.tostring(element, encoding="unicode", short_empty_elements=True)


def _links(links: Sequence[tuple[str, str]]) -> str:
    items = [f'<a href="{html.escape(url)}">{html.escape(label)}</a>' for label, url in links]
    return f"<p>{' · '.join(items)}</p>" if items else ""


def _decisions(view: RolloutView) -> str:
    rows = ["<table><tr><th>time</th><th>tick</th><th>action</th><th>canary</th><th>by</th><th>why</th></tr>"]
    for d in view.decisions:
        before = f"{d.weights_before.canary}%" if d.weights_before else "?"
        after = f"{d.weights_after.canary}%" if d.weights_after else "?"
        moved = before if before == after else f"{before} → {after}"
        person = ' class="person"' if not d.actor.startswith(CONTROLLER) else ""
        cells = (iso(d.time), "" if d.tick is None else str(d.tick), d.action.value, moved, d.actor, d.reason)
        rows.append(f"<tr{person}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)
