"""Population-based meta-training through evosax (OpenES, Salimans et al. 2017; CMA-ES, Hansen
2016): each generation scores every member theta by whole inner runs on a batch of task seeds,
all members and seeds in one vmapped call; fitness is the normalized meta-loss, minimised."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.flatten_util
import jax.numpy as jnp
from jax.sharding import Mesh

from l2o.meta.estimators import EstimatorConfig
from l2o.meta.objective import (
    MAX_META_LOSS,
    MetaObjective,
    Transform,
    start_run,
    truncation_loss,
)
from l2o.meta.types import MetaState, MetaTrainer, OuterConfig, PyTree
from search.es import make_strategy
from tasks import Task
from tasks.sharding import device_mesh, put_replicated, replicated, shard_population


def make_es_trainer(
    tasks: Sequence[Task],
    init_theta: Callable[[jax.Array], PyTree],
    transform: Transform,
    objective: MetaObjective,
    estimator: EstimatorConfig,
    outer: OuterConfig,
    *,
    mesh: Mesh | None = None,
    references: Sequence[jax.Array | None] | None = None,
) -> MetaTrainer:
    """A MetaTrainer whose outer state is an evosax strategy's; theta is the search mean. The
    members of a generation are split over the devices of `mesh` (default: every device);
    `references` are the tasks' AdamW curves for `normalizer: adamw`."""
    mesh = device_mesh() if mesh is None else mesh
    init_key, base_key = jax.random.split(jax.random.key(outer.seed))
    theta_key, es_key = jax.random.split(init_key)
    template = init_theta(theta_key)
    flat, unravel = jax.flatten_util.ravel_pytree(template)
    options = {"std_init": estimator.sigma}
    if estimator.name == "open_es":
        options["learning_rate"] = outer.learning_rate
    strategy = make_strategy(estimator.name, estimator.population_size, flat.size, **options)
    whole = objective.fixed(objective.horizon)
    references = [None] * len(tasks) if references is None else references

    def member_loss(task, reference, theta, key):
        run = start_run(task, transform, theta, key, whole, stagger=False)
        return truncation_loss(task, transform, whole, theta, key, run, reference)[0]

    def init() -> MetaState:
        state = strategy.init(es_key, flat)
        state = MetaState(template, state, (), jnp.zeros((), jnp.int32))
        return put_replicated(state, mesh)

    def task_step(task: Task, reference: jax.Array | None):
        data = put_replicated(task.data, mesh)  # a jit argument, not a constant of the program

        def step(state: MetaState, data) -> tuple[MetaState, dict]:
            ask_key, task_key, tell_key = jax.random.split(
                jax.random.fold_in(base_key, state.step), 3
            )
            population, es_state = strategy.ask(ask_key, state.outer_state)
            keys = jax.random.split(task_key, estimator.num_tasks)

            def fitness(task, keys, vector):
                theta = unravel(vector)
                return jax.vmap(lambda k: member_loss(task, reference, theta, k))(keys)

            members = jax.vmap(fitness, in_axes=(None, None, 0))
            split = shard_population(members, mesh, (None, None, 0))
            losses = split(task.replace(data=data), keys, population)  # [P, T]
            es_state, metrics = strategy.tell(tell_key, population, losses.mean(1), es_state)
            theta = unravel(strategy.mean(es_state))
            metrics = {
                "meta_loss": losses.mean(),
                "best_member_loss": losses.mean(1).min(),
                "penalized": jnp.mean(losses >= MAX_META_LOSS),
                "mean_norm": metrics["mean_norm"],
            }
            return MetaState(theta, es_state, (), state.step + 1), metrics

        compiled = jax.jit(step, out_shardings=replicated(mesh))  # readable by every process
        return lambda state: compiled(state, data)

    steps = [task_step(t, r) for t, r in zip(tasks, references, strict=True)]

    def step(state: MetaState) -> tuple[MetaState, dict]:
        return steps[int(state.step) % len(tasks)](state)

    return MetaTrainer(init, step)
