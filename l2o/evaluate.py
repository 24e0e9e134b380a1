"""The evaluation harness: every optimizer x task x seed through the same inner loop, with the
learning rate of each baseline tuned per task on the validation split (one vmapped call per
optimizer and task), and the comparison metrics of `l2o.metrics`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import optax

from baselines import get_optimizer, optimizer_hparams
from l2o import metrics
from l2o.optimizer_file import load_optimizer
from search.interpreter import program_transform
from search.rule_file import default_learning_rate, read_rule
from search.sweep import log_grid, population_sweep, select_best
from tasks import Task, get_task

PROFILE_TAUS = np.logspace(0.0, 1.5, 61)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer to evaluate, its learning rate tuned or not: a baseline by registry name
    with fixed hyperparameters, or a file: a symbolic rule (`.json`, `search.load_rule`; its
    `lr` is tuned like a baseline's) or a meta-trained optimizer (`.safetensors`,
    `l2o.load_optimizer`; nothing to tune)."""

    name: str
    hparams: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    tune_lr: bool = True
    label: str = ""
    file: str = ""

    @property
    def key(self) -> str:
        return self.label or self.name


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """A registered task with option overrides."""

    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    label: str = ""

    @property
    def key(self) -> str:
        return self.label or self.name


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


def optimizer_factory(spec: OptimizerSpec) -> tuple[Callable, float]:
    """`make(learning_rate) -> optax transform` for a spec, and its untuned learning rate
    (NaN for a meta-trained optimizer, which has none). Files are read and checked here."""
    if spec.file.endswith(LEARNED_SUFFIX):
        learned = load_optimizer(spec.file)
        return (lambda learning_rate: learned), float("nan")
    if spec.file.endswith(RULE_SUFFIX):
        program, metadata = read_rule(spec.file)  # read and checked once
        default = default_learning_rate(spec.file, metadata)
        return (lambda learning_rate: program_transform(program, learning_rate)), default
    if spec.file:
        raise ValueError(f"{spec.file}: optimizer files end in {RULE_SUFFIX} or {LEARNED_SUFFIX}")
    fixed = {k: v for k, v in spec.hparams.items() if k != "learning_rate"}
    get_optimizer(spec.name, **spec.hparams)  # fail fast on unknown names or hyperparameters
    default_lr = spec.hparams.get("learning_rate", optimizer_hparams(spec.name)["learning_rate"])

    def make(learning_rate) -> optax.GradientTransformation:
        return get_optimizer(spec.name, **fixed, learning_rate=learning_rate)

    return make, float(default_lr)


def evaluate_pair(task: Task, spec: OptimizerSpec, suite: Suite) -> dict[str, Any]:
    """All learning rates x seeds of one optimizer on one task as one call; the best LR's runs.

    The learning rate minimising the mean final validation loss (or, with `suite.tune_on ==
    "train"`, the smoothed final training loss) is selected; its per-seed
    training curves and evaluations are returned, with the validation loss of every LR. A
    reference that runs longer than `suite.steps` is still tuned and reported at `suite.steps`
    (its first steps are exactly those of a `suite.steps` run); its whole training curve is kept
    as `extended_train_loss`, for speedups.
    """
    make, default_lr = optimizer_factory(spec)
    tune = spec.tune_lr and np.isfinite(default_lr)
    lrs = suite.learning_rates() if tune else np.array([default_lr], np.float32)
    horizon = suite.horizon(spec)
    runs = population_sweep(
        task,
        lambda member: make(member["learning_rate"]),
        {"learning_rate": lrs},
        np.arange(suite.seeds),
        horizon,
        eval_every=suite.evaluation_interval,
    )
    within = np.flatnonzero(runs["eval_step"][0, 0] <= suite.steps)
    final_valid = runs["valid_loss"][:, :, within[-1]]
    if suite.tune_on == "train":
        window = metrics.default_window(suite.steps)
        best = select_best(runs["train_loss"][:, :, suite.steps - window : suite.steps].mean(-1))
    else:
        best = select_best(final_valid)
    evaluations = {
        k: v[best][..., within] for k, v in runs.items() if k not in ("train_loss", "eval_step")
    }
    out = {
        "learning_rate": float(lrs[best]),
        "lr_grid": lrs,
        "final_valid_loss_by_lr": np.where(np.isfinite(final_valid), final_valid, np.inf).mean(1),
        "diverged_runs": int(np.sum(~np.isfinite(final_valid))),  # of the LR x seed runs
        "train_loss": runs["train_loss"][best][:, : suite.steps],
        "eval_step": runs["eval_step"][best, 0][within],
        "evaluations": evaluations,
    }
    if horizon > suite.steps:
        out["extended_train_loss"] = runs["train_loss"][best]
    return out


