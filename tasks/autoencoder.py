"""Autoencoders: an MLP reconstructs its (standardized) input through a narrow code layer."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from tasks import networks
from tasks.base import Task
from tasks.classification import load_splits


def mlp_autoencoder(
    dataset: str,
    *,
    size: int | None = None,
    grey: bool = False,
    hidden: Sequence[int] = (32, 8, 32),
    activation: str = "relu",
    initializer: str = "he",
    batch_size: int = 128,
    eval_batch_size: int = 10_000,
    name: str | None = None,
) -> Task:
    """Mean squared reconstruction error 1/2 mean (f(x) - x)^2 of an MLP `f` on the images of
    `dataset` (labels unused), pixels standardized per feature over the training split."""
    splits = load_splits(dataset, size, grey)
    x_train = splits["train"][0].reshape(len(splits["train"][0]), -1).astype(np.float32)
    mean, std = x_train.mean(0, keepdims=True), x_train.std(0, keepdims=True) + np.float32(1e-3)
    net = networks.mlp(tuple(int(h) for h in hidden), x_train.shape[1], activation, initializer)
    data = {
        "splits": {k: jnp.asarray(x.reshape(len(x), -1)) for k, (x, _) in splits.items()},
        "mean": jnp.asarray(mean),
        "std": jnp.asarray(std),
    }

    def sampler(data, key, split, batch_size):
        x = data["splits"][split]
        if batch_size < x.shape[0]:
            x = x[jax.random.randint(key, (batch_size,), 0, x.shape[0])]
        return (x.astype(jnp.float32) - data["mean"]) / data["std"]

    def loss(params, key, batch):
        return 0.5 * jnp.mean((net.apply(params, batch) - batch) ** 2), {}

    default = f"{dataset}{size or ''}_autoencoder_{'x'.join(map(str, hidden))}"
    return Task(
        name=name or default,
        init=lambda key: net.init(key, jnp.zeros((1, x_train.shape[1]), jnp.float32)),
        loss=loss,
        sampler=sampler,
        data=data,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
    )
