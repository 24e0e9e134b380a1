"""Shampoo: every weight matrix preconditioned by the inverse 4th roots of its Kronecker factors,
in blocks, with the step size grafted from Adam (Gupta, Koren & Singer 2018, "Shampoo:
Preconditioned Stochastic Tensor Optimization"; Anil et al. 2020, "Scalable Second Order
Optimization for Deep Learning")."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

GRAFTS = ("rmsprop", "adagrad")
ROOT = 4  # the p of the inverse p-th roots: twice the order of a matrix
HIGHEST = jax.lax.Precision.HIGHEST  # float32 products of statistics, also on TPU and GPU


class KroneckerFactors(NamedTuple):
    """A matrix leaf's statistics and their inverse 4th roots for I x J blocks of Bm x Bn: `L`,
    `L_inv_root` [I, J, Bm, Bm] and `R`, `R_inv_root` [I, J, Bn, Bn], all float32."""

    L: jax.Array
    R: jax.Array
    L_inv_root: jax.Array
    R_inv_root: jax.Array


class ShampooState(NamedTuple):
    """Step count, the EMA of the gradients (`mu`), the graft's second moment (`nu`: an EMA of
    g^2, or its sum for AdaGrad) and, per params leaf in `jax.tree.leaves` order, its
    `KroneckerFactors`, or None for scalars and vectors."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates
    factors: tuple[KroneckerFactors | None, ...]


def matrix_inverse_root(M: jax.Array, p: int, eps: float = 0.0) -> jax.Array:
    """(M + eps * lambda_max(M) I)^(-1/p) of symmetric PSD matrices `M` [..., n, n].

    By eigendecomposition in float32. Eigenvalues rounded below zero count as zero, and the
    damping is at least float32's smallest normal number, so a zero matrix has a finite root.
    """
    w, V = jnp.linalg.eigh(M.astype(jnp.float32))  # eigenvalues in ascending order
    ridge = jnp.maximum(eps * w[..., -1:], jnp.finfo(jnp.float32).tiny)
    w = jnp.maximum(w, 0.0) + ridge
    return jnp.matmul(
        V * (w ** (-1.0 / p))[..., None, :], jnp.swapaxes(V, -1, -2), precision=HIGHEST
    )


def inverse_roots(stats: Sequence[jax.Array], p: int, eps: float = 0.0) -> list[jax.Array]:
    """`matrix_inverse_root` of each array of matrices [..., n_k, n_k] in `stats`, one at a time.

    The matrices are zero-padded to the largest n_k, which leaves each root in the top-left
    corner (the root of diag(M, 0) is diag(root of M, ...) with the same damping), and
    decomposed in one `jax.lax.map`. jaxlib's CPU eigh runs a batch on the thread pool and
    blocks a worker while it waits: with several batched calls in flight, training on 2 CPUs
    crawled or deadlocked (jax 0.10.2). Under `jax.vmap` there is still one call at a time.
    """
    if not stats:
        return []
    size = max(s.shape[-1] for s in stats)

    def pad(s):
        n = s.shape[-1]
        return jnp.pad(s.reshape(-1, n, n), ((0, 0), (0, size - n), (0, size - n)))

    stacked = jnp.concatenate([pad(s) for s in stats])
    roots = jax.lax.map(lambda M: matrix_inverse_root(M, p, eps), stacked)
    out, start = [], 0
    for s in stats:
        n, count = s.shape[-1], math.prod(s.shape[:-2])
        out.append(roots[start : start + count, :n, :n].reshape(s.shape))
        start += count
    return out


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int] | None:
    """The (rows, cols) a leaf is preconditioned as: all but its last axis merged into rows (a
    convolution kernel (h, w, in, out) becomes (h * w * in, out)); None for scalars and vectors."""
    if len(shape) < 2:
        return None
    return math.prod(shape[:-1]), shape[-1]


