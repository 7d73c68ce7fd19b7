"""Detection benchmark: whole rollouts in simulated time, through the engine's real decision path.

policy -> simulated mesh -> judge -> transition -> runner -> in-memory router, for each scenario
and each judge, with known ground truth. Reports how often each judge promoted, rolled back on
evidence, or reached the deadline without a decision, and how long it took.

    python bench/detection.py --scenarios bench/scenarios/default.json --judge all \
        --replications 200 --seed 1 --json bench/results.json

The `oracle` judge is a sequential probability ratio test told the scenario's true parameters, tested
against the nearest point on the other side of the tolerance: the limit to measure canary's decision
times against.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import beta as beta_dist

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from canary.app import SIM_START, simulated_rollout
from canary.audit import MemoryAudit
from canary.judges.sequential import check_labels, combine
from canary.model import Histogram, Judgement, Observation, Outcome, Phase, Ratio, Verdict
from canary.policy import LatencyMetric, MetricSpec, Policy, load_policy
from canary.scenario import Behaviour, Scenario, load_scenarios
from canary.sources.simulated import bucket_probabilities

JUDGES = ("canary", "flagger", "kayenta", "savvi", "savvi-boundary", "oracle")
ENGINE_JUDGE = {"canary": "sequential", "flagger": "flagger", "kayenta": "kayenta"}
DEFAULT_POLICY = "policies/web-app.yaml"


# ------------------------------------------------------------------------------------------ oracle


def _tolerated(behaviour: Behaviour, policy: Policy) -> Behaviour:
    """The baseline moved to the edge of every tolerance: the least favourable healthy canary."""
    from dataclasses import replace

    from canary.scenario import Lognormal

    err = next((m.max_increase for m in policy.metrics if not isinstance(m, LatencyMetric)), 0.0)
    lat = min(
        (t.max_increase for m in policy.metrics if isinstance(m, LatencyMetric) for t in m.quantiles),
        default=0.0,
    )
    return replace(
        behaviour,
        error_rate=min(behaviour.error_rate + err, 1.0),
        latency=Lognormal(behaviour.latency.median_ms * (1 + lat), behaviour.latency.sigma),
    )


def _nearest_tolerated(truth: Behaviour, baseline: Behaviour, policy: Policy) -> Behaviour:
    """A regressing canary moved back onto the tolerance: error rate down to baseline + margin if above it,
    latency (and tail) back to the baseline scaled by 1 + the tightest quantile tolerance if slower."""
    from dataclasses import replace

    edge = _tolerated(baseline, policy)
    error_rate = min(truth.error_rate, edge.error_rate)
    slower = (
        truth.tail is not None
        or truth.latency.sigma > baseline.latency.sigma
        or truth.latency.median_ms > (edge.latency.median_ms)
    )
    return replace(truth, error_rate=error_rate, latency=edge.latency if slower else truth.latency,
                   tail=None if slower else truth.tail)  # fmt: skip


@dataclass(frozen=True)
class OracleState:
    llr: float = 0.0
    step: int = -1


class OracleJudge:
    """Wald's SPRT between the canary's true behaviour and the nearest hypothesis on the other side of
    the tolerance, on the canary's error and latency-bucket counts. It knows what no real judge knows."""

    name = "oracle"
    state_type = OracleState

    def __init__(self, policy: Policy, scenario: Scenario, alpha: float = 0.05, beta: float = 0.05) -> None:
        self.policy = policy
        truth = scenario.canary
        healthy = scenario.expect == "promote"
        # A healthy canary is told from "canary at the tolerance"; a regression from the nearest canary the
        # null allows (its own behaviour, moved back to the tolerance where it is beyond it): the honest
        # limit for any test that keeps α at the tolerance.
        base = scenario.baseline
        other = _tolerated(base, policy) if healthy else _nearest_tolerated(truth, base, policy)
        self.healthy = healthy
        self.p_true, self.p_other = truth.error_rate, other.error_rate
        self.truth, self.other, self.diurnal = truth, other, scenario.diurnal
        self.upper = math.log((1 - beta) / alpha)
        self.labels = [label for m in policy.metrics for label in check_labels(m)]

    def start(self) -> OracleState:
        return OracleState()

    def refuses(self, metric: MetricSpec) -> str | None:
        return None

    def judge(self, state: OracleState, observation: Observation, step: int) -> tuple[OracleState, Judgement]:
        llr = 0.0 if step != state.step and self.healthy else state.llr  # a step is passed afresh
        for window in observation.metrics.values():
            for sample in window.canary.values():
                if isinstance(sample, Ratio) and sample.trials:
                    e, n = sample.events, sample.trials
                    llr += _binomial_llr(e, n, self.p_true, self.p_other)
                elif isinstance(sample, Histogram) and sample.total:
                    counts = np.asarray(sample.counts, dtype=float)
                    b_true, b_other = self._buckets(observation)
                    llr += float((counts * (np.log(b_true) - np.log(b_other))).sum())
        decided = llr >= self.upper
        outcome = Outcome.CONTINUE
        if decided:
            outcome = Outcome.PASS if self.healthy else Outcome.FAIL
        verdicts = [Verdict(label, outcome, f"oracle log-likelihood ratio {llr:.2f}") for label in self.labels]
        return OracleState(llr, step), combine(verdicts)

    def _buckets(self, observation: Observation) -> tuple[np.ndarray, np.ndarray]:
        """Bucket probabilities of both hypotheses, with the service-wide load factor the mesh applied."""
        load = 1.0
        if self.diurnal is not None:
            elapsed = (observation.start + observation.end) / 2 - SIM_START
            load += self.diurnal.amplitude * math.sin(2 * math.pi * elapsed / self.diurnal.period_s)
        scale = np.full(1, load)
        return (
            np.clip(bucket_probabilities(self.truth, scale)[0], 1e-12, 1),
            np.clip(bucket_probabilities(self.other, scale)[0], 1e-12, 1),
        )


