"""Recording an optimizer's training run: the shapes of the streams, and replaying the recorded
updates reproduces the trajectory of `tasks.train`."""

import functools

import jax
import numpy as np
import optax

from l2o.evaluation.recording import record
from tasks import get_task, train

STEPS = 6


def _run(optimizer):
    task = get_task("digits_mlp", hidden=[4])
    key = jax.random.key(3)
    stream, losses = jax.jit(lambda k: record(task, optimizer, STEPS, k))(key)
    state, metrics = jax.jit(lambda k: train(task, optimizer, STEPS, k))(key)
    return task, stream, losses, state, metrics


def test_streams_have_a_row_per_step_and_replay_the_training_run():
    task, stream, losses, state, metrics = _run(optax.adam(1e-2))
    params = task.init(jax.random.key(0))
    for part in stream:
        shapes = jax.tree.map(lambda x: x.shape, part)
        assert shapes == jax.tree.map(lambda p: (STEPS, *p.shape), params)
    np.testing.assert_array_equal(losses, metrics["train_loss"])
    # w_{t+1} = w_t - u_t (up to the rounding of a fused multiply-add), and the last update
    # lands on tasks.train's final weights
    after = jax.tree.map(lambda w, u: w - u, stream.ws, stream.us)
    close = functools.partial(np.testing.assert_allclose, rtol=1e-6, atol=1e-7)
    jax.tree.map(lambda a, w: close(a[:-1], w[1:]), after, stream.ws)
    jax.tree.map(lambda a, p: close(a[-1], p), after, state.params)


def test_recorded_updates_are_the_optimizers_on_the_recorded_gradients():
    _, stream, _, _, _ = _run(optax.sgd(0.1))
    jax.tree.map(lambda u, g: np.testing.assert_allclose(u, 0.1 * g, rtol=1e-6), stream.us,
                 stream.gs)  # fmt: skip
