"""The Celo2-style learned optimizer: its documented init, linearity in the learning rate,
scale-free inputs, the width-transfer scaling of matrix updates, the learned scheduler, and its
file loaded with a learning rate and a horizon (tuned by the harness like a baseline's)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

import l2o
import tasks
from baselines.muon import newton_schulz
from l2o.cli.config import parse_optimizer
from l2o.evaluation.harness import OptimizerSpec, optimizer_factory
from l2o.io import UserError
from l2o.optimizers.celo import CeloConfig, factored_rsqrt, make_celo
from l2o.optimizers.file_format import (
    HorizonWarning,
    at_learning_rate,
    external_learning_rate,
    save_learned,
)

PRETRAINED = Path(__file__).resolve().parents[3] / "l2o" / "pretrained"


def perturbed(theta, key, size=0.3):
    flat, unravel = ravel_pytree(theta)
    return unravel(flat + size * jax.random.normal(key, flat.shape, flat.dtype))


def params_of(key, width=8):
    k1, k2, k3, k4 = jax.random.split(key, 4)
    return {
        "linear": {"w": jax.random.normal(k1, (6, width)), "b": jax.random.normal(k2, (width,))},
        "embed": {"embeddings": jax.random.normal(k3, (5, 4))},
        "conv": jax.random.normal(k4, (3, 3, 2, 4)),
    }


def run(opt, params, steps, grad_scale=1.0, **extras):
    """The updates of `steps` steps on the gradient stream `sin(3 p + t)`, params moving (one
    compiled scan): a list of update trees."""

    def body(carry, t):
        params, state = carry
        grads = jax.tree.map(lambda p: grad_scale * jnp.sin(3 * p + t), params)
        upd, state = opt.update(grads, state, params, step=t, num_steps=steps, **extras)
        return (optax.apply_updates(params, upd), state), upd

    stacked = jax.jit(
        lambda p: jax.lax.scan(body, (p, opt.init(p)), jnp.arange(steps, dtype=jnp.int32))[1]
    )(params)
    return [jax.tree.map(lambda x, t=t: x[t], stacked) for t in range(steps)]


def test_untrained_is_muon_over_adams_direction_with_adamw_on_vectors_and_embeddings():
    config = CeloConfig(learning_rate=2e-3, weight_decay=0.1)
    init_theta, transform = make_celo(config)
    opt = transform(init_theta(jax.random.key(0)))
    params = params_of(jax.random.key(1))
    adam = optax.scale_by_adam(b1=0.9, b2=0.999, eps=0.0, eps_root=1e-16)

    @jax.jit
    def reference(moved, state, t):
        grads = jax.tree.map(lambda p: jnp.sin(3 * p + t), moved)
        direction, state = adam.update(grads, state)

        def want(path, p, d):
            name = jax.tree_util.keystr(path)
            if p.ndim >= 2 and "embed" not in name:
                fan_in, fan_out = math.prod(p.shape[:-1]), p.shape[-1]
                d = d / jnp.sqrt(jnp.mean(jnp.square(d)))
                o = newton_schulz(d.reshape(fan_in, fan_out)).reshape(p.shape)
                d = config.matrix_mult * math.sqrt(fan_out / fan_in) * o
            return -config.learning_rate * (d + config.weight_decay * p)

        return jax.tree_util.tree_map_with_path(want, moved, direction), state

    state, moved = adam.init(params), params
    for t, upd in enumerate(run(opt, params, 5)):
        expected, state = reference(moved, state, t)
        for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-7)
        moved = optax.apply_updates(moved, upd)


@pytest.mark.parametrize("scheduler_hidden", [0, 4])
def test_update_is_linear_in_the_learning_rate(scheduler_hidden):
    """So a tuner, or a schedule chained after it, sets the step size like any baseline's."""
    params = params_of(jax.random.key(2))
    updates = []
    for lr in (1e-3, 3e-3):
        init_theta, transform = make_celo(
            CeloConfig(learning_rate=lr, weight_decay=0.01, scheduler_hidden=scheduler_hidden)
        )
        theta = perturbed(init_theta(jax.random.key(0)), jax.random.key(3))
        updates.append(run(transform(theta), params, 1, loss=jnp.float32(2.0))[-1])
    for a, b in zip(*map(jax.tree.leaves, updates), strict=True):
        np.testing.assert_allclose(3 * np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-9)


