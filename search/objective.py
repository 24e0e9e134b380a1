"""The tuning objective: the final validation loss after `num_steps`, mean over seeds, with NaN
and inf turned into one finite penalty (the only place this happens)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from search.spaces import Space
from search.sweep import population_sweep
from tasks import Task

MakeOptimizer = Callable[[Mapping[str, Any]], optax.GradientTransformation]

# Worse than any loss worth keeping; finite losses above it are clipped to it, so it ranks last.
PENALTY = 1e10


def penalize_nonfinite(values: jax.Array | np.ndarray, penalty: float = PENALTY) -> jax.Array:
    """NaN, +-inf and anything above `penalty` become `penalty` (jittable)."""
    values = jnp.asarray(values)
    return jnp.where(jnp.isfinite(values), jnp.minimum(values, penalty), penalty)


def objective_values(valid_loss_PxS: np.ndarray) -> np.ndarray:
    """The objective of each member from its final validation losses `[P, S]` over seeds."""
    return np.asarray(penalize_nonfinite(np.mean(valid_loss_PxS, axis=-1)), np.float64)


def with_fixed(make_optimizer: MakeOptimizer, space: Space) -> MakeOptimizer:
    """`make_optimizer` of a member's searched values plus the space's fixed values."""
    fixed = dict(space.fixed)

    def make(member: Mapping[str, Any]) -> optax.GradientTransformation:
        return make_optimizer({**fixed, **member})

    return make


def as_population(values: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A population as the float32 arrays that are actually trained (and recorded)."""
    return {k: np.asarray(v, np.float32) for k, v in values.items()}


def evaluate_population(
    task: Task,
    make_member: MakeOptimizer,
    population: Mapping[str, np.ndarray],
    seeds: Sequence[int],
    num_steps: int,
    *,
    chunk_size: int | None = None,
    on_chunk: Callable[[int], None] = lambda done: None,
) -> np.ndarray:
    """The objective `[P]` of every member, in `population_sweep` calls of `chunk_size` members.

    `on_chunk(members_done)` is called after each call (for progress bars).
    """
    num = len(next(iter(population.values())))
    chunk_size = chunk_size or num
    out = []
    for start in range(0, num, chunk_size):
        part = {k: v[start : start + chunk_size] for k, v in population.items()}
        metrics = population_sweep(
            task, make_member, part, np.asarray(seeds), num_steps, eval_every=num_steps
        )
        out.append(objective_values(metrics["valid_loss"][..., -1]))
        on_chunk(min(start + chunk_size, num))
    return np.concatenate(out)
