"""`l2o distill`: distill an optimizer (a learned-optimizer file, a rule file or a baseline) into a
symbolic rule whose update directions match its recorded ones (`search.distill`), by the
regularized evolution of `l2o evolve` with the same checkpoints, resume and outputs."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path
from typing import Any

from l2o.cli.builders import (
    build_family_tasks,
    build_optimizer,
    build_task,
    check_resumable,
    path_exists,
    versions,
)
from l2o.cli.config import check_keys, load_yaml, number, parse_family, parse_task
from l2o.cli.evolve import (
    RUN_FILES,
    _plain,
    _split_metrics,
    list_checkpoints,
    load_resumed,
    run_generations,
)
from l2o.cli.evolve_config import (
    _bool,
    _int,
    _mapping,
    _program,
    check_warm_starts,
    population_sizes,
)
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.io import UserError, write_json_atomic

TOP_KEYS = {"seed", "generations", "population_size", "tournament_size", "batch_size",
            "warm_starts", "warm_start_mutations", "random_programs", "restart_after",
            "checkpoint_every", "simplify", "mutation", "length_penalty", "learning_rate", "fit",
            "heldout", "funnel"}  # fmt: skip
STREAM_KEYS = {"tasks", "family", "steps", "seeds"}
FUNNEL_KEYS = {"every", "top_k", "tolerance"}
LIBRARY = ("sgd", "momentum", "signsgd", "adam", "adamw", "lion", "muon", "adafactor")
HELDOUT_SEED_OFFSET = 1000
DEFAULT_LEARNING_RATE = 1e-3


@dataclasses.dataclass(frozen=True)
class StreamSet:
    """Tasks (by label) each trained for `steps` steps from each of `seeds`, recorded."""

    tasks: dict
    steps: int
    seeds: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class DistillRun:
    """A parsed `l2o distill` config."""

    config: Any  # search.evolution.EvolutionConfig
    fit: StreamSet
    heldout: StreamSet
    length_penalty: float
    learning_rate: float | None
    seed: int
    generations: int
    checkpoint_every: int


def _streams(data: Any, where: str, seed_offset: int) -> StreamSet:
    """{tasks: [...]} or {family: {...}}, with steps and seeds."""
    data = _mapping(data, where)
    check_keys(data, STREAM_KEYS, where)
    if ("tasks" in data) == ("family" in data):
        raise UserError(f"{where}: give either 'tasks' or 'family'")
    if "tasks" in data:
        if not isinstance(data["tasks"], list) or not data["tasks"]:
            raise UserError(f"{where}.tasks must be a non-empty list")
        specs = [parse_task(t, f"{where}.tasks[{i}]") for i, t in enumerate(data["tasks"])]
        tasks = {spec.key: build_task(spec.name, dict(spec.options)) for spec in specs}
        if len(tasks) != len(specs):
            raise UserError(f"{where}: repeated task; give repeats distinct labels")
    else:
        tasks = build_family_tasks(parse_family(data["family"], f"{where}.family"))
    steps = _int(data, "steps", 200, where, high=100_001)
    num_seeds = _int(data, "seeds", 1, where, high=101)
    return StreamSet(tasks, steps, tuple(range(seed_offset, seed_offset + num_seeds)))


def parse_distill_run(data: Any, where: str = "config") -> DistillRun:
    """A validated `DistillRun` from a config mapping; every problem is a one-line UserError."""
    from search.evolution import EvolutionConfig
    from search.mutation import MutationConfig
    from search.rule_file import check_metadata

    data = _mapping(data, where)
    check_keys(data, TOP_KEYS, where)
    try:
        check_metadata(data)  # the config is stored in the rule file's metadata
    except ValueError as e:
        raise UserError(f"{where}: cannot be stored with the rule: {e}") from None
    starts = data.get("warm_starts", ["adam"])
    if not isinstance(starts, list) or not starts:
        raise UserError(f"{where}.warm_starts must be a non-empty list, got {starts!r:.60}")
    warm = [_program(s, f"{where}.warm_starts[{i}]") for i, s in enumerate(starts)]
    mutation = _mapping(data.get("mutation"), f"{where}.mutation")
    funnel = _mapping(data.get("funnel"), f"{where}.funnel")
    check_keys(funnel, FUNNEL_KEYS, f"{where}.funnel")
    penalty = number(data.get("length_penalty", 0.0), f"{where}.length_penalty", positive=False)
    learning_rate = None
    if "learning_rate" in data:
        learning_rate = number(data["learning_rate"], f"{where}.learning_rate")
    try:
        mconfig = MutationConfig(**mutation)
        config = EvolutionConfig(
            **population_sizes(data, where),
            warm_starts=tuple(p for p, _ in warm),
            funnel_every=_int(funnel, "every", 0, f"{where}.funnel", positive=False),
            funnel_top_k=_int(funnel, "top_k", 4, f"{where}.funnel"),
            # fitness is 1 - cosine (+ penalty): by default a rule passes the held-out check if
            # its held-out cosine is positive
            funnel_tolerance=number(
                funnel.get("tolerance", 1.0), f"{where}.funnel.tolerance", positive=False
            ),
            simplify=_bool(data, "simplify", True, where),
            mutation=mconfig,
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: {' '.join(str(e).split())}") from None
    check_warm_starts(warm, mconfig.max_instructions, where)
    return DistillRun(
        config=config,
        fit=_streams(data.get("fit"), f"{where}.fit", 0),
        heldout=_streams(data.get("heldout"), f"{where}.heldout", HELDOUT_SEED_OFFSET),
        length_penalty=penalty,
        learning_rate=learning_rate,
        seed=_int(data, "seed", 0, where, positive=False),
        generations=_int(data, "generations", 100, where),
        checkpoint_every=_int(data, "checkpoint_every", 10, where),
    )


def source_optimizer(source: str, learning_rate: float | None, num_steps: int):
    """`(optimizer, learning rate, description)` of a learned-optimizer file (`.safetensors`),
    a rule file (`.json`) or a baseline name; the learning rate is the given one, else the
    file's default (a learned optimizer with its own step size has none: None)."""
    from baselines import list_optimizers
    from l2o.optimizers.file_format import external_learning_rate, load_optimizer
    from search.rule_file import default_learning_rate, load_rule, read_rule

    path = Path(source)
    if path.suffix in (".safetensors", ".json"):
        if not path.is_file():
            raise UserError(f"{source}: no such file")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        try:
            if path.suffix == ".json":
                lr = learning_rate or default_learning_rate(path, read_rule(path)[1])
                optimizer = load_rule(path, lr)
            else:
                lr = external_learning_rate(path)  # None: the optimizer learned its step size
                if lr is not None and learning_rate is not None:
                    lr = learning_rate
                optimizer = load_optimizer(path, num_steps=num_steps, learning_rate=lr)
        except ValueError as e:
            raise UserError(f"{source}: {' '.join(str(e).split())}") from None
        return optimizer, lr, {"file": path.name, "sha256": digest, "learning_rate": lr}
    if source not in list_optimizers():
        raise UserError(f"{source!r} is neither a .safetensors or .json file nor a baseline "
                        f"optimizer ({', '.join(list_optimizers())})")  # fmt: skip
    lr = learning_rate or DEFAULT_LEARNING_RATE
    optimizer = build_optimizer(source, {"learning_rate": lr})
    return optimizer, lr, {"baseline": source, "sha256": None, "learning_rate": lr}


