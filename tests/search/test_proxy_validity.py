"""Spearman's rank correlation against scipy's, ties and degenerate cases, and the spread of the
members it is computed over."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from search.proxy_validity import average_ranks, spearman, spread_by_fitness


def test_spearman_matches_scipy_with_and_without_ties():
    rng = np.random.default_rng(0)
    for n in (3, 7, 50):
        a, b = rng.normal(size=n), rng.normal(size=n)
        assert spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic, abs=1e-12)
        tied_a, tied_b = np.round(a), np.round(b * 0.5)
        expected = stats.spearmanr(tied_a, tied_b).statistic
        if math.isfinite(expected):
            assert spearman(tied_a, tied_b) == pytest.approx(expected, abs=1e-12)
    x = [3.0, 1.0, 2.0, 5.0]
    assert spearman(x, [np.exp(v) for v in x]) == pytest.approx(1.0)  # monotone: rho = 1
    assert spearman(x, [-v for v in x]) == pytest.approx(-1.0)
    assert list(average_ranks([2.0, 1.0, 2.0, 0.0])) == [2.5, 1.0, 2.5, 0.0]


def test_degenerate_inputs_give_nan_or_raise():
    assert math.isnan(spearman([1.0, 2.0], [2.0, 1.0]))  # fewer than 3 pairs
    assert math.isnan(spearman([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))  # constant side
    with pytest.raises(ValueError, match="pairs"):
        spearman([1.0, 2.0, 3.0], [1.0, 2.0])


def test_spread_takes_the_best_the_worst_and_evenly_between():
    fitness = [5.0, 0.0, 9.0, 3.0, 7.0, 1.0, 8.0]
    assert spread_by_fitness(fitness, 10) == [1, 5, 3, 0, 4, 6, 2]  # all, best first
    picks = spread_by_fitness(fitness, 3)
    assert [fitness[i] for i in picks] == [0.0, 5.0, 9.0]
    assert len(set(spread_by_fitness(fitness, 4))) == 4
