"""Run by `tests/test_multidevice.py` with 4 host CPU devices (`XLA_FLAGS` must be set before JAX
is imported): each sharded computation on a mesh of all 4 devices and on a mesh of 1 device.
Saves `NAME/4` and `NAME/1` arrays to the .npz file named by the first argument.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from l2o.meta.estimators import EstimatorConfig
from l2o.meta.objective import MetaObjective
from l2o.meta.trainer import make_meta_trainer
from l2o.meta.types import OuterConfig
from search.encoding import encode_population
from search.interpreter import population_losses
from search.programs_library import get_program
from search.sweep import population_sweep
from tasks import backprop, get_task, train
from tasks.sharding import data_parallel, device_mesh

TASK = get_task("logistic_regression", num_examples=64, dim=8, batch_size=16)


def sweep(mesh) -> dict[str, np.ndarray]:
    """3 learning rates x 2 seeds of Adam (6 runs, padded to 8 on 4 devices)."""
    lrs = np.array([0.01, 0.05, 0.2], np.float32)
    metrics = population_sweep(
        TASK, lambda m: optax.adam(m["learning_rate"]), {"learning_rate": lrs}, np.arange(2), 30,
        eval_every=10, mesh=mesh,
    )  # fmt: skip
    return {"train_loss": metrics["train_loss"], "valid_loss": metrics["valid_loss"]}


def programs(mesh) -> dict[str, np.ndarray]:
    """Five library programs (padded to 8) x 2 learning rates x 2 seeds."""
    names = ("sgd", "momentum", "adam", "lion", "signsgd")
    population = encode_population([get_program(n) for n in names], 16, 2)
    lrs, seeds = np.array([0.01, 0.1], np.float32), np.array([0, 3])
    return population_losses(TASK, population, lrs, seeds, 15, tile=2, mesh=mesh)


def learnable_sgd(theta):
    lr = jnp.exp(theta["log_lr"])
    return optax.with_extra_args_support(optax.sgd(lr, momentum=jax.nn.sigmoid(theta["m"])))


def meta(mesh, estimator: str) -> dict[str, np.ndarray]:
    """Two outer steps with 3 tasks x 2 antithetic pairs."""
    trainer = make_meta_trainer(
        [TASK],
        lambda key: {"log_lr": jnp.log(jnp.float32(0.05)), "m": jnp.float32(0.0)},
        learnable_sgd,
        MetaObjective(horizon=20, truncation=5),
        EstimatorConfig(estimator, num_tasks=3, num_pairs=2, sigma=0.05),
        OuterConfig(steps=2, learning_rate=0.05),
        mesh=mesh,
    )
    state = trainer.init()
    losses = []
    for _ in range(2):
        state, metrics = trainer.step(state)
        losses.append(metrics["meta_loss"])
    leaves = jax.tree.leaves(jax.device_get(state.theta))
    return {"meta_loss": np.array(losses), "theta": np.array(leaves)}


def data_parallel_curves() -> dict[str, np.ndarray]:
    """Adam on the digits MLP, batch 64: the batch split over 4 devices vs one device."""
    task = get_task("digits_mlp", batch_size=64)
    optimizer = optax.adam(3e-3)

    def compiled(grad_fn):
        fn = jax.jit(lambda t, k: train(t, optimizer, 40, k, grad_fn=grad_fn, eval_every=20)[1])
        return fn.lower(task, jax.random.key(0)).compile()

    sharded = compiled(data_parallel(device_mesh()))
    curves = jax.device_get(sharded(task, jax.random.key(0)))
    reference = jax.device_get(compiled(backprop)(task, jax.random.key(0)))
    hlo = sharded.as_text()
    try:  # a batch of 30 does not split over 4 devices
        jax.jit(lambda t, k: train(t, optimizer, 2, k, grad_fn=data_parallel())[1])(
            task.replace(batch_size=30), jax.random.key(0)
        )
        indivisible = ""
    except ValueError as e:
        indivisible = str(e)
    return {
        "train_loss/4": curves["train_loss"],
        "train_loss/1": reference["train_loss"],
        "test_loss/4": curves["test_loss"],
        "test_loss/1": reference["test_loss"],
        "all_reduces": np.array(hlo.count("all-reduce-start") + hlo.count("all-reduce(")),
        "indivisible_error": np.array(indivisible),
    }


def main(path: str) -> None:
    out = {"devices": np.array(jax.device_count())}
    meshes = {"4": device_mesh(), "1": device_mesh(jax.devices()[:1])}
    for size, mesh in meshes.items():
        parts = {
            "sweep": sweep(mesh),
            "programs": programs(mesh),
            "pes": meta(mesh, "pes"),
            "tbptt": meta(mesh, "tbptt"),
        }
        for name, arrays in parts.items():
            for key, value in arrays.items():
                out[f"{name}_{key}/{size}"] = np.asarray(value)
    out.update({f"data_parallel_{k}": v for k, v in data_parallel_curves().items()})
    np.savez(path, **out)


if __name__ == "__main__":
    main(sys.argv[1])
