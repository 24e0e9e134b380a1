"""Prodigy: Adam whose step size is a running D-adaptation estimate of the distance to the solution
(Mishchenko & Defazio 2023, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner")."""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class ProdigyState(NamedTuple):
    """Step count; the distance estimate `d` and the weighted sum `r` of `<g_i, x_0 - x_i>`
    (scalars); Adam's moments `mu`, `nu` of `d g`; the weighted gradient sum `s`; the initial
    params `x0`."""

    count: jax.Array
    d: jax.Array
    r: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    s: optax.Updates
    x0: optax.Params


def _scalar_dtype(params: optax.Params) -> jnp.dtype:
    """The widest float of `params`, at least float32: the dtype of `d` and `r`."""
    dtypes = [p.dtype for p in jax.tree.leaves(params)]
    return functools.reduce(jnp.promote_types, dtypes, jnp.float32)


def scale_by_prodigy(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    weight_decay: float = 0.0,
    *,
    bias_correction: bool = False,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformation:
    """The whole Prodigy step `-d_k eta_k (m / (sqrt(v) + d eps) + lambda x)` (the schedule
    `eta_k` enters the estimate of `d`, so the learning rate cannot be a separate transform)."""
    b3 = b2**0.5 if b3 is None else b3

    def init_fn(params: optax.Params) -> ProdigyState:
        dtype = _scalar_dtype(params)
        zeros = optax.tree.zeros_like(params)
        return ProdigyState(
            count=jnp.zeros([], jnp.int32),
            d=jnp.asarray(d0, dtype),
            r=jnp.zeros([], dtype),
            mu=zeros,
            nu=zeros,
            s=zeros,
            x0=jax.tree.map(jnp.array, params),  # a copy: x0 must not alias the params' buffers
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("prodigy needs the params")
        d, dtype = state.d, state.d.dtype
        eta = learning_rate(state.count) if callable(learning_rate) else learning_rate
        eta = jnp.asarray(eta, dtype)
        if bias_correction:
            t = (state.count + 1).astype(dtype)
            eta = eta * jnp.sqrt(1 - b2**t) / (1 - b1**t)
        d_eta = d * eta  # this step's size, with the estimate d_k of before the step
        dg = jax.tree.map(lambda g: d * g, updates)
        mu = jax.tree.map(lambda m, x: b1 * m + (1 - b1) * x, state.mu, dg)
        nu = jax.tree.map(lambda v, x: b2 * v + (1 - b2) * x * x, state.nu, dg)
        # r and s both carry the weight d_k^2 eta_k / d0 (d_k^2 / d0 with the safeguard for s);
        # the paper's factors (1 - sqrt(b2)) and our 1 / d0 cancel in d_hat = r / ||s||_1.
        inner = sum(
            jnp.vdot(g.astype(dtype), x0.astype(dtype) - x.astype(dtype))
            for g, x0, x in zip(
                jax.tree.leaves(updates),
                jax.tree.leaves(state.x0),
                jax.tree.leaves(params),
                strict=True,
            )
        )
        r = b3 * state.r + d / d0 * d_eta * inner
        s_weight = d if safeguard_warmup else d_eta
        s = jax.tree.map(lambda s, x: b3 * s + s_weight * x / d0, state.s, dg)
        s_norm = sum(jnp.sum(jnp.abs(x.astype(dtype))) for x in jax.tree.leaves(s))
        d_hat = d_coef * r / jnp.where(s_norm > 0, s_norm, 1)
        d_new = jnp.where(s_norm > 0, jnp.maximum(d, d_hat), d)
        updates = jax.tree.map(
            lambda m, v, x: -d_eta * m / (jnp.sqrt(v) + d_new * eps) - weight_decay * d_eta * x,
            mu,
            nu,
            params,
        )
        new_state = ProdigyState(
            count=optax.safe_increment(state.count),
            d=d_new,
            r=r,
            mu=optax.tree.cast_like(mu, state.mu),
            nu=optax.tree.cast_like(nu, state.nu),
            s=optax.tree.cast_like(s, state.s),
            x0=state.x0,
        )
        return updates, new_state

    return optax.GradientTransformation(init_fn, update_fn)


def prodigy(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    b3: float | None = None,
    eps: float = 1e-8,
    d0: float = 1e-6,
    d_coef: float = 1.0,
    weight_decay: float = 0.0,
    bias_correction: bool = False,
    safeguard_warmup: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""Prodigy: learning-rate-free Adam, stepping by a growing estimate of the distance to x_*.

    The step is a lower bound :math:`d_k` on the distance :math:`\|x_0 - x_*\|` that only grows.

    The paper's Adam version, with the schedule :math:`\eta_k` (``learning_rate``, a multiplier
    of the estimated step, default 1):

    .. math::

        m_{k+1} &= \beta_1 m_k + (1 - \beta_1) d_k g_k, \qquad
        v_{k+1} = \beta_2 v_k + (1 - \beta_2) d_k^2 g_k^2 \\
        r_{k+1} &= \beta_3 r_k + \eta_k d_k^2 \langle g_k, x_0 - x_k \rangle, \qquad
        s_{k+1} = \beta_3 s_k + \eta_k d_k^2 g_k \\
        d_{k+1} &= \max\left(d_k, \; c\, \frac{r_{k+1}}{\|s_{k+1}\|_1}\right) \\
        x_{k+1} &= x_k - \eta_k d_k \left( \frac{m_{k+1}}{\sqrt{v_{k+1}} + d_{k+1}\epsilon}
            + \lambda x_k \right)

    with :math:`\beta_3 = \sqrt{\beta_2}` by default. The paper also multiplies the increments
    of :math:`r` and :math:`s` by :math:`1 - \beta_3`, which cancels in the ratio; like the
    authors' code we put :math:`d_{k+1}` (not :math:`d_k`) in front of :math:`\epsilon` and
    skip the update of :math:`d` while :math:`s = 0`. ``bias_correction`` multiplies
    :math:`\eta_k` by Adam's :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` everywhere;
    ``safeguard_warmup`` drops :math:`\eta_k` from :math:`s` (for schedules with warm-up).

    The paper and the authors' code default to no bias correction; optax's ``contrib.prodigy``
    always applies it, so the two agree with ``bias_correction=True``. By default optax's
    :math:`\eta_k` is ours times :math:`\sqrt{1 - \beta_2^{k+1}} / (1 - \beta_1^{k+1})` (0.32 at
    the first step, 0.80 at step 1,000), in its steps and in its estimate of :math:`d`.

    Args:
      learning_rate: :math:`\eta_k`, a multiplier of the adapted step (1: none), a float or an
        optax schedule (the authors suggest cosine or linear decay from 1).
      b1: :math:`\beta_1`, Adam's first-moment decay.
      b2: :math:`\beta_2`, Adam's second-moment decay.
      b3: :math:`\beta_3`, the decay of :math:`r` and :math:`s` (None: :math:`\sqrt{\beta_2}`).
      eps: :math:`\epsilon`, added to the root (scaled by :math:`d`).
      d0: :math:`d_0`, the initial (under-)estimate of the distance.
      d_coef: :math:`c`, a multiplier of the estimate (the preferred knob to tune).
      weight_decay: :math:`\lambda`, decoupled (AdamW-style), multiplied by the step.
      bias_correction: use Adam's bias correction (as optax does).
      safeguard_warmup: leave :math:`\eta_k` out of :math:`s`.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Mishchenko & Defazio, "Prodigy: An Expeditiously Adaptive Parameter-Free Learner", ICML
      2024 (arXiv 2306.06101, 2023).
    """
    return optax.chain(
        scale_by_prodigy(
            learning_rate,
            b1,
            b2,
            b3,
            eps,
            d0,
            d_coef,
            weight_decay,
            bias_correction=bias_correction,
            safeguard_warmup=safeguard_warmup,
        )
    )
