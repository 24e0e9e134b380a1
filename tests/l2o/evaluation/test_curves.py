"""Training curves beyond the cap are kept as block means; below it, as they are, bit for bit."""

import json

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from baselines import get_optimizer
from l2o.cli.main import main
from l2o.evaluation.chunked_run import summarize, train_in_chunks
from l2o.evaluation.curves import (
    MAX_CURVE_POINTS,
    block_means,
    block_size,
    block_steps,
    fold_blocks,
)
from tasks import get_task


def test_block_means_of_a_known_curve():
    values = np.arange(10, dtype=np.float32)
    np.testing.assert_array_equal(block_means(values, 4), [1.5, 5.5, 8.5])
    np.testing.assert_array_equal(block_means(values, 5), [2.0, 7.0])
    assert block_means(values, 1) is values
    np.testing.assert_array_equal(block_means(np.stack([values, -values]), 5), [[2, 7], [-2, -7]])
    assert np.isnan(block_means(np.array([1.0, np.nan, 2.0, 3.0]), 2)).tolist() == [True, False]
    np.testing.assert_array_equal(block_steps(3, 4, 10), [4, 8, 10])


def test_block_size_keeps_at_most_the_cap():
    assert block_size(MAX_CURVE_POINTS) == 1 and block_size(MAX_CURVE_POINTS + 1) == 2
    for steps in (1, 9_999, 10_001, 123_457, 2**31 - 1):
        every = block_size(steps)
        assert -(-steps // every) <= MAX_CURVE_POINTS and (every == 1 or steps > MAX_CURVE_POINTS)


@pytest.mark.parametrize("every", [1, 3, 7, 64])
def test_folding_pieces_gives_the_block_means_of_the_whole_curve(every):
    rng = np.random.default_rng(every)
    curve = rng.normal(size=1000).astype(np.float32)
    cuts = np.sort(rng.choice(np.arange(1, 1000), size=12, replace=False))
    kept, pending = [], np.zeros(0, np.float32)
    for piece in np.split(curve, cuts):
        means, pending = fold_blocks(pending, piece, every)
        kept.append(means)
    folded = np.concatenate([*kept, block_means(pending, every)])
    np.testing.assert_array_equal(folded, block_means(curve, every))


def test_a_run_above_the_cap_keeps_the_block_means_of_its_whole_curve():
    task, optimizer = get_task("quadratic_k100", dim=4), get_optimizer("adam", learning_rate=0.01)
    whole, _ = train_in_chunks(task, optimizer, 50, 3, eval_every=25)
    kept, _ = train_in_chunks(task, optimizer, 50, 3, eval_every=25, max_points=7)
    assert block_size(50, 7) == 8 and len(whole["train_loss"]) == 50
    np.testing.assert_array_equal(kept["train_loss"], block_means(whole["train_loss"], 8))
    for name in whole.keys() - {"train_loss"}:  # the evaluations are kept whole
        np.testing.assert_array_equal(kept[name], whole[name])
    below, _ = train_in_chunks(task, optimizer, 50, 3, eval_every=25, max_points=50)
    np.testing.assert_array_equal(below["train_loss"], whole["train_loss"])
    assert below["train_loss"].dtype == whole["train_loss"].dtype == np.float32
    assert summarize(below) == summarize(whole)
    diverged = {"train_loss": np.array([1.0, 2.0, 3.0, np.inf, 1.0])}
    assert summarize(diverged)["diverged_at_step"] == 3
    blocks = {"train_loss": block_means(diverged["train_loss"], 2)}
    assert summarize(blocks, 2)["diverged_at_step"] == 2  # the first step of the block holding it


def test_train_command_stores_at_most_the_cap(tmp_path, capsys):
    out = tmp_path / "run"
    steps = 2 * MAX_CURVE_POINTS + 1
    argv = ["train", "--task", "quadratic_k100", "--optimizer", "sgd", "--lr", "0.01",
            "--task-opt", "dim=4", "--steps", str(steps), "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    losses = np.float32(results["metrics"]["train_loss"])
    assert results["train_loss_every"] == 3 and len(losses) == -(-steps // 3) <= MAX_CURVE_POINTS
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
    assert results["final"]["train_loss"] == pytest.approx(float(losses[-333:].mean()))
    (event_file,) = out.glob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file))
    events.Reload()
    logged = [e.step for e in events.Scalars("train/loss")]  # each block at its last step
    assert logged[:2] == [3, 6] and logged[-1] == steps and len(logged) == len(losses)
