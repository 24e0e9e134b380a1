"""Adam and its family: AdamW, NAdam, NAdamW, AMSGrad, AdaMax and RAdam (Kingma & Ba 2015, "Adam: A
Method for Stochastic Optimization", and the papers cited by each optimizer)."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class AdamState(NamedTuple):
    """Step count and the EMAs of the gradients (`mu`) and of their squares (`nu`; for AdaMax the
    exponentially weighted infinity norm)."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


class AMSGradState(NamedTuple):
    """Adam's state plus the running maximum `nu_max` of the bias-corrected second moment."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    nu_max: optax.Updates


def _init_adam_state(params: optax.Params) -> AdamState:
    """Count 0 and zero moments in the dtype of `params`."""
    zeros = optax.tree.zeros_like(params)
    return AdamState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros)


def _ema(moment: optax.Updates, value: optax.Updates, decay: float) -> optax.Updates:
    """`decay * moment + (1 - decay) * value`, leafwise."""
    return jax.tree.map(lambda m, x: (1 - decay) * x + decay * m, moment, value)


def scale_by_adam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    *,
    nesterov: bool = False,
) -> optax.GradientTransformation:
    """`mu_hat / (sqrt(nu_hat + eps_root) + eps)`; with `nesterov`, Dozat's look-ahead `mu_hat`."""

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = _ema(state.mu, updates, b1)
        nu = _ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        if nesterov:
            mu_hat = jax.tree.map(
                lambda m, g: b1 * m + (1 - b1) * g,
                optax.tree.bias_correction(mu, b1, optax.safe_increment(count)),
                optax.tree.bias_correction(updates, b1, count),
            )
        else:
            mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_hat)
        mu, nu = optax.tree.cast_like(mu, state.mu), optax.tree.cast_like(nu, state.nu)
        return updates, AdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(_init_adam_state, update_fn)


