"""`l2o targets` (a protocol suite's validation-loss targets, written with the command that made
them) and `l2o protocol` (time to target of optimizers in the external- and self-tuning tracks).

Both run unit by unit (a target setter on a task; a track, task and optimizer) and journal each
finished unit atomically, so that `--resume` after a kill continues where the run stopped; the
journal records the configuration, and a resume with another one is refused."""

from __future__ import annotations

import dataclasses
import functools
import shlex
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from l2o.cli.builders import build_spec_task, versions
from l2o.cli.config import _mapping, check_keys, load_yaml, number, parse_suite, pick_entries
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim, lock
from l2o.evaluation import protocol
from l2o.evaluation.harness import Suite, seconds_per_step
from l2o.evaluation.protocol_report import TRACKS, aggregate
from l2o.io import (
    UserError,
    append_scalars,
    check_writable_dir,
    read_json,
    to_jsonable,
    write_json_atomic,
)

SUITE_KEYS = {"tasks", "optimizers", "steps", "seeds", "eval_every", "timing_steps"}
PROTOCOL_KEYS = SUITE_KEYS | {"targets", "tuning", "seed"}
MAX_TRIALS, MAX_STUDIES = 1000, 100


@dataclasses.dataclass(frozen=True)
class Protocol:
    """A protocol suite: tasks and budget (`suite`), how targets are set, how tracks tune."""

    suite: Suite
    targets_file: str
    target_steps: int
    target_trials: int = 50
    setters: tuple[str, ...] = tuple(protocol.TARGET_SETTERS)
    trials: int = 5
    studies: int = 3
    seed: int = 0


def parse_protocol(data: Mapping[str, Any], where: str = "config") -> Protocol:
    """A validated `Protocol` from a config mapping (see configs/protocol_cpu.yaml)."""
    data = _mapping(data, where)
    check_keys(data, PROTOCOL_KEYS, where)
    suite = parse_suite({k: v for k, v in data.items() if k in SUITE_KEYS}, where)
    if not suite.eval_every:
        raise UserError(f"{where}: give eval_every, the steps between validation evaluations")
    targets = _mapping(data.get("targets"), f"{where}.targets")
    check_keys(targets, {"file", "steps", "trials", "setters"}, f"{where}.targets")
    if not isinstance(targets.get("file"), str) or not targets["file"]:
        raise UserError(f"{where}.targets.file: the path of the targets file is required")
    setters = targets.get("setters", list(protocol.TARGET_SETTERS))
    if (
        not isinstance(setters, list)
        or not setters
        or any(s not in protocol.TARGET_SETTERS for s in setters)
    ):
        raise UserError(
            f"{where}.targets.setters must be a non-empty list of "
            f"{', '.join(protocol.TARGET_SETTERS)}; got {setters!r}"
        )
    tuning = _mapping(data.get("tuning"), f"{where}.tuning")
    check_keys(tuning, {"trials", "studies"}, f"{where}.tuning")
    out = Protocol(
        suite=suite,
        targets_file=targets["file"],
        target_steps=int(
            number(targets.get("steps", suite.steps), f"{where}.targets.steps", integer=True)
        ),  # fmt: skip
        target_trials=int(
            number(targets.get("trials", 50), f"{where}.targets.trials", integer=True)
        ),
        setters=tuple(setters),
        trials=int(number(tuning.get("trials", 5), f"{where}.tuning.trials", integer=True)),
        studies=int(number(tuning.get("studies", 3), f"{where}.tuning.studies", integer=True)),
        seed=int(number(data.get("seed", 0), f"{where}.seed", integer=True, positive=False)),
    )
    for name, value, limit in (("targets.trials", out.target_trials, MAX_TRIALS),
                               ("tuning.trials", out.trials, MAX_TRIALS),
                               ("tuning.studies", out.studies, MAX_STUDIES),
                               ("seeds", suite.seeds, MAX_TRIALS)):  # fmt: skip
        if value > limit:
            raise UserError(f"{where}.{name} must be at most {limit}, got {value}")
    if not suite.eval_every <= out.target_steps <= suite.steps:
        raise UserError(f"{where}.targets.steps must lie in eval_every..steps "
                        f"({suite.eval_every}..{suite.steps}), got {out.target_steps}")  # fmt: skip
    return out


