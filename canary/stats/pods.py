"""Pod-to-pod heterogeneity: how much a version's rate varies between its pods beyond sampling noise.

Requests served by one pod are not independent draws from the version's distribution: each pod has its
own level. With 2 canary pods the canary's level is the mean of two random pod levels, so a healthy
version can look a few percent worse by the luck of its pods. The between-pod variance τ² is estimated
from the baseline's pods (many of them) by the DerSimonian–Laird method of moments, and enters the
judge as a fixed extra uncertainty σ_b = τ · sqrt(s²/k_canary + 1/k_baseline), s the canary's rate at the
tolerance over the baseline's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def between_pod_variance(events: Sequence[float], trials: Sequence[int], *, noise: float = 1.0) -> float:
    """DerSimonian–Laird τ² of per-pod proportions; 0 when fewer than 2 pods have trials.

    `noise` is how much of the sampling noise's expected share of the dispersion is taken off: 1 is
    DerSimonian–Laird; 0 keeps the pods' whole dispersion, an estimate of τ² plus the noise that is 0 only
    where the pods agree exactly (its t-ratio is dominated by Student's t with k − 1 degrees of freedom at
    every τ: the widening then covers the canary's pod luck however alike the few pods look)."""
    e = np.asarray(events, dtype=float)
    n = np.asarray(trials, dtype=float)
    keep = n > 0
    e, n = e[keep], n[keep]
    if len(n) < 2:
        return 0.0
    p = e / n
    pooled = e.sum() / n.sum()
    # Within-pod variance from the pooled rate (a pod with 0 events must not get zero variance).
    shrunk = min(max(pooled, 0.5 / n.sum()), 1 - 0.5 / n.sum())
    var = shrunk * (1 - shrunk) / n
    w = 1.0 / var
    mean = float((w * p).sum() / w.sum())
    q = float((w * (p - mean) ** 2).sum())
    c = float(w.sum() - (w * w).sum() / w.sum())
    if c <= 0:
        return 0.0
    tau2 = (q - noise * (len(n) - 1)) / c
    return max(tau2, 0.0) if math.isfinite(tau2) else 0.0


def pod_effect_sd(tau2: float, canary_pods: int, baseline_pods: int, canary_scale: float = 1.0) -> float:
    """Standard deviation of the difference between two versions' pod-average levels. Pod levels act on a
    rate multiplicatively, so the canary's pods spread `canary_scale` times as much as the baseline's when
    its rate is that many times the baseline's (the least favourable canary: at the tolerance)."""
    if tau2 <= 0 or canary_pods <= 0 or baseline_pods <= 0:
        return 0.0
    return math.sqrt(tau2 * (canary_scale**2 / canary_pods + 1.0 / baseline_pods))
