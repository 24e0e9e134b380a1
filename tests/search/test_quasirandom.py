"""Scrambled Halton points and the quasi-random trials and studies drawn from a search space."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats.qmc

from search.quasirandom import halton, quasirandom_trials, study_trials
from search.spaces import parse_space


@pytest.fixture
def space():
    return parse_space(
        {
            "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
            "b2": {"type": "one_minus_log_uniform", "low": 0.9, "high": 0.9999},
            "warmup": {"type": "int", "low": 0, "high": 5},
            "weight_decay": {"type": "choice", "choices": [0.0, 1e-4, 1e-2]},
            "b1": 0.9,
            "nesterov": True,
        }
    )


def test_halton_is_reproducible_from_its_seed():
    points = halton(50, 4, seed=3)
    np.testing.assert_array_equal(points, halton(50, 4, seed=3))
    np.testing.assert_array_equal(points, halton(50, 4, seed=np.random.default_rng(3)))
    assert not np.allclose(points, halton(50, 4, seed=4))
    assert points.shape == (50, 4) and points.dtype == np.float64
    assert (points >= 0.0).all() and (points < 1.0).all()


def test_halton_prefixes_do_not_depend_on_the_length_or_later_dimensions():
    np.testing.assert_array_equal(halton(100, 3, seed=1)[:10], halton(10, 3, seed=1))
    np.testing.assert_array_equal(halton(20, 5, seed=1)[:, :2], halton(20, 2, seed=1))
    assert halton(0, 2).shape == (0, 2)


@pytest.mark.parametrize(("dim", "base", "num_points"), [(0, 2, 64), (1, 3, 27), (2, 5, 25)])
def test_each_margin_has_one_point_per_cell_for_a_power_of_its_base(dim, base, num_points):
    for seed in range(3):
        u = halton(num_points, 3, seed)[:, dim]
        counts = np.bincount(np.floor(u * num_points).astype(int), minlength=num_points)
        np.testing.assert_array_equal(counts, np.ones(num_points))
    # Independent uniform draws leave cells empty (about 1/e of them).
    iid = np.random.default_rng(0).uniform(size=num_points)
    assert len(np.unique(np.floor(iid * num_points))) < num_points


def test_halton_fills_the_cube_better_than_independent_uniform_points():
    rng = np.random.default_rng(0)
    for seed in range(5):
        quasi = scipy.stats.qmc.discrepancy(halton(64, 4, seed))
        uniform = [scipy.stats.qmc.discrepancy(rng.uniform(size=(64, 4))) for _ in range(20)]
        assert quasi < min(uniform)


def test_halton_rejects_bad_sizes():
    with pytest.raises(ValueError, match="num_dims"):
        halton(5, 0)


def test_trials_are_reproducible_in_bounds_and_carry_the_fixed_values(space):
    trials = quasirandom_trials(space, 16, seed=0)
    assert trials == quasirandom_trials(space, 16, seed=0)
    assert trials != quasirandom_trials(space, 16, seed=1)
    assert len(trials) == 16
    for trial in trials:
        assert set(trial) == {"learning_rate", "b2", "warmup", "weight_decay", "b1", "nesterov"}
        assert trial["b1"] == 0.9 and trial["nesterov"] is True
        assert 1e-4 <= trial["learning_rate"] <= 1e-1
        assert 0.9 <= trial["b2"] <= 0.9999
        assert isinstance(trial["warmup"], int) and 0 <= trial["warmup"] <= 5
        assert trial["weight_decay"] in (0.0, 1e-4, 1e-2)
    # 16 points in base 2: the learning rates split evenly across the 16 log-scale cells.
    log_position = np.log10([t["learning_rate"] for t in trials]) + 4.0  # in [0, 3]
    cells = np.floor(log_position / 3.0 * 16).astype(int)
    np.testing.assert_array_equal(np.sort(cells), np.arange(16))
    assert quasirandom_trials(space, 0) == []


def test_studies_are_independent_and_reproducible(space):
    studies = study_trials(space, seed=7)
    assert len(studies) == 3 and all(len(study) == 5 for study in studies)
    assert studies == study_trials(space, num_trials=5, num_studies=3, seed=7)
    assert studies != study_trials(space, seed=8)
    rates = [tuple(t["learning_rate"] for t in study) for study in studies]
    assert len(set(rates)) == 3
    assert all(study[0]["b1"] == 0.9 for study in studies)
    with pytest.raises(ValueError, match="num_studies"):
        study_trials(space, num_studies=0)
