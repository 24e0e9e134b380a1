"""Sophia: momentum divided by a lazily refreshed diagonal Hessian estimate, clipped per coordinate
(Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer for Language Model
Pre-training")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any
ObjFn = Callable[[optax.Params], jax.Array]
LogitsFn = Callable[[optax.Params], jax.Array]
ESTIMATORS = ("hutchinson", "gnb")
PROBES = ("gaussian", "rademacher")


class SophiaState(NamedTuple):
    """Step count, the EMA of the gradients (`mu`), the EMA of the diagonal Hessian estimates
    (`hessian`, the paper's h) and the key of the estimator, split at each Hessian refresh."""

    count: jax.Array
    mu: optax.Updates
    hessian: optax.Updates
    key: jax.Array


def probe_like(key: jax.Array, params: optax.Params, probe: str = "gaussian") -> PyTree:
    """One random vector u shaped like `params`: N(0, I) entries or Rademacher (+-1) entries.

    Drawn in float32 by `optax.tree.random_like` (so the Rademacher probes are optax's) and cast
    to each leaf's dtype.
    """
    sampler = jax.random.normal if probe == "gaussian" else jax.random.rademacher
    u = optax.tree.random_like(key, params, sampler, dtype=jnp.float32)
    return optax.tree.cast_like(u, params)


def hutchinson_diagonal(
    obj_fn: ObjFn, params: optax.Params, key: jax.Array, probe: str = "gaussian"
) -> PyTree:
    """Hutchinson's estimate u * (H u) of diag(H), H the Hessian of `obj_fn` at `params`.

    Unbiased for both probes (E[u u^T] = I); the variance of entry i is sum_{j != i} H_ij^2 for
    Rademacher probes and 2 H_ii^2 more for Gaussian ones. One Hessian-vector product, by
    forward-over-reverse differentiation.
    """
    u = probe_like(key, params, probe)
    hu = jax.jvp(jax.grad(obj_fn), (params,), (u,))[1]
    return jax.tree.map(lambda u_, hu_: u_ * hu_, u, hu)


def gauss_newton_bartlett(logits_fn: LogitsFn, params: optax.Params, key: jax.Array) -> PyTree:
    """The Gauss-Newton-Bartlett estimate B * g_hat * g_hat of the Gauss-Newton diagonal.

    `logits_fn(params)` gives the logits of B examples (`[..., C]`, all leading axes count as
    examples); g_hat is the gradient of their mean cross-entropy against labels drawn from the
    model's own softmax. Bartlett's identity makes B * E[g_hat * g_hat] the diagonal of the
    Gauss-Newton matrix (1/B) sum_b J_b^T (diag(p_b) - p_b p_b^T) J_b of the mean cross-entropy.
    One forward and one backward pass.
    """
    logits, pullback = jax.vjp(logits_fn, params)
    logits_BxC = logits.reshape(-1, logits.shape[-1])
    num_examples, num_classes = logits_BxC.shape
    labels_B = jax.random.categorical(key, logits_BxC.astype(jnp.float32))
    p_BxC = jax.nn.softmax(logits_BxC.astype(jnp.float32))
    dlogits_BxC = (p_BxC - jax.nn.one_hot(labels_B, num_classes)) / num_examples
    (g_hat,) = pullback(dlogits_BxC.reshape(logits.shape).astype(logits.dtype))
    return jax.tree.map(lambda g: num_examples * g * g, g_hat)


def scale_by_sophia(
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    update_every: int = 10,
    estimator: str = "hutchinson",
    probe: str = "gaussian",
    bias_correction: bool = False,
    delay_hessian: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    """Sophia's clipped step clip(mu / max(gamma * h, eps), 1), h refreshed every `update_every`.

    `update` needs the keyword-only extra argument `obj_fn` (Hutchinson) or `logits_fn` (GNB);
    see `sophia` for the rule and the arguments.
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown estimator {estimator!r}; valid: {', '.join(ESTIMATORS)}")
    if probe not in PROBES:
        raise ValueError(f"unknown probe {probe!r}; valid: {', '.join(PROBES)}")
    if update_every < 1:
        raise ValueError(f"update_every must be >= 1, got {update_every}")

    def init_fn(params):
        return SophiaState(
            count=jnp.zeros([], jnp.int32),
            mu=optax.tree.zeros_like(params),
            hessian=optax.tree.zeros_like(params),
            key=jax.random.key(seed),
        )

    def estimate(params, key, obj_fn, logits_fn):
        if estimator == "gnb":
            return gauss_newton_bartlett(logits_fn, params, key)
        return hutchinson_diagonal(obj_fn, params, key, probe)

    def update_fn(
        updates,
        state,
        params=None,
        *,
        obj_fn: ObjFn | None = None,
        logits_fn: LogitsFn | None = None,
        **extra_args,
    ):
        del extra_args
        if params is None:
            raise ValueError("Sophia needs params: call update(updates, state, params, ...)")
        if estimator == "hutchinson" and obj_fn is None:
            raise ValueError(
                "Sophia-H needs the loss: call update(..., obj_fn=f) with f(params) -> scalar "
                "(tasks.train passes it); it estimates diag(H) from Hessian-vector products of f"
            )
        if estimator == "gnb" and logits_fn is None:
            raise ValueError(
                "Sophia-G needs the logits: call update(..., logits_fn=f) with f(params) -> "
                "logits [..., classes] of the batch (tasks.train does not pass it; use "
                "estimator='hutchinson' there)"
            )

        def refresh(hessian, key):
            key, estimate_key = jax.random.split(key)
            h_hat = estimate(params, estimate_key, obj_fn, logits_fn)
            hessian = optax.tree.update_moment(h_hat, hessian, b2, 1)
            return optax.tree.cast_like(hessian, state.hessian), key

        hessian, key = jax.lax.cond(
            state.count % update_every == 0,
            refresh,
            lambda hessian, key: (hessian, key),
            state.hessian,
            state.key,
        )
        count = optax.safe_increment(state.count)
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        mu_hat = optax.tree.bias_correction(mu, b1, count) if bias_correction else mu
        h = state.hessian if delay_hessian else hessian
        updates = jax.tree.map(
            lambda m, h_: jnp.clip(m / jnp.maximum(gamma * h_, eps), -1, 1), mu_hat, h
        )
        new_state = SophiaState(
            count=count, mu=optax.tree.cast_like(mu, state.mu), hessian=hessian, key=key
        )
        return optax.tree.cast_like(updates, params), new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def sophia(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.965,
    b2: float = 0.99,
    gamma: float = 0.01,
    eps: float = 1e-12,
    weight_decay: float = 1e-4,
    update_every: int = 10,
    estimator: str = "hutchinson",
    probe: str = "gaussian",
    bias_correction: bool = False,
    delay_hessian: bool = False,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
    r"""Sophia: momentum over a moving average of the diagonal Hessian, clipped per coordinate.

    With :math:`k` = ``update_every`` and :math:`\hat h_t` a diagonal Hessian estimate at
    :math:`\theta_{t-1}` (the paper's Algorithm 3):

    .. math::
      m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
      h_t &= \beta_2 h_{t-k} + (1 - \beta_2) \hat h_t \ \text{ if } t \bmod k = 1,
        \text{ else } h_t = h_{t-1} \qquad (h_{1-k} = 0) \\
      \theta_t &= \theta_{t-1} - \eta_t \big(
        \operatorname{clip}(m_t / \max(\gamma h_t, \epsilon), 1) + \lambda \theta_{t-1} \big)

    where clip(x, 1) bounds every coordinate to [-1, 1]. So no coordinate moves more than
    :math:`\eta_t` (plus its decay) per step; where :math:`h_t \le 0` (negative curvature, or
    no estimate yet) the step is :math:`\eta_t \operatorname{sign}(m_t)`. The paper's clip
    threshold :math:`\rho` is redundant: clip(x/γ, ρ) = ρ clip(x/(ργ), 1).

    Estimators: Sophia-H, Hutchinson's :math:`\hat h = u \odot (H u)` with :math:`u \sim
    N(0, I)` (the paper's choice) or Rademacher :math:`u` (optax's: lower variance), from the
    Hessian of `obj_fn`; Sophia-G, the Gauss-Newton-Bartlett :math:`\hat h = B \hat g \odot
    \hat g`, :math:`\hat g` the gradient of the mean cross-entropy of the B logits of
    `logits_fn` against labels sampled from their own softmax. Each refresh costs one
    Hessian-vector product (about two backward passes) or one forward-backward pass, every
    :math:`k` steps. `update` takes `obj_fn(params) -> scalar` (`tasks.train` passes the batch
    loss) or `logits_fn(params) -> logits [..., C]` (which `tasks.train` does not pass) as
    keyword-only extra arguments.

    Against ``optax.contrib.sophia``: optax applies each new estimate from the next step on
    (``delay_hessian=True``), divides :math:`m_t` by :math:`1 - \beta_1^t`
    (``bias_correction=True``), uses Rademacher probes and ``eps=1e-8``; with those settings the
    two give the same numbers.

    Args:
      learning_rate: :math:`\eta_t`, the largest step of a coordinate, a float or a schedule.
        The paper tunes it per model with a cosine schedule; 1e-3 is AdamW's default here.
      b1: :math:`\beta_1`, the decay of the gradient EMA (paper 0.965).
      b2: :math:`\beta_2`, the decay of the Hessian EMA per refresh (paper 0.99).
      gamma: :math:`\gamma`, the scale of the Hessian in the denominator (paper 0.01 for
        Sophia-H; the authors' Sophia-G code defaults to 0.04).
      eps: :math:`\epsilon`, the floor of the denominator (paper 1e-12).
      weight_decay: :math:`\lambda`, decoupled as in AdamW; 1e-4 as `adamw` and optax. The
        authors' code defaults to 0.1 for language-model pre-training, which on the small problems
        here holds the params visibly away from the minimum (Rosenbrock stalls at 5e-3 of its
        initial loss).
      update_every: :math:`k`, steps between Hessian refreshes (paper 10).
      estimator: "hutchinson" (Sophia-H, needs `obj_fn`) or "gnb" (Sophia-G, needs
        `logits_fn`).
      probe: Hutchinson's :math:`u`: "gaussian" (paper) or "rademacher" (optax).
      bias_correction: divide :math:`m_t` by :math:`1 - \beta_1^t` (optax); the paper does not.
      delay_hessian: use each refreshed :math:`h` from the next step on (optax); the paper uses
        it in the step that computes it.
      seed: of the estimator's key (kept in the state, split at each refresh).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Liu, Li, Hall, Liang & Ma, "Sophia: A Scalable Stochastic Second-order Optimizer for
      Language Model Pre-training", ICLR 2024 (arXiv:2305.14342). Defaults (betas (0.965, 0.99),
      gamma 0.01, eps 1e-12, k 10, Gaussian probes) from the paper and the authors' code.
    """
    return optax.chain(
        scale_by_sophia(
            b1,
            b2,
            gamma,
            eps,
            update_every,
            estimator,
            probe,
            bias_correction,
            delay_hessian,
            seed,
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
