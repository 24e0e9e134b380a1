"""`l2o meta-train`: meta-train a learned optimizer with progress, TensorBoard, checkpoints and
exact resume after a kill; the final theta is exported as one optimizer file."""

from __future__ import annotations

import dataclasses
import re
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from rich.progress import Progress

from l2o.cli.builders import (
    build_family_tasks,
    build_task,
    check_resumable,
    check_step,
    path_exists,
    versions,
)
from l2o.cli.config import MetaRun, load_yaml, parse_meta_run
from l2o.cli.distributed import broadcast_from_writer, is_writer, on_writer
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.cli.stopping import check
from l2o.io import EventFile, UserError, read_json, write_json_atomic
from l2o.meta import checkpoint
from l2o.meta.objective import MetaObjective, scheduled
from l2o.meta.trainer import make_meta_trainer
from l2o.meta.types import MetaState
from tasks import train
from tasks.sharding import device_mesh, put_replicated, shard_population

HELDOUT_SEED = 10_000
HELDOUT_SEEDS = 2
RUN_FILES = re.compile(r"events\.out\.tfevents\..*|meta_metrics\.json")
"""What a run killed before its first checkpoint may leave (besides temp files)."""


def make_heldout_evaluation(
    tasks, transform, objective: MetaObjective, seeds: int = HELDOUT_SEEDS, *, mesh=None
):
    """`evaluate(theta) -> {name: value}`: final train/test loss of whole inner runs of the
    objective's horizon (under its schedule, at the configured learning rate) on held-out
    seeds, per meta-training task (each task's run compiled once, theta an argument; the seeds
    split over the devices of `mesh`, by default every device)."""
    mesh = device_mesh() if mesh is None else mesh
    keys = jax.random.split(jax.random.key(HELDOUT_SEED), seeds)
    horizon = objective.horizon

    def one(task, theta, key):
        optimizer = scheduled(transform(theta), objective, jnp.ones(()), jnp.asarray(horizon))
        return train(task, optimizer, horizon, key, eval_every=horizon)[1]

    over_seeds = jax.vmap(one, in_axes=(None, None, 0))
    compiled = jax.jit(shard_population(over_seeds, mesh, (None, None, 0)))

    def evaluate(theta) -> dict[str, float]:
        out = {}
        for name, task in tasks.items():
            metrics = jax.device_get(compiled(task, theta, keys))
            out[f"heldout/{name}/final_train_loss"] = float(np.mean(metrics["train_loss"][:, -1]))
            if "test_loss" in metrics:
                out[f"heldout/{name}/test_loss"] = float(np.mean(metrics["test_loss"][:, -1]))
        return out

    return evaluate


def _history_scalars(history: list[dict]) -> dict:
    scalars: dict[str, tuple[list, list]] = {}
    for row in history:
        for name, value in row.items():
            if name != "step":
                steps, values = scalars.setdefault(name, ([], []))
                steps.append(row["step"])
                values.append(value)
    return scalars


def _history_until(path: Path, step: int) -> list[dict]:
    """The rows of `meta_metrics.json` up to outer step `step`; if the file is missing or
    malformed, none (said on stderr): resuming needs only the checkpoint."""
    try:
        rows = read_json(path)
    except UserError as e:
        problem = " ".join(str(e).split())
    else:
        rows = rows if isinstance(rows, list) else [None]
        steps = [r.get("step") if isinstance(r, dict) else None for r in rows]
        if all(type(s) is int for s in steps) and all(map(int.__lt__, steps, steps[1:])):
            return [r for r in rows if r["step"] <= step]
        problem = f"{path} is not a list of rows with increasing steps"
    print(f"l2o: {problem}; the metrics of outer steps up to {step} are lost and "
          f"{path.name} starts again after them", file=sys.stderr)  # fmt: skip
    return []


HISTORY_VALUES = 16
"""Numbers of one outer step's row of `meta_metrics.json`, at most (held-out metrics included)."""