class Journal:
    """Finished units of a run, kept in one JSON file rewritten atomically after each unit,
    with the configuration they were computed under."""

    def __init__(self, path: Path, config: Any, resume: bool):
        self.path, self.config = path, to_jsonable(config)
        self.units: dict[str, Any] = {}
        if not resume:
            return
        if not path.exists():
            raise UserError(f"--resume: there is no run to resume ({path} does not exist)")
        saved = read_json(path)
        if not isinstance(saved, dict) or not isinstance(saved.get("units"), dict):
            raise UserError(f"{path} is not a run journal; delete it to start again")
        if saved.get("config") != self.config:
            raise UserError(
                f"--resume: the configuration differs from the one {path} was started with; "
                "run it with that configuration, or start a new run elsewhere"
            )
        self.units = saved["units"]

    def run(self, key: str, compute: Callable[[], Any]) -> Any:
        """The unit's journaled result, or `compute()` journaled now."""
        if key not in self.units:
            self.units[key] = to_jsonable(compute())
            write_json_atomic(self.path, {"config": self.config, "units": self.units})
        return self.units[key]


def _command(argv: list[str]) -> str:
    return " ".join(["l2o", *map(shlex.quote, argv)])


def _config_record(p: Protocol) -> dict[str, Any]:
    return {
        "tasks": [dataclasses.asdict(t) for t in p.suite.tasks],
        "steps": p.suite.steps,
        "target_steps": p.target_steps,
        "eval_every": p.suite.eval_every,
        "seeds": p.suite.seeds,
        "target_trials": p.target_trials,
        "setters": list(p.setters),
        "seed": p.seed,
    }


def targets_calls(p: Protocol, tasks) -> list[Call]:
    """The calls of `l2o targets` (`l2o.cli.resources`): per task and setter, its quasi-random
    trials (or its reruns on the seeds) trained at once."""
    population = max(p.target_trials, p.suite.seeds)
    values = run_values(p.target_steps, p.suite.eval_every)
    setters = [protocol.trial_optimizer(name, p.target_steps)(protocol.default_trial(name))
               for name in p.setters]  # fmt: skip
    return [
        Call(size, population, values, 0) for task in tasks for size in run_bytes(task, setters)
    ]


def protocol_calls(p: Protocol, tracks: tuple[str, ...], pairs) -> list[Call]:
    """The calls of `l2o protocol` (`l2o.cli.resources`) from `check_suite_runs` pairs: per task
    and optimizer, the trials of every external-tuning study, or the self-tuning seeds, trained
    at once; their validation curves are kept."""
    trials = max(p.trials * p.studies * ("external" in tracks), p.suite.seeds * ("self" in tracks))
    values = run_values(p.suite.steps, p.suite.eval_every)
    evaluations = values - p.suite.steps
    return [Call(size, trials, values, trials * evaluations) for _, _, size, _ in pairs]


