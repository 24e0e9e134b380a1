"""The inner loop: one scan, vmappable, deterministic, truncatable, passing extra args."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import get_task, init_state, train, unroll
from tasks.train import evaluation_params

STEPS = 40


@pytest.fixture(scope="module")
def digits():
    return get_task("digits_mlp", batch_size=32)


def _train_loss(task, optimizer, key, steps=STEPS):
    return jax.jit(lambda t, k: train(t, optimizer, steps, k)[1]["train_loss"])(task, key)


def test_vmap_over_seeds_equals_separate_runs(digits):
    optimizer = optax.adam(1e-2)
    keys = jax.random.split(jax.random.key(0), 8)
    batched = jax.jit(jax.vmap(lambda k: train(digits, optimizer, STEPS, k)[1]["train_loss"]))
    together = np.asarray(batched(keys))
    apart = np.stack([np.asarray(_train_loss(digits, optimizer, k)) for k in keys])
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)
    assert not np.allclose(apart[0], apart[1])  # the seeds really differ


def test_vmap_over_learning_rates_equals_separate_runs(digits):
    # Stable learning rates: at lr >= 1 SGD is chaotic here and amplifies rounding differences.
    lrs = jnp.array([1e-3, 2e-3, 5e-3, 1e-2, 2e-2, 5e-2, 0.1, 0.2])
    key = jax.random.key(1)

    def run(lr):
        return train(digits, optax.sgd(lr), STEPS, key)[1]["train_loss"]

    together = np.asarray(jax.jit(jax.vmap(run))(lrs))
    apart = np.stack([np.asarray(jax.jit(run)(lr)) for lr in lrs])
    np.testing.assert_allclose(together, apart, rtol=1e-5, atol=1e-6)


def test_same_seed_same_bits_other_seed_other_bits(digits):
    optimizer = optax.adam(1e-2)
    a = _train_loss(digits, optimizer, jax.random.key(7))
    b = _train_loss(get_task("digits_mlp", batch_size=32), optimizer, jax.random.key(7))
    c = _train_loss(digits, optimizer, jax.random.key(8))
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))


def test_truncated_unrolls_continue_the_same_run(digits):
    optimizer = optax.adam(1e-2)
    init_key, run_key = jax.random.split(jax.random.key(3))
    state = init_state(digits, optimizer, init_key)
    half = jax.jit(lambda t, s: unroll(t, optimizer, s, run_key, STEPS // 2, total_steps=STEPS))
    state, first = half(digits, state)
    state, second = half(digits, state)
    full_state, full = jax.jit(lambda t: train(t, optimizer, STEPS, jax.random.key(3)))(digits)
    losses = np.concatenate([first["train_loss"], second["train_loss"]])
    assert np.array_equal(losses, np.asarray(full["train_loss"]))
    assert int(state.step) == STEPS
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(full_state.params), strict=True):
        assert np.array_equal(a, b)


def test_training_reduces_the_loss_and_reports_evaluations(digits):
    optimizer = optax.adam(3e-3)
    _, metrics = jax.jit(lambda t: train(t, optimizer, 250, jax.random.key(0), eval_every=100))(
        digits
    )
    assert metrics["train_loss"].shape == (250,)
    np.testing.assert_array_equal(metrics["eval_step"], [0, 100, 200, 250])
    for name in ("valid_loss", "valid_accuracy", "test_loss", "test_accuracy"):
        assert metrics[name].shape == (4,)
    assert metrics["test_accuracy"][-1] > 0.85 > metrics["test_accuracy"][0]
    assert metrics["train_loss"][-20:].mean() < 0.25 * metrics["train_loss"][:5].mean()


class _RecordState(NamedTuple):
    steps: jax.Array
    num_steps: jax.Array
    losses: jax.Array
    obj_values: jax.Array


def _recorder(total):
    """An identity transform that records the extra args it receives."""

    def init(params):
        zeros = jnp.zeros(total)
        return _RecordState(zeros.astype(jnp.int32), jnp.zeros((), jnp.int32), zeros, zeros)

    def update(updates, state, params=None, *, step, num_steps, loss, obj_fn, **extra):
        return updates, _RecordState(
            state.steps.at[step].set(step),
            jnp.asarray(num_steps, jnp.int32),
            state.losses.at[step].set(loss),
            state.obj_values.at[step].set(obj_fn(params)),
        )

    return optax.GradientTransformationExtraArgs(init, update)


def test_extra_args_reach_optimizers_that_take_them():
    task = get_task("rosenbrock")
    optimizer = optax.chain(_recorder(5), optax.sgd(1e-3))
    state, metrics = jax.jit(lambda t: train(t, optimizer, 5, jax.random.key(0)))(task)
    record = state.opt_state[0]
    np.testing.assert_array_equal(record.steps, np.arange(5))
    assert int(record.num_steps) == 5
    np.testing.assert_allclose(record.losses, metrics["train_loss"], rtol=1e-6)
    np.testing.assert_allclose(record.obj_values, metrics["train_loss"], rtol=1e-6)


def test_plain_gradient_transformation_is_accepted():
    task = get_task("quadratic_k100")
    plain = optax.GradientTransformation(optax.sgd(1e-2).init, optax.sgd(1e-2).update)
    _, metrics = jax.jit(lambda t: train(t, plain, 50, jax.random.key(0)))(task)
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]


def test_a_task_passed_to_jit_does_not_bake_its_data_into_the_program():
    task = get_task("mnist1d_mlp")
    optimizer = optax.sgd(0.1)
    as_argument = jax.jit(lambda t, k: train(t, optimizer, 5, k)).lower(task, jax.random.key(0))
    closed_over = jax.jit(lambda k: train(task, optimizer, 5, k)).lower(jax.random.key(0))
    data_bytes = sum(x.nbytes for x in jax.tree.leaves(task.data))
    assert len(as_argument.as_text()) < data_bytes / 4 < len(closed_over.as_text())


def test_an_optimizer_state_can_name_the_weights_to_evaluate():
    """A state node with `evaluation_params` (schedule-free methods) is evaluated there; any
    other state evaluates the trained params, and training itself is unchanged."""

    class ShiftedState(NamedTuple):
        count: jax.Array

        def evaluation_params(self, params):
            return jax.tree.map(lambda p: p + 100.0, params)

    shifted = optax.GradientTransformation(
        lambda params: ShiftedState(jnp.zeros([], jnp.int32)),
        lambda updates, state, params=None: (updates, ShiftedState(state.count + 1)),
    )
    params = {"w": jnp.ones(3)}
    assert evaluation_params(params, optax.sgd(0.1).init(params)) is params
    chained = optax.chain(optax.sgd(0.1), shifted)
    np.testing.assert_array_equal(
        evaluation_params(params, chained.init(params))["w"], np.full(3, 101.0)
    )
    task = get_task("quadratic_k100")
    key = jax.random.key(0)
    plain = train(task, optax.sgd(1e-3), 10, key, eval_every=5)[1]
    moved = train(task, optax.chain(optax.sgd(1e-3), shifted), 10, key, eval_every=5)[1]
    np.testing.assert_array_equal(plain["train_loss"], moved["train_loss"])
    assert np.all(moved["valid_loss"] > 10 * plain["valid_loss"])
