"""AdaHessian, Newton and L-BFGS: Hutchinson estimates on exact Hessians, a NumPy transcription
of AdaHessian, convergence on the synthetic tasks, and the optimizer contract."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import tasks
from baselines import OPTIMIZERS
from baselines.adahessian import adahessian, hutchinson, rademacher_like, spatial_average
from baselines.newton import lbfgs, newton

SECOND_ORDER = {name: OPTIMIZERS[name] for name in ("adahessian", "newton", "lbfgs")}


def run(task, optimizer, num_steps, seed=0):
    """Jitted `tasks.train`; returns the final params and the loss after the last step."""
    state, metrics = jax.jit(lambda k: tasks.train(task, optimizer, num_steps, k))(
        jax.random.key(seed)
    )
    batch = task.sample_batch(jax.random.key(0))
    final_loss = task.loss(state.params, jax.random.key(0), batch)[0]
    return state.params, float(metrics["train_loss"][0]), float(final_loss)


def dense_quadratic(dim=12, seed=0):
    """f(x) = 1/2 x'Ax + b'x with a dense SPD A, as a JAX function and its NumPy A, b."""
    rng = np.random.default_rng(seed)
    M = rng.normal(size=(dim, dim))
    A = M @ M.T / dim + np.eye(dim)
    b = rng.normal(size=dim)
    A_j, b_j = jnp.asarray(A, jnp.float32), jnp.asarray(b, jnp.float32)

    def f(params):
        x = params["x"]
        return 0.5 * x @ (A_j @ x) + b_j @ x

    return f, A, b


# --- AdaHessian -----------------------------------------------------------------------------


@pytest.mark.slow
def test_hutchinson_estimate_converges_to_the_exact_diagonal_as_one_over_sqrt_n():
    f, A, b = dense_quadratic()
    dim = A.shape[0]
    x = np.random.default_rng(1).normal(size=dim)
    params = {"x": jnp.asarray(x, jnp.float32)}
    # Var(z_i (Hz)_i) = sum_{j != i} H_ij^2 for Rademacher z: the exact mean squared error.
    off_diag_sq = (A**2).sum() - (np.diag(A) ** 2).sum()
    repeats = 200
    rmse = {}
    for n in (1, 16, 256):
        estimate = jax.jit(lambda k, n=n: hutchinson(f, params, k, n))
        keys = jax.random.split(jax.random.key(n), repeats)
        grads, _ = estimate(keys[0])
        np.testing.assert_allclose(grads["x"], A @ x + b, rtol=1e-5, atol=1e-5)
        diag_RxN = np.stack([np.asarray(estimate(k)[1]["x"]) for k in keys])
        mse = float(np.mean((diag_RxN - np.diag(A)) ** 2))
        expected = off_diag_sq / dim / n
        assert mse == pytest.approx(expected, rel=0.2), (n, mse, expected)
        rmse[n] = np.sqrt(mse)
    # 16x the samples: 4x smaller error.
    assert rmse[1] / rmse[16] == pytest.approx(4.0, rel=0.2)
    assert rmse[16] / rmse[256] == pytest.approx(4.0, rel=0.2)
    assert rmse[256] < 0.05 * np.abs(np.diag(A)).mean()


def numpy_adahessian(theta, grad_fn, hess_fn, probes, lr, b1, b2, eps, k, weight_decay, to_blocks):
    """The paper's update, transcribed: returns the params after each step (float64)."""
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    out = []
    for t, z_SxN in enumerate(probes, start=1):
        g, H = grad_fn(theta), hess_fn(theta)
        D = np.mean(z_SxN * (z_SxN @ H.T), axis=0)  # mean_j z_j * (H z_j)
        D = to_blocks(D)  # spatial averaging over each conv kernel's 3x3 block
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * D * D
        m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
        theta = theta - lr * (m_hat / (v_hat ** (k / 2) + eps) + weight_decay * theta)
        out.append(theta)
    return out


