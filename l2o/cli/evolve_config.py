"""`l2o evolve` configs: YAML parsed into the search's config, proxy and funnel suites, checked
strictly (unknown keys fail, every number in range)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from l2o.cli.builders import build_task
from l2o.cli.config import check_keys, number, parse_task
from l2o.io import UserError

TOP_KEYS = {"seed", "generations", "population_size", "tournament_size", "batch_size",
            "warm_starts", "warm_start_mutations", "random_programs", "reference",
            "restart_after", "checkpoint_every", "loss_floor", "max_improvement", "lr_window",
            "simplify",
            "mutation", "proxy", "funnel", "validity", "lr_transfer"}  # fmt: skip
MUTATION_KEYS = {"max_instructions", "max_state", "ops", "matrix_ops", "weights", "const_sigma",
                 "flip_probability", "max_tries", "num_registers"}  # fmt: skip
SUITE_KEYS = {"tasks", "steps", "seeds", "lr_grid"}
FUNNEL_KEYS = SUITE_KEYS | {"every", "top_k", "tolerance"}
VALIDITY_KEYS = SUITE_KEYS | {"programs"}
GRID_KEYS = {"low", "high", "num"}
TRANSFER_KEYS = {"low", "high", "per_decade"}
TRANSFER_GRID = {"low": 1e-6, "high": 10.0, "per_decade": 4}
"""The grid the best rule's learning rate is measured against AdamW's on (`search.lr_transfer`)."""
FUNNEL_SEED_OFFSET = 1000
VALIDITY_SEED_OFFSET = 2000


@dataclasses.dataclass(frozen=True)
class EvolveRun:
    """A parsed `l2o evolve` config: the search, its suites, seed, length and checkpointing."""

    config: Any  # search.evolution.EvolutionConfig
    proxy: Any  # search.evolution.Suite
    funnel: Any  # search.evolution.Suite
    seed: int
    generations: int
    checkpoint_every: int
    reference: str
    transfer_grid: tuple[float, ...]
    validity: Any = None  # search.evolution.Suite: the proxy's validity is measured on it
    validity_programs: int = 0


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a mapping, got {value!r:.60}")
    return value


def _int(
    data: dict, key: str, default: int, where: str, *, positive: bool = True, high: int = 2**31
) -> int:
    """An integer entry (positive or >= 0) below `high` (JAX keeps steps and seeds int32)."""
    value = number(data.get(key, default), f"{where}.{key}", integer=True, positive=positive)
    if not 0 <= value < high:
        raise UserError(f"{where}.{key} must lie in 0..{high - 1}, got {value}")
    return value


def _bool(data: dict, key: str, default: bool, where: str) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise UserError(f"{where}.{key} must be true or false, got {value!r:.60}")
    return value


def check_warm_starts(warm: list, max_instructions: int, where: str) -> None:
    """UserError if a warm start `(program, name)` of `warm` has more live instructions than
    mutation allows."""
    for i, (program, name) in enumerate(warm):
        live = len(program.live_instructions())
        if live > max_instructions:
            raise UserError(f"{where}.warm_starts[{i}]: {name} has {live} instructions; "
                            f"mutation.max_instructions is {max_instructions}")  # fmt: skip


def population_sizes(data: dict, where: str) -> dict[str, int]:
    """The population's sizes and restarts of a search config (`EvolutionConfig` fields)."""
    return {
        "population_size": _int(data, "population_size", 32, where),
        "tournament_size": _int(data, "tournament_size", 4, where),
        "batch_size": _int(data, "batch_size", 16, where),
        "warm_start_mutations": _int(data, "warm_start_mutations", 1, where),
        "random_programs": _int(data, "random_programs", 0, where, positive=False),
        "restart_after": _int(data, "restart_after", 0, where, positive=False),
    }


def _program(entry: Any, where: str):
    """A library program entry: a name, or {name, hparams}; also its display name."""
    from search.programs_library import PROGRAMS, get_program

    if isinstance(entry, str):
        entry = {"name": entry}
    entry = _mapping(entry, where)
    check_keys(entry, {"name", "hparams"}, where)
    name = entry.get("name")
    if name not in PROGRAMS:
        raise UserError(f"{where}: unknown program {name!r}; valid programs: {', '.join(PROGRAMS)}")
    try:
        return get_program(name, **_mapping(entry.get("hparams"), f"{where}.hparams")), name
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None


def _suite(data: dict, where: str, default=None, seed_offset: int = 0):
    """A `Suite` from {tasks, steps, seeds, lr_grid}; missing entries come from `default`."""
    import numpy as np

    from search.evolution import Suite

    if default is None or "tasks" in data:
        if not isinstance(data.get("tasks"), list) or not data["tasks"]:
            raise UserError(f"{where}: 'tasks' must be a non-empty list")
        specs = [parse_task(t, f"{where}.tasks[{i}]") for i, t in enumerate(data["tasks"])]
        names = tuple(spec.key for spec in specs)
        if len(set(names)) != len(names):
            raise UserError(f"{where}: repeated task {list(names)}; give repeats distinct labels")
        tasks = tuple(build_task(spec.name, dict(spec.options)) for spec in specs)
    else:
        names, tasks = default.names, default.tasks
    steps = _int(data, "steps", default.num_steps if default else 200, where)
    num_seeds = _int(data, "seeds", len(default.seeds) if default else 2, where, high=1001)
    if "lr_grid" in data or default is None:
        grid = _mapping(data.get("lr_grid"), f"{where}.lr_grid")
        check_keys(grid, GRID_KEYS, f"{where}.lr_grid")
        low = number(grid.get("low", 1e-4), f"{where}.lr_grid.low")
        high = number(grid.get("high", 1.0), f"{where}.lr_grid.high")
        num = _int(grid, "num", 5, f"{where}.lr_grid", high=1001)
        if num > 1 and low >= high:
            raise UserError(f"{where}.lr_grid: low must be below high")
        lrs = tuple(float(x) for x in np.geomspace(low, high, num)) if num > 1 else (low,)
    else:
        lrs = default.learning_rates
    seeds = tuple(range(seed_offset, seed_offset + num_seeds))
    return Suite(names, tasks, steps, lrs, seeds)


