"""Schedules against their closed forms and optax; reduce-on-plateau; clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from baselines import clipping, schedules
from tasks import UnknownNameError, get_task, train

COUNTS = np.array([0, 1, 2, 7, 10, 33, 50, 99, 100, 101, 150, 250, 1000])


def values(schedule, counts=COUNTS):
    return np.array([float(schedule(jnp.asarray(c, jnp.int32))) for c in counts])


def test_constant():
    np.testing.assert_allclose(values(schedules.constant(0.3)), 0.3, rtol=1e-6)


def test_step_every_step_size():
    lr, factor, size = 0.5, 0.3, 40
    expected = lr * factor ** np.floor(COUNTS / size)
    np.testing.assert_allclose(values(schedules.step(lr, factor, step_size=size)), expected, 1e-5)
    ref = optax.exponential_decay(lr, size, factor, staircase=True)
    np.testing.assert_allclose(
        values(schedules.step(lr, factor, step_size=size)), values(ref), 1e-5
    )


def test_step_at_boundaries_is_the_resnet_recipe():
    """eta * 0.1 at T/2 and again at 3T/4 (seed 001)."""
    T, lr = 200, 0.1
    sched = schedules.step(lr, 0.1, boundaries=(T // 2, 3 * T // 4))
    expected = np.where(COUNTS < 100, lr, np.where(COUNTS < 150, lr * 0.1, lr * 0.01))
    np.testing.assert_allclose(values(sched), expected, rtol=1e-5)
    ref = optax.piecewise_constant_schedule(lr, {T // 2: 0.1, 3 * T // 4: 0.1})
    np.testing.assert_allclose(values(sched), values(ref), rtol=1e-5)


def test_step_needs_exactly_one_rule():
    with pytest.raises(ValueError, match="exactly one"):
        schedules.step(0.1)
    with pytest.raises(ValueError, match="exactly one"):
        schedules.step(0.1, step_size=10, boundaries=(5,))


def test_exponential():
    """eta_t = alpha^t eta_0 (seed 001), and with a transition length."""
    np.testing.assert_allclose(
        values(schedules.exponential(0.2, 0.99)), 0.2 * 0.99**COUNTS, rtol=1e-5
    )
    sched = schedules.exponential(0.2, 0.5, transition_steps=100)
    np.testing.assert_allclose(values(sched), 0.2 * 0.5 ** (COUNTS / 100), rtol=1e-5)
    np.testing.assert_allclose(values(sched), values(optax.exponential_decay(0.2, 100, 0.5)), 1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.1])
def test_cosine(alpha):
    """eta_min + (eta_max - eta_min) (1 + cos(t pi / T)) / 2, eta_min = alpha eta_max (seed 001)."""
    lr, T = 0.4, 250
    t = np.minimum(COUNTS, T)
    expected = alpha * lr + 0.5 * (lr - alpha * lr) * (1 + np.cos(t * np.pi / T))
    sched = schedules.cosine(lr, T, alpha)
    np.testing.assert_allclose(values(sched), expected, rtol=1e-5, atol=1e-7)
    ref = optax.cosine_decay_schedule(lr, T, alpha)
    np.testing.assert_allclose(values(sched), values(ref), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha", [0.0, 0.25])
def test_linear(alpha):
    """eta_0 (1 - t / T) (seed 000), floored at alpha eta_0."""
    lr, T = 0.4, 100
    expected = lr * (1 - (1 - alpha) * np.minimum(COUNTS, T) / T)
    sched = schedules.linear(lr, T, alpha)
    np.testing.assert_allclose(values(sched), expected, rtol=1e-5, atol=1e-7)
    ref = optax.linear_schedule(lr, alpha * lr, T)
    np.testing.assert_allclose(values(sched), values(ref), rtol=1e-5, atol=1e-7)


def test_inverse_sqrt():
    """eta_0 / sqrt(t) (seed 000); constant for the first w steps with a timescale w."""
    np.testing.assert_allclose(
        values(schedules.inverse_sqrt(0.3)), 0.3 / np.sqrt(np.maximum(COUNTS, 1)), rtol=1e-5
    )
    w = 100
    expected = 0.3 / np.sqrt(np.maximum(COUNTS, w) / w)
    np.testing.assert_allclose(values(schedules.inverse_sqrt(0.3, w)), expected, rtol=1e-5)


def test_warmup_cosine_equals_optax():
    init, peak, W, T, alpha = 0.01, 0.5, 50, 250, 0.1
    sched = schedules.warmup(schedules.cosine(peak, T - W, alpha), W, init)
    ref = optax.warmup_cosine_decay_schedule(init, peak, W, T, alpha * peak)
    np.testing.assert_allclose(values(sched), values(ref), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "base",
    [
        schedules.constant(0.2),
        schedules.step(0.2, 0.5, step_size=30),
        schedules.exponential(0.2, 0.98),
        schedules.linear(0.2, 120),
        schedules.inverse_sqrt(0.2, 10),
    ],
)
def test_warmup_composes_with_any_schedule(base):
    """Linear ramp from init_value to base(0) over W steps, then base shifted by W."""
    W, init = 33, 0.0
    ref = optax.join_schedules([optax.linear_schedule(init, float(base(0)), W), base], [W])
    np.testing.assert_allclose(values(schedules.warmup(base, W)), values(ref), 1e-5, 1e-7)
    ramp = values(schedules.warmup(base, W), np.arange(W))
    np.testing.assert_allclose(ramp, float(base(0)) * np.arange(W) / W, rtol=1e-5, atol=1e-7)


def test_schedules_jit_and_vmap_over_traced_hyperparameters():
    counts = jnp.arange(0, 300, 7)
    lrs, alphas, factors = [0.1, 0.2, 0.3], [0.0, 0.1, 0.5], [0.5, 0.3, 0.1]

    @jax.jit
    def curves(lr, alpha, factor):
        return {
            "cosine": jax.vmap(schedules.cosine(lr, 200, alpha))(counts),
            "warm": jax.vmap(schedules.warmup(schedules.linear(lr, 200, alpha), 20))(counts),
            "step": jax.vmap(schedules.step(lr, factor, boundaries=(100, 150)))(counts),
            "exp": jax.vmap(schedules.exponential(lr, factor, 50))(counts),
            "rsqrt": jax.vmap(schedules.inverse_sqrt(lr, 10))(counts),
        }

    batched = jax.vmap(curves)(jnp.array(lrs), jnp.array(alphas), jnp.array(factors))
    for i, (lr, alpha, factor) in enumerate(zip(lrs, alphas, factors, strict=True)):
        c = np.asarray(counts)
        np.testing.assert_allclose(
            batched["cosine"][i], values(optax.cosine_decay_schedule(lr, 200, alpha), c), 1e-5, 1e-7
        )
        np.testing.assert_allclose(
            batched["exp"][i], values(optax.exponential_decay(lr, 50, factor), c), 1e-5, 1e-7
        )
        np.testing.assert_allclose(
            batched["step"][i], lr * factor ** ((c >= 100).astype(float) + (c >= 150)), 1e-5
        )
        np.testing.assert_allclose(batched["rsqrt"][i], lr / np.sqrt(np.maximum(c, 10) / 10), 1e-5)
        assert float(batched["warm"][i][0]) == 0.0


def test_schedule_as_optax_learning_rate_in_the_inner_loop():
    task = get_task("logistic_regression")
    sched = schedules.warmup(schedules.cosine(0.5, 90), 10)
    _, metrics = jax.jit(lambda t, k: train(t, optax.sgd(sched), 100, k))(task, jax.random.key(0))
    assert metrics["train_loss"][-1] < 0.8 * metrics["train_loss"][0]


def test_get_schedule():
    sched = schedules.get_schedule("cosine", learning_rate=0.1, decay_steps=10)
    assert float(sched(10)) == pytest.approx(0.0, abs=1e-7)
    assert set(schedules.SCHEDULES) == {
        "constant", "step", "exponential", "cosine", "linear", "inverse_sqrt"
    }  # fmt: skip
    with pytest.raises(UnknownNameError, match="valid schedules: constant, cosine"):
        schedules.get_schedule("cosin", learning_rate=0.1)
    with pytest.raises(UnknownNameError, match="decay_step"):
        schedules.get_schedule("cosine", learning_rate=0.1, decay_step=10)
    assert issubclass(UnknownNameError, ValueError)


def plateau_scales(transform, losses, key="loss"):
    params = {"w": jnp.ones(3)}
    state = transform.init(params)
    update = jax.jit(transform.update)
    scales = []
    for loss in losses:
        updates, state = update(params, state, params, **{key: jnp.float32(loss)})
        scales.append(float(updates["w"][0]))
    return np.array(scales)


def test_reduce_on_plateau_waits_for_patience():
    patience = 4
    losses = [5.0, 4.0, 3.0] + [3.0] * (patience - 1) + [3.0] + [2.0] + [2.5] * patience
    scales = plateau_scales(schedules.reduce_on_plateau(0.5, patience), losses)
    # Improving, then patience - 1 non-improving losses: untouched.
    np.testing.assert_array_equal(scales[: 3 + patience - 1], 1.0)
    # The patience-th non-improving loss halves the scale, an improvement keeps it, and the
    # next plateau halves it again.
    assert scales[3 + patience - 1] == 0.5
    assert scales[3 + patience] == 0.5
    np.testing.assert_array_equal(scales[3 + patience + 1 : -1], 0.5)
    assert scales[-1] == 0.25


def test_reduce_on_plateau_tolerances_and_floor():
    # A relative improvement below rtol is no improvement.
    losses = [1.0, 0.99995, 0.9999, 0.99985]
    scales = plateau_scales(schedules.reduce_on_plateau(0.1, 3, rtol=1e-3), losses)
    np.testing.assert_allclose(scales, [1.0, 1.0, 1.0, 0.1])
    scales = plateau_scales(schedules.reduce_on_plateau(0.1, 1, min_scale=0.05), [1.0] * 4)
    np.testing.assert_allclose(scales, [1.0, 0.1, 0.05, 0.05])
    # NaN never counts as an improvement.
    scales = plateau_scales(schedules.reduce_on_plateau(0.5, 2), [1.0, np.nan, np.nan])
    np.testing.assert_allclose(scales, [1.0, 1.0, 0.5])


def test_reduce_on_plateau_equals_optax_contrib():
    rng = np.random.default_rng(0)
    losses = np.exp(-np.linspace(0, 3, 120)) + 0.05 * rng.random(120) + 0.1
    kwargs = dict(factor=0.5, patience=5, cooldown=3, rtol=1e-3, atol=1e-3, min_scale=0.01)
    ours = plateau_scales(schedules.reduce_on_plateau(**kwargs), losses)
    ref = plateau_scales(optax.contrib.reduce_on_plateau(**kwargs), losses, key="value")
    np.testing.assert_allclose(ours, ref, rtol=1e-6)
    assert ours[-1] < 1.0


def test_reduce_on_plateau_in_the_inner_loop():
    task = get_task("logistic_regression")
    opt = optax.chain(optax.sgd(0.5), schedules.reduce_on_plateau(0.5, patience=3))
    state, metrics = jax.jit(lambda t, k: train(t, opt, 60, k))(task, jax.random.key(0))
    assert np.isfinite(metrics["train_loss"]).all()
    assert float(state.opt_state[1].scale) <= 1.0


def tree_norm(tree):
    return float(optax.tree.norm(tree))


GRADS = {"a": jnp.array([3.0, -4.0]), "b": {"c": jnp.array([[12.0]])}}  # global norm 13


@pytest.mark.parametrize("max_norm", [1.0, 5.0, 13.0, 100.0])
def test_clip_by_global_norm(max_norm):
    transform = clipping.clip_by_global_norm(max_norm)
    clipped, _ = transform.update(GRADS, transform.init(GRADS))
    if max_norm < 13.0:
        assert tree_norm(clipped) == pytest.approx(max_norm, rel=1e-6)
        # Same direction: every leaf is scaled by the same max_norm / ||g||.
        for g, c in zip(jax.tree.leaves(GRADS), jax.tree.leaves(clipped), strict=True):
            np.testing.assert_allclose(c, g * max_norm / 13.0, rtol=1e-6)
    else:
        jax.tree.map(np.testing.assert_array_equal, clipped, GRADS)
    ref, _ = optax.clip_by_global_norm(max_norm).update(GRADS, optax.EmptyState())
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), clipped, ref)


def test_clip_by_global_norm_keeps_zero_and_is_differentiable():
    zeros = jax.tree.map(jnp.zeros_like, GRADS)
    transform = clipping.clip_by_global_norm(1.0)
    clipped, _ = transform.update(zeros, transform.init(zeros))
    jax.tree.map(np.testing.assert_array_equal, clipped, zeros)

    def total(x):
        return jnp.sum(transform.update({"x": x}, optax.EmptyState())[0]["x"])

    assert np.isfinite(jax.grad(total)(jnp.zeros(3))).all()


def test_clip_by_value():
    transform = clipping.clip_by_value(3.5)
    clipped, _ = transform.update(GRADS, transform.init(GRADS))
    for leaf in jax.tree.leaves(clipped):
        assert float(jnp.max(jnp.abs(leaf))) <= 3.5
    np.testing.assert_array_equal(clipped["a"], [3.0, -3.5])
    np.testing.assert_array_equal(clipped["b"]["c"], [[3.5]])
    ref, _ = optax.clip(3.5).update(GRADS, optax.EmptyState())
    jax.tree.map(np.testing.assert_array_equal, clipped, ref)


def test_clipping_chains_with_an_optimizer_under_jit():
    task = get_task("logistic_regression")
    opt = optax.chain(clipping.clip_by_global_norm(0.1), clipping.clip_by_value(0.05), optax.sgd(1))
    _, metrics = jax.jit(lambda t, k: train(t, opt, 50, k))(task, jax.random.key(1))
    assert metrics["train_loss"][-1] < metrics["train_loss"][0]
