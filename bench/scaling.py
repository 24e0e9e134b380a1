"""Cost against task size (1k -> 1M parameters) and against population size (1 -> 1024 runs).

Run from the repository root: python -m bench.scaling [--steps 200] [--plot bench/scaling.png]

1. Task size: Adam on the digits MLP 64-H-10 (batch 128), H chosen for about 1k, 10k, 100k and
   1M parameters; one run of `--steps` steps through `tasks.train`, best of 3 after compiling.
   Prints ms per step and parameters updated per microsecond.
2. Population size: 1, 4, 16, 64, 256 and 1024 learning rates (x 1 seed) of Adam on the digits
   MLP 64-32-10 (2,410 parameters, batch 128), `--pop-steps` steps each, as ONE
   `search.sweep.population_sweep` call (compiled once per size, then the best of 3 calls);
   prints seconds per call and inner steps per second.
Writes both curves to a PNG (log-log).
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import matplotlib
import numpy as np
import optax

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from search.sweep import population_sweep  # noqa: E402
from tasks import get_task, num_params, train  # noqa: E402

WIDTHS = (13, 133, 1333, 13333)  # 64-H-10 MLPs of about 1k, 10k, 100k and 1M parameters
POPULATIONS = (1, 4, 16, 64, 256, 1024)


def task_size(steps: int) -> list[tuple[int, float]]:
    """(parameters, seconds per step) for each width."""
    rows = []
    optimizer = optax.adam(1e-3)
    run = jax.jit(lambda t, k: train(t, optimizer, steps, k)[1]["train_loss"])
    for width in WIDTHS:
        task = get_task("digits_mlp", hidden=(width,), batch_size=128)
        n = num_params(task.init(jax.random.key(0)))
        jax.block_until_ready(run(task, jax.random.key(0)))
        times = []
        for seed in range(3):
            t0 = time.perf_counter()
            jax.block_until_ready(run(task, jax.random.key(seed)))
            times.append(time.perf_counter() - t0)
        per_step = min(times) / steps
        rows.append((n, per_step))
        print(f"  {n:>9,d} params (H={width:>5d})  {1e3 * per_step:8.3f} ms/step  "
              f"{n / per_step / 1e6:8.1f} params/us", flush=True)  # fmt: skip
    return rows


def population_size(steps: int) -> list[tuple[int, float]]:
    """(runs, seconds per call) for each population size."""
    task = get_task("digits_mlp", batch_size=128)

    def make(member):  # one function for all calls: population_sweep caches its compilation
        return optax.adam(member["learning_rate"])

    rows = []
    for size in POPULATIONS:
        lrs = np.geomspace(1e-4, 1e-1, size).astype(np.float32)

        def call(lrs=lrs):
            return population_sweep(task, make, {"learning_rate": lrs}, np.array([0]), steps)

        call()  # compile
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
        seconds = min(times)
        rows.append((size, seconds))
        print(f"  {size:>5d} runs  {seconds:8.3f} s/call  {seconds / size * 1e3:8.2f} ms/run  "
              f"{size * steps / seconds:10,.0f} inner steps/s", flush=True)  # fmt: skip
    return rows


def plot(sizes, populations, steps: int, pop_steps: int, path: str) -> None:
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    params, per_step = np.array(sizes).T
    a.loglog(params, 1e3 * per_step, "o-")
    a.set(xlabel="parameters (MLP 64-H-10)", ylabel="ms per Adam step (batch 128)",
          title=f"task size ({steps} steps, 1 run)")  # fmt: skip
    runs, seconds = np.array(populations).T
    b.loglog(runs, seconds, "o-", label="one vmapped call")
    b.loglog(runs, seconds[0] * runs, "--", color="grey", label="1 run x population (linear)")
    b.set(xlabel="population (learning rates, 1 seed)", ylabel="seconds per call",
          title=f"population size (2,410 params, {pop_steps} steps)")  # fmt: skip
    b.legend()
    for ax in (a, b):
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"l2o on {os.cpu_count()} CPU cores, jax {jax.__version__}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per task-size run")
    parser.add_argument("--pop-steps", type=int, default=100, help="steps per population run")
    parser.add_argument("--plot", default="bench/scaling.png")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, {jax.device_count()} device(s), {os.cpu_count()} cpus; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"task size: Adam on the digits MLP 64-H-10, batch 128, {args.steps} steps")
    sizes = task_size(args.steps)
    print(f"population size: digits MLP 64-32-10, {args.pop_steps} steps per run, one call")
    populations = population_size(args.pop_steps)
    plot(sizes, populations, args.steps, args.pop_steps, args.plot)
    print(f"plot written to {args.plot}; load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
