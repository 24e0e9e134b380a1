"""The meta-objective of a learned optimizer: the (log, normalized) loss of truncated inner runs
that persist across truncations and restart when they reach their horizon (learned_optimization's
truncated training, Metz et al. 2019; Vicol et al. 2021)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from search.objective import penalize_nonfinite
from tasks import Task, TrainState, init_state, unroll
from tasks.augment import param_scales, rescale_params

PyTree = Any
Transform = Callable[[PyTree], optax.GradientTransformationExtraArgs]
OBJECTIVES = ("mean_train", "final_train", "mean_valid", "final_valid")
# Normalized log-loss above which a truncation counts as diverged (the loss grew e^5 ~ 150-fold).
MAX_META_LOSS = 5.0


@dataclasses.dataclass(frozen=True)
class MetaObjective:
    """How a truncation is scored: which loss, averaged or final, on a log scale, normalized.

    `horizon` is the inner run length after which a run restarts; `truncation` the steps per
    outer step; `log` scores log(loss) - log(initial loss) (per-task normalization), else the
    loss divided by the initial loss. `rescale > 0` augments the tasks: every inner run (and
    every restart) trains in coordinates rescaled per tensor by `10^u`, `u ~ U(-rescale,
    rescale)` (`tasks.augment`).
    """

    horizon: int = 200
    truncation: int = 50
    objective: str = "mean_train"
    log: bool = True
    rescale: float = 0.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}"
            )
        if not 0 < self.truncation <= self.horizon:
            raise ValueError("need 0 < truncation <= horizon")
        if not 0 <= self.rescale <= 6:
            raise ValueError(f"rescale (log10 of the largest scale) must be 0..6: {self.rescale}")


class InnerRun(NamedTuple):
    """One persistent inner training run: its state, key, restart count, initial loss and its
    parameter scales (`()` without augmentation)."""

    train: TrainState
    run_key: jax.Array
    restarts: jax.Array
    init_loss: jax.Array
    scales: PyTree = ()


def _task_of(task: Task, run: InnerRun) -> Task:
    """The task the run trains: `task`, or its rescaled form under augmentation."""
    return rescale_params(task, run.scales) if run.scales != () else task


def _fresh(task: Task, optimizer, key: jax.Array, restarts: jax.Array, rescale: float) -> InnerRun:
    init_key, run_key, loss_key = jax.random.split(jax.random.fold_in(key, restarts), 3)
    scales = ()
    if rescale > 0:
        scale_key = jax.random.fold_in(init_key, 1)
        scales = param_scales(scale_key, task.init(init_key), rescale)
        task = rescale_params(task, scales)
    state = init_state(task, optimizer, init_key)
    init_loss = task.evaluate(state.params, loss_key, "train")["loss"]
    return InnerRun(state, run_key, restarts, init_loss, scales)


def start_run(
    task: Task, transform: Transform, theta: PyTree, key: jax.Array, obj: MetaObjective,
    stagger: bool = True,
) -> InnerRun:  # fmt: skip
    """A fresh inner run; with `stagger`, its step counter starts at a random truncation boundary
    so that a batch of runs restarts at different outer steps."""
    run_key, stagger_key = jax.random.split(key)
    run = _fresh(task, transform(theta), run_key, jnp.zeros((), jnp.int32), obj.rescale)
    if stagger:
        num_truncations = obj.horizon // obj.truncation
        offset = jax.random.randint(stagger_key, (), 0, num_truncations)
        run = run._replace(train=run.train._replace(step=offset * obj.truncation))
    return run


def _restart_if_done(task, optimizer, key, run: InnerRun, obj: MetaObjective) -> InnerRun:
    done = run.train.step >= obj.horizon
    fresh = _fresh(task, optimizer, key, run.restarts + 1, obj.rescale)
    return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, run)


def score(obj: MetaObjective, losses: jax.Array, init_loss: jax.Array) -> jax.Array:
    """The scalar meta-loss of a truncation's losses, normalized by the run's initial loss."""
    value = losses.mean() if obj.objective.startswith("mean") else losses[-1]
    if obj.log:
        value = jnp.log(jnp.maximum(value, 1e-30)) - jnp.log(jnp.maximum(init_loss, 1e-30))
    else:
        value = value / init_loss
    return penalize_nonfinite(value, MAX_META_LOSS)


def truncation_loss(
    task: Task,
    transform: Transform,
    obj: MetaObjective,
    theta: PyTree,
    key: jax.Array,
    run: InnerRun,
) -> tuple[jax.Array, InnerRun]:
    """Meta-loss of the next `obj.truncation` steps of `run` under `theta`, and the new run.

    The run restarts first if it reached the horizon; `key` seeds that restart only. The
    result is differentiable in `theta` (truncated backprop through the unroll).
    """
    optimizer = transform(theta)
    run = _restart_if_done(task, optimizer, key, run, obj)
    valid = obj.objective.endswith("valid")
    every = obj.truncation if obj.objective == "final_valid" else max(1, obj.truncation // 10)
    train, metrics = unroll(
        _task_of(task, run),
        optimizer,
        run.train,
        run.run_key,
        obj.truncation,
        total_steps=obj.horizon,
        eval_every=every if valid else 0,
        eval_splits=("valid",),
    )
    losses = metrics["valid_loss"] if valid else metrics["train_loss"]
    return score(obj, losses, run.init_loss), run._replace(train=train)