def _transfer_grid(data: dict, where: str) -> tuple[float, ...]:
    """The learning rates of the `lr_transfer` entry {low, high, per_decade} (`TRANSFER_GRID`)."""
    from search.lr_transfer import transfer_grid

    grid = _mapping(data.get("lr_transfer"), f"{where}.lr_transfer")
    check_keys(grid, TRANSFER_KEYS, f"{where}.lr_transfer")
    low = number(grid.get("low", TRANSFER_GRID["low"]), f"{where}.lr_transfer.low")
    high = number(grid.get("high", TRANSFER_GRID["high"]), f"{where}.lr_transfer.high")
    per_decade = _int(grid, "per_decade", TRANSFER_GRID["per_decade"], f"{where}.lr_transfer",
                      high=101)  # fmt: skip
    if not low < high <= 1e30:
        raise UserError(f"{where}.lr_transfer: low must be below high (at most 1e30)")
    lrs = transfer_grid(low, high, per_decade)
    if len(lrs) > 1000:
        raise UserError(f"{where}.lr_transfer: {len(lrs)} learning rates; at most 1000")
    return tuple(float(x) for x in lrs)


def parse_evolve_run(data: dict, where: str = "config") -> EvolveRun:
    """A validated `EvolveRun` (tasks built, programs checked) from a config mapping; every
    problem is a one-line UserError."""
    from search.evolution import EvolutionConfig
    from search.mutation import MutationConfig
    from search.rule_file import check_metadata

    check_keys(data, TOP_KEYS, where)
    try:
        check_metadata(data)  # the config is stored in the rule file's metadata
    except ValueError as e:
        raise UserError(f"{where}: cannot be stored with the rule: {e}") from None
    starts = data.get("warm_starts", ["sgd"])
    if not isinstance(starts, list):
        raise UserError(f"{where}.warm_starts must be a list, got {starts!r:.60}")
    warm = [_program(s, f"{where}.warm_starts[{i}]") for i, s in enumerate(starts)]
    if "reference" in data:
        reference, reference_name = _program(data["reference"], f"{where}.reference")
    elif warm:
        reference, reference_name = warm[0]
    else:
        reference, reference_name = _program("sgd", f"{where}.reference")
    mutation = _mapping(data.get("mutation"), f"{where}.mutation")
    check_keys(mutation, MUTATION_KEYS, f"{where}.mutation")
    if "ops" in mutation and not isinstance(mutation["ops"], list):
        raise UserError(f"{where}.mutation.ops must be a list of op names")
    if "weights" in mutation:
        _mapping(mutation["weights"], f"{where}.mutation.weights")
    proxy_data = _mapping(data.get("proxy"), f"{where}.proxy")
    check_keys(proxy_data, SUITE_KEYS, f"{where}.proxy")
    proxy = _suite(proxy_data, f"{where}.proxy")
    funnel_data = _mapping(data.get("funnel"), f"{where}.funnel")
    check_keys(funnel_data, FUNNEL_KEYS, f"{where}.funnel")
    funnel = _suite(funnel_data, f"{where}.funnel", proxy, FUNNEL_SEED_OFFSET)
    validity, validity_programs = None, 0
    if "validity" in data:
        validity_data = _mapping(data["validity"], f"{where}.validity")
        check_keys(validity_data, VALIDITY_KEYS, f"{where}.validity")
        validity = _suite(validity_data, f"{where}.validity", funnel, VALIDITY_SEED_OFFSET)
        validity_programs = _int(validity_data, "programs", 32, f"{where}.validity", high=1001)
    max_improvement = math.inf
    if "max_improvement" in data:
        max_improvement = number(data["max_improvement"], f"{where}.max_improvement")
    try:
        mconfig = MutationConfig(**mutation)
        config = EvolutionConfig(
            **population_sizes(data, where),
            warm_starts=tuple(p for p, _ in warm),
            reference=reference,
            funnel_every=_int(funnel_data, "every", 0, f"{where}.funnel", positive=False),
            funnel_top_k=_int(funnel_data, "top_k", 4, f"{where}.funnel"),
            funnel_tolerance=number(
                funnel_data.get("tolerance", 0.0), f"{where}.funnel.tolerance", positive=False
            ),
            loss_floor=number(data.get("loss_floor", 1e-6), f"{where}.loss_floor"),
            max_improvement=max_improvement,
            lr_window=_int(data, "lr_window", 0, where, positive=False, high=1001),
            simplify=_bool(data, "simplify", True, where),
            mutation=mconfig,
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    check_warm_starts(warm, mconfig.max_instructions, where)
    return EvolveRun(
        config=config,
        proxy=proxy,
        funnel=funnel,
        seed=_int(data, "seed", 0, where, positive=False),
        generations=_int(data, "generations", 100, where),
        checkpoint_every=_int(data, "checkpoint_every", 10, where),
        reference=reference_name,
        transfer_grid=_transfer_grid(data, where),
        validity=validity,
        validity_programs=validity_programs,
    )