def meta_calls(run: MetaRun, tasks: dict, optimizer) -> list[Call]:
    """The calls of a meta-training run (`l2o.cli.resources`), per task: the inner runs of one
    outer step (`num_tasks` x antithetic particles or ES members; TBPTT keeps every step of a
    truncation for its backward pass) and the held-out runs; the rows of every outer step are
    kept on the host."""
    from l2o.meta.estimators import POPULATION_STRATEGIES

    estimator, objective = run.estimator, run.objective
    if estimator.name in POPULATION_STRATEGIES:
        members = estimator.population_size
    else:
        members = 1 if estimator.name == "tbptt" else 2 * estimator.num_pairs
    unrolled = objective.truncation if estimator.name == "tbptt" else 1
    kept = run.outer.steps * HISTORY_VALUES
    calls = []
    for task in tasks.values():
        (size,) = run_bytes(task, [optimizer])
        calls.append(Call(size * unrolled, estimator.num_tasks * members, objective.truncation,
                          kept // len(tasks)))  # fmt: skip
        calls.append(Call(size, HELDOUT_SEEDS, run_values(objective.horizon, objective.horizon),
                          0))  # fmt: skip
    return calls


def run_meta_train_command(
    config_path: Path,
    out: Path,
    *,
    resume: bool,
    steps: int | None,
    overwrite: bool = False,
    max_memory: int | None = None,
) -> int:
    """Meta-train per `config_path` into `out` (checkpoints, events, metrics, optimizer file); a
    run whose memory estimate (`l2o.cli.resources`) is above `max_memory` is refused."""
    from l2o.optimizers.file_format import save_learned
    from l2o.optimizers.registry import get_learned

    data = load_yaml(config_path)
    run: MetaRun = parse_meta_run(data, str(config_path))
    if steps is not None:
        run = dataclasses.replace(run, outer=dataclasses.replace(run.outer, steps=steps))
    tasks = {spec.key: build_task(spec.name, dict(spec.options)) for spec in run.tasks}
    if run.family is not None:
        tasks.update(build_family_tasks(run.family))
    try:
        init_theta, transform = get_learned(run.optimizer, **run.optimizer_config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{config_path}: optimizer: {' '.join(str(e).split())}") from None
    for name, task in tasks.items():  # a task option the learned optimizer cannot run on
        check_step(task, lambda key: transform(init_theta(key)), f"{run.optimizer} on {name}")
    calls = meta_calls(run, tasks, transform(init_theta(jax.random.key(run.outer.seed))))
    check_memory(calls, max_memory, "estimator.num_tasks, num_pairs or population_size, "
                 "objective.horizon, outer.steps or the tasks' sizes")  # fmt: skip
    # With several processes (l2o.cli.distributed), all compute and only process 0 writes.
    writer = is_writer()

    def prepare() -> tuple[Path, checkpoint.Stored | None]:
        if resume and not path_exists(out):  # checked before the folder is made
            raise UserError(f"nothing to resume: {out} does not exist")
        directory = claim(out, resume=resume, overwrite=overwrite)
        if not resume:
            return directory, None
        if not checkpoint.list_checkpoints(directory):
            check_resumable(directory, RUN_FILES, "meta-training", "step 0")
            return directory, None
        # The newest checkpoint that reads (a torn one is skipped), checked against the config
        # before its arrays are fitted to the run: a changed config is named as such.
        try:
            stored, skipped = checkpoint.read_latest(directory)
        except checkpoint.CheckpointError as e:
            raise UserError(str(e)) from None
        for reason in skipped:
            print(f"l2o: skipped a checkpoint: {reason}")
        changes = checkpoint.config_changes(
            stored.meta.get("config"), data, ignore=("outer.steps",)
        )
        if changes:
            raise UserError(
                f"{config_path} differs from the config the run in {directory} was started "
                f"with: {'; '.join(changes)}; only --steps may change on --resume (or choose a "
                "new --out)"
            )
        return directory, stored

    out, stored = on_writer(prepare) or (out, None)
    mesh = device_mesh()
    trainer = make_meta_trainer(
        list(tasks.values()), init_theta, transform, run.objective, run.estimator, run.outer,
        mesh=mesh,
    )  # fmt: skip
    state: MetaState = trainer.init()
    history: list[dict] = []

    def load() -> tuple[MetaState, list[dict]]:
        if stored is None:
            return state, []
        try:
            loaded = checkpoint.fit(stored, state)
        except checkpoint.CheckpointError as e:
            raise UserError(str(e)) from None
        return loaded, _history_until(out / "meta_metrics.json", int(stored.meta["step"]))

    if resume:  # process 0 reads the checkpoint; every device of every process gets it
        state, history = on_writer(load) or (state, [])
        state = put_replicated(broadcast_from_writer(state), mesh)
    unsaved: list[dict] = []
    events = EventFile(out) if writer else None  # appended at each checkpoint, kept on resume
    heldout_evaluation = make_heldout_evaluation(tasks, transform, run.objective, mesh=mesh)

    def save() -> None:
        if not writer:
            return
        step = int(state.step)
        events.append(_history_scalars(unsaved))
        write_json_atomic(out / "meta_metrics.json", history)
        checkpoint.save(out, step, state, {"config": data, "optimizer": run.optimizer})
        unsaved.clear()

    t0 = time.perf_counter()
    with progress_bar() if writer else Progress(disable=True) as bar:
        job = bar.add_task(
            "meta-train (compiling)", total=run.outer.steps, completed=int(state.step)
        )
        while int(state.step) < run.outer.steps:
            check()  # stop here on Ctrl-C: between outer steps
            state, metrics = trainer.step(state)
            step = int(state.step)
            row = {"step": step, **{k: float(v) for k, v in jax.device_get(metrics).items()}}
            if step % run.eval_every == 0 or step == run.outer.steps:
                row.update(heldout_evaluation(state.theta))
            history.append(row)
            unsaved.append(row)
            bar.update(job, completed=step,
                       description=f"meta-train (meta-loss {row['meta_loss']:.3f})")  # fmt: skip
            if step % run.checkpoint_every == 0 or step == run.outer.steps:
                save()
    if unsaved:
        save()
    if not writer:
        return 0
    penalized = float(np.mean([r["penalized"] for r in history])) if history else 0.0
    path = save_learned(
        out / "optimizer.safetensors",
        run.optimizer,
        run.optimizer_config,
        jax.device_get(state.theta),
        {"config": data, "outer_steps": int(state.step), "versions": versions()},
    )
    write_json_atomic(out / "results.json", {
        "command": "meta-train",
        "config": data,
        "seed": run.outer.seed,
        "tasks": list(tasks),
        "final": history[-1] if history else {},
        "mean_penalized_fraction": penalized,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    })  # fmt: skip
    print(f"meta-training done: {int(state.step)} outer steps; optimizer written to {path}")
    return 0
