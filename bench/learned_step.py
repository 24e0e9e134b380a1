"""Per-step cost of each learned optimizer against Adam on an MLP 784-128-128-10, batch 128.

Run from the repository root: python -m bench.learned_step  (MNIST from $L2O_DATA_DIR)

Each optimizer trains `mnist_mlp(hidden=(128, 128))` for 200 steps inside one jitted `tasks.train`
(the task and theta are jit arguments, as in meta-training); after compiling, the runs of all
optimizers are interleaved and the best time of each is kept. Prints ms/step and the ratio to
`optax.adam`. The target for the per-parameter MLP optimizer is <= 2.5x.
"""

from __future__ import annotations

import argparse
import os
from functools import partial
from pathlib import Path

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "L2O_DATA_DIR" not in os.environ and SHARED_DATA.is_dir():
    os.environ["L2O_DATA_DIR"] = str(SHARED_DATA)

import jax  # noqa: E402
import optax  # noqa: E402

import tasks  # noqa: E402
from bench.timing import interleaved_best  # noqa: E402
from l2o.optimizers.registry import LEARNED_OPTIMIZERS, get_learned  # noqa: E402

# Extra configurations shown next to the defaults: name, architecture, config.
VARIANTS = (("mlp hidden (32, 32)", "mlp", {"hidden_sizes": (32, 32)}),)


def compiled_runs(task: tasks.Task, steps: int, variants: bool):
    """`{label: (fn, theta)}` with `fn(task, theta, key)` jitted and compiled."""
    key = jax.random.key(0)
    adam = optax.adam(1e-3)
    runs = {"adam (optax)": (jax.jit(lambda t, _, k: tasks.train(t, adam, steps, k)[1]), None)}
    entries = [(name, name, {}) for name in sorted(LEARNED_OPTIMIZERS)]
    entries += list(VARIANTS) if variants else []
    for label, name, config in entries:
        init_theta, transform = get_learned(name, **config)

        def run(t, theta, k, transform=transform):
            return tasks.train(t, transform(theta), steps, k)[1]

        runs[label] = (jax.jit(run), init_theta(key))
    for fn, theta in runs.values():
        jax.block_until_ready(fn(task, theta, key))
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7, help="interleaved timing rounds")
    parser.add_argument("--no-variants", action="store_true", help="defaults only")
    args = parser.parse_args()

    task = tasks.get_task("mnist_mlp", hidden=(128, 128))
    runs = compiled_runs(task, args.steps, not args.no_variants)
    key = jax.random.key(1)
    calls = {label: partial(fn, task, theta, key) for label, (fn, theta) in runs.items()}
    best = interleaved_best(calls, args.rounds)

    reference = best["adam (optax)"]
    print(
        f"mnist_mlp 784-128-128-10 ({tasks.num_params(task.init(key))} params), batch 128, "
        f"{args.steps} steps, best of {args.rounds}:"
    )
    for label, seconds in best.items():
        ms = 1e3 * seconds / args.steps
        print(f"  {label:24s} {ms:8.3f} ms/step  {seconds / reference:6.2f}x adam")


if __name__ == "__main__":
    main()
