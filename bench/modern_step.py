"""Per-step cost of the modern baselines (NAdamW, Muon, schedule-free AdamW, Adafactor, Prodigy,
Sophia, Shampoo, orthogonal Adam) against our Adam on an MLP 784-128-128-10, batch 128.

Run from the repository root: python -m bench.modern_step [--optimizers adam,muon]
(MNIST from $L2O_DATA_DIR)

Each optimizer, with its default hyperparameters, trains `mnist_mlp(hidden=(128, 128))` for 200
steps inside one jitted `tasks.train` (the task is a jit argument); after compiling, the runs of
all optimizers are interleaved and the best time of each is kept. Prints ms/step and the ratio to
`adam`.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `l2o` sets it: see l2o/cli/main.py
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)

import jax  # noqa: E402

import tasks  # noqa: E402
from baselines import get_optimizer, list_optimizers  # noqa: E402
from bench.timing import interleaved_best  # noqa: E402

NAMES = ("adam", "adamw", "nadamw", "muon", "schedule_free_adamw", "adafactor", "prodigy", "sophia",
         "shampoo", "orthogonal_adam")  # fmt: skip


def compiled_runs(task: tasks.Task, steps: int, names: tuple[str, ...]):
    """`{name: fn(task, key)}`, each jitted and compiled."""
    runs = {}
    for name in names:
        optimizer = get_optimizer(name)

        def run(t, k, optimizer=optimizer):
            return tasks.train(t, optimizer, steps, k)[1]["train_loss"]

        runs[name] = jax.jit(run)
        jax.block_until_ready(runs[name](task, jax.random.key(0)))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument(
        "--optimizers", default=",".join(NAMES), help="comma-separated names (adam is always run)"
    )
    args = parser.parse_args()
    names = ("adam", *(n for n in args.optimizers.split(",") if n and n != "adam"))
    unknown = [n for n in names if n not in list_optimizers()]
    if unknown:
        parser.error(f"unknown optimizers: {', '.join(unknown)}")

    task = tasks.get_task("mnist_mlp", hidden=(128, 128))
    runs = compiled_runs(task, args.steps, names)
    key = jax.random.key(1)
    calls = {name: partial(fn, task, key) for name, fn in runs.items()}
    best = interleaved_best(calls, args.rounds)

    reference = best["adam"]
    print(
        f"jax {jax.__version__}, {os.cpu_count()} cpus, load average "
        f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}; mnist_mlp 784-128-128-10 "
        f"({tasks.num_params(task.init(key))} params), batch 128, {args.steps} steps, "
        f"best of {args.rounds}:"
    )
    for name, seconds in best.items():
        ms = 1e3 * seconds / args.steps
        print(f"  {name:20s} {ms:8.3f} ms/step  {seconds / reference:6.2f}x adam")


if __name__ == "__main__":
    main()
