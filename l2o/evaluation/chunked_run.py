"""One training run driven from the host in jitted chunks, for progress bars and timing.

The chunks are `tasks.unroll` calls, so the run is step-for-step the one `tasks.train` makes.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.evaluation.curves import MAX_CURVE_POINTS, block_means, block_size, fold_blocks
from tasks import Task, backprop, init_state, unroll
from tasks.train import GradFn, evaluate_state


def default_eval_every(num_steps: int) -> int:
    """About 20 evaluations per run."""
    return max(1, num_steps // 20)


def first_nonfinite(values: np.ndarray) -> int | None:
    """Index of the first NaN/inf in a 1-D array, or None."""
    bad = np.flatnonzero(~np.isfinite(values))
    return int(bad[0]) if bad.size else None


def train_in_chunks(
    task: Task,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    seed: int,
    *,
    eval_every: int,
    grad_fn: GradFn = backprop,
    on_chunk: Callable[[int], None] = lambda steps_done: None,
    max_points: int = MAX_CURVE_POINTS,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    """Train `num_steps` from `jax.random.key(seed)`, evaluating every `eval_every` steps.

    Returns host metrics (as `tasks.train` with the same `eval_every`) and timings in seconds.
    The training losses are kept as means of blocks of `block_size(num_steps, max_points)` steps
    (`l2o.evaluation.curves`): as they are up to `max_points` steps.
    """
    init_key, run_key = jax.random.split(jax.random.key(seed))
    t0 = time.perf_counter()

    def first(task, key, run_key):
        state = init_state(task, optimizer, key)
        return state, evaluate_state(task, state, run_key)

    def chunk_fn(n):
        def run(task, state, run_key):
            return unroll(
                task, optimizer, state, run_key, n,
                total_steps=num_steps, grad_fn=grad_fn, eval_every=n,
            )  # fmt: skip

        return run

    state, first_eval = jax.jit(first)(task, init_key, run_key)
    num_chunks, rest = divmod(num_steps, eval_every)
    sizes = [eval_every] * num_chunks + ([rest] if rest else [])
    compiled = {n: jax.jit(chunk_fn(n)).lower(task, state, run_key).compile() for n in set(sizes)}
    compile_time = time.perf_counter() - t0

    every = block_size(num_steps, max_points)
    pieces, losses, pending = [], [], np.zeros(0, np.float32)
    done = 0
    for n in sizes:
        state, metrics = compiled[n](task, state, run_key)
        metrics = jax.device_get(metrics)
        means, pending = fold_blocks(pending, metrics.pop("train_loss"), every)
        losses.append(means)
        pieces.append(metrics)
        done += n
        on_chunk(done)
    jax.block_until_ready(state)
    total = time.perf_counter() - t0
    metrics = {"train_loss": np.concatenate([*losses, block_means(pending, every)])}
    for name, value in jax.device_get(first_eval).items():
        metrics[name] = np.concatenate([np.asarray(value)[None]] + [p[name] for p in pieces])
    timings = {
        "wall_time_s": total,
        "compile_time_s": compile_time,
        "run_time_s": total - compile_time,
    }
    return metrics, timings


def summarize(metrics: dict[str, np.ndarray], every: int = 1) -> dict[str, float | int | None]:
    """Final and best values of a run's metrics (final = last evaluation / last steps' mean).

    With training losses kept as means of blocks of `every` steps, the final training loss is
    the mean of the last 5% of the blocks, and `diverged_at_step` the first step (0-based) of the
    first block holding a non-finite loss.
    """
    losses = metrics["train_loss"]
    tail = losses[-max(1, len(losses) // 20) :]
    out: dict[str, float | int | None] = {"train_loss": float(jnp.mean(tail))}
    for name, values in metrics.items():
        if name in ("train_loss", "eval_step"):
            continue
        out[name] = float(values[-1])
        if name.endswith("_loss"):
            out[f"best_{name}"] = float(np.nanmin(values)) if np.isfinite(values).any() else None
        elif name.endswith("_accuracy"):
            out[f"best_{name}"] = float(np.nanmax(values)) if np.isfinite(values).any() else None
    diverged = first_nonfinite(losses)
    out["diverged_at_step"] = None if diverged is None else diverged * every
    return out
