"""Cost per step of every baseline relative to Adam, and of the gradient estimators relative to
backprop, on the MNIST MLP (784-128-10, batch 128); accuracy of DFA and forward gradient on the
digits MLP.

Run from the repository root: python -m bench.baselines [--steps 300] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import jax
import numpy as np
import optax

from baselines import get_estimator, get_optimizer, list_optimizers
from tasks import backprop, get_task, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# Newton forms the full Hessian (n^2 entries): for small problems only, not a 100k-weight MLP.
SKIP = {"newton"}


def seconds(task, optimizer, steps, repeats, grad_fn=backprop) -> float:
    """Best wall time of a jitted `tasks.train` run of `steps` steps, after compiling."""
    run = jax.jit(lambda t, k: train(t, optimizer, steps, k, grad_fn=grad_fn)[1]["train_loss"])
    key = jax.random.key(0)
    jax.block_until_ready(run(task, key))
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(run(task, key))
        best = min(best, time.perf_counter() - t0)
    return best


def accuracy(task_name, grad, steps, lr, **options) -> float:
    task = get_task(task_name)
    grad_fn = get_estimator(grad, **options)
    schedule = optax.cosine_decay_schedule(lr, steps)
    state, _ = jax.jit(lambda t: train(t, optax.adam(schedule), steps, jax.random.key(0),
                                       grad_fn=grad_fn))(task)  # fmt: skip
    return float(task.evaluate(state.params, jax.random.key(1), "test")["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if "L2O_DATA_DIR" not in os.environ and SHARED.is_dir():
        os.environ["L2O_DATA_DIR"] = str(SHARED)
    task = get_task("mnist_mlp")
    print(f"jax {jax.__version__}, {os.cpu_count()} cpus; mnist_mlp, {args.steps} steps, "
          f"best of {args.repeats}")  # fmt: skip
    adam = seconds(task, get_optimizer("adam"), args.steps, args.repeats)
    print(f"  {'adam':11s} {1e3 * adam / args.steps:7.3f} ms/step   1.00x")
    for name in list_optimizers():
        if name == "adam" or name in SKIP:
            continue
        t = seconds(task, get_optimizer(name), args.steps, args.repeats)
        print(f"  {name:11s} {1e3 * t / args.steps:7.3f} ms/step  {t / adam:5.2f}x")
    print("gradient estimators with SGD, relative to backprop:")
    sgd = get_optimizer("sgd")
    base = seconds(task, sgd, args.steps, args.repeats)
    for name, options in (("forward", {}), ("forward", {"num_tangents": 8}), ("dfa", {})):
        t = seconds(task, sgd, args.steps, args.repeats, get_estimator(name, **options))
        label = name + (f" k={options['num_tangents']}" if options else "")
        print(f"  {label:14s} {1e3 * t / args.steps:7.3f} ms/step  {t / base:5.2f}x")
    print("test accuracy on digits_mlp (Adam, cosine decay):")
    print(f"  backprop            {accuracy('digits_mlp', 'backprop', 2000, 3e-3):.3f}")
    print(f"  dfa                 {accuracy('digits_mlp', 'dfa', 2000, 3e-3):.3f}")
    fwd = accuracy("digits_mlp", "forward", 20000, 3e-3, num_tangents=8)
    print(f"  forward (k=8)       {fwd:.3f}  (20,000 steps)")


if __name__ == "__main__":
    main()