def test_a_rescaled_gradient_stream_gives_the_same_updates():
    init_theta, transform = make_celo()
    opt = transform(perturbed(init_theta(jax.random.key(0)), jax.random.key(4)))
    params = params_of(jax.random.key(5))
    small, large = run(opt, params, 4), run(opt, params, 4, grad_scale=100.0)
    for a, b in zip(jax.tree.leaves(small[-1]), jax.tree.leaves(large[-1]), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-3, atol=1e-7)


def test_matrix_updates_have_the_spectral_norm_of_mup_at_every_width():
    """`||Delta W||_2 ~ lr c sqrt(n_out / n_in)` at widths 32, 256 and 1024 (8x and 32x a 32-wide
    meta-training MLP), whatever theta: the per-element step shrinks as 1/sqrt(width)."""
    init_theta, transform = make_celo()
    opt = transform(perturbed(init_theta(jax.random.key(0)), jax.random.key(6)))
    shapes = [(32, 32), (256, 256), (64, 1024), (1024, 10)]  # widths 32, 256 (8x), 1024 (32x)
    keys = jax.random.split(jax.random.key(7), len(shapes))
    params = {
        f"{n_in}x{n_out}": jax.random.normal(k, (n_in, n_out)) / math.sqrt(n_in)
        for (n_in, n_out), k in zip(shapes, keys, strict=True)
    }  # one compiled run for all widths
    last = run(opt, params, 3)[-1]
    ratios = {}
    for n_in, n_out in shapes:
        spectral = float(jnp.linalg.norm(last[f"{n_in}x{n_out}"], ord=2))
        ratios[(n_in, n_out)] = spectral / (1e-3 * 10.0 * math.sqrt(n_out / n_in))
    assert all(0.6 < r < 1.3 for r in ratios.values()), ratios


def test_factored_rsqrt_is_adafactors_rank_one_estimate():
    nu = jnp.outer(jnp.array([1.0, 4.0, 9.0]), jnp.array([2.0, 8.0]))  # rank one: exact
    np.testing.assert_allclose(factored_rsqrt(nu), jax.lax.rsqrt(nu), rtol=1e-6)
    vector = jnp.array([4.0, 16.0])
    np.testing.assert_allclose(factored_rsqrt(vector), [0.5, 0.25], rtol=1e-6)


def test_the_learned_scheduler_reads_the_loss_and_starts_at_a_constant_rate():
    params = params_of(jax.random.key(8))
    init_theta, transform = make_celo(CeloConfig(scheduler_hidden=4))
    theta = init_theta(jax.random.key(0))
    plain = make_celo()[1](make_celo()[0](jax.random.key(0)))
    with_scheduler = jax.tree.leaves(run(transform(theta), params, 3, loss=jnp.float32(1.0)))
    for a, b in zip(with_scheduler, jax.tree.leaves(run(plain, params, 3)), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)

    theta = {**theta, "sched_w": jnp.ones((4,)), "sched_v": 3 * theta["sched_v"]}
    opt = transform(theta)
    update = jax.jit(opt.update)
    state = opt.init(params)
    grads = jax.tree.map(jnp.cos, params)
    sizes = []
    for loss in (3.0, 2.0, 1.0, 1.0):  # a falling, then flat loss changes the loss features
        upd, state = update(grads, state, params, step=1, num_steps=10, loss=jnp.float32(loss))
        sizes.append(float(jnp.abs(upd["linear"]["b"]).mean()))
    assert len(set(np.round(sizes, 9))) == 4, sizes


def test_without_orthogonalization_every_tensor_takes_the_normalized_learned_update():
    init_theta, transform = make_celo(CeloConfig(orthogonalize=False))
    opt = transform(perturbed(init_theta(jax.random.key(0)), jax.random.key(9)))
    params = params_of(jax.random.key(10))
    for upd in jax.tree.leaves(run(opt, params, 3)[-1]):
        rms = float(jnp.sqrt(jnp.mean(jnp.square(upd))))
        assert rms == pytest.approx(1e-3, rel=1e-4)


def test_bad_configs_are_refused():
    for bad in [{"decays": (0.9, 0.99)}, {"learning_rate": 0.0}, {"scheduler_hidden": -1},
                {"weight_decay": -1.0}, {"hidden_sizes": (0,)}]:  # fmt: skip
        with pytest.raises(ValueError):
            CeloConfig(**bad)


