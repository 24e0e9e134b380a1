"""Hyperparameter search spaces parsed from plain dicts, mapped to and from the unit cube
(Bergstra & Bengio 2012, "Random search for hyper-parameter optimization")."""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import numpy as np

# Every type reads its value from a coordinate u in [0, 1]: `uniform` linearly, `log_uniform`
# linearly in log(value), `one_minus_log_uniform` linearly in log(1 - value) (for decays such as
# Adam's b2 near 1), `int` uniformly over the integers low..high, `choice` over the listed numbers.
# Searched values are numbers because a population is trained as traced float32 arrays under
# `jax.vmap`; a boolean or string setting (Nesterov on/off) is a fixed value.
TYPES = ("uniform", "log_uniform", "one_minus_log_uniform", "int", "choice")
_KEYS = {t: ("type", "low", "high") for t in TYPES} | {"choice": ("type", "choices")}


@dataclasses.dataclass(frozen=True)
class Dim:
    """One searched hyperparameter: its name, type and bounds (or choices)."""

    name: str
    type: str
    low: float = 0.0
    high: float = 1.0
    choices: tuple[float, ...] = ()


@dataclasses.dataclass(frozen=True)
class Space:
    """Searched dimensions (in the order given) plus fixed hyperparameter values."""

    dims: tuple[Dim, ...]
    fixed: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)


