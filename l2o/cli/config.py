"""YAML run files: parsed with `yaml.safe_load` only and validated strictly (unknown keys fail)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from baselines import list_optimizers, optimizer_hparams
from l2o.evaluation.harness import (
    LEARNED_SUFFIX,
    RULE_SUFFIX,
    SCHEDULES,
    TUNE_ON,
    OptimizerSpec,
    Suite,
    TaskSpec,
    optimizer_factory,
)
from l2o.io import UserError
from l2o.meta.estimators import EstimatorConfig
from l2o.meta.objective import MetaObjective
from l2o.meta.types import OuterConfig
from l2o.optimizers.file_format import external_learning_rate
from tasks import list_tasks
from tasks.registry import task_overrides


def load_yaml(path: str | Path, what: str = "config") -> dict[str, Any]:
    """A YAML mapping from `path`; UserError for a missing, unreadable, empty or malformed file."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"no such {what} file: {path}") from None
    except (OSError, ValueError) as e:  # ValueError: not UTF-8, or a NUL in the path
        raise UserError(f"cannot read the {what} file {path!r}: {e}") from None
    try:
        data = yaml.safe_load(text)
        _check_size(data, str(path))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "cannot parse it"
        raise UserError(f"{path}: malformed YAML{where}: {problem}") from None
    except (RecursionError, ValueError) as e:  # deep nesting; ints beyond Python's digit limit
        raise UserError(f"{path}: malformed YAML: {str(e)[:200]}") from None
    if data is None:
        raise UserError(f"{path} is empty; expected a YAML mapping")
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a YAML mapping at the top level")
    return data


MAX_NODES = 100_000
"""Run files are small; more nodes than this (with aliases expanded) is refused."""


def pick_entries(configured: Any, names: str) -> list[Any]:
    """The entries a comma-separated `--tasks`/`--optimizers` flag names: a name that is the
    `label` of an entry of the config's list `configured` is that entry (options, schedule and
    all), any other name is itself (a registered name or a file)."""
    by_label = {}
    if isinstance(configured, list):
        by_label = {e["label"]: e for e in configured if isinstance(e, dict) and "label" in e}
    return [by_label.get(name, name) for name in names.split(",") if name]


def _check_size(data: Any, where: str) -> None:
    """UserError for a document that refers to itself or, with its aliases expanded, has more
    than MAX_NODES nodes (a "billion laughs" file)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(node: Any) -> int:
        if not isinstance(node, dict | list):
            return 1
        if id(node) in open_nodes:
            raise UserError(f"{where}: the YAML refers to itself through an alias")
        if id(node) not in sizes:
            open_nodes.add(id(node))
            children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
            sizes[id(node)] = 1 + sum(size(child) for child in children)
            open_nodes.discard(id(node))
            if sizes[id(node)] > MAX_NODES:
                raise UserError(f"{where}: the YAML expands to more than {MAX_NODES} nodes")
        return sizes[id(node)]

    size(data)


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
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{where} must be a number, got {value!r:.40}") from None
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


MAX_RESCALE = 6.0
MAX_DECLARED_BUDGET = 100.0


def parse_task(entry: Any, where: str) -> TaskSpec:
    """A task entry: a name, or {name, options, label, rescale} (`rescale`: the log10 range of
    fixed per-tensor parameter scales, a stress test; `TaskSpec.build`)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, where)
    check_keys(entry, {"name", "options", "label", "rescale"}, where)
    name = entry.get("name")
    if name not in list_tasks():
        raise UserError(f"{where}: unknown task {name!r}; valid tasks: {', '.join(list_tasks())}")
    options = _mapping(entry.get("options"), f"{where}.options")
    check_keys(options, set(task_overrides(name)), f"{where}.options ({name})")
    rescale = number(entry.get("rescale", 0.0), f"{where}.rescale", positive=False)
    if not 0.0 <= rescale <= MAX_RESCALE:
        raise UserError(f"{where}.rescale is a log10 range in [0, {MAX_RESCALE}], got {rescale}")
    return TaskSpec(name, options, str(entry.get("label", "")), rescale)


