"""Classification tasks: a dataset held in device memory, a haiku network and cross-entropy."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import optax

from tasks import image_ops, networks
from tasks.base import LayeredNet, Task
from tasks.image_datasets import load_cifar10, load_digits, load_fashion_mnist, load_mnist
from tasks.mnist1d import make_mnist1d

Split = tuple[np.ndarray, np.ndarray]

DATASETS: dict[str, Callable[[], dict[str, Split]]] = {
    "digits": load_digits,
    "mnist1d": make_mnist1d,
    "mnist": load_mnist,
    "fmnist": load_fashion_mnist,
    "cifar10": load_cifar10,
}
OFFLINE_DATASETS = ("digits", "mnist1d")


@functools.cache
def load_splits(
    dataset: str, size: int | None = None, grey: bool = False, valid_fraction: float = 0.1
) -> dict[str, Split]:
    """`train`/`valid`/`test` host arrays; `valid` is the last `valid_fraction` of the training set.

    Images are optionally resized to `size x size` and grey-scaled; labels are int32.
    """
    raw = networks.lookup(DATASETS, dataset, "dataset")()
    out = {}
    for split in ("train", "test"):
        x, y = raw[split]
        if grey:
            x = image_ops.to_grey(x)
        if size is not None:
            x = image_ops.resize(x, size)
        out[split] = (x, np.asarray(y, np.int32))
    x, y = out["train"]
    num_valid = max(1, int(round(valid_fraction * len(y))))
    out["train"] = (x[:-num_valid], y[:-num_valid])
    out["valid"] = (x[-num_valid:], y[-num_valid:])
    return out


def _normalize(x, mean, std):
    return (x.astype(jnp.float32) - mean) / std


def classification_task(
    name: str,
    splits: dict[str, Split],
    net: hk.Transformed,
    *,
    batch_size: int,
    eval_batch_size: int = 10_000,
    layered: Callable[[Callable], LayeredNet] | None = None,
) -> Task:
    """A Task training `net` with softmax cross-entropy on `splits`, inputs standardized.

    Training batches are drawn uniformly with replacement; an evaluation uses a split whole when
    it holds at most `eval_batch_size` examples.
    """
    x_train = splits["train"][0]
    channel_axes = tuple(range(x_train.ndim - 1)) if x_train.ndim == 4 else None
    keep = channel_axes is not None
    mean = np.asarray(x_train.mean(axis=channel_axes, keepdims=keep), np.float32)
    std = np.asarray(x_train.std(axis=channel_axes, keepdims=keep), np.float32) + np.float32(1e-6)
    data = {
        "splits": {k: (jnp.asarray(x), jnp.asarray(y)) for k, (x, y) in splits.items()},
        "mean": jnp.asarray(mean),
        "std": jnp.asarray(std),
    }

    def sampler(data, key, split, batch_size):
        x, y = data["splits"][split]
        if batch_size < x.shape[0]:
            idx = jax.random.randint(key, (batch_size,), 0, x.shape[0])
            x, y = x[idx], y[idx]
        return _normalize(x, data["mean"], data["std"]), y

    def logits_loss(logits, batch):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]))

    def loss(params, key, batch):
        logits = net.apply(params, batch[0])
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch[1])
        return logits_loss(logits, batch), {"accuracy": accuracy}

    example = jnp.zeros((1, *x_train.shape[1:]), jnp.float32)
    return Task(
        name=name,
        init=lambda key: net.init(key, example),
        loss=loss,
        sampler=sampler,
        data=data,
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        layered=layered(logits_loss) if layered else None,
    )


def mlp_classifier(
    dataset: str,
    *,
    size: int | None = None,
    grey: bool = False,
    hidden: Sequence[int] = (32,),
    activation: str = "relu",
    initializer: str = "he",
    batch_size: int = 128,
    name: str | None = None,
    eval_batch_size: int = 10_000,
) -> Task:
    """An MLP classifier on `dataset` (see DATASETS), optionally resized/grey-scaled; an
    evaluation uses a split whole up to `eval_batch_size` examples, else a random batch."""
    splits = load_splits(dataset, size, grey)
    num_classes = int(splits["train"][1].max()) + 1
    hidden = tuple(int(h) for h in hidden)
    net = networks.mlp(hidden, num_classes, activation, initializer)

    def layered(logits_loss):
        return LayeredNet(
            layer_names=networks.mlp_layer_names(len(hidden)),
            activation=networks.ACTIVATIONS[activation],
            inputs=lambda batch: batch[0].reshape(batch[0].shape[0], -1),
            logits_loss=logits_loss,
        )

    default = f"{dataset}{size or ''}_mlp_{'x'.join(map(str, hidden)) or 'linear'}_{activation}"
    return classification_task(
        name or default, splits, net, batch_size=batch_size, eval_batch_size=eval_batch_size,
        layered=layered,
    )  # fmt: skip


def cnn_classifier(
    dataset: str,
    *,
    size: int | None = None,
    grey: bool = False,
    channels: Sequence[int] = (16, 32),
    activation: str = "relu",
    initializer: str = "he",
    batch_size: int = 64,
    eval_batch_size: int = 2_000,
    name: str | None = None,
) -> Task:
    """A small CNN classifier on an image dataset (see DATASETS)."""
    splits = load_splits(dataset, size, grey)
    if splits["train"][0].ndim != 4:
        raise ValueError(f"dataset {dataset!r} is not an image dataset; a CNN needs images")
    num_classes = int(splits["train"][1].max()) + 1
    net = networks.cnn(tuple(channels), num_classes, activation, initializer)
    default = f"{dataset}{size or ''}_cnn_{'x'.join(map(str, channels))}"
    return classification_task(
        name or default, splits, net, batch_size=batch_size, eval_batch_size=eval_batch_size
    )
