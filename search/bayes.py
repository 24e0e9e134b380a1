"""Bayesian tuning with TPE and Hyperband pruning in a persistent Optuna study (Bergstra et al.
2011, "Algorithms for hyper-parameter optimization"; Li et al. 2018, "Hyperband")."""

from __future__ import annotations

import contextlib
import os
import types
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optuna
from optuna.trial import TrialState

from search import spaces
from search.objective import MakeOptimizer, objective_values, with_fixed
from search.spaces import Space
from search.tuners import TuneResult, result_from_trials
from tasks import Task, init_state, unroll

_STATES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned", TrialState.FAIL: "fail"}
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


class StudyMismatchError(ValueError):
    """A stored study was made with other settings than the ones asked for."""


def _optuna_name(d: spaces.Dim) -> str:
    return f"one_minus_{d.name}" if d.type == "one_minus_log_uniform" else d.name


def suggest(trial: optuna.Trial, space: Space) -> dict[str, float | int]:
    """The searched values of an Optuna trial (sampled in each dimension's scale)."""
    out: dict[str, float | int] = {}
    for d in space.dims:
        name = _optuna_name(d)
        if d.type == "uniform":
            out[d.name] = trial.suggest_float(name, d.low, d.high)
        elif d.type == "log_uniform":
            out[d.name] = trial.suggest_float(name, d.low, d.high, log=True)
        elif d.type == "one_minus_log_uniform":
            out[d.name] = 1.0 - trial.suggest_float(name, 1.0 - d.high, 1.0 - d.low, log=True)
        elif d.type == "int":
            out[d.name] = trial.suggest_int(name, int(d.low), int(d.high))
        else:
            out[d.name] = float(trial.suggest_categorical(name, list(d.choices)))
    return out


def _values(space: Space, optuna_params: dict[str, Any]) -> dict[str, float | int]:
    out = {}
    for d in space.dims:
        value = optuna_params.get(_optuna_name(d))
        if value is not None and d.type == "one_minus_log_uniform":
            value = 1.0 - value
        if value is not None and d.type != "int":
            value = float(np.float32(value))  # the value trained, as the batch tuners record it
        out[d.name] = value
    return out


def make_seed_runs(make_member: MakeOptimizer, num_steps: int):
    """`tasks.train` of one member on all seeds, in `tasks.unroll` chunks (the same run).

    Returns `(start, chunk)`: jitted `start(task, hparams, seeds) -> (states, run_keys)` and
    `chunk(n)`, jitted `(task, hparams, states, run_keys) -> (states, valid_loss [S])` after `n`
    more steps, evaluated exactly as `tasks.train` evaluates.
    """

    def start_one(task, hparams, seed):
        init_key, run_key = jax.random.split(jax.random.key(seed))
        return init_state(task, make_member(hparams), init_key), run_key

    compiled = {}

    def chunk(n: int):
        def one(task, hparams, state, run_key):
            state, metrics = unroll(
                task, make_member(hparams), state, run_key, n, total_steps=num_steps, eval_every=n
            )
            return state, metrics["valid_loss"][-1]

        if n not in compiled:
            compiled[n] = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)))
        return compiled[n]

    return jax.jit(jax.vmap(start_one, in_axes=(None, None, 0))), chunk


def chunk_sizes(num_steps: int, num_reports: int) -> list[int]:
    """`num_reports` chunk lengths summing to `num_steps` (the longer ones last)."""
    base, rest = divmod(num_steps, num_reports)
    return [base] * (num_reports - rest) + [base + 1] * rest


def _repair_journal(path: Path) -> None:
    """Drop a half-written last line and the lock a process killed while writing left (one
    process works on a study at a time; Optuna would wait 30 s before breaking the lock)."""
    for leftover in (Path(f"{path}.lock"), *path.parent.glob(f"{path.name}.lock*.rename")):
        leftover.unlink(missing_ok=True)
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)
            f.flush()
            os.fsync(f.fileno())


