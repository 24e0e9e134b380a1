"""Adafactor: factored second moments, update clipping and relative step sizes (Shazeer & Stern
2018, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost")."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class FactoredMoment(NamedTuple):
    """The factored second moment of a tensor of two or more axes: EMAs of the row means
    (`v_row`, the last axis reduced) and of the column means (`v_col`, the second-last reduced)
    of the squared gradients."""

    v_row: jax.Array
    v_col: jax.Array


class AdafactorState(NamedTuple):
    """Step count and, per leaf, a `FactoredMoment` (tensors of two or more axes, when factored)
    or the full EMA `v` of the squared gradients."""

    count: jax.Array
    nu: optax.Updates


def _rms(x: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def scale_by_adafactor(
    decay_rate: float = 0.8,
    eps: float = 1e-30,
    clipping_threshold: float = 1.0,
    factored: bool = True,
) -> optax.GradientTransformation:
    """`U / max(1, RMS(U) / d)` with `U = G / sqrt(V_hat)`: `V_hat = R C / mean(R)` from the
    row and column means of `G^2 + eps` (the full `V` for vectors, scalars or `factored=False`),
    EMAs with decay `1 - t^(-decay_rate)`."""

    def is_factored(x: jax.Array) -> bool:
        return factored and x.ndim >= 2

    def init_leaf(p: jax.Array):
        if is_factored(p):
            return FactoredMoment(
                v_row=jnp.zeros(p.shape[:-1], p.dtype),
                v_col=jnp.zeros(p.shape[:-2] + p.shape[-1:], p.dtype),
            )
        return jnp.zeros_like(p)

    def init_fn(params: optax.Params) -> AdafactorState:
        return AdafactorState(count=jnp.zeros([], jnp.int32), nu=jax.tree.map(init_leaf, params))

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        beta2_t = 1.0 - count.astype(jnp.float32) ** (-decay_rate)  # 0 at t = 1

        def update_leaf(g: jax.Array, nu):
            g_sq = jnp.square(g) + eps
            if is_factored(g):
                v_row = beta2_t * nu.v_row + (1 - beta2_t) * jnp.mean(g_sq, axis=-1)
                v_col = beta2_t * nu.v_col + (1 - beta2_t) * jnp.mean(g_sq, axis=-2)
                row_factor = jax.lax.rsqrt(v_row / jnp.mean(v_row, axis=-1, keepdims=True))
                u = g * row_factor[..., :, None] * jax.lax.rsqrt(v_col)[..., None, :]
                nu = FactoredMoment(v_row.astype(nu.v_row.dtype), v_col.astype(nu.v_col.dtype))
            else:
                v = beta2_t * nu + (1 - beta2_t) * g_sq
                u = g * jax.lax.rsqrt(v)
                nu = v.astype(nu.dtype)
            u = u / jnp.maximum(1.0, _rms(u) / clipping_threshold)
            return u.astype(g.dtype), nu

        out = jax.tree.map(update_leaf, updates, state.nu)
        updates = jax.tree.map(lambda _, o: o[0], updates, out)
        nu = jax.tree.map(lambda _, o: o[1], updates, out)
        return updates, AdafactorState(count=count, nu=nu)

    return optax.GradientTransformation(init_fn, update_fn)


def adafactor(
    learning_rate: optax.ScalarOrSchedule = 1e-2,
    decay_rate: float = 0.8,
    clipping_threshold: float = 1.0,
    multiply_by_parameter_scale: bool = True,
    eps: float = 1e-30,
    eps_scale: float = 1e-3,
    b1: float = 0.0,
    weight_decay_rate: float = 0.0,
    factored: bool = True,
) -> optax.GradientTransformationExtraArgs:
    r"""Adafactor: Adam-like steps from row and column statistics, sized relative to the weights.

    The paper's algorithm with update clipping and relative step sizes, for matrices (vectors and
    scalars keep the full :math:`V_t`), where :math:`\mathrm{RMS}(A) = \sqrt{\mathrm{mean}(A^2)}`
    over a leaf:

    .. math::

        \hat\beta_{2t} &= 1 - t^{-c}, \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(X_{t-1}))\, \rho_t \\
        R_t &= \hat\beta_{2t} R_{t-1} + (1 - \hat\beta_{2t})
            \,\mathrm{mean}_\text{cols}(G_t^2 + \epsilon_1), \qquad
        C_t = \hat\beta_{2t} C_{t-1} + (1 - \hat\beta_{2t})
            \,\mathrm{mean}_\text{rows}(G_t^2 + \epsilon_1) \\
        \hat V_t &= R_t C_t / \mathrm{mean}(R_t), \qquad
        U_t = G_t / \sqrt{\hat V_t}, \qquad
        \hat U_t = U_t / \max(1, \mathrm{RMS}(U_t) / d) \\
        X_t &= X_{t-1} - \alpha_t \hat U_t - \lambda X_{t-1}

    (means in place of the paper's sums give the same :math:`\hat V_t`). Every tensor of two or
    more axes is factored over its last two, leading axes being a batch of matrices, as in the
    authors' tensor2tensor code. With :math:`\beta_1 > 0` the step
    :math:`\alpha_t \hat U_t` is averaged, :math:`M_t = \beta_1 M_{t-1} + (1 - \beta_1) \alpha_t
    \hat U_t` (no bias correction), and :math:`X_t = X_{t-1} - M_t - \lambda X_{t-1}`; a concrete
    ``b1=0`` keeps no :math:`M_t` (Adafactor's point is memory). The weight decay
    :math:`\lambda` is not multiplied by the step size (as in optax).

    The relative step size :math:`\rho_t` is ``learning_rate``; the paper's
    :math:`\rho_t = \min(10^{-2}, 1/\sqrt{t})` equals the default 1e-2 for the first 10,000
    steps (pass ``lambda count: jnp.minimum(1e-2, jax.lax.rsqrt(count + 1.0))`` for all of it).
    optax's ``adafactor`` is the same rule with other defaults: no step size (None, i.e. 1),
    factoring only tensors whose two largest axes (not the last two) both have at least 128
    entries (``min_dim_size_to_factor``), and momentum off by None.

    Args:
      learning_rate: the relative step size :math:`\rho_t`, a float or an optax schedule.
      decay_rate: :math:`c` of the second-moment decay :math:`1 - t^{-c}`.
      clipping_threshold: :math:`d`, the largest RMS of :math:`\hat U_t` (``inf``: no clipping).
      multiply_by_parameter_scale: scale steps by :math:`\max(\epsilon_2,
        \mathrm{RMS}(X_{t-1}))` (relative step sizes); if False, :math:`\alpha_t = \rho_t`.
      eps: :math:`\epsilon_1`, added to the squared gradients.
      eps_scale: :math:`\epsilon_2`, the smallest parameter scale.
      b1: :math:`\beta_1`, the decay of the optional first moment of the steps.
      weight_decay_rate: :math:`\lambda`, decoupled and not multiplied by :math:`\rho_t`.
      factored: factor the second moments of tensors of two or more axes.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Shazeer & Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML
      2018.
    """
    scale_by_parameter = (
        [optax.scale_by_param_block_rms(eps_scale)] if multiply_by_parameter_scale else []
    )
    no_momentum = isinstance(b1, int | float) and b1 == 0
    momentum = [] if no_momentum else [optax.ema(b1, debias=False)]
    return optax.chain(
        scale_by_adafactor(decay_rate, eps, clipping_threshold, factored),
        optax.scale_by_learning_rate(learning_rate, flip_sign=False),
        *scale_by_parameter,
        *momentum,
        optax.add_decayed_weights(weight_decay_rate),
        optax.scale(-1.0),
    )
