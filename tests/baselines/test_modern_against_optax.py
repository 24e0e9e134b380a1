"""NAdamW, Muon, schedule-free AdamW, Adafactor and Prodigy against optax's counterparts with the
arguments that give the same math (100 random-gradient steps, and a short training run); where our
defaults differ from optax's on purpose both are pinned, and our default rule is checked against a
NumPy transcription of its paper or reference code."""

from __future__ import annotations

import inspect

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import baselines
import tasks
from baselines.muon import NS_COEFFS
from tasks.train import evaluation_params

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


def noise(t: jax.Array) -> dict[str, jax.Array]:
    """Step `t`'s draw from a fixed random stream."""
    return random_params(jax.random.fold_in(jax.random.key(1), t))


def gradient(params, n, pull: float):
    """`n + pull * params`: pure noise for `pull=0`, a noisy quadratic around 0 otherwise (Prodigy
    needs a finite distance to the solution to estimate)."""
    return jax.tree.map(lambda p, e: e + pull * p, params, n)


def trajectory(optimizer: optax.GradientTransformation, noises, pull: float = 0.0):
    """Updates and params after each update from fixed params: `[steps, ...]` trees, and the
    final state."""

    def step(carry, n):
        params, opt_state = carry
        updates, opt_state = optimizer.update(gradient(params, n, pull), opt_state, params)
        params = optax.apply_updates(params, updates)
        return (params, opt_state), (updates, params)

    params = random_params(jax.random.key(0))
    (_, state), (updates, params) = jax.lax.scan(step, (params, optimizer.init(params)), noises)
    return updates, params, state


def max_relative_error(ours, reference) -> float:
    """Largest `max|a - b| / max|b|` over steps and leaves (each leaf of each step normwise)."""
    worst = 0.0
    for a, b in zip(jax.tree.leaves(ours), jax.tree.leaves(reference), strict=True):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        a, b = a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)
        scale = np.maximum(np.abs(b).max(axis=1), 1e-30)
        worst = max(worst, float((np.abs(a - b).max(axis=1) / scale).max()))
    return worst


def warmup(peak: float, steps: int):
    """`peak * min(1, (count + 1) / steps)`: the paper's warm-up by 0-based update count."""
    return lambda count: peak * jnp.minimum(1.0, (count + 1) / steps)


def optax_schedule_free_adamw(schedule, weight_decay: float):
    """optax's schedule-free AdamW built from its parts, with its averaging weights evaluated at
    the step count of the `z` step (optax's own `schedule_free_adamw` takes them one step later)."""
    base = optax.chain(
        optax.scale_by_rms(0.999, 1e-8, eps_in_sqrt=False, bias_correction=True),
        optax.add_decayed_weights(weight_decay),
        optax.scale_by_learning_rate(schedule),
    )
    return optax.contrib.schedule_free(base, learning_rate=lambda n: schedule(n - 1), b1=0.9)


ADAFACTOR_SCHEDULE = optax.cosine_decay_schedule(0.1, 50)
PRODIGY_SCHEDULE = optax.cosine_decay_schedule(1.0, STEPS)

