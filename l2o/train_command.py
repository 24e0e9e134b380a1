"""`l2o train`: one optimizer on one task, with a progress bar, results.json and TensorBoard."""

from __future__ import annotations

import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from l2o.io import UserError, check_writable_dir, write_json_atomic
from l2o.runs import default_eval_every, summarize, train_in_chunks
from l2o.tensorboard import write_scalars

EXIT_DIVERGED = 3


def versions() -> dict[str, str]:
    """Versions of Python and the packages a result depends on."""
    out = {"python": platform.python_version()}
    for dist in ("l2o", "jax", "jaxlib", "optax", "dm-haiku", "numpy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def build_task(name: str, options: dict):
    """`tasks.get_task`, turning a bad option value into a UserError."""
    from tasks import get_task

    try:
        return get_task(name, **options)
    except (TypeError, ValueError, ArithmeticError, MemoryError, RuntimeError) as e:
        # RuntimeError: an option so large that JAX cannot allocate the task's arrays
        if type(e).__name__ in ("UnknownNameError", "DatasetError"):
            raise
        message = " ".join(str(e).split())[:300]
        raise UserError(f"cannot build task {name!r} with options {options}: {message}") from None


def build_optimizer(name: str, hparams: dict):
    """`baselines.get_optimizer`, turning a bad hyperparameter value into a UserError."""
    from baselines import get_optimizer
    from l2o.config import check_hparams

    try:
        return get_optimizer(name, **check_hparams(name, hparams, f"optimizer {name!r}"))
    except (TypeError, ValueError) as e:
        if type(e).__name__ == "UnknownNameError":
            raise
        raise UserError(f"cannot build optimizer {name!r} with {hparams}: {e}") from None


def build_estimator(name: str, task, options: dict):
    """`baselines.get_estimator`, checked on the task by tracing it once (no compilation)."""
    import jax

    from baselines import get_estimator

    try:
        grad_fn = get_estimator(name, **options)
        key = jax.random.key(0)
        params = jax.eval_shape(task.init, key)
        jax.eval_shape(lambda p, b: grad_fn(task, p, key, b), params,
                       jax.eval_shape(task.sample_batch, key))  # fmt: skip
    except (TypeError, ValueError) as e:
        if type(e).__name__ == "UnknownNameError":
            raise
        raise UserError(f"gradient estimator {name!r}: {' '.join(str(e).split())}") from None
    return grad_fn


class LogProgress:
    """The progress-bar interface of `rich.progress.Progress` for a stderr that is not a terminal
    (a log file, CI): one plain line per task at most every `interval` seconds, and at the end."""

    def __init__(self, interval: float = 30.0):
        self.interval = interval
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for job in self.tasks:
                self._print(job)

    def add_task(self, description: str, total: float | None = None, completed: float = 0) -> int:
        job = len(self.tasks)
        self.tasks[job] = {"description": description, "total": total, "completed": completed,
                           "start": time.monotonic(), "printed": time.monotonic()}  # fmt: skip
        return job

    def update(self, job: int, *, advance: float = 0, **fields) -> None:
        task = self.tasks[job]
        task.update({k: v for k, v in fields.items() if v is not None})
        task["completed"] += advance
        if time.monotonic() - task["printed"] >= self.interval:
            self._print(job)

    def advance(self, job: int, advance: float = 1) -> None:
        self.update(job, advance=advance)

    def _print(self, job: int) -> None:
        task = self.tasks[job]
        task["printed"] = time.monotonic()
        elapsed = task["printed"] - task["start"]
        total = "?" if task["total"] is None else f"{task['total']:g}"
        print(f"{task['description']}: {task['completed']:g}/{total} ({elapsed:.0f} s)",
              file=sys.stderr, flush=True)  # fmt: skip


def progress_bar() -> Progress | LogProgress:
    """A rich progress bar on stderr, or periodic plain lines when stderr is not a terminal."""
    if not sys.stderr.isatty():
        return LogProgress()
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        transient=False,
        console=None,
    )


def check_step(task, make_optimizer, what: str, grad_fn=None) -> None:
    """Trace (without compiling) one training step of `make_optimizer(key)` on `task`: a value
    the task or optimizer cannot work with fails here, as a UserError, before any work."""
    import jax

    from tasks import backprop, init_state, train_step

    def step(key):
        optimizer = make_optimizer(key)
        state = init_state(task, optimizer, key)
        return train_step(task, optimizer, state, key, total_steps=2, grad_fn=grad_fn or backprop)

    try:
        jax.eval_shape(step, jax.random.key(0))
    except (TypeError, ValueError, ArithmeticError, IndexError) as e:
        raise UserError(f"{what}: {' '.join(str(e).split())[:300]}") from None


def tensorboard_scalars(metrics: dict) -> dict:
    """`tag -> (steps, values)` for the per-step loss and every evaluation metric."""
    steps = list(range(1, len(metrics["train_loss"]) + 1))
    scalars = {"train/loss": (steps, metrics["train_loss"])}
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
    grad: str = "backprop",
    grad_options: dict | None = None,
) -> int:
    """Validate everything, train, then write `out/results.json` and events; the exit code."""
    if learning_rate is not None:
        hparams = {**hparams, "learning_rate": learning_rate}
    from l2o.config import check_hparams

    hparams = check_hparams(optimizer_name, hparams, "--hparam")
    eval_every = eval_every or default_eval_every(steps)
    if eval_every > steps:
        raise UserError(f"--eval-every {eval_every} is larger than --steps {steps}")
    task = build_task(task_name, task_options)
    optimizer = build_optimizer(optimizer_name, hparams)
    grad_fn = build_estimator(grad, task, grad_options or {})
    check_step(task, lambda key: optimizer, f"{optimizer_name} on {task_name}", grad_fn)
    from baselines import optimizer_hparams

    hparams = {**optimizer_hparams(optimizer_name), **hparams}
    out = check_writable_dir(out)

    with progress_bar() as bar:
        job = bar.add_task(f"{task_name} / {optimizer_name}", total=steps)
        metrics, timings = train_in_chunks(
            task, optimizer, steps, seed,
            eval_every=eval_every,
            grad_fn=grad_fn,
            on_chunk=lambda done: bar.update(job, completed=done),
        )  # fmt: skip

    final = summarize(metrics)
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
        "timing": timings,
        "versions": versions(),
        "argv": sys.argv,
    }
    write_json_atomic(out / "results.json", results)
    write_scalars(out, tensorboard_scalars(metrics))
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
