"""The AlgoPerf protocol on this project's tasks (Dahl et al. 2023, "Benchmarking neural network
training algorithms"; Kasimbeg et al. 2025): validation-loss targets set by well-tuned baselines,
time to target in steps and seconds, and the external-tuning (quasi-random trials in studies) and
self-tuning (no tuning) tracks. A meta-trained optimizer that learned its step size has no
learning rate: it runs in the self-tuning track only (one with an external learning rate, `celo`,
is tuned like a rule)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optax

from baselines import get_optimizer
from baselines.schedules import cosine, warmup
from l2o.evaluation import speedups
from l2o.evaluation.harness import LEARNED_SUFFIX, OptimizerSpec, optimizer_factory
from l2o.optimizers.file_format import at_learning_rate, external_learning_rate, load_optimizer
from search.interpreter import program_transform
from search.quasirandom import quasirandom_trials, study_trials
from search.rule_file import read_rule
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


def _spec(optimizer: OptimizerSpec | str) -> OptimizerSpec:
    return OptimizerSpec(optimizer) if isinstance(optimizer, str) else optimizer


def has_learning_rate(optimizer: OptimizerSpec | str) -> bool:
    """False for a meta-trained optimizer (a `.safetensors` file) that learned its step size,
    which has nothing to tune."""
    spec = _spec(optimizer)
    return not spec.file.endswith(LEARNED_SUFFIX) or external_learning_rate(spec.file) is not None


def default_trial(optimizer: OptimizerSpec | str) -> dict[str, float]:
    """The self-tuning track's setting: the optimizer as given (its default or configured
    learning rate, its configured warm-up fraction if it has a warm-up-cosine schedule)."""
    spec = _spec(optimizer)
    _, learning_rate = optimizer_factory(spec)
    if not np.isfinite(learning_rate):
        return {}
    trial = {"learning_rate": float(learning_rate)}
    if spec.schedule == "warmup_cosine":
        trial["warmup"] = float(spec.warmup)
    return trial


def default_space(optimizer: OptimizerSpec | str) -> Space:
    """An optimizer's external-tuning space: a target setter's own space, otherwise its learning
    rate log-uniform from 1/100 to 10x its default (a rule's from its file), with warm-up and
    cosine decay. Raises ValueError for an optimizer without a learning rate."""
    spec = _spec(optimizer)
    if not spec.file and not spec.hparams and spec.name in TARGET_SETTERS:
        return TARGET_SETTERS[spec.name]
    if not has_learning_rate(spec):
        raise ValueError(f"{spec.key} has no learning rate: it has no external-tuning space")
    lr = default_trial(spec)["learning_rate"]
    return parse_space(
        {
            "learning_rate": {"type": "log_uniform", "low": lr / 100, "high": lr * 10},
            "warmup": {"type": "uniform", "low": 0.02, "high": 0.1},
        }
    )


def trial_optimizer(optimizer: OptimizerSpec | str, num_steps: int) -> MakeTrial:
    """`make(trial) -> transform`: a baseline (by name, with the spec's fixed hyperparameters and
    the trial's), a rule file or a meta-trained optimizer (which ignores the trial). The trial's
    learning rate is warmed up over the `warmup` fraction of `num_steps`, then cosine-decayed to
    0 (a trial without `warmup` keeps it constant). Values may be traced."""
    spec = _spec(optimizer)
    learned, default = None, None
    if spec.file.endswith(LEARNED_SUFFIX):
        learned, default = load_optimizer(spec.file), external_learning_rate(spec.file)
        if default is None:
            return lambda trial: learned
    program = read_rule(spec.file)[0] if spec.file else None
    fixed = {k: v for k, v in spec.hparams.items() if k != "learning_rate"}

    def make(trial: Mapping[str, Any]) -> optax.GradientTransformation:
        learning_rate = trial["learning_rate"]
        if "warmup" in trial:
            warmup_steps = trial["warmup"] * num_steps
            learning_rate = warmup(cosine(learning_rate, num_steps - warmup_steps), warmup_steps)
        if learned is not None:
            return at_learning_rate(learned, default, learning_rate)
        if program is not None:
            return program_transform(program, learning_rate)
        hparams = {k: v for k, v in trial.items() if k not in ("learning_rate", "warmup")}
        return get_optimizer(spec.name, **{**fixed, **hparams}, learning_rate=learning_rate)

    return make


def run_trials(
    task: Task,
    make: MakeTrial,
    trials: Sequence[Trial],
    seeds: Sequence[int],
    num_steps: int,
    eval_every: int,
) -> dict[str, np.ndarray]:
    """Every trial x seed as one vmapped call: metrics with leading axes `[trials, seeds]`.
    Empty trials (a meta-trained optimizer's) are run as they are."""
    names = sorted(trials[0]) or ["unused"]
    hparams = {k: np.array([float(t.get(k, 0.0)) for t in trials], np.float32) for k in names}
    return population_sweep(
        task, make, hparams, np.asarray(seeds), num_steps, eval_every=eval_every
    )


def best_validation_loss(runs: Mapping[str, np.ndarray]) -> np.ndarray:
    """`[trials, seeds]` lowest validation loss of each run (inf if it never was finite)."""
    valid = np.where(np.isfinite(runs["valid_loss"]), runs["valid_loss"], np.inf)
    return valid.min(-1)


def setter_score(
    task: Task,
    name: str,
    space: Space,
    num_steps: int,
    eval_every: int,
    *,
    num_trials: int = 50,
    seeds: Sequence[int] = (0, 1, 2),
    seed: int = 0,
) -> dict[str, Any]:
    """One target setter on `task`: the best of `num_trials` quasi-random trials from `space`
    (by the lowest validation loss of one run on `seed`), rerun on `seeds`; its score is the
    median over seeds of the best validation loss.

    Returns `{"score", "trial", "per_seed"}`.
    """
    make = trial_optimizer(name, num_steps)
    trials = quasirandom_trials(space, num_trials, seed)
    search = best_validation_loss(run_trials(task, make, trials, [seed], num_steps, eval_every))
    best = trials[int(np.argmin(search[:, 0]))]
    rerun = best_validation_loss(run_trials(task, make, [best], seeds, num_steps, eval_every))
    return {
        "score": float(np.median(rerun[0])),
        "trial": {k: float(v) for k, v in best.items()},
        "per_seed": rerun[0].tolist(),
    }


def pick_target(by_setter: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The target: the lowest score of all setters (`setter_score` results by name)."""
    setter = min(by_setter, key=lambda n: by_setter[n]["score"])
    return {"target": by_setter[setter]["score"], "setter": setter, "by_setter": dict(by_setter)}


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
    """The validation-loss target of `task` (AlgoPerf): every setter's `setter_score`, the
    lowest of them the target.

    Returns:
        `{"target", "setter", "by_setter": {name: {"score", "trial", "per_seed"}}}`.
    """
    return pick_target(
        {
            name: setter_score(
                task,
                name,
                space,
                num_steps,
                eval_every,
                num_trials=num_trials,
                seeds=seeds,
                seed=seed,
            )  # fmt: skip
            for name, space in setters.items()
        }
    )


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
    target, the task its median study (inf: missed).

    Also returned: each study's best trial (the fastest; the lowest validation loss if none
    reached the target) and its validation curve, `valid_loss` `[studies, evaluations]`.
    """
    studies = study_trials(space, num_trials, num_studies, seed)
    trials = [trial for study in studies for trial in study]
    runs = run_trials(task, make, trials, [seed], num_steps, eval_every)
    steps = steps_to_target(runs, target)[:, 0].reshape(num_studies, num_trials)
    lowest = best_validation_loss(runs)[:, 0].reshape(num_studies, num_trials)
    best = [
        int(np.argmin(s)) if np.isfinite(s).any() else int(np.argmin(low))
        for s, low in zip(steps, lowest, strict=True)
    ]
    curves = runs["valid_loss"][:, 0].reshape(num_studies, num_trials, -1)
    return {
        "steps": _median(steps.min(1)),
        "per_study": steps.min(1).tolist(),
        "best_trials": [studies[i][b] for i, b in enumerate(best)],
        "valid_loss": np.stack([curves[i, b] for i, b in enumerate(best)]),
        "eval_step": runs["eval_step"][0, 0],
        "trials": studies,
    }


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
    task scores the median steps to the target over seeds (inf: missed). Also returned: the
    validation curves `valid_loss` `[seeds, evaluations]`."""
    runs = run_trials(task, make, [defaults], seeds, num_steps, eval_every)
    steps = steps_to_target(runs, target)
    return {
        "steps": _median(steps[0]),
        "per_seed": steps[0].tolist(),
        "valid_loss": runs["valid_loss"][0],
        "eval_step": runs["eval_step"][0, 0],
    }
