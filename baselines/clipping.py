"""Gradient clipping by global norm and by value (seed 002; Pascanu, Mikolov & Bengio 2013).

Clipping guards against the "cliffs" of a loss surface, where one huge gradient would throw the
parameters far away: the step keeps its direction but not its size. Both are stateless
transforms; chain them before the optimizer: `optax.chain(clip_by_global_norm(1.0), adam)`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

Scalar = float | jax.Array


def global_norm(tree: optax.Updates) -> jax.Array:
    """||g|| = sqrt(sum over all leaves and entries of g^2), with a finite gradient at g = 0."""
    sq = sum((jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)), jnp.zeros((), jnp.float32))
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def clip_by_global_norm(max_norm: Scalar) -> optax.GradientTransformationExtraArgs:
    """Rescale the whole update pytree so that its global norm is at most `max_norm`.

    g <- g * min(1, c / ||g||), with ||g|| the l2 norm over all leaves and c = `max_norm`: the
    direction is kept, and an update already inside the ball is unchanged (Pascanu et al. 2013,
    Algorithm 1, "On the difficulty of training recurrent neural networks"; seed 002).

    Args:
      max_norm: the largest allowed global norm c > 0.

    Returns:
      A stateless `optax.GradientTransformationExtraArgs`.

    References:
      Pascanu, Mikolov & Bengio 2013, https://arxiv.org/abs/1211.5063
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        norm = global_norm(updates)
        clip = norm > max_norm
        scale = jnp.where(clip, max_norm / jnp.where(clip, norm, 1.0), 1.0)
        return jax.tree.map(lambda g: (g * scale).astype(g.dtype), updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)


def clip_by_value(max_delta: Scalar) -> optax.GradientTransformationExtraArgs:
    """Clip every entry of the update to [-max_delta, max_delta].

    g_i <- min(max(g_i, -d), d) with d = `max_delta`; unlike the global norm this changes the
    update's direction (seed 002; Mikolov 2012, the element-wise variant Pascanu et al. 2013
    compare against).

    Args:
      max_delta: the largest allowed magnitude d > 0 of any entry.

    Returns:
      A stateless `optax.GradientTransformationExtraArgs`.

    References:
      Pascanu, Mikolov & Bengio 2013, https://arxiv.org/abs/1211.5063
    """

    def update_fn(updates, state, params=None, **extra_args):
        del params, extra_args
        clipped = jax.tree.map(
            lambda g: jnp.clip(g, -max_delta, max_delta).astype(g.dtype), updates
        )
        return clipped, state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update_fn)
