"""Our inner loop against a PyTorch CPU training loop: the same MLP, data, batch and Adam steps.

Run from the repository root: python -m bench.torch_compare [--steps 1000] [--repeats 5]
(needs the `bench` extra: pip install -e '.[bench]', i.e. torch==2.13.0, a CPU build)

Workload: an MLP 784-128-128-10 (ReLU; 118,282 parameters), softmax cross-entropy, Adam with
learning rate 1e-3, batches of 128 drawn uniformly with replacement from 10,000 synthetic
MNIST-shaped examples (standard-normal inputs, labels of a random linear teacher), inputs
standardized per batch in both loops. Ours: `tasks.train` (one jitted `lax.scan`, batches drawn
inside jit). PyTorch: eager `nn.Sequential`, `torch.optim.Adam` (default implementation),
`torch.randint` batches, per-step losses kept, with `torch.set_num_threads(os.cpu_count())`
so both libraries use every core (the ratio is taken against this setting; PyTorch with one
thread is printed too, since its thread pool degrades most on a loaded machine). Times are the
best of `--repeats` whole runs after a warm-up (JAX's compilation is excluded and printed
separately), the loops interleaved so that all see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import numpy as np
import optax
import torch
from torch import nn

from tasks import train
from tasks.classification import classification_task
from tasks.networks import mlp

HIDDEN = (128, 128)
NUM_EXAMPLES, DIM, CLASSES, BATCH = 10_000, 784, 10, 128


def synthetic_splits(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MNIST-shaped inputs and the labels of a random linear teacher."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((NUM_EXAMPLES + 2_000, DIM), dtype=np.float32)
    y = np.argmax(x @ rng.standard_normal((DIM, CLASSES), dtype=np.float32), axis=1)
    y = y.astype(np.int32)
    n = NUM_EXAMPLES
    return {"train": (x[:n], y[:n]), "valid": (x[n : n + 1000], y[n : n + 1000]),
            "test": (x[n + 1000 :], y[n + 1000 :])}  # fmt: skip


def ours(splits, steps: int):
    """`run(task, key) -> losses [steps]`, jitted, and the task."""
    task = classification_task("synthetic_mlp", splits, mlp(HIDDEN, CLASSES), batch_size=BATCH)
    optimizer = optax.adam(1e-3)
    run = jax.jit(lambda t, k: train(t, optimizer, steps, k)[1]["train_loss"])
    return run, task


def torch_loop(splits, steps: int):
    """`run() -> losses [steps]`: the same training in eager PyTorch."""
    x_np, y_np = splits["train"]
    x, y = torch.from_numpy(x_np), torch.from_numpy(y_np).long()
    mean, std = float(x_np.mean()), float(x_np.std()) + 1e-6  # as classification_task
    torch.manual_seed(0)
    layers, width = [], DIM
    for h in HIDDEN:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    model = nn.Sequential(*layers, nn.Linear(width, CLASSES))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    loss_fn = nn.CrossEntropyLoss()

    def run() -> torch.Tensor:
        losses = torch.empty(steps)
        for t in range(steps):
            idx = torch.randint(0, x.shape[0], (BATCH,), generator=generator)
            loss = loss_fn(model((x[idx] - mean) / std), y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses[t] = loss.detach()
        return losses

    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    cores = os.cpu_count()
    torch.set_num_threads(cores)
    load = os.getloadavg()[0]
    print(f"jax {jax.__version__} ({jax.device_count()} device), torch {torch.__version__} "
          f"({torch.get_num_threads()} threads = the {cores} cores); load {load:.1f}")  # fmt: skip
    splits = synthetic_splits()
    run_ours, task = ours(splits, args.steps)
    run_torch = torch_loop(splits, args.steps)
    key = jax.random.key(0)

    t0 = time.perf_counter()
    jax.block_until_ready(run_ours(task, key))
    compile_s = time.perf_counter() - t0
    run_torch()  # warm-up: allocator, kernels, thread pool
    t_ours, t_torch, t_torch_1 = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        losses_ours = np.asarray(jax.block_until_ready(run_ours(task, key)))
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        losses_torch = run_torch().numpy()
        t_torch.append(time.perf_counter() - t0)
        torch.set_num_threads(1)
        t0 = time.perf_counter()
        run_torch()
        t_torch_1.append(time.perf_counter() - t0)
        torch.set_num_threads(cores)
    best_ours, best_torch, best_torch_1 = min(t_ours), min(t_torch), min(t_torch_1)
    print(f"MLP 784-128-128-10, batch {BATCH}, {args.steps} Adam steps, best of {args.repeats}:")
    print(f"  l2o (tasks.train, jitted scan)  {best_ours:7.3f} s  "
          f"{1e3 * best_ours / args.steps:6.3f} ms/step  (first call with compilation "
          f"{compile_s:.2f} s)")  # fmt: skip
    print(f"  PyTorch eager + optim.Adam      {best_torch:7.3f} s  "
          f"{1e3 * best_torch / args.steps:6.3f} ms/step  ({cores} threads)")  # fmt: skip
    print(f"  PyTorch, 1 thread               {best_torch_1:7.3f} s  "
          f"{1e3 * best_torch_1 / args.steps:6.3f} ms/step  "
          f"(ratio {best_torch_1 / best_ours:.2f}x)")  # fmt: skip
    print(f"  speedup (PyTorch time / ours)   {best_torch / best_ours:7.2f}x   (target >= 2x; "
          f"PyTorch on {cores} threads)")  # fmt: skip
    print(f"  final loss, mean of last 100 steps: ours {losses_ours[-100:].mean():.3f}, "
          f"PyTorch {losses_torch[-100:].mean():.3f} (not the same batches)")  # fmt: skip


if __name__ == "__main__":
    main()
