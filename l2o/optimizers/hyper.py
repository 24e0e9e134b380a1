"""A VeLO-style hypernetwork learned optimizer: a per-tensor LSTM mixes a bank of per-parameter
MLPs (Metz et al. 2022, "VeLO: Training Versatile Learned Optimizers by Scaling Up")."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from l2o.optimizers import features
from l2o.optimizers.lstm import init_lstm_layer, lstm_cell
from l2o.optimizers.mlp import (
    apply_mlp,
    check_sizes,
    dense,
    init_mlp,
    input_layer,
    normal_blocks,
    training_fraction,
)

Theta = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class HyperConfig:
    """Sizes and constants of the hypernetwork optimizer.

    Attributes:
      lstm_size: units of the per-tensor LSTM.
      num_mlps: `K`, the size of the bank of per-parameter MLPs.
      mlp_hidden_sizes: hidden widths of each per-parameter MLP (ReLU).
      exp_mult: `alpha`, scales the log-magnitude output.
      step_mult: `beta`, scales the direction output.
      learning_rate: initial value of the learnable base step size `exp(theta["log_lr"])`.
      base_decay: which momentum decay feeds the Adam-like base direction (one of `decays`).
      decays: momentum decays of the shared features.
      horizon: the training length assumed when the caller passes no `num_steps`.
    """

    lstm_size: int = 16
    num_mlps: int = 8
    mlp_hidden_sizes: tuple[int, ...] = (8, 8)
    exp_mult: float = 1e-3
    step_mult: float = 1e-3
    learning_rate: float = 3e-3
    base_decay: float = 0.9
    decays: tuple[float, ...] = features.DECAYS
    horizon: int = 10_000

    def __post_init__(self):
        check_sizes(self)
        if self.lstm_size < 1 or self.num_mlps < 1:
            raise ValueError("HyperConfig needs lstm_size >= 1 and num_mlps >= 1")


class HyperState(NamedTuple):
    """The shared features, the loss EMAs and the per-tensor LSTM state `[lstm_size, tensors]`."""

    features: features.FeatureState
    loss: features.LossState
    h: jax.Array
    c: jax.Array


def make_hyper(
    config: HyperConfig = HyperConfig(),
) -> tuple[Callable[[jax.Array], Theta], Callable[[Theta], optax.GradientTransformationExtraArgs]]:
    r"""The hypernetwork optimizer: `(init_theta, transform)`.

    Once per step and tensor, an LSTM reads the tensor's statistics (`features.tensor_statistics`:
    RMS of params, gradients and momenta, their sign consistency, rank, size), the 11 training
    progress embeddings and 3 features of the training loss's EMAs (from the `loss` extra). Its
    output gives the tensor's mixing weights :math:`c = \mathrm{softmax}(W_c h + b_c)` over a
    bank of :math:`K` per-parameter MLPs (shared by all tensors) and a log step multiplier
    :math:`s = w_s^\top h + b_s`. The tensor's MLP has weights :math:`\sum_k c_k \phi_k`; per
    element it reads the gradient, parameter and momenta (divided by their tensor RMS) and the
    Adam directions :math:`\hat\mu_k / \sqrt{\hat\nu}`, and outputs a direction :math:`d` and
    log-magnitude :math:`m`:

    .. math::

        \Delta\theta = -e^{s} \exp(\alpha m) \left( \eta \, \frac{\hat\mu}{\sqrt{\hat\nu +
        \epsilon^2}} + \beta d \right), \qquad \eta = \exp(\theta_{\log\eta})

    Init: the bank's output layers and both LSTM heads are zero, so :math:`d = m = s = 0`, the
    mixture is uniform, and the untrained optimizer is exactly Adam(`learning_rate`,
    b1=`base_decay`, b2=0.999).

    Extras (keyword-only): `loss` feeds the loss features (zeros without it); `step` and
    `num_steps` give the training fraction (else the state's count over `horizon`). `params` is
    required.

    Args:
      config: sizes and constants, a `HyperConfig`.

    Returns:
      `init_theta(key) -> theta` (a dict of float32 arrays) and
      `transform(theta) -> optax.GradientTransformationExtraArgs`.

    References:
      Metz et al., "VeLO: Training Versatile Learned Optimizers by Scaling Up", arXiv:2211.09760,
      2022; the per-tensor LSTM hypernetwork of learned_optimization's `hyper_v2`.
    """
    decays = tuple(config.decays)
    num_decays = len(decays)
    base = decays.index(config.base_decay)
    num_global = len(features.PROGRESS_TIMESCALES) + features.NUM_LOSS_FEATURES
    num_stats = 4 + 2 * num_decays + features.RANK_BUCKETS + 1
    lstm_in = num_global + num_stats
    mlp_sizes = (2 + 2 * num_decays, *config.mlp_hidden_sizes, 2)
    num_layers = len(mlp_sizes) - 1
    H = config.lstm_size

    def init_theta(key: jax.Array) -> Theta:
        k_lstm, k_bank = jax.random.split(key)
        (z,) = normal_blocks(k_lstm, [(lstm_in + H, 4 * H)])
        w_x, w_h, b = init_lstm_layer(z, lstm_in, H)
        bank = init_mlp(k_bank, mlp_sizes, leading=(config.num_mlps,))
        return {
            "lstm_wx": w_x,
            "lstm_wh": w_h,
            "lstm_b": b,
            "mix_w": jnp.zeros((H, config.num_mlps), jnp.float32),
            "mix_b": jnp.zeros((config.num_mlps,), jnp.float32),
            "step_w": jnp.zeros((H, 1), jnp.float32),
            "step_b": jnp.zeros((1,), jnp.float32),
            **{f"bank_{k}": v for k, v in bank.items()},
            "log_lr": jnp.asarray(math.log(config.learning_rate), jnp.float32),
        }

    def transform(theta: Theta) -> optax.GradientTransformationExtraArgs:
        bank = {k[len("bank_") :]: v for k, v in theta.items() if k.startswith("bank_")}

        def init_fn(params: optax.Params) -> HyperState:
            num_tensors = len(jax.tree.leaves(params))
            zeros = jnp.zeros((H, num_tensors), jnp.float32)
            return HyperState(
                features.init_features(params, num_decays), features.init_loss_state(), zeros, zeros
            )

        def update_fn(
            updates, state, params=None, *, loss=None, step=None, num_steps=None, **extra_args
        ):
            del extra_args
            if params is None:
                raise ValueError("the hypernetwork learned optimizer needs params")
            feats = features.update_features(state.features, updates, decays)
            loss_state = features.update_loss_state(state.loss, loss)
            fraction = training_fraction(feats.count - 1, step, num_steps, config.horizon)
            global_in = jnp.concatenate(
                [features.progress_embedding(fraction), features.loss_features(loss_state)]
            )

            treedef = jax.tree.structure(updates)
            if treedef.num_leaves == 0:
                return updates, HyperState(feats, loss_state, state.h, state.c)
            leaves = list(
                zip(
                    treedef.flatten_up_to(params),
                    treedef.flatten_up_to(updates),
                    treedef.flatten_up_to(feats.mu),
                    treedef.flatten_up_to(feats.nu),
                    strict=True,
                )
            )
            stats = jnp.stack([features.tensor_statistics(*leaf) for leaf in leaves], axis=1)
            global_in = jnp.broadcast_to(global_in[:, None], (num_global, len(leaves)))
            x = jnp.concatenate([global_in, stats])  # [lstm_in, num_tensors]
            h, c = lstm_cell(
                x, state.h, state.c, theta["lstm_wx"], theta["lstm_wh"], theta["lstm_b"]
            )
            mix = jax.nn.softmax(dense(h, theta["mix_w"], theta["mix_b"]), axis=0)
            log_step = dense(h, theta["step_w"], theta["step_b"])[0]
            lr = jnp.exp(theta["log_lr"])

            def leaf_update(i, p, g, mu, nu):
                w = jax.tree.map(lambda w: jnp.tensordot(mix[:, i], w, axes=1), bank)
                directions = features.adam_direction(mu, nu, feats.count, decays)
                # Gradient, param and momenta are divided by their tensor RMS (in input_layer);
                # the Adam directions are already scale-free.
                z = input_layer(w["w0"], w["b0"], p, g, mu)
                z = z + jnp.tensordot(w["w0"][2 + num_decays :], directions, axes=([0], [0]))
                out = apply_mlp(w, jax.nn.relu(z), num_layers, start=1) if num_layers > 1 else z
                step_ = jnp.exp(log_step[i] + config.exp_mult * out[1]) * (
                    lr * directions[base] + config.step_mult * out[0]
                )
                return (-step_).astype(jnp.result_type(p))

            new_leaves = [leaf_update(i, *leaf) for i, leaf in enumerate(leaves)]
            new_state = HyperState(feats, loss_state, h, c)
            return treedef.unflatten(new_leaves), new_state

        return optax.GradientTransformationExtraArgs(init_fn, update_fn)

    return init_theta, transform
