"""YAML run files: parsed with `yaml.safe_load` only and validated strictly (unknown keys fail)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from baselines import list_optimizers
from l2o.evaluate import (
    LEARNED_SUFFIX,
    RULE_SUFFIX,
    OptimizerSpec,
    Suite,
    TaskSpec,
    optimizer_factory,
)
from l2o.io import UserError
from l2o.meta_gradients import EstimatorConfig
from l2o.meta_objective import MetaObjective
from l2o.meta_train import OuterConfig
from tasks import list_tasks
from tasks.registry import task_overrides


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from `path`; UserError for a missing, unreadable, empty or malformed file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"no such {what} file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read the {what} file {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse it"
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:
        raise UserError(f"{path} is empty; expected a YAML mapping")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a YAML mapping at the top level")
    return data


def check_keys(data: Mapping, allowed: set[str], where: str) -> None:
    """UserError naming any key of `data` outside `allowed`."""
    unknown = sorted(set(map(str, data)) - allowed)
    if unknown:
        raise UserError(
            f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )


def number(value: Any, where: str, *, integer: bool = False, positive: bool = True) -> float:
    """`value` as a finite (positive) number; YAML strings like '1e-7' are accepted."""
    if isinstance(value, bool):
        raise UserError(f"{where} must be a number, got {value!r}")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where} must be a number, got {value!r}") from None
    if not math.isfinite(x) or (positive and x <= 0) or (integer and x != int(x)):
        kind = "positive " * positive + ("integer" if integer else "finite number")
        raise UserError(f"{where} must be a {kind}, got {value!r}")
    return int(x) if integer else x


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {value!r}")
    return value


def parse_task(entry: Any, where: str) -> TaskSpec:
    """A task entry: a name, or {name, options, label}."""
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, where)
    check_keys(entry, {"name", "options", "label"}, where)
    name = entry.get("name")
    if name not in list_tasks():
        raise UserError(f"{where}: unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    options = _mapping(entry.get("options"), f"{where}.options")
    check_keys(options, set(task_overrides(name)), f"{where}.options ({name})")
    return TaskSpec(name, options, str(entry.get("label", "")))


def _file_spec(entry: Mapping[str, Any], where: str) -> OptimizerSpec:
    """The spec of an optimizer file, read and validated now (never executed)."""
    path = entry["file"]
    if not isinstance(path, str) or not path.endswith((RULE_SUFFIX, LEARNED_SUFFIX)):
        raise UserError(f"{where}.file must be a path ending in {RULE_SUFFIX} or {LEARNED_SUFFIX}")
    tune = entry.get("tune_lr", path.endswith(RULE_SUFFIX))
    if not isinstance(tune, bool):
        raise UserError(f"{where}.tune_lr must be true or false, got {tune!r}")
    if tune and path.endswith(LEARNED_SUFFIX):
        raise UserError(f"{where}: a meta-trained optimizer has no learning rate to tune")
    if not Path(path).is_file():
        raise UserError(f"{where}: no optimizer file {path}")
    stem = Path(path).name.removesuffix(RULE_SUFFIX).removesuffix(LEARNED_SUFFIX)
    spec = OptimizerSpec(stem, {}, tune, str(entry.get("label", "")), path)
    try:
        optimizer_factory(spec)
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return spec


def parse_optimizer(entry: Any, where: str) -> OptimizerSpec:
    """An optimizer entry: a baseline name or an optimizer file path (`.json` symbolic rule,
    `.safetensors` meta-trained optimizer), or {name, hparams, tune_lr, label} / {file, label,
    tune_lr}."""
    if isinstance(entry, str):
        is_file = entry.endswith((RULE_SUFFIX, LEARNED_SUFFIX))
        entry = {"file": entry} if is_file else {"name": entry}
    entry = _mapping(entry, where)
    if "file" in entry:
        check_keys(entry, {"file", "tune_lr", "label"}, where)
        return _file_spec(entry, where)
    check_keys(entry, {"name", "hparams", "tune_lr", "label"}, where)
    name = entry.get("name")
    if name not in list_optimizers():
        raise UserError(
            f"{where}: unknown optimizer {name!r}; valid optimizers: {', '.join(list_optimizers())}"
            " (or a .json rule / .safetensors optimizer file)"
        )
    tune = entry.get("tune_lr", True)
    if not isinstance(tune, bool):
        raise UserError(f"{where}.tune_lr must be true or false, got {tune!r}")
    spec = OptimizerSpec(name, _mapping(entry.get("hparams"), f"{where}.hparams"), tune,
                         str(entry.get("label", "")))  # fmt: skip
    try:
        optimizer_factory(spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return spec


SUITE_KEYS = {"tasks", "optimizers", "steps", "seeds", "lr_grid", "eval_every", "reference"}


def parse_suite(data: Mapping[str, Any], where: str = "config") -> Suite:
    """A validated `Suite` from a config mapping (see configs/suite_small.yaml)."""
    check_keys(data, SUITE_KEYS, where)
    for key in ("tasks", "optimizers"):
        if not isinstance(data.get(key), list) or not data[key]:
            raise UserError(f"{where}: '{key}' must be a non-empty list")
    tasks = tuple(parse_task(t, f"{where}.tasks[{i}]") for i, t in enumerate(data["tasks"]))
    optimizers = tuple(
        parse_optimizer(o, f"{where}.optimizers[{i}]") for i, o in enumerate(data["optimizers"])
    )
    for kind, specs in (("task", tasks), ("optimizer", optimizers)):
        keys = [s.key for s in specs]
        if len(set(keys)) != len(keys):
            raise UserError(f"{where}: repeated {kind} {keys}; give repeats distinct labels")
    grid = _mapping(data.get("lr_grid"), f"{where}.lr_grid")
    check_keys(grid, {"low", "high", "num"}, f"{where}.lr_grid")
    suite = Suite(
        tasks=tasks,
        optimizers=optimizers,
        steps=number(data.get("steps", 2000), f"{where}.steps", integer=True),
        seeds=number(data.get("seeds", 3), f"{where}.seeds", integer=True),
        lr_low=number(grid.get("low", 1e-7), f"{where}.lr_grid.low"),
        lr_high=number(grid.get("high", 1.0), f"{where}.lr_grid.high"),
        lr_num=number(grid.get("num", 15), f"{where}.lr_grid.num", integer=True),
        eval_every=number(
            data.get("eval_every", 0), f"{where}.eval_every", integer=True, positive=False
        ),  # fmt: skip
        reference=str(data.get("reference", "adam")),
    )
    if suite.lr_low >= suite.lr_high:
        raise UserError(f"{where}.lr_grid: low must be below high")
    if not 0 <= suite.eval_every <= suite.steps:
        raise UserError(f"{where}: eval_every {suite.eval_every} must lie in 0..steps")
    return suite


@dataclasses.dataclass(frozen=True)
class MetaRun:
    """A meta-training run: learned optimizer, tasks, estimator, objective, outer loop, I/O."""

    optimizer: str
    optimizer_config: dict
    tasks: tuple[TaskSpec, ...]
    estimator: EstimatorConfig
    objective: MetaObjective
    outer: OuterConfig
    checkpoint_every: int = 50
    eval_every: int = 100


META_KEYS = {"optimizer", "tasks", "estimator", "objective", "outer", "checkpoint_every",
             "eval_every"}  # fmt: skip


def _dataclass_from(cls, data: Any, where: str):
    """`cls(**data)` with unknown keys and bad values reported as UserError."""
    data = _mapping(data, where)
    check_keys(data, {f.name for f in dataclasses.fields(cls)}, where)
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def parse_meta_run(data: Mapping[str, Any], where: str = "config") -> MetaRun:
    """A validated `MetaRun` from a config mapping (see configs/meta_*.yaml)."""
    from l2o.learned import LEARNED_OPTIMIZERS

    check_keys(data, META_KEYS, where)
    opt = _mapping(data.get("optimizer"), f"{where}.optimizer")
    check_keys(opt, {"name", "config"}, f"{where}.optimizer")
    if opt.get("name") not in LEARNED_OPTIMIZERS:
        raise UserError(
            f"{where}.optimizer: unknown learned optimizer {opt.get('name')!r}; "
            f"valid: {', '.join(sorted(LEARNED_OPTIMIZERS))}"
        )
    if not isinstance(data.get("tasks"), list) or not data["tasks"]:
        raise UserError(f"{where}: 'tasks' must be a non-empty list")
    run = MetaRun(
        optimizer=opt["name"],
        optimizer_config=_mapping(opt.get("config"), f"{where}.optimizer.config"),
        tasks=tuple(parse_task(t, f"{where}.tasks[{i}]") for i, t in enumerate(data["tasks"])),
        estimator=_dataclass_from(EstimatorConfig, data.get("estimator"), f"{where}.estimator"),
        objective=_dataclass_from(MetaObjective, data.get("objective"), f"{where}.objective"),
        outer=_dataclass_from(OuterConfig, data.get("outer"), f"{where}.outer"),
        checkpoint_every=number(
            data.get("checkpoint_every", 50), f"{where}.checkpoint_every", integer=True
        ),  # fmt: skip
        eval_every=number(data.get("eval_every", 100), f"{where}.eval_every", integer=True),
    )
    for name, value in (("estimator.num_tasks", run.estimator.num_tasks),
                        ("estimator.num_pairs", run.estimator.num_pairs),
                        ("outer.steps", run.outer.steps)):  # fmt: skip
        number(value, f"{where}.{name}", integer=True)
    number(run.estimator.sigma, f"{where}.estimator.sigma")
    number(run.outer.learning_rate, f"{where}.outer.learning_rate")
    return run