def evaluate_suite(
    suite: Suite, on_pair: Callable[[str, str], None] = lambda task, optimizer: None
) -> dict[str, dict[str, Any]]:
    """`evaluate_pair` for every task x optimizer: `results[task_key][optimizer_key]`.

    `on_pair(task_key, optimizer_key)` is called after each pair.
    """
    results: dict[str, dict[str, Any]] = {}
    for task_spec in suite.tasks:
        task = get_task(task_spec.name, **task_spec.options)
        results[task_spec.key] = {}
        for spec in suite.optimizers:
            results[task_spec.key][spec.key] = evaluate_pair(task, spec, suite)
            on_pair(task_spec.key, spec.key)
    return results


def _curve(run: Mapping[str, Any], key: str = "train_loss") -> np.ndarray:
    """Seed-averaged training-loss curve of a run (`key`: or its extended curve), smoothed over
    the window of its `suite.steps`-long curve (a trailing average, so an extended curve starts
    exactly as the plain one)."""
    losses = np.asarray(run.get(key, run["train_loss"]), np.float64)
    window = metrics.default_window(np.shape(run["train_loss"])[-1])
    return metrics.smooth(losses.mean(0), window)


def _final_stats(run: Mapping[str, Any]) -> dict[str, Any]:
    losses = np.asarray(run["train_loss"], np.float64)
    window = metrics.default_window(losses.shape[-1])
    out = {
        "final_train_loss": metrics.seed_stats(losses[:, -window:].mean(1)),
        "auc_train_loss": metrics.seed_stats(metrics.area_under_curve(losses)),
    }
    for name, values in run["evaluations"].items():
        values = np.asarray(values, np.float64)
        out[f"final_{name}"] = metrics.seed_stats(values[:, -1])
        best = values.max(1) if name.endswith("accuracy") else values.min(1)
        out[f"best_{name}"] = metrics.seed_stats(best)
    return out


def compare(results: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, Any]:
    """Per-task statistics, speedup and steps-to-target against `reference`, win fractions and
    the performance profile (cost: the mean final test loss, or training loss without a test
    metric)."""
    optimizers = list(next(iter(results.values())))
    has_reference = reference in optimizers
    per_task: dict[str, dict[str, Any]] = {}
    for task_key, runs in results.items():
        per_task[task_key] = {}
        ref_curve = _curve(runs[reference], "extended_train_loss") if has_reference else None
        for opt_key, run in runs.items():
            entry = {"learning_rate": run["learning_rate"], **_final_stats(run)}
            if ref_curve is not None:
                curve = _curve(run)
                entry.update(metrics.speedup(curve, ref_curve))
                ref_final = _curve(runs[reference])[-1]
                steps = metrics.steps_to_target(curve, float(ref_final))
                entry["steps_to_reference_loss"] = steps
            per_task[task_key][opt_key] = entry
    out: dict[str, Any] = {"reference": reference if has_reference else None, "per_task": per_task}
    final = {o: np.array([_test_or_train(per_task[t][o]) for t in per_task]) for o in optimizers}
    if has_reference:
        out["win_fraction"] = {
            opt: metrics.win_fraction(final[opt], final[reference]) for opt in optimizers
        }
    rho = metrics.performance_profile(np.stack(list(final.values()), 1), PROFILE_TAUS)
    out["profile"] = {
        "taus": PROFILE_TAUS,
        "rho": {opt: rho[i] for i, opt in enumerate(optimizers)},
        "cost": "final test loss (training loss where a task has no test split)",
    }
    return out


def _test_or_train(entry: Mapping[str, Any]) -> float:
    """Mean final test loss, or the training loss for tasks without a test metric."""
    stats = entry.get("final_test_loss") or entry["final_train_loss"]
    return np.nan if stats["mean"] is None else stats["mean"]
