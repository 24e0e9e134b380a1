"""Muon: momentum whose update of each weight matrix is orthogonalised by Newton-Schulz iterations,
AdamW for every other parameter (Jordan et al. 2024, "Muon: An optimizer for hidden layers in
neural networks")."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from baselines.adam import adamw

PyTree = Any
NS_COEFFS = (3.4445, -4.7750, 2.0315)  # Jordan's quintic: steepest slope at 0, ~5 steps suffice


class MuonState(NamedTuple):
    """The momentum `mu` (an EMA of the gradients) of the orthogonalised leaves."""

    mu: optax.Updates


def newton_schulz(
    x: jax.Array,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-7,
) -> jax.Array:
    """About `U V^T` of the matrix `x = U S V^T`: `ns_steps` quintic iterations
    `X <- a X + (b A + c A^2) X`, `A = X X^T`, from `X = x / (||x||_F + eps)`. Singular values
    not far below `||x||_F` end in about [0.7, 1.2], not at 1: Jordan's coefficients trade
    accuracy for speed.

    For an `r x n` matrix with `n >= 2r` (after transposing to the wide side) the same iterates
    come from the Gram matrix `G = X_0 X_0^T`: every `X_k = Q_k X_0` with `Q_k` a polynomial in
    `G`, so `A_k = Q_k^2 G` and, with `P_k = a + b A_k + c A_k^2`, `Q_{k+1} = P_k Q_k`,
    `A_{k+1} = P_k A_k P_k`. Only `G` and the last product `Q X_0` touch the long side:
    `2 r^2 n + (4 ns_steps - 3) r^3` multiply-adds (the loop unrolled: no product by `Q_0 = I`,
    no unused last `A`) against `ns_steps (2 r^2 n + r^3)`, equal in exact arithmetic (about
    1e-6 relative in float32)."""
    a, b, c = ns_coeffs
    wide = x.shape[0] <= x.shape[1]  # iterate on the smaller Gram matrix X X^T
    X = x if wide else x.T
    X = X / (jnp.sqrt(jnp.sum(jnp.square(X)) + 1e-30) + eps)  # a finite derivative at 0
    rows, cols = X.shape
    if cols >= 2 * rows:
        identity = jnp.eye(rows, dtype=X.dtype)
        Q, A = None, X @ X.T  # Q = None: the identity, never multiplied by
        for k in range(ns_steps):
            P = a * identity + b * A + c * A @ A
            Q = P if Q is None else P @ Q
            if k < ns_steps - 1:  # the last A is never read
                A = P @ A @ P
        X = X if Q is None else Q @ X
    else:

        def iteration(_, X):
            A = X @ X.T
            return a * X + (b * A + c * A @ A) @ X

        X = jax.lax.fori_loop(0, ns_steps, iteration, X)
    return X if wide else X.T


def orthogonalised(update: jax.Array, ns_coeffs, ns_steps: int, eps: float) -> jax.Array:
    """`newton_schulz` of a leaf seen as a (fan_in, fan_out) matrix (leading axes folded into
    fan_in), times `sqrt(max(1, fan_out / fan_in))`, in at least float32."""
    if update.ndim < 2:
        raise ValueError(
            f"muon orthogonalises matrices; muon_mask selected a leaf of shape {update.shape}"
        )
    fan_in, fan_out = math.prod(update.shape[:-1]), update.shape[-1]
    x = update.reshape(fan_in, fan_out).astype(jnp.promote_types(update.dtype, jnp.float32))
    o = newton_schulz(x, ns_coeffs, ns_steps, eps) * math.sqrt(max(1.0, fan_out / fan_in))
    return o.reshape(update.shape).astype(update.dtype)


def scale_by_muon(
    beta: float = 0.95,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    *,
    nesterov: bool = True,
) -> optax.GradientTransformation:
    """`sqrt(max(1, fan_out / fan_in)) NS(beta mu_t + (1 - beta) g_t)` with the EMA
    `mu_t = beta mu_{t-1} + (1 - beta) g_t` (`NS(mu_t)` without `nesterov`), per matrix leaf."""

    def init_fn(params: optax.Params) -> MuonState:
        return MuonState(mu=optax.tree.zeros_like(params))

    def update_fn(updates, state, params=None):
        del params
        mu = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, state.mu, updates)
        if nesterov:
            mu_hat = jax.tree.map(lambda m, g: beta * m + (1 - beta) * g, mu, updates)
        else:
            mu_hat = mu
        updates = jax.tree.map(lambda m: orthogonalised(m, ns_coeffs, ns_steps, eps), mu_hat)
        return updates, MuonState(mu=optax.tree.cast_like(mu, state.mu))

    return optax.GradientTransformation(init_fn, update_fn)


def _matrices(params: optax.Params) -> PyTree:
    """True for the 2-D leaves: Muon's default split."""
    return jax.tree.map(lambda p: jnp.ndim(p) == 2, params)


