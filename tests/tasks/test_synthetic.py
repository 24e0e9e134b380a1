"""Synthetic problems have the structure their docstrings promise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tasks import synthetic


def test_quadratic_condition_number_and_minimiser():
    task = synthetic.quadratic(dim=8, condition_number=1e3, seed=1)
    x = task.init(jax.random.key(0))
    hessian = jax.hessian(lambda p: task.loss(p, None, ())[0])(x)["x"]["x"]
    eigenvalues = np.linalg.eigvalsh(np.asarray(hessian, np.float64))
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(1e3, rel=1e-3)
    # Newton's step from anywhere lands on the minimiser, where the loss is 0.
    g = jax.grad(lambda p: task.loss(p, None, ())[0])(x)["x"]
    x_star = {"x": x["x"] - jnp.linalg.solve(hessian, g)}
    assert float(task.loss(x_star, None, ())[0]) < 1e-6


def test_noisy_quadratic_gradient_noise_is_curvature_over_batch():
    dim, batch = 5, 8
    task = synthetic.noisy_quadratic(dim=dim, batch_size=batch)
    params = {"x": jnp.ones(dim)}
    grad = jax.grad(lambda p, c: task.loss(p, None, c)[0])

    def sample(key):
        return grad(params, task.sample_batch(key, "train"))["x"]

    grads = jax.vmap(sample)(jax.random.split(jax.random.key(0), 20000))
    h = 1.0 / np.arange(1, dim + 1)
    np.testing.assert_allclose(grads.mean(0), h, atol=0.02)  # unbiased: E g = H x
    np.testing.assert_allclose(grads.var(0), h / batch, rtol=0.05)  # Cov = H / B
    clean = task.evaluate(params, jax.random.key(1), "test")["loss"]
    assert float(clean) == pytest.approx(0.5 * h.sum(), rel=1e-5)


def test_rosenbrock_minimum_and_start():
    task = synthetic.rosenbrock(dim=4, init_noise=0.0)
    assert float(task.loss({"x": jnp.ones(4)}, None, ())[0]) == 0.0
    np.testing.assert_allclose(task.init(jax.random.key(0))["x"], [-1.2, 1.0, -1.2, 1.0])
    with pytest.raises(ValueError):
        synthetic.rosenbrock(dim=1)


def test_linear_regression_least_squares_solution_is_the_minimum():
    task = synthetic.linear_regression(num_examples=256, dim=4, noise=0.1)
    x, y = task.sample_batch(jax.random.key(0), "train")
    assert x.shape == (256, 4)
    design = np.c_[np.asarray(x, np.float64), np.ones(len(x))]
    solution, *_ = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)
    best = {"w": jnp.asarray(solution[:4], jnp.float32), "b": jnp.asarray(solution[4], jnp.float32)}
    loss = float(task.loss(best, None, (x, y))[0])
    assert loss == pytest.approx(0.5 * 0.1**2, rel=0.25)
    grad = jax.grad(lambda p: task.loss(p, None, (x, y))[0])(best)
    assert max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grad)) < 1e-4


def test_logistic_regression_labels_follow_the_model():
    task = synthetic.logistic_regression(num_examples=512, dim=8)
    _, y = task.sample_batch(jax.random.key(0), "test")
    assert set(np.unique(np.asarray(y))) == {0.0, 1.0}
    loss, aux = task.loss(task.init(jax.random.key(0)), None, task.sample_batch(None, "test"))
    assert 0.3 < float(aux["accuracy"]) < 0.7  # near chance before training


def test_ill_conditioned_least_squares_has_its_condition_number_in_rotated_features():
    task = synthetic.ill_conditioned_least_squares(num_examples=4096, dim=8, condition=1e3)
    x, y = task.data["train"]
    covariance = np.cov(np.asarray(x, np.float64), rowvar=False)
    eigenvalues = np.linalg.eigvalsh(covariance)
    assert eigenvalues.max() / eigenvalues.min() == pytest.approx(1e3, rel=0.15)
    # Rotated: no coordinate is an eigendirection, so the covariance is far from diagonal.
    off_diagonal = covariance - np.diag(np.diag(covariance))
    assert np.abs(off_diagonal).max() > 0.05 * np.abs(np.diag(covariance)).max()
    # The least-squares solution fits the labels down to the noise (0.1^2 / 2).
    design = np.c_[np.asarray(x, np.float64), np.ones(len(x))]
    solution = np.linalg.lstsq(design, np.asarray(y, np.float64), rcond=None)[0]
    params = {"w": jnp.asarray(solution[:-1], jnp.float32), "b": jnp.asarray(solution[-1])}
    loss = float(task.loss(params, None, task.data["test"])[0])
    assert loss == pytest.approx(0.005, rel=0.2)
    assert float(task.loss(task.init(jax.random.key(0)), None, task.data["test"])[0]) > 0.1


def test_ill_conditioned_least_squares_rejects_a_condition_below_one():
    with pytest.raises(ValueError, match="condition"):
        synthetic.ill_conditioned_least_squares(condition=0.5)