# id: (ours, optax's optimizer with the arguments that give the same math, gradient pull)
CASES = {
    "nadamw": (baselines.nadamw(1e-2, weight_decay=0.1), optax.nadamw(1e-2, weight_decay=0.1), 0),
    # Nesterov off: optax's bias-corrected look-ahead and NAdamW for the vectors are not ours.
    "muon": (
        baselines.muon(
            0.05,
            beta=0.9,
            nesterov=False,
            eps=1e-8,
            weight_decay=0.1,
            adam_learning_rate=3e-3,
            adam_b1=0.8,
            adam_b2=0.95,
            adam_weight_decay=0.05,
        ),
        optax.contrib.muon(
            0.05,
            beta=0.9,
            nesterov=False,
            eps=1e-8,
            weight_decay=0.1,
            adam_learning_rate=3e-3,
            adam_b1=0.8,
            adam_b2=0.95,
            adam_weight_decay=0.05,
        ),
        0,
    ),  # fmt: skip
    "schedule_free_adamw": (
        baselines.schedule_free_adamw(1e-2, weight_decay=0.1),
        optax.contrib.schedule_free_adamw(1e-2, weight_decay=0.1),
        0,
    ),
    "schedule_free_adamw_warmup": (
        baselines.schedule_free_adamw(1e-2, warmup_steps=10, weight_decay=0.1),
        optax_schedule_free_adamw(warmup(1e-2, 10), weight_decay=0.1),
        0,
    ),
    "adafactor": (baselines.adafactor(1e-2), optax.adafactor(1e-2, min_dim_size_to_factor=1), 0),
    "adafactor_momentum_decay": (
        baselines.adafactor(1e-2, b1=0.9, weight_decay_rate=1e-3, clipping_threshold=0.5),
        optax.adafactor(
            1e-2,
            min_dim_size_to_factor=1,
            momentum=0.9,
            weight_decay_rate=1e-3,
            clipping_threshold=0.5,
        ),
        0,
    ),  # fmt: skip
    "adafactor_unfactored_absolute": (
        baselines.adafactor(
            ADAFACTOR_SCHEDULE, decay_rate=0.5, multiply_by_parameter_scale=False, factored=False
        ),
        optax.adafactor(
            ADAFACTOR_SCHEDULE, decay_rate=0.5, multiply_by_parameter_scale=False, factored=False
        ),
        0,
    ),
    "prodigy": (
        baselines.prodigy(bias_correction=True, weight_decay=0.1),
        optax.contrib.prodigy(weight_decay=0.1),
        1.0,
    ),
    "prodigy_schedule_safeguard": (
        baselines.prodigy(
            PRODIGY_SCHEDULE,
            b3=0.99,
            d0=1e-4,
            d_coef=0.5,
            bias_correction=True,
            safeguard_warmup=True,
        ),
        optax.contrib.prodigy(
            PRODIGY_SCHEDULE, beta3=0.99, estim_lr0=1e-4, estim_lr_coef=0.5, safeguard_warmup=True
        ),
        1.0,
    ),  # fmt: skip
}
# optax's schedule-free update is `y_{t+1} - y_t` formed from the new params: it loses the
# update's low digits to cancellation, so only params are compared.
PARAMS_ONLY = {"schedule_free_adamw", "schedule_free_adamw_warmup"}

# Our default rule against optax's, where they differ on purpose (see each docstring). Prodigy
# starts from d0 = 1e-2: steps of 1e-6 are below float32's resolution of params near 1.
DIFFERENT = {
    "muon": (baselines.muon(), optax.contrib.muon(0.02), 0),
    "schedule_free_adamw_warmup": (
        baselines.schedule_free_adamw(1e-2, warmup_steps=10),
        optax.contrib.schedule_free_adamw(1e-2, warmup_steps=10),
        0,
    ),
    "adafactor": (baselines.adafactor(), optax.adafactor(), 0),
    "prodigy": (baselines.prodigy(d0=1e-2), optax.contrib.prodigy(estim_lr0=1e-2), 1.0),
}


@pytest.fixture(scope="module")
def trajectories():
    """Every trajectory of this file, compiled as one program."""

    @jax.jit
    def run():
        noises = jax.vmap(noise)(jnp.arange(STEPS))
        return {
            group: {
                case: tuple(trajectory(opt, noises, pull) for opt in (ours, ref))
                for case, (ours, ref, pull) in cases.items()
            }
            for group, cases in (("same", CASES), ("different", DIFFERENT))
        }

    return run()


@pytest.mark.parametrize("case", list(CASES))
def test_matches_optax(case, trajectories):
    (ours_updates, ours_params, _), (ref_updates, ref_params, _) = trajectories["same"][case]
    if case not in PARAMS_ONLY:
        assert max_relative_error(ours_updates, ref_updates) <= TOLERANCE
    assert max_relative_error(ours_params, ref_params) <= TOLERANCE
    # The params really moved, so a wrong sign or a missing learning rate would show.
    start = jax.tree.map(lambda p: p[:1], ref_params)
    assert max_relative_error(jax.tree.map(lambda p: p[-1:], ref_params), start) > 1e-3


def test_every_modern_optimizer_is_registered_and_compared():
    modern = {"nadamw", "muon", "schedule_free_adamw", "adafactor", "prodigy"}
    assert modern <= set(baselines.OPTIMIZERS)
    assert all(any(case.startswith(name) for case in CASES) for name in modern)
    assert modern == set(TRAINING)
    assert "nesterov" not in baselines.optimizer_hparams("nadamw")


@pytest.mark.parametrize("name", list(DIFFERENT))
def test_defaults_differ_from_optax_as_documented(name, trajectories):
    (_, ours, _), (_, theirs, _) = trajectories["different"][name]
    assert max_relative_error(ours, theirs) > 1e-3


