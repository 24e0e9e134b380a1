"""Lion, the sign-momentum optimizer found by symbolic program search (Chen et al. 2023, "Symbolic
Discovery of Optimization Algorithms")."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class LionState(NamedTuple):
    """The momentum `mu`, an EMA of the gradients with decay `b2`."""

    mu: optax.Updates


def scale_by_lion(b1: float = 0.9, b2: float = 0.99) -> optax.GradientTransformation:
    """`sign(b1 mu_{t-1} + (1 - b1) g_t)`, then `mu_t = b2 mu_{t-1} + (1 - b2) g_t`."""

    def init_fn(params: optax.Params) -> LionState:
        return LionState(mu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        direction = jax.tree.map(lambda m, g: jnp.sign((1 - b1) * g + b1 * m), state.mu, updates)
        mu = jax.tree.map(lambda m, g: (1 - b2) * g + b2 * m, state.mu, updates)
        return direction, LionState(mu=optax.tree.cast_like(mu, state.mu))

    return optax.GradientTransformation(init_fn, update_fn)


def lion(
    learning_rate: optax.ScalarOrSchedule = 1e-4,
    b1: float = 0.9,
    b2: float = 0.99,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Lion (EvoLved Sign Momentum): a sign update of an interpolated momentum.

    The paper's Program 1, with decoupled weight decay :math:`\lambda`:

    .. math::

        c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
        \theta_t &= \theta_{t-1} - \eta_t (\operatorname{sign}(c_t) + \lambda \theta_{t-1}) \\
        m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

    Every coordinate moves by exactly :math:`\eta_t` (plus decay), so the learning rate is
    typically 3-10x smaller than AdamW's and :math:`\lambda` 3-10x larger. Same as optax's
    ``lion`` (whose default :math:`\lambda` is 1e-3; the authors' code defaults to 0).

    Args:
      learning_rate: the step size :math:`\eta_t` (the authors' 1e-4), a float or an optax
        schedule.
      b1: :math:`\beta_1`, the interpolation of momentum and gradient inside the sign.
      b2: :math:`\beta_2`, the decay of the momentum.
      weight_decay: :math:`\lambda`, multiplied by the learning rate.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Chen et al., "Symbolic Discovery of Optimization Algorithms", NeurIPS 2023.
    """
    return optax.chain(
        scale_by_lion(b1, b2),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