def _binomial_llr(e: int, n: int, p1: float, p0: float) -> float:
    p1, p0 = min(max(p1, 1e-9), 1 - 1e-9), min(max(p0, 1e-9), 1 - 1e-9)
    return e * math.log(p1 / p0) + (n - e) * math.log((1 - p1) / (1 - p0))


# ------------------------------------------------------------------------------------------ savvi


@dataclass(frozen=True)
class SavviState:
    step: int = -1
    intervals: int = 0  # in this step
    log_odds: float = 0.0  # the Bayes factor against the null, this step
    baseline_counts: tuple[int, int] = (0, 0)  # errors this step (baseline, canary), the test's data


class SavviJudge:
    """Lindon, Sanden & Shirikian's canary test (KDD 2022) as the `savvi` package implements it: the error
    counts of the two versions as an inhomogeneous Poisson process split by the traffic weights, with a
    Dirichlet–multinomial Bayes factor as the e-process. Its own null is "the canary's error rate equals the
    baseline's"; `boundary=True` moves the null to the tolerance (baseline + margin), told the baseline's true
    rate, which no real judge knows. A step is tested afresh at α / (number of steps) and passed after
    HOLD intervals without a rollback, as a fixed-duration canary is; latency is not judged (the package's
    canary test is for counts)."""

    name = "savvi"
    state_type = SavviState
    HOLD = 10

    def __init__(self, policy: Policy, scenario: Scenario, *, boundary: bool) -> None:
        from savvi.multinomial import InhomogeneousPoissonProcess

        self.policy, self.scenario, self.boundary = policy, scenario, boundary
        self.process = InhomogeneousPoissonProcess
        self.alpha = policy.analysis.alpha / len(policy.steps)
        self.margin = next((m.max_increase for m in policy.metrics if not isinstance(m, LatencyMetric)), 0.0)
        self.labels = [label for m in policy.metrics for label in check_labels(m)]

    def start(self) -> SavviState:
        return SavviState()

    def refuses(self, metric: MetricSpec) -> str | None:
        return None

    def _null_split(self, weight: float) -> np.ndarray:
        if not self.boundary:
            return np.array([1 - weight, weight])
        p = self.scenario.baseline.error_rate
        split = np.array([(1 - weight) * p, weight * min(p + self.margin, 1.0)])
        return split / split.sum()

    def judge(self, state: SavviState, observation: Observation, step: int) -> tuple[SavviState, Judgement]:
        if step != state.step:
            state = SavviState(step=step)
        weight = self.policy.steps[step] / 100
        errors = [0, 0]
        for name, window in observation.metrics.items():
            if name in {m.name for m in self.policy.metrics if not isinstance(m, LatencyMetric)}:
                for i, samples in enumerate((window.baseline, window.canary)):
                    errors[i] += sum(s.events for s in samples.values() if isinstance(s, Ratio))
        counts = (state.baseline_counts[0] + errors[0], state.baseline_counts[1] + errors[1])
        # The Bayes factor of all this step's counts at once equals the product of its per-interval updates.
        null = self._null_split(weight)
        test = self.process(self.alpha, null, np.array([[-1, 1]]))
        test.update(np.array(counts, dtype=np.int64))
        log_odds = float(np.log(max(test.odds, 1e-300)))
        new = SavviState(step, state.intervals + 1, log_odds, counts)
        worse = counts[1] > null[1] * sum(counts)  # the test is two-sided; only "the canary worse" rolls back
        outcome = Outcome.CONTINUE
        if log_odds >= math.log(1 / self.alpha) and worse:
            outcome = Outcome.FAIL
        elif new.intervals >= self.HOLD:
            outcome = Outcome.PASS
        verdicts = [Verdict(label, outcome, f"savvi log Bayes factor {log_odds:.2f}") for label in self.labels]
        return new, combine(verdicts)


