"""The learned optimizers by name: `get_learned(name, **config) -> (init_theta, transform)`."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import optax

from l2o.optimizers.celo import CeloConfig, make_celo
from l2o.optimizers.hyper import HyperConfig, make_hyper
from l2o.optimizers.learnable_adam import LearnableAdamConfig, make_learnable_adam
from l2o.optimizers.lstm import LSTMConfig, make_lstm
from l2o.optimizers.mlp import MLPConfig, make_mlp
from tasks import UnknownNameError

Theta = dict[str, jax.Array]
MAX_CONFIG_ITEMS = 64
"""Config lists (layer sizes, decays) hold at most this many entries."""
InitTheta = Callable[[jax.Array], Theta]
Transform = Callable[[Theta], optax.GradientTransformationExtraArgs]


class Architecture(NamedTuple):
    """A learned optimizer's frozen config dataclass and its factory `make(config)`;
    `external_learning_rate` when its config's `learning_rate` scales every update (set by
    the user or a tuner) rather than initializing a learned one."""

    config: type
    make: Callable[[Any], tuple[InitTheta, Transform]]
    external_learning_rate: bool = False


LEARNED_OPTIMIZERS: dict[str, Architecture] = {
    "lstm": Architecture(LSTMConfig, make_lstm),
    "mlp": Architecture(MLPConfig, make_mlp),
    "hyper": Architecture(HyperConfig, make_hyper),
    "learnable_adam": Architecture(LearnableAdamConfig, make_learnable_adam),
    "celo": Architecture(CeloConfig, make_celo, external_learning_rate=True),
}


def list_learned() -> list[str]:
    """Names of all learned optimizer architectures."""
    return sorted(LEARNED_OPTIMIZERS)


def architecture(name: str) -> Architecture:
    """The registry entry `name`, or a ValueError listing the valid names."""
    if name not in LEARNED_OPTIMIZERS:
        raise UnknownNameError(
            f"unknown learned optimizer {name!r}; valid: {', '.join(list_learned())}"
        )
    return LEARNED_OPTIMIZERS[name]


def _coerce(value: Any, default: Any, where: str) -> Any:
    """`value` as the type of `default` (JSON lists become tuples); ValueError if it is not one."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ValueError(f"{where} must be a bool, got {value!r}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where} must be an int, got {value!r:.40}")
        if abs(value) >= 2**31:
            raise ValueError(f"{where} must be below 2**31 in size, got {value!r:.40}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r:.40}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond the float range
            number = math.inf
        if not math.isfinite(number):
            raise ValueError(f"{where} must be finite, got {value!r:.40}")
        return number
    if isinstance(default, tuple):
        if not isinstance(value, list | tuple) or len(value) > MAX_CONFIG_ITEMS:
            raise ValueError(f"{where} must be a list of at most {MAX_CONFIG_ITEMS} items")
        element = default[0] if default else 0.0
        return tuple(_coerce(v, element, f"{where}[{i}]") for i, v in enumerate(value))
    raise ValueError(f"{where} has an unsupported type")


def make_config(name: str, **config: Any) -> Any:
    """The config dataclass of `name` from keyword values (JSON lists accepted for tuples).

    Raises a ValueError for an unknown name, an unknown key, a value of the wrong type or a
    value the config rejects.
    """
    cls = architecture(name).config
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise UnknownNameError(
            f"learned optimizer {name!r} has no config key {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(fields)}"
        )
    values = {k: _coerce(v, fields[k].default, f"{name} config {k!r}") for k, v in config.items()}
    return cls(**values)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass as a JSON-compatible dict (tuples as lists)."""
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }


def get_learned(name: str, **config: Any) -> tuple[InitTheta, Transform]:
    """`(init_theta, transform)` of learned optimizer `name` with keyword `config` values."""
    return architecture(name).make(make_config(name, **config))


def from_config(name: str, config: Any | Mapping[str, Any]) -> tuple[InitTheta, Transform]:
    """`(init_theta, transform)` from a config dataclass instance or a dict of its values."""
    if isinstance(config, Mapping):
        return get_learned(name, **config)
    if not isinstance(config, architecture(name).config):
        raise ValueError(f"config of {name!r} must be a {architecture(name).config.__name__}")
    return architecture(name).make(config)