def _declared_budget(entry: Mapping[str, Any], where: str) -> float:
    """The run length an optimizer is told, as a multiple of the true budget (a stress test)."""
    factor = number(entry.get("declared_budget", 1.0), f"{where}.declared_budget")
    if not 1 / MAX_DECLARED_BUDGET <= factor <= MAX_DECLARED_BUDGET:
        raise UserError(f"{where}.declared_budget is a factor in [0.01, 100], got {factor}")
    return factor


def _schedule(entry: Mapping[str, Any], where: str) -> tuple[str, float]:
    """An entry's learning-rate schedule over the budget and its warm-up fraction."""
    schedule = entry.get("schedule", "constant")
    if schedule not in SCHEDULES:
        raise UserError(f"{where}.schedule: {schedule!r:.40} is not one of {', '.join(SCHEDULES)}")
    warmup = number(entry.get("warmup", 0.0), f"{where}.warmup", positive=False)
    if not 0.0 <= warmup < 1.0:
        raise UserError(f"{where}.warmup is a fraction of the budget in [0, 1), got {warmup}")
    return schedule, warmup


def _file_spec(entry: Mapping[str, Any], where: str) -> OptimizerSpec:
    """The spec of an optimizer file, read and validated now (never executed)."""
    path = entry["file"]
    if not isinstance(path, str) or not path.endswith((RULE_SUFFIX, LEARNED_SUFFIX)):
        raise UserError(f"{where}.file must be a path ending in {RULE_SUFFIX} or {LEARNED_SUFFIX}")
    if not Path(path).is_file():
        raise UserError(f"{where}: no optimizer file {path}")
    external = False
    if path.endswith(LEARNED_SUFFIX):
        try:
            external = external_learning_rate(path) is not None
        except ValueError as e:
            raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    tune = entry.get("tune_lr", path.endswith(RULE_SUFFIX) or external)
    if not isinstance(tune, bool):
        raise UserError(f"{where}.tune_lr must be true or false, got {tune!r}")
    if tune and path.endswith(LEARNED_SUFFIX) and not external:
        raise UserError(f"{where}: this meta-trained optimizer learned its step size; it has no "
                        "learning rate to tune")  # fmt: skip
    schedule, warmup = _schedule(entry, where)
    if schedule != "constant" and not external:
        raise UserError(f"{where}: a schedule applies to a meta-trained optimizer whose learning "
                        "rate is external (such as celo) only")  # fmt: skip
    hparams = {}
    if "adamw_lr" in entry:  # the rule's learning rate: its file's ratio to AdamW's times this
        if not path.endswith(RULE_SUFFIX):
            raise UserError(f"{where}.adamw_lr applies to a rule file ({RULE_SUFFIX}) only")
        hparams["adamw_lr"] = number(entry["adamw_lr"], f"{where}.adamw_lr")
    stem = Path(path).name.removesuffix(RULE_SUFFIX).removesuffix(LEARNED_SUFFIX)
    spec = OptimizerSpec(stem, hparams, tune, str(entry.get("label", "")), path, schedule, warmup,
                         _declared_budget(entry, where))  # fmt: skip
    try:
        optimizer_factory(spec)
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return spec


def typed_value(value: Any, default: Any, where: str) -> Any:
    """`value` as the kind of `default`: a bool, an int (below 2**31), a finite number (numeric
    strings such as YAML 1.1's '1e-8' are read as numbers) or a string; UserError otherwise."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UserError(f"{where} must be true or false, got {value!r:.40}")
    elif isinstance(default, int):
        value = number(value, where, integer=True, positive=False)
        if abs(value) >= 2**31:
            raise UserError(f"{where} must be below 2**31 in size, got {value!r:.40}")
    elif isinstance(default, float):
        value = number(value, where, positive=False)
    elif isinstance(default, str) and not isinstance(value, str):
        raise UserError(f"{where} must be a string, got {value!r:.40}")
    return value


def check_hparams(name: str, hparams: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Hyperparameters of baseline `name`, each of the kind of its default (`typed_value`);
    names it does not take are left for `get_optimizer` to report."""
    defaults = optimizer_hparams(name)
    return {k: typed_value(v, defaults.get(k), f"{where}: {k}") for k, v in hparams.items()}


