"""Meta-training throughput on the reference workload of learned_optimization's PES.

Run from the repository root: python -m bench.meta [--outer-steps 20]

Workload: 8 tasks, each an MLP 64-32-10 (ReLU) on the 8x8x1 digits with batch 128 (2,410
parameters, softmax cross-entropy); the per-parameter MLP learned optimizer
(`l2o.optimizers.registry` "mlp"); PES with 50-step truncations, sigma 0.01, one antithetic
pair per task, inner runs of 200 steps with staggered restarts. Inner steps are counted as
tasks x truncation x 2.
Prints inner steps per second after compilation, and the first outer step's time (compilation
included), for each learned optimizer of `--optimizers` (default: the mlp; `mlp,celo` also
measures the Celo2-style rule on the same workload in the same process, and their ratio).
"""

from __future__ import annotations

import argparse
import os
import time

import jax

from l2o.meta.estimators import EstimatorConfig
from l2o.meta.objective import MetaObjective
from l2o.meta.trainer import make_meta_trainer
from l2o.meta.types import OuterConfig
from l2o.optimizers.registry import get_learned
from tasks import get_task, num_params

ARCHITECTURES = {"mlp": {"hidden_sizes": (32, 32)}, "celo": {"hidden_sizes": (8, 8)}}


def inner_steps_per_second(name: str, args) -> tuple[float, float]:
    """(seconds of the first outer step, compilation included; inner steps/s after it)."""
    task = get_task("digits_mlp", batch_size=128)
    init_theta, transform = get_learned(name, **ARCHITECTURES[name])
    theta = init_theta(jax.random.key(0))
    task_params = num_params(task.init(jax.random.key(0)))
    print(f"{name}: task params {task_params}, meta-params {num_params(theta)}")
    trainer = make_meta_trainer(
        [task],
        init_theta,
        transform,
        MetaObjective(horizon=200, truncation=args.truncation),
        EstimatorConfig("pes", num_tasks=args.tasks, num_pairs=1, sigma=0.01),
        OuterConfig(steps=args.outer_steps),
    )
    t0 = time.perf_counter()
    state = trainer.init()
    state, metrics = trainer.step(state)
    jax.block_until_ready(state.theta)
    first = time.perf_counter() - t0

    t0 = time.perf_counter()
    for _ in range(args.outer_steps):
        state, metrics = trainer.step(state)
    jax.block_until_ready(state.theta)
    seconds = time.perf_counter() - t0
    inner = args.tasks * args.truncation * 2 * args.outer_steps
    print(f"  first outer step (init + compile + run): {first:.1f} s")
    rate = inner / seconds
    print(f"  {args.outer_steps} outer steps: {seconds:.2f} s, {rate:,.0f} inner steps/s")
    return first, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outer-steps", type=int, default=20)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=50)
    parser.add_argument("--optimizers", default="mlp", help="comma-separated: mlp, celo")
    args = parser.parse_args()
    names = args.optimizers.split(",")
    unknown = set(names) - set(ARCHITECTURES)
    if unknown:
        parser.error(f"unknown optimizers {sorted(unknown)}; valid: {', '.join(ARCHITECTURES)}")
    print(f"jax {jax.__version__}, {os.cpu_count()} cpus")
    print(f"({args.tasks} tasks x {args.truncation} steps x 2 antithetic per outer step)")
    rates = {name: inner_steps_per_second(name, args)[1] for name in names}
    for name in names[1:]:
        print(f"{name}: {rates[name] / rates[names[0]]:.2f}x the inner steps/s of {names[0]}")


if __name__ == "__main__":
    main()
