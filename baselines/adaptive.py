"""Per-coordinate adaptive step sizes from squared-gradient statistics: AdaGrad (Duchi et al.
2011), AdaDelta (Zeiler 2012) and RMSProp (Hinton 2012; centered: Graves 2013)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdaGradState(NamedTuple):
    """The running sum of squared gradients."""

    nu: optax.Updates


class AdaDeltaState(NamedTuple):
    """EMAs of the squared gradients (`nu`) and of the squared updates (`nu_delta`)."""

    nu: optax.Updates
    nu_delta: optax.Updates


class RMSPropState(NamedTuple):
    """EMAs of the gradients (`mu`, only when centered, else None) and squared gradients (`nu`)."""

    mu: optax.Updates | None
    nu: optax.Updates


def scale_by_adagrad(
    initial_accumulator_value: float = 0.1, eps: float = 1e-7
) -> optax.GradientTransformation:
    """`g_t / sqrt(nu_t + eps)` with `nu_t = nu_{t-1} + g_t^2` (0 where `nu_t` is 0)."""

    def init_fn(params: optax.Params) -> AdaGradState:
        return AdaGradState(nu=optax.tree.full_like(params, initial_accumulator_value))

    def update_fn(updates, state, params=None):
        del params
        nu = jax.tree.map(lambda n, g: n + g * g, state.nu, updates)
        updates = jax.tree.map(
            lambda n, g: jnp.where(n > 0, jax.lax.rsqrt(n + eps), 0.0) * g, nu, updates
        )
        return updates, AdaGradState(nu=optax.tree.cast_like(nu, state.nu))

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adadelta(rho: float = 0.95, eps: float = 1e-6) -> optax.GradientTransformation:
    """Zeiler's `RMS[Delta theta]_{t-1} / RMS[g]_t * g_t`, both RMS with `eps` under the root."""

    def init_fn(params: optax.Params) -> AdaDeltaState:
        zeros = optax.tree.zeros_like(params)
        return AdaDeltaState(nu=zeros, nu_delta=zeros)

    def update_fn(updates, state, params=None):
        del params
        nu = jax.tree.map(lambda n, g: rho * n + (1 - rho) * g * g, state.nu, updates)
        delta = jax.tree.map(
            lambda n, d, g: jnp.sqrt(d + eps) / jnp.sqrt(n + eps) * g, nu, state.nu_delta, updates
        )
        nu_delta = jax.tree.map(lambda d, x: rho * d + (1 - rho) * x * x, state.nu_delta, delta)
        new_state = AdaDeltaState(
            nu=optax.tree.cast_like(nu, state.nu),
            nu_delta=optax.tree.cast_like(nu_delta, state.nu_delta),
        )
        return delta, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_rms(
    decay: float = 0.9, eps: float = 1e-8, initial_scale: float = 0.0, centered: bool = False
) -> optax.GradientTransformation:
    """`g_t / sqrt(nu_t + eps)`, or `g_t / sqrt(nu_t - mu_t^2 + eps)` when `centered`."""

    def init_fn(params: optax.Params) -> RMSPropState:
        mu = optax.tree.zeros_like(params) if centered else None
        return RMSPropState(mu=mu, nu=optax.tree.full_like(params, initial_scale))

    def update_fn(updates, state, params=None):
        del params
        nu = jax.tree.map(lambda n, g: decay * n + (1 - decay) * g * g, state.nu, updates)
        if centered:
            mu = jax.tree.map(lambda m, g: decay * m + (1 - decay) * g, state.mu, updates)
            var = jax.tree.map(lambda n, m: n - m * m, nu, mu)
            mu = optax.tree.cast_like(mu, state.mu)
        else:
            mu, var = None, nu
        updates = jax.tree.map(lambda v, g: jax.lax.rsqrt(v + eps) * g, var, updates)
        return updates, RMSPropState(mu=mu, nu=optax.tree.cast_like(nu, state.nu))

    return optax.GradientTransformation(init_fn, update_fn)