def block_layout(rows: int, cols: int, block_size: int) -> tuple[int, int, int, int]:
    """(I, J, Bm, Bn): a rows x cols matrix in I x J blocks of Bm = min(rows, block_size) by
    Bn = min(cols, block_size), the last row and column of blocks zero-padded."""
    bm, bn = min(rows, block_size), min(cols, block_size)
    return -(-rows // bm), -(-cols // bn), bm, bn


def to_blocks(x_MxN: jax.Array, block_size: int) -> jax.Array:
    """The blocks [I, J, Bm, Bn] of a matrix, zero-padded to whole blocks."""
    rows, cols = x_MxN.shape
    I, J, bm, bn = block_layout(rows, cols, block_size)
    x_MxN = jnp.pad(x_MxN, ((0, I * bm - rows), (0, J * bn - cols)))
    return x_MxN.reshape(I, bm, J, bn).transpose(0, 2, 1, 3)


def from_blocks(x_IxJxBmxBn: jax.Array, rows: int, cols: int) -> jax.Array:
    """The rows x cols matrix of `to_blocks`, padding removed."""
    I, J, bm, bn = x_IxJxBmxBn.shape
    return x_IxJxBmxBn.transpose(0, 2, 1, 3).reshape(I * bm, J * bn)[:rows, :cols]


def scale_by_shampoo(
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    matrix_eps: float = 1e-6,
    block_size: int = 128,
    precondition_every: int = 10,
    start_preconditioning_step: int = 10,
    graft: str = "rmsprop",
) -> optax.GradientTransformation:
    """Blocked Shampoo directions of the momentum with the blockwise norms of the graft's step
    (Adam's for "rmsprop"); see `shampoo` for the rule and the arguments."""
    if graft not in GRAFTS:
        raise ValueError(f"unknown graft {graft!r}; valid: {', '.join(GRAFTS)}")
    if graft == "rmsprop" and b2 >= 1:
        raise ValueError("the rmsprop graft needs b2 < 1; use graft='adagrad' with b2 = 1")
    if block_size < 1 or precondition_every < 1 or start_preconditioning_step < 1:
        raise ValueError("block_size, precondition_every, start_preconditioning_step must be >= 1")
    w2 = 1.0 if b2 == 1 else 1.0 - b2  # b2 = 1: sums of G G^T (AdaGrad-style Shampoo)

    def init_factors(leaf):
        shape = matrix_shape(jnp.shape(leaf))
        if shape is None:
            return None
        I, J, bm, bn = block_layout(*shape, block_size)

        def eye(n):
            return jnp.broadcast_to(jnp.eye(n, dtype=jnp.float32), (I, J, n, n))

        return KroneckerFactors(
            L=jnp.zeros((I, J, bm, bm), jnp.float32),
            R=jnp.zeros((I, J, bn, bn), jnp.float32),
            L_inv_root=eye(bm),
            R_inv_root=eye(bn),
        )

    def init_fn(params):
        zeros = optax.tree.zeros_like(params)
        factors = tuple(init_factors(leaf) for leaf in jax.tree.leaves(params))
        return ShampooState(count=jnp.zeros([], jnp.int32), mu=zeros, nu=zeros, factors=factors)

    def blocks(x):
        return to_blocks(x.reshape(matrix_shape(x.shape)).astype(jnp.float32), block_size)

    def accumulate(f, g):
        G = blocks(g)
        L = b2 * f.L + w2 * jnp.einsum("ijab,ijcb->ijac", G, G, precision=HIGHEST)
        R = b2 * f.R + w2 * jnp.einsum("ijba,ijbc->ijac", G, G, precision=HIGHEST)
        return f._replace(L=L, R=R)

    def with_inverse_roots(factors):
        kronecker = [f for f in factors if f is not None]
        roots = iter(inverse_roots([s for f in kronecker for s in (f.L, f.R)], ROOT, matrix_eps))
        return tuple(
            None if f is None else f._replace(L_inv_root=next(roots), R_inv_root=next(roots))
            for f in factors
        )

    def grafted_direction(f, m, a):
        S = jnp.einsum(
            "ijab,ijbc,ijcd->ijad", f.L_inv_root, blocks(m), f.R_inv_root, precision=HIGHEST
        )
        A = blocks(a)
        s_norm = jnp.sqrt(jnp.sum(jnp.square(S), axis=(-2, -1), keepdims=True))
        a_norm = jnp.sqrt(jnp.sum(jnp.square(A), axis=(-2, -1), keepdims=True))
        scale = jnp.where(s_norm > 0, a_norm / jnp.where(s_norm > 0, s_norm, 1.0), 0.0)
        return from_blocks(S * scale, *matrix_shape(a.shape)).reshape(a.shape).astype(a.dtype)

    def update_fn(updates, state, params=None):
        del params
        count = optax.safe_increment(state.count)
        mu = optax.tree.update_moment(updates, state.mu, b1, 1)
        if graft == "adagrad":
            nu = jax.tree.map(lambda v, g: v + jnp.square(g), state.nu, updates)
            nu_hat = nu
        else:
            nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
            nu_hat = optax.tree.bias_correction(nu, b2, count)
        mu_hat = optax.tree.bias_correction(mu, b1, count)
        adam_step = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mu_hat, nu_hat)

        g_leaves, treedef = jax.tree.flatten(updates)
        factors = tuple(
            None if f is None else accumulate(f, g)
            for f, g in zip(state.factors, g_leaves, strict=True)
        )
        started = count >= start_preconditioning_step
        refresh = started & ((count - start_preconditioning_step) % precondition_every == 0)
        factors = jax.lax.cond(refresh, with_inverse_roots, lambda fs: fs, factors)
        steps = [
            a if f is None else jnp.where(started, grafted_direction(f, m, a), a)
            for f, m, a in zip(
                factors, jax.tree.leaves(mu_hat), jax.tree.leaves(adam_step), strict=True
            )
        ]
        new_state = ShampooState(
            count=count,
            mu=optax.tree.cast_like(mu, state.mu),
            nu=optax.tree.cast_like(nu, state.nu),
            factors=factors,
        )
        return treedef.unflatten(steps), new_state

    return optax.GradientTransformation(init_fn, update_fn)


