"""Bootstrap intervals (coverage), the interquartile mean, profile scores and paired seeds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.stats

from l2o.evaluation.statistics import (
    bootstrap_interval,
    interquartile_mean,
    paired_difference,
    performance_profile_score,
    stratified_bootstrap,
)


def coverage(confidence: float, repetitions: int = 300, n: int = 20) -> float:
    """Share of intervals of the mean of n draws from N(1, 2^2) that contain the true mean 1."""
    rng = np.random.default_rng(1234)
    hits = 0
    for seed in range(repetitions):
        sample = rng.normal(1.0, 2.0, n)
        low, high = bootstrap_interval(sample, confidence=confidence, num_resamples=500, seed=seed)
        hits += low <= 1.0 <= high
    return hits / repetitions


def test_the_bootstrap_interval_of_the_mean_covers_at_the_nominal_rate():
    assert 0.88 <= coverage(0.95) <= 0.99


def test_the_coverage_test_can_fail_a_narrow_interval():
    assert 0.38 <= coverage(0.5) <= 0.62


def test_bootstrap_is_reproducible_from_its_seed():
    values = np.random.default_rng(0).exponential(size=15)
    first = bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=7)
    assert first == bootstrap_interval(values, seed=np.random.default_rng(7))
    assert first != bootstrap_interval(values, seed=8)
    low, high = first
    assert values.min() <= low < values.mean() < high <= values.max()


def test_bootstrap_of_constant_values_is_a_point_and_arrays_stay_arrays():
    assert bootstrap_interval(np.full(5, 3.0)) == (3.0, 3.0)
    values_SxT = np.random.default_rng(0).normal(size=(10, 3))
    low, high = bootstrap_interval(values_SxT, lambda v: v.mean(axis=0), num_resamples=200)
    assert low.shape == high.shape == (3,) and (low < high).all()
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_interval(np.ones(3), confidence=1.0)
    with pytest.raises(ValueError, match="first axis"):
        bootstrap_interval(np.ones(0))


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([4.0, 1.0, 3.0, 2.0], 2.5),  # n = 4: drop 1 each end -> mean(2, 3)
        ([5.0, 1.0, 3.0, 2.0, 4.0], 3.0),  # n = 5: drop 1 -> mean(2, 3, 4)
        ([1.0, 2.0, 3.0, 4.0, 5.0, 100.0], 3.5),  # n = 6: drop 1 -> mean(2, 3, 4, 5)
        ([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 70.0], 4.0),  # n = 7: drop 1 -> mean(2, .., 6)
        ([0.0, 0.0, 1.0, 2.0, 3.0, 4.0, 9.0, 9.0], 2.5),  # n = 8: drop 2 -> mean(1, 2, 3, 4)
        ([7.0], 7.0),
        ([1.0, 3.0], 2.0),
        ([1.0, 2.0, 6.0], 3.0),  # n < 4 drops nothing
    ],
)
def test_interquartile_mean_on_hand_values(values, expected):
    assert interquartile_mean(np.array(values)) == pytest.approx(expected)


def test_interquartile_mean_is_scipys_trim_mean_over_all_values():
    rng = np.random.default_rng(3)
    for size in [(9,), (4, 5), (3, 7), (2, 3, 5), (13,)]:
        x = rng.standard_cauchy(size)
        expected = scipy.stats.trim_mean(x, 0.25, axis=None)
        assert interquartile_mean(x) == pytest.approx(expected, rel=1e-12)


def test_stratified_bootstrap_of_one_task_is_the_plain_bootstrap():
    scores = np.random.default_rng(0).normal(size=12)
    stratified = stratified_bootstrap(scores[None], np.mean, num_resamples=300, seed=5)
    assert stratified == bootstrap_interval(scores, np.mean, num_resamples=300, seed=5)


def test_stratified_bootstrap_keeps_every_task_in_every_resample():
    rng = np.random.default_rng(0)
    # Task 0 scores near 0, task 1 near 100: resampling the pooled runs would move weight
    # between the tasks; resampling within each task keeps the mean near 50.
    scores_TxS = np.stack([rng.normal(0.0, 1.0, 6), rng.normal(100.0, 1.0, 6)])
    low, high = stratified_bootstrap(scores_TxS, np.mean, num_resamples=500, seed=0)
    pooled_low, pooled_high = bootstrap_interval(scores_TxS.ravel(), np.mean, num_resamples=500)
    assert low < scores_TxS.mean() < high
    assert high - low < 2.0 < 20.0 < pooled_high - pooled_low
    iqm_interval = stratified_bootstrap(scores_TxS, num_resamples=300, seed=1)
    assert iqm_interval == stratified_bootstrap(scores_TxS, num_resamples=300, seed=1)
    assert iqm_interval[0] <= interquartile_mean(scores_TxS) <= iqm_interval[1]


def test_stratified_bootstrap_of_the_profile_score_over_shared_seeds():
    rng = np.random.default_rng(0)
    # costs [tasks, seeds, submissions]; submission 0 is about twice as fast everywhere.
    costs_TxSxK = np.stack([rng.uniform(90, 110, (4, 5)), rng.uniform(180, 220, (4, 5))], axis=2)
    low, high = stratified_bootstrap(
        costs_TxSxK,
        lambda c: performance_profile_score(np.median(c, axis=1)),
        num_resamples=200,
    )
    np.testing.assert_array_equal(low, [1.0, low[1]])
    assert high[0] == 1.0 and 0.5 < low[1] <= high[1] < 0.8


def profile_area_on_a_grid(costs_TxK: np.ndarray, max_ratio: float, points: int) -> np.ndarray:
    """Normalized area under rho(tau) by the midpoint rule on `points` cells of [1, max_ratio]."""
    costs = np.where(np.isfinite(costs_TxK), costs_TxK, np.inf)
    best = costs.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        ratios = np.where(np.isfinite(best), costs / best, np.inf)
    edges = np.linspace(1.0, max_ratio, points + 1)
    taus = (edges[:-1] + edges[1:]) / 2
    rho_KxG = (ratios[:, :, None] <= taus[None, None, :]).mean(axis=0)
    return rho_KxG.mean(axis=1)


def test_performance_profile_score_on_a_hand_case():
    costs_TxK = np.array([[1.0, 2.0, np.inf], [3.0, 3.0, 12.0], [10.0, 40.0, 25.0]])
    # ratios: [1, 2, inf], [1, 1, 4], [1, 4, 2.5]; per task (4 - r) / 3 clipped to [0, 1]
    expected = [1.0, (2 / 3 + 1 + 0) / 3, (0 + 0 + 0.5) / 3]
    np.testing.assert_allclose(performance_profile_score(costs_TxK), expected)
    np.testing.assert_allclose(performance_profile_score(costs_TxK, max_ratio=2.0), [1, 1 / 3, 0])
    on_grid = profile_area_on_a_grid(costs_TxK, 4.0, 30_000)
    np.testing.assert_allclose(performance_profile_score(costs_TxK), on_grid, atol=1e-3)


def test_performance_profile_score_matches_a_fine_grid_on_random_costs():
    costs_TxK = np.random.default_rng(0).lognormal(0.0, 0.7, (12, 4))
    costs_TxK[2, 1] = costs_TxK[5, :] = np.nan  # a missed target; a task nobody solved
    on_grid = profile_area_on_a_grid(costs_TxK, 4.0, 30_000)
    np.testing.assert_allclose(performance_profile_score(costs_TxK), on_grid, atol=1e-3)


def test_performance_profile_score_limits():
    costs_TxK = np.array([[1.0, 5.0, np.inf], [2.0, 2.5, np.nan], [0.5, 0.6, np.inf]])
    scores = performance_profile_score(costs_TxK)
    assert scores[0] == 1.0 and scores[2] == 0.0 and 0.0 < scores[1] < 1.0
    assert (performance_profile_score(np.full((3, 2), np.inf)) == 0.0).all()
    with pytest.raises(ValueError, match="positive"):
        performance_profile_score(np.array([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="max_ratio"):
        performance_profile_score(costs_TxK, max_ratio=1.0)


def test_paired_difference_separates_noise_from_a_real_shift():
    rng = np.random.default_rng(0)
    seed_effect = rng.normal(0.0, 1.0, 10)  # shared by both runs of a seed, cancels in pairs
    reference = 2.0 + seed_effect + rng.normal(0.0, 0.05, 10)
    same = 2.0 + seed_effect + rng.normal(0.0, 0.05, 10)
    better = 1.9 + seed_effect + rng.normal(0.0, 0.05, 10)
    noise = paired_difference(same, reference)
    assert noise["within_noise"] and noise["low"] < 0.0 < noise["high"]
    shift = paired_difference(better, reference)
    assert not shift["within_noise"] and shift["high"] < 0.0
    assert shift["mean_difference"] == pytest.approx(np.mean(better - reference))
    # Unpaired, the seed-to-seed spread (std 1) would hide the 0.1 shift.
    low, high = bootstrap_interval(better, seed=0)
    assert low < reference.mean() < high
    assert shift == paired_difference(better, reference)


def test_paired_difference_of_a_diverged_seed_and_bad_shapes():
    result = paired_difference(np.array([1.0, np.nan]), np.array([1.0, 2.0]))
    assert result == {"mean_difference": None, "low": None, "high": None, "within_noise": None}
    with pytest.raises(ValueError, match="paired"):
        paired_difference(np.ones(3), np.ones(4))


def test_resampling_tasks_too_is_wider_than_seeds_alone_when_tasks_differ():
    rng = np.random.default_rng(3)
    # Tasks far apart, seeds close together: resampling tasks is where the uncertainty is.
    scores = np.arange(8.0)[:, None] * 10.0 + rng.normal(0.0, 0.1, size=(8, 5))
    low_s, high_s = stratified_bootstrap(scores, np.mean, num_resamples=500, seed=1)
    low_t, high_t = stratified_bootstrap(
        scores, np.mean, num_resamples=500, seed=1, resample_tasks=True
    )
    assert high_t - low_t > 20 * (high_s - low_s)
    assert low_t < scores.mean() < high_t
    again = stratified_bootstrap(scores, np.mean, num_resamples=500, seed=1, resample_tasks=True)
    assert again == (low_t, high_t)


def test_resampling_tasks_keeps_submissions_paired():
    scores = np.random.default_rng(0).normal(size=(6, 4, 2))
    scores[..., 1] = scores[..., 0] + 1.0  # submission 1 is always exactly 1 worse
    low, high = stratified_bootstrap(
        scores,
        lambda x: x[..., 1].mean() - x[..., 0].mean(),
        num_resamples=200,
        resample_tasks=True,
    )
    assert low == pytest.approx(1.0) and high == pytest.approx(1.0)
