"""Stochastic gradient descent with heavy-ball or Nesterov momentum (Polyak 1964; Nesterov 1983;
Sutskever et al. 2013, "On the importance of initialization and momentum in deep learning")."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import optax


class MomentumState(NamedTuple):
    """The momentum buffer (velocity), one leaf per parameter."""

    mu: optax.Updates


def scale_by_momentum(
    momentum: float = 0.9, nesterov: bool = False
) -> optax.GradientTransformation:
    """`mu_t = momentum mu_{t-1} + g_t`, returned as is or as `g_t + momentum mu_t` (Nesterov)."""

    def init_fn(params: optax.Params) -> MomentumState:
        return MomentumState(mu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: g + momentum * m, state.mu, updates)
        if nesterov:
            updates = jax.tree.map(lambda m, g: g + momentum * m, mu, updates)
        else:
            updates = mu
        return updates, MomentumState(mu=optax.tree.cast_like(mu, state.mu))

    return optax.GradientTransformation(init_fn, update_fn)


def sgd(learning_rate: optax.ScalarOrSchedule = 0.1) -> optax.GradientTransformationExtraArgs:
    r"""Plain (stochastic) gradient descent.

    .. math::

        \theta_{t+1} = \theta_t - \eta_t g_t, \qquad g_t = \nabla_\theta L(\theta_t)

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule of the step count.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Robbins & Monro, "A stochastic approximation method", Ann. Math. Stat. 1951.
    """
    return optax.chain(optax.scale_by_learning_rate(learning_rate))


def momentum(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""SGD with heavy-ball momentum (Polyak 1964).

    In the trace form used by optax and PyTorch, with :math:`\mu` the ``momentum``:

    .. math::

        m_t = \mu m_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \eta_t m_t

    With a constant learning rate this is Polyak's (and the seed lectures')
    :math:`v_{t+1} = \mu v_t - \eta g_t, \theta_{t+1} = \theta_t + v_{t+1}`, with
    :math:`v_t = -\eta m_t`. With a schedule the learning rate multiplies the whole buffer
    (optax's and PyTorch's convention), not each gradient as it enters.

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      momentum: the decay :math:`\mu` of the velocity (commonly 0.8 to 0.99).
      nesterov: use Nesterov's look-ahead form instead (see `nesterov`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Polyak, "Some methods of speeding up the convergence of iteration methods", USSR Comput.
      Math. Math. Phys. 1964.
    """
    return optax.chain(
        scale_by_momentum(momentum, nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )


nesterov = functools.partial(momentum, nesterov=True)
nesterov.__doc__ = r"""SGD with Nesterov's accelerated gradient, in Sutskever et al.'s form.

    Sutskever et al. write NAG as :math:`v_{t+1} = \mu v_t - \eta \nabla L(\theta_t + \mu v_t)`;
    in the shifted variable :math:`\theta + \mu v` (Bengio et al. 2013, optax, PyTorch) only the
    gradient at the current iterate is needed:

    .. math::

        m_t = \mu m_{t-1} + g_t, \qquad \theta_{t+1} = \theta_t - \eta_t (g_t + \mu m_t)

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      momentum: the decay :math:`\mu` of the velocity.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Nesterov, "A method for solving the convex programming problem with convergence rate
      O(1/k^2)", Soviet Math. Dokl. 1983.
      Sutskever, Martens, Dahl & Hinton, "On the importance of initialization and momentum in deep
      learning", ICML 2013.
    """
