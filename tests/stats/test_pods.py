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


def test_the_whole_dispersion_is_the_estimate_plus_the_noise_and_zero_only_where_pods_agree() -> None:
    """noise=0 keeps the sampling noise's share: about a pod's sampling variance for identical pods (never
    0 while their counts differ), and DerSimonian–Laird's estimate plus that share where they differ."""
    rng = np.random.default_rng(3)
    n = np.full(2, 5000)
    within = 0.01 * 0.99 / 5000
    whole = [between_pod_variance(rng.binomial(n, 0.01), n, noise=0.0) for _ in range(2000)]
    assert np.mean(whole) == pytest.approx(within, rel=0.1)
    assert np.mean(np.asarray(whole) == 0.0) < 0.05  # DerSimonian–Laird: 0 in about 68% of such pairs
    events, trials = [40, 70, 55], [5000, 5000, 5000]
    moments = between_pod_variance(events, trials)
    assert moments > 0 and between_pod_variance(events, trials, noise=0.0) > moments
    assert between_pod_variance([50, 50], [5000, 5000], noise=0.0) == 0.0


def test_fewer_than_two_pods_with_traffic_give_zero() -> None:
    assert between_pod_variance([3, 0], [100, 0]) == 0.0
    assert between_pod_variance([], []) == 0.0


def test_pod_effect_sd_shrinks_with_more_pods() -> None:
    assert pod_effect_sd(1e-4, 2, 18) == pytest.approx(0.01 * np.sqrt(1 / 2 + 1 / 18))
    assert pod_effect_sd(1e-4, 20, 18) < pod_effect_sd(1e-4, 2, 18)
    assert pod_effect_sd(0.0, 2, 18) == 0.0
