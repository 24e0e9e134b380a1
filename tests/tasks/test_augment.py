import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from tasks import get_task, train
from tasks.augment import param_scales, rescale_params


@pytest.fixture(scope="module")
def task():
    return get_task("logistic_regression")


def test_scales_are_per_tensor_and_in_range(task):
    params = task.init(jax.random.key(0))
    scales = param_scales(jax.random.key(1), params, 2.0)
    logs = np.log10(np.array(jax.tree.leaves(scales)))
    assert jax.tree.structure(scales) == jax.tree.structure(params)
    assert np.all(np.abs(logs) <= 2.0) and len(set(np.round(logs, 6))) == len(logs)


def test_rescaled_task_is_the_same_problem_in_other_coordinates(task):
    key = jax.random.key(0)
    params = task.init(key)
    scales = param_scales(jax.random.key(1), params, 2.0)
    rescaled = rescale_params(task, scales)
    primed = rescaled.init(key)
    for a, b in zip(jax.tree.leaves(jax.tree.map(jnp.multiply, primed, scales)),
                    jax.tree.leaves(params), strict=True):  # fmt: skip
        np.testing.assert_allclose(a, b, rtol=1e-6)
    batch = task.sample_batch(jax.random.key(2))
    rebatch = rescaled.sample_batch(jax.random.key(2))
    loss = lambda p: task.loss(p, key, batch)[0]  # noqa: E731
    reloss = lambda p: rescaled.loss(p, key, rebatch)[0]  # noqa: E731
    np.testing.assert_allclose(reloss(primed), loss(params), rtol=1e-6)
    # Chain rule: the gradient in the new coordinates is s * g.
    g, g_primed = jax.grad(loss)(params), jax.grad(reloss)(primed)
    leaves = (jax.tree.leaves(g_primed), jax.tree.leaves(g), jax.tree.leaves(scales))
    for a, b, s in zip(*leaves, strict=True):
        np.testing.assert_allclose(a, s * b, rtol=1e-5, atol=1e-7)


def test_rescaling_changes_what_sgd_does_and_trains_under_jit(task):
    params = task.init(jax.random.key(0))
    scales = param_scales(jax.random.key(3), params, 1.5)

    @jax.jit
    def final_loss(s):
        _, metrics = train(rescale_params(task, s), optax.sgd(0.1), 100, jax.random.key(0))
        return metrics["train_loss"]

    plain = final_loss(jax.tree.map(jnp.ones_like, scales))
    _, reference = train(task, optax.sgd(0.1), 100, jax.random.key(0))
    np.testing.assert_allclose(plain, reference["train_loss"], rtol=1e-5)
    assert not np.allclose(final_loss(scales), plain, rtol=1e-3)