def test_documented_default_values():
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}

    ours, theirs = defaults(baselines.muon), defaults(optax.contrib.muon)
    assert (ours["eps"], theirs["eps"]) == (1e-7, 1e-8)  # Jordan's normalisation; optax's
    assert ours["nesterov"] and theirs["nesterov"]  # but optax's look-ahead is bias-corrected
    assert (ours["learning_rate"], theirs["learning_rate"]) == (0.02, inspect.Parameter.empty)
    ours, theirs = defaults(baselines.adafactor), defaults(optax.adafactor)
    assert (ours["learning_rate"], theirs["learning_rate"]) == (1e-2, None)
    assert theirs["min_dim_size_to_factor"] == 128 and "min_dim_size_to_factor" not in ours
    assert (ours["b1"], theirs["momentum"]) == (0.0, None)
    ours, theirs = defaults(baselines.prodigy), defaults(optax.contrib.prodigy)
    assert not ours["bias_correction"] and "bias_correction" not in theirs  # optax: always on
    assert (ours["d0"], ours["d_coef"]) == (theirs["estim_lr0"], theirs["estim_lr_coef"])
    ours = defaults(baselines.schedule_free_adamw)
    theirs = defaults(optax.contrib.schedule_free_adamw)
    assert (ours["learning_rate"], ours["warmup_steps"]) == (theirs["learning_rate"], 0)


def test_optax_schedule_free_warmup_skips_the_first_step(trajectories):
    """optax's `z` step takes the warm-up rate of the step before: 0 at the first step."""
    (ours, _, _), (theirs, _, _) = trajectories["different"]["schedule_free_adamw_warmup"]
    first = [np.abs(np.asarray(u[0])).max() for u in jax.tree.leaves(theirs)]
    assert max(first) < 1e-6  # zero up to the rounding of its x = (y - (1 - b1) z) / b1
    assert min(np.abs(np.asarray(u[0])).max() for u in jax.tree.leaves(ours)) > 0


# --- our defaults against transcriptions of the papers and reference code -------------------


def numpy_start():
    """The params of `trajectory` and its noise stream, as float64 NumPy arrays."""
    params = {k: np.asarray(v, np.float64) for k, v in random_params(jax.random.key(0)).items()}
    noises = [{k: np.asarray(v, np.float64) for k, v in noise(t).items()} for t in range(STEPS)]
    return params, noises


def stacked(steps):
    return jax.tree.map(lambda *xs: np.stack(xs), *steps)


def test_muon_follows_jordan(trajectories):
    """Our default: Jordan's Muon (EMA momentum without bias correction, Nesterov's
    (1 - b) g + b m, five quintic Newton-Schulz steps after a Frobenius normalisation, times
    sqrt(max(1, out / in))), and Adam for the vector and the scalar."""
    lr, beta = 0.02, 0.95
    a, b, c = 3.4445, -4.7750, 2.0315

    def newton_schulz(G):
        X = G.T if G.shape[0] > G.shape[1] else G
        X = X / (np.linalg.norm(X) + 1e-7)
        for _ in range(5):
            A = X @ X.T
            X = a * X + (b * A + c * A @ A) @ X
        return X.T if G.shape[0] > G.shape[1] else X

    params, noises = numpy_start()
    momentum = np.zeros_like(params["w"])
    mu = {k: np.zeros_like(params[k]) for k in ("b", "s")}
    nu = {k: np.zeros_like(params[k]) for k in ("b", "s")}
    expected = []
    for t, g in enumerate(noises, start=1):
        W = params["w"]
        momentum = beta * momentum + (1 - beta) * g["w"]
        O = newton_schulz(beta * momentum + (1 - beta) * g["w"])
        params["w"] = W - lr * np.sqrt(max(1, W.shape[1] / W.shape[0])) * O
        for k in ("b", "s"):
            mu[k] = 0.9 * mu[k] + 0.1 * g[k]
            nu[k] = 0.999 * nu[k] + 0.001 * g[k] ** 2
            step = mu[k] / (1 - 0.9**t) / (np.sqrt(nu[k] / (1 - 0.999**t)) + 1e-8)
            params[k] = params[k] - lr * step
        expected.append(dict(params))

    (_, ours, _), _ = trajectories["different"]["muon"]  # baselines.muon()
    assert max_relative_error(ours, stacked(expected)) <= TOLERANCE


