"""Hyperparameter populations x seeds trained as one vmapped, jitted call per (task, optimizer)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import Task, train

MakeOptimizer = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


def log_grid(low: float, high: float, num: int) -> np.ndarray:
    """`num` values spaced evenly in log10 between `low` and `high` (float32)."""
    return np.logspace(np.log10(low), np.log10(high), num).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(make_optimizer: MakeOptimizer, num_steps: int, eval_every: int):
    """The jitted members x seeds training function, kept so repeated calls do not recompile."""

    def one(task, member, seed):
        optimizer = make_optimizer(member)
        return train(task, optimizer, num_steps, jax.random.key(seed), eval_every=eval_every)[1]

    over_seeds = jax.vmap(one, in_axes=(None, None, 0))
    return jax.jit(jax.vmap(over_seeds, in_axes=(None, 0, None)))


def population_sweep(
    task: Task,
    make_optimizer: MakeOptimizer,
    hparams: Mapping[str, np.ndarray],
    seeds: np.ndarray,
    num_steps: int,
    *,
    eval_every: int = 0,
) -> dict[str, np.ndarray]:
    """`tasks.train` for every member of a hyperparameter population and every seed.

    `hparams` maps names to arrays of shape `[P]` (member p is `{k: v[p]}`); returns the
    metrics of `tasks.train` with leading axes `[P, S]`. One compilation, one call.
    """

    run = _compiled_sweep(make_optimizer, num_steps, eval_every)
    population = {k: jnp.asarray(v, jnp.float32) for k, v in hparams.items()}
    metrics = run(task, population, jnp.asarray(seeds))
    return jax.device_get(metrics)


def lr_seed_sweep(
    task: Task,
    make_optimizer: Callable[[jax.Array], optax.GradientTransformation],
    learning_rates: np.ndarray,
    seeds: np.ndarray,
    num_steps: int,
    *,
    eval_every: int = 0,
) -> dict[str, np.ndarray]:
    """`population_sweep` over learning rates only: metrics with leading axes `[L, S]`."""
    return population_sweep(
        task,
        lambda member: make_optimizer(member["learning_rate"]),
        {"learning_rate": learning_rates},
        seeds,
        num_steps,
        eval_every=eval_every,
    )


def select_best(final_valid_loss_PxS: np.ndarray) -> int:
    """Index of the member with the lowest mean final validation loss (NaN counts as inf)."""
    losses = np.where(np.isfinite(final_valid_loss_PxS), final_valid_loss_PxS, np.inf)
    return int(np.argmin(losses.mean(axis=1)))
