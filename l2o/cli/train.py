"""`l2o train`: one optimizer on one task, with a progress bar, results.json and TensorBoard."""

from __future__ import annotations

import sys
from pathlib import Path

from l2o.cli.builders import build_estimator, build_optimizer, build_task, check_step, versions
from l2o.cli.progress import progress_bar
from l2o.cli.resources import Call, check_memory, run_bytes, run_values
from l2o.cli.run_folder import claim
from l2o.cli.stopping import check
from l2o.evaluation.chunked_run import default_eval_every, summarize, train_in_chunks
from l2o.evaluation.curves import MAX_CURVE_POINTS, block_size, block_steps
from l2o.io import UserError, append_scalars, write_json_atomic

EXIT_DIVERGED = 3


def tensorboard_scalars(metrics: dict, every: int, num_steps: int) -> dict:
    """`tag -> (steps, values)` for the per-step loss (means of blocks of `every` of the
    `num_steps` steps, each at its last step) and every evaluation metric."""
    losses = metrics["train_loss"]
    steps = block_steps(len(losses), every, num_steps).tolist()
    scalars = {"train/loss": (steps, losses)}
    for name, values in metrics.items():
        if name not in ("train_loss", "eval_step"):
            split, _, metric = name.partition("_")
            scalars[f"{split}/{metric}"] = (metrics["eval_step"], values)
    return scalars


def run_train_command(
    *,
    task_name: str,
    task_options: dict,
    optimizer_name: str,
    hparams: dict,
    learning_rate: float | None,
    steps: int,
    seed: int,
    eval_every: int | None,
    out: Path,
    overwrite: bool = False,
    grad: str = "backprop",
    grad_options: dict | None = None,
    max_memory: int | None = None,
) -> int:
    """Validate everything, train, then write `out/results.json` and events; the exit code.

    A run whose memory estimate (`l2o.cli.resources`) is above `max_memory` is refused."""
    if learning_rate is not None:
        hparams = {**hparams, "learning_rate": learning_rate}
    from l2o.cli.config import check_hparams

    hparams = check_hparams(optimizer_name, hparams, "--hparam")
    eval_every = eval_every or default_eval_every(steps)
    if eval_every > steps:
        raise UserError(f"--eval-every {eval_every} is larger than --steps {steps}")
    task = build_task(task_name, task_options)
    optimizer = build_optimizer(optimizer_name, hparams)
    grad_fn = build_estimator(grad, task, grad_options or {})
    check_step(task, lambda key: optimizer, f"{optimizer_name} on {task_name}", grad_fn)
    evaluations = run_values(steps, eval_every) - steps
    kept = min(steps, MAX_CURVE_POINTS) + evaluations
    run = Call(
        run_bytes(task, [optimizer], grad_fn)[0], 1, run_values(eval_every, eval_every), kept
    )
    check_memory([run], max_memory, "--steps (with --eval-every) or the task's size")
    from baselines import optimizer_hparams

    hparams = {**optimizer_hparams(optimizer_name), **hparams}
    out = claim(out, overwrite=overwrite, can_resume=False)

    label = f"{task_name} / {optimizer_name}"
    with progress_bar() as bar:
        job = bar.add_task(f"{label} (compiling)", total=steps)

        def on_chunk(done: int) -> None:
            bar.update(job, completed=done, description=label)
            check()  # stop here on Ctrl-C: between compiled chunks

        metrics, timings = train_in_chunks(
            task, optimizer, steps, seed, eval_every=eval_every, grad_fn=grad_fn, on_chunk=on_chunk
        )

    every = block_size(steps)
    final = summarize(metrics, every)
    diverged = final["diverged_at_step"]
    results = {
        "command": "train",
        "status": "diverged" if diverged is not None else "ok",
        "config": {
            "task": task_name,
            "task_options": task_options,
            "optimizer": optimizer_name,
            "hparams": hparams,
            "steps": steps,
            "seed": seed,
            "eval_every": eval_every,
            "grad": grad,
            "grad_options": grad_options or {},
        },
        "final": final,
        "metrics": metrics,
        "train_loss_every": every,  # train_loss[i]: the mean loss of steps i*every+1..(i+1)*every
        "timing": timings,
        "versions": versions(),
        "argv": sys.argv,
    }
    write_json_atomic(out / "results.json", results)
    append_scalars(out, tensorboard_scalars(metrics, every, steps))
    if diverged is not None:
        print(
            f"l2o: error: training diverged: the train loss became non-finite at step {diverged} "
            f"(results written to {out}; try a smaller learning rate)",
            file=sys.stderr,
        )
        return EXIT_DIVERGED
    summary = ", ".join(
        f"{k} {final[k]:.4g}" for k in ("train_loss", "test_loss", "test_accuracy") if k in final
    )
    print(f"{task_name} / {optimizer_name}: {summary} ({timings['wall_time_s']:.1f}s) -> {out}")
    return 0