def muon(
    learning_rate: optax.ScalarOrSchedule = 0.02,
    beta: float = 0.95,
    ns_coeffs: tuple[float, float, float] = NS_COEFFS,
    ns_steps: int = 5,
    eps: float = 1e-7,
    weight_decay: float = 0.0,
    nesterov: bool = True,
    muon_mask: Callable[[optax.Params], PyTree] | None = None,
    adam_learning_rate: optax.ScalarOrSchedule | None = None,
    adam_b1: float = 0.9,
    adam_b2: float = 0.999,
    adam_eps: float = 1e-8,
    adam_weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Muon: MomentUm Orthogonalized by Newton-Schulz, for the weight matrices.

    For each leaf chosen by ``muon_mask`` (by default every 2-D leaf), a matrix
    :math:`W \in \mathbb{R}^{n_\text{in} \times n_\text{out}}` (JAX's layout :math:`y = x W`):

    .. math::

        m_t &= \beta m_{t-1} + (1 - \beta) G_t, \qquad
        B_t = \beta m_t + (1 - \beta) G_t \quad (B_t = m_t \text{ without Nesterov}) \\
        O_t &= \mathrm{NS}_5(B_t) \approx U V^\top \text{ for } B_t = U S V^\top \\
        W_t &= W_{t-1} - \eta_t \left(
            \sqrt{\max(1, n_\text{out} / n_\text{in})}\, O_t + \lambda W_{t-1} \right)

    :math:`\mathrm{NS}_5` is five Newton-Schulz iterations :math:`X \leftarrow aX + (bA + cA^2)X`,
    :math:`A = XX^\top`, from :math:`X_0 = B_t / (\|B_t\|_F + \epsilon)`, with Jordan's quintic
    coefficients :math:`(a, b, c) = (3.4445, -4.7750, 2.0315)` (see `newton_schulz`). Leaves of
    more than two axes that the mask selects are treated as :math:`(\prod_{i<d} n_i) \times n_d`
    matrices (a convolution kernel HWIO as :math:`HWI \times O`). Every other leaf (biases,
    gains, scalars) follows `adamw` with its own ``adam_*`` hyperparameters. Jordan recommends
    AdamW also for the embedding and the classifier head: pass a ``muon_mask`` that leaves them
    out.

    This is Jordan's reference rule: the momentum is a plain EMA, without bias correction (it
    would only rescale :math:`B_t`, which :math:`\mathrm{NS}_5` normalises, were it not for
    Nesterov's mixing). optax's ``contrib.muon`` differs by default in three ways: its Nesterov
    look-ahead is bias-corrected like NAdam's, :math:`\beta m_t / (1 - \beta^{t+1}) + (1 - \beta)
    G_t / (1 - \beta^t)`, which weights the first ~50 steps differently; its non-matrix leaves
    follow NAdamW when ``nesterov`` (AdamW otherwise); and one ``eps`` (1e-8) serves both the
    normalisation and Adam. With ``nesterov=False`` and equal epsilons the two are the same.

    Args:
      learning_rate: :math:`\eta_t` of the matrices (Jordan's 0.02), a float or an optax
        schedule.
      beta: :math:`\beta`, the decay of the momentum.
      ns_coeffs: the quintic's coefficients :math:`(a, b, c)`.
      ns_steps: the number of Newton-Schulz iterations.
      eps: :math:`\epsilon` of the Frobenius normalisation (Jordan's 1e-7).
      weight_decay: :math:`\lambda` of the matrices, multiplied by :math:`\eta_t`.
      nesterov: use the Nesterov combination :math:`B_t` (the reference default).
      muon_mask: ``muon_mask(params)`` gives a pytree of bools like ``params``, True for the
        leaves that Muon updates (it sees shapes only: it is also called on the updates); None
        means every 2-D leaf.
      adam_learning_rate: the AdamW step size of the other leaves; None means
        ``learning_rate`` (as in optax; Jordan's examples use 3e-4 against Muon's 0.02).
      adam_b1: AdamW's :math:`\beta_1`.
      adam_b2: AdamW's :math:`\beta_2`.
      adam_eps: AdamW's :math:`\epsilon`.
      adam_weight_decay: AdamW's decoupled weight decay.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024,
      https://kellerjordan.github.io/posts/muon/.
      Bernstein & Newhouse, "Old Optimizer, New Norm: An Anthology", 2024.
    """
    mask = _matrices if muon_mask is None else muon_mask

    def labels(params: optax.Params) -> PyTree:
        return jax.tree.map(lambda is_matrix: "muon" if is_matrix else "adamw", mask(params))

    if adam_learning_rate is None:
        adam_learning_rate = learning_rate
    return optax.partition(
        {
            "muon": optax.chain(
                scale_by_muon(beta, ns_coeffs, ns_steps, eps, nesterov=nesterov),
                optax.add_decayed_weights(weight_decay),
                optax.scale_by_learning_rate(learning_rate),
            ),
            "adamw": adamw(
                adam_learning_rate, adam_b1, adam_b2, adam_eps, weight_decay=adam_weight_decay
            ),
        },
        labels,
    )
