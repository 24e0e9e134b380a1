"""`l2o meta-train`: meta-train a learned optimizer with progress, TensorBoard, checkpoints and
exact resume after a kill; the final theta is exported as one optimizer file."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from l2o import checkpoint
from l2o.config import MetaRun, load_yaml, parse_meta_run
from l2o.io import UserError, check_writable_dir, read_json, write_json_atomic
from l2o.meta_train import MetaState, make_meta_trainer
from l2o.tensorboard import write_scalars
from l2o.train_command import progress_bar, versions
from tasks import get_task, train

HELDOUT_SEED = 10_000


def make_heldout_evaluation(tasks, transform, horizon: int, seeds: int = 2):
    """`evaluate(theta) -> {name: value}`: final train/test loss of whole inner runs on held-out
    seeds, per meta-training task (each task's run compiled once, theta an argument)."""
    keys = jax.random.split(jax.random.key(HELDOUT_SEED), seeds)

    def runs(task, theta):
        def one(key):
            return train(task, transform(theta), horizon, key, eval_every=horizon)[1]

        return jax.vmap(one)(keys)

    compiled = jax.jit(runs)

    def evaluate(theta) -> dict[str, float]:
        out = {}
        for name, task in tasks.items():
            metrics = jax.device_get(compiled(task, theta))
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


def run_meta_train_command(config_path: Path, out: Path, *, resume: bool, steps: int | None) -> int:
    """Meta-train per `config_path` into `out` (checkpoints, events, metrics, optimizer file)."""
    from l2o.learned import get_learned
    from l2o.optimizer_file import save_learned

    data = load_yaml(config_path)
    run: MetaRun = parse_meta_run(data, str(config_path))
    if steps is not None:
        run = dataclasses.replace(run, outer=dataclasses.replace(run.outer, steps=steps))
    tasks = {spec.key: get_task(spec.name, **spec.options) for spec in run.tasks}
    try:
        init_theta, transform = get_learned(run.optimizer, **run.optimizer_config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{config_path}: optimizer: {' '.join(str(e).split())}") from None
    out = check_writable_dir(out)
    existing = checkpoint.list_checkpoints(out)
    if existing and not resume:
        raise UserError(f"{out} already holds checkpoints; pass --resume or choose a new --out")

    trainer = make_meta_trainer(
        list(tasks.values()), init_theta, transform, run.objective, run.estimator, run.outer
    )
    state: MetaState = trainer.init()
    history: list[dict] = []
    if resume and existing:
        try:
            state, meta, skipped = checkpoint.load_latest(out, state)
        except checkpoint.CheckpointError as e:
            raise UserError(str(e)) from None
        history = [r for r in read_json(out / "meta_metrics.json") if r["step"] <= meta["step"]]
        for reason in skipped:
            print(f"l2o: skipped a checkpoint: {reason}")
    unsaved: list[dict] = []
    heldout_evaluation = make_heldout_evaluation(tasks, transform, run.objective.horizon)

    def save() -> None:
        step = int(state.step)
        write_scalars(out, _history_scalars(unsaved))
        write_json_atomic(out / "meta_metrics.json", history)
        checkpoint.save(out, step, state, {"config": data, "optimizer": run.optimizer})
        unsaved.clear()

    t0 = time.perf_counter()
    with progress_bar() as bar:
        job = bar.add_task("meta-train", total=run.outer.steps, completed=int(state.step))
        while int(state.step) < run.outer.steps:
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
        "final": history[-1] if history else {},
        "mean_penalized_fraction": penalized,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
    })  # fmt: skip
    print(f"meta-training done: {int(state.step)} outer steps; optimizer written to {path}")
    return 0


def run_export_command(run_dir: Path, out: Path | None) -> int:
    """Write the optimizer file of a meta-training run's newest usable checkpoint."""
    from l2o.learned import get_learned
    from l2o.optimizer_file import save_learned

    paths = checkpoint.list_checkpoints(run_dir)
    if not paths:
        raise UserError(f"{run_dir} holds no meta-training checkpoint")
    with np.load(paths[-1], allow_pickle=False) as f:
        try:
            data = json.loads(bytes(f["__metadata__"]).decode())["config"]
        except (KeyError, ValueError) as e:
            raise UserError(f"{paths[-1]}: no run config in the checkpoint ({e})") from None
    run = parse_meta_run(data, f"{paths[-1]} config")
    tasks = [get_task(spec.name, **spec.options) for spec in run.tasks]
    init_theta, transform = get_learned(run.optimizer, **run.optimizer_config)
    trainer = make_meta_trainer(
        tasks, init_theta, transform, run.objective, run.estimator, run.outer
    )
    try:
        state, meta, _ = checkpoint.load_latest(run_dir, trainer.init())
    except checkpoint.CheckpointError as e:
        raise UserError(str(e)) from None
    path = save_learned(
        out or Path(run_dir) / "optimizer.safetensors",
        run.optimizer,
        run.optimizer_config,
        jax.device_get(state.theta),
        {"config": data, "outer_steps": meta["step"], "versions": versions()},
    )
    print(f"exported theta of outer step {meta['step']} to {path}")
    return 0