def test_prodigy_follows_the_paper(trajectories):
    """Prodigy's Adam version without bias correction (the paper's and the authors' default),
    with the authors' d_{k+1} eps, on the noisy quadratic where d grows."""
    b1, b2, eps, d0 = 0.9, 0.999, 1e-8, 1e-2
    b3 = np.sqrt(b2)
    params, noises = numpy_start()
    x0 = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(x) for k, x in params.items()}
    s = {k: np.zeros_like(x) for k, x in params.items()}
    r, d, expected, ds = 0.0, d0, [], []
    for n in noises:
        g = {k: n[k] + params[k] for k in params}
        r = b3 * r + d**2 * sum(np.sum(g[k] * (x0[k] - params[k])) for k in params)
        for k in params:
            m[k] = b1 * m[k] + (1 - b1) * d * g[k]
            v[k] = b2 * v[k] + (1 - b2) * d**2 * g[k] ** 2
            s[k] = b3 * s[k] + d**2 * g[k]
        d_new = max(d, r / sum(np.abs(x).sum() for x in s.values()))
        params = {k: x - d * m[k] / (np.sqrt(v[k]) + d_new * eps) for k, x in params.items()}
        d = d_new
        expected.append(params)
        ds.append(d)
    assert ds[-1] > 10 * d0  # the estimate grew

    (_, ours, _), _ = trajectories["different"]["prodigy"]  # baselines.prodigy(d0=1e-2)
    assert max_relative_error(ours, stacked(expected)) <= 1e-4  # d's growth amplifies rounding


def test_schedule_free_follows_the_paper_and_evaluates_x(trajectories):
    """The paper's three sequences with warm-up gamma_t = lr min(1, t / T) in both the z step and
    the averaging weight; `schedule_free_eval_params` returns x."""
    lr, T, wd, b1, b2, eps = 1e-2, 10, 0.1, 0.9, 0.999, 1e-8
    params, noises = numpy_start()
    x = {k: v.copy() for k, v in params.items()}
    z = {k: v.copy() for k, v in params.items()}
    nu = {k: np.zeros_like(v) for k, v in params.items()}
    lr_max, weight_sum, expected_y, expected_x = 0.0, 0.0, [], []
    for t, g in enumerate(noises, start=1):
        gamma = lr * min(1.0, t / T)
        lr_max = max(lr_max, gamma)
        weight_sum += lr_max**2
        c = lr_max**2 / weight_sum
        for k in params:
            y = params[k]
            nu[k] = b2 * nu[k] + (1 - b2) * g[k] ** 2
            z[k] = z[k] - gamma * (g[k] / (np.sqrt(nu[k] / (1 - b2**t)) + eps) + wd * y)
            x[k] = (1 - c) * x[k] + c * z[k]
            params[k] = (1 - b1) * z[k] + b1 * x[k]
        expected_y.append(dict(params))
        expected_x.append(dict(x))

    (_, ours, state), _ = trajectories["same"]["schedule_free_adamw_warmup"]
    assert max_relative_error(ours, stacked(expected_y)) <= TOLERANCE
    last = jax.tree.map(lambda p: p[-1], ours)
    x_ours = baselines.schedule_free_eval_params(last, state)
    x_expected = {k: v[None] for k, v in expected_x[-1].items()}
    assert max_relative_error(jax.tree.map(lambda p: p[None], x_ours), x_expected) <= TOLERANCE


# --- evaluation params ----------------------------------------------------------------------


def test_schedule_free_eval_params_match_optax(trajectories):
    (_, ours, ours_state), (_, ref, ref_state) = trajectories["same"]["schedule_free_adamw"]
    ours_x = baselines.schedule_free_eval_params(jax.tree.map(lambda p: p[-1], ours), ours_state)
    ref_x = optax.contrib.schedule_free_eval_params(ref_state, jax.tree.map(lambda p: p[-1], ref))
    batch = jax.tree.map(lambda p: p[None], (ours_x, ref_x))
    assert max_relative_error(*batch) <= TOLERANCE
    assert max_relative_error(batch[0], jax.tree.map(lambda p: p[-1:], ours)) > 1e-3  # x != y


