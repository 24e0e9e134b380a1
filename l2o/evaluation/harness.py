"""The evaluation harness: every optimizer x task x seed through the same inner loop, with the
learning rate of each baseline tuned per task on the validation split (one vmapped call per
optimizer and task; the grid extended while the best learning rate is at its edge), and the
seconds per step of each optimizer, for wall-clock comparisons (`l2o.evaluation.comparison`)."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np
import optax

from baselines import get_optimizer, optimizer_hparams
from baselines.schedules import cosine, warmup
from l2o.evaluation import metrics
from l2o.optimizers.file_format import at_learning_rate, external_learning_rate, load_optimizer
from search.interpreter import program_transform
from search.rule_file import adamw_ratio, default_learning_rate, read_rule
from search.sweep import log_grid, population_sweep, select_best
from tasks import Task, get_task, train
from tasks.augment import param_scales, rescale_params


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer to evaluate, its learning rate tuned or not: a baseline by registry name
    with fixed hyperparameters, or a file: a symbolic rule (`.json`, `search.load_rule`; its
    `lr` is tuned like a baseline's; untuned, it runs at the file's learning rate, or with
    `hparams["adamw_lr"]` at the file's ratio to AdamW's times it) or a meta-trained optimizer
    (`.safetensors`, `l2o.load_optimizer`; nothing to tune). A baseline's learning rate may
    follow a schedule over the step budget: `warmup_cosine` (linear warm-up over the `warmup`
    fraction of the budget, then cosine decay to 0; AlgoPerf's NAdamW baseline) or `constant`."""

    name: str
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tune_lr: bool = True
    label: str = ""
    file: str = ""
    schedule: str = "constant"
    warmup: float = 0.0
    declared_budget: float = 1.0

    @property
    def key(self) -> str:
        return self.label or self.name

    def declared_steps(self, num_steps: int) -> int:
        """The run length the optimizer is told (the span of its schedule, a learned optimizer's
        `num_steps`): `declared_budget` times the true one, a budget that is wrong on purpose in
        stress tests (Rezk et al. 2023 on VeLO)."""
        return max(1, int(round(self.declared_budget * num_steps)))


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task with option overrides."""

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""
    rescale: float = 0.0

    @property
    def key(self) -> str:
        return self.label or self.name

    def build(self) -> Task:
        """The task; with `rescale > 0`, in rescaled coordinates (`rescaled`)."""
        return rescaled(get_task(self.name, **self.options), self.rescale)


def rescaled(task: Task, log10_range: float) -> Task:
    """`task` in coordinates rescaled per parameter tensor by fixed scales `10^u`,
    `u ~ Uniform(-log10_range, log10_range)` drawn with key 0; `task` itself for 0."""
    if not log10_range:
        return task
    shapes = jax.eval_shape(task.init, jax.random.key(0))
    return rescale_params(task, param_scales(jax.random.key(0), shapes, log10_range))


@dataclasses.dataclass(frozen=True)
class Suite:
    """What to evaluate: tasks x optimizers x seeds, the step budget and the tuning grid."""

    tasks: tuple[TaskSpec, ...]
    optimizers: tuple[OptimizerSpec, ...]
    steps: int = 2000
    seeds: int = 3
    lr_low: float = 1e-7
    lr_high: float = 1.0
    lr_num: int = 15
    eval_every: int = 0
    reference: str = "adam"
    reference_steps: int = 0
    tune_on: str = "valid"
    lr_extensions: int = 2
    timing_steps: int = 100

    @property
    def evaluation_interval(self) -> int:
        return self.eval_every or max(1, self.steps // 20)

    def horizon(self, spec: OptimizerSpec) -> int:
        """Steps run for `spec`: the reference may run longer (`reference_steps`), so that a
        challenger's speedup can exceed 1 when the reference needs more than `steps` to reach
        the challenger's final loss."""
        if spec.key == self.reference:
            return max(self.steps, self.reference_steps)
        return self.steps

    def learning_rates(self) -> np.ndarray:
        return log_grid(self.lr_low, self.lr_high, self.lr_num)


RULE_SUFFIX, LEARNED_SUFFIX = ".json", ".safetensors"
TUNE_ON = ("valid", "train")
"""What a learning rate is chosen by: the mean final validation loss, or the mean training loss
over the budget's last `metrics.default_window` steps (the smoothed final training loss that
speedups compare)."""


SCHEDULES = ("constant", "warmup_cosine")


def learning_rate_schedule(spec: OptimizerSpec, learning_rate, num_steps: int):
    """The learning rate of `spec` over a budget of `num_steps`: a number, or a schedule."""
    if spec.schedule == "constant":
        return learning_rate
    if spec.schedule == "warmup_cosine":
        warmup_steps = int(round(spec.warmup * num_steps))
        return warmup(cosine(learning_rate, max(1, num_steps - warmup_steps)), warmup_steps)
    raise ValueError(f"unknown schedule {spec.schedule!r}; valid: {', '.join(SCHEDULES)}")


