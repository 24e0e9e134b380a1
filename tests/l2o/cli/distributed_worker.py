"""One process of `tests/l2o/test_distributed.py` (or the single-process reference): a small
sharded meta-training run and a program-population evaluation, saved as `OUT.<process>.npz`.

Usage: python distributed_worker.py --out PREFIX [--coordinator H:P --num-processes N
--process-id I]
"""

from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.cli import distributed
from l2o.io import UserError


def learnable_sgd(theta):
    lr = jnp.exp(theta["log_lr"])
    return optax.with_extra_args_support(optax.sgd(lr, momentum=jax.nn.sigmoid(theta["m"])))


def init_theta(key):
    return {"log_lr": jnp.log(jnp.float32(0.05)), "m": jnp.float32(0.0)}


def meta_training() -> dict[str, np.ndarray]:
    """Three PES steps with 3 tasks x 2 pairs (6 particles, padded to the device count)."""
    from l2o.meta.estimators import EstimatorConfig
    from l2o.meta.objective import MetaObjective
    from l2o.meta.trainer import make_meta_trainer
    from l2o.meta.types import OuterConfig
    from tasks import get_task

    task = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)
    trainer = make_meta_trainer(
        [task],
        init_theta,
        learnable_sgd,
        MetaObjective(horizon=20, truncation=5),
        EstimatorConfig("pes", num_tasks=3, num_pairs=2, sigma=0.05),
        OuterConfig(steps=3, learning_rate=0.05),
    )
    state = trainer.init()
    losses = []
    for _ in range(3):
        state, metrics = trainer.step(state)
        losses.append(float(metrics["meta_loss"]))
    theta = jax.device_get(state.theta)
    return {"meta_loss": np.array(losses), **{f"theta_{k}": v for k, v in theta.items()}}


def program_population() -> dict[str, np.ndarray]:
    """Five library programs x 2 learning rates x 2 seeds in one call."""
    from search.encoding import encode_population
    from search.interpreter import population_losses
    from search.programs_library import get_program
    from tasks import get_task

    task = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)
    names = ("sgd", "momentum", "adam", "lion", "signsgd")
    population = encode_population([get_program(n) for n in names], 16, 2)
    lrs, seeds = np.array([0.01, 0.1], np.float32), np.array([0, 3])
    losses = population_losses(task, population, lrs, seeds, 15, tile=2)
    return {f"programs_{k}": v for k, v in losses.items()}


def main() -> int:
    parser = argparse.ArgumentParser()
    distributed.add_distributed_flags(parser)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    try:
        distributed.initialize(args)
    except UserError as e:
        print(f"l2o: error: {e}", file=sys.stderr)
        return 2
    results = {**meta_training(), **program_population()}
    results["devices"] = np.array(jax.device_count())
    results["writer"] = np.array(distributed.is_writer())
    np.savez(f"{args.out}.{jax.process_index()}.npz", **results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
