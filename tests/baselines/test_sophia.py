"""Sophia: its Hessian estimators on problems with exact Hessians, optax.contrib.sophia's numbers
in optax's configuration, and a NumPy transcription of the paper's Algorithm 3 for ours (the
optimizer contract is checked with every registry entry in tests/baselines/test_contract.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from baselines.sophia import (
    gauss_newton_bartlett,
    hutchinson_diagonal,
    probe_like,
    sophia,
)

# Where our defaults differ from optax.contrib.sophia's, on purpose (see `sophia`'s docstring).
OURS = dict(b1=0.965, b2=0.99, gamma=0.01, eps=1e-12, weight_decay=1e-4, update_every=10)
OPTAX = dict(b1=0.965, b2=0.99, gamma=0.01, eps=1e-8, weight_decay=1e-4, update_interval=10)
OPTAX_CONFIGURATION = dict(
    eps=1e-8, probe="rademacher", bias_correction=True, delay_hessian=True, seed=0
)


def dense_quadratic(dim=12, seed=0):
    """f(x) = 1/2 x'Ax + b'x with a dense SPD A: the JAX function and the NumPy A."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(dim, dim))
    A = M @ M.T / dim + np.eye(dim)
    b = rng.normal(size=dim)
    A_j, b_j = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)
    return (lambda p: 0.5 * p["x"] @ (A_j @ p["x"]) + b_j @ p["x"]), A


# --- The estimators ---------------------------------------------------------------------------


def test_hutchinson_is_unbiased_for_the_exact_hessian_diagonal():
    f, A = dense_quadratic()
    params = {"x": jnp.asarray(np.random.default_rng(1).normal(size=12), jnp.float32)}
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)

    @jax.jit
    def estimates(keys):
        return {
            probe: jax.vmap(lambda k, probe=probe: hutchinson_diagonal(f, params, k, probe))(keys)
            for probe in ("gaussian", "rademacher")
        }

    for probe, est in estimates(keys).items():
        est_NxD = np.asarray(est["x"], np.float64)
        # Var of u_i (Hu)_i: sum_{j != i} H_ij^2, plus 2 H_ii^2 for Gaussian u.
        variance = (A**2).sum(axis=1) - np.diag(A) ** 2
        variance += 2 * np.diag(A) ** 2 if probe == "gaussian" else 0.0
        error = np.abs(est_NxD.mean(0) - np.diag(A))
        np.testing.assert_array_less(error, 4.5 * np.sqrt(variance / n), err_msg=probe)
        np.testing.assert_allclose(est_NxD.var(0), variance, rtol=0.15, err_msg=probe)


def test_gauss_newton_bartlett_is_unbiased_and_is_what_sophia_g_uses():
    # Softmax regression: GN diagonal (1/B) sum_b x_bi^2 p_bc (1 - p_bc) for W_ic, and
    # (1/B) sum_b p_bc (1 - p_bc) for the bias b_c.
    rng = np.random.default_rng(0)
    x_BxD = rng.normal(size=(16, 5))
    params = {"w": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32), "b": jnp.zeros(3)}
    x = jnp.asarray(x_BxD, jnp.float32)

    def logits_fn(p):
        return x @ p["w"] + p["b"][None, :]

    p_BxC = np.asarray(jax.nn.softmax(logits_fn(params)), np.float64)
    exact = {"w": (x_BxD**2).T @ (p_BxC * (1 - p_BxC)) / 16, "b": (p_BxC * (1 - p_BxC)).mean(0)}
    n = 4000
    keys = jax.random.split(jax.random.key(0), n)
    opt = sophia(estimator="gnb", seed=2)

    @jax.jit
    def estimates_and_first_state(keys):
        est = jax.vmap(lambda k: gauss_newton_bartlett(logits_fn, params, k))(keys)
        _, state = opt.update(params, opt.init(params), params, logits_fn=logits_fn)
        first_key = jax.random.split(jax.random.key(2))[1]  # the state's key after one split
        return est, state[0].hessian, gauss_newton_bartlett(logits_fn, params, first_key)

    est, hessian, h_hat = estimates_and_first_state(keys)
    for name in ("w", "b"):
        e = np.asarray(est[name], np.float64)
        np.testing.assert_array_less(np.abs(e.mean(0) - exact[name]), 4.5 * e.std(0) / np.sqrt(n))
        assert np.all(e >= 0)

    # Sophia-G: the first update puts (1 - b2) times the estimate of its first key in the state.
    for a, b in zip(jax.tree.leaves(hessian), jax.tree.leaves(h_hat), strict=True):
        np.testing.assert_allclose(a, (1 - OURS["b2"]) * b, rtol=1e-6)


# --- Against optax.contrib.sophia -------------------------------------------------------------


def test_defaults_are_the_papers_and_optax_differs_where_documented():
    ours = inspect.signature(sophia).parameters
    theirs = inspect.signature(optax.contrib.sophia).parameters
    assert {k: ours[k].default for k in OURS} == OURS
    assert {k: theirs[k].default for k in OPTAX} == OPTAX
    assert ours["estimator"].default == "hutchinson" and ours["probe"].default == "gaussian"
    assert not ours["bias_correction"].default and not ours["delay_hessian"].default
    for p in ours.values():
        assert p.default is not inspect.Parameter.empty, p.name


def quartic(curvature_N, c=0.5):
    """f(x) = 1/2 sum d x^2 + c/4 sum x^4 over (b, w) flattened: Hessian diag(d + 3 c x^2)."""

    def flat(p):
        return jnp.concatenate([p["b"].ravel(), p["w"].ravel()])

    d = jnp.asarray(curvature_N, jnp.float32)
    return flat, lambda p: 0.5 * jnp.sum(d * flat(p) ** 2) + 0.25 * c * jnp.sum(flat(p) ** 4)