@pytest.fixture(scope="module")
def celo_file(tmp_path_factory):
    init_theta, _ = make_celo(CeloConfig(hidden_sizes=(4,)))
    theta = perturbed(init_theta(jax.random.key(0)), jax.random.key(11))
    path = tmp_path_factory.mktemp("celo") / "celo.safetensors"
    return save_learned(path, "celo", {"hidden_sizes": [4]}, jax.device_get(theta))


def test_a_celo_file_takes_a_learning_rate_and_a_horizon(celo_file):
    params = params_of(jax.random.key(12))
    grads = jax.tree.map(jnp.cos, params)

    def first_update(opt, **extras):
        return opt.update(grads, opt.init(params), params, **extras)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a horizon was given: no warning
        default = first_update(l2o.load_optimizer(celo_file, num_steps=100))
        faster = first_update(l2o.load_optimizer(celo_file, num_steps=100, learning_rate=3e-3))
        moved = first_update(at_learning_rate(l2o.load_optimizer(celo_file, 100), 1e-3, 3e-3))
    assert external_learning_rate(celo_file) == 1e-3
    for a, b, c in zip(*map(jax.tree.leaves, (default, faster, moved)), strict=True):
        np.testing.assert_allclose(3 * np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-10)
        np.testing.assert_allclose(np.asarray(c), np.asarray(b), rtol=1e-5, atol=1e-10)
    with pytest.warns(HorizonWarning, match="10000-step run"):
        first_update(l2o.load_optimizer(celo_file))
    explicit = first_update(l2o.load_optimizer(celo_file, num_steps=7), num_steps=50, step=0)
    given = first_update(l2o.load_optimizer(celo_file), num_steps=50, step=0)
    for a, b in zip(jax.tree.leaves(explicit), jax.tree.leaves(given), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the extra wins


def test_the_harness_tunes_a_celo_file_and_refuses_a_rate_for_a_learned_step_size(celo_file):
    make, default = optimizer_factory(OptimizerSpec("celo", file=str(celo_file)), num_steps=20)
    assert default == 1e-3
    task = tasks.get_task("digits_mlp", hidden=[8])
    run = jax.jit(lambda lr: tasks.train(task, make(lr), 20, jax.random.key(0))[1]["train_loss"])
    slow, fast = run(jnp.float32(1e-4)), run(jnp.float32(1e-2))
    assert float(fast[-1]) < float(slow[-1])
    spec = parse_optimizer({"file": str(celo_file)}, "optimizers[0]")
    assert spec.tune_lr
    shipped = PRETRAINED / "mlp_digits.safetensors"
    with pytest.raises(ValueError, match="learned its step size"):
        l2o.load_optimizer(shipped, learning_rate=1e-3)
    with pytest.raises(UserError, match="learned its step size"):
        parse_optimizer({"file": str(shipped), "tune_lr": True}, "optimizers[0]")


def test_a_celo_file_follows_a_schedule_and_a_rule_file_refuses_one(celo_file):
    spec = parse_optimizer({"file": str(celo_file), "schedule": "warmup_cosine", "warmup": 0.25},
                           "optimizers[0]")  # fmt: skip
    assert (spec.schedule, spec.warmup) == ("warmup_cosine", 0.25)
    make, _ = optimizer_factory(spec, num_steps=8)
    constant, _ = optimizer_factory(OptimizerSpec("celo", file=str(celo_file)), num_steps=8)
    params = {"w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    grads = jax.tree.map(lambda p: 0.1 * p, params)

    def norms(opt):
        state, out = opt.init(params), []
        for step in range(8):
            updates, state = opt.update(grads, state, params, num_steps=8, step=step)
            out.append(float(jnp.linalg.norm(updates["w"])))
        return np.array(out)

    scheduled, flat = norms(make(1e-2)), norms(constant(1e-2))
    np.testing.assert_allclose(scheduled[0], 0.0, atol=1e-12)  # warm-up starts at 0
    np.testing.assert_allclose(scheduled[2], flat[2], rtol=1e-4)  # the peak, after 2 steps
    assert scheduled[-1] < 0.2 * flat[-1]  # cosine decay towards 0
    rule = PRETRAINED / "evolved_adamw.json"
    with pytest.raises(UserError, match="external"):
        parse_optimizer({"file": str(rule), "schedule": "warmup_cosine"}, "optimizers[0]")