def run_targets_command(
    p: Protocol,
    out: Path,
    *,
    resume: bool,
    argv: list[str],
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Set the target of every task of `p` (`protocol.setter_score` per setter, each trial
    `p.target_steps` long, so that the setters' settings reach it within a budget of
    `p.suite.steps`) and write them,
    with the command and configuration, to `out`; `out` + `.journal.json` holds finished units
    until the end. An existing `out` is replaced only with `overwrite`, which also drops an
    unfinished run; the run holds the lock `.NAME.lock` beside `out`. A run whose memory
    estimate (`l2o.cli.resources`) is above `max_memory` is refused."""
    journal_path = out.with_name(out.name + ".journal.json")
    if resume and overwrite:
        raise UserError("--resume and --overwrite exclude each other")

    def refuse_a_used_out() -> None:
        if out.exists() and not overwrite:
            raise UserError(f"{out} exists: pass --overwrite to replace it, or choose another "
                            "--out")  # fmt: skip
        if journal_path.exists() and not (resume or overwrite):
            raise UserError(f"{journal_path} holds an unfinished run: pass --resume to continue "
                            "it or --overwrite to replace it")  # fmt: skip

    refuse_a_used_out()  # before the folder is made
    tasks = {spec.key: build_spec_task(spec) for spec in p.suite.tasks}
    lower = "targets.trials, seeds, targets.steps or the tasks' sizes"
    check_memory(targets_calls(p, tasks.values()), max_memory, lower)
    lock(check_writable_dir(out.parent), f".{out.name}.lock")
    refuse_a_used_out()  # a run that started and ended meanwhile
    if overwrite:
        out.unlink(missing_ok=True)
        journal_path.unlink(missing_ok=True)
    config = _config_record(p)
    journal = Journal(journal_path, config, resume)
    t0 = time.perf_counter()
    seeds = list(range(p.suite.seeds))
    by_task = {}
    with progress_bar() as bar:
        job = bar.add_task("targets", total=len(p.suite.tasks) * len(p.setters))
        for spec in p.suite.tasks:
            task = tasks[spec.key]
            by_setter = {}
            for name in p.setters:
                bar.update(job, description=f"targets ({spec.key} / {name})")
                by_setter[name] = journal.run(f"{spec.key}/{name}", functools.partial(
                    protocol.setter_score, task, name, protocol.TARGET_SETTERS[name],
                    p.target_steps, p.suite.eval_every, num_trials=p.target_trials,
                    seeds=seeds, seed=p.seed))  # fmt: skip
                bar.update(job, advance=1)
            by_task[spec.key] = protocol.pick_target(by_setter)
    write_json_atomic(out, {"command": _command(argv), **config, "tasks": by_task,
                            "wall_time_s": time.perf_counter() - t0,
                            "versions": versions()})  # fmt: skip
    journal_path.unlink()
    for task, entry in by_task.items():
        print(f"{task}: target {entry['target']:.4g} (set by {entry['setter']})")
    print(f"targets written to {out}")
    return 0


def load_targets(path: Path, p: Protocol) -> dict[str, dict[str, Any]]:
    """The targets of `p`'s tasks from a `l2o targets` file made for the same budget."""
    data = read_json(path)
    if not isinstance(data, dict) or not isinstance(data.get("tasks"), dict):
        raise UserError(f"{path} is not a targets file of `l2o targets`")
    for key in ("steps", "target_steps", "eval_every"):
        wanted = p.target_steps if key == "target_steps" else getattr(p.suite, key)
        if data.get(key) != wanted:
            raise UserError(f"{path} was made for {key}={data.get(key)}, the config has "
                            f"{wanted}; make targets for this budget")  # fmt: skip
    targets = {}
    for spec in p.suite.tasks:
        entry = data["tasks"].get(spec.key)
        target = entry.get("target") if isinstance(entry, dict) else None
        if not isinstance(target, int | float) or isinstance(target, bool):
            raise UserError(f"{path} has no target for task {spec.key!r}")
        targets[spec.key] = {"target": float(target), "setter": str(entry.get("setter", "?"))}
    return targets


def run_protocol_command(
    p: Protocol,
    targets_path: Path,
    out: Path,
    *,
    tracks: tuple[str, ...],
    resume: bool,
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Both tracks (or one) for every optimizer x task of `p`; results.json, report.md, the
    validation-curve figure and TensorBoard events in `out` (journal: `out/journal.json`). A run
    whose memory estimate (`l2o.cli.resources`) is above `max_memory` is refused."""
    from l2o.cli.evaluate import check_suite_runs, write_protocol_report

    targets = load_targets(targets_path, p)
    targets_command = read_json(targets_path).get("command", "?")
    calls = protocol_calls(p, tracks, check_suite_runs(p.suite))
    check_memory(calls, max_memory, "tuning.trials, tuning.studies, seeds or steps")
    out = claim(Path(out), resume=resume, overwrite=overwrite)
    config = {
        **_config_record(p),
        "optimizers": [dataclasses.asdict(o) for o in p.suite.optimizers],
        "trials": p.trials,
        "studies": p.studies,
        "tracks": list(tracks),
        "targets": targets,
    }
    journal = Journal(out / "journal.json", config, resume)
    t0 = time.perf_counter()
    seeds = list(range(p.suite.seeds))
    steps, every = p.suite.steps, p.suite.eval_every
    results = {track: {} for track in tracks}
    seconds: dict[str, dict[str, float]] = {}
    units = len(p.suite.tasks) * len(p.suite.optimizers) * (len(tracks) + 1)
    with progress_bar() as bar:
        job = bar.add_task("protocol", total=units)
        for task_spec in p.suite.tasks:
            task = build_spec_task(task_spec)
            target = targets[task_spec.key]["target"]
            seconds[task_spec.key] = {}
            for track in tracks:
                results[track][task_spec.key] = {}
            for spec in p.suite.optimizers:
                make = protocol.trial_optimizer(spec, steps)
                defaults = protocol.default_trial(spec)
                where = f"{task_spec.key}/{spec.key}"
                bar.update(job, description=f"protocol ({where})")
                seconds[task_spec.key][spec.key] = journal.run(
                    f"seconds/{where}",
                    functools.partial(
                        seconds_per_step, task, make(defaults), p.suite.timing_steps or 100
                    ),
                )
                bar.update(job, advance=1)
                for track in tracks:
                    bar.update(job, description=f"protocol ({track}: {where})")
                    results[track][task_spec.key][spec.key] = journal.run(
                        f"{track}/{where}",
                        functools.partial(
                            _track,
                            track,
                            task,
                            spec,
                            make,
                            defaults,
                            target,
                            steps,
                            every,
                            seeds,
                            p,
                        ),
                    )
                    bar.update(job, advance=1)
    names = [spec.key for spec in p.suite.optimizers]
    report = {
        "command": "protocol",
        "targets_file": str(targets_path),
        "targets_command": targets_command,
        **config,
        "optimizers": names,
        "tracks": results,
        "seconds_per_step": seconds,
        "aggregates": {t: aggregate(results[t], seconds, names) for t in tracks},
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    }
    write_json_atomic(out / "results.json", report)
    write_protocol_report(out, report)
    append_scalars(out, _scalars(results))
    (out / "journal.json").unlink()
    print(f"time to target of {len(names)} optimizers on {len(p.suite.tasks)} tasks in "
          f"{report['wall_time_s']:.0f} s: {out / 'report.md'}")  # fmt: skip
    return 0


def _track(track, task, spec, make, defaults, target, steps, every, seeds, p) -> dict[str, Any]:
    """One track of one optimizer on one task, with its wall time (compilation included)."""
    if track == "external" and not protocol.has_learning_rate(spec):
        return {"not_applicable": "this meta-trained optimizer has no learning rate to tune"}
    t0 = time.perf_counter()
    if track == "self":
        out = protocol.self_tuning(task, make, defaults, target, steps, every, seeds=seeds)
    else:
        out = protocol.external_tuning(
            task, make, protocol.default_space(spec), target, steps, every,
            num_trials=p.trials, num_studies=p.studies, seed=p.seed,
        )  # fmt: skip
    return {**out, "wall_time_s": time.perf_counter() - t0}


def _scalars(results: Mapping[str, Any]) -> dict:
    """`track/task/optimizer/valid_loss -> (steps, median over runs)` for TensorBoard."""
    out = {}
    for track, by_task in results.items():
        for task, by_optimizer in by_task.items():
            for name, entry in by_optimizer.items():
                if "valid_loss" in entry:
                    curves = np.asarray(entry["valid_loss"], np.float64)
                    out[f"{track}/{task}/{name}/valid_loss"] = (
                        entry["eval_step"],
                        np.median(curves, 0),
                    )
    return out


def protocol_from_flags(config: Path, optimizers: str | None) -> Protocol:
    """The Protocol of a config file, its optimizers replaced by `--optimizers` if given."""
    data = load_yaml(config)
    if optimizers:
        data["optimizers"] = pick_entries(data.get("optimizers"), optimizers)
    return parse_protocol(data, str(config))


TRACK_CHOICES = {"both": TRACKS, "external": ("external",), "self": ("self",)}
