"""Overhead of `tasks.train` against a minimal hand-written `lax.scan` loop, and vmap throughput.

Run from the repository root: python -m bench.inner_loop  (MNIST from $L2O_DATA_DIR)

1. 1,000 Adam steps of an MLP 784-128-10 on MNIST, batch 128: `tasks.train` vs a hand-written
   scan of the same model, data, sampling and optimizer, in the same process; prints the ratio.
2. vmap over seeds on the digits MLP: inner steps per second at 1, 8 and 32 seeds.
3. The 16x16 MNIST CNN with the im2col convolution of `tasks.networks.PatchConv2D` against the
   same network built from `hk.Conv2D` (XLA's convolution), both trained by `tasks.train`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import haiku as hk
import jax
import jax.numpy as jnp
import optax

import tasks
from bench.timing import best_time
from tasks import networks

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def hand_written_loop(task: tasks.Task, optimizer: optax.GradientTransformation, steps: int):
    """The same MLP training written directly: jnp layers, randint batches, `optax.adam`."""
    names = ("mlp/~/linear_0", "mlp/~/linear_1")

    def loss_fn(params, x, y):
        h = jax.nn.relu(x.reshape(x.shape[0], -1) @ params[names[0]]["w"] + params[names[0]]["b"])
        logits = h @ params[names[1]]["w"] + params[names[1]]["b"]
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    def run(data, key):
        init_key, run_key = jax.random.split(key)
        params = task.init(init_key)
        x_all, y_all = data["splits"]["train"]

        def step(carry, t):
            params, opt_state = carry
            batch_key = jax.random.fold_in(run_key, t)
            idx = jax.random.randint(batch_key, (task.batch_size,), 0, x_all.shape[0])
            x = (x_all[idx].astype(jnp.float32) - data["mean"]) / data["std"]
            loss, grads = jax.value_and_grad(loss_fn)(params, x, y_all[idx])
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        carry = (params, optimizer.init(params))
        return jax.lax.scan(step, carry, jnp.arange(steps))[1]

    return jax.jit(run)


def overhead(steps: int, repeats: int) -> None:
    task = tasks.get_task("mnist_mlp")
    optimizer = optax.adam(1e-3)
    ours = jax.jit(lambda t, k: tasks.train(t, optimizer, steps, k)[1]["train_loss"])
    reference = hand_written_loop(task, optimizer, steps)
    key = jax.random.key(0)
    t_ours, t_ref = [], []
    for _ in range(3):  # interleave to share any drift in machine load
        t_ours.append(best_time(ours, task, key, repeats=repeats))
        t_ref.append(best_time(reference, task.data, key, repeats=repeats))
    t_ours, t_ref = min(t_ours), min(t_ref)
    print(f"mnist_mlp 784-128-10, batch 128, {steps} Adam steps (best of {3 * repeats}):")
    print(f"  tasks.train        {t_ours:7.3f} s  ({1e3 * t_ours / steps:.3f} ms/step)")
    print(f"  hand-written scan  {t_ref:7.3f} s  ({1e3 * t_ref / steps:.3f} ms/step)")
    print(f"  overhead ratio     {t_ours / t_ref:7.3f}x")


def vmap_throughput(steps: int, repeats: int) -> None:
    task = tasks.get_task("digits_mlp")
    optimizer = optax.adam(1e-3)
    run = jax.jit(
        jax.vmap(lambda t, k: tasks.train(t, optimizer, steps, k)[1]["train_loss"], (None, 0))
    )
    print(f"digits_mlp 64-32-10, batch 64, {steps} Adam steps, vmap over seeds:")
    base = None
    for seeds in (1, 8, 32):
        keys = jax.random.split(jax.random.key(0), seeds)
        seconds = best_time(run, task, keys, repeats=repeats)
        rate = seeds * steps / seconds
        base = base or rate
        print(f"  {seeds:3d} seeds  {seconds:7.3f} s  {rate:10.0f} steps/s  ({rate / base:5.2f}x)")


def xla_conv_cnn(channels, num_outputs) -> hk.Transformed:
    """`networks.cnn` (ReLU, He initialization) with haiku's `hk.Conv2D` layers."""

    def forward(x):
        for c in channels:
            x = jax.nn.relu(hk.Conv2D(c, 3, w_init=networks.INITIALIZERS["he"])(x))
            x = hk.avg_pool(x, window_shape=2, strides=2, padding="SAME")
        return hk.Linear(num_outputs, w_init=networks.INITIALIZERS["he"])(x.reshape(len(x), -1))

    return hk.without_apply_rng(hk.transform(forward))


def conv_in_scan(steps: int, repeats: int) -> None:
    task = tasks.get_task("mnist16_cnn")
    reference_net = xla_conv_cnn((8, 16), 10)
    reference_task = task.replace(
        init=lambda key: reference_net.init(key, jnp.zeros((1, 16, 16, 1))),
        loss=lambda params, key, batch: (
            jnp.mean(
                optax.softmax_cross_entropy_with_integer_labels(
                    reference_net.apply(params, batch[0]), batch[1]
                )
            ),
            {},
        ),
    )
    optimizer = optax.adam(1e-3)
    run = jax.jit(lambda t, k: tasks.train(t, optimizer, steps, k)[1]["train_loss"])
    key = jax.random.key(0)
    ours = best_time(run, task, key, repeats=repeats)
    reference = best_time(run, reference_task, key, repeats=repeats)
    print(f"mnist16_cnn (8, 16) channels, batch 64, {steps} Adam steps (best of {repeats}):")
    print(f"  im2col PatchConv2D {ours:7.3f} s  ({1e3 * ours / steps:.3f} ms/step)")
    print(f"  hk.Conv2D          {reference:7.3f} s  ({1e3 * reference / steps:.3f} ms/step)")
    print(f"  speedup            {reference / ours:7.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
        os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, {os.cpu_count()} cpus")
    overhead(args.steps, args.repeats)
    vmap_throughput(args.steps, args.repeats)
    conv_in_scan(args.steps, args.repeats)


if __name__ == "__main__":
    main()
