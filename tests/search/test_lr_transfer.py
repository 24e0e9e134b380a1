"""The learning rate of a rule relative to AdamW's: the refined grid minimum, ratios with known
answers (AdamW with its update scaled by 1/4, SGD against SGD), the summary."""

import numpy as np
import pytest

import tasks
from baselines import sgd
from search.evolution import Suite
from search.lr_transfer import (
    best_single_learning_rate,
    calibrated_learning_rate,
    lr_ratio,
    transfer_grid,
    tuned_learning_rate,
)
from search.objective import PENALTY
from search.program import Instruction, Program
from search.programs_library import adamw
from search.programs_library import sgd as sgd_program


def scaled(program: Program, factor: float) -> Program:
    """`program` with its update multiplied by `factor`."""
    out = program.num_registers - 1
    body = (*program.instructions, Instruction("scale_c", out, (program.update,), factor))
    return Program(body, update=out, new_state=program.new_state)


def test_grid_has_the_requested_points_per_decade():
    grid = transfer_grid(1e-6, 10.0, 4)
    assert len(grid) == 29 and grid[0] == np.float32(1e-6) and grid[-1] == np.float32(10.0)
    np.testing.assert_allclose(np.diff(np.log10(grid)), 0.25, rtol=1e-5)
    with pytest.raises(ValueError):
        transfer_grid(1.0, 0.1, 4)


def test_tuned_learning_rate_is_the_vertex_of_a_log_parabola():
    lrs = transfer_grid(1e-4, 1.0, 2)  # half decades
    best = 3e-3
    losses = np.exp((np.log(lrs) - np.log(best)) ** 2)  # a parabola in (log lr, log loss)
    lr, at_edge = tuned_learning_rate(lrs, losses)
    assert not at_edge and lr == pytest.approx(best, rel=1e-4)
    # At an edge, or next to a diverged run, the grid point itself.
    assert tuned_learning_rate(lrs, np.arange(len(lrs), dtype=float)) == (lrs[0], True)
    diverged = losses.copy()
    diverged[np.argmin(losses) + 1] = PENALTY
    assert tuned_learning_rate(lrs, diverged) == (float(lrs[np.argmin(losses)]), False)


def test_best_single_learning_rate_serves_the_most_tasks():
    lrs = np.array([1e-3, 1e-2, 1e-1])
    losses = np.array([[1.0, 1.05, 3.0],  # within 10% at 1e-3 and 1e-2
                       [2.0, 1.0, 1.08],  # at 1e-2 and 1e-1
                       [9.0, 1.2, 1.0]])  # fmt: skip
    best = best_single_learning_rate(lrs, losses)
    assert best["learning_rate"] == 1e-2 and best["within_tolerance"] == 2 and best["tasks"] == 3
    assert best["excess"] == pytest.approx((1.05 * 1.0 * 1.2) ** (1 / 3) - 1)
    # A tie in the count goes to the lower geometric excess; PENALTY rows count as far off.
    tie = best_single_learning_rate(lrs, np.array([[1.0, 1.09, PENALTY], [1.0, 1.01, 1.0]]))
    assert tie["learning_rate"] == 1e-3 and tie["within_tolerance"] == 2
    assert best_single_learning_rate(lrs, losses, tolerance=0.3)["within_tolerance"] == 3
    ratio = {"median": 2.0, "reference_adamw_lr": 1e-3, "default": best}
    assert calibrated_learning_rate(ratio) == 1e-2  # the count's choice, not 2.0 x 1e-3


def _suite() -> Suite:
    return Suite(("logistic",), (tasks.get_task("logistic_regression"),), 30, (1e-3,), (0,))


@pytest.mark.slow
def test_adamw_scaled_by_a_quarter_needs_four_times_the_learning_rate():
    grid = transfer_grid(1e-3, 10.0, 4)
    ratio = lr_ratio(scaled(adamw(), 0.25), {"proxy": _suite()}, grid)
    (row,) = ratio["tasks"]
    assert not row["at_edge"] and ratio["tasks_inside_grid"] == 1
    assert ratio["median"] == row["ratio"] == pytest.approx(4.0, rel=0.1)
    assert row["rule_valid_loss"] == pytest.approx(row["adamw_valid_loss"], rel=0.02)
    assert ratio["reference_adamw_lr"] == row["adamw_lr"]
    assert calibrated_learning_rate(ratio) == ratio["default"]["learning_rate"]
    assert ratio["default"]["learning_rate"] == pytest.approx(row["rule_lr"], rel=0.5)
    assert len(row["rule_valid_loss_by_lr"]) == len(grid)
    assert ratio["min"] == ratio["q1"] == ratio["median"] == ratio["q3"] == ratio["max"]


@pytest.mark.slow
def test_sgd_against_sgd_is_one():
    grid = transfer_grid(1e-2, 100.0, 2)
    ratio = lr_ratio(sgd_program(), {"funnel": _suite()}, grid, reference=lambda lr: sgd(lr))
    (row,) = ratio["tasks"]
    assert (row["suite"], row["task"], row["steps"], row["seeds"]) == ("funnel", "logistic", 30, 1)
    assert ratio["median"] == row["ratio"] == pytest.approx(1.0, rel=1e-3)
    assert ratio["grid"] == {"low": pytest.approx(1e-2), "high": pytest.approx(100.0), "num": 9}
