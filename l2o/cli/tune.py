"""`l2o tune`: tune one optimizer's hyperparameters on one task; write study.json."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from l2o.cli.builders import build_optimizer, build_task, check_step, versions
from l2o.cli.config import check_hparams, load_yaml
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.cli.train import EXIT_DIVERGED
from l2o.io import UserError, write_json_atomic

METHODS = ("tpe", "random", "grid", "cmaes")
JOURNAL = "study.journal"
STUDY_NAME = "tune"


def read_space(path: Path, allowed: list[str]):
    """`(spec, Space)` of a YAML space file, or a one-line UserError naming the problem."""
    from search.spaces import parse_space

    spec = load_yaml(path, "space")
    try:
        return spec, parse_space(spec, allowed)
    except ValueError as e:
        raise UserError(f"{path}: {e}") from None


def grid_points(trials: int, space) -> int:
    """Points per continuous dimension so that the grid has about `trials` points at most."""
    searched = [d for d in space.dims if d.type != "choice"] or space.dims
    fixed_size = 1
    for d in space.dims:
        if d.type == "choice":
            fixed_size *= len(d.choices)
    return max(1, int((trials / fixed_size) ** (1 / len(searched)) + 1e-9))


def _check_counts(**counts: int) -> None:
    for name, value in counts.items():
        if not isinstance(value, int) or value < 1:
            raise UserError(f"--{name} must be a positive integer, got {value!r}")


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _counts(trials: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t["state"]] = out.get(t["state"], 0) + 1
    return out


def run_tune_command(
    *,
    optimizer_name: str,
    task_name: str,
    space_path: Path,
    method: str = "tpe",
    trials: int = 20,
    steps: int = 200,
    seeds: int = 1,
    seed: int = 0,
    out: Path,
    resume: bool = False,
    overwrite: bool = False,
    task_options: dict | None = None,
    reports: int = 9,
    max_memory: int | None = None,
) -> int:
    """Validate everything, tune, print the best hyperparameters, write `out/study.json`.

    Training seeds are `seed, seed + 1, ...` (`seeds` of them); the tuner's own randomness is
    `key(seed)`. TPE keeps its study in `out/study.journal`: re-run with `resume=True` to
    continue it up to `trials` complete or pruned trials; `overwrite=True` replaces the run in a
    non-empty `out` (else refused). A run whose memory estimate (`l2o.cli.resources`) is above
    `max_memory` is refused. Returns the exit code.
    """
    from baselines import get_optimizer, optimizer_hparams
    from search import spaces
    from tasks.registry import task_overrides

    task_options = task_options or {}
    if method not in METHODS:
        raise UserError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    _check_counts(trials=trials, steps=steps, seeds=seeds, reports=reports)
    if method == "tpe" and reports > steps:
        raise UserError(f"--reports {reports} is larger than --steps {steps}")
    allowed = list(optimizer_hparams(optimizer_name))  # unknown optimizer -> UnknownNameError
    task_overrides(task_name)  # unknown task -> UnknownNameError
    spec, space = read_space(Path(space_path), allowed)
    if resume and method != "tpe":
        raise UserError(f"--resume continues a TPE study; --method {method} runs in one go")
    task = build_task(task_name, task_options)
    centre = spaces.from_unit(space, np.full((1, len(space.dims)), 0.5))
    centre = {k: float(v[0]) for k, v in centre.items()}
    fixed = check_hparams(optimizer_name, space.fixed, str(space_path))  # '1e-8' -> 1e-08
    space = dataclasses.replace(space, fixed=fixed)
    centre_optimizer = build_optimizer(optimizer_name, {**space.fixed, **centre})
    check_step(task, lambda key: centre_optimizer, f"{optimizer_name} on {task_name}")
    if seed + seeds > 2**31:
        raise UserError(f"--seed {seed} plus --seeds {seeds} must stay below 2**31")
    population = seeds * _trials_at_once(method, space, trials)
    kept = trials * (len(space.dims) + 4)  # each trial's record: number, params, value, state
    run = Call(run_bytes(task, [centre_optimizer])[0], population, run_values(steps, steps), kept)
    check_memory([run], max_memory, "--trials, --seeds or --steps")
    out = claim(out, resume=resume, overwrite=overwrite, can_resume=method == "tpe")

    def make_optimizer(hparams):
        return get_optimizer(optimizer_name, **hparams)

    training_seeds = list(range(seed, seed + seeds))
    config: dict[str, Any] = {
        "task": task_name,
        "task_options": task_options,
        "optimizer": optimizer_name,
        "method": method,
        "space_file": str(space_path),
        "space": spec,
        "trials": trials,
        "steps": steps,
        "seeds": training_seeds,
        "seed": seed,
        "objective": "final valid_loss, mean over seeds (NaN/inf -> penalty)",
    }
    total, tune = _plan(
        method, space, config, out / JOURNAL, trials, reports, task_options, task.name
    )
    t0 = time.perf_counter()
    with progress_bar() as bar:
        job = bar.add_task(f"{task_name} / {optimizer_name} / {method}", total=total)
        result = tune(
            task, make_optimizer, num_steps=steps, seeds=training_seeds, seed=seed,
            on_progress=lambda done: bar.update(job, completed=done),
        )  # fmt: skip
        done = sum(t["state"] in ("complete", "pruned") for t in result.trials)
        bar.update(job, total=max(total, done), completed=done)

    from search.objective import PENALTY

    diverged = result.best_value is None or result.best_value >= PENALTY
    study = {
        "command": "tune",
        "status": "diverged" if diverged else "ok",
        "config": config,
        "best_params": result.best_params,
        "best_value": result.best_value,
        "counts": _counts(result.trials),
        "penalized": sum(t["value"] is not None and t["value"] >= PENALTY for t in result.trials),
        "trials": result.trials,
        "timing": {"wall_time_s": time.perf_counter() - t0},
        "versions": {**versions(), **_search_versions()},
        "argv": sys.argv,
    }
    write_json_atomic(out / "study.json", study)
    if diverged:
        print(
            f"l2o: error: every trial diverged or failed (study written to {out}); "
            "try lower bounds for the learning rate",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    best = ", ".join(f"{k}={_short(v)}" for k, v in result.best_params.items())
    counts = ", ".join(f"{n} {state}" for state, n in study["counts"].items())
    print(
        f"{task_name} / {optimizer_name} ({method}, {counts}): best valid loss "
        f"{result.best_value:.4g} with {best} -> {out / 'study.json'}"
    )
    return 0


def _trials_at_once(method: str, space, trials: int) -> int:
    """Trials `method` trains in one call: TPE one at a time, CMA-ES a generation, grid and
    random search all."""
    from search import spaces, tuners

    if method == "tpe":
        return 1
    if method == "cmaes":
        return tuners.default_population_size(len(space.dims))
    if method == "grid":
        return len(spaces.grid(space, grid_points(trials, space))[space.dims[0].name])
    return trials


def _plan(method, space, config, journal, trials, reports, task_options, study_task):
    """`(expected trials, tune(task, make_optimizer, *, num_steps, seeds, seed, on_progress))`
    for `method`; records the method's own settings in `config`."""
    from search import spaces, tuners

    if method == "grid":
        points = grid_points(trials, space)
        config["points_per_dim"] = points

        def tune(task, make_optimizer, *, seed, **common):
            return tuners.grid_search(task, make_optimizer, space, points_per_dim=points, **common)

        return len(spaces.grid(space, points)[space.dims[0].name]), tune
    if method == "random":
        return trials, functools.partial(tuners.random_search, space=space, num_trials=trials)
    if method == "cmaes":
        size = tuners.default_population_size(len(space.dims))
        config["population_size"] = size
        tune = functools.partial(
            tuners.cmaes_search, space=space, num_trials=trials, population_size=size
        )
        return size * math.ceil(trials / size), tune
    from search.bayes import StudyMismatchError, check_study, study_settings, tpe_search

    config.update(reports=reports, storage=journal.name, study_name=STUDY_NAME)
    settings = {"optimizer": config["optimizer"], "task_options": task_options}
    stored = study_settings(study_task, space, config["steps"], config["seeds"], reports, settings)
    try:
        check_study(journal, STUDY_NAME, stored)  # before any work
    except StudyMismatchError as e:
        raise UserError(str(e)) from None

    def tune(task, make_optimizer, *, on_progress, **common):
        return tpe_search(
            task, make_optimizer, space, num_trials=trials, storage_path=journal,
            study_name=STUDY_NAME, num_reports=reports, settings=settings,
            on_trial=lambda finished, trial: on_progress(finished), **common,
        )  # fmt: skip

    return trials, tune


def _search_versions() -> dict[str, str]:
    out = {}
    for dist in ("optuna", "evosax"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
