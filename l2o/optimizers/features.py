"""The per-parameter and per-tensor inputs every learned optimizer reads (Andrychowicz et al. 2016;
Metz et al. 2022, "Practical tradeoffs between memory, compute, and performance in learned
optimizers"; Metz et al. 2022, "VeLO").

Accumulators live in `FeatureState`, one float32 leaf per parameter tensor (momenta stacked on a
leading axis). Per-element features are channel-first, `[C, *shape]`: a per-parameter network is
then one matrix product `W^T x` per layer over all elements of a tensor. Everything is elementwise
or a reduction over one tensor: no Python loop touches elements, any rank works (scalars, vectors,
matrices, conv kernels), and the functions are pure, so `jax.jit`, `jax.vmap` and `jax.lax.scan`
apply unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

PyTree = Any

DECAYS = (0.1, 0.5, 0.9, 0.99, 0.999, 0.9999)
"""Momentum decays of small_fc_lopt: timescales from one step to ten thousand."""
B2 = 0.999
"""Decay of the second-moment (RMS) accumulator, Adam's default."""
PROGRESS_TIMESCALES = (1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
"""Fractions of training at which each of the 11 progress embeddings crosses zero."""
LOG_SIGN_P = 10.0
"""Andrychowicz et al.'s preprocessing constant `p`."""
RANK_BUCKETS = 5
"""Tensor ranks 0, 1, 2, 3 and >= 4, one-hot."""
NUM_TENSOR_STATS = 4 + 2 * len(DECAYS) + RANK_BUCKETS + 1
"""Length of `tensor_statistics` with the default decays."""
NUM_LOSS_FEATURES = 3
"""Length of `loss_features`."""

LOSS_DECAYS = (0.5, 0.9, 0.99)
"""Decays of the training-loss EMAs (fast, medium, slow)."""


class FeatureState(NamedTuple):
    """Step count, momenta `mu` (leaf `[len(decays), *shape]`) and second moment `nu` (leaf
    `[*shape]`), all float32 whatever the params' dtype."""

    count: jax.Array
    mu: optax.Updates
    nu: optax.Updates


class LossState(NamedTuple):
    """Bias-uncorrected EMAs of the training loss at `LOSS_DECAYS`, their count, the running
    minimum of the fastest (bias-corrected) EMA."""

    count: jax.Array
    ema: jax.Array
    minimum: jax.Array


def _f32(x: jax.Array) -> jax.Array:
    return jnp.asarray(x, jnp.float32)


def channel_values(values: Sequence[float] | jax.Array, ndim: int) -> jax.Array:
    """`values` shaped `[len(values)] + [1] * ndim`, to scale the channels of a `[C, *shape]` array
    of a rank-`ndim` tensor (explicit shapes: no rank promotion)."""
    values = jnp.asarray(values, jnp.float32)
    return values.reshape(values.shape + (1,) * ndim)


def init_features(params: optax.Params, num_decays: int = len(DECAYS)) -> FeatureState:
    """Zero accumulators for `params`, count 0."""
    return FeatureState(
        count=jnp.zeros([], jnp.int32),
        mu=jax.tree.map(lambda p: jnp.zeros((num_decays, *jnp.shape(p)), jnp.float32), params),
        nu=jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.float32), params),
    )


def update_features(
    state: FeatureState,
    grads: optax.Updates,
    decays: Sequence[float] = DECAYS,
    b2: float = B2,
) -> FeatureState:
    """`mu_k <- d_k mu_k + (1 - d_k) g` for each decay `d_k`, `nu <- b2 nu + (1 - b2) g^2`."""

    def moments(mu, nu, g):
        g = _f32(g)
        d = channel_values(decays, g.ndim)
        return d * mu + (1 - d) * g[None], b2 * nu + (1 - b2) * jnp.square(g)

    mu, nu = map_leaves(moments, 2, state.mu, state.nu, grads)
    return FeatureState(count=optax.safe_increment(state.count), mu=mu, nu=nu)


def bias_correction(decays: Sequence[float], count: jax.Array, ndim: int) -> jax.Array:
    """`1 / (1 - d_k^count)` per decay, shaped `[K] + [1] * ndim` (for a `[K, *shape]` leaf)."""
    d = channel_values(decays, ndim)
    return 1.0 / (1.0 - d ** jnp.maximum(count, 1).astype(jnp.float32))


