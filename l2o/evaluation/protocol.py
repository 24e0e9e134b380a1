"""The AlgoPerf protocol on this project's tasks (Dahl et al. 2023, "Benchmarking neural network
training algorithms"; Kasimbeg et al. 2025): validation-loss targets set by well-tuned baselines,
time to target in steps and seconds, and the external-tuning (quasi-random trials in studies) and
self-tuning (no tuning) tracks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax

from baselines import get_optimizer, optimizer_hparams
from baselines.schedules import cosine, warmup
from l2o.evaluation import speedups
from search.quasirandom import quasirandom_trials, study_trials
from search.spaces import Space, parse_space
from search.sweep import population_sweep
from tasks import Task

Trial = Mapping[str, float]
MakeTrial = Callable[[Mapping[str, Any]], optax.GradientTransformation]

# AlgoPerf's target-setting algorithms, each with warm-up (a fraction of the budget) and cosine
# decay; heavy-ball momentum and Nesterov have no weight decay of their own here.
_ADAM_SPACE = {
    "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1e-1},
    "b1": {"type": "one_minus_log_uniform", "low": 0.8, "high": 0.99},
    "weight_decay": {"type": "log_uniform", "low": 1e-5, "high": 0.5},
    "warmup": {"type": "uniform", "low": 0.02, "high": 0.1},
}
_MOMENTUM_SPACE = {
    "learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 1.0},
    "momentum": {"type": "one_minus_log_uniform", "low": 0.8, "high": 0.99},
    "warmup": {"type": "uniform", "low": 0.02, "high": 0.1},
}
TARGET_SETTERS: dict[str, Space] = {
    "adamw": parse_space(_ADAM_SPACE),
    "nadamw": parse_space(_ADAM_SPACE),
    "nesterov": parse_space(_MOMENTUM_SPACE),
    "momentum": parse_space(_MOMENTUM_SPACE),
}


def default_space(name: str) -> Space:
    """An optimizer's external-tuning space: its learning rate, log-uniform from 1/100 to 10x its
    default, with warm-up and cosine decay (a target setter's own space if it is one)."""
    if name in TARGET_SETTERS:
        return TARGET_SETTERS[name]
    lr = float(optimizer_hparams(name)["learning_rate"])
    return parse_space(
        {
            "learning_rate": {"type": "log_uniform", "low": lr / 100, "high": lr * 10},
            "warmup": {"type": "uniform", "low": 0.02, "high": 0.1},
        }
    )


def trial_optimizer(name: str, num_steps: int) -> MakeTrial:
    """`make(trial) -> transform` of baseline `name`: the trial's hyperparameters, its learning
    rate warmed up over the `warmup` fraction of `num_steps` and then cosine-decayed to 0 (a
    trial without `warmup` keeps a constant learning rate). Values may be traced."""

    def make(trial: Mapping[str, Any]) -> optax.GradientTransformation:
        hparams = {k: v for k, v in trial.items() if k not in ("learning_rate", "warmup")}
        learning_rate = trial["learning_rate"]
        if "warmup" in trial:
            warmup_steps = trial["warmup"] * num_steps
            learning_rate = warmup(cosine(learning_rate, num_steps - warmup_steps), warmup_steps)
        return get_optimizer(name, learning_rate=learning_rate, **hparams)

    return make


def run_trials(
    task: Task,
    make: MakeTrial,
    trials: Sequence[Trial],
    seeds: Sequence[int],
    num_steps: int,
    eval_every: int,
) -> dict[str, np.ndarray]:
    """Every trial x seed as one vmapped call: metrics with leading axes `[trials, seeds]`."""
    names = sorted(trials[0])
    hparams = {k: np.array([float(t[k]) for t in trials], np.float32) for k in names}
    return population_sweep(
        task, make, hparams, np.asarray(seeds), num_steps, eval_every=eval_every
    )


def best_validation_loss(runs: Mapping[str, np.ndarray]) -> np.ndarray:
    """`[trials, seeds]` lowest validation loss of each run (inf if it never was finite)."""
    valid = np.where(np.isfinite(runs["valid_loss"]), runs["valid_loss"], np.inf)
    return valid.min(-1)


def set_target(
    task: Task,
    num_steps: int,
    eval_every: int,
    *,
    num_trials: int = 50,
    seeds: Sequence[int] = (0, 1, 2),
    setters: Mapping[str, Space] = TARGET_SETTERS,
    seed: int = 0,
) -> dict[str, Any]:
    """The validation-loss target of `task`: each setter's best of `num_trials` quasi-random
    trials (one seed), rerun on `seeds`; its score is the median over seeds of the best validation
    loss; the target is the lowest score of all setters.

    Returns:
        `{"target", "setter", "by_setter": {name: {"score", "trial", "per_seed"}}}`.
    """
    by_setter = {}
    for name, space in setters.items():
        make = trial_optimizer(name, num_steps)
        trials = quasirandom_trials(space, num_trials, seed)
        search = best_validation_loss(run_trials(task, make, trials, [seed], num_steps, eval_every))
        best = trials[int(np.argmin(search[:, 0]))]
        rerun = best_validation_loss(run_trials(task, make, [best], seeds, num_steps, eval_every))
        by_setter[name] = {
            "score": float(np.median(rerun[0])),
            "trial": {k: float(v) for k, v in best.items()},
            "per_seed": rerun[0].tolist(),
        }
    setter = min(by_setter, key=lambda n: by_setter[n]["score"])
    return {"target": by_setter[setter]["score"], "setter": setter, "by_setter": by_setter}


def steps_to_target(runs: Mapping[str, np.ndarray], target: float) -> np.ndarray:
    """`[trials, seeds]` first evaluation step at which the validation loss is at or below
    `target` (inf where it never is)."""
    valid, steps = runs["valid_loss"], runs["eval_step"]
    out = np.full(valid.shape[:2], np.inf)
    for index in np.ndindex(*valid.shape[:2]):
        hit = speedups.time_to_target(valid[index], target, steps=steps[index])
        if hit["reached"]:
            out[index] = hit["steps"]
    return out


def _median(values: np.ndarray) -> float:
    """Median that counts a miss (inf) as the slowest value: inf if half or more missed."""
    return float(np.median(np.asarray(values, np.float64)))


def external_tuning(
    task: Task,
    make: MakeTrial,
    space: Space,
    target: float,
    num_steps: int,
    eval_every: int,
    *,
    num_trials: int = 5,
    num_studies: int = 3,
    seed: int = 0,
) -> dict[str, Any]:
    """The external-tuning track on one task: `num_studies` studies of `num_trials` quasi-random
    trials (one run each, all in one call); a study scores its fastest trial's steps to the
    target, the task its median study (inf: missed)."""
    studies = study_trials(space, num_trials, num_studies, seed)
    trials = [trial for study in studies for trial in study]
    steps = steps_to_target(run_trials(task, make, trials, [seed], num_steps, eval_every), target)
    per_study = steps[:, 0].reshape(num_studies, num_trials).min(1)
    return {"steps": _median(per_study), "per_study": per_study.tolist(), "trials": studies}


def self_tuning(
    task: Task,
    make: MakeTrial,
    defaults: Trial,
    target: float,
    num_steps: int,
    eval_every: int,
    *,
    seeds: Sequence[int] = (0, 1, 2),
) -> dict[str, Any]:
    """The self-tuning track on one task: the optimizer's defaults, no tuning, on `seeds`; the
    task scores the median steps to the target over seeds (inf: missed)."""
    steps = steps_to_target(
        run_trials(task, make, [defaults], seeds, num_steps, eval_every), target
    )
    return {"steps": _median(steps[0]), "per_seed": steps[0].tolist()}