def _told(
    optimizer: optax.GradientTransformationExtraArgs, num_steps: int
) -> optax.GradientTransformationExtraArgs:
    """`optimizer` told that the run lasts `num_steps` steps, whatever the loop says."""

    def update_fn(updates, state, params=None, **extra_args):
        return optimizer.update(updates, state, params, **{**extra_args, "num_steps": num_steps})

    return optax.GradientTransformationExtraArgs(optimizer.init, update_fn)


def optimizer_factory(spec: OptimizerSpec, num_steps: int = 1000) -> tuple[Callable, float]:
    """`make(learning_rate) -> optax transform` for a spec whose schedule spans `num_steps`
    (times `spec.declared_budget`), and its untuned learning rate (NaN for a meta-trained
    optimizer that learned its step size; the stored default for one whose learning rate is
    external). Files are read and checked here."""
    num_steps = spec.declared_steps(num_steps)
    if spec.file.endswith(LEARNED_SUFFIX):
        learned, default = load_optimizer(spec.file), external_learning_rate(spec.file)
        if spec.declared_budget != 1.0:
            learned = _told(learned, num_steps)
        if default is None:
            return (lambda learning_rate: learned), float("nan")

        def make_learned(learning_rate) -> optax.GradientTransformation:
            schedule = learning_rate_schedule(spec, learning_rate, num_steps)
            return at_learning_rate(learned, default, schedule)

        return make_learned, default
    if spec.file.endswith(RULE_SUFFIX):
        program, metadata = read_rule(spec.file)  # read and checked once
        if "adamw_lr" in spec.hparams:  # as `search.load_rule(path, adamw_lr=...)`
            default = adamw_ratio(spec.file, metadata) * spec.hparams["adamw_lr"]
        else:
            default = default_learning_rate(spec.file, metadata)
        return (lambda learning_rate: program_transform(program, learning_rate)), default
    if spec.file:
        raise ValueError(f"{spec.file}: optimizer files end in {RULE_SUFFIX} or {LEARNED_SUFFIX}")
    fixed = {k: v for k, v in spec.hparams.items() if k != "learning_rate"}
    get_optimizer(spec.name, **spec.hparams)  # fail fast on unknown names or hyperparameters
    default_lr = spec.hparams.get("learning_rate", optimizer_hparams(spec.name)["learning_rate"])

    learning_rate_schedule(spec, default_lr, num_steps)  # fail fast on an unknown schedule

    def make(learning_rate) -> optax.GradientTransformation:
        schedule = learning_rate_schedule(spec, learning_rate, num_steps)
        return get_optimizer(spec.name, **fixed, learning_rate=schedule)

    return make, float(default_lr)


def _grid_ratio(lrs: np.ndarray) -> float:
    """The factor between neighbouring learning rates of a log grid (10 for a one-point grid)."""
    return float(lrs[1] / lrs[0]) if len(lrs) > 1 else 10.0


def _tuning_losses(runs: Mapping[str, np.ndarray], suite: Suite) -> np.ndarray:
    """`[learning rates, seeds]` losses the learning rate is chosen by (`suite.tune_on`)."""
    if suite.tune_on == "train":
        window = metrics.default_window(suite.steps)
        return runs["train_loss"][:, :, suite.steps - window : suite.steps].mean(-1)
    within = np.flatnonzero(runs["eval_step"][0, 0] <= suite.steps)
    return runs["valid_loss"][:, :, within[-1]]


def lr_insensitive(losses_LxS: np.ndarray, rtol: float = 1e-6) -> bool:
    """True if every finite mean loss over the grid is the same: the optimizer's updates do not
    depend on its learning rate, and "tuning" it chooses nothing."""
    means = losses_LxS.mean(1)
    finite = means[np.isfinite(means)]
    return (
        len(means) > 1 and finite.size == len(means) and np.allclose(finite, finite[0], rtol=rtol)
    )


def tune_learning_rate(
    sweep: Callable[[np.ndarray], dict[str, np.ndarray]], lrs: np.ndarray, suite: Suite
) -> tuple[np.ndarray, dict[str, np.ndarray], int, dict[str, Any]]:
    """Runs of every learning rate of the grid, extended while the best one is at its edge.

    `sweep(lrs)` returns runs with leading axes `[len(lrs), seeds]`. While the best learning rate
    (by `suite.tune_on`) is the smallest or largest tried, `suite.lr_extensions` times at most,
    three more grid points are run beyond that edge. Returns the learning rates tried (sorted),
    their runs, the index of the best, and what the tuning saw: `extended` (points added
    below/above), `at_edge` (the best is still at the edge: the grid may not contain the
    optimum) and `lr_insensitive`.
    """
    runs = sweep(lrs)
    ratio = _grid_ratio(lrs)
    extended = {"below": 0, "above": 0}
    for _ in range(suite.lr_extensions if len(lrs) > 1 else 0):
        losses = _tuning_losses(runs, suite)
        best = select_best(losses)
        if lr_insensitive(losses) or 0 < best < len(lrs) - 1:
            break
        side = "below" if best == 0 else "above"
        steps = np.arange(1, 4, dtype=np.float64)
        new = lrs[0] / ratio ** steps[::-1] if side == "below" else lrs[-1] * ratio**steps
        new = new[(new >= 1e-30) & (new <= 1e30)].astype(np.float32)  # float32 learning rates
        if not new.size:
            break
        more = sweep(new)
        order = (more, runs) if side == "below" else (runs, more)
        runs = {k: np.concatenate([order[0][k], order[1][k]]) for k in runs}
        lrs = np.concatenate([new, lrs] if side == "below" else [lrs, new])
        extended[side] += len(new)
    losses = _tuning_losses(runs, suite)
    best = select_best(losses)
    insensitive = lr_insensitive(losses)
    tuning = {
        "extended": extended,
        "at_edge": len(lrs) > 1 and best in (0, len(lrs) - 1) and not insensitive,
        "lr_insensitive": insensitive,
    }
    return lrs, runs, best, tuning


