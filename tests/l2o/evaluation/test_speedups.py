"""Speedups at a step budget and time to target on hand-made curves and on an exact quadratic."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l2o.evaluation.speedups import speedup, time_to_target, wall_clock_speedup


def decaying(num_steps: int, rate: float, floor: float = 0.0) -> np.ndarray:
    """loss(s) = floor + exp(-rate * s), s = 1..num_steps."""
    return floor + np.exp(-rate * np.arange(1, num_steps + 1))


def test_a_curve_against_itself_is_exactly_one():
    curve = decaying(100, 0.05)
    for budget in (1, 37, 100):
        result = speedup(curve, curve, budget)
        assert result["speedup"] == 1.0 and result["reached"]
        assert result["reference_steps"] == budget and result["level"] == curve[budget - 1]


def test_a_flat_reference_is_reached_at_its_first_equal_step():
    curve = np.array([3.0, 2.0, 2.0, 2.0])
    assert speedup(curve, curve, 4)["speedup"] == 0.5  # reference is <= 2 from step 2 on


def test_twice_as_fast_challenger_has_speedup_two():
    reference = decaying(200, 0.05)
    challenger = decaying(100, 0.10)  # challenger at step s == reference at step 2s
    result = speedup(challenger, reference, budget=50)
    assert result == {
        "speedup": 2.0,
        "reached": True,
        "level": challenger[49],
        "reference_steps": 100,
    }


def test_an_overshooting_challenger_is_scored_by_its_end_loss():
    reference = np.linspace(1.0, 0.0, 101)[1:]  # 0.99, 0.98, ..., 0.0 at steps 1..100
    challenger = np.concatenate([np.full(10, 0.1), np.full(10, 0.5)])  # low early, worse at end
    result = speedup(challenger, reference, budget=20)
    # L = 0.5: the reference gets there at step 50 -> 50 / 20.
    assert result["level"] == 0.5 and result["reference_steps"] == 50
    assert result["speedup"] == pytest.approx(2.5)
    # The old definition divided by the challenger's own first hit of L (step 1 here): 50.
    own_first_hit = int(np.flatnonzero(challenger <= 0.5)[0]) + 1
    assert result["speedup"] < 50 / own_first_hit


def test_a_challenger_worse_than_the_reference_at_the_budget_never_exceeds_one():
    rng = np.random.default_rng(0)
    for _ in range(50):
        reference = np.sort(rng.uniform(0.0, 1.0, 80))[::-1]
        budget = int(rng.integers(1, 60))
        challenger = reference[:budget] + rng.uniform(0.0, 0.2, budget)
        assert challenger[-1] >= reference[budget - 1]
        result = speedup(challenger, reference, budget)
        assert result["reached"] and result["speedup"] <= 1.0


def test_a_challenger_below_everything_the_reference_reaches_gets_a_lower_bound():
    reference = decaying(300, 0.01, floor=0.5)
    challenger = decaying(100, 0.05)  # ends at exp(-5) < 0.5 < every reference loss
    result = speedup(challenger, reference, budget=100)
    assert result["reached"] is False
    assert result["speedup"] == 3.0 and result["reference_steps"] == 300


def test_a_diverged_challenger_has_no_speedup():
    challenger = np.array([1.0, 0.5, np.nan])
    result = speedup(challenger, decaying(5, 0.1), budget=3)
    assert result == {"speedup": None, "reached": False, "level": None, "reference_steps": None}
    assert speedup(challenger, decaying(5, 0.1), budget=2)["speedup"] is not None


def test_nan_in_the_reference_never_counts_as_reaching():
    reference = np.array([np.nan, np.nan, 0.4, 0.3])
    assert speedup(np.array([1.0, 0.4]), reference, budget=2)["reference_steps"] == 3


def test_budgets_outside_the_runs_are_rejected():
    curve = decaying(10, 0.1)
    with pytest.raises(ValueError, match="budget"):
        speedup(curve, curve, 11)
    with pytest.raises(ValueError, match="budget"):
        speedup(curve, curve, 0)
    with pytest.raises(ValueError, match="fewer than budget"):
        speedup(curve, curve[:5], 8)
    with pytest.raises(ValueError, match="1-D"):
        speedup(curve[None], curve, 5)


def test_wall_clock_speedup_converts_steps_to_seconds():
    reference = decaying(200, 0.05)
    challenger = decaying(100, 0.10)
    result = wall_clock_speedup(challenger, reference, 50, 0.3, 0.1)
    # the reference needs 100 steps * 0.1 s = 10 s; the challenger ran 50 steps * 0.3 s = 15 s.
    assert result["reference_steps"] == 100 and result["reached"]
    assert result["reference_seconds"] == pytest.approx(10.0)
    assert result["challenger_seconds"] == pytest.approx(15.0)
    assert result["speedup"] == pytest.approx(2.0 / 3.0)
    same_cost = wall_clock_speedup(challenger, reference, 50, 0.2, 0.2)
    assert same_cost["speedup"] == pytest.approx(speedup(challenger, reference, 50)["speedup"])


def test_wall_clock_speedup_keeps_the_lower_bound_and_rejects_bad_times():
    reference = decaying(300, 0.01, floor=0.5)
    result = wall_clock_speedup(decaying(100, 0.05), reference, 100, 2.0, 1.0)
    assert not result["reached"] and result["speedup"] == pytest.approx(300 * 1.0 / (100 * 2.0))
    diverged = wall_clock_speedup(np.array([np.inf]), reference, 1, 2.0, 1.0)
    assert diverged["speedup"] is None and diverged["reference_seconds"] is None
    with pytest.raises(ValueError, match="seconds"):
        wall_clock_speedup(reference, reference, 10, 0.0, 1.0)


def test_time_to_target_on_hand_curves():
    curve = np.array([5.0, 3.0, 2.0, 2.5, 1.0])
    assert time_to_target(curve, 2.0) == {"steps": 3, "seconds": None, "reached": True}
    assert time_to_target(curve, 5.0, seconds_per_step=0.5) == {
        "steps": 1,
        "seconds": 0.5,
        "reached": True,
    }
    assert time_to_target(curve, 0.5) == {"steps": None, "seconds": None, "reached": False}
    assert time_to_target(np.array([np.nan, 1.0]), 1.0)["steps"] == 2
    assert not time_to_target(curve, math.nan)["reached"]


def test_time_to_target_on_a_validation_curve_reports_training_steps():
    evaluated_at = np.array([100, 200, 300, 400])
    result = time_to_target(np.array([0.9, 0.7, 0.4, 0.2]), 0.5, evaluated_at, 0.01)
    assert result == {"steps": 300, "seconds": pytest.approx(3.0), "reached": True}
    with pytest.raises(ValueError, match="shape"):
        time_to_target(np.ones(4), 0.5, evaluated_at[:3])


def gradient_descent_losses(a: float, x0: float, lr: float, num_steps: int) -> np.ndarray:
    """f(x_s) for s = 1..num_steps of x_s = x_{s-1} - lr * f'(x_{s-1}), f(x) = a x^2 / 2."""
    x, losses = x0, []
    for _ in range(num_steps):
        x = x - lr * a * x
        losses.append(0.5 * a * x * x)
    return np.array(losses)


@pytest.mark.parametrize(
    ("a", "x0", "lr", "target"), [(2.0, 3.0, 0.1, 1e-3), (0.5, -1.0, 0.5, 2e-5)]
)
def test_time_to_target_matches_the_closed_form_on_a_quadratic(a, x0, lr, target):
    # f(x_s) = f(x0) (1 - lr a)^(2 s) <= target  <=>  s >= log(target / f(x0)) / (2 log|1 - lr a|)
    exact = math.log(target / (0.5 * a * x0**2)) / (2 * math.log(abs(1 - lr * a)))
    assert abs(exact - round(exact)) > 1e-6  # no tie at the crossing step
    first_step = math.ceil(exact)
    losses = gradient_descent_losses(a, x0, lr, 4 * first_step)
    closed_form = 0.5 * a * x0**2 * (1 - lr * a) ** (2 * np.arange(1, losses.size + 1))
    np.testing.assert_allclose(losses, closed_form, rtol=1e-10)
    assert time_to_target(losses, target)["steps"] == first_step
    # Validated every k steps, the target is first seen at the next multiple of k.
    k = 7
    steps = np.arange(k, losses.size + 1, k)
    assert time_to_target(losses[steps - 1], target, steps)["steps"] == k * math.ceil(exact / k)
