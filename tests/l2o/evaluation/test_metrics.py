"""Comparison metrics on constructed curves with known answers."""

import numpy as np
import pytest

from l2o.evaluation import metrics


def test_area_under_the_curve_is_the_mean_loss():
    curve = np.array([5.0, 3.0, 2.0, 2.5, 1.0])
    assert metrics.area_under_curve(curve) == pytest.approx(2.7)


def test_smooth_is_a_trailing_mean():
    values = np.array([1.0, 3.0, 5.0, 7.0])
    np.testing.assert_allclose(metrics.smooth(values, 2), [1.0, 2.0, 4.0, 6.0])
    np.testing.assert_allclose(metrics.smooth(values, 1), values)


def test_win_fraction_counts_strict_wins_and_nan_loses():
    challenger = np.array([1.0, 2.0, np.nan, 0.5])
    reference = np.array([2.0, 2.0, 1.0, np.nan])
    assert metrics.win_fraction(challenger, reference) == pytest.approx(0.5)


def test_performance_profile_known_values():
    costs = np.array([[1.0, 2.0], [4.0, 1.0], [1.0, np.inf]])  # tasks x solvers
    rho = metrics.performance_profile(costs, np.array([1.0, 2.0, 4.0]))
    np.testing.assert_allclose(rho[0], [2 / 3, 2 / 3, 1.0])
    np.testing.assert_allclose(rho[1], [1 / 3, 2 / 3, 2 / 3])


def test_seed_stats():
    assert metrics.seed_stats(np.array([1.0, 3.0])) == {
        "mean": 2.0,
        "std": 1.0,
        "min": 1.0,
        "max": 3.0,
    }
    assert metrics.seed_stats(np.array([1.0, np.nan]))["mean"] is None
