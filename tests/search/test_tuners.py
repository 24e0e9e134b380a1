"""Search spaces, the ES adapter and the tuners: gradient descent on quadratic_k100 has a
closed-form loss for every learning rate, so the best rate on a grid is known exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optuna
import pytest

from baselines import get_optimizer
from search import spaces
from search.bayes import StudyMismatchError, open_study, study_settings, tpe_search
from search.es import make_strategy
from search.objective import PENALTY, evaluate_population, objective_values, penalize_nonfinite
from search.tuners import cmaes_search, grid_search, random_search
from tasks import get_task

STEPS = 50
SEEDS = [0, 1]
LR_SPACE = {"learning_rate": {"type": "log_uniform", "low": 1e-3, "high": 1.0}}


def sgd(hparams):
    return get_optimizer("sgd", **hparams)


@pytest.fixture(scope="module")
def quadratic():
    return get_task("quadratic_k100")


@pytest.fixture(scope="module")
def closed_form(quadratic):
    """`loss(lrs)`: the mean over SEEDS of the loss after STEPS steps of gradient descent.

    f(x) = 1/2 d^T H d with d = x - x*; each step multiplies d's component along the
    eigenvector i by (1 - lr lambda_i), so loss = 1/2 sum_i lambda_i (1 - lr lambda_i)^(2N) c_i^2
    with c = Q^T d_0 (H, x* and d_0 recovered from the task's Hessian and gradient).
    """

    def f(x):
        return quadratic.loss({"x": x}, None, ())[0]

    starts = [quadratic.init(jax.random.split(jax.random.key(s))[0])["x"] for s in SEEDS]
    H = np.asarray(jax.jit(jax.hessian(f))(starts[0]), np.float64)
    lam, Q = np.linalg.eigh(H)
    cs = [Q.T @ np.linalg.solve(H, np.asarray(jax.grad(f)(x0), np.float64)) for x0 in starts]

    def loss(lrs):
        factor = (1.0 - np.asarray(lrs, np.float64)[:, None] * lam) ** (2 * STEPS)
        losses = np.mean([0.5 * np.sum(lam * factor * c**2, axis=1) for c in cs], axis=0)
        return np.minimum(losses, PENALTY)  # as the objective: diverged runs rank last

    return loss


@pytest.fixture(scope="module")
def best_lr(closed_form):
    """The continuous optimum of the closed form on the search interval."""
    dense = np.geomspace(1e-3, 1.0, 200_001)
    return float(dense[np.argmin(closed_form(dense))])


# ---------------------------------------------------------------- spaces


@pytest.mark.parametrize(
    "spec, key, message",
    [
        ({"lr": {"type": "loguniform", "low": 1e-3, "high": 1.0}}, "lr", "unknown type"),
        ({"lr": {"type": "uniform", "low": 1.0, "high": 1.0}}, "lr", "smaller than high"),
        ({"lr": {"type": "log_uniform", "low": 0.0, "high": 1.0}}, "lr", "low > 0"),
        ({"lr": {"type": "log_uniform", "low": 1e-3, "hi": 1.0}}, "lr", "unknown key 'hi'"),
        ({"lr": {"type": "uniform", "low": "small", "high": 1.0}}, "lr", "must be a number"),
        ({"b2": {"type": "one_minus_log_uniform", "low": 0.9, "high": 1.0}}, "b2", "< 1"),
        ({"n": {"type": "int", "low": 1.5, "high": 4}}, "n", "integers"),
        ({"m": {"type": "choice", "choices": []}}, "m", "non-empty"),
        ({"m": {"type": "choice", "choices": [0.9, True]}}, "m", "number"),
        ({"lr": [1e-3, 1e-2]}, "lr", "expected a mapping"),
        ({"b3": {"type": "uniform", "low": 0.0, "high": 1.0}}, "b3", "valid: learning_rate"),
        ({"b1": 0.9}, "", "no searched hyperparameter"),
    ],
)
def test_space_errors_name_the_key(spec, key, message):
    with pytest.raises(ValueError, match=message) as info:
        spaces.parse_space(spec, allowed=["learning_rate", "lr", "b1", "b2", "n", "m"])
    assert str(info.value).startswith(key)


def test_space_maps_the_unit_cube_in_each_scale():
    space = spaces.parse_space(
        {
            "learning_rate": {"type": "log_uniform", "low": 1e-4, "high": 1.0},
            "b1": {"type": "uniform", "low": 0.5, "high": 0.99},
            "b2": {"type": "one_minus_log_uniform", "low": 0.9, "high": 0.9999},
            "n": {"type": "int", "low": 1, "high": 4},
            "m": {"type": "choice", "choices": [0.0, 0.9]},
            "nesterov": True,
            "eps": "1e-8",  # PyYAML reads 1e-8 as a string; a fixed value stays as written
        }
    )
    assert space.names == ("learning_rate", "b1", "b2", "n", "m")
    assert space.fixed == {"nesterov": True, "eps": "1e-8"}
    mid = spaces.from_unit(space, np.full((1, 5), 0.5))
    np.testing.assert_allclose(mid["learning_rate"], [1e-2])  # geometric midpoint
    np.testing.assert_allclose(mid["b1"], [0.745])
    np.testing.assert_allclose(mid["b2"], [1 - np.sqrt(0.1 * 1e-4)])  # 1 - b2 is log-spaced
    assert mid["n"][0] == 3 and mid["m"][0] == 0.9
    u = np.asarray(jax.random.uniform(jax.random.key(0), (200, 5)))
    values = spaces.from_unit(space, u)
    assert set(values["n"]) == {1, 2, 3, 4} and set(values["m"]) == {0.0, 0.9}
    np.testing.assert_allclose(spaces.to_unit(space, values)[:, :3], u[:, :3], atol=1e-9)
    assert spaces.parse_space(spaces.to_spec(space)) == space
    np.testing.assert_allclose(
        spaces.reflect(np.array([-0.25, 0.25, 1.25, 2.5])), [0.25, 0.25, 0.75, 0.5]
    )


def test_grid_is_the_cartesian_product_in_each_scale():
    space = spaces.parse_space(
        {**LR_SPACE, "momentum": {"type": "choice", "choices": [0.0, 0.5, 0.9]}}
    )
    values = spaces.grid(space, 4)
    assert len(values["learning_rate"]) == 12
    np.testing.assert_allclose(sorted(set(values["learning_rate"])), [1e-3, 1e-2, 1e-1, 1.0])
    np.testing.assert_array_equal(values["momentum"][:3], [0.0, 0.5, 0.9])


# ---------------------------------------------------------------- objective and ES


def test_the_penalty_replaces_nan_and_inf():
    out = np.asarray(penalize_nonfinite(jnp.array([np.nan, np.inf, -np.inf, 1e20, 3.0])))
    np.testing.assert_array_equal(out, np.float32([PENALTY, PENALTY, PENALTY, PENALTY, 3.0]))
    np.testing.assert_array_equal(
        objective_values(np.array([[1.0, np.nan], [1.0, 3.0]])), [PENALTY, 2.0]
    )
    jitted = jax.jit(penalize_nonfinite)(jnp.array([np.nan, 0.5]))
    assert np.all(np.isfinite(jitted))


def test_es_adapter_minimises_a_sphere():
    # CMA-ES goes through the adapter in test_random_search_and_cmaes_get_close_to_the_best.
    strategy = make_strategy("open_es", 16, 2, learning_rate=0.05)
    target = jnp.array([0.3, -0.2])
    key, init_key = jax.random.split(jax.random.key(0))
    state = strategy.init(init_key, jnp.zeros(2))
    for step_key in jax.random.split(key, 40):
        ask_key, tell_key = jax.random.split(step_key)
        population, state = strategy.ask(ask_key, state)
        assert population.shape == (16, 2)
        state, metrics = strategy.tell(
            tell_key, population, jnp.sum((population - target[None]) ** 2, 1), state
        )
    np.testing.assert_allclose(strategy.mean(state), target, atol=0.05)
    assert float(strategy.best(state)[1]) == float(metrics["best_fitness"])
    with pytest.raises(ValueError, match="valid: std_init"):
        make_strategy("cma_es", 8, 2, sigma=1.0)
    with pytest.raises(ValueError, match="cma_es, open_es"):
        make_strategy("pso", 8, 2)


# ---------------------------------------------------------------- tuners


def test_grid_search_returns_the_exact_best_learning_rate(quadratic, closed_form):
    space = spaces.parse_space(LR_SPACE)
    result = grid_search(quadratic, sgd, space, points_per_dim=25, num_steps=STEPS, seeds=SEEDS)
    lrs = np.array([t["params"]["learning_rate"] for t in result.trials])
    values = np.array([t["value"] for t in result.trials])
    exact = closed_form(lrs)
    np.testing.assert_allclose(values, exact, rtol=1e-4)  # the trained losses are the formula's
    first, second = np.sort(exact)[:2]
    assert second > 1.2 * first  # float32 cannot swap the winner
    assert result.best_params["learning_rate"] == lrs[np.argmin(exact)]
    assert result.best_value == values.min()
    assert values[-1] == PENALTY  # lr = 1 diverges: the penalty, not NaN
    assert all(t["state"] == "complete" for t in result.trials) and len(result.trials) == 25


@pytest.mark.slow
def test_random_search_and_cmaes_get_close_to_the_best(quadratic, best_lr):
    space = spaces.parse_space(LR_SPACE)
    common = {"num_steps": STEPS, "seeds": SEEDS, "seed": 0}
    rand = random_search(quadratic, sgd, space, num_trials=64, **common)
    cma = cmaes_search(quadratic, sgd, space, num_trials=24, population_size=8, **common)
    assert len(rand.trials) == 64 and len(cma.trials) == 24
    assert [t["generation"] for t in cma.trials[::8]] == [0, 1, 2]
    assert abs(np.log(rand.best_params["learning_rate"] / best_lr)) < np.log(1.5)
    assert abs(np.log(cma.best_params["learning_rate"] / best_lr)) < np.log(1.1)
    again = random_search(quadratic, sgd, space, num_trials=64, **common)
    assert again == rand  # the same seed gives the same result
    other = spaces.sample(space, jax.random.key(1), 64)["learning_rate"]
    assert not np.allclose(other, [t["params"]["learning_rate"] for t in rand.trials])


def test_fixed_values_reach_the_optimizer(quadratic, closed_form):
    space = spaces.parse_space({**LR_SPACE, "momentum": 0.0})  # heavy ball without momentum

    def momentum(hparams):
        return get_optimizer("momentum", **hparams)

    result = grid_search(quadratic, momentum, space, points_per_dim=7, num_steps=STEPS, seeds=SEEDS)
    lrs = np.array([t["params"]["learning_rate"] for t in result.trials])
    np.testing.assert_allclose([t["value"] for t in result.trials], closed_form(lrs), rtol=1e-4)
    assert result.best_params == {
        "momentum": 0.0,
        "learning_rate": lrs[np.argmin(closed_form(lrs))],
    }


# ---------------------------------------------------------------- TPE + Hyperband


@pytest.mark.slow
def test_tpe_is_deterministic_and_agrees_with_the_batch_objective(quadratic, tmp_path):
    space = spaces.parse_space(LR_SPACE)
    common = {"num_trials": 10, "num_steps": STEPS, "seeds": SEEDS, "seed": 3, "num_reports": 5}
    a = tpe_search(quadratic, sgd, space, storage_path=tmp_path / "a.journal", **common)
    b = tpe_search(quadratic, sgd, space, storage_path=tmp_path / "b.journal", **common)
    assert a == b
    states = {t["state"] for t in a.trials}
    assert len(a.trials) == 10 and states <= {"complete", "pruned"} and "complete" in states
    # A complete trial's value is the batch tuners' objective for the same hyperparameters.
    best = {"learning_rate": np.float32([a.best_params["learning_rate"]])}
    batch = evaluate_population(quadratic, sgd, best, SEEDS, STEPS)
    np.testing.assert_allclose(batch, [a.best_value], rtol=1e-5)


def test_tpe_resumes_and_reruns_a_trial_left_running(quadratic, tmp_path):
    space = spaces.parse_space(LR_SPACE)
    path = tmp_path / "study.journal"
    common = {"num_steps": STEPS, "seeds": SEEDS, "seed": 0, "num_reports": 5, "storage_path": path}
    first = tpe_search(quadratic, sgd, space, num_trials=4, **common)
    # A killed process leaves its trial RUNNING: simulate one.
    settings = study_settings(quadratic.name, space, STEPS, SEEDS, 5)
    study = open_study(path, "tune", settings, seed=0)
    left = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)})
    lost_lr = left.params["learning_rate"]
    result = tpe_search(quadratic, sgd, space, num_trials=7, **common)
    finished = [t for t in result.trials if t["state"] in ("complete", "pruned")]
    assert len(finished) == 7
    assert result.trials[:4] == first.trials  # the earlier trials are kept
    assert result.trials[4]["state"] == "fail"
    rerun = result.trials[5]["params"]["learning_rate"]
    assert rerun == pytest.approx(lost_lr, rel=1e-6)  # the lost trial is run again
    with pytest.raises(StudyMismatchError, match="num_steps"):
        tpe_search(quadratic, sgd, space, num_trials=7, **{**common, "num_steps": STEPS + 1})