def _number(value: Any, where: str) -> float:
    """A finite float from a YAML number (or a numeric string such as PyYAML's '1e-5')."""
    if isinstance(value, bool):
        raise ValueError(f"{where} must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise ValueError(f"{where} must be a number, got {value!r}") from None
    try:
        x = float(value) if isinstance(value, int | float) else math.nan
    except OverflowError:  # an int beyond the float range
        x = math.inf
    if not math.isfinite(x):
        raise ValueError(f"{where} must be a finite number, got {value!r:.40}")
    return x


def _parse_dim(name: str, spec: Mapping[str, Any]) -> Dim:
    kind = spec.get("type")
    if kind not in TYPES:
        raise ValueError(f"{name}: unknown type {kind!r}; valid types: {', '.join(TYPES)}")
    unknown = sorted(set(spec) - set(_KEYS[kind]))
    if unknown:
        raise ValueError(
            f"{name}: unknown key {', '.join(map(repr, unknown))} for type {kind!r}; "
            f"valid keys: {', '.join(_KEYS[kind])}"
        )
    missing = [k for k in _KEYS[kind] if k not in spec]
    if missing:
        raise ValueError(f"{name}: type {kind!r} needs {', '.join(missing)}")
    if kind == "choice":
        choices = spec["choices"]
        if not isinstance(choices, list | tuple) or not choices:
            raise ValueError(f"{name}: choices must be a non-empty list of numbers")
        return Dim(name, kind, choices=tuple(_number(c, f"{name}: choice") for c in choices))
    low, high = _number(spec["low"], f"{name}: low"), _number(spec["high"], f"{name}: high")
    if low >= high:
        raise ValueError(f"{name}: low ({low:g}) must be smaller than high ({high:g})")
    if not math.isfinite(high - low + 1):
        raise ValueError(f"{name}: the range from {low:g} to {high:g} is too wide")
    if kind == "log_uniform" and low <= 0:
        raise ValueError(f"{name}: log_uniform needs low > 0, got {low:g}")
    if kind == "one_minus_log_uniform" and not 0 < low < high < 1:
        raise ValueError(f"{name}: one_minus_log_uniform needs 0 < low < high < 1")
    if kind == "int" and not (low.is_integer() and high.is_integer()):
        raise ValueError(f"{name}: int bounds must be integers, got {low:g} and {high:g}")
    return Dim(name, kind, low, high)


def parse_space(spec: Mapping[str, Any], allowed: Iterable[str] | None = None) -> Space:
    """A `Space` from `{name: {"type": ..., "low": ..., "high": ...} | fixed value}`.

    A mapping value is a searched dimension; a scalar (number, bool, string) is a fixed value.
    `allowed` (e.g. the optimizer's hyperparameters) restricts the names. Raises ValueError
    naming the offending key.
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"a search space is a mapping of names, got {type(spec).__name__}")
    allowed = None if allowed is None else list(allowed)
    dims, fixed = [], {}
    for name, value in spec.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{name!r} is not a hyperparameter name")
        if allowed is not None and name not in allowed:
            raise ValueError(f"{name}: not a hyperparameter here; valid: {', '.join(allowed)}")
        if isinstance(value, Mapping):
            dims.append(_parse_dim(name, value))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            _number(value, f"{name}: fixed value")  # finite
            fixed[name] = value
        elif isinstance(value, bool | str):
            fixed[name] = value
        else:
            raise ValueError(
                f"{name}: expected a mapping with a type (searched) or a scalar (fixed), "
                f"got {type(value).__name__}"
            )
    if not dims:
        raise ValueError("the search space has no searched hyperparameter (a mapping with a type)")
    return Space(tuple(dims), fixed)


def to_spec(space: Space) -> dict[str, Any]:
    """The plain dict `parse_space` reads back into `space`."""
    out: dict[str, Any] = {}
    for d in space.dims:
        if d.type == "choice":
            out[d.name] = {"type": d.type, "choices": list(d.choices)}
        else:
            out[d.name] = {"type": d.type, "low": d.low, "high": d.high}
    return {**out, **space.fixed}


def _from_unit(d: Dim, u: np.ndarray) -> np.ndarray:
    if d.type == "uniform":
        return d.low + u * (d.high - d.low)
    if d.type == "log_uniform":
        return np.exp(np.log(d.low) + u * (np.log(d.high) - np.log(d.low)))
    if d.type == "one_minus_log_uniform":
        return 1.0 - np.exp(np.log1p(-d.low) + u * (np.log1p(-d.high) - np.log1p(-d.low)))
    if d.type == "int":
        return np.clip(np.floor(d.low + u * (d.high - d.low + 1)), d.low, d.high)
    index = np.clip(np.floor(u * len(d.choices)).astype(int), 0, len(d.choices) - 1)
    return np.asarray(d.choices)[index]


def _to_unit(d: Dim, v: np.ndarray) -> np.ndarray:
    if d.type == "uniform":
        return (v - d.low) / (d.high - d.low)
    if d.type == "log_uniform":
        return (np.log(v) - np.log(d.low)) / (np.log(d.high) - np.log(d.low))
    if d.type == "one_minus_log_uniform":
        return (np.log1p(-v) - np.log1p(-d.low)) / (np.log1p(-d.high) - np.log1p(-d.low))
    if d.type == "int":
        return (v - d.low + 0.5) / (d.high - d.low + 1)
    index = np.argmin(np.abs(np.asarray(d.choices)[None, :] - v[:, None]), axis=1)
    return (index + 0.5) / len(d.choices)


def from_unit(space: Space, u_PxD: np.ndarray) -> dict[str, np.ndarray]:
    """Hyperparameter values `{name: [P]}` (float64) of points `u_PxD` of the unit cube."""
    u_PxD = np.clip(np.asarray(u_PxD, np.float64), 0.0, 1.0)
    return {d.name: _from_unit(d, u_PxD[:, i]) for i, d in enumerate(space.dims)}


def to_unit(space: Space, values: Mapping[str, np.ndarray]) -> np.ndarray:
    """The unit-cube points `[P, D]` of hyperparameter values (centres of int/choice cells)."""
    columns = [_to_unit(d, np.asarray(values[d.name], np.float64)) for d in space.dims]
    return np.stack(columns, axis=1)


def reflect(z: np.ndarray) -> np.ndarray:
    """Fold the real line onto [0, 1] by mirroring at 0 and 1 (identity inside [0, 1])."""
    return 1.0 - np.abs(np.mod(np.asarray(z, np.float64), 2.0) - 1.0)


def from_unconstrained(space: Space, z_PxD: np.ndarray) -> dict[str, np.ndarray]:
    """Hyperparameter values of unconstrained points (an evolution strategy's samples)."""
    return from_unit(space, reflect(z_PxD))


def sample(space: Space, key: jax.Array, num: int) -> dict[str, np.ndarray]:
    """`num` independent uniform draws from the space (uniform in each dimension's scale)."""
    u = jax.random.uniform(key, (num, len(space.dims)))
    return from_unit(space, np.asarray(u))


def grid_values(d: Dim, points: int) -> np.ndarray:
    """The grid of one dimension: `points` values evenly spaced in its scale, every choice."""
    if d.type == "choice":
        return np.asarray(d.choices)
    if d.type == "int":
        return np.unique(np.round(np.linspace(d.low, d.high, points)))
    u = np.linspace(0.0, 1.0, points) if points > 1 else np.array([0.5])
    return _from_unit(d, u)


def grid(space: Space, points_per_dim: int | Mapping[str, int]) -> dict[str, np.ndarray]:
    """The Cartesian grid `{name: [P]}`, the last dimension varying fastest."""
    per_dim = {}
    for d in space.dims:
        points = points_per_dim if isinstance(points_per_dim, int) else points_per_dim[d.name]
        if points < 1:
            raise ValueError(f"{d.name}: a grid needs at least 1 point per dimension")
        per_dim[d.name] = grid_values(d, points)
    rows = list(itertools.product(*per_dim.values()))
    return {name: np.array([r[i] for r in rows]) for i, name in enumerate(per_dim)}


def members(space: Space, values: Mapping[str, np.ndarray]) -> list[dict[str, float | int]]:
    """Population `{name: [P]}` -> P dicts of Python numbers (ints for int dimensions)."""
    num = len(next(iter(values.values())))
    out = []
    for p in range(num):
        row = {}
        for d in space.dims:
            value = float(values[d.name][p])
            row[d.name] = int(value) if d.type == "int" else value
        out.append(row)
    return out
