"""A coordinatewise LSTM learned optimizer (Andrychowicz et al. 2016, "Learning to learn by
gradient descent by gradient descent")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2o.optimizers import features
from l2o.optimizers.mlp import dense, normal_blocks

Theta = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
    """Sizes and constants of the coordinatewise LSTM optimizer.

    Attributes:
      hidden_size: units per LSTM layer (the paper: 20).
      num_layers: stacked LSTM layers (the paper: 2).
      preprocess_p: `p` of the log/sign gradient preprocessing (the paper: 10).
      output_scale: multiplies the LSTM's output (the paper: 0.01).
      residual: add a learnable Adam step to the LSTM's output and start the output layer at
        zero, so the untrained optimizer is Adam (not in the paper; see `make_lstm`).
      learning_rate: initial value of the residual step size `exp(theta["log_lr"])`.
      b1: momentum decay of the residual Adam step.
    """

    hidden_size: int = 20
    num_layers: int = 2
    preprocess_p: float = features.LOG_SIGN_P
    output_scale: float = 0.01
    residual: bool = True
    learning_rate: float = 3e-3
    b1: float = 0.9

    def __post_init__(self):
        if self.hidden_size < 1 or not 1 <= self.num_layers <= 64:
            raise ValueError("LSTMConfig needs hidden_size >= 1 and 1 <= num_layers <= 64")
        if not (self.learning_rate > 0 and self.preprocess_p > 0 and 0 <= self.b1 < 1):
            raise ValueError("LSTMConfig needs learning_rate, preprocess_p > 0 and b1 in [0, 1)")


class LSTMState(NamedTuple):
    """Update count; per parameter leaf a tuple of `(h, c)` per layer, each `[hidden, *shape]`;
    the residual Adam step's moments (`optax.EmptyState()` without `residual`)."""

    count: jax.Array
    hidden: optax.Updates
    base: features.FeatureState | optax.EmptyState


def lstm_cell(
    x: jax.Array, h: jax.Array, c: jax.Array, w_x: jax.Array, w_h: jax.Array, b: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """One LSTM step over the leading (channel) axis (gates i, f, g, o): the new `(h, c)`."""
    z = dense(x, w_x, b) + jnp.tensordot(w_h, h, axes=([0], [0]))
    i, f, g, o = jnp.split(z, 4, axis=0)
    c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(c), c


def init_lstm_layer(z: jax.Array, n_in: int, hidden: int) -> tuple[jax.Array, ...]:
    """`(w_x, w_h, b)` of one LSTM layer from standard normals `z` of shape `[n_in + hidden,
    4 hidden]`: fan-in scaled weights, zero biases except 1 for the forget gate."""
    w = z / math.sqrt(n_in + hidden)
    b = jnp.zeros((4 * hidden,), jnp.float32).at[hidden : 2 * hidden].set(1.0)
    return w[:n_in], w[n_in:], b


def make_lstm(
    config: LSTMConfig = LSTMConfig(),
) -> tuple[Callable[[jax.Array], Theta], Callable[[Theta], optax.GradientTransformationExtraArgs]]:
    r"""The coordinatewise LSTM optimizer: `(init_theta, transform)`.

    Every parameter element runs the same small LSTM (shared weights, its own hidden state) on
    its preprocessed gradient

    .. math::

        \tilde g = \begin{cases} (\log|g| / p, \operatorname{sign} g) & |g| \ge e^{-p} \\
        (-1, e^p g) & \text{otherwise} \end{cases}, \qquad
        \Delta\theta_t = 0.01 \, (w_{out}^\top h^{(L)}_t + b_{out})
        \;\left[ - \eta \frac{\hat\mu_t}{\sqrt{\hat\nu_t + \epsilon^2}} \right]_{\text{residual}},
        \qquad \eta = \exp(\theta_{\log\eta})

    where :math:`h^{(L)}_t` is the top layer's output after reading :math:`\tilde g_t` (gates
    i, f, g, o; forget-gate bias initialised to 1) and 0.01 is `output_scale`.

    Init: with ``residual=False`` (the paper's architecture) all weights are random and the
    untrained optimizer takes small, unstructured steps of about `output_scale` that do not
    converge. With ``residual=True`` (the default, used by the contract tests) the output layer
    starts at zero and a learnable Adam step (`learning_rate`, `b1`, b2 = 0.999) is added, so the
    untrained optimizer is exactly Adam and meta-training learns the LSTM's correction.

    Extras are accepted and ignored (the LSTM sees only gradients); `params` may be None.

    Args:
      config: sizes and constants, an `LSTMConfig`.

    Returns:
      `init_theta(key) -> theta` (a dict of float32 arrays) and
      `transform(theta) -> optax.GradientTransformationExtraArgs`.

    References:
      Andrychowicz et al., "Learning to learn by gradient descent by gradient descent",
      NeurIPS 2016.
    """
    hidden, layers = config.hidden_size, config.num_layers
    decays = (config.b1,)

    def init_theta(key: jax.Array) -> Theta:
        shapes = [(2 + hidden if i == 0 else 2 * hidden, 4 * hidden) for i in range(layers)]
        *normals, z_out = normal_blocks(key, [*shapes, (hidden, 1)])
        theta = {}
        for i, z in enumerate(normals):
            w_x, w_h, b = init_lstm_layer(z, 2 if i == 0 else hidden, hidden)
            theta |= {f"lstm{i}_wx": w_x, f"lstm{i}_wh": w_h, f"lstm{i}_b": b}
        out_w = z_out / math.sqrt(hidden)
        theta["out_w"] = jnp.zeros_like(out_w) if config.residual else out_w
        theta["out_b"] = jnp.zeros((1,), jnp.float32)
        if config.residual:
            theta["log_lr"] = jnp.asarray(math.log(config.learning_rate), jnp.float32)
        return theta

    def transform(theta: Theta) -> optax.GradientTransformationExtraArgs:
        def init_fn(params: optax.Params) -> LSTMState:
            def zeros(p):
                z = jnp.zeros((hidden, *jnp.shape(p)), jnp.float32)
                return tuple((z, z) for _ in range(layers))

            base = features.init_features(params, 1) if config.residual else optax.EmptyState()
            return LSTMState(jnp.zeros([], jnp.int32), jax.tree.map(zeros, params), base)

        def update_fn(updates, state, params=None, **extra_args):
            del params, extra_args
            base = state.base
            if config.residual:
                base = features.update_features(base, updates, decays)
                lr = jnp.exp(theta["log_lr"])
            count = optax.safe_increment(state.count)

            def leaf(g, carry, *moments):
                x = features.log_sign(g, config.preprocess_p)
                new_carry = []
                for i, (h, c) in enumerate(carry):
                    h, c = lstm_cell(
                        x, h, c, theta[f"lstm{i}_wx"], theta[f"lstm{i}_wh"], theta[f"lstm{i}_b"]
                    )
                    new_carry.append((h, c))
                    x = h
                step = config.output_scale * dense(x, theta["out_w"], theta["out_b"])[0]
                if config.residual:
                    mu, nu = moments
                    step = step - lr * features.adam_direction(mu, nu, count, decays)[0]
                return step.astype(jnp.result_type(g)), tuple(new_carry)

            moments = (base.mu, base.nu) if config.residual else ()
            new_updates, hidden_state = features.map_leaves(
                leaf, 2, updates, state.hidden, *moments
            )
            return new_updates, LSTMState(count, hidden_state, base)

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return init_theta, transform
