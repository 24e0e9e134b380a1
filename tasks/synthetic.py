"""Synthetic problems with known structure: quadratics, the noisy quadratic model, Rosenbrock,
linear, ill-conditioned least-squares and logistic regression."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from tasks.base import Task


def _no_batch(data, key, split, batch_size):
    return ()


def _no_aux_loss(fn):
    def loss(params, key, batch):
        return fn(params, batch), {}

    return loss


def quadratic(
    dim: int = 20, condition_number: float = 100.0, seed: int = 0, init_scale: float = 1.0
) -> Task:
    """Ill-conditioned quadratic f(x) = 1/2 (x - x*)^T Q diag(lambda) Q^T (x - x*).

    Eigenvalues are log-spaced from 1 to `condition_number`; Q is a random rotation and x* a
    random minimiser, both fixed by `seed`; the minimum value is 0. Full-batch (deterministic).
    """
    if dim < 1 or condition_number < 1:
        raise ValueError("quadratic needs dim >= 1 and condition_number >= 1")
    q_key, opt_key = jax.random.split(jax.random.key(seed))
    Q, _ = jnp.linalg.qr(jax.random.normal(q_key, (dim, dim)))
    eigenvalues = jnp.logspace(0.0, jnp.log10(condition_number), dim)
    A = (Q * eigenvalues[None, :]) @ Q.T
    x_star = jax.random.normal(opt_key, (dim,))

    def value(params, batch):
        d = params["x"] - x_star
        return 0.5 * d @ (A @ d)

    def init(key):
        return {"x": x_star + init_scale * jax.random.normal(key, (dim,))}

    return Task(
        name=f"quadratic_d{dim}_k{condition_number:g}",
        init=init,
        loss=_no_aux_loss(value),
        sampler=_no_batch,
    )


def noisy_quadratic(dim: int = 1000, batch_size: int = 32, init_scale: float = 1.0) -> Task:
    """Noisy quadratic model (Zhang et al. 2019, "Which algorithmic choices matter at which
    batch sizes?").

    Curvatures h_i = 1/i; the expected loss is 1/2 sum_i h_i x_i^2. A batch of size B draws
    c_i ~ N(0, 1 / (h_i B)) and the batch loss is 1/2 sum_i h_i (x_i - c_i)^2, so the gradient
    noise has covariance H / B, like a network's near a minimum. Valid/test use c = 0 (the
    noise-free loss, up to the constant dim / (2B)).
    """
    h = 1.0 / jnp.arange(1, dim + 1, dtype=jnp.float32)

    def sampler(data, key, split, batch):
        if split != "train":
            return jnp.zeros(dim)
        return jax.random.normal(key, (dim,)) / jnp.sqrt(h * batch)

    def value(params, c):
        return 0.5 * jnp.sum(h * (params["x"] - c) ** 2)

    def init(key):
        return {"x": init_scale * jax.random.normal(key, (dim,))}

    return Task(
        name=f"nqm_d{dim}_b{batch_size}",
        init=init,
        loss=_no_aux_loss(value),
        sampler=sampler,
        batch_size=batch_size,
        eval_batch_size=batch_size,
    )


def rosenbrock(dim: int = 2, init_noise: float = 0.1) -> Task:
    """Rosenbrock's valley f(x) = sum_i 100 (x_{i+1} - x_i^2)^2 + (1 - x_i)^2, minimum 0 at 1.

    Starts at the classic point (-1.2, 1, -1.2, 1, ...) plus N(0, init_noise^2) per seed.
    """
    if dim < 2:
        raise ValueError("rosenbrock needs dim >= 2")
    start = jnp.where(jnp.arange(dim) % 2 == 0, -1.2, 1.0)

    def value(params, batch):
        x = params["x"]
        return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2)

    def init(key):
        return {"x": start + init_noise * jax.random.normal(key, (dim,))}

    return Task(name=f"rosenbrock_d{dim}", init=init, loss=_no_aux_loss(value), sampler=_no_batch)


def _regression_data(seed, num_examples, dim, labels):
    """Train/valid/test splits of x ~ N(0, I) with labels from a fixed random linear model."""
    w_key, *split_keys = jax.random.split(jax.random.key(seed), 4)
    w_true = jax.random.normal(w_key, (dim,)) / jnp.sqrt(dim)
    data = {}
    for split, k in zip(("train", "valid", "test"), split_keys, strict=True):
        x_key, y_key = jax.random.split(k)
        x = jax.random.normal(x_key, (num_examples, dim))
        data[split] = (x, labels(y_key, x @ w_true))
    return data


def _regression_sampler(data, key, split, batch_size):
    x, y = data[split]
    if batch_size >= x.shape[0]:
        return x, y
    idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
    return x[idx], y[idx]


def _squared_error(params, key, batch):
    """1/2 mean (x.w + b - y)^2 of a linear model."""
    x, y = batch
    return 0.5 * jnp.mean((x @ params["w"] + params["b"] - y) ** 2), {}


def _linear_init(dim):
    def init(key):
        return {"w": 0.1 * jax.random.normal(key, (dim,)), "b": jnp.zeros(())}

    return init


def linear_regression(
    num_examples: int = 512, dim: int = 32, noise: float = 0.1, batch_size: int = 0, seed: int = 0
) -> Task:
    """Least squares 1/2 mean (x.w + b - y)^2 on y = x.w* + noise; `batch_size=0` is full batch."""

    def labels(key, z):
        return z + noise * jax.random.normal(key, z.shape)

    return Task(
        name=f"linreg_d{dim}",
        init=_linear_init(dim),
        loss=_squared_error,
        sampler=_regression_sampler,
        data=_regression_data(seed, num_examples, dim, labels),
        batch_size=batch_size or num_examples,
        eval_batch_size=num_examples,
    )


def ill_conditioned_least_squares(
    num_examples: int = 2048,
    dim: int = 32,
    condition: float = 1e4,
    noise: float = 0.1,
    batch_size: int = 128,
    seed: int = 0,
) -> Task:
    """Least squares 1/2 mean (x.w + b - y)^2 with rotated, ill-conditioned features.

    x = z diag(s) Q^T with z ~ N(0, I), s_i^2 log-spaced from 1 to 1 / `condition` and Q a random
    rotation (so no coordinate is an eigendirection); y = x.w* + noise with w* = Q diag(1/s) v,
    v ~ N(0, I / dim): every eigendirection carries the same share of the label variance, so the
    slow ones must be fitted too.
    """
    if dim < 1 or condition < 1:
        raise ValueError("ill_conditioned_least_squares needs dim >= 1 and condition >= 1")
    q_key, v_key, *split_keys = jax.random.split(jax.random.key(seed), 5)
    rotation, _ = jnp.linalg.qr(jax.random.normal(q_key, (dim, dim)))
    scales = jnp.asarray(condition, jnp.float32) ** (-0.5 * jnp.linspace(0.0, 1.0, dim))
    w_true = rotation @ (jax.random.normal(v_key, (dim,)) / jnp.sqrt(dim) / scales)
    data = {}
    for split, k in zip(("train", "valid", "test"), split_keys, strict=True):
        x_key, y_key = jax.random.split(k)
        x = (jax.random.normal(x_key, (num_examples, dim)) * scales[None, :]) @ rotation.T
        data[split] = (x, x @ w_true + noise * jax.random.normal(y_key, (num_examples,)))

    return Task(
        name=f"least_squares_d{dim}_k{condition:g}",
        init=_linear_init(dim),
        loss=_squared_error,
        sampler=_regression_sampler,
        data=data,
        batch_size=batch_size or num_examples,
        eval_batch_size=num_examples,
    )


def logistic_regression(
    num_examples: int = 512, dim: int = 32, batch_size: int = 0, seed: int = 0
) -> Task:
    """Binary logistic regression, labels y ~ Bernoulli(sigmoid(4 x.w*)); full batch by default."""

    def labels(key, z):
        return jax.random.bernoulli(key, jax.nn.sigmoid(4.0 * z)).astype(jnp.float32)

    def loss(params, key, batch):
        x, y = batch
        logits = x @ params["w"] + params["b"]
        accuracy = jnp.mean((logits > 0) == (y > 0.5))
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, y)), {"accuracy": accuracy}

    return Task(
        name=f"logreg_d{dim}",
        init=_linear_init(dim),
        loss=loss,
        sampler=_regression_sampler,
        data=_regression_data(seed, num_examples, dim, labels),
        batch_size=batch_size or num_examples,
        eval_batch_size=num_examples,
    )
