"""Comparison metrics of optimizers on loss curves (speedups and targets: `speedups`).

- area under the curve: the mean of the training-loss curve over its steps;
- win fraction: the share of tasks on which a challenger's final loss beats the reference's;
- performance profiles (Dolan & More 2002): the share of tasks on which a solver's cost is
  within a factor tau of the best solver's.
"""

from __future__ import annotations

import numpy as np


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average over the last axis (the first values average fewer points)."""
    values = np.asarray(values, np.float64)
    if window <= 1:
        return values
    csum = np.cumsum(values, axis=-1)
    out = csum.copy()
    out[..., window:] = csum[..., window:] - csum[..., :-window]
    return out / np.minimum(np.arange(1, values.shape[-1] + 1), window)


def default_window(num_steps: int) -> int:
    """Smoothing window for loss curves: 2% of the run, at least 1 step."""
    return max(1, num_steps // 50)


def area_under_curve(losses: np.ndarray) -> np.ndarray:
    """Mean loss over the steps (last axis); NaN if the run diverged."""
    return np.asarray(losses, np.float64).mean(axis=-1)


def win_fraction(challenger: np.ndarray, reference: np.ndarray) -> float:
    """Fraction of tasks where the challenger's loss is strictly lower (NaN loses)."""
    challenger = np.where(np.isfinite(challenger), challenger, np.inf)
    reference = np.where(np.isfinite(reference), reference, np.inf)
    return float(np.mean(challenger < reference))


def performance_profile(costs_TxS: np.ndarray, taus: np.ndarray) -> np.ndarray:
    """rho_s(tau) = share of tasks t with cost[t, s] <= tau * min_s' cost[t, s']; `[S, len(taus)]`.

    Costs must be positive; NaN/inf costs (failures) never count as within any factor.
    """
    costs = np.where(np.isfinite(costs_TxS), costs_TxS, np.inf).astype(np.float64)
    best = costs.min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratios = np.where(np.isfinite(best), costs / best, np.inf)
    return (ratios[:, :, None] <= np.asarray(taus)[None, None, :]).mean(axis=0)


def seed_stats(values: np.ndarray) -> dict[str, float | None]:
    """Mean, standard deviation, min and max over seeds (None where a seed diverged)."""
    values = np.asarray(values, np.float64)
    if values.size == 0 or not np.isfinite(values).all():
        return {"mean": None, "std": None, "min": None, "max": None}
    return {
        "mean": float(values.mean()),
        "std": float(values.std()),
        "min": float(values.min()),
        "max": float(values.max()),
    }
