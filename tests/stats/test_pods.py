"""Between-pod variance: zero for identical pods, the true spread for heterogeneous ones."""

from __future__ import annotations

import numpy as np
import pytest

from canary.stats.pods import between_pod_variance, pod_effect_sd


def test_identical_pods_give_about_zero() -> None:
    rng = np.random.default_rng(1)
    estimates = []
    for _ in range(200):
        n = np.full(18, 5000)
        estimates.append(between_pod_variance(rng.binomial(n, 0.01), n))
    within = 0.01 * 0.99 / 5000  # a pod rate's own sampling variance
    # The true value is 0; truncation at 0 leaves a small positive bias, far below the sampling variance.
    assert np.mean(estimates) < 0.2 * within
    assert np.median(estimates) == 0.0


def test_recovers_a_known_spread() -> None:
    rng = np.random.default_rng(2)
    rates = np.clip(rng.normal(0.3, 0.02, 400), 0, 1)
    n = np.full(400, 100_000)
    tau2 = between_pod_variance(rng.binomial(n, rates), n)
    assert tau2 == pytest.approx(np.var(rates), rel=0.2)


def test_fewer_than_two_pods_with_traffic_give_zero() -> None:
    assert between_pod_variance([3, 0], [100, 0]) == 0.0
    assert between_pod_variance([], []) == 0.0


def test_pod_effect_sd_shrinks_with_more_pods() -> None:
    assert pod_effect_sd(1e-4, 2, 18) == pytest.approx(0.01 * np.sqrt(1 / 2 + 1 / 18))
    assert pod_effect_sd(1e-4, 20, 18) < pod_effect_sd(1e-4, 2, 18)
    assert pod_effect_sd(0.0, 2, 18) == 0.0
