"""Layer-wise trust ratios for large-batch training: LARS (You, Gitman & Ginsburg 2017) and LAMB
(You et al. 2020); every parameter tensor (pytree leaf) is one layer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from baselines.adam import scale_by_adam
from baselines.sgd import scale_by_momentum


def _norm(x: jax.Array) -> jax.Array:
    """Euclidean norm of all entries, with a zero (not NaN) gradient at 0."""
    return optax.safe_norm(x, 0.0)


def _safe_ratio(numerator: jax.Array, denominator: jax.Array, ok: jax.Array) -> jax.Array:
    """`numerator / denominator` where `ok`, else 1 (finite on both branches)."""
    return jnp.where(ok, numerator / jnp.where(ok, denominator, 1.0), 1.0)


def scale_by_lars(
    trust_coefficient: float = 0.001, weight_decay: float = 0.0, eps: float = 0.0
) -> optax.GradientTransformation:
    """`lambda^l (g^l + beta w^l)` with LARS's local rate `lambda^l` per leaf (1 if a norm is 0)."""

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError("scale_by_lars needs the params")

        def one_layer(g, w):
            w_norm, g_norm = _norm(w), _norm(g)
            local_lr = _safe_ratio(
                trust_coefficient * w_norm,
                g_norm + weight_decay * w_norm + eps,
                (w_norm > 0) & (g_norm > 0),
            )
            return local_lr.astype(g.dtype) * (g + weight_decay * w)

        return jax.tree.map(one_layer, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def scale_by_trust_ratio(
    trust_coefficient: float = 1.0, eps: float = 0.0
) -> optax.GradientTransformation:
    """`u^l * trust_coefficient ||w^l|| / (||u^l|| + eps)` per leaf (unscaled if a norm is 0)."""

    def update_fn(updates, state, params):
        if params is None:
            raise ValueError("scale_by_trust_ratio needs the params")

        def one_layer(u, w):
            w_norm, u_norm = _norm(w), _norm(u)
            ratio = _safe_ratio(
                trust_coefficient * w_norm, u_norm + eps, (w_norm > 0) & (u_norm > 0)
            )
            return ratio.astype(u.dtype) * u

        return jax.tree.map(one_layer, updates, params), state

    return optax.GradientTransformation(optax.init_empty_state, update_fn)


def lars(
    learning_rate: optax.ScalarOrSchedule = 1.0,
    weight_decay: float = 0.0,
    trust_coefficient: float = 0.001,
    eps: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = False,
) -> optax.GradientTransformationExtraArgs:
    r"""LARS: momentum SGD with a local learning rate per layer :math:`l`.

    You et al.'s Algorithm 1, with :math:`\gamma_t` the global learning rate, :math:`\eta` the
    trust coefficient, :math:`\beta` the weight decay and :math:`m` the momentum:

    .. math::

        \lambda^l &= \frac{\eta \|w^l_t\|}{\|\nabla L(w^l_t)\| + \beta \|w^l_t\| + \epsilon} \\
        v^l_{t+1} &= m v^l_t + \gamma_t \lambda^l (\nabla L(w^l_t) + \beta w^l_t) \\
        w^l_{t+1} &= w^l_t - v^l_{t+1}

    so each layer moves by a fixed fraction of its norm, whatever its gradient's scale. The
    denominator is the paper's :math:`\|g\| + \beta\|w\|`; optax's ``lars`` uses
    :math:`\|g + \beta w\|` (the same when ``weight_decay=0``). Like optax (and TensorFlow's
    reference code) :math:`\lambda^l = 1` when :math:`\|w^l\|` or :math:`\|g^l\|` is 0, so
    zero-initialised biases still move, and every leaf is a layer (no masks for biases or
    normalisation scales). The learning rate enters the momentum buffer, as in the paper.

    Args:
      learning_rate: the global rate :math:`\gamma_t`, a float or an optax schedule.
      weight_decay: :math:`\beta`.
      trust_coefficient: :math:`\eta` (the paper's 0.001).
      eps: :math:`\epsilon` in the denominator of :math:`\lambda^l` (0 in the paper).
      momentum: :math:`m` (the paper's 0.9).
      nesterov: apply the momentum in Nesterov's form (see `baselines.sgd.nesterov`).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      You, Gitman & Ginsburg, "Large Batch Training of Convolutional Networks",
      arXiv:1708.03888, 2017.
    """
    return optax.chain(
        scale_by_lars(trust_coefficient, weight_decay, eps),
        optax.scale_by_learning_rate(learning_rate),
        scale_by_momentum(momentum, nesterov),
    )


def lamb(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    eps_root: float = 0.0,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""LAMB: the Adam step with weight decay, rescaled per layer by a trust ratio.

    You et al.'s Algorithm 2 with :math:`\phi` the identity; for each layer :math:`l`:

    .. math::

        r_t &= \frac{\hat m_t}{\sqrt{\hat v_t + \bar\epsilon} + \epsilon} \\
        x^l_{t+1} &= x^l_t - \eta_t \frac{\|x^l_t\|}{\|r^l_t + \lambda x^l_t\|}
            (r^l_t + \lambda x^l_t)

    with :math:`\hat m_t, \hat v_t` Adam's bias-corrected moments (see `adam`). As in optax the
    ratio is 1 where :math:`\|x^l_t\|` or :math:`\|r^l_t + \lambda x^l_t\|` is 0, and every leaf
    is a layer (no masks).

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root (the paper's 1e-6).
      eps_root: :math:`\bar\epsilon`, added under the root.
      weight_decay: :math:`\lambda` (the paper used 0.01 for BERT).

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      You et al., "Large Batch Optimization for Deep Learning: Training BERT in 76 minutes",
      ICLR 2020.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps, eps_root),
        optax.add_decayed_weights(weight_decay),
        scale_by_trust_ratio(),
        optax.scale_by_learning_rate(learning_rate),
    )
