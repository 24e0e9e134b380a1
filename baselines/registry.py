"""The baseline optimizers by name: `get_optimizer(name, **hparams)` and `list_optimizers()`."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import optax

from tasks import UnknownNameError


def sgd(learning_rate: optax.ScalarOrSchedule = 0.1) -> optax.GradientTransformationExtraArgs:
    """Plain SGD: theta <- theta - lr * g (Robbins & Monro 1951)."""
    return optax.with_extra_args_support(optax.sgd(learning_rate))


def momentum(
    learning_rate: optax.ScalarOrSchedule = 0.01, momentum: float = 0.9
) -> optax.GradientTransformationExtraArgs:
    """Heavy-ball momentum: v <- momentum * v + g; theta <- theta - lr * v (Polyak 1964)."""
    return optax.with_extra_args_support(optax.sgd(learning_rate, momentum=momentum))


def adam(
    learning_rate: optax.ScalarOrSchedule = 1e-3,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
) -> optax.GradientTransformationExtraArgs:
    """Adam with bias correction (Kingma & Ba 2015)."""
    return optax.with_extra_args_support(optax.adam(learning_rate, b1=b1, b2=b2, eps=eps))


OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "sgd": sgd,
    "momentum": momentum,
    "adam": adam,
}


def list_optimizers() -> list[str]:
    """Names of all baseline optimizers."""
    return sorted(OPTIMIZERS)


def optimizer_hparams(name: str) -> dict[str, object]:
    """Hyperparameters of optimizer `name` with their defaults."""
    if name not in OPTIMIZERS:
        raise UnknownNameError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(list_optimizers())}"
        )
    params = inspect.signature(OPTIMIZERS[name]).parameters.values()
    return {p.name: p.default for p in params}


def get_optimizer(name: str, **hparams) -> optax.GradientTransformationExtraArgs:
    """Baseline `name` with keyword `hparams` (optax's names: learning_rate, b1, b2, eps, ...)."""
    allowed = optimizer_hparams(name)
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        raise UnknownNameError(
            f"optimizer {name!r} takes no hyperparameter {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(allowed)}"
        )
    return OPTIMIZERS[name](**hparams)
