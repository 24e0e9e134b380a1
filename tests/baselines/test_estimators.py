"""Gradient estimators: forward gradient unbiasedness, DFA against its equations, and training."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from baselines import get_optimizer
from baselines.estimators import (
    ESTIMATORS,
    backprop,
    dfa,
    feedback_matrices,
    forward_gradient,
    get_estimator,
)
from tasks import DatasetError, UnknownNameError, get_task, train


def flat_estimates(grad_fn, task, params, batch, seed, n):
    """`[n, num_params]` estimates of the gradient at `params`, one per key."""
    keys = jax.random.split(jax.random.key(seed), n)
    grads = jax.vmap(lambda k: grad_fn(task, params, k, batch)[1])(keys)
    return jax.vmap(lambda g: ravel_pytree(g)[0])(grads)


@pytest.fixture(scope="module")
def logreg():
    """Logistic regression away from its init, with its exact gradient."""
    task = get_task("logistic_regression")
    params = jax.jit(task.init)(jax.random.key(0))
    flat, unravel = ravel_pytree(params)
    params = unravel(flat + 0.3 * jax.random.normal(jax.random.key(1), flat.shape))
    batch = task.sample_batch(jax.random.key(2))
    _, grads = jax.jit(backprop)(task, params, jax.random.key(3), batch)
    return task, params, batch, ravel_pytree(grads)[0]


def test_forward_gradient_is_unbiased_with_error_shrinking_as_one_over_sqrt_n(logreg):
    """RMS error of the n-key mean is sqrt((D + 1) ||g||^2 / n): n = 100 vs 1600 gives 4x."""
    task, params, batch, g = logreg
    D, reps = g.size, 16
    grad_fn = forward_gradient(1)
    estimate = jax.jit(
        lambda p, s, n: flat_estimates(grad_fn, task, p, batch, s, n), static_argnums=2
    )
    rms = {}
    for n in (100, 1600):
        errors = [jnp.sum((estimate(params, 10 * n + r, n).mean(0) - g) ** 2) for r in range(reps)]
        rms[n] = float(jnp.sqrt(jnp.mean(jnp.stack(errors))))
        predicted = float(jnp.sqrt((D + 1) * jnp.sum(g**2) / n))
        assert rms[n] == pytest.approx(predicted, rel=0.15)
    assert 3.4 < rms[100] / rms[1600] < 4.7


def test_forward_gradient_variance_falls_with_tangents(logreg):
    """Total variance (D + 1) ||g||^2 / k for k tangents; the mean stays the true gradient."""
    task, params, batch, g = logreg
    n = 4000
    total = {}
    for k in (1, 4):
        samples = jax.jit(lambda p, k=k: flat_estimates(forward_gradient(k), task, p, batch, k, n))(
            params
        )
        total[k] = float(jnp.sum(jnp.var(samples, axis=0)))
        assert total[k] == pytest.approx((g.size + 1) * float(jnp.sum(g**2)) / k, rel=0.15)
        mean_error = float(jnp.linalg.norm(samples.mean(0) - g))
        assert mean_error < 4 * np.sqrt(total[k] / n)
    assert 3.2 < total[1] / total[4] < 5.0


@pytest.mark.slow
def test_forward_gradient_on_a_nested_pytree_points_along_the_gradient():
    task = get_task("digits_mlp", hidden=(16,))
    params = jax.jit(task.init)(jax.random.key(0))
    batch = task.sample_batch(jax.random.key(1))
    loss, grads = jax.jit(backprop)(task, params, jax.random.key(2), batch)
    g = ravel_pytree(grads)[0]
    fg_loss, fg_grads = jax.jit(forward_gradient(2))(task, params, jax.random.key(2), batch)
    assert float(fg_loss) == pytest.approx(float(loss), rel=1e-6)
    assert jax.tree.structure(fg_grads) == jax.tree.structure(grads)
    mean = jax.jit(lambda t, p: flat_estimates(forward_gradient(5), t, p, batch, 3, 400).mean(0))
    m = mean(task, params)
    cosine = float(jnp.dot(m, g) / (jnp.linalg.norm(m) * jnp.linalg.norm(g)))
    # 2000 tangents in D = 1210 parameters: E||mean - g||^2 = (D + 1) ||g||^2 / 2000, cos ~ 0.79.
    assert cosine > 0.6


def test_forward_gradient_rejects_zero_tangents():
    with pytest.raises(ValueError, match="num_tangents"):
        forward_gradient(0)


def numpy_dfa(params, x, y, names, activation, slope, seed):
    """DFA in NumPy, transcribed from Nokland 2016, eqs. for delta_l = (e B_l) * f'(a_l)."""
    W = [np.asarray(params[n]["w"], np.float64) for n in names]
    b = [np.asarray(params[n]["b"], np.float64) for n in names]
    hs, acts = [x], []
    for Wl, bl in zip(W[:-1], b[:-1], strict=True):
        acts.append(hs[-1] @ Wl + bl)
        hs.append(activation(acts[-1]))
    logits = hs[-1] @ W[-1] + b[-1]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    e = (p - np.eye(logits.shape[1])[y]) / len(y)
    B = feedback_matrices(seed, logits.shape[1], tuple(a.shape[1] for a in acts))
    deltas = [(e @ np.asarray(Bl, np.float64)) * slope(a) for Bl, a in zip(B, acts, strict=True)]
    deltas.append(e)
    return {n: {"w": h.T @ d, "b": d.sum(0)} for n, h, d in zip(names, hs, deltas, strict=True)}