def record_streams(streams: StreamSet, optimizer) -> tuple[list, list[str]]:
    """Each task x seed recorded (`l2o.evaluation.recording.record`), and their labels."""
    import jax

    from l2o.evaluation.recording import record

    out, labels = [], []
    for label, task in streams.tasks.items():
        run = jax.jit(lambda key, task=task: record(task, optimizer, streams.steps, key)[0])
        for seed in streams.seeds:
            out.append(jax.device_get(run(jax.random.key(seed))))
            labels.append(f"{label}/seed{seed}")
    return out, labels


def distill_calls(run: DistillRun, optimizer) -> list[Call]:
    """The memory of a distillation (`l2o.cli.resources`): each recording run, and scoring one
    tile of programs on a stream (the interpreter's registers per program) with every stream
    held."""
    import jax

    from search.distill import TILE
    from search.program import MAX_STATE

    calls, held = [], 0
    max_len = -(-max(run.config.mutation.max_instructions, 16) // 16) * 16
    sizes = []
    for streams in (run.fit, run.heldout):
        for task in streams.tasks.values():
            params = sum(
                x.size for x in jax.tree.leaves(jax.eval_shape(task.init, jax.random.key(0)))
            )
            stream = 3 * streams.steps * params * 4
            held += stream * len(streams.seeds)
            sizes.append(params)
            calls.append(Call(run_bytes(task, [optimizer])[0] + stream, 1,
                              run_values(streams.steps, 0), 0))  # fmt: skip
    per_program = 4 * max(sizes) * (max_len + 2 * MAX_STATE + 4) * 2
    calls.append(Call(per_program + held // TILE, TILE, 0, run.generations * 32))
    return calls


def _library_table(fit, heldout, lr: float) -> dict:
    """Mean cosine of each library program to the recorded updates, fit and held-out."""
    from search.distill import mean_cosines
    from search.programs_library import get_program

    programs = [get_program(name) for name in LIBRARY]
    fit_c, held_c = mean_cosines(programs, fit, lr), mean_cosines(programs, heldout, lr)
    return {name: {"fit_cosine": float(f.mean()), "heldout_cosine": float(h.mean())}
            for name, f, h in zip(LIBRARY, fit_c, held_c, strict=True)}  # fmt: skip


def run_distill_command(
    source: str,
    config_path: Path,
    out: Path,
    *,
    resume: bool,
    overwrite: bool = False,
    generations: int | None = None,
    max_memory: int | None = None,
) -> int:
    """Distill `source` per `config_path` into `out`: checkpoints, events, distill.json and
    best_rule.json (the rule, at the learning rate matching the recorded update sizes)."""

    from search.canonical import canonicalize
    from search.distill import (
        direction_rule,
        make_distill_scorer,
        matched_learning_rate,
        mean_cosines,
    )
    from search.evolution import best_program, make_evolution
    from search.program import Program
    from search.rule_file import save_rule

    data = load_yaml(config_path)
    run = parse_distill_run(data, str(config_path))
    if generations is not None:
        run = dataclasses.replace(run, generations=generations)
    optimizer, lr, described = source_optimizer(source, run.learning_rate, run.fit.steps)
    if run.heldout.steps != run.fit.steps and Path(source).suffix == ".safetensors":
        held_optimizer = source_optimizer(source, run.learning_rate, run.heldout.steps)[0]
    else:
        held_optimizer = optimizer
    probe_lr = lr or DEFAULT_LEARNING_RATE
    check_memory(distill_calls(run, optimizer), max_memory,
                 "the fit's or heldout's steps, seeds or tasks, or generations")  # fmt: skip
    if resume and not path_exists(out):
        raise UserError(f"nothing to resume: {out} does not exist")
    out = claim(out, resume=resume, overwrite=overwrite)
    existing = list_checkpoints(out)
    if resume and not existing:
        check_resumable(out, RUN_FILES, "distillation", "generation 0")
    t0 = time.perf_counter()
    fit, fit_labels = record_streams(run.fit, optimizer)
    heldout, held_labels = record_streams(run.heldout, held_optimizer)
    scorer = make_distill_scorer(fit, probe_lr, run.length_penalty)
    held_scorer = make_distill_scorer(heldout, probe_lr, run.length_penalty)
    evolution = make_evolution(run.config, None, scorer=scorer, funnel_scorer=held_scorer)
    plain = _plain(data)
    resumed = load_resumed(out, data, config_path) if resume and existing else None
    if resumed is not None and resumed.get("source") != described:
        raise UserError(f"{source} is not the optimizer the run in {out} distills "
                        f"({resumed.get('source')}); choose a new --out")  # fmt: skip
    state, history, timing = run_generations(
        evolution,
        out,
        run.seed,
        resumed,
        {"config": plain, "source": described},
        "distill",
        run.generations,
        run.checkpoint_every,
    )
    state, final = evolution.finish(state)
    try:
        program, passed = best_program(state)
    except ValueError as e:
        raise UserError(f"{e}: no best_rule.json written (see the checkpoints in {out})") from None
    program = canonicalize(direction_rule(program, probe_lr))
    fame = [canonicalize(direction_rule(Program.from_json(m["program"]), probe_lr))
            for m in state["hall_of_fame"]]  # fmt: skip
    rules = [program, *fame]
    fit_cos, held_cos = mean_cosines(rules, fit, probe_lr), mean_cosines(rules, heldout, probe_lr)
    learning_rate = matched_learning_rate(program, fit, probe_lr)
    if not 0 < learning_rate < 1e30:
        raise UserError(f"the best rule's updates are all zero on the fit streams: no "
                        f"best_rule.json written (see the checkpoints in {out})")  # fmt: skip
    library = _library_table(fit, heldout, probe_lr)
    record = scorer([program])[0]
    metadata = {
        "learning_rate": learning_rate,
        "fitness": record["fitness"],
        "fit_cosine": float(fit_cos[0].mean()),
        "heldout_cosine": float(held_cos[0].mean()),
        "fit_streams": fit_labels,
        "fit_cosines": [float(c) for c in fit_cos[0]],
        "heldout_streams": held_labels,
        "heldout_cosines": [float(c) for c in held_cos[0]],
        "passed_heldout": passed,
        "length": len(program.live_instructions()),
        "source": described,
        "library": library,
        "generations": state["generation"],
        "seed": run.seed,
        "config": data,
        "versions": versions(),
        "program_lines": program.format().splitlines(),
    }  # fmt: skip
    write_json_atomic(out / "distill.json", {
        "command": "distill",
        "config": data,
        "seed": run.seed,
        "source": described,
        "best": {"program": program.to_json(), **metadata},
        "library": library,
        "hall_of_fame": [
            {**m, "fit_cosine": float(f.mean()), "heldout_cosine": float(h.mean())}
            for m, f, h in zip(state["hall_of_fame"], fit_cos[1:], held_cos[1:], strict=True)
        ],
        "streams": {"fit": fit_labels, "heldout": held_labels},
        "history": history,
        "final": _split_metrics(final)[0],
        "counters": state["counters"],
        "reference": state["reference"],
        "timing": timing,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    })  # fmt: skip
    try:
        save_rule(out / "best_rule.json", program, metadata)
    except ValueError as e:
        raise UserError(f"best_rule.json not written: {e} (see distill.json)") from None
    closest = max(library, key=lambda k: library[k]["heldout_cosine"])
    print(
        f"distillation done: {state['generation']} generations; best rule ({metadata['length']} "
        f"instructions) has held-out cosine {metadata['heldout_cosine']:.3f} to the recorded "
        f"updates (closest library rule: {closest}, "
        f"{library[closest]['heldout_cosine']:.3f}); written to {out / 'best_rule.json'}"
    )
    return 0
