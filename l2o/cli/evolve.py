"""`l2o evolve`: evolve a symbolic update rule with progress, TensorBoard, checksummed checkpoints
and exact resume after a kill (Chen et al. 2023, "Symbolic Discovery of Optimization
Algorithms")."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from rich.progress import Progress

from l2o.cli.builders import check_resumable, path_exists, versions
from l2o.cli.calibrate import calibrated_metadata, measure_transfer, serves, transfer_calls
from l2o.cli.config import load_yaml
from l2o.cli.distributed import is_writer, on_writer
from l2o.cli.evolve_config import EvolveRun, parse_evolve_run
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.cli.stopping import check
from l2o.io import (
    EventFile,
    UserError,
    to_jsonable,
    write_bytes_atomic,
    write_json_atomic,
)

CHECKPOINT = re.compile(r"evolve_(\d{8})\.json$")
CHECKPOINT_HEADER = "l2o-evolve-checkpoint 1 sha256="
KEEP_CHECKPOINTS = 3
RUN_FILES = re.compile(r"events\.out\.tfevents\..*")
"""What a run killed before its first checkpoint may leave (besides temp files)."""


def _config_digest(data: dict) -> str:
    """What must not change across a resume: the config without `generations` (checkpoints
    record it with the config since; older ones only have this digest)."""
    fixed = {k: v for k, v in data.items() if k != "generations"}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()


def _plain(data: dict) -> Any:
    """The config as a checkpoint stores it (plain JSON, non-finite numbers as null)."""
    return to_jsonable(json.loads(json.dumps(data, default=str)))


def _check_config(payload: dict, data: dict, config_path: Path, out: Path) -> None:
    """UserError naming the keys in which `data` differs from the checkpoint's config, apart
    from `generations` (the one change a resume allows)."""
    from l2o.meta.checkpoint import config_changes

    if "config" in payload:
        changes = config_changes(payload["config"], _plain(data), ignore=("generations",))
    else:  # a checkpoint of an older l2o: only the digest tells
        same = payload.get("config_digest") == _config_digest(data)
        changes = [] if same else ["which keys, its checkpoints (of an older l2o) do not say"]
    if changes:
        raise UserError(
            f"{config_path} differs from the config the run in {out} was started with: "
            f"{'; '.join(changes)}; only --generations may change on --resume (or choose a new "
            "--out)"
        )


def load_resumed(out: Path, data: dict, config_path: Path, *, say: bool = True) -> dict:
    """The newest loadable checkpoint in `out` (saying, if `say`, which newer ones were skipped
    and why), refused unless it was written under the config `data` (`_check_config`)."""
    resumed, skipped = load_latest_checkpoint(out)
    for reason in skipped if say else ():
        print(f"l2o: skipped a checkpoint: {reason}")
    _check_config(resumed, data, config_path, out)
    return resumed


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
    """The best program and its rule-file metadata (deterministic: no timing), without its
    learning rate (`l2o.cli.calibrate.calibrated_metadata` adds it)."""
    from search.canonical import canonicalize
    from search.evolution import best_program
    from search.rediscovery import is_sign_momentum, rediscovery_similarity

    program, passed = best_program(state)
    program = canonicalize(program)  # the same rule, without dead code, registers renumbered
    key = state["accepted"]["key"] if passed else state["hall_of_fame"][0]["key"]
    proxy_record = state["cache"][key]
    funnel_record = state["funnel"].get(key)
    similarities = {k: float(v) for k, v in rediscovery_similarity(program).items()}
    closest = max(similarities, key=similarities.get)  # as search.rediscovery.closest_reference
    metadata = {
        "fitness": proxy_record["fitness"],
        "passed_funnel": passed,
        "reference": run.reference,
        # with a window, each tuned loss is the worst over `lr_window` grid points either side
        "lr_window": run.config.lr_window,
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
        "sign_momentum": is_sign_momentum(program),
        "generations": state["generation"],
        "seed": run.seed,
        "config": data,
        "versions": versions(),
        "program_lines": program.format().splitlines(),
    }  # fmt: skip
    return program, metadata


HISTORY_VALUES = 32
"""Numbers of one generation's row of the history and timings kept on the host, at most."""
PROGRAMS_AT_ONCE = 128
"""Programs trained at once on a device (`search.interpreter.population_losses`' tile)."""


