"""Recording what an optimizer does while it trains: the weights, gradients and updates of every
step of the project's inner loop (`tasks.train`), the streams a symbolic rule is distilled from
(`search.distill`).

Every step is kept, because a rule's state (momenta, second moments) needs the whole gradient
history, and every coordinate, because its reductions and matrix ops need whole tensors: a run of
`T` steps of a task with `n` parameters holds `3 T n` float32 numbers (1,000 steps of a 10,000-
parameter MLP: 120 MB). Record short runs of small tasks.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import optax

from search.distill import Stream
from tasks import Task
from tasks.train import init_state, optimizer_update, train_step


class RecordingState(NamedTuple):
    """The wrapped optimizer's state and the gradients and updates of its last step."""

    inner: optax.OptState
    grads: optax.Updates
    updates: optax.Updates


def recording(
    optimizer: optax.GradientTransformation,
) -> optax.GradientTransformationExtraArgs:
    """`optimizer` unchanged, its state extended by the last gradients it got and updates it
    gave (so that the inner loop's own step records them); extra arguments pass through."""

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        return RecordingState(optimizer.init(params), zeros, zeros)

    def update_fn(grads, state, params=None, **extra_args):
        updates, inner = optimizer_update(optimizer, grads, state.inner, params, **extra_args)
        return updates, RecordingState(inner, grads, updates)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def record(
    task: Task, optimizer: optax.GradientTransformation, num_steps: int, key: jax.Array
) -> tuple[Stream, jax.Array]:
    """Train `task` with `optimizer` for `num_steps` steps from `key`, as `tasks.train` does (the
    same initial weights and batches), and record each step's weights `w_t` (before the step),
    gradient `g_t` and update `u_t = -(optax update)`, so that `w_{t+1} = w_t - u_t`.

    Returns:
      The `Stream` (leaves `[num_steps, *shape]`) and the training losses `[num_steps]`; wrap
      the call in `jax.jit` yourself.
    """
    init_key, run_key = jax.random.split(key)
    optimizer = recording(optimizer)
    state = init_state(task, optimizer, init_key)

    def step(state, _):
        new, loss = train_step(task, optimizer, state, run_key, total_steps=num_steps)
        recorded = new.opt_state
        us = jax.tree.map(lambda u: -u, recorded.updates)
        return new, (state.params, recorded.grads, us, loss)

    _, (ws, gs, us, losses) = jax.lax.scan(step, state, None, length=num_steps)
    return Stream(ws, gs, us), losses
