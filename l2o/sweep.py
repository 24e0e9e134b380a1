"""Learning-rate x seed sweeps as one vmapped, jitted call per (task, optimizer)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import Task, train


def log_grid(low: float, high: float, num: int) -> np.ndarray:
    """`num` learning rates spaced evenly in log10 between `low` and `high`."""
    return np.logspace(np.log10(low), np.log10(high), num).astype(np.float32)


def lr_seed_sweep(
    task: Task,
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
    learning_rates: np.ndarray,
    seeds: np.ndarray,
    num_steps: int,
    *,
    eval_every: int = 0,
) -> dict[str, np.ndarray]:
    """`tasks.train` for every (learning rate, seed): metrics with leading axes `[L, S]`."""

    def one(task, lr, seed):
        optimizer = make_optimizer(lr)
        return train(task, optimizer, num_steps, jax.random.key(seed), eval_every=eval_every)[1]

    over_seeds = jax.vmap(one, in_axes=(None, None, 0))
    over_lrs = jax.vmap(over_seeds, in_axes=(None, 0, None))
    metrics = jax.jit(over_lrs)(task, jnp.asarray(learning_rates), jnp.asarray(seeds))
    return jax.device_get(metrics)


def select_best(final_valid_loss_LxS: np.ndarray) -> int:
    """Index of the learning rate with the lowest mean final validation loss (NaN counts as inf)."""
    losses = np.where(np.isfinite(final_valid_loss_LxS), final_valid_loss_LxS, np.inf)
    return int(np.argmin(losses.mean(axis=1)))
