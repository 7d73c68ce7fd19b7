"""Anytime-valid confidence sequences for an effect estimated interval by interval.

Each interval i gives an estimate D_i of the effect θ (say, canary error rate minus baseline error rate)
with variance v_i, and a weight w_i fixed before the interval's outcome is known (from request counts
only, so a run of unlucky intervals cannot down-weight itself). With W_t = Σ w_i, S_t = Σ w_i D_i and
V_t = Σ w_i² v_i, the estimate is θ̂_t = S_t / W_t and W_t (θ̂_t − θ) is a martingale with variance V_t.
Robbins' normal mixture over the tilt λ ~ N(0, 1/ρ) turns it into a nonnegative martingale

    M_t(θ) = sqrt(ρ / (V_t + ρ)) · exp(W_t² (θ̂_t − θ)² / (2 (V_t + ρ))),

and Ville's inequality bounds the chance that it ever exceeds 1/α by α, however often one looks. The
set of θ with M_t(θ) < 1/α is the confidence sequence θ̂_t ± h_t with

    h_t = sqrt((V_t + ρ) · (log((V_t + ρ) / ρ) + 2 log(1/α))) / W_t.

References: Robbins (1970); Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 2021 (eq. 14); Waudby-Smith, Arnold, Wu, Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist. 2024 (validity
when v_i is estimated). Weights are scaled so that w_i ≈ 1/v_i for a typical interval; then ρ = 1/τ²
puts the mixture's mass on effects of size τ, the tolerance, where the boundary is tightest.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


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


def half_width(evidence: Evidence, rho: float, alpha: float) -> float:
    """Half-width h_t of the level-(1 − α) normal-mixture confidence sequence (inf with no evidence)."""
    if evidence.empty:
        return math.inf
    total = evidence.variance + rho
    return math.sqrt(total * (math.log(total / rho) + 2.0 * math.log(1.0 / alpha))) / evidence.weight


def mixture_e_value(evidence: Evidence, null: float, rho: float, *, upper: bool) -> float:
    """The mixture martingale M_t at the null value, one-sided.

    `upper=True` measures evidence that the effect is above `null`; estimates on the other side of the
    null give 1 (no evidence). Capped at 1e300 so it stays a JSON number.
    """
    if evidence.empty:
        return 1.0
    gap = evidence.estimate - null
    if (gap <= 0) if upper else (gap >= 0):
        return 1.0
    w, v = evidence.weight, evidence.variance
    log_m = 0.5 * math.log(rho / (v + rho)) + w * w * gap * gap / (2.0 * (v + rho))
    return math.exp(min(log_m, 690.0)) if log_m > 0 else max(math.exp(log_m), 0.0)


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


def confidence_sequence(evidence: Evidence, rho: float, alpha: float, widen: float = 0.0) -> Interval:
    """θ̂_t ± (h_t + widen); `widen` adds a fixed extra uncertainty (the pod term), same units as θ."""
    h = half_width(evidence, rho, alpha) + widen
    return Interval(evidence.estimate - h, evidence.estimate + h)
