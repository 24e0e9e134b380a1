"""The named tasks: `get_task(name, **overrides)` and `list_tasks()`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from tasks import synthetic
from tasks.autoencoder import mlp_autoencoder
from tasks.base import Task
from tasks.classification import cnn_classifier, mlp_classifier
from tasks.language import shakespeare_char_lm


class UnknownNameError(ValueError):
    """A name that is not in a registry, or an override the factory does not take."""


def digits_mlp(hidden=(32,), activation="relu", initializer="he", batch_size=64) -> Task:
    """sklearn digits 8x8, MLP 64-32-10 (bundled, offline)."""
    return mlp_classifier(
        "digits", hidden=hidden, activation=activation, initializer=initializer,
        batch_size=batch_size, name="digits_mlp",
    )  # fmt: skip


def mnist1d_mlp(hidden=(100,), activation="relu", initializer="he", batch_size=64) -> Task:
    """MNIST-1D (generated locally, 40 features), MLP 40-100-10 (offline)."""
    return mlp_classifier(
        "mnist1d", hidden=hidden, activation=activation, initializer=initializer,
        batch_size=batch_size, name="mnist1d_mlp",
    )  # fmt: skip


def mnist8_mlp(hidden=(32,), activation="relu", initializer="he", batch_size=128) -> Task:
    """MNIST resized to 8x8, MLP 64-32-10."""
    return mlp_classifier(
        "mnist", size=8, hidden=hidden, activation=activation, initializer=initializer,
        batch_size=batch_size, name="mnist8_mlp",
    )  # fmt: skip


def mnist_mlp(hidden=(128,), activation="relu", initializer="he", batch_size=128) -> Task:
    """MNIST 28x28, MLP 784-128-10."""
    return mlp_classifier(
        "mnist", hidden=hidden, activation=activation, initializer=initializer,
        batch_size=batch_size, name="mnist_mlp",
    )  # fmt: skip


def fmnist_mlp(hidden=(128,), activation="relu", initializer="he", batch_size=128) -> Task:
    """Fashion-MNIST 28x28, MLP 784-128-10."""
    return mlp_classifier(
        "fmnist", hidden=hidden, activation=activation, initializer=initializer,
        batch_size=batch_size, name="fmnist_mlp",
    )  # fmt: skip


def digits_cnn(channels=(8, 16), activation="relu", batch_size=64) -> Task:
    """sklearn digits 8x8, two-layer CNN (bundled, offline)."""
    return cnn_classifier(
        "digits", channels=channels, activation=activation, batch_size=batch_size,
        name="digits_cnn",
    )  # fmt: skip


def mnist16_cnn(channels=(8, 16), activation="relu", batch_size=64) -> Task:
    """MNIST resized to 16x16, two-layer CNN."""
    return cnn_classifier(
        "mnist", size=16, channels=channels, activation=activation, batch_size=batch_size,
        name="mnist16_cnn",
    )  # fmt: skip


def cifar10_cnn(channels=(16, 32), activation="relu", batch_size=64) -> Task:
    """CIFAR-10 32x32 RGB, two-layer CNN."""
    return cnn_classifier(
        "cifar10", channels=channels, activation=activation, batch_size=batch_size,
        name="cifar10_cnn",
    )  # fmt: skip


def cifar10_grey8_mlp(hidden=(64,), activation="relu", batch_size=128) -> Task:
    """CIFAR-10 grey-scaled and resized to 8x8, MLP 64-64-10."""
    return mlp_classifier(
        "cifar10", size=8, grey=True, hidden=hidden, activation=activation,
        batch_size=batch_size, name="cifar10_grey8_mlp",
    )  # fmt: skip


def mnist8_autoencoder(hidden=(32, 8, 32), activation="relu", batch_size=128) -> Task:
    """MNIST resized to 8x8, MLP autoencoder 64-32-8-32-64, squared reconstruction error."""
    return mlp_autoencoder(
        "mnist", size=8, hidden=hidden, activation=activation, batch_size=batch_size,
        name="mnist8_autoencoder",
    )  # fmt: skip


def digits_autoencoder(hidden=(32, 8, 32), activation="relu", batch_size=64) -> Task:
    """sklearn digits 8x8, MLP autoencoder 64-32-8-32-64 (bundled, offline)."""
    return mlp_autoencoder(
        "digits", hidden=hidden, activation=activation, batch_size=batch_size,
        name="digits_autoencoder",
    )  # fmt: skip


def shakespeare_lm(seq_len=64, batch_size=32, embed_dim=32, hidden=128) -> Task:
    """Tiny-Shakespeare characters, LSTM language model (128 units)."""
    return shakespeare_char_lm("shakespeare_lm", "full", seq_len, batch_size, embed_dim, hidden)


def shakespeare_tiny_lm(seq_len=32, batch_size=16, embed_dim=16, hidden=64) -> Task:
    """Bundled 200k-character Shakespeare excerpt, small LSTM language model (offline)."""
    return shakespeare_char_lm(
        "shakespeare_tiny_lm", "excerpt", seq_len, batch_size, embed_dim, hidden
    )


def quadratic_k100(dim=20, seed=0) -> Task:
    """Quadratic in 20 dimensions, condition number 100 (offline)."""
    return synthetic.quadratic(dim, 100.0, seed).replace(name="quadratic_k100")


def quadratic_k10000(dim=20, seed=0) -> Task:
    """Quadratic in 20 dimensions, condition number 10^4 (offline)."""
    return synthetic.quadratic(dim, 1e4, seed).replace(name="quadratic_k10000")


def nqm(dim=1000, batch_size=32) -> Task:
    """Noisy quadratic model (Zhang et al. 2019), 1000 dimensions, h_i = 1/i (offline)."""
    return synthetic.noisy_quadratic(dim, batch_size).replace(name="nqm")


def rosenbrock(dim=2, init_noise=0.1) -> Task:
    """Rosenbrock's valley in 2 dimensions from (-1.2, 1) (offline)."""
    return synthetic.rosenbrock(dim, init_noise).replace(name="rosenbrock")


