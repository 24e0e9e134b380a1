"""Newton-Schulz through the Gram matrix against the direct iteration, alone and inside Muon's and
celo's training steps on an MLP 784-128-128-10, batch 128.

Run from the repository root: python -m bench.newton_schulz  (MNIST from $L2O_DATA_DIR)

`direct_newton_schulz` below is the reference: Jordan's five quintic iterations on the matrix
itself. `baselines.newton_schulz` takes the Gram-matrix form when the long side is >= 2x the short
one. Both are timed on the MLP's three weight shapes, then Muon and celo train the MLP for 200
steps inside one jitted `tasks.train` with each form (the optimizers' module-level
`newton_schulz` swapped for the reference while they are built and compiled), interleaved with
Adam's run; the best of `--rounds` is kept. Prints ms and the ratio to Adam's step.
"""

from __future__ import annotations

import argparse
import importlib
import os
from functools import partial
from pathlib import Path
from unittest import mock

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as `l2o` sets it: see l2o/cli/main.py
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import baselines  # noqa: E402
import l2o.optimizers.celo  # noqa: E402
import tasks  # noqa: E402
from baselines.muon import NS_COEFFS  # noqa: E402
from bench.timing import best_time, interleaved_best  # noqa: E402

SHAPES = ((784, 128), (128, 128), (128, 10))
MUON_MODULE = importlib.import_module("baselines.muon")  # `baselines.muon` is the function


def direct_newton_schulz(x, ns_coeffs=NS_COEFFS, ns_steps=5, eps=1e-7):
    """`ns_steps` iterations `X <- a X + (b A + c A^2) X`, `A = X X^T`, on the wide side."""
    a, b, c = ns_coeffs
    wide = x.shape[0] <= x.shape[1]
    X = x if wide else x.T
    X = X / (jnp.sqrt(jnp.sum(jnp.square(X)) + 1e-30) + eps)

    def iteration(_, X):
        A = X @ X.T
        return a * X + (b * A + c * A @ A) @ X

    X = jax.lax.fori_loop(0, ns_steps, iteration, X)
    return X if wide else X.T


def training_runs(task: tasks.Task, steps: int) -> dict:
    """`{label: (jitted fn(task, theta, key), theta)}`, compiled, each form of Newton-Schulz."""
    key = jax.random.key(0)

    def compiled(make):
        optimizer, theta = make()
        fn = jax.jit(lambda t, th, k: tasks.train(t, optimizer(th), steps, k)[1]["train_loss"])
        jax.block_until_ready(fn(task, theta, key))
        return fn, theta

    def celo():
        init_theta, transform = l2o.optimizers.celo.make_celo()
        return transform, init_theta(key)

    def muon():
        return lambda _: baselines.muon(0.02), None

    runs = {"adam": compiled(lambda: (lambda _: optax.adam(1e-3), None))}
    for name, make in (("muon", muon), ("celo", celo)):
        runs[f"{name}, Gram form"] = compiled(make)
        with (
            mock.patch.object(MUON_MODULE, "newton_schulz", direct_newton_schulz),
            mock.patch.object(l2o.optimizers.celo, "newton_schulz", direct_newton_schulz),
        ):
            runs[f"{name}, direct form"] = compiled(make)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    print("Newton-Schulz alone (5 steps), ms:")
    for shape in SHAPES:
        x = jax.random.normal(jax.random.key(1), shape)
        direct = best_time(jax.jit(direct_newton_schulz), x, repeats=20)
        gram = best_time(jax.jit(baselines.newton_schulz), x, repeats=20)
        print(f"  {shape}: direct {1e3 * direct:.3f}, ours {1e3 * gram:.3f} ({direct / gram:.2f}x)")

    task = tasks.get_task("mnist_mlp", hidden=(128, 128))
    runs = training_runs(task, args.steps)
    key = jax.random.key(2)
    calls = {label: partial(fn, task, theta, key) for label, (fn, theta) in runs.items()}
    best = interleaved_best(calls, args.rounds)
    print(f"mnist_mlp 784-128-128-10, batch 128, {args.steps} steps, best of {args.rounds}:")
    for label, seconds in best.items():
        ms = 1e3 * seconds / args.steps
        print(f"  {label:20s} {ms:8.3f} ms/step  {seconds / best['adam']:6.2f}x adam")


if __name__ == "__main__":
    main()
