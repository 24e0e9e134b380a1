"""Schedule-free learning: interpolation and averaging in place of momentum and a decaying learning
rate (Defazio et al. 2024, "The Road Less Scheduled"), and which weights to evaluate."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ScheduleFreeState(NamedTuple):
    """Step count, `b1` (needed to recover `x` from `y` and `z`), the running maximum `lr_max` of
    the step sizes, the sum `weight_sum` of the averaging weights, the base sequence `z` and the
    base direction's state."""

    count: jax.Array
    b1: jax.Array
    lr_max: jax.Array
    weight_sum: jax.Array
    z: optax.Params
    base_state: optax.OptState

    def evaluation_params(self, params: optax.Params) -> optax.Params:
        """The point to evaluate, x (`schedule_free_eval_params`): the inner loop's
        `tasks.train.evaluation_params` finds this method anywhere in an optimizer state."""
        return schedule_free_eval_params(params, self)


def _scalar_dtype(params: optax.Params) -> jnp.dtype:
    """The widest float of `params`, at least float32: the dtype of the scalar statistics."""
    return functools.reduce(
        jnp.promote_types, [p.dtype for p in jax.tree.leaves(params)], jnp.float32
    )


def schedule_free(
    base: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    warmup_steps: int = 0,
    weight_lr_power: float = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Schedule-free form of the base step ``base`` (a direction: no learning rate, no momentum).

    With :math:`d_t` the output of ``base`` on the gradient :math:`g_t` at the params
    :math:`y_t`:

    .. math::

        \gamma_t &= \eta_t \min(1, t / T_\text{warmup}), \qquad
        c_{t+1} = \frac{\max_{i \le t} \gamma_i^p}{\sum_{j=1}^t \max_{i \le j} \gamma_i^p} \\
        z_{t+1} &= z_t - \gamma_t d_t, \qquad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \qquad
        y_{t+1} = (1 - \beta_1) z_{t+1} + \beta_1 x_{t+1}

    from :math:`z_1 = x_1 = y_1`. Only :math:`z` is stored; the params are :math:`y` and the
    update is :math:`y_{t+1} - y_t = c_{t+1}(z_t - y_t) - (1 - \beta_1(1 - c_{t+1})) \gamma_t d_t`.
    Evaluate at :math:`x` (`schedule_free_eval_params`; `tasks.train` does so by itself).

    Args:
      base: the base direction :math:`d_t`, e.g. Adam's normalised gradient with :math:`\beta_1
        = 0` (the averaging replaces momentum).
      learning_rate: :math:`\eta_t`, a float or an optax schedule (constant in the paper).
      b1: :math:`\beta_1` of the interpolation; :math:`x` is recovered from :math:`y, z` only for
        :math:`\beta_1 > 0`.
      warmup_steps: :math:`T_\text{warmup}`, the steps of linear warm-up (0: none).
      weight_lr_power: :math:`p`, the power of the step size in the averaging weights.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled", NeurIPS
      2024.
    """
    base = optax.with_extra_args_support(base)

    def init_fn(params: optax.Params) -> ScheduleFreeState:
        dtype = _scalar_dtype(params)
        return ScheduleFreeState(
            count=jnp.zeros([], jnp.int32),
            b1=jnp.asarray(b1, dtype),
            lr_max=jnp.zeros([], dtype),
            weight_sum=jnp.zeros([], dtype),
            z=jax.tree.map(jnp.array, params),  # a copy: z must not alias the params' buffers
            base_state=base.init(params),
        )

    def update_fn(updates, state, params=None, **extra_args):
        if params is None:
            raise ValueError("schedule_free needs the params")
        dtype = state.lr_max.dtype
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        t = (state.count + 1).astype(dtype)
        warmup = jnp.minimum(1.0, t / jnp.maximum(warmup_steps, 1))
        gamma = jnp.asarray(eta, dtype) * warmup
        lr_max = jnp.maximum(state.lr_max, gamma)
        weight = lr_max**weight_lr_power
        weight_sum = state.weight_sum + weight
        c = jnp.where(weight_sum > 0, weight / jnp.where(weight_sum > 0, weight_sum, 1), 0.0)
        direction, base_state = base.update(updates, state.base_state, params, **extra_args)
        step = jax.tree.map(lambda d: -gamma * d, direction)
        y_step = jax.tree.map(
            lambda y, z, s: c * (z - y) + (1 - state.b1 * (1 - c)) * s, params, state.z, step
        )
        z = jax.tree.map(lambda z, s: (z + s).astype(z.dtype), state.z, step)
        new_state = ScheduleFreeState(
            count=optax.safe_increment(state.count),
            b1=state.b1,
            lr_max=lr_max,
            weight_sum=weight_sum,
            z=z,
            base_state=base_state,
        )
        return y_step, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def schedule_free_adamw(
    learning_rate: optax.ScalarOrSchedule = 0.0025,
    warmup_steps: int = 0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    weight_lr_power: float = 2.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Schedule-free AdamW: AdamW without momentum, whose iterates are interpolated and averaged.

    `schedule_free` with the base direction

    .. math::

        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t \odot g_t, \qquad
        d_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^t)} + \epsilon} + \lambda y_t

    (the gradient :math:`g_t` and the weight decay are taken at the params :math:`y_t`), so

    .. math::

        \gamma_t &= \eta \min(1, t / T_\text{warmup}), \qquad
        c_{t+1} = \frac{\max_{i \le t} \gamma_i^2}{\sum_{j=1}^t \max_{i \le j} \gamma_i^2} \\
        z_{t+1} &= z_t - \gamma_t d_t, \qquad
        x_{t+1} = (1 - c_{t+1}) x_t + c_{t+1} z_{t+1}, \qquad
        y_{t+1} = (1 - \beta_1) z_{t+1} + \beta_1 x_{t+1}

    Training sees :math:`y`; validation and test metrics belong to the average :math:`x`: see
    `schedule_free_eval_params` (which `tasks.train` evaluates). The paper's Algorithm 1 writes
    :math:`\gamma_t = \eta \sqrt{1 - \beta_2^t} \min(1, t/T_\text{warmup})` with :math:`\epsilon`
    added to :math:`\sqrt{v_t}`, so its early averaging weights are smaller; like the authors'
    current code and optax we bias-correct :math:`v_t` instead, which they found more stable.
    optax's ``contrib.schedule_free_adamw`` is the same rule without warm-up; with warm-up its
    :math:`z` step lags one step behind its averaging weight (it takes :math:`\gamma_{t-1}`, so
    its first step is zero), whereas we use :math:`\gamma_t` for both, as the paper does.

    Args:
      learning_rate: :math:`\eta`, the peak step size (the authors' 0.0025), a float or an optax
        schedule (the method needs none beyond warm-up).
      warmup_steps: :math:`T_\text{warmup}`, the steps of linear warm-up (0: none).
      b1: :math:`\beta_1`, the interpolation between :math:`x` and :math:`z` (> 0).
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      weight_decay: :math:`\lambda`, decoupled, at :math:`y` and multiplied by :math:`\gamma_t`.
      weight_lr_power: the power of :math:`\gamma` in the averaging weights (the paper's 2).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Defazio, Yang, Mehta, Mishchenko, Khaled & Cutkosky, "The Road Less Scheduled", NeurIPS
      2024.
    """
    return schedule_free(
        optax.chain(
            optax.scale_by_rms(b2, eps, eps_in_sqrt=False, bias_correction=True),
            optax.add_decayed_weights(weight_decay),
        ),
        learning_rate,
        b1,
        warmup_steps,
        weight_lr_power,
    )


def schedule_free_eval_params(params: optax.Params, state: ScheduleFreeState) -> optax.Params:
    """The averaged point `x = (y - (1 - b1) z) / b1` that schedule-free training evaluates, from
    the params `y` and a `ScheduleFreeState`."""
    if not isinstance(state, ScheduleFreeState):
        raise TypeError(f"expected a ScheduleFreeState, got {type(state).__name__}")
    b1 = state.b1
    return jax.tree.map(lambda y, z: ((y - (1 - b1) * z) / b1).astype(y.dtype), params, state.z)