# ------------------------------------------------------------------------------------------ runs


@dataclass(frozen=True)
class Run:
    outcome: str  # promote | rollback | inconclusive
    seconds: float
    step_seconds: tuple[float, ...]


def run_one(scenario: Scenario, policy: Policy, judge: str, seed: int) -> Run:
    if judge == "oracle":
        rollout = simulated_rollout(policy, scenario, seed=seed, audit=MemoryAudit())
        rollout.runner.judge = OracleJudge(rollout.runner.policy, scenario)
    elif judge.startswith("savvi"):
        rollout = simulated_rollout(policy, scenario, seed=seed, audit=MemoryAudit())
        rollout.runner.judge = SavviJudge(rollout.runner.policy, scenario, boundary=judge == "savvi-boundary")
    else:
        rollout = simulated_rollout(policy, scenario, seed=seed, audit=MemoryAudit(), judge=ENGINE_JUDGE[judge])
    result = rollout.runner.run()
    outcome = {Phase.PROMOTED: "promote", Phase.ROLLED_BACK: "rollback"}.get(result.phase, "inconclusive")
    return Run(outcome, result.duration_s, result.step_seconds)


def _task(args: tuple[dict[str, Any], str, str, int, int]) -> tuple[str, str, list[Run]]:
    raw, policy_path, judge, seed, reps = args
    from canary.scenario import parse_scenario

    scenario = parse_scenario(raw)
    policy = load_policy(policy_path)
    return scenario.name, judge, [run_one(scenario, policy, judge, seed + r) for r in range(reps)]


def _quantile(values: Sequence[float], q: float) -> float | None:
    return float(np.quantile(values, q)) if values else None


