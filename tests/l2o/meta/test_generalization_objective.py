"""The meta-objective that targets generalization: log-uniform horizons with staggered restarts,
validation losses relative to tuned AdamW's at the same step, task families in meta-training."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from baselines import get_optimizer
from l2o.cli.builders import build_family_tasks
from l2o.cli.config import parse_family, parse_meta_run
from l2o.io import UserError
from l2o.meta.estimators import EstimatorConfig, make_estimator
from l2o.meta.objective import (
    MetaObjective,
    learning_rate_factor,
    sample_horizon,
    scheduled,
    score,
    start_run,
    truncation_loss,
)
from l2o.meta.reference import REFERENCE_SEED, adamw_reference
from tasks import get_task, train

TASK = get_task("digits_mlp", hidden=[8], batch_size=16)
VALID = MetaObjective(
    horizon=40, truncation=10, objective="mean_valid", normalizer="adamw", min_horizon=20
)


def learnable_adamw(theta):
    return optax.with_extra_args_support(
        get_optimizer("adamw", learning_rate=jnp.exp(theta["log_lr"]))
    )


def test_horizons_are_log_uniform_whole_truncations_within_bounds():
    obj = MetaObjective(horizon=2000, truncation=50, min_horizon=100)
    keys = jax.random.split(jax.random.key(0), 4000)
    horizons = np.asarray(jax.vmap(lambda k: sample_horizon(k, obj))(keys))
    assert horizons.min() == 100 and horizons.max() == 2000
    assert np.all(horizons % 50 == 0)
    logs = np.log(horizons)  # log-uniform: equal mass below and above the geometric middle
    assert abs(np.mean(logs < np.log(np.sqrt(100 * 2000))) - 0.5) < 0.04
    fixed = MetaObjective(horizon=300, truncation=50)
    assert int(sample_horizon(jax.random.key(1), fixed)) == 300


def test_runs_restart_at_their_own_horizon_with_a_new_one():
    theta = {"log_lr": jnp.log(jnp.float32(1e-2))}
    obj = MetaObjective(horizon=40, truncation=10, min_horizon=10)
    run = start_run(TASK, learnable_adamw, theta, jax.random.key(3), obj, stagger=False)
    step = jax.jit(truncation_loss, static_argnums=(1, 2))  # the task: an argument
    seen, restarts = [int(run.horizon)], 0
    for i in range(12):
        before = run
        _, run = step(TASK, learnable_adamw, obj, theta, jax.random.key(10 + i), run)
        if int(run.restarts) > restarts:  # restarted: the old run had reached its horizon
            assert int(before.train.step) == int(before.horizon)
            assert int(run.train.step) == 10
            restarts = int(run.restarts)
            seen.append(int(run.horizon))
        assert int(run.train.step) <= int(run.horizon)
    assert restarts >= 2 and len(set(seen)) >= 2, seen


def test_the_reference_is_the_best_adamw_at_each_step():
    lrs = (1e-3, 3e-2)
    reference = np.asarray(adamw_reference(TASK, VALID, lrs, seeds=2))
    assert reference.shape == (40 // VALID.eval_every,)
    keys = jax.random.split(jax.random.key(REFERENCE_SEED), 2)
    curves = []
    for lr in lrs:
        runs = [
            train(TASK, get_optimizer("adamw", learning_rate=lr), 40, k, eval_every=1,
                  eval_splits=("valid",))[1]["valid_loss"]
            for k in keys
        ]  # fmt: skip
        curves.append(np.mean(runs, axis=0))
    curves = np.asarray(curves)[
        :, 1:
    ]  # train evaluates at step 0 too; the reference starts after one
    np.testing.assert_allclose(reference, np.min(curves, axis=0), rtol=1e-5)
    assert np.any(np.argmin(curves, axis=0) == 1)  # the larger rate wins somewhere
    assert reference[-1] < reference[0]


def test_meta_loss_is_the_mean_log_ratio_to_the_reference():
    losses, reference = jnp.array([2.0, 1.0, 0.5]), jnp.array([1.0, 1.0, 1.0])
    want = np.mean(np.log([2.0, 1.0, 0.5]))
    assert float(score(VALID, losses, jnp.float32(9.0), reference)) == pytest.approx(want)
    final = MetaObjective(horizon=40, truncation=10, objective="final_valid", normalizer="adamw")
    assert float(score(final, losses, jnp.float32(9.0), reference)) == pytest.approx(np.log(0.5))


def test_adamw_at_the_reference_rate_scores_about_zero_and_a_bad_rate_scores_above():
    """The same AdamW the reference tuned scores ~0 (only its run keys differ); one at a
    rate 1000x too small loses to it."""
    reference = adamw_reference(TASK, VALID, (3e-3,), seeds=2)
    est_config = EstimatorConfig("pes", num_tasks=4, num_pairs=1, sigma=1e-6)
    est = make_estimator(TASK, learnable_adamw, VALID, est_config, reference=reference)
    estimate = jax.jit(est.estimate)  # theta is an argument: one compilation for both rates
    scores = {}
    for lr in (3e-3, 3e-6):
        theta = {"log_lr": jnp.log(jnp.float32(lr))}
        state = est.init(theta, jax.random.key(0))
        values = []
        for i in range(4):
            _, state, metrics = estimate(theta, state, jax.random.key(i))
            values.append(float(metrics["meta_loss"]))
        scores[lr] = np.mean(values)
    assert abs(scores[3e-3]) < 0.1 and scores[3e-6] > scores[3e-3] + 0.15, scores


def test_objective_options_are_checked():
    with pytest.raises(ValueError, match="validation"):
        MetaObjective(objective="mean_train", normalizer="adamw")
    with pytest.raises(ValueError, match="normalizer"):
        MetaObjective(objective="mean_valid", normalizer="adam")
    with pytest.raises(ValueError, match="min_horizon"):
        MetaObjective(horizon=100, truncation=50, min_horizon=20)


def test_a_family_draws_its_tasks_by_seed_and_bad_families_are_refused():
    spec = parse_family({"name": "mlp_classifiers", "num_tasks": 3, "seed": 4}, "family")
    first, again = build_family_tasks(spec), build_family_tasks(spec)
    assert list(first) == list(again) and len(first) == 3
    assert all(key.startswith(f"{i}:") for i, key in enumerate(first))
    other = build_family_tasks(parse_family({"name": "mlp_classifiers", "num_tasks": 3}, "f"))
    assert list(other) != list(first)
    for bad, message in [({"name": "nope", "num_tasks": 2}, "unknown task family"),
                         ({"name": "quadratics", "num_tasks": 0}, "num_tasks"),
                         ({"name": "quadratics", "num_tasks": 10_000}, "at most"),
                         ({"name": "quadratics", "num_tasks": 2, "seed": -1}, "seed")]:  # fmt: skip
        with pytest.raises(UserError, match=message):
            parse_family(bad, "family")
    run = parse_meta_run(
        {"optimizer": {"name": "celo"}, "family": {"name": "quadratics", "num_tasks": 2}}
    )
    assert run.tasks == () and run.family.num_tasks == 2
    with pytest.raises(UserError, match="tasks"):
        parse_meta_run({"optimizer": {"name": "celo"}})


def test_inner_runs_follow_the_schedule_at_a_drawn_learning_rate():
    obj = MetaObjective(horizon=100, truncation=10, schedule="warmup_cosine", warmup=0.1,
                        lr_spread=3.0)  # fmt: skip
    steps = jnp.arange(101)
    factor = np.asarray(jax.vmap(lambda s: learning_rate_factor(obj, s, jnp.asarray(100)))(steps))
    expected = np.where(
        np.arange(101) < 10,
        np.arange(101) / 10,
        0.5 * (1 + np.cos(np.pi * (np.arange(101) - 10) / 90)),
    )
    np.testing.assert_allclose(factor, expected, atol=1e-6)
    adam = optax.with_extra_args_support(optax.adam(1e-2))
    params = {"w": jnp.ones((3, 2))}
    grads = {"w": jnp.arange(6.0).reshape(3, 2)}
    plain = adam.update(grads, adam.init(params), params)[0]["w"]
    moved = scheduled(adam, obj, jnp.float32(2.0), jnp.asarray(100))
    at_20 = moved.update(grads, moved.init(params), params, step=jnp.asarray(20))[0]["w"]
    np.testing.assert_allclose(at_20, 2.0 * expected[20] * plain, rtol=1e-5)
    theta = {"log_lr": jnp.log(jnp.float32(1e-2))}
    keys = jax.random.split(jax.random.key(5), 64)
    start = jax.vmap(lambda k: start_run(TASK, learnable_adamw, theta, k, obj).lr_factor)
    factors = np.asarray(start(keys))
    assert factors.min() >= 1 / 3 and factors.max() <= 3 and factors.std() > 0.3
    constant = dataclasses.replace(obj, schedule="constant", lr_spread=1.0)
    assert scheduled(adam, constant, jnp.float32(1.0), jnp.asarray(100)) is adam
    run = start_run(TASK, learnable_adamw, theta, keys[0], constant)
    assert float(run.lr_factor) == 1.0
    with pytest.raises(ValueError, match="unknown schedule"):
        MetaObjective(schedule="cosine")
    with pytest.raises(ValueError, match="lr_spread"):
        MetaObjective(lr_spread=0.5)