@pytest.mark.parametrize(
    ("hessian_power", "weight_decay", "num_samples"), [(1.0, 0.0, 1), (0.5, 0.01, 3)]
)
def test_adahessian_matches_a_numpy_transcription_of_the_paper(
    hessian_power, weight_decay, num_samples
):
    # f(x) = 1/2 x'Ax + 1/4 sum c x^4 over x = (b, w) flattened, w a 3x3 conv kernel (HWIO).
    shapes = {"b": (5,), "w": (3, 3, 2, 2)}
    n = 5 + 36
    rng = np.random.default_rng(0)
    M = rng.normal(size=(n, n))
    A = M @ M.T / n + np.eye(n)
    c = rng.uniform(0.5, 1.5, size=n)
    A_j, c_j = jnp.asarray(A, jnp.float32), jnp.asarray(c, jnp.float32)

    def flat(params):
        return jnp.concatenate([params["b"].ravel(), params["w"].ravel()])

    def f(params):
        x = flat(params)
        return 0.5 * x @ (A_j @ x) + 0.25 * jnp.sum(c_j * x**4)

    def to_blocks(D):
        w = D[5:].reshape(shapes["w"])
        w = np.broadcast_to(w.mean(axis=(0, 1), keepdims=True), w.shape)
        return np.concatenate([D[:5], w.ravel()])

    params = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in shapes.items()}
    hp = dict(learning_rate=0.1, b1=0.9, b2=0.99, eps=1e-4)
    opt = adahessian(
        **hp, hessian_power=hessian_power, weight_decay=weight_decay, num_samples=num_samples
    )
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        _, probe_key = jax.random.split(s[0].key)  # the split done inside the update
        z_SxN = jax.vmap(flat)(rademacher_like(probe_key, p, num_samples))
        updates, s = opt.update(p, s, p, obj_fn=f)  # the incoming updates are not used
        return jax.tree.map(lambda a, u: a + u, p, updates), s, z_SxN

    probes, trajectory = [], []
    p = params
    for _ in range(5):
        p, state, z_SxN = step(p, state)
        probes.append(np.asarray(z_SxN, np.float64))
        trajectory.append(np.asarray(flat(p)))

    expected = numpy_adahessian(
        np.asarray(flat(params), np.float64),
        lambda x: A @ x + c * x**3,
        lambda x: A + np.diag(3 * c * x**2),
        probes,
        hp["learning_rate"],
        hp["b1"],
        hp["b2"],
        hp["eps"],
        hessian_power,
        weight_decay,
        to_blocks,
    )
    for got, want in zip(trajectory, expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    assert int(state[0].count) == 5


def test_spatial_average_of_a_conv_kernel_matches_a_hand_computation():
    d = np.zeros((3, 3, 2, 1), np.float32)
    d[:, :, 0, 0] = np.arange(9).reshape(3, 3)  # mean (0 + ... + 8) / 9 = 4
    d[:, :, 1, 0] = [[1, 1, 1], [1, 10, 1], [1, 1, 1]]  # mean (8 + 10) / 9 = 2
    bias = np.array([3.0, -1.0], np.float32)
    out = spatial_average({"w": jnp.asarray(d), "b": jnp.asarray(bias)})
    np.testing.assert_allclose(out["w"][:, :, 0, 0], np.full((3, 3), 4.0))
    np.testing.assert_allclose(out["w"][:, :, 1, 0], np.full((3, 3), 2.0))
    np.testing.assert_array_equal(out["b"], bias)  # not a conv kernel: untouched
    np.testing.assert_array_equal(spatial_average({"w": d}, axes=(2, 3))["w"][0, 0], [[0.5]] * 2)

    # End to end on f = 1/2 sum h w^2 (diagonal Hessian h, so z * Hz = h exactly): after one
    # step nu = (1 - b2) * (block mean of h)^2.
    h = np.random.default_rng(0).uniform(1.0, 5.0, size=(3, 3, 1, 2)).astype(np.float32)
    opt = adahessian(b2=0.9)
    params = {"w": jnp.ones((3, 3, 1, 2))}
    update = jax.jit(
        lambda p, s: opt.update(p, s, p, obj_fn=lambda q: 0.5 * jnp.sum(h * q["w"] ** 2))
    )
    _, state = update(params, opt.init(params))
    block_mean = h.mean(axis=(0, 1), keepdims=True)
    np.testing.assert_allclose(
        state[0].nu["w"], np.broadcast_to(0.1 * block_mean**2, h.shape), rtol=1e-6
    )


def test_adahessian_momentum_uses_the_incoming_gradient_when_asked():
    f, A, b = dense_quadratic()
    params = {"x": jnp.ones(A.shape[0])}
    other = {"x": jnp.full(A.shape[0], 3.0)}  # e.g. from another gradient estimator
    for use_obj_fn_grad, expected in ((True, A @ np.ones(A.shape[0]) + b), (False, 3.0)):
        opt = adahessian(b1=0.5, use_obj_fn_grad=use_obj_fn_grad)
        update = jax.jit(lambda g, s, p, opt=opt: opt.update(g, s, p, obj_fn=f))
        _, state = update(other, opt.init(params), params)
        np.testing.assert_allclose(state[0].mu["x"], 0.5 * np.broadcast_to(expected, (12,)), 1e-5)


@pytest.mark.slow
def test_adahessian_trains_the_quadratic_and_rosenbrock():
    _, first, last = run(tasks.get_task("quadratic_k100"), adahessian(), 500)
    assert last < first / 1e3, (first, last)
    _, first, last = run(tasks.get_task("rosenbrock"), adahessian(learning_rate=1.0), 1000)
    assert last < first / 100, (first, last)


# --- Newton and L-BFGS ----------------------------------------------------------------------


def test_newton_solves_the_quadratic_in_two_steps_and_converges_on_rosenbrock():
    quadratic = tasks.get_task("quadratic_k100")
    _, first, one_step = run(quadratic, newton(), 1)
    _, _, two_steps = run(quadratic, newton(), 2)
    assert first > 10 and one_step < 1e-6 and two_steps < 1e-8, (first, one_step, two_steps)
    params, _, last = run(tasks.get_task("rosenbrock"), newton(), 30)
    assert last < 1e-10
    np.testing.assert_allclose(params["x"], [1.0, 1.0], atol=1e-4)


def test_newton_descends_where_the_hessian_is_indefinite():
    # f = x^2 + y^4/4 - y^2: a saddle at 0 (H = diag(2, -2)), minima f = -1 at y = +-sqrt(2).
    def f(p):
        x, y = p["v"][0], p["v"][1]
        return x**2 + 0.25 * y**4 - y**2

    opt = newton()
    params = {"v": jnp.array([0.5, 0.1])}
    state = opt.init(params)
    step = jax.jit(lambda p, s: opt.update(p, s, p, obj_fn=f))
    losses = [float(f(params))]
    for _ in range(20):
        updates, state = step(params, state)
        params = jax.tree.map(lambda a, u: a + u, params, updates)
        losses.append(float(f(params)))
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False))
    assert losses[-1] == pytest.approx(-1.0, abs=1e-6)