def linear_regression(num_examples=512, dim=32, noise=0.1, batch_size=0, seed=0) -> Task:
    """Least-squares linear regression, 32 features, full batch (offline)."""
    task = synthetic.linear_regression(num_examples, dim, noise, batch_size, seed)
    return task.replace(name="linear_regression")


def least_squares_k10000(num_examples=2048, dim=32, noise=0.1, batch_size=128, seed=0) -> Task:
    """Least squares, 32 rotated features of condition number 10^4, minibatch 128 (offline)."""
    task = synthetic.ill_conditioned_least_squares(num_examples, dim, 1e4, noise, batch_size, seed)
    return task.replace(name="least_squares_k10000")


def logistic_regression(num_examples=512, dim=32, batch_size=0, seed=0) -> Task:
    """Binary logistic regression, 32 features, full batch (offline)."""
    task = synthetic.logistic_regression(num_examples, dim, batch_size, seed)
    return task.replace(name="logistic_regression")


TASKS: dict[str, Callable[..., Task]] = {
    "digits_mlp": digits_mlp,
    "mnist1d_mlp": mnist1d_mlp,
    "mnist8_mlp": mnist8_mlp,
    "mnist_mlp": mnist_mlp,
    "fmnist_mlp": fmnist_mlp,
    "digits_cnn": digits_cnn,
    "mnist16_cnn": mnist16_cnn,
    "cifar10_cnn": cifar10_cnn,
    "cifar10_grey8_mlp": cifar10_grey8_mlp,
    "mnist8_autoencoder": mnist8_autoencoder,
    "digits_autoencoder": digits_autoencoder,
    "shakespeare_lm": shakespeare_lm,
    "shakespeare_tiny_lm": shakespeare_tiny_lm,
    "quadratic_k100": quadratic_k100,
    "quadratic_k10000": quadratic_k10000,
    "nqm": nqm,
    "rosenbrock": rosenbrock,
    "linear_regression": linear_regression,
    "least_squares_k10000": least_squares_k10000,
    "logistic_regression": logistic_regression,
}

# Tasks whose data ships with the package or is generated: they run on any machine.
OFFLINE_TASKS = (
    "digits_mlp",
    "mnist1d_mlp",
    "digits_cnn",
    "digits_autoencoder",
    "shakespeare_tiny_lm",
    "quadratic_k100",
    "quadratic_k10000",
    "nqm",
    "rosenbrock",
    "linear_regression",
    "least_squares_k10000",
    "logistic_regression",
)


def build_registered(table: dict[str, Callable], name: str, what: str, plural: str, **kwargs):
    """`table[name](**kwargs)`; UnknownNameError listing the valid names or arguments."""
    if name not in table:
        valid = ", ".join(sorted(table))
        raise UnknownNameError(f"unknown {what} {name!r}; valid {plural}: {valid}")
    allowed = inspect.signature(table[name]).parameters
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"{what} {name!r} takes no argument {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(allowed) or 'none'}"
        )
    return table[name](**kwargs)


def list_tasks() -> list[str]:
    """Names of all registered tasks."""
    return sorted(TASKS)


def task_overrides(name: str) -> dict[str, object]:
    """The overridable arguments of task `name` with their defaults."""
    factory = _factory(name)
    return {p.name: p.default for p in inspect.signature(factory).parameters.values()}


def describe(name: str) -> str:
    """First line of the task's docstring."""
    return (_factory(name).__doc__ or "").strip().splitlines()[0]


def _factory(name: str) -> Callable[..., Task]:
    if name not in TASKS:
        raise UnknownNameError(f"unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    return TASKS[name]


def get_task(name: str, **overrides) -> Task:
    """The task `name`, with keyword `overrides` of its factory's defaults (`task_overrides`)."""
    allowed = task_overrides(name)
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"task {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"valid options: {', '.join(allowed) or 'none'}"
        )
    return _factory(name)(**overrides)
