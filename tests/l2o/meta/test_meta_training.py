"""Meta-gradient estimators, the outer loop, NaN handling and checkpoints."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from l2o.meta import checkpoint
from l2o.meta.estimators import EstimatorConfig, make_estimator
from l2o.meta.objective import MAX_META_LOSS, MetaObjective, start_run, truncation_loss
from l2o.meta.trainer import make_meta_trainer
from l2o.meta.types import OuterConfig
from tasks import synthetic


def learnable_sgd(theta):
    """SGD whose log learning rate and momentum logit are theta (a 2-parameter meta-problem)."""
    lr = jnp.exp(theta["log_lr"])
    return optax.with_extra_args_support(optax.sgd(lr, momentum=jax.nn.sigmoid(theta["m"])))


def init_theta(key, lr=0.02):
    return {"log_lr": jnp.log(jnp.float32(lr)), "m": jnp.float32(0.0)}


QUADRATIC = synthetic.quadratic(dim=10, condition_number=20.0, seed=0)
LINEAR = MetaObjective(horizon=20, truncation=5, objective="mean_train", log=False)


def _vector(g):
    return np.array([g["log_lr"], g["m"]], np.float64)


def _cos(a, b):
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _mean_estimate(name, num_tasks, num_pairs, outer_steps):
    est = make_estimator(
        QUADRATIC, learnable_sgd, LINEAR, EstimatorConfig(name, num_tasks, num_pairs, 0.01)
    )
    theta = init_theta(None)
    state = est.init(theta, jax.random.key(0))
    step = jax.jit(est.estimate)
    grads = []
    for i in range(outer_steps):
        grad, state, _ = step(theta, state, jax.random.key(100 + i))
        grads.append(_vector(grad))
    return np.mean(grads, axis=0)


@pytest.fixture(scope="module")
def whole_horizon_gradient():
    """The exact gradient of the whole-horizon objective (the quadratic is deterministic)."""
    full = MetaObjective(horizon=20, truncation=20, objective="mean_train", log=False)

    def loss(theta, key):
        run = start_run(QUADRATIC, learnable_sgd, theta, key, full, stagger=False)
        return truncation_loss(QUADRATIC, learnable_sgd, full, theta, key, run)[0]

    keys = jax.random.split(jax.random.key(1), 256)
    return _vector(
        jax.grad(lambda t: jax.vmap(lambda k: loss(t, k))(keys).mean())(init_theta(None))
    )


@pytest.mark.slow
def test_pes_agrees_with_full_unroll_es_while_truncated_es_is_biased(whole_horizon_gradient):
    true = whole_horizon_gradient
    full_es = _mean_estimate("full_es", 64, 8, 4)
    pes = _mean_estimate("pes", 64, 4, 32)
    truncated = _mean_estimate("truncated_es", 64, 4, 32)
    assert _cos(full_es, true) >= 0.99
    assert _cos(pes, full_es) >= 0.9
    pes_error = np.linalg.norm(pes - true) / np.linalg.norm(true)
    truncated_error = np.linalg.norm(truncated - true) / np.linalg.norm(true)
    assert pes_error < 0.15, pes_error
    assert truncated_error > 0.25 and truncated_error > 2 * pes_error, (truncated_error, pes_error)


def test_tbptt_gradient_matches_finite_differences():
    obj = MetaObjective(horizon=10, truncation=5, objective="mean_train", log=True)
    theta = init_theta(None, lr=0.01)
    run = start_run(QUADRATIC, learnable_sgd, theta, jax.random.key(0), obj, stagger=False)

    def loss(theta):
        return truncation_loss(QUADRATIC, learnable_sgd, obj, theta, jax.random.key(1), run)[0]

    grad = _vector(jax.grad(loss)(theta))
    h = 1e-2
    for i, name in enumerate(("log_lr", "m")):
        plus = {**theta, name: theta[name] + h}
        minus = {**theta, name: theta[name] - h}
        fd = (float(loss(plus)) - float(loss(minus))) / (2 * h)
        assert grad[i] == pytest.approx(fd, rel=2e-2, abs=1e-4)


def _trainer(estimator="pes", lr=0.02, steps=30, seed=0):
    return make_meta_trainer(
        [QUADRATIC],
        lambda k: init_theta(k, lr),
        learnable_sgd,
        MetaObjective(horizon=40, truncation=10),
        EstimatorConfig(estimator, num_tasks=8, num_pairs=1, sigma=0.05),
        OuterConfig(steps=steps, learning_rate=0.05, seed=seed),
    )


@pytest.mark.parametrize("estimator", ["pes", "tbptt"])
def test_meta_training_raises_a_too_small_learning_rate(estimator):
    trainer = _trainer(estimator, lr=1e-3)
    state = trainer.init()
    for _ in range(30):
        state, metrics = trainer.step(state)
    assert float(state.theta["log_lr"]) > np.log(1e-3) + 1.0
    assert np.isfinite(float(metrics["meta_loss"]))


def test_diverging_inner_runs_are_penalized_not_fatal():
    trainer = _trainer("pes", lr=10.0)  # the quadratic's largest curvature is 20: diverges
    state = trainer.init()
    for _ in range(4):
        state, metrics = trainer.step(state)
    assert float(metrics["penalized"]) > 0.5
    assert float(metrics["meta_loss"]) <= MAX_META_LOSS
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.theta))


def test_resume_from_a_checkpoint_is_bit_identical(tmp_path):
    trainer = _trainer("pes")
    uninterrupted = trainer.init()
    for _ in range(6):
        uninterrupted, _ = trainer.step(uninterrupted)

    state = trainer.init()
    for _ in range(3):
        state, _ = trainer.step(state)
    checkpoint.save(tmp_path, 3, state, {"kind": "test"})
    fresh = _trainer("pes")  # a new process would rebuild everything from the config
    template = fresh.init()
    restored, meta = checkpoint.load(checkpoint.list_checkpoints(tmp_path)[-1], template)
    assert meta["step"] == 3 and int(restored.step) == 3
    for _ in range(3):
        restored, _ = fresh.step(restored)
    for a, b in zip(jax.tree.leaves(uninterrupted), jax.tree.leaves(restored), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_torn_or_corrupt_checkpoints_fall_back_to_the_previous_one(tmp_path):
    tree = {"a": jnp.arange(4.0), "k": jax.random.key(3)}
    checkpoint.save(tmp_path, 1, tree, {})
    newest = checkpoint.save(tmp_path, 2, jax.tree.map(lambda x: x, tree), {})
    newest.write_bytes(newest.read_bytes()[: len(newest.read_bytes()) // 2])  # torn write
    restored, meta, skipped = checkpoint.load_latest(tmp_path, tree)
    assert meta["step"] == 1 and len(skipped) == 1 and "ckpt_00000002" in skipped[0]
    np.testing.assert_array_equal(restored["a"], np.arange(4.0))
    with pytest.raises(checkpoint.CheckpointError, match="needs"):
        checkpoint.load(
            checkpoint.list_checkpoints(tmp_path)[0], {"a": jnp.zeros(5), "k": tree["k"]}
        )


def test_only_the_newest_checkpoints_are_kept(tmp_path):
    for step in range(5):
        checkpoint.save(tmp_path, step, {"x": jnp.zeros(2)}, {}, keep=2)
    assert [p.name for p in checkpoint.list_checkpoints(tmp_path)] == [
        "ckpt_00000003.npz",
        "ckpt_00000004.npz",
    ]


@pytest.mark.parametrize("strategy", ["open_es", "cma_es"])
def test_evosax_strategies_raise_a_too_small_learning_rate(strategy):
    trainer = make_meta_trainer(
        [QUADRATIC],
        lambda k: init_theta(k, 1e-3),
        learnable_sgd,
        MetaObjective(horizon=40, truncation=10),
        EstimatorConfig(strategy, num_tasks=4, sigma=0.3, population_size=8),
        OuterConfig(steps=20, learning_rate=0.1),
    )
    state = trainer.init()
    first = None
    for _ in range(20):
        state, metrics = trainer.step(state)
        first = float(metrics["meta_loss"]) if first is None else first
    assert float(state.theta["log_lr"]) > np.log(1e-3) + 1.0
    assert float(metrics["meta_loss"]) < first - 0.5


def test_rescale_augmentation_redraws_parameter_scales_per_run():
    obj = MetaObjective(horizon=10, truncation=5, rescale=2.0)
    theta = init_theta(None)
    runs = [start_run(QUADRATIC, learnable_sgd, theta, jax.random.key(i), obj) for i in (0, 1)]
    run_key = jax.random.split(jax.random.key(0))[0]
    plain = QUADRATIC.init(jax.random.split(jax.random.fold_in(run_key, 0), 3)[0])
    scales = [np.asarray(jax.tree.leaves(r.scales)[0]) for r in runs]
    assert scales[0] != scales[1] and all(1e-2 <= s <= 1e2 for s in scales)
    np.testing.assert_allclose(
        np.asarray(jax.tree.leaves(runs[0].train.params)[0]) * scales[0],
        np.asarray(jax.tree.leaves(plain)[0]), rtol=1e-5,
    )  # fmt: skip
    run = runs[0]
    for i in range(4):  # through a restart at the horizon: new scales
        _, run = jax.jit(truncation_loss, static_argnums=(0, 1, 2))(
            QUADRATIC, learnable_sgd, obj, theta, jax.random.key(10 + i), run
        )
    assert int(run.restarts) >= 1
    assert np.asarray(jax.tree.leaves(run.scales)[0]) != scales[0]
