"""Meta-gradient estimators over truncated inner runs of a batch of tasks.

- PES, persistent evolution strategies (Vicol, Metz & Sohl-Dickstein 2021): antithetic
  perturbations whose sum is carried along each persistent pair of inner runs, so the estimate is
  unbiased for the whole-horizon objective although each step unrolls one truncation;
- truncated ES: the same perturbations scored on one truncation from a shared state (biased);
- full-unroll antithetic ES: whole inner runs from scratch (unbiased, costly);
- truncated backprop through time: `jax.grad` through one truncation (biased, low variance).

Each estimator is `init(theta, key) -> state` and `estimate(theta, state, key) -> (grad, state,
metrics)` (both take the task's dataset as `data=`, to pass it as a jit argument), with the `T`
tasks of a batch and their particles vmapped in one call and split over the devices of a mesh
(`tasks.sharding`; the estimates equal the single-device ones up to float rounding).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from l2o.meta.objective import (
    MAX_META_LOSS,
    InnerRun,
    MetaObjective,
    Transform,
    start_run,
    truncation_loss,
)
from tasks import Task
from tasks.sharding import device_mesh, replicated, shard_population

PyTree = Any
ESTIMATORS = ("pes", "truncated_es", "full_es", "tbptt")
POPULATION_STRATEGIES = ("open_es", "cma_es")  # evosax, see l2o/meta_es.py


class Estimator(NamedTuple):
    init: Callable[[PyTree, jax.Array], PyTree]
    estimate: Callable[[PyTree, PyTree, jax.Array], tuple[PyTree, PyTree, dict]]


@dataclasses.dataclass(frozen=True)
class EstimatorConfig:
    """`num_tasks` inner runs (seeds) per outer step, `num_pairs` antithetic pairs per task;
    `population_size` members per generation for the evosax strategies."""

    name: str = "pes"
    num_tasks: int = 8
    num_pairs: int = 1
    sigma: float = 0.01
    population_size: int = 16

    def __post_init__(self):
        valid = ESTIMATORS + POPULATION_STRATEGIES
        if self.name not in valid:
            raise ValueError(f"unknown estimator {self.name!r}; valid: {', '.join(valid)}")


class PESState(NamedTuple):
    positive: InnerRun
    negative: InnerRun
    accumulated: PyTree


def _noise(key: jax.Array, theta: PyTree, shape: tuple[int, ...], sigma: float) -> PyTree:
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, len(leaves))
    noise = [
        sigma * jax.random.normal(k, shape + x.shape, x.dtype)
        for k, x in zip(keys, leaves, strict=True)
    ]
    return jax.tree.unflatten(treedef, noise)


def _batched(fn, depth: int):
    for _ in range(depth):
        fn = jax.vmap(fn)
    return fn


def _split_over(mesh: Mesh, fn, num_batched: int):
    """`fn(theta, *args)` vmapped over the leading axis of its `num_batched` args, that axis
    split over the devices of `mesh` (theta replicated)."""
    in_axes = (None,) + (0,) * num_batched
    return shard_population(jax.vmap(fn, in_axes=in_axes), mesh, in_axes)


def _over_particles(mesh: Mesh, fn, num_batched: int):
    """`fn(theta, *args)` over a `[T, N]` grid of particles (the leading axes of its
    `num_batched` args), the `T * N` particles split over the devices of `mesh`."""
    split = _split_over(mesh, fn, num_batched)

    def run(theta, *args):
        T, N = jax.tree.leaves(args)[0].shape[:2]
        flat = jax.tree.map(lambda x: x.reshape(T * N, *x.shape[2:]), args)
        return jax.tree.map(lambda x: x.reshape(T, N, *x.shape[1:]), split(theta, *flat))

    return run


def _grid_keys(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    return jax.random.split(key, shape)


def _antithetic_grad(eps, accumulated, loss_pos, loss_neg, sigma):
    """mean over particles of accumulated * (L+ - L-) / (2 sigma^2)."""
    diff = loss_pos - loss_neg

    def leaf(a):
        return jnp.mean(a * diff.reshape(diff.shape + (1,) * (a.ndim - diff.ndim)), axis=(0, 1))

    return jax.tree.map(leaf, accumulated) if accumulated is not None else jax.tree.map(leaf, eps)


def _loss_metrics(losses: jax.Array, center: jax.Array | None = None) -> dict[str, jax.Array]:
    """Mean meta-loss (of the unperturbed runs if given) and the share of penalized runs."""
    mean = losses.mean() if center is None else center.mean()
    return {"meta_loss": mean, "penalized": jnp.mean(losses >= MAX_META_LOSS)}


def _scale(tree, factor):
    return jax.tree.map(lambda x: x * factor, tree)


def _with_data(task: Task, init, estimate) -> Estimator:
    """The estimator of `init(task, theta, key)` and `estimate(task, theta, state, key)` on
    `task`, whose dataset may be passed as `data=` (a `jax.jit` argument: a dataset closed over
    would be baked into the compiled program as a constant, slow to compile)."""

    def of(data):
        return task if data is None else task.replace(data=data)

    return Estimator(
        lambda theta, key, *, data=None: init(of(data), theta, key),
        lambda theta, state, key, *, data=None: estimate(of(data), theta, state, key),
    )


def make_estimator(
    task: Task,
    transform: Transform,
    obj: MetaObjective,
    config: EstimatorConfig,
    *,
    mesh: Mesh | None = None,
    reference: jax.Array | None = None,
) -> Estimator:
    """The estimator `config.name` for `transform` on `task` under the objective `obj`; the
    inner runs (particles) are split over the devices of `mesh` (default: every device).
    `reference` is the task's AdamW curve for `normalizer: adamw` (`l2o.meta.reference`)."""
    T, N, sigma = config.num_tasks, config.num_pairs, config.sigma
    mesh = device_mesh() if mesh is None else mesh

    def replicate(tree):
        """Noise on every device, so that its sums over particles round as on one device."""
        return jax.lax.with_sharding_constraint(tree, replicated(mesh))

    def loss(task, theta, key, run):
        return truncation_loss(task, transform, obj, theta, key, run, reference)

    def add(theta, eps, sign):
        return jax.tree.map(lambda t, e: t + sign * e, theta, eps)

    if config.name == "pes":

        def init(task, theta, key):
            keys = _grid_keys(key, (T, N))
            runs = _batched(lambda k: start_run(task, transform, theta, k, obj), 2)(keys)
            zeros = jax.tree.map(lambda x: jnp.zeros((T, N) + x.shape, x.dtype), theta)
            return PESState(runs, runs, zeros)

        def estimate(task, theta, state, key):
            noise_key, restart_key = jax.random.split(key)
            eps = replicate(_noise(noise_key, theta, (T, N), sigma))
            restarting = state.positive.train.step >= state.positive.horizon  # [T, N], both

            def reset(a):
                return jnp.where(restarting.reshape((T, N) + (1,) * (a.ndim - 2)), 0.0, a)

            accumulated = jax.tree.map(lambda a, e: reset(a) + e, state.accumulated, eps)
            keys = _grid_keys(restart_key, (T, N))
            # (theta, task) is the replicated argument: the dataset enters the split as one
            pos = _over_particles(
                mesh, lambda tt, e, k, r: loss(tt[1], add(tt[0], e, 1.0), k, r), 3
            )
            loss_pos, positive = pos((theta, task), eps, keys, state.positive)
            neg = _over_particles(
                mesh, lambda tt, e, k, r: loss(tt[1], add(tt[0], e, -1.0), k, r), 3
            )
            loss_neg, negative = neg((theta, task), eps, keys, state.negative)
            grad = _scale(
                _antithetic_grad(eps, accumulated, loss_pos, loss_neg, sigma), 0.5 / sigma**2
            )
            metrics = _loss_metrics(jnp.stack([loss_pos, loss_neg]))
            return grad, PESState(positive, negative, accumulated), metrics

        return _with_data(task, init, estimate)

    if config.name == "truncated_es":

        def init(task, theta, key):
            return jax.vmap(lambda k: start_run(task, transform, theta, k, obj))(
                jax.random.split(key, T)
            )

        def estimate(task, theta, runs, key):
            noise_key, restart_key = jax.random.split(key)
            eps = replicate(_noise(noise_key, theta, (T, N), sigma))
            keys = jax.random.split(restart_key, T)

            def per_task(theta_and_task, e_N, k, run):
                theta, task = theta_and_task
                pos = jax.vmap(lambda e: loss(task, add(theta, e, 1.0), k, run)[0])(e_N)
                neg = jax.vmap(lambda e: loss(task, add(theta, e, -1.0), k, run)[0])(e_N)
                center, run = loss(task, theta, k, run)
                return pos, neg, center, run

            split = _split_over(mesh, per_task, 3)
            loss_pos, loss_neg, center, runs = split((theta, task), eps, keys, runs)
            grad = _scale(_antithetic_grad(eps, None, loss_pos, loss_neg, sigma), 0.5 / sigma**2)
            return grad, runs, _loss_metrics(jnp.stack([loss_pos, loss_neg]), center)

        return _with_data(task, init, estimate)

    if config.name == "full_es":
        full = obj.fixed(obj.horizon)

        def full_loss(task, theta, key):
            run = start_run(task, transform, theta, key, full, stagger=False)
            return truncation_loss(task, transform, full, theta, key, run, reference)[0]

        def init(task, theta, key):
            return key

        def estimate(task, theta, state, key):
            noise_key, task_key = jax.random.split(key)
            eps = replicate(_noise(noise_key, theta, (T, N), sigma))
            keys = jnp.broadcast_to(jax.random.split(task_key, T)[:, None], (T, N))
            pos = _over_particles(mesh, lambda tt, e, k: full_loss(tt[1], add(tt[0], e, 1.0), k), 2)
            neg = _over_particles(
                mesh, lambda tt, e, k: full_loss(tt[1], add(tt[0], e, -1.0), k), 2
            )
            pos, neg = pos((theta, task), eps, keys), neg((theta, task), eps, keys)
            grad = _scale(_antithetic_grad(eps, None, pos, neg, sigma), 0.5 / sigma**2)
            return grad, state, _loss_metrics(jnp.stack([pos, neg]))

        return _with_data(task, init, estimate)

    # Truncated backprop through time.
    def init(task, theta, key):
        return jax.vmap(lambda k: start_run(task, transform, theta, k, obj))(
            jax.random.split(key, T)
        )

    def estimate(task, theta, runs, key):
        def task_grad(theta_and_task, key, run):
            theta, task_ = theta_and_task
            value_and_grad = jax.value_and_grad(lambda *a: loss(task_, *a), has_aux=True)
            (value, run), grad = value_and_grad(theta, key, run)
            return value, jax.lax.stop_gradient(run), grad

        # Each task's gradient on its own device, averaged over tasks on every device: the mean
        # gradient rounds alike on any number of devices.
        per_task = _split_over(mesh, task_grad, 2)
        losses, runs, grads = per_task((theta, task), jax.random.split(key, T), runs)
        return jax.tree.map(lambda g: g.mean(0), grads), runs, _loss_metrics(losses)

    return _with_data(task, init, estimate)
