"""The types meta-training shares between its outer trainer and its population strategies:
the outer configuration, the state the outer loop carries, and the trainer's two functions."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import optax

PyTree = Any


@dataclasses.dataclass(frozen=True)
class OuterConfig:
    """Outer optimisation: steps, Adam's learning rate on theta, meta-gradient clipping."""

    steps: int = 500
    learning_rate: float = 1e-3
    clip_norm: float = 1.0
    seed: int = 0


class MetaState(NamedTuple):
    """Everything the outer loop carries: theta, Adam's state, each task's estimator state."""

    theta: PyTree
    outer_state: optax.OptState
    estimator_states: tuple
    step: jax.Array


class MetaTrainer(NamedTuple):
    """`init() -> MetaState` and `step(state) -> (state, metrics)`, each jitted per task."""

    init: Callable[[], MetaState]
    step: Callable[[MetaState], tuple[MetaState, dict]]
