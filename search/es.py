"""The one adapter to evosax: evolution strategies over flat vectors, minimising (Hansen 2016,
"The CMA evolution strategy: a tutorial"; Salimans et al. 2017, "Evolution strategies as a
scalable alternative to reinforcement learning")."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from evosax.algorithms import CMA_ES, Open_ES

EsState = Any  # an evosax state: a pytree
STRATEGIES = ("cma_es", "open_es")
_OPTIONS = {
    "cma_es": {"std_init": 1.0},
    "open_es": {"std_init": 0.1, "learning_rate": 0.01, "antithetic": True},
}


class Strategy(NamedTuple):
    """A minimising evolution strategy over vectors of `num_dims`; every function is pure.

    Attributes:
      init: `init(key, mean [D]) -> state`.
      ask: `ask(key, state) -> (population [P, D], state)`.
      tell: `tell(key, population [P, D], fitness [P], state) -> (state, metrics)`; the fitness
        must be finite (pass it through `search.objective.penalize_nonfinite`).
      mean: `mean(state) -> [D]`, the centre of the search distribution.
      best: `best(state) -> (solution [D], fitness)`, the best member told so far.
    """

    name: str
    population_size: int
    num_dims: int
    init: Callable[[jax.Array, jax.Array], EsState]
    ask: Callable[[jax.Array, EsState], tuple[jax.Array, EsState]]
    tell: Callable[[jax.Array, jax.Array, jax.Array, EsState], tuple[EsState, dict]]
    mean: Callable[[EsState], jax.Array]
    best: Callable[[EsState], tuple[jax.Array, jax.Array]]


def _cma_es(population_size, solution, std_init):
    es = CMA_ES(population_size=population_size, solution=solution)
    return es, es.default_params.replace(std_init=jnp.asarray(std_init, jnp.float32))


def _open_es(population_size, solution, std_init, learning_rate, antithetic):
    if antithetic and population_size % 2:
        raise ValueError(
            f"open_es (antithetic) needs an even population size, got {population_size}"
        )
    es = Open_ES(
        population_size=population_size,
        solution=solution,
        use_antithetic_sampling=antithetic,
        optimizer=optax.adam(learning_rate),
        std_schedule=optax.constant_schedule(std_init),
    )
    return es, es.default_params


_FACTORIES = {"cma_es": _cma_es, "open_es": _open_es}


def _strong(tree):
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.result_type(x)), tree)


def make_strategy(name: str, population_size: int, num_dims: int, **options) -> Strategy:
    """Evolution strategy `name` ("cma_es" or "open_es") with static `options`.

    Options: cma_es takes `std_init` (initial step size, default 1.0); open_es takes `std_init`
    (constant perturbation scale, 0.1), `learning_rate` (of Adam on the mean, 0.01) and
    `antithetic` (mirrored sampling, True).
    """
    if name not in _FACTORIES:
        raise ValueError(f"unknown strategy {name!r}; valid strategies: {', '.join(STRATEGIES)}")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise ValueError(
            f"strategy {name!r} takes no option {', '.join(map(repr, unknown))}; "
            f"valid: {', '.join(_OPTIONS[name])}"
        )
    if population_size < 2 or num_dims < 1:
        raise ValueError("an evolution strategy needs population_size >= 2 and num_dims >= 1")
    solution = jnp.zeros((num_dims,), jnp.float32)
    es, params = _FACTORIES[name](population_size, solution, **{**_OPTIONS[name], **options})

    # evosax broadcasts `[D]` against `[P, D]`: allow it here, whatever the caller's setting.
    # Its states hold weakly typed leaves that may turn strong (or back) from one call to the
    # next; making every leaf strong keeps evosax's jitted `ask` and `tell` from recompiling.
    def init(key, mean):
        with jax.numpy_rank_promotion("allow"):
            return _strong(es.init(key, jnp.asarray(mean, jnp.float32), params))

    def ask(key, state):
        with jax.numpy_rank_promotion("allow"):
            return es.ask(key, state, params)

    def tell(key, population, fitness, state):
        fitness = jnp.asarray(fitness, jnp.float32)
        with jax.numpy_rank_promotion("allow"):
            state, metrics = es.tell(key, population, fitness, state, params)
        keep = ("best_fitness", "best_fitness_in_generation", "mean_norm")
        return _strong(state), {k: metrics[k] for k in keep}

    def mean(state):
        return state.mean

    def best(state):
        return state.best_solution, state.best_fitness

    return Strategy(name, population_size, num_dims, init, ask, tell, mean, best)
