"""Task augmentation by parameter rescaling (Metz et al. 2022, "VeLO: Training versatile learned
optimizers by scaling up", task augmentation; learned_optimization's reparameterized weights).

A rescaled task is the same problem in other coordinates: with a fixed positive scale `s` per
parameter tensor, the optimizer sees `p' = p / s` and the loss `L'(p') = L(s p')`, so its
gradient is `s g`. A learned optimizer meta-trained over random scales must cope with
parameters and gradients whose magnitudes it cannot assume.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from tasks.base import Params, Task


def param_scales(key: jax.Array, params: Params, log10_range: float) -> Params:
    """One scale per tensor, `s = 10^u` with `u ~ Uniform(-log10_range, log10_range)`."""
    leaves, treedef = jax.tree.flatten(params)
    u = jax.random.uniform(key, (len(leaves),), minval=-log10_range, maxval=log10_range)
    scales = [
        jnp.asarray(10.0**ui, jnp.result_type(leaf)) for ui, leaf in zip(u, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, scales)


def rescale_params(task: Task, scales: Params) -> Task:
    """`task` in the coordinates `p' = p / s`: `init' = init / s`, `loss'(p') = loss(s p')`.

    The scales travel in the task's `data` (a pytree leaf), so a rescaled task can be built and
    passed around inside `jax.jit` with traced scales. DFA's layered view does not carry over.
    """

    def init(key):
        return jax.tree.map(jnp.divide, task.init(key), scales)

    def sampler(data, key, split, batch_size):
        inner, s = data
        return task.sampler(inner, key, split, batch_size), s

    def loss(params, key, batch_and_scales):
        batch, s = batch_and_scales
        return task.loss(jax.tree.map(jnp.multiply, params, s), key, batch)

    return task.replace(
        name=f"{task.name}_rescaled", init=init, loss=loss, sampler=sampler,
        data=(task.data, scales), layered=None,
    )  # fmt: skip
