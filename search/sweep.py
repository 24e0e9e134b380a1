"""Hyperparameter populations x seeds trained as one vmapped, jitted call per (task, optimizer)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from tasks import Task, train
from tasks.sharding import device_mesh, shard_population

MakeOptimizer = Callable[[Mapping[str, jax.Array]], optax.GradientTransformation]


def log_grid(low: float, high: float, num: int) -> np.ndarray:
    """`num` values spaced evenly in log10 between `low` and `high` (float32)."""
    return np.logspace(np.log10(low), np.log10(high), num).astype(np.float32)


@functools.lru_cache(maxsize=32)
def _compiled_sweep(make_optimizer: MakeOptimizer, num_steps: int, eval_every: int, mesh: Mesh):
    """The jitted training function of a flat list of (member, seed) runs, split over the
    devices of `mesh`; kept so repeated calls do not recompile."""

    def one(task, member, seed):
        optimizer = make_optimizer(member)
        return train(task, optimizer, num_steps, jax.random.key(seed), eval_every=eval_every)[1]

    runs = jax.vmap(one, in_axes=(None, 0, 0))
    return jax.jit(shard_population(runs, mesh, in_axes=(None, 0, 0)))


def population_sweep(
    task: Task,
    make_optimizer: MakeOptimizer,
    hparams: Mapping[str, np.ndarray],
    seeds: np.ndarray,
    num_steps: int,
    *,
    eval_every: int = 0,
    mesh: Mesh | None = None,
) -> dict[str, np.ndarray]:
    """`tasks.train` for every member of a hyperparameter population and every seed.

    `hparams` maps names to arrays of shape `[P]` (member p is `{k: v[p]}`); returns the
    metrics of `tasks.train` with leading axes `[P, S]`. One compilation, one call: the P x S
    runs are split over the devices of `mesh` (default: every device of every process).
    """
    mesh = device_mesh() if mesh is None else mesh
    run = _compiled_sweep(make_optimizer, num_steps, eval_every, mesh)
    seeds = np.asarray(seeds)
    num_members, num_seeds = len(next(iter(hparams.values()))), len(seeds)
    population = {k: jnp.asarray(np.repeat(v, num_seeds), jnp.float32) for k, v in hparams.items()}
    metrics = jax.device_get(run(task, population, jnp.asarray(np.tile(seeds, num_members))))
    return {k: v.reshape(num_members, num_seeds, *v.shape[1:]) for k, v in metrics.items()}


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