def seconds_per_step(
    task: Task, optimizer: optax.GradientTransformation, num_steps: int, repeats: int = 3
) -> float:
    """Wall-clock seconds of one training step of one run, compilation excluded: the fastest of
    `repeats` timed `tasks.train` calls of `num_steps` steps (the least disturbed by other load)."""
    key = jax.random.key(0)
    run = jax.jit(lambda task, key: train(task, optimizer, num_steps, key)[1]["train_loss"])
    compiled = run.lower(task, key).compile()
    jax.block_until_ready(compiled(task, key))
    best = np.inf
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(task, key))
        best = min(best, time.perf_counter() - start)
    return best / num_steps


def evaluate_pair(task: Task, spec: OptimizerSpec, suite: Suite) -> dict[str, Any]:
    """All learning rates x seeds of one optimizer on one task as one call; the best LR's runs.

    The learning rate minimising the mean final validation loss (or, with `suite.tune_on ==
    "train"`, the smoothed final training loss) is selected, the grid extended while the best
    is at its edge (`tune_learning_rate`); its per-seed training curves and evaluations are
    returned, with the tuning loss of every LR tried (inf: diverged) and the seconds per step of
    one run (`suite.timing_steps`; 0 skips the timing). A reference that runs longer than
    `suite.steps` is still tuned and reported at `suite.steps` (its first steps are exactly those
    of a `suite.steps` run); its whole training curve is kept as `extended_train_loss`.
    """
    make, default_lr = optimizer_factory(spec, suite.steps)
    tune = spec.tune_lr and np.isfinite(default_lr)
    lrs = suite.learning_rates() if tune else np.array([default_lr], np.float32)
    horizon = suite.horizon(spec)

    def member_optimizer(member):
        return make(member["learning_rate"])

    def sweep(lrs: np.ndarray) -> dict[str, np.ndarray]:
        # One function for every sweep of the pair: an extension of as many learning rates as
        # the grid reuses the compiled sweep.
        return population_sweep(
            task,
            member_optimizer,
            {"learning_rate": lrs},
            np.arange(suite.seeds),
            horizon,
            eval_every=suite.evaluation_interval,
        )

    lrs, runs, best, tuning = tune_learning_rate(sweep, lrs, suite)
    within = np.flatnonzero(runs["eval_step"][0, 0] <= suite.steps)
    final_valid = runs["valid_loss"][:, :, within[-1]]
    evaluations = {
        k: v[best][..., within] for k, v in runs.items() if k not in ("train_loss", "eval_step")
    }
    out = {
        "learning_rate": float(lrs[best]),
        "lr_grid": lrs,
        "final_valid_loss_by_lr": np.where(np.isfinite(final_valid), final_valid, np.inf).mean(1),
        "diverged_runs": int(np.sum(~np.isfinite(final_valid))),  # of the LR x seed runs
        "tuning": tuning,
        "train_loss": runs["train_loss"][best][:, : suite.steps],
        "eval_step": runs["eval_step"][best, 0][within],
        "evaluations": evaluations,
    }
    if horizon > suite.steps:
        out["extended_train_loss"] = runs["train_loss"][best]
    if suite.timing_steps:
        optimizer = make(np.float32(lrs[best]))
        out["seconds_per_step"] = seconds_per_step(task, optimizer, suite.timing_steps)
    return out


def evaluate_suite(
    suite: Suite,
    on_pair: Callable[[str, str], None] = lambda task, optimizer: None,
    memo: Callable[[str, Callable[[], Any]], Any] = lambda key, compute: compute(),
) -> dict[str, dict[str, Any]]:
    """`evaluate_pair` for every task x optimizer: `results[task_key][optimizer_key]`.

    `on_pair(task_key, optimizer_key)` is called after each pair; `memo("task/optimizer",
    compute)` gives a pair's result (by default `compute()`; or one an earlier run saved).
    """
    results: dict[str, dict[str, Any]] = {}
    for task_spec in suite.tasks:
        task = task_spec.build()
        results[task_spec.key] = {}
        for spec in suite.optimizers:
            results[task_spec.key][spec.key] = memo(
                f"{task_spec.key}/{spec.key}", functools.partial(evaluate_pair, task, spec, suite)
            )
            on_pair(task_spec.key, spec.key)
    return results
