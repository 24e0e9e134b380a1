"""Batch hyperparameter tuners: grid, random search (Bergstra & Bengio 2012) and CMA-ES (Hansen
2016), each evaluating whole populations in single `population_sweep` calls."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from search import spaces
from search.es import make_strategy
from search.objective import MakeOptimizer, as_population, evaluate_population, with_fixed
from search.spaces import Space
from tasks import Task

Progress = Callable[[int], None]


class TuneResult(NamedTuple):
    """What every tuner returns, as plain data.

    Attributes:
      best_params: the best complete trial's values plus the space's fixed values (None if no
        trial completed).
      best_value: its objective (None if no trial completed).
      trials: one dict per trial: `number`, `params` (searched values), `value` (the objective;
        for a pruned trial its last report) and `state` ("complete", "pruned" or "fail").
    """

    best_params: dict[str, Any] | None
    best_value: float | None
    trials: list[dict[str, Any]]


def result_from_trials(space: Space, trials: list[dict[str, Any]]) -> TuneResult:
    """The `TuneResult` of `trials`: the complete one of lowest value (the first on ties)."""
    complete = [t for t in trials if t["state"] == "complete"]
    if not complete:
        return TuneResult(None, None, trials)
    best = min(complete, key=lambda t: t["value"])
    return TuneResult({**space.fixed, **best["params"]}, best["value"], trials)


def evaluate_values(
    task: Task,
    make_member: MakeOptimizer,
    space: Space,
    values: Mapping[str, np.ndarray],
    seeds: Sequence[int],
    num_steps: int,
    *,
    first_number: int = 0,
    chunk_size: int | None = None,
    on_progress: Progress = lambda done: None,
) -> list[dict[str, Any]]:
    """Trials (numbered from `first_number`) of a population `{name: [P]}` of the space."""
    population = as_population(values)
    objective = evaluate_population(
        task, make_member, population, seeds, num_steps,
        chunk_size=chunk_size, on_chunk=lambda done: on_progress(first_number + done),
    )  # fmt: skip
    params = spaces.members(space, population)
    return [
        {"number": first_number + i, "params": p, "value": float(v), "state": "complete"}
        for i, (p, v) in enumerate(zip(params, objective, strict=True))
    ]


def grid_search(
    task: Task,
    make_optimizer: MakeOptimizer,
    space: Space,
    *,
    points_per_dim: int | Mapping[str, int],
    num_steps: int,
    seeds: Sequence[int],
    chunk_size: int | None = None,
    on_progress: Progress = lambda done: None,
) -> TuneResult:
    """Every point of `spaces.grid(space, points_per_dim)`, trained on every seed."""
    values = spaces.grid(space, points_per_dim)
    trials = evaluate_values(
        task, with_fixed(make_optimizer, space), space, values, seeds, num_steps,
        chunk_size=chunk_size, on_progress=on_progress,
    )  # fmt: skip
    return result_from_trials(space, trials)


def random_search(
    task: Task,
    make_optimizer: MakeOptimizer,
    space: Space,
    *,
    num_trials: int,
    num_steps: int,
    seeds: Sequence[int],
    seed: int,
    chunk_size: int | None = None,
    on_progress: Progress = lambda done: None,
) -> TuneResult:
    """`num_trials` points drawn uniformly (in each dimension's scale) from `key(seed)`."""
    values = spaces.sample(space, jax.random.key(seed), num_trials)
    trials = evaluate_values(
        task, with_fixed(make_optimizer, space), space, values, seeds, num_steps,
        chunk_size=chunk_size, on_progress=on_progress,
    )  # fmt: skip
    return result_from_trials(space, trials)


def default_population_size(num_dims: int) -> int:
    """Hansen's 4 + 3 ln(D), at least 8 (a few generations of a wide search beat many narrow)."""
    return max(8, 4 + int(3 * math.log(num_dims)))


def cmaes_search(
    task: Task,
    make_optimizer: MakeOptimizer,
    space: Space,
    *,
    num_trials: int,
    num_steps: int,
    seeds: Sequence[int],
    seed: int,
    population_size: int | None = None,
    std_init: float = 0.25,
    on_progress: Progress = lambda done: None,
) -> TuneResult:
    """CMA-ES in unit-cube coordinates (mirrored at the faces), from the centre of the cube.

    Runs `ceil(num_trials / population_size)` generations; each generation is one
    `population_sweep` call. Trials also record their `generation`.
    """
    num_dims = len(space.dims)
    population_size = population_size or default_population_size(num_dims)
    generations = max(1, math.ceil(num_trials / population_size))
    strategy = make_strategy("cma_es", population_size, num_dims, std_init=std_init)
    make_member = with_fixed(make_optimizer, space)
    init_key, *generation_keys = jax.random.split(jax.random.key(seed), 1 + generations)
    state = strategy.init(init_key, jnp.full((num_dims,), 0.5))
    trials: list[dict[str, Any]] = []
    for generation, key in enumerate(generation_keys):
        ask_key, tell_key = jax.random.split(key)
        z_PxD, state = strategy.ask(ask_key, state)
        values = spaces.from_unconstrained(space, np.asarray(z_PxD))
        new = evaluate_values(
            task, make_member, space, values, seeds, num_steps,
            first_number=len(trials), on_progress=on_progress,
        )  # fmt: skip
        fitness = jnp.asarray([t["value"] for t in new], jnp.float32)
        state, _ = strategy.tell(tell_key, z_PxD, fitness, state)
        trials += [{**t, "generation": generation} for t in new]
    return result_from_trials(space, trials)