def evolve_calls(run: EvolveRun) -> list[Call]:
    """The calls of an evolution (`l2o.cli.resources`), per proxy and funnel task: a batch of
    programs (encoded with the run's longest body and most state slots) x learning rates x seeds;
    a history row per generation is kept on the host."""
    from search.encoding import encode, encoded_length
    from search.interpreter import encoded_transform

    reference, mutation = run.config.reference, run.config.mutation
    max_len = -(-max(mutation.max_instructions, encoded_length(reference), 4) // 4) * 4
    num_state = max(mutation.max_state, reference.num_state)
    optimizer = encoded_transform(encode(reference, max_len, num_state))
    calls = [Call(0, 1, 0, run.generations * HISTORY_VALUES)]
    suites = [(run.proxy, run.config.batch_size), (run.funnel, run.config.funnel_top_k)]
    if run.validity is not None:
        suites.append((run.validity, run.config.batch_size))
    for suite, size in suites:
        runs = min(size, PROGRAMS_AT_ONCE) * len(suite.learning_rates) * len(suite.seeds)
        calls += [Call(run_bytes(task, [optimizer])[0], runs, run_values(suite.num_steps, 0), 0)
                  for task in suite.tasks]  # fmt: skip
    return calls + transfer_calls(run, optimizer)


def run_generations(
    evolution,
    out: Path,
    seed: int,
    resumed: dict | None,
    extra: dict,
    name: str,
    generations: int,
    checkpoint_every: int,
    *,
    writer: bool = True,
) -> tuple[dict, list, list]:
    """Start `evolution` from `seed` (or from the `resumed` checkpoint payload) and step it up to
    `generations`, stopping between generations on Ctrl-C. Every `checkpoint_every` generations
    and at the end, a checkpoint (`extra` with the state, history and timing) is saved to `out`
    and the generations' metrics appended to its TensorBoard events (by the `writer` process
    only). Returns `(state, history, timing)`."""
    import jax

    events = EventFile(out) if writer else None  # appended at each checkpoint, kept on resume
    unsaved: list[dict] = []

    def save(state: dict) -> None:
        if writer:
            events.append(_scalars(unsaved))
            save_checkpoint(
                out,
                state["generation"],
                {**extra, "state": state, "history": history, "timing": timing},
            )
        unsaved.clear()

    def record(metrics: dict) -> None:
        row, times = _split_metrics(metrics)
        history.append(row)
        timing.append(times)
        unsaved.append(metrics)

    if resumed is not None:
        state, history, timing = resumed["state"], resumed["history"], resumed["timing"]
    else:
        state, metrics = evolution.init(jax.random.key(seed))
        history, timing = [], []
        record(metrics)
        save(state)
    with progress_bar() if writer else Progress(disable=True) as bar:
        job = bar.add_task(name, total=generations, completed=state["generation"])
        while state["generation"] < generations:
            check()  # stop here on Ctrl-C: between generations
            state, metrics = evolution.step(state)
            record(metrics)
            best = state["best_fitness"]  # None while every rule ignores its learning rate
            text = name if best is None else f"{name} (best {best:+.4f})"
            bar.update(job, completed=state["generation"], description=text)
            if state["generation"] % checkpoint_every == 0:
                save(state)
        if unsaved:
            save(state)
    return state, history, timing


def run_evolve_command(
    config_path: Path,
    out: Path,
    *,
    resume: bool,
    generations: int | None,
    overwrite: bool = False,
    max_memory: int | None = None,
    seed: int | None = None,
) -> int:
    """Evolve per `config_path` into `out`: checkpoints, events, evolution.json, best_rule.json.
    `seed` replaces the config's (and is stored with it, so a resume must give the same one).
    A run whose memory estimate (`l2o.cli.resources`) is above `max_memory` is refused."""
    from search.evolution import make_evolution
    from search.rule_file import save_rule

    data = load_yaml(config_path)
    if seed is not None and isinstance(data, dict):
        data = {**data, "seed": seed}
    run = parse_evolve_run(data, str(config_path))
    if generations is not None:
        run = dataclasses.replace(run, generations=generations)
    lower = ("batch_size, funnel.top_k, the proxy's or funnel's lr_grid.num, seeds or steps, "
             "generations or the tasks' sizes")  # fmt: skip
    check_memory(evolve_calls(run), max_memory, lower)
    writer = is_writer()  # with several processes, all evolve alike and process 0 writes

    def prepare() -> tuple[Path, list[Path]]:
        if resume and not path_exists(out):  # checked before the folder is made
            raise UserError(f"nothing to resume: {out} does not exist")
        checked = claim(out, resume=resume, overwrite=overwrite)
        found = list_checkpoints(checked)
        if resume and not found:
            check_resumable(checked, RUN_FILES, "evolution", "generation 0")
        return checked, found

    out, existing = on_writer(prepare) or (out, [])
    if resume and not writer:  # the others read the checkpoints from the shared output folder
        existing = list_checkpoints(out)
    digest, plain = _config_digest(data), _plain(data)
    evolution = make_evolution(run.config, run.proxy, run.funnel)
    t0 = time.perf_counter()
    resumed = load_resumed(out, data, config_path, say=writer) if resume and existing else None
    state, history, timing = run_generations(
        evolution,
        out,
        run.seed,
        resumed,
        {"config_digest": digest, "config": plain},
        "evolve",
        run.generations,
        run.checkpoint_every,
        writer=writer,
    )
    state, final = evolution.finish(state)
    if state["accepted"] is None and not state["hall_of_fame"]:
        raise UserError(
            "every rule the search evaluated ignores its learning rate: no best_rule.json "
            f"written (the checkpoints in {out} hold the search)"
        )
    program, metadata = _rule_metadata(run, data, state)
    ratio = measure_transfer(program, run, show=writer)  # every process trains its share
    metadata = calibrated_metadata(metadata, ratio)
    validity = None
    if run.validity is not None:
        validity = evolution.validate(state, run.validity, run.validity_programs)
        keys = ("tasks", "steps", "programs", "spearman", "spearman_per_task")
        metadata["proxy_validity"] = {k: validity[k] for k in keys}
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
        "validity": validity,
        "timing": timing,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    })  # fmt: skip
    try:
        save_rule(out / "best_rule.json", program, metadata)
    except ValueError as e:
        raise UserError(f"best_rule.json not written: {e} (see evolution.json)") from None
    verdict = "passed the funnel" if metadata["passed_funnel"] else "did NOT pass the funnel"
    ignored = state["counters"].get("ignores_lr", 0)
    rho = ""
    if validity is not None:
        value = "undefined" if validity["spearman"] is None else f"{validity['spearman']:+.2f}"
        rho = (f"; proxy validity: Spearman {value} over {validity['programs']} programs on "
               f"{', '.join(validity['tasks'])}")  # fmt: skip
    print(
        f"evolution done: {state['generation']} generations; best rule (fitness "
        f"{metadata['fitness']:+.4f} vs {run.reference} 0, {verdict}; closest to "
        f"{metadata['closest_reference']['name']}; learning rate {ratio['median']:.3g}x AdamW's, "
        f"default {metadata['learning_rate']:.3g}{serves(ratio)}) written to "
        f"{out / 'best_rule.json'}; "
        f"{ignored} rules rejected because their update ignores the learning rate{rho}"
    )
    return 0
