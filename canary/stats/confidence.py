"""Anytime-valid confidence sequences for an effect estimated interval by interval.

Each interval i gives an estimate D_i of the effect θ (say, canary error rate minus baseline error rate)
with variance v_i, and a weight w_i fixed before the interval's outcome is known (from request counts
only, so a run of unlucky intervals cannot down-weight itself). With W_t = Σ w_i, S_t = Σ w_i D_i and
V_t = Σ w_i² v_i, the estimate is θ̂_t = S_t / W_t and W_t (θ̂_t − θ) is a martingale with variance V_t.
Each decision is one-sided (fail: the effect is above the tolerance; pass: below it), so Robbins'
normal mixture is taken over tilts λ ≥ 0 only (half-normal, precision ρ). With s = W_t (θ̂_t − θ):

    M⁺_t(θ) = 2 sqrt(ρ / (V_t + ρ)) · exp(s² / (2 (V_t + ρ))) · Φ(s / sqrt(V_t + ρ)),

a nonnegative supermartingale when the increments' mean is at most θ. Ville's inequality bounds the
chance that it ever exceeds 1/α by α, however often one looks; h_t solves M⁺_t = 1/α at s = W_t h_t.
It is a little tighter than the two-sided boundary sqrt((V + ρ)(log((V + ρ)/ρ) + 2 log(1/α))).

References: Robbins (1970); Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 2021 (eq. 14); Waudby-Smith, Arnold, Wu, Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist. 2024 (validity
when v_i is estimated). Weights are scaled so that w_i ≈ 1/v_i for a typical interval; then ρ = 1/τ²
puts the mixture's mass on effects of size τ, the tolerance, where the boundary is tightest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from scipy.optimize import brentq
from scipy.special import log_ndtr


@dataclass(frozen=True)
class Evidence:
    """Running weighted sums of interval estimates."""

    weight: float = 0.0  # W = Σ w_i
    weighted_sum: float = 0.0  # S = Σ w_i D_i
    variance: float = 0.0  # V = Σ w_i² v_i
    intervals: int = 0

    def add(self, estimate: float, variance: float, weight: float) -> Evidence:
        if not all(math.isfinite(x) for x in (estimate, variance, weight)) or variance <= 0 or weight <= 0:
            raise ValueError(f"need a finite estimate and positive variance and weight, got {estimate}, {variance}")
        return Evidence(
            self.weight + weight,
            self.weighted_sum + weight * estimate,
            self.variance + weight * weight * variance,
            self.intervals + 1,
        )

    @property
    def empty(self) -> bool:
        return self.weight <= 0

    @property
    def estimate(self) -> float:
        return self.weighted_sum / self.weight if self.weight > 0 else 0.0


def _log_mixture(statistic: float, variance: float, rho: float) -> float:
    """log M⁺: the one-sided normal mixture (tilts λ ≥ 0, half-normal with precision ρ) at W(θ̂ − θ)."""
    total = variance + rho
    return (
        math.log(2.0)
        + 0.5 * math.log(rho / total)
        + statistic * statistic / (2.0 * total)
        + float(log_ndtr(statistic / math.sqrt(total)))
    )


def _log_mixtures(statistic: float, variance: float, rhos: tuple[float, ...]) -> float:
    """log of the even average of one-sided mixtures at several precisions: a nonnegative supermartingale
    too, tight where any of its parts is, for at most log(number of parts) more evidence than that part."""
    logs = [_log_mixture(statistic, variance, rho) for rho in rhos]
    top = max(logs)
    return top + math.log(sum(math.exp(x - top) for x in logs) / len(logs))


def _precisions(rho: float | tuple[float, ...]) -> tuple[float, ...]:
    return rho if isinstance(rho, tuple) else (rho,)


def half_width(evidence: Evidence, rho: float | tuple[float, ...], alpha: float) -> float:
    """h_t with P(∃t: θ̂_t − θ ≥ h_t) ≤ α, and likewise for the other side (inf with no evidence). `rho`: the
    mixture's precision, or several, whose mixtures are averaged."""
    if evidence.empty:
        return math.inf
    rhos = _precisions(rho)
    v, target = evidence.variance, math.log(1.0 / alpha)
    # The two-sided boundary bounds each part's root from above: there M⁺ ≥ M = 1/α; at 0, M⁺ ≤ 1. The
    # average reaches 1/α no later than its part that reaches len(rhos)/α first.
    upper = min(math.sqrt((v + r) * (math.log((v + r) / r) + 2.0 * (target + math.log(len(rhos))))) for r in rhos)
    root = brentq(lambda s: _log_mixtures(s, v, rhos) - target, 0.0, upper, xtol=1e-12 * upper + 1e-300)
    return float(root) / evidence.weight


def mixture_e_value(evidence: Evidence, null: float, rho: float | tuple[float, ...], *, upper: bool) -> float:
    """The one-sided mixture martingale M⁺_t at the null value (averaged over `rho`'s precisions): evidence
    that the effect is above `null` (`upper=True`) or below it. Capped so it stays a finite JSON number."""
    if evidence.empty:
        return 1.0
    gap = evidence.estimate - null
    statistic = evidence.weight * (gap if upper else -gap)
    return math.exp(min(_log_mixtures(statistic, evidence.variance, _precisions(rho)), 690.0))


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


def confidence_sequence(
    evidence: Evidence, rho: float | tuple[float, ...], alpha: float, widen: float = 0.0
) -> Interval:
    """θ̂_t ± (h_t + widen); `widen` adds a fixed extra uncertainty (the pod term), same units as θ."""
    h = half_width(evidence, rho, alpha) + widen
    return Interval(evidence.estimate - h, evidence.estimate + h)