def parse_optimizer(entry: Any, where: str) -> OptimizerSpec:
    """An optimizer entry: a baseline name or an optimizer file path (`.json` symbolic rule,
    `.safetensors` meta-trained optimizer), or {name, hparams, tune_lr, label, schedule, warmup,
    declared_budget} / {file, label, tune_lr, schedule, warmup, declared_budget, adamw_lr} (a
    schedule for files with an external learning rate only; `OptimizerSpec.declared_steps`;
    `adamw_lr` for rule files only)."""
    if isinstance(entry, str):
        is_file = entry.endswith((RULE_SUFFIX, LEARNED_SUFFIX))
        entry = {"file": entry} if is_file else {"name": entry}
    entry = _mapping(entry, where)
    if "file" in entry:
        check_keys(entry, {"file", "tune_lr", "label", "schedule", "warmup", "declared_budget",
                           "adamw_lr"}, where)  # fmt: skip
        return _file_spec(entry, where)
    check_keys(entry, {"name", "hparams", "tune_lr", "label", "schedule", "warmup",
                       "declared_budget"}, where)  # fmt: skip
    name = entry.get("name")
    if name not in list_optimizers():
        raise UserError(
            f"{where}: unknown optimizer {name!r}; valid optimizers: {', '.join(list_optimizers())}"
            " (or a .json rule / .safetensors optimizer file)"
        )
    tune = entry.get("tune_lr", True)
    if not isinstance(tune, bool):
        raise UserError(f"{where}.tune_lr must be true or false, got {tune!r}")
    hparams = check_hparams(name, _mapping(entry.get("hparams"), f"{where}.hparams"),
                            f"{where}.hparams")  # fmt: skip
    schedule, warmup = _schedule(entry, where)
    spec = OptimizerSpec(name, hparams, tune, str(entry.get("label", "")), "", schedule, warmup,
                         _declared_budget(entry, where))  # fmt: skip
    try:
        optimizer_factory(spec)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    return spec


SUITE_KEYS = {"tasks", "optimizers", "steps", "seeds", "lr_grid", "eval_every", "reference",
              "reference_steps", "tune_on", "timing_steps"}  # fmt: skip
MAX_LR_EXTENSIONS = 10
MAX_TIMING_STEPS = 10_000
MAX_SEEDS = MAX_LEARNING_RATES = 1000


def parse_suite(data: Mapping[str, Any], where: str = "config") -> Suite:
    """A validated `Suite` from a config mapping (see configs/suite_small.yaml)."""
    data = _mapping(data, where)
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
    check_keys(grid, {"low", "high", "num", "extensions"}, f"{where}.lr_grid")
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
        reference_steps=number(
            data.get("reference_steps", 0), f"{where}.reference_steps", integer=True, positive=False
        ),  # fmt: skip
        tune_on=str(data.get("tune_on", "valid")),
        lr_extensions=number(
            grid.get("extensions", 2), f"{where}.lr_grid.extensions", integer=True, positive=False
        ),  # fmt: skip
        timing_steps=number(
            data.get("timing_steps", 100), f"{where}.timing_steps", integer=True, positive=False
        ),  # fmt: skip
    )
    if suite.tune_on not in TUNE_ON:
        raise UserError(f"{where}.tune_on: {suite.tune_on!r} is not one of {', '.join(TUNE_ON)}")
    if suite.reference_steps and (
        suite.reference_steps < suite.steps or suite.steps % suite.evaluation_interval
    ):
        raise UserError(
            f"{where}: reference_steps must be 0 or at least steps, with steps a multiple of "
            f"the evaluation interval ({suite.evaluation_interval})"
        )
    if suite.lr_low >= suite.lr_high:
        raise UserError(f"{where}.lr_grid: low must be below high")
    if not 1e-30 <= suite.lr_low < suite.lr_high <= 1e30:  # learning rates are float32
        raise UserError(f"{where}.lr_grid: low and high must lie in [1e-30, 1e30]")
    if suite.seeds > MAX_SEEDS:
        raise UserError(f"{where}.seeds must lie in 1..{MAX_SEEDS}, got {suite.seeds}")
    if suite.lr_num > MAX_LEARNING_RATES:
        raise UserError(f"{where}.lr_grid.num must lie in 1..{MAX_LEARNING_RATES}, got "
                        f"{suite.lr_num}")  # fmt: skip
    if not 0 <= suite.lr_extensions <= MAX_LR_EXTENSIONS:
        raise UserError(f"{where}.lr_grid.extensions must lie in 0..{MAX_LR_EXTENSIONS}")
    if not 0 <= suite.timing_steps <= MAX_TIMING_STEPS:
        raise UserError(f"{where}.timing_steps must lie in 0..{MAX_TIMING_STEPS}")
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
    family: FamilySpec | None = None


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """`num_tasks` tasks drawn from task family `name` (`tasks.families`) with keys from `seed`."""

    name: str
    num_tasks: int
    seed: int = 0
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)