def test_lbfgs_reaches_the_optimum_of_the_quadratic_and_rosenbrock():
    _, first, last = run(tasks.get_task("quadratic_k100"), lbfgs(), 50)
    assert first > 10 and last < 1e-6, (first, last)
    params, _, last = run(tasks.get_task("rosenbrock"), lbfgs(), 100)
    assert last < 1e-8
    np.testing.assert_allclose(params["x"], [1.0, 1.0], atol=1e-3)


@pytest.mark.slow
def test_lbfgs_and_newton_solve_logistic_regression_like_scipy():
    task = tasks.get_task("logistic_regression")
    x, y = (np.asarray(a, np.float64) for a in task.data["train"])

    def loss_and_grad(theta):
        z = x @ theta[:-1] + theta[-1]
        p = 1.0 / (1.0 + np.exp(-z))
        grad = np.concatenate([x.T @ (p - y), [np.sum(p - y)]]) / len(y)
        return np.mean(np.logaddexp(0.0, z) - y * z), grad

    ref = scipy.optimize.minimize(
        loss_and_grad, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B",
        options={"ftol": 1e-15, "gtol": 1e-10, "maxiter": 1000},
    )  # fmt: skip
    for optimizer, steps in ((lbfgs(), 50), (newton(), 10)):
        params, _, last = run(task, optimizer, steps)
        assert abs(last - ref.fun) < 1e-4, (last, ref.fun)
        np.testing.assert_allclose(params["w"], ref.x[:-1], atol=2e-3)


