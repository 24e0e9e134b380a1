"""Learning-rate sweeps: one vmapped call vs one run at a time, and the whole small-suite sweep.

Run from the repository root: python -m bench.sweep [--steps 2000] [--full | --full-only]

1. For each task of configs/suite_small.yaml: the 15-LR x 3-seed Adam sweep as ONE vmapped
   call (`search.population_sweep`) vs the same 45 runs one at a time (one compiled
   `tasks.train`, called 45 times); wall time of each, compilation included, and the ratio.
2. With --full (or --full-only, skipping 1): the whole baseline sweep of the suite (its
   optimizers, 15 LRs, 3 seeds, its steps) through `l2o.evaluation.harness.evaluate_suite`, as
   `l2o evaluate` runs it; wall time and CPU time (the wall time on an otherwise idle machine
   is at most the CPU time, whatever else shares the cores during the measurement).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.cli.config import load_yaml, parse_suite
from l2o.evaluation.harness import evaluate_suite
from search.sweep import population_sweep
from tasks import get_task, train

REPO = Path(__file__).resolve().parents[1]


def one_at_a_time(task, lrs, seeds, steps):
    run = jax.jit(lambda t, lr, k: train(t, optax.adam(lr), steps, k)[1]["train_loss"])
    return [
        np.asarray(run(task, jnp.float32(lr), jax.random.key(int(s)))) for lr in lrs for s in seeds
    ]


def compare_task(spec, suite, steps):
    task = get_task(spec.name, **spec.options)
    lrs, seeds = suite.learning_rates(), np.arange(suite.seeds)
    t0 = time.perf_counter()
    together = population_sweep(
        task, lambda m: optax.adam(m["learning_rate"]), {"learning_rate": lrs}, seeds, steps
    )["train_loss"]
    t_vmap = time.perf_counter() - t0
    t0 = time.perf_counter()
    apart = one_at_a_time(task, lrs, seeds, steps)
    t_loop = time.perf_counter() - t0
    apart = np.stack(apart).reshape(together.shape)
    final = np.where(np.isfinite(together[..., -1]), together[..., -1], np.inf).mean(1)
    best = int(np.argmin(final))
    # Batched and single kernels round differently; over thousands of steps the trajectories
    # drift apart in detail, so compare what a sweep reports: the tuned LR's final loss.
    a, b = apart[best, :, -100:].mean(), together[best, :, -100:].mean()
    same_lr = best == int(
        np.argmin(np.where(np.isfinite(apart[..., -1]), apart[..., -1], np.inf).mean(1))
    )
    print(f"  {spec.key:24s} vmapped {t_vmap:7.1f} s   one at a time {t_loop:7.1f} s   "
          f"ratio {t_loop / t_vmap:5.2f}x   same best LR {same_lr}, final loss rel. diff "
          f"{abs(a - b) / abs(b):.1e}")  # fmt: skip
    return t_vmap, t_loop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "suite_small.yaml"))
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--full", action="store_true", help="also time the whole suite sweep")
    parser.add_argument("--full-only", action="store_true", help="time only the whole sweep")
    args = parser.parse_args()
    shared = REPO.parent / "shared" / "data"
    if "L2O_DATA_DIR" not in os.environ and shared.is_dir():
        os.environ["L2O_DATA_DIR"] = str(shared)
    suite = parse_suite(load_yaml(args.config))
    print(f"jax {jax.__version__}, {os.cpu_count()} cpus; Adam, {suite.lr_num} LRs x "
          f"{suite.seeds} seeds, {args.steps} steps, compilation included")  # fmt: skip
    if not args.full_only:
        totals = np.zeros(2)
        for spec in suite.tasks:
            totals += compare_task(spec, suite, args.steps)
        print(f"  {'all tasks':24s} vmapped {totals[0]:7.1f} s   one at a time {totals[1]:7.1f} s"
              f"   ratio {totals[1] / totals[0]:5.2f}x")  # fmt: skip
    if args.full or args.full_only:
        names = ", ".join(o.key for o in suite.optimizers)
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate_suite(suite)
        minutes, cpu = (time.perf_counter() - t0) / 60, (time.process_time() - c0) / 60
        # CPU time (all threads) bounds the wall time on a machine with no other load.
        print(f"whole suite sweep ({names}; {suite.lr_num} LRs x {suite.seeds} seeds, "
              f"{suite.steps} steps, {len(suite.tasks)} tasks): {minutes:.1f} min wall, "
              f"{cpu:.1f} min CPU time over all threads")  # fmt: skip


if __name__ == "__main__":
    main()
