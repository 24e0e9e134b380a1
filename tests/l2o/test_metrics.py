"""Comparison metrics on constructed curves with known answers."""

import numpy as np
import pytest

from l2o import metrics


def test_speedup_of_a_curve_against_itself_is_one():
    rng = np.random.default_rng(0)
    curve = np.exp(-np.linspace(0, 3, 500)) + 0.05 * rng.random(500)
    assert metrics.speedup(curve, curve) == {"speedup": 1.0, "reached": True, "level": curve[-1]}


def test_speedup_on_constructed_curves():
    t = np.arange(1, 101, dtype=float)
    reference = 1.0 / t  # reaches 1/100 at step 100
    challenger = 1.0 / (2.0 * t[:50])  # reaches 1/100 at step 50
    assert metrics.speedup(challenger, reference)["speedup"] == pytest.approx(2.0)
    slower = 1.0 / (0.5 * t)  # final 1/50; reference reaches it at step 50 of 100
    assert metrics.speedup(slower, reference)["speedup"] == pytest.approx(0.5)


def test_speedup_lower_bound_when_the_reference_never_gets_there():
    reference = np.full(100, 1.0)
    challenger = np.linspace(1.0, 0.1, 20)
    result = metrics.speedup(challenger, reference)
    assert result["reached"] is False and result["speedup"] == pytest.approx(100 / 20)
    assert metrics.speedup(np.array([1.0, np.nan]), reference)["speedup"] is None


def test_steps_to_target_and_area():
    curve = np.array([5.0, 3.0, 2.0, 2.5, 1.0])
    assert metrics.steps_to_target(curve, 2.0) == 3
    assert metrics.steps_to_target(curve, 0.5) is None
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