def adam_direction(
    mu: jax.Array,
    nu: jax.Array,
    count: jax.Array,
    decays: Sequence[float] = DECAYS,
    b2: float = B2,
    eps: float = 1e-8,
) -> jax.Array:
    """Bias-corrected `mu_hat_k / sqrt(nu_hat + eps^2)` for every decay: leaf `[K, *shape]`.

    `eps` sits under the root (squared) so the derivative stays finite where `nu = 0`, which
    differentiating through an unroll needs; with `eps = 1e-8` it matches Adam to float32 precision.
    """
    mu_hat = mu * bias_correction(decays, count, nu.ndim)
    nu_hat = nu / (1.0 - b2 ** jnp.maximum(count, 1).astype(jnp.float32))
    return mu_hat * jax.lax.rsqrt(nu_hat + eps**2)[None]


def channel_scale(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """`1 / RMS` of each channel of `x` (leading axis) over the tensor (all other axes): `[C]`."""
    axes = tuple(range(1, x.ndim))
    return jax.lax.rsqrt(eps + jnp.mean(jnp.square(x), axis=axes))


def tensor_rms_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Each channel of `x` (leading axis) divided by its RMS over the tensor (all other axes)."""
    return x * channel_values(channel_scale(x, eps), x.ndim - 1)


def raw_inputs(p: jax.Array, g: jax.Array, mu: jax.Array) -> jax.Array:
    """small_fc_lopt's per-parameter inputs `[g, p, mu_1..mu_K]` before normalisation: leaf
    `[2 + K, *shape]`."""
    return jnp.concatenate([_f32(g)[None], _f32(p)[None], mu], axis=0)


def normalized_inputs(p: jax.Array, g: jax.Array, mu: jax.Array) -> jax.Array:
    """`raw_inputs` with each channel divided by its RMS over the tensor (scale-free inputs)."""
    return tensor_rms_normalize(raw_inputs(p, g, mu))


def progress(step: jax.Array, num_steps: jax.Array | int) -> jax.Array:
    """Fraction of training done, `step / num_steps` clipped to [0, 1] (float32 scalar)."""
    fraction = _f32(step) / jnp.maximum(_f32(num_steps), 1.0)
    return jnp.clip(fraction, 0.0, 1.0)


def progress_embedding(
    fraction: jax.Array, timescales: Sequence[float] = PROGRESS_TIMESCALES
) -> jax.Array:
    """`tanh(fraction / tau - 1)` for each timescale `tau`: a `[len(timescales)]` vector in
    [-1, 1] (learned_optimization's step embedding, on the fraction of training)."""
    return jnp.tanh(_f32(fraction) / jnp.asarray(timescales, jnp.float32) - 1.0)


def log_sign(g: jax.Array, p: float = LOG_SIGN_P) -> jax.Array:
    r"""Andrychowicz et al.'s gradient preprocessing, leaf `[2, *shape]`.

    .. math::

        g \mapsto \begin{cases} (\log|g| / p, \operatorname{sign} g) & |g| \ge e^{-p} \\
        (-1, e^p g) & \text{otherwise} \end{cases}
    """
    g = _f32(g)
    big = jnp.abs(g) >= jnp.exp(-p)
    log_part = jnp.log(jnp.maximum(jnp.abs(g), jnp.exp(-p))) / p
    first = jnp.where(big, log_part, -1.0)
    second = jnp.where(big, jnp.sign(g), jnp.exp(p) * g)
    return jnp.stack([first, second])


def clipped_log(x: jax.Array) -> jax.Array:
    """`log(|x| + 1e-12)` clipped to [-20, 5] and divided by 10: a bounded magnitude feature."""
    return jnp.clip(jnp.log(jnp.abs(x) + 1e-12), -20.0, 5.0) / 10.0


def _mean_square(x: jax.Array, axes: tuple[int, ...] | None = None) -> jax.Array:
    return jnp.mean(jnp.square(x), axis=axes)


def _safe_sqrt(x: jax.Array) -> jax.Array:
    """`sqrt(x + 1e-30)`: finite derivative at 0 (an all-zero tensor must not turn the
    meta-gradient into NaN)."""
    return jnp.sqrt(x + 1e-30)


def tensor_statistics(p: jax.Array, g: jax.Array, mu: jax.Array, nu: jax.Array) -> jax.Array:
    """VeLO-style summary of one tensor, a `[4 + 2K + 6]` vector.

    Clipped logs of the RMS of `p`, of `g` and of `sqrt(nu)`; `mean|g| / rms(g)`; per momentum
    the clipped log of its RMS and `mean / rms` (how consistently it points one way); the rank
    one-hot (0, 1, 2, 3, >= 4); log10 of the size over 10.
    """
    p, g = _f32(p), _f32(g)
    rms_g = _safe_sqrt(_mean_square(g))
    axes = tuple(range(1, mu.ndim))
    rms_mu = _safe_sqrt(_mean_square(mu, axes))
    mean_mu = jnp.mean(mu, axis=axes)
    rank = jax.nn.one_hot(min(p.ndim, RANK_BUCKETS - 1), RANK_BUCKETS, dtype=jnp.float32)
    size = jnp.full([1], jnp.log10(max(p.size, 1)) / 10.0, jnp.float32)
    scalars = jnp.stack(
        [
            clipped_log(_safe_sqrt(_mean_square(p))),
            clipped_log(rms_g),
            clipped_log(_safe_sqrt(jnp.mean(nu))),
            jnp.mean(jnp.abs(g)) / (rms_g + 1e-12),
        ]
    )
    sign_consistency = mean_mu / (rms_mu + 1e-12)
    return jnp.concatenate([scalars, clipped_log(rms_mu), sign_consistency, rank, size])


def init_loss_state() -> LossState:
    """Zero loss EMAs, count 0, minimum +inf-like (a large finite number)."""
    n = len(LOSS_DECAYS)
    return LossState(
        count=jnp.zeros([], jnp.int32),
        ema=jnp.zeros([n], jnp.float32),
        minimum=jnp.full([], 1e30, jnp.float32),
    )


def update_loss_state(state: LossState, loss: jax.Array | None) -> LossState:
    """Fold one training loss into the EMAs; a missing or non-finite loss leaves them unchanged."""
    if loss is None:
        return state
    loss = _f32(loss)
    ok = jnp.isfinite(loss)
    d = jnp.asarray(LOSS_DECAYS, jnp.float32)
    ema = jnp.where(ok, d * state.ema + (1 - d) * jnp.where(ok, loss, 0.0), state.ema)
    count = jnp.where(ok, optax.safe_increment(state.count), state.count)
    fast = ema[0] / (1 - d[0] ** jnp.maximum(count, 1).astype(jnp.float32))
    minimum = jnp.where(ok, jnp.minimum(state.minimum, fast), state.minimum)
    return LossState(count=count, ema=ema, minimum=minimum)


def loss_features(state: LossState) -> jax.Array:
    """Three features in [-1, 1] from the loss EMAs: the relative change fast vs medium and medium
    vs slow, and how far the fast EMA sits above its running minimum (relative to the slow EMA's
    distance). All zero before the first loss."""
    d = jnp.asarray(LOSS_DECAYS, jnp.float32)
    corrected = state.ema / (1 - d ** jnp.maximum(state.count, 1).astype(jnp.float32))
    fast, medium, slow = corrected[0], corrected[1], corrected[2]

    def ratio(num, den):
        den = jnp.abs(den) + 1e-6 * jnp.abs(slow) + 1e-12
        return jnp.clip(num / den, -1.0, 1.0)

    feats = jnp.stack(
        [
            ratio(fast - medium, medium),
            ratio(medium - slow, slow),
            2.0 * ratio(fast - state.minimum, slow - state.minimum) - 1.0,
        ]
    )
    return jnp.where(state.count > 0, jnp.clip(feats, -1.0, 1.0), 0.0)


def split_tree(outer: PyTree, tree: PyTree, n: int) -> tuple[PyTree, ...]:
    """Split a tree of `n`-tuples laid out like `outer` into `n` trees laid out like `outer`."""
    treedef = jax.tree.structure(outer)
    parts = treedef.flatten_up_to(tree)
    return tuple(treedef.unflatten([part[i] for part in parts]) for i in range(n))


def map_leaves(fn: Callable[..., tuple], n_out: int, tree: PyTree, *rest: PyTree):
    """`jax.tree.map(fn, tree, *rest)` for an `fn` returning an `n_out`-tuple; returns `n_out`
    trees laid out like `tree` (the leaves of `rest` may be subtrees, e.g. tuples)."""
    out = jax.tree.map(fn, tree, *rest)
    return split_tree(tree, out, n_out)
