"""Small haiku networks for inner tasks: MLP, CNN and a character-level LSTM language model."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "gelu": jax.nn.gelu,
    "elu": jax.nn.elu,
}

INITIALIZERS: dict[str, hk.initializers.Initializer] = {
    # Glorot & Bengio 2010: Var(w) = 2 / (fan_in + fan_out), uniform.
    "glorot": hk.initializers.VarianceScaling(1.0, "fan_avg", "uniform"),
    # He et al. 2015, for ReLU: Var(w) = 2 / fan_in, half the units being active on average.
    "he": hk.initializers.VarianceScaling(2.0, "fan_in", "truncated_normal"),
    # LeCun 1998 (the "Xavier" of the lecture notes, w ~ N(0, 1 / fan_in)).
    "lecun": hk.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"),
    # A fixed small normal, w ~ N(0, 0.01^2): vanishing signals in deep nets, as the notes show.
    "normal": hk.initializers.RandomNormal(stddev=0.01),
}


def lookup(table: dict, name: str, what: str):
    """`table[name]`, or a ValueError listing the valid names."""
    if name not in table:
        raise ValueError(f"unknown {what} {name!r}; valid: {', '.join(sorted(table))}")
    return table[name]


def mlp(
    widths: Sequence[int], num_outputs: int, activation: str = "relu", initializer: str = "he"
) -> hk.Transformed:
    """Flattening MLP `x -> logits`; params `mlp/~/linear_i` hold `w` [in, out] and `b` [out]."""
    act = lookup(ACTIVATIONS, activation, "activation")
    w_init = lookup(INITIALIZERS, initializer, "initializer")

    def forward(x):
        x = x.reshape(x.shape[0], -1)
        net = hk.nets.MLP([*widths, num_outputs], w_init=w_init, activation=act, name="mlp")
        return net(x)

    return hk.without_apply_rng(hk.transform(forward))


def mlp_layer_names(num_hidden: int) -> tuple[str, ...]:
    """Params keys of the dense layers built by `mlp`, input to output."""
    return tuple(f"mlp/~/linear_{i}" for i in range(num_hidden + 1))


class PatchConv2D(hk.Module):
    """Stride-1 "SAME" 2-D convolution as one matmul over image patches (im2col):
    y[b, h, w, :] = b + sum_{i,j,c} x_pad[b, h + i, w + j, c] W[i, j, c, :].

    The same function and parameters (`w: [kh, kw, C, D]`, `b: [D]`) as `hk.Conv2D`. XLA on CPU
    computes a convolution's weight gradient about 50x slower inside a loop (the `lax.scan` of a
    training run) than outside one; a matmul's gradient is fast in both places.
    """

    def __init__(self, output_channels: int, kernel_shape: int, w_init, name: str = "conv2_d"):
        super().__init__(name=name)
        self.output_channels = output_channels
        self.kernel_shape = kernel_shape
        self.w_init = w_init

    def __call__(self, x: jax.Array) -> jax.Array:
        k, (batch, height, width, channels) = self.kernel_shape, x.shape
        shape = [k, k, channels, self.output_channels]
        w = hk.get_parameter("w", shape, x.dtype, init=self.w_init)
        b = hk.get_parameter("b", [self.output_channels], x.dtype, init=jnp.zeros)
        low = (k - 1) // 2
        padded = jnp.pad(x, ((0, 0), (low, k - 1 - low), (low, k - 1 - low), (0, 0)))
        patches = jnp.concatenate(
            [padded[:, i : i + height, j : j + width] for i in range(k) for j in range(k)], -1
        )
        y = patches.reshape(-1, k * k * channels) @ w.reshape(-1, self.output_channels) + b[None]
        return y.reshape(batch, height, width, self.output_channels)


def cnn(
    channels: Sequence[int],
    num_outputs: int,
    activation: str = "relu",
    initializer: str = "he",
) -> hk.Transformed:
    """Conv(3x3) + activation + 2x2 average pooling per entry of `channels`, then a linear head."""
    act = lookup(ACTIVATIONS, activation, "activation")
    w_init = lookup(INITIALIZERS, initializer, "initializer")

    def forward(x):
        for c in channels:
            x = act(PatchConv2D(c, kernel_shape=3, w_init=w_init)(x))
            x = hk.avg_pool(x, window_shape=2, strides=2, padding="SAME")
        x = x.reshape(x.shape[0], -1)
        return hk.Linear(num_outputs, w_init=w_init)(x)

    return hk.without_apply_rng(hk.transform(forward))


def char_lstm(vocab_size: int, embed_dim: int = 32, hidden: int = 128) -> hk.Transformed:
    """Character LSTM language model: tokens `[B, T]` -> next-token logits `[B, T, vocab]`."""

    def forward(tokens):
        x = hk.Embed(vocab_size, embed_dim)(tokens)
        core = hk.LSTM(hidden)
        state = core.initial_state(tokens.shape[0])
        h, _ = hk.dynamic_unroll(core, x, state, time_major=False)
        return hk.Linear(vocab_size)(h)

    return hk.without_apply_rng(hk.transform(forward))