@pytest.mark.parametrize(
    ("hidden", "activation", "np_act", "np_slope"),
    [
        ((32,), "relu", lambda a: np.maximum(a, 0), lambda a: (a > 0).astype(float)),
        ((16, 12), "tanh", np.tanh, lambda a: 1 - np.tanh(a) ** 2),
    ],
)
def test_dfa_matches_its_equations(hidden, activation, np_act, np_slope):
    task = get_task("digits_mlp", hidden=hidden, activation=activation)
    params = jax.jit(task.init)(jax.random.key(0))
    batch = task.sample_batch(jax.random.key(1))
    loss, grads = jax.jit(lambda t, p, b: dfa(seed=5)(t, p, jax.random.key(2), b))(
        task, params, batch
    )
    names = task.layered.layer_names
    x = np.asarray(task.layered.inputs(batch), np.float64)
    expected = numpy_dfa(params, x, np.asarray(batch[1]), names, np_act, np_slope, seed=5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-6), grads, expected
    )
    bp_loss, bp_grads = jax.jit(backprop)(task, params, jax.random.key(2), batch)
    assert float(loss) == pytest.approx(float(bp_loss), rel=1e-6)
    # The output layer gets its true gradient.
    out = names[-1]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        grads[out],
        bp_grads[out],
    )
    assert jax.tree.structure(grads) == jax.tree.structure(bp_grads)


def test_dfa_feedback_is_fixed_and_a_linear_model_gets_the_true_gradient():
    task = get_task("digits_mlp")
    params = jax.jit(task.init)(jax.random.key(0))
    batch = task.sample_batch(jax.random.key(1))
    hidden = task.layered.layer_names[0]
    _, a = jax.jit(dfa())(task, params, jax.random.key(2), batch)
    _, b = jax.jit(dfa())(task, params, jax.random.key(3), batch)
    _, c = jax.jit(dfa(seed=1))(task, params, jax.random.key(2), batch)
    jax.tree.map(np.testing.assert_array_equal, a, b)  # not drawn from the per-step key
    assert not np.allclose(a[hidden]["w"], c[hidden]["w"])
    linear = get_task("digits_mlp", hidden=())
    params = jax.jit(linear.init)(jax.random.key(0))
    _, exact = jax.jit(backprop)(linear, params, jax.random.key(2), batch)
    _, approx = jax.jit(dfa())(linear, params, jax.random.key(2), batch)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-7), approx, exact)


def test_dfa_needs_a_layered_network():
    task = get_task("logistic_regression")
    params = jax.jit(task.init)(jax.random.key(0))
    with pytest.raises(ValueError, match="has no layered MLP; DFA needs one; use backprop"):
        dfa()(task, params, jax.random.key(1), task.sample_batch(jax.random.key(2)))
    with pytest.raises(ValueError, match="logistic_regression"):
        train(task, optax.sgd(0.1), 2, jax.random.key(0), grad_fn=dfa())