def scale_by_amsgrad(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, eps_root: float = 0.0
) -> optax.GradientTransformation:
    """Adam's step with `nu_hat` replaced by its running maximum `nu_max`."""

    def init_fn(params: optax.Params) -> AMSGradState:
        count, mu, nu = _init_adam_state(params)
        return AMSGradState(count=count, mu=mu, nu=nu, nu_max=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = _ema(state.mu, updates, b1)
        nu = _ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_max = jax.tree.map(jnp.maximum, state.nu_max, optax.tree.bias_correction(nu, b2, count))
        updates = jax.tree.map(lambda m, v: m / (jnp.sqrt(v + eps_root) + eps), mu_hat, nu_max)
        new_state = AMSGradState(
            count=count,
            mu=optax.tree.cast_like(mu, state.mu),
            nu=optax.tree.cast_like(nu, state.nu),
            nu_max=optax.tree.cast_like(nu_max, state.nu_max),
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adamax(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """`mu_hat / u_t` with the weighted infinity norm `u_t = max(b2 u_{t-1}, |g_t| + eps)`."""

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = _ema(state.mu, updates, b1)
        nu = jax.tree.map(lambda u, g: jnp.maximum(jnp.abs(g) + eps, b2 * u), state.nu, updates)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        updates = jax.tree.map(lambda m, u: m / u, mu_hat, nu)
        mu, nu = optax.tree.cast_like(mu, state.mu), optax.tree.cast_like(nu, state.nu)
        return updates, AdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(_init_adam_state, update_fn)


def scale_by_radam(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 4.0,
) -> optax.GradientTransformation:
    """Rectified Adam's step `r_t mu_hat / (sqrt(nu_hat) + eps)` once `rho_t > threshold`, else
    `mu_hat`."""
    rho_inf = 2.0 / (1.0 - b2) - 1.0

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = _ema(state.mu, updates, b1)
        nu = _ema(state.nu, jax.tree.map(jnp.square, updates), b2)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        nu_hat = optax.tree.bias_correction(nu, b2, count)
        b2_t = b2**count
        rho = rho_inf - 2 * count * b2_t / (1 - b2_t)
        tractable = rho > threshold
        r_sq = (rho - 4.0) * (rho - 2.0) * rho_inf / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho)
        r = jnp.sqrt(jnp.where(tractable, r_sq, 1.0))  # r_sq < 0 for 2 < rho_t < 4: no NaN
        updates = jax.tree.map(
            lambda m, v: jnp.where(
                tractable, r.astype(m.dtype) * m / (jnp.sqrt(v + eps_root) + eps), m
            ),
            mu_hat,
            nu_hat,
        )
        mu, nu = optax.tree.cast_like(mu, state.mu), optax.tree.cast_like(nu, state.nu)
        return updates, AdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(_init_adam_state, update_fn)


def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam: RMSProp with momentum and bias-corrected moment estimates.

    .. math::

        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t \odot g_t \\
        \hat m_t &= m_t / (1 - \beta_1^t), \qquad \hat v_t = v_t / (1 - \beta_2^t) \\
        \theta_t &= \theta_{t-1} - \eta_t \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon}

    :math:`\epsilon` is outside the root as in the paper's Algorithm 1 (and optax, PyTorch);
    :math:`\bar\epsilon` (``eps_root``, default 0) is optax's extra term under the root, useful
    when differentiating through the update.

    Args:
      learning_rate: the step size :math:`\eta_t` (the paper's :math:`\alpha`), a float or an
        optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.
      nesterov: use NAdam's look-ahead first moment (see `nadam`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
        optax.scale_by_learning_rate(learning_rate),
    )


nadam = functools.partial(adam, nesterov=True)
nadam.__doc__ = r"""NAdam: Adam with Nesterov momentum.

    Dozat's Algorithm 2 with a constant momentum :math:`\mu_t = \beta_1`, as in the seed lectures
    and optax (PyTorch's NAdam adds Dozat's warming momentum schedule):

    .. math::

        \bar m_t &= \frac{\beta_1 m_t}{1 - \beta_1^{t+1}} + \frac{(1 - \beta_1) g_t}{1 - \beta_1^t}
        \\
        \theta_t &= \theta_{t-1} - \eta_t \frac{\bar m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon}

    with :math:`m_t, \hat v_t` as in `adam`. Dozat's :math:`\hat n_t = \nu n_t / (1 - \nu^t)`
    carries an extra factor :math:`\nu = \beta_2` that optax, PyTorch and Keras omit; so do we.

    Args:
      learning_rate: the step size :math:`\eta_t` (Adam's 1e-3; Dozat used 2e-3), a float or an
        optax schedule.
      b1: :math:`\beta_1 = \mu`, the decay of the first moment.
      b2: :math:`\beta_2 = \nu`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
    """


def adamw(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    weight_decay: float = 1e-4,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""AdamW: Adam with weight decay decoupled from the adaptive rescaling.

    Adding :math:`\lambda\theta` to the loss (L2) would also be divided by
    :math:`\sqrt{\hat v_t}`, so weights with large gradients would be regularised less; AdamW
    instead shrinks the weights directly:

    .. math::

        \theta_t = \theta_{t-1} - \eta_t \left(
            \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon} + \lambda \theta_{t-1}
        \right)

    with :math:`\hat m_t, \hat v_t` as in `adam`. Like optax and PyTorch, the decay is multiplied
    by the whole learning rate :math:`\eta_t`; the paper multiplies it by the schedule multiplier
    only (:math:`\eta_t \alpha \hat m_t / \ldots + \eta_t \lambda \theta`): pass
    ``weight_decay = lambda / alpha`` to get the paper's update.

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.
      weight_decay: :math:`\lambda` (optax's default 1e-4), applied to every parameter.
      nesterov: use NAdam's look-ahead first moment (see `nadamw`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root, nesterov=nesterov),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )


nadamw = functools.partial(adamw, nesterov=True)
nadamw.__doc__ = r"""NAdamW: NAdam with AdamW's decoupled weight decay, AlgoPerf's baseline.

    .. math::

        \bar m_t &= \frac{\beta_1 m_t}{1 - \beta_1^{t+1}} + \frac{(1 - \beta_1) g_t}{1 - \beta_1^t}
        \\
        \theta_t &= \theta_{t-1} - \eta_t \left(
            \frac{\bar m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon} + \lambda \theta_{t-1}
        \right)

    with :math:`m_t, \hat v_t` as in `adam` and the look-ahead :math:`\bar m_t` of `nadam`; the
    decay :math:`\lambda` is multiplied by the whole learning rate, as in `adamw`. Same as optax's
    ``nadamw``. AlgoPerf's NAdamW (from init2winit) divides both terms of :math:`\bar m_t` by
    :math:`1 - \beta_1^t`; the two agree once :math:`\beta_1^t \approx 0` (after ~50 steps for
    :math:`\beta_1 = 0.9`).

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule (AlgoPerf uses
        linear warm-up then cosine decay).
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.
      weight_decay: :math:`\lambda` (optax's default 1e-4), applied to every parameter.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Dozat, "Incorporating Nesterov Momentum into Adam", ICLR 2016 workshop.
      Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
      Dahl et al., "Benchmarking Neural Network Training Algorithms", 2023 (AlgoPerf).
    """


def amsgrad(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""AMSGrad: Adam whose second-moment estimate never decreases.

    .. math::

        \hat v^{\max}_t = \max(\hat v^{\max}_{t-1}, \hat v_t), \qquad
        \theta_t = \theta_{t-1} - \eta_t \frac{\hat m_t}{\sqrt{\hat v^{\max}_t + \bar\epsilon}
            + \epsilon}

    with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments. Reddi et al.'s Algorithm 2 has
    no bias correction (:math:`\hat v_t = \max(\hat v_{t-1}, v_t)`, step :math:`m_t /
    \sqrt{\hat v_t}`); like optax's default we keep Adam's corrections and take the maximum of
    the corrected :math:`\hat v_t`, so AMSGrad equals Adam until :math:`\hat v_t` first decreases.

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Reddi, Kale & Kumar, "On the Convergence of Adam and Beyond", ICLR 2018.
    """
    return optax.chain(
        scale_by_amsgrad(b1, b2, eps, eps_root),
        optax.scale_by_learning_rate(learning_rate),
    )


def adamax(
    learning_rate: optax.ScalarOrSchedule = 2e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    r"""AdaMax: Adam with the infinity norm of past gradients in place of the L2 norm.

    .. math::

        m_t = \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1}, |g_t| + \epsilon), \qquad
        \theta_t = \theta_{t-1} - \frac{\eta_t}{1 - \beta_1^t} \frac{m_t}{u_t}

    The paper has no :math:`\epsilon`; like optax and PyTorch we add it inside the maximum, which
    keeps :math:`u_t > 0` (``eps=0`` gives the paper's rule).

    Args:
      learning_rate: the step size :math:`\eta_t` (the paper's :math:`\alpha = 0.002`), a float or
        an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the infinity norm.
      eps: :math:`\epsilon`, added to :math:`|g_t|`.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015, section 7.
    """
    return optax.chain(scale_by_adamax(b1, b2, eps), optax.scale_by_learning_rate(learning_rate))


def radam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    eps_root: float = 0.0,
    threshold: float = 4.0,
) -> optax.GradientTransformationExtraArgs:
    r"""RAdam: Adam that switches its adaptive step on only once its variance is tractable.

    .. math::

        \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
        \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
        r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}{(\rho_\infty - 4)(\rho_\infty - 2)
            \rho_t}} \\
        \theta_t &= \theta_{t-1} - \eta_t \begin{cases}
            r_t \hat m_t / (\sqrt{\hat v_t + \bar\epsilon} + \epsilon)
                & \text{if } \rho_t > 4 \\
            \hat m_t & \text{otherwise}
        \end{cases}

    with :math:`\hat m_t, \hat v_t` as in `adam`. The test :math:`\rho_t > 4` is the paper's
    Algorithm 2 (``threshold=4``); the authors' code and optax use :math:`\rho_t \ge 5`, which
    first rectifies at step 6 instead of step 5 for :math:`\beta_2 = 0.999`. Like optax we add
    :math:`\epsilon` to :math:`\sqrt{\hat v_t}`.

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      eps_root: :math:`\bar\epsilon`, added under the root.
      threshold: the adaptive step is used while :math:`\rho_t` exceeds it.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Liu et al., "On the Variance of the Adaptive Learning Rate and Beyond", ICLR 2020.
    """
    return optax.chain(
        scale_by_radam(b1, b2, eps, eps_root, threshold),
        optax.scale_by_learning_rate(learning_rate),
    )
