"""A rule's learning rate relative to AdamW's: the ratio of the two tuned learning rates on the
same tasks, grid, seeds and budget (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms", give Lion's the same way: 3-10x smaller than AdamW's), so that a user who knows a
good AdamW learning rate knows the rule's: `lr_rule = ratio * lr_adamw`.

Per task, each optimizer's learning rate is tuned on the mean final validation loss over seeds;
the best grid point is refined to the vertex of the parabola through it and its two neighbours
in (log lr, log loss), moved at most half a grid step. The summary (median, quartiles, range of
the ratio, in log space) covers the tasks whose tuned learning rates both lie inside the grid
(all tasks, if none do).

The default learning rate of a rule file (`calibrated_learning_rate`) is the grid point at which
the most of those tasks end within 10% of their tuned loss, the geometric mean of the excess
breaking ties: a setting chosen for working on many tasks at once, as a user runs it untuned.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optax

from baselines import adamw
from search.evolution import Suite
from search.interpreter import program_transform
from search.objective import PENALTY, objective_values
from search.program import Program
from search.sweep import log_grid, lr_seed_sweep

REFERENCE = "adamw"
LOSS_FLOOR = 1e-30  # losses are compared in logs
DEFAULT_TOLERANCE = 0.10  # a default learning rate should end within 10% of the tuned loss


def transfer_grid(low: float, high: float, per_decade: int) -> np.ndarray:
    """Log-spaced learning rates from `low` to `high`, `per_decade` to a decade (float32)."""
    if not (0 < low < high and per_decade >= 1):
        raise ValueError(f"a grid needs 0 < low < high and per_decade >= 1, got {low}, {high}, "
                         f"{per_decade}")  # fmt: skip
    return log_grid(low, high, round(per_decade * np.log10(high / low)) + 1)


def tuned_learning_rate(learning_rates: np.ndarray, losses_L: np.ndarray) -> tuple[float, bool]:
    """`(learning rate, at_edge)`: the grid point of the lowest loss, refined to the vertex of the
    parabola in (log lr, log loss) through it and its neighbours, clipped to half a grid step
    either side. Not refined at an edge of the grid (`at_edge`), next to a penalized loss, or
    where the parabola is not convex."""
    log_lrs = np.log(np.asarray(learning_rates, np.float64))
    losses = np.asarray(losses_L, np.float64)
    best = int(np.argmin(losses))
    if best in (0, len(losses) - 1):
        return float(learning_rates[best]), True
    y_minus, y_0, y_plus = np.log(np.maximum(losses[best - 1 : best + 2], LOSS_FLOOR))
    curvature = y_minus - 2 * y_0 + y_plus
    if np.any(losses[best - 1 : best + 2] >= PENALTY) or not curvature > 0:
        return float(learning_rates[best]), False
    offset = np.clip(0.5 * (y_minus - y_plus) / curvature, -0.5, 0.5)  # in grid steps
    step = 0.5 * (log_lrs[best + 1] - log_lrs[best - 1])
    return float(np.exp(log_lrs[best] + offset * step)), False


def tuned_losses(
    suite: Suite, make_optimizer: Callable[[Any], optax.GradientTransformation], lrs: np.ndarray
) -> list[np.ndarray]:
    """Per task of `suite`, the mean final validation loss over its seeds at each learning rate
    of `lrs` (penalized where not finite: `search.objective`)."""
    out = []
    for task in suite.tasks:
        runs = lr_seed_sweep(task, make_optimizer, lrs, np.asarray(suite.seeds), suite.num_steps,
                             eval_every=suite.num_steps)  # fmt: skip
        out.append(objective_values(runs["valid_loss"][..., -1]))
    return out


def _quantiles(values: list[float]) -> dict[str, float]:
    """Median, quartiles and range of positive `values`, interpolated in log space."""
    logs = np.log(values)
    points = {"min": 0.0, "q1": 0.25, "median": 0.5, "q3": 0.75, "max": 1.0}
    return {k: float(np.exp(np.quantile(logs, q))) for k, q in points.items()}


def lr_ratio(
    program: Program,
    suites: Mapping[str, Suite],
    learning_rates: np.ndarray,
    *,
    reference: Callable[[Any], optax.GradientTransformation] = adamw,
    on_task: Callable[[str], None] = lambda label: None,
) -> dict[str, Any]:
    """The ratio of `program`'s tuned learning rate to `reference`'s (AdamW's) on every task of
    `suites`, each tuned over `learning_rates` on the suite's seeds and steps.

    Args:
      program: the rule.
      suites: named suites (e.g. `proxy`, `funnel`); their own learning-rate grids are not used.
      learning_rates: the grid both are tuned over (e.g. `transfer_grid(1e-6, 10, 4)`).
      reference: `make(learning_rate) -> transform` of the optimizer the ratio is relative to.
      on_task: called with `suite/task` after each task (for progress bars).

    Returns:
      Plain JSON data: `median`, `q1`, `q3`, `min`, `max` of the ratio over the tasks whose two
      tuned learning rates lie inside the grid, `reference_adamw_lr` (the reference's median
      tuned learning rate over those tasks), `tasks_inside_grid`, `grid` and one entry per task
      (`rule_lr`, `adamw_lr`, `ratio`, their tuned validation losses, the rule's validation loss
      at each grid point, `at_edge`). If every task has a tuned learning rate at an edge of the
      grid, the summary covers them all (bounds). `default` is `best_single_learning_rate` over all
      the tasks.
    """
    lrs = np.asarray(learning_rates, np.float32)
    rows = []
    for suite_name, suite in suites.items():
        rule = tuned_losses(suite, lambda lr: program_transform(program, lr), lrs)
        ref = tuned_losses(suite, reference, lrs)
        for name, rule_losses, ref_losses in zip(suite.names, rule, ref, strict=True):
            rule_lr, rule_edge = tuned_learning_rate(lrs, rule_losses)
            ref_lr, ref_edge = tuned_learning_rate(lrs, ref_losses)
            rows.append({"suite": suite_name, "task": name, "steps": suite.num_steps,
                         "seeds": len(suite.seeds), "rule_lr": rule_lr, "adamw_lr": ref_lr,
                         "ratio": rule_lr / ref_lr, "rule_valid_loss": float(rule_losses.min()),
                         "adamw_valid_loss": float(ref_losses.min()),
                         "rule_valid_loss_by_lr": [float(x) for x in rule_losses],
                         "at_edge": rule_edge or ref_edge})  # fmt: skip
            on_task(f"{suite_name}/{name}")
    inside = [row for row in rows if not row["at_edge"]] or rows  # else bounds: say so
    losses = np.asarray([row["rule_valid_loss_by_lr"] for row in rows], np.float64)
    return {
        "reference": REFERENCE,
        **_quantiles([row["ratio"] for row in inside]),
        "reference_adamw_lr": _quantiles([row["adamw_lr"] for row in inside])["median"],
        "tasks_inside_grid": sum(not row["at_edge"] for row in rows),
        "grid": {"low": float(lrs[0]), "high": float(lrs[-1]), "num": len(lrs)},
        "default": best_single_learning_rate(lrs, losses),
        "tasks": rows,
    }


def best_single_learning_rate(
    learning_rates: np.ndarray, losses_TL: np.ndarray, tolerance: float = DEFAULT_TOLERANCE
) -> dict[str, Any]:
    """The one learning rate of `learning_rates` that serves the most tasks: the grid point at
    which the most rows of `losses_TL` (a task's final loss at each learning rate) are within
    `1 + tolerance` of that row's minimum, ties broken by the lowest geometric mean of
    `loss / minimum`.

    Returns:
      `learning_rate`, `within_tolerance` (tasks within it there), `tasks`, `tolerance` and
      `excess`, that geometric mean minus 1.
    """
    losses = np.maximum(np.asarray(losses_TL, np.float64), LOSS_FLOOR)
    excess_TL = losses / losses.min(axis=1, keepdims=True)
    within_L = np.sum(excess_TL <= 1 + tolerance, axis=0)
    log_excess_L = np.mean(np.log(excess_TL), axis=0)
    best = int(np.lexsort((log_excess_L, -within_L))[0])
    return {"learning_rate": float(learning_rates[best]), "within_tolerance": int(within_L[best]),
            "tasks": len(losses), "tolerance": tolerance,
            "excess": float(np.expm1(log_excess_L[best]))}  # fmt: skip


def calibrated_learning_rate(ratio: Mapping[str, Any]) -> float:
    """The default learning rate a measured ratio gives: its `default`, `best_single_learning_rate`
    over its tasks."""
    return float(ratio["default"]["learning_rate"])
