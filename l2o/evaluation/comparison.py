"""The comparison of an evaluation's optimizers with a reference, per task and across tasks:
final losses with 95% bootstrap intervals over seeds, seed-paired differences, speedups in steps
and in seconds at the step budget (learned_optimization / VeLO, Metz et al. 2022), and the
interquartile mean and performance-profile score with intervals over tasks and seeds
(Agarwal et al. 2021; Dahl et al. 2023)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from l2o.evaluation import metrics, speedups, statistics

PROFILE_TAUS = np.logspace(0.0, np.log10(4.0), 61)
"""Ratios tau of the performance profile: 1 to 4, the range AlgoPerf's score integrates over."""
PROFILE_MAX_RATIO = 4.0
NUM_RESAMPLES = 1000


def speedup_window(budget: int) -> int:
    """Trailing-mean window of the curves speedups compare: 10% of the budget, so that minibatch
    noise on a plateau is not read as progress (an optimizer against itself then scores 1)."""
    return max(1, budget // 10)


def _curve(run: Mapping[str, Any], key: str = "train_loss") -> np.ndarray:
    """Seed-averaged training-loss curve of a run (`key`: or its extended curve), smoothed by a
    trailing mean over `speedup_window` of its budget-long curve (so an extended curve starts
    exactly as the plain one)."""
    losses = np.asarray(run.get(key, run["train_loss"]), np.float64)
    return metrics.smooth(losses.mean(0), speedup_window(np.shape(run["train_loss"])[-1]))


def final_losses(run: Mapping[str, Any]) -> np.ndarray:
    """Per-seed final test loss, or smoothed final training loss for tasks without a test split."""
    if "test_loss" in run["evaluations"]:
        return np.asarray(run["evaluations"]["test_loss"], np.float64)[:, -1]
    losses = np.asarray(run["train_loss"], np.float64)
    return losses[:, -metrics.default_window(losses.shape[-1]) :].mean(1)


def _interval(values: np.ndarray) -> list[float] | None:
    """The 95% bootstrap interval of the mean over seeds; None if a seed diverged."""
    values = np.asarray(values, np.float64)
    if not np.isfinite(values).all():
        return None
    low, high = statistics.bootstrap_interval(values, np.mean, num_resamples=NUM_RESAMPLES)
    return [low, high]


def _final_stats(run: Mapping[str, Any]) -> dict[str, Any]:
    losses = np.asarray(run["train_loss"], np.float64)
    window = metrics.default_window(losses.shape[-1])
    final_train = losses[:, -window:].mean(1)
    out = {
        "final_train_loss": {**metrics.seed_stats(final_train), "ci95": _interval(final_train)},
        "auc_train_loss": metrics.seed_stats(metrics.area_under_curve(losses)),
    }
    for name, values in run["evaluations"].items():
        values = np.asarray(values, np.float64)
        out[f"final_{name}"] = {
            **metrics.seed_stats(values[:, -1]),
            "ci95": _interval(values[:, -1]),
        }
        best = values.max(1) if name.endswith("accuracy") else values.min(1)
        out[f"best_{name}"] = metrics.seed_stats(best)
    return out


def _against_reference(
    run: Mapping[str, Any], reference: Mapping[str, Any], budget: int
) -> dict[str, Any]:
    """Speedups at the budget (steps and seconds) and the seed-paired final-loss difference."""
    curve, ref_curve = _curve(run), _curve(reference, "extended_train_loss")
    out: dict[str, Any] = {"speedup": speedups.speedup(curve, ref_curve, budget)}
    seconds, ref_seconds = run.get("seconds_per_step"), reference.get("seconds_per_step")
    if seconds and ref_seconds:
        out["wall_clock_speedup"] = speedups.wall_clock_speedup(
            curve, ref_curve, budget, seconds, ref_seconds
        )
    out["steps_to_reference_loss"] = speedups.time_to_target(
        curve, float(_curve(reference)[budget - 1]), seconds_per_step=seconds or None
    )
    out["paired_difference"] = statistics.paired_difference(
        final_losses(run), final_losses(reference), num_resamples=NUM_RESAMPLES
    )
    return out


def _costs(finals: np.ndarray) -> np.ndarray:
    """Final losses as profile costs: a diverged run costs inf, a loss of 0 a tiny positive cost."""
    return np.where(np.isfinite(finals), np.maximum(finals, 1e-30), np.inf)


def _aggregates(finals_TxSxK: np.ndarray, optimizers: list[str], reference: str | None) -> dict:
    """Across tasks: the profile score (cost: mean final loss) and, against the reference, the
    IQM of the seed-paired loss ratio, each with an interval over tasks and seeds."""
    finals = _costs(finals_TxSxK)

    def profile_score(x):
        return statistics.performance_profile_score(x.mean(1), PROFILE_MAX_RATIO)

    score = profile_score(finals)
    low, high = statistics.stratified_bootstrap(
        finals, profile_score, num_resamples=NUM_RESAMPLES, resample_tasks=True
    )
    out: dict[str, Any] = {
        "profile_score": {
            opt: {"score": float(score[k]), "ci95": [float(low[k]), float(high[k])]}
            for k, opt in enumerate(optimizers)
        }
    }
    if reference is not None:
        ref = finals[..., optimizers.index(reference)]
        with np.errstate(invalid="ignore", divide="ignore"):
            ratios = finals / ref[..., None]
        ratios = np.where(np.isfinite(ratios), ratios, np.inf)

        def iqm(x):
            return np.array([statistics.interquartile_mean(x[..., k]) for k in range(x.shape[-1])])

        value = iqm(ratios)
        low, high = statistics.stratified_bootstrap(ratios, iqm, num_resamples=NUM_RESAMPLES)
        out["iqm_loss_ratio"] = {
            opt: {"iqm": float(value[k]), "ci95": [float(low[k]), float(high[k])]}
            for k, opt in enumerate(optimizers)
        }
    return out


def _profile_bands(finals_TxSxK: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The performance profile (cost: mean final loss) and its 95% band over tasks and seeds."""
    finals = _costs(finals_TxSxK)

    def profile(x):
        costs = x.mean(1)
        return metrics.performance_profile(
            np.where(np.isfinite(costs), costs, np.inf), PROFILE_TAUS
        )

    low, high = statistics.stratified_bootstrap(
        finals, profile, num_resamples=NUM_RESAMPLES, resample_tasks=True
    )
    return profile(finals), np.asarray(low), np.asarray(high)


def compare(
    results: Mapping[str, Mapping[str, Any]], reference: str, budget: int
) -> dict[str, Any]:
    """Per-task statistics, speedups and paired differences against `reference` at `budget`
    steps, win fractions, the aggregates across tasks and the performance profile. The cost of
    the profile is each task's mean final test loss (training loss where it has no test split)."""
    optimizers = list(next(iter(results.values())))
    has_reference = reference in optimizers
    per_task: dict[str, dict[str, Any]] = {}
    for task_key, runs in results.items():
        per_task[task_key] = {}
        for opt_key, run in runs.items():
            entry = {
                "learning_rate": run["learning_rate"],
                "seconds_per_step": run.get("seconds_per_step"),
                "tuning": run.get("tuning", {}),
                **_final_stats(run),
            }
            if has_reference:
                entry.update(_against_reference(run, runs[reference], budget))
            per_task[task_key][opt_key] = entry
    finals = np.stack(
        [np.stack([final_losses(runs[o]) for o in optimizers], -1) for runs in results.values()]
    )  # [tasks, seeds, optimizers]
    out: dict[str, Any] = {"reference": reference if has_reference else None, "per_task": per_task}
    mean_finals = np.where(np.isfinite(finals), finals, np.nan).mean(1)
    if has_reference:
        ref = mean_finals[:, optimizers.index(reference)]
        out["win_fraction"] = {
            opt: metrics.win_fraction(mean_finals[:, k], ref) for k, opt in enumerate(optimizers)
        }
    out["aggregates"] = _aggregates(finals, optimizers, reference if has_reference else None)
    rho, low, high = _profile_bands(finals)
    out["profile"] = {
        "taus": PROFILE_TAUS,
        "rho": {opt: rho[k] for k, opt in enumerate(optimizers)},
        "band": {opt: [low[k], high[k]] for k, opt in enumerate(optimizers)},
        "cost": "final test loss (training loss where a task has no test split)",
    }
    return out
