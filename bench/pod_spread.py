"""The error-rate check exactly at its tolerance, pods whose levels differ: false rollbacks across spreads.

Each rollout draws every pod's level once, exp(N(−s²/2, s)) (mean 1), for the baseline's and the
canary's pods; each pod's error rate is its version's times its level, the baseline's version at
`base_rate` and the canary's exactly at the tolerance (base_rate + 0.5 pp). Traffic is Poisson at `rps`,
90/10 between the versions and even over a version's pods; the real `SequentialJudge` (one error-rate
check at α = 0.05) sees one interval after another and the run ends at its first failure or pass (with
`--through`, at its first failure: the fail sequence runs over the whole rollout). The
grid sweeps the spread for a few pod counts, so the spread where the pod term covers least shows up:

    python bench/pod_spread.py --runs 1000
    python bench/pod_spread.py --runs 400 --pods 3:1 --spread 0.2
    python bench/pod_spread.py --runs 1000 --pods 3:1 --spread 0 --rps 5 --intervals 60 --through
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from detection import clopper_pearson

from canary.judges.sequential import SequentialJudge
from canary.model import MetricWindow, Observation, Outcome, Ratio
from canary.policy import parse_policy

MARGIN = 0.005
POLICY = f"""
apiVersion: canary.dev/v1alpha1
kind: CanaryPolicy
metadata: {{name: pods}}
spec:
  target: {{namespace: default, virtualService: web, host: web.default.svc.cluster.local}}
  minRequests: 0
  analysis: {{alpha: 0.05}}
  metrics:
    - {{name: errors, kind: error-rate, maxIncrease: {MARGIN}}}
"""


@dataclass(frozen=True)
class PodCase:
    baseline_pods: int
    canary_pods: int
    spread: float  # sd of a pod's log level
    rps: float = 100.0
    base_rate: float = 0.01
    intervals: int = 30
    through: bool = False  # keep looking after a pass, as the fail sequence does over the whole rollout


def rollouts(case: PodCase, runs: int, seed: int) -> tuple[int, int, int]:
    """False rollbacks, passes, and the false rollbacks whose failing look had a pod term of 0, in `runs`
    rollouts of a canary exactly at the tolerance."""
    rng = np.random.default_rng(seed)
    judge = SequentialJudge(parse_policy(POLICY, "pods.yaml"))
    spread = case.spread
    fails = passes = unguarded = 0
    for _ in range(runs):
        levels = [np.exp(rng.normal(-spread * spread / 2, spread, k)) for k in (case.baseline_pods, case.canary_pods)]
        rates = (case.base_rate * levels[0], (case.base_rate + MARGIN) * levels[1])
        state, passed = judge.start(), False
        for _ in range(case.intervals):
            windows = []
            for version, share in enumerate((0.9, 0.1)):
                pods = len(rates[version])
                per_pod = rng.multinomial(rng.poisson(case.rps * 60 * share), np.full(pods, 1 / pods))
                errors = rng.binomial(per_pod, np.clip(rates[version], 0, 1))
                pairs = enumerate(zip(errors, per_pod, strict=True))
                windows.append({f"v{version}-{i}": Ratio(int(e), int(n)) for i, (e, n) in pairs})
            observation = Observation(0.0, 60.0, {"errors": MetricWindow(windows[0], windows[1])})
            state, judgement = judge.judge(state, observation, 0)
            if judgement.outcome is Outcome.FAIL:
                fails += 1
                unguarded += judgement.verdicts[0].figures.get("pod_sd") == 0.0
                break
            if judgement.outcome is Outcome.PASS and not passed:
                passes += 1
                passed = True
                if not case.through:
                    break
    return fails, passes, unguarded


def _run(job: tuple[PodCase, int, int]) -> tuple[PodCase, int, int, int, int]:
    case, runs, seed = job
    return case, runs, *rollouts(case, runs, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pods", action="append", default=[], help="BASELINE:CANARY (repeatable)")
    parser.add_argument("--spread", action="append", type=float, default=[])
    parser.add_argument("--rps", type=float, default=100.0)
    parser.add_argument("--base-rate", type=float, default=0.01, help="the baseline's error rate")
    parser.add_argument("--intervals", type=int, default=30, help="one-minute looks per rollout")
    parser.add_argument("--through", action="store_true", help="keep looking after a pass (the fail sequence's "
                        "whole rollout) instead of ending there")  # fmt: skip
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    pods = [tuple(int(k) for k in p.split(":")) for p in args.pods] or [(3, 1), (3, 2), (5, 1), (10, 2), (18, 2)]
    spreads = args.spread or [0.0, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5]
    more = {"rps": args.rps, "base_rate": args.base_rate, "intervals": args.intervals, "through": args.through}
    jobs = [(PodCase(b, c, s, **more), args.runs, args.seed + i) for i, (b, c, s) in enumerate(
        (b, c, s) for b, c in pods for s in spreads
    )]  # fmt: skip
    started = time.time()
    print("| baseline : canary pods | spread | false rollbacks | upper 95% | of them with a pod term of 0 | passed |")
    print("|---|---:|---:|---:|---:|---:|")
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        for case, runs, fails, passes, unguarded in pool.map(_run, jobs):
            upper = clopper_pearson(fails, runs)[1]
            layout = f"{case.baseline_pods} : {case.canary_pods} | {case.spread:g}"
            print(f"| {layout} | {100 * fails / runs:.1f}% | {100 * upper:.1f}% | {unguarded} of {fails} "
                  f"| {100 * passes / runs:.1f}% |", flush=True)  # fmt: skip
    print(f"{len(jobs)} cases x {args.runs} runs in {time.time() - started:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