MAX_FAMILY_TASKS = 64
META_KEYS = {"optimizer", "tasks", "family", "estimator", "objective", "outer",
             "checkpoint_every", "eval_every"}  # fmt: skip


def parse_family(entry: Any, where: str) -> FamilySpec:
    """A `family` entry: {name, num_tasks, seed, options}."""
    from tasks.families import list_families

    entry = _mapping(entry, where)
    check_keys(entry, {"name", "num_tasks", "seed", "options"}, where)
    if entry.get("name") not in list_families():
        raise UserError(f"{where}: unknown task family {entry.get('name')!r}; valid: "
                        f"{', '.join(list_families())}")  # fmt: skip
    num_tasks = number(entry.get("num_tasks"), f"{where}.num_tasks", integer=True)
    if num_tasks > MAX_FAMILY_TASKS:
        raise UserError(f"{where}.num_tasks must be at most {MAX_FAMILY_TASKS}, got {num_tasks}")
    seed = number(entry.get("seed", 0), f"{where}.seed", integer=True, positive=False)
    if seed < 0:
        raise UserError(f"{where}.seed must be >= 0, got {seed}")
    options = _mapping(entry.get("options"), f"{where}.options")
    return FamilySpec(entry["name"], num_tasks, seed, options)


def _dataclass_from(cls, data: Any, where: str):
    """`cls(**data)` with unknown keys and bad values reported as UserError."""
    data = _mapping(data, where)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    check_keys(data, set(fields), where)
    data = {k: typed_value(v, fields[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**data)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {e}") from None


def parse_meta_run(data: Mapping[str, Any], where: str = "config") -> MetaRun:
    """A validated `MetaRun` from a config mapping (see configs/meta_*.yaml)."""
    from l2o.optimizers.registry import LEARNED_OPTIMIZERS, make_config

    data = _mapping(data, where)
    check_keys(data, META_KEYS, where)
    opt = _mapping(data.get("optimizer"), f"{where}.optimizer")
    check_keys(opt, {"name", "config"}, f"{where}.optimizer")
    if not isinstance(opt.get("name"), str) or opt["name"] not in LEARNED_OPTIMIZERS:
        raise UserError(
            f"{where}.optimizer: unknown learned optimizer {opt.get('name')!r}; "
            f"valid: {', '.join(sorted(LEARNED_OPTIMIZERS))}"
        )
    optimizer_config = _mapping(opt.get("config"), f"{where}.optimizer.config")
    try:
        make_config(opt["name"], **optimizer_config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}.optimizer.config: {' '.join(str(e).split())}") from None
    task_list = data.get("tasks", [] if "family" in data else None)
    if not isinstance(task_list, list) or not (task_list or "family" in data):
        raise UserError(f"{where}: 'tasks' must be a non-empty list (or give a 'family')")
    run = MetaRun(
        optimizer=opt["name"],
        optimizer_config=optimizer_config,
        tasks=tuple(parse_task(t, f"{where}.tasks[{i}]") for i, t in enumerate(task_list)),
        family=parse_family(data["family"], f"{where}.family") if "family" in data else None,
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
                        ("estimator.population_size", run.estimator.population_size),
                        ("outer.steps", run.outer.steps)):  # fmt: skip
        number(value, f"{where}.{name}", integer=True)
    number(run.estimator.sigma, f"{where}.estimator.sigma")
    number(run.outer.learning_rate, f"{where}.outer.learning_rate")
    number(run.outer.clip_norm, f"{where}.outer.clip_norm")
    if run.outer.seed < 0:
        raise UserError(f"{where}.outer.seed must be >= 0, got {run.outer.seed}")
    return run