def test_the_inner_loop_evaluates_the_schedule_free_point_anywhere_in_a_state():
    sf = baselines.schedule_free_adamw(0.1)
    nested = optax.chain(
        optax.scale(1.0), optax.partition({"sf": sf}, lambda p: jax.tree.map(lambda _: "sf", p))
    )
    plain = optax.chain(baselines.clip_by_global_norm(1.0), baselines.adam())

    def two_steps(opt):
        params = random_params(jax.random.key(0))
        state = opt.init(params)
        for t in range(2):
            updates, state = opt.update(noise(t), state, params)
            params = optax.apply_updates(params, updates)
        return params, state

    params, state = two_steps(plain)
    assert evaluation_params(params, state) is params
    params, state = two_steps(sf)
    x = baselines.schedule_free_eval_params(params, state)
    assert not np.allclose(x["w"], params["w"])
    evaluated = jax.jit(evaluation_params)(*two_steps(nested))
    for a, b in zip(jax.tree.leaves(evaluated), jax.tree.leaves(x), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)

    two = optax.chain(sf, sf)
    with pytest.raises(ValueError, match="2 optimizer states name the weights"):
        evaluation_params(params, two.init(params))
    with pytest.raises(TypeError, match="ScheduleFreeState"):
        baselines.schedule_free_eval_params(params, plain.init(params))


# --- building blocks --------------------------------------------------------------------------


def test_newton_schulz_orthogonalises_roughly():
    x = jax.random.normal(jax.random.key(3), (9, 5))
    o = baselines.newton_schulz(x)
    singular_values = np.linalg.svd(np.asarray(o), compute_uv=False)
    assert 0.6 < singular_values.min() and singular_values.max() < 1.25  # Jordan: ~(0.7, 1.2)
    np.testing.assert_allclose(baselines.newton_schulz(x.T), o.T, rtol=1e-6, atol=1e-6)
    u, _, vt = np.linalg.svd(np.asarray(x, np.float64), full_matrices=False)
    assert np.sum(np.asarray(o) * (u @ vt)) > 0.8 * 5  # close to the polar factor U V^T