def _median_counting_never(times: Sequence[float], n: int) -> float | None:
    """The median of n outcomes of which `times` happened and the rest never did."""
    ordered = sorted(times) + [math.inf] * (n - len(times))
    if not ordered or not math.isfinite(ordered[n // 2]):  # n // 2: the upper middle of an even count
        return None
    return float(statistics.median(ordered))


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo = 0.0 if k == 0 else float(beta_dist.ppf(a, k, n - k + 1))
    hi = 1.0 if k == n else float(beta_dist.ppf(1 - a, k + 1, n - k))
    return lo, hi


def summarise(scenario: Scenario, judge: str, runs: list[Run]) -> dict[str, Any]:
    n = len(runs)
    by = {o: [r for r in runs if r.outcome == o] for o in ("promote", "rollback", "inconclusive")}
    rb = [r.seconds for r in by["rollback"]]
    pr = [r.seconds for r in by["promote"]]
    steps = max((len(r.step_seconds) for r in by["promote"]), default=0)
    step_means = [
        statistics.fmean(r.step_seconds[i] for r in by["promote"] if len(r.step_seconds) > i) for i in range(steps)
    ]
    decided = [r.seconds for r in runs if r.outcome != "inconclusive"]
    return {
        "scenario": scenario.name,
        "judge": judge,
        "expect": scenario.expect,
        "rps": scenario.rps,
        "replications": n,
        "promote_rate": len(by["promote"]) / n,
        "rollback_rate": len(by["rollback"]) / n,
        "inconclusive_rate": len(by["inconclusive"]) / n,
        "median_rollback_s": _quantile(rb, 0.5),
        "p90_rollback_s": _quantile(rb, 0.9),
        "median_promote_s": _quantile(pr, 0.5),
        # Over every rollout, one not promoted counting as never: the median a team waits for a healthy
        # canary (None when half or more are not promoted).
        "median_promote_all_s": _median_counting_never(pr, n),
        "median_decision_s": _quantile(decided, 0.5),
        "mean_step_s_when_promoted": step_means,
        "rollbacks": len(by["rollback"]),
        "rollback_rate_ci95": list(clopper_pearson(len(by["rollback"]), n)),
    }


def _fmt_s(s: float | None) -> str:
    return "-" if s is None else f"{s / 60:.1f}m"


def table(results: list[dict[str, Any]]) -> str:
    head = f"{'scenario':<28} {'judge':<8} {'n':>5} {'promote':>8} {'rollback':>8} {'inconcl':>8} " + (
        f"{'med rb':>7} {'p90 rb':>7} {'med pr':>7} {'med all':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r['scenario']:<28} {r['judge']:<8} {r['replications']:>5} {r['promote_rate']:>8.3f} "
            f"{r['rollback_rate']:>8.3f} {r['inconclusive_rate']:>8.3f} {_fmt_s(r['median_rollback_s']):>7} "
            f"{_fmt_s(r['p90_rollback_s']):>7} {_fmt_s(r['median_promote_s']):>7} "
            f"{_fmt_s(r.get('median_promote_all_s')):>7}"
        )
    return "\n".join(lines)


def markdown(results: list[dict[str, Any]]) -> str:
    """The results as a Markdown table, with the time spent at each step for promoted rollouts."""
    lines = [
        "| scenario | expect | judge | promote | rollback | inconclusive | median rollback | p90 rollback "
        "| median promote | median promote, all rollouts | mean min per step (promoted) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in results:
        steps = " / ".join(f"{s / 60:.1f}" for s in r["mean_step_s_when_promoted"]) or "-"
        lines.append(
            f"| {r['scenario']} | {r['expect']} | {r['judge']} | {r['promote_rate']:.3f} | {r['rollback_rate']:.3f} "
            f"| {r['inconclusive_rate']:.3f} | {_fmt_s(r['median_rollback_s'])} | {_fmt_s(r['p90_rollback_s'])} "
            f"| {_fmt_s(r['median_promote_s'])} | {_fmt_s(r.get('median_promote_all_s'))} | {steps} |"
        )
    return "\n".join(lines)


def headline(results: list[dict[str, Any]], alpha: float) -> dict[str, Any]:
    """Pooled false-rollback rates over healthy scenarios and canary's times relative to the oracle."""
    out: dict[str, Any] = {}
    for judge in {r["judge"] for r in results}:
        healthy = [r for r in results if r["judge"] == judge and r["expect"] == "promote"]
        n = sum(r["replications"] for r in healthy)
        k = sum(r["rollbacks"] for r in healthy)
        if n:
            out[f"{judge}_false_rollback"] = {"rollbacks": k, "rollouts": n, "rate": k / n,
                                              "ci95": list(clopper_pearson(k, n)), "alpha": alpha}  # fmt: skip
    ratios = {}
    for r in results:
        if r["judge"] != "canary":
            continue
        oracle = next((o for o in results if o["judge"] == "oracle" and o["scenario"] == r["scenario"]), None)
        if oracle and oracle["median_decision_s"] and r["median_decision_s"]:
            ratios[r["scenario"]] = r["median_decision_s"] / oracle["median_decision_s"]
    if ratios:
        out["canary_to_oracle_median_decision_time"] = ratios
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", required=True, help='scenario file ({"scenarios": [...]})')
    parser.add_argument("--judge", default="all", choices=(*JUDGES, "all"))
    parser.add_argument("--replications", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", dest="json_out", help="write the results here")
    parser.add_argument("--only", action="append", help="run only these scenario names (repeatable)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--from-json", help="print the tables of an earlier --json file instead of running")
    args = parser.parse_args(argv)
    if args.from_json:
        doc = json.loads(Path(args.from_json).read_text())
        print(markdown(doc["results"]))
        print(json.dumps(doc["summary"], indent=2))
        return 0

    raw = json.loads(Path(args.scenarios).read_text())["scenarios"]
    scenarios = load_scenarios(args.scenarios)  # validates every scenario before any work
    pairs = [(d, s) for d, s in zip(raw, scenarios, strict=True) if not args.only or s.name in args.only]
    judges = JUDGES if args.judge == "all" else (args.judge,)
    chunk = max(1, min(50, args.replications))
    tasks = []
    for d, s in pairs:
        for judge in judges:
            for start in range(0, args.replications, chunk):
                reps = min(chunk, args.replications - start)
                tasks.append((d, s.policy or DEFAULT_POLICY, judge, args.seed + start, reps))
    began = time.time()
    collected: dict[tuple[str, str], list[Run]] = {}
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for name, judge, runs in pool.map(_task, tasks):
            collected.setdefault((name, judge), []).extend(runs)
    elapsed = time.time() - began
    results = [summarise(s, j, collected[(s.name, j)]) for _, s in pairs for j in judges]
    alpha = load_policy(DEFAULT_POLICY).analysis.alpha
    summary = headline(results, alpha)
    print(table(results))
    print(json.dumps(summary, indent=2))
    rollouts = sum(r["replications"] for r in results)
    print(f"{rollouts} rollouts in {elapsed:.0f} s on {args.workers} workers ({platform.machine()})")
    if args.json_out:
        doc = {
            "command": " ".join(["python", "bench/detection.py", *(argv if argv is not None else sys.argv[1:])]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "elapsed_s": elapsed,
            "results": results,
            "summary": summary,
        }
        Path(args.json_out).write_text(json.dumps(doc, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
