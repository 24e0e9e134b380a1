"""Uncertainty over seeds and tasks: bootstrap intervals, the interquartile mean and performance
profile scores (Agarwal et al. 2021, "Deep reinforcement learning at the edge of the statistical
precipice"; Dahl et al. 2023, "Benchmarking neural network training algorithms")."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Statistic = Callable[[np.ndarray], float | np.ndarray]


def _interval_bounds(
    stats_R: np.ndarray, confidence: float
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Percentile interval: the (1 - c) / 2 and (1 + c) / 2 quantiles over the resamples."""
    alpha = 1.0 - confidence
    low, high = np.quantile(stats_R, [alpha / 2, 1.0 - alpha / 2], axis=0)
    if np.ndim(low) == 0:
        return float(low), float(high)
    return low, high


def _check_resampling(confidence: float, num_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be at least 1, got {num_resamples}")


def bootstrap_interval(
    values: np.ndarray,
    statistic: Statistic = np.mean,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Percentile bootstrap interval of `statistic(values)`, resampling the first axis (seeds).

    For resamples r = 1..R, draw n rows of `values` with replacement, compute `stat_r`, and
    return the `(1 - c) / 2` and `(1 + c) / 2` quantiles of `stat_1..stat_R` (floats for a scalar
    statistic, arrays for an array-valued one). Same seed, same interval.
    """
    values = np.asarray(values, np.float64)
    if values.ndim == 0 or values.shape[0] == 0:
        raise ValueError(f"values need a non-empty first axis (seeds), got shape {values.shape}")
    _check_resampling(confidence, num_resamples)
    rng = np.random.default_rng(seed)
    n = values.shape[0]
    rows_RxN = rng.integers(0, n, size=(num_resamples, n))
    stats_R = np.stack([np.asarray(statistic(values[rows])) for rows in rows_RxN])
    return _interval_bounds(stats_R, confidence)


def interquartile_mean(values: np.ndarray) -> float:
    """Mean of the middle of all values (flattened): sort, drop floor(n / 4) from each end.

    IQM = mean(x_(k+1), ..., x_(n-k)), k = floor(n / 4), x_(i) the i-th smallest; the same as
    `scipy.stats.trim_mean(x, 0.25, axis=None)`, rliable's IQM. NaN if any value is NaN.
    """
    x = np.sort(np.asarray(values, np.float64).ravel())
    if x.size == 0:
        raise ValueError("the interquartile mean of no values is undefined")
    k = x.size // 4
    return float(x[k : x.size - k].mean())


def stratified_bootstrap(
    scores_TxS: np.ndarray,
    statistic: Statistic = interquartile_mean,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
    *,
    resample_tasks: bool = False,
) -> tuple[float | np.ndarray, float | np.ndarray]:
    """Percentile interval of `statistic(scores_TxS)`, resampling seeds within each task.

    Each resample draws S seeds with replacement independently for every task (rliable's
    stratified bootstrap), so every task keeps its weight. With `resample_tasks`, the T tasks are
    drawn with replacement first (a two-level bootstrap: the uncertainty of which tasks and which
    seeds were run). Trailing axes after `[T, S]` (e.g. submissions run on the same seeds) are
    resampled with their seed.
    """
    scores = np.asarray(scores_TxS, np.float64)
    if scores.ndim < 2 or 0 in scores.shape[:2]:
        raise ValueError(f"scores need non-empty [tasks, seeds, ...] axes, got {scores.shape}")
    _check_resampling(confidence, num_resamples)
    rng = np.random.default_rng(seed)
    T, S = scores.shape[:2]
    seeds_RxTxS = rng.integers(0, S, size=(num_resamples, T, S))
    if resample_tasks:
        tasks_RxTx1 = rng.integers(0, T, size=(num_resamples, T, 1))
    else:
        tasks_RxTx1 = np.broadcast_to(np.arange(T)[:, None], (num_resamples, T, 1))
    stats_R = np.stack(
        [
            np.asarray(statistic(scores[tasks, seeds]))
            for tasks, seeds in zip(tasks_RxTx1, seeds_RxTxS, strict=True)
        ]
    )
    return _interval_bounds(stats_R, confidence)


def performance_profile_score(costs_TxK: np.ndarray, max_ratio: float = 4.0) -> np.ndarray:
    """AlgoPerf's benchmark score of each of K submissions from their costs on T tasks.

    With r_tk = cost[t, k] / min_k' cost[t, k'] and rho_k(tau) = #{t : r_tk <= tau} / T,::

        score_k = 1 / (max_ratio - 1) * integral_1^max_ratio rho_k(tau) dtau
                = mean_t clip((max_ratio - r_tk) / (max_ratio - 1), 0, 1)

    computed exactly (rho_k is a step function). A cost that is inf or NaN (target missed) is
    never within any ratio; a task no submission solved counts 0 for all. Costs must be > 0.
    Best on every task scores 1; missing every target scores 0. Returns `[K]`.
    """
    costs = np.asarray(costs_TxK, np.float64)
    if costs.ndim != 2 or 0 in costs.shape:
        raise ValueError(f"costs must be a non-empty [tasks, submissions] array, got {costs.shape}")
    if not max_ratio > 1.0:
        raise ValueError(f"max_ratio must be greater than 1, got {max_ratio}")
    costs = np.where(np.isfinite(costs), costs, np.inf)
    if (costs <= 0).any():
        raise ValueError("costs must be positive (e.g. steps or seconds to the target)")
    best_Tx1 = costs.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):
        ratios = np.where(np.isfinite(best_Tx1), costs / best_Tx1, np.inf)
    area = np.clip((max_ratio - ratios) / (max_ratio - 1.0), 0.0, 1.0)
    return area.mean(axis=0)


def paired_difference(
    challenger: np.ndarray,
    reference: np.ndarray,
    confidence: float = 0.95,
    num_resamples: int = 2000,
    seed: int | np.random.Generator = 0,
) -> dict[str, float | bool | None]:
    """Mean of `challenger - reference` over shared seeds and its bootstrap interval.

    d_i = challenger_i - reference_i (run i of both uses the same seed); the interval is the
    percentile bootstrap of mean(d), and `within_noise` is `low <= 0 <= high`. Any non-finite
    value (a diverged seed) makes every field None.

    Returns:
        `{"mean_difference", "low", "high", "within_noise"}`.
    """
    challenger = np.asarray(challenger, np.float64)
    reference = np.asarray(reference, np.float64)
    if challenger.shape != reference.shape or challenger.ndim != 1 or challenger.size == 0:
        raise ValueError(
            f"paired values need equal non-empty 1-D shapes (one per seed), got "
            f"{challenger.shape} and {reference.shape}"
        )
    difference = challenger - reference
    if not np.isfinite(difference).all():
        return {"mean_difference": None, "low": None, "high": None, "within_noise": None}
    low, high = bootstrap_interval(difference, np.mean, confidence, num_resamples, seed)
    return {
        "mean_difference": float(difference.mean()),
        "low": low,
        "high": high,
        "within_noise": bool(low <= 0.0 <= high),
    }
