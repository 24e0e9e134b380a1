"""The inner loop: a whole training run is one `jax.lax.scan`, pure and vmappable (purejaxrl style).

Step `t` draws its batch and loss keys from `fold_in(run_key, t)`, so a run cut into truncated
`unroll` calls sees exactly the batches of one uninterrupted `train`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from tasks.base import Batch, Params, Task

GradFn = Callable[[Task, Params, jax.Array, Batch], tuple[jax.Array, Params]]
EVAL_SPLITS = ("valid", "test")


class TrainState(NamedTuple):
    """Inner state carried between steps and between truncated unrolls."""

    params: Params
    opt_state: optax.OptState
    step: jax.Array


def backprop(task: Task, params: Params, key: jax.Array, batch: Batch):
    """Exact gradient by reverse-mode autodiff: `(loss, grads)`."""
    (loss, _), grads = jax.value_and_grad(task.loss, has_aux=True)(params, key, batch)
    return loss, grads


def init_state(task: Task, optimizer: optax.GradientTransformation, key: jax.Array) -> TrainState:
    """Fresh params from `task.init(key)`, the optimizer state, step 0."""
    params = task.init(key)
    return TrainState(params, optimizer.init(params), jnp.zeros((), jnp.int32))


def step_keys(run_key: jax.Array, step: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(batch, loss, evaluation) keys of step `step`."""
    batch_key, loss_key, eval_key = jax.random.split(jax.random.fold_in(run_key, step), 3)
    return batch_key, loss_key, eval_key


def optimizer_update(
    optimizer: optax.GradientTransformation,
    grads: Params,
    opt_state: optax.OptState,
    params: Params,
    **extra_args,
):
    """`optimizer.update`, passing `extra_args` only to transforms that accept them."""
    if isinstance(optimizer, optax.GradientTransformationExtraArgs):
        return optimizer.update(grads, opt_state, params, **extra_args)
    return optimizer.update(grads, opt_state, params)


def train_step(
    task: Task,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    run_key: jax.Array,
    *,
    total_steps: int,
    grad_fn: GradFn = backprop,
) -> tuple[TrainState, jax.Array]:
    """One optimizer step on a fresh training batch; returns the new state and the batch loss.

    Optimizers taking extra args get `loss`, `obj_fn` (the batch loss as a function of params),
    `step` and `num_steps`, and optax's names for the same (`value`, `grad`, `value_fn`), so
    optax's line-search optimizers run unchanged.
    """
    batch_key, loss_key, _ = step_keys(run_key, state.step)
    batch = task.sample_batch(batch_key, "train")
    loss, grads = grad_fn(task, state.params, loss_key, batch)

    def obj_fn(p):
        return task.loss(p, loss_key, batch)[0]

    updates, opt_state = optimizer_update(
        optimizer,
        grads,
        state.opt_state,
        state.params,
        loss=loss,
        obj_fn=obj_fn,
        step=state.step,
        num_steps=total_steps,
        value=loss,
        grad=grads,
        value_fn=obj_fn,
    )
    params = optax.apply_updates(state.params, updates)
    return TrainState(params, opt_state, state.step + 1), loss


def evaluate_splits(
    task: Task, params: Params, key: jax.Array, splits: Sequence[str] = EVAL_SPLITS
) -> dict[str, jax.Array]:
    """`{split}_{metric}` for each split, e.g. `valid_loss`, `test_accuracy`."""
    out = {}
    for split, k in zip(splits, jax.random.split(key, len(splits)), strict=True):
        for name, value in task.evaluate(params, k, split).items():
            out[f"{split}_{name}"] = value
    return out


def _defines_evaluation_params(node) -> bool:
    return callable(getattr(node, "evaluation_params", None))


def evaluation_params(params: Params, opt_state: optax.OptState) -> Params:
    """The weights to evaluate: `params`, unless a node of `opt_state` defines
    `evaluation_params(params)`, as schedule-free methods do (they take gradients at an
    interpolation y and evaluate the average x; Defazio et al. 2024)."""
    nodes = jax.tree.leaves(opt_state, is_leaf=_defines_evaluation_params)
    found = [node for node in nodes if _defines_evaluation_params(node)]
    if len(found) > 1:
        raise ValueError(f"{len(found)} optimizer states name the weights to evaluate; expected 1")
    return found[0].evaluation_params(params) if found else params


def evaluate_state(
    task: Task, state: TrainState, run_key: jax.Array, splits: Sequence[str] = EVAL_SPLITS
) -> dict[str, jax.Array]:
    """`evaluate_splits` of the state's `evaluation_params` with the evaluation key of its step,
    plus `eval_step`."""
    _, _, eval_key = step_keys(run_key, state.step)
    params = evaluation_params(state.params, state.opt_state)
    return {**evaluate_splits(task, params, eval_key, splits), "eval_step": state.step}


def unroll(
    task: Task,
    optimizer: optax.GradientTransformation,
    state: TrainState,
    run_key: jax.Array,
    num_steps: int,
    *,
    total_steps: int,
    grad_fn: GradFn = backprop,
    eval_every: int = 0,
    eval_splits: Sequence[str] = EVAL_SPLITS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`num_steps` steps from `state` (a truncated run); metrics hold `train_loss [num_steps]`.

    With `eval_every > 0`, the params are also evaluated after every `eval_every` steps and
    after the last one: `{split}_{metric}` and `eval_step`, each of shape `[num_evals]`.
    """

    def one_step(s, _):
        return train_step(task, optimizer, s, run_key, total_steps=total_steps, grad_fn=grad_fn)

    def steps(s, n):
        return jax.lax.scan(one_step, s, None, length=n)

    if eval_every <= 0:
        state, losses = steps(state, num_steps)
        return state, {"train_loss": losses}

    def chunk(s, _):
        s, losses = steps(s, eval_every)
        return s, (losses, evaluate_state(task, s, run_key, eval_splits))

    num_chunks, rest = divmod(num_steps, eval_every)
    losses, evals = [], []
    if num_chunks:
        state, (chunk_losses, chunk_evals) = jax.lax.scan(chunk, state, None, length=num_chunks)
        losses.append(chunk_losses.reshape(-1))
        evals.append(chunk_evals)
    if rest:
        state, rest_losses = steps(state, rest)
        losses.append(rest_losses)
        evals.append(
            jax.tree.map(lambda x: x[None], evaluate_state(task, state, run_key, eval_splits))
        )
    metrics = jax.tree.map(lambda *xs: jnp.concatenate(xs), *evals)
    return state, {"train_loss": jnp.concatenate(losses), **metrics}


def train(
    task: Task,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    key: jax.Array,
    *,
    grad_fn: GradFn = backprop,
    eval_every: int = 0,
    eval_splits: Sequence[str] = EVAL_SPLITS,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """A whole training run from `key`: `(final state, metrics)`; wrap it in `jax.jit` yourself.

    Metrics hold `train_loss` of shape `[num_steps]`; with `eval_every > 0` also the evaluations
    of `unroll`, preceded by one of the initial params (at `eval_step` 0).
    """
    init_key, run_key = jax.random.split(key)
    state = init_state(task, optimizer, init_key)
    first = evaluate_state(task, state, run_key, eval_splits) if eval_every > 0 else {}
    state, metrics = unroll(
        task,
        optimizer,
        state,
        run_key,
        num_steps,
        total_steps=num_steps,
        grad_fn=grad_fn,
        eval_every=eval_every,
        eval_splits=eval_splits,
    )
    for name, value in first.items():
        metrics[name] = jnp.concatenate([value[None], metrics[name]])
    return state, metrics
