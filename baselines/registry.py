"""The baseline optimizers by name: `get_optimizer(name, **hparams)` and `list_optimizers()`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import optax

from baselines.adafactor import adafactor
from baselines.adahessian import adahessian
from baselines.adam import adam, adamax, adamw, amsgrad, nadam, nadamw, radam
from baselines.adaptive import adadelta, adagrad, rmsprop
from baselines.layerwise import lamb, lars
from baselines.lion import lion
from baselines.muon import muon
from baselines.newton import lbfgs, newton
from baselines.orthogonal_adam import orthogonal_adam
from baselines.prodigy import prodigy
from baselines.schedule_free import schedule_free_adamw
from baselines.sgd import momentum, nesterov, sgd
from baselines.shampoo import shampoo
from baselines.sophia import sophia
from tasks import UnknownNameError

# Every factory takes keyword hyperparameters, each with a default (a paper default where the
# paper gives one): `l2o train` passes only the flags the user set.
OPTIMIZERS: dict[str, Callable[..., optax.GradientTransformationExtraArgs]] = {
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "adadelta": adadelta,
    "rmsprop": rmsprop,
    "adam": adam,
    "adamw": adamw,
    "amsgrad": amsgrad,
    "nadam": nadam,
    "adamax": adamax,
    "radam": radam,
    "lars": lars,
    "lamb": lamb,
    "lion": lion,
    "nadamw": nadamw,
    "muon": muon,
    "orthogonal_adam": orthogonal_adam,
    "schedule_free_adamw": schedule_free_adamw,
    "adafactor": adafactor,
    "prodigy": prodigy,
    "sophia": sophia,
    "shampoo": shampoo,
    "adahessian": adahessian,
    "newton": newton,
    "lbfgs": lbfgs,
}


def list_optimizers() -> list[str]:
    """Names of all baseline optimizers."""
    return sorted(OPTIMIZERS)


def optimizer_hparams(name: str) -> dict[str, object]:
    """Hyperparameters of optimizer `name` with their defaults.

    A variant defined as `functools.partial(base, flag=value)` does not list the arguments it
    fixes (`nesterov` of "nadam"): they define the variant and are not hyperparameters.
    """
    if name not in OPTIMIZERS:
        raise UnknownNameError(
            f"unknown optimizer {name!r}; valid optimizers: {', '.join(list_optimizers())}"
        )
    factory = OPTIMIZERS[name]
    fixed = factory.keywords if isinstance(factory, functools.partial) else {}
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.name not in fixed}


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
