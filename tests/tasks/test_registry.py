"""Every registered task passes one smoke test; lookups fail with the valid names listed."""

import jax
import numpy as np
import optax
import pytest

import tasks
from tasks import DatasetError, UnknownNameError, get_task, list_tasks, train
from tasks.registry import OFFLINE_TASKS, describe, task_overrides

# Adam learning rates for the smoke test: the loss must fall within SMOKE_STEPS steps.
SMOKE_LR = {"rosenbrock": 1e-2, "quadratic_k100": 1e-1, "quadratic_k10000": 1e-1, "nqm": 1e-1}
SMOKE_STEPS = 30


def _task_or_skip(name):
    try:
        return get_task(name)
    except DatasetError as e:
        pytest.skip(f"data for {name} is not available here: {e}")


@pytest.mark.parametrize("name", list_tasks())
def test_every_task_smoke(name):
    """Shapes and dtypes of init, a batch and the loss (traced, not compiled: one compilation
    per task, of the training run, whose every loss must be finite)."""
    task = _task_or_skip(name)

    def first_loss(key):
        params = task.init(key)
        loss, aux = task.loss(params, jax.random.key(1), task.sample_batch(jax.random.key(2)))
        return params, loss, aux

    params, loss, aux = jax.eval_shape(first_loss, jax.random.key(0))
    leaves = jax.tree_util.tree_leaves(params)
    assert leaves and all(leaf.dtype == np.float32 for leaf in leaves)
    assert loss.shape == () and all(np.shape(v) == () for v in aux.values())

    optimizer = optax.adam(SMOKE_LR.get(name, 3e-3))
    run = jax.jit(lambda t, k: train(t, optimizer, SMOKE_STEPS, k, eval_every=SMOKE_STEPS))
    state, metrics = run(task, jax.random.key(0))
    assert metrics["train_loss"].shape == (SMOKE_STEPS,)
    assert np.isfinite(metrics["train_loss"]).all()
    assert jax.tree.structure(state.params) == jax.tree.structure(params)
    assert set(aux) <= {metric.removeprefix("valid_") for metric in metrics}
    before, after = metrics["valid_loss"]
    assert after < before, f"{name}: valid loss {before} -> {after} did not fall"
    assert int(state.step) == SMOKE_STEPS


def test_at_least_twelve_tasks_and_offline_ones_need_no_files(monkeypatch, tmp_path):
    assert len(list_tasks()) >= 12
    monkeypatch.setenv("L2O_DATA_DIR", str(tmp_path / "empty"))
    for name in OFFLINE_TASKS:
        get_task(name)  # must not touch the data folder or the network
    assert not (tmp_path / "empty").exists()


def test_unknown_task_lists_valid_names():
    with pytest.raises(UnknownNameError) as e:
        get_task("mnist_mlpp")
    assert "digits_mlp" in str(e.value) and "rosenbrock" in str(e.value)


def test_unknown_override_lists_valid_options():
    with pytest.raises(UnknownNameError, match="hidden"):
        get_task("digits_mlp", widht=3)


def test_overrides_change_the_task():
    small = get_task("digits_mlp", hidden=(8,), batch_size=16)
    params = small.init(jax.random.key(0))
    assert tasks.num_params(params) == 64 * 8 + 8 + 8 * 10 + 10
    assert small.sample_batch(jax.random.key(0))[0].shape[0] == 16
    assert task_overrides("digits_mlp")["hidden"] == (32,)
    assert describe("nqm").startswith("Noisy quadratic")


def test_evaluation_of_a_small_split_is_the_whole_split_in_order():
    task = get_task("digits_mlp")
    params = task.init(jax.random.key(0))
    a = task.evaluate(params, jax.random.key(1), "test")
    b = task.evaluate(params, jax.random.key(2), "test")
    assert a["loss"] == b["loss"] and a["accuracy"] == b["accuracy"]
    x, y = task.sample_batch(jax.random.key(3), "test", task.eval_batch_size)
    assert x.shape[0] == 500


def test_inputs_are_standardized_with_training_statistics():
    task = get_task("mnist1d_mlp")
    x, _ = task.sample_batch(jax.random.key(0), "train", 2000)
    assert abs(float(x.mean())) < 0.1 and abs(float(x.std()) - 1.0) < 0.1


def test_unknown_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        get_task("rosenbrock").sample_batch(jax.random.key(0), "validation")
