"""Progress for people: a live table on a terminal, plain lines when stdout is a pipe or a file."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TextIO

from rich.console import Console
from rich.live import Live
from rich.table import Table

from canary.controller import RolloutResult, TickReport
from canary.model import Outcome, Phase
from canary.report import elapsed

_MARK = {Outcome.PASS: "pass", Outcome.FAIL: "FAIL", Outcome.CONTINUE: "…", Outcome.NO_DATA: "no data"}
_PHASE_WORDS = {
    Phase.PROMOTED: "PROMOTED",
    Phase.ROLLED_BACK: "ROLLED BACK",
    Phase.INCONCLUSIVE: "INCONCLUSIVE at the deadline",
    Phase.ABORTED: "ABORTED",
    Phase.PROGRESSING: "STOPPED with the rollout open",
    Phase.PAUSED: "STOPPED with the rollout paused",
    Phase.WAITING: "STOPPED with the rollout waiting at a gate",
    Phase.CANCELLED: "CANCELLED",
}


def tick_line(report: TickReport) -> str:
    d = report.decision
    before, after = report.weights_before.canary, d.weights.canary
    parts = [f"[tick {report.tick:>3}] canary {before:>3}% -> {after:>3}%  {d.action.value:<8}"]
    if report.judgement is not None:
        parts.append("  ".join(f"{v.metric}: {_MARK[v.outcome]}" for v in report.judgement.verdicts))
    else:
        parts.append(d.reason)
    return "  ".join(parts)


class Progress:
    """Call `update` on every tick and `finish` once; renders to a TTY live or as lines."""

    def __init__(self, title: str, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        self.title = title
        self.live_mode = self.stream.isatty() if live is None else live
        self._live: Live | None = None
        self._last: TickReport | None = None
        if self.live_mode:
            self._live = Live(self._table(), console=Console(file=self.stream), refresh_per_second=8, transient=True)
            self._live.start()
        else:
            print(title, file=self.stream, flush=True)

    def _table(self) -> Table:
        table = Table(title=self.title, expand=False)
        table.add_column("tick")
        table.add_column("canary weight")
        table.add_column("check")
        table.add_column("verdict")
        r = self._last
        if r is not None and r.judgement is not None:
            for i, v in enumerate(r.judgement.verdicts):
                table.add_row(str(r.tick) if i == 0 else "", f"{r.decision.weights.canary}%" if i == 0 else "",
                              v.metric, _MARK[v.outcome])  # fmt: skip
        return table

    def update(self, report: TickReport) -> None:
        self._last = report
        if self._live is not None:
            self._live.update(self._table())
        else:
            print(tick_line(report), file=self.stream, flush=True)

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def finish(self, result: RolloutResult, recorded: Sequence[str] = ()) -> None:
        self.stop()
        print(summary(result, recorded), file=self.stream, flush=True)


def elsewhere_line(elsewhere: Sequence[str]) -> str:
    """What else sends the canary traffic, which no step or rollback of canary's moves."""
    return f"the canary also gets traffic canary does not move: {', '.join(elsewhere)}"


def summary(result: RolloutResult, recorded: Sequence[str] = ()) -> str:
    """The outcome in a few lines; `recorded`: the verdicts the log holds for a rollout that had ended before."""
    took = elapsed(result.duration_s)
    lines = [f"{_PHASE_WORDS[result.phase]} after {took} ({result.ticks} ticks): {result.decision.reason}"]
    if result.earlier:
        lines.append(
            f"  rollout {result.rollout} had ended before this command: nothing was run (a new release starts its own "
            "rollout with --release, or without --resume)"
        )
    if result.judgement is not None:
        lines += [f"  - {v.summary}" for v in result.judgement.verdicts]
    lines += [f"  - {line}" for line in recorded]
    if result.elsewhere:
        lines.append(f"  {elsewhere_line(result.elsewhere)}")
    lines.append(f"  audit log: {result.audit_path} (rollout {result.rollout}, head {result.audit_head})")
    return "\n".join(lines)