@pytest.mark.parametrize(
    ("estimator", "optimizer", "learning_rate"),
    [("backprop", "momentum", 0.05), ("forward", "sgd", 0.002), ("dfa", "adam", 0.01)],
)
def test_estimators_plug_into_any_optimizer(estimator, optimizer, learning_rate):
    """Each estimator with a different optimizer from the registry: same bits, loss goes down."""
    task = get_task("digits_mlp", hidden=(16,), batch_size=128)
    opt = get_optimizer(optimizer, learning_rate=learning_rate)
    grad_fn = get_estimator(estimator)

    @jax.jit
    def run(task, key):
        state, metrics = train(task, opt, 150, key, grad_fn=grad_fn)
        return metrics["train_loss"], task.evaluate(state.params, key, "valid")["loss"]

    losses, valid_loss = run(task, jax.random.key(0))
    again, _ = run(task, jax.random.key(0))
    np.testing.assert_array_equal(losses, again)  # the same seed gives the same bits
    assert np.isfinite(losses).all()
    assert float(valid_loss) < float(losses[:10].mean())


def test_forward_gradient_under_vmap_over_keys_equals_a_loop():
    task = get_task("logistic_regression", batch_size=64)
    grad_fn = forward_gradient(2)

    def final_loss(task, key):
        return train(task, optax.adam(0.01), 20, key, grad_fn=grad_fn)[1]["train_loss"][-1]

    keys = jax.random.split(jax.random.key(0), 3)
    batched = jax.jit(jax.vmap(final_loss, in_axes=(None, 0)))(task, keys)
    loop = jax.jit(final_loss)
    np.testing.assert_allclose(batched, [float(loop(task, k)) for k in keys], rtol=1e-5)


def test_get_estimator():
    assert get_estimator("backprop") is backprop
    assert set(ESTIMATORS) == {"backprop", "forward", "dfa"}
    with pytest.raises(UnknownNameError, match="valid estimators: backprop, dfa, forward"):
        get_estimator("feedback_alignment")
    with pytest.raises(UnknownNameError, match="num_tangent"):
        get_estimator("forward", num_tangent=3)


def accuracy_after(task, optimizer, steps, grad_fn, seed=0):
    """Test accuracy after a jitted `train` run; the task is an argument, not a constant."""

    @jax.jit
    def run(task, key):
        state, _ = train(task, optimizer, steps, key, grad_fn=grad_fn)
        return task.evaluate(state.params, jax.random.key(99), "test")["accuracy"]

    return float(run(task, jax.random.key(seed)))


@pytest.mark.slow
def test_dfa_trains_an_mnist_mlp():
    """Measured: 784-128-10 ReLU, Adam 3e-3, batch 128, 1000 steps: 93.7-94.6% over 5 seeds
    (93.7% with seed 0); backprop with the same settings: 96.6-96.9%."""
    try:
        task = get_task("mnist_mlp")
    except DatasetError as err:
        pytest.skip(str(err))
    assert accuracy_after(task, optax.adam(3e-3), 1000, dfa()) >= 0.90


@pytest.mark.slow
def test_dfa_trains_a_digits_mlp():
    """Measured (seed 0, shuffled digits split): 64-128-10 ReLU, Adam 3e-3, batch 64, 2000
    steps: 98.6% (backprop: 98.8%)."""
    task = get_task("digits_mlp", hidden=(128,))
    assert accuracy_after(task, optax.adam(3e-3), 2000, dfa()) >= 0.97


@pytest.mark.slow
def test_forward_gradient_trains_a_digits_mlp():
    """Measured (seed 0): 64-32-10 ReLU, 8 tangents, Adam with cosine decay from 3e-3, batch 64,
    5000 steps: 96.4%; 4 tangents and 3000 steps: 90.2%."""
    task = get_task("digits_mlp")
    optimizer = optax.adam(optax.cosine_decay_schedule(3e-3, 5000))
    assert accuracy_after(task, optimizer, 5000, forward_gradient(8)) >= 0.90
