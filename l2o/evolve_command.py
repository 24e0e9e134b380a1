"""`l2o evolve` and `l2o export-rule`: evolve a symbolic update rule with progress, TensorBoard,
checksummed checkpoints and exact resume after a kill; export a rule file as Python, Markdown
and LaTeX (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import keyword
import math
import re
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from l2o.config import check_keys, load_yaml, number, parse_task
from l2o.distributed import is_writer, on_writer
from l2o.io import (
    UserError,
    check_writable_dir,
    remove_stale_temp_files,
    write_bytes_atomic,
    write_json_atomic,
)
from l2o.tensorboard import write_scalars
from l2o.train_command import build_task, progress_bar, versions

CHECKPOINT = re.compile(r"evolve_(\d{8})\.json$")
CHECKPOINT_HEADER = "l2o-evolve-checkpoint 1 sha256="
KEEP_CHECKPOINTS = 3
TOP_KEYS = {"seed", "generations", "population_size", "tournament_size", "batch_size",
            "warm_starts", "warm_start_mutations", "random_programs", "reference",
            "restart_after", "checkpoint_every", "loss_floor", "max_improvement", "simplify",
            "mutation", "proxy", "funnel"}  # fmt: skip
MUTATION_KEYS = {"max_instructions", "max_state", "ops", "weights", "const_sigma",
                 "flip_probability", "max_tries", "num_registers"}  # fmt: skip
SUITE_KEYS = {"tasks", "steps", "seeds", "lr_grid"}
FUNNEL_KEYS = SUITE_KEYS | {"every", "top_k", "tolerance"}
GRID_KEYS = {"low", "high", "num"}
FUNNEL_SEED_OFFSET = 1000


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
    max_improvement = math.inf
    if "max_improvement" in data:
        max_improvement = number(data["max_improvement"], f"{where}.max_improvement")
    try:
        mconfig = MutationConfig(**mutation)
        config = EvolutionConfig(
            population_size=_int(data, "population_size", 32, where),
            tournament_size=_int(data, "tournament_size", 4, where),
            batch_size=_int(data, "batch_size", 16, where),
            warm_starts=tuple(p for p, _ in warm),
            warm_start_mutations=_int(data, "warm_start_mutations", 1, where),
            random_programs=_int(data, "random_programs", 0, where, positive=False),
            reference=reference,
            restart_after=_int(data, "restart_after", 0, where, positive=False),
            funnel_every=_int(funnel_data, "every", 0, f"{where}.funnel", positive=False),
            funnel_top_k=_int(funnel_data, "top_k", 4, f"{where}.funnel"),
            funnel_tolerance=number(
                funnel_data.get("tolerance", 0.0), f"{where}.funnel.tolerance", positive=False
            ),
            loss_floor=number(data.get("loss_floor", 1e-6), f"{where}.loss_floor"),
            max_improvement=max_improvement,
            simplify=_bool(data, "simplify", True, where),
            mutation=mconfig,
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    for i, (program, name) in enumerate(warm):
        live = len(program.live_instructions())
        if live > mconfig.max_instructions:
            raise UserError(
                f"{where}.warm_starts[{i}]: {name} has {live} instructions; "
                f"mutation.max_instructions is {mconfig.max_instructions}"
            )
    return EvolveRun(
        config=config,
        proxy=proxy,
        funnel=funnel,
        seed=_int(data, "seed", 0, where, positive=False),
        generations=_int(data, "generations", 100, where),
        checkpoint_every=_int(data, "checkpoint_every", 10, where),
        reference=reference_name,
    )


def _config_digest(data: dict) -> str:
    """What must not change across a resume: the config without `generations`."""
    fixed = {k: v for k, v in data.items() if k != "generations"}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()


def list_checkpoints(directory: Path) -> list[Path]:
    """Evolution checkpoints in `directory`, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if CHECKPOINT.fullmatch(p.name))


