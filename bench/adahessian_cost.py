"""Cost of an AdaHessian step relative to an Adam step on the MNIST MLP (target: at most 3x).

Run from the repository root: python -m bench.adahessian_cost [--steps 200] [--repeats 10]
"""

from __future__ import annotations

import argparse
import time

import jax
import optax

import tasks
from baselines.adahessian import adahessian

TARGET_RATIO = 3.0


def best_times(task: tasks.Task, optimizers: dict, steps: int, repeats: int) -> dict[str, float]:
    """Best wall-clock seconds of a jitted `tasks.train` run of `steps` steps per optimizer.

    Compiled first, then timed in turns (one run of each per round), so that a change in the
    machine's load affects all of them alike.
    """
    runs = {
        name: jax.jit(lambda t, k, opt=opt: tasks.train(t, opt, steps, k))
        for name, opt in optimizers.items()
    }
    key = jax.random.key(0)
    for run in runs.values():
        jax.block_until_ready(run(task, key))  # compile and warm up
    best = dict.fromkeys(runs, float("inf"))
    for i in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            jax.block_until_ready(run(task, jax.random.fold_in(key, i)))
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mnist_mlp")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()

    task = tasks.get_task(args.task)
    optimizers = {"adam": optax.adam(1e-3), "adahessian": adahessian()}
    best = best_times(task, optimizers, args.steps, args.repeats)
    adam_s, adahessian_s = best["adam"], best["adahessian"]
    ratio = adahessian_s / adam_s
    backend = jax.default_backend()
    print(f"task {args.task}, {args.steps} steps, best of {args.repeats}, backend {backend}")
    print(f"adam       {1e3 * adam_s / args.steps:8.3f} ms/step")
    print(f"adahessian {1e3 * adahessian_s / args.steps:8.3f} ms/step")
    print(
        f"ratio adahessian/adam: {ratio:.2f}x (target <= {TARGET_RATIO:g}x): "
        f"{'ok' if ratio <= TARGET_RATIO else 'ABOVE TARGET'}"
    )


if __name__ == "__main__":
    main()