# --- Contract ---------------------------------------------------------------------------------


def test_registry_entries_have_defaults_for_every_argument():
    assert SECOND_ORDER["adahessian"] is adahessian
    for name, factory in SECOND_ORDER.items():
        for p in inspect.signature(factory).parameters.values():
            assert p.default is not inspect.Parameter.empty, (name, p.name)
    assert inspect.signature(newton).parameters["learning_rate"].default == 1.0
    assert inspect.signature(lbfgs).parameters["learning_rate"].default == 1.0


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_a_missing_obj_fn_raises_a_clear_error(name):
    opt = SECOND_ORDER[name]()
    params = {"x": jnp.ones(3)}
    state = opt.init(params)
    with pytest.raises(ValueError, match="obj_fn"):
        opt.update(params, state, params)


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_jitted_update_keeps_state_structure_and_dtypes_without_retracing(name):
    opt = SECOND_ORDER[name]()
    params = {"a": jnp.ones((2, 3), jnp.float32), "b": jnp.zeros((3,), jnp.float32)}

    def f(p):
        return jnp.sum((p["a"] - 2.0) ** 2) + jnp.sum(jnp.cos(p["b"]))

    traces = []

    @jax.jit
    def step(p, s):
        traces.append(1)
        updates, s = opt.update(p, s, p, obj_fn=f)
        return jax.tree.map(lambda a, u: a + u, p, updates), s

    state = opt.init(params)
    p1, s1 = step(params, state)
    p2, s2 = step(p1, s1)
    assert len(traces) == 1
    assert jax.tree.structure(s2) == jax.tree.structure(state)
    for before, after in zip(jax.tree.leaves(state), jax.tree.leaves(s2), strict=True):
        assert before.dtype == after.dtype and before.shape == after.shape
    assert jax.tree.map(lambda a: a.dtype, p2) == jax.tree.map(lambda a: a.dtype, params)
    assert float(f(p2)) < float(f(params))


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_vmap_over_seeds_matches_a_loop(name):
    # Batched and unbatched XLA kernels round differently (~1e-7, e.g. Newton's Hessian):
    # logistic regression rather than Rosenbrock, whose valley amplifies that to ~1e-4, and
    # few steps, since near the optimum rounding moves the params along the flat loss.
    task = tasks.get_task("logistic_regression")
    opt = SECOND_ORDER[name]()
    keys = jax.random.split(jax.random.key(3), 3)
    train = jax.jit(lambda k: tasks.train(task, opt, 3, k))
    batched_state, batched = jax.jit(jax.vmap(lambda k: tasks.train(task, opt, 3, k)))(keys)
    for i, k in enumerate(keys):
        state, metrics = train(k)
        np.testing.assert_allclose(batched["train_loss"][i], metrics["train_loss"], rtol=1e-5)
        np.testing.assert_allclose(
            batched_state.params["w"][i], state.params["w"], rtol=1e-5, atol=1e-6
        )
