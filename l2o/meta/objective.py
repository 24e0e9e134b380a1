"""The meta-objective of a learned optimizer: the (log, normalized) loss of truncated inner runs
that persist across truncations and restart when they reach their horizon (learned_optimization's
truncated training, Metz et al. 2019; Vicol et al. 2021)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from baselines.schedules import cosine, warmup
from search.objective import penalize_nonfinite
from tasks import Task, TrainState, init_state, unroll
from tasks.augment import param_scales, rescale_params

PyTree = Any
Transform = Callable[[PyTree], optax.GradientTransformationExtraArgs]
OBJECTIVES = ("mean_train", "final_train", "mean_valid", "final_valid")
NORMALIZERS = ("initial", "adamw")
SCHEDULES = ("constant", "warmup_cosine")
# Normalized log-loss above which a truncation counts as diverged (the loss grew e^5 ~ 150-fold).
MAX_META_LOSS = 5.0


@dataclasses.dataclass(frozen=True)
class MetaObjective:
    """How a truncation is scored: which loss, averaged or final, on a log scale, normalized.

    `horizon` is the inner run length after which a run restarts; with `min_horizon > 0`, each
    run (and restart) draws its length log-uniformly from [min_horizon, horizon], rounded to
    whole truncations (Celo's horizons 100..2,000). `truncation` is the steps per outer step.
    `normalizer` sets what a loss is compared with, per task: `initial`, the run's initial loss
    (`log`: log(loss) - log(initial loss), else their ratio), or `adamw`, tuned AdamW's
    validation loss at the same step (`l2o.meta.reference`; log ratio; validation objectives
    only). `rescale > 0` augments the tasks: every inner run (and every restart) trains in
    coordinates rescaled per tensor by `10^u`, `u ~ U(-rescale, rescale)` (`tasks.augment`).

    For an optimizer whose learning rate is external (`celo`), the inner runs can train as a
    user would run it: `schedule` `warmup_cosine` scales every update by a linear warm-up over
    the `warmup` fraction of the run's horizon and a cosine decay to 0 at its end, and
    `lr_spread > 1` draws each run's learning rate log-uniformly within a factor `lr_spread` of
    the configured one (a tuner moves it), so the rule cannot lean on one learning rate.
    """

    horizon: int = 200
    truncation: int = 50
    objective: str = "mean_train"
    log: bool = True
    rescale: float = 0.0
    min_horizon: int = 0
    normalizer: str = "initial"
    schedule: str = "constant"
    warmup: float = 0.05
    lr_spread: float = 1.0

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(
                f"unknown objective {self.objective!r}; valid: {', '.join(OBJECTIVES)}"
            )
        if not 0 < self.truncation <= self.horizon:
            raise ValueError("need 0 < truncation <= horizon")
        if not 0 <= self.rescale <= 6:
            raise ValueError(f"rescale (log10 of the largest scale) must be 0..6: {self.rescale}")
        if self.min_horizon and not self.truncation <= self.min_horizon <= self.horizon:
            raise ValueError("need truncation <= min_horizon <= horizon (or min_horizon 0)")
        if self.normalizer not in NORMALIZERS:
            raise ValueError(
                f"unknown normalizer {self.normalizer!r}; valid: {', '.join(NORMALIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; valid: {', '.join(SCHEDULES)}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup is a fraction of the horizon in [0, 1): {self.warmup}")
        if not 1 <= self.lr_spread <= 100:
            raise ValueError(f"lr_spread (a factor) must be 1..100: {self.lr_spread}")
        if self.normalizer == "adamw" and not self.objective.endswith("valid"):
            raise ValueError("normalizer 'adamw' compares validation losses: use mean_valid "
                             "or final_valid")  # fmt: skip

    @property
    def eval_every(self) -> int:
        """Steps between the evaluations of a validation objective inside a truncation."""
        return self.truncation if self.objective == "final_valid" else max(1, self.truncation // 10)

    def fixed(self, truncation: int) -> MetaObjective:
        """This objective over whole runs of `horizon` steps in one truncation of `truncation`."""
        return dataclasses.replace(self, truncation=truncation, min_horizon=0)


class InnerRun(NamedTuple):
    """One persistent inner training run: its state, key, restart count, initial loss, its
    length, its learning-rate factor and its parameter scales (`()` without augmentation)."""

    train: TrainState
    run_key: jax.Array
    restarts: jax.Array
    init_loss: jax.Array
    horizon: jax.Array
    lr_factor: jax.Array
    scales: PyTree = ()


def learning_rate_factor(obj: MetaObjective, step: jax.Array, horizon: jax.Array) -> jax.Array:
    """The schedule's factor at `step` of a run of `horizon` steps (1 for `constant`)."""
    if obj.schedule == "constant":
        return jnp.ones((), jnp.float32)
    warmup_steps = jnp.maximum(1, jnp.round(obj.warmup * horizon))
    return warmup(cosine(1.0, jnp.maximum(horizon - warmup_steps, 1)), warmup_steps)(step)


def scheduled(
    optimizer: optax.GradientTransformationExtraArgs,
    obj: MetaObjective,
    lr_factor: jax.Array,
    horizon: jax.Array,
) -> optax.GradientTransformationExtraArgs:
    """`optimizer` with its updates scaled by `lr_factor` times the schedule at the loop's
    `step` extra (the identity for a constant schedule and no spread)."""
    if obj.schedule == "constant" and obj.lr_spread == 1:
        return optimizer

    def update_fn(updates, state, params=None, **extra_args):
        updates, state = optimizer.update(updates, state, params, **extra_args)
        factor = lr_factor * learning_rate_factor(obj, extra_args["step"], horizon)
        return jax.tree.map(lambda u: u * factor.astype(u.dtype), updates), state

    return optax.GradientTransformationExtraArgs(optimizer.init, update_fn)


def _task_of(task: Task, run: InnerRun) -> Task:
    """The task the run trains: `task`, or its rescaled form under augmentation."""
    return rescale_params(task, run.scales) if run.scales != () else task


def sample_horizon(key: jax.Array, obj: MetaObjective) -> jax.Array:
    """`obj.horizon`, or with `min_horizon` a log-uniform length in [min_horizon, horizon]
    rounded to whole truncations (int32)."""
    if not obj.min_horizon:
        return jnp.asarray(obj.horizon, jnp.int32)
    low, high = math.log(obj.min_horizon), math.log(obj.horizon)
    length = jnp.exp(jax.random.uniform(key, (), minval=low, maxval=high))
    truncations = jnp.round(length / obj.truncation).astype(jnp.int32)
    lowest, highest = -(-obj.min_horizon // obj.truncation), obj.horizon // obj.truncation
    return jnp.clip(truncations, lowest, highest) * obj.truncation


def _fresh(task: Task, optimizer, key: jax.Array, restarts: jax.Array, obj: MetaObjective):
    init_key, run_key, loss_key = jax.random.split(jax.random.fold_in(key, restarts), 3)
    scales = ()
    if obj.rescale > 0:
        scale_key = jax.random.fold_in(init_key, 1)
        scales = param_scales(scale_key, task.init(init_key), obj.rescale)
        task = rescale_params(task, scales)
    state = init_state(task, optimizer, init_key)
    init_loss = task.evaluate(state.params, loss_key, "train")["loss"]
    horizon = sample_horizon(jax.random.fold_in(init_key, 2), obj)
    spread = math.log(obj.lr_spread)
    u = jax.random.uniform(jax.random.fold_in(init_key, 3), (), minval=-spread, maxval=spread)
    return InnerRun(state, run_key, restarts, init_loss, horizon, jnp.exp(u), scales)


def start_run(
    task: Task, transform: Transform, theta: PyTree, key: jax.Array, obj: MetaObjective,
    stagger: bool = True,
) -> InnerRun:  # fmt: skip
    """A fresh inner run; with `stagger`, its step counter starts at a random truncation boundary
    so that a batch of runs restarts at different outer steps."""
    run_key, stagger_key = jax.random.split(key)
    run = _fresh(task, transform(theta), run_key, jnp.zeros((), jnp.int32), obj)
    if stagger:
        num_truncations = run.horizon // obj.truncation
        offset = jax.random.randint(stagger_key, (), 0, num_truncations)
        run = run._replace(train=run.train._replace(step=offset * obj.truncation))
    return run


def _restart_if_done(task, optimizer, key, run: InnerRun, obj: MetaObjective) -> InnerRun:
    done = run.train.step >= run.horizon
    fresh = _fresh(task, optimizer, key, run.restarts + 1, obj)
    return jax.tree.map(lambda a, b: jnp.where(done, a, b), fresh, run)


def _log(x: jax.Array) -> jax.Array:
    return jnp.log(jnp.maximum(x, 1e-30))


def score(
    obj: MetaObjective, losses: jax.Array, init_loss: jax.Array, reference: jax.Array | None = None
) -> jax.Array:
    """The scalar meta-loss of a truncation's losses, normalized by the run's initial loss or,
    given `reference` (losses of tuned AdamW at the same steps), by those: the mean (or final)
    log ratio."""
    mean = obj.objective.startswith("mean")
    if reference is not None:
        ratios = _log(losses) - _log(reference)
        value = ratios.mean() if mean else ratios[-1]
    else:
        value = losses.mean() if mean else losses[-1]
        value = _log(value) - _log(init_loss) if obj.log else value / init_loss
    return penalize_nonfinite(value, MAX_META_LOSS)


def truncation_loss(
    task: Task,
    transform: Transform,
    obj: MetaObjective,
    theta: PyTree,
    key: jax.Array,
    run: InnerRun,
    reference: jax.Array | None = None,
) -> tuple[jax.Array, InnerRun]:
    """Meta-loss of the next `obj.truncation` steps of `run` under `theta`, and the new run.

    The run restarts first if it reached its horizon; `key` seeds that restart only. With
    `normalizer: adamw`, `reference[i]` is tuned AdamW's validation loss after
    `(i + 1) * obj.eval_every` steps. The result is differentiable in `theta` (truncated
    backprop through the unroll).
    """
    optimizer = transform(theta)
    run = _restart_if_done(task, optimizer, key, run, obj)
    valid = obj.objective.endswith("valid")
    train, metrics = unroll(
        _task_of(task, run),
        scheduled(optimizer, obj, run.lr_factor, run.horizon),
        run.train,
        run.run_key,
        obj.truncation,
        total_steps=run.horizon,
        eval_every=obj.eval_every if valid else 0,
        eval_splits=("valid",),
    )
    losses = metrics["valid_loss"] if valid else metrics["train_loss"]
    at_steps = None
    if obj.normalizer == "adamw":
        if reference is None:
            raise ValueError("normalizer 'adamw' needs the task's AdamW reference")
        index = metrics["eval_step"] // obj.eval_every - 1
        at_steps = reference[jnp.clip(index, 0, reference.shape[0] - 1)]
    return score(obj, losses, run.init_loss, at_steps), run._replace(train=train)
