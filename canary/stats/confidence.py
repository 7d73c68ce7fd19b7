"""Anytime-valid confidence sequences for an effect estimated interval by interval.

Each interval gives an estimate D_i of the effect θ (say, canary error rate minus baseline error rate) with
variance v_i. The running inverse-variance sums S_t = Σ D_i / v_i and I_t = Σ 1 / v_i give the estimate
θ̂_t = S_t / I_t, and I_t (θ̂_t − θ) is a martingale with variance I_t. Robbins' normal mixture over the
tilt λ ~ N(0, 1/ρ) turns it into a nonnegative martingale

    M_t(θ) = sqrt(ρ / (I_t + ρ)) · exp(I_t² (θ̂_t − θ)² / (2 (I_t + ρ))),

and Ville's inequality bounds the chance that it ever exceeds 1/α by α, however often one looks. The
set of θ with M_t(θ) < 1/α is the confidence sequence θ̂_t ± h_t with

    h_t = sqrt((I_t + ρ) · (log((I_t + ρ) / ρ) + 2 log(1/α))) / I_t.

References: Robbins (1970); Howard, Ramdas, McAuliffe, Sekhon, "Time-uniform, nonparametric,
nonasymptotic confidence sequences", Ann. Statist. 2021 (eq. 14); Waudby-Smith, Arnold, Wu, Ramdas,
"Time-uniform central limit theory and asymptotic confidence sequences", Ann. Statist. 2024 (the
asymptotic validity when v_i is estimated). ρ = 1/τ² puts the mixture's mass on effects of size τ, the
tolerance: the boundary is then tightest where a tolerance-sized effect becomes detectable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Evidence:
    """Running sums of interval estimates, weighted by inverse variance."""

    weighted_sum: float = 0.0
    information: float = 0.0
    intervals: int = 0

    def add(self, estimate: float, variance: float) -> Evidence:
        if not (math.isfinite(estimate) and math.isfinite(variance)) or variance <= 0:
            raise ValueError(f"need a finite estimate and a positive variance, got {estimate}, {variance}")
        return Evidence(
            self.weighted_sum + estimate / variance, self.information + 1.0 / variance, self.intervals + 1
        )

    @property
    def empty(self) -> bool:
        return self.information <= 0

    @property
    def estimate(self) -> float:
        return self.weighted_sum / self.information if self.information > 0 else 0.0

    @property
    def standard_error(self) -> float:
        return 1.0 / math.sqrt(self.information) if self.information > 0 else math.inf


def half_width(information: float, rho: float, alpha: float) -> float:
    """Half-width h_t of the level-(1 − α) normal-mixture confidence sequence (inf with no information)."""
    if information <= 0:
        return math.inf
    total = information + rho
    return math.sqrt(total * (math.log(total / rho) + 2.0 * math.log(1.0 / alpha))) / information


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
    info = evidence.information
    log_m = 0.5 * math.log(rho / (info + rho)) + info * info * gap * gap / (2.0 * (info + rho))
    return math.exp(min(log_m, 690.0)) if log_m > 0 else max(math.exp(log_m), 0.0)


@dataclass(frozen=True)
class Interval:
    lower: float
    upper: float


def confidence_sequence(evidence: Evidence, rho: float, alpha: float, widen: float = 0.0) -> Interval:
    """θ̂_t ± (h_t + widen); `widen` adds a fixed extra uncertainty (the pod term), same units as θ."""
    h = half_width(evidence.information, rho, alpha) + widen
    return Interval(evidence.estimate - h, evidence.estimate + h)