def adagrad(
    learning_rate: optax.ScalarOrSchedule = 0.01,
    initial_accumulator_value: float = 0.1,
    eps: float = 1e-7,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaGrad: each coordinate's step shrinks with the root of its summed squared gradients.

    .. math::

        s_t = s_{t-1} + g_t \odot g_t, \qquad
        \theta_{t+1} = \theta_t - \eta_t \frac{g_t}{\sqrt{s_t + \epsilon}}

    with :math:`s_0` = ``initial_accumulator_value``. The :math:`\epsilon` sits under the root as
    in the seed lectures' and optax's form (Duchi et al. write :math:`\delta + \sqrt{s_t}`); a
    coordinate whose :math:`s_t` is 0 is not moved.

    Args:
      learning_rate: the global step size :math:`\eta_t`, a float or an optax schedule.
      initial_accumulator_value: :math:`s_0` (TensorFlow's and optax's 0.1; PyTorch uses 0).
      eps: :math:`\epsilon`, under the square root.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Duchi, Hazan & Singer, "Adaptive Subgradient Methods for Online Learning and Stochastic
      Optimization", JMLR 2011.
    """
    return optax.chain(
        scale_by_adagrad(initial_accumulator_value, eps),
        optax.scale_by_learning_rate(learning_rate),
    )


def adadelta(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    rho: float = 0.95,
    eps: float = 1e-6,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaDelta: the step's units come from a running RMS of past steps, so no step size is needed.

    .. math::

        v_t &= \rho v_{t-1} + (1 - \rho) g_t \odot g_t \\
        \Delta\theta_t &= \frac{\sqrt{d_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        d_t &= \rho d_{t-1} + (1 - \rho) \Delta\theta_t \odot \Delta\theta_t \\
        \theta_{t+1} &= \theta_t - \eta_t \Delta\theta_t

    The paper has no learning rate (:math:`\eta = 1`, the default); like optax and PyTorch, a
    learning rate other than 1 scales the step after :math:`d_t` is accumulated.

    Args:
      learning_rate: a global scale :math:`\eta_t` of the step, a float or an optax schedule.
      rho: the decay :math:`\rho` of both running averages (the paper's 0.95).
      eps: :math:`\epsilon` inside both RMS (the paper's 1e-6).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Zeiler, "ADADELTA: An Adaptive Learning Rate Method", arXiv:1212.5701, 2012.
    """
    return optax.chain(scale_by_adadelta(rho, eps), optax.scale_by_learning_rate(learning_rate))


def rmsprop(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    decay: float = 0.9,
    eps: float = 1e-8,
    initial_scale: float = 0.0,
    centered: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""RMSProp: divide the gradient by a running RMS of recent gradients.

    With :math:`\beta` the ``decay``:

    .. math::

        v_t = \beta v_{t-1} + (1 - \beta) g_t \odot g_t, \qquad
        \theta_{t+1} = \theta_t - \eta_t \frac{g_t}{\sqrt{v_t + \epsilon}}

    Centered (Graves 2013), dividing by a running standard deviation instead:

    .. math::

        m_t = \beta m_{t-1} + (1 - \beta) g_t, \qquad
        \theta_{t+1} = \theta_t - \eta_t \frac{g_t}{\sqrt{v_t - m_t \odot m_t + \epsilon}}

    :math:`\epsilon` is under the root, as in the seed lectures and optax's default (PyTorch adds
    it outside); :math:`v_0` = ``initial_scale`` (0 as in PyTorch; TF1 used 1).

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      decay: :math:`\beta` (Hinton suggests 0.9).
      eps: :math:`\epsilon`, under the square root.
      initial_scale: :math:`v_0`.
      centered: divide by the running variance instead of the second moment (twice the memory).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Hinton, Srivastava & Swersky, "Neural Networks for Machine Learning", lecture 6e, 2012.
      Graves, "Generating Sequences With Recurrent Neural Networks", arXiv:1308.0850, 2013.
    """
    return optax.chain(
        scale_by_rms(decay, eps, initial_scale, centered),
        optax.scale_by_learning_rate(learning_rate),
    )