@pytest.mark.parametrize("shape", [(300, 40), (40, 300), (40, 30)])
def test_newton_schulz_matches_the_direct_iteration(shape):
    """The Gram-matrix form (long side >= 2x the short one) and the direct form both give
    Jordan's five quintic iterates, computed here in float64."""
    a, b, c = NS_COEFFS
    x = np.asarray(jax.random.normal(jax.random.key(4), shape), np.float64)
    X = x.T if shape[0] > shape[1] else x
    X = X / (np.linalg.norm(X) + 1e-7)
    for _ in range(5):
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    expected = X.T if shape[0] > shape[1] else X
    o = np.asarray(baselines.newton_schulz(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(o, expected, atol=1e-5 * np.abs(expected).max())


def test_muon_mask_chooses_the_matrices():
    params = {"t": jnp.ones((2, 4, 3)), "w": jnp.ones((4, 3)), "b": jnp.ones((3,))}
    keys = dict(zip(params, jax.random.split(jax.random.key(1), 3), strict=True))
    grads = {k: jax.random.normal(keys[k], p.shape) for k, p in params.items()}

    def mask(rule):
        return lambda tree: jax.tree.map(rule, tree)

    def first_update(opt, grads=grads, params=params):
        return opt.update(grads, opt.init(params), params)[0]

    # Nothing selected: exactly AdamW (with Muon's Adam hyperparameters).
    adamw = first_update(baselines.adamw(0.1, weight_decay=0.0))
    nothing = first_update(baselines.muon(0.1, muon_mask=mask(lambda _: False)))
    for a, b in zip(jax.tree.leaves(nothing), jax.tree.leaves(adamw), strict=True):
        np.testing.assert_array_equal(a, b)
    # A selected 3-D leaf is an (8, 3) matrix; the default leaves it (and the vector) to AdamW.
    at_least_2d = first_update(baselines.muon(0.1, muon_mask=mask(lambda x: x.ndim >= 2)))
    flat = {"t": grads["t"].reshape(8, 3)}, {"t": params["t"].reshape(8, 3)}
    np.testing.assert_allclose(
        at_least_2d["t"].reshape(8, 3), first_update(baselines.muon(0.1), *flat)["t"], rtol=1e-6
    )
    default = first_update(baselines.muon(0.1))
    np.testing.assert_array_equal(default["t"], adamw["t"])
    np.testing.assert_array_equal(default["b"], adamw["b"])
    np.testing.assert_array_equal(default["w"], at_least_2d["w"])
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        first_update(baselines.muon(0.1, muon_mask=mask(lambda _: True)))


def test_adafactor_factors_each_matrix_of_a_stack():
    """A (2, 4, 3) leaf is two (4, 3) matrices, each with its own row and column statistics
    (clipping and parameter scale, which take the whole leaf, switched off)."""
    opt = baselines.adafactor(1e-2, clipping_threshold=np.inf, multiply_by_parameter_scale=False)
    g = jax.random.normal(jax.random.key(4), (2, 4, 3)) * jnp.arange(1.0, 4.0)[None, None, :]
    stack = {"t": jnp.ones((2, 4, 3))}
    split = {"a": jnp.ones((4, 3)), "b": jnp.ones((4, 3))}
    state = opt.init(stack)
    moment = state[0].nu["t"]
    assert (moment.v_row.shape, moment.v_col.shape) == ((2, 4), (2, 3))
    for _ in range(3):
        stacked_update, state = opt.update({"t": g}, state, stack)
    state = opt.init(split)
    for _ in range(3):
        split_update, state = opt.update({"a": g[0], "b": g[1]}, state, split)
    np.testing.assert_allclose(stacked_update["t"][0], split_update["a"], rtol=1e-6)
    np.testing.assert_allclose(stacked_update["t"][1], split_update["b"], rtol=1e-6)


# --- a short training run -------------------------------------------------------------------


def regression_task() -> tasks.Task:
    """Fit `s (x W + b)` to a random linear teacher: a matrix, a vector and a scalar, with fresh
    Gaussian inputs each step (cheap to compile, unlike an MLP on real data)."""
    kw, kb = jax.random.split(jax.random.key(7))
    w_star, b_star = jax.random.normal(kw, (8, 4)), jax.random.normal(kb, (4,))

    def init(key):
        return {"w": jax.random.normal(key, (8, 4)), "b": jnp.zeros(4), "s": jnp.ones(())}

    def loss(params, key, x_BxD):
        y_BxO = x_BxD @ w_star + b_star[None, :]
        pred_BxO = params["s"] * (x_BxD @ params["w"] + params["b"][None, :])
        return jnp.mean(jnp.square(pred_BxO - y_BxO)), {}

    def sampler(data, key, split, batch_size):
        return jax.random.normal(key, (batch_size, 8))

    return tasks.Task("linear_teacher", init, loss, sampler, batch_size=16)


TRAINING_STEPS = 100
TRAINING = {
    "nadamw": (baselines.nadamw(5e-2, weight_decay=0.1), optax.nadamw(5e-2, weight_decay=0.1)),
    "muon": (
        baselines.muon(0.1, nesterov=False, eps=1e-8, adam_learning_rate=5e-2),
        optax.contrib.muon(0.1, nesterov=False, eps=1e-8, adam_learning_rate=5e-2),
    ),
    "schedule_free_adamw": (
        baselines.schedule_free_adamw(5e-2, warmup_steps=10, weight_decay=0.01),
        optax_schedule_free_adamw(warmup(5e-2, 10), weight_decay=0.01),
    ),
    "adafactor": (
        baselines.adafactor(5e-2, b1=0.9),
        optax.adafactor(5e-2, min_dim_size_to_factor=1, momentum=0.9),
    ),
    "prodigy": (baselines.prodigy(bias_correction=True), optax.contrib.prodigy()),
}


@pytest.fixture(scope="module")
def training_runs():
    """Each pair trained through `tasks.train` with the same batches, in one program."""

    @jax.jit
    def run(task):
        return {
            name: tuple(tasks.train(task, opt, TRAINING_STEPS, jax.random.key(0)) for opt in pair)
            for name, pair in TRAINING.items()
        }

    return run(regression_task())


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TRAINING))
def test_training_run_matches_optax(name, training_runs):
    (ours_state, ours), (ref_state, ref) = training_runs[name]
    ours_loss, ref_loss = np.asarray(ours["train_loss"]), np.asarray(ref["train_loss"])
    assert ref_loss[-5:].mean() < 0.2 * ref_loss[:5].mean()  # it trains
    # Muon's 8x4 matrix takes the Gram-matrix form of Newton-Schulz, optax's the direct one:
    # equal in exact arithmetic, rounded differently over 100 steps.
    tolerance = 5 * TOLERANCE if name == "muon" else TOLERANCE
    np.testing.assert_allclose(ours_loss, ref_loss, rtol=tolerance)
    params = jax.tree.map(lambda p: p[None], (ours_state.params, ref_state.params))
    assert max_relative_error(*params) <= tolerance
