"""Adam with meta-learned hyperparameters, a sanity baseline for meta-training (Kingma & Ba 2015,
"Adam: A Method for Stochastic Optimization")."""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

Theta = dict[str, jax.Array]
EPS_ROOT = 1e-16
"""Under the root so the derivative stays finite where `nu = 0` (differentiating an unroll)."""


@dataclasses.dataclass(frozen=True)
class LearnableAdamConfig:
    """Initial hyperparameters (theta starts at them).

    Attributes:
      learning_rate: initial `eta`, stored as `log_lr`.
      b1: initial first-moment decay, stored as `logit_b1`.
      b2: initial second-moment decay, stored as `logit_b2`.
      eps: initial `eps`, stored as `log_eps`.
    """

    learning_rate: float = 3e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8

    def __post_init__(self):
        if not (self.learning_rate > 0 and self.eps > 0 and 0 < self.b1 < 1 and 0 < self.b2 < 1):
            raise ValueError("LearnableAdamConfig needs learning_rate, eps > 0, b1, b2 in (0, 1)")


class LearnableAdamState(NamedTuple):
    """Step count and the float32 EMAs of the gradients (`mu`) and of their squares (`nu`)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


def _logit(x: float) -> float:
    return math.log(x / (1.0 - x))


def make_learnable_adam(
    config: LearnableAdamConfig = LearnableAdamConfig(),
) -> tuple[Callable[[jax.Array], Theta], Callable[[Theta], optax.GradientTransformationExtraArgs]]:
    r"""Adam whose learning rate, decays and epsilon are meta-parameters: `(init_theta, transform)`.

    .. math::

        \eta = e^{\theta_{\log\eta}}, \quad \beta_i = \sigma(\theta_{\beta_i}), \quad
        \epsilon = e^{\theta_{\log\epsilon}} \\
        \Delta\theta_t = -\eta \, \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon},
        \qquad \bar\epsilon = 10^{-16}

    with Adam's bias-corrected moments. Init: theta holds the config's values, so the untrained
    optimizer is Adam(`learning_rate`, `b1`, `b2`, `eps`) up to the negligible
    :math:`\bar\epsilon`. Extras are accepted and ignored; `params` may be None.

    Args:
      config: the initial hyperparameters, a `LearnableAdamConfig`.

    Returns:
      `init_theta(key) -> theta` (four float32 scalars: `log_lr`, `logit_b1`, `logit_b2`,
      `log_eps`) and `transform(theta) -> optax.GradientTransformationExtraArgs`.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def init_theta(key: jax.Array) -> Theta:
        del key
        values = {
            "log_lr": math.log(config.learning_rate),
            "logit_b1": _logit(config.b1),
            "logit_b2": _logit(config.b2),
            "log_eps": math.log(config.eps),
        }
        return {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}

    def transform(theta: Theta) -> optax.GradientTransformationExtraArgs:
        def init_fn(params: optax.Params) -> LearnableAdamState:
            zeros = jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params)
            return LearnableAdamState(jnp.zeros([], jnp.int32), zeros, zeros)

        def update_fn(updates, state, params=None, **extra_args):
            del params, extra_args
            lr, eps = jnp.exp(theta["log_lr"]), jnp.exp(theta["log_eps"])
            b1, b2 = jax.nn.sigmoid(theta["logit_b1"]), jax.nn.sigmoid(theta["logit_b2"])
            count = optax.safe_increment(state.count)
            t = count.astype(jnp.float32)
            f32 = functools.partial(jnp.asarray, dtype=jnp.float32)
            mu = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * f32(g), state.mu, updates)
            nu = jax.tree.map(
                lambda v, g: b2 * v + (1 - b2) * jnp.square(f32(g)), state.nu, updates
            )

            def step(m, v, g):
                m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
                return (-lr * m_hat / (jnp.sqrt(v_hat + EPS_ROOT) + eps)).astype(g.dtype)

            new_updates = jax.tree.map(step, mu, nu, updates)
            return new_updates, LearnableAdamState(count, mu, nu)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return init_theta, transform
