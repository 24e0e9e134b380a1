"""YAML run files: parsed with `yaml.safe_load` only and validated strictly (unknown keys fail)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from baselines import list_optimizers
from l2o.evaluate import OptimizerSpec, Suite, TaskSpec, optimizer_factory
from l2o.io import UserError
from tasks import list_tasks
from tasks.registry import task_overrides


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from `path`; UserError for a missing, unreadable or malformed file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"no such config file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read config {path}: {e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 1})" if where else ""
        raise UserError(f"{path} is not valid YAML{line}") from None
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


def parse_optimizer(entry: Any, where: str) -> OptimizerSpec:
    """An optimizer entry: a baseline name, or {name, hparams, tune_lr, label}."""
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, where)
    check_keys(entry, {"name", "hparams", "tune_lr", "label"}, where)
    name = entry.get("name")
    if name not in list_optimizers():
        raise UserError(
            f"{where}: unknown optimizer {name!r}; valid optimizers: {', '.join(list_optimizers())}"
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
