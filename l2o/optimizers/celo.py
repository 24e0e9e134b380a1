"""A normalized per-parameter MLP learned optimizer under a Muon-style harness, after Celo2
(Moudgil, Knyazev & Belilovsky, ICLR 2026) and Celo (Moudgil et al., TMLR 2025), with updates
scaled for width transfer (the spectral condition of Yang, Simon & Bernstein 2023, which muLO,
Therien et al., ICLR 2026, applies to learned optimizers)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from baselines.muon import NS_COEFFS, newton_schulz
from l2o.optimizers import features
from l2o.optimizers.mlp import dense_channels, init_mlp, training_fraction

Theta = dict[str, jax.Array]
NUM_INPUTS = 10
"""Per-element input channels: g, three momenta, three Adam ratios, g / sqrt(nu), and the
gradient and momentum under Adafactor's factored second moment."""


@dataclasses.dataclass(frozen=True)
class CeloConfig:
    """Sizes and constants of the Celo2-style optimizer.

    Attributes:
      hidden_sizes: widths of the per-parameter MLP's hidden layers (ReLU).
      decays: the three momentum decays the inputs read; the first drives the base direction
        and the vectors' AdamW.
      learning_rate: `eta`, the default learning rate (the update is linear in it, so a tuner
        or a schedule rescales it like any baseline's).
      weight_decay: `lambda`, decoupled (AdamW's), applied to every tensor.
      matrix_mult: `c`, the matrices' step relative to the vectors' at the reference shape
        (a 64 x 32 layer then moves about as much per element as under AdamW).
      orthogonalize: Newton-Schulz on matrix updates (Celo2); False applies the normalized
        learned update to every tensor (Celo2-base).
      normalize: divide the learned direction by its RMS over the tensor.
      scheduler_hidden: width of the learned learning-rate scheduler's recurrent state (Celo);
        0 for none (a learning rate the user schedules).
      horizon: the training length assumed when the caller passes no `num_steps`.
    """

    hidden_sizes: tuple[int, ...] = (8, 8)
    decays: tuple[float, ...] = (0.9, 0.99, 0.999)
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    matrix_mult: float = 10.0
    orthogonalize: bool = True
    normalize: bool = True
    scheduler_hidden: int = 0
    horizon: int = 10_000

    def __post_init__(self):
        if len(self.decays) != 3 or not all(0 <= d < 1 for d in self.decays):
            raise ValueError(f"decays must be three numbers in [0, 1), got {self.decays}")
        if any(w < 1 for w in self.hidden_sizes) or self.horizon < 1:
            raise ValueError("hidden sizes and horizon must be >= 1")
        if not (self.learning_rate > 0 and self.matrix_mult > 0 and self.weight_decay >= 0):
            raise ValueError("learning_rate and matrix_mult must be > 0, weight_decay >= 0")
        if self.scheduler_hidden < 0:
            raise ValueError(f"scheduler_hidden must be >= 0, got {self.scheduler_hidden}")


class CeloState(NamedTuple):
    """The shared accumulators (`features.FeatureState`), the training-loss EMAs and the
    scheduler's recurrent state `h` (shape `[scheduler_hidden]`)."""

    moments: features.FeatureState
    loss: features.LossState
    h: jax.Array


def _is_embedding(path) -> bool:
    return "embed" in jax.tree_util.keystr(path).lower()


def matrix_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """A leaf as a (fan_in, fan_out) matrix: leading axes fold into fan_in (haiku's layout)."""
    return math.prod(shape[:-1]), shape[-1]


def factored_rsqrt(nu: jax.Array, eps: float = 1e-20) -> jax.Array:
    r"""Adafactor's factored inverse root of a second moment `nu` seen as a matrix:
    :math:`(r_i c_j / \bar r)^{-1/2}`, `r` and `c` its row and column means; for vectors and
    scalars, :math:`\nu^{-1/2}`."""
    if nu.ndim < 2:
        return jax.lax.rsqrt(nu + eps)
    m = nu.reshape(matrix_shape(nu.shape))
    row, col = jnp.mean(m, axis=1, keepdims=True), jnp.mean(m, axis=0, keepdims=True)
    return jax.lax.rsqrt(row * col / (jnp.mean(row) + eps) + eps).reshape(nu.shape)


