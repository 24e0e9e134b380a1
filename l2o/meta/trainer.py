"""Meta-training: the outer loop that updates theta with a meta-gradient estimate (PES, ES or
truncated BPTT) over a batch of tasks, with clipped meta-gradients and Adam on theta.

Outer step `i` draws its randomness from `fold_in(key, i)` and works on task `i mod len(tasks)`,
so a run resumed from a checkpoint of step `i` continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from l2o.meta.estimators import POPULATION_STRATEGIES, EstimatorConfig, make_estimator
from l2o.meta.objective import MetaObjective, Transform
from l2o.meta.population import make_es_trainer
from l2o.meta.reference import adamw_reference
from l2o.meta.types import MetaState, MetaTrainer, OuterConfig, PyTree
from tasks import Task
from tasks.sharding import device_mesh, put_replicated, replicated


def outer_optimizer(config: OuterConfig) -> optax.GradientTransformation:
    """Global-norm clipping of the meta-gradient, then Adam."""
    clip = optax.clip_by_global_norm(config.clip_norm)
    return optax.chain(clip, optax.adam(config.learning_rate))


def _finite(tree: PyTree) -> jax.Array:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def make_meta_trainer(
    tasks: Sequence[Task],
    init_theta: Callable[[jax.Array], PyTree],
    transform: Transform,
    objective: MetaObjective,
    estimator: EstimatorConfig,
    outer: OuterConfig,
    *,
    mesh: Mesh | None = None,
) -> MetaTrainer:
    """The outer loop over `tasks` (round robin), as pure jitted functions of the MetaState.

    Gradient estimators (PES, ES, truncated BPTT) feed Adam on theta; the evosax strategies
    (`open_es`, `cma_es`) replace both with their own update of the search distribution. The
    particles (or members) of each step are split over the devices of `mesh` (default: every
    device of every process); the MetaState is replicated on all of them.
    With `normalizer: adamw`, each task's tuned AdamW curve is computed first
    (`l2o.meta.reference`).
    """
    mesh = device_mesh() if mesh is None else mesh
    references = [None] * len(tasks)
    if objective.normalizer == "adamw":
        references = [adamw_reference(task, objective) for task in tasks]
    if estimator.name in POPULATION_STRATEGIES:
        return make_es_trainer(
            tasks, init_theta, transform, objective, estimator, outer, mesh=mesh,
            references=references,
        )  # fmt: skip
    optimizer = outer_optimizer(outer)
    estimators = [
        make_estimator(task, transform, objective, estimator, mesh=mesh, reference=reference)
        for task, reference in zip(tasks, references, strict=True)
    ]
    init_key, base_key = jax.random.split(jax.random.key(outer.seed))
    datasets = [put_replicated(task.data, mesh) for task in tasks]  # jit arguments, on every device

    def init() -> MetaState:
        theta_key, *task_keys = jax.random.split(init_key, len(tasks) + 1)
        theta = init_theta(theta_key)
        states = tuple(
            jax.jit(lambda th, k, d, est=est: est.init(th, k, data=d))(theta, k, data)
            for est, k, data in zip(estimators, task_keys, datasets, strict=True)
        )
        state = MetaState(theta, optimizer.init(theta), states, jnp.zeros((), jnp.int32))
        return put_replicated(state, mesh)

    def task_step(index: int):
        est, data = estimators[index], datasets[index]

        def step(state: MetaState, data) -> tuple[MetaState, dict]:
            key = jax.random.fold_in(base_key, state.step)
            states = state.estimator_states
            grad, est_state, metrics = est.estimate(state.theta, states[index], key, data=data)
            finite = _finite(grad)
            grad = jax.tree.map(lambda g: jnp.where(finite, g, 0.0), grad)
            updates, outer_state = optimizer.update(grad, state.outer_state, state.theta)
            theta = optax.apply_updates(state.theta, updates)
            states = tuple(
                est_state if i == index else s for i, s in enumerate(state.estimator_states)
            )
            metrics = {**metrics, "grad_norm": optax.tree.norm(grad), "nonfinite_grad": ~finite}
            return MetaState(theta, outer_state, states, state.step + 1), metrics

        compiled = jax.jit(step, out_shardings=replicated(mesh))  # readable by every process
        return lambda state: compiled(state, data)  # the dataset an argument, not a constant

    steps = [task_step(i) for i in range(len(tasks))]

    def step(state: MetaState) -> tuple[MetaState, dict]:
        return steps[int(state.step) % len(tasks)](state)

    return MetaTrainer(init, step)