def save_checkpoint(directory: Path, generation: int, payload: dict) -> Path:
    """`payload` as checksummed JSON, atomically; keeps the newest `KEEP_CHECKPOINTS` files."""
    text = json.dumps(payload, allow_nan=False)
    digest = hashlib.sha256(text.encode()).hexdigest()
    path = write_bytes_atomic(
        directory / f"evolve_{generation:08d}.json", f"{CHECKPOINT_HEADER}{digest}\n{text}".encode()
    )
    for old in list_checkpoints(directory)[:-KEEP_CHECKPOINTS]:
        old.unlink(missing_ok=True)
    return path


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's payload; ValueError if it is torn or corrupt."""
    try:
        header, _, text = path.read_bytes().decode().partition("\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"{path.name}: unreadable ({type(e).__name__})") from None
    if not header.startswith(CHECKPOINT_HEADER):
        raise ValueError(f"{path.name}: not an evolution checkpoint")
    if hashlib.sha256(text.encode()).hexdigest() != header[len(CHECKPOINT_HEADER) :]:
        raise ValueError(f"{path.name}: checksum mismatch (torn or corrupt file)")
    return json.loads(text)


def load_latest_checkpoint(directory: Path) -> tuple[dict, list[str]]:
    """The newest checkpoint that loads, and why newer ones were skipped."""
    skipped = []
    for path in reversed(list_checkpoints(directory)):
        try:
            return load_checkpoint(path), skipped
        except ValueError as e:
            skipped.append(str(e))
    raise UserError(f"no usable checkpoint in {directory} ({'; '.join(skipped)})")


def _split_metrics(metrics: dict) -> tuple[dict, dict]:
    """(deterministic metrics, timing metrics): only the first must match after a resume."""
    from search.evolution import TIMING_METRICS

    timing = {k: v for k, v in metrics.items() if k in TIMING_METRICS}
    rest = {k: v for k, v in metrics.items() if k not in TIMING_METRICS}
    timing["generation"] = metrics["generation"]
    return rest, timing


def _scalars(rows: list[dict]) -> dict:
    out: dict[str, tuple[list, list]] = {}
    for row in rows:
        for name, value in row.items():
            if name != "generation" and isinstance(value, int | float) and value is not None:
                steps, values = out.setdefault(f"evolve/{name}", ([], []))
                steps.append(row["generation"])
                values.append(float(value))
    return out


def _rule_metadata(run: EvolveRun, data: dict, state: dict) -> tuple[Any, dict]:
    """The best program and its rule-file metadata (deterministic: no timing)."""
    import numpy as np

    from search.canonical import canonicalize
    from search.evolution import best_program
    from search.rediscovery import rediscovery_similarity

    program, passed = best_program(state)
    program = canonicalize(program)  # the same rule, without dead code, registers renumbered
    key = state["accepted"]["key"] if passed else state["hall_of_fame"][0]["key"]
    proxy_record = state["cache"][key]
    if passed:
        lr = run.funnel.learning_rates[int(np.median(state["accepted"]["funnel_lr_index"]))]
    else:
        lr = run.proxy.learning_rates[int(np.median(proxy_record["lr_index"]))]
    funnel_record = state["funnel"].get(key)
    similarities = {k: float(v) for k, v in rediscovery_similarity(program).items()}
    closest = max(similarities, key=similarities.get)  # as search.rediscovery.closest_reference
    metadata = {
        "learning_rate": float(lr),
        "fitness": proxy_record["fitness"],
        "passed_funnel": passed,
        "reference": run.reference,
        "proxy": {
            "tasks": list(run.proxy.names),
            "steps": run.proxy.num_steps,
            "tuned_valid_loss": proxy_record["losses"],
            "reference_tuned_valid_loss": state["reference"]["proxy"]["losses"],
            "learning_rates": [run.proxy.learning_rates[i] for i in proxy_record["lr_index"]],
        },
        "funnel": None if funnel_record is None else {
            "tasks": list(run.funnel.names),
            "steps": run.funnel.num_steps,
            "fitness": funnel_record["fitness"],
            "tuned_valid_loss": funnel_record["losses"],
            "reference_tuned_valid_loss": state["reference"]["funnel"]["losses"],
            "learning_rates": [run.funnel.learning_rates[i] for i in funnel_record["lr_index"]],
        },
        "rediscovery": similarities,
        "closest_reference": {"name": closest, "similarity": similarities[closest]},
        "generations": state["generation"],
        "seed": run.seed,
        "config": data,
        "versions": versions(),
        "program_lines": program.format().splitlines(),
    }  # fmt: skip
    return program, metadata


def run_evolve_command(
    config_path: Path, out: Path, *, resume: bool, generations: int | None
) -> int:
    """Evolve per `config_path` into `out`: checkpoints, events, evolution.json, best_rule.json."""
    import jax

    from search.evolution import make_evolution
    from search.rule_file import save_rule

    data = load_yaml(config_path)
    run = parse_evolve_run(data, str(config_path))
    if generations is not None:
        run = dataclasses.replace(run, generations=generations)
    writer = is_writer()  # with several processes, all evolve alike and process 0 writes

    def prepare() -> tuple[Path, list[Path]]:
        checked = check_writable_dir(out)
        found = list_checkpoints(checked)
        if found and not resume:
            raise UserError(f"{out} already holds checkpoints; pass --resume or choose a new --out")
        if resume:
            remove_stale_temp_files(checked)  # left by a killed run
        return checked, found

    out, existing = on_writer(prepare) or (out, [])
    if resume and not writer:  # the others read the checkpoints from the shared output folder
        existing = list_checkpoints(out)
    digest = _config_digest(data)
    evolution = make_evolution(run.config, run.proxy, run.funnel)
    unsaved: list[dict] = []

    def save() -> None:
        payload = {"config_digest": digest, "state": state, "history": history, "timing": timing}
        if writer:
            write_scalars(out, _scalars(unsaved))
            save_checkpoint(out, state["generation"], payload)
        unsaved.clear()

    t0 = time.perf_counter()
    if resume and existing:
        payload, skipped = load_latest_checkpoint(out)
        for reason in skipped if writer else ():
            print(f"l2o: skipped a checkpoint: {reason}")
        if payload.get("config_digest") != digest:
            raise UserError(f"{config_path} differs from the config of the run in {out}")
        state, history, timing = payload["state"], payload["history"], payload["timing"]
    else:
        state, metrics = evolution.init(jax.random.key(run.seed))
        row, times = _split_metrics(metrics)
        history, timing = [row], [times]
        unsaved.append(metrics)
        save()
    with progress_bar() if writer else Progress(disable=True) as bar:
        job = bar.add_task("evolve", total=run.generations, completed=state["generation"])
        while state["generation"] < run.generations:
            state, metrics = evolution.step(state)
            row, times = _split_metrics(metrics)
            history.append(row)
            timing.append(times)
            unsaved.append(metrics)
            bar.update(job, completed=state["generation"],
                       description=f"evolve (best {state['best_fitness']:+.4f})")  # fmt: skip
            if state["generation"] % run.checkpoint_every == 0:
                save()
        if unsaved:
            save()
    state, final = evolution.finish(state)
    program, metadata = _rule_metadata(run, data, state)
    if not writer:
        return 0
    write_json_atomic(out / "evolution.json", {
        "command": "evolve",
        "config": data,
        "seed": run.seed,
        "best": {"program": program.to_json(), **metadata},
        "history": history,
        "final": _split_metrics(final)[0],
        "hall_of_fame": state["hall_of_fame"],
        "funnel": list(state["funnel"].values()),
        "counters": state["counters"],
        "reference": state["reference"],
        "timing": timing,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    })  # fmt: skip
    try:
        save_rule(out / "best_rule.json", program, metadata)
    except ValueError as e:
        raise UserError(f"best_rule.json not written: {e} (see evolution.json)") from None
    verdict = "passed the funnel" if metadata["passed_funnel"] else "did NOT pass the funnel"
    print(
        f"evolution done: {state['generation']} generations; best rule (fitness "
        f"{metadata['fitness']:+.4f} vs {run.reference} 0, {verdict}; closest to "
        f"{metadata['closest_reference']['name']}) written to {out / 'best_rule.json'}"
    )
    return 0


def run_export_rule_command(rule_path: Path, out: Path, name: str) -> int:
    """Write `out/NAME.py`, `NAME.md` and `NAME.tex` of a rule file."""
    from search.export import export_latex, export_markdown, export_python
    from search.rule_file import read_rule

    if not name.isidentifier() or keyword.iskeyword(name):
        raise UserError(f"--name {name!r:.60} is not a Python identifier")
    try:
        program, metadata = read_rule(rule_path)
    except ValueError as e:
        raise UserError(str(e)) from None
    lr = metadata.get("learning_rate")
    lr = float(lr) if isinstance(lr, int | float) and not isinstance(lr, bool) else None
    try:
        texts = {
            f"{name}.py": export_python(
                program, name=name, learning_rate=lr, description="An evolved update rule."
            ),
            f"{name}.md": export_markdown(program),
            f"{name}.tex": export_latex(program),
        }
    except ValueError as e:
        raise UserError(f"cannot export {rule_path}: {' '.join(str(e).split())}") from None
    out = check_writable_dir(out)
    for filename, text in texts.items():
        write_bytes_atomic(out / filename, text.encode())
    print(f"wrote {', '.join(str(out / f) for f in texts)}")
    return 0