def element_channels(
    g: jax.Array, mu: jax.Array, nu: jax.Array, count: jax.Array, decays
) -> list[jax.Array]:
    """The `NUM_INPUTS` per-element channels of a tensor, each of its shape: g, three momenta,
    three Adam ratios, g / sqrt(nu), and g and the first momentum under the factored second
    moment. The network reads each divided by its RMS over the tensor (`channel_scales`), so
    the inputs do not change with the tensor's scale or size."""
    g = g.astype(jnp.float32)
    ratios = features.adam_direction(mu, nu, count, decays)
    factored = factored_rsqrt(nu)
    return [g, *mu, *ratios, g * jax.lax.rsqrt(nu + 1e-16), g * factored, mu[0] * factored]


def channel_scales(channels: list[jax.Array]) -> jax.Array:
    """`1 / RMS` of each channel over its tensor: `[len(channels)]`."""
    return jnp.stack([features.channel_scale(c[None])[0] for c in channels])


def scheduler_inputs(loss: features.LossState, fraction: jax.Array) -> jax.Array:
    """The scheduler's inputs: the three loss features and the progress embedding."""
    return jnp.concatenate([features.loss_features(loss), features.progress_embedding(fraction)])


def make_celo(
    config: CeloConfig = CeloConfig(),
) -> tuple[Callable[[jax.Array], Theta], Callable[[Theta], optax.GradientTransformationExtraArgs]]:
    r"""The Celo2-style learned optimizer: `(init_theta, transform)`.

    Per element of a tensor, the inputs :math:`x` (`element_channels`: gradient, momenta at three
    decays, Adam ratios, factored-second-moment gradient and momentum, each RMS-normalized over
    the tensor; the training fraction :math:`t/T` enters as 11 tanh embeddings) feed a small
    MLP whose output corrects the Adam direction; the result is RMS-normalized over the tensor:

    .. math::

        d = \frac{a + f_\theta(x)}{\mathrm{rms}(a + f_\theta(x))}, \qquad
        a = \frac{\hat\mu_1}{\sqrt{\hat\nu + \epsilon^2}}.

    A matrix :math:`W \in \mathbb{R}^{n_\mathrm{in} \times n_\mathrm{out}}` (leading axes of
    conv kernels fold into :math:`n_\mathrm{in}`) steps along the orthogonalized direction,
    scaled so that its spectral norm follows :math:`\sqrt{n_\mathrm{out} / n_\mathrm{in}}` (the
    width-transfer condition of muP); vectors, scalars and embeddings (a path containing
    `embed`) take AdamW's direction :math:`a`. With decoupled weight decay :math:`\lambda` and
    a learning rate :math:`\eta_t`,

    .. math::

        \Delta W = -\eta_t \left(c \sqrt{n_\mathrm{out}/n_\mathrm{in}} \,
        \mathrm{NS}_5(d) + \lambda W\right), \qquad
        \Delta b = -\eta_t (a + \lambda b).

    :math:`\eta_t = \eta` (constant; schedule it from outside), or with a learned scheduler
    (Celo) :math:`\eta_t = \eta \exp(\mathrm{clip}(w^\top h_t + b, -5, 5))`,
    :math:`h_t = \tanh(U h_{t-1} + V z_t + e)`, :math:`z_t` the training loss's features and
    the progress embedding.

    Init: the MLP's last layer and the scheduler's read-out are zero, so the untrained optimizer
    is Muon over Adam's direction (with AdamW on the rest) at constant :math:`\eta`.

    Extras (keyword-only): `step` and `num_steps` give the training fraction (else the state's
    count over `horizon`); `loss` feeds the scheduler. `params` is required.

    References:
      Moudgil, Knyazev & Belilovsky, "Celo2: Towards learned optimization free lunch", ICLR 2026;
      Moudgil et al., "Celo: Training versatile learned optimizers on a compute diet", TMLR 2025;
      Yang, Simon & Bernstein, "A spectral condition for feature learning", 2023;
      Therien et al., "muLO: Compute-efficient meta-generalization of learned optimizers", 2026.
    """
    decays = tuple(config.decays)
    num_progress = len(features.PROGRESS_TIMESCALES)
    sizes = (NUM_INPUTS + num_progress, *config.hidden_sizes, 1)
    num_layers = len(sizes) - 1
    hidden = config.scheduler_hidden
    num_sched_inputs = features.NUM_LOSS_FEATURES + num_progress

    def init_theta(key: jax.Array) -> Theta:
        mlp_key, sched_key = jax.random.split(key)
        theta = init_mlp(mlp_key, sizes)
        if hidden:
            u_key, v_key = jax.random.split(sched_key)
            theta["sched_u"] = jax.random.normal(u_key, (hidden, hidden)) / math.sqrt(hidden)
            theta["sched_v"] = jax.random.normal(v_key, (num_sched_inputs, hidden)) / math.sqrt(
                num_sched_inputs
            )
            theta["sched_e"] = jnp.zeros((hidden,), jnp.float32)
            theta["sched_w"] = jnp.zeros((hidden,), jnp.float32)
            theta["sched_b"] = jnp.zeros((), jnp.float32)
        return theta

    def transform(theta: Theta) -> optax.GradientTransformationExtraArgs:
        def init_fn(params: optax.Params) -> CeloState:
            return CeloState(
                features.init_features(params, len(decays)),
                features.init_loss_state(),
                jnp.zeros((hidden,), jnp.float32),
            )

        def update_fn(updates, state, params=None, *, step=None, num_steps=None, loss=None,
                      **extra_args):  # fmt: skip
            del extra_args
            if params is None:
                raise ValueError("the Celo learned optimizer needs params")
            moments = features.update_features(state.moments, updates, decays)
            count = moments.count
            fraction = training_fraction(count - 1, step, num_steps, config.horizon)
            embedding = features.progress_embedding(fraction)
            first_bias = theta["b0"] + embedding @ theta["w0"][NUM_INPUTS:]
            w_first = theta["w0"][:NUM_INPUTS]

            loss_state, h, lr = state.loss, state.h, jnp.float32(config.learning_rate)
            if hidden:
                loss_state = features.update_loss_state(state.loss, loss)
                z = scheduler_inputs(loss_state, fraction)
                h = jnp.tanh(h @ theta["sched_u"] + z @ theta["sched_v"] + theta["sched_e"])
                log_mult = jnp.clip(h @ theta["sched_w"] + theta["sched_b"], -5.0, 5.0)
                lr = lr * jnp.exp(log_mult)

            def leaf(path, p, g, mu, nu):
                adam = features.adam_direction(mu[:1], nu, count, decays[:1])[0]
                matrix = p.ndim >= 2 and not _is_embedding(path)
                if matrix or not config.orthogonalize:
                    x = element_channels(g, mu, nu, count, decays)
                    h = dense_channels(x, w_first * channel_scales(x)[:, None], first_bias)
                    for i in range(1, num_layers):
                        h = dense_channels(
                            [jax.nn.relu(v) for v in h], theta[f"w{i}"], theta[f"b{i}"]
                        )
                    d = adam + h[0]
                    if config.normalize:
                        d = d * features.channel_scale(d[None])[0]
                    if matrix and config.orthogonalize:
                        fan_in, fan_out = matrix_shape(p.shape)
                        o = newton_schulz(d.reshape(fan_in, fan_out), NS_COEFFS, 5)
                        scale = config.matrix_mult * math.sqrt(fan_out / fan_in)
                        d = scale * o.reshape(p.shape)
                else:
                    d = adam
                step_ = lr * (d + config.weight_decay * p.astype(jnp.float32))
                return (-step_).astype(jnp.result_type(p))

            new_updates = jax.tree_util.tree_map_with_path(
                leaf, params, updates, moments.mu, moments.nu
            )
            return new_updates, CeloState(moments, loss_state, h)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return init_theta, transform
