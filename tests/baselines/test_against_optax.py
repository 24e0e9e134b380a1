"""Every baseline against optax's counterpart (same math, same numbers), and the paper-faithful
choices where we differ from optax against NumPy transcriptions of the papers' equations."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import baselines

STEPS = 100
TOLERANCE = 1e-5


def random_params(key: jax.Array) -> dict[str, jax.Array]:
    """A matrix, a vector and a scalar."""
    kw, kb, ks = jax.random.split(key, 3)
    return {
        "w": jax.random.normal(kw, (4, 3)),
        "b": jax.random.normal(kb, (3,)),
        "s": jax.random.normal(ks, ()),
    }


def gradient(t: jax.Array) -> dict[str, jax.Array]:
    """Step `t`'s gradient from a fixed random stream, independent of the params."""
    return random_params(jax.random.fold_in(jax.random.key(1), t))


def trajectory(optimizer: optax.GradientTransformation, grads):
    """Updates and params after each update from fixed params: `[steps, ...]` trees."""

    def step(carry, g):
        params, opt_state = carry
        updates, opt_state = optimizer.update(g, opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (updates, params)

    params = random_params(jax.random.key(0))
    return jax.lax.scan(step, (params, optimizer.init(params)), grads)[1]


def max_relative_error(ours, reference) -> float:
    """Largest `max|a - b| / max|b|` over steps and leaves (each leaf of each step normwise)."""
    worst = 0.0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        scale = np.maximum(np.abs(b).max(axis=1), 1e-30)
        worst = max(worst, float((np.abs(a - b).max(axis=1) / scale).max()))
    return worst


# id: (ours, optax's optimizer with the arguments that give the same math)
CASES = {
    "sgd": (baselines.sgd(0.1), optax.sgd(0.1)),
    "momentum": (baselines.momentum(0.05, 0.9), optax.sgd(0.05, momentum=0.9)),
    "nesterov": (baselines.nesterov(0.05, 0.9), optax.sgd(0.05, momentum=0.9, nesterov=True)),
    "adagrad": (
        baselines.adagrad(0.1),
        optax.adagrad(0.1, initial_accumulator_value=0.1, eps=1e-7),
    ),
    "adadelta": (
        baselines.adadelta(1.0, rho=0.95, eps=1e-6),
        optax.adadelta(1.0, rho=0.95, eps=1e-6),
    ),
    "rmsprop": (baselines.rmsprop(1e-2), optax.rmsprop(1e-2, decay=0.9, eps=1e-8)),
    "rmsprop_centered": (
        baselines.rmsprop(1e-2, centered=True),
        optax.rmsprop(1e-2, decay=0.9, eps=1e-8, centered=True),
    ),
    "adam": (baselines.adam(1e-2), optax.adam(1e-2)),
    "adam_eps_root": (
        baselines.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
        optax.adam(1e-2, b1=0.8, b2=0.99, eps=1e-6, eps_root=1e-8),
    ),
    "adamw": (baselines.adamw(1e-2, weight_decay=0.1), optax.adamw(1e-2, weight_decay=0.1)),
    "amsgrad": (baselines.amsgrad(1e-2), optax.amsgrad(1e-2)),
    "nadam": (baselines.nadam(1e-2), optax.nadam(1e-2)),
    "adamax": (baselines.adamax(1e-2), optax.adamax(1e-2)),
    # optax's default threshold is the authors' code's rho_t >= 5; we follow the paper's rho_t > 4.
    "radam": (baselines.radam(1e-2), optax.radam(1e-2, threshold=4.0)),
    "radam_threshold5": (baselines.radam(1e-2, threshold=5.0), optax.radam(1e-2)),
    # The same math only without weight decay: see test_lars_weight_decay_follows_the_paper.
    "lars": (baselines.lars(10.0), optax.lars(10.0, weight_decay=0.0, trust_coefficient=0.001)),
    "lars_nesterov": (
        baselines.lars(10.0, nesterov=True, eps=1e-8),
        optax.lars(10.0, eps=1e-8, nesterov=True),
    ),
    "lamb": (baselines.lamb(1e-2, weight_decay=0.1), optax.lamb(1e-2, weight_decay=0.1)),
    "lion": (baselines.lion(1e-3, weight_decay=0.1), optax.lion(1e-3, weight_decay=0.1)),
    "adam_schedule": (
        baselines.adam(optax.cosine_decay_schedule(1e-2, 50)),
        optax.adam(optax.cosine_decay_schedule(1e-2, 50)),
    ),
}


# Beyond optax's math: LARS with the paper's weight decay, and optax's LARS for contrast.
LARS_PAPER = {"learning_rate": 10.0, "weight_decay": 0.05}
EXTRA = {"lars_paper": baselines.lars(**LARS_PAPER), "optax_lars_paper": optax.lars(**LARS_PAPER)}


@pytest.fixture(scope="module")
def trajectories():
    """Every trajectory of this file, compiled as one program (one compilation is much cheaper
    than fifty small ones)."""

    @jax.jit
    def run():
        grads = jax.vmap(gradient)(jnp.arange(STEPS))
        pairs = {
            case: tuple(trajectory(opt, grads) for opt in pair) for case, pair in CASES.items()
        }
        return pairs, {name: trajectory(opt, grads) for name, opt in EXTRA.items()}

    return run()


@pytest.mark.parametrize("case", list(CASES))
def test_matches_optax(case, trajectories):
    (ours_updates, ours_params), (ref_updates, ref_params) = trajectories[0][case]
    assert max_relative_error(ours_updates, ref_updates) <= TOLERANCE
    assert max_relative_error(ours_params, ref_params) <= TOLERANCE
    # The params really moved, so a wrong sign or a missing learning rate would show.
    start = jax.tree.map(lambda p: p[:1], ref_params)
    assert max_relative_error(jax.tree.map(lambda p: p[-1:], ref_params), start) > 1e-3


def test_every_first_order_optimizer_has_an_optax_case():
    first_order = {"sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam"}
    first_order |= {"adamw", "amsgrad", "nadam", "adamax", "radam", "lars", "lamb", "lion"}
    assert first_order <= set(baselines.OPTIMIZERS)
    assert first_order <= {case.split("_")[0] for case in CASES}


def numpy_params_and_gradients(steps: int = STEPS):
    """The params and gradient stream of `trajectory`, as float64 NumPy arrays."""
    params = {k: np.asarray(v, np.float64) for k, v in random_params(jax.random.key(0)).items()}
    grads = [{k: np.asarray(v, np.float64) for k, v in gradient(t).items()} for t in range(steps)]
    return params, grads


def test_lars_weight_decay_follows_the_paper(trajectories):
    """You et al. 2017, Algorithm 1: the local rate divides by ||g|| + beta ||w|| (optax's lars
    divides by ||g + beta w||, so it differs once weight_decay > 0)."""
    gamma, beta, eta = LARS_PAPER["learning_rate"], LARS_PAPER["weight_decay"], 0.001
    m = 0.9
    params, grads = numpy_params_and_gradients()
    v = {k: np.zeros_like(w) for k, w in params.items()}
    expected = []
    for g in grads:
        for k, w in params.items():
            w_norm, g_norm = np.linalg.norm(w), np.linalg.norm(g[k])
            local_lr = eta * w_norm / (g_norm + beta * w_norm) if w_norm and g_norm else 1.0
            v[k] = m * v[k] + gamma * local_lr * (g[k] + beta * w)
        params = {k: w - v[k] for k, w in params.items()}
        expected.append(params)
    expected = jax.tree.map(lambda *xs: np.stack(xs), *expected)

    assert max_relative_error(trajectories[1]["lars_paper"][1], expected) <= TOLERANCE
    assert max_relative_error(trajectories[1]["optax_lars_paper"][1], expected) > 1e-3


def test_radam_follows_the_paper(trajectories):
    """Liu et al. 2020, Algorithm 2 (as in the seed lectures): rectified once rho_t > 4, else the
    bias-corrected momentum alone; eps added to sqrt(v_hat) as in every implementation."""
    lr, b1, b2, eps = 1e-2, 0.9, 0.999, 1e-8
    params, grads = numpy_params_and_gradients()
    mu = {k: np.zeros_like(w) for k, w in params.items()}
    nu = {k: np.zeros_like(w) for k, w in params.items()}
    rho_inf = 2 / (1 - b2) - 1
    expected, rectified = [], []
    for t, g in enumerate(grads, start=1):
        rho = rho_inf - 2 * t * b2**t / (1 - b2**t)
        rectified.append(rho > 4)
        for k, w in params.items():
            mu[k] = b1 * mu[k] + (1 - b1) * g[k]
            nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
            mu_hat, nu_hat = mu[k] / (1 - b1**t), nu[k] / (1 - b2**t)
            if rho > 4:
                r = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
                params[k] = w - lr * r * mu_hat / (np.sqrt(nu_hat) + eps)
            else:
                params[k] = w - lr * mu_hat
        expected.append(dict(params))
    expected = jax.tree.map(lambda *xs: np.stack(xs), *expected)
    assert rectified.index(True) == 4  # step 5, where optax's default (rho_t >= 5) is not yet

    ours = trajectories[0]["radam"][0][1]  # baselines.radam(1e-2), all else default
    assert max_relative_error(ours, expected) <= TOLERANCE
