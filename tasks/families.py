"""Task families: distributions over tasks to meta-train on (learned_optimization's TaskFamily)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from tasks import synthetic
from tasks.base import TaskFamily
from tasks.classification import OFFLINE_DATASETS, mlp_classifier
from tasks.registry import build_registered


def _choice(key: jax.Array, options: Sequence):
    """One of `options`, picked on the host from `key`."""
    return options[int(jax.random.randint(key, (), 0, len(options)))]


def mlp_classifiers(
    datasets: Sequence[str] = OFFLINE_DATASETS,
    widths: Sequence[int] = (16, 32, 64, 128),
    depths: Sequence[int] = (1, 2),
    activations: Sequence[str] = ("relu", "tanh", "gelu"),
    batch_sizes: Sequence[int] = (32, 64, 128),
) -> TaskFamily:
    """Random small MLP classifiers: dataset, width, depth, activation and batch size."""

    def sample(key):
        k = jax.random.split(key, 5)
        return {
            "dataset": _choice(k[0], datasets),
            "hidden": [_choice(k[1], widths)] * _choice(k[2], depths),
            "activation": _choice(k[3], activations),
            "batch_size": _choice(k[4], batch_sizes),
        }

    def task(config):
        return mlp_classifier(
            config["dataset"],
            hidden=config["hidden"],
            activation=config["activation"],
            batch_size=config["batch_size"],
        )

    return TaskFamily("mlp_classifiers", sample, task)


IMAGE_DATASETS_8X8 = ("mnist", "fmnist", "cifar10", "digits")
"""Celo's four tiny image tasks (MNIST, Fashion-MNIST, grey CIFAR-10, SVHN), with the bundled
8x8 digits in place of SVHN."""


def image_mlps_8x8(
    datasets: Sequence[str] = IMAGE_DATASETS_8X8,
    widths: Sequence[int] = (16, 32, 64),
    depths: Sequence[int] = (1, 2),
    activations: Sequence[str] = ("relu", "tanh", "gelu"),
    batch_sizes: Sequence[int] = (32, 64, 128),
    eval_batch_size: int = 512,
) -> TaskFamily:
    """Celo's meta-training distribution (Moudgil et al. 2025): MLP classifiers of 8x8 grey
    images, with width, depth, activation and batch size sampled. Evaluations use a random
    batch of `eval_batch_size` examples (cheap validation inside meta-training)."""

    def sample(key):
        k = jax.random.split(key, 5)
        return {
            "dataset": _choice(k[0], datasets),
            "hidden": [_choice(k[1], widths)] * _choice(k[2], depths),
            "activation": _choice(k[3], activations),
            "batch_size": _choice(k[4], batch_sizes),
        }

    def task(config):
        dataset = config["dataset"]
        return mlp_classifier(
            dataset,
            size=None if dataset == "digits" else 8,
            grey=dataset == "cifar10",
            hidden=config["hidden"],
            activation=config["activation"],
            batch_size=config["batch_size"],
            eval_batch_size=eval_batch_size,
        )

    return TaskFamily("image_mlps_8x8", sample, task)


def quadratics(
    dims: Sequence[int] = (5, 10, 20, 50),
    log10_condition: tuple[float, float] = (0.0, 4.0),
) -> TaskFamily:
    """Random quadratics: dimension, log-uniform condition number, rotation and minimiser."""

    def sample(key):
        k = jax.random.split(key, 3)
        log_kappa = jax.random.uniform(
            k[1], (), minval=log10_condition[0], maxval=log10_condition[1]
        )
        return {
            "dim": _choice(k[0], dims),
            "condition_number": round(10.0 ** float(log_kappa), 3),
            "seed": int(jax.random.randint(k[2], (), 0, 2**31 - 1)),
        }

    def task(config):
        return synthetic.quadratic(config["dim"], config["condition_number"], config["seed"])

    return TaskFamily("quadratics", sample, task)


FAMILIES: dict[str, Callable[..., TaskFamily]] = {
    "image_mlps_8x8": image_mlps_8x8,
    "mlp_classifiers": mlp_classifiers,
    "quadratics": quadratics,
}


def list_families() -> list[str]:
    """Names of all registered task families."""
    return sorted(FAMILIES)


def get_family(name: str, **options) -> TaskFamily:
    """The task family `name`, built with keyword `options`."""
    return build_registered(FAMILIES, name, "task family", "families", **options)