def shampoo(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    matrix_eps: float = 1e-6,
    block_size: int = 128,
    precondition_every: int = 10,
    start_preconditioning_step: int = 10,
    graft: str = "rmsprop",
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Shampoo: Kronecker-factored full-matrix preconditioning of each weight block, grafted.

    Every leaf with two or more axes is a matrix (all but the last axis merged into rows) cut
    into blocks of at most ``block_size`` squared. For each block, with :math:`G_t` its gradient
    and :math:`t_0` = ``start_preconditioning_step``, :math:`\tau` = ``precondition_every``:

    .. math::
      L_t &= \beta_2 L_{t-1} + (1 - \beta_2) G_t G_t^\top, \qquad
      R_t = \beta_2 R_{t-1} + (1 - \beta_2) G_t^\top G_t
      \qquad (\beta_2 = 1: \text{sums}) \\
      \tilde L &= (L_t + \epsilon_M \lambda_{\max}(L_t) I)^{-1/4}, \quad
      \tilde R = (R_t + \epsilon_M \lambda_{\max}(R_t) I)^{-1/4}
      \quad \text{recomputed when } t \ge t_0,\ (t - t_0) \bmod \tau = 0 \\
      A_t &= \hat m_t / (\sqrt{\hat v_t} + \epsilon) \qquad \text{(the graft: Adam's step)} \\
      S_t &= \tilde L \hat m_t \tilde R, \qquad
      U_t = \frac{\lVert A_t \rVert_F}{\lVert S_t \rVert_F} S_t
      \ \text{ if } t \ge t_0, \text{ else } U_t = A_t \\
      \theta_t &= \theta_{t-1} - \eta_t (U_t + \lambda \theta_{t-1})

    with Adam's :math:`\hat m_t = m_t / (1 - \beta_1^t)`, :math:`m_t = \beta_1 m_{t-1} +
    (1 - \beta_1) g_t` and :math:`\hat v_t = v_t / (1 - \beta_2^t)`, :math:`v_t = \beta_2
    v_{t-1} + (1 - \beta_2) g_t^2` (graft "rmsprop"), or AdaGrad's :math:`\hat v_t = \sum_s
    g_s^2` (graft "adagrad"). Scalars and vectors take the graft's step :math:`A_t`: with the
    default graft they follow Adam exactly. The roots are damped relative to the largest
    eigenvalue, so a common factor of :math:`L_t` or :math:`R_t` cancels in the grafting:
    :math:`L_t, R_t` need no bias correction. Zero-padding the last blocks leaves the other
    entries of the roots unchanged.

    Choices beyond the papers' core (statistics, inverse 4th roots, grafting): the grafting is per
    block (Anil et al.'s code grafts per layer); the momentum is preconditioned (the same as
    momentum of preconditioned gradients while the roots are unchanged, i.e. between refreshes);
    the roots are recomputed synchronously, by float32 eigendecompositions of one block after
    another (see `inverse_roots`), instead of Anil et al.'s asynchronous coupled Newton
    iterations.

    Args:
      learning_rate: :math:`\eta_t`, a float or a schedule (the graft sets the step size, so
        Adam's learning rates carry over).
      b1: :math:`\beta_1`, the decay of the momentum.
      b2: :math:`\beta_2`, the decay of the statistics and of the graft's :math:`v_t`; 1 sums
        the statistics (the original Shampoo; needs graft "adagrad").
      eps: :math:`\epsilon`, added to the graft's root.
      matrix_eps: :math:`\epsilon_M`, the damping of the roots relative to the largest
        eigenvalue (Anil et al.'s 1e-6).
      block_size: the largest side of a block.
      precondition_every: :math:`\tau`, steps between recomputations of the roots.
      start_preconditioning_step: :math:`t_0`, the first step that preconditions; before it,
        the step is the graft's while the statistics accumulate.
      graft: whose step norms Shampoo takes: "rmsprop" (Adam's, with momentum and bias
        correction) or "adagrad".
      weight_decay: :math:`\lambda`, decoupled as in AdamW.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Gupta, Koren & Singer, "Shampoo: Preconditioned Stochastic Tensor Optimization", ICML 2018.
      Anil, Gupta, Koren, Regan & Singer, "Scalable Second Order Optimization for Deep
      Learning", arXiv:2002.09018, 2020 (blocking, grafting, damping, exponential moving
      averages of the statistics).
    """
    return optax.chain(
        scale_by_shampoo(
            b1,
            b2,
            eps,
            matrix_eps,
            block_size,
            precondition_every,
            start_preconditioning_step,
            graft,
        ),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
