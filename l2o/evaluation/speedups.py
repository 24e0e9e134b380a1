"""Speedups at a fixed step budget and time to a target loss, in steps and in seconds (VeLO, Metz
et al. 2022, "VeLO: Training versatile learned optimizers by scaling up"; AlgoPerf, Dahl et al.
2023, "Benchmarking neural network training algorithms")."""

from __future__ import annotations

import numpy as np


def _curve(values: np.ndarray, name: str) -> np.ndarray:
    """A non-empty 1-D float64 loss curve, or ValueError naming it."""
    curve = np.asarray(values, np.float64)
    if curve.ndim != 1 or curve.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D loss curve, got shape {curve.shape}")
    return curve


def _first_index_at_or_below(curve: np.ndarray, level: float) -> int | None:
    """0-based first index with `curve <= level` (NaN never is), or None."""
    hits = np.flatnonzero(curve <= level)
    return int(hits[0]) if hits.size else None


def _seconds_per_step(value: float, name: str) -> float:
    value = float(value)
    if not (np.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


def speedup(
    challenger: np.ndarray, reference: np.ndarray, budget: int
) -> dict[str, float | int | bool | None]:
    """Steps the reference needs to reach the challenger's end-of-budget loss, over the budget.

    With `L = challenger[budget - 1]` (curves are smoothed, seed-averaged losses indexed by step,
    step `s` at index `s - 1`)::

        speedup = min{s : reference[s - 1] <= L} / budget

    A curve against itself gives 1; a challenger ending worse than the reference at the budget
    gives at most 1. If the reference never reaches `L` in its `len(reference) >= budget` steps,
    the value is the lower bound `len(reference) / budget` and `reached` is False. A non-finite
    `L` (a diverged challenger) gives `speedup` None.

    Returns:
        `{"speedup", "reached", "level": L, "reference_steps"}`, where `speedup ==
        reference_steps / budget` and `reference_steps` is `len(reference)` when not reached.
    """
    challenger, reference = _curve(challenger, "challenger"), _curve(reference, "reference")
    budget = int(budget)
    if not 1 <= budget <= challenger.size:
        raise ValueError(f"budget must be in 1..{challenger.size} (challenger steps), got {budget}")
    if reference.size < budget:
        raise ValueError(f"the reference ran {reference.size} steps, fewer than budget={budget}")
    level = float(challenger[budget - 1])
    if not np.isfinite(level):
        return {"speedup": None, "reached": False, "level": None, "reference_steps": None}
    index = _first_index_at_or_below(reference, level)
    reached = index is not None
    reference_steps = index + 1 if reached else reference.size
    return {
        "speedup": reference_steps / budget,
        "reached": reached,
        "level": level,
        "reference_steps": reference_steps,
    }


def wall_clock_speedup(
    challenger: np.ndarray,
    reference: np.ndarray,
    budget: int,
    challenger_seconds_per_step: float,
    reference_seconds_per_step: float,
) -> dict[str, float | int | bool | None]:
    """`speedup` in seconds: the reference's time to the challenger's final loss over its own.

    speedup = reference_steps * reference_seconds_per_step / (budget * challenger_seconds_per_step)

    Returns:
        `speedup`'s dict (now in seconds) plus `reference_seconds` and `challenger_seconds`
        (`budget * challenger_seconds_per_step`); a lower bound when `reached` is False.
    """
    challenger_sps = _seconds_per_step(challenger_seconds_per_step, "challenger_seconds_per_step")
    reference_sps = _seconds_per_step(reference_seconds_per_step, "reference_seconds_per_step")
    in_steps = speedup(challenger, reference, budget)
    challenger_seconds = int(budget) * challenger_sps
    if in_steps["speedup"] is None:
        return {**in_steps, "reference_seconds": None, "challenger_seconds": challenger_seconds}
    reference_seconds = in_steps["reference_steps"] * reference_sps
    return {
        **in_steps,
        "speedup": reference_seconds / challenger_seconds,
        "reference_seconds": reference_seconds,
        "challenger_seconds": challenger_seconds,
    }


def time_to_target(
    curve: np.ndarray,
    target: float,
    steps: np.ndarray | None = None,
    seconds_per_step: float | None = None,
) -> dict[str, int | float | bool | None]:
    """First step at which `curve <= target`, and its time in seconds.

    `steps` are the training steps at which the curve was measured (a validation curve measured
    every k steps: `[k, 2k, ...]`); without it, `curve[i]` is step `i + 1`. A curve that never
    reaches the target (NaN never does) gives `{"steps": None, "seconds": None, "reached": False}`.

    Returns:
        `{"steps": step, "seconds": step * seconds_per_step (None without it), "reached"}`.
    """
    curve = _curve(curve, "curve")
    if steps is None:
        steps = np.arange(1, curve.size + 1)
    steps = np.asarray(steps)
    if steps.shape != curve.shape:
        raise ValueError(f"steps has shape {steps.shape}, the curve {curve.shape}")
    if seconds_per_step is not None:
        seconds_per_step = _seconds_per_step(seconds_per_step, "seconds_per_step")
    index = _first_index_at_or_below(curve, float(target))
    if index is None:
        return {"steps": None, "seconds": None, "reached": False}
    step = int(steps[index])
    seconds = None if seconds_per_step is None else step * seconds_per_step
    return {"steps": step, "seconds": seconds, "reached": True}