def test_matches_optax_for_100_steps_on_random_gradients():
    curvature = np.logspace(1, 3, 17)
    _, f = quartic(curvature)
    params = {"b": jnp.ones(5), "w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}

    def trajectory(opt):
        def step(carry, t):
            p, s = carry
            key = jax.random.fold_in(jax.random.key(5), t)
            g = jax.tree.map(lambda x, k: 0.1 * jax.random.normal(k, x.shape), p,
                             optax.tree.split_key_like(key, p))  # fmt: skip
            u, s = opt.update(g, s, p, obj_fn=f)
            return (optax.apply_updates(p, u), s), u

        return jax.lax.scan(step, (params, opt.init(params)), jnp.arange(100))[1]

    lr = 0.01
    ours, theirs = sophia(lr, **OPTAX_CONFIGURATION), optax.contrib.sophia(lr)
    ours, theirs = jax.jit(lambda: (trajectory(ours), trajectory(theirs)))()
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(theirs), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6 * lr)
    # both regimes occur: clipped steps (|step| = lr) and curvature-scaled ones
    clipped = np.mean([np.mean(np.abs(np.asarray(u)) > 0.99 * lr) for u in jax.tree.leaves(ours)])
    assert 0.1 < clipped < 0.9, clipped


def test_matches_optax_in_a_training_run():
    task = tasks.get_task("logistic_regression")  # mini-batches: obj_fn changes every step

    ours = sophia(3e-3, **OPTAX_CONFIGURATION, update_every=5)
    theirs = optax.contrib.sophia(3e-3, update_interval=5)

    @jax.jit
    def runs(key):
        return [tasks.train(task, opt, 30, key) for opt in (ours, theirs)]

    (state, metrics), (ref_state, ref_metrics) = runs(jax.random.key(0))
    params, losses = state.params, metrics["train_loss"]
    ref_params, ref_losses = ref_state.params, ref_metrics["train_loss"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert float(losses[-1]) < float(losses[0])


# --- The paper's Algorithm 3 --------------------------------------------------------------------


def numpy_sophia(theta, grad_fn, hess_fn, probes, num_steps, lr, b1, b2, gamma, eps, k, wd):
    """Algorithm 3 of Liu et al. (Sophia-H) transcribed: the params after each step (float64)."""
    m = np.zeros_like(theta)
    h = np.zeros_like(theta)
    out = []
    for t in range(1, num_steps + 1):
        g = grad_fn(theta)
        m = b1 * m + (1 - b1) * g
        if t % k == 1 or k == 1:
            u = probes[(t - 1) // k]
            h = b2 * h + (1 - b2) * u * (hess_fn(theta) @ u)
        theta = theta - lr * wd * theta  # decoupled weight decay first, then the clipped step
        theta = theta - lr * np.clip(m / np.maximum(gamma * h, eps), -1, 1)
        out.append(theta)
    return out


def test_default_sophia_matches_the_papers_algorithm():
    num_steps, k = 40, 4
    curvature = np.logspace(0, 2, 17)
    flat, f = quartic(curvature, c=2.0)
    params = {"b": jnp.full(5, 0.5), "w": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)}
    hp = dict(learning_rate=0.02, weight_decay=0.1, update_every=k, seed=3)
    opt = sophia(**hp)

    # The keys of the probes the optimizer draws: its key is split once at each refresh.
    key, probe_keys = jax.random.key(hp["seed"]), []
    for _ in range(-(-num_steps // k)):
        key, probe_key = jax.random.split(key)
        probe_keys.append(probe_key)

    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(f)(p), s, p, obj_fn=f)
        p = optax.apply_updates(p, u)
        return (p, s), flat(p)

    trajectory, probes_RxN = jax.jit(
        lambda p, keys: (
            jax.lax.scan(step, (p, opt.init(p)), None, num_steps)[1],
            jax.vmap(lambda key: flat(probe_like(key, p, "gaussian")))(keys),
        )
    )(params, jnp.stack(probe_keys))
    expected = numpy_sophia(
        np.asarray(flat(params), np.float64),
        lambda x: curvature * x + 2.0 * x**3,
        lambda x: np.diag(curvature + 6.0 * x**2),
        [np.asarray(u, np.float64) for u in probes_RxN],
        num_steps,
        hp["learning_rate"],
        OURS["b1"],
        OURS["b2"],
        OURS["gamma"],
        OURS["eps"],
        k,
        hp["weight_decay"],
    )
    # Unclipped, a step is lr / (gamma h) times the gradient, with h (an EMA from zero, not bias
    # corrected) still far below H: float32 drift of ~1e-7 in the params grows to ~5e-6.
    np.testing.assert_allclose(
        np.asarray(trajectory), np.stack(expected), rtol=1e-5, atol=1e-3 * hp["learning_rate"]
    )


def test_missing_extras_and_unknown_names_raise_clear_errors():
    params = {"x": jnp.ones(3)}
    with pytest.raises(ValueError, match="obj_fn"):
        opt = sophia()
        opt.update(params, opt.init(params), params)
    with pytest.raises(ValueError, match="logits_fn"):
        opt = sophia(estimator="gnb")
        opt.update(params, opt.init(params), params, obj_fn=lambda p: jnp.sum(p["x"]))
    with pytest.raises(ValueError, match="hutchinson, gnb"):
        sophia(estimator="newton")
    with pytest.raises(ValueError, match="gaussian, rademacher"):
        sophia(probe="uniform")
