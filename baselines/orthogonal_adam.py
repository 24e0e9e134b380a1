"""Orthogonal Adam: Adam's direction orthogonalized by Newton-Schulz on every weight matrix and
rescaled to AdamW's step size, so one learning rate (AdamW's) serves matrices and vectors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from baselines.adam import scale_by_adam
from baselines.muon import NS_COEFFS, orthogonalised


def scale_to_matched_rms(
    rms: float = 0.2, ns_steps: int = 5, eps: float = 1e-7
) -> optax.GradientTransformation:
    """`rms O / rms(O)` on each leaf of two or more axes, `O` Muon's orthogonalization of the leaf
    (`baselines.muon.orthogonalised`); other leaves pass unchanged. Stateless."""

    def orthogonalize(u: jax.Array) -> jax.Array:
        if u.ndim < 2:
            return u
        o = orthogonalised(u, NS_COEFFS, ns_steps, eps).astype(
            jnp.promote_types(u.dtype, jnp.float32)
        )
        return (rms * o / (jnp.sqrt(jnp.mean(jnp.square(o))) + 1e-30)).astype(u.dtype)

    def update_fn(updates, state, params=None):
        del params
        return jax.tree.map(orthogonalize, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update_fn)


def orthogonal_adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    matched_rms: float = 0.2,
    ns_steps: int = 5,
    weight_decay: float = 0.0,
) -> optax.GradientTransformationExtraArgs:
    r"""Adam with its step on each weight matrix orthogonalized and rescaled to AdamW's size.

    .. math::

        d_t &= \frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon} \quad (\text{Adam's direction}) \\
        D_t &= \begin{cases}
            \rho\, O_t / \mathrm{rms}(O_t), \; O_t = \mathrm{NS}_5(d_t)
                & \text{on a matrix (two or more axes)} \\
            d_t & \text{on a vector or scalar}
        \end{cases} \\
        \theta_t &= \theta_{t-1} - \eta_t \left(D_t + \lambda \theta_{t-1}\right)

    :math:`\mathrm{NS}_5` is Muon's Newton-Schulz iteration (`baselines.muon.newton_schulz`), a
    tensor of more than two axes seen as :math:`(\prod_{i<d} n_i) \times n_d` (a convolution
    kernel HWIO as :math:`HWI \times O`). The factor :math:`\rho` = 0.2, about AdamW's update
    RMS (Liu et al. 2025), gives every matrix the same step size whatever its shape, so AdamW's
    tuned learning rate suits it. The direction is the one `l2o.optimizers.celo` orthogonalizes
    before its learned correction; it is the program `orthogonal_adam` of
    `search.programs_library` (which has no weight decay).

    Args:
      learning_rate: the step size :math:`\eta_t`, a float or an optax schedule.
      b1: :math:`\beta_1`, the decay of the first moment.
      b2: :math:`\beta_2`, the decay of the second moment.
      eps: :math:`\epsilon`, added to the root.
      matched_rms: :math:`\rho`, the RMS of a matrix's step before the learning rate.
      ns_steps: the number of Newton-Schulz iterations.
      weight_decay: :math:`\lambda`, decoupled, multiplied by :math:`\eta_t`.

    Returns:
      An `optax.GradientTransformationExtraArgs`.

    References:
      Jordan et al., "Muon: An optimizer for hidden layers in neural networks", 2024.
      Liu et al., "Muon is Scalable for LLM Training", 2025.
    """
    return optax.chain(
        scale_by_adam(b1, b2, eps),
        scale_to_matched_rms(matched_rms, ns_steps),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(learning_rate),
    )
