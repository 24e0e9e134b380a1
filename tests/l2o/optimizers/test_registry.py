"""Learned optimizers by name: the baseline contract for every entry of `LEARNED_OPTIMIZERS` at
`theta = init_theta(key(0))`, vmap over thetas, finite meta-gradients, the registry's checks."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import tasks
from l2o.optimizers.registry import LEARNED_OPTIMIZERS, get_learned, make_config

NAMES = sorted(LEARNED_OPTIMIZERS)
QUADRATIC_STEPS = 2000
ROSENBROCK_STEPS = 5000
# Untrained, every optimizer starts as Adam(3e-3) or Muon (see each docstring); the last
# training loss must be at most this fraction of the first on (quadratic_k100, rosenbrock).
# Measured at key 0 for the Adam-like ones: about 7.5e-4 and 7e-5. A new entry of
# LEARNED_OPTIMIZERS must record its own.
REDUCTION = {
    "lstm": (1e-3, 1e-3),
    "mlp": (1e-3, 1e-3),
    "hyper": (1e-3, 1e-3),
    "learnable_adam": (1e-3, 1e-3),
    "celo": (0.03, 0.07),  # AdamW(1e-3) on these vector-only tasks: 0.014 and 0.036
}
ADAM_AT_INIT = [name for name in NAMES if name != "celo"]  # celo starts as Muon (test_celo.py)


def reductions(name: str) -> tuple[float, float]:
    if name not in REDUCTION:
        pytest.fail(f"learned optimizer {name!r} has no thresholds in REDUCTION of {__file__}")
    return REDUCTION[name]


@functools.cache
def learned(name: str):
    """`(init_theta, transform, theta at key 0)` of the default config."""
    init_theta, transform = get_learned(name)
    return init_theta, transform, init_theta(jax.random.key(0))


@jax.jit
def perturbed(theta, key):
    """`theta` plus N(0, 0.1^2) noise, so zero-initialised output layers take part."""
    flat, unravel = ravel_pytree(theta)
    return unravel(flat + 0.1 * jax.random.normal(key, flat.shape, flat.dtype))


def mixed_task() -> tasks.Task:
    """A float32 matrix, conv kernel and scalar, a bfloat16 vector, and a param the loss ignores
    (its gradient is exactly zero), pulled towards 1 by a quadratic."""

    def init(key):
        kw, kh, ks, kc = jax.random.split(key, 4)
        return {
            "w": jax.random.normal(kw, (3, 2), jnp.float32),
            "h": jax.random.normal(kh, (4,), jnp.bfloat16),
            "s": jax.random.normal(ks, (), jnp.float32),
            "conv": jax.random.normal(kc, (3, 3, 2, 2), jnp.float32),
            "unused": jnp.zeros((2,), jnp.float32),
        }

    def loss(params, key, batch):
        used = {k: v for k, v in params.items() if k != "unused"}
        value = sum(jnp.sum(jnp.square(p - 1).astype(jnp.float32)) for p in jax.tree.leaves(used))
        return 0.5 * value, {}

    return tasks.Task(name="mixed", init=init, loss=loss, sampler=lambda *_: ())


def small_task() -> tasks.Task:
    """A matrix pulled towards 1 and a param the loss ignores (zero gradient, zero value)."""

    def init(key):
        return {"w": jax.random.normal(key, (3, 2)), "unused": jnp.zeros((2,))}

    def loss(params, key, batch):
        return 0.5 * jnp.sum(jnp.square(params["w"] - 1)), {}

    return tasks.Task(name="small", init=init, loss=loss, sampler=lambda *_: ())


# --- the contract --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_untrained_converges_on_quadratic_and_rosenbrock(name):
    quadratic, rosenbrock = tasks.get_task("quadratic_k100"), tasks.get_task("rosenbrock")
    _, transform, theta = learned(name)

    @jax.jit
    def run(theta, key):
        opt = transform(theta)
        _, on_quadratic = tasks.train(quadratic, opt, QUADRATIC_STEPS, key)
        _, on_rosenbrock = tasks.train(rosenbrock, opt, ROSENBROCK_STEPS, key)
        return on_quadratic["train_loss"], on_rosenbrock["train_loss"]

    both = run(theta, jax.random.key(0))
    for task, losses, reduction in zip(
        ("quadratic", "rosenbrock"), both, reductions(name), strict=True
    ):
        first, last = float(losses[0]), float(losses[-1])
        assert np.isfinite(last) and last <= reduction * first, (task, first, last)


@functools.cache
def update_functions(name: str):
    """One jitted `train_step` on the mixed task that counts its traces, and the same step vmapped
    over states (cached: both update tests share the compiled steps)."""
    _, transform, theta = learned(name)
    task, opt = mixed_task(), transform(theta)

    def step(state, run_key):
        return tasks.train_step(task, opt, state, run_key, total_steps=10)[0]

    traces = []

    def counted_step(state, run_key):
        traces.append(1)  # a Python side effect: runs once per trace, never when compiled
        return step(state, run_key)

    return task, opt, jax.jit(counted_step), jax.jit(jax.vmap(step, in_axes=(0, None))), traces


@pytest.mark.parametrize("name", NAMES)
def test_keeps_dtypes_and_state_structure_and_compiles_once(name):
    task, opt, step, _, traces = update_functions(name)
    states = [tasks.init_state(task, opt, jax.random.key(0))]
    for _ in range(3):
        states.append(step(states[-1], jax.random.key(1)))
    assert len(traces) == 1, "the update was traced again on a later call"

    def signature(tree):
        return jax.tree.structure(tree), [(x.shape, x.dtype) for x in jax.tree.leaves(tree)]

    first = states[0]
    for later in states[1:]:
        assert signature(later.params) == signature(first.params)
        assert signature(later.opt_state) == signature(first.opt_state)
    dtypes = {k: v.dtype for k, v in states[-1].params.items()}
    assert dtypes["h"] == jnp.bfloat16 and dtypes["w"] == dtypes["conv"] == jnp.float32
    assert not np.array_equal(states[-1].params["w"], first.params["w"])
    assert not np.array_equal(states[-1].params["conv"], first.params["conv"])
    assert np.array_equal(states[-1].params["unused"], first.params["unused"])
    for leaf in jax.tree.leaves(states[-1]):
        assert np.all(np.isfinite(np.asarray(leaf, np.float64)))


def assert_close_batched(together, apart):
    """Leafwise equality up to a few float32 ulps (batched reductions may round differently)."""
    for a, b in zip(jax.tree.leaves(together), jax.tree.leaves(apart), strict=True):
        floating = jnp.issubdtype(b.dtype, jnp.floating)
        tol = 8 * float(jnp.finfo(b.dtype).eps) if floating else 0
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol * np.abs(b).max(initial=0))


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_keys_matches_a_loop(name):
    task, opt, step, batched_step, _ = update_functions(name)
    keys = jax.random.split(jax.random.key(2), 3)
    apart = [tasks.init_state(task, opt, k) for k in keys]
    together = jax.vmap(lambda k: tasks.init_state(task, opt, k))(keys)
    for _ in range(3):
        apart = [step(state, jax.random.key(3)) for state in apart]
        together = batched_step(together, jax.random.key(3))
    apart = jax.tree.map(lambda *xs: jnp.stack(xs), *apart)
    assert_close_batched(together, apart)
    assert not np.allclose(apart.params["w"][0], apart.params["w"][1])  # the keys differ


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_thetas_matches_a_loop(name):
    init_theta, transform, _ = learned(name)
    task = small_task()  # a matrix: every architecture's theta acts on it
    keys = jax.random.split(jax.random.key(4), 3)
    thetas = jax.vmap(perturbed, in_axes=(None, 0))(learned(name)[2], keys)

    @jax.jit
    def losses(theta):
        return tasks.train(task, transform(theta), 10, jax.random.key(5))[1]["train_loss"]

    together = jax.jit(jax.vmap(losses))(thetas)
    apart = jnp.stack([losses(jax.tree.map(lambda x, i=i: x[i], thetas)) for i in range(3)])
    np.testing.assert_allclose(np.asarray(together), np.asarray(apart), rtol=1e-5)
    assert not np.allclose(apart[0, -1], apart[1, -1])  # the thetas differ


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_meta_gradient_of_a_short_unroll_is_finite(name):
    _, transform, theta = learned(name)
    task = small_task()

    @jax.jit
    def meta_grad(theta):
        def meta_loss(theta):
            _, metrics = tasks.train(task, transform(theta), 8, jax.random.key(6))
            return jnp.mean(jnp.log(metrics["train_loss"]))

        return jax.grad(meta_loss)(theta)

    for point in (theta, perturbed(theta, jax.random.key(7))):
        grads = meta_grad(point)
        assert jax.tree.structure(grads) == jax.tree.structure(theta)
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(np.asarray(g))), path
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("name", ADAM_AT_INIT)
def test_untrained_is_adam(name):
    """The documented init: these learned optimizers start as Adam(3e-3, b1=0.9, b2=0.999)."""
    _, transform, theta = learned(name)
    params = mixed_task().init(jax.random.key(8))
    params = {k: v.astype(jnp.float32) for k, v in params.items()}
    opt, ref = transform(theta), optax.adam(3e-3)
    state, ref_state = opt.init(params), ref.init(params)
    update = jax.jit(functools.partial(opt.update, loss=jnp.float32(1.0), num_steps=5))
    for t in range(5):
        grads = jax.tree.map(lambda p, t=t: jnp.sin(p + t), params)
        upd, state = update(grads, state, params, step=t)
        ref_upd, ref_state = ref.update(grads, ref_state, params)
        for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(ref_upd), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-9)
        params = optax.apply_updates(params, upd)


def test_lstm_without_residual_is_the_paper_architecture():
    init_theta, transform = get_learned("lstm", residual=False)
    theta = init_theta(jax.random.key(0))
    assert "log_lr" not in theta and np.any(np.asarray(theta["out_w"]) != 0)
    sizes = {k: v.shape for k, v in theta.items()}
    assert sizes["lstm0_wx"] == (2, 80) and sizes["lstm1_wh"] == (20, 80)
    params = {"x": jnp.ones((5,))}
    opt = transform(theta)
    updates, _ = opt.update({"x": jnp.full((5,), 0.3)}, opt.init(params))
    assert np.all(np.abs(np.asarray(updates["x"])) < 0.1)  # about output_scale = 0.01


def test_registry_rejects_unknown_names_and_config():
    with pytest.raises(ValueError, match="valid: celo, hyper, learnable_adam, lstm, mlp"):
        get_learned("velo")
    with pytest.raises(ValueError, match="no config key 'hiden_sizes'"):
        get_learned("mlp", hiden_sizes=(8,))
    with pytest.raises(ValueError, match="must be an int"):
        get_learned("lstm", hidden_size=2.5)
    with pytest.raises(ValueError, match="base_decay"):
        get_learned("mlp", base_decay=0.7)
    assert make_config("mlp", hidden_sizes=[16, 4]).hidden_sizes == (16, 4)


def test_meta_parameter_counts():
    counts = {n: sum(x.size for x in jax.tree.leaves(learned(n)[2])) for n in NAMES}
    assert counts == {"celo": 257, "hyper": 5226, "learnable_adam": 4, "lstm": 5142, "mlp": 251}
    for name in NAMES:
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(learned(name)[2]))
