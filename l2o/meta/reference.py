"""The per-task normalizer of a validation meta-objective: tuned AdamW's validation loss at every
evaluation step (Celo2 and learned_optimization normalize each task so none dominates)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from baselines import get_optimizer
from l2o.meta.objective import MetaObjective
from tasks import Task, train

LEARNING_RATES = tuple(float(x) for x in np.geomspace(1e-4, 1e-1, 7))
"""AdamW's learning rates, a factor ~3.2 apart; the reference takes the best at each step."""
SEEDS = 2
REFERENCE_SEED = 20_000
"""Keys of the reference runs: fixed, and far from meta-training's and the held-out seeds."""


def adamw_reference(
    task: Task,
    obj: MetaObjective,
    learning_rates: tuple[float, ...] = LEARNING_RATES,
    seeds: int = SEEDS,
) -> jax.Array:
    r"""Tuned AdamW's validation loss after :math:`(i + 1) k` steps, :math:`k` =
    `obj.eval_every`, up to `obj.horizon`: `[horizon // k]` float32.

    .. math::

        r_i = \min_{\eta} \frac{1}{S} \sum_{s=1}^{S} L_\mathrm{valid}(\eta, s, (i + 1) k)

    over the constant learning rates :math:`\eta` (`learning_rates`) and :math:`S` seeds: at each
    step, the best AdamW run of the grid, so a run of any length is compared with AdamW tuned for
    that length.
    """
    every = obj.eval_every

    def losses(task, learning_rate, key):
        optimizer = get_optimizer("adamw", learning_rate=learning_rate)
        _, metrics = train(
            task, optimizer, obj.horizon, key, eval_every=every, eval_splits=("valid",)
        )
        return metrics["valid_loss"][-(obj.horizon // every) :]  # after k, 2k, ..., horizon steps

    keys = jax.random.split(jax.random.key(REFERENCE_SEED), seeds)
    grid = jax.vmap(jax.vmap(losses, in_axes=(None, None, 0)), in_axes=(None, 0, None))
    lrs = jnp.asarray(learning_rates, jnp.float32)
    curves = jax.jit(grid)(task, lrs, keys)  # [L, S, K]; the dataset an argument, not a constant
    mean = jnp.mean(jnp.where(jnp.isfinite(curves), curves, jnp.inf), axis=1)
    return jnp.min(mean, axis=0)