@contextlib.contextmanager
def _quiet_optuna():
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def _trial_record(space: Space, t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    if t.state == TrialState.COMPLETE:
        value = t.value
    else:
        value = t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None
    return {
        "number": t.number,
        "params": _values(space, t.params),
        "value": value,
        "state": _STATES.get(t.state, t.state.name.lower()),
        "reports": len(t.intermediate_values),
    }


def study_settings(
    task_name: str,
    space: Space,
    num_steps: int,
    seeds: Sequence[int],
    num_reports: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a resumed study must share with the stored one (plain data, stored in the study)."""
    return {
        "task": task_name,
        "space": spaces.to_spec(space),
        "num_steps": num_steps,
        "seeds": [int(s) for s in seeds],
        "num_reports": num_reports,
        **(extra or {}),
    }


def _storage(path: Path) -> optuna.storages.JournalStorage:
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))


def _study_id(storage: optuna.storages.BaseStorage, study_name: str) -> int | None:
    try:
        return storage.get_study_id_from_name(study_name)
    except KeyError:
        return None


def _check_settings(storage, study_id: int, where: str, settings: dict[str, Any]) -> None:
    old = storage.get_study_user_attrs(study_id).get("settings") or {}
    diff = sorted(k for k in {**settings, **old} if old.get(k) != settings.get(k))
    if diff:
        raise StudyMismatchError(
            f"{where} was made with other settings ({', '.join(diff)} differ); "
            "use another output directory"
        )


def check_study(storage_path: str | os.PathLike, study_name: str, settings: dict) -> None:
    """StudyMismatchError if the journal holds `study_name` made with other `settings`.

    Reads only: a missing journal or study passes.
    """
    path = Path(storage_path)
    if path.exists() and path.stat().st_size:
        storage = _storage(path)
        study_id = _study_id(storage, study_name)
        if study_id is not None:
            _check_settings(storage, study_id, f"study {study_name!r} in {path}", settings)


class _ResumableHyperband(optuna.pruners.HyperbandPruner):
    """Hyperband whose brackets follow a trial's place among the trials that were not failed
    (Optuna's own follow trial numbers), and which ignores failed trials: a study resumed after
    a kill prunes exactly as the same study run without interruption."""

    def _get_bracket_id(self, study, trial) -> int:
        if trial.state == TrialState.FAIL:
            return -1  # in no bracket
        failed = study._storage.get_all_trials(
            study._study_id, deepcopy=False, states=(TrialState.FAIL,)
        )
        place = trial.number - sum(t.number < trial.number for t in failed)
        return super()._get_bracket_id(study, types.SimpleNamespace(number=place))


def _sampler(seed: int, finished: int) -> optuna.samplers.TPESampler:
    """The sampler of the next trial: seeded by the count of finished trials, so the values a
    trial draws depend only on the seed and the finished trials before it."""
    return optuna.samplers.TPESampler(seed=seed + finished)


def open_study(
    storage_path: str | os.PathLike, study_name: str, settings: dict[str, Any], seed: int
) -> optuna.Study:
    """Create or load the study; fail the trials a killed process left running.

    A loaded study must have been made with the same `settings` (else StudyMismatchError). The
    TPE sampler is seeded with `seed` plus the number of finished (complete or pruned) trials, and
    `tpe_search` reseeds it the same way before each trial: a trial left running by a killed
    process is failed, and the next trial draws the same values again, so the same storage
    contents and seed give the same continuation as an uninterrupted study.
    """
    path = Path(storage_path)
    _repair_journal(path)
    storage = _storage(path)
    study_id = _study_id(storage, study_name)
    stored = [] if study_id is None else storage.get_all_trials(study_id, deepcopy=False)
    if study_id is not None:
        _check_settings(storage, study_id, f"study {study_name!r} in {path}", settings)
    study = optuna.create_study(
        storage=storage,
        study_name=study_name,
        direction="minimize",
        load_if_exists=True,
        sampler=_sampler(seed, sum(t.state in _FINISHED for t in stored)),
        pruner=_ResumableHyperband(
            min_resource=1, max_resource=settings["num_reports"], reduction_factor=3
        ),
    )
    if study_id is None:
        study.set_user_attr("settings", settings)
    for t in stored:
        if t.state == TrialState.RUNNING:  # killed: failed here, its values drawn again next
            trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            storage.set_trial_state_values(trial_id, TrialState.FAIL)
    return study


def tpe_search(
    task: Task,
    make_optimizer: MakeOptimizer,
    space: Space,
    *,
    num_trials: int,
    num_steps: int,
    seeds: Sequence[int],
    seed: int,
    storage_path: str | os.PathLike,
    study_name: str = "tune",
    num_reports: int = 9,
    settings: dict[str, Any] | None = None,
    on_trial: Callable[[int, dict[str, Any]], None] = lambda finished, trial: None,
) -> TuneResult:
    """TPE (Optuna's `TPESampler(seed)`) with Hyperband pruning over `num_reports` chunks.

    The study lives in the journal file `storage_path`: calling again with the same file and
    `study_name` resumes it until `num_trials` trials are complete or pruned (a trial left
    running by a killed process is marked failed and run again). Each trial trains on every
    seed in chunks of `tasks.unroll` and reports the objective after each chunk; its value is
    the objective after `num_steps`, as the batch tuners compute it.
    A resumed study must match the task name, space, steps, seeds, reports and the extra
    `settings` (plain data, e.g. the optimizer's name). `on_trial(finished, trial)` is called
    after each trial (finished = complete or pruned trials so far).
    """
    if not 1 <= num_reports <= num_steps:
        raise ValueError(f"num_reports must be in 1..num_steps, got {num_reports}")
    settings = study_settings(task.name, space, num_steps, seeds, num_reports, settings)
    make_member = with_fixed(make_optimizer, space)
    start, chunk = make_seed_runs(make_member, num_steps)
    sizes = chunk_sizes(num_steps, num_reports)
    seeds_S = jnp.asarray(seeds)
    with _quiet_optuna():
        study = open_study(storage_path, study_name, settings, seed)
        finished = len(study.get_trials(deepcopy=False, states=_FINISHED))
        while finished < num_trials:
            study.sampler = _sampler(seed, finished)
            trial = study.ask()
            try:
                values = suggest(trial, space)
                hparams = {k: jnp.float32(v) for k, v in values.items()}
                states, run_keys = start(task, hparams, seeds_S)
                state = TrialState.COMPLETE
                for report, n in enumerate(sizes, start=1):
                    states, valid_S = chunk(n)(task, hparams, states, run_keys)
                    value = float(objective_values(np.asarray(valid_S)[None])[0])
                    trial.report(value, report)
                    if report < num_reports and trial.should_prune():
                        state = TrialState.PRUNED
                        break
            except Exception:
                study.tell(trial, state=TrialState.FAIL)
                raise
            frozen = study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
            finished += 1
            on_trial(finished, _trial_record(space, frozen))
        trials = [_trial_record(space, t) for t in study.get_trials(deepcopy=False)]
    return result_from_trials(space, trials)
