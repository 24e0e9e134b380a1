"""Stress options of an evaluation: a wrongly declared step budget and rescaled parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from l2o.cli.config import UserError, parse_optimizer, parse_task
from l2o.evaluation.harness import OptimizerSpec, TaskSpec, optimizer_factory
from l2o.optimizers.celo import CeloConfig, make_celo
from l2o.optimizers.file_format import load_optimizer, save_learned
from tasks import get_task


def weight_updates(optimizer, steps, **extras):
    """`[steps, 4, 3]` updates of a matrix under a fixed gradient."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    grads = {"w": jnp.cos(jnp.arange(12.0).reshape(4, 3)), "b": jnp.full((3,), 0.1)}
    state, out = optimizer.init(params), []
    for step in range(steps):
        updates, state = optimizer.update(grads, state, params, step=step, **extras)
        out.append(np.asarray(updates["w"]))
    return np.stack(out)


def update_norms(optimizer, steps):
    return np.linalg.norm(weight_updates(optimizer, steps).reshape(steps, -1), axis=1)


def test_a_halved_declared_budget_ends_a_cosine_schedule_halfway():
    spec = OptimizerSpec("nadamw", schedule="warmup_cosine", declared_budget=0.5)
    assert spec.declared_steps(20) == 10
    make, _ = optimizer_factory(spec, num_steps=20)
    honest, _ = optimizer_factory(OptimizerSpec("nadamw", schedule="warmup_cosine"), num_steps=20)
    told, true = update_norms(make(1e-2), 20), update_norms(honest(1e-2), 20)
    assert np.all(told[:9] > 0) and np.all(told[10:] == 0)  # the schedule ended at step 10
    assert np.all(true[:19] > 0)


@pytest.fixture(scope="module")
def celo_file(tmp_path_factory):
    init_theta, _ = make_celo(CeloConfig(hidden_sizes=(4,)))
    theta = init_theta(jax.random.key(0))
    theta = jax.tree.map(lambda x: x + 0.3 * jnp.sin(jnp.arange(x.size).reshape(x.shape)), theta)
    path = tmp_path_factory.mktemp("celo") / "celo.safetensors"
    return str(save_learned(path, "celo", {"hidden_sizes": [4]}, jax.device_get(theta)))


def test_a_learned_optimizer_is_told_the_declared_budget(celo_file):
    make, default = optimizer_factory(OptimizerSpec("celo", file=celo_file, declared_budget=3.0),
                                      num_steps=10)  # fmt: skip
    told = weight_updates(make(default), 6, num_steps=10)  # the loop says 10
    truth = weight_updates(load_optimizer(celo_file), 6, num_steps=30)
    other = weight_updates(load_optimizer(celo_file), 6, num_steps=10)
    np.testing.assert_allclose(told, truth, rtol=1e-5, atol=1e-9)
    assert np.abs(told - other).max() > 1e-3 * np.abs(told).max()  # it reads the fraction


def test_a_rescaled_task_is_the_same_problem_in_other_coordinates():
    spec = TaskSpec("quadratic_k100", rescale=2.0)
    task, plain = spec.build(), get_task("quadratic_k100")
    key = jax.random.key(3)
    params, original = task.init(key), plain.init(key)
    batch = task.sampler(task.data, key, "train", 1)
    scales = batch[1]["x"]
    assert 1e-2 <= float(scales) <= 1e2 and float(scales) != 1.0
    np.testing.assert_allclose(np.asarray(params["x"]) * float(scales), original["x"], rtol=1e-5)
    loss = lambda t, p, b: t.loss(p, key, b)[0]  # noqa: E731
    plain_batch = plain.sampler(plain.data, key, "train", 1)
    np.testing.assert_allclose(loss(task, params, batch), loss(plain, original, plain_batch),
                               rtol=1e-5)  # fmt: skip
    grad = jax.grad(loss, argnums=1)(task, params, batch)["x"]
    plain_grad = jax.grad(loss, argnums=1)(plain, original, plain_batch)["x"]
    np.testing.assert_allclose(grad, float(scales) * plain_grad, rtol=1e-4)


def test_stress_options_are_checked():
    assert parse_task({"name": "quadratic_k100", "rescale": 3}, "tasks[0]").rescale == 3.0
    with pytest.raises(UserError, match=r"tasks\[0\].rescale is a log10 range"):
        parse_task({"name": "quadratic_k100", "rescale": 40}, "tasks[0]")
    assert parse_optimizer({"name": "adamw", "declared_budget": 2}, "o").declared_budget == 2.0
    with pytest.raises(UserError, match="declared_budget"):
        parse_optimizer({"name": "adamw", "declared_budget": 0}, "o")
    with pytest.raises(UserError, match="declared_budget"):
        parse_optimizer({"name": "adamw", "declared_budget": 1000}, "o")
