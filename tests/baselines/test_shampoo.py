"""Shampoo: the inverse roots against float64 eigendecompositions, the blocked statistics and 50
steps of the whole update against a NumPy transcription, and Adam on vectors (the optimizer
contract is checked with every registry entry in tests/baselines/test_contract.py)."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import tasks
from baselines.adam import adam
from baselines.shampoo import (
    block_layout,
    from_blocks,
    inverse_roots,
    matrix_inverse_root,
    shampoo,
    to_blocks,
)

SHAPES = {"w": (6, 10), "k": (2, 2, 3, 5), "b": (10,)}  # "k" is preconditioned as (12, 5)


def random_spd(rng, n, condition, batch=()):
    """Symmetric positive definite matrices [*batch, n, n] with eigenvalues from 1 to condition."""
    Q, _ = np.linalg.qr(rng.normal(size=(*batch, n, n)))
    w = np.logspace(0, np.log10(condition), n)
    return (Q * w) @ np.swapaxes(Q, -1, -2)


def numpy_inverse_root(M, p, eps):
    """(M + eps lambda_max I)^(-1/p) in float64."""
    w, V = np.linalg.eigh(M)
    w = np.maximum(w, 0.0) + max(eps * w[-1], float(np.finfo(np.float32).tiny))
    return (V * w ** (-1.0 / p)) @ V.T


# --- Inverse roots and blocks -----------------------------------------------------------------


@pytest.mark.parametrize("p", [2, 4])
def test_matrix_inverse_root_matches_a_float64_eigendecomposition(p):
    rng = np.random.default_rng(p)
    M = random_spd(rng, 8, 1e3, batch=(2, 3))
    root = np.asarray(matrix_inverse_root(jnp.asarray(M, jnp.float32), p))
    for i in range(2):
        for j in range(3):
            want = numpy_inverse_root(M[i, j], p, 0.0)
            np.testing.assert_allclose(root[i, j], want, atol=2e-5 * np.abs(want).max())
            # the defining property: the root to the power p inverts M
            power = np.linalg.matrix_power(root[i, j].astype(np.float64), p)
            np.testing.assert_allclose(power @ M[i, j], np.eye(8), atol=2e-4)

    # A singular PSD matrix (rank 3 of 6): the damping eps * lambda_max makes it invertible.
    X = rng.normal(size=(6, 3))
    S = X @ X.T
    got = np.asarray(matrix_inverse_root(jnp.asarray(S, jnp.float32), p, eps=1e-3))
    want = numpy_inverse_root(S, p, 1e-3)
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max())
    lam_max = np.linalg.eigvalsh(S)[-1]
    exact = np.linalg.matrix_power(np.linalg.inv(S + 1e-3 * lam_max * np.eye(6)), 1)
    np.testing.assert_allclose(np.linalg.matrix_power(want, p), exact, rtol=1e-8, atol=1e-10)
    assert np.all(np.isfinite(np.asarray(matrix_inverse_root(jnp.zeros((3, 3)), p, 1e-6))))

    # Several sizes at once (zero-padded to the largest): each root as on its own.
    stats = [jnp.asarray(M, jnp.float32), jnp.asarray(S, jnp.float32), jnp.zeros((1, 2, 2))]
    for got, M_k in zip(inverse_roots(stats, p, 1e-3), stats, strict=True):
        want = np.asarray(matrix_inverse_root(M_k, p, 1e-3))
        assert got.shape == M_k.shape
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def test_blocks_cover_the_matrix_with_zero_padding_and_round_trip():
    assert block_layout(784, 128, 128) == (7, 1, 128, 128)
    assert block_layout(3, 2, 128) == (1, 1, 3, 2)
    assert block_layout(6, 10, 4) == (2, 3, 4, 4)
    x = jnp.arange(60.0).reshape(6, 10)
    b = to_blocks(x, 4)
    assert b.shape == (2, 3, 4, 4)
    np.testing.assert_array_equal(b[1, 2, :2, :2], x[4:6, 8:10])
    np.testing.assert_array_equal(b[1, 2, 2:], 0.0)  # padding
    np.testing.assert_array_equal(b[0, 1], x[0:4, 4:8])
    np.testing.assert_array_equal(from_blocks(b, 6, 10), x)


# --- Against a NumPy transcription --------------------------------------------------------------


def numpy_shampoo(theta, grads, lr, b1, b2, eps, matrix_eps, block_size, every, start, graft, wd):
    """`shampoo`'s docstring transcribed with loops over (uneven, unpadded) blocks, float64.

    Returns the statistics per (leaf, block) and the params after each step.
    """
    theta = {k: np.asarray(v, np.float64) for k, v in theta.items()}
    m = {k: np.zeros_like(v) for k, v in theta.items()}
    v = {k: np.zeros_like(x) for k, x in theta.items()}
    w2 = 1.0 if b2 == 1 else 1.0 - b2
    stats, roots, out = {}, {}, []
    for t, g in enumerate(grads, start=1):
        step = {}
        for k in theta:
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = v[k] + g[k] ** 2 if graft == "adagrad" else b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1**t)
            v_hat = v[k] if graft == "adagrad" else v[k] / (1 - b2**t)
            step[k] = m_hat / (np.sqrt(v_hat) + eps)  # the graft (Adam's step)
            if g[k].ndim < 2:
                continue
            rows, cols = int(np.prod(g[k].shape[:-1])), g[k].shape[-1]
            G, M = g[k].reshape(rows, cols), m_hat.reshape(rows, cols)
            A = step[k].reshape(rows, cols)
            U = np.zeros_like(A)
            bm, bn = min(rows, block_size), min(cols, block_size)
            for r0 in range(0, rows, bm):
                for c0 in range(0, cols, bn):
                    block = (k, r0 // bm, c0 // bn)
                    r, c = slice(r0, r0 + bm), slice(c0, c0 + bn)
                    Gb = G[r, c]
                    L, R = stats.get(block, (0.0, 0.0))
                    L = b2 * L + w2 * Gb @ Gb.T
                    R = b2 * R + w2 * Gb.T @ Gb
                    stats[block] = (L, R)
                    if t >= start and (t - start) % every == 0:
                        roots[block] = (
                            numpy_inverse_root(L, 4, matrix_eps),
                            numpy_inverse_root(R, 4, matrix_eps),
                        )
                    if t >= start:
                        S = roots[block][0] @ M[r, c] @ roots[block][1]
                        U[r, c] = S * np.linalg.norm(A[r, c]) / np.linalg.norm(S)
            if t >= start:
                step[k] = U.reshape(g[k].shape)
        theta = {k: x - lr * (step[k] + wd * x) for k, x in theta.items()}
        out.append(theta)
    return stats, out


def gradients(num_steps, seed=1):
    """A fixed stream of gradients with rows and columns of very different scales."""
    rng = np.random.default_rng(seed)
    grads = []
    for _ in range(num_steps):
        g = {}
        for k, shape in SHAPES.items():
            z = rng.normal(size=shape)
            if len(shape) >= 2:
                z = z * np.logspace(-1, 0, shape[-1]) * np.logspace(0, 1, shape[-2])[:, None]
            g[k] = z
        grads.append(g)
    return grads


HPARAMS = [
    dict(b2=0.99, graft="rmsprop", weight_decay=0.0),
    dict(b2=1.0, graft="adagrad", weight_decay=0.01),
]


@pytest.mark.parametrize("hparams", HPARAMS, ids=["ema_rmsprop", "sum_adagrad_decay"])
def test_shampoo_matches_a_numpy_transcription_for_50_steps(hparams):
    num_steps = 50
    fixed = dict(learning_rate=0.01, b1=0.9, eps=1e-8, matrix_eps=1e-6, block_size=4)
    schedule = dict(precondition_every=4, start_preconditioning_step=5)
    opt = shampoo(**fixed, **schedule, **hparams)
    rng = np.random.default_rng(0)
    theta = {k: rng.normal(size=s).astype(np.float32) for k, s in SHAPES.items()}
    grads = gradients(num_steps)

    def step(carry, g):
        params, state = carry
        updates, state = opt.update(g, state, params)
        params = optax.apply_updates(params, updates)
        return (params, state), params

    params = {k: jnp.asarray(v) for k, v in theta.items()}
    stacked = {k: jnp.asarray(np.stack([g[k] for g in grads]), jnp.float32) for k in SHAPES}
    (_, state), trajectory = jax.jit(lambda p, gs: jax.lax.scan(step, (p, opt.init(p)), gs))(
        params, stacked
    )

    stats, expected = numpy_shampoo(
        theta,
        grads,
        fixed["learning_rate"],
        fixed["b1"],
        hparams["b2"],
        fixed["eps"],
        fixed["matrix_eps"],
        fixed["block_size"],
        schedule["precondition_every"],
        schedule["start_preconditioning_step"],
        hparams["graft"],
        hparams["weight_decay"],
    )
    # (a) the statistics of every (unpadded) block after the last step
    factors = dict(zip(sorted(SHAPES), state[0].factors, strict=True))  # jax.tree.leaves order
    assert factors["b"] is None
    for (k, i, j), (L, R) in stats.items():
        got_L = np.asarray(factors[k].L[i, j])[: L.shape[0], : L.shape[0]]
        got_R = np.asarray(factors[k].R[i, j])[: R.shape[0], : R.shape[0]]
        np.testing.assert_allclose(got_L, L, rtol=1e-5, atol=1e-5 * np.abs(L).max())
        np.testing.assert_allclose(got_R, R, rtol=1e-5, atol=1e-5 * np.abs(R).max())
    # (c) the params after every step (float32 roots: a few 1e-5 of the step size)
    for t, want in enumerate(expected):
        for k in SHAPES:
            got = np.asarray(trajectory[k][t], np.float64)
            step_size = np.abs(want[k] - (expected[t - 1][k] if t else theta[k])).max()
            np.testing.assert_allclose(got, want[k], rtol=0, atol=1e-3 * step_size + 1e-6)
    assert int(state[0].count) == num_steps


def test_vectors_and_scalars_follow_adam_and_matrices_do_not():
    params = {"v": jnp.ones(5), "s": jnp.ones(()), "w": jnp.ones((4, 3))}
    opt = shampoo(1e-2, start_preconditioning_step=1, precondition_every=1)
    reference = adam(1e-2)

    def run(optimizer):
        def step(carry, t):
            p, s = carry
            g = jax.tree.map(lambda x: jax.random.normal(jax.random.fold_in(jax.random.key(0), t),
                                                         x.shape), p)  # fmt: skip
            u, s = optimizer.update(g, s, p)
            return (optax.apply_updates(p, u), s), u

        return jax.lax.scan(step, (params, optimizer.init(params)), jnp.arange(20))[1]

    ours, theirs = jax.jit(lambda: (run(opt), run(reference)))()
    np.testing.assert_allclose(ours["v"], theirs["v"], rtol=1e-6)
    np.testing.assert_allclose(ours["s"], theirs["s"], rtol=1e-6)
    assert not np.allclose(ours["w"][1:], theirs["w"][1:], rtol=1e-2)
    # grafted: each matrix step has Adam's norm
    np.testing.assert_allclose(
        np.linalg.norm(ours["w"].reshape(20, -1), axis=1),
        np.linalg.norm(theirs["w"].reshape(20, -1), axis=1),
        rtol=1e-5,
    )


def test_shampoo_preconditions_a_kronecker_structured_problem_better_than_adam():
    # f(W) = 1/2 ||A W B||_F^2 with A, B of condition number 30 in random bases: the Hessian is
    # (B B^T) kron (A^T A), so the gradients' row and column covariances (Shampoo's L and R) see
    # its two factors, while a diagonal preconditioner sees neither.
    rng = np.random.default_rng(0)
    A = jnp.asarray(random_spd(rng, 8, 30.0), jnp.float32)
    B = jnp.asarray(random_spd(rng, 6, 30.0), jnp.float32)
    task = tasks.Task(
        name="kronecker_quadratic",
        init=lambda key: {"w": jax.random.normal(key, (8, 6))},
        loss=lambda p, key, batch: (0.5 * jnp.sum((A @ p["w"] @ B) ** 2), {}),
        sampler=lambda *_: (),
    )

    def best_reduction(make_optimizer, lrs):
        """The smallest last/first loss ratio over peak rates `lrs` of a cosine schedule."""

        def reduction(lr):
            opt = make_optimizer(optax.cosine_decay_schedule(lr, 300))
            losses = tasks.train(task, opt, 300, jax.random.key(0))[1]["train_loss"]
            return losses[-1] / losses[0]

        return jnp.min(jax.vmap(reduction)(lrs))

    ours, theirs = jax.jit(
        lambda lrs: (
            best_reduction(
                lambda lr: shampoo(lr, start_preconditioning_step=1, precondition_every=1), lrs
            ),
            best_reduction(adam, lrs),
        )
    )(jnp.array([0.03, 0.1, 0.3]))
    ours, theirs = float(ours), float(theirs)
    assert ours < 0.05 * theirs, (ours, theirs)


def test_every_hyperparameter_has_a_default_and_bad_ones_raise():
    for p in inspect.signature(shampoo).parameters.values():
        assert p.default is not inspect.Parameter.empty, p.name
    with pytest.raises(ValueError, match="graft"):
        shampoo(graft="sgd")
    with pytest.raises(ValueError, match="adagrad"):
        shampoo(b2=1.0)
